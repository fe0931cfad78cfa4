"""Advantage aggregators: turn per-dimension PPO advantages into one advantage under λ.

    agg = LinearAdvantage()                                        # Σ_i λ_i A_i
    agg = TchebycheffAdvantage(ideal="running", num_preferences=2)  # λ_i* A_i*, i* the worst-off
    out = agg(advantages, preference, values=v0, rewards=r)       # out.advantages [N, T]
    out.weights                                                   # [N, m]: A = Σ_i w_i A_i

**Sign convention.** The loss aggregators of `panacea_pl.objectives.aggregation` combine losses
(lower is better). PPO's per-dimension objectives J_i = E[r_i] − β·KL and their advantages A_i
are higher-is-better, and PPO *maximises* the aggregate. With L_i = −J_i:

- LS: minimising Σ_i λ_i L_i is maximising Σ_i λ_i J_i, whose policy gradient has the
  advantage Σ_i λ_i A_i.
- Tchebycheff: minimising max_i λ_i (L_i − z^L_i) with z^L = −z is minimising
  max_i λ_i (z_i − J_i): the largest λ-weighted shortfall of J from the ideal point z, which
  must bound J from above (z_i ≥ J_i). Its (sub)gradient is that of the active dimension
  i* = argmax_i λ_i (z_i − J_i), so the advantage is λ_i*·A_i*.

Every aggregator returns weights w [N, m] with A = Σ_i w_i A_i, applied per token; `values` are
per-sample estimates of J_i under the sample's λ (`PanaceaPPO` passes the λ-conditioned critic's
value of the prompt) and `rewards` the sequence rewards before the KL penalty. Aggregators that
keep state (a running ideal point, a Lagrange multiplier) update it once per rollout in training
mode and keep it identical on every rank under torch.distributed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from panacea_pl.objectives.tchebycheff import IdealPoint, distributed, weighted_gaps
from panacea_pl.preference import checked_step_preference


@dataclass(frozen=True)
class AggregatedAdvantages:
    """One advantage per token and the weights that made it.

    Attributes:
        advantages: [N, T] the aggregate Σ_i w_i A_i.
        weights: [N, m] the weights w (detached).
    """

    advantages: Tensor
    weights: Tensor


class AdvantageAggregator(nn.Module):
    """Base class: per-dimension advantages [N, T, m] and λ → one advantage per token.

    Subclasses implement `weights`; stateful ones also `update` (called first, in training mode).
    """

    def forward(
        self,
        advantages: Tensor,
        preference: Tensor,
        *,
        values: Tensor | None = None,
        rewards: Tensor | None = None,
    ) -> AggregatedAdvantages:
        """Aggregate `advantages` [N, T, m] under `preference` [m] or [N, m].

        Args:
            advantages: per-dimension advantages (higher is better).
            preference: λ, one for all rows or one per row.
            values: [N, m] estimates of each row's J_i under its λ (needed by Tchebycheff).
            rewards: [N, m] sequence rewards without the KL penalty (needed by the Lagrangian).
        """
        if advantages.dim() != 3:
            raise ValueError(f"advantages must be [N, T, m], got {list(advantages.shape)}")
        n, _, m = advantages.shape
        preference = checked_step_preference(preference, m).to(advantages)
        if preference.dim() == 1:
            preference = preference.expand(n, -1)
        if preference.shape != (n, m):
            raise ValueError(
                f"preference must be [{m}] or [{n}, {m}] for advantages "
                f"{list(advantages.shape)}, got {list(preference.shape)}"
            )
        with torch.no_grad():
            if self.training:
                self.update(preference, values, rewards)
            weights = self.weights(preference, values, rewards).to(advantages.dtype)
        return AggregatedAdvantages((advantages * weights[:, None, :]).sum(-1), weights)

    def update(self, preference: Tensor, values: Tensor | None, rewards: Tensor | None) -> None:
        """Update the aggregator's state from one rollout (stateless aggregators do nothing)."""

    def weights(self, preference: Tensor, values: Tensor | None, rewards: Tensor | None) -> Tensor:
        """[N, m] weights of the per-dimension advantages."""
        raise NotImplementedError

    def metrics(self) -> dict[str, Tensor]:
        """State worth logging: name → scalar or [m] per-dimension tensor."""
        return {}


