"""Calibration of a trained classifier on the validation split.

Single-label: temperature scaling (Guo et al., 2017): one scalar ``T`` dividing the logits, fitted by
minimising the validation NLL; accuracy is unchanged, the confidences become honest. ECE before and
after (torchmetrics ``CalibrationError``, 15 bins) and a reliability diagram (``calibration.png``).
Multi-label: one decision threshold per class, the one maximising that class's validation F1.

The result is stored in the checkpoint's hyper-parameters (``calibration``), the export's
``config.json`` and the ONNX model, and applied by ``mode=predict``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassCalibrationError

log = logging.getLogger(__name__)

__all__ = ["calibrate_classifier", "ece", "f1_thresholds", "fit_temperature", "validation_logits"]

T_RANGE = (0.05, 20.0)


@torch.no_grad()
def validation_logits(module, loader, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
    """Logits (raw: no temperature) and targets of every batch of ``loader`` (images or cached features)."""
    module.eval().to(device)
    logits, targets = [], []
    for x, y in loader:
        x = x.to(device)
        features = x if x.ndim == 2 else module.backbone(x)
        logits.append(module.head(features.float()).float().cpu())
        targets.append(y)
    return torch.cat(logits), torch.cat(targets)


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The ``T`` minimising ``cross_entropy(logits / T, targets)`` (LBFGS on ``log T``), in ``T_RANGE``."""
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")
    logits, targets = logits.detach().double(), targets.long()

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.double().exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(*T_RANGE))


def ece(probs: torch.Tensor, targets: torch.Tensor, *, bins: int = 15) -> float:
    """Expected calibration error (torchmetrics, L1, equal-width confidence bins)."""
    metric = MulticlassCalibrationError(num_classes=probs.shape[1], n_bins=bins, norm="l1")
    return float(metric(probs, targets.long()))


def f1_thresholds(probs: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Per class, the threshold (among 0.05..0.95 and the observed probabilities) maximising F1."""
    out = []
    for k in range(probs.shape[1]):
        p, t = probs[:, k], targets[:, k].bool()
        candidates = torch.cat([torch.linspace(0.05, 0.95, 19), p]).unique()
        best, best_f1 = 0.5, -1.0
        for c in candidates.tolist():
            pred = p >= c
            tp = float((pred & t).sum())
            f1 = 2 * tp / max(1.0, float(pred.sum() + t.sum()))
            if f1 > best_f1 + 1e-12 or (abs(f1 - best_f1) <= 1e-12 and abs(c - 0.5) < abs(best - 0.5)):
                best, best_f1 = c, f1
        out.append(round(float(best), 6))
    return out


def reliability_diagram(probs_before, probs_after, targets, out: Path, *, bins: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = torch.linspace(0, 1, bins + 1)
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect")
    for probs, name in ((probs_before, "before"), (probs_after, "after")):
        conf, pred = probs.max(1)
        correct = (pred == targets).float()
        idx = torch.bucketize(conf, edges[1:-1])
        xs = [float(conf[idx == b].mean()) for b in range(bins) if (idx == b).any()]
        ys = [float(correct[idx == b].mean()) for b in range(bins) if (idx == b).any()]
        ax.plot(xs, ys, "o-", label=f"{name} (ECE {ece(probs, targets, bins=bins):.3f})")
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title="reliability (validation)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def calibrate_classifier(module, loader, run_dir: Path, *, bins: int = 15, device="cpu") -> tuple[dict, dict]:
    """Fit the calibration on ``loader`` (the validation split), set it on ``module``.

    Returns:
        ``(stored, report)``: what the checkpoint and exports keep (``{"temperature": T}`` or
        ``{"thresholds": [...]}``), and the summary's report (ECE / F1 before and after, the PNG).
    """
    logits, targets = validation_logits(module, loader, device)
    module.cpu()
    if module.head.multi_label:
        probs, targets = torch.sigmoid(logits), targets.long()
        thresholds = f1_thresholds(probs, targets)
        module.set_calibration({"thresholds": thresholds})

        def f1(th):
            pred = probs >= torch.tensor(th)
            tp = (pred & targets.bool()).sum(0).float()
            return float((2 * tp / (pred.sum(0) + targets.sum(0)).clamp(min=1)).mean())

        report = {
            "thresholds": dict(zip(module.class_names, thresholds)),
            "f1_macro_at_0.5": round(f1([0.5] * len(thresholds)), 4),
            "f1_macro_tuned": round(f1(thresholds), 4),
        }
        log.info("Calibration: per-class thresholds %s (macro F1 %s -> %s on validation)",
                 thresholds, report["f1_macro_at_0.5"], report["f1_macro_tuned"])
        return {"thresholds": thresholds}, report
    temperature = fit_temperature(logits, targets)
    before, after = logits.softmax(-1), (logits / temperature).softmax(-1)
    out = run_dir / "calibration.png"
    reliability_diagram(before, after, targets.long(), out, bins=bins)
    module.set_calibration({"temperature": temperature})
    report = {
        "temperature": round(temperature, 4),
        "ece_before": round(ece(before, targets, bins=bins), 4),
        "ece_after": round(ece(after, targets, bins=bins), 4),
        "nll_before": round(float(F.cross_entropy(logits, targets.long())), 4),
        "nll_after": round(float(F.cross_entropy(logits / temperature, targets.long())), 4),
        "val_images": len(targets),
        "reliability_diagram": str(out),
    }
    log.info("Calibration: temperature %.3f, validation ECE %.4f -> %.4f", temperature,
             report["ece_before"], report["ece_after"])
    return {"temperature": temperature}, report
