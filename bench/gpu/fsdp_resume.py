"""A few FSDP steps on one GPU through Lightning, an adapter-only checkpoint, and a resume.

    python bench/gpu/fsdp_resume.py --device cuda --json out.json
    python bench/gpu/fsdp_resume.py --device cuda --fragment fsdp2.yaml --json out.json

The run of `tests/test_strategies_gpu.py` (its `gpu_config`: the local PKU-SafeRLHF config
with a `PanaceaPolicy` over the converted stories260K Llama) under
`experiments/strategies/fsdp.yaml` (FULL_SHARD, bf16-mixed, Hugging Face's activation
checkpointing per decoder block, full state dict) or `--fragment fsdp2.yaml` (FSDP2 through
`panacea_pl.strategies.FSDP2Strategy`): 4 steps with a checkpoint every 2, then a resume from
`last.ckpt` to step 6, with numbers. `--device cpu` runs the same in fp32, FSDP2 on one CPU
process, FSDP1 with Lightning's default strategy instead (Lightning refuses FSDP1 without a GPU):
a smoke test of this script.
Needs the shared data samples (`PANACEA_DATA_DIR`, default `../shared/data`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from panacea_pl.cli import run_lightning_cli  # noqa: E402
from test_strategies_gpu import STRATEGIES, gpu_config  # noqa: E402

CPU_OVERRIDES = ["--trainer.accelerator=cpu", "--trainer.precision=32-true"]  # fp32 on CPU


def fit(
    root: Path, max_steps: int, device: str, fragment: str, *extra: str
) -> tuple[object, float]:
    """One `panacea-pl fit` with the FSDP fragment; (the CLI, seconds)."""
    args = ["fit", "--config", str(gpu_config(root, max_steps))]
    args += ["--config", str(STRATEGIES / fragment)]
    args += [f"--data.init_args.cache_dir={root / 'data_cache'}", *extra]
    if device == "cpu":  # FSDP2 runs on CPU processes; Lightning refuses FSDP1 there
        args += CPU_OVERRIDES + ([] if fragment == "fsdp2.yaml" else ["--trainer.strategy=auto"])
    start = time.perf_counter()
    cli = run_lightning_cli(args)
    return cli, time.perf_counter() - start


def metrics(cli) -> dict[str, float]:
    keys = ("train/loss", "val/loss")
    return {
        k: float(cli.trainer.callback_metrics[k]) for k in keys if k in cli.trainer.callback_metrics
    }


def run(device: str, root: Path, fragment: str = "fsdp.yaml") -> dict:
    """Train 4 steps, checkpoint, resume to 6; what each stage gave."""
    import os

    os.chdir(root)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    first, t_first = fit(root, 4, device, fragment)
    last = root / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=False, map_location="cpu")
    keys = sorted(checkpoint["state_dict"])
    resumed, t_resumed = fit(root, 6, device, fragment, "--ckpt_path=last")
    after = torch.load(last, weights_only=False, map_location="cpu")
    same_keys = sorted(after["state_dict"]) == keys
    moved = max(
        (after["state_dict"][k].float() - checkpoint["state_dict"][k].float()).abs().max().item()
        for k in keys
    )
    result = {
        "fragment": fragment,
        "strategy": type(first.trainer.strategy).__name__,
        "precision": str(first.trainer.precision),
        "first": {"global_step": first.trainer.global_step, "seconds": t_first, **metrics(first)},
        "checkpoint": {
            "bytes": last.stat().st_size,
            "tensors": len(keys),
            "adapter_only": bool(keys) and all("panacea_" in k for k in keys),
            "global_step": checkpoint["global_step"],
        },
        "resumed": {
            "global_step": resumed.trainer.global_step,
            "seconds": t_resumed,
            "checkpoint_global_step": after["global_step"],
            "same_tensors": same_keys,
            "adapter_moved_max_abs": moved,
            **metrics(resumed),
        },
    }
    if device == "cuda":
        result["max_memory_allocated"] = torch.cuda.max_memory_allocated()
    finite = all(
        math.isfinite(v)
        for part in ("first", "resumed")
        for k, v in result[part].items()
        if "/" in k
    )
    result["passed"] = (
        result["first"]["global_step"] == 4
        and result["checkpoint"]["adapter_only"]
        and result["resumed"]["global_step"] == 6
        and result["resumed"]["checkpoint_global_step"] == 6
        and same_keys
        and moved > 0
        and finite
    )
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--root", type=Path, default=None, help="run folder (default: a temp)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--fragment", default="fsdp.yaml", help="the strategy fragment in experiments/strategies"
    )
    args = parser.parse_args(argv)
    json_path = args.json.resolve() if args.json else None
    root = args.root or Path(tempfile.mkdtemp(prefix="fsdp_resume_"))
    root.mkdir(parents=True, exist_ok=True)
    result = run(args.device, root.resolve(), args.fragment)
    print(json.dumps(result, indent=2))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
