"""RewardModelEvaluator: the grid in per-sample batches, scores, objective mapping, sweep."""

from __future__ import annotations

import csv
import json

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

import tiny
from panacea_pl.callbacks import ParetoSweep
from panacea_pl.data import DimensionSpec, PreferenceDataModule, SourceSpec, TokenizationSpec
from panacea_pl.evaluation import RewardModelEvaluator
from panacea_pl.layers import PanaceaConfig
from panacea_pl.models import PanaceaPolicy, VectorRewardModel
from panacea_pl.modules import PanaceaDPO
from panacea_pl.preference import simplex_grid

PROMPTS = ["Once upon a time", "The sad cat", "Human: How do I bake bread? Assistant:"]
FAST = {
    "max_new_tokens": 6,
    "progress": False,
    "tokenization": TokenizationSpec(prompt_template="{prompt}"),
}


@pytest.fixture(scope="module")
def scorer_dir(tmp_path_factory, tiny_llama_dir):
    torch.manual_seed(1)
    model = VectorRewardModel(str(tiny_llama_dir), ["helpful", "harmless"], cost_head=True)
    return model.save(tmp_path_factory.mktemp("scorer"))


def make_module(model_dir, trained: bool = True) -> PanaceaDPO:
    module = PanaceaDPO(
        PanaceaPolicy(str(model_dir), adapter=PanaceaConfig(num_general=4, num_preferences=2)),
        dimension_names=["helpful", "harmless"],
        optimizer=lambda p: torch.optim.Adam(p, lr=2e-2),
    )
    if trained:  # U ≠ 0, so that λ changes the outputs
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for layer in module.policy.adapter.layers.values():
                layer.panacea_U.copy_(torch.randn(layer.panacea_U.shape, generator=gen) * 2.0)
    return module.eval()


def test_grid_in_per_sample_batches_equals_one_lambda_at_a_time(tiny_llama_dir, scorer_dir):
    module = make_module(tiny_llama_dir)
    grid = simplex_grid(2, 4)
    # 5 rows per call: chunks mix prompts and λ values, and prompts of different lengths
    together = RewardModelEvaluator(scorer_dir, prompts=PROMPTS, max_rows=5, **FAST)
    result = together.evaluate(module, grid)
    responses = np.array(together.last_generations.responses).reshape(len(grid), len(PROMPTS))
    assert len({tuple(r) for r in responses}) > 1, "λ should change the greedy responses"
    for g, lam in enumerate(grid):
        alone = RewardModelEvaluator(scorer_dir, prompts=PROMPTS, max_rows=64, **FAST)
        single = alone.evaluate(module, lam[None])
        assert alone.last_generations.responses == list(responses[g])
        np.testing.assert_allclose(result.objectives[g], single.objectives[0], atol=1e-5)
    assert result.objective_names == ["helpful reward", "harmless -cost"]
    assert result.objectives.shape == (len(grid), 2) and np.isfinite(result.metrics()["spacing"])


def test_a_policy_without_row_preferences_gets_one_lambda_per_call(
    tiny_llama_dir, scorer_dir, monkeypatch
):
    """The baselines' collections take one λ per batch: no generate call may mix two λ, and the
    front is the same as with per-sample batches."""
    module = make_module(tiny_llama_dir)
    grid = simplex_grid(2, 2)
    per_sample = RewardModelEvaluator(scorer_dir, prompts=PROMPTS, max_rows=4, **FAST)
    expected = per_sample.evaluate(module, grid)
    calls = []
    generate = module.policy.generate

    def recording_generate(input_ids, attention_mask, preference, **kwargs):
        calls.append(preference.clone())
        return generate(input_ids, attention_mask, preference=preference, **kwargs)

    monkeypatch.setattr(module.policy, "generate", recording_generate)
    monkeypatch.setattr(module.policy, "accepts_row_preferences", False, raising=False)
    one_each = RewardModelEvaluator(scorer_dir, prompts=PROMPTS, max_rows=4, **FAST)
    result = one_each.evaluate(module, grid)
    assert [len(c) for c in calls] == [3, 3, 3]  # 3 prompts per λ, never 4 rows across two λ
    assert all((c == c[0]).all() for c in calls)
    assert one_each.last_generations.responses == per_sample.last_generations.responses
    np.testing.assert_allclose(result.objectives, expected.objectives, atol=1e-5)


