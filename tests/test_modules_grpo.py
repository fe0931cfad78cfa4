"""PanaceaGRPO on tiny models: one λ per group through the shared rollout component, the KL in
the reward, per token, exact per state or in the loss, one-hot λ is single-objective GRPO, a short fit, and the shipped stories
config through the `panacea-pl` console script."""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import DataLoader

import tiny
from panacea_pl.data.collate import PromptCollator
from panacea_pl.layers import PanaceaConfig
from panacea_pl.models import PanaceaPolicy, ScoredRollout, token_logprobs
from panacea_pl.models.experience import (
    group_order,
    policy_token_logps,
    prompt_cache,
    sample_and_score,
    shared_prompt_token_logps,
    token_kl,
)
from panacea_pl.modules import PanaceaGRPO
from panacea_pl.modules.on_policy import minibatches
from panacea_pl.objectives import RLOOAdvantage, TchebycheffAdvantage
from panacea_pl.rows import repeat_rows
from test_modules_ppo import SaveParameters, TokenShare, fit_on_prompts, prompt_batch, prompt_rows

ROOT = Path(__file__).resolve().parents[1]


def build(model_dir, **kwargs) -> PanaceaGRPO:
    torch.manual_seed(0)
    policy = PanaceaPolicy(str(model_dir), adapter=PanaceaConfig(num_general=2, num_preferences=2))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter, so that λ and the reference matter
        for layer in policy.adapter.layers.values():
            layer.panacea_U.copy_(torch.randn(layer.panacea_U.shape, generator=gen) * 0.3)
    settings = dict(group_size=3, max_new_tokens=5, kl_coef=0.2)
    return PanaceaGRPO(policy, TokenShare(), **(settings | kwargs))


def test_each_group_shares_one_lambda_and_the_kl_enters_the_reward(tiny_llama_dir):
    module = build(tiny_llama_dir).train()
    scored = module.score_rollout(prompt_batch(tiny_llama_dir))
    n = 4 * 3
    assert scored.rewards.shape == (n, 2) and scored.logps.shape[0] == n
    groups = scored.preference.view(4, 3, 2)
    torch.testing.assert_close(groups, groups[:, :1].expand(-1, 3, -1))
    assert groups[:, 0].unique(dim=0).shape[0] == 4  # one λ per prompt
    # rows of a group are the same prompt
    prompts = scored.rollout.prompt_ids()
    assert all(prompts[3 * j] == prompts[3 * j + g] for j in range(4) for g in range(3))
    assert (scored.kl != 0).all()
    expected = scored.rewards - 0.2 * scored.kl[:, None]
    torch.testing.assert_close(module.training_rewards(scored), expected)
    in_loss = build(tiny_llama_dir, kl_in="loss")
    torch.testing.assert_close(in_loss.training_rewards(scored), scored.rewards)
    assert in_loss.policy_loss.kl_coef == 0.2 and module.policy_loss.kl_coef == 0.0


def test_one_hot_lambda_is_single_objective_grpo(tiny_llama_dir):
    """λ = e_0 for every group: the advantage is TRL's (r − mean_g)/(std_g + 1e-4) of dimension
    0's KL-penalised reward, and at ρ = 1 the token-normalised loss is −Σ_j A_j |y_j| / Σ_j |y_j|."""
    module = build(tiny_llama_dir).train()
    one_hot = torch.tensor([1.0, 0.0])
    scored = module.score_rollout(prompt_batch(tiny_llama_dir), one_hot)
    assert torch.equal(scored.preference, one_hot.expand(12, 2))
    advantages = module.advantages(scored).advantages
    reward = (scored.rewards[:, 0] - 0.2 * scored.kl).view(4, 3)
    expected = (reward - reward.mean(1, keepdim=True)) / (reward.std(1, keepdim=True) + 1e-4)
    torch.testing.assert_close(advantages, expected.flatten())
    out = module.grpo_loss(scored, advantages, torch.arange(12))
    lengths = scored.mask.sum(-1).float()
    torch.testing.assert_close(out.loss, -(advantages * lengths).sum() / lengths.sum())
    assert out.clip_fraction == 0 and out.approx_kl < 1e-10


