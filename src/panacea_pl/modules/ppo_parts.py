"""`PanaceaPPO`'s data between the rollout and the updates, and what it logs per iteration.

    experience = Experience(sequences=..., advantages=...)   # all detached
    batch = experience.rows(order[:32])                        # a minibatch
    log_iteration(module, scored, rows, stats)                 # train/… keys (below)

**Logged** (`train/…`, per dimension `train/{dimension}/…`): `reward`, `objective`
(r_i − β·KL), `advantage` and `advantage_std` (before aggregation), `value` and `return` at the
prompt, `value_loss`, `weight` (the aggregation weight); `lambda/{dimension}`; the aggregate
`objective` (Σ_i w_i (r_i − β·KL), what the step ascends), `kl` (per response),
`response_length`, `loss`, `policy_loss`, `value_loss`, `clip_fraction`, `approx_kl`, and the
aggregator's state (`ideal`, `multiplier`, `cost`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import lightning.pytorch as pl
from torch import Tensor

from panacea_pl.models.experience import ScoredRollout
from panacea_pl.modules.on_policy import log_rewards
from panacea_pl.objectives.ppo import masked_token_mean


@dataclass
class Experience:
    """The tensors PPO iterates over (all detached; rows selectable with `rows`).

    Attributes:
        sequences, attention_mask, position_ids: [N, L] the rollout.
        mask: [N, T] response-token actions.
        preference: [N, m] λ per row.
        logps: [N, T] log π_old.
        values: [N, T, m] V_old.
        returns: [N, T, m] GAE returns per dimension.
        advantages: [N, T] aggregated (and whitened) advantages.
    """

    sequences: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    mask: Tensor
    preference: Tensor
    logps: Tensor
    values: Tensor
    returns: Tensor
    advantages: Tensor

    def __len__(self) -> int:
        return self.sequences.shape[0]

    def rows(self, index: Tensor) -> Experience:
        return Experience(*(getattr(self, f.name)[index] for f in fields(self)))

    @classmethod
    def from_scored(
        cls, scored: ScoredRollout, values: Tensor, returns: Tensor, advantages: Tensor
    ) -> Experience:
        """The experience of a scored rollout (values are zeroed outside the response)."""
        rollout, mask = scored.rollout, scored.mask
        return cls(
            sequences=rollout.sequences,
            attention_mask=rollout.attention_mask,
            position_ids=rollout.position_ids,
            mask=mask,
            preference=scored.preference,
            logps=scored.logps,
            values=values * mask.to(values.dtype).unsqueeze(-1),
            returns=returns,
            advantages=advantages,
        )


@dataclass
class PPOStats:
    """Means over one iteration's optimiser steps (scalars; `value_loss` per dimension [m])."""

    loss: Tensor
    policy_loss: Tensor
    value_loss: Tensor
    clip_fraction: Tensor
    approx_kl: Tensor


def log_iteration(
    module: pl.LightningModule, scored: ScoredRollout, rows: dict[str, Tensor], stats: PPOStats
) -> None:
    """Log one PPO iteration (the keys in the module docstring); `rows` as `make_experience`
    returns them."""
    log_rewards(module, scored, "train", module.kl_coef)
    n, mask = len(scored.rollout), scored.mask
    log = lambda key, value: module.log(f"train/{key}", value, batch_size=n)  # noqa: E731
    objectives = scored.rewards - module.kl_coef * scored.kl[:, None]
    log("objective", (rows["weights"] * objectives).sum(-1).mean())
    log("response_length", scored.rollout.response_lengths.float().mean())
    for key in ("loss", "policy_loss", "clip_fraction", "approx_kl"):
        log(key, getattr(stats, key))
    log("value_loss", stats.value_loss.sum())
    module.log("loss", stats.loss, prog_bar=True, batch_size=n, logger=False)
    advantages = rows["advantages"]
    adv_mean = masked_token_mean(advantages, mask)
    adv_std = (masked_token_mean(advantages.square(), mask) - adv_mean.square()).clamp(min=0)
    per_dimension = {
        "advantage": adv_mean,
        "advantage_std": adv_std.sqrt(),
        "value": rows["prompt_values"].mean(0),
        "return": rows["prompt_returns"].mean(0),
        "value_loss": stats.value_loss,
        "weight": rows["weights"].mean(0),
    }
    metrics = module.aggregator.metrics()
    extra = {k: v for k, v in metrics.items() if v.dim() == 1}
    for key, value in metrics.items():
        if value.dim() == 0:
            log(key, value)
    lam = scored.preference.mean(0)
    for i, name in enumerate(module.dimension_names):
        for key, values in (per_dimension | extra).items():
            log(f"{name}/{key}", values[i])
        log(f"lambda/{name}", lam[i])
