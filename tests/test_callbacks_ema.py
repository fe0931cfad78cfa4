"""TrainableEMA: the average's values by hand, the swap for validation, the weights left after fit,
and a resumed run that continues both the raw and the averaged weights."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from panacea_pl.callbacks import TrainableEMA


class Slope(pl.LightningModule):
    """One trainable weight w (from 0) with loss w and SGD at lr 1: w_t = −t after t steps; a
    frozen weight that must not be averaged; `steps_per_batch` optimiser steps per batch
    (manual optimisation, as the on-policy modules)."""

    def __init__(self, steps_per_batch: int = 1):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.frozen = torch.nn.Parameter(torch.ones(()), requires_grad=False)
        self.steps_per_batch = steps_per_batch
        self.automatic_optimization = steps_per_batch == 1
        self.seen_in_validation: list[float] = []

    def training_step(self, batch, batch_idx):
        if self.automatic_optimization:
            return self.w * self.frozen
        opt = self.optimizers()
        for _ in range(self.steps_per_batch):
            opt.zero_grad()
            self.manual_backward(self.w * self.frozen)
            opt.step()

    def validation_step(self, batch, batch_idx):
        self.seen_in_validation.append(float(self.w))

    def configure_optimizers(self):
        return torch.optim.SGD([self.w], lr=1.0)

    def train_dataloader(self):
        return DataLoader(torch.zeros(64, 1), batch_size=1)

    def val_dataloader(self):
        return DataLoader(torch.zeros(1, 1), batch_size=1)


def value(parameter: torch.Tensor) -> float:
    return parameter.detach().item()


def _trainer(tmp_path, ema, max_steps, **kwargs) -> pl.Trainer:
    defaults = dict(
        max_steps=max_steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
    )
    return pl.Trainer(callbacks=[ema], **{**defaults, **kwargs})


def test_the_average_after_two_steps_is_the_hand_computed_one(tmp_path):
    # w1 = −1, w2 = −2; warm-up decays 1/10 then 2/11 (below 0.9):
    # a1 = 0.1·0 + 0.9·(−1) = −0.9, a2 = (2/11)(−0.9) + (9/11)(−2) = −1.8
    module, ema = Slope(), TrainableEMA(decay=0.9)
    trainer = _trainer(tmp_path, ema, max_steps=2)
    trainer.fit(module)
    assert value(module.w) == pytest.approx(-1.8)  # fit leaves the average in the model
    assert value(module.frozen) == 1.0
    assert ema.state_dict()["names"] == ["w"]  # the frozen weight is not averaged


def test_the_decay_caps_the_warm_up_and_steps_within_a_batch_count(tmp_path):
    def expected(steps: int, decay: float, per_batch: int) -> float:
        average, t = 0.0, 0
        while t < steps:
            keep = 1.0
            for _ in range(per_batch):
                keep *= min(decay, (1 + t) / (10 + t))
                t += 1
            average = keep * average + (1 - keep) * -t
        return average

    for per_batch in (1, 3):
        module, ema = Slope(per_batch), TrainableEMA(decay=0.5)
        _trainer(tmp_path, ema, max_steps=30).fit(module)
        assert value(module.w) == pytest.approx(expected(30, 0.5, per_batch))
    # per_batch = 3: once per batch, weighted as the three steps' product of decays
    assert expected(3, 0.5, 3) == pytest.approx(-(1 - 0.1 * 2 / 11 * 3 / 12) * 3)


def test_validation_sees_the_average_and_training_goes_on_from_the_raw_weights(tmp_path):
    module, ema = Slope(), TrainableEMA(decay=0.9)
    trainer = _trainer(tmp_path, ema, max_steps=4, limit_val_batches=1, val_check_interval=2)
    trainer.fit(module)
    # at step 2 the average is −1.8 (above); by step 4 the raw weight is −4, not −1.8 − 2
    assert module.seen_in_validation[0] == pytest.approx(-1.8)
    a3 = 3 / 12 * -1.8 + 9 / 12 * -3
    a4 = 4 / 13 * a3 + 9 / 13 * -4
    assert module.seen_in_validation[1] == pytest.approx(a4)
    assert value(module.w) == pytest.approx(a4)
    ema.load_final_raw(module)  # the raw weights fit ended with
    assert value(module.w) == pytest.approx(-4.0)


@pytest.mark.filterwarnings("ignore:.*when using `ckpt_path`:UserWarning")
@pytest.mark.filterwarnings("ignore:.*dataloader is not resumable:UserWarning")
def test_a_checkpoint_holds_the_average_and_resuming_continues_both(tmp_path):
    straight = Slope()
    _trainer(tmp_path / "straight", TrainableEMA(decay=0.8), max_steps=8).fit(straight)

    first, ema = Slope(), TrainableEMA(decay=0.8)
    trainer = _trainer(tmp_path / "first", ema, max_steps=4)
    trainer.fit(first)
    path = tmp_path / "four.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    assert float(checkpoint["state_dict"]["w"]) == pytest.approx(value(first.w))  # the average

    # a checkpoint taken mid-run (raw weight −4) keeps the raw weight for resuming
    mid = Slope()
    mid_ema = TrainableEMA(decay=0.8)
    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4)
    trainer = pl.Trainer(
        callbacks=[mid_ema, saver],
        max_steps=4,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path / "mid",
    )
    trainer.fit(mid)
    saved = torch.load(saver.best_model_path or saver.last_model_path, weights_only=False)
    state = saved["callbacks"][mid_ema.state_key]
    assert float(state["raw"][0]) == pytest.approx(-4.0)
    assert float(saved["state_dict"]["w"]) == pytest.approx(float(state["average"][0]))

    resumed = Slope()
    trainer = _trainer(tmp_path / "resumed", TrainableEMA(decay=0.8), max_steps=8)
    trainer.fit(resumed, ckpt_path=saver.best_model_path or saver.last_model_path)
    assert value(resumed.w) == pytest.approx(value(straight.w))


def test_bad_settings_say_what_was_expected():
    with pytest.raises(ValueError, match=r"decay must be in \(0, 1\), got 1.0"):
        TrainableEMA(decay=1.0)
    with pytest.raises(ValueError, match="start_step must be >= 0, got -1"):
        TrainableEMA(start_step=-1)
    with pytest.raises(RuntimeError, match="no fit has ended with this callback"):
        TrainableEMA().load_final_raw(Slope())


def test_resuming_a_module_that_trains_other_parameters_names_them(tmp_path):
    ema = TrainableEMA()
    _trainer(tmp_path, ema, max_steps=1).fit(Slope())
    state = {"names": ["policy.adapter.s"], "average": [torch.zeros(())], "step": 3}
    with pytest.raises(ValueError, match=r"only in the checkpoint: \['policy.adapter.s'\]"):
        ema.load_state_dict(state)
