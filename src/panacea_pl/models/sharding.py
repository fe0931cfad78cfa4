"""FSDP2 (`torch.distributed.fsdp.fully_shard`) over a Hugging Face model that holds the adapter.

    fully_shard_model(policy.model, mesh)   # each decoder block, then the whole model

One unit per decoder block (the classes the model names in `_no_split_modules`, the blocks
`experiments/strategies/fsdp.yaml` wraps for FSDP1), then the root (the Hugging Face model, or a
module around one such as PPO's critic with its value head), which keeps the embeddings,
the final norm and the LM head. `generate` and every forward go through the root's forward, so
the evaluators and the rollouts all-gather what they need on every rank, and `transformers` sees
an FSDP-managed model and keeps the ranks stepping together while they sample. FSDP2 shards each
parameter on its own, so frozen base weights and trainable adapter weights share a unit as they
are (FSDP1 needs `use_orig_params` for that).
"""

from __future__ import annotations

import torch
from torch import nn


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The modules of `model` whose class a Hugging Face model in it (itself, or e.g. a critic's
    backbone) names in `_no_split_modules`."""
    names = {n for m in model.modules() for n in (getattr(m, "_no_split_modules", None) or ())}
    blocks = [m for m in model.modules() if m is not model and type(m).__name__ in names]
    if not blocks:
        raise ValueError(
            f"{type(model).__name__} names no decoder block class in `_no_split_modules` "
            f"({sorted(names) or 'none'}), so FSDP2 cannot wrap one unit per block; shard it "
            "yourself in the LightningModule's `configure_model`"
        )
    return blocks


def is_fully_sharded(model: nn.Module) -> bool:
    """Whether `fully_shard` has been applied to `model` (Lightning may call the hook twice)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def fully_shard_model(model: nn.Module, mesh=None, param_dtype: torch.dtype | None = None) -> None:
    """Shard `model` in place with FSDP2 over `mesh` (None: the default process group).

    `param_dtype` (e.g. bf16) all-gathers and computes in that dtype while the shards, their
    gradients and the optimiser stay in the parameters' own dtype (fp32); gradients are reduced
    in fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if is_fully_sharded(model):
        return
    kwargs = {"mesh": mesh}
    if param_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=param_dtype, reduce_dtype=torch.float32
        )
    for block in decoder_blocks(model):
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
