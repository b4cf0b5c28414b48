"""The backbone: the one place that calls ``timm.create_model``.

``create_backbone`` builds a timm EfficientNet (``efficientnet_b4.ra2_in1k`` by default) either as a
classification trunk (``forward`` gives pooled ``(N, num_features)`` features, no classifier) or as a
``features_only`` pyramid (``feature_info`` describes the maps). Pretrained weights come, in order of
preference, from a local file (``weights=PATH``), from the local Hugging Face cache, or from the hub when
it answers within ``hub_timeout`` seconds. With none of those it fails at once with
:class:`PretrainedWeightsUnavailable` naming the ways out; it never falls back to random weights.

``resolve_data_configs`` gives the train and eval timm data configs (B4: 320 / crop 0.875 to train,
384 / crop 1.0 to evaluate, as on the model card).
"""

from __future__ import annotations

import argparse
import difflib
import functools
import logging
import numbers
import os
import pickle
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import safetensors.torch
import timm
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from timm.data import resolve_model_data_config
from timm.models import get_pretrained_cfg, is_model, split_model_name_tag
from torch import nn

__all__ = [
    "PretrainedWeightsUnavailable",
    "create_backbone",
    "feature_channels",
    "feature_reductions",
    "out_indices_for_strides",
    "hf_cache_dir",
    "resolve_data_configs",
]

_logger = logging.getLogger(__name__)

DEFAULT_NAME = "efficientnet_b4.ra2_in1k"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_CONTAINER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")  # timm's order: EMA first
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
_TRUE = {"1", "ON", "YES", "TRUE"}
# Architectures tried (on the meta device, so cheaply) to tell a user whose weights they hold.
_GUESS_CANDIDATES = (
    "test_efficientnet", *(f"efficientnet_b{i}" for i in range(9)),
    *(f"efficientnet_lite{i}" for i in range(5)), "efficientnetv2_s", "efficientnetv2_m", "efficientnetv2_l",
)


class PretrainedWeightsUnavailable(RuntimeError):
    """Pretrained weights were asked for but are neither cached locally nor downloadable now."""


def create_backbone(
    name: str = DEFAULT_NAME,
    *,
    pretrained: bool = True,
    weights: str | os.PathLike | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    hub_timeout: float = 3.0,
) -> nn.Module:
    """Build a timm backbone, with weights from a file, the local cache, the hub, or random init.

    Args:
        name: timm model name, optionally with a pretrained tag (``efficientnet_b4.ra2_in1k``).
            Any timm EfficientNet-family model works (``efficientnet_b0``, ``tf_efficientnet_lite0``, ...).
        pretrained: Load the pretrained weights of ``name`` (cache first, then the hub).
        weights: Path to a local ``.safetensors``/``.pth``/``.pt``/``.bin``/``.ckpt`` state dict in timm
            layout (classifier keys optional). Overrides ``pretrained``; never touches the network.
        features_only: Build the multi-scale feature extractor (keeps ``feature_info``) instead of the
            pooled classification trunk (``forward`` -> ``(N, num_features)``).
        out_indices: Feature stages to return; only with ``features_only`` (timm default: all).
        drop_rate: Dropout before the (absent) classifier, as timm's ``drop_rate``.
        drop_path_rate: Stochastic depth rate.
        hub_timeout: Hard limit in seconds for checking that the hub answers before downloading.

    Returns:
        The timm model, in train mode.

    Raises:
        PretrainedWeightsUnavailable: ``pretrained=True`` but the weights are not cached and the hub
            cannot be reached (or ``HF_HUB_OFFLINE`` is set).
        FileNotFoundError: ``weights`` does not exist.
        ValueError: Unknown ``name``, bad argument, or a weights file that does not fit the model.
    """
    _check_name(name)
    _check_rate("model.drop_rate", drop_rate)
    _check_rate("model.drop_path_rate", drop_path_rate)
    if not isinstance(hub_timeout, numbers.Real) or hub_timeout <= 0:
        raise ValueError(f"model.hub_timeout must be a positive number of seconds, got {hub_timeout!r}.")
    kwargs = {"drop_rate": drop_rate, "drop_path_rate": drop_path_rate}
    if features_only:
        kwargs.update(features_only=True, out_indices=_check_out_indices(out_indices))
    elif out_indices is not None:
        raise ValueError(
            f"model.out_indices={out_indices!r} only applies with features_only=True; "
            "set model.features_only=true or model.out_indices=null."
        )
    else:
        kwargs["num_classes"] = 0  # pooled pre-logits features, no classifier
    if weights is not None:
        model = _build(name, kwargs)
        _load_weights_file(model, Path(weights), name=name, features_only=features_only)
        return model
    if not pretrained:
        return _build(name, kwargs)
    return _build_pretrained(name, kwargs, float(hub_timeout))


