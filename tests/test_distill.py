"""``mode=distill`` (issue 28): the Hinton loss, a student of another architecture trained from a teacher
run and exported like any model (its card names the teacher), cached teacher logits that train the same
student as the on-the-fly teacher, pseudo-labels from unlabelled images, and every refusal before
training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import TINY, compose_cfg, make_image_folder

from b4transfer import tasks
from b4transfer.data.images import load_rgb
from b4transfer.distill import hinton_loss, soft_target_loss
from b4transfer.distill.teacher import TeacherSpec, class_order
from b4transfer.errors import NotSupportedError, UserError, UserFileNotFoundError
from b4transfer.modes import run
from b4transfer.tasks.classification import distill as cls_distill
from b4transfer.tasks.classification.distill import pseudo_samples
from b4transfer.tasks.classification.explain import eval_transform

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny teacher run (test_efficientnet, 1 epoch) and its data folder."""
    root = tmp_path_factory.mktemp("teacher")
    images = make_image_folder(root / "images")
    base = (*TINY, "data=folder", f"data.root={images}", "data.image_size=32")
    summary = run(compose_cfg(*base, f"run_dir={root / 'run'}"))
    return {"run": root / "run", "images": images, "base": base, "summary": summary}


def _student(teacher, tmp_path, *overrides):
    return compose_cfg(
        *teacher["base"],
        "mode=distill",
        f"distill.teacher={teacher['run']}",
        *overrides,
        f"run_dir={tmp_path / 's'}",
    )


# ---------------------------------------------------------------------------------------------- the loss
def test_hinton_loss_is_the_weighted_sum_of_the_soft_and_hard_terms():
    torch.manual_seed(0)
    s, t, y = torch.randn(6, 4), torch.randn(6, 4), torch.randint(0, 4, (6,))
    hard = F.cross_entropy(s, y)
    loss, soft = hinton_loss(s, t, hard, alpha=0.7, temperature=3.0)
    p_t = (t / 3).softmax(-1)
    expected_soft = 9 * (p_t * (p_t.log() - (s / 3).log_softmax(-1))).sum(-1).mean()
    assert soft == pytest.approx(float(expected_soft), rel=1e-5)
    assert loss == pytest.approx(float(0.7 * expected_soft + 0.3 * hard), rel=1e-5)
    assert hinton_loss(s, t, hard, alpha=0.0, temperature=3.0) == (hard, None)  # alpha 0: the labels alone
    assert float(soft_target_loss(t, t, 3.0)) == pytest.approx(0.0, abs=1e-6)  # nothing to learn from itself


def test_the_soft_term_per_pixel_and_per_label():
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    valid = torch.zeros(2, 4, 4, dtype=torch.bool)
    valid[0, 1, 2] = True  # one pixel counts
    one = soft_target_loss(s[:1, :, 1, 2], t[:1, :, 1, 2], 2.0)
    assert float(soft_target_loss(s, t, 2.0, valid=valid)) == pytest.approx(float(one), rel=1e-5)
    logits = torch.randn(3, 5)
    assert float(soft_target_loss(logits, logits, 2.0, multi_label=True)) == pytest.approx(0.0, abs=1e-5)
    assert float(soft_target_loss(logits + 1, logits, 2.0, multi_label=True)) > 0


def test_pseudo_labels_keep_only_what_the_teacher_is_sure_of(tmp_path):
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    probs = torch.tensor([[0.95, 0.05], [0.6, 0.4], [0.08, 0.92]])
    kept = pseudo_samples(probs, paths, 0.9, multi_label=False)
    assert [(s.path, s.target) for s in kept] == [(paths[0], 0), (paths[2], 1)]
    multi = pseudo_samples(torch.tensor([[0.95, 0.02], [0.95, 0.5]]), paths[:2], 0.9, multi_label=True)
    assert [(s.path, s.target) for s in multi] == [(paths[0], (0,))]  # label 2 of image 2: unsure


