"""Detection head: FPN over the backbone's ``features_only`` maps -> torchvision RetinaNet/FCOS/Faster R-CNN.

Everything detection-specific is torchvision's: ``FeaturePyramidNetwork`` (sized from the backbone's
``feature_info.channels()``; extra P6/P7 levels for RetinaNet and FCOS, a max-pool level for Faster
R-CNN), the anchor generator, box coders, losses, NMS and ``GeneralizedRCNNTransform`` (normalisation
with the backbone's mean/std; its resize is set to the data's letterbox size, so it never re-resizes
the letterboxed canvas). This module only wires them to a timm backbone and adds what Lightning needs:
a validation loss (torchvision gives losses only in train mode), crowd handling and COCO mAP.

The timm body is *shared*, not owned, when the head lives in a
:class:`~b4transfer.tasks.detection.module.DetectionModule`:
the module keeps it as ``self.backbone`` (so freezing schedules and optimizer groups see it once) and
the head's state holds only the FPN and the detector heads. :func:`build_detector` with
``own_body=True`` gives a standalone torchvision detector (the exported form).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchmetrics.detection import MeanAveragePrecision
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from b4transfer.backbone import feature_reductions
from b4transfer.errors import MissingDependencyError, UserError
from b4transfer.tasks.detection.fpn import FeaturePyramidBackbone
from b4transfer.tasks.detection.mixed_precision import fp32_boundaries
from b4transfer.tasks.detection.retinanet_head import retinanet_head

DETECTORS = ("retinanet", "fcos", "faster_rcnn")
_CLASSES = {"retinanet": RetinaNet, "fcos": FCOS, "faster_rcnn": FasterRCNN}
# Arguments b4transfer sets itself; detector_kwargs may set any other constructor argument.
_OWN_ARGS = {
    "backbone",
    "num_classes",
    "min_size",
    "max_size",
    "image_mean",
    "image_std",
    "anchor_generator",
    "rpn_anchor_generator",
    "box_roi_pool",
    "score_thresh",
    "nms_thresh",
    "detections_per_img",
    "box_score_thresh",
    "box_nms_thresh",
    "box_detections_per_img",
    "kwargs",
    "head",
}
_NORM_OR_DROPOUT = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


def _check(key: str, value, ok: bool, want: str) -> None:
    if not ok:
        raise UserError(f"head.{key}={value!r} is invalid: {want}.")


def _real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def level_strides(body: nn.Module, detector: str) -> list[int]:
    """Strides of the detector's feature levels: the backbone's, plus P6/P7 (or the pool level)."""
    strides = feature_reductions(body)
    extra = 1 if detector == "faster_rcnn" else 2
    return strides + [strides[-1] * 2 ** (k + 1) for k in range(extra)]


def default_anchor_sizes(strides: Sequence[int], detector: str) -> list[list[float]]:
    """torchvision's defaults, by stride: RetinaNet 4s x 2^(0, 1/3, 2/3); Faster R-CNN 4s; FCOS s."""
    if detector == "retinanet":
        return [[4 * s, int(4 * s * 2 ** (1 / 3)), int(4 * s * 2 ** (2 / 3))] for s in strides]
    return [[s] for s in strides] if detector == "fcos" else [[4 * s] for s in strides]


def _anchor_generator(strides, detector, anchor_sizes, aspect_ratios) -> AnchorGenerator:
    sizes = default_anchor_sizes(strides, detector) if anchor_sizes is None else anchor_sizes
    ok = (
        isinstance(sizes, (list, tuple))
        and len(sizes) == len(strides)
        and all(
            isinstance(level, (list, tuple)) and level and all(_real(v) and v > 0 for v in level)
            for level in sizes
        )
    )
    _check(
        "anchor_sizes",
        anchor_sizes,
        ok,
        f"give one list of positive sizes (pixels) per level, {len(strides)} "
        f"levels at strides {list(strides)}, e.g. {default_anchor_sizes(strides, detector)}",
    )
    if detector != "faster_rcnn":  # one shared head: the same number of anchors at every level
        _check(
            "anchor_sizes",
            anchor_sizes,
            len({len(level) for level in sizes}) == 1,
            "every level needs the same number of sizes",
        )
    default_ratios = [1.0] if detector == "fcos" else [0.5, 1.0, 2.0]
    ratios = default_ratios if aspect_ratios is None else aspect_ratios
    ok = isinstance(ratios, (list, tuple)) and ratios and all(_real(r) and r > 0 for r in ratios)
    _check(
        "aspect_ratios",
        aspect_ratios,
        ok,
        "give a list of positive height/width ratios, e.g. [0.5, 1.0, 2.0]",
    )
    if detector == "fcos":
        _check(
            "anchor_sizes",
            anchor_sizes,
            len(sizes[0]) == 1 and list(ratios) == [1.0],
            "FCOS is anchor-free: one size (the stride) and aspect ratio 1.0 per level",
        )
    return AnchorGenerator(
        tuple(tuple(level) for level in sizes), (tuple(float(r) for r in ratios),) * len(sizes)
    )


