"""Sharded training on 2 CPU processes (gloo): FSDP2 over the frozen base and the adapter.

Lightning refuses FSDP without a GPU, so the test shards the policy with torch's FSDP2
(`torch.distributed.fsdp.fully_shard`) directly, with the policy of
experiments/strategies/fsdp.yaml: one unit per decoder block, then the whole model. The frozen
base and the trainable adapter are both sharded (each rank holds half of every tensor). Against
one process with the global batch it checks:

- the multi-objective DPO steps (the project's `PanaceaDPO` hooks, per-dimension means over the
  global batch) give the same losses and adapter weights, to 1e-5;
- the adapter's full state is gathered from the shards (`PanaceaAdapter.state_dict`,
  `save_adapter`) and matches; a checkpoint of the full state dict, filtered by
  `PanaceaModule.on_save_checkpoint` to the adapter, its SGD momentum and the λ sampler,
  resumes on a fresh sharded model and continues exactly like the uninterrupted run;
- `export_peft` from the sharded model writes the same PEFT LoRA as the unsharded model loaded
  from the sharded save (bit for bit), and as the one-process run (to 1e-5).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

import tiny
from panacea_pl.layers import PanaceaConfig, export_peft, load_adapter, save_adapter
from panacea_pl.models import PanaceaPolicy
from panacea_pl.modules import PanaceaDPO
from panacea_pl.modules.base import SAMPLER_STATE_KEY
from panacea_pl.objectives import MultiObjectiveDPOLoss
from panacea_pl.plugins import CheckpointError

STEPS = 2  # before the checkpoint, and again after the resume
EXPORT_LAMBDA = [0.3, 0.7]


def _module(model_dir: str) -> PanaceaDPO:
    torch.manual_seed(0)  # the adapter's V is drawn at injection: the same on every rank
    policy = PanaceaPolicy(model_dir, adapter=PanaceaConfig(rank=2, num_preferences=2))
    return PanaceaDPO(policy, loss=MultiObjectiveDPOLoss(beta=0.5), seed=7)


def _shard(module: PanaceaDPO) -> None:
    """FSDP2 as fsdp.yaml wraps: each decoder block, then the root (frozen and trained alike)."""
    from torch.distributed.fsdp import fully_shard

    model = module.policy.model
    for block in model.model.layers:
        fully_shard(block)
    fully_shard(model)


def _steps(module: PanaceaDPO, optimizer, batch: dict, n: int) -> list[float]:
    """n optimiser steps through the module's hooks (what `_shared_step` runs)."""
    losses = []
    for _ in range(n):
        preference = module.sample_preference(module.batch_size_of(batch))
        loss = module.aggregate(module.dimension_losses(batch, preference), preference)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def _sgd(module: PanaceaDPO) -> torch.optim.Optimizer:
    # momentum: the checkpoint must carry optimiser state; SGD, not Adam, whose first steps
    # are lr·sign(g) and turn float noise in a ~0 gradient into a full step
    return torch.optim.SGD(module.policy.adapter.parameters(), lr=1.0, momentum=0.9)


def _batch(model_dir: str, rank: int, world: int) -> dict:
    rows, collate = tiny.pair_rows(model_dir)
    return collate(rows[rank::world])  # the rows DistributedSampler would deal this rank


def _single(model_dir: str, out: str) -> None:
    """One process, global batch: 2·STEPS steps, with its save and export after STEPS."""
    module = _module(model_dir)
    optimizer, batch = _sgd(module), _batch(model_dir, 0, 1)
    losses = _steps(module, optimizer, batch, STEPS)
    adapter = module.policy.adapter
    save_adapter(adapter, Path(out) / "adapter-1")
    export_peft(adapter, Path(out) / "peft-1", EXPORT_LAMBDA)
    losses += _steps(module, optimizer, batch, STEPS)
    torch.save({"losses": losses, "final": adapter.state_dict()}, Path(out) / "single.pt")