class LinearAdvantage(AdvantageAggregator):
    """Linear scalarisation: A = Σ_i λ_i A_i, the advantage of Σ_i λ_i J_i.

    With the per-token KL penalty in every dimension's reward and Σ_i λ_i = 1, this is the
    advantage of λ·E[r] − β·KL(π ‖ π_ref), whose optimum is π_ref·exp(λ·r / β).
    """

    def weights(self, preference: Tensor, values: Tensor | None, rewards: Tensor | None) -> Tensor:
        return preference


class TchebycheffAdvantage(IdealPoint, AdvantageAggregator):
    """Tchebycheff: maximise −max_i λ_i (z_i − J_i); the advantage is λ_i*·A_i* per row, with
    i* = argmax_i λ_i (z_i − Ĵ_i) and Ĵ = `values` (the critic's estimate of J under that λ).

    The ideal point z (an upper bound of J — the module docstring gives the sign convention):

    - fixed: a number or one per dimension, in the units of J (reward minus β·KL). It must be
      attainable-ish: a z far above the front makes the dimension with the largest λ_i active
      for every λ, and the front collapses towards the corners.
    - ``"running"``: the largest Ĵ_i seen so far in any row of any rollout (max over ranks
      under torch.distributed), i.e. the best the critic predicts for dimension i at any λ.
      It lives in the buffer `ideal_point` (checkpointed) and only grows. Its early values come
      from an untrained critic (whose head starts at 0), so train the critic alone for a few
      rollouts first (`PanaceaPPO.freeze_policy_iterations`), or give a fixed z.

    z_i is raised by `margin` ≥ 0 (the utopia point), so a dimension at its best keeps a
    positive shortfall and λ_i stays in play.

    The ideal point and the weighted max are `Tchebycheff`'s (`objectives.tchebycheff`), with
    gaps z − J instead of L − z.

    Args:
        ideal: a number, one per dimension, or "running".
        num_preferences: m; required with ``ideal="running"``.
        margin: added to z.
    """

    def __init__(
        self,
        ideal: float | Sequence[float] | Literal["running"] = "running",
        num_preferences: int | None = None,
        margin: float = 0.0,
    ):
        super().__init__()
        self._init_ideal(ideal, num_preferences, margin, lower_is_better=False)

    def update(self, preference: Tensor, values: Tensor | None, rewards: Tensor | None) -> None:
        if not self.running:
            return
        values = self._need_values(values, preference)
        self.ideal_point.copy_(self._improved_ideal(values.amax(0).to(self.ideal_point), sync=True))

    def weights(self, preference: Tensor, values: Tensor | None, rewards: Tensor | None) -> Tensor:
        values = self._need_values(values, preference)
        z = self.ideal_point.to(values)
        if z.numel() not in (1, values.shape[1]):
            raise ValueError(f"ideal point has {z.numel()} values, J has {values.shape[1]}")
        if not torch.isfinite(z).all():
            z = torch.where(torch.isfinite(z), z, values.amax(0))  # not updated yet (eval)
        shortfall = weighted_gaps(self._utopia(z) - values, preference)
        active = shortfall.argmax(-1, keepdim=True)
        return torch.zeros_like(preference).scatter(-1, active, preference.gather(-1, active))

    def metrics(self) -> dict[str, Tensor]:
        return {"ideal": self._utopia(self.ideal_point)} if self.running else {}

    @staticmethod
    def _need_values(values: Tensor | None, preference: Tensor) -> Tensor:
        if values is None or values.shape != preference.shape:
            shape = None if values is None else list(values.shape)
            raise ValueError(
                f"Tchebycheff needs values [N, m] = {list(preference.shape)} (per-row estimates "
                f"of each J_i), got {shape}"
            )
        return values


