"""An exponential moving average of the trainable parameters: the model you evaluate and keep.

    trainer = Trainer(callbacks=[ParetoSweep(...), TrainableEMA(decay=0.995)])

On-policy updates are noisy: each step moves the adapter along the reward's direction and along
directions that only the step's samples favoured, and the KL penalty removes the latter slowly
(`experiments/ceiling/`: about half of a policy's KL is spent off the reward's direction). An
average of the recent iterates keeps the consistent part of the steps and cancels much of the
rest, at no cost in samples. Training continues on the raw parameters (rollouts sample from
them); the average is what validation, every `ParetoSweep`, the checkpoints and the model left
after `fit` hold.

Only parameters with `requires_grad` are averaged (the adapter, a critic), so a frozen 7B base
is not copied. Updates are per optimiser step, whether the module steps once per batch or several
times (the on-policy modules): after n steps the average moves by 1 − decay_1···decay_n, with the
warm-up decay_t = min(decay, (1 + t) / (10 + t)) so that a short run is not anchored to its
initial weights. Checkpoints store the average as the model's weights (what `validate` and the
exports read) and the raw weights in the callback's state, so `fit --ckpt_path` resumes both.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.trainer.states import TrainerFn

from panacea_pl.modules.base import state_dict_name


class TrainableEMA(pl.Callback):
    """Exponential moving average of the trainable parameters, swapped in for evaluation.

    Args:
        decay: per-optimiser-step decay; the average spans about 1 / (1 − decay) steps.
        start_step: optimiser steps before the average starts following the weights (until
            then it equals them).
    """

    def __init__(self, decay: float = 0.995, start_step: int = 0):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"TrainableEMA: decay must be in (0, 1), got {decay}")
        if start_step < 0:
            raise ValueError(f"TrainableEMA: start_step must be >= 0, got {start_step}")
        self.decay = decay
        self.start_step = start_step
        self._names: list[str] = []
        self._average: list[torch.Tensor] = []
        self._step = 0  # optimiser steps the average has seen
        self._restored_raw: list[torch.Tensor] | None = None
        self._swapped = False
        self.final_raw: dict[str, torch.Tensor] = {}  # the raw weights at the end of `fit`

    @property
    def state_key(self) -> str:
        return self._generate_state_key(decay=self.decay)

    def _trainable(self, pl_module: pl.LightningModule) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in pl_module.named_parameters() if p.requires_grad]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        strategy = trainer.strategy
        if isinstance(strategy, FSDPStrategy | ModelParallelStrategy):
            raise ValueError(
                f"TrainableEMA averages whole parameters on each rank; under "
                f"{type(strategy).__name__} they are sharded and its checkpoints are "
                "distributed. Use it with a single device or DDP, or remove the callback"
            )
        named = self._trainable(pl_module)
        if not named:
            raise ValueError("TrainableEMA: the module has no trainable parameters to average")
        self._names = [state_dict_name(n) for n, _ in named]
        self._average = [p.detach().clone() for _, p in named]  # a checkpoint may replace it

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._names and list(state_dict["names"]) != self._names:
            only_saved = sorted(set(state_dict["names"]) - set(self._names))
            only_here = sorted(set(self._names) - set(state_dict["names"]))
            raise ValueError(
                "TrainableEMA: the checkpoint averaged other parameters than this module trains "
                f"(only in the checkpoint: {only_saved or 'none'}; only here: "
                f"{only_here or 'none'}; or the same in another order)"
            )
        self._average = [a.clone() for a in state_dict["average"]]
        self._step = int(state_dict["step"])

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        params = [p for _, p in self._trainable(pl_module)]
        self._average = [
            a.to(p.device, p.dtype) for a, p in zip(self._average, params, strict=True)
        ]
        if self._restored_raw is not None:  # the checkpoint's weights were the average
            self._assign(pl_module, self._restored_raw)
            self._restored_raw = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        keep = 1.0  # the weight the old average keeps after the steps taken since the last call
        while self._step < trainer.global_step:
            t = self._step - self.start_step
            keep *= min(self.decay, (1 + t) / (10 + t)) if t >= 0 else 0.0
            self._step += 1
        if keep < 1.0:
            params = [p.detach() for _, p in self._trainable(pl_module)]
            torch._foreach_lerp_(self._average, params, 1.0 - keep)

    def _assign(self, pl_module: pl.LightningModule, values: list[torch.Tensor]) -> None:
        """Copy `values` (in `_trainable`'s order) into the trainable parameters."""
        params = [p for _, p in self._trainable(pl_module)]
        if len(params) != len(values):
            raise ValueError(f"TrainableEMA: {len(values)} tensors for {len(params)} parameters")
        with torch.no_grad():
            torch._foreach_copy_(params, values)

    def _swap(self, pl_module: pl.LightningModule) -> None:
        raw = [p.detach().clone() for _, p in self._trainable(pl_module)]
        self._assign(pl_module, self._average)
        self._average = raw
        self._swapped = not self._swapped

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and self._average:
            self._swap(pl_module)  # evaluate the average

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._swapped:  # after every on_validation_epoch_end (ParetoSweep's sweep)
            self._swap(pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Leave the average in the model (the end-of-fit sweep, a later save or export see it)
        and keep the raw weights in `final_raw` (to evaluate both on the same draws)."""
        self.final_raw = {n: p.detach().clone() for n, p in self._trainable(pl_module)}
        self._assign(pl_module, self._average)

    def load_final_raw(self, pl_module: pl.LightningModule) -> None:
        """Put the raw weights `fit` ended with back into `pl_module` (in place of the average)."""
        if not self.final_raw:
            raise RuntimeError("TrainableEMA.load_final_raw: no fit has ended with this callback")
        self._assign(pl_module, [self.final_raw[n] for n, _ in self._trainable(pl_module)])

    def state_dict(self) -> dict[str, Any]:
        return {"names": list(self._names), "average": self._average, "step": self._step}

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """The checkpoint's weights are the average; the raw ones go in the callback's state."""
        if not self._average:
            return
        weights = checkpoint["state_dict"]
        current = [weights[n].clone() for n in self._names]
        # mid-validation the model holds the average and `_average` the raw weights
        raw, average = (self._average, current) if self._swapped else (current, self._average)
        state = checkpoint["callbacks"][self.state_key]
        state["raw"] = [t.detach().clone() for t in raw]
        state["average"] = [t.detach().clone() for t in average]
        for name, avg in zip(self._names, state["average"], strict=True):
            weights[name] = avg.clone()

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if state is not None and "raw" in state:
            self._restored_raw = state["raw"]  # put back in on_train_start
