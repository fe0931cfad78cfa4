"""FSDP2 through Lightning on 2 CPU processes (gloo): `panacea_pl.strategies.FSDP2Strategy`.

Lightning's ModelParallelStrategy runs on CPU processes, so the sharded path users take on GPUs
(`experiments/strategies/fsdp2.yaml`) runs here as it is: the module's `configure_model` shards
the policy (frozen base and adapter, one unit per decoder block), training steps, a checkpoint
gathered on rank zero, a resume, and the `ParetoSweep` front sampled by both ranks. Against one
unsharded process with the global batch:

- 3 steps, a checkpoint, a resume on fresh processes and 3 more steps give the adapter of 6
  uninterrupted steps (to 1e-5), SGD momentum included;
- the checkpoint holds the adapter, not the frozen base, and loads into an unsharded policy;
- the front swept at the end (every rank samples its share of the rows through the sharded
  model) is the one-process front (to 1e-4 relative: the adapters differ by float rounding; the
  same weights sweep the same front to 1e-6 in test_distributed_sweep.py).
"""

from __future__ import annotations

import csv
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from lightning.pytorch.callbacks import ModelCheckpoint

import stories_small
import tiny
from panacea_pl.benchmarks.stories import StoriesDataModule, StoriesEvaluator, StoriesPolicy
from panacea_pl.callbacks import ParetoSweep
from panacea_pl.layers import PanaceaConfig
from panacea_pl.models.sharding import decoder_blocks, is_fully_sharded
from panacea_pl.modules import PanaceaDPO
from panacea_pl.strategies import FSDP2Strategy

GLOBAL_BATCH = 8
HALF, STEPS = 3, 6


def _module() -> PanaceaDPO:
    torch.manual_seed(0)  # the adapter's V is drawn at injection: the same in every process
    policy = StoriesPolicy(adapter=PanaceaConfig(num_general=2, num_preferences=2))
    return PanaceaDPO(
        policy,
        dimension_names=["happy", "sad"],
        seed=7,
        # Adam's first step is lr·sign(g): float noise in a ~0 gradient would flip it
        optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    )


def _fit(rank: int, world: int, port: int, out: str, max_steps: int, resume: str | None) -> None:
    """One process: fit to `max_steps` (from `resume`), checkpoint, sweep, save the adapter."""
    tiny.as_launched_rank(rank, world, port)
    pl.seed_everything(0, verbose=False)
    module = _module()
    data = StoriesDataModule(
        2, batch_size=GLOBAL_BATCH // world, val_fraction=0.25, benchmark=stories_small.SMALL
    )
    evaluator = StoriesEvaluator(2, samples_per_prompt=2, benchmark=stories_small.SMALL)
    run = Path(out) / f"{world}-{max_steps}"
    sweep = ParetoSweep(evaluator, divisions=4, every_n_epochs=0, output_dir=str(run / "front"))
    # mid-epoch, after step HALF, as a crash-safe run checkpoints (not at the epoch's end)
    checkpoints = ModelCheckpoint(
        dirpath=str(run / "checkpoints"),
        filename="step{step}",
        auto_insert_metric_name=False,
        every_n_train_steps=HALF,
        save_top_k=-1,
        save_on_train_epoch_end=False,
    )
    trainer = tiny.quiet_trainer(
        devices=world,
        strategy=FSDP2Strategy() if world > 1 else "auto",
        max_steps=max_steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=out,
        callbacks=[sweep, checkpoints],
    )
    trainer.fit(module, datamodule=data, ckpt_path=resume)
    assert is_fully_sharded(module.policy.model) == (world > 1)
    state = module.policy.adapter.state_dict()  # gathered from the shards on every rank
    if rank == 0:
        torch.save({k: v.detach().clone() for k, v in state.items()}, run / "adapter.pt")


def _launch(world: int, out: Path, max_steps: int, resume: str | None = None) -> None:
    args = (world, tiny.free_port(), str(out), max_steps, resume)
    if world == 1:
        _fit(0, *args)
    else:
        mp.start_processes(_fit, args=args, nprocs=world, start_method="fork")


