"""ResumableDataLoader: the order of a seeded RandomSampler, shards that add up to one process's
global batches, and a restored state that continues the epoch where it stopped."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, RandomSampler

from panacea_pl.data import ResumableDataLoader

N = 23  # not a multiple of the batch size: the last batch is short


def batches(loader) -> list[list[int]]:
    return [b.tolist() for b in loader]


def test_epoch_zero_is_the_seeded_random_order_and_epochs_reshuffle():
    data = list(range(N))
    plain = DataLoader(
        data, batch_size=4, sampler=RandomSampler(data, generator=torch.Generator().manual_seed(3))
    )
    loader = ResumableDataLoader(data, batch_size=4, seed=3)
    assert batches(loader) == batches(plain)
    first = batches(loader)
    loader.sampler.set_epoch(1)
    second = batches(loader)
    assert second != first and sorted(sum(second, [])) == data
    loader.sampler.set_epoch(0)
    assert batches(loader) == first  # an epoch's order depends on (seed, epoch) alone


def test_two_shards_hold_the_rows_of_one_process_with_twice_the_batch():
    data = list(range(24))
    whole = batches(ResumableDataLoader(data, batch_size=8, seed=1))
    shards = [batches(ResumableDataLoader(data, 4, seed=1, num_replicas=2, rank=r)) for r in (0, 1)]
    for step, rows in enumerate(whole):
        assert sorted(shards[0][step] + shards[1][step]) == sorted(rows)


def test_a_restored_state_continues_the_epoch():
    data = list(range(N))
    loader = ResumableDataLoader(data, batch_size=4, seed=0)
    loader.sampler.set_epoch(2)
    expected = batches(loader)
    seen = []
    for batch in loader:
        seen.append(batch.tolist())
        if len(seen) == 3:
            state = loader.state_dict()
            break
    assert state == {"epoch": 2, "batches": 3}

    resumed = ResumableDataLoader(data, batch_size=4, seed=0)
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(2)  # what Lightning does before iterating
    assert len(resumed) == len(expected)  # Lightning counts the epoch's batches from here
    assert batches(resumed) == expected[3:]
    assert resumed.state_dict() == {"epoch": 2, "batches": len(expected)}
    assert batches(resumed) == expected  # the skip applies once


def test_a_state_of_another_epoch_or_a_finished_one_is_not_skipped():
    data = list(range(N))
    loader = ResumableDataLoader(data, batch_size=4, seed=0)
    loader.load_state_dict({"epoch": 0, "batches": 2})
    loader.sampler.set_epoch(1)  # the checkpoint's epoch is over
    assert len(batches(loader)) == len(loader)
    loader.load_state_dict({"epoch": 1, "batches": len(loader)})
    assert len(batches(loader)) == len(loader)
