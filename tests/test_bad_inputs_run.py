"""Bad inputs to a run (checkpoints, a full disk, hyperparameters, a config that disagrees on m)
each get one error that names the file / argument / value and what is expected."""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import subprocess
import uuid
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from panacea_pl.atomic import atomic_write
from panacea_pl.callbacks.progress import ProgressBar
from panacea_pl.checks import check_integer, check_number
from panacea_pl.config_checks import DimensionMismatchError, check_dimension_agreement
from panacea_pl.objectives import MultiObjectiveDPOLoss
from panacea_pl.plugins import AtomicCheckpointIO, CheckpointError, read_checkpoint

# ---- checkpoints ------------------------------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    path = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(64)}, "global_step": 3}, path)
    return path


def test_read_checkpoint_reads_a_whole_one(checkpoint):
    assert read_checkpoint(checkpoint)["global_step"] == 3


@pytest.mark.parametrize(
    "damage",
    ["half", "random", "empty", "text"],
)
def test_truncated_or_foreign_bytes_are_named_and_never_loaded_unsafely(checkpoint, damage):
    data = checkpoint.read_bytes()
    bad = checkpoint.with_name(f"{damage}.ckpt")
    bad.write_bytes(
        {"half": data[: len(data) // 2], "random": os.urandom(2048), "empty": b"", "text": b"hi"}[
            damage
        ]
    )
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        read_checkpoint(bad)
    assert str(bad) in str(info.value) and "weights_only" not in str(info.value)


def test_a_checkpoint_with_python_objects_is_refused_by_name(tmp_path):
    path = tmp_path / "objects.ckpt"
    torch.save({"state_dict": {}, "module": torch.nn.Linear(2, 2)}, path)
    with pytest.raises(CheckpointError, match=r"torch\.nn\.modules\.linear\.Linear") as info:
        read_checkpoint(path)
    assert "weights_only" not in str(info.value)


def test_a_missing_checkpoint_or_a_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.ckpt")
    with pytest.raises(FileNotFoundError, match="is a folder"):
        read_checkpoint(tmp_path)


def test_the_checkpoint_plugin_loads_through_the_same_checks(checkpoint):
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=str(checkpoint)):
        AtomicCheckpointIO().load_checkpoint(checkpoint)


# ---- a full disk --------------------------------------------------------------------------------


