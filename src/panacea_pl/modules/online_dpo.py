"""Online multi-objective DPO: pairs sampled from the current policy at per-prompt λ, labelled
in every dimension by a reward function, trained with the λ-aggregated DPO loss.

    module = PanaceaOnlineDPO(policy=StoriesPolicy(adapter=PanaceaConfig(num_general=0, num_preferences=2)),
                              reward=StoriesReward(num_dimensions=2),
                              labeler=BradleyTerryLabels(temperature=0.04),
                              loss=MultiObjectiveDPOLoss(beta=1.25), responses_per_prompt=4)
    Trainer(max_epochs=100).fit(module, datamodule=StoriesPromptDataModule(batch_size=16))

    panacea-pl fit --config experiments/stories/panacea_online_dpo.yaml

TRL's `OnlineDPOTrainer` is the single-objective anchor: sample two responses, let a judge or a
reward model pick the better one, take a DPO step. Here, per training step:

1. **Rollout** (`panacea_pl.models.experience.sample_and_score`, the component PPO and GRPO
   use): each prompt draws one λ ~ Dirichlet(α) (`per_sample_preference`, the default; else one
   λ for the batch), `responses_per_prompt` = k responses are sampled under it, scored in every
   dimension by `reward` (any `RewardFunction`), and their log-probs taken under the reference
   (the adapter off).
2. **Pairs**: every unordered pair of a prompt's k responses (k(k−1)/2 pairs; k = 2 is TRL's
   one), labelled per dimension by `labeler` from the two reward vectors
   (`panacea_pl.objectives.pair_labels`: Bradley–Terry probabilities by default).
3. **Loss**: the per-dimension `loss` (any `PreferenceLoss`: DPO, IPO, CPO) of each pair under
   its prompt's λ, aggregated with λ by `aggregator` (`LinearScalarization`, `Tchebycheff`, …),
   exactly as `PanaceaDPO` does on a fixed dataset. `epochs` shuffled passes over the prompts in
   minibatches of `minibatch_size` prompts, one optimiser step each (manual optimisation; DPO is
   an offline loss, so reusing a rollout needs no importance ratio).

With Bradley–Terry labels at temperature τ and DPO at β the optimum is π_ref·exp(λ·r/(β·τ)) at
the corners of the simplex and to first order inside (the stories benchmark's, β_eff = β·τ):
on-policy pairs cover where the policy moves, which a fixed pair pool does not
(`experiments/ceiling/`).

**Logged** (`train/…`): per dimension `reward`, `objective` (r_i − β_eff·KL̂), `loss`,
`accuracy`, `margin`, `label` (mean |y|, how decided the judge was), `lambda/{dimension}`; `kl`
(Σ_t log π/π_ref per response), `loss`, `response_length`. Validation rolls out at the simplex's
centre (`val/kl`, `val/{dimension}/reward`, `val/{dimension}/objective`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from panacea_pl.checks import check_integer
from panacea_pl.models import PanaceaPolicy
from panacea_pl.models.experience import ScoredRollout, policy_token_logps, sample_and_score
from panacea_pl.modules.on_policy import (
    OnPolicyModule,
    check_settings,
    group_preference,
    log_rewards,
)
from panacea_pl.modules.ppo_rewards import RewardFunction
from panacea_pl.objectives import MultiObjectiveDPOLoss, PairwiseLosses, PreferenceLoss
from panacea_pl.objectives.pair_labels import BradleyTerryLabels, PairLabeler
from panacea_pl.rows import group_members, join_pairs, within_group_pairs


class PanaceaOnlineDPO(OnPolicyModule):
    """Online multi-objective DPO on prompt batches; see the module docstring.

    Args:
        policy: the causal LM with the Panacea adapter.
        reward: scores responses, one column per dimension (names the dimensions by default).
        labeler: labels a pair in every dimension from its rewards (default
            `BradleyTerryLabels(temperature=0.04)`, the stories benchmark's τ).
        loss: the per-dimension preference loss (default `MultiObjectiveDPOLoss(beta=1.25)`).
        responses_per_prompt: k ≥ 2 responses per prompt, all at its λ; every pair is trained.
        epochs: passes over each rollout.
        minibatch_size: prompts per optimiser step (None: the whole batch).
        max_new_tokens: response budget.
        max_grad_norm: clip each step's gradient norm (None: no clipping).
        generation_kwargs: extra `generate` settings (default ancestral sampling from π).
        per_sample_preference: one λ per prompt (default) or one per batch.
        **kwargs: see `PanaceaModule` (aggregator, preference_alpha, seed, optimizer, …).
    """

    def __init__(
        self,
        policy: PanaceaPolicy,
        reward: RewardFunction,
        labeler: PairLabeler | None = None,
        loss: PreferenceLoss | None = None,
        responses_per_prompt: int = 2,
        epochs: int = 1,
        minibatch_size: int | None = None,
        max_new_tokens: int = 64,
        max_grad_norm: float | None = 1.0,
        generation_kwargs: dict | None = None,
        per_sample_preference: bool = True,
        **kwargs,
    ):
        super().__init__(
            policy, reward, generation_kwargs, per_sample_preference=per_sample_preference, **kwargs
        )
        owner = type(self).__name__
        check_integer("responses_per_prompt", responses_per_prompt, at_least=2, owner=owner)
        counts = dict(epochs=epochs, minibatch_size=minibatch_size, max_new_tokens=max_new_tokens)
        check_settings(owner, counts, dict(max_grad_norm=max_grad_norm))
        self.labeler = labeler if labeler is not None else BradleyTerryLabels()
        self.loss = loss if loss is not None else MultiObjectiveDPOLoss(beta=1.25)
        self.responses_per_prompt = responses_per_prompt
        self.epochs = epochs
        self.minibatch_size = minibatch_size
        self.max_new_tokens = max_new_tokens
        self.max_grad_norm = max_grad_norm

    @property
    def kl_coef(self) -> float:
        """β_eff of the labels and the loss (for the logged objectives; 0 if there is none)."""
        return self.labeler.effective_kl_coef(self.loss.beta) or 0.0

    def score_rollout(self, batch: dict, preference: Tensor | None = None) -> ScoredRollout:
        """k responses per prompt under one λ per prompt (or `preference` for every row); no
        policy pass here: the training step takes log π with gradients."""
        k = self.responses_per_prompt
        if preference is None:
            preference = group_preference(self, batch["input_ids"].shape[0], k)
        return sample_and_score(
            self.policy,
            self.reward,
            batch,
            preference,
            k,
            self.max_new_tokens,
            self.tokenizer,
            self.generation_kwargs,
            policy_logps=False,
        )

    def pair_losses(
        self, scored: ScoredRollout, prompts: Tensor
    ) -> tuple[PairwiseLosses, Tensor, Tensor]:
        """Per-dimension losses of every pair of the given prompts' responses, their λ [P, m]
        and their labels [P, m]."""
        k = self.responses_per_prompt
        rows = group_members(prompts, k)
        rollout, mask = scored.rollout, scored.mask[rows]
        with self.policy.preference(scored.preference[rows]):
            token_logps = policy_token_logps(
                self.policy,
                rollout.sequences[rows],
                rollout.attention_mask[rows],
                rollout.position_ids[rows],
                rollout.first_action,
            )
        if scored.logps is None:
            scored.logps = torch.zeros_like(scored.ref_logps)
        scored.logps[rows] = token_logps.detach()
        logps = (token_logps * mask).sum(-1)
        ref_logps = (scored.ref_logps[rows] * mask).sum(-1)
        pairs = within_group_pairs(len(prompts), k, logps.device)
        a, b = pairs[:, 0], pairs[:, 1]
        labels = self.labeler(scored.rewards[rows][a], scored.rewards[rows][b])
        reference = None if self.loss.is_reference_free else join_pairs(ref_logps[a], ref_logps[b])
        losses = self.loss(join_pairs(logps[a], logps[b]), reference, labels)
        return losses, scored.preference[rows][a], labels

    def training_step(self, batch: dict, batch_idx: int) -> None:
        scored = self.score_rollout(batch)

        def loss_of(prompts: Tensor):
            losses, preference, labels = self.pair_losses(scored, prompts)
            parts = {"accuracy": losses.accuracy(), "margin": losses.mean_margin()}
            parts["dimension_loss"] = losses.dimension_means().detach()
            parts["label"] = labels.abs().mean(0)
            return self.aggregate(losses, preference), parts

        num_prompts = batch["input_ids"].shape[0]
        size = self.minibatch_size or num_prompts
        stats = self.optimise_minibatches(
            num_prompts, size, self.epochs, loss_of, self.max_grad_norm
        )
        self._log_iteration(scored, stats)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        scored = self.score_rollout(batch, self.evaluation_preference())
        self._fill_logps(scored)
        log_rewards(self, scored, "val", self.kl_coef)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        scored = self.score_rollout(batch, self.evaluation_preference())
        self._fill_logps(scored)
        log_rewards(self, scored, "test", self.kl_coef)

    @torch.no_grad()
    def _fill_logps(self, scored: ScoredRollout) -> None:
        rollout = scored.rollout
        with self.policy.preference(scored.preference):
            args = (rollout.sequences, rollout.attention_mask, rollout.position_ids)
            scored.logps = policy_token_logps(self.policy, *args, rollout.first_action)

    def _log_iteration(self, scored: ScoredRollout, stats: dict[str, Tensor]) -> None:
        log_rewards(self, scored, "train", self.kl_coef)
        n = len(scored)
        log = lambda key, value: self.log(f"train/{key}", value, batch_size=n)  # noqa: E731
        log("loss", stats["loss"])
        log("response_length", scored.rollout.response_lengths.float().mean())
        self.log("loss", stats["loss"], prog_bar=True, batch_size=n, logger=False)
        lam = scored.preference.mean(0)
        for i, name in enumerate(self.dimension_names):
            log(f"{name}/loss", stats["dimension_loss"][i])
            log(f"{name}/accuracy", stats["accuracy"][i])
            log(f"{name}/margin", stats["margin"][i])
            log(f"{name}/label", stats["label"][i])
            log(f"lambda/{name}", lam[i])
