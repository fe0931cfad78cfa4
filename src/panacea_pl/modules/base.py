"""What every Panacea training procedure shares: sample λ, compute per-dimension losses,
aggregate them with λ, log per dimension, and checkpoint only what is trained.

Subclasses implement one hook, `dimension_losses(batch, preference)`; `sample_preference` and
`aggregate` are the other two hooks worth overriding.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from panacea_pl.checks import check_integer, check_number
from panacea_pl.data.errors import ConfigError
from panacea_pl.layers.config import ADAPTER_CONFIG_KEY, upgrade_fields
from panacea_pl.models import PanaceaPolicy
from panacea_pl.models.sharding import fully_shard_model
from panacea_pl.modules.epoch_means import EpochMeans
from panacea_pl.objectives import Aggregator, DimensionLosses, LinearScalarization
from panacea_pl.plugins.checkpoint_io import CheckpointError
from panacea_pl.preference import DirichletSampler

SAMPLER_STATE_KEY = "panacea_preference_sampler"
# Module names that FSDP (1) and activation checkpointing insert into parameter names, and that
# their state dicts leave out: a checkpoint's keys are the names without them.
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def state_dict_name(name: str) -> str:
    """A parameter's name as a state dict keys it, without the wrappers' module names."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def _adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=5e-4, fused=True)


def default_dimension_names(module: pl.LightningModule) -> list[str]:
    """The datamodule's `dimension_names` if the trainer has one, else dim0 … dim{m−1}."""
    trainer = module._trainer
    names = getattr(getattr(trainer, "datamodule", None), "dimension_names", None)
    return list(names) if names else [f"dim{i}" for i in range(module.num_preferences)]


