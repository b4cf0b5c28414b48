"""load_rgb / check_image: every PIL mode becomes correct upright RGB; bad files fail clearly."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from b4transfer.data.images import IMG_EXTENSIONS, ImageLoadError, check_image, load_rgb, to_rgb


def _px(img: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    return tuple(int(v) for v in img.getpixel(xy))


def _noisy_jpeg_bytes(size: int = 256) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_extensions_are_lowercase_with_dot():
    assert all(ext.startswith(".") and ext == ext.lower() for ext in IMG_EXTENSIONS)
    assert {".jpg", ".jpeg", ".png", ".webp", ".tif"} <= set(IMG_EXTENSIONS)


def test_grayscale_and_1bit_become_rgb(tmp_path):
    Image.new("L", (8, 6), 77).save(tmp_path / "g.png")
    Image.new("1", (8, 6), 1).save(tmp_path / "b.png")
    gray, onebit = load_rgb(tmp_path / "g.png"), load_rgb(tmp_path / "b.png")
    assert (gray.mode, gray.size, _px(gray, (0, 0))) == ("RGB", (8, 6), (77, 77, 77))
    assert (onebit.mode, _px(onebit, (3, 3))) == ("RGB", (255, 255, 255))


def test_rgba_composites_over_white_not_black(tmp_path):
    arr = np.zeros((4, 4, 4), dtype=np.uint8)  # transparent black ...
    arr[0, 0] = (255, 0, 0, 128)  # ... and one half-transparent red pixel
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    img = load_rgb(tmp_path / "a.png")
    assert img.mode == "RGB"
    assert _px(img, (3, 3)) == (255, 255, 255)
    r, g, b = _px(img, (0, 0))
    assert r == 255 and 120 <= g <= 135 and g == b


def test_la_and_palette_with_transparency(tmp_path):
    Image.new("LA", (4, 4), (0, 0)).save(tmp_path / "la.png")
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    pal.putpixel((1, 1), 1)
    pal.info["transparency"] = 0  # palette index 0 (black) is transparent
    pal.save(tmp_path / "p.png", transparency=0)
    assert _px(load_rgb(tmp_path / "la.png"), (0, 0)) == (255, 255, 255)
    img = load_rgb(tmp_path / "p.png")
    assert _px(img, (0, 0)) == (255, 255, 255)
    assert _px(img, (1, 1)) == (0, 200, 0)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 16).reshape(16, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    arr = np.asarray(load_rgb(tmp_path / "g16.png"))
    assert arr.dtype == np.uint8 and arr.shape == (16, 64, 3)
    assert arr.min() <= 1 and arr.max() >= 254
    assert 100 < arr[8, 32, 0] < 155  # mid-ramp is mid-grey, not saturated at 255


def test_high_depth_modes_in_memory():
    big_endian = Image.frombytes("I;16B", (2, 1), np.array([0, 65535], ">u2").tobytes())
    assert [_px(to_rgb(big_endian), (x, 0)) for x in (0, 1)] == [(0, 0, 0), (255, 255, 255)]
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
    assert [_px(to_rgb(floats), (x, 0))[0] for x in range(3)] == [0, 128, 255]
    wide = Image.fromarray(np.array([[-1000, 0, 1000]], np.int32), "I")  # outside 0..65535: min-max
    assert [_px(to_rgb(wide), (x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)
    img = load_rgb(tmp_path / "c.jpg")
    r, g, b = _px(img, (8, 8))
    assert img.mode == "RGB" and r > 200 and g < 50 and b < 50


def test_exif_rotated_jpeg_comes_out_upright(tmp_path):
    # Stored 40x20: left half red, right half blue. Orientation 6 = "rotate 90 degrees
    # clockwise to display", so upright it is 20x40 with red on top, blue below.
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    img = load_rgb(tmp_path / "rot.jpg")
    assert img.size == (20, 40)
    top, bottom = _px(img, (10, 5)), _px(img, (10, 35))
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


def test_jpeg_draft_decodes_at_reduced_scale_only_when_2x_larger(tmp_path):
    (tmp_path / "big.jpg").write_bytes(_noisy_jpeg_bytes(256))
    small = load_rgb(tmp_path / "big.jpg", draft_size=(64, 64))
    assert small.mode == "RGB" and 64 <= small.width < 256 and small.size[0] == small.size[1]
    assert load_rgb(tmp_path / "big.jpg", draft_size=(200, 200)).size == (256, 256)
    assert load_rgb(tmp_path / "big.jpg").size == (256, 256)


def test_truncated_jpeg_fails_and_check_image_reports_it(tmp_path):
    data = _noisy_jpeg_bytes(256)
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(ImageLoadError, match=r"cut\.jpg.*truncated.*Fix: re-save"):
        load_rgb(tmp_path / "cut.jpg")
    assert "truncated" in check_image(tmp_path / "cut.jpg")


def test_garbage_and_missing_files(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"this is not an image at all")
    with pytest.raises(ImageLoadError, match=r"junk\.png: not an image format PIL can read"):
        load_rgb(tmp_path / "junk.png")
    with pytest.raises(ImageLoadError, match=r"nope\.jpg: file does not exist"):
        load_rgb(tmp_path / "nope.jpg")
    err = ImageLoadError(tmp_path / "x.png", "broken")
    assert isinstance(err, ValueError) and err.path.name == "x.png" and err.reason == "broken"


def test_check_image_ok_for_good_files(tmp_path):
    (tmp_path / "ok.jpg").write_bytes(_noisy_jpeg_bytes(64))
    Image.new("RGB", (5, 5)).save(tmp_path / "ok.webp")
    assert check_image(tmp_path / "ok.jpg") is None
    assert check_image(tmp_path / "ok.webp") is None
