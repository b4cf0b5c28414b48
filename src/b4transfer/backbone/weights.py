"""Pretrained weights: a local file (``weights=PATH``, read weights-only), the local Hugging Face cache,
or the hub when it answers within ``hub_timeout`` seconds; with none of those, a clear
:class:`PretrainedWeightsUnavailable` naming the ways out (never a silent fall-back to random weights)."""

from __future__ import annotations

import argparse
import functools
import logging
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
from timm.models import get_pretrained_cfg, split_model_name_tag
from torch import nn

from b4transfer.backbone.builder import build_model
from b4transfer.errors import UserError, UserFileNotFoundError

_logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_CONTAINER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")  # timm's order: EMA first
_TRUE = {"1", "ON", "YES", "TRUE"}
# Architectures tried (on the meta device, so cheaply) to tell a user whose weights they hold.
_GUESS_CANDIDATES = (
    "test_efficientnet", *(f"efficientnet_b{i}" for i in range(9)),
    *(f"efficientnet_lite{i}" for i in range(5)), "efficientnetv2_s", "efficientnetv2_m", "efficientnetv2_l",
)



class PretrainedWeightsUnavailable(RuntimeError):
    """Pretrained weights were asked for but are neither cached locally nor downloadable now."""





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


def hub_unreachable_reason(timeout: float) -> str | None:
    """Why the Hugging Face Hub cannot be used now (``HF_HUB_OFFLINE``, or no answer from the endpoint
    within ``timeout`` s), or ``None`` when it answers."""
    if _hub_offline():
        return "HF_HUB_OFFLINE is set"
    endpoint = (os.environ.get("HF_ENDPOINT") or hf_constants.ENDPOINT).rstrip("/")
    start = time.monotonic()
    if _reachable(endpoint, timeout):
        return None
    spent = time.monotonic() - start
    return f"{endpoint} could not be reached (gave up after {spent:.1f} s, limit {timeout:g} s)"


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


def locate_pretrained(name: str, hub_timeout: float) -> Path | None:
    """The local copy of ``name``'s pretrained weights, or ``None`` when there is none but the hub
    answers (a download will fetch them).

    Raises:
        PretrainedWeightsUnavailable: timm has no weights for ``name``, or nothing is cached and the hub
            cannot be used (``HF_HUB_OFFLINE``, or no answer within ``hub_timeout`` s).
    """
    cfg = get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise PretrainedWeightsUnavailable(_unavailable_message(name, None, "timm has no pretrained weights "
                                                                f"for {name!r}"))
    if cfg.file and Path(cfg.file).is_file():
        return Path(cfg.file)
    cached = _find_cached_weights(cfg)
    if cached is not None:
        return cached
    endpoint = (os.environ.get("HF_ENDPOINT") or hf_constants.ENDPOINT).rstrip("/")
    if not cfg.hf_hub_id:
        parsed = urlparse(cfg.url)
        endpoint = f"{parsed.scheme}://{parsed.netloc}"
    if _hub_offline():
        reason = "HF_HUB_OFFLINE is set"
    else:
        start = time.monotonic()
        if _reachable(endpoint, hub_timeout):
            return None
        spent = time.monotonic() - start
        reason = f"{endpoint} could not be reached (gave up after {spent:.1f} s, limit {hub_timeout:g} s)"
    raise PretrainedWeightsUnavailable(_unavailable_message(name, cfg, f"nothing is cached and {reason}"))


def build_pretrained(name: str, kwargs: dict, hub_timeout: float) -> nn.Module:
    cached = locate_pretrained(name, hub_timeout)
    cfg = get_pretrained_cfg(name)
    if cached is not None:
        _logger.info("Loading pretrained %s weights from the local cache: %s", name, cached)
        if kwargs.get("features_only") and not cfg.custom_load:
            # timm loads feature extractors non-strictly (and warns about the head keys): check every key
            model = build_model(name, kwargs)
            load_weights_file(model, cached, name=name, features_only=True)
            return model
        overlay = {"file": str(cached), "custom_load": cfg.custom_load}
        return build_model(name, kwargs, pretrained=True, pretrained_cfg_overlay=overlay)
    return _download(name, kwargs, cfg)


