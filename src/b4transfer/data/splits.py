"""Samples, train/val/test splits, and the start-up checks every dataset reader shares.

A reader (folder, CSV, demo) checks its :class:`SplitOptions` first, turns its source into tagged
:class:`Sample` lists and calls :func:`assemble_splits`, which drops unreadable images (skipped
and counted, per the project's policy: never a crash mid-epoch) and carves a seeded,
stratified validation split when the source has none. The other tasks' assemblers share
:func:`readable_parts` and :func:`hold_out_val`.
"""

from __future__ import annotations

import logging
import os
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from b4transfer.data.check_cache import cached_checks
from b4transfer.data.images import ImageLoadError, check_image
from b4transfer.errors import UserError, UserFileNotFoundError

log = logging.getLogger(__name__)
T = TypeVar("T")
S = TypeVar("S")  # a task's sample type

SPLIT_NAMES = ("train", "val", "test")
ON_BAD_IMAGE_OPTIONS = ("skip", "error")
DEFAULT_CHECK_THREADS = min(8, os.cpu_count() or 1)
_SHOW = 5  # how many offending files a message lists


@dataclass
class Sample:
    """One labelled image.

    Args:
        path: Image file.
        target: Class index, or a tuple of class indices for multi-label data.
        origin: Where the source lists it, for messages (``labels.csv line 5``); ``None``: the path.
    """

    path: Path
    target: int | tuple[int, ...]
    origin: str | None = field(default=None, compare=False)


@dataclass
class Splits(Generic[S]):
    """A data set as a task's data module takes it: class names and the train/val/test samples.

    Args:
        class_names: Class names; a label ``i`` (class index, mask value) means ``class_names[i]``.
        train: Training samples.
        val: Validation samples.
        test: Test samples (may be empty).
    """

    class_names: list[str]
    train: list[S]
    val: list[S]
    test: list[S] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)


@dataclass
class DatasetSplits(Splits[Sample]):
    """Everything a classification data module needs: :class:`Splits` of :class:`Sample` (a target ``i``
    means ``class_names[i]``), and

    Args:
        multi_label: Whether targets are tuples of class indices.
        skipped: ``(path, reason)`` for every unreadable image left out.
    """

    multi_label: bool = False
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _labels(target: int | tuple[int, ...]) -> tuple[int, ...]:
    return tuple(target) if isinstance(target, (tuple, list)) else (int(target),)


def class_counts(samples: Iterable[Sample], num_classes: int) -> list[int]:
    """Images per class (multi-label samples count once for each of their labels).

    Args:
        samples: Samples to count.
        num_classes: Length of the returned list.

    Returns:
        ``counts[i]`` = number of samples labelled with class ``i``.
    """
    counts = [0] * num_classes
    for sample in samples:
        for label in _labels(sample.target):
            counts[label] += 1
    return counts


def check_val_fraction(val_fraction: float) -> None:
    """Raise ValueError unless ``0 < val_fraction < 1``."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)):
        raise UserError(
            f"data.val_fraction must be a number between 0 and 1, got {val_fraction!r}. "
            "Fix: set e.g. data.val_fraction=0.2."
        )
    if not 0 < val_fraction < 1:
        raise UserError(
            f"data.val_fraction must be strictly between 0 and 1, got {val_fraction}. "
            "Fix: set e.g. data.val_fraction=0.2 (20% of each class goes to validation)."
        )


@dataclass(frozen=True)
class SplitOptions:
    """How a reader makes its samples into splits; checked when made, before any image is read.

    Args:
        val_fraction: Share of the training images held out for validation where the source gives no
            validation split, in (0, 1).
        seed: Seed of that hold-out.
        on_bad_image: ``"skip"`` or ``"error"`` for unreadable images, see :func:`drop_unreadable`.
    """

    val_fraction: float = 0.2
    seed: int = 0
    on_bad_image: str = "skip"

    def __post_init__(self) -> None:
        check_val_fraction(self.val_fraction)
        check_on_bad_image(self.on_bad_image)


def stratified_split(
    samples: Sequence[Sample], *, val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Split samples into train and val, per class (by first label), reproducibly.

    Each class sends ``round(n * val_fraction)`` samples to val, at least one when it
    has two or more and never all of them; a class with one sample stays in train.
    Both outputs keep the input order.

    Args:
        samples: Samples to split.
        val_fraction: Fraction of each class for validation, in (0, 1).
        seed: Seed of the shuffle; the same seed and input give the same split.

    Returns:
        ``(train, val)``.
    """
    check_val_fraction(val_fraction)
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, sample in enumerate(samples):
        labels = _labels(sample.target)
        by_class[labels[0] if labels else -1].append(i)
    rng = random.Random(seed)
    val_idx: set[int] = set()
    for label in sorted(by_class):
        idx = by_class[label]
        n_val = min(max(round(len(idx) * val_fraction), 1), len(idx) - 1)
        val_idx.update(rng.sample(idx, n_val))
    train = [s for i, s in enumerate(samples) if i not in val_idx]
    val = [s for i, s in enumerate(samples) if i in val_idx]
    return train, val


