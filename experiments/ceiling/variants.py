"""The ceiling study's variants (`VARIANTS`: name → settings over `DEFAULTS`) and its modules
beyond the adapter: full fine-tuning of DPO and PPO at one λ
(`FullFineTune`), and single-λ PPO (`ppo_module`: `FixedPreferencePPO` with the
panacea_ppo.yaml settings: rank-0 adapter by default, λ-conditioned critic with a rank-8 adapter
and trained backbone, β = β_eff, 16 prompts × 8 responses per iteration, minibatch 32, 2 PPO
epochs, constant lr). Used by `ceiling.py`.
"""

from __future__ import annotations

import functools

import torch

from panacea_pl.baselines import FixedPreferenceDPO, FixedPreferenceGRPO, FixedPreferencePPO
from panacea_pl.benchmarks.stories import StoriesPolicy, StoriesPromptDataModule, StoriesReward
from panacea_pl.benchmarks.stories.benchmark import StoriesBenchmark
from panacea_pl.layers import DEFAULT_TARGET_MODULES, PanaceaConfig
from panacea_pl.models import PanaceaCritic
from panacea_pl.models.logprobs import sequence_logprobs, token_logprobs
from panacea_pl.objectives import LinearAdvantage, RLOOAdvantage

CORNER, CENTRE = (1.0, 0.0), (0.5, 0.5)
WITH_HEAD = [*DEFAULT_TARGET_MODULES["llama"], "lm_head"]
BETA = 1.25

# name → settings; every variant is the dps.yaml recipe at one λ except for what it names.
VARIANTS: dict[str, dict] = {
    "dpo_r0_corner": {"lam": CORNER},
    "dpo_r0_centre": {"lam": CENTRE},
    "dpo_r8_corner": {"lam": CORNER, "num_general": 8},
    "dpo_full_corner": {"lam": CORNER, "full": True, "lr": 5e-4},
    "dpo_r0_corner_pool0.25": {"lam": CORNER, "pairs_per_prompt": 256},
    "dpo_r0_corner_lr0.01": {"lam": CORNER, "lr": 0.01},
    "dpo_r0_corner_pool4": {"lam": CORNER, "pairs_per_prompt": 4096},
    "dpo_r8_centre": {"lam": CENTRE, "num_general": 8},
    "dpo_r8_corner_lr0.0005": {"lam": CORNER, "num_general": 8, "lr": 5e-4},
    "dpo_r0_centre_lr0.01": {"lam": CENTRE, "lr": 0.01},
    "dpo_full_corner_lr5e-05": {"lam": CORNER, "full": True, "lr": 5e-5},
    # 4× the distinct responses per prompt (and pairs, 4 per response as by default): coverage
    "dpo_r0_corner_lr0.01_resp1024": {
        "lam": CORNER,
        "lr": 0.01,
        "pair_responses_per_prompt": 1024,
        "pairs_per_prompt": 4096,
    },
    # FixedPreferencePPO, the panacea_ppo.yaml recipe at one λ (constant lr, critic lr 0.001)
    "ppo_r0_corner": {"method": "ppo", "lam": CORNER},
    "ppo_full_corner": {"method": "ppo", "lam": CORNER, "full": True, "lr": 1e-4},
    "ppo_full_corner_lr2e-05": {"method": "ppo", "lam": CORNER, "full": True, "lr": 2e-5},
    "ppo_r8_corner": {"method": "ppo", "lam": CORNER, "num_general": 8},
    "ppo_r8_corner_lr0.0005": {"method": "ppo", "lam": CORNER, "num_general": 8, "lr": 5e-4},
    "ppo_r0_centre": {"method": "ppo", "lam": CENTRE},
    # FixedPreferenceGRPO, the two-pass panacea_grpo.yaml recipe (RLOO) at one λ; KL in the reward
    # (k1, sampled) or exact per state over the vocabulary (kl_in="exact")
    "rloo_r0_corner": {"method": "rloo", "lam": CORNER},
    "rloo_r0_corner_exact": {"method": "rloo", "lam": CORNER, "kl_in": "exact"},
    "rloo_r0_corner_cosine240": {"method": "rloo", "lam": CORNER, "cosine": 240},
    "rloo_r0_corner_cosine960": {"method": "rloo", "lam": CORNER, "cosine": 960},
    "rloo_r0_corner_exact_cosine240": {
        "method": "rloo",
        "lam": CORNER,
        "kl_in": "exact",
        "cosine": 240,
    },
    "rloo_r8_corner_lr0.0005": {"method": "rloo", "lam": CORNER, "num_general": 8, "lr": 5e-4},
    # the output layer adapted too (`lm_head`: its rank-m update can shift every state's logits
    # along the same vocabulary direction, a per-token tilt), or alone
    "rloo_r0_corner_head": {"method": "rloo", "lam": CORNER, "target_modules": WITH_HEAD},
    "rloo_r0_corner_headonly": {"method": "rloo", "lam": CORNER, "target_modules": ["lm_head"]},
    "dpo_r0_corner_lr0.01_head": {"lam": CORNER, "lr": 0.01, "target_modules": WITH_HEAD},
    "dpo_r0_corner_lr0.01_headonly": {"lam": CORNER, "lr": 0.01, "target_modules": ["lm_head"]},
    # another seed (initialisation, batch order, rollouts): is the KL off the tilt the run's own?
    "rloo_r0_corner_seed1": {"method": "rloo", "lam": CORNER, "seed": 1},
    "dpo_r0_corner_lr0.01_seed1": {"lam": CORNER, "lr": 0.01, "seed": 1},
    "rloo_r8_corner_lr0.0005_exact": {
        "method": "rloo",
        "lam": CORNER,
        "num_general": 8,
        "lr": 5e-4,
        "kl_in": "exact",
    },
}
DEFAULTS = {
    "method": "dpo",
    "num_general": 0,
    "full": False,
    "lr": 0.002,
    "pairs_per_prompt": 1024,
    "pair_responses_per_prompt": 256,
    "target_modules": None,  # the adapter's default layers
    "seed": 0,
}


