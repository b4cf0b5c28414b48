"""``loss.class_weights`` is checked before any work for every task (issue 24): an infinite or NaN weight
(the segmentation loss became 0 and nothing learned, silently), a string or a list holding a string, or
all zeros are refused in one line naming the value and the fix, before the data is read or a run
directory made."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import TINY, compose_cfg

from b4transfer.errors import NotSupportedError, UserError
from b4transfer.modes import run
from b4transfer.tasks.classification.losses import class_weights
from b4transfer.tasks.segmentation.losses import SegmentationLoss, pixel_class_weights

FINITE = "each weight must be a finite number >= 0"
BAD = [
    ("loss.class_weights=[1,inf]", r"loss.class_weights=\[1, inf\] holds \[inf\]: " + FINITE),
    ("loss.class_weights=[1,nan]", r"loss.class_weights=\[1, nan\] holds \[nan\]: " + FINITE),
    ("loss.class_weights=[1,x]", r"loss.class_weights=\[1, 'x'\] holds \['x'\]"),
    ("loss.class_weights='1,2'", r"loss.class_weights=1,2 is not a weighting; use auto"),
    ("loss.class_weights=3", r"loss.class_weights=3 is neither a weighting nor a list of weights"),
    ("loss.class_weights=[0,0]", r"loss.class_weights=\[0, 0\]: all weights are 0"),
]


@pytest.mark.parametrize(("override", "message"), BAD)
@pytest.mark.parametrize(("task", "data"), [("classification", "folder"), ("segmentation", "seg_folder")])
def test_bad_class_weights_are_refused_before_any_work(task, data, override, message, tmp_path):
    cfg = compose_cfg(
        *TINY,
        f"task={task}",
        f"data={data}",
        f"data.root={tmp_path / 'missing'}",
        f"run_dir={tmp_path / 'run'}",
        override,
    )
    with pytest.raises(UserError, match=message + r".*Fix: loss.class_weights=auto") as info:
        run(cfg)  # the data root does not exist: the refusal comes before the data is read
    assert "\n" not in str(info.value) and "finite number >= 0 per class" in str(info.value)
    assert not (tmp_path / "run").exists()


def test_detection_refuses_any_class_weights_in_one_line(tmp_path):
    # detection's config has no loss.* (loss.class_weights=... is refused at composition, test_settings.py);
    # one added with + is refused by the task
    cfg = compose_cfg(*TINY, "task=detection", f"run_dir={tmp_path / 'run'}", "+loss.class_weights=[1,inf]")
    with pytest.raises(
        NotSupportedError, match=r"task=detection does not support loss.class_weights=\[1, inf"
    ):
        run(cfg)


def test_the_weight_functions_refuse_the_same_values_when_called_directly():
    for bad in ([1.0, float("inf")], [1.0, float("nan")], [1, "x"], "1,2"):
        with pytest.raises(UserError, match="loss.class_weights="):
            class_weights(bad, [5, 5], ["a", "b"])
        with pytest.raises(UserError, match="loss.class_weights="):
            pixel_class_weights(bad, [5, 5], ["a", "b"])
    assert class_weights([0, 2], [5, 5], ["a", "b"]) == [0.0, 2.0]  # a class may be weighted 0
    assert pixel_class_weights([0, 2], [5, 5], ["a", "b"]) == [0.0, 2.0]


def test_the_segmentation_loss_is_zero_only_when_nothing_is_left_to_learn():
    logits = torch.randn(1, 2, 4, 4)
    ignored = torch.full((1, 4, 4), 255)
    assert SegmentationLoss()(logits, ignored) == 0  # every pixel ignored (a crop of padding)
    zero_weighted = torch.zeros((1, 4, 4), dtype=torch.long)
    assert SegmentationLoss(class_weights=[0.0, 1.0])(logits, zero_weighted) == 0  # only a class weighted 0
    assert SegmentationLoss(class_weights=[1.0, 1.0])(logits, zero_weighted) > 0
