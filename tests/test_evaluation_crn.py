"""Common random numbers (keyed Gumbel noise), G with its standard error, and the row sharding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from panacea_pl.evaluation.crn import (
    GumbelSampler,
    _mul32,
    gumbel_noise,
    mix32,
    row_keys,
    uniform_noise,
)
from panacea_pl.evaluation.gain import achievable_gain
from panacea_pl.evaluation.sharding import chunk_range, shard_plan


def test_mul32_is_exact_modular_multiplication():
    x = torch.tensor([0, 1, 0xFFFF, 0x10000, 0xDEADBEEF, 0xFFFFFFFF], dtype=torch.int64)
    for c in (0x7FEB352D, 0x846CA68B):
        expected = [(int(v) * c) % 2**32 for v in x]
        assert _mul32(x, c).tolist() == expected


def test_mix32_is_a_bijection_on_a_sample():
    x = torch.arange(1 << 16, dtype=torch.int64) * 65537
    assert len(torch.unique(mix32(x))) == len(x)


def test_noise_depends_on_key_step_and_token_only():
    keys = row_keys(3, torch.arange(10))
    full = uniform_noise(keys, step=5, vocab=17)
    np.testing.assert_array_equal(uniform_noise(keys[4:7], 5, 17), full[4:7])  # not the batch
    assert (uniform_noise(keys, 6, 17) != full).any()  # the step matters
    assert (uniform_noise(row_keys(4, torch.arange(10)), 5, 17) != full).any()  # the seed too
    assert ((full > 0) & (full < 1)).all()
    assert len(torch.unique(keys)) == 10


def test_gumbel_max_is_categorical_sampling():
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0, 0.5])
    n = 100_000
    draws = (logits + gumbel_noise(row_keys(11, torch.arange(n)), 0, 5)).argmax(1)
    freq = torch.bincount(draws, minlength=5).double() / n
    p = logits.double().softmax(0)
    # 5 standard errors of a binomial proportion
    assert ((freq - p).abs() < 5 * (p * (1 - p) / n).sqrt()).all(), (freq, p)


def test_sampler_temperature_and_top_p():
    scores = torch.tensor([[3.0, 2.0, 0.0, -5.0]]).repeat(4000, 1)
    keys = row_keys(0, torch.arange(4000))
    ids = torch.zeros(4000, 7, dtype=torch.long)
    # p = (0.705, 0.259, 0.035, 0.0002): top_p 0.7 keeps token 0 alone, 0.9 tokens 0 and 1
    nucleus = GumbelSampler(keys, prompt_width=5, top_p=0.7)(ids, scores).argmax(1)
    assert set(nucleus.tolist()) == {0}
    wider = GumbelSampler(keys, prompt_width=5, top_p=0.9)(ids, scores).argmax(1)
    assert set(wider.tolist()) == {0, 1}
    hot = GumbelSampler(keys, prompt_width=5, temperature=50.0)(ids, scores).argmax(1)
    assert len(set(hot.tolist())) == 4  # a high temperature flattens the distribution
    with pytest.raises(ValueError, match="noise keys"):
        GumbelSampler(keys[:3], prompt_width=5)(ids, scores)


def test_gain_hand_computed():
    # V* = 0.5; base values 0.1, 0.1; policy 0.2, 0.4: R = 0.4, D = 0.2, G = 0.5
    gain = achievable_gain([[0.2, 0.4]], [[0.1, 0.1]], [0.5], [0.04])
    assert gain.per_lambda.tolist() == pytest.approx([0.5])
    # influences ((a − b) + G·b) / R = 0.375, 0.875: var/K = 0.125/2; optimum part 0.5·0.04/0.4
    assert gain.per_lambda_se.tolist() == pytest.approx([np.sqrt(0.0625 + 0.05**2)])
    assert gain.mean == pytest.approx(0.5)


def test_gain_is_zero_for_the_base_and_one_for_the_optimum():
    rng = np.random.default_rng(0)
    base = rng.normal(0.1, 0.02, size=(3, 50))
    optimum_value = np.array([0.3, 0.25, 0.4])
    same = achievable_gain(base, base, optimum_value)
    np.testing.assert_array_equal(same.per_lambda, 0.0)
    np.testing.assert_array_equal(same.per_lambda_se, 0.0)  # paired: no noise in a difference
    at_optimum = base - base.mean(1, keepdims=True) + optimum_value[:, None]
    best = achievable_gain(at_optimum, base, optimum_value)
    np.testing.assert_allclose(best.per_lambda, 1.0)
    assert best.mean == pytest.approx(1.0)
    # nothing to gain where the base already reaches V*: NaN, not a division by zero
    assert np.isnan(achievable_gain(base, base, base.mean(1)).per_lambda).all()


def test_gain_standard_error_matches_repeated_draws():
    rng = np.random.default_rng(1)
    estimates, ses = [], []
    for _ in range(400):
        b = rng.normal(0.1, 0.05, size=(1, 200))
        a = b + rng.normal(0.1, 0.05, size=(1, 200))  # paired: shares b's noise
        gain = achievable_gain(a, b, [0.3])
        estimates.append(gain.per_lambda[0])
        ses.append(gain.per_lambda_se[0])
    assert np.mean(ses) == pytest.approx(np.std(estimates), rel=0.15)


def test_chunks_respect_group_boundaries():
    assert [(c.start, c.stop) for c in chunk_range(3, 12, 4, 5)] == [
        (3, 5),
        (5, 9),
        (9, 10),
        (10, 12),
    ]


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("group", [None, 7])
def test_shard_plan_covers_every_row_once_with_equal_chunk_counts(world, group):
    total = 31
    plans = [shard_plan(total, 4, group, rank=r, world=world) for r in range(world)]
    rows = [i for p in plans for c in p.chunks if c.keep for i in range(c.start, c.stop)]
    assert rows == list(range(total))
    assert len({len(p.chunks) for p in plans}) == 1
    for p in plans:
        assert all(c.stop - c.start <= 4 for c in p.chunks)
        if group:
            assert all((c.stop - 1) // group == c.start // group for c in p.chunks)
