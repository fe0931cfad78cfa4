"""Every `panacea-pl` command, run as a user runs it: in a process of its own, its exit status,
the files it writes and what it prints.

One small stories run (`stories_small`) is trained once per module by the installed console
script and then validated, resumed by a checkpoint file's path (the README's instruction) and
by `last`, and fed bad inputs. Those later commands run in processes forked from one
interpreter that has imported what the console script imports (`cli_server`), so each skips
the few seconds of importing torch and Lightning; they run the same `main()` on the same
arguments, folder and environment, and their logs include what the import printed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import stories_small
from cli_server import CLIServer

pytestmark = pytest.mark.slow

PANACEA_PL = Path(sys.executable).with_name("panacea-pl")
CONFIG = str(stories_small.STORIES_CONFIG)
GRPO = str(stories_small.REPO_ROOT / "experiments/stories/panacea_grpo.yaml")  # make demo's
#: Library chatter that `panacea-pl` must not print (see `panacea_pl.console`).
NOISE = (
    "args parameter is intended",
    "💡 Tip",
    "LeafSpec",
    "Epoch 0/-2",
    "git root",
    "anonymous setting",
    "Total length of `list`",
    "in eval mode at the start of training",
    "Traceback",
)


class Result:
    """A command's exit status and its stdout+stderr, as `subprocess.CompletedProcess` has."""

    def __init__(self, returncode: int, out: str):
        self.returncode, self.out = returncode, out


_SERVER: list[tuple[CLIServer, dict]] = []  # the session's server and this module's variables


