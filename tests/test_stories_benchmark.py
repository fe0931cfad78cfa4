"""The stories benchmark end to end on a small setting: samples, pairs, optimum, cache, evaluation.

The full default build (m = 2) is the slow test at the end; it prints its time and numbers.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch

import stories_small
from panacea_pl.benchmarks.stories import StoriesBenchmark, evaluate_policy, locate_checkpoint
from panacea_pl.benchmarks.stories import benchmark as benchmark_module
from panacea_pl.evaluation.generation import row_chunks
from panacea_pl.layers import PanaceaAdapter, PanaceaConfig, inject_adapter

# The training tests' small benchmark, with fewer prompts and more reference samples per prompt.
SMALL = stories_small.SMALL | dict(num_prompts=4, reference_samples_per_prompt=128, batch_size=288)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("stories_cache")


@pytest.fixture(scope="module")
def bench(shared_data, cache_dir):
    start = time.perf_counter()
    built = StoriesBenchmark(shared_data, cache_dir, num_dimensions=2, **SMALL).build()
    print(f"small stories build: {time.perf_counter() - start:.1f} s")
    return built


@pytest.fixture(scope="module")
def base_model(bench):
    return bench.load_model()


def test_missing_checkpoint_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="huggingface.co/karpathy/tinyllamas"):
        locate_checkpoint(tmp_path)


def test_samples_shapes_and_conflict(bench):
    samples = bench.samples
    assert len(samples.texts) == 4 * (128 + 16) and samples.rewards.shape == (576, 10)
    assert samples.for_pairs.sum() == 4 * 16
    rewards = samples.reference_rewards(2)
    assert rewards.shape == (4, 128, 2)
    happy, sad = rewards.reshape(-1, 2).T
    assert np.corrcoef(happy, sad)[0, 1] < 0  # the m = 2 pair conflicts


def test_pairs_file_is_generic_schema(bench):
    rows = [json.loads(line) for line in bench.pairs_path.read_text().splitlines()]
    assert len(rows) == 4 * 32
    texts = set(bench.samples.texts[bench.samples.for_pairs].tolist())
    for row in rows:
        assert set(row) == {"prompt", "response_a", "response_b", "happy", "sad"}
        assert row["prompt"] in bench.prompts
        assert row["response_a"] in texts and row["response_b"] in texts
        assert row["response_a"].strip() and row["response_b"].strip()
        assert -1 <= row["happy"] <= 1 and -1 <= row["sad"] <= 1  # soft labels 2p − 1


def test_pairs_load_through_the_data_layer(bench, tmp_path):
    from panacea_pl.data import DimensionSpec, SourceSpec, bind_dimensions, pair_records

    source = SourceSpec(name="stories", schema="generic", path=str(bench.pairs_path))
    dims = [DimensionSpec(name=n, source="stories", field=n) for n in bench.dimension_names]
    table, report = pair_records(
        source, bind_dimensions([source], dims)["stories"], 2, cache_dir=str(tmp_path)
    )
    rows = [json.loads(line) for line in bench.pairs_path.read_text().splitlines()]
    informative = [r for r in rows if r["happy"] or r["sad"]]  # a soft tie in both: no label
    assert 0 < len(table) == len(informative) and len(rows) - len(informative) == sum(
        report.dropped.values()
    )
    expected = [[r["happy"], r["sad"]] for r in informative]
    np.testing.assert_allclose(np.array(table["labels"]), expected, atol=1e-6)  # float32


def _happy_labels(bench):
    rows = [json.loads(line) for line in bench.pairs_path.read_text().splitlines()]
    scorer = bench.scorers[0]
    margin = np.array([scorer(r["response_a"]) - scorer(r["response_b"]) for r in rows])
    label = np.array([r["happy"] for r in rows], dtype=float)
    return label, 1 / (1 + np.exp(-margin / bench.label_temperature))


def test_soft_labels_are_the_bradley_terry_probability(bench):
    label, expected = _happy_labels(bench)
    assert bench.soft_labels and len(np.unique(label)) > 2
    np.testing.assert_allclose((1 + label) / 2, expected, atol=1e-6)


def test_hard_labels_are_drawn_from_bradley_terry(shared_data, cache_dir):
    hard = StoriesBenchmark(shared_data, cache_dir, num_dimensions=2, soft_labels=False, **SMALL)
    label, expected = _happy_labels(hard)
    assert set(np.unique(label)) == {-1.0, 1.0}
    # mean of Bernoulli(p) labels vs mean p: 4 standard errors
    se = np.sqrt((expected * (1 - expected)).sum()) / len(label)
    assert abs((label == 1).mean() - expected.mean()) < 4 * se


def test_optimum_moves_the_right_way_and_kl_grows_as_beta_shrinks(bench):
    grid = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    reference = bench.samples.reference_rewards(2).mean((0, 1))
    front = bench.optimal_front(grid)
    assert front.objectives[0, 0] > reference[0] and front.objectives[0, 1] < reference[1]
    assert front.objectives[2, 1] > reference[1] and front.objectives[2, 0] < reference[0]
    assert (front.ess > 5).all() and (front.kl > 0).all()
    kls = []
    for beta in (2.0, 1.0, 0.5):
        other = StoriesBenchmark(bench.checkpoint.parent, bench.cache_dir, beta=beta, **SMALL)
        kls.append(other.optimal_front(grid).kl)
    assert (np.diff(np.stack(kls), axis=0) > 0).all()


def test_second_build_is_a_cache_hit(bench, shared_data, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a cached artefact was rebuilt")

    monkeypatch.setattr(benchmark_module, "draw_samples", fail)
    monkeypatch.setattr(benchmark_module, "convert_llama2c", fail)
    monkeypatch.setattr(benchmark_module, "tilted_front", fail)
    start = time.perf_counter()
    again = StoriesBenchmark(shared_data, bench.cache_dir, num_dimensions=2, **SMALL).build()
    print(f"cached stories build: {time.perf_counter() - start:.2f} s")
    assert again.pairs_path == bench.pairs_path and again.model_dir == bench.model_dir
    np.testing.assert_array_equal(
        again.optimal_front().objectives, bench.optimal_front().objectives
    )


def test_a_model_another_process_converted_meanwhile_is_kept(shared_data, tmp_path, monkeypatch):
    """Two ranks started on an empty cache both convert the model. The one that finishes second
    keeps the folder already in place (the other rank may be loading from it) and drops its own."""
    convert = benchmark_module.convert_llama2c
    published = []

    def other_process_finishes_first(checkpoint, tokenizer, out):
        final = out.with_name(out.name[1:].removesuffix(f".{os.getpid()}.tmp"))
        convert(checkpoint, tokenizer, final)
        (final / "written_by_the_other_process").touch()
        published.append(final)
        return convert(checkpoint, tokenizer, out)

    monkeypatch.setattr(benchmark_module, "convert_llama2c", other_process_finishes_first)
    bench = StoriesBenchmark(shared_data, tmp_path, num_dimensions=2, **SMALL)
    assert bench.model_dir == published[0]
    assert (bench.model_dir / "written_by_the_other_process").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [bench.model_dir.name]  # no copy left behind
    assert bench.load_model().config.vocab_size == 512


def test_more_dimensions_reuse_the_samples(bench, shared_data, monkeypatch):
    monkeypatch.setattr(benchmark_module, "draw_samples", None)  # sampling again would fail
    three = StoriesBenchmark(shared_data, bench.cache_dir, num_dimensions=3, **SMALL)
    rows = [json.loads(line) for line in three.pairs_path.read_text().splitlines()]
    two = [json.loads(line) for line in bench.pairs_path.read_text().splitlines()]
    # Pairs are chosen for the m dimensions at hand (those that differ in more of them first),
    # so m = 3 labels its own pairs, drawn from the same sampled responses.
    texts = set(bench.samples.texts[bench.samples.for_pairs].tolist())
    assert all(r["response_a"] in texts and r["response_b"] in texts for r in rows)
    assert len(rows) == len(two) and set(rows[0]) == set(two[0]) | {"nature"}
    assert three.optimal_front().objectives.shape == (28, 3)


def test_evaluate_base_model(bench, base_model):
    result = bench.evaluate(base_model, samples_per_prompt=2)
    front = bench.optimal_front()
    lam = front.preferences
    assert result.objectives.shape == (11, 2) and len(result.texts[0]) == 8
    np.testing.assert_array_equal(result.kl, 0.0)
    np.testing.assert_allclose(result.regret, front.value - (lam * result.objectives).sum(1))
    assert result.regret_within_error().all()
    assert np.isfinite(result.hypervolume_ratio) and result.optimal_hypervolume > 0
    assert len(result.rows()) == 11 and "regret" in result.rows()[0]


@pytest.mark.slow
def test_evaluate_with_adapter(bench, base_model):
    model = bench.load_model()
    adapter = inject_adapter(model, PanaceaConfig(num_general=2, num_preferences=2))
    at_init = bench.evaluate(model, adapter=adapter, samples_per_prompt=2)
    base = bench.evaluate(base_model, samples_per_prompt=2)
    assert at_init.texts == base.texts  # U = 0: the adapter is the identity at init
    np.testing.assert_allclose(at_init.kl, 0.0, atol=1e-5)

    torch.manual_seed(0)
    for layer in adapter.layers.values():
        torch.nn.init.normal_(layer.panacea_U, std=0.3)
    adapter.set_preference([0.3, 0.7])
    moved = bench.evaluate(model, adapter=PanaceaAdapter.of(model), samples_per_prompt=2)
    assert adapter.current_preference.tolist() == pytest.approx([0.3, 0.7])  # restored
    assert moved.kl.mean() > 0.05
    assert not np.allclose(moved.kl[0], moved.kl[-1])  # λ reaches every sample row
    assert moved.regret_within_error(z=3).all()


@pytest.mark.slow
def test_evaluate_with_a_set_preference_function(bench, base_model):
    calls = []
    result = evaluate_policy(
        base_model,
        bench.load_tokenizer(),
        bench.optimal_front(),
        bench.prompts,
        bench.max_new_tokens,
        set_preference=calls.append,
        reference=base_model,
        per_sample=False,
        samples_per_prompt=2,
        batch_size=5,
        progress=False,
    )
    assert all(len(torch.unique(rows, dim=0)) == 1 for rows in calls)
    assert sum(len(rows) for rows in calls) == 11 * 8
    np.testing.assert_allclose(result.kl, 0.0, atol=1e-5)
    with pytest.raises(ValueError, match="reference"):
        evaluate_policy(base_model, None, bench.optimal_front(), [], 1, set_preference=print)


def test_chunks_respect_preference_boundaries():
    assert row_chunks(10, 4, None) == [(0, 4), (4, 8), (8, 10)]
    assert row_chunks(10, 4, 5) == [(0, 4), (4, 5), (5, 9), (9, 10)]


@pytest.mark.slow
def test_default_sampling_build_m2(shared_data, tmp_path):
    """The default settings' per-prompt sampling (512 reference stories of 48 tokens, which the
    optimum's importance weights rest on) on 4 of the 16 prompts, with few pairs: the optimum's
    effective sample size, the conflict of the dimensions and the base model's zero regret are
    per-prompt properties, so a quarter of the prompts shows them at a quarter of the cost.
    `make demo` builds the full default."""
    start = time.perf_counter()
    bench = StoriesBenchmark(
        shared_data,
        tmp_path,
        num_dimensions=2,
        num_prompts=4,
        pair_responses_per_prompt=16,
        pairs_per_prompt=32,
        progress=False,
    ).build()
    assert bench.reference_samples_per_prompt == 512 and bench.max_new_tokens == 48
    built = time.perf_counter() - start
    front = bench.optimal_front()
    corners = [0, 5, 10]  # λ = (1, 0), (0.5, 0.5), (0, 1)
    base = bench.evaluate(bench.load_model(), samples_per_prompt=8)
    print(
        f"\nm=2 default build: {built:.1f} s; β_eff = {bench.beta_eff}"
        f"\nλ {front.preferences[corners].tolist()}"
        f"\noptimum {front.objectives[corners].round(4).tolist()} ± {front.objectives_se[corners].max():.4f}"
        f"\nKL {front.kl[corners].round(3).tolist()}  ESS mean {front.ess[corners].round(0).tolist()}"
        f" min {front.ess_min[corners].round(0).tolist()} of {front.num_samples}"
        f"\nbase model {base.objectives.mean(0).round(4).tolist()}, regret {base.regret[corners].round(4).tolist()}"
        f" ± {base.regret_se.max():.4f}, HV ratio {base.hypervolume_ratio:.3f}"
    )
    rewards = bench.samples.reference_rewards(3).reshape(-1, 3)
    correlation = np.corrcoef(rewards.T)
    assert (correlation[np.triu_indices(3, 1)] < 0).all()  # m = 3: pairwise conflicting
    assert (front.ess_min > 20).all()
    assert base.regret_within_error().all()