def _check_detector_kwargs(detector: str, kwargs: dict | None) -> dict:
    kwargs = dict(kwargs or {})
    allowed = sorted(set(inspect.signature(_CLASSES[detector].__init__).parameters) - _OWN_ARGS - {"self"})
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise UserError(
            f"head.detector_kwargs has {unknown}, which torchvision's {_CLASSES[detector].__name__} does not "
            "take "
            f"(or b4transfer sets from other head keys). Fix: use any of {allowed}."
        )
    return kwargs


def build_detector(
    body: nn.Module,
    num_classes: int,
    *,
    image_size: int,
    image_mean: Sequence[float],
    image_std: Sequence[float],
    detector: str = "retinanet",
    fpn_channels: int = 128,
    anchor_sizes: Sequence[Sequence[float]] | None = None,
    aspect_ratios: Sequence[float] | None = None,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    detector_kwargs: dict[str, Any] | None = None,
    own_body: bool = True,
    head_norm: str | None = None,
    box_loss: str | None = None,
) -> nn.Module:
    """A torchvision detector around ``body`` (a timm ``features_only`` model) and an FPN.

    Args:
        body: The feature extractor; its ``feature_info`` sizes the FPN.
        num_classes: Object classes (Faster R-CNN gets one more, its background class 0).
        image_size: The letterbox canvas side: the detector's min and max size.
        image_mean: Normalisation mean (images come in as 0..1 floats).
        image_std: Normalisation std.
        detector: ``retinanet``, ``fcos`` or ``faster_rcnn``.
        fpn_channels: FPN width (FCOS: a multiple of 32, for its GroupNorm).
        anchor_sizes: Anchor sizes in pixels, one list per level; ``None``: by stride, see
            :func:`default_anchor_sizes`.
        aspect_ratios: Anchor height/width ratios; ``None``: ``[0.5, 1, 2]`` (FCOS: ``[1]``).
        score_thresh: Detections below this score are dropped.
        nms_thresh: IoU above which NMS suppresses the lower-scored box.
        detections_per_img: At most this many detections per image.
        detector_kwargs: More constructor arguments of the torchvision class.
        own_body: Register ``body`` inside the detector (standalone use).
        head_norm: RetinaNet only: ``"group"`` puts GroupNorm(32) in its heads (torchvision's v2 head).
        box_loss: RetinaNet only: its box loss (``l1`` by default; ``giou`` as in torchvision's v2).

    Returns:
        The torchvision ``RetinaNet`` / ``FCOS`` / ``FasterRCNN``.
    """
    _check("detector", detector, detector in DETECTORS, f"choose one of {list(DETECTORS)}")
    _check(
        "fpn_channels",
        fpn_channels,
        isinstance(fpn_channels, int)
        and not isinstance(fpn_channels, bool)
        and fpn_channels > 0
        and (detector != "fcos" or fpn_channels % 32 == 0),
        "a positive integer (FCOS: a multiple of 32, its heads use GroupNorm(32))",
    )
    strides = level_strides(body, detector)
    if detector == "fcos" and fpn_channels == 32:
        coarsest = -(-image_size // strides[-1])  # side of the P7 map
        _check(
            "fpn_channels",
            fpn_channels,
            coarsest > 1,
            f"at image size {image_size} FCOS's coarsest level is 1x1, and its GroupNorm(32) over 32 "
            "channels would normalise single values (a constant output; a batch of one crashes); use "
            f"head.fpn_channels=64 or more, or data.image_size above {strides[-1]}",
        )
    _check("score_thresh", score_thresh, _real(score_thresh) and 0 <= score_thresh < 1, "a number in [0, 1)")
    _check("nms_thresh", nms_thresh, _real(nms_thresh) and 0 < nms_thresh <= 1, "an IoU in (0, 1]")
    _check(
        "detections_per_img",
        detections_per_img,
        isinstance(detections_per_img, int)
        and not isinstance(detections_per_img, bool)
        and detections_per_img > 0,
        "a positive integer",
    )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}.")
    kwargs = _check_detector_kwargs(detector, detector_kwargs)
    anchors = _anchor_generator(strides, detector, anchor_sizes, aspect_ratios)
    transform = {
        "min_size": image_size,
        "max_size": image_size,
        "image_mean": list(image_mean),
        "image_std": list(image_std),
    }
    c = fpn_channels
    n_anchors = anchors.num_anchors_per_location()[0]
    head = retinanet_head(detector, c, n_anchors, num_classes, head_norm, box_loss)
    if head is not None:
        kwargs["head"] = head
    if detector == "faster_rcnn":
        return fp32_boundaries(_faster_rcnn(body, num_classes, c, anchors, own_body, transform, kwargs,
                                            score_thresh, nms_thresh, detections_per_img))
    backbone = FeaturePyramidBackbone(
        body, out_channels=c, extra_blocks=LastLevelP6P7(c, c), own_body=own_body
    )
    return fp32_boundaries(_CLASSES[detector](
        backbone,
        num_classes,
        anchor_generator=anchors,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
        **transform,
        **kwargs,
    ))


