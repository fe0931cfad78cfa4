"""ParetoSweep + ImplicitRewardEvaluator: the grid in per-sample batches, files, W&B offline."""

from __future__ import annotations

import csv
from dataclasses import replace

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from torch.utils.data import DataLoader

import tiny
from panacea_pl.callbacks import ParetoSweep
from panacea_pl.evaluation import FrontResult, ImplicitRewardEvaluator, plot_front
from panacea_pl.layers import PanaceaConfig
from panacea_pl.models import PanaceaPolicy
from panacea_pl.modules import PanaceaDPO
from panacea_pl.preference import simplex_grid


def module_and_loader(model_dir):
    rows, collate = tiny.pair_rows(model_dir)
    module = PanaceaDPO(
        PanaceaPolicy(str(model_dir), adapter=PanaceaConfig(num_general=4, num_preferences=2)),
        dimension_names=["helpful", "harmless"],
        optimizer=lambda p: torch.optim.Adam(p, lr=2e-2),
    )
    return module, DataLoader(rows, batch_size=2, collate_fn=collate)


def test_implicit_evaluator_matches_one_lambda_at_a_time(tiny_llama_dir):
    module, loader = module_and_loader(tiny_llama_dir)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in module.policy.adapter.layers.values():
            layer.panacea_U.copy_(torch.randn(layer.panacea_U.shape, generator=gen) * 0.3)
    grid = simplex_grid(2, 4)
    together = ImplicitRewardEvaluator(pairs=loader, max_rows=12).evaluate(module, grid)
    for g, lam in enumerate(grid):
        alone = ImplicitRewardEvaluator(pairs=loader).evaluate(module, lam[None])
        np.testing.assert_allclose(together.objectives[g], alone.objectives[0])
        np.testing.assert_allclose(
            together.columns["helpful margin"][g],
            alone.columns["helpful margin"][0],
            rtol=1e-4,
            atol=1e-6,
        )
    # accuracy is a fraction of the labelled pairs: helpful has 4, harmless 3
    assert set(np.round(together.objectives[:, 0] * 4, 6)) <= {0, 1, 2, 3, 4}
    assert set(np.round(together.objectives[:, 1] * 3, 6)) <= {0, 1, 2, 3}


@pytest.mark.slow
def test_sweep_logs_files_metrics_and_wandb_offline(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    module, loader = module_and_loader(tiny_llama_dir)
    sweep = ParetoSweep(ImplicitRewardEvaluator(pairs=loader), divisions=4)
    wandb_logger = WandbLogger(project="panacea-test", save_dir=str(tmp_path), offline=True)
    trainer = tiny.quiet_trainer(
        max_epochs=2,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        logger=[CSVLogger(tmp_path), wandb_logger],
        callbacks=[sweep],
    )
    trainer.fit(module, loader, loader)
    run_dir = wandb_logger.experiment.dir
    wandb_logger.experiment.finish()
    folder = tmp_path / "lightning_logs" / "version_0" / "pareto"
    for tag in ["epoch000", "epoch001", "final"]:
        assert (folder / f"{tag}.png").stat().st_size > 1000
        with (folder / f"{tag}.csv").open() as handle:
            rows = list(csv.reader(handle))
        assert rows[0][:4] == [
            "lambda_helpful accuracy",
            "lambda_harmless accuracy",
            "helpful accuracy",
            "harmless accuracy",
        ]
        assert len(rows) == 1 + 5
    for key in ["pareto/hypervolume", "pareto/inner_product", "pareto/sparsity", "pareto/spacing"]:
        assert key in trainer.callback_metrics
    assert 0.0 <= sweep.last_metrics["hypervolume"] <= 1.0
    summary = (tmp_path / "wandb").glob("offline-run-*/files/wandb-summary.json")
    assert any("pareto/hypervolume" in p.read_text() for p in summary) or run_dir


def test_plot_shapes(tmp_path):
    for m in (2, 3, 5):
        grid = simplex_grid(m, 3).numpy()
        result = FrontResult(
            preferences=grid,
            objectives=grid**0.5,
            objective_names=[f"f{i}" for i in range(m)],
            maximize=[True] * m,
            reference_point=np.full(m, -0.1),
            lower=np.zeros(m),
            upper=np.ones(m),
            optimum=grid**0.4,
            base=np.full(m, 0.3),
        )
        path = plot_front(result, tmp_path / f"m{m}.png")
        assert path.stat().st_size > 5000
        if m < 5:  # the base model's point is drawn (parallel coordinates have no point)
            without = plot_front(replace(result, base=None), tmp_path / f"m{m}-nobase.png")
            assert path.read_bytes() != without.read_bytes()
        assert result.metrics()["hypervolume"] > 0


@pytest.mark.parametrize("bad", [np.array([[np.nan, 1.0]])])
def test_non_finite_front_is_rejected(bad):
    result = FrontResult(
        preferences=np.array([[0.5, 0.5]]),
        objectives=bad,
        objective_names=["a", "b"],
        maximize=[True, True],
        reference_point=np.zeros(2),
        lower=np.zeros(2),
        upper=np.ones(2),
    )
    with pytest.raises(ValueError, match="finite"):
        result.metrics()
