"""Critic-free Panacea: GRPO / RLOO with one preference vector per group of responses.

    module = PanaceaGRPO(policy=StoriesPolicy(adapter=PanaceaConfig(num_general=0, num_preferences=2)),
                         reward=StoriesReward(num_dimensions=2), group_size=8, kl_coef=0.05)
    Trainer(max_epochs=100).fit(module, datamodule=StoriesPromptDataModule(batch_size=16))

    panacea-pl fit --config experiments/stories/panacea_grpo.yaml

One training step is one iteration on one batch of prompts:

1. **Rollout** (`panacea_pl.models.experience.sample_and_score`, the component PPO uses). Each
   prompt draws one λ ~ Dirichlet(α) (`per_sample_preference`, the default; else one λ for the
   batch), its G = `group_size` responses are sampled under that λ, scored in every dimension
   by `reward` (any `RewardFunction`: the stories scorers, a vector reward/cost model, a user's
   class by `class_path`), and their token log-probs taken under λ and under the reference
   (the adapter off).
2. **KL.** `kl_in="reward"`: β·KL̂ with KL̂ = Σ_t log π/π_ref over the response is subtracted
   from every dimension's reward, so each J_i = E[r_i] − β·KL(π ‖ π_ref) and the linear
   scalarisation's optimum is π_ref·exp(λ·r/β) exactly (the stories benchmark's, β = β_eff).
   `kl_in="token"`: the same objective with the KL's gradient credited per token: token t's
   advantage is A − β·(Σ_{t'≥t} log π/π_ref(y_t') − b_t) (the KL still to come, as PPO's
   per-token penalty, with a leave-one-out group baseline b_t instead of a critic): an unbiased
   estimate of the same gradient that does not charge a token for the KL spent before it.
   `kl_in="exact"`: the same objective and optimum, with the KL of each sampled state taken
   exactly over the vocabulary: β·KL(π(·|s_t) ‖ π_ref(·|s_t)) per token in the loss (its
   gradient is the per-state part of ∇KL, which "token" estimates from the one sampled token),
   and β times the sampled KL after t (the states token t leads to) in its advantage. Costs a
   reference forward per minibatch and the [rows, T, V] log-softmax of both models.
   `kl_in="loss"`: GRPO's k3 term β·k3 per token in the loss instead (its optimum is that of the
   forward KL; see `panacea_pl.objectives.grpo`).
3. **Advantages** (`panacea_pl.objectives.group_advantage.GroupAdvantage`): per-dimension group
   baselines (mean or leave-one-out), aggregated with λ by the same `aggregator` PPO takes
   (`LinearAdvantage`, `TchebycheffAdvantage`), optionally divided by the group's std.
4. **Updates.** `epochs` shuffled passes over the rollout in minibatches of `minibatch_size`
   rows, GRPO's clipped surrogate (`GroupPolicyLoss`), one optimiser step each (manual
   optimisation). `trainer.global_step` counts optimiser steps. Where `minibatch_size` is a
   multiple of G the passes shuffle whole groups, and a minibatch of whole groups (the whole
   rollout, by default) runs each prompt once (`token_logps`): with the stories benchmark's
   26-token prompts and 48-token stories, a third fewer tokens per update.

**Logged** (`train/…`): per dimension `reward`, `objective` (r_i − β·KL̂), `advantage_std`
(A_i's spread before aggregation), `weight`, `lambda/{dimension}`; `kl`, `objective`
(Σ_i w_i (r_i − β·KL̂)), `reward_std` (mean within-group std of the weighted reward),
`response_length`, `loss`, `clip_fraction`, `approx_kl`, `kl_loss` (the loss's KL term per
token: k3 with `kl_in="loss"`, the exact KL with "exact"),
the aggregator's state. Validation rolls out at the simplex's centre (`val/kl`,
`val/{dimension}/reward`, `val/{dimension}/objective`).

**DDP.** Groups never straddle ranks (a rank's prompts are its own); λ per prompt is drawn for
the global batch and dealt like the prompts (`PanaceaModule.sample_preference`); gradients are
all-reduced every step (`manual_backward`) and Tchebycheff's running ideal point is max-reduced.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from panacea_pl.checks import check_integer, check_number
from panacea_pl.models import PanaceaPolicy
from panacea_pl.models.experience import (
    ScoredRollout,
    action_logits,
    group_order,
    padded_logps,
    sample_and_score,
    shared_prompt_action_logits,
    token_kl,
)
from panacea_pl.modules.on_policy import (
    OnPolicyModule,
    check_no_dropout,
    check_settings,
    group_preference,
    log_rewards,
)
from panacea_pl.modules.ppo_rewards import RewardFunction
from panacea_pl.objectives.advantage import AdvantageAggregator, LinearAdvantage
from panacea_pl.objectives.group_advantage import GroupAdvantage, GroupAdvantages, group_std
from panacea_pl.objectives.grpo import GroupPolicyLoss


class PanaceaGRPO(OnPolicyModule):
    """Multi-objective GRPO/RLOO on prompt batches; see the module docstring.

    Args:
        policy: the causal LM with the Panacea adapter (dropout off).
        reward: scores responses, one column per dimension (names the dimensions by default).
        advantage: baselines and scaling (default `GroupAdvantage()`: GRPO's mean and std;
            `RLOOAdvantage()`: leave-one-out).
        aggregator: how per-dimension advantages combine under λ (default `LinearAdvantage`).
        group_size: G, responses per prompt, all at the prompt's λ (≥ 2).
        kl_coef: β, in reward units. Its optimum is π_ref·exp(λ·r/β); on the stories benchmark
            the recipe trains a little below `beta_eff` (0.04 against 0.05): trained policies
            tilt with about 0.65 of their target's slope (experiments/ceiling/).
        kl_in: "reward" (β·KL̂ subtracted from every dimension's reward), "token" (β times the
            KL to come subtracted from each token's advantage), "exact" (the exact per-state KL
            in the loss, the KL after each token in its advantage) or "loss" (k3 term).
        clip_range: ε of the clipped ratio; `clip_range_high` the upper one (None: ε).
        clip_range_high: DAPO's clip-higher ε_high.
        loss_normalization: "token" (pooled over the minibatch's tokens) or "sequence".
        epochs: passes over each rollout (GRPO's μ; > 1 makes the clip bind).
        minibatch_size: rows per optimiser step (None: the whole rollout); a multiple of G
            keeps groups whole (each prompt runs once per step).
        max_new_tokens: response budget.
        max_grad_norm: clip each step's gradient norm (None: no clipping).
        generation_kwargs: extra `generate` settings (other than ancestral: off-policy).
        per_sample_preference: one λ per prompt's group (default) or one per batch.
        **kwargs: see `PanaceaModule` (preference_alpha, seed, dimension_names, optimizer, …).
    """

    def __init__(
        self,
        policy: PanaceaPolicy,
        reward: RewardFunction,
        advantage: GroupAdvantage | None = None,
        aggregator: AdvantageAggregator | None = None,
        group_size: int = 8,
        kl_coef: float = 0.05,
        kl_in: Literal["reward", "token", "exact", "loss"] = "reward",
        clip_range: float = 0.2,
        clip_range_high: float | None = None,
        loss_normalization: Literal["token", "sequence"] = "token",
        epochs: int = 1,
        minibatch_size: int | None = None,
        max_new_tokens: int = 64,
        max_grad_norm: float | None = 1.0,
        generation_kwargs: dict | None = None,
        per_sample_preference: bool = True,
        **kwargs,
    ):
        super().__init__(
            policy,
            reward,
            generation_kwargs,
            aggregator=aggregator if aggregator is not None else LinearAdvantage(),
            per_sample_preference=per_sample_preference,
            **kwargs,
        )
        owner = type(self).__name__
        check_no_dropout("policy", policy.adapter.config, "GRPO")
        check_number("kl_coef", kl_coef, at_least=0, owner=owner)
        check_integer("group_size", group_size, at_least=2, owner=owner)
        counts = dict(epochs=epochs, minibatch_size=minibatch_size, max_new_tokens=max_new_tokens)
        check_settings(owner, counts, dict(max_grad_norm=max_grad_norm))
        if kl_in not in ("reward", "token", "exact", "loss"):
            raise ValueError(
                f"{owner}: kl_in must be 'reward', 'token', 'exact' or 'loss', got {kl_in!r}"
            )
        self.advantage = advantage if advantage is not None else GroupAdvantage()
        in_loss = kl_coef if kl_in in ("loss", "exact") else 0.0
        self.policy_loss = GroupPolicyLoss(clip_range, clip_range_high, loss_normalization, in_loss)
        self.kl_coef = kl_coef
        self.kl_in = kl_in
        self.group_size = group_size
        self.epochs = epochs
        self.minibatch_size = minibatch_size
        self.max_new_tokens = max_new_tokens
        self.max_grad_norm = max_grad_norm

    def group_preference(self, num_prompts: int) -> Tensor:
        """[num_prompts × G, m]: one λ per prompt (or per batch), repeated over its group."""
        return group_preference(self, num_prompts, self.group_size)

    def needs_old_logps(self, rows: int) -> bool:
        """Whether a rollout of `rows` rows needs log π_old from a separate pass: not when the
        only update is one on-policy step (π_old = π, as TRL with `num_iterations=1`) and the
        KL is in the loss; the step's own log-probs then stand in for them."""
        one_step = self.epochs == 1 and (self.minibatch_size or rows) >= rows
        return not (one_step and self.kl_in == "loss")

    def score_rollout(
        self, batch: dict, preference: Tensor | None = None, policy_logps: bool = True
    ) -> ScoredRollout:
        """G responses per prompt under one λ per group (or `preference` for every row)."""
        if preference is None:
            preference = self.group_preference(batch["input_ids"].shape[0])
        return sample_and_score(
            self.policy,
            self.reward,
            batch,
            preference,
            self.group_size,
            self.max_new_tokens,
            self.tokenizer,
            self.generation_kwargs,
            policy_logps,
        )

    def training_rewards(self, scored: ScoredRollout) -> Tensor:
        """[N, m] rewards the advantages see: minus β·KL̂ in every dimension with `kl_in="reward"`."""
        if self.kl_in == "reward":
            return scored.rewards - self.kl_coef * scored.kl[:, None]
        return scored.rewards

    def token_advantages(self, scored: ScoredRollout, advantages: Tensor) -> Tensor:
        """The advantages the loss sees: [N] per response, or with `kl_in="token"` [N, T] per
        token, A − β·(K_t − b_t): K_t the response's log π/π_ref from token t on, b_t the mean
        of K_t over the group's other responses that reach position t (a leave-one-out baseline:
        it does not depend on the row's own tokens, so the gradient stays unbiased). With
        `kl_in="exact"` K_t counts from token t + 1 on: token t's own state is in the loss."""
        if self.kl_in not in ("token", "exact"):
            return advantages
        mask = scored.mask.to(advantages.dtype)
        log_ratio = (scored.logps - scored.ref_logps) * mask
        to_come = log_ratio.flip(-1).cumsum(-1).flip(-1)
        if self.kl_in == "exact":
            to_come = to_come - log_ratio
        n, t, g = *to_come.shape, self.group_size
        grouped, present = to_come.view(-1, g, t), mask.view(-1, g, t)
        others = grouped.sum(1, keepdim=True) - grouped  # K is 0 where a response has ended
        count = present.sum(1, keepdim=True) - present
        baseline = torch.where(count > 0, others / count.clamp(min=1), 0.0).view(n, t)
        return (advantages[:, None] - self.kl_coef * (to_come - baseline)) * mask

    def advantages(self, scored: ScoredRollout) -> GroupAdvantages:
        """Group-relative advantages of a scored rollout under its per-group λ."""
        rewards = self.training_rewards(scored)
        return self.advantage(rewards, scored.preference, self.group_size, self.aggregator)

    def grpo_loss(self, scored: ScoredRollout, advantages: Tensor, index: Tensor):
        """The loss of the rows `index` of a rollout under their λ (`GroupPolicyLoss` output)."""
        if self.kl_in == "exact":
            logps, kl = self.token_logps_and_kl(scored, index)
        else:
            logps, kl = self.token_logps(scored, index), None
        ref = scored.ref_logps[index] if self.kl_in == "loss" else None
        if scored.logps is None:  # one on-policy step over every row: π_old = π
            if index.numel() != len(scored):
                raise ValueError("a rollout without log π_old allows one step over every row")
            scored.logps = torch.empty_like(logps).index_copy(0, index, logps.detach())
        old = scored.logps[index]
        return self.policy_loss(logps, old, advantages[index], scored.mask[index], ref, kl)

    def token_logps(self, scored: ScoredRollout, index: Tensor) -> Tensor:
        """[len(index), T] log π of the rows `index` under their λ (with gradient). Where
        `index` holds whole groups, each group's prompt runs once (`shared_prompt_action_logits`;
        its gradient is the sum of the group's rows', as in the full pass)."""
        logits, first = self._action_logits(scored, index, reference=False)
        return padded_logps(logits, scored.rollout.sequences[index], first)

    def token_logps_and_kl(self, scored: ScoredRollout, index: Tensor) -> tuple[Tensor, Tensor]:
        """[len(index), T] log π and the exact KL(π(·|s_t) ‖ π_ref(·|s_t)) at each action of the
        rows `index` (both with gradient; 0 on the prompt's actions)."""
        logits, first = self._action_logits(scored, index, reference=False)
        with torch.no_grad():
            ref_logits, _ = self._action_logits(scored, index, reference=True)
        kl = F.pad(token_kl(logits, ref_logits), (first, 0))
        return padded_logps(logits, scored.rollout.sequences[index], first), kl

    def _action_logits(self, scored: ScoredRollout, index: Tensor, reference: bool):
        """(action logits of the rows `index`, in `index`'s order, and their first action) under
        the rows' λ or, with `reference`, the adapter off; whole groups run each prompt once."""
        rollout, preference = scored.rollout, scored.preference
        grouped = group_order(index, self.group_size)
        context = self.policy.reference() if reference else nullcontext()
        if grouped is None:
            rows = rollout.rows(index)
            args = (rows.sequences, rows.attention_mask, rows.position_ids, rows.first_action)
            lam = nullcontext() if reference else self.policy.preference(preference[index])
            with context, lam:
                return action_logits(self.policy, *args), rows.first_action
        ordered, back = grouped
        rows = rollout.rows(ordered)
        lam = None if reference else preference[ordered]
        with context:
            logits, first = shared_prompt_action_logits(self.policy, rows, self.group_size, lam)
        return logits[back], first

    def optimise(self, scored: ScoredRollout, advantages: Tensor) -> dict[str, Tensor]:
        """`epochs` shuffled passes of minibatch steps; the means of the losses' parts."""

        def loss_of(index: Tensor):
            out = self.grpo_loss(scored, advantages, index)
            parts = {"clip_fraction": out.clip_fraction, "approx_kl": out.approx_kl}
            return out.loss, parts | {"kl_loss": out.kl}

        n = len(scored)
        size = self.minibatch_size or n
        return self.optimise_minibatches(
            n, size, self.epochs, loss_of, self.max_grad_norm, group=self.group_size
        )

    def training_step(self, batch: dict, batch_idx: int) -> None:
        rows = batch["input_ids"].shape[0] * self.group_size
        scored = self.score_rollout(batch, policy_logps=self.needs_old_logps(rows))
        advantages = self.advantages(scored)
        stats = self.optimise(scored, self.token_advantages(scored, advantages.advantages))
        self._log_iteration(scored, advantages, stats)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        scored = self.score_rollout(batch, self.evaluation_preference())
        log_rewards(self, scored, "val", self.kl_coef)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        scored = self.score_rollout(batch, self.evaluation_preference())
        log_rewards(self, scored, "test", self.kl_coef)

    def _log_iteration(
        self, scored: ScoredRollout, adv: GroupAdvantages, stats: dict[str, Tensor]
    ) -> None:
        log_rewards(self, scored, "train", self.kl_coef)
        n = len(scored)
        log = lambda key, value: self.log(f"train/{key}", value, batch_size=n)  # noqa: E731
        objectives = scored.rewards - self.kl_coef * scored.kl[:, None]
        log("objective", (adv.weights * objectives).sum(-1).mean())
        weighted = (adv.weights * self.training_rewards(scored)).sum(-1)
        log("reward_std", group_std(weighted, self.group_size).mean())
        log("response_length", scored.rollout.response_lengths.float().mean())
        for key, value in stats.items():
            log(key, value)
        self.log("loss", stats["loss"], prog_bar=True, batch_size=n, logger=False)
        per_dimension = {
            "advantage_std": adv.dimension_advantages.std(0),
            "weight": adv.weights.mean(0),
        }
        metrics = self.aggregator.metrics()
        per_dimension |= {k: v for k, v in metrics.items() if v.dim() == 1}
        for key, value in metrics.items():
            if value.dim() == 0:
                log(key, value)
        lam = scored.preference.mean(0)
        for i, name in enumerate(self.dimension_names):
            for key, values in per_dimension.items():
                log(f"{name}/{key}", values[i])
            log(f"lambda/{name}", lam[i])
