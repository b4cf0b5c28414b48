"""Export parity at the metric level: the validation split scored through every export's own runtime
(``Task.score_export``), each format's metric and its difference from the PyTorch model in
``summary.json``; a difference beyond ``export.parity_tolerance`` is a loud warning."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from b4transfer.config import plain
from b4transfer.errors import UserError
from b4transfer.modes.common import export_formats
from b4transfer.tasks.base import Task, TaskModule

log = logging.getLogger(__name__)


def tolerance(cfg: DictConfig) -> float:
    value = plain((cfg.get("export") or {}).get("parity_tolerance", 0.01))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise UserError(
            f"export.parity_tolerance must be a metric difference >= 0, got {value!r}; e.g. 0.01 (one point)."
        )
    return float(value)


def check_parity(
    cfg: DictConfig, task: Task, module: TaskModule, out_dir: Path, *, splits: Any, datamodule: Any = None
) -> dict[str, Any]:
    """Score ``module`` and each exported format on the validation split; the summary's parity table."""
    tol = tolerance(cfg)

    def score(fmt: str) -> dict[str, Any]:
        start = time.perf_counter()
        out = task.score_export(fmt, module, out_dir, cfg=cfg, splits=splits, datamodule=datamodule)
        return {**out, "seconds": round(time.perf_counter() - start, 2)}

    reference = score("pytorch")
    table: dict[str, Any] = {"pytorch": reference}
    for fmt in export_formats(cfg, task):
        try:
            row = score(fmt)
        except Exception as err:  # the artefact does not run in its runtime: as loud, the run is kept
            first = (str(err).splitlines() or [""])[0][:300]
            table[fmt] = {"error": f"{type(err).__name__}: {first}", "within_tolerance": False}
            log.warning("EXPORT PARITY: export.format=%s failed to run in its own runtime on the validation "
                        "split (%s). HINT: do not ship this artefact.", fmt, table[fmt]["error"])
            continue
        row["diff"] = round(row["value"] - reference["value"], 6)
        row["within_tolerance"] = abs(row["diff"]) <= tol
        table[fmt] = row
        if not row["within_tolerance"]:
            log.warning(
                "EXPORT PARITY: export.format=%s scores %s = %.4f through its own runtime, %+.4f from the "
                "PyTorch model's %.4f (tolerance %.4f). HINT: do not ship this artefact before finding out "
                "why (preprocessing, opset, quantisation); summary.json -> parity has every format.",
                fmt, row["metric"], row["value"], row["diff"], reference["value"], tol,
            )
    log.info("Export parity (%s): %s", reference["metric"], {k: v["value"] for k, v in table.items()})
    return {"metric": reference["metric"], "split": "val", "tolerance": tol, "formats": table}