def _download(name: str, kwargs: dict, cfg) -> nn.Module:
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return build_model(name, kwargs, pretrained=True, cache_dir=hf_cache_dir())
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


def load_weights_file(model: nn.Module, path: Path, *, name: str, features_only: bool) -> None:
    """Load a local state dict into ``model``, checking every key and shape against ``name``.

    ``path`` may also be a b4transfer export or run directory (:func:`weights_file`): a classification
    fine-tune's export as ``model.weights`` of a dense task's run (two-stage transfer). A
    ``features_only`` model takes a file of the pooled trunk (the keys it lacks, such as ``conv_head``,
    are left out) or of the feature stages alone (``export/backbone/model.safetensors``).
    """
    path = weights_file(path)
    state = _read_state_dict(path)
    with torch.device("meta"):
        trunk = timm.create_model(name, num_classes=0)
        stages = timm.create_model(name, features_only=True) if features_only else trunk
    trunk_keys = set(trunk.state_dict())
    classifiers = trunk.pretrained_cfg.get("classifier") or ()
    classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    head_keys = {f"{c}.{p}" for c in classifiers for p in ("weight", "bias")} - trunk_keys
    state = _strip_prefix(state, trunk_keys | head_keys)
    state = {k: v for k, v in state.items() if k not in head_keys}
    # a feature extractor also takes a file of its stages alone (an export's backbone/); a file holding
    # any of the trunk's later layers (conv_head, bn2) must hold the whole trunk
    stages_only = features_only and not (trunk_keys - set(stages.state_dict())) & set(state)
    reference = stages if stages_only else trunk
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    _check_fit(state, expected, path, name)
    target = model.state_dict()
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        _raise_mismatch(path, name, missing, [], [], state)
    model.load_state_dict({k: state.get(k, v) for k, v in target.items()})
    _logger.info("Loaded %d tensors for %s from model.weights=%s", len(target), name, path)


def weights_file(path: Path) -> Path:
    """``path`` itself, or for a directory the weights file it holds: an export's timm
    ``model.safetensors`` (one with a timm ``config.json``: the classifier export or a backbone folder),
    else its ``backbone/model.safetensors`` (every task's export), also below ``export/`` (a run
    directory)."""
    path = Path(path)
    if not path.is_dir():
        return path
    for folder in (path, path / "export"):
        for candidate in (folder, folder / "backbone"):
            if _timm_layout(candidate):
                return candidate / "model.safetensors"
    raise UserFileNotFoundError(
        f"model.weights={str(path)!r} is a directory without weights: no model.safetensors with a timm "
        "config.json in it, nor in its backbone/ or export/ folders. Fix: point model.weights at a "
        "b4transfer export (<run dir>/export), a run directory, or a weights file."
    )


def _timm_layout(folder: Path) -> bool:
    """``folder`` holds ``model.safetensors`` and a timm ``config.json`` (``architecture`` and
    ``num_classes``; the dense tasks' exports' own configs have no ``num_classes``)."""
    import json

    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (folder / "model.safetensors").is_file() and "architecture" in config and "num_classes" in config


def check_weights_file(path: Path) -> None:
    """Raise :class:`UserFileNotFoundError` when ``model.weights`` names no file (nor a directory holding
    one, :func:`weights_file`)."""
    if Path(path).is_dir():
        weights_file(path)
        return
    if not path.is_file():
        raise UserFileNotFoundError(
            f"model.weights={str(path)!r}: no such file. Point model.weights at an existing "
            f"{'/'.join(WEIGHT_SUFFIXES)} state dict, or set model.weights=null."
        )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    check_weights_file(path)
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise UserError(
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
        raise UserError(
            f"model.weights={str(path)!r} holds pickled Python objects besides tensors, which b4transfer "
            "refuses to unpickle (torch.load(weights_only=True)). Re-save only the tensors, e.g. "
            "torch.save(model.state_dict(), path) or safetensors.torch.save_file(...), from a trusted "
            f"session. Detail: {str(e).splitlines()[0]}"
        ) from e
    except Exception as e:
        raise UserError(f"model.weights={str(path)!r} is not a readable {suffix} state dict: {e}") from e
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
        raise UserError(
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
    raise UserError(
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
