"""Multi-objective DPO on the stories benchmark under DDP (2 CPU processes, gloo) against one
process with the same global batch: the same λ on every rank, the same adapter weights and
losses, a reference that is the base model with the adapter off, and synced validation metrics.

The processes are forked (as in test_objectives_aggregation.py) and find each other through the
environment variables a launcher such as torchrun sets, so Lightning's DDP strategy runs as it
does on a cluster.
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.multiprocessing as mp
from lightning.pytorch.strategies import DDPStrategy
from transformers import AutoModelForCausalLM

import stories_small
import tiny
from panacea_pl.benchmarks.stories import StoriesDataModule, StoriesPolicy
from panacea_pl.layers import PanaceaConfig
from panacea_pl.models import sequence_logprobs
from panacea_pl.modules import PanaceaDPO
from panacea_pl.objectives import MultiObjectiveDPOLoss

STEPS = 6
GLOBAL_BATCH = 8  # pairs per optimiser step, whatever the number of processes
VAL_BATCHES = 2  # per process: 16 validation pairs in all either way


class RecordingLoss(MultiObjectiveDPOLoss):
    """Keeps the log-probabilities of the last batch it saw."""

    def forward(self, policy_logps, reference_logps, labels):
        self.last = (policy_logps.detach().clone(), reference_logps.detach().clone())
        return super().forward(policy_logps, reference_logps, labels)


class RecordingDPO(PanaceaDPO):
    """Records every training λ and loss, and the last training batch with its log-probs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[torch.Tensor] = []
        self.losses: list[float] = []
        self.last_batch: dict[str, torch.Tensor] = {}

    def sample_preference(self, batch_size):
        lam = super().sample_preference(batch_size)
        self.seen.append(lam.detach().clone())
        return lam

    def training_step(self, batch, batch_idx):
        keys = ("input_ids", "attention_mask", "response_mask")
        self.last_batch = {k: batch[k].clone() for k in keys}
        loss = super().training_step(batch, batch_idx)
        self.losses.append(loss.item())
        self.last_logps = self.loss.last  # (policy, reference) of this batch
        return loss


def _train(rank: int, world: int, port: int, out: str, per_sample: bool) -> None:
    """One process of a `world`-process run; writes what it saw to `out/{world}-{rank}.pt`."""
    tiny.as_launched_rank(rank, world, port)
    pl.seed_everything(0, verbose=False)
    module = RecordingDPO(
        StoriesPolicy(adapter=PanaceaConfig(num_general=2, num_preferences=2)),
        loss=RecordingLoss(beta=1.25),
        per_sample_preference=per_sample,
        seed=7,
        optimizer=lambda params: torch.optim.SGD(
            params, lr=0.02
        ),  # Adam's first step is lr·sign(g): float noise in a ~0 gradient flips it
    )
    data = StoriesDataModule(
        2, batch_size=GLOBAL_BATCH // world, val_fraction=0.25, benchmark=stories_small.SMALL
    )
    strategy = DDPStrategy(process_group_backend="gloo") if world > 1 else "auto"
    trainer = tiny.quiet_trainer(
        devices=world,
        strategy=strategy,
        max_steps=STEPS,
        val_check_interval=STEPS,
        limit_val_batches=VAL_BATCHES,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        default_root_dir=out,
    )
    trainer.fit(module, datamodule=data)

    base = AutoModelForCausalLM.from_pretrained(module.policy.model_name_or_path).eval()
    batch = module.last_batch
    with torch.no_grad():
        logits = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    base_logps = sequence_logprobs(logits, batch["input_ids"], batch["response_mask"])[0]
    torch.save(
        {
            "world_size": trainer.world_size,
            "lambdas": torch.stack(module.seen),
            "losses": module.losses,
            "adapter": {n: p.detach().clone() for n, p in module.policy.adapter.named_parameters()},
            "val": {k: float(v) for k, v in trainer.callback_metrics.items() if "val/" in k},
            "policy_logps": module.last_logps[0],
            "reference_logps": module.last_logps[1],
            "base_logps": base_logps,
        },
        Path(out) / f"{world}-{rank}.pt",
    )


