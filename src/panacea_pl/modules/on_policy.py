"""What the on-policy trainers (`PanaceaPPO`, `PanaceaGRPO`, `PanaceaOnlineDPO`) share besides
the rollout component (`panacea_pl.models.experience`): their base class `OnPolicyModule`
(manual optimisation, the reward function, whose dimension names are the default ones, the
policy's tokenizer, the sampling settings, a check at fit start that the reward function and the
datamodule order the dimensions as the module does), and the helpers below.

    class MyTrainer(OnPolicyModule): ...               # __init__(policy, reward, generation_kwargs, …)
    log_rewards(self, scored, "val", kl_coef=0.05)     # {stage}/kl, {stage}/{dim}/reward, …
    lam = group_preference(self, num_prompts, k)       # one λ per prompt, over its k rows
    optimizer_step(self, loss, max_grad_norm=1.0, parts={"loss": loss})   # manual optimisation
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import lightning.pytorch as pl
import torch
from torch import Tensor

from panacea_pl.checks import check_integer, check_number
from panacea_pl.models import PanaceaPolicy
from panacea_pl.models.experience import ScoredRollout
from panacea_pl.modules.base import PanaceaModule
from panacea_pl.rows import repeat_rows


class OnPolicyModule(PanaceaModule):
    """Base of the trainers that sample their own data (PPO, GRPO/RLOO, online DPO): manual
    optimisation, a reward function that names the dimensions by default, the policy's
    tokenizer, the sampling settings, and a check at fit start that the reward function and the
    datamodule order the dimensions as the module does.

    Args:
        policy: the causal LM with the Panacea adapter.
        reward: scores responses, one column per dimension (a `RewardFunction`).
        generation_kwargs: extra `generate` settings (other than ancestral: off-policy).
        **kwargs: see `PanaceaModule`.
    """

    def __init__(
        self,
        policy: PanaceaPolicy,
        reward,
        generation_kwargs: dict | None = None,
        **kwargs,
    ):
        kwargs = names_from_reward(reward, kwargs)
        super().__init__(policy, **kwargs)  # a plain **kwargs: jsonargparse follows it
        self.automatic_optimization = False
        self.reward = reward
        self.generation_kwargs = dict(generation_kwargs or {})
        self._tokenizer = None

    def on_fit_start(self) -> None:
        super().on_fit_start()
        check_dimension_order(self, self.reward)

    @property
    def tokenizer(self):
        """The policy's tokenizer (loaded once)."""
        if self._tokenizer is None:
            self._tokenizer = self.policy.tokenizer()
        return self._tokenizer

    def optimise_minibatches(
        self,
        rows: int,
        size: int,
        epochs: int,
        loss_of: Callable[[Tensor], tuple[Tensor, dict[str, Tensor]]],
        max_grad_norm: float | None,
        group: int = 1,
    ) -> dict[str, Tensor]:
        """`epochs` shuffled passes over `rows` rows in minibatches of `size` (of whole groups
        of `group` consecutive rows where `size` is a multiple of it: see `minibatches`), one
        optimiser step each on `loss_of(index)` (plus the orthogonality term); returns the mean
        over the steps of the loss and of the other parts `loss_of` reports."""
        totals: dict[str, Tensor] = {}
        steps = 0
        for index in minibatches(rows, size, epochs, self.device, group):
            loss, parts = loss_of(index)
            if self.orthogonality_weight:
                loss = loss + self.orthogonality_weight * self.policy.adapter.orthogonality_loss()
            parts = {"loss": loss.detach()} | parts
            optimizer_step(self, loss, max_grad_norm, parts)
            for key, value in parts.items():
                totals[key] = totals.get(key, 0) + value
            steps += 1
        return {key: value / steps for key, value in totals.items()}


def names_from_reward(reward, kwargs: dict) -> dict:
    """`kwargs` with `dimension_names` taken from the reward function when not given."""
    if kwargs.get("dimension_names") is None and getattr(reward, "dimension_names", None):
        kwargs = kwargs | {"dimension_names": list(reward.dimension_names)}
    return kwargs


