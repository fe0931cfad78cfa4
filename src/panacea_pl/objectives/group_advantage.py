"""Critic-free advantages for groups of responses sharing one prompt and one λ (GRPO, RLOO).

    adv = GroupAdvantage()                                   # GRPO: (s − mean_g s) / std_g s
    adv = GroupAdvantage(scale_by_std=False)                 # Dr. GRPO: s − mean_g s
    adv = RLOOAdvantage()                                    # s − mean of the other G − 1
    adv = GroupAdvantage(normalize_dimensions=True)          # each r_i in group-std units first
    out = adv(rewards, preference, group_size=8)             # rewards [N, m], λ [N, m]
    out = adv(rewards, preference, 8, TchebycheffAdvantage(ideal="running", num_preferences=2))
    out.advantages                                           # [N], one per response

Rows are prompt-major: rows g·G … g·G + G − 1 are one prompt's G responses, all at one λ.
Rewards are higher-is-better; with the KL in the reward they already carry −β·KL. Steps:

1. (optional, `normalize_dimensions`) r_i ← (r_i − mean_g r_i) / (std_g r_i + ε): dimensions on
   different scales each count in units of their own within-group spread.
2. Per-dimension advantages A_i = r_i − b_i with b_i the group mean (GRPO) or the mean of the
   other G − 1 responses (RLOO's leave-one-out).
3. Aggregation with the same `AdvantageAggregator`s PPO uses: A = Σ_i w_i A_i. Linear: w = λ.
   Tchebycheff: w = λ_i* e_i*, i* = argmax_i λ_i (z_i − Ĵ_i), with Ĵ_i the group's mean
   reward in dimension i (the critic-free estimate of J_i at the group's λ).
4. (optional, `scale_by_std`) A ← A / (std_g s + ε), s = Σ_i w_i r_i the group's weighted
   reward: GRPO's scaling (unbiased std, ε = 1e-4, as TRL's `GRPOTrainer`).

What each ascends (gradient of a KL-regularised objective J_i = E[r_i] − β·KL when the KL is in
the reward):

- linear, leave-one-out, no scaling (RLOO): an unbiased estimate of ∇ Σ_i λ_i J_i, whose
  maximiser is π_ref·exp(λ·r/β); with the group-mean baseline (Dr. GRPO) the same direction
  scaled by (G − 1)/G.
- GRPO's std scaling reweights prompts by 1/std of their rewards: the objective becomes a
  prompt-reweighted one (a prompt with near-constant rewards gets a large weight), so the
  optimum is no longer exactly π_ref·exp(λ·r/β).
- per-dimension normalisation ascends Σ_i (λ_i/σ_i) J_i with σ_i the prompt's reward spread in
  dimension i: λ is effectively rescaled per prompt, trading exactness for scale invariance.
- Tchebycheff ascends −max_i λ_i (z_i − J_i) (the worst λ-weighted shortfall from the ideal
  point), whose maximisers over λ cover non-convex parts of a front that LS misses.

With a one-hot λ = e_k every variant reduces to single-objective GRPO/RLOO on dimension k.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from panacea_pl.objectives.advantage import AdvantageAggregator, LinearAdvantage
from panacea_pl.rows import group_rows


def _groups(x: Tensor, group_size: int) -> Tensor:
    """[N, …] → [N / G, G, …]."""
    if group_size < 2 or x.shape[0] % group_size:
        raise ValueError(
            f"{x.shape[0]} rows do not split into groups of {group_size} (need G ≥ 2 dividing N)"
        )
    return group_rows(x, group_size)


def group_mean(x: Tensor, group_size: int) -> Tensor:
    """Each row's group mean, repeated per row (same shape as x)."""
    return (
        _groups(x, group_size)
        .mean(1, keepdim=True)
        .expand_as(_groups(x, group_size))
        .reshape(x.shape)
    )


def group_std(x: Tensor, group_size: int) -> Tensor:
    """Each row's group standard deviation (unbiased, as `torch.std`), repeated per row."""
    g = _groups(x, group_size)
    return g.std(1, keepdim=True).expand_as(g).reshape(x.shape)


def leave_one_out_mean(x: Tensor, group_size: int) -> Tensor:
    """Each row's mean over the other G − 1 rows of its group (RLOO's baseline)."""
    g = _groups(x, group_size)
    return ((g.sum(1, keepdim=True) - g) / (group_size - 1)).reshape(x.shape)


@dataclass(frozen=True)
class GroupAdvantages:
    """Attributes:
    advantages: [N] the aggregated (and scaled) advantage of each response.
    dimension_advantages: [N, m] A_i before aggregation.
    weights: [N, m] the aggregation weights w (A = Σ_i w_i A_i before scaling).
    """

    advantages: Tensor
    dimension_advantages: Tensor
    weights: Tensor


class GroupAdvantage(nn.Module):
    """Group-relative advantages under a per-group λ (the module docstring gives the maths).

    Args:
        baseline: "mean" (GRPO) or "leave_one_out" (RLOO).
        scale_by_std: divide by the group's std of the weighted reward (GRPO; off: Dr. GRPO).
        normalize_dimensions: put every dimension in units of its group std before weighting.
        eps: added to standard deviations.
    """

    def __init__(
        self,
        baseline: Literal["mean", "leave_one_out"] = "mean",
        scale_by_std: bool = True,
        normalize_dimensions: bool = False,
        eps: float = 1e-4,
    ):
        super().__init__()
        if baseline not in ("mean", "leave_one_out"):
            raise ValueError(f"baseline must be 'mean' or 'leave_one_out', got {baseline!r}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.baseline = baseline
        self.scale_by_std = scale_by_std
        self.normalize_dimensions = normalize_dimensions
        self.eps = eps

    @torch.no_grad()
    def forward(
        self,
        rewards: Tensor,
        preference: Tensor,
        group_size: int,
        aggregator: AdvantageAggregator | None = None,
    ) -> GroupAdvantages:
        """Advantages of `rewards` [N, m] under `preference` [N, m] (constant within a group)
        for groups of `group_size` consecutive rows; `aggregator` defaults to linear."""
        if rewards.dim() != 2 or preference.shape != rewards.shape:
            raise ValueError(
                f"rewards and preference must both be [N, m], got {list(rewards.shape)} and "
                f"{list(preference.shape)}"
            )
        aggregator = aggregator if aggregator is not None else LinearAdvantage()
        r = rewards.float()
        if self.normalize_dimensions:
            r = (r - group_mean(r, group_size)) / (group_std(r, group_size) + self.eps)
        if self.baseline == "mean":
            per_dim = r - group_mean(r, group_size)
        else:
            per_dim = r - leave_one_out_mean(r, group_size)
        estimates = group_mean(rewards.float(), group_size)  # Ĵ_i of each group's λ
        out = aggregator(per_dim[:, None, :], preference, values=estimates, rewards=rewards)
        advantages = out.advantages[:, 0]
        if self.scale_by_std:
            weighted = (out.weights * r).sum(-1)
            advantages = advantages / (group_std(weighted, group_size) + self.eps)
        return GroupAdvantages(advantages, per_dim, out.weights)


class RLOOAdvantage(GroupAdvantage):
    """REINFORCE leave-one-out (Ahmadian et al., 2024): baseline the mean of the other G − 1
    responses' rewards, no std scaling; an unbiased gradient of the KL-regularised objective.

    Args:
        normalize_dimensions: as `GroupAdvantage`.
        eps: as `GroupAdvantage`.
    """

    def __init__(self, normalize_dimensions: bool = False, eps: float = 1e-4):
        super().__init__("leave_one_out", False, normalize_dimensions, eps)
