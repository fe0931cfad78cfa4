"""Reward- and cost-model losses: Bradley–Terry per dimension, and safe-rlhf's cost loss.

bt = BradleyTerryLoss()(scores_a, scores_b, labels)        # [B, m] each
loss = bt.dimension_means().sum(); acc = bt.accuracy()      # [m]
cost = SafetyCostLoss()(cost_a, cost_b, harmless, is_safe)  # [B], [B], [B], [2B]
loss = loss + cost.mean_loss()
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from panacea_pl.objectives.outputs import (
    CostLosses,
    PairwiseLosses,
    check_pair_labels,
    soft_logistic_loss,
)
from panacea_pl.rows import join_pairs, split_pairs


class BradleyTerryLoss(nn.Module):
    """Bradley–Terry loss per dimension:  −log σ(y_i · (r_i(a) − r_i(b))).

    y_i = +1 when a is preferred in dimension i, −1 when b is; pairs with y_i = 0 are skipped.
    A soft label y_i in between is the target P(a ≻ b) = (1 + y_i) / 2 (cross-entropy).
    """

    def forward(self, scores_a: Tensor, scores_b: Tensor, labels: Tensor) -> PairwiseLosses:
        """Per-pair, per-dimension losses.

        Args:
            scores_a: [B, m] scores of the responses a, one column per dimension.
            scores_b: [B, m] scores of the responses b.
            labels: [B, m] +1 (a preferred), −1 (b preferred), 0 (unlabelled) or soft in between.

        Returns:
            `PairwiseLosses` with losses, mask and margins sign(y_i)·(r_i(a) − r_i(b)), [B, m].
        """
        if scores_a.shape != scores_b.shape or scores_a.dim() != 2:
            raise ValueError(
                "scores_a and scores_b must both have shape [B, m], got "
                f"{list(scores_a.shape)} and {list(scores_b.shape)}"
            )
        y = check_pair_labels(labels, scores_a.shape[0]).to(scores_a)
        if y.shape != scores_a.shape:
            raise ValueError(
                f"labels {list(labels.shape)} do not match scores {list(scores_a.shape)}"
            )
        difference = scores_a - scores_b
        mask = y != 0
        return PairwiseLosses(
            losses=soft_logistic_loss(difference, y).masked_fill(~mask, 0.0),
            mask=mask,
            margins=(torch.sign(y) * difference).detach(),
        )


class SafetyCostLoss(nn.Module):
    """Safe-rlhf's cost-model loss (Dai et al., 2024): a higher cost means less safe.

    For a pair whose harmlessness preference is known, with c_w the cost of the safer response
    and c_l that of the less safe one, and safety signs s = +1 (unsafe), −1 (safe):

        loss = −log σ(c_l − c_w) − log σ(s_a · c_a) − log σ(s_b · c_b)

    The first term is dropped where the harmlessness preference is unknown, and each sign term
    where that response's safety is unknown. The sign terms push unsafe responses to cost > 0 and
    safe ones to cost < 0, so that 0 separates them.
    """

    def forward(
        self, cost_a: Tensor, cost_b: Tensor, harmless: Tensor, is_safe: Tensor
    ) -> CostLosses:
        """Per-pair cost losses.

        Args:
            cost_a: [B] costs of the responses a.
            cost_b: [B] costs of the responses b.
            harmless: [B] +1 (a is safer), −1 (b is safer) or 0 (unknown); only its sign is used.
            is_safe: [2B] safety of responses a (rows 0..B−1) then b (rows B..2B−1):
                1 safe, 0 unsafe, −1 unknown.

        Returns:
            `CostLosses` with per-pair losses [B], margins c_l − c_w [B] and signed costs [2B].
        """
        batch = cost_a.shape[0]
        if cost_a.dim() != 1 or cost_b.shape != cost_a.shape or harmless.shape != cost_a.shape:
            raise ValueError(
                f"cost_a, cost_b and harmless must all have shape [B], got {list(cost_a.shape)}, "
                f"{list(cost_b.shape)} and {list(harmless.shape)}"
            )
        if is_safe.shape != (2 * batch,):
            raise ValueError(f"is_safe must have shape [{2 * batch}], got {list(is_safe.shape)}")
        y = torch.sign(harmless).to(cost_a)
        margins = y * (cost_b - cost_a)
        margin_mask = y != 0
        preference_term = (-F.logsigmoid(margins)).masked_fill(~margin_mask, 0.0)

        costs = join_pairs(cost_a, cost_b)
        signs = torch.where(is_safe == 1, -1.0, torch.where(is_safe == 0, 1.0, 0.0)).to(costs)
        signed_costs = signs * costs
        sign_mask = signs != 0
        sign_terms = (-F.logsigmoid(signed_costs)).masked_fill(~sign_mask, 0.0)

        sign_a, sign_b = split_pairs(sign_terms)
        mask_a, mask_b = split_pairs(sign_mask)
        return CostLosses(
            losses=preference_term + sign_a + sign_b,
            mask=margin_mask | mask_a | mask_b,
            margins=margins.detach(),
            margin_mask=margin_mask,
            signed_costs=signed_costs.detach(),
            sign_mask=sign_mask,
        )
