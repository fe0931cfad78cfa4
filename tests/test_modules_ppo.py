"""PanaceaPPO on tiny models: rollouts under per-sample λ, the KL-penalised per-dimension
returns, the first PPO step, training with checkpoints, the reward-model path, DDP, and a short
run on the stories benchmark whose front must move toward the optimum."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

import tiny
from panacea_pl.baselines import FixedPreferencePPO, run_dps
from panacea_pl.benchmarks.stories import (
    StoriesBenchmark,
    StoriesEvaluator,
    StoriesPolicy,
    StoriesPromptDataModule,
    StoriesReward,
)
from panacea_pl.callbacks import ParetoSweep, TrainableEMA
from panacea_pl.cli import run_lightning_cli
from panacea_pl.data.collate import PromptCollator
from panacea_pl.layers import PanaceaConfig
from panacea_pl.models import PanaceaCritic, PanaceaPolicy, VectorRewardModel, token_logprobs
from panacea_pl.models.generation import decode_rows as _decode
from panacea_pl.models.rollout import Rollout
from panacea_pl.modules import PanaceaPPO, RewardFunction, VectorRewardFunction
from panacea_pl.objectives import LagrangianAdvantage, TchebycheffAdvantage

PROMPTS = ["Once upon a time", "She loved to play", "The sad cat", "Human: How do I bake"]


class TokenShare(RewardFunction):
    """Dimension i: the share of response tokens whose id is even (i = 0) or odd (i = 1)."""

    dimension_names = ["even", "odd"]

    def forward(self, rollout: Rollout) -> torch.Tensor:
        rows = []
        for ids in rollout.response_ids(keep_stop=True):
            even = sum(t % 2 == 0 for t in ids) / max(len(ids), 1)
            rows.append([even, 1.0 - even])
        return torch.tensor(rows, device=rollout.sequences.device)


def prompt_rows(model_dir) -> list[dict]:
    tok = AutoTokenizer.from_pretrained(model_dir)
    return [{"prompt": p, "prompt_ids": [tok.bos_token_id, *tok(p)["input_ids"]]} for p in PROMPTS]


def prompt_batch(model_dir) -> dict:
    tok = AutoTokenizer.from_pretrained(model_dir)
    return PromptCollator(tok.pad_token_id)(prompt_rows(model_dir))


def fit_on_prompts(module, model_dir, tmp_path, name: str) -> tuple[pl.Trainer, dict]:
    """One epoch of 2 batches of 2 prompts (train and val), CSV-logged; (trainer, the adapter's
    state before)."""
    before = {k: v.clone() for k, v in module.policy.adapter.state_dict().items()}
    loader = DataLoader(
        prompt_rows(model_dir),
        batch_size=2,
        collate_fn=PromptCollator(module.tokenizer.pad_token_id),
    )
    trainer = tiny.quiet_trainer(
        max_epochs=1,
        logger=pl.loggers.CSVLogger(tmp_path, name=name),
        log_every_n_steps=1,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    return trainer, before


def build(model_dir, module_class=PanaceaPPO, randomise=True, **kwargs) -> PanaceaPPO:
    torch.manual_seed(0)
    policy = PanaceaPolicy(str(model_dir), adapter=PanaceaConfig(num_general=2, num_preferences=2))
    critic = PanaceaCritic(str(model_dir), adapter=PanaceaConfig(num_general=2, num_preferences=2))
    settings = dict(max_new_tokens=6, samples_per_prompt=2, minibatch_size=4, ppo_epochs=2)
    module = module_class(policy, critic, TokenShare(), **(settings | kwargs))
    if randomise:  # a trained-looking adapter, so that λ and the reference matter
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for layer in policy.adapter.layers.values():
                layer.panacea_U.copy_(torch.randn(layer.panacea_U.shape, generator=gen) * 0.3)
    return module


def test_rollout_log_probs_per_sample_lambda_and_reference(tiny_llama_dir):
    module = build(tiny_llama_dir).train()
    scored = module.score_rollout(prompt_batch(tiny_llama_dir))
    rollout, n = scored.rollout, len(PROMPTS) * 2
    assert rollout.sequences.shape[0] == n and scored.rewards.shape == (n, 2)
    assert scored.preference.shape == (n, 2) and scored.preference.unique(dim=0).shape[0] == n
    assert rollout.response_lengths.min() >= 1
    args = dict(
        input_ids=rollout.sequences,
        attention_mask=rollout.attention_mask,
        position_ids=rollout.position_ids,
    )
    with torch.no_grad():
        for row in (0, n - 1):  # each row's log-probs are those under its own λ
            with module.policy.preference(scored.preference[row]):
                logits = module.policy.model(**args).logits
            expected = token_logprobs(logits, rollout.sequences)[row]
            mask = rollout.action_mask[row]
            torch.testing.assert_close(scored.logps[row][mask], expected[mask])
        base = tiny.load(tiny_llama_dir)
        reference = token_logprobs(base(**args).logits, rollout.sequences)
    mask = rollout.action_mask
    torch.testing.assert_close(scored.ref_logps[mask], reference[mask])
    assert (scored.kl != 0).all()


def test_returns_are_the_reward_minus_the_kl_penalty(tiny_llama_dir):
    """With γ = λ_GAE = 1 the return at the first response token is r_i − β·Σ_t log π/π_ref:
    per dimension, the objective whose optimum is π_ref·exp(λ·r/β)."""
    module = build(tiny_llama_dir, kl_coef=0.3, gamma=1.0, gae_lambda=1.0, whiten_advantages=False)
    scored = module.score_rollout(prompt_batch(tiny_llama_dir))
    experience, rows = module.make_experience(scored)
    expected = scored.rewards - 0.3 * scored.kl[:, None]
    torch.testing.assert_close(rows["prompt_returns"], expected)
    # LS: the aggregated advantage is Σ_i λ_i A_i, token by token
    aggregated = (rows["advantages"] * scored.preference[:, None, :]).sum(-1)
    torch.testing.assert_close(experience.advantages, aggregated)
    assert (experience.advantages[~experience.mask] == 0).all()


def test_first_minibatch_starts_at_ratio_one(tiny_llama_dir):
    module = build(tiny_llama_dir).train()
    scored = module.score_rollout(prompt_batch(tiny_llama_dir))
    experience, _ = module.make_experience(scored)
    batch = experience.rows(torch.arange(4))
    loss, parts = module.ppo_losses(batch)
    assert parts["clip_fraction"] == 0
    assert parts["approx_kl"] < 1e-10
    # at ρ = 1 the clipped surrogate is −mean_t A_t
    expected = -(batch.advantages * batch.mask).sum() / batch.mask.sum()
    torch.testing.assert_close(parts["policy_loss"], expected)
    assert parts["value_loss"].shape == (2,) and torch.isfinite(loss)


def read_metrics(log_dir: Path) -> list[dict[str, str]]:
    with open(log_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def fit(module, tmp_path, epochs=2, validate=False, **trainer_kwargs) -> pl.Trainer:
    rows = prompt_rows(module.policy.model_name_or_path)
    collate = PromptCollator(module.tokenizer.pad_token_id)
    loader = DataLoader(rows, batch_size=2, collate_fn=collate)
    trainer = tiny.quiet_trainer(
        max_epochs=epochs,
        logger=pl.loggers.CSVLogger(tmp_path, name="ppo"),
        log_every_n_steps=1,
        default_root_dir=tmp_path,
        **trainer_kwargs,
    )
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader if validate else None)
    return trainer


@pytest.mark.slow
def test_fit_trains_policy_and_critic_logs_per_dimension_and_checkpoints(tiny_llama_dir, tmp_path):
    module = build(tiny_llama_dir, randomise=False)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = fit(module, tmp_path, validate=True, num_sanity_val_steps=0)
    # 2 epochs × 2 batches; 4 rows a batch → 1 minibatch × 2 PPO epochs = 2 steps each
    assert trainer.global_step == 8
    after = module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("policy.") and "panacea_U" in k for k in changed)
    assert any(k.startswith("critic.value_head") for k in changed)
    assert not any(".base_layer." in k or "embed_tokens" in k for k in changed)

    rows = read_metrics(Path(trainer.log_dir))
    keys = set().union(*rows)
    for name in ("even", "odd"):
        for key in ("reward", "objective", "advantage", "advantage_std", "value", "return"):
            assert f"train/{name}/{key}" in keys
        assert f"train/{name}/value_loss" in keys and f"train/lambda/{name}" in keys
    for key in ("objective", "kl", "loss", "policy_loss", "value_loss", "clip_fraction"):
        values = [float(r[f"train/{key}"]) for r in rows if r.get(f"train/{key}")]
        assert len(values) == 4 and all(math.isfinite(v) for v in values), key
    # validation rolls out at the centre of the simplex, once per epoch
    for key in ("val/kl", "val/even/reward", "val/odd/objective"):
        assert len([r for r in rows if r.get(key)]) == 2, key

    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)["state_dict"]
    assert any(k.startswith("critic.") for k in saved) and any("panacea_U" in k for k in saved)
    assert not any("embed_tokens" in k for k in saved)  # the frozen bases stay out
    fresh = build(tiny_llama_dir, randomise=False)
    fresh.on_load_checkpoint({"state_dict": saved})
    fresh.load_state_dict(saved, strict=False)
    for key, value in saved.items():
        torch.testing.assert_close(fresh.state_dict()[key], value)


def test_tchebycheff_and_lagrangian_train_and_log_their_state(tiny_llama_dir, tmp_path):
    tche = build(
        tiny_llama_dir, aggregator=TchebycheffAdvantage(ideal="running", num_preferences=2)
    )
    trainer = fit(tche, tmp_path / "tche", epochs=1)
    assert torch.isfinite(tche.aggregator.ideal_point).all()
    assert "train/even/ideal" in set().union(*read_metrics(Path(trainer.log_dir)))

    lagrangian = build(
        tiny_llama_dir,
        module_class=FixedPreferencePPO,
        preference=[1.0, 0.0],
        aggregator=LagrangianAdvantage(constraint_dimension=1, cost_limit=-1.0),
    )
    trainer = fit(lagrangian, tmp_path / "lagrangian", epochs=1)
    # "odd" share ≤ 1 always, so cost = −odd ≥ −1 = the limit: μ only grows
    assert lagrangian.aggregator.multiplier > 1.0
    rows = read_metrics(Path(trainer.log_dir))
    assert [float(r["train/lambda/even"]) for r in rows if r.get("train/lambda/even")] == [1.0, 1.0]
    assert "train/multiplier" in set().union(*rows)


def test_vector_reward_function_reads_reward_heads_and_minus_cost(tiny_llama_dir, tmp_path):
    scorer = VectorRewardModel(str(tiny_llama_dir), ["helpful"], cost_head=True)
    scorer.save(tmp_path / "scorer")
    reward = VectorRewardFunction(
        str(tmp_path / "scorer"),
        tokenizer=str(tiny_llama_dir),
        dimension_names=["helpful", "harmless"],
    )
    module = build(tiny_llama_dir)
    scored = module.score_rollout(prompt_batch(tiny_llama_dir))
    rollout = scored.rollout
    rewards = reward(rollout)
    texts = _decode(module.tokenizer, rollout.prompt_ids(), rollout.response_ids()).texts
    expected = reward.scorer.score_texts(texts)
    torch.testing.assert_close(rewards[:, 0], expected.scores[:, 0])
    torch.testing.assert_close(rewards[:, 1], -expected.cost)
    reward.train()  # as Lightning does at fit start: no module left in eval mode to warn about
    seen = []
    reward.scorer.register_forward_pre_hook(lambda mod, args: seen.append(mod.training))
    torch.testing.assert_close(reward(rollout), rewards)
    assert seen and not any(seen), "the scorer must score in eval mode"
    assert reward.scorer.training and not any(p.requires_grad for p in reward.parameters())
    with pytest.raises(ValueError, match="no head"):
        VectorRewardFunction(
            str(tmp_path / "scorer"),
            tokenizer=str(tiny_llama_dir),
            dimension_names=["helpful", "harmless"],
            objectives={"helpful": "score:honest", "harmless": "neg_cost"},
        )


def test_frozen_policy_iterations_train_the_critic_only(tiny_llama_dir, tmp_path):
    module = build(
        tiny_llama_dir,
        freeze_policy_iterations=1,
        optimizer=lambda params: torch.optim.AdamW(params, lr=0.01, weight_decay=0.0),
    )
    policy = {k: v.clone() for k, v in module.policy.adapter.state_dict().items()}
    head = module.critic.value_head.weight.clone()
    fit(module, tmp_path, epochs=1, limit_train_batches=1)
    assert int(module.iterations) == 1
    for key, value in module.policy.adapter.state_dict().items():
        torch.testing.assert_close(value, policy[key], rtol=0, atol=0)
    assert not torch.equal(module.critic.value_head.weight, head)
    fit(module, tmp_path, epochs=1, limit_train_batches=1)  # the next iteration moves the policy
    changed = module.policy.adapter.state_dict()
    assert any(not torch.equal(changed[k], policy[k]) for k in policy)


def test_clear_errors(tiny_llama_dir):
    policy = PanaceaPolicy(
        str(tiny_llama_dir), adapter=PanaceaConfig(num_general=2, num_preferences=2)
    )
    critic3 = PanaceaCritic(str(tiny_llama_dir), adapter=PanaceaConfig(num_preferences=3))
    with pytest.raises(ValueError, match="critic gives 3 values"):
        PanaceaPPO(policy, critic3, TokenShare())
    dropout = PanaceaCritic(str(tiny_llama_dir), adapter=PanaceaConfig(num_general=2, dropout=0.1))
    with pytest.raises(ValueError, match="dropout"):
        PanaceaPPO(policy, dropout, TokenShare())
    critic = PanaceaCritic(str(tiny_llama_dir), adapter=PanaceaConfig(num_general=2))
    module = PanaceaPPO(policy, critic, TokenShare(), dimension_names=["odd", "even"])
    with pytest.raises(ValueError, match="in the same order"):
        module.on_fit_start()


def test_fixed_preference_ppo_uses_its_lambda_for_every_row(tiny_llama_dir):
    module = build(tiny_llama_dir, module_class=FixedPreferencePPO, preference=[0.3, 0.7])
    torch.testing.assert_close(module.sample_preference(3), torch.tensor([[0.3, 0.7]] * 3))
    torch.testing.assert_close(module.evaluation_preference(), torch.tensor([0.3, 0.7]))


# ---- DDP: every rank ends with the same weights -----------------------------------------------


class SaveParameters(pl.Callback):
    def __init__(self, folder: Path):
        self.folder = folder

    def setup(self, trainer, pl_module, stage):
        torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool

    def on_train_end(self, trainer, pl_module):
        trainable = {
            k: p.detach().clone() for k, p in pl_module.named_parameters() if p.requires_grad
        }
        buffers = {f"aggregator.{k}": v.clone() for k, v in pl_module.aggregator.named_buffers()}
        torch.save(trainable | buffers, self.folder / f"rank{trainer.global_rank}.pt")


@pytest.mark.distributed
def test_ddp_ranks_stay_identical(tiny_llama_dir, tmp_path):
    """Each rank rolls out different prompts; gradients, the advantage scale and the running
    ideal point are all-reduced, so both ranks end with the same parameters and state."""
    module = build(
        tiny_llama_dir,
        randomise=False,
        aggregator=TchebycheffAdvantage(ideal="running", num_preferences=2),
    )
    initial = {k: p.detach().clone() for k, p in module.named_parameters() if p.requires_grad}
    fit(
        module,
        tmp_path,
        epochs=1,
        accelerator="cpu",
        devices=2,
        strategy="ddp_fork",
        callbacks=[SaveParameters(tmp_path)],
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for key, value in ranks[0].items():
        torch.testing.assert_close(ranks[1][key], value, msg=key)
    assert any(not torch.equal(initial[k], ranks[0][k]) for k in initial)


def _fit_ppo_rank(rank: int, world: int, port: int, model_dir: str, out: str, strategy: str):
    """One rank of a 2-process PPO fit under `strategy` ("ddp" or "fsdp2"); rank 0 saves the
    policy's adapter and the critic's trained parameters (gathered from their shards)."""
    from panacea_pl.models.sharding import is_fully_sharded
    from panacea_pl.strategies import FSDP2Strategy

    tiny.as_launched_rank(rank, world, port)
    pl.seed_everything(0, verbose=False)
    module = build(Path(model_dir), randomise=False, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    sharded = strategy == "fsdp2"
    fit(module, Path(out), epochs=1, devices=world, strategy=FSDP2Strategy() if sharded else "ddp")
    assert is_fully_sharded(module.policy.model) == sharded
    assert is_fully_sharded(module.critic) == sharded
    full = lambda v: v.full_tensor() if hasattr(v, "full_tensor") else v  # noqa: E731
    critic = {k: full(p.detach()).clone() for k, p in module.critic.named_parameters()}
    state = module.policy.adapter.state_dict() | {
        f"critic.{k}": v for k, v in critic.items() if module.critic.get_parameter(k).requires_grad
    }
    if rank == 0:
        torch.save({k: v.detach().clone() for k, v in state.items()}, Path(out) / "trained.pt")


@pytest.mark.slow
@pytest.mark.distributed
def test_ppo_under_fsdp2_trains_what_ddp_trains(tiny_llama_dir, tmp_path):
    """The policy and the critic sharded (FSDP2, one unit per decoder block) on 2 CPU processes:
    sampling steps every rank until all are done, and one epoch trains the policy's adapter and
    the critic to what DDP trains from the same seeds and prompts."""
    import torch.multiprocessing as mp

    for strategy in ("ddp", "fsdp2"):
        args = (2, tiny.free_port(), str(tiny_llama_dir), str(tmp_path / strategy), strategy)
        mp.start_processes(_fit_ppo_rank, args=args, nprocs=2, start_method="fork")
    ddp, fsdp2 = (torch.load(tmp_path / s / "trained.pt") for s in ("ddp", "fsdp2"))
    initial = build(tiny_llama_dir, randomise=False)
    before = initial.policy.adapter.state_dict()
    assert any(not torch.equal(before[k], ddp[k]) for k in before)
    assert any(k.startswith("critic.value_head") for k in ddp)
    assert ddp.keys() == fsdp2.keys()
    for key, value in ddp.items():
        torch.testing.assert_close(fsdp2[key], value, msg=lambda m, k=key: f"{k}: {m}")


# ---- the stories benchmark: the front moves toward the optimum ------------------------------


ITERATIONS = 20


@pytest.mark.slow
def test_short_stories_run_moves_the_front_toward_the_optimum(shared_data, tmp_path, monkeypatch):
    """PPO on the benchmark's ground-truth rewards with β = β_eff: a short run (about 80 s)
    must raise the hypervolume ratio, lower the mean regret, and move along the trade-off:
    happy falls and sad rises from λ_happy = 1 to 0 (the base model's front is one point for
    every λ). The sweeps use common random numbers, so the differences between λ are the
    policy's, not sampling noise. Prints the numbers. The run is seeded; its regret gain is small
    next to the evaluation's noise (64 stories per λ), the longer
    `experiments/stories/panacea_ppo.yaml` shows it clearly."""
    monkeypatch.setenv("PANACEA_DATA_DIR", str(shared_data))
    pl.seed_everything(0)
    bench = StoriesBenchmark(progress=False)
    policy = StoriesPolicy(adapter=PanaceaConfig(num_general=0, num_preferences=2))
    critic = PanaceaCritic(
        str(bench.model_dir),
        adapter=PanaceaConfig(num_general=8, num_preferences=2),
        train_backbone=True,
    )
    module = PanaceaPPO(
        policy,
        critic,
        StoriesReward(num_dimensions=2),
        kl_coef=bench.beta_eff,
        value_clip_range=None,
        samples_per_prompt=4,
        minibatch_size=32,
        ppo_epochs=2,
        max_new_tokens=bench.max_new_tokens,
        optimizer=lambda params: torch.optim.AdamW(params, lr=0.001, weight_decay=0.0),
        critic_lr=0.001,
    )
    evaluator = StoriesEvaluator(num_dimensions=2, samples_per_prompt=4)
    sweep = ParetoSweep(evaluator, divisions=4, every_n_epochs=0, sweep_on_fit_start=True)
    trainer = tiny.quiet_trainer(
        max_epochs=ITERATIONS,
        callbacks=[sweep],
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=StoriesPromptDataModule(batch_size=16))
    wall = time.perf_counter() - start
    before, after = sweep.first_metrics, sweep.last_metrics
    front = evaluator.last_evaluation
    print(
        f"\nstories PPO: {ITERATIONS} iterations × 64 rollouts, {trainer.global_step} optimiser "
        f"steps, {wall:.0f} s (with two sweeps)"
        f"\n  hypervolume ratio {before['hypervolume_ratio']:.3f} -> {after['hypervolume_ratio']:.3f}"
        f"\n  mean regret {before['mean_regret']:.4f} -> {after['mean_regret']:.4f}"
        f"\n  mean KL {after['mean_kl']:.3f}; λ_happy, happy, sad:\n"
        f"{np.c_[front.preferences[:, :1], front.objectives].round(4)}"
    )
    assert trainer.global_step == ITERATIONS * 4
    assert after["hypervolume_ratio"] > before["hypervolume_ratio"] + 0.1
    assert after["mean_regret"] < before["mean_regret"]
    happy, sad = front.objectives[:, 0], front.objectives[:, 1]  # rows: λ_happy = 1, 0.75, …, 0
    assert happy[0] > happy[-1] and sad[-1] > sad[0] + 0.003


# ---- DPS for RLHF: the baseline runner trains FixedPreferencePPO members ---------------------


@pytest.mark.slow
def test_dps_runner_trains_ppo_members_on_prompts_without_a_validation_split(
    tiny_llama_dir, tmp_path
):
    scorer = VectorRewardModel(str(tiny_llama_dir), ["helpful"], cost_head=True)
    scorer.save(tmp_path / "scorer")
    (tmp_path / "prompts.jsonl").write_text("".join(f'{{"prompt": "{p}"}}\n' for p in PROMPTS))
    objectives = {"helpful": "score:helpful", "harmless": "neg_cost"}
    tiny_adapter = {"num_general": 2, "num_preferences": 2}
    config = {
        "seed_everything": 0,
        "baseline": {"kind": "dps", "preferences": [[1.0, 0.0], [0.0, 1.0]], "num_threads": 1},
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(tmp_path),
            "logger": [
                {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": str(tmp_path), "name": "dps_ppo"},
                }
            ],
            "callbacks": [
                {
                    "class_path": "panacea_pl.callbacks.ParetoSweep",
                    "init_args": {
                        "evaluator": {
                            "class_path": "panacea_pl.evaluation.RewardModelEvaluator",
                            "init_args": {
                                "scorer": str(tmp_path / "scorer"),
                                "objectives": objectives,
                                "prompts": PROMPTS,
                                "max_new_tokens": 4,
                                "progress": False,
                            },
                        },
                        "divisions": 1,
                    },
                }
            ],
        },
        "model": {
            "class_path": "panacea_pl.baselines.FixedPreferencePPO",
            "init_args": {
                "preference": [0.5, 0.5],
                "policy": {
                    "class_path": "panacea_pl.models.PanaceaPolicy",
                    "init_args": {
                        "model_name_or_path": str(tiny_llama_dir),
                        "adapter": tiny_adapter,
                    },
                },
                "critic": {
                    "class_path": "panacea_pl.models.PanaceaCritic",
                    "init_args": {
                        "model_name_or_path": str(tiny_llama_dir),
                        "adapter": tiny_adapter,
                    },
                },
                "reward": {
                    "class_path": "panacea_pl.modules.VectorRewardFunction",
                    "init_args": {
                        "scorer": str(tmp_path / "scorer"),
                        "tokenizer": str(tiny_llama_dir),
                        "dimension_names": ["helpful", "harmless"],
                        "objectives": objectives,
                    },
                },
                "max_new_tokens": 4,
                "minibatch_size": 2,
                "ppo_epochs": 1,
            },
        },
        "data": {
            "class_path": "panacea_pl.data.PromptDataModule",
            "init_args": {
                "tokenizer": str(tiny_llama_dir),
                "sources": [
                    {"name": "p", "schema": "prompts", "path": str(tmp_path / "prompts.jsonl")}
                ],
                "dimension_names": ["helpful", "harmless"],
                "tokenization": {"prompt_template": "{prompt}"},
                "batch_size": 2,
                "cache_dir": str(tmp_path / "cache"),
            },
        },
    }
    run = run_dps(config, verbose=False)
    # 2 members × 2 batches of 2 prompts × 1 minibatch of 2 rows × 1 PPO epoch
    assert [m.preference for m in run.members] == [[1.0, 0.0], [0.0, 1.0]]
    assert run.compute["train_steps"] == 4
    assert len(run.result.preferences) == 2 and run.plot.is_file()
    assert "hypervolume" in run.metrics


@pytest.mark.slow
def test_shipped_stories_config_runs_one_iteration(shared_data, tmp_path, monkeypatch):
    """`panacea-pl fit --config experiments/stories/panacea_ppo.yaml`, one PPO iteration on 4 of
    its 16 prompts, no sweep, with the weight average appended as the README's example does:
    the YAML builds the policy, critic, reward and prompts and trains with them, and the
    average follows every optimiser step."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PANACEA_DATA_DIR", str(shared_data))
    config = Path(__file__).resolve().parents[1] / "experiments" / "stories" / "panacea_ppo.yaml"
    cli = run_lightning_cli(
        [
            "fit",
            "--config",
            str(config),
            "--trainer.max_epochs=1",
            "--trainer.callbacks=[]",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
            f"--trainer.logger.save_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--data.init_args.num_prompts=4",
            "--data.init_args.batch_size=4",
            "--trainer.callbacks+=panacea_pl.callbacks.TrainableEMA",  # the README's example
            "--trainer.callbacks.decay=0.995",
        ]
    )
    # 4 prompts × 8 samples = 32 rollouts: one minibatch of 32, 2 PPO epochs
    assert isinstance(cli.model, PanaceaPPO) and cli.trainer.global_step == 2
    (ema,) = [c for c in cli.trainer.callbacks if isinstance(c, TrainableEMA)]
    assert ema.decay == 0.995 and ema.state_dict()["step"] == 2
    assert cli.model.kl_coef == StoriesBenchmark(progress=False).beta_eff
    rows = read_metrics(Path(cli.trainer.log_dir))
    assert {"train/happy/reward", "train/sad/reward", "train/kl"} <= set().union(*rows)
