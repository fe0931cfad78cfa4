"""Front sweeps sharded over 2 CPU processes (gloo) equal the 1-process sweep.

Rows are sharded by global row index and sampled on common random numbers keyed by it, so the
gathered front does not depend on the number of processes. Tested twice: `evaluate_policy`
called by every rank of a bare process group (timed: 2 processes against 1), and `ParetoSweep`
with the `StoriesEvaluator` under Lightning's DDP strategy and under FSDP2 (`FSDP2Strategy`: both
ranks sample through the sharded policy) — the CSV rank zero writes.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.pytorch.strategies import DDPStrategy

import stories_small
import tiny
from panacea_pl.benchmarks.stories import (
    StoriesBenchmark,
    StoriesDataModule,
    StoriesEvaluator,
    StoriesPolicy,
    evaluate_policy,
)
from panacea_pl.callbacks import ParetoSweep
from panacea_pl.layers import PanaceaConfig, inject_adapter
from panacea_pl.models.sharding import is_fully_sharded
from panacea_pl.modules import PanaceaDPO
from panacea_pl.strategies import FSDP2Strategy

# 8 prompts × 4 × 11 λ = 352 rows, + 32 base rows: 12 chunks of 32, 6 on each of 2 ranks
SAMPLES_PER_PROMPT = 4
BATCH = 32


def _randomise(adapter) -> None:
    """U (zero at init) and V drawn from a fixed seed: the same model in every process."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in adapter.layers.values():
            layer.panacea_U.copy_(torch.randn(layer.panacea_U.shape, generator=gen) * 0.1)
            layer.panacea_V.copy_(torch.randn(layer.panacea_V.shape, generator=gen) * 0.1)


def _sweep(rank: int, world: int, port: int, out: str, odd: bool = False) -> None:
    """One rank: `evaluate_policy` on its shard; writes the gathered result and its time.

    `odd`: 3 prompts × 3 samples × 11 λ = 99 rows in chunks of 7, so rank 0 (49 rows, 7 chunks)
    runs a padding chunk to match rank 1 (50 rows, 8 chunks)."""
    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    if world > 1:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
        )
    bench = StoriesBenchmark(num_dimensions=2, **stories_small.SMALL)
    model = bench.load_model()
    adapter = inject_adapter(model, PanaceaConfig(num_general=2, num_preferences=2))
    _randomise(adapter)
    if world > 1:
        dist.barrier()
    start = time.perf_counter()
    if odd:
        ev = evaluate_policy(
            model,
            bench.load_tokenizer(),
            bench.optimal_front(),
            bench.prompts[:3],
            bench.max_new_tokens,
            adapter=adapter,
            samples_per_prompt=3,
            batch_size=7,
            progress=False,
        )
    else:
        ev = bench.evaluate(
            model, adapter=adapter, samples_per_prompt=SAMPLES_PER_PROMPT, batch_size=BATCH
        )
    seconds = time.perf_counter() - start
    record = {
        "seconds": seconds,
        "objectives": ev.objectives,
        "kl": ev.kl,
        "gain": ev.gain,
        "gain_se": ev.gain_se,
        "base": ev.base_objectives,
        "texts": ev.texts,
    }
    torch.save(record, Path(out) / f"{world}-{rank}.pt")
    if world > 1:
        dist.destroy_process_group()


def _assert_same(one: dict, two: dict) -> None:
    assert one["texts"] == two["texts"]
    for key in ("objectives", "kl", "gain", "gain_se", "base"):
        np.testing.assert_allclose(one[key], two[key], rtol=0, atol=1e-6, err_msg=key)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_sweep_the_same_front_as_one(forked_stories_env, tmp_path):
    _sweep(0, 1, 0, str(tmp_path))
    mp.start_processes(
        _sweep, args=(2, tiny.free_port(), str(tmp_path)), nprocs=2, start_method="fork"
    )
    one = torch.load(tmp_path / "1-0.pt", weights_only=False)
    ranks = [torch.load(tmp_path / f"2-{r}.pt", weights_only=False) for r in range(2)]
    for record in ranks:  # every rank returns the whole gathered front
        _assert_same(one, record)
    assert len(one["texts"]) == 11 and len(one["texts"][0]) == 8 * SAMPLES_PER_PROMPT
    assert not np.allclose(one["objectives"][0], one["objectives"][-1])  # λ matters here
    two = max(r["seconds"] for r in ranks)
    print(
        f"\nsweep of {11 * 8 * SAMPLES_PER_PROMPT} + {8 * SAMPLES_PER_PROMPT} rows: 1 process "
        f"{one['seconds']:.2f} s, 2 processes {two:.2f} s, ratio {two / one['seconds']:.2f}"
    )