def _faster_rcnn(body, num_classes, c, anchors, own_body, transform, kwargs, score_thresh, nms_thresh,
                 detections_per_img) -> nn.Module:
    backbone = FeaturePyramidBackbone(
        body, out_channels=c, extra_blocks=LastLevelMaxPool(), own_body=own_body
    )
    pool = MultiScaleRoIAlign([str(i) for i in range(len(backbone.in_channels_list))], 7, 2)
    return FasterRCNN(
        backbone,
        num_classes + 1,
        rpn_anchor_generator=anchors,
        box_roi_pool=pool,
        box_score_thresh=score_thresh,
        box_nms_thresh=nms_thresh,
        box_detections_per_img=detections_per_img,
        **transform,
        **kwargs,
    )


def map_backend() -> str:
    """``faster_coco_eval`` when installed, else ``pycocotools``.

    Raises:
        MissingDependencyError: Neither is installed (both come with the plain install; an install with
            ``--no-deps`` can lack them). ``DetectionTask.check_config`` asks first, before any work.
    """
    for backend in ("faster_coco_eval", "pycocotools"):
        try:
            importlib.import_module(backend)  # imported, not just found: a broken install counts as missing
        except ImportError:
            continue
        return backend
    raise MissingDependencyError(
        "task=detection computes COCO mAP with the package faster-coco-eval (or pycocotools), and neither "
        "is installed. Fix: pip install faster-coco-eval pycocotools (or reinstall b4transfer with its "
        "dependencies: pip install -e .)."
    )


def to_original(boxes: torch.Tensor, target: dict) -> torch.Tensor:
    """Canvas boxes -> original-image pixels (divide by the letterbox scale, clip to the image)."""
    scale = target["scale"].to(boxes)
    if torch.isnan(scale).any():
        return boxes
    height, width = (int(v) for v in target["orig_size"])
    out = boxes / scale
    out[:, 0::2] = out[:, 0::2].clamp(0, width)
    out[:, 1::2] = out[:, 1::2].clamp(0, height)
    return out