def test_log_probs_from_the_first_action_on_match_the_full_pass(tiny_model_dir):
    """The LM head on the response positions only (`first_action`, `logits_to_keep`): the
    response actions' log-probs are those of the full pass, the prompt's are 0, and gradients
    through them match too (Llama and GPT-2)."""
    module = build(tiny_model_dir).train()
    scored = module.score_rollout(prompt_batch(tiny_model_dir))
    rollout, mask = scored.rollout, scored.mask
    first = rollout.first_action
    assert first == rollout.prompt_length - 1 and not mask[:, :first].any() and mask[:, first].any()
    args = (rollout.sequences, rollout.attention_mask, rollout.position_ids)
    policy = module.policy
    with policy.preference(scored.preference):
        full = policy_token_logps(policy, *args)
        (full * mask).sum().backward()
        grads = {k: p.grad.clone() for k, p in policy.adapter.named_parameters()}
        module.zero_grad(set_to_none=True)
        kept = policy_token_logps(policy, *args, first)
        (kept * mask).sum().backward()
    assert kept.shape == full.shape and (kept[:, :first] == 0).all()
    torch.testing.assert_close(kept[:, first:], full[:, first:])
    for key, p in policy.adapter.named_parameters():
        torch.testing.assert_close(p.grad, grads[key], msg=key)
    with torch.no_grad(), policy.preference(scored.preference):  # what the rollout stored
        expected = token_logprobs(
            policy.model(input_ids=args[0], attention_mask=args[1], position_ids=args[2]).logits,
            args[0],
        )
    torch.testing.assert_close(scored.logps[mask], expected[mask])


def test_each_prompt_run_once_per_group_gives_the_full_pass_log_probs(tiny_model_dir):
    """`shared_prompt_token_logps`: the prompt block once per group through a KV cache, under
    the reference (what `sample_and_score` uses it for) and under one λ per group; one
    response per prompt falls back to the full pass."""
    module = build(tiny_model_dir).train()
    scored = module.score_rollout(prompt_batch(tiny_model_dir))
    rollout, mask, policy = scored.rollout, scored.mask, module.policy
    args = (rollout.sequences, rollout.attention_mask, rollout.position_ids)
    first = rollout.first_action
    with torch.no_grad():
        rows = []
        hook = policy.model.register_forward_pre_hook(
            lambda _, args, kwargs: rows.append(kwargs["input_ids"].shape), with_kwargs=True
        )
        with policy.reference():
            full = policy_token_logps(policy, *args, first)
            rows.clear()
            shared = shared_prompt_token_logps(policy, rollout, 3)
            hook.remove()
            prompt, length = rollout.prompt_length, rollout.sequences.shape[1]
            assert rows == [(4, prompt), (12, length - prompt)]  # each prompt once, then responses
            single = shared_prompt_token_logps(policy, rollout, 1)
        assert (shared[:, :first] == 0).all() and torch.equal(single, full)
        torch.testing.assert_close(shared[mask], full[mask])
        torch.testing.assert_close(scored.ref_logps[mask], full[mask])
        with policy.preference(scored.preference):
            full = policy_token_logps(policy, *args, first)
        shared = shared_prompt_token_logps(policy, rollout, 3, scored.preference)
        torch.testing.assert_close(shared[mask], full[mask])
        mixed = torch.rand(scored.preference.shape, generator=torch.Generator().manual_seed(1))
        mixed = mixed / mixed.sum(-1, keepdim=True)
        with policy.preference(mixed):  # λ differs within the groups: the full pass
            full = policy_token_logps(policy, *args, first)
        assert torch.equal(shared_prompt_token_logps(policy, rollout, 3, mixed), full)


