"""Per-example losses with their label masks, as returned by the objectives.

out = MultiObjectiveDPOLoss(beta=0.1)(policy_logps, reference_logps, labels)
out.losses, out.mask          # [B, m]: per-pair losses (0 where unlabelled), labelled pairs
out.dimension_means()         # [m] mean loss over each dimension's labelled pairs
out.accuracy(), out.counts()  # [m] implicit-reward accuracy, number of labelled pairs
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def masked_mean(values: Tensor, mask: Tensor, dim: int = 0) -> Tensor:
    """Mean of `values` over the entries where `mask` is True, along `dim`; 0 where none is.

    Masked-out entries may hold anything, NaN included: they get no value and no gradient.
    """
    filled = values.masked_fill(~mask, 0.0)
    return filled.sum(dim) / mask.sum(dim).clamp(min=1).to(values.dtype)


@dataclass(frozen=True)
class DimensionLosses:
    """Per-example, per-dimension losses and which of them are labelled.

    Attributes:
        losses: [B, m] loss of example b in dimension i, 0 where unlabelled.
        mask: [B, m] bool, True where example b is labelled in dimension i.
    """

    losses: Tensor
    mask: Tensor

    def dimension_means(self) -> Tensor:
        """[m] mean loss over each dimension's labelled examples (0 for a dimension with none)."""
        return masked_mean(self.losses, self.mask)

    def counts(self) -> Tensor:
        """[m] number of labelled examples per dimension."""
        return self.mask.sum(0)


@dataclass(frozen=True)
class PairwiseLosses(DimensionLosses):
    """Losses on preference pairs, with the margin of the preferred response.

    Attributes:
        margins: [B, m] detached score of the preferred response minus that of the other (for DPO
            the implicit reward β·log π/π_ref), 0 where unlabelled. Positive means ranked right.
    """

    margins: Tensor

    def accuracy(self) -> Tensor:
        """[m] fraction of labelled pairs with a positive margin (ties count as wrong); 0 if none."""
        return masked_mean((self.margins > 0).to(self.losses.dtype), self.mask)

    def mean_margin(self) -> Tensor:
        """[m] mean margin over each dimension's labelled pairs; 0 if none."""
        return masked_mean(self.margins, self.mask)


@dataclass(frozen=True)
class CostLosses:
    """Safe-rlhf cost-model losses per pair, with both of its terms' diagnostics.

    Attributes:
        losses: [B] preference term plus both safety-sign terms, each only where its label is
            known; 0 for a pair with no label at all.
        mask: [B] bool, True where the pair has at least one term.
        margins: [B] detached cost of the less safe response minus that of the safer one, 0 where
            the harmlessness preference is unknown. Positive means ranked right.
        margin_mask: [B] bool, True where the harmlessness preference is known.
        signed_costs: [2B] detached s·c with s = +1 unsafe, −1 safe; positive means the cost is on
            the right side of 0. 0 where safety is unknown.
        sign_mask: [2B] bool, True where safety is known.
    """

    losses: Tensor
    mask: Tensor
    margins: Tensor
    margin_mask: Tensor
    signed_costs: Tensor
    sign_mask: Tensor

    def mean_loss(self) -> Tensor:
        """Scalar mean of `losses` over pairs with any label (0 if none), as safe-rlhf averages."""
        return masked_mean(self.losses, self.mask)

    def accuracy(self) -> Tensor:
        """Scalar fraction of harmlessness-labelled pairs whose less safe response costs more."""
        return masked_mean((self.margins > 0).to(self.losses.dtype), self.margin_mask)

    def safety_accuracy(self) -> Tensor:
        """Scalar fraction of safety-labelled responses with cost > 0 if unsafe, < 0 if safe."""
        return masked_mean((self.signed_costs > 0).to(self.losses.dtype), self.sign_mask)


def check_pair_labels(labels: Tensor, batch_size: int, name: str = "labels") -> Tensor:
    """Check labels [B, m] in [-1, 1] and return them as a float tensor.

    +1: a preferred, −1: b preferred, 0: unlabelled; a value y in between is a soft label, the
    probability P(a ≻ b) = (1 + y) / 2 (e.g. Bradley–Terry probabilities of a known reward).
    """
    if labels.dim() != 2 or labels.shape[0] != batch_size:
        raise ValueError(
            f"{name} must have shape [{batch_size}, m] (one column per preference dimension: "
            f"+1 a preferred, −1 b preferred, 0 unlabelled), got {list(labels.shape)}"
        )
    values = labels.float()
    bad = ~torch.isfinite(values) | (values.abs() > 1)
    if bad.any():
        row, col = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name}[{row}, {col}] = {labels[row, col].item()}: expected a label in [-1, 1] "
            "(+1 a preferred, −1 b preferred, 0 unlabelled, soft labels in between)"
        )
    return values


def soft_logistic_loss(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of σ(logits) against the target P(a ≻ b) = (1 + labels) / 2, elementwise:

        −p · log σ(z) − (1 − p) · log σ(−z),   p = (1 − ε) · (1 + y) / 2 + ε · (1 − y) / 2

    With hard labels y = ±1 this is −log σ(±z) (smoothed by ε as in cDPO); with a soft y it is the
    loss whose minimiser sets σ(z) = p, the Bradley–Terry probability itself.
    """
    p = (1 + labels) / 2
    p = (1 - label_smoothing) * p + label_smoothing * (1 - p)
    return -p * F.logsigmoid(logits) - (1 - p) * F.logsigmoid(-logits)