def check_on_bad_image(on_bad_image: str) -> None:
    """Raise ValueError unless ``on_bad_image`` is one of ``ON_BAD_IMAGE_OPTIONS``."""
    if on_bad_image not in ON_BAD_IMAGE_OPTIONS:
        raise UserError(
            f"data.on_bad_image={on_bad_image!r} is not an option; choose one of "
            f"{list(ON_BAD_IMAGE_OPTIONS)}. Fix: data.on_bad_image=skip leaves unreadable "
            "images out (and counts them), data.on_bad_image=error stops at start-up."
        )


def shown(items: Sequence[object], sep: str = "; ") -> str:
    """The first few ``items`` for a message, joined by ``sep``, with ``sep + "..."`` when there are more."""
    return sep.join(str(i) for i in items[:_SHOW]) + (f"{sep}..." if len(items) > _SHOW else "")


def refuse_missing_images(source: str | Path, listed: Sequence[tuple[str, Path]], fix: str) -> None:
    """Refuse a source whose listed image files do not all exist, naming the first few and the fix.

    Args:
        source: The file that lists them, for the message.
        listed: ``(where it is listed, image file)`` for every image (``line 5``, ``image id 3``).
        fix: What to do, after ``Fix:``.

    Raises:
        UserFileNotFoundError: Some of the files do not exist.
    """
    missing = [f"{where}: {file}" for where, file in listed if not file.is_file()]
    if missing:
        raise UserFileNotFoundError(
            f"{source}: {len(missing)} of {len(listed)} image file(s) do not exist ({shown(missing)}). "
            f"Fix: {fix}"
        )


def _listing(bad: Sequence[tuple[Path, str]]) -> str:
    first = "; ".join(f"{path}: {reason}" for path, reason in bad[:_SHOW])
    more = f"; ... and {len(bad) - _SHOW} more" if len(bad) > _SHOW else ""
    return first + more


def drop_unreadable(
    samples: Sequence[Sample], *, on_bad_image: str = "skip", num_threads: int = DEFAULT_CHECK_THREADS
) -> tuple[list[Sample], list[tuple[Path, str]]]:
    """Decode every image once at start-up and leave out (or refuse) unreadable ones.

    Files an earlier run already checked, unchanged since (path, size, mtime), are not decoded again
    (:mod:`b4transfer.data.check_cache`).

    Args:
        samples: Samples to check.
        on_bad_image: ``"skip"``: drop bad images and log one warning with their count
            and the first few paths; ``"error"``: raise naming them.
        num_threads: Decoding threads (PIL releases the GIL while decoding).

    Returns:
        ``(good_samples, skipped)`` where ``skipped`` holds ``(path, reason)``.

    Raises:
        ImageLoadError: ``on_bad_image="error"`` and some image is unreadable.
    """
    check_on_bad_image(on_bad_image)
    paths = [s.path for s in samples]

    def check(files: list[Path]) -> list[str | None]:
        with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
            return list(pool.map(check_image, files))

    reasons, n_cached = cached_checks(paths, check)  # unchanged files checked by an earlier run
    if n_cached:
        log.info("Image check: %d of %d files unchanged since an earlier run's check.", n_cached, len(paths))
    good = [s for s, r in zip(samples, reasons) if r is None]
    bad = [(s.path, r) for s, r in zip(samples, reasons) if r is not None]
    if bad and on_bad_image == "error":
        raise ImageLoadError(
            bad[0][0],
            f"{bad[0][1]} ({len(bad)} unreadable image(s) of {len(samples)}: {_listing(bad)})",
            fix="re-save or delete these files, or set data.on_bad_image=skip to leave them out",
        )
    if bad:
        log.warning(
            "Skipped %d unreadable image(s) of %d (data.on_bad_image=skip): %s. "
            "HINT: re-save or delete them, or set data.on_bad_image=error to stop instead.",
            len(bad),
            len(samples),
            _listing(bad),
        )
    return good, bad