@pytest.mark.slow
@pytest.mark.distributed
def test_a_rank_with_fewer_chunks_pads_and_the_front_is_the_same(forked_stories_env, tmp_path):
    _sweep(0, 1, 0, str(tmp_path), True)
    mp.start_processes(
        _sweep, args=(2, tiny.free_port(), str(tmp_path), True), nprocs=2, start_method="fork"
    )
    one = torch.load(tmp_path / "1-0.pt", weights_only=False)
    for rank in range(2):
        _assert_same(one, torch.load(tmp_path / f"2-{rank}.pt", weights_only=False))
    assert sum(len(texts) for texts in one["texts"]) == 99


def _validate(rank: int, world: int, port: int, out: str, shard: bool = True, fsdp2=False) -> None:
    """`trainer.validate` with a final ParetoSweep; rank zero writes `out/{world}/final.csv`."""
    tiny.as_launched_rank(rank, world, port)
    pl.seed_everything(0, verbose=False)
    policy = StoriesPolicy(adapter=PanaceaConfig(num_general=2, num_preferences=2))
    _randomise(policy.adapter)
    module = PanaceaDPO(policy, dimension_names=["happy", "sad"])
    data = StoriesDataModule(2, batch_size=4, val_fraction=0.25, benchmark=stories_small.SMALL)
    evaluator = StoriesEvaluator(
        2, samples_per_prompt=2, benchmark=stories_small.SMALL, shard=shard
    )
    sweep = ParetoSweep(evaluator, divisions=4, output_dir=str(Path(out) / str(world)))
    strategy = DDPStrategy(process_group_backend="gloo") if world > 1 else "auto"
    if world > 1 and fsdp2:  # the policy sharded by the module's configure_model
        strategy = FSDP2Strategy()
    trainer = tiny.quiet_trainer(
        devices=world,
        strategy=strategy,
        limit_val_batches=1,
        default_root_dir=out,
        callbacks=[sweep],
    )
    trainer.validate(module, datamodule=data)
    assert is_fully_sharded(module.policy.model) == (fsdp2 and world > 1)
    # sharded: every rank sampled its share of the rows; else rank zero sampled them all
    assert (evaluator.last_evaluation is not None) == (shard or rank == 0)
    assert (sweep.last_result is not None) == (rank == 0)  # logged once, on rank zero


def _read(path: Path) -> tuple[list[str], np.ndarray]:
    with path.open(newline="") as handle:
        header, *rows = list(csv.reader(handle))
    return header, np.asarray(rows, dtype=np.float64)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize(
    ("shard", "fsdp2"),
    [(True, False), (False, False), (True, True)],
    ids=["ddp", "ddp-rank0", "fsdp2"],
)
def test_pareto_sweep_under_ddp_logs_the_one_process_front(
    forked_stories_env, tmp_path, shard, fsdp2
):
    _validate(0, 1, 0, str(tmp_path))
    mp.start_processes(
        _validate,
        args=(2, tiny.free_port(), str(tmp_path), shard, fsdp2),
        nprocs=2,
        start_method="fork",
    )
    header, one = _read(tmp_path / "1" / "final.csv")
    header_two, two = _read(tmp_path / "2" / "final.csv")
    assert header == header_two and {"gain", "gain_se", "regret"} <= set(header)
    assert one.shape == (5, len(header))
    print(
        f"\nfront, 1 process vs 2 ({'FSDP2' if fsdp2 else 'DDP'}): max |Δ| {np.nanmax(np.abs(one - two)):.1e}"
    )
    np.testing.assert_allclose(one, two, rtol=0, atol=1e-6)