def _sharded(rank: int, world: int, port: int, model_dir: str, out: str, resume: bool) -> None:
    """One rank of `world`: STEPS steps from scratch (then save, export, checkpoint) or, with
    `resume`, STEPS steps from that checkpoint."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        module = _module(model_dir)
        _shard(module)
        optimizer, batch = _sgd(module), _batch(model_dir, rank, world)
        out_dir = Path(out)
        full = StateDictOptions(full_state_dict=True, cpu_offload=True)
        if resume:
            checkpoint = torch.load(out_dir / "sharded.ckpt", weights_only=False)
            module.on_load_checkpoint(checkpoint)  # checks the adapter keys, restores the sampler
            load = StateDictOptions(full_state_dict=True, strict=False)
            set_model_state_dict(module, checkpoint["state_dict"], options=load)
            set_optimizer_state_dict(module, optimizer, checkpoint["optimizer"], options=load)
        losses = _steps(module, optimizer, batch, STEPS)
        adapter = module.policy.adapter
        record = {"losses": losses, "state": adapter.state_dict()}  # gathered on every rank
        if not resume:
            frozen = module.policy.model.model.layers[0].mlp.up_proj.base_layer.weight
            record["frozen_shard_rows"] = (frozen.to_local().shape[0], frozen.shape[0])
            save_adapter(adapter, out_dir / f"adapter-{world}-{rank}")
            export_peft(adapter, out_dir / f"peft-{world}-{rank}", EXPORT_LAMBDA)
            checkpoint = {
                "state_dict": get_model_state_dict(module, options=full),
                "optimizer": get_optimizer_state_dict(module, optimizer, options=full),
            }
            module.on_save_checkpoint(checkpoint)  # keeps the adapter and the sampler state
            if rank == 0:
                torch.save(checkpoint, out_dir / "sharded.ckpt")
        torch.save(record, out_dir / f"{'resumed' if resume else 'sharded'}-{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _launch(world: int, model_dir: str, out: str, resume: bool) -> None:
    mp.start_processes(
        _sharded,
        args=(world, tiny.free_port(), model_dir, out, resume),
        nprocs=world,
        start_method="fork",
    )


def _max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llama_dir) -> Path:
    """The one-process run, the sharded run, and the sharded resume, in one folder."""
    out = tmp_path_factory.mktemp("sharded")
    model_dir = str(tiny_llama_dir)
    _single(model_dir, str(out))
    _launch(2, model_dir, str(out), resume=False)
    _launch(2, model_dir, str(out), resume=True)
    return out


@pytest.mark.slow
@pytest.mark.distributed
def test_sharded_step_equals_one_process_with_the_global_batch(runs):
    single = torch.load(runs / "single.pt")
    ranks = [torch.load(runs / f"sharded-{r}.pt") for r in range(2)]
    # the frozen base is sharded too: each rank holds half the rows of a base weight
    assert ranks[0]["frozen_shard_rows"] == (32, 64)  # up_proj of the tiny Llama: [64, 32]
    saved = load_file(runs / "adapter-1" / "panacea_adapter.safetensors")
    moved = max(t.abs().max().item() for k, t in saved.items() if k.endswith("panacea_U"))
    print(f"adapter U after {STEPS} steps: max |U| = {moved:.2e} (0 at init)")
    assert moved > 1e-3  # the steps did train the adapter
    for record in ranks:
        loss_diff = max(
            abs(a - b) for a, b in zip(record["losses"], single["losses"][:STEPS], strict=True)
        )
        weight_diff = _max_diff(record["state"], saved)
        print(f"max |Δ| sharded vs 1 process: loss {loss_diff:.1e}, adapter {weight_diff:.1e}")
        assert loss_diff < 1e-5 and weight_diff < 1e-5
    assert _max_diff(ranks[0]["state"], ranks[1]["state"]) == 0.0


@pytest.mark.slow
@pytest.mark.distributed
def test_sharded_save_and_resume_continue_like_the_uninterrupted_run(runs):
    single = torch.load(runs / "single.pt")
    gathered = torch.load(runs / "sharded-0.pt")["state"]
    # save_adapter from the sharded model writes the gathered full tensors, on every rank
    for rank in range(2):
        written = load_file(runs / f"adapter-2-{rank}" / "panacea_adapter.safetensors")
        assert _max_diff(written, gathered) == 0.0
    checkpoint = torch.load(runs / "sharded.ckpt", weights_only=False)
    assert checkpoint["state_dict"] and all("panacea_" in k for k in checkpoint["state_dict"])
    assert SAMPLER_STATE_KEY in checkpoint and checkpoint["optimizer"]["state"]
    for rank in range(2):
        resumed = torch.load(runs / f"resumed-{rank}.pt")
        loss_diff = max(
            abs(a - b) for a, b in zip(resumed["losses"], single["losses"][STEPS:], strict=True)
        )
        weight_diff = _max_diff(resumed["state"], single["final"])
        print(f"resumed vs uninterrupted: loss {loss_diff:.1e}, adapter {weight_diff:.1e}")
        assert loss_diff < 1e-5 and weight_diff < 1e-5


@pytest.mark.slow
@pytest.mark.distributed
def test_peft_export_from_the_sharded_model_equals_the_unsharded_export(runs, tiny_llama_dir):
    # the unsharded model, loaded from the sharded model's save, exports the same LoRA
    unsharded = load_adapter(tiny.load(tiny_llama_dir), runs / "adapter-2-0")
    export_peft(unsharded, runs / "peft-unsharded", EXPORT_LAMBDA)
    reference = load_file(runs / "peft-unsharded" / "adapter_model.safetensors")
    config = (runs / "peft-unsharded" / "adapter_config.json").read_text()
    for rank in range(2):
        folder = runs / f"peft-2-{rank}"
        assert _max_diff(load_file(folder / "adapter_model.safetensors"), reference) == 0.0
        assert (folder / "adapter_config.json").read_text() == config
    one_process = load_file(runs / "peft-1" / "adapter_model.safetensors")
    diff = _max_diff(one_process, reference)
    print(f"PEFT export, sharded vs 1 process: max |Δ| = {diff:.1e}")
    assert diff < 1e-5


def test_checkpoint_hooks_see_through_wrapped_blocks(tiny_llama_dir):
    """Lightning's FSDP wraps each block (FSDP and activation checkpointing): the parameter
    names gain the wrappers' module names, the state dict's keys do not. The checkpoint keeps
    the adapter only, and loads back."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        apply_activation_checkpointing,
    )
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    module = _module(str(tiny_llama_dir))
    apply_activation_checkpointing(module, check_fn=lambda m: isinstance(m, LlamaDecoderLayer))
    names = [n for n, _ in module.named_parameters()]
    assert any("_checkpoint_wrapped_module." in n for n in names)
    checkpoint = {"state_dict": module.state_dict()}
    assert not any("_checkpoint_wrapped_module." in k for k in checkpoint["state_dict"])
    module.on_save_checkpoint(checkpoint)
    adapter = set(module.policy.adapter.state_dict())
    kept = {k.removeprefix("policy.model.") for k in checkpoint["state_dict"]}
    assert kept == {k.replace("_checkpoint_wrapped_module.", "") for k in adapter}
    module.on_load_checkpoint(checkpoint)  # finds every adapter tensor
    del checkpoint["state_dict"][next(iter(checkpoint["state_dict"]))]
    with pytest.raises(CheckpointError, match="1 adapter tensors are missing"):
        module.on_load_checkpoint(checkpoint)
