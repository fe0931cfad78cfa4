"""Crash safety: a training run killed with SIGKILL in the middle of an epoch, while it was
writing a checkpoint, resumes from its last whole checkpoint and continues exactly as the
uninterrupted run (same batches, same λ, same losses and weights); checkpoint and adapter
files are never left half-written.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

import stories_small
from panacea_pl.atomic import TEMP_PREFIX, atomic_write
from panacea_pl.cli import run_lightning_cli
from panacea_pl.layers import load_adapter, save_adapter
from panacea_pl.plugins import AtomicCheckpointIO

TESTS = Path(__file__).resolve().parent
STEPS = 6
EVERY = 2  # checkpoint every 2 steps; the 2nd save (step 4) is the one the crash interrupts
CRASH_AT_SAVE = 2


class PausingCheckpointIO(AtomicCheckpointIO):
    """Saves normally, except save number `pause_at`: it writes half of that checkpoint, then
    writes `marker` (the step) and waits to be killed."""

    def __init__(self, pause_at: int, marker: str):
        super().__init__()
        self.pause_at = pause_at
        self.marker = marker
        self.saves = 0

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        self.saves += 1
        if self.saves != self.pause_at:
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getvalue()

        def write_half_and_hang(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                fh.write(data[: len(data) // 2])
                fh.flush()
                os.fsync(fh.fileno())
            Path(self.marker).write_text(str(checkpoint["global_step"]))
            time.sleep(600)

        atomic_write(path, write_half_and_hang)


def run_config(root: Path, name: str, plugins: list | None = None) -> Path:
    """Layered over the stories config and `stories_small.small_config`: 6 steps of a 24-batch
    epoch, one validation at the end, CSV metrics every step, a checkpoint every 2 steps."""
    trainer = {
        "max_steps": STEPS,
        "val_check_interval": STEPS,
        "logger": [
            {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(root / "runs"), "name": name},
            }
        ],
        "callbacks": [
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {
                    "dirpath": str(root / name / "checkpoints"),
                    "every_n_train_steps": EVERY,
                    "save_last": True,
                    "save_top_k": 0,
                },
            }
        ],
    }
    if plugins is not None:
        trainer["plugins"] = plugins
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"trainer": trainer}, sort_keys=False))
    return path


def fit_args(root: Path, run: Path) -> list[str]:
    small = stories_small.small_config(root / "small.yaml", sweep=False)
    return ["fit", "--config", str(stories_small.STORIES_CONFIG), "--config", str(small)] + [
        "--config",
        str(run),
    ]


def metrics_by_step(csv_path: Path) -> dict[int, dict[str, float]]:
    rows: dict[int, dict[str, float]] = {}
    with open(csv_path, newline="") as fh:
        for row in csv.DictReader(fh):
            values = {k: float(v) for k, v in row.items() if v and k not in ("step", "epoch")}
            rows.setdefault(int(row["step"]), {}).update(values)
    return rows


def adapter_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, weights_only=False)["state_dict"]


@pytest.fixture
def stories_env(tmp_path_factory, shared_data, monkeypatch, tmp_path):
    monkeypatch.setenv("PANACEA_CACHE_DIR", str(stories_small.cache_root(tmp_path_factory)))
    monkeypatch.setenv("PANACEA_DATA_DIR", str(shared_data))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_save_resumes_like_the_uninterrupted_run(stories_env):
    root = stories_env
    start = time.perf_counter()
    run_lightning_cli(fit_args(root, run_config(root, "full")))
    full_time = time.perf_counter() - start

    # the same run in a subprocess, killed while it writes the step-4 checkpoint
    marker = root / "saving"
    pausing = [
        {
            "class_path": "test_crash_resume.PausingCheckpointIO",
            "init_args": {"pause_at": CRASH_AT_SAVE, "marker": str(marker)},
        }
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "panacea_pl.cli"]
    command += fit_args(root, run_config(root, "crash", plugins=pausing))
    with open(root / "crash.log", "wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"the run never reached save {CRASH_AT_SAVE}:\n{(root / 'crash.log').read_text()}"
                )
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert marker.read_text() == str(CRASH_AT_SAVE * EVERY)

    # the interrupted save left its half file beside an intact last.ckpt of step 2
    checkpoints = root / "crash" / "checkpoints"
    assert [p.name for p in checkpoints.glob(f"{TEMP_PREFIX}*")], sorted(checkpoints.iterdir())
    last = torch.load(checkpoints / "last.ckpt", weights_only=False)
    resumed_from = (CRASH_AT_SAVE - 1) * EVERY
    assert last["global_step"] == resumed_from
    loader_state = last["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_state == [{"epoch": 0, "batches": resumed_from}]  # mid-epoch: 2 of 24

    # resume from "last" (the half-written file is not taken for it) and finish the run
    start = time.perf_counter()
    cli = run_lightning_cli(fit_args(root, run_config(root, "crash")) + ["--ckpt_path=last"])
    resume_time = time.perf_counter() - start
    assert cli.trainer.global_step == STEPS

    full = metrics_by_step(root / "runs" / "full" / "version_0" / "metrics.csv")
    resumed = metrics_by_step(root / "runs" / "crash" / "version_1" / "metrics.csv")
    steps = sorted(s for s in resumed if "train/loss" in resumed[s])
    assert len(steps) == STEPS - resumed_from, steps  # the resumed run logged steps 3..6 only
    worst = 0.0
    for step in steps:
        for key in ("train/lambda/happy", "train/lambda/sad"):
            assert resumed[step][key] == full[step][key], (step, key)  # the same λ sequence
        worst = max(worst, abs(resumed[step]["train/loss"] - full[step]["train/loss"]))
    val_keys = [k for k in full[max(full)] if k.startswith("val/")]
    assert "val/loss" in val_keys
    for key in val_keys:
        worst = max(worst, abs(resumed[max(resumed)][key] - full[max(full)][key]))
    weights_full = adapter_state(root / "full" / "checkpoints" / "last.ckpt")
    weights_resumed = adapter_state(checkpoints / "last.ckpt")
    assert weights_full.keys() == weights_resumed.keys()
    weight_diff = max(
        (weights_full[k] - weights_resumed[k]).abs().max().item()
        for k in weights_full
        if weights_full[k].numel()  # rank 0: σ is empty
    )
    print(
        f"uninterrupted {full_time:.1f} s, resumed {resume_time:.1f} s; max |Δ| of the losses, "
        f"λ and validation metrics after resuming: {worst:.2e}; of the adapter: {weight_diff:.2e}"
    )
    assert worst < 1e-5 and weight_diff < 1e-6


def test_a_failed_checkpoint_save_keeps_the_previous_file(tmp_path):
    io_plugin = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io_plugin.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        io_plugin.save_checkpoint({"global_step": 2, "bad": Unpicklable()}, path)
    assert io_plugin.load_checkpoint(path)["global_step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temp file left
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's 0o600
    with pytest.raises(TypeError, match="storage_options"):
        io_plugin.save_checkpoint({}, path, storage_options={"x": 1})


def test_a_failed_adapter_save_keeps_the_previous_adapter(tiny_llama_dir, tmp_path, monkeypatch):
    import tiny
    from panacea_pl.layers import PanaceaConfig, inject_adapter
    from panacea_pl.layers import io as adapter_io

    adapter = inject_adapter(
        tiny.load(tiny_llama_dir), PanaceaConfig(num_general=2, num_preferences=2)
    )
    folder = save_adapter(adapter, tmp_path / "adapter")
    saved = dict(load_adapter(tiny.load(tiny_llama_dir), folder).state_dict())
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(1.0)

    def torn_save(tensors, filename):  # dies half-way through the weights file
        save_file(tensors, filename)
        with open(filename, "r+b") as fh:
            fh.truncate(os.path.getsize(filename) // 2)
        raise OSError("killed mid-write")

    monkeypatch.setattr(adapter_io, "save_file", torn_save)
    with pytest.raises(OSError, match="mid-write"):
        save_adapter(adapter, folder)
    reloaded = load_adapter(tiny.load(tiny_llama_dir), folder).state_dict()
    for name, tensor in saved.items():
        torch.testing.assert_close(reloaded[name], tensor)
    assert not [p for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX)]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