def test_each_prompt_prefilled_once_per_group_samples_the_same_rollout(tiny_model_dir):
    """`sample_and_score` with `share_prompts` (the default; `prompt_cache` for the prefill):
    at one seed, the same responses and log-probs as with every row running its own prompt;
    GRPO's per-group λ and PPO's per-row λ (nothing to share)."""
    module = build(tiny_model_dir).train()
    batch = prompt_batch(tiny_model_dir)
    per_group = module.group_preference(batch["input_ids"].shape[0])
    per_row = torch.distributions.Dirichlet(torch.ones(2)).sample((len(per_group),))
    rows = [repeat_rows(batch[key], 3) for key in ("input_ids", "attention_mask")]
    with torch.no_grad(), module.policy.preference(per_group):
        assert len(prompt_cache(module.policy, *rows, per_group, 3)) == 1
        assert prompt_cache(module.policy, *rows, per_row, 3) == {}
        assert prompt_cache(module.policy, *rows, per_group, 3, {"num_beams": 2}) == {}
    for lam in (per_group, per_row):
        runs = []
        for share in (True, False):
            torch.manual_seed(3)
            runs.append(
                sample_and_score(
                    module.policy, module.reward, batch, lam, 3, 5, module.tokenizer,
                    share_prompts=share,
                )
            )  # fmt: skip
        shared, alone = runs
        assert torch.equal(shared.rollout.sequences, alone.rollout.sequences)
        mask = shared.mask
        torch.testing.assert_close(shared.logps[mask], alone.logps[mask])
        torch.testing.assert_close(shared.ref_logps[mask], alone.ref_logps[mask])
        torch.testing.assert_close(shared.rewards, alone.rewards)


def test_the_loss_pass_runs_each_prompt_once_for_whole_groups(tiny_model_dir):
    """`PanaceaGRPO.token_logps`: rows that make whole groups (in any order) share each prompt's
    pass, with the log-probs and adapter gradients of every row running its own prompt."""
    module = build(tiny_model_dir).train()
    scored = module.score_rollout(prompt_batch(tiny_model_dir))
    policy, mask = module.policy, scored.mask
    index = torch.tensor([4, 3, 5, 11, 10, 9])  # groups 1 and 3, shuffled
    ordered, back = group_order(index, 3)
    assert torch.equal(ordered[back], index)
    assert group_order(torch.tensor([0, 1, 3]), 3) is None
    assert group_order(torch.tensor([1, 2, 3]), 3) is None
    rollout = scored.rollout.rows(index)
    args = (rollout.sequences, rollout.attention_mask, rollout.position_ids, rollout.first_action)
    results = []
    for shared in (True, False):
        module.zero_grad(set_to_none=True)
        if shared:
            shapes = []
            hook = policy.model.register_forward_pre_hook(
                lambda _, a, kw, shapes=shapes: shapes.append(kw["input_ids"].shape[0]),
                with_kwargs=True,
            )
            logps = module.token_logps(scored, index)
            hook.remove()
            assert shapes == [2, 6]  # the two prompts, then the six rows' responses
        else:
            with policy.preference(scored.preference[index]):
                logps = policy_token_logps(policy, *args)
        (logps * mask[index]).sum().backward()
        grads = {k: p.grad.clone() for k, p in policy.adapter.named_parameters()}
        results.append((logps.detach(), grads))
    (shared, shared_grads), (alone, alone_grads) = results
    torch.testing.assert_close(shared[mask[index]], alone[mask[index]])
    for key, grad in alone_grads.items():
        torch.testing.assert_close(shared_grads[key], grad, msg=key)


