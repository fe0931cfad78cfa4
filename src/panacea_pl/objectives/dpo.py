"""Per-dimension preference losses on pairs: DPO, IPO, and the reference-free CPO.

loss_fn = MultiObjectiveDPOLoss(beta=0.1)               # or MultiObjectiveIPOLoss, CPOLoss
out = loss_fn(policy_logps, reference_logps, labels)   # [2B], [2B] (None if reference-free), [B, m]
loss = LinearScalarization()(out.losses, preference, out.mask)

A new variant is one subclass of `PreferenceLoss` that implements `pair_loss(h, y)` (the loss of
a pair with log-ratio margin h under label y) and says whether it needs the reference
(`is_reference_free`): a module skips the reference pass for a reference-free loss, and an
evaluator asks the loss for implicit rewards (`implicit_rewards`) instead of reading β.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from panacea_pl.checks import check_number
from panacea_pl.objectives.outputs import PairwiseLosses, check_pair_labels, soft_logistic_loss
from panacea_pl.rows import split_pairs


class PreferenceLoss(nn.Module):
    """Base class: a pairwise loss computed for each of the m dimensions on the same pairs.

    For a pair (a, b) let h = [log π(a) − log π_ref(a)] − [log π(b) − log π_ref(b)] (without
    the π_ref terms for a reference-free loss); dimension i's label y_i ∈ [−1, 1] is +1 (a
    preferred), −1 (b preferred), 0 (unlabelled) or soft in between, P(a ≻ b) = (1 + y_i) / 2.

    Args:
        beta: β, the scale of the implicit reward β·h.
    """

    #: True when the loss never reads the reference's log-probs (no reference pass needed)
    is_reference_free: ClassVar[bool] = False

    def __init__(self, beta: float = 0.1):
        super().__init__()
        self.beta = check_number("beta", beta, above=0, owner=type(self).__name__)

    def pair_loss(self, h: Tensor, y: Tensor) -> Tensor:
        """[B, m] loss of each pair in each dimension, from margins h and labels y [B, m]."""
        raise NotImplementedError

    def log_ratios(self, policy_logps: Tensor, reference_logps: Tensor | None) -> Tensor:
        """[N] log π − log π_ref per sequence (log π alone for a reference-free loss)."""
        if self.is_reference_free or reference_logps is None:
            if not self.is_reference_free:
                raise ValueError(f"{type(self).__name__} needs the reference's log-probs")
            return policy_logps
        if reference_logps.shape != policy_logps.shape:
            raise ValueError(
                "policy_logps and reference_logps must have the same shape [2B], got "
                f"{list(policy_logps.shape)} and {list(reference_logps.shape)}"
            )
        return policy_logps - reference_logps

    def implicit_rewards(self, policy_logps: Tensor, reference_logps: Tensor | None) -> Tensor:
        """[N] the reward each sequence implicitly gets, β·(log π − log π_ref)."""
        return self.beta * self.log_ratios(policy_logps, reference_logps)

    def forward(
        self, policy_logps: Tensor, reference_logps: Tensor | None, labels: Tensor
    ) -> PairwiseLosses:
        """Per-pair, per-dimension losses.

        Args:
            policy_logps: [2B] sequence log-probs under the policy; rows 0..B−1 are the responses
                a of the pairs, rows B..2B−1 the responses b.
            reference_logps: [2B] the same under the reference (None for a reference-free loss).
            labels: [B, m] +1 (a preferred), −1 (b preferred), 0 (unlabelled) or soft between.

        Returns:
            `PairwiseLosses` with losses [B, m] (0 where unlabelled), mask [B, m] and margins
            [B, m] = β·sign(y_i)·h, the implicit reward of the preferred response minus the
            other's.
        """
        if policy_logps.dim() != 1 or policy_logps.shape[0] % 2:
            raise ValueError(
                "policy_logps must have shape [2B] (a-responses then b-responses), got "
                f"{list(policy_logps.shape)}"
            )
        ratios = self.log_ratios(policy_logps, reference_logps)
        ratios_a, ratios_b = split_pairs(ratios)
        y = check_pair_labels(labels, len(ratios_a)).to(ratios)
        h = (ratios_a - ratios_b)[:, None].expand_as(y)
        mask = y != 0
        return PairwiseLosses(
            losses=self.pair_loss(h, y).masked_fill(~mask, 0.0),
            mask=mask,
            margins=(self.beta * torch.sign(y) * h).detach(),
        )


class MultiObjectiveDPOLoss(PreferenceLoss):
    """DPO (Rafailov et al., 2023) per dimension, each on the pairs labelled in that dimension:

        −p_i · log σ(β h) − (1 − p_i) · log σ(−β h),   p_i = (1 + y_i) / 2 (smoothed by ε: cDPO)

    With hard labels this is −log σ(β y_i h), plain DPO; with one dimension, or a label row with
    a single non-zero entry, this is plain DPO. Soft labels (Bradley–Terry probabilities of a
    known reward) give the same optimum with far less label noise.

    Args:
        beta: β, the strength of the KL constraint to the reference.
        label_smoothing: ε ∈ [0, 0.5), the assumed rate of flipped labels.
    """

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0):
        super().__init__(beta)
        self.label_smoothing = check_number(
            "label_smoothing", label_smoothing, at_least=0, below=0.5, owner=type(self).__name__
        )

    def pair_loss(self, h: Tensor, y: Tensor) -> Tensor:
        return soft_logistic_loss(self.beta * h, y, self.label_smoothing)


class MultiObjectiveIPOLoss(PreferenceLoss):
    """IPO (Azar et al., 2023) per dimension: (h − y_i / (2β))². Usually run on length-averaged
    log-probabilities; pass those as the log-probs if so.

    Args:
        beta: β (the regression target of h is y / (2β)).
    """

    def pair_loss(self, h: Tensor, y: Tensor) -> Tensor:
        return (h - y / (2 * self.beta)) ** 2


class CPOLoss(MultiObjectiveDPOLoss):
    """The reference-free sigmoid loss of CPO (Xu et al., 2024) per dimension: DPO's loss on
    h = log π(a) − log π(b), no reference model. A module skips the reference pass for it.

    Args:
        beta: β, the scale of the log-prob margin.
        label_smoothing: ε ∈ [0, 0.5), the assumed rate of flipped labels.
    """

    is_reference_free = True
