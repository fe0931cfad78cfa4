"""The notebooks run end to end on small settings, on two short runs that this file trains
(PKU-SafeRLHF local config, linear scalarisation and Tchebycheff); and those runs read back with
`panacea_pl.evaluation.runs` and the W&B offline reader.

Each notebook's first code cell (tagged `parameters`) holds its settings; `execute` appends the
test's values to it."""

from __future__ import annotations

import csv
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
import wandb
from nbclient import NotebookClient

from panacea_pl.evaluation import load_policy, load_run
from panacea_pl.evaluation.runs import common_reference, front_from_table
from panacea_pl.loggers.wandb_offline import find_offline_runs, read_offline_run
from test_configs import EXPERIMENTS, SHORT_RUN, fit

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO_ROOT / "notebooks"
CONFIG = EXPERIMENTS / "pku_saferlhf/panacea_dpo_local.yaml"
SCHEMES = {"ls": "LinearScalarization", "tche": "Tchebycheff"}


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory, shared_data):
    """Environment for the runs and the notebook kernels: offline, the shared data, a fresh
    stories cache, one thread (the machine is shared and the models are tiny)."""
    env = {
        "PANACEA_DATA_DIR": str(shared_data),
        "PANACEA_CACHE_DIR": str(tmp_path_factory.mktemp("panacea_cache")),
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield env


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, kernel_env) -> dict[str, Path]:
    """Two 2-step `fit`s of the PKU local config, one per aggregation scheme, each in its own
    folder (absolute logger folders: W&B's service keeps the working directory it started in)."""
    root = tmp_path_factory.mktemp("runs")
    shipped = CONFIG.read_text()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        for name, scheme in SCHEMES.items():
            config = root / f"{name}.yaml"
            config.write_text(shipped.replace("runs/pku_saferlhf_local", str(root / name)))
            aggregator = f"--model.init_args.aggregator.class_path=panacea_pl.objectives.{scheme}"
            fit(config, root, aggregator)
            wandb.finish()
            runs[name] = root / name
    torch.set_num_threads(threads)
    runs["cache"] = root / "cache"
    return runs


def execute(name: str, settings: dict, cwd: Path, timeout: int = 120) -> nbformat.NotebookNode:
    """Run a notebook with `settings` overriding its `parameters` cell; return it executed."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    overrides = "\n".join(f"{key} = {value!r}" for key, value in settings.items())
    cell.source += f"\n# the test's settings\n{overrides}\n"
    client = NotebookClient(
        notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": cwd}}
    )
    client.execute()
    return notebook


def text_output(notebook: nbformat.NotebookNode) -> str:
    parts = []
    for cell in notebook.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def test_committed_notebooks_have_no_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, path.name
        tags = [c.metadata.get("tags", []) for c in notebook.cells if c.cell_type == "code"]
        assert "parameters" in tags[0], f"{path.name}: the first code cell holds the settings"


def test_front_tables_and_common_reference():
    columns = ["lambda_a", "lambda_b", "a", "b", "a se"]
    front = front_from_table(columns, [[1, 0, 0.9, 0.1, 0.01], [0, 1, 0.2, 0.5, 0.02]])
    assert front.objective_names == ["a", "b"]
    np.testing.assert_allclose(front.reference_point, [0.2 - 0.07, 0.1 - 0.04])
    np.testing.assert_allclose(front.columns["a se"], [0.01, 0.02])
    np.testing.assert_allclose(
        common_reference([np.array([[1.0, 4.0]]), np.array([[3.0, 2.0]])], [True, False]),
        [1.0 - 0.2, 4.0 + 0.2],
    )
    with pytest.raises(ValueError, match="not a front table"):
        front_from_table(["a", "lambda_a"], [[1.0, 1.0]])


@pytest.mark.slow
def test_runs_read_back(two_runs):
    for name, scheme in SCHEMES.items():
        run = load_run(two_runs[name])
        assert run.scheme == scheme and run.steps == 2
        assert run.dimension_names == ["helpful", "harmless"]
        assert run.front_path.name == "final.csv" and 0.0 <= run.metrics["hypervolume"] <= 1.0
        # the W&B offline run is found and agrees with the CSV logger
        assert run.wandb is not None and run.wandb.name == "pku-saferlhf-local-panacea-dpo"
        assert run.wandb.summary["pareto/hypervolume"] == pytest.approx(run.metrics["hypervolume"])
        assert run.wandb.history and run.wandb.config["seed"] == 0
        np.testing.assert_allclose(run.wandb_front().objectives, run.front().objectives)
        # the policy comes back with the checkpoint's adapter
        policy = load_policy(run)
        state = torch.load(run.checkpoint, weights_only=True)["state_dict"]
        for key, value in policy.state_dict().items():
            if f"policy.{key}" in state:
                torch.testing.assert_close(value, state[f"policy.{key}"])
        assert not policy.training and policy.num_preferences == 2
    assert len(find_offline_runs(two_runs["ls"])) == 1
    with pytest.raises(FileNotFoundError, match="no run-"):
        read_offline_run(two_runs["ls"])


@pytest.mark.slow
def test_quickstart_notebook_trains_loads_and_plots(two_runs, kernel_env, tmp_path):
    """No run in the working folder: the notebook trains two steps, loads the adapter back,
    generates for three λ in one batch and plots the front."""
    settings = {
        "RUN_DIR": None,
        "TRAIN_STEPS": 2,
        "TRAIN_ARGS": [*SHORT_RUN, f"--data.init_args.cache_dir={two_runs['cache']}"],
        "PROMPTS": ["Ben had a red ball.", "Lucy lost her favorite toy."],
        "NUM_LAMBDAS": 3,
        "MAX_NEW_TOKENS": 12,
        "OUTPUT_DIR": str(tmp_path / "out"),
    }
    notebook = execute("quickstart.ipynb", settings, tmp_path)
    text = text_output(notebook)
    assert "training 2 steps" in text
    assert text.count("λ = (helpful 0.50, harmless 0.50)") == 2  # once per prompt
    assert (tmp_path / "out/front.png").stat().st_size > 5000
    with (tmp_path / "out/stories_by_lambda.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["λ helpful"]) for r in rows] == [1.0, 0.5, 0.0]
    assert (tmp_path / "runs/pku_saferlhf_local/panacea_dpo/version_0/checkpoints").is_dir()


@pytest.mark.slow
def test_analysis_notebook_compares_schemes(two_runs, kernel_env, tmp_path):
    settings = {
        "RUN_DIRS": [str(two_runs["ls"]), str(two_runs["tche"])],
        "LABELS": None,
        "OUTPUT_DIR": str(tmp_path / "out"),
    }
    execute("analysis.ipynb", settings, tmp_path)
    with (tmp_path / "out/comparison.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted({r["scheme"] for r in rows}) == sorted(SCHEMES.values())
    sources = sorted(r["source"].split()[0] for r in rows)
    assert sources == ["W&B", "W&B", "metrics.csv", "metrics.csv"]
    for scheme in SCHEMES.values():
        values = {float(r["hypervolume"]) for r in rows if r["scheme"] == scheme}
        assert len(values) == 1  # the CSV logger and W&B agree
        assert float(next(r for r in rows if r["scheme"] == scheme)["hypervolume @ common ref"]) > 0
    assert (tmp_path / "out/fronts.png").stat().st_size > 5000
