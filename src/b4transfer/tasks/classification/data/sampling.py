"""``data.sampler=balanced``: every class drawn equally often, the same draw on every DDP rank.

:class:`BalancedSampler` draws ``len(dataset)`` indices per epoch with replacement, each sample with
probability proportional to ``1 / (images of its class)``, from a generator seeded by ``seed + epoch``:
so every rank draws the same list. Under DDP, Lightning's ``DistributedSamplerWrapper`` splits that list
into disjoint per-rank shares and passes the epoch on to the draw.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from torch.utils.data import Sampler

from b4transfer.errors import UserError

__all__ = ["SAMPLERS", "BalancedSampler", "balanced_sampler"]

SAMPLERS = ("balanced",)


class BalancedSampler(Sampler[int]):
    """Indices drawn with replacement, each class equally likely.

    Args:
        labels: The class of each sample.
        num_samples: Indices per epoch (default: one per sample).
        seed: Seed of the draw; epoch ``e`` draws with ``seed + e``.
    """

    def __init__(self, labels: Sequence[int], *, num_samples: int | None = None, seed: int = 0) -> None:
        if not len(labels):
            raise UserError("data.sampler=balanced needs training images; the training split is empty.")
        labels_t = torch.as_tensor(list(labels), dtype=torch.long)
        counts = torch.bincount(labels_t).double()
        self.weights = 1.0 / counts[labels_t]
        self.num_samples = int(num_samples or len(labels_t))
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        draw = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator)
        yield from draw.tolist()

    def __len__(self) -> int:
        return self.num_samples


def balanced_sampler(labels: Sequence[int], *, seed: int, world_size: int = 1, rank: int = 0) -> Sampler[int]:
    """A :class:`BalancedSampler`, split across ranks when ``world_size > 1``."""
    sampler = BalancedSampler(labels, seed=seed)
    if world_size > 1:
        # the wrapper passes set_epoch on to the draw, and gives each rank every world_size-th index of it
        return DistributedSamplerWrapper(sampler, num_replicas=world_size, rank=rank, shuffle=False)
    return sampler