def group_preference(module, num_prompts: int, group_size: int) -> Tensor:
    """[num_prompts × group_size, m]: one λ per prompt (or one per batch without
    `per_sample_preference`), repeated over the prompt's consecutive group of rows."""
    lam = module.sample_preference(num_prompts)
    if lam.dim() == 1:
        lam = lam.expand(num_prompts, -1)
    return repeat_rows(lam, group_size)


def check_dimension_order(module: pl.LightningModule, reward) -> None:
    """Raise if the reward function or the datamodule orders the dimensions differently."""
    datamodule = getattr(module._trainer, "datamodule", None)
    sources = {
        "the reward function": getattr(reward, "dimension_names", None),
        "the datamodule": getattr(datamodule, "dimension_names", None),
    }
    for source, names in sources.items():
        if names and list(names) != module.dimension_names:
            raise ValueError(
                f"{source} names the dimensions {list(names)} but the module trains "
                f"{module.dimension_names}; give them in the same order"
            )


def log_rewards(
    module: pl.LightningModule, scored: ScoredRollout, stage: str, kl_coef: float
) -> None:
    """Log `{stage}/kl` (per response) and per dimension `reward` and `objective` (r_i − β·KL),
    synchronised across ranks outside training."""
    n = len(scored.rollout)
    kl = scored.kl
    sync = stage != "train"
    module.log(f"{stage}/kl", kl.mean(), batch_size=n, sync_dist=sync)
    objectives = scored.rewards - kl_coef * kl[:, None]
    for i, name in enumerate(module.dimension_names):
        module.log(
            f"{stage}/{name}/reward", scored.rewards[:, i].mean(), batch_size=n, sync_dist=sync
        )
        module.log(
            f"{stage}/{name}/objective", objectives[:, i].mean(), batch_size=n, sync_dist=sync
        )


def check_settings(
    owner: str, counts: dict[str, int | None], positive: dict[str, float | None]
) -> None:
    """Counts must be integers ≥ 1 and `positive` numbers > 0, where not None (None: unset)."""
    for name, value in counts.items():
        if value is not None:
            check_integer(name, value, at_least=1, owner=owner)
    for name, value in positive.items():
        if value is not None:
            check_number(name, value, above=0, owner=owner)


def check_no_dropout(name: str, adapter_config, trainer: str) -> None:
    """Old and new log-probs must come from the same network: adapter dropout off."""
    if adapter_config.dropout:
        raise ValueError(
            f"the {name}'s adapter has dropout {adapter_config.dropout}: {trainer} needs dropout "
            "off, so that old and new log-probs and values come from the same network"
        )


def optimizer_step(
    module: pl.LightningModule, loss: Tensor, max_grad_norm: float | None, parts: dict
) -> None:
    """One manual-optimisation step: check the loss, backward (all-reduced under DDP), clip the
    gradient norm, step the optimiser and the scheduler."""
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"non-finite loss at global step {module.global_step}: "
            f"{ {k: v.tolist() for k, v in parts.items()} }. Lower the learning rate, or check "
            "the rewards for NaN"
        )
    optimizer = module.optimizers()
    scheduler = module.lr_schedulers()
    optimizer.zero_grad()
    module.manual_backward(loss)
    if max_grad_norm is not None:
        module.clip_gradients(
            optimizer, gradient_clip_val=max_grad_norm, gradient_clip_algorithm="norm"
        )
    optimizer.step()
    if scheduler is not None:
        scheduler.step()


def minibatches(
    n: int, size: int, epochs: int, device: torch.device, group: int = 1
) -> Iterator[Tensor]:
    """Row indices of `epochs` passes over n rows, each pass shuffled, in chunks of `size`.

    With `group` > 1 dividing both `size` and n, the pass shuffles whole groups of `group`
    consecutive rows (rows g·j … g·j + group − 1) and a chunk holds size / group of them, so a
    minibatch of a GRPO rollout runs each of its prompts once (`shared_prompt_action_logits`);
    otherwise rows are shuffled one by one."""
    whole_groups = group > 1 and size % group == 0 and n % group == 0
    for _ in range(epochs):
        if whole_groups:
            heads = torch.randperm(n // group, device=device)[:, None] * group
            order = (heads + torch.arange(group, device=device)).flatten()
        else:
            order = torch.randperm(n, device=device)
        for start in range(0, n, size):
            yield order[start : start + size]