class PanaceaModule(pl.LightningModule):
    """Base LightningModule for Panacea (Algorithm 1 of the paper): each training batch draws
    λ ~ Dirichlet(α), computes the m per-dimension losses and optimises their aggregate.

    Args:
        policy: the causal LM with the Panacea adapter.
        aggregator: how per-dimension losses combine under λ (LS, Tchebycheff, …).
        preference_alpha: Dirichlet concentration α (1 = uniform on the simplex).
        per_sample_preference: one λ per example instead of one per batch. One λ per batch is
            the paper's choice. Either way DDP draws what one process with the global batch
            would (see `sample_preference`).
        seed: seed of the λ sampler.
        orthogonality_weight: weight of the adapter's ‖UᵀU − I‖² + ‖VVᵀ − I‖² regulariser.
        dimension_names: names of the m dimensions, used in logged keys; by default taken from
            the datamodule's `dimension_names`.
        optimizer: builds the optimiser from the adapter's parameters.
        scheduler: builds a learning-rate scheduler from the optimiser (stepped every step).
    """

    def __init__(
        self,
        policy: PanaceaPolicy,
        aggregator: Aggregator | None = None,
        preference_alpha: float = 1.0,
        per_sample_preference: bool = False,
        seed: int = 0,
        orthogonality_weight: float = 0.0,
        dimension_names: Sequence[str] | None = None,
        optimizer: OptimizerCallable = _adamw,
        scheduler: LRSchedulerCallable | None = None,
    ):
        super().__init__()
        owner = type(self).__name__
        check_number("preference_alpha", preference_alpha, above=0, owner=owner)
        check_number("orthogonality_weight", orthogonality_weight, at_least=0, owner=owner)
        check_integer("seed", seed, owner=owner)
        self.save_hyperparameters(
            ignore=[
                "policy",
                "aggregator",
                "advantage",
                "loss",
                "critic",
                "reward",
                "labeler",
                "optimizer",
                "scheduler",
            ]
        )
        self.policy = policy
        self.aggregator = aggregator if aggregator is not None else LinearScalarization()
        self.per_sample_preference = per_sample_preference
        self.orthogonality_weight = orthogonality_weight
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.sampler = DirichletSampler(policy.num_preferences, alpha=preference_alpha, seed=seed)
        self._dimension_names = list(dimension_names) if dimension_names is not None else None
        self.epoch_means = EpochMeans()
        self.strict_loading = False  # checkpoints hold the adapter, not the frozen base

    # ---- dimensions ---------------------------------------------------------------------------

    @property
    def num_preferences(self) -> int:
        return self.policy.num_preferences

    @property
    def dimension_names(self) -> list[str]:
        if self._dimension_names is None:
            self._dimension_names = default_dimension_names(self)
        if len(self._dimension_names) != self.num_preferences:
            raise ValueError(
                f"{len(self._dimension_names)} dimension names {self._dimension_names} for an "
                f"adapter with num_preferences={self.num_preferences}"
            )
        return self._dimension_names

    def setup(self, stage: str) -> None:
        """Check, before the first step, that the datamodule's dimensions are the adapter's."""
        datamodule = getattr(self._trainer, "datamodule", None)
        names = getattr(datamodule, "dimension_names", None)
        if names is not None and len(names) != self.num_preferences:
            raise ValueError(
                f"the datamodule {type(datamodule).__name__} has {len(names)} preference "
                f"dimensions {list(names)} but the adapter has num_preferences="
                f"{self.num_preferences}: set the adapter's num_preferences to {len(names)}"
            )

    def on_fit_start(self) -> None:
        """Log the aggregation scheme with the hyperparameters (dashboards group runs by it)."""
        for logger in self.loggers:
            logger.log_hyperparams({"aggregation": type(self.aggregator).__name__})

    # ---- hooks --------------------------------------------------------------------------------

    def sample_preference(self, batch_size: int) -> torch.Tensor:
        """λ for a training batch: [m], or [B, m] with `per_sample_preference`.

        Every rank draws the same numbers (the sampler is seeded alike), so one λ per batch is
        the same on all ranks; per sample, each of W ranks draws λ for the global batch of W·B
        rows and keeps rows rank, rank + W, … (the rows `DistributedSampler` deals it), so W
        processes train on the λ that one process with a W-times larger batch would draw.
        """
        if not self.per_sample_preference:
            return self.sampler.sample(None).to(self.device)
        trainer = self._trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        return self.sampler.sample(batch_size * world)[rank::world].to(self.device)

    def evaluation_preference(self) -> torch.Tensor:
        """λ for validation/test losses: the centre of the simplex, so epochs are comparable."""
        return torch.full((self.num_preferences,), 1.0 / self.num_preferences, device=self.device)

    def dimension_losses(self, batch: dict, preference: torch.Tensor) -> DimensionLosses:
        """Per-example, per-dimension losses [B, m] with their mask, under λ."""
        raise NotImplementedError

    def aggregate(self, losses: DimensionLosses, preference: torch.Tensor) -> torch.Tensor:
        """The scalar to optimise."""
        return self.aggregator(losses.losses, preference, losses.mask)

    @staticmethod
    def batch_size_of(batch: dict) -> int:
        return batch["labels"].shape[0]

    # ---- steps --------------------------------------------------------------------------------

    def _shared_step(self, batch: dict, stage: str) -> torch.Tensor:
        size = self.batch_size_of(batch)
        if stage == "train":
            preference = self.sample_preference(size)
        else:
            preference = self.evaluation_preference()
        losses = self.dimension_losses(batch, preference)
        loss = self.aggregate(losses, preference)
        if stage == "train" and self.orthogonality_weight:
            ortho = self.policy.adapter.orthogonality_loss()
            self.log("train/orthogonality", ortho, batch_size=size)
            loss = loss + self.orthogonality_weight * ortho
        self._check_finite(loss, losses, preference, stage)
        self._log_step(losses, loss, preference, stage, size)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "test")

    # ---- logging ------------------------------------------------------------------------------

    def dimension_metrics(self, losses: DimensionLosses) -> dict[str, torch.Tensor]:
        """Per-dimension [m] statistics to log beside the loss (subclasses add their own)."""
        return {"loss": losses.dimension_means()}

    def _log_step(self, losses, loss, preference, stage: str, size: int) -> None:
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=size, sync_dist=stage != "train")
        lam = preference if preference.dim() == 1 else preference.mean(0)
        counts = losses.counts().float()
        for key, values in self.dimension_metrics(losses).items():
            for i, name in enumerate(self.dimension_names):
                if counts[i] == 0:
                    continue
                if stage == "train":
                    self.log(f"train/{name}/{key}", values[i], batch_size=size)
                else:
                    self.epoch_means.update(f"{stage}/{name}/{key}", values[i], counts[i])
        if stage == "train":
            for i, name in enumerate(self.dimension_names):
                self.log(f"train/lambda/{name}", lam[i], batch_size=size)

    def on_validation_epoch_end(self) -> None:
        self.epoch_means.log_and_reset(self)

    def on_test_epoch_end(self) -> None:
        self.epoch_means.log_and_reset(self)

    def _check_finite(self, loss, losses: DimensionLosses, preference, stage: str) -> None:
        if torch.isfinite(loss):
            return
        per_dim = dict(zip(self.dimension_names, losses.dimension_means().tolist(), strict=True))
        raise FloatingPointError(
            f"non-finite {stage} loss {loss.item()} at global step {self.global_step} "
            f"(epoch {self.current_epoch}); λ={preference.tolist()}; per-dimension losses "
            f"{per_dim}. Lower the learning rate or β, or check the batch for empty responses."
        )

    # ---- optimisation -------------------------------------------------------------------------

    def optimizer_parameters(self):
        """What the optimiser trains: the adapter's parameters (or parameter groups)."""
        return self.policy.adapter.parameters()

    def configure_optimizers(self):
        parameters = self.optimizer_parameters()
        try:  # torch checks its optimisers' and schedulers' settings here, with ValueError
            optimizer = self.optimizer_factory(parameters)
            if self.scheduler_factory is None:
                return optimizer
            scheduler = self.scheduler_factory(optimizer)
        except ValueError as err:  # e.g. "Invalid learning rate: -1.0": a bad input, said so
            raise ConfigError(f"{type(self).__name__}: optimizer or scheduler: {err}") from err
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # ---- sharding: FSDP2 under panacea_pl.strategies.FSDP2Strategy ------------------------------

    def sharded_models(self) -> list[torch.nn.Module]:
        """The Hugging Face models FSDP2 shards: the policy's (PPO adds its critic's)."""
        return [self.policy.model]

    def configure_model(self) -> None:
        """Under a model-parallel strategy (`FSDP2Strategy`), shard each of `sharded_models()`
        with FSDP2 over the data-parallel ranks, one unit per decoder block, in bf16 when the
        trainer's precision is; under every other strategy, nothing."""
        mesh = self._device_mesh
        if mesh is None:
            return
        if "tensor_parallel" in (mesh.mesh_dim_names or ()) and mesh["tensor_parallel"].size() > 1:
            raise ValueError(
                "Panacea's modules shard data-parallel only, but the strategy's mesh has "
                f"tensor_parallel_size={mesh['tensor_parallel'].size()}: use "
                "panacea_pl.strategies.FSDP2Strategy, or ModelParallelStrategy with "
                "tensor_parallel_size=1"
            )
        data_parallel = mesh["data_parallel"] if mesh.ndim > 1 else mesh
        bf16 = str(self.trainer.precision).startswith("bf16")
        for model in self.sharded_models():
            fully_shard_model(model, data_parallel, torch.bfloat16 if bf16 else None)

    # ---- checkpoints: the adapter, optimiser and λ-sampler state, not the frozen base -----------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # remove_duplicate=False: a tied weight (lm_head = embed_tokens) is frozen under both names
        params = self.named_parameters(remove_duplicate=False)
        frozen = {state_dict_name(name) for name, p in params if not p.requires_grad}
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if k not in frozen
        }
        checkpoint[SAMPLER_STATE_KEY] = self.sampler.state_dict()
        checkpoint[ADAPTER_CONFIG_KEY] = self.policy.adapter.config.to_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        trained = {state_dict_name(n): p for n, p in self.named_parameters() if p.requires_grad}
        # DeepSpeed loads the weights itself and hands over the rest without a "state_dict"
        state = checkpoint.get("state_dict")
        if state is not None:
            missing = sorted(set(trained) - set(state))
            shapes = [
                f"{k}: {tuple(state[k].shape)} in the checkpoint, {tuple(p.shape)} here"
                for k, p in trained.items()
                if k in state and tuple(state[k].shape) != tuple(p.shape)
            ]
            if missing or shapes:
                raise CheckpointError(self._mismatch_message(checkpoint, missing, shapes))
        if SAMPLER_STATE_KEY in checkpoint:
            self.sampler.load_state_dict(checkpoint[SAMPLER_STATE_KEY])

    def _mismatch_message(self, checkpoint: dict, missing: list[str], shapes: list[str]) -> str:
        """What differs between a checkpoint's adapter and this module's, config first."""
        saved = upgrade_fields(checkpoint.get(ADAPTER_CONFIG_KEY) or {})
        current = self.policy.adapter.config.to_dict()
        differ = [
            f"{key}={saved[key]!r} in the checkpoint, {current.get(key)!r} in the config"
            for key in sorted(saved)
            if key in current and saved[key] != current[key]
        ]
        parts = ["the checkpoint's adapter does not fit the configured one"]
        if differ:
            parts.append("adapter settings: " + "; ".join(differ))
        if shapes:
            parts.append(f"{len(shapes)} tensors differ in shape, e.g. " + "; ".join(shapes[:3]))
        if missing:
            parts.append(f"{len(missing)} adapter tensors are missing, e.g. {missing[:3]}")
        parts.append("resume with the adapter settings the checkpoint was trained with")
        return ". ".join(parts)
