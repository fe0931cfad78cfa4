"""GRPO's policy loss: a clipped importance ratio per token, one advantage per response, an
optional k3 KL term to the reference, and token- or sequence-level normalisation.

    loss_fn = GroupPolicyLoss(clip_range=0.2, normalization="token", kl_coef=0.0)
    out = loss_fn(logps, old_logps, advantages, mask, ref_logps=None)   # [N, T], [N, T], [N]
    out.loss.backward()

Per response token t of response j (ρ = π/π_old, A_j the response's advantage):

    ℓ_jt = −min(ρ_jt A_j, clip(ρ_jt, 1 − ε, 1 + ε_high) A_j) + β_k3 · k3_jt
    k3_jt = π_ref/π − log(π_ref/π) − 1        (Schulman's k3 estimate of KL(π ‖ π_ref), ≥ 0)

- ``"token"``: Σ_jt ℓ_jt / Σ_j |y_j| over the minibatch (DAPO; TRL's "bnpo"): every token
  weighs the same, so long responses are not down-weighted.
- ``"sequence"``: mean_j (Σ_t ℓ_jt / |y_j|) (the GRPO paper; TRL's "grpo"): every response
  weighs the same, so a token of a short response weighs more.

On the first pass over a rollout π = π_old and ρ = 1 (no clipping); later epochs over the same
rollout (`PanaceaGRPO.epochs` > 1) are off-policy and the clip bounds the step.

With `token_kl` (the exact KL(π(·|s_t) ‖ π_ref(·|s_t)) over the vocabulary at each sampled
state) in place of k3, the term's gradient is exactly the per-state part of ∇KL(π ‖ π_ref);
`PanaceaGRPO(kl_in="exact")` adds the part through the states a token leads to in its advantage.

Which optimum the k3 term targets: differentiated through log π on samples from π, the k3 term's
expected gradient is that of KL(π_ref ‖ π) per token (the forward, mass-covering KL), not of
KL(π ‖ π_ref); its maximiser is therefore not π_ref·exp(λ·r/β). Putting β·KL in the reward
instead (`PanaceaGRPO(kl_in="reward")`) keeps the exact optimum π_ref·exp(λ·r/β).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn


def k3_kl(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """Per-token k3 = exp(ref − logp) − (ref − logp) − 1 ≥ 0 (gradient through `logps`)."""
    diff = ref_logps.detach() - logps
    return diff.exp() - diff - 1.0


@dataclass(frozen=True)
class GroupPolicyLossOutput:
    """Attributes:
    loss: scalar to minimise.
    clip_fraction: share of response tokens whose ratio was clipped (detached).
    approx_kl: mean ½(log ρ)² per token, an estimate of KL(π_old ‖ π) (detached).
    kl: mean KL term per token, k3 or `token_kl` (detached; 0 without a KL term).
    """

    loss: Tensor
    clip_fraction: Tensor
    approx_kl: Tensor
    kl: Tensor


class GroupPolicyLoss(nn.Module):
    """The clipped GRPO surrogate (see the module docstring), minimised.

    Args:
        clip_range: ε (lower, and upper unless `clip_range_high`).
        clip_range_high: ε_high (DAPO's clip-higher); None: ε.
        normalization: "token" or "sequence".
        kl_coef: β_k3 of the k3 term (0: no term; then `ref_logps` may be omitted).
    """

    def __init__(
        self,
        clip_range: float = 0.2,
        clip_range_high: float | None = None,
        normalization: Literal["token", "sequence"] = "token",
        kl_coef: float = 0.0,
    ):
        super().__init__()
        if clip_range <= 0 or (clip_range_high is not None and clip_range_high <= 0):
            raise ValueError(f"clip ranges must be > 0, got {clip_range}, {clip_range_high}")
        if normalization not in ("token", "sequence"):
            raise ValueError(f"normalization must be 'token' or 'sequence', got {normalization!r}")
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be ≥ 0, got {kl_coef}")
        self.low = clip_range
        self.high = clip_range if clip_range_high is None else clip_range_high
        self.normalization = normalization
        self.kl_coef = kl_coef

    def normalize(self, per_token: Tensor, mask: Tensor) -> Tensor:
        """Token- or sequence-level mean of [N, T] over the response tokens in `mask`."""
        m = mask.to(per_token.dtype)
        if self.normalization == "token":
            return (per_token * m).sum() / m.sum().clamp(min=1)
        return ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()

    def forward(
        self,
        logps: Tensor,
        old_logps: Tensor,
        advantages: Tensor,
        mask: Tensor,
        ref_logps: Tensor | None = None,
        token_kl: Tensor | None = None,
    ) -> GroupPolicyLossOutput:
        """`logps` [N, T] carries the gradient; `old_logps`, `ref_logps` [N, T] and
        `advantages` [N] (one per response) or [N, T] (one per token) are constants; `mask`
        [N, T] marks the response tokens. `token_kl` [N, T]: a per-token KL(π ‖ π_ref) with its
        own gradient (the exact one over the vocabulary, `panacea_pl.models.experience.token_kl`)
        that takes the k3 term's place."""
        log_ratio = logps - old_logps.detach()
        ratio = log_ratio.exp()
        adv = advantages.detach().to(logps.dtype)
        adv = adv[:, None] if adv.dim() == 1 else adv
        clipped = ratio.clamp(1.0 - self.low, 1.0 + self.high)
        per_token = -torch.minimum(ratio * adv, clipped * adv)
        kl = torch.zeros((), device=logps.device)
        if self.kl_coef:
            if token_kl is None and ref_logps is None:
                raise ValueError("GroupPolicyLoss with kl_coef > 0 needs ref_logps or token_kl")
            term = token_kl if token_kl is not None else k3_kl(logps, ref_logps)
            per_token = per_token + self.kl_coef * term
            kl = self.normalize(term.detach(), mask)
        with torch.no_grad():
            m = mask.to(logps.dtype)
            count = m.sum().clamp(min=1)
            clip_fraction = (((ratio - clipped).abs() > 0).to(m) * m).sum() / count
            approx_kl = (0.5 * log_ratio.square() * m).sum() / count
        return GroupPolicyLossOutput(self.normalize(per_token, mask), clip_fraction, approx_kl, kl)