def _run(out: Path, per_sample: bool) -> tuple[dict, list[dict]]:
    """One process in this test's process, then two forked ones; their records."""
    out.mkdir()
    start = time.perf_counter()
    _train(0, 1, 0, str(out), per_sample)
    one_proc = time.perf_counter() - start
    start = time.perf_counter()
    mp.start_processes(
        _train, args=(2, tiny.free_port(), str(out), per_sample), nprocs=2, start_method="fork"
    )
    print(f"1 process: {one_proc:.1f} s; 2 processes: {time.perf_counter() - start:.1f} s")
    return torch.load(out / "1-0.pt"), [torch.load(out / f"2-{r}.pt") for r in range(2)]


def _max_weight_diff(a: dict, b: dict) -> float:
    return max((a[n] - b[n]).abs().max().item() for n in a)


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_matches_one_process_with_the_same_global_batch(forked_stories_env, tmp_path):
    single, ranks = _run(tmp_path / "out", per_sample=False)
    assert [r["world_size"] for r in ranks] == [2, 2] and single["world_size"] == 1

    # one λ per batch, the same on every rank and the same as in one process
    assert ranks[0]["lambdas"].shape == (STEPS, 2)
    torch.testing.assert_close(ranks[0]["lambdas"], ranks[1]["lambdas"], rtol=0, atol=0)
    torch.testing.assert_close(ranks[0]["lambdas"], single["lambdas"], rtol=0, atol=0)

    # gradients are averaged over ranks: the same steps as one process with the global batch
    weight_diff = _max_weight_diff(single["adapter"], ranks[0]["adapter"])
    trained = _max_weight_diff(single["adapter"], _initial_adapter())
    print(f"adapter: max |1 proc - 2 procs| = {weight_diff:.2e}; moved {trained:.2e} from init")
    assert trained > 1e-2  # the adapter did move, so the comparison means something
    assert weight_diff < 1e-5
    assert _max_weight_diff(ranks[0]["adapter"], ranks[1]["adapter"]) == 0.0
    # the aggregate is taken over the global batch (labels per dimension differ between ranks),
    # so every rank's loss is the one-process loss
    assert ranks[0]["losses"] == ranks[1]["losses"]
    loss_diff = max(abs(a - b) for a, b in zip(single["losses"], ranks[0]["losses"], strict=True))
    print(f"train loss: max |1 proc - 2 procs| = {loss_diff:.2e}")
    assert loss_diff < 5e-5

    # the reference is the base model with the adapter off, under DDP too
    for record in ranks:
        torch.testing.assert_close(record["reference_logps"], record["base_logps"])
        assert (record["policy_logps"] - record["reference_logps"]).abs().max() > 1e-3

    # validation metrics are synced: both ranks log the same numbers; the per-dimension ones
    # (count-weighted torchmetrics means) are those of one process over the same 16 pairs.
    # val/loss is the mean of per-batch aggregates, so its value depends on the batching
    # (8 pairs in one process, 4 per rank here): it is synced, but not comparable.
    assert {"val/loss", "val/happy/accuracy", "val/sad/margin"} <= set(single["val"])
    assert ranks[0]["val"] == ranks[1]["val"]
    per_dimension = [k for k in single["val"] if k.count("/") == 2]
    assert len(per_dimension) == 6 and set(ranks[0]["val"]) == set(single["val"])
    val_diff = max(abs(single["val"][k] - ranks[0]["val"][k]) for k in per_dimension)
    print(f"per-dimension validation metrics: max |1 proc - 2 procs| = {val_diff:.2e}")
    assert val_diff < 1e-5


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_per_sample_preference_matches_one_process(forked_stories_env, tmp_path):
    """With one λ per example, rank r trains on rows r, r + 2, … of the λ that one process
    draws for the global batch (the rows DistributedSampler deals it)."""
    single, ranks = _run(tmp_path / "out", per_sample=True)
    per_rank = GLOBAL_BATCH // 2
    assert single["lambdas"].shape == (STEPS, GLOBAL_BATCH, 2)
    for rank, record in enumerate(ranks):
        assert record["lambdas"].shape == (STEPS, per_rank, 2)
        torch.testing.assert_close(record["lambdas"], single["lambdas"][:, rank::2], rtol=0, atol=0)
    weight_diff = _max_weight_diff(single["adapter"], ranks[0]["adapter"])
    print(f"per-sample λ, adapter: max |1 proc - 2 procs| = {weight_diff:.2e}")
    assert weight_diff < 1e-5


def _initial_adapter() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    pl.seed_everything(0, verbose=False)
    policy = StoriesPolicy(adapter=PanaceaConfig(num_general=2, num_preferences=2))
    return {n: p.detach().clone() for n, p in policy.adapter.named_parameters()}
