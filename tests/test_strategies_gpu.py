"""The trainer fragments of experiments/strategies/ (FSDP, DeepSpeed ZeRO-2).

Here (CPU): each fragment layers over the paper's 7B config with the real CLI parser and says
what its comments promise (bf16, activation checkpointing, adapter-only checkpoints), and the
FSDP strategy it names is built with the wrap and checkpointing policies resolved to classes.
On a GPU machine (marked `gpu`, skipped without CUDA; DeepSpeed also skipped without
`pip install deepspeed`): each trains a Llama policy (the converted stories260K model) on the
PKU-SafeRLHF sample for a few steps in bf16, writes an adapter-only checkpoint and resumes
from it.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch.strategies import Strategy

from panacea_pl.cli import run_lightning_cli

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO_ROOT / "experiments"
STRATEGIES = EXPERIMENTS / "strategies"
PAPER_CONFIG = EXPERIMENTS / "pku_saferlhf" / "panacea_dpo_7b.yaml"
LLAMA_BLOCK = "transformers.models.llama.modeling_llama.LlamaDecoderLayer"

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="needs `pip install deepspeed`"
)


def print_config(capsys, *configs: Path) -> dict:
    args = ["fit"] + [a for c in configs for a in ("--config", str(c))] + ["--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        run_lightning_cli(args)
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_fsdp_fragment_over_the_paper_config(capsys):
    cfg = print_config(capsys, PAPER_CONFIG, STRATEGIES / "fsdp.yaml")
    trainer, policy = cfg["trainer"], cfg["model"]["init_args"]["policy"]["init_args"]
    assert trainer["strategy"]["class_path"] == "lightning.pytorch.strategies.FSDPStrategy"
    strategy = trainer["strategy"]["init_args"]
    assert strategy["auto_wrap_policy"] == [LLAMA_BLOCK]
    # FSDP's own checkpointing would recompute blocks without λ: the policy's does it instead
    assert strategy["activation_checkpointing_policy"] is None
    assert strategy["state_dict_type"] == "full"  # a single, adapter-only checkpoint file
    assert trainer["precision"] == "bf16-mixed" and trainer["devices"] == 8
    # one dtype per flattened block
    assert policy["dtype"] == "float32" and policy["gradient_checkpointing"] is True
    assert trainer["plugins"] == [{"class_path": "panacea_pl.plugins.AtomicCheckpointIO"}]


def test_fsdp2_fragment_over_the_paper_config(capsys):
    cfg = print_config(capsys, PAPER_CONFIG, STRATEGIES / "fsdp2.yaml")
    trainer, policy = cfg["trainer"], cfg["model"]["init_args"]["policy"]["init_args"]
    assert trainer["strategy"]["class_path"] == "panacea_pl.strategies.FSDP2Strategy"
    assert trainer["strategy"]["init_args"]["save_distributed_checkpoint"] is False
    assert trainer["precision"] == "bf16-mixed" and trainer["devices"] == 8
    assert policy["dtype"] == "float32" and policy["gradient_checkpointing"] is True
    # the paper config's sweep stays: every rank samples its rows through the sharded policy
    sweeps = [c for c in trainer["callbacks"] if c["class_path"].endswith("ParetoSweep")]
    assert sweeps and sweeps[0]["init_args"]["evaluator"]["init_args"].get("shard", True)


def test_deepspeed_fragment_over_the_paper_config(capsys):
    cfg = print_config(capsys, PAPER_CONFIG, STRATEGIES / "deepspeed_zero2.yaml")
    trainer, policy = cfg["trainer"], cfg["model"]["init_args"]["policy"]["init_args"]
    assert trainer["strategy"]["class_path"] == "lightning.pytorch.strategies.DeepSpeedStrategy"
    strategy = trainer["strategy"]["init_args"]
    assert strategy["stage"] == 2 and strategy["exclude_frozen_parameters"] is True
    assert trainer["precision"] == "bf16-mixed"
    assert policy["dtype"] == "bfloat16" and policy["gradient_checkpointing"] is True


def build_strategy(fragment: Path) -> Strategy:
    spec = yaml.safe_load(fragment.read_text())["trainer"]["strategy"]
    parser = ArgumentParser()
    parser.add_argument("--strategy", type=Strategy)
    return parser.instantiate(parser.parse_object({"strategy": spec})).strategy


def test_fsdp_fragment_builds_its_strategy():
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    strategy = build_strategy(STRATEGIES / "fsdp.yaml")
    wrap = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(wrap, ModuleWrapPolicy) and wrap._module_classes == {LlamaDecoderLayer}
    assert not strategy._activation_checkpointing_kwargs
    assert strategy.kwargs["use_orig_params"] is True  # frozen and trained weights in one block


@needs_deepspeed
def test_deepspeed_fragment_builds_its_strategy():
    strategy = build_strategy(STRATEGIES / "deepspeed_zero2.yaml")
    assert strategy.config["zero_optimization"]["stage"] == 2
    assert strategy.exclude_frozen_parameters is True


# ---- on a GPU: train, checkpoint, resume ------------------------------------------------------


def gpu_config(root: Path, max_steps: int) -> Path:
    """The local PKU config on one GPU with a PanaceaPolicy (the fragments set its dtype and
    checkpointing) over the converted stories260K Llama; no Pareto sweep (it evaluates on rank
    zero with the whole model, which FSDP does not hold)."""
    cfg = yaml.safe_load((EXPERIMENTS / "pku_saferlhf" / "panacea_dpo_local.yaml").read_text())
    cfg["model"]["init_args"]["policy"] = {
        "class_path": "panacea_pl.models.PanaceaPolicy",
        "init_args": {
            "model_name_or_path": "${panacea.stories_model:}",
            "adapter": {"num_general": 8, "num_preferences": 2},
        },
    }
    cfg["trainer"].update(
        accelerator="gpu",
        devices=1,
        max_steps=max_steps,
        val_check_interval=2,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        enable_progress_bar=False,
        logger=[
            {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(root / "runs"), "name": "gpu"},
            }
        ],
        callbacks=[
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {
                    "dirpath": str(root / "checkpoints"),
                    "every_n_train_steps": 2,
                    "save_last": True,
                    "save_top_k": 0,
                },
            }
        ],
    )
    path = root / f"gpu_{max_steps}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture
def gpu_run_dir(tmp_path, monkeypatch, shared_data) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PANACEA_DATA_DIR", str(shared_data))
    monkeypatch.setenv("PANACEA_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def fit(root: Path, fragment: Path, max_steps: int, *extra: str):
    config = gpu_config(root, max_steps)
    cache = f"--data.init_args.cache_dir={root / 'data_cache'}"
    return run_lightning_cli(
        ["fit", "--config", str(config), "--config", str(fragment), cache, *extra]
    )


def train_and_resume(root: Path, fragment: Path) -> Path:
    cli = fit(root, fragment, 4)
    assert cli.trainer.global_step == 4
    assert math.isfinite(float(cli.trainer.callback_metrics["train/loss"]))
    assert math.isfinite(float(cli.trainer.callback_metrics["val/loss"]))
    last = root / "checkpoints" / "last.ckpt"
    assert last.exists()
    resumed = fit(root, fragment, 6, "--ckpt_path=last")
    assert resumed.trainer.global_step == 6
    return last


@pytest.mark.gpu
@needs_cuda
def test_fsdp_trains_in_bf16_and_resumes_from_an_adapter_only_checkpoint(gpu_run_dir):
    last = train_and_resume(gpu_run_dir, STRATEGIES / "fsdp.yaml")
    checkpoint = torch.load(last, weights_only=False)
    keys = set(checkpoint["state_dict"])
    assert keys and all("panacea_" in k for k in keys), sorted(keys)[:5]
    assert checkpoint["global_step"] == 6


@pytest.mark.gpu
@needs_cuda
@needs_deepspeed
def test_deepspeed_zero2_trains_in_bf16_and_resumes(gpu_run_dir):
    last = train_and_resume(gpu_run_dir, STRATEGIES / "deepspeed_zero2.yaml")
    assert last.is_dir()  # DeepSpeed's sharded checkpoint folder
    size = sum(p.stat().st_size for p in last.rglob("*") if p.is_file())
    assert size < 50e6, f"{size / 1e6:.0f} MB: the frozen base was checkpointed"