def _build(name: str, kwargs: dict, **timm_kwargs) -> nn.Module:
    try:
        return timm.create_model(name, **timm_kwargs, **kwargs)
    except IndexError as e:  # timm's feature wrapper indexes stages with out_indices
        with torch.device("meta"):
            stages = len(timm.create_model(name, num_classes=0).feature_info)
        raise ValueError(
            f"model.out_indices={kwargs.get('out_indices')!r} is out of range: {name} has {stages} feature "
            f"stages, so use indices in 0..{stages - 1}, e.g. {tuple(range(1, stages))}."
        ) from e


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"model.name must be a timm model name such as {DEFAULT_NAME!r}, got {name!r}.")
    arch, tag = split_model_name_tag(name)
    if not is_model(arch):
        close = list(dict.fromkeys(
            timm.list_models(f"*{arch}*")[:5] + difflib.get_close_matches(arch, timm.list_models(), n=5)
        ))
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise ValueError(
            f"model.name={name!r} is not a timm model.{hint} Any timm EfficientNet-family name works "
            "(efficientnet_b0 ... efficientnet_b8, tf_efficientnet_lite0, efficientnetv2_s, ...); "
            "list them with timm.list_models('*efficientnet*')."
        )
    if tag:
        try:
            cfg = get_pretrained_cfg(name)
        except RuntimeError:
            cfg = None
        if cfg is None:
            tags = timm.list_pretrained(f"{arch}.*")
            raise ValueError(
                f"model.name={name!r}: {arch} has no pretrained tag {tag!r}. Use one of "
                f"{', '.join(tags) or arch}, or the bare architecture name {arch!r}."
            )


def _check_rate(key: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"{key} must be a number in [0, 1), got {value!r}.")


def _check_out_indices(out_indices) -> tuple[int, ...] | None:
    if out_indices is None:
        return None
    values = tuple(out_indices) if isinstance(out_indices, (list, tuple)) else None
    if not values or not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in values):
        raise ValueError(
            f"model.out_indices must be a non-empty sequence of stage indices such as (1, 2, 3, 4), "
            f"got {out_indices!r}."
        )
    return tuple(int(i) for i in values)


# --------------------------------------------------------------------------- pretrained: cache / hub


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache directory, read from the environment at call time."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.path.expanduser(os.environ[var])))
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.path.expanduser(os.environ["HF_HOME"]))) / "hub"
    return Path(hf_constants.HF_HUB_CACHE)


def _hub_offline() -> bool:
    env = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").upper()
    return bool(hf_constants.HF_HUB_OFFLINE) or env in _TRUE


def _find_cached_weights(cfg) -> Path | None:
    """Return a local copy of ``cfg``'s weights (HF cache, then torch hub cache), if there is one."""
    if cfg.hf_hub_id:
        repo_id, _, revision = cfg.hf_hub_id.partition("@")
        names = ((cfg.hf_hub_filename,) if cfg.hf_hub_filename else ()) + _HF_WEIGHT_FILES
        for filename in names:
            found = try_to_load_from_cache(repo_id, filename, cache_dir=hf_cache_dir(),
                                           revision=revision or None)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
    if cfg.url:
        legacy = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        if legacy.is_file():
            return legacy
    return None