def check_class_count(class_names: Sequence[str], source: str | Path) -> None:
    """Raise ValueError when fewer than two classes were found.

    Args:
        class_names: Classes found.
        source: Where they were found (folder or file), for the message.
    """
    if len(class_names) < 2:
        raise UserError(
            f"{source}: found {len(class_names)} class(es) {list(class_names)}, but classification "
            "needs at least 2. Fix: add images of at least one more class (one sub-folder or label "
            "per class), or point data.root / data.csv at the right dataset."
        )


def assemble_splits(
    class_names: list[str],
    tagged: dict[str, list[Sample]],
    *,
    source: str | Path,
    options: SplitOptions,
    multi_label: bool = False,
) -> DatasetSplits:
    """Drop unreadable images, then split train into train/val (per class) when no val was given.

    Args:
        class_names: Class names (at least two).
        tagged: Samples under the keys ``"train"``, ``"val"``, ``"test"`` (any may be missing).
        source: Dataset folder or file, for messages.
        options: The hold-out and the unreadable-image policy.
        multi_label: Whether targets are tuples.

    Returns:
        The assembled splits.
    """
    check_class_count(class_names, source)
    parts, skipped = readable_parts(tagged, options)
    hold_out_val(parts, options, source=source, of="train per class", split=stratified_split)
    empty = [name for name, n in zip(class_names, class_counts(parts["train"], len(class_names))) if not n]
    if empty:
        log.warning(
            "%s: class(es) %s have no training images; the model can never learn them.", source, empty
        )
    return DatasetSplits(class_names, parts["train"], parts["val"], parts["test"], multi_label, skipped)


def random_val_split(
    samples: Sequence[T], *, val_fraction: float, seed: int
) -> tuple[list[T], list[T]]:
    """Hold out a seeded ``val_fraction`` of the images (at least one, never all), order kept."""
    check_val_fraction(val_fraction)
    if len(samples) < 2:
        return list(samples), []
    n_val = min(max(round(len(samples) * val_fraction), 1), len(samples) - 1)
    val_idx = set(random.Random(seed).sample(range(len(samples)), n_val))
    return (
        [s for i, s in enumerate(samples) if i not in val_idx],
        [s for i, s in enumerate(samples) if i in val_idx],
    )


def readable_parts(
    tagged: Mapping[str, list[T]], options: SplitOptions
) -> tuple[dict[str, list[T]], list[tuple[Path, str]]]:
    """Check every image of ``tagged`` once (:func:`drop_unreadable`, ``options.on_bad_image``).

    Args:
        tagged: Samples (with a ``path``) under ``"train"``, ``"val"``, ``"test"`` (any may be missing).
        options: The unreadable-image policy.

    Returns:
        ``(parts, skipped)``: the readable samples under all three split names, in their order, and
        ``(path, reason)`` for each one left out.
    """
    everything = [s for name in SPLIT_NAMES for s in tagged.get(name, [])]
    good, skipped = drop_unreadable(everything, on_bad_image=options.on_bad_image)
    good_ids = {id(s) for s in good}
    return {name: [s for s in tagged.get(name, []) if id(s) in good_ids] for name in SPLIT_NAMES}, skipped


def hold_out_val(
    parts: dict[str, list[T]],
    options: SplitOptions,
    *,
    source: str | Path,
    of: str,
    split: Callable[..., tuple[list[T], list[T]]] = random_val_split,
) -> None:
    """Where ``parts`` has no validation samples, move a seeded share of ``parts["train"]`` there (logged).

    Args:
        parts: Samples under ``"train"`` and ``"val"``, changed in place.
        options: ``val_fraction``, the share held out, and ``seed``.
        source: Dataset folder or file, for the log line.
        of: What the share is of, for the log line (``train per class``).
        split: :func:`random_val_split` or :func:`stratified_split`.
    """
    if parts["val"]:
        return
    fraction, seed = options.val_fraction, options.seed
    message = "%s: no validation split given; holding out %.0f%% of %s (seed %d)."
    log.info(message, source, 100 * fraction, of, seed)
    parts["train"], parts["val"] = split(parts["train"], val_fraction=fraction, seed=seed)
