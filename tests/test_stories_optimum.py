"""The SNIS estimate of the tilted optimum against a discrete case computed in closed form."""

from __future__ import annotations

import numpy as np
import pytest

from panacea_pl.benchmarks.stories.optimum import tilted_front

P = np.array([0.4, 0.25, 0.2, 0.1, 0.05])  # π_ref over five outcomes
R = np.array([[0.0, 1.0], [0.2, 0.6], [0.5, 0.5], [0.9, 0.1], [1.0, 0.0]])  # rewards [5, m=2]
GRID = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
BETA = 0.4


def closed_form(lam: np.ndarray, beta: float) -> tuple[np.ndarray, float, float]:
    """E_q[r], KL(q‖p) and β log Z for q ∝ p · exp(λ·r / β)."""
    weights = P * np.exp(R @ lam / beta)
    z = weights.sum()
    q = weights / z
    return q @ R, float(q @ np.log(q / P)), beta * float(np.log(z))


def test_exact_on_a_sample_with_the_reference_frequencies():
    # 20 samples holding outcome k exactly 20·p_k times: SNIS is then the closed form, exactly.
    counts = (20 * P).round().astype(int)
    rewards = np.repeat(R, counts, axis=0)
    front = tilted_front(rewards, GRID, BETA)
    for g, lam in enumerate(GRID):
        objectives, kl, value = closed_form(lam, BETA)
        np.testing.assert_allclose(front.objectives[g], objectives, rtol=1e-12)
        assert front.kl[g] == pytest.approx(kl, rel=1e-12)
        assert front.value[g] == pytest.approx(value, rel=1e-12)


def test_iid_samples_agree_within_the_reported_error():
    rng = np.random.default_rng(0)
    rewards = R[rng.choice(len(P), size=(3, 4000), p=P)]  # three prompts with the same π_ref
    front = tilted_front(rewards, GRID, BETA)
    for g, lam in enumerate(GRID):
        objectives, kl, value = closed_form(lam, BETA)
        assert (np.abs(front.objectives[g] - objectives) < 4 * front.objectives_se[g]).all()
        assert abs(front.kl[g] - kl) < 4 * front.kl_se[g]
        assert abs(front.value[g] - value) < 4 * front.value_se[g] + 1e-3


def test_standard_errors_are_calibrated():
    rng = np.random.default_rng(1)
    fronts = [tilted_front(R[rng.choice(len(P), size=500, p=P)], GRID, BETA) for _ in range(300)]
    for field in ("objectives", "kl", "value"):
        estimates = np.stack([getattr(f, field) for f in fronts])
        reported = np.stack([getattr(f, f"{field}_se") for f in fronts]).mean(0)
        np.testing.assert_allclose(estimates.std(0), reported, rtol=0.2, err_msg=field)


def test_value_identity_ess_and_kl_sign():
    rng = np.random.default_rng(2)
    rewards = rng.random((4, 256, 3))
    grid = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    front = tilted_front(rewards, grid, 0.1, ["a", "b", "c"])
    np.testing.assert_allclose(
        front.value, (front.objectives * grid).sum(1) - 0.1 * front.kl, atol=1e-12
    )
    assert front.ess[0] == pytest.approx(256) and front.kl[0] == pytest.approx(0, abs=1e-12)
    assert (front.kl[1:] > 0).all() and (front.ess[1:] < 256).all()
    assert front.rows()[2]["lambda_c"] == 0.5 and set(front.rows()[0]) >= {"a", "a_se", "kl"}


def test_bad_arguments():
    with pytest.raises(ValueError, match="rewards"):
        tilted_front(np.zeros((2, 3, 2)), np.ones((1, 3)), 0.1)
    with pytest.raises(ValueError, match="beta"):
        tilted_front(np.zeros((2, 3, 2)), np.ones((1, 2)), 0.0)