def test_a_teacher_s_classes_in_another_order_are_remapped_and_other_classes_refused(tmp_path):
    spec = TeacherSpec(tmp_path / "t.ckpt", "checkpoint", "classification", ["b", "c", "a"], "m")
    assert class_order(spec, ["a", "b", "c"]) == [2, 0, 1]
    assert class_order(spec, ["b", "c", "a"]) is None
    with pytest.raises(
        UserError,
        match=r"3 classes, the data holds 3: missing in the teacher: d; not in the "
        r"data: c\. Fix: pass a teacher trained on these classes",
    ):
        class_order(spec, ["a", "b", "d"])


# ----------------------------------------------------------------------------------------- end to end
def test_a_student_of_another_architecture_learns_from_the_teacher_and_exports_like_any_model(
    teacher, tmp_path
):
    summary = run(_student(teacher, tmp_path, "distill.student=test_resnet", "export.format=[timm,onnx]"))
    assert summary["mode"] == "distill" and summary["model"] == "test_resnet"
    report = summary["distillation"]
    assert (
        report["teacher"] == teacher["summary"]["best_checkpoint"]
        and report["teacher_logits"] == "on the fly"
    )
    assert summary["metrics"]["train/soft_loss"] > 0 and summary["metrics"]["train/hard_loss"] > 0
    export = Path(summary["export_dir"])
    config = json.loads((export / "config.json").read_text())
    assert config["architecture"] == "test_resnet" and (export / "model.onnx").is_file()
    card = (export / "README.md").read_text()
    assert "## Distillation" in card and teacher["summary"]["best_checkpoint"] in card
    student = tasks.load_module(summary["best_checkpoint"])  # a plain classifier: no teacher inside
    assert student.hparams.model["name"] == "test_resnet" and type(student).__name__ == "ClassificationModule"
    assert not any(
        k.startswith("teacher")
        for k in torch.load(summary["best_checkpoint"], weights_only=True)["state_dict"]
    )


def test_cached_teacher_logits_train_the_same_student_as_the_teacher_on_the_fly(
    teacher, tmp_path, monkeypatch
):
    fixed = ("data.augment=false", "ema.enabled=false", "trainer.max_epochs=2", "export.parity=false")
    cached = run(_student(teacher, tmp_path / "cached", *fixed))
    assert cached["distillation"]["teacher_logits"] == "cached"
    monkeypatch.setattr(
        cls_distill.ClassificationDistillation, "datamodule", lambda self, images, student: images
    )
    live = run(_student(teacher, tmp_path / "live", *fixed))
    assert live["distillation"]["teacher_logits"] == "on the fly"
    for key in ("train/loss", "train/soft_loss", "val/loss"):
        assert cached["metrics"][key] == pytest.approx(live["metrics"][key], rel=1e-4, abs=1e-6), key


def test_unlabelled_images_join_training_at_the_teacher_s_confidence(teacher, tmp_path):
    unlabelled = make_image_folder(tmp_path / "unl", per_class=3, seed=5)
    module = tasks.load_module(teacher["summary"]["best_checkpoint"])
    paths = sorted(unlabelled.rglob("*.png"))
    x = torch.stack([eval_transform(module)(load_rgb(p)) for p in paths])
    with torch.no_grad():
        top = module.head.probabilities(module(x)).max(-1).values
    threshold = float(top.median())
    summary = run(
        _student(
            teacher,
            tmp_path,
            f"distill.unlabeled={unlabelled}",
            f"distill.pseudo_threshold={threshold}",
            "distill.alpha=0",
        )
    )
    pseudo = summary["distillation"]["pseudo_labels"]
    assert pseudo["images"] == len(paths) and pseudo["threshold"] == threshold
    assert pseudo["used"] == int((top >= threshold).sum()) == sum(pseudo["per_class"].values()) > 0
    assert (
        summary["distillation"]["teacher_logits"] == "unused"
    )  # alpha 0: a plain fine-tune on pseudo-labels


