"""What the GPU check ran on: python, torch, the device, and the versions of the packages it
needs (None where one is missing). Part of `bench/gpu/check.sh`."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import platform
import subprocess
from pathlib import Path

PACKAGES = [
    "torch", "lightning", "transformers", "peft", "accelerate", "trl", "datasets", "pyarrow",
    "pandas", "huggingface_hub", "jsonargparse", "omegaconf", "wandb", "moocore", "torchmetrics",
    "safetensors", "tokenizers", "pytest", "panacea-pl",
]  # fmt: skip


def environment() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    info: dict = {"python": platform.python_version(), "machine": platform.machine()}
    info["packages"] = versions
    try:
        import torch

        info["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["device"] = {
                "name": props.name,
                "memory_bytes": props.total_memory,
                "multiprocessors": props.multi_processor_count,
                "capability": f"{props.major}.{props.minor}",
                "cuda": torch.version.cuda,
            }
    except Exception as error:  # noqa: BLE001  (recorded, not fatal)
        info["torch_error"] = repr(error)
    try:
        smi = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv"]
        info["nvidia_smi"] = subprocess.run(smi, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        info["nvidia_smi"] = None
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    info = environment()
    parser.parse_args().json.write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