def test_minibatches_of_a_multiple_of_the_group_hold_whole_groups():
    """`minibatches(group=G)`: each pass covers every row once, in chunks of whole groups of G
    consecutive rows, shuffled by group; a size that G does not divide shuffles rows."""
    torch.manual_seed(0)
    chunks = list(minibatches(24, 8, 2, torch.device("cpu"), group=4))
    assert [len(c) for c in chunks] == [8] * 6
    for p in range(2):
        assert sorted(torch.cat(chunks[3 * p : 3 * p + 3]).tolist()) == list(range(24))
    for chunk in chunks:
        for start in chunk.view(-1, 4)[:, 0].tolist():
            assert start % 4 == 0
        offsets = chunk.view(-1, 4) - chunk.view(-1, 4)[:, :1]
        assert torch.equal(offsets, torch.arange(4).expand(2, 4))
    heads = torch.cat(chunks[:3]).view(-1, 4)[:, 0].tolist()
    assert heads != sorted(heads)  # groups shuffled
    rows = torch.cat(list(minibatches(24, 6, 1, torch.device("cpu"), group=4)))  # 6 % 4 != 0
    assert sorted(rows.tolist()) == list(range(24))
    assert any(group_order(c, 4) is None for c in minibatches(24, 8, 3, torch.device("cpu")))


