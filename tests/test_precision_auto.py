"""``precision=auto``: bf16-mixed + channels_last where bf16 is native, else fp32; in the summary."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import TINY, compose_cfg
from tests.test_detection_head import _module, _target

from b4transfer.modes import train
from b4transfer.runtime import inference
from b4transfer.training.devices import resolve_precision, trainer_kwargs


@pytest.fixture
def native(monkeypatch):
    """Pretend the hardware does (True) or does not (False) compute bf16 natively."""

    def set_native(value: bool):
        monkeypatch.setattr(inference, "bf16_native", lambda device: value)

    return set_native


def test_auto_is_the_default_for_classification_and_an_option_for_detection_and_segmentation():
    assert compose_cfg().trainer.precision == "auto"
    assert compose_cfg("precision=32-true").trainer.precision == "32-true"
    for task in ("detection", "segmentation"):  # their recipes stay fp32 until bf16 is measured there
        assert compose_cfg(f"task={task}").trainer.precision == "32-true"
        assert compose_cfg(f"task={task}", "precision=auto").trainer.precision == "auto"


@pytest.mark.parametrize("accelerator", ["cpu", "gpu"])
def test_auto_resolves_to_bf16_mixed_and_channels_last_where_bf16_is_native(native, accelerator):
    native(True)
    plan = resolve_precision({"precision": "auto", "accelerator": accelerator})
    assert (plan.requested, plan.used, plan.channels_last) == ("auto", "bf16-mixed", True)
    assert ("GPU" if accelerator == "gpu" else "AVX512-BF16") in plan.reason
    kwargs = trainer_kwargs({"precision": "auto", "accelerator": accelerator}, None)
    assert kwargs["precision"] == "bf16-mixed"


def test_auto_falls_back_to_fp32_where_bf16_is_not_native(native):
    native(False)
    plan = resolve_precision({"precision": "auto", "accelerator": "cpu"})
    assert (plan.used, plan.channels_last) == ("32-true", False) and "no native bf16" in plan.reason
    assert trainer_kwargs({"precision": "auto", "accelerator": "cpu"}, None)["precision"] == "32-true"


def test_explicit_precisions_pass_through_untouched(native):
    native(True)
    for choice in ("32-true", "bf16-mixed", "16-mixed"):
        assert resolve_precision({"precision": choice}) == resolve_precision({"precision": choice})
        assert resolve_precision({"precision": choice}).used == choice
        assert not resolve_precision({"precision": choice}).channels_last


def test_auto_trains_in_bf16_channels_last_and_the_summary_records_it(tiny_cfg, native, caplog):
    native(True)
    with caplog.at_level("INFO", logger="b4transfer.training.devices"):
        summary = train(
            tiny_cfg("precision=auto", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1")
        )
    assert summary["precision"] == "bf16-mixed" and summary["global_step"] == 2
    plan = summary["precision_plan"]
    assert plan["requested"] == "auto" and plan["used"] == "bf16-mixed" and plan["channels_last"]
    assert plan["fp32_depthwise"]
    assert "native bf16" in plan["reason"]
    assert [r.getMessage() for r in caplog.records if "precision=auto" in r.getMessage()] == [
        f"precision=auto: bf16-mixed + channels_last ({plan['reason']})"
    ]
    assert summary["best_checkpoint"] and torch.isfinite(torch.tensor(summary["metrics"]["train/loss"]))


def test_auto_without_native_bf16_trains_plain_fp32(tiny_cfg, native):
    native(False)
    cfg = tiny_cfg("precision=auto", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1")
    summary = train(cfg)
    assert summary["precision"] == "32-true"
    assert summary["precision_plan"]["used"] == "32-true" and not summary["precision_plan"]["channels_last"]


def test_auto_trains_a_detector(tmp_path, native):
    native(True)
    cfg = compose_cfg(
        *TINY,
        "task=detection",
        "data.source.image_size=64",
        "data.source.train_images=8",
        "data.source.val_images=4",
        f"data.source.root={tmp_path / 'demo'}",
        "head.fpn_channels=32",
        f"run_dir={tmp_path / 'run'}",
        "precision=auto",
        "trainer.limit_train_batches=1",
    )
    summary = train(cfg)
    assert summary["precision"] == "bf16-mixed" and summary["precision_plan"]["channels_last"]
    assert summary["global_step"] == 1 and "val/map" in summary["metrics"]


@pytest.mark.parametrize("detector", ["retinanet", "fcos", "faster_rcnn"])
def test_detection_geometry_and_losses_stay_fp32_under_bf16_autocast(detector):
    """Autocast runs the convolutions in bf16; anchors, box losses, decoding and NMS stay fp32 (within
    2 % of the fp32 losses from the same weights -- RetinaNet / FCOS within 0.1 %, Faster R-CNN's box loss
    ~1 %: bf16 objectness scores reorder its proposals; without the fp32 boundaries the anchors and boxes
    were bf16 and that loss moved 4 %)."""
    module = _module(detector).train()
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    targets = [_target([[4, 6, 30, 40], [35, 10, 60, 30]], [0, 2]), _target([[10, 10, 50, 50]], [1])]
    det = module.head.detector
    generator = det.rpn.anchor_generator if detector == "faster_rcnn" else det.anchor_generator
    anchor_dtypes = []
    generator.register_forward_hook(lambda mod, args, out: anchor_dtypes.append(out[0].dtype))
    torch.manual_seed(1)
    fp32 = {k: float(v.detach()) for k, v in module(images, targets).items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(1)
        bf16 = {k: float(v.detach()) for k, v in module(images, targets).items()}
    assert anchor_dtypes == [torch.float32, torch.float32]
    for key, value in fp32.items():
        assert bf16[key] == pytest.approx(value, rel=2e-2, abs=1e-4), key
    module.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(images)
    assert all(d["boxes"].dtype == torch.float32 and d["scores"].dtype == torch.float32 for d in out)


@pytest.mark.parametrize("task", ["classification", "detection"])
def test_the_precision_benchmark_times_auto_against_fp32(task):
    from benchmarks.precision import compare, table

    rows = compare(
        ["32-true", "auto"], device="cpu", steps=1, rounds=1, warmup=1, task=task,
        model_name="test_efficientnet", image_size=64, batch_size=2, fpn_channels=32,
    )
    auto = resolve_precision({"precision": "auto", "accelerator": "cpu"}).used
    assert [r["used"] for r in rows] == ["32-true", auto]
    assert all(r["finite_loss"] and r["images_per_s"] > 0 for r in rows) and "auto" in table(rows)


def test_bf16_on_a_cpu_keeps_depthwise_convolutions_fp32(native):
    native(True)
    assert resolve_precision({"precision": "auto", "accelerator": "cpu"}).fp32_depthwise
    assert resolve_precision({"precision": "bf16-mixed", "accelerator": "cpu"}).fp32_depthwise
    assert not resolve_precision({"precision": "auto", "accelerator": "gpu"}).fp32_depthwise
    assert not resolve_precision({"precision": "32-true", "accelerator": "cpu"}).fp32_depthwise
    from benchmarks.precision import resolve  # the benchmark times the plan, or bf16 depthwise on request

    assert resolve("auto", "cpu") == ("bf16-mixed", True, True)
    assert resolve("bf16-mixed+cl+bf16dw", "cpu") == ("bf16-mixed", True, False)
    with pytest.raises(ValueError, match="bf16dw"):
        resolve("auto+fast", "cpu")


def test_fp32_depthwise_changes_dtypes_not_parameters():
    import copy
    import io

    import timm

    from b4transfer.runtime.speed import fp32_depthwise

    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", num_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    depthwise = [m for m in convs if m.groups > 1 and m.groups == m.in_channels]
    assert depthwise and len(depthwise) < len(convs)
    assert fp32_depthwise(model) == len(depthwise) and fp32_depthwise(model) == 0  # idempotent
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # copies and pickles keep working, and without autocast they compute what the model computes
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded, copied = torch.load(buffer, weights_only=False).eval(), copy.deepcopy(model).eval()
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(loaded(x), model.eval()(x)) and torch.equal(copied(x), model(x))
    model.train()
    dtypes = {}
    for m in convs:
        m.register_forward_hook(lambda mod, args, out: dtypes.__setitem__(mod, out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x).float().sum().backward()
    assert {dtypes[m] for m in depthwise} == {torch.float32}
    assert {dtypes[m] for m in convs if m not in depthwise} == {torch.bfloat16}
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
