"""Stories sweeps on common random numbers: one point for a policy that ignores λ, G = 0 for the
base model, reproducible, independent of the chunking; G and the base point in the evaluator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import stories_small
from panacea_pl.benchmarks.stories import StoriesBenchmark, evaluate_policy
from panacea_pl.layers import PanaceaAdapter, PanaceaConfig, inject_adapter

SMALL = stories_small.SMALL | dict(num_prompts=4, reference_samples_per_prompt=128, batch_size=288)


@pytest.fixture(scope="module")
def bench(shared_data, tmp_path_factory):
    cache = tmp_path_factory.mktemp("stories_crn_cache")
    return StoriesBenchmark(shared_data, cache, num_dimensions=2, **SMALL).build()


@pytest.fixture(scope="module")
def moved(bench):
    """A model whose random adapter (fixed seed, whatever ran before) makes λ matter."""
    model = bench.load_model()
    adapter = inject_adapter(model, PanaceaConfig(num_general=2, num_preferences=2))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in adapter.layers.values():
            layer.panacea_U.copy_(torch.randn(layer.panacea_U.shape, generator=gen) * 0.1)
            layer.panacea_V.copy_(torch.randn(layer.panacea_V.shape, generator=gen) * 0.1)
    return model


def test_base_model_is_one_point_and_has_no_gain(bench):
    result = bench.evaluate(bench.load_model(), samples_per_prompt=2)
    assert all(texts == result.texts[0] for texts in result.texts)  # the same draws at every λ
    np.testing.assert_array_equal(result.objectives, result.objectives[[0] * 11])
    np.testing.assert_array_equal(result.gain, 0.0)
    np.testing.assert_array_equal(result.base_objectives, result.objectives[0])
    assert result.mean_gain == 0.0 and result.mean_gain_se == 0.0


def test_zero_adapter_gives_one_point_at_the_base(bench):
    model = bench.load_model()
    adapter = inject_adapter(
        model, PanaceaConfig(num_general=2, num_preferences=2)
    )  # U = 0 at init
    result = bench.evaluate(model, adapter=adapter, samples_per_prompt=2)
    np.testing.assert_array_equal(result.objectives, result.objectives[[0] * 11])
    np.testing.assert_array_equal(result.base_objectives, result.objectives[0])
    np.testing.assert_allclose(result.gain, 0.0, atol=1e-3)  # only the float noise of the KL


@pytest.mark.slow
def test_sweep_is_reproducible_and_chunking_does_not_matter(bench, moved):
    adapter = PanaceaAdapter.of(moved)
    one = bench.evaluate(moved, adapter=adapter, samples_per_prompt=2)
    again = bench.evaluate(moved, adapter=adapter, samples_per_prompt=2)
    chunked = evaluate_policy(
        moved,
        bench.load_tokenizer(),
        bench.optimal_front(),
        bench.prompts,
        bench.max_new_tokens,
        adapter=adapter,
        samples_per_prompt=2,
        batch_size=5,  # 88 rows: 18 chunks instead of one, and 2 for the base instead of one
        progress=False,
    )
    other_seed = bench.evaluate(moved, adapter=adapter, samples_per_prompt=2, seed=1)
    assert one.texts == again.texts == chunked.texts
    np.testing.assert_array_equal(one.objectives, chunked.objectives)
    np.testing.assert_allclose(one.kl, chunked.kl, atol=1e-5)
    np.testing.assert_allclose(one.gain, chunked.gain, atol=1e-4)
    assert one.texts != other_seed.texts
    # λ matters, and G is finite with a standard error
    assert not np.allclose(one.objectives[0], one.objectives[-1])
    assert np.isfinite(one.gain).all() and (one.gain_se > 0).all()
    assert np.isfinite(one.mean_gain) and one.mean_gain_se > 0
    assert {"gain", "gain_se"} <= set(one.rows()[0])


@pytest.mark.slow
def test_base_draws_are_the_sweeps_draws(bench, moved):
    """The base model sampled alone equals the base rows of a sweep: the same keys."""
    base = bench.evaluate(bench.load_model(), samples_per_prompt=2)
    adapter = PanaceaAdapter.of(moved)
    with adapter.disabled():
        off = bench.evaluate(moved, samples_per_prompt=2, base=False)
    assert off.texts == base.texts
    policy = bench.evaluate(moved, adapter=adapter, samples_per_prompt=2)
    np.testing.assert_array_equal(policy.base_objectives, base.objectives[0])
    # G(λ) = 1 − regret(π) / regret(π_ref), with regret(π_ref) the base model's at each λ
    np.testing.assert_allclose(policy.gain, 1 - policy.regret / base.regret, rtol=1e-9)
    # the base model's metrics come with every sweep: what sweeping it alone reports
    np.testing.assert_allclose(policy.base_regret, base.regret, rtol=1e-9)
    assert policy.base_hypervolume_ratio == pytest.approx(base.hypervolume_ratio, rel=1e-12)
    assert policy.hypervolume_ratio != pytest.approx(base.hypervolume_ratio)


@pytest.mark.slow
def test_stories_evaluator_reports_gain_and_the_base_point(bench, tmp_path):
    """G per λ with its standard error in the columns (CSV, W&B table), its mean in the summary
    (W&B summary), beside the hypervolume ratio; the base model's point for the plot."""
    from types import SimpleNamespace

    from panacea_pl.benchmarks.stories import StoriesEvaluator
    from panacea_pl.models import PanaceaPolicy
    from panacea_pl.preference import simplex_grid

    policy = PanaceaPolicy(
        str(bench.model_dir), adapter=PanaceaConfig(num_general=2, num_preferences=2)
    )
    evaluator = StoriesEvaluator(
        2, bench.checkpoint.parent, bench.cache_dir, benchmark=SMALL, samples_per_prompt=8
    )
    result = evaluator.evaluate(SimpleNamespace(policy=policy), simplex_grid(2, 2))
    metrics = result.metrics()
    assert {"mean_gain", "mean_gain_se", "hypervolume_ratio", "mean_regret"} <= set(metrics)
    assert metrics["mean_gain"] == pytest.approx(0.0, abs=1e-3)  # a fresh adapter: the base
    assert metrics["base_hypervolume_ratio"] == pytest.approx(metrics["hypervolume_ratio"])
    assert metrics["base_mean_regret"] == pytest.approx(metrics["mean_regret"], abs=1e-6)
    np.testing.assert_allclose(result.columns["gain"], 0.0, atol=1e-3)
    assert result.columns["gain_se"].shape == (3,)
    np.testing.assert_array_equal(result.base, result.objectives[0])
    assert "gain" in result.header()
