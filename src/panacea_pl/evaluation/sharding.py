"""Shard a sweep's rows over the ranks of a process group, and gather the results back.

    plan = shard_plan(total=G * K, max_rows=64, group_size=None)   # this rank's chunks
    for chunk in plan.chunks:                 # the same number of chunks on every rank
        out = run(chunk.start, chunk.stop)    # a dummy chunk (keep=False) runs too: discard it
        if chunk.keep: local.append(out)
    everything = gather(local)                # every rank's rows, in global row order

A sweep's rows are independent, and with common random numbers (`panacea_pl.evaluation.crn`)
a row's sample is a function of its global index only, so the gathered result does not depend on
the number of processes. Rank r takes the contiguous rows [⌊N·r/W⌋, ⌊N·(r+1)/W⌋). A sharded
model (FSDP, ZeRO-3) needs every rank in every forward, so ranks with fewer chunks run dummy
one-row chunks until all have run as many as the busiest. Within a `generate` call a sharded
model must also keep stepping until every rank is done: `transformers` does that by itself
(`synced_gpus`) for FSDP- and ZeRO-3-managed models; an unsharded model under DDP steps alone,
with no per-token synchronisation.
Without an initialised process group (or with one process) the plan is the whole range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.distributed as dist


@dataclass(frozen=True)
class Chunk:
    """Global rows [start, stop) for one call; `keep` False for a padding chunk."""

    start: int
    stop: int
    keep: bool = True


@dataclass(frozen=True)
class ShardPlan:
    """This rank's rows and chunks."""

    rank: int
    world: int
    start: int
    stop: int
    chunks: list[Chunk]


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def chunk_range(start: int, stop: int, size: int, boundary: int | None = None) -> list[Chunk]:
    """Chunks of at most `size` rows over [start, stop) that never cross a multiple of
    `boundary` (rows per λ, for policies that take one λ per call)."""
    size = max(1, size)
    chunks, begin = [], start
    while begin < stop:
        end = min(begin + size, stop)
        if boundary:
            end = min(end, (begin // boundary + 1) * boundary)
        chunks.append(Chunk(begin, end))
        begin = end
    return chunks


def shard_plan(
    total: int,
    max_rows: int,
    group_size: int | None = None,
    rank: int | None = None,
    world: int | None = None,
    sharded: bool = True,
) -> ShardPlan:
    """This rank's share of `total` rows in chunks, padded to the busiest rank's chunk count.

    Args:
        total: rows of the sweep.
        max_rows: most rows per chunk.
        group_size: rows per λ where a chunk must not mix two λ (None: any mix).
        rank, world: default: the process group's (see `rank_and_world`).
        sharded: False: every row on this rank, whatever the process group (a caller that runs
            on one rank only).
    """
    if not sharded:
        rank, world = 0, 1
    elif rank is None or world is None:
        rank, world = rank_and_world()
    bounds = [total * r // world for r in range(world + 1)]
    counts = [
        len(chunk_range(bounds[r], bounds[r + 1], max_rows, group_size)) for r in range(world)
    ]
    chunks = chunk_range(bounds[rank], bounds[rank + 1], max_rows, group_size)
    dummy = Chunk(0, min(1, total), keep=False)
    chunks += [dummy] * (max(counts) - len(chunks))
    return ShardPlan(rank, world, bounds[rank], bounds[rank + 1], chunks)


def gather(local: list[Any], sharded: bool = True) -> list[Any]:
    """Every rank's list, concatenated in rank order (= global row order), on every rank
    (`local` itself when not `sharded` or without a process group)."""
    _, world = rank_and_world()
    if world == 1 or not sharded:
        return list(local)
    parts: list[list[Any] | None] = [None] * world
    dist.all_gather_object(parts, list(local))
    return [item for part in parts for item in part]
