"""Aggregators against hand-computed values, masks, running ideal point, subclassing, DDP."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from panacea_pl.objectives import Aggregator, LinearScalarization, SmoothTchebycheff, Tchebycheff

NAN = float("nan")


@pytest.fixture
def batch():
    """3 examples × 2 dimensions; example 1 is unlabelled in dimension 1 (its loss is NaN).

    Per-dimension means over labelled examples: L_0 = (1 + 3 + 5) / 3 = 3, L_1 = (2 + 6) / 2 = 4.
    """
    losses = torch.tensor([[1.0, 2.0], [3.0, NAN], [5.0, 6.0]])
    mask = torch.tensor([[True, True], [True, False], [True, True]])
    return losses, mask


def test_dimension_means(batch):
    losses, mask = batch
    torch.testing.assert_close(Aggregator.dimension_means(losses, mask), torch.tensor([3.0, 4.0]))


def test_linear_scalarization_per_batch(batch):
    losses, mask = batch
    # 0.25 * 3 + 0.75 * 4 = 0.75 + 3 = 3.75
    out = LinearScalarization()(losses, torch.tensor([0.25, 0.75]), mask)
    assert out.item() == pytest.approx(3.75)


def test_linear_scalarization_per_sample(batch):
    losses, mask = batch
    lam = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]])
    # rows: 0.5*1 + 0.5*2 = 1.5;  1*3 (dim 1 unlabelled) = 3;  0*5 + 1*6 = 6;  mean = 10.5/3 = 3.5
    assert LinearScalarization()(losses, lam, mask).item() == pytest.approx(3.5)


def test_per_sample_ignores_rows_without_labels(batch):
    losses, mask = batch
    lam = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    losses = torch.cat([losses, torch.tensor([[NAN, NAN]])])
    mask = torch.cat([mask, torch.tensor([[False, False]])])
    assert LinearScalarization()(losses, lam, mask).item() == pytest.approx(3.5)


def test_tchebycheff_fixed_ideal(batch):
    losses, mask = batch
    lam = torch.tensor([0.25, 0.75])
    # z = 0: max(0.25*3, 0.75*4) = max(0.75, 3.0) = 3.0
    assert Tchebycheff()(losses, lam, mask).item() == pytest.approx(3.0)
    # z = (1, 3.5): max(0.25*(3-1), 0.75*(4-3.5)) = max(0.5, 0.375) = 0.5
    assert Tchebycheff(ideal=[1.0, 3.5])(losses, lam, mask).item() == pytest.approx(0.5)
    # margin 0.5 lowers z to (0.5, 3): max(0.25*2.5, 0.75*1) = max(0.625, 0.75) = 0.75
    agg = Tchebycheff(ideal=[1.0, 3.5], margin=0.5)
    assert agg(losses, lam, mask).item() == pytest.approx(0.75)


def test_tchebycheff_per_sample(batch):
    losses, mask = batch
    lam = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]])
    # rows: max(0.5, 1.0) = 1;  3 (dim 1 unlabelled);  max(0, 6) = 6;  mean = 10/3
    assert Tchebycheff()(losses, lam, mask).item() == pytest.approx(10 / 3)


def test_smooth_tchebycheff(batch):
    losses, mask = batch
    lam = torch.tensor([0.25, 0.75])
    # μ = 1: log(exp(0.75) + exp(3)) = 3 + log(1 + exp(-2.25)) = 3 + 0.100207 = 3.100207
    out = SmoothTchebycheff(mu=1.0)(losses, lam, mask)
    assert out.item() == pytest.approx(3 + math.log1p(math.exp(-2.25)))
    assert out.item() == pytest.approx(3.100207, abs=1e-6)
    # tends to Tchebycheff (3.0) as μ → 0
    assert SmoothTchebycheff(mu=1e-3)(losses, lam, mask).item() == pytest.approx(3.0, abs=1e-6)


def test_unlabelled_dimension_is_left_out(batch):
    losses, mask = batch
    mask = mask.clone()
    mask[:, 1] = False
    lam = torch.tensor([0.25, 0.75])
    # only L_0 = 3 counts: LS 0.25*3 = 0.75, Tche max over {0.75} = 0.75
    assert LinearScalarization()(losses, lam, mask).item() == pytest.approx(0.75)
    assert Tchebycheff()(losses, lam, mask).item() == pytest.approx(0.75)


@pytest.mark.parametrize("agg", [LinearScalarization(), Tchebycheff(), SmoothTchebycheff()])
@pytest.mark.parametrize("per_sample", [False, True])
def test_masked_nan_gets_no_gradient(batch, agg, per_sample):
    losses, mask = batch
    losses = losses.clone().requires_grad_()
    lam = torch.tensor([0.25, 0.75])
    agg(losses, lam.expand(3, 2) if per_sample else lam, mask).backward()
    assert torch.isfinite(losses.grad).all()
    assert losses.grad[1, 1] == 0


def test_no_label_at_all_gives_connected_zero():
    losses = torch.tensor([[NAN, 1.0]], requires_grad=True)
    mask = torch.zeros(1, 2, dtype=torch.bool)
    for lam in (torch.tensor([0.5, 0.5]), torch.tensor([[0.5, 0.5]])):
        out = Tchebycheff()(losses, lam, mask)
        assert out.item() == 0 and out.requires_grad
        out.backward()
        assert torch.isfinite(losses.grad).all()


def test_one_hot_preference_is_the_single_objective_loss(batch):
    losses, mask = batch
    for agg in (LinearScalarization(), Tchebycheff()):
        assert agg(losses, torch.tensor([0.0, 1.0]), mask).item() == pytest.approx(4.0)


def test_running_ideal_tracks_best_mean_and_is_checkpointed():
    agg = Tchebycheff(ideal="running", num_preferences=2).train()
    lam = torch.tensor([0.5, 0.5])
    # batch 1: means (3, 5) become z, so L - z = 0
    assert agg(torch.tensor([[2.0, 4.0], [4.0, 6.0]]), lam).item() == 0.0
    torch.testing.assert_close(agg.ideal_point, torch.tensor([3.0, 5.0]))
    # batch 2: means (4, 2); z = (min(3, 4), min(5, 2)) = (3, 2); max(0.5*1, 0.5*0) = 0.5
    assert agg(torch.tensor([[4.0, 2.0]]), lam).item() == pytest.approx(0.5)
    torch.testing.assert_close(agg.ideal_point, torch.tensor([3.0, 2.0]))

    restored = Tchebycheff(ideal="running", num_preferences=2, margin=0.1)
    restored.load_state_dict(agg.state_dict())
    torch.testing.assert_close(restored.ideal_point, torch.tensor([3.0, 2.0]))
    # eval mode: no update; z - margin = (2.9, 1.9); max(0.5*(5-2.9), 0.5*(1-1.9)) = 1.05
    restored.eval()
    assert restored(torch.tensor([[5.0, 1.0]]), lam).item() == pytest.approx(1.05)
    torch.testing.assert_close(restored.ideal_point, torch.tensor([3.0, 2.0]))


def test_running_ideal_unseen_dimension_uses_batch_mean():
    agg = Tchebycheff(ideal="running", num_preferences=2).eval()
    # nothing seen: z = batch means (1, 2) → 0 everywhere
    assert agg(torch.tensor([[1.0, 2.0]]), torch.tensor([0.5, 0.5])).item() == 0.0
    assert torch.isinf(agg.ideal_point).all()


def test_user_subclass():
    class WeightedSquares(Aggregator):
        def aggregate(self, losses, preference, mask):
            return (preference * losses**2).masked_fill(~mask, 0.0).sum(-1)

    losses = torch.tensor([[3.0, 4.0]])
    # 0.25 * 3² + 0.75 * 4² = 2.25 + 12 = 14.25
    assert WeightedSquares()(losses, torch.tensor([0.25, 0.75])).item() == pytest.approx(14.25)


def test_errors():
    with pytest.raises(ValueError, match="num_preferences"):
        Tchebycheff(ideal="running")
    with pytest.raises(ValueError, match="running"):
        Tchebycheff(ideal="runing")
    with pytest.raises(ValueError, match="preference must have shape"):
        LinearScalarization()(torch.ones(4, 2), torch.tensor([0.2, 0.3, 0.5]))
    with pytest.raises(ValueError, match="ideal point has 3 values"):
        Tchebycheff(ideal=[0.0, 0.0, 0.0])(torch.ones(4, 2), torch.tensor([0.5, 0.5]))


def _running_ideal_worker(rank: int, init_file: str) -> None:
    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    agg = Tchebycheff(ideal="running", num_preferences=2).train()
    # rank 0 means (1, 5), rank 1 means (3, 2): every rank must end with z = (1, 2)
    losses = torch.tensor([[1.0, 5.0]]) if rank == 0 else torch.tensor([[3.0, 2.0]])
    agg(losses, torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(agg.ideal_point, torch.tensor([1.0, 2.0]))
    dist.destroy_process_group()


@pytest.mark.distributed
def test_running_ideal_all_reduces_min(tmp_path):
    mp.start_processes(
        _running_ideal_worker, args=(str(tmp_path / "init"),), nprocs=2, start_method="fork"
    )


@pytest.mark.parametrize("agg", [LinearScalarization(), Tchebycheff(), SmoothTchebycheff()])
@pytest.mark.parametrize(
    ("preference", "match"),
    [
        ([2.0, -1.0], "negative weight"),
        ([0.7, 0.7], "sums to 1.4"),
        ([float("nan"), 1.0], "NaN or infinity"),
        (torch.tensor([2.0, -1.0]), "negative weight"),
        ([1.0, 0.0, 0.0], r"\[2\] \(one λ per batch\).*losses \[3, 2\] of 2 dimensions, got \[3\]"),
        ("a,b", "not a number"),
    ],
)
def test_lambda_off_the_simplex_is_refused(agg, preference, match):
    losses = torch.rand(3, 2)
    with pytest.raises(ValueError, match=match):
        agg(losses, preference)


def test_lambda_as_string_aggregates_like_numbers():
    losses = torch.tensor([[1.0, 3.0], [2.0, 5.0]])
    agg = LinearScalarization()
    assert agg(losses, "0.25,0.75").item() == pytest.approx(agg(losses, [0.25, 0.75]).item())
