"""Panacea with PPO (Panacea-RLHF): rollouts under per-sample λ, a vector reward, a λ-conditioned
critic with one value per dimension, per-dimension GAE, and advantages aggregated with λ.

    module = PanaceaPPO(policy=StoriesPolicy(adapter=PanaceaConfig(num_general=8, num_preferences=2)),
                        critic=PanaceaCritic(model_dir, adapter=PanaceaConfig(num_general=8)),
                        reward=StoriesReward(num_dimensions=2), kl_coef=0.05)
    Trainer(max_epochs=100).fit(module, datamodule=StoriesPromptDataModule(batch_size=16))

One training step is one PPO iteration on one batch of prompts:

1. **Rollout** (`panacea_pl.models.experience.sample_and_score`, shared with GRPO). Each
   prompt is repeated `samples_per_prompt` times, every row draws its own λ ~ Dirichlet(α)
   (`per_sample_preference`, the default), all rows are sampled in one `generate` call, and
   scored: rewards r_i [N, m], token log-probs under λ and under the reference (adapter off).
2. **Values.** The critic's V_i(s_t; λ) [N, T, m].
3. **Per-dimension rewards and GAE.** Dimension i's token reward is −β·(log π − log π_ref) at
   every response token plus r_i at the last one, so its return is r_i − β·log(π/π_ref) and its
   objective J_i = E[r_i] − β·KL(π ‖ π_ref). GAE (γ, λ_GAE) runs per dimension.
4. **Aggregation.** The `aggregator` turns A [N, T, m] into one advantage per token:
   `LinearAdvantage` gives Σ_i λ_i A_i, the advantage of λ·E[r] − β·KL (optimum
   π_ref·exp(λ·r/β)); `TchebycheffAdvantage` gives λ_i*·A_i* with its ideal point;
   `LagrangianAdvantage` is safe-rlhf's PPO-Lagrangian. Optionally whitened (one scale).
5. **Updates.** `ppo_epochs` passes over the rollout in shuffled minibatches of
   `minibatch_size`: clipped policy loss + `value_coef` · Σ_i (clipped value loss of dimension
   i), one backward and one optimiser step each (Lightning manual optimisation).

`trainer.global_step` counts optimiser steps: ppo_epochs × ⌈N / minibatch_size⌉ per batch of
prompts, with N = batch_size × samples_per_prompt; `max_epochs` counts passes over the prompts.

**DDP.** Each rank rolls out its own prompts and takes the same number of steps; gradients
are all-reduced every minibatch (`manual_backward`; policy and critic share one loss, so every
parameter gets one), as are the whitening, the Tchebycheff ideal point and the Lagrange
multiplier: all ranks keep identical weights and state.

**Logged**: see `panacea_pl.modules.ppo_parts`; validation rolls out at the simplex's centre
(`val/kl`, `val/{dimension}/reward`, `…/objective`). Adapter dropout must be off (the default).
"""

from __future__ import annotations

import torch
from torch import Tensor

from panacea_pl.checks import check_integer, check_number
from panacea_pl.models import PanaceaPolicy
from panacea_pl.models.critic import PanaceaCritic
from panacea_pl.models.experience import (
    ScoredRollout,
    eval_mode,
    policy_token_logps,
    sample_and_score,
)
from panacea_pl.modules.on_policy import (
    OnPolicyModule,
    check_no_dropout,
    check_settings,
    log_rewards,
    minibatches,
    optimizer_step,
)
from panacea_pl.modules.ppo_parts import Experience, PPOStats, log_iteration
from panacea_pl.modules.ppo_rewards import RewardFunction
from panacea_pl.objectives.advantage import AdvantageAggregator, LinearAdvantage
from panacea_pl.objectives.ppo import (
    ClippedPolicyLoss,
    ClippedValueLoss,
    generalized_advantages,
    masked_whiten,
)


