"""A distributed sampler that can start in the middle of an epoch.

Exact resume needs the data order after a restart to be the order the interrupted run would
have used: the permutation of an epoch depends only on (seed, stage, epoch) and each rank takes
every world_size-th index of it (as torch's DistributedSampler with drop_last=True), so a run
resumed at optimizer step k skips exactly the samples its rank had consumed, without iterating
over (and decoding) them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def epoch_seed(seed: int, stage: int, epoch: int) -> int:
    """A distinct, reproducible shuffling seed for each (stage, epoch) of a run."""
    return (seed * 1_000_003 + stage * 10_007 + epoch) % (2**63 - 1)


class ResumableDistributedSampler(Sampler[int]):
    """This rank's share of a seeded permutation of `indices`, starting at sample `start`.

    Every rank gets the same number of samples (the tail that does not divide by the world size is
    dropped, as DataLoader drop_last would), so every rank runs the same number of steps.
    """

    def __init__(self, indices: Sequence[int] | int, num_replicas: int, rank: int, seed: int = 0,
                 shuffle: bool = True) -> None:
        self.indices = torch.arange(indices) if isinstance(indices, int) else torch.as_tensor(list(indices))
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside world size {num_replicas}")
        self.num_replicas, self.rank, self.seed, self.shuffle = num_replicas, rank, seed, shuffle
        self.stage, self.epoch, self.start = 0, 0, 0

    @property
    def per_rank(self) -> int:
        """Samples each rank sees in a full epoch."""
        return len(self.indices) // self.num_replicas

    def set_epoch(self, epoch: int, stage: int = 0, start: int = 0) -> None:
        """Select the permutation of (stage, epoch) and skip this rank's first `start` samples."""
        self.stage, self.epoch, self.start = stage, epoch, start

    def rank_order(self) -> torch.Tensor:
        """Dataset indices this rank visits in the current epoch, from sample 0."""
        if self.shuffle:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, self.stage, self.epoch))
            order = self.indices[torch.randperm(len(self.indices), generator=g)]
        else:
            order = self.indices
        usable = self.per_rank * self.num_replicas
        return order[self.rank:usable:self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.rank_order()[self.start:].tolist())

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)
