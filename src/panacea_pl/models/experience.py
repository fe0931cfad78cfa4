"""Scored rollouts: the one sampling component every on-policy trainer (PPO, GRPO, RLOO)
reuses. Sample under one λ per row, score every dimension, and take token log-probs under the
policy (adapter on, at the row's λ) and the reference (adapter off).

    lam = sampler.sample(len(prompts) * k)                        # [N, m], N = prompts × k
    scored = sample_and_score(policy, reward, batch, lam, samples_per_prompt=k,
                              max_new_tokens=48, tokenizer=tokenizer)
    scored.rewards      # [N, m] from the reward function (higher is better)
    scored.logps        # [N, T] log π(y_t | λ), T = L − 1 token actions
    scored.kl           # [N] Σ_t log π/π_ref over each response: the sequence KL estimate

Rows are prompt-major: row j·k + g is the g-th response to prompt j (`repeat_interleave`), so a
group of k responses to one prompt is k consecutive rows. The trainer decides how λ is drawn
(PPO: one per row; GRPO: one per group, repeated k times) and passes it in. Generation and the
log-prob passes run in eval mode (no dropout, no gradient checkpointing), then restore.

A prompt runs once for its k rows (`share_prompts`): the generation's prefill starts from one
KV cache of it where the rows share λ (`prompt_cache`), and so do the log-prob passes
(`shared_prompt_token_logps`; the reference pass always, λ being off). The LM head runs only
on the positions that predict response tokens; the prompt actions' log-probs are 0 (masked).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from panacea_pl.models.generation import stop_ids
from panacea_pl.models.logprobs import target_logprobs
from panacea_pl.models.policy import PanaceaPolicy
from panacea_pl.models.rollout import Rollout, sample_rollout
from panacea_pl.rows import repeat_rows


@dataclass
class ScoredRollout:
    """A rollout with its λ, log-probs and rewards ([N, T]: one entry per token action).

    Attributes:
        rollout: the sampled sequences.
        preference: [N, m] λ of each row.
        logps: [N, T] log π_old of each token under its row's λ (None when the trainer asked
            for no policy pass: it fills them from its own on-policy forward); 0 on the actions
            before `rollout.first_action`, which predict prompt tokens.
        ref_logps: [N, T] log π_ref (adapter off), likewise.
        rewards: [N, m] the reward function's scores.
    """

    rollout: Rollout
    preference: Tensor
    logps: Tensor | None
    ref_logps: Tensor
    rewards: Tensor

    def __len__(self) -> int:
        return len(self.rollout)

    @property
    def mask(self) -> Tensor:
        """[N, T] True on response-token actions."""
        return self.rollout.action_mask

    @property
    def kl(self) -> Tensor:
        """[N] Σ_t log π/π_ref over each response: the per-sample KL estimate."""
        if self.logps is None:
            raise ValueError("this rollout was scored without policy log-probs")
        return ((self.logps - self.ref_logps) * self.mask).sum(-1)


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode inside the block (generation without gradient checkpointing), then restore."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def policy_token_logps(
    policy: PanaceaPolicy,
    sequences: Tensor,
    attention_mask: Tensor,
    position_ids: Tensor,
    first_action: int = 0,
) -> Tensor:
    """[N, L − 1] log-probs of each next token under whatever λ is set on the adapter.

    With `first_action` (a rollout's `prompt_length − 1`: no response token is predicted
    earlier), the LM head and the log-softmax run only on the positions from there on
    (`logits_to_keep`, where the model takes it) and the earlier actions' log-probs are 0:
    every consumer masks them with the action mask. The prompt's tokens still go through the
    body of the model, which the response attends to.
    """
    logits = action_logits(policy, sequences, attention_mask, position_ids, first_action)
    return padded_logps(logits, sequences, first_action)


def action_logits(
    policy: PanaceaPolicy,
    sequences: Tensor,
    attention_mask: Tensor,
    position_ids: Tensor,
    first_action: int = 0,
) -> Tensor:
    """[N, L − 1 − first_action, V] next-token logits of the actions from `first_action` on
    (positions first_action … L − 2), under whatever λ is set on the adapter."""
    keep = sequences.shape[1] - first_action
    extra = {"logits_to_keep": keep} if first_action and _takes_logits_to_keep(policy.model) else {}
    logits = policy.model(
        input_ids=sequences,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
        **extra,
    ).logits
    return logits[:, -keep:-1]


def padded_logps(logits: Tensor, sequences: Tensor, first_action: int) -> Tensor:
    """[N, L − 1] log-probs of the tokens that `action_logits` (from `first_action` on)
    predict in `sequences`, 0 on the actions before `first_action`."""
    return F.pad(target_logprobs(logits, sequences[:, first_action + 1 :]), (first_action, 0))


def token_kl(logits: Tensor, ref_logits: Tensor) -> Tensor:
    """KL(softmax(logits) ‖ softmax(ref_logits)) at every position, summed over the whole
    vocabulary: the exact per-state KL whose sampled estimate is log π/π_ref of one token."""
    logp = logits.float().log_softmax(-1)
    return (logp.exp() * (logp - ref_logits.float().log_softmax(-1))).sum(-1)


def _takes_logits_to_keep(model: nn.Module) -> bool:
    """Whether the model's forward names a `logits_to_keep` argument (most transformers LMs)."""
    return {"logits_to_keep"} <= _forward_arguments(model)


