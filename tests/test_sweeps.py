"""The W&B sweeps of experiments/sweeps/: each is a well-formed sweep whose command lines (built
with wandb's own agent code) the CLI accepts, every parameter value landing where the sweep
means it to; one combination of each trains for a few steps on the stories benchmark and logs
the sweep's metric to the W&B summary."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import wandb
import yaml
from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

import stories_small
from panacea_pl.cli import run_lightning_cli
from panacea_pl.loggers import find_offline_runs, read_offline_run

REPO_ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted(p.name for p in (REPO_ROOT / "experiments" / "sweeps").glob("*.yaml"))
assert SWEEPS, "experiments/sweeps/ holds no sweep"
METHODS = {"grid", "random", "bayes"}
STEPS = 3


def load(name: str) -> dict:
    return yaml.safe_load((REPO_ROOT / "experiments" / "sweeps" / name).read_text())


def parameter_values(spec: dict) -> list:
    """Values that cover a parameter: its `values`, its `value`, or a distribution's bounds."""
    if "values" in spec:
        return list(spec["values"])
    if "value" in spec:
        return [spec["value"]]
    return [spec["min"], spec["max"]]


def covering_assignments(sweep: dict) -> list[dict]:
    """As many assignments as the longest value list; together they use every value."""
    values = {name: parameter_values(spec) for name, spec in sweep["parameters"].items()}
    longest = max(len(v) for v in values.values())
    return [{n: v[i % len(v)] for n, v in values.items()} for i in range(longest)]


def agent_command(sweep: dict, assignment: dict) -> list[str]:
    """The command line W&B's agent runs for `assignment` (wandb_agent.Agent._command_run),
    with `${env}` left out and `--config` paths made absolute."""
    variables = create_sweep_command_args(
        {"args": {k: {"value": v} for k, v in assignment.items()}}
    )
    variables |= {"env": [], "program": [sweep["program"]], "interpreter": ["python"]}
    command = []
    for chunk in create_sweep_command(list(sweep["command"])):
        chunk = str(chunk)
        if chunk.startswith("${") and chunk.endswith("}"):
            command += variables.get(chunk[2:-1]) or []
        else:
            command.append(chunk)
    for i, chunk in enumerate(command[:-1]):
        if chunk == "--config":
            command[i + 1] = str(REPO_ROOT / command[i + 1])
    return command


def lookup(config: dict, dotted: str):
    """The value at a dotted CLI key; a key given for a class's arguments directly (as the
    adapter's `...adapter.num_general`) is read under the parsed `init_args`."""
    node = config
    for key in dotted.split("."):
        node = node[key] if key in node else node["init_args"][key]
    return node


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_is_well_formed(name):
    sweep = load(name)
    assert sweep["method"] in METHODS
    assert sweep["metric"]["goal"] in ("maximize", "minimize")
    assert sweep["metric"]["name"].startswith("pareto/")  # logged by ParetoSweep
    command = sweep["command"]
    assert command[:3] == ["${env}", "panacea-pl", "fit"] and command[-1] == "${args}"
    config = command[command.index("--config") + 1]
    assert (REPO_ROOT / config).is_file(), config
    for parameter, spec in sweep["parameters"].items():
        assert len({"values", "value", "distribution"} & set(spec)) == 1, parameter
        if sweep["method"] == "grid":
            assert "values" in spec, f"a grid sweep needs values for {parameter}"
        if "distribution" in spec:
            assert spec["distribution"] in ("log_uniform_values", "uniform", "q_uniform")
            assert 0 < spec["min"] < spec["max"], parameter
    if sweep["method"] != "grid":
        assert sweep.get("run_cap", 0) > 0, "a random or Bayesian sweep needs a run_cap"
    names = set(sweep["parameters"])
    assert {
        "model.init_args.aggregator.class_path",
        "model.init_args.loss.init_args.beta",
        "model.init_args.policy.init_args.adapter.num_general",
        "model.init_args.preference_alpha",
    } <= names, "the sweeps compare aggregation × β × rank × Dirichlet α"


@pytest.mark.slow
@pytest.mark.parametrize("name", SWEEPS)
def test_every_value_parses_with_the_cli(name, capsys, monkeypatch, shared_data):
    """The real `fit` parser reads the agent's command line; each value lands at its key."""
    monkeypatch.setenv("PANACEA_DATA_DIR", str(shared_data))
    sweep = load(name)
    for assignment in covering_assignments(sweep):
        command = agent_command(sweep, assignment)
        assert command[0] == sweep["program"] == "panacea-pl"
        with pytest.raises(SystemExit) as exit_info:
            run_lightning_cli(command[1:] + ["--print_config"])
        assert exit_info.value.code in (0, None)
        parsed = yaml.safe_load(capsys.readouterr().out)
        for key, value in assignment.items():
            got = lookup(parsed, key)
            assert got == pytest.approx(value) if isinstance(value, float) else got == value, key


@pytest.fixture
def stories_run_dir(tmp_path_factory, tmp_path, monkeypatch, shared_data) -> Path:
    monkeypatch.setenv("PANACEA_CACHE_DIR", str(stories_small.cache_root(tmp_path_factory)))
    monkeypatch.setenv("PANACEA_DATA_DIR", str(shared_data))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    # wandb's service process resolves the config's relative `save_dir` against its own working
    # folder: start a fresh one here, so this run's files land in this test's folder
    wandb.teardown()
    yield tmp_path
    wandb.finish()


@pytest.mark.slow
@pytest.mark.parametrize("name", SWEEPS)
def test_one_combination_trains_on_the_stories_benchmark(name, stories_run_dir):
    """The first combination of the sweep, over the stories config (the 7B sweep's values too:
    the keys are the same), a few steps on the small benchmark."""
    sweep = load(name)
    assignment = covering_assignments(sweep)[0]
    command = agent_command(sweep, assignment)
    config = command.index("--config") + 1
    command[config] = str(stories_small.STORIES_CONFIG)
    small = stories_small.small_config(stories_run_dir / "small.yaml", max_steps=STEPS)
    cli = run_lightning_cli(command[1:] + ["--config", str(small)])

    assert cli.trainer.global_step == STEPS
    model = cli.model
    aggregator = assignment["model.init_args.aggregator.class_path"].rsplit(".", 1)[1]
    assert type(model.aggregator).__name__ == aggregator
    assert model.loss.beta == pytest.approx(assignment["model.init_args.loss.init_args.beta"])
    rank = assignment["model.init_args.policy.init_args.adapter.num_general"]
    assert model.policy.adapter.config.num_general == rank
    alpha = assignment["model.init_args.preference_alpha"]
    assert model.sampler.alpha.tolist() == pytest.approx([alpha, alpha])

    wandb.finish()
    wandb.teardown()  # stop the service process, so the run file is flushed and closed
    (run_dir,) = find_offline_runs(stories_run_dir / "runs" / "stories")
    key = sweep["metric"]["name"]
    summary = read_offline_run(run_dir).summary
    deadline = time.monotonic() + 30
    while key not in summary and time.monotonic() < deadline:  # a busy machine writes late
        time.sleep(0.5)
        summary = read_offline_run(run_dir).summary
    assert math.isfinite(summary[key]), sorted(summary)