# ------------------------------------------------------------------------------------------ refusals
def _fake_checkpoint(path: Path, *, task: str, classes: list[str]) -> Path:
    torch.save(
        {
            "hyper_parameters": {
                "task": task,
                "class_names": classes,
                "model": {"name": "test_efficientnet"},
            },
            "state_dict": {},
        },
        path,
    )
    return path


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (("distill.teacher=null",), UserError, r"mode=distill needs a teacher: pass distill.teacher=PATH"),
        (
            ("distill.teacher=/nowhere/run",),
            UserFileNotFoundError,
            r"distill.teacher='/nowhere/run' does not exist",
        ),
        (
            ("distill.student=tf_efficientnet_lite9",),
            UserError,
            r"student='tf_efficientnet_lite9' is not a timm model\. Close timm names: tf_efficientnet_lite",
        ),
        (
            ("distill.unlabeled=/nowhere/images",),
            UserFileNotFoundError,
            r"distill.unlabeled='/nowhere/images' is not a",
        ),
        (("distill.alpha=1.5",), UserError, r"distill.alpha must be a number in \[0, 1\], got 1.5"),
        (("distill.temperature=0",), UserError, r"distill.temperature must be a number > 0"),
        (("ckpt_path=x.ckpt",), UserError, r"mode=distill starts a new student and does not resume"),
        (
            ("data.cache_features=true",),
            UserError,
            r"data.cache_features=true .* Fix: set data.cache_features=false",
        ),
    ],
)
def test_bad_settings_are_refused_before_training(teacher, tmp_path, overrides, error, message):
    with pytest.raises(error, match=message):
        run(_student(teacher, tmp_path, *overrides))
    assert not (tmp_path / "s" / "checkpoints").exists()


def test_an_empty_unlabelled_folder_an_onnx_teacher_and_a_teacher_of_another_task_are_refused(
    teacher, tmp_path
):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(
        UserError, match=r"distill.unlabeled=.*empty' holds no images .* Fix: put the unlabelled"
    ):
        run(_student(teacher, tmp_path, f"distill.unlabeled={tmp_path / 'empty'}"))
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"onnx")
    with pytest.raises(
        UserError, match=r"is a \.onnx file; a teacher is loaded from its checkpoint or the timm"
    ):
        run(_student(teacher, tmp_path, f"distill.teacher={onnx}"))
    other = _fake_checkpoint(tmp_path / "seg.ckpt", task="segmentation", classes=["blue", "green", "red"])
    with pytest.raises(
        UserError, match=r"is a task=segmentation model, but this run is task=classification\. Fix"
    ):
        run(_student(teacher, tmp_path, f"distill.teacher={other}"))
    assert not (tmp_path / "s").exists()  # refused before the run directory was made


def test_a_teacher_with_other_classes_is_refused_before_training(teacher, tmp_path):
    other = _fake_checkpoint(tmp_path / "pets.ckpt", task="classification", classes=["cat", "dog", "red"])
    with pytest.raises(
        UserError, match=r"missing in the teacher: blue, green; not in the data: cat, dog\. Fix"
    ):
        run(_student(teacher, tmp_path, f"distill.teacher={other}"))
    assert not (tmp_path / "s" / "checkpoints").exists()


def test_detection_refuses_distillation_with_the_reason(tmp_path):
    cfg = compose_cfg(
        "task=detection", "mode=distill", f"distill.teacher={tmp_path}", f"run_dir={tmp_path / 'r'}"
    )
    with pytest.raises(
        NotSupportedError,
        match=r"task=detection does not support mode=distill; it supports .* \(a detector's "
        r"outputs are boxes",
    ):
        run(cfg)


