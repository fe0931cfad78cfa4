"""Front utilities against fronts whose values are computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from panacea_pl.pareto import (
    hypervolume,
    hypervolume_estimate,
    inner_product,
    non_dominated_mask,
    spacing,
    sparsity,
)

STAIRCASE = [[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]]


def test_non_dominated_mask():
    points = [*STAIRCASE, [1.0, 1.0], [2.0, 2.0]]
    # maximising, (1, 1) is dominated by all; the duplicate (2, 2) is kept
    assert non_dominated_mask(points).tolist() == [True, True, True, False, True]
    # minimising, (1, 1) dominates all the others
    assert non_dominated_mask(points, maximize=False).tolist() == [False] * 3 + [True, False]
    assert non_dominated_mask(torch.tensor(points)).tolist() == [True, True, True, False, True]


def test_hypervolume_2d_staircase_maximize():
    # columns x ∈ [0,1]: height 3;  [1,2]: height 2;  [2,3]: height 1  → 3 + 2 + 1 = 6
    assert hypervolume(STAIRCASE, reference=[0.0, 0.0]) == pytest.approx(6.0)
    # a dominated point and one not better than the reference in every objective add nothing
    extra = [*STAIRCASE, [1.0, 1.0], [-1.0, 5.0]]
    assert hypervolume(torch.tensor(extra), reference=torch.zeros(2)) == pytest.approx(6.0)


def test_hypervolume_2d_minimize_and_mixed():
    # minimise with reference (4, 5): x ∈ [1,2]: 5−3 = 2;  [2,3]: 5−2 = 3;  [3,4]: 5−1 = 4  → 9
    assert hypervolume(STAIRCASE, reference=[4.0, 5.0], maximize=False) == pytest.approx(9.0)
    # maximise x, minimise y, reference (0, 4):
    #   (1, 1): x ∈ [0,1] × y ∈ [1,4] = 3;  (3, 2): [0,3] × [2,4] = 6;  overlap [0,1] × [2,4] = 2
    #   union 3 + 6 − 2 = 7
    value = hypervolume([[1.0, 1.0], [3.0, 2.0]], reference=[0.0, 4.0], maximize=[True, False])
    assert value == pytest.approx(7.0)


def test_hypervolume_3d():
    # three boxes from 0 of volume 2·1·1 = 2; each pair overlaps in [0,1]³ (volume 1), as do all
    # three. Inclusion–exclusion: 3·2 − 3·1 + 1 = 4
    points = [[2.0, 1.0, 1.0], [1.0, 2.0, 1.0], [1.0, 1.0, 2.0]]
    assert hypervolume(points, reference=[0.0, 0.0, 0.0]) == pytest.approx(4.0)
    estimate = hypervolume_estimate(points, reference=[0.0, 0.0, 0.0])
    assert estimate.exact and estimate.stderr == 0.0


def test_hypervolume_approximation_agrees_with_exact_in_6d():
    rng = np.random.default_rng(0)
    points = rng.random((40, 6))
    points /= np.linalg.norm(points, axis=1, keepdims=True)  # on the positive unit sphere
    exact = hypervolume(points, reference=np.zeros(6), approximate_from_dim=7)
    estimate = hypervolume_estimate(points, reference=np.zeros(6))
    assert not estimate.exact
    assert 0 < estimate.stderr < 0.01 * exact
    assert abs(estimate.value - exact) < 4 * estimate.stderr
    # fixed seed: the same estimate every time
    assert hypervolume(points, reference=np.zeros(6)) == estimate.value


def test_hypervolume_empty_and_errors():
    assert hypervolume(np.zeros((0, 2)), reference=[0.0, 0.0]) == 0.0
    with pytest.raises(ValueError, match="finite; row 1"):
        hypervolume([[1.0, 2.0], [float("nan"), 1.0]], reference=[0.0, 0.0])
    with pytest.raises(ValueError, match="reference must be 2"):
        hypervolume(STAIRCASE, reference=[0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="maximize has 3"):
        hypervolume(STAIRCASE, reference=[0.0, 0.0], maximize=[True, True, False])


def test_inner_product():
    lam = [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
    # range [0, 10] → f̂ = (1, 0), (0.6, 0.6), (0, 1); ⟨λ, f̂⟩ = 1, 0.6, 1; mean 2.6/3 = 0.866667
    rewards = [[10.0, 0.0], [6.0, 6.0], [0.0, 10.0]]
    assert inner_product(lam, rewards, [0.0, 0.0], [10.0, 10.0]) == pytest.approx(2.6 / 3)
    # the same front as losses (lower is better): f̂ = (10 − f)/10 gives the same f̂
    losses = [[0.0, 10.0], [4.0, 4.0], [10.0, 0.0]]
    value = inner_product(lam, losses, [0.0, 0.0], [10.0, 10.0], maximize=False)
    assert value == pytest.approx(2.6 / 3)
    with pytest.raises(ValueError, match="upper must exceed lower"):
        inner_product(lam, rewards, [0.0, 0.0], [10.0, 0.0])
    with pytest.raises(ValueError, match="sums to"):
        inner_product([[0.5, 0.6]], [[1.0, 1.0]], [0.0, 0.0], [1.0, 1.0])


def test_sparsity_and_spacing_on_three_points():
    points = [[1.0, 3.0], [2.0, 2.0], [4.0, 0.0]]
    # sparsity: objective 0 sorted 1, 2, 4 → gaps 1, 2 → 1 + 4 = 5;
    #           objective 1 sorted 0, 2, 3 → gaps 2, 1 → 4 + 1 = 5;  (5 + 5) / (3 − 1) = 5
    assert sparsity(points) == pytest.approx(5.0)
    # spacing: L1 distances d(0,1) = 2, d(0,2) = 6, d(1,2) = 4 → nearest: 2, 2, 4; mean 8/3
    #          deviations −2/3, −2/3, 4/3 → squares sum 24/9; / (3 − 1) = 4/3; sqrt = 1.154701
    assert spacing(points) == pytest.approx(math.sqrt(4 / 3))
    # evenly spaced points have spacing 0
    assert spacing(STAIRCASE) == pytest.approx(0.0)
    assert sparsity([[1.0, 2.0]]) == 0.0 and spacing([[1.0, 2.0]]) == 0.0
    with pytest.raises(ValueError, match="finite"):
        spacing([[1.0, float("inf")], [0.0, 0.0]])


def test_rank_correlations_by_hand():
    from panacea_pl.pareto.front import rank_correlations

    lam = np.array([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])
    rising = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    np.testing.assert_allclose(rank_correlations(lam, rising), [1.0, 1.0], atol=1e-5)
    np.testing.assert_allclose(rank_correlations(lam, -rising), [-1.0, -1.0], atol=1e-5)
    # dimension 0's ranks (0, 2, 1) against λ's (0, 1, 2): ρ = 1 − 6·Σd²/(n(n²−1)) = 1 − 12/24
    swapped = np.array([[1.0, 3.0], [3.0, 2.0], [2.0, 1.0]])
    np.testing.assert_allclose(rank_correlations(lam, swapped)[0], 0.5, atol=1e-5)
    with pytest.raises(ValueError, match="must match"):
        rank_correlations(lam, rising[:2])
