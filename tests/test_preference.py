"""Simplex utilities: validation, Dirichlet sampling, Das–Dennis grids."""

import math

import pytest
import torch

from panacea_pl.preference import (
    DirichletSampler,
    PreferenceError,
    simplex_grid,
    validate_preference,
)


def test_grid_sizes_and_corners():
    for m, h in [(2, 10), (3, 4), (5, 3), (10, 2)]:
        grid = simplex_grid(m, h)
        assert grid.shape == (math.comb(h + m - 1, m - 1), m)
        torch.testing.assert_close(grid.sum(1), torch.ones(len(grid)))
        assert len({tuple(r) for r in grid.tolist()}) == len(grid)
        for i in range(m):  # every corner is on the grid
            assert any(row[i] == 1.0 for row in grid.tolist())
    assert simplex_grid(2, 2).tolist() == [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]


def test_dirichlet_is_reproducible_and_resumable():
    a = DirichletSampler(3, alpha=1.0, seed=7)
    first = a.sample(4)
    state = a.state_dict()
    nxt = a.sample(4)
    b = DirichletSampler(3, alpha=1.0, seed=123)
    b.load_state_dict(state)
    torch.testing.assert_close(b.sample(4), nxt)
    assert first.shape == (4, 3) and (first >= 0).all()
    torch.testing.assert_close(first.sum(1), torch.ones(4))


def test_dirichlet_alpha_moves_mass():
    corners = DirichletSampler(2, alpha=0.1, seed=0).sample(4000)
    centre = DirichletSampler(2, alpha=20.0, seed=0).sample(4000)
    assert (corners[:, 0] - 0.5).abs().mean() > 0.4
    assert (centre[:, 0] - 0.5).abs().mean() < 0.1
    uniform = DirichletSampler(2, alpha=1.0, seed=0).sample(20000)[:, 0]
    assert uniform.mean().item() == pytest.approx(0.5, abs=0.01)
    assert uniform.var().item() == pytest.approx(1 / 12, abs=0.005)  # Uniform(0, 1)


def test_bad_alpha():
    with pytest.raises(PreferenceError, match="positive"):
        DirichletSampler(2, alpha=[1.0, -1.0])


def test_validate_batch_and_dtype():
    lam = validate_preference([[0.25, 0.75], [1, 0]], 2, dtype=torch.float64)
    assert lam.dtype == torch.float64 and lam.shape == (2, 2)
    with pytest.raises(PreferenceError, match="sums to 0"):
        validate_preference([0.0, 0.0], 2, normalize=True)


@pytest.mark.parametrize(
    "given", ["0.5,0.5", ["0.5", "0.5"], "[0.5, 0.5]", " 0.5 0.5 ", ("0.5", 0.5)]
)
def test_lambda_as_strings_is_parsed(given):
    assert validate_preference(given, 2).tolist() == [0.5, 0.5]


def test_lambda_rows_as_strings():
    lam = validate_preference(["0.25,0.75", "1,0"], 2)
    assert lam.tolist() == [[0.25, 0.75], [1.0, 0.0]]


@pytest.mark.parametrize(
    ("given", "match"),
    [
        ("a,b", r"preference 'a,b': 'a,b' is not a number .*expected numbers"),
        (["0.5", "half"], r"'half' is not a number"),
        ("", "is empty; expected numbers"),
        (None, "preference None: expected numbers"),
        ({"a": 1}, "expected numbers"),
        ([[0.5], [0.5, 0.5]], "not a vector or matrix of numbers"),
        ("0.7,0.7", "sums to 1.4"),
    ],
)
def test_bad_lambda_input_is_named(given, match):
    with pytest.raises(PreferenceError, match=match):
        validate_preference(given, 2)


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), 0.0, -1.0, [1.0, float("nan")]])
def test_dirichlet_refuses_non_distributions(alpha):
    with pytest.raises(PreferenceError, match=r"Dirichlet alpha = .*expected a finite positive"):
        DirichletSampler(2, alpha=alpha)


def test_dirichlet_alpha_length_and_string():
    with pytest.raises(PreferenceError, match="has 3 values; expected"):
        DirichletSampler(2, alpha=[1.0, 1.0, 1.0])
    with pytest.raises(PreferenceError, match="alpha = 'many'"):
        DirichletSampler(2, alpha="many")
    assert DirichletSampler(2, alpha="0.5").alpha.tolist() == [0.5, 0.5]
    with pytest.raises(PreferenceError, match="num_preferences must be >= 1"):
        DirichletSampler(0)


def test_step_preference_skips_value_checks_on_accelerators():
    """A λ already on a device is not read back (no host sync per step); host input is checked."""
    from panacea_pl.preference import checked_step_preference

    on_device = torch.tensor([2.0, -1.0], device="meta")
    assert checked_step_preference(on_device, 2) is on_device
    with pytest.raises(PreferenceError, match="negative weight"):
        checked_step_preference(torch.tensor([2.0, -1.0]), 2)
