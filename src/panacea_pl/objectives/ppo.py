"""PPO's pieces, per dimension: GAE, the clipped policy loss, the clipped value loss, whitening.

    adv, ret = generalized_advantages(token_rewards, values, mask, gamma=1.0, lam=0.95)  # [N, T, m]
    out = ClippedPolicyLoss(clip_range=0.2)(logps, old_logps, advantages, mask)    # advantages [N, T]
    per_dim = ClippedValueLoss(clip_range=0.2)(values, old_values, ret, mask)      # [m]

Tokens are "actions": index t of a [N, T] tensor is the token at sequence position t + 1, and
`mask` is True on response tokens only. Rewards, values and advantages may carry a trailing
dimension axis m (one per preference dimension); the policy loss takes the advantages after
they were aggregated with λ (`panacea_pl.objectives.advantage`). Every quantity here is "higher
is better" (rewards, values, advantages); the two losses are minimised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn


def _expand(mask: Tensor, like: Tensor) -> Tensor:
    """[N, T] mask broadcast to `like` ([N, T] or [N, T, m]), as `like`'s dtype."""
    mask = mask.to(like.dtype)
    return mask.unsqueeze(-1) if like.dim() == mask.dim() + 1 else mask


@torch.no_grad()
def generalized_advantages(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """GAE (Schulman et al., 2016) over each row's response tokens, per dimension.

        δ_t = r_t + γ·V_{t+1} − V_t,      A_t = δ_t + γλ·A_{t+1},      R_t = A_t + V_t

    with V and A after the last response token taken as 0 (the episode ends there). Each row's
    response tokens must be contiguous (left-padded prompt, response, then padding).

    Args:
        rewards: [N, T] or [N, T, m] per-token rewards.
        values: same shape as `rewards`, V(s_t) of the state the token was chosen in.
        mask: [N, T] bool, True on response tokens.
        gamma: discount γ (1 for the undiscounted KL-regularised objective).
        lam: GAE's λ (1: Monte-Carlo returns; 0: one-step TD).

    Returns:
        (advantages, returns), both shaped like `rewards`, 0 outside `mask`.
    """
    if rewards.shape != values.shape or rewards.shape[:2] != mask.shape:
        raise ValueError(
            f"rewards {list(rewards.shape)} and values {list(values.shape)} must share a shape "
            f"whose first two axes are the mask's {list(mask.shape)}"
        )
    m = _expand(mask, rewards)
    rewards, values = rewards * m, values * m
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * m[:, t]
        # Outside the response the carried values reset to 0, so a row's last response token
        # bootstraps from nothing.
        next_value, next_advantage = values[:, t], advantages[:, t]
    return advantages, (advantages + values) * m


def masked_whiten(
    values: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> Tensor:
    """(x − mean) / std over the entries in `mask`; 0 outside it.

    Under torch.distributed the mean and std are over every rank's entries (all-reduced), so
    all ranks scale their advantages alike. With `shift_mean=False` the mean is added back.
    """
    m = mask.to(values.dtype)
    stats = torch.stack([(values * m).sum(), (values.square() * m).sum(), m.sum()])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(stats)
    total, squares, count = stats
    if count < 2:
        raise ValueError(f"cannot whiten {int(count)} entries; a rollout needs response tokens")
    mean = total / count
    var = (squares / count - mean.square()).clamp(min=0) * count / (count - 1)
    out = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * m


def masked_token_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over the tokens in `mask` (all rows pooled); keeps a trailing dimension axis."""
    m = _expand(mask, values)
    count = mask.sum().clamp(min=1).to(values.dtype)
    return (values * m).sum((0, 1)) / count


@dataclass(frozen=True)
class PolicyLossOutput:
    """The clipped policy loss and its diagnostics.

    Attributes:
        loss: scalar to minimise.
        clip_fraction: share of tokens whose ratio was clipped (detached).
        approx_kl: mean of ½(log r)², an estimate of KL(π_old ‖ π) per token (detached).
    """

    loss: Tensor
    clip_fraction: Tensor
    approx_kl: Tensor


class ClippedPolicyLoss(nn.Module):
    """PPO's clipped surrogate (Schulman et al., 2017), minimised:

        ρ_t = π(y_t) / π_old(y_t)
        L = mean_t max(−A_t·ρ_t, −A_t·clip(ρ_t, 1 − ε, 1 + ε))

    averaged over the response tokens of the minibatch (all rows pooled, so a row weighs by its
    length, as in the sum-over-tokens policy gradient of a sequence-level reward).

    Args:
        clip_range: ε.
    """

    def __init__(self, clip_range: float = 0.2):
        super().__init__()
        if clip_range <= 0:
            raise ValueError(f"clip_range must be > 0, got {clip_range}")
        self.clip_range = clip_range

    def forward(
        self, logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor
    ) -> PolicyLossOutput:
        """All arguments [N, T]; `logps` carries the gradient, the others are constants."""
        log_ratio = logps - old_logps.detach()
        ratio = log_ratio.exp()
        advantages = advantages.detach()
        clipped = ratio.clamp(1.0 - self.clip_range, 1.0 + self.clip_range)
        per_token = torch.maximum(-advantages * ratio, -advantages * clipped)
        with torch.no_grad():
            was_clipped = ((ratio - clipped).abs() > 0).to(logps.dtype)
            clip_fraction = masked_token_mean(was_clipped, mask)
            approx_kl = masked_token_mean(0.5 * log_ratio.square(), mask)
        return PolicyLossOutput(masked_token_mean(per_token, mask), clip_fraction, approx_kl)


class ClippedValueLoss(nn.Module):
    """PPO's clipped value loss, one per dimension, minimised:

        V_clip = V_old + clip(V − V_old, −ε_v, ε_v)
        L_i = ½ · mean_t max((V_i − R_i)², (V_clip,i − R_i)²)

    ε_v is in the units of the returns (rewards minus the KL penalty); None turns clipping off.

    Args:
        clip_range: ε_v, or None.
    """

    def __init__(self, clip_range: float | None = 0.2):
        super().__init__()
        if clip_range is not None and clip_range <= 0:
            raise ValueError(f"clip_range must be > 0 or None, got {clip_range}")
        self.clip_range = clip_range

    def forward(self, values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
        """`values`, `old_values`, `returns` [N, T, m], mask [N, T] → losses [m]."""
        returns, old_values = returns.detach(), old_values.detach()
        loss = (values - returns).square()
        if self.clip_range is not None:
            clipped = old_values + (values - old_values).clamp(-self.clip_range, self.clip_range)
            loss = torch.maximum(loss, (clipped - returns).square())
        return 0.5 * masked_token_mean(loss, mask)
