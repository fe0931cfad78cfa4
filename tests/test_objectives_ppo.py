"""PPO's pieces against hand-computed values: GAE, the clipped losses, whitening, and the
advantage aggregators (LS, Tchebycheff with its ideal point, the Lagrangian)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from panacea_pl.objectives import (
    ClippedPolicyLoss,
    ClippedValueLoss,
    LagrangianAdvantage,
    LinearAdvantage,
    LinearScalarization,
    Tchebycheff,
    TchebycheffAdvantage,
    generalized_advantages,
    masked_whiten,
)

# one row: action 0 is a prompt token, actions 1-3 the response, action 4 padding
MASK = torch.tensor([[False, True, True, True, False]])


def test_gae_by_hand_per_dimension():
    # dimension 0: reward 1 at the last token; dimension 1: rewards at every token.
    # Entries outside the mask hold garbage that must be ignored.
    rewards = torch.tensor([[[3.0, 3.0], [0.0, 0.1], [0.0, 0.2], [1.0, 0.3], [7.0, 7.0]]])
    values = torch.tensor([[[9.0, 9.0], [0.5, 0.0], [0.6, 0.0], [0.7, 0.0], [5.0, 5.0]]])
    adv, ret = generalized_advantages(rewards, values, MASK, gamma=0.9, lam=0.8)
    # dimension 0, by hand (γ = 0.9, γλ = 0.72):
    #   δ3 = 1 − 0.7 = 0.3                  A3 = 0.3
    #   δ2 = 0.9·0.7 − 0.6 = 0.03           A2 = 0.03 + 0.72·0.3 = 0.246
    #   δ1 = 0.9·0.6 − 0.5 = 0.04           A1 = 0.04 + 0.72·0.246 = 0.21712
    torch.testing.assert_close(adv[0, :, 0], torch.tensor([0.0, 0.21712, 0.246, 0.3, 0.0]))
    torch.testing.assert_close(ret[0, :, 0], torch.tensor([0.0, 0.71712, 0.846, 1.0, 0.0]))
    # dimension 1 (V = 0): A3 = 0.3, A2 = 0.2 + 0.72·0.3 = 0.416, A1 = 0.1 + 0.72·0.416 = 0.39952
    torch.testing.assert_close(adv[0, :, 1], torch.tensor([0.0, 0.39952, 0.416, 0.3, 0.0]))


def test_gae_with_gamma_and_lambda_one_is_the_return_minus_the_value():
    rewards = torch.tensor([[0.0, 0.1, 0.2, 1.0, 0.0]])
    values = torch.tensor([[0.0, 0.5, 0.4, 0.3, 0.0]])
    adv, ret = generalized_advantages(rewards, values, MASK, gamma=1.0, lam=1.0)
    torch.testing.assert_close(ret, torch.tensor([[0.0, 1.3, 1.2, 1.0, 0.0]]))
    torch.testing.assert_close(adv, ret - values * MASK)


def test_gae_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="share a shape"):
        generalized_advantages(torch.zeros(1, 5, 2), torch.zeros(1, 5), MASK)


def test_clipped_policy_loss_by_hand():
    ratio = torch.tensor([[1.5, 0.5, 1.1, 0.7, 9.0]])
    old = torch.zeros(1, 5)
    logps = ratio.log().requires_grad_()
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0, 5.0]])
    mask = torch.tensor([[True, True, True, True, False]])
    out = ClippedPolicyLoss(clip_range=0.2)(logps, old, advantages, mask)
    # max(−A·ρ, −A·clip(ρ)) per token: −1.2 (clipped), −0.5, 1.1, 0.8 (clipped) → mean 0.05
    torch.testing.assert_close(out.loss, torch.tensor(0.05))
    torch.testing.assert_close(out.clip_fraction, torch.tensor(0.75))  # ρ outside [0.8, 1.2]
    expected_kl = sum(0.5 * torch.tensor(r).log() ** 2 for r in (1.5, 0.5, 1.1, 0.7)) / 4
    torch.testing.assert_close(out.approx_kl, expected_kl)
    out.loss.backward()
    # clipped tokens get no gradient; the others −A·ρ / 4 (d/d log ρ of −A·ρ is −A·ρ)
    torch.testing.assert_close(logps.grad, torch.tensor([[0.0, -0.125, 0.275, 0.0, 0.0]]))


def test_clipped_value_loss_by_hand():
    values = torch.tensor([[[1.0, 2.0], [0.0, 3.0], [8.0, 8.0]]])
    old = torch.tensor([[[0.5, 2.0], [0.1, 2.5], [0.0, 0.0]]])
    returns = torch.tensor([[[1.1, 1.0], [0.0, 3.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, False]])
    # dim 0: token 0 max((1 − 1.1)², (0.7 − 1.1)²) = 0.16, token 1: 0 → ½·mean = 0.04
    # dim 1: token 0: 1, token 1: max(0, (2.7 − 3)²) = 0.09 → ½·mean = 0.2725
    clipped = ClippedValueLoss(clip_range=0.2)(values, old, returns, mask)
    torch.testing.assert_close(clipped, torch.tensor([0.04, 0.2725]))
    plain = ClippedValueLoss(clip_range=None)(values, old, returns, mask)
    torch.testing.assert_close(plain, torch.tensor([0.0025, 0.25]))


def test_masked_whiten_uses_only_masked_entries():
    values = torch.tensor([[1.0, 2.0], [3.0, 100.0]])
    mask = torch.tensor([[True, True], [True, False]])
    torch.testing.assert_close(
        masked_whiten(values, mask), torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        masked_whiten(values, mask, shift_mean=False),
        torch.tensor([[1.0, 2.0], [3.0, 0.0]]),
        atol=1e-6,
        rtol=0,
    )


# ---- advantage aggregation --------------------------------------------------------------------

ADV = torch.tensor([[[3.0, 1.0], [1.0, 1.0]], [[-2.0, 4.0], [0.0, 2.0]]])  # [N=2, T=2, m=2]


def test_linear_advantage_is_the_lambda_weighted_sum():
    rows = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    out = LinearAdvantage()(ADV, rows)
    torch.testing.assert_close(out.advantages, torch.tensor([[1.5, 1.0], [-2.0, 0.0]]))
    torch.testing.assert_close(out.weights, rows)
    shared = LinearAdvantage()(ADV, torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(shared.advantages, torch.tensor([[2.0, 1.0], [1.0, 1.0]]))


def test_tchebycheff_advantage_follows_the_worst_weighted_shortfall():
    values = torch.tensor([[0.2, 0.6], [0.9, 0.0]])
    lam = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    out = TchebycheffAdvantage(ideal=[1.0, 1.0])(ADV, lam, values=values)
    # shortfalls λ_i (z_i − J_i): row 0 (0.4, 0.2) → dim 0; row 1 (0.05, 0.5) → dim 1
    torch.testing.assert_close(out.weights, torch.tensor([[0.5, 0.0], [0.0, 0.5]]))
    torch.testing.assert_close(out.advantages, torch.tensor([[1.5, 0.5], [2.0, 1.0]]))


def test_advantage_weights_are_minus_the_loss_aggregators_gradient():
    """The sign convention: with L = −J and z^L = −z, the loss aggregators' gradient in J is
    −(weights)/N for LS and for Tchebycheff (each row's active dimension)."""
    torch.manual_seed(0)
    values = torch.rand(6, 3)
    lam = torch.distributions.Dirichlet(torch.ones(3)).sample((6,))
    advantages = torch.zeros(6, 1, 3)
    pairs = [
        (LinearScalarization(), LinearAdvantage()),
        (Tchebycheff(ideal=[-1.2, -1.1, -1.3]), TchebycheffAdvantage(ideal=[1.2, 1.1, 1.3])),
    ]
    for loss_aggregator, advantage_aggregator in pairs:
        objectives = values.clone().requires_grad_()
        loss_aggregator(-objectives, lam).backward()
        weights = advantage_aggregator(advantages, lam, values=values).weights
        torch.testing.assert_close(objectives.grad, -weights / 6)


def test_running_ideal_grows_with_margin_and_only_in_training():
    agg = TchebycheffAdvantage(ideal="running", num_preferences=2, margin=0.1)
    lam = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    out = agg(ADV, lam, values=torch.tensor([[0.2, 0.6], [0.9, 0.0]]))
    torch.testing.assert_close(agg.ideal_point, torch.tensor([0.9, 0.6]))
    # z + margin = (1.0, 0.7): row 0 (0.4, 0.05) → dim 0; row 1 (0.05, 0.35) → dim 1
    torch.testing.assert_close(out.weights, torch.tensor([[0.5, 0.0], [0.0, 0.5]]))
    agg(ADV, lam, values=torch.tensor([[0.1, 0.7], [0.0, 0.0]]))
    torch.testing.assert_close(agg.ideal_point, torch.tensor([0.9, 0.7]))
    agg.eval()
    agg(ADV, lam, values=torch.tensor([[5.0, 5.0], [5.0, 5.0]]))
    torch.testing.assert_close(agg.ideal_point, torch.tensor([0.9, 0.7]))
    torch.testing.assert_close(agg.metrics()["ideal"], torch.tensor([1.0, 0.8]))


def test_tchebycheff_needs_values():
    with pytest.raises(ValueError, match="needs values"):
        TchebycheffAdvantage(ideal=1.0)(ADV, torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="num_preferences"):
        TchebycheffAdvantage(ideal="running")


def test_lagrangian_dual_ascent_and_weights_by_hand():
    agg = LagrangianAdvantage(
        constraint_dimension=1, cost_limit=0.1, multiplier_init=1.0, multiplier_lr=0.5
    )
    rewards = torch.tensor([[0.0, -0.3], [1.0, -0.5]])  # harmless = −cost: costs 0.3, 0.5
    out = agg(ADV, torch.tensor([0.7, 0.3]), rewards=rewards)
    # μ = 1 + 0.5 · (0.4 − 0.1) = 1.15; weights (1, μ) / (1 + μ)
    torch.testing.assert_close(agg.multiplier, torch.tensor(1.15))
    w = torch.tensor([1.0, 1.15]) / 2.15
    torch.testing.assert_close(out.weights, w.expand(2, 2))
    torch.testing.assert_close(out.advantages, (ADV * w).sum(-1))
    torch.testing.assert_close(agg.metrics()["cost"], torch.tensor(0.4))
    # a safe rollout drives μ down, never below 0
    agg(ADV, torch.tensor([0.7, 0.3]), rewards=torch.tensor([[0.0, 5.0], [0.0, 5.0]]))
    torch.testing.assert_close(agg.multiplier, torch.tensor(0.0))


def test_lagrangian_renormalises_the_other_dimensions():
    agg = LagrangianAdvantage(constraint_dimension=2, multiplier_init=1.0).eval()
    lam = torch.tensor([[0.2, 0.6, 0.2], [0.0, 0.0, 1.0]])
    out = agg(torch.zeros(2, 1, 3), lam)
    # others renormalised (0.25, 0.75), or uniform when λ has no mass there; μ = 1 → halves
    torch.testing.assert_close(out.weights, torch.tensor([[0.125, 0.375, 0.5], [0.25, 0.25, 0.5]]))


# ---- distributed: state and whitening agree on every rank ----------------------------------


def _distributed_worker(rank: int, init_file: str) -> None:
    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    lam = torch.tensor([[0.5, 0.5]])
    adv = torch.zeros(1, 1, 2)
    tche = TchebycheffAdvantage(ideal="running", num_preferences=2)
    tche(adv, lam, values=torch.tensor([[1.0, 5.0]]) if rank == 0 else torch.tensor([[3.0, 2.0]]))
    torch.testing.assert_close(tche.ideal_point, torch.tensor([3.0, 5.0]))
    lagrangian = LagrangianAdvantage(multiplier_init=0.0, multiplier_lr=1.0)
    cost = 1.0 if rank == 0 else 3.0  # mean 2 over the ranks
    lagrangian(adv, lam, rewards=torch.tensor([[0.0, -cost]]))
    torch.testing.assert_close(lagrangian.multiplier, torch.tensor(2.0))
    values = torch.tensor([[1.0, 2.0]]) if rank == 0 else torch.tensor([[3.0, 4.0]])
    whitened = masked_whiten(values, torch.ones(1, 2, dtype=torch.bool))
    scale = torch.tensor([1.0, 2.0, 3.0, 4.0]).std()
    torch.testing.assert_close(whitened, (values - 2.5) / scale)
    dist.destroy_process_group()


@pytest.mark.distributed
def test_state_and_whitening_are_all_reduced(tmp_path):
    mp.start_processes(
        _distributed_worker, args=(str(tmp_path / "init"),), nprocs=2, start_method="fork"
    )
