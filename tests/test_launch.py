"""The launch scripts of experiments/launch/ start a real 2-process DDP run (CPU, gloo) of the
stories config through the CLI: torchrun.sh with torch's launcher, slurm.sh under a stand-in
`srun` that starts the tasks with the variables SLURM sets. Both runs include the Pareto sweep,
which runs on rank zero only while the other rank waits (a collective inside it would hang)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import stories_small
import tiny

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCH = REPO_ROOT / "experiments" / "launch"
STEPS = 3


@pytest.fixture
def launch_env(tmp_path_factory, shared_data, tmp_path) -> dict[str, str]:
    return {
        **os.environ,
        "PANACEA_CACHE_DIR": str(stories_small.cache_root(tmp_path_factory)),
        "PANACEA_DATA_DIR": str(shared_data),
        "WANDB_MODE": "offline",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
        "PYTHON": sys.executable,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(tiny.free_port()),
    }


def _run(command: list[str], env: dict[str, str], cwd: Path) -> None:
    """Run a launcher in its own process group; on a hang, kill the group and show the log."""
    log = cwd / "launch.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"{command[:2]} hung:\n{log.read_text()[-6000:]}")
    assert code == 0, log.read_text()[-6000:]


def _check_run(cwd: Path) -> None:
    version = cwd / "runs" / "stories" / "panacea_dpo" / "version_0"
    trainer = yaml.safe_load((version / "config.yaml").read_text())["trainer"]
    assert int(trainer["devices"]) == 2 and int(trainer["num_nodes"]) == 1
    with open(version / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len([r for r in rows if r.get("train/loss")]) == STEPS
    assert [r for r in rows if r.get("val/happy/accuracy")]
    assert (version / "pareto" / "final.csv").is_file()  # the rank-zero sweep did not hang
    assert (version / "checkpoints").is_dir()


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_script_runs_two_processes(launch_env, tmp_path):
    small = stories_small.small_config(tmp_path / "small.yaml", max_steps=STEPS)
    env = {**launch_env, "NPROC_PER_NODE": "2"}
    script = [str(LAUNCH / "torchrun.sh")]
    _run(
        script + ["--config", str(stories_small.STORIES_CONFIG), "--config", str(small)],
        env,
        tmp_path,
    )
    _check_run(tmp_path)


FAKE_SRUN = """\
#!{python}
# Stands in for srun on one node: SLURM_NTASKS_PER_NODE copies of the command, each with the
# task variables srun sets.
import os, subprocess, sys
tasks = int(os.environ["SLURM_NTASKS_PER_NODE"])
procs = [
    subprocess.Popen(sys.argv[1:], env={{**os.environ, "SLURM_PROCID": str(r),
                     "SLURM_LOCALID": str(r), "SLURM_NODEID": "0", "SLURM_NTASKS": str(tasks)}})
    for r in range(tasks)
]
sys.exit(max(p.wait() for p in procs))
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_slurm_script_runs_its_tasks_as_ranks(launch_env, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text(textwrap.dedent(FAKE_SRUN.format(python=sys.executable)))
    srun.chmod(0o755)
    env = {
        **launch_env,
        "PATH": os.pathsep.join([str(bin_dir), launch_env["PATH"]]),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "panacea",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NNODES": "1",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_NODELIST": "localhost",
        "SLURM_CPUS_PER_TASK": "1",
    }
    small = stories_small.small_config(tmp_path / "small.yaml", max_steps=STEPS)
    command = ["bash", str(LAUNCH / "slurm.sh")]
    _run(
        command + ["--config", str(stories_small.STORIES_CONFIG), "--config", str(small)],
        env,
        tmp_path,
    )
    _check_run(tmp_path)


def test_slurm_script_refuses_to_run_outside_sbatch(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    result = subprocess.run(
        ["bash", str(LAUNCH / "slurm.sh"), "--config", "x.yaml"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "run this script with sbatch" in result.stderr


def test_the_console_entry_closes_a_process_group_left_open(monkeypatch, tmp_path):
    """`panacea-pl` closes the process group a run leaves open (Lightning keeps it): a gloo
    group still open at exit aborted a finished torchrun rank (exit -6) now and then."""
    import torch.distributed as dist

    from panacea_pl import cli

    def run_leaving_a_group_open(argv):
        dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)

    monkeypatch.setattr(cli, "run_lightning_cli", run_leaving_a_group_open)
    assert cli.main(["fit"]) == 0
    assert not dist.is_initialized()
