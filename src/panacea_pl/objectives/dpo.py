"""Multi-objective DPO: one DPO (or IPO) loss per preference dimension on the same pairs.

loss_fn = MultiObjectiveDPOLoss(beta=0.1)
out = loss_fn(policy_logps, reference_logps, labels)   # [2B], [2B], [B, m]
loss = LinearScalarization()(out.losses, preference, out.mask)
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from panacea_pl.checks import check_number
from panacea_pl.objectives.outputs import PairwiseLosses, check_pair_labels, soft_logistic_loss


class MultiObjectiveDPOLoss(nn.Module):
    """DPO (Rafailov et al., 2023) per dimension, each on the pairs labelled in that dimension.

    For a pair (a, b) and dimension i with label y_i ∈ [−1, 1] (+1: a preferred, −1: b
    preferred, in between: soft, P(a ≻ b) = p_i = (1 + y_i) / 2), let

        h = [log π(a) − log π_ref(a)] − [log π(b) − log π_ref(b)]

    and the loss of the pair in dimension i is

        sigmoid:  −p_i · log σ(β h) − (1 − p_i) · log σ(−β h)   (p_i smoothed by ε: cDPO)
        ipo:      (h − y_i / (2β))²                              (Azar et al., 2023)

    With hard labels the sigmoid loss is −log σ(β y_i h), plain DPO; with one dimension, or a
    label row with a single non-zero entry, this is plain DPO. Soft labels (Bradley–Terry
    probabilities of a known reward) give the same optimum with far less label noise. IPO is
    usually run on length-averaged log-probabilities; pass those as the log-probs if so.

    Args:
        beta: β, the strength of the KL constraint to the reference.
        loss_type: "sigmoid" (DPO) or "ipo".
        label_smoothing: ε ∈ [0, 0.5), the assumed rate of flipped labels (sigmoid only).
    """

    def __init__(
        self,
        beta: float = 0.1,
        loss_type: Literal["sigmoid", "ipo"] = "sigmoid",
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        check_number("beta", beta, above=0, owner=type(self).__name__)
        if loss_type not in ("sigmoid", "ipo"):
            raise ValueError(f'loss_type must be "sigmoid" or "ipo", got {loss_type!r}')
        check_number("label_smoothing", label_smoothing, at_least=0, below=0.5)
        if loss_type == "ipo" and label_smoothing:
            raise ValueError("label_smoothing applies to the sigmoid loss only, not to IPO")
        self.beta = beta
        self.loss_type = loss_type
        self.label_smoothing = label_smoothing

    def forward(
        self, policy_logps: Tensor, reference_logps: Tensor, labels: Tensor
    ) -> PairwiseLosses:
        """Per-pair, per-dimension losses.

        Args:
            policy_logps: [2B] sequence log-probs under the policy; rows 0..B−1 are the responses
                a of the pairs, rows B..2B−1 the responses b.
            reference_logps: [2B] the same under the reference.
            labels: [B, m] +1 (a preferred), −1 (b preferred), 0 (unlabelled) or soft in between.

        Returns:
            `PairwiseLosses` with losses [B, m] (0 where unlabelled), mask [B, m] and margins
            [B, m] = β·sign(y_i)·h, the implicit reward of the preferred response minus the
            other's.
        """
        if (
            policy_logps.dim() != 1
            or policy_logps.shape[0] % 2
            or (reference_logps.shape != policy_logps.shape)
        ):
            raise ValueError(
                "policy_logps and reference_logps must both have shape [2B] (a-responses then "
                f"b-responses), got {list(policy_logps.shape)} and {list(reference_logps.shape)}"
            )
        logratios = policy_logps - reference_logps
        batch = logratios.shape[0] // 2
        y = check_pair_labels(labels, batch).to(logratios)
        h = (logratios[:batch] - logratios[batch:])[:, None].expand_as(y)
        if self.loss_type == "sigmoid":
            losses = soft_logistic_loss(self.beta * h, y, self.label_smoothing)
        else:
            losses = (h - y / (2 * self.beta)) ** 2
        mask = y != 0
        return PairwiseLosses(
            losses=losses.masked_fill(~mask, 0.0),
            mask=mask,
            margins=(self.beta * torch.sign(y) * h).detach(),
        )
