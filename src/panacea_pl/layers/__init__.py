"""The Panacea SVD-LoRA adapter, usable from plain PyTorch (no Lightning import here).

from panacea_pl.layers import PanaceaConfig, inject_adapter, save_adapter, load_adapter
"""

from panacea_pl.layers.config import DEFAULT_TARGET_MODULES, PanaceaConfig
from panacea_pl.layers.io import (
    AdapterLoadError,
    export_peft,
    load_adapter,
    read_adapter_config,
    save_adapter,
)
from panacea_pl.layers.layer import PanaceaLinear
from panacea_pl.layers.model import PanaceaAdapter, find_target_modules, inject_adapter

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "AdapterLoadError",
    "PanaceaAdapter",
    "PanaceaConfig",
    "PanaceaLinear",
    "export_peft",
    "find_target_modules",
    "inject_adapter",
    "load_adapter",
    "read_adapter_config",
    "save_adapter",
]