def test_scores_equal_scoring_the_texts_directly(tiny_llama_dir, scorer_dir):
    module = make_module(tiny_llama_dir)
    grid = simplex_grid(2, 2)
    evaluator = RewardModelEvaluator(
        scorer_dir,
        prompts=PROMPTS,
        objectives={"helpful": "score:harmless", "harmless": "neg_cost"},
        **FAST,
    )
    result = evaluator.evaluate(module, grid)
    texts = evaluator.last_generations.texts
    assert len(texts) == len(grid) * len(PROMPTS)
    assert texts[0].startswith(PROMPTS[0])
    direct = VectorRewardModel.load(scorer_dir).score_texts(texts)
    expected = torch.stack([direct.scores[:, 1], -direct.cost], 1).double().view(3, 3, 2)
    np.testing.assert_allclose(result.objectives, expected.mean(1).numpy(), rtol=1e-5, atol=1e-6)
    se = expected.std(1) / np.sqrt(3)
    np.testing.assert_allclose(result.columns["helpful reward (harmless) se"], se[:, 0], atol=1e-6)
    assert result.objective_names == ["helpful reward (harmless)", "harmless -cost"]
    assert (result.columns["response_tokens"] <= 6).all()


def test_objective_mapping_rules(tiny_llama_dir, tiny_gpt2_dir, scorer_dir):
    no_cost = VectorRewardModel(str(tiny_gpt2_dir), ["helpful", "harmless"])
    with_cost = VectorRewardModel.load(scorer_dir)
    names = ["helpful", "harmless"]
    assert RewardModelEvaluator(with_cost).resolve_objectives(names) == {
        "helpful": "score:helpful",
        "harmless": "neg_cost",
    }
    assert RewardModelEvaluator(no_cost).resolve_objectives(names) == {
        "helpful": "score:helpful",
        "harmless": "score:harmless",
    }
    swapped = RewardModelEvaluator(
        with_cost, objectives={"harmless": "neg_cost", "helpful": "score:helpful"}
    )
    assert list(swapped.resolve_objectives(names)) == names  # the policy's order
    bad = [
        ({"helpful": "score:helpful"}, "every policy dimension"),
        ({"helpful": "score:funny", "harmless": "neg_cost"}, "no head 'funny'"),
        ({"helpful": "score:helpful", "harmless": "cost"}, "neither"),
    ]
    for objectives, message in bad:
        with pytest.raises(ValueError, match=message):
            RewardModelEvaluator(with_cost, objectives=objectives).resolve_objectives(names)
    with pytest.raises(ValueError, match="cost head"):
        RewardModelEvaluator(
            no_cost, objectives={"helpful": "score:helpful", "harmless": "neg_cost"}
        ).resolve_objectives(names)


def test_reference_point_is_the_base_model(tiny_llama_dir, scorer_dir, tmp_path):
    """A fresh adapter is the identity, so every λ scores what the base model scores; a
    configured reference point replaces the base model's; prompts can come from a JSON-lines
    file."""
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"text": p}) + "\n" for p in PROMPTS))
    fresh = make_module(tiny_llama_dir, trained=False)
    grid = simplex_grid(2, 2)
    evaluator = RewardModelEvaluator(scorer_dir, prompts=str(path), prompt_field="text", **FAST)
    result = evaluator.evaluate(fresh, grid)
    assert evaluator.last_base.responses == evaluator.last_generations.responses[: len(PROMPTS)]
    for row in result.objectives:
        np.testing.assert_allclose(row, result.reference_point, atol=1e-6)
    assert result.metrics()["hypervolume"] == pytest.approx(0.0, abs=1e-9)
    assert result.summary["base_helpful"] == pytest.approx(result.reference_point[0])

    configured = RewardModelEvaluator(
        scorer_dir, prompts=PROMPTS, reference_point=[-5.0, -5.0], **FAST
    ).evaluate(make_module(tiny_llama_dir), grid)
    np.testing.assert_array_equal(configured.reference_point, [-5.0, -5.0])
    assert "base_helpful" not in configured.summary
    assert configured.metrics()["hypervolume"] > 0


