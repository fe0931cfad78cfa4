"""ReferenceDraw, the importance-sampled G on the optimum's own reference samples: the base model
scores G = 0 and KL = 0; a policy whose log-ratio is the optimum's, λ·r/β_eff − log Z with Z
normalised over each prompt's draw, scores G = 1 with tilt slope and correlation 1, and the
optimal front's own KL and objectives."""

from __future__ import annotations

import numpy as np
import pytest

import stories_small
from panacea_pl.benchmarks.stories import StoriesBenchmark
from panacea_pl.benchmarks.stories.reference_draw import ReferenceDraw

SMALL = stories_small.SMALL | dict(num_prompts=4, reference_samples_per_prompt=64)


@pytest.fixture(scope="module")
def draw(shared_data, tmp_path_factory):
    cache = tmp_path_factory.mktemp("reference_draw_cache")
    bench = StoriesBenchmark(shared_data, cache, num_dimensions=2, **SMALL).build()
    return bench, ReferenceDraw(bench, num_boot=20)


def test_base_model_and_optimum_on_the_draw(draw):
    bench, draw = draw
    assert draw.base_logps.shape == (4, 64) and np.isfinite(draw.base_logps).all()
    lam = [0.7, 0.3]
    base = draw.gain(draw.base_logps, lam)
    assert base["G_is"] == pytest.approx(0.0, abs=1e-12) and base["kl_is"] == pytest.approx(0.0)
    assert base["ess_is_min"] == pytest.approx(64)
    tilt = draw.rewards @ np.asarray(lam) / draw.beta
    log_z = np.log(np.exp(tilt).mean(1, keepdims=True))
    optimum = draw.gain(draw.base_logps + tilt - log_z, lam)
    assert optimum["G_is"] == pytest.approx(1.0, abs=1e-9)
    assert optimum["tilt_slope"] == pytest.approx(1.0) and optimum["tilt_corr"] == pytest.approx(1)
    front = bench.optimal_front(np.array([lam]))
    assert optimum["kl_is"] == pytest.approx(float(front.kl[0]), rel=1e-6)
    np.testing.assert_allclose(optimum["objectives_is"], front.objectives[0], rtol=1e-6)
    half_tilt = 0.5 * tilt - np.log(np.exp(0.5 * tilt).mean(1, keepdims=True))
    half = draw.gain(draw.base_logps + half_tilt, lam)
    assert 0 < half["G_is"] < 1 and half["G_is_se"] > 0


def test_batch_reads_the_rows_of_another_draw(draw):
    """`batch(rows, samples)` builds the rows of a separate draw (distill.py's fresh stories),
    not the benchmark's rows with the same indices."""
    bench, draw = draw
    other = bench.samples
    flipped = type(other)(**{**vars(other), "response_ids": other.response_ids[::-1].copy()})
    rows = np.flatnonzero(other.prompt_index == 1)[:3]
    mine, theirs = draw.batch(rows), draw.batch(rows, flipped)
    assert theirs.sequences.shape == mine.sequences.shape
    resp = theirs.sequences[:, -other.response_ids.shape[1] :]
    expected = np.where(flipped.response_ids[rows] >= 0, flipped.response_ids[rows], 0)
    np.testing.assert_array_equal(resp.numpy(), expected)
    assert not np.array_equal(theirs.sequences.numpy(), mine.sequences.numpy())
