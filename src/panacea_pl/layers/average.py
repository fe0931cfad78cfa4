"""An average of trained Panacea adapters: one adapter whose update is, for every λ, the mean of
its members' updates (a "seed soup").

    config, tensors = average_adapters([read_member("runs/a/.../last.ckpt"), read_member(...)])
    save_average(["runs/a/.../last.ckpt", "runs/b/adapter"], "runs/average")   # a folder
    panacea-pl average --out runs/average runs/a/.../last.ckpt runs/b/.../last.ckpt

Why: about half of the KL a trained policy spends off the reward's direction is its own run's,
and runs from different seeds do not share it (`experiments/ceiling/`, "Is the KL off the tilt
each run's own?"); averaging their updates cancels that part. On the stories benchmark two demo
runs averaged capture more of the achievable gain than either (README).

Exact, not compressed: member j's update is c_j·U_j·diag(σ_j, s_j·λ)·V_j, and the sum over j of
w_j times it is an adapter whose U stacks the members' w_j·c_j·σ_j- and w_j·c_j·s_j-scaled
columns, whose V stacks their rows, and whose singular values are 1 and λ_i
(`rank_per_preference` adds up over the members; c = 1). A rank-one-per-dimension summary of the
average (its top singular pair) scored below either run it summed, so none is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from panacea_pl.layers.config import ADAPTER_CONFIG_KEY, PanaceaConfig, upgrade_fields
from panacea_pl.layers.io import (
    CONFIG_NAME,
    AdapterLoadError,
    _config_of,
    _read_meta,
    _read_weights,
    read_adapter_config,
    write_adapter_folder,
)

PARTS = ("panacea_U", "panacea_V", "panacea_sigma", "panacea_scale")
# where a Panacea module (`panacea_pl.modules`) keeps the adapted model in its state dict
CHECKPOINT_PREFIX = "policy.model."


@dataclass
class Member:
    """One trained adapter: its config, its tensors keyed `<layer>.<part>`, and where from."""

    config: PanaceaConfig
    tensors: dict[str, torch.Tensor]
    source: str
    base_model: str | None = None

    @property
    def layers(self) -> list[str]:
        return sorted(
            k.removesuffix(".panacea_U") for k in self.tensors if k.endswith(".panacea_U")
        )


def read_member(path: str | Path) -> Member:
    """A Lightning checkpoint of a Panacea module (`.ckpt`) or a `save_adapter` folder.

    Raises:
        AdapterLoadError: neither, or a checkpoint without a Panacea adapter.
    """
    path = Path(path)
    if path.is_dir():
        meta = _read_meta(path)
        config = _config_of(meta, path / CONFIG_NAME)
        tensors = _read_weights(path, meta)  # checked against its sha256, as load_adapter does
        return Member(config, tensors, str(path), meta.get("base_model_name_or_path"))
    if not path.is_file():
        raise AdapterLoadError(f"{path}: no such checkpoint or adapter folder")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated or foreign file
        raise AdapterLoadError(f"{path} is not a readable checkpoint ({err})") from err
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    saved = checkpoint.get(ADAPTER_CONFIG_KEY) if isinstance(checkpoint, dict) else None
    if not state or not saved:
        raise AdapterLoadError(
            f"{path} holds no Panacea adapter: expected a checkpoint written by a Panacea module "
            f"(a 'state_dict' and '{ADAPTER_CONFIG_KEY}')"
        )
    tensors = {
        key.removeprefix(CHECKPOINT_PREFIX): t
        for key, t in state.items()
        if key.startswith(CHECKPOINT_PREFIX) and key.rsplit(".", 1)[-1] in PARTS
    }
    if not tensors:
        raise AdapterLoadError(f"{path}: no '{CHECKPOINT_PREFIX}…panacea_U' tensors in its state")
    bad = sorted(key for key, t in tensors.items() if not torch.isfinite(t).all())
    if bad:
        raise AdapterLoadError(
            f"{path}: {len(bad)} adapter tensors hold NaN or infinity (e.g. {bad[:3]}); a run "
            "that diverged cannot be averaged"
        )
    return Member(PanaceaConfig.from_dict(upgrade_fields(saved)), tensors, str(path))


def average_adapters(
    members: Sequence[Member], weights: Sequence[float] | None = None
) -> tuple[PanaceaConfig, dict[str, torch.Tensor]]:
    """The adapter equal to Σ_j w_j · (member j's update) for every λ (w_j = 1/n by default).
    One member gives that adapter itself (e.g. a run's checkpoint written as a folder).

    Raises:
        ValueError: no members, weights that do not match them, or members that
            differ in m or in their adapted layers and shapes.
    """
    if not members:
        raise ValueError("averaging needs at least one adapter, got none")
    weights = [1.0 / len(members)] * len(members) if weights is None else list(weights)
    if len(weights) != len(members):
        raise ValueError(f"{len(weights)} weights for {len(members)} adapters")
    first = members[0]
    for member in members[1:]:
        _check_same_shape(first, member)
    out: dict[str, torch.Tensor] = {}
    for layer in first.layers:
        parts = [_scaled_blocks(mb, layer, w) for mb, w in zip(members, weights, strict=True)]
        # the members' general blocks, then each dimension's blocks: d = [1…1, λ_1…λ_1, …]
        blocks = [part[i] for i in range(len(parts[0])) for part in parts]
        out[f"{layer}.panacea_U"] = torch.cat([u for u, _ in blocks], 1)
        out[f"{layer}.panacea_V"] = torch.cat([v for _, v in blocks], 0)
        out[f"{layer}.panacea_sigma"] = torch.ones(sum(part[0][0].shape[1] for part in parts))
        out[f"{layer}.panacea_scale"] = torch.ones(1)
    config = PanaceaConfig(
        num_general=sum(mb.config.num_general for mb in members),
        num_preferences=first.config.num_preferences,
        rank_per_preference=sum(mb.config.rank_per_preference for mb in members),
        alpha=None,  # c = 1: the members' c_j are in U
        dropout=first.config.dropout,
        target_modules=first.layers,
        dtype="float32",
    )
    return config, out


def save_average(
    paths: Sequence[str | Path], directory: str | Path, weights: Sequence[float] | None = None
) -> Path:
    """Average the adapters at `paths` (checkpoints or adapter folders) into a `save_adapter`
    folder at `directory`, which `load_adapter` and `PanaceaPolicy(adapter_path=...)` read."""
    members = [read_member(p) for p in paths]
    config, tensors = average_adapters(members, weights)
    first = members[0].tensors
    layers = {  # [in, out] of each base layer, as `save_adapter` records them
        layer: [first[f"{layer}.panacea_V"].shape[1], first[f"{layer}.panacea_U"].shape[0]]
        for layer in config.target_modules
    }
    return write_adapter_folder(
        directory,
        config.to_dict(),
        tensors,
        layers,
        next((mb.base_model for mb in members if mb.base_model), None),
        averaged_from=[mb.source for mb in members],
        weights=list(weights) if weights is not None else [1 / len(members)] * len(members),
    )


def _scaled_blocks(
    member: Member, layer: str, weight: float
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One layer of a member as (U columns, V rows) blocks, the general one and then one per
    preference dimension, with w·c·σ and w·c·s folded into U (so the average's d is 1 and λ)."""
    cfg, t = member.config, member.tensors
    u, v = t[f"{layer}.panacea_U"].float(), t[f"{layer}.panacea_V"].float()
    k, r, c = cfg.num_general, cfg.rank_per_preference, weight * cfg.scaling
    blocks = [(u[:, :k] * (c * t[f"{layer}.panacea_sigma"].float()), v[:k])]
    scale = c * t[f"{layer}.panacea_scale"].float()
    for i in range(cfg.num_preferences):
        rows = slice(k + i * r, k + (i + 1) * r)
        blocks.append((u[:, rows] * scale, v[rows]))
    return blocks


def _check_same_shape(first: Member, other: Member) -> None:
    if other.config.num_preferences != first.config.num_preferences:
        raise ValueError(
            f"{other.source} has m = {other.config.num_preferences} preference dimensions, "
            f"{first.source} has {first.config.num_preferences}; average adapters of one m"
        )
    if other.layers != first.layers:
        only = sorted(set(other.layers) ^ set(first.layers))
        raise ValueError(
            f"{other.source} and {first.source} adapt different layers (e.g. {only[:3]}); "
            "average adapters trained on the same base model and target_modules"
        )
    for layer in first.layers:
        a, b = first.tensors[f"{layer}.panacea_U"], other.tensors[f"{layer}.panacea_U"]
        c, d = first.tensors[f"{layer}.panacea_V"], other.tensors[f"{layer}.panacea_V"]
        if a.shape[0] != b.shape[0] or c.shape[1] != d.shape[1]:
            raise ValueError(
                f"{layer}: {other.source} adapts a {d.shape[1]}→{b.shape[0]} layer, "
                f"{first.source} a {c.shape[1]}→{a.shape[0]} one; average adapters of one base"
            )


def main(argv: Sequence[str] | None = None) -> int:
    """`panacea-pl average --out DIR MEMBER MEMBER ...`: see the module docstring."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="panacea-pl average",
        description="Average trained Panacea adapters (checkpoints or adapter folders) into one "
        "adapter folder whose update is their mean update at every λ.",
    )
    parser.add_argument("members", nargs="+", type=Path, help="`.ckpt` files or adapter folders")
    parser.add_argument("--out", type=Path, required=True, help="the adapter folder to write")
    parser.add_argument(
        "--weights", type=float, nargs="+", help="one weight per member (default: equal)"
    )
    args = parser.parse_args(argv)
    try:
        folder = save_average(args.members, args.out, args.weights)
    except ValueError as err:
        parser.error(str(err))
    config = read_adapter_config(folder)
    print(
        f"averaged {len(args.members)} adapters into {folder} (num_general {config.num_general}, "
        f"{config.rank_per_preference} singular values per preference dimension). Sweep it with "
        f"`panacea-pl validate --config <the runs' config> "
        f"--model.init_args.policy.init_args.adapter_path={folder} "
        f"--model.init_args.policy.init_args.adapter=null`"
    )
    return 0
