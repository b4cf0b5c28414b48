"""A third task defined here and nowhere else: regress one number per image from a CSV.

It registers itself (``tasks.register`` + a Hydra ``ConfigStore`` node for ``task=`` and ``data=``) and
runs train -> validate -> predict -> export through :func:`b4transfer.modes.run`, the entry point of the
CLI, with no edit to any other file: the proof that heads are swappable.

It follows the recipe of :mod:`b4transfer.tasks.base` in one file: the splits type and its reader
(``tasks/<name>/data/``: :class:`ValueSplits`, :func:`value_csv_splits`, :class:`ValueData`), the module
(``module.py``: :class:`RegressionModule`), the :class:`Task` (``__init__.py``: :class:`RegressionTask`),
and the ``task=`` / ``data=`` config nodes (``conf/``: ConfigStore instead of YAML).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import safetensors.torch
import torch
from hydra.core.config_store import ConfigStore
from PIL import Image
from tests.conftest import TINY, compose_cfg
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics import MeanAbsoluteError, MetricCollection

from b4transfer import tasks
from b4transfer.backbone import create_backbone, resolve_data_configs
from b4transfer.config import plain
from b4transfer.errors import NotSupportedError
from b4transfer.modes import run
from b4transfer.tasks.base import Task, TaskModule

NAME = "toy_regression"


# ----------------------------------------------------------------------------------------------- data
@dataclass
class ValueSplits:
    """Images with one number each."""

    train: list[tuple[Path, float]]
    val: list[tuple[Path, float]]
    test: list[tuple[Path, float]] = field(default_factory=list)
    skipped: list = field(default_factory=list)
    class_names: list[str] = field(default_factory=lambda: ["value"])
    num_classes: int = 1


def value_csv_splits(table: str) -> ValueSplits:
    """A CSV of ``path,value,split`` (paths relative to the CSV)."""
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    item = [(Path(table).parent / r["path"], float(r["value"]), r["split"]) for r in rows]
    return ValueSplits(
        train=[(p, v) for p, v, s in item if s == "train"], val=[(p, v) for p, v, s in item if s == "val"]
    )


def _pixels(path: Path, size: int) -> torch.Tensor:
    image = Image.open(path).convert("RGB").resize((size, size))
    return torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)


class ValueData(L.LightningDataModule):
    def __init__(self, splits: ValueSplits, size: int, batch_size: int) -> None:
        super().__init__()
        self.splits, self.size, self.batch_size = splits, size, batch_size

    def _loader(self, items, shuffle: bool) -> DataLoader:
        data = [(_pixels(p, self.size), torch.tensor([v])) for p, v in items]
        return DataLoader(data, batch_size=self.batch_size, shuffle=shuffle)

    def train_dataloader(self):
        return self._loader(self.splits.train, True)

    def val_dataloader(self):
        return self._loader(self.splits.val, False)


# --------------------------------------------------------------------------------------------- module
class RegressionModule(TaskModule):
    task_name = NAME

    def __init__(self, *, class_names, model, optim=None, scheduler=None, backbone=None) -> None:
        # TaskModule's start: hyper-parameters saved (not the backbone), the task remembered, class names
        backbone = backbone or create_backbone(model["name"], pretrained=False)
        super().__init__(
            class_names=class_names, model=model, optim=optim, scheduler=scheduler, backbone=backbone
        )
        self.head = nn.Linear(self.backbone.num_features, 1)
        train_cfg, eval_cfg = resolve_data_configs(self.backbone, image_size=32, eval_image_size=32)
        self.data_config = {"train": train_cfg, "eval": eval_cfg}
        self.init_metrics(lambda: MetricCollection({"mae": MeanAbsoluteError()}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train/loss", loss, batch_size=len(x))
        return loss

    # the validation step, epoch-end metrics (default update and logging: val/mae) are TaskModule's
    def eval_losses(self, outputs, inputs, targets):
        return {"loss": nn.functional.mse_loss(outputs, targets)}


# ----------------------------------------------------------------------------------------------- task
class RegressionTask(Task):
    name = NAME
    splits_type = ValueSplits
    data_hint = "data=value_csv"
    monitor = "val/loss"
    module_class = RegressionModule
    modes = ("train", "validate", "predict", "export")
    export_formats = ("timm",)

    def build_backbone(self, cfg):
        return create_backbone(cfg.model.name, pretrained=False)

    def build_module(self, cfg, splits, backbone=None):
        optim = {k: v for k, v in plain(cfg.optim).items() if k not in ("lr_scaling", "base_batch_size")}
        return RegressionModule(
            class_names=splits.class_names, model=plain(cfg.model), optim=optim, backbone=backbone
        )

    def build_datamodule(self, cfg, splits, module):
        return ValueData(splits, int(cfg.data.image_size), int(cfg.data.batch_size))

    def predict(self, cfg, module, paths, run_dir):
        with torch.no_grad():
            values = module.eval()(torch.stack([_pixels(p, 32) for p in paths]))[:, 0].tolist()
        out = run_dir / "values.csv"
        with out.open("w", newline="") as f:
            csv.writer(f).writerows([("path", "value"), *((str(p), v) for p, v in zip(paths, values))])
        return {"predictions": str(out)}

    def export(self, fmt, module, out_dir, *, cfg, checkpoint, samples=None):
        out_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in module.state_dict().items()}
        safetensors.torch.save_file(state, str(out_dir / "model.safetensors"))
        (out_dir / "config.json").write_text(json.dumps({"task": NAME, "checkpoint": checkpoint}))
        return {}


@pytest.fixture(scope="module", autouse=True)
def registered():
    tasks.register(RegressionTask())
    store = ConfigStore.instance()
    store.store(
        group="task",
        name=NAME,
        package="_global_",
        node={"task": NAME, "head": {}, "checkpoint": {"monitor": "val/loss", "mode": "min"}},
    )
    store.store(
        group="data",
        name="value_csv",
        node={
            "source": {"_target_": f"{__name__}.value_csv_splits", "table": None},
            "batch_size": 4,
            "image_size": 32,
            "num_workers": 0,
        },
    )
    yield
    # leave no plug-in behind for later tests in this process (the CLI's --help lists the registry)
    tasks.unregister(NAME)
    store.repo["task"].pop(f"{NAME}.yaml", None)
    store.repo["data"].pop("value_csv.yaml", None)


@pytest.fixture
def value_csv(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    rows = [("path", "value", "split")]
    for i in range(12):
        level = rng.uniform(0, 1)
        Image.fromarray(np.full((32, 32, 3), int(level * 255), np.uint8)).save(tmp_path / f"{i}.png")
        rows.append((f"{i}.png", f"{level:.4f}", "val" if i % 4 == 0 else "train"))
    with (tmp_path / "values.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return tmp_path / "values.csv"


def test_a_task_defined_in_a_test_runs_every_mode_it_supports(value_csv, tmp_path):
    def cfg(name: str, *extra: str):
        return compose_cfg(
            *TINY,
            f"task={NAME}",
            "data=value_csv",
            f"data.source.table={value_csv}",
            f"run_dir={tmp_path / name}",
            *extra,
        )

    trained = run(cfg("train"))
    assert trained["task"] == NAME and Path(trained["last_checkpoint"]).is_file()
    assert trained["best_checkpoint"] and "val/loss" in trained["metrics"]
    assert (tmp_path / "train" / "export" / "model.safetensors").is_file()
    ckpt = trained["last_checkpoint"]
    assert tasks.load_module(ckpt).task_name == NAME

    validated = run(cfg("validate", "mode=validate", f"ckpt_path={ckpt}"))
    assert validated["metrics"]["val/loss"] >= 0 and validated["metrics"]["val/mae"] >= 0
    predicted = run(cfg("predict", "mode=predict", f"ckpt_path={ckpt}", f"predict.input={value_csv.parent}"))
    with open(predicted["predictions"], newline="") as f:
        assert len(list(csv.DictReader(f))) == 12
    exported = run(cfg("export", "mode=export", f"ckpt_path={ckpt}"))
    state = safetensors.torch.load_file(str(Path(exported["export_dir"]) / "model.safetensors"))
    assert "head.weight" in state

    with pytest.raises(
        NotSupportedError, match=f"task={NAME} does not support mode=embed; it supports train"
    ):
        run(cfg("embed", "mode=embed", f"ckpt_path={ckpt}", f"predict.input={value_csv.parent}"))
