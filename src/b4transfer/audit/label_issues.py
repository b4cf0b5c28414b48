"""Likely label errors: out-of-fold probabilities of a linear probe on cached backbone features, ranked
by cleanlab's ``find_label_issues`` (confident learning; not re-implemented here)."""

from __future__ import annotations

import logging
import warnings

import numpy as np

from b4transfer.errors import MissingDependencyError

log = logging.getLogger(__name__)

__all__ = ["find_label_issues", "out_of_fold_probabilities", "require_cleanlab"]


def require_cleanlab():
    try:
        import cleanlab.filter
    except ImportError as e:
        raise MissingDependencyError(
            f'the audit\'s label-error search needs cleanlab ({e}). Fix: pip install "b4transfer[audit]" '
            "(or pip install cleanlab), or set audit.label_issues=false."
        ) from e
    return cleanlab.filter


def out_of_fold_probabilities(
    features: np.ndarray, labels: np.ndarray, *, num_classes: int, folds: int = 5, seed: int = 0
) -> np.ndarray | None:
    """``(N, K)`` probabilities, each image's from a logistic-regression probe that did not see it.

    Returns ``None`` when some class has fewer than two images (no fold could hold one out).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = np.bincount(labels, minlength=num_classes)
    present = counts[counts > 0]
    if len(present) < 2 or present.min() < 2:
        return None
    k = int(min(folds, present.min()))
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence notes on tiny sets
        probs = cross_val_predict(
            probe,
            features,
            labels,
            cv=StratifiedKFold(k, shuffle=True, random_state=seed),
            method="predict_proba",
        )
    full = np.zeros((len(labels), num_classes), dtype=np.float64)
    full[:, np.flatnonzero(counts > 0)] = probs  # classes absent from the data keep probability 0
    return full


def find_label_issues(labels: np.ndarray, probs: np.ndarray) -> list[int]:
    """Indices of likely mislabelled images, most likely first (cleanlab, ranked by self-confidence)."""
    cl_filter = require_cleanlab()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ranked = cl_filter.find_label_issues(
            labels=labels, pred_probs=probs, return_indices_ranked_by="self_confidence"
        )
    return [int(i) for i in ranked]