def _forward_arguments(model: nn.Module) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def shared_prompt_token_logps(
    policy: PanaceaPolicy, rollout: Rollout, group: int, preference: Tensor | None = None
) -> Tensor:
    """`policy_token_logps(policy, …, rollout.first_action)` for rows in groups of `group`
    consecutive responses to one prompt, with each prompt run once: the prompt block of every
    group's first row fills a KV cache (and gives the logits at the last prompt position), the
    cache is repeated over the group, and every row's response block runs on it. The same
    log-probs up to rounding, with the prompt's share of the pass cut by 1 − 1/group.

    `preference`: None runs under the adapter's current state, which must not differ between
    rows (the reference, or one λ); [N, m] sets one λ per row, equal within each group. Falls
    back to the full pass for one response per prompt, λ that differs within a group, an empty
    response block, or a model whose forward takes no KV cache or `logits_to_keep`.
    """
    logits, first = shared_prompt_action_logits(policy, rollout, group, preference)
    return padded_logps(logits, rollout.sequences, first)


def shared_prompt_action_logits(
    policy: PanaceaPolicy, rollout: Rollout, group: int, preference: Tensor | None = None
) -> tuple[Tensor, int]:
    """(`action_logits` from the returned first action on, that first action): the pass of
    `shared_prompt_token_logps`, each prompt once per group where it can (see there)."""
    sequences, attention_mask = rollout.sequences, rollout.attention_mask
    position_ids = rollout.position_ids
    n, length = sequences.shape
    prompt = rollout.prompt_length
    names = _forward_arguments(policy.model)
    cache_arg = next((a for a in ("cache", "past_key_values") if a in names), None)
    heads = slice(None, None, group)
    shareable = (
        group > 1
        and n % group == 0
        and 0 < prompt < length
        and cache_arg is not None
        and "logits_to_keep" in names
        and (preference is None or _equal_within_groups(preference, group))
        and not _checkpointing(policy.model)
    )
    if not shareable:
        with nullcontext() if preference is None else policy.preference(preference):
            first = rollout.first_action
            logits = action_logits(policy, sequences, attention_mask, position_ids, first)
            return logits, first
    with nullcontext() if preference is None else policy.preference(preference[heads]):
        cached = policy.model(
            input_ids=sequences[heads, :prompt],
            attention_mask=attention_mask[heads, :prompt],
            position_ids=position_ids[heads, :prompt],
            use_cache=True,
            logits_to_keep=1,
        )
    cache = getattr(cached, cache_arg)
    cache.batch_repeat_interleave(group)
    with nullcontext() if preference is None else policy.preference(preference):
        rest = policy.model(
            input_ids=sequences[:, prompt:],
            attention_mask=attention_mask,
            position_ids=position_ids[:, prompt:],
            use_cache=True,
            **{cache_arg: cache},
        ).logits
    heads_logits = cached.logits[:, -1:].repeat_interleave(group, 0)
    return torch.cat([heads_logits, rest[:, :-1]], 1), prompt - 1


# generate settings that keep a prompt cache valid (beams, assisted decoding or a caller's own
# cache would not)
_SAMPLING_SETTINGS = {
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "typical_p",
    "repetition_penalty",
    "min_new_tokens",
}


def prompt_cache(
    policy: PanaceaPolicy,
    input_ids: Tensor,
    attention_mask: Tensor,
    preference: Tensor,
    group: int,
    generation_kwargs: dict | None = None,
) -> dict:
    """`generate` arguments that start `group` consecutive rows of one prompt from one KV
    cache: all but the last prompt token of each group's first row run once under the group's
    λ, the cache is repeated over the group, and `generate` runs the rest (it skips the cached
    positions). {} where that does not apply (one row per prompt, λ that differs within a
    group, a one-token prompt, settings other than sampling ones, a model whose forward takes
    no KV cache or `logits_to_keep`)."""
    names = _forward_arguments(policy.model)
    cache_arg = next((a for a in ("cache", "past_key_values") if a in names), None)
    n, prompt = input_ids.shape
    if not (
        group > 1
        and n % group == 0
        and prompt > 1
        and cache_arg is not None
        and "logits_to_keep" in names
        and set(generation_kwargs or {}) <= _SAMPLING_SETTINGS
        and _equal_within_groups(preference, group)
    ):
        return {}
    heads = slice(None, None, group)
    mask = attention_mask[heads, :-1]
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # as `generate` counts them
    with policy.preference(preference[heads]):
        cache = getattr(
            policy.model(
                input_ids=input_ids[heads, :-1],
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
            ),
            cache_arg,
        )
    cache.batch_repeat_interleave(group)
    return {cache_arg: cache}