def test_grpo_minibatches_run_each_prompt_once(tiny_llama_dir, monkeypatch):
    """A GRPO step over minibatches of whole groups takes the shared-prompt pass (two prompts'
    blocks, then their rows' responses) for every minibatch."""
    module = build(tiny_llama_dir, group_size=3, minibatch_size=6, epochs=1)
    scored = module.score_rollout(prompt_batch(tiny_llama_dir))
    advantages = module.advantages(scored).advantages
    shapes = []
    hook = module.policy.model.register_forward_pre_hook(
        lambda _, a, kw: shapes.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    steps = []
    monkeypatch.setattr("panacea_pl.modules.on_policy.optimizer_step", lambda *a: steps.append(1))
    module.optimise(scored, advantages)
    hook.remove()
    assert len(steps) == len(scored) // 6
    assert shapes == [2, 6] * len(steps)


def test_one_on_policy_step_with_the_kl_in_the_loss_skips_the_old_logps_pass(tiny_llama_dir):
    """π_old = π on the only step: the step's own log-probs stand in for a separate pass (as TRL
    with num_iterations = 1), with the same loss and the same log-probs filled in."""
    module = build(tiny_llama_dir, kl_in="loss").train()
    assert not module.needs_old_logps(12)
    assert build(tiny_llama_dir, kl_in="loss", epochs=2).needs_old_logps(12)
    assert build(tiny_llama_dir, kl_in="loss", minibatch_size=4).needs_old_logps(12)
    assert build(tiny_llama_dir).needs_old_logps(12)  # the KL in the reward needs log π
    scored = module.score_rollout(prompt_batch(tiny_llama_dir))
    lean = dataclasses.replace(scored, logps=None)
    with pytest.raises(ValueError, match="without policy log-probs"):
        lean.kl  # noqa: B018
    advantages = module.advantages(scored).advantages
    order = torch.randperm(12)
    full = module.grpo_loss(scored, advantages, order)
    skipped = module.grpo_loss(lean, advantages, order)
    torch.testing.assert_close(skipped.loss, full.loss)
    torch.testing.assert_close(lean.logps[scored.mask], scored.logps[scored.mask])
    with pytest.raises(ValueError, match="one step over every row"):
        module.grpo_loss(dataclasses.replace(scored, logps=None), advantages, order[:4])


def read_metrics(log_dir: Path) -> list[dict[str, str]]:
    with open(log_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_fit_tchebycheff_rloo_kl_in_loss_trains_and_logs(tiny_llama_dir, tmp_path):
    module = build(
        tiny_llama_dir,
        advantage=RLOOAdvantage(),
        aggregator=TchebycheffAdvantage(ideal="running", num_preferences=2),
        kl_in="loss",
        loss_normalization="sequence",
        epochs=2,
        minibatch_size=4,
        optimizer=lambda params: torch.optim.AdamW(params, lr=0.01, weight_decay=0.0),
    )
    trainer, before = fit_on_prompts(module, tiny_llama_dir, tmp_path, "grpo")
    # 2 batches × 2 prompts × G = 3 → 6 rows; 2 epochs × ⌈6 / 4⌉ = 4 steps per batch
    assert trainer.global_step == 8
    after = module.policy.adapter.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert torch.isfinite(module.aggregator.ideal_point).all()
    metrics = trainer.logged_metrics
    assert metrics["train/kl_loss"] > 0 and 0 <= metrics["train/clip_fraction"] <= 1
    for key in ("train/even/reward", "train/odd/weight", "train/lambda/even", "val/kl"):
        assert key in metrics, key


def test_clear_errors(tiny_llama_dir):
    with pytest.raises(ValueError, match="group_size"):
        build(tiny_llama_dir, group_size=1)
    with pytest.raises(ValueError, match="kl_in"):
        build(tiny_llama_dir, kl_in="both")
    with pytest.raises(ValueError, match="dropout"):
        policy = PanaceaPolicy(
            str(tiny_llama_dir), adapter=PanaceaConfig(num_general=2, dropout=0.1)
        )
        PanaceaGRPO(policy, TokenShare())
    module = build(tiny_llama_dir, dimension_names=["odd", "even"])
    with pytest.raises(ValueError, match="in the same order"):
        module.on_fit_start()
    scored = module.score_rollout(prompt_batch(tiny_llama_dir))
    assert isinstance(scored, ScoredRollout)
    with pytest.raises(ValueError, match="preference must be"):
        module.score_rollout(prompt_batch(tiny_llama_dir), torch.ones(5, 2) / 2)


FIXED_EXACT = [  # `FixedPreferenceGRPO`'s documented command, with the exact per-state KL
    "--model.class_path=panacea_pl.baselines.FixedPreferenceGRPO",
    "--model.init_args.preference=[1.0,0.0]",
    "--model.init_args.kl_in=exact",
]
WITH_EMA = [  # the recipe's weight average (its sweep is dropped), added as the README says
    "--trainer.callbacks+=panacea_pl.callbacks.TrainableEMA",
    "--trainer.callbacks.decay=0.9",
]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [WITH_EMA, FIXED_EXACT], ids=["shipped", "fixed_lambda_exact_kl"])
def test_shipped_grpo_config_fits_through_the_console_script(
    shared_data, tmp_path, extra, panacea_cli
):
    """`panacea-pl fit --config experiments/stories/panacea_grpo.yaml` with tiny overrides (its
    weight average kept, its sweep dropped; and the fixed-λ, exact-KL variant the docs give), in
    a process of its own (`panacea_cli`): exit 0, a checkpoint written, the per-dimension rewards
    logged."""
    args = [
        "fit",
        "--config",
        str(ROOT / "experiments" / "stories" / "panacea_grpo.yaml"),
        "--trainer.max_epochs=1",
        "--trainer.callbacks=[]",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.save_dir={tmp_path}",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
        "--model.init_args.group_size=2",
        "--model.init_args.max_new_tokens=8",
        "--model.init_args.minibatch_size=4",
        "--data.init_args.num_prompts=4",
        "--data.init_args.batch_size=4",
        *extra,
    ]
    code, out = panacea_cli.run(args, cwd=tmp_path, env={"PANACEA_DATA_DIR": str(shared_data)})
    assert code == 0, out[-6000:]
    checkpoints = list(tmp_path.rglob("*.ckpt"))
    assert checkpoints, "no checkpoint written"
    state = torch.load(checkpoints[0], weights_only=False)
    assert state["global_step"] == 2  # 8 rows, the recipe's one pass × 2 minibatches of 4
    assert any("panacea" in k for k in state["state_dict"])
    rows = read_metrics(next(tmp_path.rglob("metrics.csv")).parent)
    assert {"train/happy/reward", "train/sad/objective", "train/kl"} <= set().union(*rows)
    if extra == WITH_EMA:  # the checkpoint's weights are the average; the raw ones kept beside
        recipe = yaml.safe_load((ROOT / "experiments/stories/panacea_grpo.yaml").read_text())
        assert "panacea_pl.callbacks.TrainableEMA" in {
            c["class_path"] for c in recipe["trainer"]["callbacks"]
        }
        key = next(k for k in state["callbacks"] if k.startswith("TrainableEMA"))
        average, names = state["callbacks"][key]["average"], state["callbacks"][key]["names"]
        assert state["callbacks"][key]["step"] == 2 and names
        for name, value in zip(names, average, strict=True):
            assert torch.equal(state["state_dict"][name], value)
        raw = state["callbacks"][key]["raw"]
        assert any(not torch.equal(r, a) for r, a in zip(raw, average, strict=True))
    if extra == FIXED_EXACT:  # the run's saved config is the fixed-λ module with the exact KL
        config = next(tmp_path.rglob("config.yaml")).read_text()
        assert "panacea_pl.baselines.FixedPreferenceGRPO" in config
        assert "kl_in: exact" in config
        assert any(float(r.get("train/kl_loss") or 0) > 0 for r in rows)  # the exact KL term


class Strided(torch.utils.data.Sampler):
    """Rows rank, rank + W, … (read when iterated, in the forked rank): the rows whose λ
    `PanaceaModule.sample_preference` gives that rank."""

    def __init__(self, size: int):
        self.size = size

    def __iter__(self):
        world, rank = 1, 0
        if torch.distributed.is_initialized():
            world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        return iter(range(rank, self.size, world))

    def __len__(self) -> int:
        return self.size


def fit_ranks(module, tmp_path, batch_size, **trainer_kwargs) -> None:
    tmp_path.mkdir(parents=True, exist_ok=True)
    rows = prompt_rows(module.policy.model_name_or_path)
    loader = DataLoader(
        rows,
        batch_size=batch_size,
        sampler=Strided(len(rows)),
        collate_fn=PromptCollator(module.tokenizer.pad_token_id),
    )
    trainer = tiny.quiet_trainer(
        use_distributed_sampler=False,
        max_epochs=1,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        callbacks=[SaveParameters(tmp_path)],
        **trainer_kwargs,
    )
    trainer.fit(module, train_dataloaders=loader)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ddp_processes_equal_one_with_the_global_batch(tiny_llama_dir, tmp_path):
    """Greedy rollouts (so both runs see the same responses), one λ per prompt dealt like the
    prompts, sequence-level normalisation and the k3 term (greedy groups have equal rewards, so
    the KL is what moves the adapter): 2 ranks × 2 prompts train the weights 1 × 4 prompts do."""
    settings = DDP_SETTINGS
    single = build(tiny_llama_dir, **settings)
    initial = {k: p.detach().clone() for k, p in single.named_parameters() if p.requires_grad}
    fit_ranks(single, tmp_path / "one", batch_size=4)
    ddp = build(tiny_llama_dir, **settings)
    fit_ranks(
        ddp, tmp_path / "two", batch_size=2, devices=2, accelerator="cpu", strategy="ddp_fork"
    )
    one = torch.load(tmp_path / "one" / "rank0.pt")
    ranks = [torch.load(tmp_path / "two" / f"rank{r}.pt") for r in (0, 1)]
    assert any(not torch.equal(initial[k], one[k]) for k in initial)
    for key, value in one.items():
        torch.testing.assert_close(ranks[0][key], value, msg=lambda m, k=key: f"{k}: {m}")
        torch.testing.assert_close(ranks[1][key], value, msg=lambda m, k=key: f"{k}: {m}")


DDP_SETTINGS = dict(
    generation_kwargs={"do_sample": False},
    kl_in="loss",
    loss_normalization="sequence",
    # SGD: Adam's first step g/(|g| + ε) would magnify float noise in near-zero gradients
    optimizer=lambda params: torch.optim.SGD(params, lr=1.0),
)


def _fit_fsdp2(rank: int, world: int, port: int, model_dir: str, out: str) -> None:
    """One rank of a 2-process FSDP2 GRPO fit (2 prompts each); rank 0 saves the adapter."""
    from panacea_pl.models.sharding import is_fully_sharded
    from panacea_pl.strategies import FSDP2Strategy

    tiny.as_launched_rank(rank, world, port)
    module = build(Path(model_dir), **DDP_SETTINGS)
    fit_ranks(module, Path(out), batch_size=2, devices=world, strategy=FSDP2Strategy())
    assert is_fully_sharded(module.policy.model)
    state = module.policy.adapter.state_dict()  # gathered from the shards on every rank
    if rank == 0:
        torch.save({k: v.detach().clone() for k, v in state.items()}, Path(out) / "adapter.pt")


@pytest.mark.slow
@pytest.mark.distributed
def test_two_fsdp2_processes_equal_one_with_the_global_batch(tiny_llama_dir, tmp_path):
    """The DDP test's run with the policy sharded (FSDP2: the frozen base and the adapter, one
    unit per decoder block): greedy generation steps every rank until all are done, and the
    adapter after one iteration of 2 ranks × 2 prompts is that of 1 × 4 prompts."""
    import torch.multiprocessing as mp

    single = build(tiny_llama_dir, **DDP_SETTINGS)
    initial = {k: v.clone() for k, v in single.policy.adapter.state_dict().items()}
    fit_ranks(single, tmp_path / "one", batch_size=4)
    one = single.policy.adapter.state_dict()
    args = (2, tiny.free_port(), str(tiny_llama_dir), str(tmp_path / "two"))
    mp.start_processes(_fit_fsdp2, args=args, nprocs=2, start_method="fork")
    two = torch.load(tmp_path / "two" / "adapter.pt")
    assert any(not torch.equal(initial[k], one[k]) for k in one)
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, msg=lambda m, k=key: f"{k}: {m}")


