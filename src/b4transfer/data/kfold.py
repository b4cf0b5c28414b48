"""k-fold cross-validation splits: ``data.kfold=K`` pools train + val and cuts the pool into K folds;
``data.fold=i`` validates on fold ``i`` and trains on the others. The test split is left alone.

The partition is the same for every run seed (a fixed shuffle), so ``seeds=[0,1] data.kfold=5`` compares
seeds on the same folds. Single-label classification samples are stratified (each class dealt round
the folds in turn); other samples (detection images, multi-label) are dealt in shuffled order.
"""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from typing import Any

from b4transfer.errors import UserError

SHUFFLE_SEED = 0  # the folds do not move with the run's seed


def check_kfold(kfold: Any, fold: Any) -> tuple[int | None, int | None]:
    """``(data.kfold, data.fold)`` checked: K >= 2 and 0 <= fold < K, or both null."""
    if kfold is None:
        if fold is not None:
            raise UserError(f"data.fold={fold} needs data.kfold=K (the number of folds), e.g. data.kfold=5.")
        return None, None
    if isinstance(kfold, bool) or not isinstance(kfold, int) or kfold < 2:
        raise UserError(f"data.kfold={kfold!r} must be a whole number of folds >= 2, e.g. data.kfold=5.")
    if fold is not None and (isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < kfold):
        raise UserError(f"data.fold={fold!r} must be a fold index in 0..{kfold - 1} (data.kfold={kfold}).")
    return kfold, fold


def _group(sample: Any) -> Any:
    target = getattr(sample, "target", None)
    return target if isinstance(target, int) else None  # stratify single-label samples only


def fold_of(samples: list, k: int) -> list[int]:
    """The fold of each sample: shuffled with a fixed seed, each class (if any) dealt round the folds."""
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[_group(s)].append(i)
    rng = random.Random(SHUFFLE_SEED)
    folds = [0] * len(samples)
    dealt = 0
    for key in sorted(groups, key=str):
        members = groups[key]
        rng.shuffle(members)
        for i in members:
            folds[i] = dealt % k
            dealt += 1
    return folds


def fold_splits(splits: Any, *, k: int, index: int, source: str) -> Any:
    """``splits`` with train + val re-cut: fold ``index`` of ``k`` validates, the rest trains.

    Raises:
        UserError: the data source gives no train / val sample lists to pool, or fewer samples than folds.
    """
    fields = {f.name for f in dataclasses.fields(splits)} if dataclasses.is_dataclass(splits) else set()
    if not {"train", "val"} <= fields:
        raise UserError(
            f"data.kfold={k} needs a data source whose splits hold train and val sample lists; {source} "
            f"gives {type(splits).__name__}. Fix: drop data.kfold, or use a data source with sample lists."
        )
    pool = list(splits.train) + list(splits.val)
    if len(pool) < k:
        raise UserError(
            f"data.kfold={k} needs at least {k} train + val samples; {source} has {len(pool)}. "
            "Fix: use fewer folds."
        )
    folds = fold_of(pool, k)
    val = [s for s, f in zip(pool, folds) if f == index]
    train = [s for s, f in zip(pool, folds) if f != index]
    return dataclasses.replace(splits, train=train, val=val)
