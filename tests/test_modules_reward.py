"""RewardModelModule / VectorRewardModel: training ranks pairs, cost head, save → load."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

import tiny
from panacea_pl.models import VectorRewardModel
from panacea_pl.modules import RewardModelModule


def train(module, rows, collate, tmp_path, steps=40):
    loader = DataLoader(rows, batch_size=4, collate_fn=collate)
    trainer = tiny.quiet_trainer(
        max_steps=steps,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, loader, loader)
    return trainer


@pytest.mark.slow
def test_reward_model_learns_the_pairs_and_saves_its_scorer(tiny_llama_dir, tmp_path):
    rows, collate = tiny.pair_rows(tiny_llama_dir)
    safety = [(0, 1), (1, 0), (1, 1), (-1, -1)]  # consistent with the harmless labels
    for row, safe in zip(rows, safety, strict=True):
        row["is_safe_a"], row["is_safe_b"] = safe
    model = VectorRewardModel(str(tiny_llama_dir), ["helpful", "harmless"], cost_head=True)
    module = RewardModelModule(
        model,
        cost_dimension="harmless",
        save_dir=str(tmp_path / "scorer"),
        optimizer=lambda p: torch.optim.Adam(p, lr=3e-3),
    )
    trainer = train(module, rows, collate, tmp_path)
    metrics = trainer.callback_metrics
    assert metrics["val/helpful/accuracy"] == 1.0 and metrics["val/harmless/accuracy"] == 1.0
    assert metrics["val/cost/safety_accuracy"] == 1.0 and metrics["val/cost/accuracy"] == 1.0

    batch = collate(rows)
    loaded = VectorRewardModel.load(tmp_path / "scorer")
    model.eval()
    with torch.no_grad():
        a = model(batch["input_ids"], batch["attention_mask"])
        b = loaded(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(a.scores, b.scores)
    torch.testing.assert_close(a.cost, b.cost)
    assert loaded.dimension_names == ["helpful", "harmless"]


def test_pooling_uses_the_last_real_token(tiny_gpt2_dir):
    rows, collate = tiny.pair_rows(tiny_gpt2_dir)
    model = VectorRewardModel(str(tiny_gpt2_dir), ["a"]).eval()
    batch = collate(rows)
    with torch.no_grad():
        padded = model(batch["input_ids"], batch["attention_mask"]).scores
        for i in range(batch["input_ids"].shape[0]):
            n = int(batch["attention_mask"][i].sum())
            alone = model(batch["input_ids"][i : i + 1, :n], batch["attention_mask"][i : i + 1, :n])
            torch.testing.assert_close(padded[i], alone.scores[0], rtol=1e-4, atol=1e-5)


def test_cost_dimension_must_match_the_head(tiny_llama_dir):
    with pytest.raises(ValueError, match="exactly when"):
        RewardModelModule(
            VectorRewardModel(str(tiny_llama_dir), ["helpful"]), cost_dimension="helpful"
        )


def test_an_optimiser_setting_torch_refuses_is_named_as_a_bad_input(tiny_llama_dir):
    from panacea_pl.data import ConfigError

    model = VectorRewardModel(str(tiny_llama_dir), ["helpful", "harmless"])
    module = RewardModelModule(model, optimizer=lambda p: torch.optim.Adam(p, lr=-1.0))
    with pytest.raises(ConfigError, match="RewardModelModule: optimizer: Invalid learning rate"):
        module.configure_optimizers()
