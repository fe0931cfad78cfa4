"""Panacea with PPO (Panacea-RLHF): rollouts under per-sample λ, a vector reward, a λ-conditioned
critic with one value per dimension, per-dimension GAE, and advantages aggregated with λ.

    module = PanaceaPPO(policy=StoriesPolicy(adapter=PanaceaConfig(rank=8, num_preferences=2)),
                        critic=PanaceaCritic(model_dir, adapter=PanaceaConfig(rank=8)),
                        reward=StoriesReward(num_dimensions=2), kl_coef=0.05)
    Trainer(max_epochs=100).fit(module, datamodule=StoriesPromptDataModule(batch_size=16))

One training step is one PPO iteration on one batch of prompts:

1. **Rollout.** Each prompt is repeated `samples_per_prompt` times, every row draws its own
   λ ~ Dirichlet(α) (`per_sample_preference`, the default), and all rows are sampled in one
   `generate` call with one λ per row (`panacea_pl.models.rollout`).
2. **Scores.** Token log-probs of the policy under λ and of the reference (the same model with
   the adapter off), the critic's values V_i(s_t; λ) [N, T, m], and the rewards r_i [N, m]
   from the `reward` function (a vector reward/cost model, or the stories scorers).
3. **Per-dimension rewards and GAE.** Dimension i's token reward is −β·(log π − log π_ref) at
   every response token plus r_i at the last one, so its return is r_i − β·log(π/π_ref) and its
   objective J_i = E[r_i] − β·KL(π ‖ π_ref). GAE (γ, λ_GAE) runs per dimension.
4. **Aggregation.** The `aggregator` turns A [N, T, m] into one advantage per token:
   `LinearAdvantage` gives Σ_i λ_i A_i, the advantage of λ·E[r] − β·KL (optimum
   π_ref·exp(λ·r/β)); `TchebycheffAdvantage` gives λ_i*·A_i* with its ideal point;
   `LagrangianAdvantage` is safe-rlhf's PPO-Lagrangian. Optionally whitened (one scale for the
   batch, so the aggregate's direction is unchanged).
5. **Updates.** `ppo_epochs` passes over the rollout in shuffled minibatches of
   `minibatch_size`: clipped policy loss + `value_coef` · Σ_i (clipped value loss of dimension
   i), one backward and one optimiser step each (Lightning manual optimisation).

`trainer.global_step` counts optimiser steps: ppo_epochs × ⌈N / minibatch_size⌉ per batch of
prompts, with N = batch_size × samples_per_prompt; `max_epochs` counts passes over the prompts.

**DDP.** Each rank rolls out its own prompts; every rank takes the same number of optimiser
steps (equal batch sizes), each backward goes through Lightning's `manual_backward` (which
prepares DDP's reducer, so gradients are all-reduced every minibatch), every trainable
parameter gets a gradient in every backward (policy adapter and critic share one loss), and the
advantage whitening, the running Tchebycheff ideal point and the Lagrange multiplier are
all-reduced, so all ranks keep identical weights and state.

**Logged** (`train/…`, per dimension `train/{dimension}/…`): `reward`, `objective`
(r_i − β·KL), `advantage` and `advantage_std` (before aggregation), `value` and `return` at the
prompt, `value_loss`, `weight` (the aggregation weight); `lambda/{dimension}`; the aggregate
`objective` (Σ_i w_i (r_i − β·KL), what the step ascends), `kl` (per response),
`response_length`, `loss`, `policy_loss`, `value_loss`, `clip_fraction`, `approx_kl`, and the
aggregator's state (`ideal`, `multiplier`, `cost`). Validation rolls out at the centre of the
simplex and logs `val/{dimension}/reward`, `val/{dimension}/objective` and `val/kl`.

Dropout must be off (the default of `PanaceaPolicy` and `PanaceaCritic`; `PanaceaConfig.dropout`
0): old and new log-probs then come from the same network.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from panacea_pl.checks import check_integer, check_number
from panacea_pl.evaluation.generation import stop_ids
from panacea_pl.models import PanaceaPolicy, token_logprobs
from panacea_pl.models.critic import PanaceaCritic
from panacea_pl.models.rollout import Rollout, sample_rollout
from panacea_pl.modules.base import PanaceaModule
from panacea_pl.modules.ppo_rewards import RewardFunction
from panacea_pl.objectives.advantage import AdvantageAggregator, LinearAdvantage
from panacea_pl.objectives.ppo import (
    ClippedPolicyLoss,
    ClippedValueLoss,
    generalized_advantages,
    masked_token_mean,
    masked_whiten,
)


@dataclass
class Scored:
    """A rollout with what every PPO step needs of it ([N, T] is one entry per token action).

    Attributes:
        rollout: the sampled sequences.
        preference: [N, m] λ of each row.
        logps: [N, T] log π_old of each token under its row's λ.
        ref_logps: [N, T] log π_ref (adapter off).
        rewards: [N, m] the reward function's scores.
    """

    rollout: Rollout
    preference: Tensor
    logps: Tensor
    ref_logps: Tensor
    rewards: Tensor

    @property
    def mask(self) -> Tensor:
        return self.rollout.action_mask

    @property
    def kl(self) -> Tensor:
        """[N] Σ_t log π/π_ref over each response: the per-sample KL estimate."""
        return ((self.logps - self.ref_logps) * self.mask).sum(-1)


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


@dataclass
class PPOStats:
    """Means over one iteration's optimiser steps (scalars; `value_loss` per dimension [m])."""

    loss: Tensor
    policy_loss: Tensor
    value_loss: Tensor
    clip_fraction: Tensor
    approx_kl: Tensor


