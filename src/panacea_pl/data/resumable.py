"""Training batches in an order that survives a restart: the same for a given (seed, epoch) in
every process, sharded by rank, and resumable part-way into an epoch.

    loader = ResumableDataLoader(dataset, batch_size=8, seed=0, num_replicas=2, rank=1)
    Trainer(...).fit(module, train_dataloaders=loader)          # or from a DataModule

Lightning checkpoints a loader that has `state_dict` / `load_state_dict` with the fit loop, and
restores it before iterating again: a run resumed from a mid-epoch checkpoint then sees exactly
the batches the uninterrupted run would have seen next, instead of restarting the epoch with a
fresh shuffle (Lightning's warning "your dataloader is not resumable"). The sampler is a
`DistributedSampler`, so Lightning leaves it in place under DDP; with one process its order is
that of a `RandomSampler` seeded with `seed` (the epoch-0 permutation is the same), and a global
batch of B × world_size rows under DDP holds the rows of one B × world_size batch in one process.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler


class ResumableSampler(DistributedSampler):
    """`DistributedSampler` (shuffle from `seed + epoch`, shard `rank` of `num_replicas`) that can
    start its next pass `start` indices into the epoch. Defaults to one process."""

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(
            dataset,
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        start, self.start = self.start, 0
        return iter(indices[start:])


class ResumableDataLoader(DataLoader):
    """A `DataLoader` over a `ResumableSampler` whose state is the epoch and the number of
    batches handed out in it; loading that state makes the next pass over the same epoch skip
    those batches (without loading them).

    Args:
        dataset: a map-style dataset.
        batch_size: rows per batch (per process).
        seed: shuffling seed; the permutation of epoch e comes from `seed + e`.
        num_replicas, rank: the process's shard (see `DistributedSampler`).
        shuffle: shuffle each epoch (else the dataset order).
        drop_last: drop the last incomplete batch, and the tail that does not shard evenly.
        **kwargs: further `DataLoader` arguments (collate_fn, num_workers, …).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int = 1,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        sampler: Sampler | None = None,
        **kwargs: Any,
    ) -> None:
        # Lightning re-creates a loader from its arguments when it injects a sampler of its own
        # (which it does not do for a DistributedSampler); resuming then needs a ResumableSampler
        if sampler is None:
            sampler = ResumableSampler(dataset, num_replicas, rank, shuffle, seed, drop_last)
        super().__init__(
            dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **kwargs
        )
        self._batches = 0  # handed out in the current pass (skipped ones included)
        self._resume: tuple[int, int] | None = None  # (epoch, batches) to skip at the next pass

    def __iter__(self) -> Iterator[Any]:
        self._batches = 0
        if self._resume is not None:
            epoch, batches = self._resume
            self._resume = None
            if epoch == self.epoch and 0 < batches < len(self):
                if not isinstance(self.sampler, ResumableSampler):
                    raise TypeError(
                        f"cannot resume at batch {batches} of epoch {epoch}: the loader's sampler "
                        f"is a {type(self.sampler).__name__}, not a ResumableSampler"
                    )
                self.sampler.start = batches * self.batch_size
                self._batches = batches
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    @property
    def epoch(self) -> int:
        """The epoch the sampler was last set to (`set_epoch`)."""
        return int(getattr(self.sampler, "epoch", 0))

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches": self._batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at batch `state["batches"]` of epoch `state["epoch"]`: the skip applies once,
        to the next pass, and only if that pass is of the same epoch (Lightning sets the epoch
        with `set_epoch` before iterating)."""
        self._resume = (int(state["epoch"]), int(state["batches"]))