class PanaceaPPO(OnPolicyModule):
    """Multi-objective PPO on prompt batches (`panacea_pl.data.PromptDataModule`); see the
    module docstring for the algorithm, the DDP notes and the logged keys.

    Args:
        policy: the causal LM with the Panacea adapter.
        critic: the λ-conditioned critic; its adapter's `num_preferences` must be the policy's.
        reward: scores responses, one column per dimension (names the dimensions by default).
        aggregator: how per-dimension advantages combine under λ (default `LinearAdvantage`).
        kl_coef: β of the per-token KL penalty, in reward units. The optimum of the linear
            scalarisation is π_ref·exp(λ·r/β) (stories benchmark: its `beta_eff`).
        gamma: discount γ (1: the undiscounted sequence objective).
        gae_lambda: GAE's λ.
        clip_range: ε of the clipped policy loss.
        value_clip_range: ε_v of the clipped value loss, in return units (None: no clipping).
        value_coef: weight of the summed per-dimension value losses.
        ppo_epochs: passes over each rollout.
        minibatch_size: rows per optimiser step.
        samples_per_prompt: responses per prompt in a rollout (each with its own λ).
        max_new_tokens: response budget.
        whiten_advantages: normalise the aggregated advantages to mean 0, std 1 per rollout.
        max_grad_norm: clip each step's gradient norm (None: no clipping; Lightning's
            `gradient_clip_val` does not apply under manual optimisation).
        critic_lr: learning rate of the critic's parameter group (None: the optimiser's).
        freeze_policy_iterations: the first n iterations train the critic only (OpenRLHF's
            `freezing_actor_steps`; the policy loss is multiplied by 0, as DDP needs gradients).
        generation_kwargs: extra `generate` settings (other than ancestral: off-policy).
        per_sample_preference: one λ per rollout row (default) or one per batch.
        **kwargs: see `PanaceaModule` (preference_alpha, seed, dimension_names, optimizer, …).
    """

    def __init__(
        self,
        policy: PanaceaPolicy,
        critic: PanaceaCritic,
        reward: RewardFunction,
        aggregator: AdvantageAggregator | None = None,
        kl_coef: float = 0.05,
        gamma: float = 1.0,
        gae_lambda: float = 0.95,
        clip_range: float = 0.2,
        value_clip_range: float | None = 0.2,
        value_coef: float = 0.5,
        ppo_epochs: int = 4,
        minibatch_size: int = 16,
        samples_per_prompt: int = 1,
        max_new_tokens: int = 64,
        whiten_advantages: bool = True,
        max_grad_norm: float | None = 1.0,
        critic_lr: float | None = None,
        freeze_policy_iterations: int = 0,
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
        if critic.num_preferences != policy.num_preferences:
            raise ValueError(
                f"the critic gives {critic.num_preferences} values but the policy has "
                f"{policy.num_preferences} preference dimensions"
            )
        for name, config in (("policy", policy.adapter.config), ("critic", critic.adapter.config)):
            check_no_dropout(name, config, "PPO")
        owner = type(self).__name__
        check_integer("freeze_policy_iterations", freeze_policy_iterations, at_least=0, owner=owner)
        check_number("kl_coef", kl_coef, at_least=0, owner=owner)
        check_number("gamma", gamma, above=0, at_most=1, owner=owner)
        check_number("gae_lambda", gae_lambda, at_least=0, at_most=1, owner=owner)
        check_number("value_coef", value_coef, at_least=0, owner=owner)
        counts = dict(ppo_epochs=ppo_epochs, minibatch_size=minibatch_size)
        counts |= dict(samples_per_prompt=samples_per_prompt, max_new_tokens=max_new_tokens)
        positive = dict(clip_range=clip_range, value_clip_range=value_clip_range)
        check_settings(
            owner, counts, positive | dict(max_grad_norm=max_grad_norm, critic_lr=critic_lr)
        )
        self.critic = critic
        self.policy_loss = ClippedPolicyLoss(clip_range)
        self.value_loss = ClippedValueLoss(value_clip_range)
        self.kl_coef = kl_coef
        self.gamma = gamma
        self.gae_lambda = gae_lambda
        self.value_coef = value_coef
        self.ppo_epochs = ppo_epochs
        self.minibatch_size = minibatch_size
        self.samples_per_prompt = samples_per_prompt
        self.max_new_tokens = max_new_tokens
        self.whiten_advantages = whiten_advantages
        self.max_grad_norm = max_grad_norm
        self.critic_lr = critic_lr
        self.freeze_policy_iterations = freeze_policy_iterations
        # iterations done, checkpointed (a resumed run keeps the critic warm-up's count)
        self.register_buffer("iterations", torch.tensor(0))

    def optimizer_parameters(self) -> list[dict]:
        """Two groups: the policy's adapter, and the critic (at `critic_lr` if given)."""
        critic_group = {"params": [p for p in self.critic.parameters() if p.requires_grad]}
        if self.critic_lr is not None:
            critic_group["lr"] = self.critic_lr
        return [{"params": self.policy.adapter.parameters()}, critic_group]

    def sharded_models(self) -> list[torch.nn.Module]:
        """The policy's model and the critic (backbone and value head, one FSDP2 root)."""
        return [*super().sharded_models(), self.critic]

    def _values(self, sequences: Tensor, attention_mask: Tensor, positions: Tensor) -> Tensor:
        """[N, T, m] V(s_t) of the state each token action was taken in."""
        return self.critic(sequences, attention_mask, positions)[:, :-1]

    def score_rollout(self, batch: dict, preference: Tensor | None = None) -> ScoredRollout:
        """Sample responses (λ drawn per row unless given), score them and the log-probs."""
        n = batch["input_ids"].shape[0] * self.samples_per_prompt
        lam = self.sample_preference(n) if preference is None else preference
        return sample_and_score(
            self.policy,
            self.reward,
            batch,
            lam,
            self.samples_per_prompt,
            self.max_new_tokens,
            self.tokenizer,
            self.generation_kwargs,
        )

    @torch.no_grad()
    def make_experience(self, scored: ScoredRollout) -> tuple[Experience, dict[str, Tensor]]:
        """Values, per-dimension GAE and the aggregated advantages of a scored rollout.

        Returns:
            The experience and per-row statistics for logging (`advantages` [N, T, m],
            `prompt_values`, `prompt_returns`, `weights` [N, m]).
        """
        rollout, mask, lam = scored.rollout, scored.mask, scored.preference
        args = (rollout.sequences, rollout.attention_mask, rollout.position_ids)
        with eval_mode(self.critic), self.critic.preference(lam):
            values = self._values(*args)
        maskf = mask.to(values.dtype)
        token_rewards = (-self.kl_coef * (scored.logps - scored.ref_logps) * maskf).unsqueeze(-1)
        token_rewards = token_rewards.repeat(1, 1, self.num_preferences)
        rows = torch.arange(len(rollout), device=mask.device)
        last = mask.long().cumsum(-1).argmax(-1)  # the last response token of each row
        token_rewards[rows, last] += scored.rewards
        advantages, returns = generalized_advantages(
            token_rewards, values, mask, self.gamma, self.gae_lambda
        )
        first = mask.int().argmax(-1)  # the first response token: V there is V(prompt)
        prompt_values = values[rows, first]
        aggregated = self.aggregator(advantages, lam, values=prompt_values, rewards=scored.rewards)
        advantage = aggregated.advantages
        if self.whiten_advantages:
            advantage = masked_whiten(advantage, mask)
        experience = Experience.from_scored(scored, values, returns, advantage)
        stats = {
            "advantages": advantages,
            "prompt_values": prompt_values,
            "prompt_returns": returns[rows, first],
            "weights": aggregated.weights,
        }
        return experience, stats

    def ppo_losses(self, batch: Experience) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of one minibatch and its parts."""
        args = (batch.sequences, batch.attention_mask, batch.position_ids)
        with self.policy.preference(batch.preference):
            logps = policy_token_logps(self.policy, *args)
        policy = self.policy_loss(logps, batch.logps, batch.advantages, batch.mask)
        with self.critic.preference(batch.preference):
            values = self._values(*args)
        value_losses = self.value_loss(values, batch.values, batch.returns, batch.mask)
        policy_weight = float(self.iterations >= self.freeze_policy_iterations)
        loss = policy_weight * policy.loss + self.value_coef * value_losses.sum()
        if self.orthogonality_weight:
            loss = loss + self.orthogonality_weight * self.policy.adapter.orthogonality_loss()
        parts = {
            "loss": loss.detach(),
            "policy_loss": policy.loss.detach(),
            "value_loss": value_losses.detach(),
            "clip_fraction": policy.clip_fraction,
            "approx_kl": policy.approx_kl,
        }
        return loss, parts

    def optimise(self, experience: Experience) -> PPOStats:
        """`ppo_epochs` shuffled passes of minibatch steps over the experience."""
        totals: dict[str, Tensor] = {}
        steps = 0
        device = experience.sequences.device
        for index in minibatches(len(experience), self.minibatch_size, self.ppo_epochs, device):
            loss, parts = self.ppo_losses(experience.rows(index))
            optimizer_step(self, loss, self.max_grad_norm, parts)
            for key, value in parts.items():
                totals[key] = totals.get(key, 0) + value
            steps += 1
        return PPOStats(**{k: v / steps for k, v in totals.items()})

    def training_step(self, batch: dict, batch_idx: int) -> None:
        scored = self.score_rollout(batch)
        experience, rows = self.make_experience(scored)
        stats = self.optimise(experience)
        self.iterations += 1
        log_iteration(self, scored, rows, stats)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        log_rewards(
            self, self.score_rollout(batch, self.evaluation_preference()), "val", self.kl_coef
        )

    def test_step(self, batch: dict, batch_idx: int) -> None:
        log_rewards(
            self, self.score_rollout(batch, self.evaluation_preference()), "test", self.kl_coef
        )