def _checkpointing(model: nn.Module) -> bool:
    """Gradient checkpointing in a pass with gradients: transformers then turns the cache off."""
    if not (torch.is_grad_enabled() and model.training):
        return False
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # new name first
        if hasattr(type(model), name):
            return bool(getattr(model, name))
    return False


def group_order(index: Tensor, group: int) -> tuple[Tensor, Tensor] | None:
    """(sorted `index`, the permutation back to `index`'s order) where `index` holds whole
    groups of `group` consecutive rows (rows g·j … g·j + group − 1); None otherwise."""
    ordered, perm = index.sort()
    if group < 2 or len(index) % group:
        return None
    rows = ordered.view(-1, group)
    steps = torch.arange(group, device=index.device)
    if not bool(((rows == rows[:, :1] + steps) & (rows[:, :1] % group == 0)).all()):
        return None
    return ordered, perm.argsort()


def _equal_within_groups(preference: Tensor, group: int) -> bool:
    rows = preference.reshape(-1, group, preference.shape[-1])
    return bool((rows == rows[:, :1]).all())


@torch.no_grad()
def sample_and_score(
    policy: PanaceaPolicy,
    reward: Callable[[Rollout], Tensor],
    batch: dict,
    preference: Tensor,
    samples_per_prompt: int,
    max_new_tokens: int,
    tokenizer=None,
    generation_kwargs: dict | None = None,
    policy_logps: bool = True,
    share_prompts: bool = True,
) -> ScoredRollout:
    """Sample `samples_per_prompt` responses per prompt under per-row λ and score them.

    Args:
        policy: the causal LM with the Panacea adapter.
        reward: rollout → [N, m] rewards (a `RewardFunction`).
        batch: left-padded prompts, `input_ids` and `attention_mask` [B, P].
        preference: λ, [m] for every row or [N, m] with N = B × samples_per_prompt.
        samples_per_prompt: responses per prompt (consecutive rows).
        max_new_tokens: response budget.
        tokenizer: the policy's tokenizer (default: loaded from the policy).
        generation_kwargs: overrides of the ancestral sampling (makes training off-policy).
        policy_logps: take log π under λ (False saves a forward pass when the trainer's only
            update is on-policy and its KL is not in the reward: GRPO with one step).
        share_prompts: run each prompt once for its `samples_per_prompt` rows where they share
            λ (`prompt_cache` for the generation's prefill, `shared_prompt_token_logps` for
            the log-prob passes; the reference pass always): the same rollout and log-probs up
            to rounding. False: every row runs its own prompt.
    """
    tokenizer = policy.tokenizer() if tokenizer is None else tokenizer
    input_ids = repeat_rows(batch["input_ids"], samples_per_prompt)
    attention_mask = repeat_rows(batch["attention_mask"], samples_per_prompt)
    n, m = input_ids.shape[0], policy.num_preferences
    lam = preference.to(input_ids.device)
    lam = lam.expand(n, m) if lam.dim() == 1 else lam
    if lam.shape != (n, m):
        raise ValueError(f"preference must be [{m}] or [{n}, {m}], got {list(lam.shape)}")
    generation_kwargs = dict(generation_kwargs or {})
    with eval_mode(policy), policy.preference(lam):
        if share_prompts:
            generation_kwargs |= prompt_cache(
                policy, input_ids, attention_mask, lam, samples_per_prompt, generation_kwargs
            )
        rollout = sample_rollout(
            policy.model,
            input_ids,
            attention_mask,
            max_new_tokens,
            stop_ids(policy, tokenizer),
            tokenizer.pad_token_id,
            **generation_kwargs,
        )
        group = samples_per_prompt if share_prompts else 1
        logps = shared_prompt_token_logps(policy, rollout, group, lam) if policy_logps else None
        with policy.reference():
            ref_logps = shared_prompt_token_logps(policy, rollout, group)
    rewards = torch.as_tensor(reward(rollout)).to(input_ids.device, torch.float32)
    if rewards.shape != (n, m):
        raise ValueError(f"the reward function returned {list(rewards.shape)}, not [{n}, {m}]")
    return ScoredRollout(rollout, lam, logps, ref_logps, rewards)