def variant_policy(s: dict) -> StoriesPolicy:
    """The stories policy with a variant's adapter (`num_general`, `target_modules`; m = 2)."""
    adapter = PanaceaConfig(
        num_general=s["num_general"], num_preferences=2, target_modules=s["target_modules"]
    )
    return StoriesPolicy(adapter=adapter)


class FullFineTune:
    """Mixin for a fixed-λ module: every base weight of the policy trains too, and the reference
    is a frozen copy of the base model (disabling the adapter no longer gives π_ref once the
    base moves)."""

    def __init__(self, policy: StoriesPolicy, reference_model: torch.nn.Module, **kwargs):
        super().__init__(policy, **kwargs)
        for p in self.policy.model.parameters():
            p.requires_grad_(True)
        reference_model.requires_grad_(False).eval()
        self._reference = [reference_model]  # a list: not a submodule, never trained

    @property
    def reference_model(self) -> torch.nn.Module:
        return self._reference[0]


class FullFineTuneDPO(FullFineTune, FixedPreferenceDPO):
    """`FixedPreferenceDPO` that also trains every base weight of the policy."""

    def optimizer_parameters(self):
        return [p for p in self.policy.parameters() if p.requires_grad]

    def dimension_losses(self, batch: dict, preference: torch.Tensor):
        with self.policy.adapter.preference(preference):
            policy_logps = self.policy.sequence_logprobs(batch)
        with torch.no_grad():
            logits = self.reference_model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
            reference_logps = sequence_logprobs(logits, batch["input_ids"], batch["response_mask"])[
                0
            ]
        return self.loss(policy_logps, reference_logps, batch["labels"])


class FullFineTunePPO(FullFineTune, FixedPreferencePPO):
    """`FixedPreferencePPO` that also trains every base weight of the policy; the KL penalty's
    reference log-probs come from the frozen copy."""

    def optimizer_parameters(self) -> list[dict]:
        groups = super().optimizer_parameters()  # [policy adapter, critic]
        groups[0] = {"params": [p for p in self.policy.parameters() if p.requires_grad]}
        return groups

    @torch.no_grad()
    def score_rollout(self, batch: dict, preference: torch.Tensor | None = None):
        scored = super().score_rollout(batch, preference)
        r = scored.rollout
        logits = self.reference_model(
            input_ids=r.sequences,
            attention_mask=r.attention_mask,
            position_ids=r.position_ids,
            use_cache=False,
        ).logits
        scored.ref_logps = token_logprobs(logits, r.sequences)
        return scored


def ppo_module(policy: StoriesPolicy, s: dict, bench: StoriesBenchmark) -> tuple:
    """FixedPreferencePPO with the panacea_ppo.yaml settings, and its prompt data."""
    kwargs = {
        "preference": list(s["lam"]),
        "critic": PanaceaCritic(
            str(bench.model_dir),
            adapter=PanaceaConfig(num_general=8, num_preferences=2),
            train_backbone=True,
        ),
        "reward": StoriesReward(num_dimensions=2),
        "aggregator": LinearAdvantage(),
        "kl_coef": bench.beta_eff,
        "gamma": 1.0,
        "gae_lambda": 0.95,
        "clip_range": 0.2,
        "value_clip_range": None,
        "samples_per_prompt": 8,
        "minibatch_size": 32,
        "ppo_epochs": 2,
        "max_new_tokens": bench.max_new_tokens,
        "optimizer": functools.partial(torch.optim.AdamW, lr=s["lr"], weight_decay=0.0, fused=True),
        "critic_lr": 0.001,
    }
    if s["full"]:
        module = FullFineTunePPO(policy, reference_model=bench.load_model(), **kwargs)
    else:
        module = FixedPreferencePPO(policy, **kwargs)
    return module, StoriesPromptDataModule(num_dimensions=2, batch_size=16)


def rloo_module(policy: StoriesPolicy, s: dict, bench: StoriesBenchmark) -> tuple:
    """FixedPreferenceGRPO with the settings panacea_grpo.yaml had when this study ran (RLOO,
    16 prompts × 8 responses, 2 epochs in minibatches of 64 = 4 optimiser steps per iteration,
    constant lr; the recipe now makes one pass in minibatches of 32), the KL as
    `s["kl_in"]`, and its prompt data. `s["cosine"]`: the lr decays to 0 over that many
    iterations (cosine) instead."""
    schedule = None
    if s.get("cosine"):
        schedule = functools.partial(
            torch.optim.lr_scheduler.CosineAnnealingLR, T_max=4 * s["cosine"]
        )
    module = FixedPreferenceGRPO(
        policy,
        preference=list(s["lam"]),
        reward=StoriesReward(num_dimensions=2),
        advantage=RLOOAdvantage(),
        aggregator=LinearAdvantage(),
        group_size=8,
        kl_coef=bench.beta_eff,
        kl_in=s.get("kl_in", "reward"),
        epochs=2,
        minibatch_size=64,
        max_new_tokens=bench.max_new_tokens,
        optimizer=functools.partial(torch.optim.AdamW, lr=s["lr"], weight_decay=0.0, fused=True),
        scheduler=schedule,
    )
    return module, StoriesPromptDataModule(num_dimensions=2, batch_size=16)
