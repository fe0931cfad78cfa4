"""GRPO/RLOO advantages and loss against hand-computed values; one-hot λ is single-objective
GRPO (TRL's formula written out)."""

from __future__ import annotations

import math

import pytest
import torch

from panacea_pl.objectives import (
    GroupAdvantage,
    GroupPolicyLoss,
    LinearAdvantage,
    RLOOAdvantage,
    TchebycheffAdvantage,
)
from panacea_pl.objectives.group_advantage import leave_one_out_mean

# one group of G = 3 responses, m = 2 dimensions, λ = (½, ½): s = λ·r = (0.5, 1.5, 4.0)
REWARDS = torch.tensor([[1.0, 0.0], [2.0, 1.0], [6.0, 2.0]])
HALF = torch.full((3, 2), 0.5)


def test_linear_grpo_dr_grpo_and_rloo_hand_values():
    std = math.sqrt((1.5**2 + 0.5**2 + 2.0**2) / 2)  # unbiased std of s: √3.25
    grpo = GroupAdvantage()(REWARDS, HALF, 3).advantages
    expected = torch.tensor([-1.5, -0.5, 2.0]) / (std + 1e-4)
    torch.testing.assert_close(grpo, expected)
    dr = GroupAdvantage(scale_by_std=False)(REWARDS, HALF, 3)
    torch.testing.assert_close(dr.advantages, torch.tensor([-1.5, -0.5, 2.0]))
    torch.testing.assert_close(dr.dimension_advantages, torch.tensor([[-2.0, -1], [-1, 0], [3, 1]]))
    # leave-one-out: 0.5 − (1.5 + 4)/2, 1.5 − (0.5 + 4)/2, 4 − (0.5 + 1.5)/2
    rloo = RLOOAdvantage()(REWARDS, HALF, 3).advantages
    torch.testing.assert_close(rloo, torch.tensor([-2.25, -0.75, 3.0]))


def test_per_dimension_normalisation_hand_values():
    """dim 0: (1, 2, 6), mean 3, std √7; dim 1: (0, 1, 2), mean 1, std 1."""
    out = GroupAdvantage(scale_by_std=False, normalize_dimensions=True, eps=1e-9)(REWARDS, HALF, 3)
    r7 = math.sqrt(7)
    expected = 0.5 * torch.tensor([-2 / r7 - 1, -1 / r7, 3 / r7 + 1])
    torch.testing.assert_close(out.advantages, expected)
    # scaling one dimension's rewards changes nothing after normalisation
    scaled = REWARDS * torch.tensor([100.0, 1.0])
    again = GroupAdvantage(scale_by_std=False, normalize_dimensions=True, eps=1e-9)(scaled, HALF, 3)
    torch.testing.assert_close(again.advantages, expected)


def test_tchebycheff_picks_the_worst_weighted_shortfall():
    """z = (7, 3), Ĵ = group means (3, 1). λ = (½, ½): shortfalls (2, 1) → dimension 0 with weight
    ½; λ = (0.2, 0.8): shortfalls (0.8, 1.6) → dimension 1 with weight 0.8."""
    rewards = torch.cat([REWARDS, REWARDS])
    lam = torch.cat([HALF, torch.tensor([[0.2, 0.8]] * 3)])
    tche = TchebycheffAdvantage(ideal=[7.0, 3.0])
    out = GroupAdvantage(scale_by_std=False)(rewards, lam, 3, tche)
    torch.testing.assert_close(out.advantages, torch.tensor([-1.0, -0.5, 1.5, -0.8, 0.0, 0.8]))
    torch.testing.assert_close(out.weights[:3], torch.tensor([[0.5, 0.0]] * 3))
    torch.testing.assert_close(out.weights[3:], torch.tensor([[0.0, 0.8]] * 3))