def _front(path: Path) -> np.ndarray:
    with path.open(newline="") as handle:
        header, *rows = list(csv.reader(handle))
    assert {"gain", "gain_se", "regret"} <= set(header)
    return np.asarray(rows, dtype=np.float64)


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp2_through_lightning_trains_resumes_and_sweeps_like_one_process(
    forked_stories_env, tmp_path
):
    _launch(1, tmp_path, STEPS)
    _launch(2, tmp_path, HALF)
    checkpoint = tmp_path / f"2-{HALF}" / "checkpoints" / f"step{HALF}.ckpt"
    _launch(2, tmp_path, STEPS, resume=str(checkpoint))

    one = torch.load(tmp_path / f"1-{STEPS}" / "adapter.pt")
    two = torch.load(tmp_path / f"2-{STEPS}" / "adapter.pt")
    initial = _module().policy.adapter.state_dict()
    moved = max((one[k] - initial[k]).abs().max().item() for k in one)
    diff = max((one[k] - two[k]).abs().max().item() for k in one)
    print(f"adapter after {STEPS} steps: max |1 proc - 2 procs (FSDP2, resumed)| = {diff:.1e}")
    assert moved > 1e-2  # the adapter did train, so the comparison means something
    assert diff < 1e-5

    # the checkpoint is gathered on rank zero: the adapter (and the optimiser), not the base
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["state_dict"] and all("panacea_" in k for k in saved["state_dict"])
    assert saved["global_step"] == HALF and saved["optimizer_states"]
    unsharded = _module()
    unsharded.load_state_dict(saved["state_dict"], strict=False)
    three = torch.load(tmp_path / f"2-{HALF}" / "adapter.pt")
    for key, value in unsharded.policy.adapter.state_dict().items():
        torch.testing.assert_close(value, three[key], rtol=0, atol=0)

    # the front both ranks sampled through the sharded model is the one-process front, up to
    # the adapters' float differences above (the same weights give it to 1e-6:
    # test_distributed_sweep.py's FSDP2 case)
    front_one = _front(tmp_path / f"1-{STEPS}" / "front" / "final.csv")
    front_two = _front(tmp_path / f"2-{STEPS}" / "front" / "final.csv")
    assert front_one.shape[0] == 5
    relative = np.abs(front_one - front_two) / np.maximum(np.abs(front_one), 1e-12)
    print(f"front after {STEPS} steps: max relative |1 proc - 2 procs| = {np.nanmax(relative):.1e}")
    np.testing.assert_allclose(front_one, front_two, rtol=1e-4, atol=1e-6)


def test_decoder_blocks_are_the_classes_the_model_names(tiny_llama_dir):
    from panacea_pl.models import PanaceaCritic, PanaceaPolicy

    policy = PanaceaPolicy(str(tiny_llama_dir), adapter=PanaceaConfig(num_general=1))
    blocks = decoder_blocks(policy.model)
    assert blocks == list(policy.model.model.layers)
    critic = PanaceaCritic(str(tiny_llama_dir), adapter=PanaceaConfig(num_general=1))
    assert decoder_blocks(critic) == list(critic.backbone.layers)  # inside the critic's backbone
    with pytest.raises(ValueError, match="_no_split_modules"):
        decoder_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_a_tensor_parallel_mesh_is_refused_with_the_fix(tiny_llama_dir):
    class Mesh:  # what ModelParallelStrategy's 2-D mesh answers
        mesh_dim_names = ("data_parallel", "tensor_parallel")
        ndim = 2

        def __getitem__(self, name):
            return type("Dim", (), {"size": lambda self: 2})()

    from panacea_pl.models import PanaceaPolicy

    module = PanaceaDPO(PanaceaPolicy(str(tiny_llama_dir)))
    module._device_mesh = Mesh()
    with pytest.raises(ValueError, match="tensor_parallel_size=2.*FSDP2Strategy"):
        module.configure_model()


def test_pareto_sweep_refuses_what_a_sharded_model_cannot_sweep():
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    class RankZeroEvaluator:  # a user's evaluator without `distributed`
        def evaluate(self, module, grid):
            raise AssertionError("not reached")

    class ShardedEvaluator(RankZeroEvaluator):
        distributed = True

    fsdp1 = SimpleNamespace(strategy=FSDPStrategy(), world_size=2)
    with pytest.raises(ValueError, match="FSDPStrategy.*FSDP2Strategy"):
        ParetoSweep(ShardedEvaluator()).setup(fsdp1, None, "fit")
    fsdp2 = SimpleNamespace(strategy=FSDP2Strategy(), world_size=2)
    with pytest.raises(ValueError, match="RankZeroEvaluator samples on rank zero only"):
        ParetoSweep(RankZeroEvaluator()).setup(fsdp2, None, "fit")
    ParetoSweep(ShardedEvaluator()).setup(fsdp2, None, "fit")  # every rank samples: fine
    ParetoSweep(RankZeroEvaluator()).setup(
        SimpleNamespace(strategy=fsdp2.strategy, world_size=1), None, "fit"
    )