class LagrangianAdvantage(AdvantageAggregator):
    """safe-rlhf's PPO-Lagrangian (Dai et al., 2024, "Safe RLHF") on a vector reward: maximise
    the other dimensions subject to E[cost] ≤ `cost_limit` on one dimension, whose reward is
    −cost (harmlessness = −cost).

        A = (A_reward − μ·A_cost) / (1 + μ) = (Σ_{i≠c} λ'_i A_i + μ·A_c) / (1 + μ)

    with λ' the preference restricted to the other dimensions and renormalised (uniform if it
    has no mass there), A_c = −A_cost the constraint dimension's advantage, and μ ≥ 0 the
    Lagrange multiplier. μ follows projected dual ascent once per rollout,
    μ ← clip(μ + lr·(mean cost − cost_limit), 0, max_multiplier), with the mean cost of the
    rollout all-reduced across ranks. (safe-rlhf steps log μ with Adam; plain dual ascent has
    the same fixed point and no optimiser state.) The KL penalty rides in every dimension's
    reward, so Σ_i w_i = 1 keeps it at β.

    Args:
        constraint_dimension: index c of the dimension whose reward is −cost.
        cost_limit: d of E[cost] ≤ d (safe-rlhf's `threshold`, default 0: safe on average).
        multiplier_init: μ at the start (safe-rlhf's `lambda_init`).
        multiplier_lr: dual-ascent step size (per unit of cost).
        max_multiplier: upper bound of μ (None: none).
    """

    def __init__(
        self,
        constraint_dimension: int = -1,
        cost_limit: float = 0.0,
        multiplier_init: float = 1.0,
        multiplier_lr: float = 0.1,
        max_multiplier: float | None = None,
    ):
        super().__init__()
        if multiplier_init < 0 or multiplier_lr <= 0:
            raise ValueError(
                f"need multiplier_init >= 0 and multiplier_lr > 0, got {multiplier_init}, "
                f"{multiplier_lr}"
            )
        self.constraint_dimension = constraint_dimension
        self.cost_limit = cost_limit
        self.multiplier_lr = multiplier_lr
        self.max_multiplier = max_multiplier
        self.register_buffer("multiplier", torch.tensor(float(multiplier_init)))
        self.register_buffer("last_cost", torch.tensor(float("nan")))

    def update(self, preference: Tensor, values: Tensor | None, rewards: Tensor | None) -> None:
        if rewards is None or rewards.shape != preference.shape:
            shape = None if rewards is None else list(rewards.shape)
            raise ValueError(f"the Lagrangian needs rewards {list(preference.shape)}, got {shape}")
        cost = -rewards[:, self.constraint_dimension].double()
        stats = torch.stack([cost.sum(), torch.tensor(float(cost.numel()), dtype=cost.dtype)])
        if distributed():
            stats = stats.to(self.multiplier.device)
            dist.all_reduce(stats)
        mean_cost = (stats[0] / stats[1]).to(self.multiplier)
        step = self.multiplier + self.multiplier_lr * (mean_cost - self.cost_limit)
        self.multiplier.copy_(step.clamp(min=0.0, max=self.max_multiplier))
        self.last_cost.copy_(mean_cost)

    def weights(self, preference: Tensor, values: Tensor | None, rewards: Tensor | None) -> Tensor:
        m = preference.shape[1]
        if m < 2:
            raise ValueError("the Lagrangian needs a constraint dimension and at least one other")
        c = self.constraint_dimension % m
        others = preference.clone()
        others[:, c] = 0.0
        mass = others.sum(-1, keepdim=True)
        uniform = torch.full_like(others, 1.0 / (m - 1))
        uniform[:, c] = 0.0
        others = torch.where(mass > 0, others / mass.clamp(min=1e-12), uniform)
        mu = self.multiplier.to(preference)
        weights = others / (1.0 + mu)
        weights[:, c] = mu / (1.0 + mu)
        return weights

    def metrics(self) -> dict[str, Tensor]:
        return {"multiplier": self.multiplier, "cost": self.last_cost}