def test_the_cli_shows_a_refusal_as_one_line(teacher, tmp_path):
    args = [
        sys.executable,
        str(ROOT / "run.py"),
        *teacher["base"],
        "mode=distill",
        f"distill.teacher={teacher['run']}",
        "distill.student=mobilenetv3_larg_100",
        f"hydra.run.dir={tmp_path / 'cli'}",
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 2, done.stderr[-2000:]
    assert (
        "error: distill.student='mobilenetv3_larg_100' is not a timm model. Close timm names: mobilenetv3_l"
        in done.stderr
        and "Traceback" not in done.stderr
    )


def test_a_timm_export_folder_teaches_as_its_checkpoint_does(teacher, tmp_path):
    fixed = ("data.augment=false", "ema.enabled=false", "export.parity=false", "calibrate.enabled=false")
    from_export = run(
        _student(teacher, tmp_path / "e", f"distill.teacher={teacher['run'] / 'export'}", *fixed)
    )
    from_ckpt = run(_student(teacher, tmp_path / "c", *fixed))
    assert from_export["distillation"]["teacher_kind"] == "export"
    assert from_ckpt["distillation"]["teacher_kind"] == "checkpoint"
    assert from_export["metrics"]["train/soft_loss"] == pytest.approx(
        from_ckpt["metrics"]["train/soft_loss"], rel=1e-4
    )


def test_with_alpha_zero_the_student_trains_exactly_as_mode_train_does(teacher, tmp_path):
    """The student starts from the weights and random stream of a plain run with the same seed, whatever
    loading the teacher draws: distilled and plain students differ only by the teacher's loss."""
    plain = run(compose_cfg(*teacher["base"], "model=test_efficientnet", f"run_dir={tmp_path / 'plain'}"))
    student = run(_student(teacher, tmp_path, "distill.alpha=0"))
    for key in ("train/loss", "val/loss", "val/acc1"):
        assert student["metrics"][key] == pytest.approx(plain["metrics"][key], rel=1e-5), key


def test_a_segmentation_student_learns_from_the_teacher_per_pixel(tmp_path):
    from tests.test_segmentation import SEG

    base = (*TINY, *SEG, f"data.source.root={tmp_path / 'demo'}")
    teacher = run(compose_cfg(*base, f"run_dir={tmp_path / 'teacher'}"))
    student = run(
        compose_cfg(
            *base,
            "mode=distill",
            f"distill.teacher={tmp_path / 'teacher'}",
            "distill.student=test_resnet",
            f"run_dir={tmp_path / 'student'}",
        )
    )
    assert (
        student["mode"] == "distill"
        and student["model"] == "test_resnet"
        and student["task"] == "segmentation"
    )
    assert student["distillation"]["teacher"] == teacher["best_checkpoint"]
    assert student["metrics"]["train/soft_loss"] > 0 and "val/miou" in student["metrics"]
    assert tasks.load_module(student["best_checkpoint"]).hparams.model["name"] == "test_resnet"
    with pytest.raises(
        NotSupportedError, match=r"task=segmentation does not support distill.unlabeled=.*; it"
    ):
        run(
            compose_cfg(
                *base,
                "mode=distill",
                f"distill.teacher={tmp_path / 'teacher'}",
                f"distill.unlabeled={tmp_path / 'demo'}",
                f"run_dir={tmp_path / 'refused'}",
            )
        )
    with pytest.raises(UserError, match=r"is a task=segmentation model, but this run is task=classification"):
        run(
            compose_cfg(
                *TINY,
                "data=folder",
                f"data.root={make_image_folder(tmp_path / 'cls')}",
                "mode=distill",
                f"distill.teacher={tmp_path / 'teacher'}",
                f"run_dir={tmp_path / 'cls-run'}",
            )
        )


def test_seeds_repeat_a_distillation_and_report_the_spread(teacher, tmp_path):
    summary = run(_student(teacher, tmp_path, "seeds=[0,1]"))
    assert summary["mode"] == "distill" and [r["seed"] for r in summary["runs"]] == [0, 1]
    assert summary["spread"]["n"] == 2 and summary["spread"]["monitor"] == "val/acc1"
    for r in summary["runs"]:
        assert json.loads((Path(r["run_dir"]) / "summary.json").read_text())["mode"] == "distill"
