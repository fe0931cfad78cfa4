"""Label pairs of sampled responses in every dimension from their rewards (online DPO's judge).

    labeler = BradleyTerryLabels(temperature=0.04)        # soft: y = 2σ(Δr/τ) − 1
    labels = labeler(rewards_a, rewards_b)                # [P, m] in [−1, 1], +1: a preferred
    loss = MultiObjectiveDPOLoss(beta=1.25)(policy_logps, reference_logps, labels)

Labels follow `PreferenceLoss`'s convention: +1 a preferred, −1 b preferred, 0 unlabelled, a
soft label y is P(a ≻ b) = (1 + y) / 2. Which labeler sets which optimum:

- `BradleyTerryLabels` (soft, or drawn with `soft=False`): DPO at β then targets
  π ∝ π_ref·exp(r / (β·τ)), the maximiser of E[r] − β·τ·KL (the stories benchmark's labels:
  β_eff = β·τ). Soft labels are the expectation of the drawn ones: same optimum, no label noise.
- `RewardOrderLabels`: the higher reward wins (ties unlabelled), as TRL's OnlineDPOTrainer
  judges with a reward model. Deterministic labels have no finite Bradley–Terry optimum: DPO then
  pushes every margin until β and the step budget stop it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from panacea_pl.checks import check_number


def _check_rewards(rewards_a: Tensor, rewards_b: Tensor) -> None:
    if rewards_a.shape != rewards_b.shape or rewards_a.dim() != 2:
        raise ValueError(
            "rewards_a and rewards_b must both be [P, m] (one row per pair, one column per "
            f"dimension), got {list(rewards_a.shape)} and {list(rewards_b.shape)}"
        )


class PairLabeler(nn.Module):
    """Base class: per-dimension labels [P, m] of pairs (a, b) from their rewards [P, m]."""

    def forward(self, rewards_a: Tensor, rewards_b: Tensor) -> Tensor:
        raise NotImplementedError

    def effective_kl_coef(self, beta: float) -> float | None:
        """β_eff such that DPO at `beta` on these labels targets E[r] − β_eff·KL (None: no
        finite one)."""
        return None


class BradleyTerryLabels(PairLabeler):
    """Bradley–Terry labels p_i = σ((r_i(a) − r_i(b)) / τ_i), as the probability (soft) or drawn.

    Args:
        temperature: τ > 0, one for every dimension or one per dimension (rewards on different
            scales).
        soft: write p itself as 2p − 1 (default); else draw +1 with probability p, −1 otherwise
            (from torch's global generator, which `seed_everything` seeds).
    """

    def __init__(self, temperature: float | Sequence[float] = 0.04, soft: bool = True):
        super().__init__()
        values = [temperature] if isinstance(temperature, int | float) else list(temperature)
        for value in values:
            check_number("temperature", value, above=0, owner=type(self).__name__)
        self.register_buffer("temperature", torch.tensor(values, dtype=torch.float32))
        self.soft = bool(soft)

    def forward(self, rewards_a: Tensor, rewards_b: Tensor) -> Tensor:
        _check_rewards(rewards_a, rewards_b)
        tau = self.temperature.to(rewards_a.device)
        if tau.numel() not in (1, rewards_a.shape[1]):
            raise ValueError(
                f"{tau.numel()} temperatures for {rewards_a.shape[1]} dimensions: give one, or "
                "one per dimension"
            )
        prob_a = torch.sigmoid((rewards_a - rewards_b).float() / tau)
        if self.soft:
            return 2 * prob_a - 1
        return torch.where(torch.rand_like(prob_a) < prob_a, 1.0, -1.0)

    def effective_kl_coef(self, beta: float) -> float | None:
        tau = self.temperature
        return float(beta * tau[0]) if bool((tau == tau[0]).all()) else None


class RewardOrderLabels(PairLabeler):
    """+1 where a's reward is higher, −1 where b's is, 0 (unlabelled) on a tie."""

    def forward(self, rewards_a: Tensor, rewards_b: Tensor) -> Tensor:
        _check_rewards(rewards_a, rewards_b)
        return torch.sign(rewards_a - rewards_b).float()
