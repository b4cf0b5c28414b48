"""On a CUDA GPU: bf16-mixed and 16-mixed training steps run, and their throughput vs 32 is measured.

Skipped without CUDA. ``python benchmarks/precision.py`` records the same numbers for BENCHMARKS.md.
"""

from __future__ import annotations

import pytest
import torch

from b4transfer.modes import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_trains_on_gpu(tiny_cfg, precision):
    if precision == "bf16-mixed" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    summary = train(tiny_cfg("trainer.accelerator=gpu", f"precision={precision}"))
    assert summary["precision"] == precision and summary["global_step"] > 0
    assert all(torch.isfinite(torch.tensor(v)) for v in summary["metrics"].values())


def test_mixed_precision_throughput_vs_fp32_on_b4():
    from benchmarks.precision import measure, table

    rows = [measure(p, batch_size=16, image_size=256, steps=10, warmup=3) for p in ("32-true", "16-mixed")]
    if torch.cuda.is_bf16_supported():
        rows.append(measure("bf16-mixed", batch_size=16, image_size=256, steps=10, warmup=3))
    print("\n" + table(rows))
    assert all(r["finite_loss"] and r["images_per_s"] > 0 for r in rows)


def test_fsdp_trains_on_one_gpu_and_exports(tiny_cfg, tmp_path):
    summary = train(tiny_cfg("trainer.accelerator=gpu", "strategy=fsdp", "precision=bf16-mixed"))
    assert summary["global_step"] > 0 and (tmp_path / "run" / "export" / "model.safetensors").is_file()
