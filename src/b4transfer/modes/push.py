"""``mode=push``: upload an export folder (weights, ``config.json``, the model card ``README.md``, ONNX /
OpenVINO files) to the Hugging Face Hub with ``huggingface_hub.upload_folder``.

With no network it fails at once (``HF_HUB_OFFLINE``) or within ``push.timeout`` seconds, before
anything is sent, saying how to push later. It does not ask a task: any b4transfer export folder goes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from b4transfer.backbone.weights import hub_unreachable_reason
from b4transfer.errors import UserError, UserFileNotFoundError
from b4transfer.export.timm_format import CONFIG_NAME, MARKER
from b4transfer.runs import prepare_run_dir, write_summary


def check_export_dir(value: Any) -> Path:
    """``push.dir`` checked: a folder holding a ``config.json`` b4transfer wrote."""
    if value in (None, ""):
        raise UserError("push.dir is not set: pass push.dir=PATH/TO/export (a training run's export folder).")
    folder = Path(str(value)).expanduser()
    config = folder / CONFIG_NAME
    if not config.is_file():
        raise UserFileNotFoundError(
            f"push.dir={str(value)!r} holds no {CONFIG_NAME}; pass the export folder a training run or "
            "mode=export wrote (outputs/<date>/<time>/export)."
        )
    try:
        ours = MARKER in json.loads(config.read_text())
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise UserError(
            f"{config} was not written by b4transfer; push.dir must be a b4transfer export folder."
        )
    return folder


def push(cfg: DictConfig) -> dict[str, Any]:
    """Upload ``push.dir`` to ``push.repo_id`` (created if needed, private by default)."""
    settings = cfg.get("push") or {}
    repo_id = settings.get("repo_id")
    if not repo_id or "/" not in str(repo_id):
        raise UserError(f"push.repo_id={repo_id!r} is not a Hub repository; pass push.repo_id=<user>/<name>.")
    folder = check_export_dir(settings.get("dir"))
    later = (
        f"Push later, with a network: python run.py mode=push push.repo_id={repo_id} push.dir={folder} "
        f"(or huggingface-cli upload {repo_id} {folder} .)"
    )
    reason = hub_unreachable_reason(float(settings.get("timeout") or 3.0))
    if reason:
        raise UserError(
            f"mode=push cannot reach the Hugging Face Hub ({reason}); nothing was uploaded. {later}"
        )
    from huggingface_hub import HfApi

    run_dir = prepare_run_dir(cfg)
    api = HfApi()
    api.create_repo(str(repo_id), private=bool(settings.get("private", True)), exist_ok=True)
    info = api.upload_folder(
        folder_path=str(folder),
        repo_id=str(repo_id),
        commit_message=str(settings.get("commit_message")),
    )
    summary = {
        "mode": "push",
        "repo_id": str(repo_id),
        "dir": str(folder),
        "url": str(getattr(info, "commit_url", info)),
        "files": sorted(p.name for p in folder.iterdir() if p.is_file()),
    }
    write_summary(run_dir, summary)
    return summary