def test_token_kl_credits_each_token_with_the_kl_still_to_come(tiny_llama_dir):
    """kl_in="token": token t's advantage is A − β·(K_t − b_t) on response tokens, 0 elsewhere,
    with K_t = Σ_{t' ≥ t} (log π − log π_ref)(y_t') and b_t the mean of K_t over the group's
    other responses that have a token at t; A is the group advantage of the rewards alone."""
    module = build(tiny_llama_dir, kl_in="token").train()
    scored = module.score_rollout(prompt_batch(tiny_llama_dir))
    torch.testing.assert_close(module.training_rewards(scored), scored.rewards)
    adv = module.advantages(scored).advantages
    tokens = module.token_advantages(scored, adv)
    n, t = scored.mask.shape
    to_come = torch.zeros(n, t)
    for row in range(n):
        for col in range(t):
            if scored.mask[row, col]:
                later = scored.mask[row, col:]
                to_come[row, col] = (scored.logps[row, col:] - scored.ref_logps[row, col:])[
                    later
                ].sum()
    expected = torch.zeros(n, t)
    for row in range(n):
        group = range(3 * (row // 3), 3 * (row // 3) + 3)
        for col in range(t):
            if not scored.mask[row, col]:
                continue
            others = [to_come[o, col] for o in group if o != row and scored.mask[o, col]]
            baseline = sum(others) / len(others) if others else 0.0
            expected[row, col] = adv[row] - 0.2 * (to_come[row, col] - baseline)
    torch.testing.assert_close(tokens, expected)
    assert (tokens[~scored.mask] == 0).all()
    out = module.grpo_loss(scored, tokens, torch.arange(n))
    assert torch.isfinite(out.loss)


def test_exact_kl_takes_each_state_s_kl_over_the_vocabulary(tiny_model_dir):
    """kl_in="exact": token t's advantage is A − β·(K_{t+1} − b_t) (the sampled KL after t, its
    leave-one-out group baseline), and the loss adds β·KL(π(·|s_t) ‖ π_ref(·|s_t)) per response
    token, summed over the whole vocabulary from the full pass with the adapter on (at the row's
    λ) and off, normalised like the surrogate; for whole groups (each prompt once) and any rows."""
    module = build(tiny_model_dir, kl_in="exact").train()
    token = build(tiny_model_dir, kl_in="token").train()
    scored = module.score_rollout(prompt_batch(tiny_model_dir))
    adv = module.advantages(scored).advantages
    mask, n = scored.mask, len(scored)
    log_ratio = (scored.logps - scored.ref_logps) * mask
    after = torch.zeros_like(log_ratio)
    after[:, :-1] = log_ratio.flip(-1).cumsum(-1).flip(-1)[:, 1:]
    expected = torch.zeros_like(after)
    for row in range(n):
        group = range(3 * (row // 3), 3 * (row // 3) + 3)
        for col in torch.nonzero(mask[row]).flatten().tolist():
            others = [after[o, col] for o in group if o != row and mask[o, col]]
            baseline = sum(others) / len(others) if others else 0.0
            expected[row, col] = adv[row] - 0.2 * (after[row, col] - baseline)
    tokens = module.token_advantages(scored, adv)
    torch.testing.assert_close(tokens, expected)
    r = scored.rollout
    with torch.no_grad(), module.policy.preference(scored.preference):
        logits = module.policy.model(
            input_ids=r.sequences, attention_mask=r.attention_mask, position_ids=r.position_ids
        ).logits[:, :-1]
    with torch.no_grad(), module.policy.reference():
        ref = module.policy.model(
            input_ids=r.sequences, attention_mask=r.attention_mask, position_ids=r.position_ids
        ).logits[:, :-1]
    p, q = logits.log_softmax(-1), ref.log_softmax(-1)
    kl = (p.exp() * (p - q)).sum(-1)
    assert (kl[mask] > 0).all()
    for index in (torch.tensor([4, 3, 5, 11, 10, 9]), torch.tensor([0, 7, 2])):
        out = module.grpo_loss(scored, tokens, index)
        surrogate = token.grpo_loss(scored, tokens, index).loss
        m = mask[index].float()
        torch.testing.assert_close(out.kl, (kl[index] * m).sum() / m.sum())
        torch.testing.assert_close(out.loss, surrogate + 0.2 * out.kl)
        # the KL term's gradient is that of the exact per-state KL (λ slots included)
        module.zero_grad(set_to_none=True)
        out.loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_token_kl_hand_value():
    """p = (½, ½), q = (¼, ¾): KL = ½ ln 2 + ½ ln ⅔."""
    logits = torch.log(torch.tensor([[0.5, 0.5]]))
    ref = torch.log(torch.tensor([[0.25, 0.75]]))
    expected = 0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0)
    torch.testing.assert_close(token_kl(logits, ref), torch.tensor([expected]))
    assert token_kl(ref, ref).abs().max() < 1e-6


def test_fixed_preference_grpo_samples_every_group_at_its_lambda(tiny_llama_dir):
    """`FixedPreferenceGRPO`: every group of the rollout and the evaluation run at the one λ."""
    from panacea_pl.baselines import FixedPreferenceGRPO

    torch.manual_seed(0)
    policy = PanaceaPolicy(str(tiny_llama_dir), adapter=PanaceaConfig(num_preferences=2))
    module = FixedPreferenceGRPO(
        policy, TokenShare(), preference=[0.3, 0.7], group_size=3, max_new_tokens=4
    )
    scored = module.score_rollout(prompt_batch(tiny_llama_dir))
    assert torch.equal(scored.preference, torch.tensor([[0.3, 0.7]]).expand(12, 2))
    assert torch.equal(module.evaluation_preference(), torch.tensor([0.3, 0.7]))
    with pytest.raises(ValueError):
        FixedPreferenceGRPO(policy, TokenShare(), preference=[0.3, 0.3])