class PanaceaPPO(PanaceaModule):
    """Multi-objective PPO on prompt batches (`panacea_pl.data.PromptDataModule`); see the
    module docstring for the algorithm, the DDP notes and the logged keys.

    Args:
        policy: the causal LM with the Panacea adapter.
        critic: the λ-conditioned critic; its adapter's `num_preferences` must be the policy's.
        reward: scores responses, one column per dimension (its `dimension_names` name them
            unless `dimension_names` is given).
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
        max_grad_norm: clip the gradient norm of each step (None: no clipping). (Lightning's
            `gradient_clip_val` does not apply under manual optimisation.)
        critic_lr: learning rate of the critic's parameter group (None: the optimiser's).
        freeze_policy_iterations: the first n PPO iterations train the critic only (OpenRLHF's
            `freezing_actor_steps`), so the first policy updates see fitted values instead of
            an untrained critic's. The policy loss is then multiplied by 0, so every parameter
            still gets a gradient (as DDP requires).
        generation_kwargs: extra `generate` settings; changing the ancestral sampling
            (temperature 1, no top-k / top-p) makes the rollouts off-policy.
        per_sample_preference: one λ per rollout row (default) or one per batch.
        **kwargs: see `PanaceaModule` (preference_alpha, seed, orthogonality_weight,
            dimension_names, optimizer, scheduler).
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
        if kwargs.get("dimension_names") is None and getattr(reward, "dimension_names", None):
            kwargs["dimension_names"] = list(reward.dimension_names)
        super().__init__(
            policy,
            aggregator=aggregator if aggregator is not None else LinearAdvantage(),
            per_sample_preference=per_sample_preference,
            **kwargs,
        )
        self.automatic_optimization = False
        if critic.num_preferences != policy.num_preferences:
            raise ValueError(
                f"the critic gives {critic.num_preferences} values but the policy has "
                f"{policy.num_preferences} preference dimensions"
            )
        for name, config in (("policy", policy.adapter.config), ("critic", critic.adapter.config)):
            if config.dropout:
                raise ValueError(
                    f"the {name}'s adapter has dropout {config.dropout}: PPO needs dropout off, "
                    "so that old and new log-probs and values come from the same network"
                )
        owner = type(self).__name__
        check_integer("freeze_policy_iterations", freeze_policy_iterations, at_least=0, owner=owner)
        for name, value in (
            ("ppo_epochs", ppo_epochs),
            ("minibatch_size", minibatch_size),
            ("samples_per_prompt", samples_per_prompt),
            ("max_new_tokens", max_new_tokens),
        ):
            check_integer(name, value, at_least=1, owner=owner)
        check_number("kl_coef", kl_coef, at_least=0, owner=owner)
        check_number("gamma", gamma, above=0, at_most=1, owner=owner)
        check_number("gae_lambda", gae_lambda, at_least=0, at_most=1, owner=owner)
        check_number("clip_range", clip_range, above=0, owner=owner)
        check_number("value_coef", value_coef, at_least=0, owner=owner)
        for name, value in (
            ("value_clip_range", value_clip_range),
            ("max_grad_norm", max_grad_norm),
            ("critic_lr", critic_lr),
        ):
            if value is not None:
                check_number(name, value, above=0, owner=owner)
        self.critic = critic
        self.reward = reward
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
        # PPO iterations done (checkpointed, so a resumed run keeps the critic warm-up's count)
        self.register_buffer("iterations", torch.tensor(0))
        self.generation_kwargs = dict(generation_kwargs or {})
        self._tokenizer = None

    # ---- setup --------------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        super().on_fit_start()
        datamodule = getattr(self._trainer, "datamodule", None)
        sources = {
            "the reward function": getattr(self.reward, "dimension_names", None),
            "the datamodule": getattr(datamodule, "dimension_names", None),
        }
        for source, names in sources.items():
            if names and list(names) != self.dimension_names:
                raise ValueError(
                    f"{source} names the dimensions {list(names)} but the module trains "
                    f"{self.dimension_names}; give them in the same order"
                )

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = self.policy.tokenizer()
        return self._tokenizer

    def optimizer_parameters(self) -> list[dict]:
        """Two groups: the policy's adapter, and the critic (at `critic_lr` if given)."""
        critic_group = {"params": [p for p in self.critic.parameters() if p.requires_grad]}
        if self.critic_lr is not None:
            critic_group["lr"] = self.critic_lr
        return [{"params": self.policy.adapter.parameters()}, critic_group]

    # ---- rollouts -----------------------------------------------------------------------------

    def _token_logps(self, sequences: Tensor, attention_mask: Tensor, positions: Tensor) -> Tensor:
        logits = self.policy.model(
            input_ids=sequences,
            attention_mask=attention_mask,
            position_ids=positions,
            use_cache=False,
        ).logits
        return token_logprobs(logits, sequences)

    def _values(self, sequences: Tensor, attention_mask: Tensor, positions: Tensor) -> Tensor:
        """[N, T, m] V(s_t) of the state each token action was taken in."""
        return self.critic(sequences, attention_mask, positions)[:, :-1]

    @torch.no_grad()
    def score_rollout(self, batch: dict, preference: Tensor | None = None) -> Scored:
        """Sample responses (λ drawn per row unless given), score them and the log-probs."""
        k = self.samples_per_prompt
        input_ids = batch["input_ids"].repeat_interleave(k, 0)
        attention_mask = batch["attention_mask"].repeat_interleave(k, 0)
        n, m = input_ids.shape[0], self.num_preferences
        lam = self.sample_preference(n) if preference is None else preference.to(self.device)
        lam = lam.expand(n, m) if lam.dim() == 1 else lam
        tokenizer = self.tokenizer
        with _eval_mode(self.policy), self.policy.preference(lam):
            rollout = sample_rollout(
                self.policy.model,
                input_ids,
                attention_mask,
                self.max_new_tokens,
                stop_ids(self.policy, tokenizer),
                tokenizer.pad_token_id,
                **self.generation_kwargs,
            )
            args = (rollout.sequences, rollout.attention_mask, rollout.position_ids)
            logps = self._token_logps(*args)
            with self.policy.reference():
                ref_logps = self._token_logps(*args)
        rewards = torch.as_tensor(self.reward(rollout)).to(self.device, torch.float32)
        if rewards.shape != (n, m):
            raise ValueError(f"the reward function returned {list(rewards.shape)}, not [{n}, {m}]")
        return Scored(rollout, lam, logps, ref_logps, rewards)

    @torch.no_grad()
    def make_experience(self, scored: Scored) -> tuple[Experience, dict[str, Tensor]]:
        """Values, per-dimension GAE and the aggregated advantages of a scored rollout.

        Returns:
            The experience and per-row statistics for logging (`advantages` [N, T, m],
            `prompt_values`, `prompt_returns`, `weights` [N, m]).
        """
        rollout, mask, lam = scored.rollout, scored.mask, scored.preference
        args = (rollout.sequences, rollout.attention_mask, rollout.position_ids)
        with _eval_mode(self.critic), self.critic.preference(lam):
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
        experience = Experience(
            sequences=rollout.sequences,
            attention_mask=rollout.attention_mask,
            position_ids=rollout.position_ids,
            mask=mask,
            preference=lam,
            logps=scored.logps,
            values=values * maskf.unsqueeze(-1),
            returns=returns,
            advantages=advantage,
        )
        stats = {
            "advantages": advantages,
            "prompt_values": prompt_values,
            "prompt_returns": returns[rows, first],
            "weights": aggregated.weights,
        }
        return experience, stats

    # ---- updates ------------------------------------------------------------------------------

    def ppo_losses(self, batch: Experience) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of one minibatch and its parts."""
        args = (batch.sequences, batch.attention_mask, batch.position_ids)
        with self.policy.preference(batch.preference):
            logps = self._token_logps(*args)
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
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        n = len(experience)
        totals: dict[str, Tensor] = {}
        steps = 0
        for _ in range(self.ppo_epochs):
            order = torch.randperm(n, device=experience.sequences.device)
            for start in range(0, n, self.minibatch_size):
                loss, parts = self.ppo_losses(
                    experience.rows(order[start : start + self.minibatch_size])
                )
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"non-finite PPO loss at global step {self.global_step}: "
                        f"{ {k: v.tolist() for k, v in parts.items()} }. Lower the learning "
                        "rate, or check the rewards for NaN"
                    )
                optimizer.zero_grad()
                self.manual_backward(loss)
                if self.max_grad_norm is not None:
                    self.clip_gradients(
                        optimizer,
                        gradient_clip_val=self.max_grad_norm,
                        gradient_clip_algorithm="norm",
                    )
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                for key, value in parts.items():
                    totals[key] = totals.get(key, 0) + value
                steps += 1
        return PPOStats(**{k: v / steps for k, v in totals.items()})

    # ---- steps --------------------------------------------------------------------------------

    def training_step(self, batch: dict, batch_idx: int) -> None:
        scored = self.score_rollout(batch)
        experience, rows = self.make_experience(scored)
        stats = self.optimise(experience)
        self.iterations += 1
        self._log_iteration(scored, rows, stats)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._log_rewards(self.score_rollout(batch, self.evaluation_preference()), "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._log_rewards(self.score_rollout(batch, self.evaluation_preference()), "test")

    # ---- logging ------------------------------------------------------------------------------

    def _log_rewards(self, scored: Scored, stage: str) -> None:
        n = len(scored.rollout)
        kl = scored.kl
        sync = stage != "train"
        self.log(f"{stage}/kl", kl.mean(), batch_size=n, sync_dist=sync)
        objectives = scored.rewards - self.kl_coef * kl[:, None]
        for i, name in enumerate(self.dimension_names):
            self.log(
                f"{stage}/{name}/reward", scored.rewards[:, i].mean(), batch_size=n, sync_dist=sync
            )
            self.log(
                f"{stage}/{name}/objective", objectives[:, i].mean(), batch_size=n, sync_dist=sync
            )

    def _log_iteration(self, scored: Scored, rows: dict[str, Tensor], stats: PPOStats) -> None:
        self._log_rewards(scored, "train")
        n, mask = len(scored.rollout), scored.mask
        log = lambda key, value: self.log(f"train/{key}", value, batch_size=n)  # noqa: E731
        objectives = scored.rewards - self.kl_coef * scored.kl[:, None]
        log("objective", (rows["weights"] * objectives).sum(-1).mean())
        log("response_length", scored.rollout.response_lengths.float().mean())
        for key in ("loss", "policy_loss", "clip_fraction", "approx_kl"):
            log(key, getattr(stats, key))
        log("value_loss", stats.value_loss.sum())
        self.log("loss", stats.loss, prog_bar=True, batch_size=n, logger=False)
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
        extra = {k: v for k, v in self.aggregator.metrics().items() if v.dim() == 1}
        for key, value in self.aggregator.metrics().items():
            if value.dim() == 0:
                log(key, value)
        lam = scored.preference.mean(0)
        for i, name in enumerate(self.dimension_names):
            for key, values in (per_dimension | extra).items():
                log(f"{name}/{key}", values[i])
            log(f"lambda/{name}", lam[i])


@contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode inside the block (generation without gradient checkpointing), then restore."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)
