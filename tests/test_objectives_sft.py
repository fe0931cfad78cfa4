"""Panacea-SFT per-dimension NLL against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from panacea_pl.objectives import LinearScalarization, PreferenceSFTLoss

NEG_INF = float("-inf")


def test_per_dimension_nll_and_aggregate():
    # padding positions hold −inf, as log-probs of masked tokens may; they must not count
    token_logps = torch.tensor(
        [[-1.0, -2.0, NEG_INF], [-0.5, -0.5, -2.0], [-3.0, NEG_INF, NEG_INF]], requires_grad=True
    )
    token_mask = torch.tensor([[True, True, False], [True, True, True], [True, False, False]])
    dimension = torch.tensor([0, 1, 0])
    out = PreferenceSFTLoss(num_preferences=2)(token_logps, dimension, token_mask)
    # per sequence: (1 + 2)/2 = 1.5 in dim 0;  (0.5 + 0.5 + 2)/3 = 1.0 in dim 1;  3/1 = 3.0 in dim 0
    torch.testing.assert_close(out.losses, torch.tensor([[1.5, 0.0], [0.0, 1.0], [3.0, 0.0]]))
    torch.testing.assert_close(
        out.mask, torch.tensor([[True, False], [False, True], [True, False]])
    )
    # NLL_0 = (1.5 + 3)/2 = 2.25,  NLL_1 = 1.0
    torch.testing.assert_close(out.dimension_means(), torch.tensor([2.25, 1.0]))
    # Σ λ_i NLL_i with λ = (0.2, 0.8): 0.2 * 2.25 + 0.8 * 1.0 = 0.45 + 0.8 = 1.25
    loss = LinearScalarization()(out.losses, torch.tensor([0.2, 0.8]), out.mask)
    assert loss.item() == pytest.approx(1.25)
    loss.backward()
    assert torch.isfinite(token_logps.grad).all()
    assert token_logps.grad[0, 2] == 0


def test_per_sequence_input_and_empty_sequence():
    out = PreferenceSFTLoss(num_preferences=2)(torch.tensor([-4.0, -1.0]), torch.tensor([1, 1]))
    torch.testing.assert_close(out.dimension_means(), torch.tensor([0.0, 2.5]))
    out = PreferenceSFTLoss(num_preferences=2)(
        torch.tensor([[-1.0], [-2.0]]), torch.tensor([0, 1]), torch.tensor([[True], [False]])
    )
    torch.testing.assert_close(out.counts(), torch.tensor([1, 0]))


def test_errors():
    with pytest.raises(ValueError, match="dimension must have shape"):
        PreferenceSFTLoss(2)(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))
