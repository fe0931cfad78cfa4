"""Sweep λ over the simplex during training and log the Pareto front with its metrics.

    trainer = Trainer(callbacks=[ParetoSweep(ImplicitRewardEvaluator(), divisions=10)])

Every `every_n_epochs` validation epochs (and once at the end of fitting) the evaluator scores
the whole Das–Dennis grid in per-sample batches. Logged to every Lightning logger: metrics as
`pareto/{name}` (hypervolume ↑, inner_product ↑, sparsity ↓, spacing ↓, and the evaluator's own);
with W&B also a `wandb.Table` of the per-λ rows, the plot, and the metrics in the run summary (so
dashboards can group runs by aggregation scheme). Always: a CSV and a PNG per sweep in
`<log_dir>/pareto/`. Under `trainer.validate(...)` (a finished model, or a baseline's policy
collection: `panacea_pl.baselines`) it sweeps once, tagged and logged like the end-of-fit sweep
(`final.csv`, `pareto/{name}_final`). A datamodule without validation rows (the on-policy
recipes' prompts) runs no validation loop and so no hook: `panacea-pl validate` then sweeps
through `sweep_unless_done` after the loop.

Under DDP (or FSDP2: `panacea_pl.strategies.FSDP2Strategy`) an evaluator with
`distributed = True` (the stories and reward-model evaluators) is called on every rank: each
rank generates and scores its share of the grid's rows, every rank takes part in every forward,
and rank zero writes and logs the gathered front. Other evaluators run on rank zero alone while
the other ranks wait (under DDP; a sharded model refuses them at setup, as does Lightning's
FSDP1 strategy, whose root unit the evaluators cannot enter).
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.trainer.states import TrainerFn

from panacea_pl.evaluation.base import FrontEvaluator
from panacea_pl.evaluation.plot import plot_front
from panacea_pl.evaluation.result import FrontResult
from panacea_pl.preference import simplex_grid


class ParetoSweep(pl.Callback):
    """Evaluate f(λ) on a simplex grid and log the front.

    Args:
        evaluator: computes f(λ) for the grid (see `panacea_pl.evaluation`).
        divisions: H of the Das–Dennis grid (C(H + m − 1, m − 1) points, corners included).
        every_n_epochs: sweep after every n-th validation epoch (0: only at the end of fit).
        output_dir: where CSV/PNG go (default `<trainer.log_dir>/pareto`).
        sweep_on_fit_start: also sweep once before the first step (the starting front; for a
            fresh adapter, the base model's).
        sweep_on_fit_end: also sweep once when fitting ends.
    """

    def __init__(
        self,
        evaluator: FrontEvaluator,
        divisions: int = 10,
        every_n_epochs: int = 1,
        output_dir: str | None = None,
        sweep_on_fit_start: bool = False,
        sweep_on_fit_end: bool = True,
    ):
        self.evaluator = evaluator
        self.divisions = divisions
        self.every_n_epochs = every_n_epochs
        self.output_dir = output_dir
        self.sweep_on_fit_start = sweep_on_fit_start
        self.sweep_on_fit_end = sweep_on_fit_end
        self.first_metrics: dict[str, float] = {}
        self.last_result: FrontResult | None = None
        self.last_metrics: dict[str, float] = {}
        self.last_plot: Path | None = None
        self._swept_this_stage = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            evaluator=type(self.evaluator).__name__, divisions=self.divisions
        )

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Refuse, before anything runs, a sweep that a sharded model cannot take part in."""
        self._swept_this_stage = False
        strategy = trainer.strategy
        if isinstance(strategy, FSDPStrategy):
            raise ValueError(
                "ParetoSweep cannot sweep under FSDPStrategy (FSDP1): it wraps the whole "
                "LightningModule in one root unit, and the evaluators call the policy's model, "
                "outside that unit's forward. Train with panacea_pl.strategies.FSDP2Strategy "
                "(experiments/strategies/fsdp2.yaml), which shards the policy itself, or remove "
                "the callback"
            )
        sharded_model = isinstance(strategy, ModelParallelStrategy) and trainer.world_size > 1
        if sharded_model and not getattr(self.evaluator, "distributed", False):
            raise ValueError(
                f"ParetoSweep's evaluator {type(self.evaluator).__name__} samples on rank zero "
                f"only, which a model sharded by {type(strategy).__name__} cannot do (every "
                "rank takes part in every forward): use an evaluator with `distributed = "
                "True` (StoriesEvaluator, RewardModelEvaluator with shard: true)"
            )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:  # stand-alone validation: the final front
            self.sweep(trainer, pl_module, "final", log_metrics=False)
            return
        if trainer.sanity_checking or not self.every_n_epochs:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.sweep(trainer, pl_module, f"epoch{trainer.current_epoch:03d}", log_metrics=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.sweep_on_fit_start and self.sweep(trainer, pl_module, "start", log_metrics=False):
            self.first_metrics = dict(self.last_metrics)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.sweep_on_fit_end:
            self.sweep(trainer, pl_module, "final", log_metrics=False)

    def sweep_unless_done(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The final sweep of a `validate` whose loop did not run (no validation rows), on the
        strategy's device (the loop's teardown moved the model to the CPU); every rank calls."""
        if self._swept_this_stage:
            return
        device = pl_module.device
        pl_module.to(trainer.strategy.root_device)
        try:
            self.sweep(trainer, pl_module, "final", log_metrics=False)
        finally:
            pl_module.to(device)

    def sweep(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, tag: str, log_metrics: bool
    ) -> FrontResult | None:
        """Evaluate the grid (sharded over ranks, or on rank zero), write CSV + PNG, log."""
        self._swept_this_stage = True
        # every rank: under DDP `trainer.log_dir` is a broadcast, which rank zero alone would
        # wait on forever
        folder = Path(
            self.output_dir or Path(trainer.log_dir or trainer.default_root_dir) / "pareto"
        )
        sharded = trainer.world_size > 1 and getattr(self.evaluator, "distributed", False)
        if not (trainer.is_global_zero or sharded):
            return None
        grid = simplex_grid(pl_module.policy.num_preferences, self.divisions)
        was_training = pl_module.training
        pl_module.eval()
        try:
            result = self.evaluator.evaluate(pl_module, grid)
        finally:
            pl_module.train(was_training)
        if not trainer.is_global_zero:
            return None
        metrics = result.metrics()
        result.write_csv(folder / f"{tag}.csv")
        title = f"{type(pl_module).__name__} · step {trainer.global_step} · HV {metrics['hypervolume']:.4g}"
        if "hypervolume_ratio" in metrics:
            title += f" ({metrics['hypervolume_ratio']:.2f} of the optimum's)"
        if "mean_gain" in metrics:
            title += f"\nG = {metrics['mean_gain']:.2f} ± {metrics.get('mean_gain_se', 0.0):.2f}"
        self.last_plot = plot_front(result, folder / f"{tag}.png", title=title)
        self.last_result, self.last_metrics = result, metrics
        keyed = {f"pareto/{name}": value for name, value in metrics.items()}
        if log_metrics:
            for name, value in keyed.items():
                pl_module.log(name, value, rank_zero_only=True)
        for logger in trainer.loggers:
            if not log_metrics:
                logger.log_metrics(
                    {f"{k}_{tag}": v for k, v in keyed.items()}, step=trainer.global_step
                )
            if isinstance(logger, WandbLogger):
                logger.log_table(
                    key=f"pareto/front_{tag}", columns=result.header(), data=result.rows()
                )
                logger.log_image(key="pareto/plot", images=[str(self.last_plot)], caption=[tag])
                logger.experiment.summary.update(keyed)
        return result
