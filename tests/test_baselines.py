"""The paper's baselines: DPS members are PanaceaDPO at a fixed λ, rewarded soups interpolates
exactly, a collection is evaluated like each of its models alone, and the runner trains and logs
a front with its training compute."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import tiny
from panacea_pl.baselines import (
    DPSFront,
    DPSPolicy,
    FixedPreferenceDPO,
    RewardedSoupsFront,
    RewardedSoupsPolicy,
    load_members,
    run_dps,
    run_rewarded_soups,
)
from panacea_pl.evaluation import ImplicitRewardEvaluator
from panacea_pl.layers import PanaceaConfig, load_adapter, save_adapter
from panacea_pl.models import PanaceaPolicy, PreferencePolicy
from panacea_pl.modules import PanaceaDPO
from panacea_pl.objectives import MultiObjectiveDPOLoss
from panacea_pl.preference import simplex_grid

BETA = 0.5


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyPairs(pl.LightningDataModule):
    """The four tiny preference pairs as train and validation data (for YAML: class_path
    `test_baselines.TinyPairs`)."""

    dimension_names = ("helpful", "harmless")

    def __init__(self, model_dir: str, batch_size: int = 2):
        super().__init__()
        self.rows, self.collate = tiny.pair_rows(model_dir)
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(self.rows, batch_size=self.batch_size, collate_fn=self.collate)

    def val_dataloader(self):
        return DataLoader(self.rows, batch_size=self.batch_size, collate_fn=self.collate)


def new_policy(model_dir, seed: int = 0) -> PanaceaPolicy:
    torch.manual_seed(seed)  # the adapter's V initialisation
    return PanaceaPolicy(str(model_dir), adapter=PanaceaConfig(num_general=2, num_preferences=2))


def random_state(policy: PanaceaPolicy, seed: int) -> dict[str, torch.Tensor]:
    """A trained-looking adapter: every tensor (U, V, σ, s) perturbed."""
    gen = torch.Generator().manual_seed(seed)
    return {
        name: t + 0.3 * torch.randn(t.shape, generator=gen)
        for name, t in policy.adapter.state_dict().items()
    }


def with_state(model_dir, state) -> PanaceaPolicy:
    policy = new_policy(model_dir)
    with torch.no_grad():
        for name, param in policy.adapter.named_parameters():
            param.copy_(state[name])
    return policy


def logits(policy, batch, preference=None) -> torch.Tensor:
    with torch.no_grad():
        if preference is None:
            return policy(batch["input_ids"], batch["attention_mask"])
        with policy.preference(torch.tensor(preference)):
            return policy(batch["input_ids"], batch["attention_mask"])


def fit(module, model_dir, tmp_path, steps=3):
    data = TinyPairs(str(model_dir))
    trainer = tiny.quiet_trainer(
        max_steps=steps,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=data)
    return trainer


# ---- DPS member = PanaceaDPO at a fixed λ -------------------------------------------------------


class PanaceaAt(PanaceaDPO):
    """PanaceaDPO whose λ sampler always returns one λ."""

    def __init__(self, policy, lam, **kwargs):
        super().__init__(policy, **kwargs)
        self.lam = torch.tensor(lam)

    def sample_preference(self, batch_size):
        return self.lam.to(self.device)


def test_fixed_preference_dpo_is_panacea_dpo_at_that_lambda(tiny_llama_dir, tmp_path):
    lam = [0.3, 0.7]
    kwargs = {
        "loss": MultiObjectiveDPOLoss(beta=BETA),
        "optimizer": lambda p: torch.optim.Adam(p, lr=2e-2),
    }
    fixed = FixedPreferenceDPO(new_policy(tiny_llama_dir), preference=lam, **kwargs)
    panacea = PanaceaAt(new_policy(tiny_llama_dir), lam, **kwargs)
    assert fixed.sample_preference(4).tolist() == pytest.approx(lam)
    assert fixed.evaluation_preference().tolist() == pytest.approx(lam)  # val losses at its λ

    batch = TinyPairs(str(tiny_llama_dir)).collate(tiny.pair_rows(tiny_llama_dir)[0])
    with torch.no_grad():
        torch.testing.assert_close(
            fixed._shared_step(batch, "train"), panacea._shared_step(batch, "train")
        )
    fit(fixed, tiny_llama_dir, tmp_path / "fixed")
    fit(panacea, tiny_llama_dir, tmp_path / "panacea")
    trained = fixed.policy.adapter.state_dict()
    assert any(t.abs().sum() > 0 for n, t in trained.items() if n.endswith("panacea_U"))
    for name, tensor in panacea.policy.adapter.state_dict().items():
        torch.testing.assert_close(trained[name], tensor, rtol=0, atol=0)
    with pytest.raises(ValueError, match="one λ"):
        FixedPreferenceDPO(new_policy(tiny_llama_dir), preference=[[0.5, 0.5]])


# ---- rewarded soups -----------------------------------------------------------------------------


def test_rewarded_soups_interpolates_every_adapter_tensor(tiny_llama_dir, tmp_path):
    base = new_policy(tiny_llama_dir)
    states = [random_state(base, 1), random_state(base, 2)]
    dirs = []
    for i, state in enumerate(states):
        dirs.append(save_adapter(with_state(tiny_llama_dir, state).adapter, tmp_path / f"e{i}"))
    soup = RewardedSoupsPolicy.from_adapters(str(tiny_llama_dir), dirs)  # base loaded from disk
    assert isinstance(soup, PreferencePolicy) and not soup.accepts_row_preferences
    batch = TinyPairs(str(tiny_llama_dir)).collate(tiny.pair_rows(tiny_llama_dir)[0])

    for i, corner in enumerate(([1.0, 0.0], [0.0, 1.0])):
        alone = PanaceaPolicy(str(tiny_llama_dir), adapter_path=str(dirs[i]))
        got = logits(soup, batch, corner)
        assert torch.equal(got, logits(alone, batch, corner))  # member i, exactly
        for name, param in soup.base.adapter.named_parameters():
            assert torch.equal(param, states[i][name])

    half = [0.5, 0.5]
    average = {n: (states[0][n] + states[1][n]) / 2 for n in states[0]}
    got = logits(soup, batch, half)
    for name, param in soup.base.adapter.named_parameters():
        torch.testing.assert_close(param.detach(), average[name], rtol=0, atol=1e-7)
    assert soup.base.adapter.current_preference.tolist() == half  # the slots get λ itself
    torch.testing.assert_close(got, logits(with_state(tiny_llama_dir, average), batch, half))

    with pytest.raises(ValueError, match="one λ per forward pass"):
        soup.set_preference(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    with soup.reference():  # the base model
        torch.testing.assert_close(
            soup(batch["input_ids"], batch["attention_mask"]),
            tiny.load(tiny_llama_dir)(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits,
        )


# ---- a collection is evaluated like its models one by one ---------------------------------------


def test_collection_evaluates_like_each_model_alone(tiny_llama_dir):
    rows, collate = tiny.pair_rows(tiny_llama_dir)
    loader = DataLoader(rows, batch_size=2, collate_fn=collate)
    grid = simplex_grid(2, 2)
    base = new_policy(tiny_llama_dir)
    states = [random_state(base, 10 + k) for k in range(len(grid))]
    dps = DPSPolicy(base, grid, states)
    front = DPSFront(dps, loss=MultiObjectiveDPOLoss(beta=BETA), dimension_names=["a", "b"])
    together = ImplicitRewardEvaluator(pairs=loader).evaluate(front, grid)

    soup = RewardedSoupsPolicy(new_policy(tiny_llama_dir), [states[0], states[-1]])
    soup_front = RewardedSoupsFront(soup, loss=MultiObjectiveDPOLoss(beta=BETA))
    soup_result = ImplicitRewardEvaluator(pairs=loader).evaluate(soup_front, grid)

    for g, lam in enumerate(grid):
        alone = PanaceaDPO(
            with_state(tiny_llama_dir, states[g]),
            loss=MultiObjectiveDPOLoss(beta=BETA),
            dimension_names=["a", "b"],
        )
        result = ImplicitRewardEvaluator(pairs=loader).evaluate(alone, lam[None])
        np.testing.assert_array_equal(together.objectives[g], result.objectives[0])
        for key in ("a margin", "b margin"):
            np.testing.assert_allclose(together.columns[key][g], result.columns[key][0], rtol=1e-6)
        # rewarded soups at λ: a model holding Σ λ_i θ_i, evaluated alone
        mixed = {n: lam[0] * states[0][n] + lam[1] * states[-1][n] for n in states[0]}
        alone.policy = with_state(tiny_llama_dir, mixed)
        result = ImplicitRewardEvaluator(pairs=loader).evaluate(alone, lam[None])
        np.testing.assert_array_equal(soup_result.objectives[g], result.objectives[0])

    # DPS on a coarser grid serves an off-grid λ by its nearest member, or refuses if exact
    assert dps.member_for(torch.tensor([0.6, 0.4])) == 1
    with pytest.raises(ValueError, match="no DPS member"):
        DPSPolicy(base, grid, states, exact=True).set_preference([0.6, 0.4])


# ---- the runner: train from one config, log the front and the compute ---------------------------


def baseline_config(model_dir: Path, root: Path, kind: str) -> dict:
    return {
        "seed_everything": 0,
        "baseline": {"kind": kind, "num_threads": 1},
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 2,
            "log_every_n_steps": 1,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(root),
            "logger": [
                {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": str(root), "name": kind},
                }
            ],
            "callbacks": [
                {
                    "class_path": "panacea_pl.callbacks.ParetoSweep",
                    "init_args": {
                        "evaluator": {
                            "class_path": "panacea_pl.evaluation.ImplicitRewardEvaluator"
                        },
                        "divisions": 2,
                    },
                }
            ],
        },
        "model": {
            "class_path": "panacea_pl.baselines.FixedPreferenceDPO",
            "init_args": {
                "preference": [0.5, 0.5],
                "policy": {
                    "class_path": "panacea_pl.models.PanaceaPolicy",
                    "init_args": {
                        "model_name_or_path": str(model_dir),
                        "adapter": {"num_general": 2, "num_preferences": 2},
                    },
                },
                "loss": {
                    "class_path": "panacea_pl.objectives.MultiObjectiveDPOLoss",
                    "init_args": {"beta": BETA},
                },
                "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.02}},
            },
        },
        "data": {
            "class_path": "test_baselines.TinyPairs",
            "init_args": {"model_dir": str(model_dir)},
        },
    }


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_runner_trains_members_and_logs_the_front_and_compute(tiny_llama_dir, tmp_path):
    dps = run_dps(baseline_config(tiny_llama_dir, tmp_path, "dps"), verbose=False)
    assert [m.preference for m in dps.members] == simplex_grid(2, 2).tolist()
    assert dps.compute["members"] == 3 and dps.compute["train_steps"] == 6
    assert dps.compute["steps_per_member"] == 2 and dps.compute["train_seconds"] > 0

    # the same files and keys as a Panacea run's final sweep, plus the compute
    assert dps.log_dir == tmp_path / "dps" / "version_0"
    assert dps.plot == dps.log_dir / "pareto" / "final.png" and dps.plot.stat().st_size > 1000
    front = read_rows(dps.csv)
    assert len(front) == 3 and "helpful accuracy" in front[0]
    logged = {k: v for row in read_rows(dps.log_dir / "metrics.csv") for k, v in row.items() if v}
    for key in ("hypervolume", "inner_product", "sparsity", "spacing"):
        assert float(logged[f"pareto/{key}_final"]) == pytest.approx(dps.metrics[key])
    assert float(logged["compute/train_steps"]) == 6
    summary = json.loads(dps.summary.read_text())
    assert summary["compute"]["train_steps"] == 6 and "hypervolume" in summary["metrics"]
    assert (dps.log_dir / "config.yaml").is_file()

    # members: a CSV log each, adapters on disk; the manifest rebuilds the collection
    members_dir = tmp_path / "dps_members"
    assert (members_dir / "lambda-0.5-0.5" / "logs" / "version_0" / "metrics.csv").is_file()
    again = load_members(str(tiny_llama_dir), members_dir)
    assert isinstance(again, DPSPolicy)
    result = ImplicitRewardEvaluator(pairs=TinyPairs(str(tiny_llama_dir)).val_dataloader())
    result = result.evaluate(
        DPSFront(again, loss=MultiObjectiveDPOLoss(beta=BETA)), simplex_grid(2, 2)
    )
    np.testing.assert_allclose(result.objectives, dps.result.objectives)

    # a second run reuses the trained members (resume) and evaluates the same front
    rerun = run_dps(baseline_config(tiny_llama_dir, tmp_path, "dps"), verbose=False)
    assert all(m.reused for m in rerun.members) and rerun.compute["train_steps"] == 6
    np.testing.assert_allclose(rerun.result.objectives, dps.result.objectives)

    # ... unless what a member learns from changed: then it is trained again
    changed = run_dps(
        baseline_config(tiny_llama_dir, tmp_path, "dps"),
        ["--trainer.max_steps=3", "--baseline.preferences=[[0.5, 0.5]]"],
        verbose=False,
    )
    assert not changed.members[0].reused and changed.compute["train_steps"] == 3

    # rewarded soups from the same config: m members at the corners, trained exactly like DPS's
    rs = run_rewarded_soups(
        baseline_config(tiny_llama_dir, tmp_path, "rewarded_soups"), verbose=False
    )
    assert [m.preference for m in rs.members] == [[1.0, 0.0], [0.0, 1.0]]
    assert rs.compute["train_steps"] == 4
    for corner, dps_row in ((0, 0), (1, 2)):
        state = load_adapter(
            tiny.load(tiny_llama_dir),
            tmp_path / "rewarded_soups_members" / rs.members[corner].adapter,
        ).state_dict()
        same = load_adapter(
            tiny.load(tiny_llama_dir), members_dir / dps.members[dps_row].adapter
        ).state_dict()
        for name in state:
            assert torch.equal(state[name], same[name])
    np.testing.assert_allclose(rs.result.objectives[[0, 2]], dps.result.objectives[[0, 2]])