def test_sweep_with_the_datamodule_prompts(tiny_llama_dir, scorer_dir, tmp_path):
    """ParetoSweep + RewardModelEvaluator for two training steps, prompts from the held-out set."""
    rows = [
        {"prompt": p, "response_a": a, "response_b": b, "helpful": la, "harmless": lb}
        for (p, (a, b), (la, lb)) in zip(
            tiny.PROMPTS * 3, tiny.RESPONSES * 3, tiny.LABELS * 3, strict=True
        )
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    datamodule = PreferenceDataModule(
        tokenizer=str(tiny_llama_dir),
        sources=[SourceSpec(name="toy", schema="generic", path=str(data))],
        dimensions=[DimensionSpec(name=n, source="toy", field=n) for n in ("helpful", "harmless")],
        tokenization=TokenizationSpec(prompt_template="{prompt}", response_template="{response}"),
        batch_size=4,
        val_fraction=0.5,
        cache_dir=str(tmp_path / "cache"),
    )
    evaluator = RewardModelEvaluator(scorer_dir, max_prompts=2, max_new_tokens=4, progress=False)
    sweep = ParetoSweep(evaluator, divisions=2)
    trainer = tiny.quiet_trainer(
        max_steps=2,
        logger=pl.loggers.CSVLogger(tmp_path),
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        callbacks=[sweep],
    )
    trainer.fit(make_module(tiny_llama_dir, trained=False).train(), datamodule=datamodule)
    assert len(set(evaluator.last_base.prompts)) == 2
    held_out = {tuple(ids) for ids in datamodule.val_dataset["prompt_ids"]}
    assert len(held_out) >= 2
    with (tmp_path / "lightning_logs/version_0/pareto/final.csv").open() as handle:
        table = list(csv.reader(handle))
    assert table[0][:4] == [
        "lambda_helpful reward",
        "lambda_harmless -cost",
        "helpful reward",
        "harmless -cost",
    ]
    assert len(table) == 1 + 3
    for key in ("hypervolume", "inner_product", "base_helpful", "base_harmless"):
        assert np.isfinite(sweep.last_metrics[key])
    assert "pareto/hypervolume" in trainer.callback_metrics


def test_no_prompts_without_a_datamodule(tiny_llama_dir, scorer_dir):
    module = make_module(tiny_llama_dir)
    with pytest.raises(ValueError, match="no prompts"):
        RewardModelEvaluator(scorer_dir, progress=False).evaluate(module, simplex_grid(2, 1))


SAMPLED = FAST | {"do_sample": True, "samples_per_prompt": 4, "max_new_tokens": 8}


@pytest.mark.slow
def test_sampled_sweep_uses_common_random_numbers(tiny_llama_dir, scorer_dir):
    """Sampling: a policy that ignores λ (a fresh adapter) is one point at the base model, with
    paired differences of exactly 0; a trained one moves, reproducibly and in any chunking."""
    grid = simplex_grid(2, 4)
    fresh = RewardModelEvaluator(scorer_dir, prompts=PROMPTS, max_rows=64, **SAMPLED)
    result = fresh.evaluate(make_module(tiny_llama_dir, trained=False), grid)
    responses = np.array(fresh.last_generations.responses).reshape(len(grid), -1)
    assert (responses == responses[0]).all()  # the same draws at every λ
    assert fresh.last_base.responses == list(responses[0])
    assert len(set(responses[0])) > 3  # and they are samples, not one greedy answer per prompt
    np.testing.assert_allclose(result.objectives, result.objectives[[0] * len(grid)], atol=1e-6)
    np.testing.assert_allclose(result.base, result.objectives[0], atol=1e-6)
    np.testing.assert_allclose(result.columns["helpful reward - base"], 0.0, atol=1e-6)

    module = make_module(tiny_llama_dir)
    one = RewardModelEvaluator(scorer_dir, prompts=PROMPTS, max_rows=64, **SAMPLED)
    first = one.evaluate(module, grid)
    chunked = RewardModelEvaluator(scorer_dir, prompts=PROMPTS, max_rows=5, **SAMPLED)
    again = chunked.evaluate(module, grid)
    assert one.last_generations.responses == chunked.last_generations.responses
    np.testing.assert_allclose(first.objectives, again.objectives, atol=1e-5)
    assert not np.allclose(first.objectives[0], first.objectives[-1])
    assert (first.columns["harmless -cost - base se"] > 0).all()
    other = RewardModelEvaluator(scorer_dir, prompts=PROMPTS, seed=1, **SAMPLED)
    other.evaluate(module, grid)
    assert other.last_generations.responses != one.last_generations.responses


def test_generate_rows_of_two_shards_equal_all_rows(tiny_llama_dir):
    """Two ranks' plans (contiguous shares, padded to equal chunk counts) give every row once,
    as the one-process call does."""
    from panacea_pl.evaluation.crn import row_keys
    from panacea_pl.evaluation.generation import generate_rows
    from panacea_pl.evaluation.sharding import shard_plan

    module = make_module(tiny_llama_dir)
    policy, tokenizer = module.policy, module.policy.tokenizer()
    prompts = [tokenizer(p).input_ids for p in PROMPTS] * 5
    rows = simplex_grid(2, 4).repeat_interleave(3, 0)
    keys = row_keys(0, torch.arange(15) % 3)
    kwargs = dict(progress=False, noise_keys=keys, max_new_tokens=6, do_sample=True)
    whole = generate_rows(policy, tokenizer, prompts, rows, max_rows=4, **kwargs)
    shards = [
        generate_rows(
            policy, tokenizer, prompts, rows, 4, plan=shard_plan(15, 4, rank=r, world=2), **kwargs
        )
        for r in range(2)
    ]
    assert shards[0].responses + shards[1].responses == whole.responses
    assert shards[0].prompts + shards[1].prompts == whole.prompts
