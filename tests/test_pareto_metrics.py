"""torchmetrics front metrics: accumulate, compute the front functions' values, sync under DDP."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from panacea_pl.pareto import Hypervolume, InnerProduct, Spacing, Sparsity

LAMBDAS = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
REWARDS = torch.tensor([[4.0, 0.0], [2.0, 2.0], [1.0, 3.0]])


def make_metrics() -> dict:
    return {
        "hypervolume": Hypervolume(reference=[0.0, 0.0]),
        "inner_product": InnerProduct(lower=[0.0, 0.0], upper=[4.0, 4.0]),
        "sparsity": Sparsity(),
        "spacing": Spacing(),
    }


# Hand-computed values for LAMBDAS, REWARDS:
# hypervolume from (0, 0): x ∈ [0,1]: 3;  [1,2]: 2;  [2,4]: 0 (point (4, 0) has y = 0) → 5
# inner product, range [0, 4]: f̂ = (1, 0), (0.5, 0.5), (0.25, 0.75)
#   ⟨λ, f̂⟩ = 1, 0.5, 0.75 → mean 2.25/3 = 0.75
# sparsity: x sorted 1, 2, 4 → 1 + 4 = 5;  y sorted 0, 2, 3 → 4 + 1 = 5;  10 / 2 = 5
# spacing: L1 d(0,1) = 4, d(0,2) = 6, d(1,2) = 2 → nearest 4, 2, 2; mean 8/3;
#   deviations 4/3, −2/3, −2/3 → sqrt((24/9)/2) = sqrt(4/3)
EXPECTED = {"hypervolume": 5.0, "inner_product": 0.75, "sparsity": 5.0, "spacing": math.sqrt(4 / 3)}


def test_metrics_accumulate_over_updates():
    for name, metric in make_metrics().items():
        metric.update(LAMBDAS[:2], REWARDS[:2])
        metric.update(LAMBDAS[2:], REWARDS[2:])
        assert metric.compute().item() == pytest.approx(EXPECTED[name]), name
        metric.reset()
        metric.update(LAMBDAS[:1], REWARDS[:1])
        assert metric.compute().item() != pytest.approx(EXPECTED[name]), name


def test_directions_declared():
    metrics = make_metrics()
    assert metrics["hypervolume"].higher_is_better and metrics["inner_product"].higher_is_better
    assert not metrics["sparsity"].higher_is_better and not metrics["spacing"].higher_is_better
    for metric in metrics.values():
        assert metric.full_state_update is False and metric.is_differentiable is False


def test_hypervolume_minimize():
    metric = Hypervolume(reference=[5.0, 5.0], maximize=False)
    # losses (1, 3), (3, 1) with reference (5, 5): 4·2 + 2·4 − 2·2 = 12
    metric.update(LAMBDAS[:2], torch.tensor([[1.0, 3.0], [3.0, 1.0]]))
    assert metric.compute().item() == pytest.approx(12.0)


def test_update_shape_error():
    with pytest.raises(ValueError, match=r"\[G, m\]"):
        Sparsity().update(LAMBDAS, REWARDS[:, :1])


def _sync_worker(rank: int, init_file: str) -> None:
    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    # rank 0 holds grid rows 0 and 1, rank 1 holds row 2: every rank must score the whole grid
    rows = slice(0, 2) if rank == 0 else slice(2, 3)
    for name, metric in make_metrics().items():
        metric.update(LAMBDAS[rows], REWARDS[rows])
        assert metric.compute().item() == pytest.approx(EXPECTED[name]), name
    dist.destroy_process_group()


@pytest.mark.distributed
def test_metrics_sync_across_ranks(tmp_path):
    mp.start_processes(_sync_worker, args=(str(tmp_path / "init"),), nprocs=2, start_method="fork")
