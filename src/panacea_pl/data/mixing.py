"""How sources (or dimensions) share the training stream: three documented policies.

    train = mix_groups(table, policy="interleaved", seed=0)           # a datasets.Dataset
    sampler = PerDimensionBatchSampler(batch_size=8, groups=table["group"], seed=0)

Rows carry a `group` column: the source index for preference pairs, the dimension index for SFT
targets. Policies (`mixing:` in the DataModule config):

- `proportional` (default): all rows once per epoch, shuffled together, so each group's share of
  every batch follows its share of rows (HH helpful ≈ 3× harmless if it has 3× the pairs).
  Pairs that several dimensions label (PKU) are one row. Lightning's `DistributedSampler`
  shards it under DDP.
- `interleaved`: `datasets.interleave_datasets(..., stopping_strategy="all_exhausted")` — groups
  take turns (with `mixing_weights`: drawn with those probabilities) until every group has
  been seen once, so smaller groups are repeated and each group has an equal (or the weighted)
  share of an epoch. The stream is then shuffled (and sharded under DDP) like `proportional`.
- `per_dimension`: every batch holds rows of one group only (one dimension when each source
  labels one dimension); the batches of all groups are shuffled together, so groups alternate
  in proportion to their size. `PerDimensionBatchSampler` shards each group across DDP ranks
  itself, so that all ranks see the same group at the same step and the same number of batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import datasets
import numpy as np
import torch
from torch.utils.data import BatchSampler, Sampler
from torch.utils.data.distributed import DistributedSampler

from panacea_pl.data.config import MixingPolicy
from panacea_pl.data.errors import ConfigError

POLICIES = ("proportional", "interleaved", "per_dimension")


def mix_groups(
    table: datasets.Dataset,
    policy: MixingPolicy,
    seed: int = 0,
    weights: Sequence[float] | None = None,
) -> datasets.Dataset:
    """The training table for a policy (`per_dimension` needs its batch sampler as well).

    Args:
        table: rows with an int `group` column.
        policy: `proportional`, `interleaved` or `per_dimension`.
        seed: seed of `interleave_datasets` draws (with weights).
        weights: one sampling weight per group, in group order (interleaved only).
    """
    if policy not in POLICIES:
        raise ConfigError(f"mixing must be one of {POLICIES}, got {policy!r}")
    if policy != "interleaved":
        if weights is not None:
            raise ConfigError("mixing_weights apply to mixing: interleaved only")
        return table
    groups = np.asarray(table["group"])
    ids = sorted(set(groups.tolist()))
    parts = [table.select(np.flatnonzero(groups == g), keep_in_memory=True) for g in ids]
    probabilities = None
    if weights is not None:
        if len(weights) != len(ids) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(
                f"mixing_weights needs {len(ids)} non-negative weights (one per group, in "
                f"order), got {list(weights)}"
            )
        probabilities = [w / sum(weights) for w in weights]
    if len(parts) == 1:
        return parts[0]
    return datasets.interleave_datasets(
        parts, probabilities=probabilities, seed=seed, stopping_strategy="all_exhausted"
    )


class _EpochSampler(Sampler[int]):
    """Placeholder sampler that only carries the epoch (Lightning calls `set_epoch` on it)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.size))

    def __len__(self) -> int:
        return self.size


class PerDimensionBatchSampler(BatchSampler):
    """Batches that each hold rows of a single group, sharded across DDP ranks.

        sampler = PerDimensionBatchSampler(batch_size=8, groups=train["group"], seed=0)
        loader = DataLoader(train, batch_sampler=sampler, collate_fn=collator)

    Rank and world size come from, in order: a `DistributedSampler` passed as `sampler` (what
    Lightning injects when `use_distributed_sampler=True`; only its rank and size are used),
    `num_replicas`/`rank`, or `torch.distributed` when it is initialised (else 1 and 0). Each
    epoch (Lightning's `set_epoch`), every group's rows are permuted with `(seed, epoch)`,
    padded by repetition (or cut, with `drop_last`) to a multiple of the world size and dealt
    to the ranks; the batches of all groups are then shuffled with the same generator on every
    rank, so ranks step through the same groups in the same order, with the same batch count.

    Args:
        sampler: None, or the sampler Lightning injects.
        batch_size: rows per batch (per rank).
        drop_last: drop each group's last incomplete batch (and the rows that do not divide
            evenly across ranks) instead of padding.
        groups: the group of each row of the dataset.
        shuffle: permute rows and batches each epoch (False: group order, round-robin).
        seed: base seed shared by all ranks.
        num_replicas: world size (default: see above).
        rank: this process's rank (default: see above).
    """

    def __init__(
        self,
        sampler: Sampler[int] | None = None,
        batch_size: int = 8,
        drop_last: bool = False,
        *,
        groups: Sequence[int] = (),
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        groups_arr = np.asarray(list(groups), dtype=np.int64)
        if len(groups_arr) == 0:
            raise ConfigError("PerDimensionBatchSampler needs the group of every row")
        if sampler is None:
            sampler = _EpochSampler(len(groups_arr))
        super().__init__(sampler, batch_size, drop_last)
        if isinstance(sampler, DistributedSampler):
            num_replicas, rank = sampler.num_replicas, sampler.rank
        elif num_replicas is None or rank is None:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                num_replicas = torch.distributed.get_world_size()
                rank = torch.distributed.get_rank()
            else:
                num_replicas, rank = 1, 0
        if not 0 <= rank < num_replicas:
            raise ConfigError(f"rank {rank} is outside world size {num_replicas}")
        self.groups = groups_arr
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self._epoch = 0

    @property
    def epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", self._epoch))

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch (Lightning sets it on `self.sampler`; this sets both)."""
        self._epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def _per_rank(self, n: int) -> int:
        if self.drop_last:
            return n // self.num_replicas
        return math.ceil(n / self.num_replicas)

    def _num_batches(self, per_rank: int) -> int:
        if self.drop_last:
            return per_rank // self.batch_size
        return math.ceil(per_rank / self.batch_size)

    def batches(self) -> list[tuple[int, list[int]]]:
        """This rank's `(group, row indices)` batches for the current epoch, in order."""
        rng = np.random.default_rng([self.seed, self.epoch])
        per_group: list[list[tuple[int, list[int]]]] = []
        for g in np.unique(self.groups):
            idx = np.flatnonzero(self.groups == g)
            if self.shuffle:
                idx = rng.permutation(idx)
            per_rank = self._per_rank(len(idx))
            total = per_rank * self.num_replicas
            if total > len(idx):
                idx = np.resize(idx, total)  # repeats from the start
            mine = idx[:total][self.rank :: self.num_replicas]
            count = self._num_batches(per_rank)
            chunks = [mine[k * self.batch_size : (k + 1) * self.batch_size] for k in range(count)]
            per_group.append([(int(g), c.tolist()) for c in chunks])
        if self.shuffle:
            flat = [b for group in per_group for b in group]
            return [flat[i] for i in rng.permutation(len(flat))]
        out = []
        for k in range(max(len(group) for group in per_group)):
            out.extend(group[k] for group in per_group if k < len(group))
        return out

    def __iter__(self) -> Iterator[list[int]]:
        for _, indices in self.batches():
            yield indices

    def __len__(self) -> int:
        return sum(
            self._num_batches(self._per_rank(int(n)))
            for n in np.unique(self.groups, return_counts=True)[1]
        )