def single_objective_grpo(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """TRL GRPOTrainer's advantage for one reward: (r − mean_g) / (std_g + 1e-4)."""
    grouped = rewards.view(-1, group_size)
    mean = grouped.mean(1).repeat_interleave(group_size)
    std = grouped.std(1).repeat_interleave(group_size)
    return (rewards - mean) / (std + 1e-4)


@pytest.mark.parametrize("k", [0, 1])
def test_one_hot_lambda_is_single_objective_grpo_and_rloo(k):
    gen = torch.Generator().manual_seed(k)
    rewards = torch.rand(4 * 5, 2, generator=gen)  # 4 groups of G = 5
    one_hot = torch.nn.functional.one_hot(torch.full((20,), k), 2).float()
    grpo = GroupAdvantage()(rewards, one_hot, 5).advantages
    torch.testing.assert_close(grpo, single_objective_grpo(rewards[:, k], 5))
    rloo = RLOOAdvantage()(rewards, one_hot, 5).advantages
    torch.testing.assert_close(rloo, rewards[:, k] - leave_one_out_mean(rewards[:, k], 5))
    # Tchebycheff with a utopia margin: only dimension k has a positive weighted shortfall
    tche = TchebycheffAdvantage(ideal="running", num_preferences=2, margin=0.1)
    torch.testing.assert_close(GroupAdvantage()(rewards, one_hot, 5, tche).advantages, grpo)
    torch.testing.assert_close(
        GroupAdvantage()(rewards, one_hot, 5, LinearAdvantage()).advantages, grpo
    )


def test_group_errors():
    with pytest.raises(ValueError, match="groups of 4"):
        GroupAdvantage()(REWARDS, HALF, 4)
    with pytest.raises(ValueError, match="baseline"):
        GroupAdvantage(baseline="median")
    with pytest.raises(ValueError, match=r"\[N, m\]"):
        GroupAdvantage()(REWARDS, HALF[:, :1], 3)


# ---- the loss -------------------------------------------------------------------------------

MASK = torch.tensor([[False, True, True], [False, True, False]])
RATIOS = torch.tensor([[1.0, 1.5, 0.5], [1.0, 0.9, 1.0]])
ADV = torch.tensor([2.0, -1.0])


def loss_inputs():
    old = torch.log(torch.tensor([[0.3, 0.2, 0.4], [0.5, 0.1, 0.6]]))
    logps = (old + RATIOS.log()).requires_grad_(True)
    return logps, old


def test_clipped_surrogate_hand_values_token_and_sequence():
    """ε = 0.2. Row 0 (A = 2): ρ 1.5 → −min(3, 2.4) = −2.4; ρ 0.5 → −min(1, 1.6) = −1.
    Row 1 (A = −1): ρ 0.9 → −min(−0.9, −0.9) = 0.9 (unclipped)."""
    logps, old = loss_inputs()
    token = GroupPolicyLoss(0.2, normalization="token")(logps, old, ADV, MASK)
    torch.testing.assert_close(token.loss, torch.tensor((-2.4 - 1.0 + 0.9) / 3))
    torch.testing.assert_close(token.clip_fraction, torch.tensor(2 / 3))
    sequence = GroupPolicyLoss(0.2, normalization="sequence")(logps, old, ADV, MASK)
    torch.testing.assert_close(sequence.loss, torch.tensor(((-2.4 - 1.0) / 2 + 0.9) / 2))
    # clip-higher: ε_high = 0.6 lets ρ = 1.5 through: −min(3, 3) = −3
    high = GroupPolicyLoss(0.2, clip_range_high=0.6)(logps, old, ADV, MASK)
    torch.testing.assert_close(high.loss, torch.tensor((-3.0 - 1.0 + 0.9) / 3))


def test_gradient_at_ratio_one_is_minus_the_advantage_per_token():
    old = torch.log(torch.tensor([[0.3, 0.2, 0.4], [0.5, 0.1, 0.6]]))
    logps = old.clone().requires_grad_(True)
    GroupPolicyLoss(0.2)(logps, old, ADV, MASK).loss.backward()
    expected = torch.tensor([[0.0, -2.0, -2.0], [0.0, 1.0, 0.0]]) / 3
    torch.testing.assert_close(logps.grad, expected)


def test_k3_term_hand_value():
    """ref − logp = ln 2 on every token: k3 = 2 − ln 2 − 1."""
    logps, old = loss_inputs()
    ref = logps.detach() + math.log(2.0)
    plain = GroupPolicyLoss(0.2)(logps, old, ADV, MASK)
    with_kl = GroupPolicyLoss(0.2, kl_coef=0.1)(logps, old, ADV, MASK, ref_logps=ref)
    k3 = 1.0 - math.log(2.0)
    torch.testing.assert_close(with_kl.kl, torch.tensor(k3))
    torch.testing.assert_close(with_kl.loss, plain.loss + 0.1 * k3)
    with pytest.raises(ValueError, match="ref_logps"):
        GroupPolicyLoss(0.2, kl_coef=0.1)(logps, old, ADV, MASK)