def panacea_pl(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> Result:
    """`panacea-pl ARGS` forked from the session's CLI server (see `cli_server`), with this
    module's variables (the `workdir` fixture's) and `env`."""
    ((server, module_env),) = _SERVER
    env = {**module_env, **(env or {})}
    return Result(*server.run(list(args), cwd=cwd, env=env, timeout=timeout))


def console_script(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300):
    """Run the installed console script; returns the CompletedProcess with stdout+stderr in
    `.out`."""
    assert PANACEA_PL.is_file(), f"console script not installed at {PANACEA_PL}"
    proc = subprocess.run(
        [str(PANACEA_PL), *args],
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    proc.out = proc.stdout
    return proc


def assert_quiet(output: str) -> None:
    for noise in NOISE:
        assert noise not in output, f"console shows {noise!r}:\n{output}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, shared_data, panacea_cli):
    root = tmp_path_factory.mktemp("entry_points")
    stories_small.small_config(root / "small.yaml", max_steps=3)
    bigger = yaml.safe_load((root / "small.yaml").read_text())
    bigger["trainer"]["max_steps"] = 5
    (root / "small5.yaml").write_text(yaml.safe_dump(bigger))
    # set for this module's commands only: a later test's default stories cache stays the user's
    env = {"PANACEA_CACHE_DIR": str(stories_small.cache_root(tmp_path_factory))}
    if "PANACEA_DATA_DIR" not in os.environ:
        env["PANACEA_DATA_DIR"] = str(shared_data)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)  # for the console script's own processes
        _SERVER.append((panacea_cli, env))
        yield root
        _SERVER.clear()


@pytest.fixture(scope="module")
def trained_run(workdir) -> Path:
    """`panacea-pl fit` for 3 steps with the default checkpointing, by the installed console
    script: returns the run folder."""
    proc = console_script("fit", "--config", CONFIG, "--config", "small.yaml", cwd=workdir)
    assert proc.returncode == 0, proc.out
    assert_quiet(proc.out)
    runs = sorted((workdir / "runs" / "stories" / "panacea_dpo").glob("version_*"))
    assert runs, proc.out
    return runs[-1]


def test_fit_writes_config_metrics_and_last_checkpoint(trained_run):
    assert (trained_run / "config.yaml").is_file() and (trained_run / "metrics.csv").is_file()
    assert (trained_run / "checkpoints" / "last.ckpt").is_file()  # the README's resume file
    assert (trained_run / "pareto" / "final.csv").is_file()


def test_validate_and_resume_by_checkpoint_path(workdir, trained_run):
    last = trained_run / "checkpoints" / "last.ckpt"
    proc = panacea_pl(
        "validate", "--config", CONFIG, "--config", "small.yaml", "--ckpt_path", str(last),
        cwd=workdir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.out
    assert "val/loss" in proc.out
    assert_quiet(proc.out)

    # the README's command: the same config, more steps, --ckpt_path <run>/checkpoints/last.ckpt
    proc = panacea_pl(
        "fit", "--config", CONFIG, "--config", "small5.yaml", "--ckpt_path", str(last),
        cwd=workdir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.out
    assert "Restored all states" in proc.out and "max_steps=5" in proc.out
    assert_quiet(proc.out)


def test_resume_by_last_with_a_fixed_checkpoint_folder(workdir):
    fixed = {
        "trainer": {
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": "fixed_ckpts", "save_last": True},
                }
            ]
        }
    }
    (workdir / "fixed.yaml").write_text(yaml.safe_dump(fixed))
    first = panacea_pl(
        "fit", "--config", CONFIG, "--config", "small.yaml", "--config", "fixed.yaml",
        cwd=workdir,
    )  # fmt: skip
    assert first.returncode == 0, first.out
    proc = panacea_pl(
        "fit", "--config", CONFIG, "--config", "small5.yaml", "--config", "fixed.yaml",
        "--ckpt_path", "last", cwd=workdir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.out
    assert "Restored all states" in proc.out


def test_bad_checkpoints_get_one_clear_message(workdir, trained_run):
    last = trained_run / "checkpoints" / "last.ckpt"
    half = workdir / "half.ckpt"
    half.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    noise = workdir / "noise.ckpt"
    noise.write_bytes(os.urandom(4096))
    for path in (half, noise):
        proc = panacea_pl(
            "fit", "--config", CONFIG, "--config", "small5.yaml", "--ckpt_path", str(path),
            cwd=workdir,
        )  # fmt: skip
        assert proc.returncode == 2, proc.out
        assert f"checkpoint {path}" in proc.out and "truncated or corrupt" in proc.out
        assert "weights_only=False" not in proc.out  # never suggest an unsafe load
        assert_quiet(proc.out)

    # a k = 0 checkpoint resumed into a k = 4 config: the settings and shapes that differ
    proc = panacea_pl(
        "fit", "--config", CONFIG, "--config", "small5.yaml", "--ckpt_path", str(last),
        "--model.init_args.policy.init_args.adapter.num_general=4", cwd=workdir,
    )  # fmt: skip
    assert proc.returncode == 2, proc.out
    assert "num_general=0 in the checkpoint, 4 in the config" in proc.out
    assert "differ in shape" in proc.out and "panacea_U" in proc.out


def test_m_that_disagrees_across_the_config_fails_before_the_model_loads(workdir):
    proc = panacea_pl(
        "fit", "--config", CONFIG, "--config", "small.yaml",
        "--model.init_args.policy.init_args.adapter.num_preferences=3", cwd=workdir,
    )  # fmt: skip
    assert proc.returncode == 2, proc.out
    assert "disagrees on the number of preference dimensions" in proc.out
    assert (
        "adapter.init_args.num_preferences = 3" in proc.out
        and "data.init_args.num_dimensions = 2" in proc.out
    )
    assert "Loading weights" not in proc.out  # nothing was loaded


@pytest.mark.parametrize(
    "setting, message",
    [
        # a batch of 8 of the 4 prompts would quietly be a batch of 4
        ("--data.init_args.batch_size=8", "batch_size = 8 prompts, but the benchmark has "),
        ("--model.init_args.kl_coef=-1", "PanaceaGRPO: kl_coef must be a finite number >= 0"),
        # torch refuses it when the optimiser is built, inside fit
        ("--model.init_args.optimizer.init_args.lr=-1", "optimizer or scheduler: Invalid learning"),
    ],
)
def test_a_constructor_that_refuses_its_arguments_is_one_message(workdir, setting, message):
    """Not jsonargparse's traceback around it ("Does not validate against any of the Union
    subtypes"), which is what `panacea-pl` printed before."""
    small_rloo(workdir)
    proc = panacea_pl("fit", "--config", GRPO, "--config", "small_rloo.yaml", setting, cwd=workdir)
    assert proc.returncode == 2, proc.out
    assert "panacea-pl: error: " in proc.out and message in proc.out
    assert "Traceback" not in proc.out and "Union subtypes" not in proc.out


def test_a_users_own_module_in_a_layered_config(workdir):
    """`--config experiments/stories/panacea_dpo.yaml --config mine.yaml`, where mine.yaml sets
    the module, its loss and its aggregator to classes in the user's own module, outside the
    package."""
    package = workdir / "user_code"
    package.mkdir(exist_ok=True)
    (package / "my_modules.py").write_text(
        textwrap.dedent(
            '''
            from pathlib import Path

            from panacea_pl.modules import PanaceaDPO
            from panacea_pl.objectives import Aggregator, PreferenceLoss

            CALLS = {"loss": 0, "aggregator": 0}


            class MarkedDPO(PanaceaDPO):
                """A user's module: writes a marker when it trains."""

                def __init__(self, *args, marker: str = "marker.txt", **kwargs):
                    super().__init__(*args, **kwargs)
                    self.marker = marker

                def on_train_end(self):
                    Path(self.marker).write_text(f"{self.global_step} {CALLS}")


            class HingeLoss(PreferenceLoss):
                """A user's per-dimension loss: max(0, 1 − β·y·h)."""

                def pair_loss(self, h, y):
                    CALLS["loss"] += 1
                    return (1 - self.beta * y * h).clamp(min=0)


            class SquaredLS(Aggregator):
                """A user's aggregator: Σ λ_i L_i²."""

                def aggregate(self, losses, preference, mask):
                    CALLS["aggregator"] += 1
                    return (preference * losses**2).masked_fill(~mask, 0).sum(-1)
            '''
        )
    )
    mine = {
        "model": {
            "class_path": "my_modules.MarkedDPO",
            "init_args": {
                "marker": "m.txt",
                "loss": {"class_path": "my_modules.HingeLoss", "init_args": {"beta": 0.5}},
                "aggregator": {"class_path": "my_modules.SquaredLS"},
            },
        }
    }
    (workdir / "mine.yaml").write_text(yaml.safe_dump(mine))
    proc = panacea_pl(
        "fit", "--config", CONFIG, "--config", "small.yaml", "--config", "mine.yaml",
        cwd=workdir, env={"PYTHONPATH": str(package)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.out
    steps, calls = (workdir / "m.txt").read_text().split(" ", 1)
    assert steps == "3"  # the user's module trained, with the user's loss and aggregator:
    assert "'loss': 0" not in calls and "'aggregator': 0" not in calls, calls

    # a module of ours, swapped in the same way, parses too
    sft = {"model": {"class_path": "panacea_pl.modules.PanaceaSFT"}}
    (workdir / "sft.yaml").write_text(yaml.safe_dump(sft))
    proc = panacea_pl(
        "fit", "--config", CONFIG, "--config", "small.yaml", "--config", "sft.yaml",
        "--print_config", cwd=workdir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.out
    assert "panacea_pl.modules.PanaceaSFT" in proc.out


def test_demo_shrunk(workdir):
    """`make demo` runs the installed `panacea-pl demo`: so does this test."""
    proc = console_script(
        "demo", "--config", CONFIG, "--config", "small.yaml", "--max-steps", "2", "--runs", "1",
        cwd=workdir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.out
    assert "[3/3] the front" in proc.out and "hypervolume ratio" in proc.out
    assert re.search(r"front ordered like λ .*: happy -?[01]\.\d\d, sad -?[01]\.\d\d", proc.out)
    # the base model's numbers come from the final sweep's own base rows: no sweep before training
    assert re.search(r"optimal front: \d\.\d{3} \(base model\) -> \d\.\d{3} \(Panacea\)", proc.out)
    assert re.search(r"mean regret: \d\.\d{4} -> \d\.\d{4}", proc.out)
    assert_quiet(proc.out)


def small_rloo(workdir: Path) -> Path:
    """`small_rloo.yaml` in `workdir`: the RLOO recipe shrunk (2 stories per prompt, 4 prompts,
    8 new tokens) with its weight average and a 3-point sweep on the small benchmark."""
    sweep = yaml.safe_load((workdir / "small.yaml").read_text())["trainer"]["callbacks"][0]
    sweep["init_args"]["sweep_on_fit_start"] = False
    small = {
        "trainer": {
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "callbacks": [
                sweep,
                {"class_path": "panacea_pl.callbacks.TrainableEMA", "init_args": {"decay": 0.9}},
            ],
        },
        "model": {"init_args": {"group_size": 2, "max_new_tokens": 8, "minibatch_size": 4}},
        "data": {"init_args": {"num_prompts": 4, "batch_size": 4}},
    }
    (workdir / "small_rloo.yaml").write_text(yaml.safe_dump(small))
    return workdir / "small_rloo.yaml"


def test_demo_says_which_of_its_runs_failed_and_where_its_output_is(workdir):
    """A run that exits non-zero (here: a setting its module refuses) ends the demo with exit
    status 1, naming the run, its status and where its console output went; nothing is averaged."""
    small_rloo(workdir)
    (workdir / "bad_kl.yaml").write_text(yaml.safe_dump({"model": {"init_args": {"kl_coef": -1}}}))
    proc = console_script(
        "demo", "--config", GRPO, "--config", "small_rloo.yaml", "--config", "bad_kl.yaml",
        "--max-steps", "2", cwd=workdir,
    )  # fmt: skip
    assert proc.returncode == 1, proc.out
    failed = re.search(r"the run from seed ([01]) \((\S+)\) exited with status 2", proc.out)
    assert failed, proc.out
    where = "above" if failed.group(1) == "0" else f"{failed.group(2)}.log"
    assert f"its console output is {where}" in proc.out
    assert "PanaceaGRPO: kl_coef must be a finite number >= 0" in proc.out  # seed 0's console
    assert "averaged the" not in proc.out


def test_demo_on_its_default_rloo_recipe_shrunk(workdir):
    """`make demo` (= `panacea-pl demo`) through the installed console script, shrunk: its own
    recipe (experiments/stories/panacea_grpo.yaml, with its weight average) as two runs side by
    side, averaged, and the average swept: 4 prompts of 2 stories, 2 optimiser steps, a 3-point
    sweep on the small benchmark."""
    small_rloo(workdir)
    proc = console_script(
        "demo", "--config", GRPO, "--config", "small_rloo.yaml", "--max-steps", "2", cwd=workdir
    )
    assert proc.returncode == 0, proc.out
    assert "training Panacea for 2 optimiser steps" in proc.out and "[3/3] the front" in proc.out
    # step 1 built the small benchmark, read from the sweep's evaluator (the prompts have none)
    from panacea_pl.benchmarks.stories import StoriesBenchmark

    small_pairs = StoriesBenchmark(num_dimensions=2, **stories_small.SMALL).pairs_path
    assert f"pairs: {small_pairs}" in proc.out
    printed = re.search(r"seeds 0, 1, one process each, in (\S+)", proc.out).group(1)
    root = workdir / printed
    for seed in (0, 1):  # each run trained and kept its checkpoint, but did not sweep
        assert (root / f"seed{seed}" / "checkpoints" / "last.ckpt").is_file()
        assert not (root / f"seed{seed}" / "pareto").exists()
    assert f"averaged the 2 runs into {printed}/average" in proc.out
    folder = re.search(r"run folder: (\S+)", proc.out).group(1)
    assert "panacea_grpo" in folder and (workdir / folder / "pareto" / "final.csv").is_file()
    assert_quiet(proc.out)
    # the same by hand, as the README shows it: `panacea-pl average`, then `validate` sweeps it
    members = [str(root / f"seed{seed}" / "checkpoints" / "last.ckpt") for seed in (0, 1)]
    proc = console_script("average", "--out", "by_hand", *members, cwd=workdir)
    assert proc.returncode == 0, proc.out
    assert "averaged 2 adapters into by_hand" in proc.out
    policy = {"init_args": {"adapter": None, "adapter_path": "by_hand"}}
    (workdir / "by_hand.yaml").write_text(
        yaml.safe_dump({"model": {"init_args": {"policy": policy}}})
    )
    proc = panacea_pl(
        "validate", "--config", GRPO, "--config", "small_rloo.yaml", "--config", "by_hand.yaml",
        cwd=workdir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.out
    runs = (workdir / "runs" / "stories" / "panacea_grpo").glob("version_*")
    newest = max(runs, key=lambda p: int(p.name.removeprefix("version_")))
    assert (newest / "pareto" / "final.csv").is_file(), proc.out
    assert "by_hand" in (newest / "config.yaml").read_text()
    # one run's checkpoint, swept by `validate` though the recipe has no validation prompts
    proc = panacea_pl(
        "validate", "--config", GRPO, "--config", "small_rloo.yaml", "--ckpt_path", members[1],
        cwd=workdir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.out
    runs = (workdir / "runs" / "stories" / "panacea_grpo").glob("version_*")
    latest = max(runs, key=lambda p: int(p.name.removeprefix("version_")))
    assert latest != newest and (latest / "pareto" / "final.csv").is_file(), proc.out


def test_demo_on_two_ddp_processes_prints_once_and_exits_0(workdir):
    """The same shrunk RLOO demo on 2 CPU processes (gloo): Lightning runs the command again for
    rank 1, which trains and sweeps its share but prints nothing of its own; exit 0."""
    small_rloo(workdir)
    ddp = {
        "trainer": {"devices": 2, "strategy": "ddp"},
        "model": {"init_args": {"minibatch_size": 2}},
        "data": {"init_args": {"batch_size": 2}},
    }
    (workdir / "ddp.yaml").write_text(yaml.safe_dump(ddp))
    proc = console_script(
        "demo", "--config", GRPO, "--config", "small_rloo.yaml", "--config", "ddp.yaml",
        "--max-steps", "2", "--runs", "1", cwd=workdir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.out
    assert "Starting with 2 processes" in proc.out
    for line in ("[1/3] stories benchmark", "[2/3] training", "[3/3] the front", "run folder:"):
        assert proc.out.count(line) == 1, (line, proc.out)
    assert_quiet(proc.out)


def test_baseline(workdir):
    proc = panacea_pl(
        "baseline", "--config", str(stories_small.REPO_ROOT / "experiments/stories/dps.yaml"),
        "--config", "small.yaml", "--trainer.max_steps=2", "--baseline.divisions=1",
        "--baseline.output_dir=dps_members", cwd=workdir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.out
    assert (workdir / "dps_members").is_dir()
    assert_quiet(proc.out)


def test_convert_llama2c_exits_zero(workdir, shared_data):
    folder = shared_data / "tinyllamas-stories260k"
    out = workdir / "converted"
    shutil.rmtree(out, ignore_errors=True)
    proc = panacea_pl(
        "convert-llama2c", str(folder / "stories260K.bin"), str(folder / "tok512.bin"), str(out),
        cwd=workdir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.out
    assert (out / "config.json").is_file() and "wrote" in proc.out
    proc = panacea_pl("convert-llama2c", "missing.bin", "tok.bin", str(out), cwd=workdir)
    assert proc.returncode == 2 and "does not exist" in proc.out


def test_a_users_own_schema_by_import_path(workdir, shared_data):
    """A `Schema` subclass in the user's own module, named by its import path in the YAML's
    `sources`, with no registration; the data cache sees it and the run trains on its pairs."""
    package = workdir / "user_schemas"
    package.mkdir(exist_ok=True)
    (package / "my_schemas.py").write_text(
        textwrap.dedent(
            '''
            from pathlib import Path

            from panacea_pl.data.schemas import PKUSafeRLHF


            class FirstHundredPKU(PKUSafeRLHF):
                """PKU-SafeRLHF, its first 100 rows only (and says how many it adapted)."""

                def pairs(self, rows, where, dims, num_dimensions, issues, dropped):
                    rows = rows.select(range(min(100, len(rows))))
                    records = super().pairs(rows, where, dims, num_dimensions, issues, dropped)
                    Path("schema_rows.txt").write_text(str(len(records)))
                    return records
            '''
        )
    )
    sample = shared_data / "pku-saferlhf-sample-500" / "PKU-Alignment_PKU-SafeRLHF_sample.jsonl"
    mine = {
        "trainer": {"max_steps": 2, "val_check_interval": 2, "callbacks": [], "logger": False},
        "data": {
            "init_args": {
                "sources": [
                    {"name": "pku", "schema": "my_schemas.FirstHundredPKU", "path": str(sample)}
                ],
                "cache_dir": str(workdir / "data_cache"),
            }
        },
    }
    (workdir / "schema.yaml").write_text(yaml.safe_dump(mine))
    local = stories_small.REPO_ROOT / "experiments/pku_saferlhf/panacea_dpo_local.yaml"
    proc = panacea_pl(
        "fit", "--config", str(local), "--config", "schema.yaml", cwd=workdir,
        env={"PYTHONPATH": str(package)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.out
    assert (workdir / "schema_rows.txt").read_text() == "100"
    assert "source 'pku': 100 rows" in proc.out or "100" in proc.out
