"""A training DataLoader that resumes mid-epoch at the exact sample where a checkpoint was taken.

Lightning stores ``state_dict()`` of a loader that has one in every checkpoint and calls
``load_state_dict`` on resume. :class:`ResumableSampler` draws each epoch's permutation from
``(seed, epoch)`` alone (no hidden generator state), shards it over processes like
``DistributedSampler`` (so Lightning keeps it under DDP/FSDP), and can skip the samples that the
interrupted run had already consumed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """Seeded shuffle (or identity order) per epoch, sharded over ranks, with a resumable offset.

    The world size and rank are read when iteration starts, so the sampler can be built before the
    process group exists.

    >>> s = ResumableSampler(list(range(6)), seed=0, shuffle=False)
    >>> s.skip = 2
    >>> list(s), list(s)
    ([2, 3, 4, 5], [0, 1, 2, 3, 4, 5])
    """

    def __init__(self, dataset: Dataset, seed: int = 0, shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=1, rank=0, shuffle=shuffle, seed=seed, drop_last=False)
        self.skip = 0  # samples of this rank's share to skip once (set by a resume)

    def _world(self) -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size(), dist.get_rank()
        return 1, 0

    def __iter__(self) -> Iterator[int]:
        world, rank = self._world()
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        per_rank = -(-n // world)  # ceil: pad by repeating the start, as DistributedSampler does
        order = (order * (1 + (per_rank * world) // max(1, n)))[: per_rank * world]
        mine = order[rank::world]
        skip, self.skip = self.skip, 0
        return iter(mine[skip:])

    def __len__(self) -> int:
        world, _ = self._world()
        return -(-len(self.dataset) // world)


class ResumableDataLoader(DataLoader):
    """DataLoader whose checkpointed state is (epoch, samples consumed) of its sampler."""

    def __init__(self, dataset: Dataset, seed: int = 0, shuffle: bool = True, **kwargs: Any) -> None:
        kwargs.pop("sampler", None)
        kwargs.pop("shuffle", None)
        super().__init__(dataset, sampler=ResumableSampler(dataset, seed=seed, shuffle=shuffle), **kwargs)
        self._consumed = 0

    def __iter__(self) -> Iterator[Any]:
        self._consumed = self.sampler.skip
        for batch in super().__iter__():
            self._consumed += self.batch_size or 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.sampler.epoch), "consumed": int(self._consumed)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.set_epoch(int(state["epoch"]))
        self.sampler.skip = int(state["consumed"])