@contextlib.contextmanager
def tiny_disk(tmp_path: Path, size: str = "96k"):
    """A real 96 KiB tmpfs (needs root and mount rights; skipped elsewhere)."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
        capture_output=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_checkpoint_on_a_full_disk_says_no_space_and_keeps_the_old_file(tmp_path):
    with tiny_disk(tmp_path) as disk:
        path = disk / "run" / "last.ckpt"
        io_plugin = AtomicCheckpointIO()
        io_plugin.save_checkpoint({"state_dict": {"w": torch.ones(8)}, "global_step": 1}, path)
        big = {"state_dict": {"w": torch.ones(64 * 1024)}, "global_step": 2}  # 256 KiB
        with pytest.raises(OSError, match="no space left") as info:
            io_plugin.save_checkpoint(big, path)
        assert str(path.parent) in str(info.value) and "keeps its previous content" in str(
            info.value
        )
        assert read_checkpoint(path)["global_step"] == 1
        assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_an_os_error_that_is_not_a_full_disk_passes_through(tmp_path):
    def fail(tmp: str) -> None:
        raise PermissionError(13, "denied", tmp)

    with pytest.raises(PermissionError):
        atomic_write(tmp_path / "x.bin", fail)


# ---- hyperparameters ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 0.0, -1.0, "0.1", True, None])
def test_beta_must_be_a_finite_positive_number(value):
    with pytest.raises(
        ValueError, match=r"MultiObjectiveDPOLoss: beta must be a finite number > 0"
    ):
        MultiObjectiveDPOLoss(beta=value)


def test_checks_name_the_argument_the_value_and_the_bounds():
    assert check_number("gamma", 1, above=0, at_most=1) == 1.0
    with pytest.raises(ValueError, match=r"gamma must be a finite number > 0 and <= 1, got 1\.5"):
        check_number("gamma", 1.5, above=0, at_most=1)
    with pytest.raises(ValueError, match=r"ppo_epochs must be an integer >= 1, got 0"):
        check_integer("ppo_epochs", 0, at_least=1)
    with pytest.raises(ValueError, match=r"seed must be an integer, got 1\.5"):
        check_integer("seed", 1.5)


@pytest.mark.parametrize(
    "name, value",
    [("preference_alpha", math.nan), ("preference_alpha", math.inf), ("preference_alpha", 0.0),
     ("orthogonality_weight", math.nan), ("orthogonality_weight", -1.0)],
)  # fmt: skip
def test_module_hyperparameters_are_checked_at_construction(tiny_llama_dir, name, value):
    from panacea_pl.layers import PanaceaConfig
    from panacea_pl.models import PanaceaPolicy
    from panacea_pl.modules import PanaceaDPO

    policy = PanaceaPolicy(
        str(tiny_llama_dir), adapter=PanaceaConfig(num_general=0, num_preferences=2)
    )
    with pytest.raises(ValueError, match=rf"PanaceaDPO: {name} must be a finite number"):
        PanaceaDPO(policy, **{name: value})


# ---- m stated alike by every component ---------------------------------------------------------


def test_m_that_disagrees_lists_every_statement():
    config = {
        "model": {
            "init_args": {
                "policy": {"init_args": {"adapter": {"num_preferences": 3}}},
                "aggregator": {"init_args": {"ideal": [0.0, 0.0]}},
                "preference": [0.5, 0.5],
            }
        },
        "data": {"init_args": {"dimensions": [{"name": "a"}, {"name": "b"}]}},
    }
    with pytest.raises(DimensionMismatchError) as info:
        check_dimension_agreement(config)
    message = str(info.value)
    for key in (
        "model.init_args.policy.init_args.adapter.num_preferences = 3",
        "model.init_args.aggregator.init_args.ideal = 2",
        "model.init_args.preference = 2",
        "data.init_args.dimensions = 2",
    ):
        assert key in message
    config["model"]["init_args"]["policy"]["init_args"]["adapter"]["num_preferences"] = 2
    assert check_dimension_agreement(config) == 2


def test_m_of_a_saved_adapter_folder_counts(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "panacea_config.json").write_text('{"config": {"num_preferences": 3}}')
    config = {"model": {"init_args": {"policy": {"init_args": {"adapter_path": str(folder)}}}}}
    config["data"] = {"init_args": {"num_dimensions": 2}}
    with pytest.raises(DimensionMismatchError, match=rf"adapter_path \({folder}\) = 3"):
        check_dimension_agreement(config)


def test_a_single_ideal_value_means_every_dimension():
    config = {"aggregator": {"ideal": [0.0]}, "data": {"init_args": {"num_dimensions": 3}}}
    assert check_dimension_agreement(config) == 3


# ---- console ----------------------------------------------------------------------------------


class _Trainer:
    def __init__(self, max_epochs):
        self.max_epochs = max_epochs


@pytest.mark.parametrize(
    "max_epochs, expected", [(-1, "Epoch 2"), (None, "Epoch 2"), (5, "Epoch 2/4")]
)
def test_progress_bar_shows_an_epoch_total_only_when_there_is_one(max_epochs, expected):
    bar = ProgressBar()
    bar._trainer = _Trainer(max_epochs)
    assert bar._get_train_description(2).strip() == expected


@pytest.mark.parametrize("version, shown", [("seed12", "seed12"), (3, 3)])
def test_progress_bar_shows_a_named_version_whole(tmp_path, version, shown):
    logger = CSVLogger(tmp_path, name="", version=version)
    trainer = pl.Trainer(logger=logger, callbacks=[ProgressBar()], enable_model_summary=False)
    assert trainer.progress_bar_callback.get_metrics(trainer, None)["v_num"] == shown


def test_checkpoint_error_is_picklable_for_ddp_workers():
    error = pickle.loads(pickle.dumps(CheckpointError("checkpoint x is corrupt")))
    assert str(error) == "checkpoint x is corrupt"