def _reachable(url: str, timeout: float) -> bool:
    """True when ``url`` answers an HTTP HEAD within ``timeout`` s (DNS included; hard deadline)."""
    answered: list[bool] = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
                answered.append(True)
        except urllib.error.HTTPError:  # the server answered, with an error status: reachable
            answered.append(True)
        except Exception:  # DNS failure, refused, timeout, TLS error: not reachable
            answered.append(False)

    thread = threading.Thread(target=probe, name="b4transfer-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)  # getaddrinfo ignores socket timeouts; the join bounds it
    return bool(answered and answered[0])


def _build_pretrained(name: str, kwargs: dict, hub_timeout: float) -> nn.Module:
    cfg = get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise PretrainedWeightsUnavailable(_unavailable_message(name, None, "timm has no pretrained weights "
                                                                f"for {name!r}"))
    if cfg.file and Path(cfg.file).is_file():
        cached = Path(cfg.file)
    else:
        cached = _find_cached_weights(cfg)
    if cached is not None:
        _logger.info("Loading pretrained %s weights from the local cache: %s", name, cached)
        if kwargs.get("features_only") and not cfg.custom_load:
            # timm loads feature extractors non-strictly (and warns about the head keys): check every key
            model = _build(name, kwargs)
            _load_weights_file(model, cached, name=name, features_only=True)
            return model
        overlay = {"file": str(cached), "custom_load": cfg.custom_load}
        return _build(name, kwargs, pretrained=True, pretrained_cfg_overlay=overlay)
    endpoint = (os.environ.get("HF_ENDPOINT") or hf_constants.ENDPOINT).rstrip("/")
    if not cfg.hf_hub_id:
        parsed = urlparse(cfg.url)
        endpoint = f"{parsed.scheme}://{parsed.netloc}"
    if _hub_offline():
        reason = "HF_HUB_OFFLINE is set"
    else:
        start = time.monotonic()
        if _reachable(endpoint, hub_timeout):
            return _download(name, kwargs, cfg)
        spent = time.monotonic() - start
        reason = f"{endpoint} could not be reached (gave up after {spent:.1f} s, limit {hub_timeout:g} s)"
    raise PretrainedWeightsUnavailable(_unavailable_message(name, cfg, f"nothing is cached and {reason}"))


def _download(name: str, kwargs: dict, cfg) -> nn.Module:
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return _build(name, kwargs, pretrained=True, cache_dir=hf_cache_dir())
    except (OSError, HfHubHTTPError, LocalEntryNotFoundError) as e:
        message = _unavailable_message(name, cfg, f"the hub answered but the download failed ({e})")
        raise PretrainedWeightsUnavailable(message) from e


def _unavailable_message(name: str, cfg, reason: str) -> str:
    repo = cfg.hf_hub_id.partition("@")[0] if cfg is not None and cfg.hf_hub_id else None
    lines = [f"Pretrained weights for model.name={name!r} are unavailable: {reason}. Three ways out:"]
    if repo:
        lines.append(
            f"  1. Fill the Hugging Face cache (looked in {hf_cache_dir()} for {repo}: "
            f"{', '.join(_HF_WEIGHT_FILES)}). On a machine with network run `hf download {repo}` "
            f"(older: `huggingface-cli download {repo}`), then copy its cache directory "
            "(~/.cache/huggingface/hub) here, or point HF_HOME / HF_HUB_CACHE at the copy."
        )
    else:
        lines.append("  1. (no hub copy exists for this name) use a name with pretrained weights, "
                     f"see timm.list_pretrained('{split_model_name_tag(name)[0]}*').")
    lines += [
        f"  2. Set model.weights=PATH to a local {'/'.join(WEIGHT_SUFFIXES)} state dict for this "
        f"architecture{f' (e.g. the model.safetensors of {repo})' if repo else ''}.",
        "  3. Set model.pretrained=false to start from random initialisation (expect far lower accuracy).",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- weights=PATH


def _load_weights_file(model: nn.Module, path: Path, *, name: str, features_only: bool) -> None:
    """Load a local state dict into ``model``, checking every key and shape against ``name``."""
    state = _read_state_dict(path)
    if features_only:  # check against the full trunk, then load the subset the extractor keeps
        with torch.device("meta"):
            reference = timm.create_model(name, num_classes=0)
    else:
        reference = model
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    classifiers = reference.pretrained_cfg.get("classifier") or ()
    classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    head_keys = {f"{c}.{p}" for c in classifiers for p in ("weight", "bias")} - set(expected)
    state = _strip_prefix(state, set(expected) | head_keys)
    state = {k: v for k, v in state.items() if k not in head_keys}
    _check_fit(state, expected, path, name)
    target = model.state_dict()
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        _raise_mismatch(path, name, missing, [], [], state)
    model.load_state_dict({k: state.get(k, v) for k, v in target.items()})
    _logger.info("Loaded %d tensors for %s from model.weights=%s", len(target), name, path)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(
            f"model.weights={str(path)!r}: no such file. Point model.weights at an existing "
            f"{'/'.join(WEIGHT_SUFFIXES)} state dict, or set model.weights=null."
        )
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise ValueError(
            f"model.weights={str(path)!r}: unsupported extension {suffix!r}; supported: "
            f"{', '.join(WEIGHT_SUFFIXES)} (safetensors, or a torch.save'd state dict)."
        )
    try:
        if suffix == ".safetensors":
            obj = safetensors.torch.load_file(str(path), device="cpu")
        else:  # weights_only: tensors and plain containers, never arbitrary pickled code
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"model.weights={str(path)!r} holds pickled Python objects besides tensors, which b4transfer "
            "refuses to unpickle (torch.load(weights_only=True)). Re-save only the tensors, e.g. "
            "torch.save(model.state_dict(), path) or safetensors.torch.save_file(...), from a trusted "
            f"session. Detail: {str(e).splitlines()[0]}"
        ) from e
    except Exception as e:
        raise ValueError(f"model.weights={str(path)!r} is not a readable {suffix} state dict: {e}") from e
    return _unwrap(obj, path)


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in _CONTAINER_KEYS:
            if isinstance(obj.get(key), dict) and obj[key]:
                obj = obj[key]
                break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        found = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(
            f"model.weights={str(path)!r} holds no state dict (found {found}). Expected a mapping of "
            f"parameter names to tensors, possibly under one of {', '.join(_CONTAINER_KEYS)}."
        )
    return tensors


def _strip_prefix(state: dict, names: set[str]) -> dict:
    """Drop the wrapper prefix (``module.``, ``model.backbone.``, ...) that makes most keys match."""
    counts: Counter[str] = Counter()
    for key in state:
        parts = key.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in names:
                counts[".".join(parts[:i]) + ("." if i else "")] += 1
                break
    best = max(counts, key=lambda p: (counts[p], -len(p)), default="")
    return {k[len(best):]: v for k, v in state.items() if k.startswith(best)} if best else state


def _check_fit(state: dict, expected: dict, path: Path, name: str) -> None:
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [(k, tuple(state[k].shape), s) for k, s in expected.items() if k in state
              and tuple(state[k].shape) != s]
    if missing or unexpected or shapes:
        _raise_mismatch(path, name, missing, unexpected, shapes, state)


def _raise_mismatch(path: Path, name: str, missing, unexpected, shapes, state: dict) -> None:
    def some(items) -> str:
        return ", ".join(map(str, items[:5])) + (", ..." if len(items) > 5 else "")

    parts = [f"missing keys ({len(missing)}): {some(missing)}"] if missing else []
    parts += [f"unexpected keys ({len(unexpected)}): {some(unexpected)}"] if unexpected else []
    if shapes:
        shown = [f"{k}: file {f} vs model {m}" for k, f, m in shapes]
        parts.append(f"shape mismatches ({len(shapes)}): {some(shown)}")
    wrong_architecture = len(missing) + len(unexpected) + len(shapes) > 0.1 * len(state)
    guess = _guess_architecture(state) if wrong_architecture else None
    same = guess == split_model_name_tag(name)[0]
    looks = f" (the file looks like {guess} weights)" if guess and not same else ""
    raise ValueError(
        f"model.weights={str(path)!r} does not fit model.name={name!r}: " + "; ".join(parts) + ". "
        f"Fix: set model.name to the architecture the weights were trained for{looks}, "
        f"or point model.weights at {name} weights."
    )


def _guess_architecture(state: dict, budget_s: float = 3.0) -> str | None:
    """Name the candidate architecture whose (meta-device) trunk has exactly the file's shapes."""
    shapes = {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}
    deadline = time.monotonic() + budget_s
    for candidate in _GUESS_CANDIDATES:
        if time.monotonic() > deadline:
            break
        if _trunk_shapes(candidate) == shapes:
            return candidate
    return None


@functools.cache
def _trunk_shapes(name: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        trunk = timm.create_model(name, num_classes=0).state_dict()
    return {k: tuple(v.shape) for k, v in trunk.items() if not k.endswith("num_batches_tracked")}


# --------------------------------------------------------------------------- data config / features


def resolve_data_configs(
    model: nn.Module,
    *,
    image_size: int | None = None,
    eval_image_size: int | None = None,
    crop_pct: float | None = None,
    eval_crop_pct: float | None = None,
    interpolation: str | None = None,
    mean=None,
    std=None,
) -> tuple[dict, dict]:
    """Train and eval timm data configs for ``model``, each field overridable.

    Train is ``resolve_model_data_config(model)`` (B4: 320, crop 0.875); eval uses the model's test size
    (B4: 384, crop 1.0). When only ``image_size`` is given, the eval size follows by the model's own
    test/train ratio (B4: 160 -> 192).

    Args:
        model: A timm model from :func:`create_backbone` (classification or ``features_only``).
        image_size: Square train input size.
        eval_image_size: Square eval input size (wins over the ratio rule).
        crop_pct: Train centre-crop fraction in (0, 1].
        eval_crop_pct: Eval centre-crop fraction in (0, 1].
        interpolation: Resize interpolation for both (``bicubic``, ``bilinear``, ...).
        mean: Per-channel normalisation mean for both.
        std: Per-channel normalisation std for both.

    Returns:
        ``(train_cfg, eval_cfg)`` dicts with ``input_size``, ``interpolation``, ``mean``, ``std``,
        ``crop_pct``, ``crop_mode``.
    """
    if not isinstance(getattr(model, "pretrained_cfg", None), dict):
        raise TypeError(f"{type(model).__name__} has no timm pretrained_cfg; pass a create_backbone model.")
    train = dict(resolve_model_data_config(model))
    evaluation = dict(resolve_model_data_config(model, use_test_size=True))
    chans = train["input_size"][0]
    ratio = evaluation["input_size"][-2] / train["input_size"][-2]  # B4: 384 / 320
    if image_size is not None:
        size = _size("data.image_size", image_size)
        train["input_size"] = (chans, size, size)
        evaluation["input_size"] = (chans, round(size * ratio), round(size * ratio))
    if eval_image_size is not None:
        size = _size("data.eval_image_size", eval_image_size)
        evaluation["input_size"] = (chans, size, size)
    crops = (("data.crop_pct", crop_pct, train), ("data.eval_crop_pct", eval_crop_pct, evaluation))
    for key, value, cfg in crops:
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value <= 1:
                raise ValueError(f"{key} must be a fraction in (0, 1], e.g. 0.875 or 1.0, got {value!r}.")
            cfg["crop_pct"] = float(value)
    if interpolation is not None:
        if interpolation not in _INTERPOLATIONS:
            options = ", ".join(_INTERPOLATIONS)
            raise ValueError(f"data.interpolation={interpolation!r} is not supported; use one of {options}.")
        train["interpolation"] = evaluation["interpolation"] = interpolation
    for key, value, positive in (("mean", mean, False), ("std", std, True)):
        if value is not None:
            train[key] = evaluation[key] = _channels(f"data.{key}", value, chans, positive)
    return train, evaluation


def _size(key: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{key} must be a positive integer number of pixels (e.g. 320), got {value!r}.")
    return int(value)


def _channels(key: str, value, chans: int, positive: bool) -> tuple[float, ...]:
    values = tuple(value) if isinstance(value, (list, tuple)) else ()
    ok = len(values) == chans and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)
    if not ok or (positive and any(v <= 0 for v in values)):
        need = "positive " if positive else ""
        raise ValueError(f"{key} must be {chans} {need}numbers, one per input channel, got {value!r}.")
    return tuple(float(v) for v in values)


def _feature_info(model: nn.Module):
    info = getattr(model, "feature_info", None)
    if not hasattr(info, "channels"):
        raise TypeError(
            f"{type(model).__name__} has no feature_info describing its outputs; build it with "
            "create_backbone(name, features_only=True)."
        )
    return info


def feature_channels(model: nn.Module) -> list[int]:
    """Channels of each map a ``features_only`` backbone returns (B4: 24, 32, 56, 160, 448)."""
    return list(_feature_info(model).channels())


def feature_reductions(model: nn.Module) -> list[int]:
    """Stride of each map a ``features_only`` backbone returns relative to the input (2 ... 32)."""
    return list(_feature_info(model).reduction())


def out_indices_for_strides(name: str, strides) -> tuple[int, ...]:
    """The ``out_indices`` of ``name``'s ``features_only`` maps at ``strides`` (B4: 8, 16, 32 -> 2, 3, 4).

    Reads timm's ``feature_info`` of a meta-device model (no weights are built).

    Args:
        name: timm model name.
        strides: Wanted reductions relative to the input, ascending, e.g. ``(8, 16, 32)``.

    Returns:
        The stage indices to pass as ``create_backbone(..., features_only=True, out_indices=...)``.
    """
    _check_name(name)
    with torch.device("meta"):
        info = timm.create_model(name, num_classes=0).feature_info
    available = [int(f["reduction"]) for f in info]
    values = list(strides) if isinstance(strides, (list, tuple)) else []
    ok = values and all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in values)
    if not ok or sorted(set(values)) != values or any(s not in available for s in values):
        raise ValueError(
            f"head.feature_strides={strides!r}: {name} gives feature maps at strides {available}. "
            f"Fix: choose ascending strides among those, e.g. {available[-3:]}."
        )
    return tuple(available.index(s) for s in values)