class DetectionHead(nn.Module):
    """FPN + torchvision detector over a shared timm body, with loss, post-processing and mAP.

    Args:
        body: The timm ``features_only`` model (``DetectionModule.backbone``).
        num_classes: Object classes; labels are ``0..num_classes-1`` in and out, for every detector.
        feature_strides: The strides ``body`` was built for (checked against its ``feature_info``).
        own_body: See :class:`FeaturePyramidBackbone` (here ``False``: the body stays the module's).
        **settings: What :func:`build_detector` takes besides those: ``image_size`` (letterbox canvas
            side), ``image_mean`` and ``image_std`` (normalisation), all three required; ``detector``,
            ``fpn_channels``, ``anchor_sizes``, ``aspect_ratios``, ``score_thresh``, ``nms_thresh``,
            ``detections_per_img``, ``detector_kwargs``, ``head_norm``, ``box_loss``.
    """

    multi_label = False

    def __init__(
        self, body: nn.Module, num_classes: int, *, feature_strides: Sequence[int] | None = None,
        own_body: bool = False, **settings: Any,
    ) -> None:
        super().__init__()
        if feature_strides is not None and list(feature_strides) != feature_reductions(body):
            raise UserError(
                f"head.feature_strides={list(feature_strides)} but the backbone gives maps at "
                f"strides {feature_reductions(body)}; build it with out_indices_for_strides."
            )
        self.num_classes = num_classes
        self.detector_name = settings.get("detector", "retinanet")
        self.label_offset = 1 if self.detector_name == "faster_rcnn" else 0  # its class 0 is background
        self.detector = build_detector(body, num_classes, own_body=own_body, **settings)

    @property
    def fpn(self) -> FeaturePyramidNetwork:
        """The feature pyramid network."""
        return self.detector.backbone.fpn

    @property
    def anchor_sizes(self) -> list[list[float]]:
        """Anchor sizes per level, in canvas pixels (RetinaNet / FCOS, or Faster R-CNN's RPN)."""
        generator = getattr(self.detector, "anchor_generator", None) or self.detector.rpn.anchor_generator
        return [list(level) for level in generator.sizes]

    def _train_targets(self, targets: list[dict]) -> list[dict]:
        out = []
        for t in targets:
            keep = t["iscrowd"] == 0 if "iscrowd" in t else torch.ones_like(t["labels"], dtype=torch.bool)
            out.append({"boxes": t["boxes"][keep], "labels": t["labels"][keep] + self.label_offset})
        return out  # crowd regions are not objects to learn; evaluation ignores matches to them

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        """Train mode: the loss dict. Eval mode: ``[{"boxes", "scores", "labels"}]`` in input-image pixels."""
        if self.detector.training:
            return self.detector(images, self._train_targets(targets))
        detections = self.detector(images)
        for d in detections:
            d["labels"] = d["labels"] - self.label_offset
        return detections

    @torch.no_grad()
    def validation_loss(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        """The training losses of an eval batch, changing nothing.

        The detector runs its train-mode (loss) path, but the body, BatchNorm and dropout stay in eval
        mode (no running-statistics update, no stochastic depth), and the random sampling of Faster
        R-CNN's proposals uses a fixed seed on a forked RNG (the same loss for the same weights, and
        training randomness untouched).
        """
        body = self.detector.backbone.get_body()
        modules = list(self.detector.modules()) + list(body.modules())
        modes = [m.training for m in modules]
        self.detector.train()
        body.eval()
        for m in self.detector.modules():
            if isinstance(m, _NORM_OR_DROPOUT):
                m.eval()
        devices = [images[0].device] if images[0].is_cuda else []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(0)
                return self.detector(images, self._train_targets(targets))
        finally:
            for m, mode in zip(modules, modes):
                m.training = mode

    def build_metrics(self) -> MeanAveragePrecision:
        """COCO mAP (mAP, mAP@50, mAP@75, by area, recall) with per-class AP; honours ``iscrowd``."""
        backend = map_backend()
        logging.getLogger(backend).setLevel(logging.WARNING)  # it logs its whole COCO summary as INFO
        return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True, backend=backend)

    @staticmethod
    def metric_inputs(preds: list[dict], targets: list[dict]) -> tuple[list[dict], list[dict]]:
        """Predictions and targets in original-image pixels, as ``MeanAveragePrecision.update`` takes them."""
        p = [
            {"boxes": to_original(d["boxes"], t), "scores": d["scores"], "labels": d["labels"]}
            for d, t in zip(preds, targets)
        ]
        g = [
            {"boxes": to_original(t["boxes"], t), "labels": t["labels"], "iscrowd": t["iscrowd"]}
            for t in targets
        ]
        return p, g
