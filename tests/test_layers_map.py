"""The adapter's map on a 2 × 2 layer, computed by hand:
W(λ) = W0 + c · U · diag(σ_1 … σ_k, s·λ_1 … s·λ_m) · V, with c = alpha / (k + m)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from panacea_pl.layers import PanaceaConfig, inject_adapter


def two_by_two(config: PanaceaConfig, u, v, sigma, s):
    model = nn.Sequential(nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[0].bias.copy_(torch.tensor([0.5, -0.5]))
    adapter = inject_adapter(
        model, config.__class__(**{**config.to_dict(), "target_modules": ["0"]})
    )
    layer = adapter.layers["0"]
    with torch.no_grad():
        layer.panacea_U.copy_(torch.tensor(u))
        layer.panacea_V.copy_(torch.tensor(v))
        layer.panacea_sigma.copy_(torch.tensor(sigma))
        layer.panacea_scale.fill_(s)
    return model, adapter


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_preference_singular_values_only(training):
    # k = 0, m = 2, alpha = 1: c = 1/2, d = c·s·λ = 0.5·3·(0.25, 0.75) = (0.375, 1.125)
    # ΔW = U diag(d) V = [[1, 2], [0, 1]] diag(0.375, 1.125) [[1, 0], [1, 1]]
    #    = [[0.375, 2.25], [0, 1.125]] [[1, 0], [1, 1]] = [[2.625, 2.25], [1.125, 1.125]]
    # y = W0 x + b + ΔW x at x = (1, −1): (1, −1) + (0.5, −0.5) + (0.375, 0) = (1.875, −1.5)
    config = PanaceaConfig(num_general=0, num_preferences=2, alpha=1.0)
    model, adapter = two_by_two(config, [[1.0, 2.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 1.0]], [], 3.0)
    model.train(training)
    x = torch.tensor([[1.0, -1.0]])
    with adapter.preference([0.25, 0.75]):
        y = model(x)
    torch.testing.assert_close(y, torch.tensor([[1.875, -1.5]]))
    delta = adapter.layers["0"].delta_weight(torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(delta, torch.tensor([[2.625, 2.25], [1.125, 1.125]]))
    # merged: the layer's weight is W0 + ΔW, and the output is unchanged
    adapter.merge([0.25, 0.75])
    torch.testing.assert_close(model[0].base_layer.weight, torch.eye(2) + delta)
    adapter.unmerge()
    torch.testing.assert_close(model[0].base_layer.weight, torch.eye(2))


def test_general_and_preference_singular_values():
    # k = 1, m = 1, alpha None: c = 1, d = (σ_1, s·λ_1) = (2, 3·1) = (2, 3)
    # ΔW = [[1, 0], [1, 1]] diag(2, 3) [[0, 1], [1, 0]] = [[2, 0], [2, 3]] [[0, 1], [1, 0]]
    #    = [[0, 2], [3, 2]];  y at x = (2, 1): (2, 1) + (0.5, −0.5) + (2, 8) = (4.5, 8.5)
    config = PanaceaConfig(num_general=1, num_preferences=1)
    model, adapter = two_by_two(
        config, [[1.0, 0.0], [1.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]], [2.0], 3.0
    )
    model.eval()
    with adapter.preference([1.0]):
        y = model(torch.tensor([[2.0, 1.0]]))
    torch.testing.assert_close(y, torch.tensor([[4.5, 8.5]]))
    with adapter.disabled():
        torch.testing.assert_close(model(torch.tensor([[2.0, 1.0]])), torch.tensor([[2.5, 0.5]]))


def test_a_checked_preference_is_only_shape_checked():
    """The modules pass λ drawn by their sampler with `checked=True`: no value is read back (on a
    GPU each full check costs host syncs), only the shape is checked."""
    config = PanaceaConfig(num_general=0, num_preferences=2, alpha=1.0)
    model, adapter = two_by_two(config, [[1.0, 2.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 1.0]], [], 3.0)
    adapter.set_preference(torch.tensor([2.0, -1.0]), checked=True)  # values are not read
    torch.testing.assert_close(adapter.current_preference, torch.tensor([2.0, -1.0]))
    with pytest.raises(ValueError, match=r"shape \[2\] or \[batch, 2\]"):
        adapter.set_preference(torch.ones(3), checked=True)
    with pytest.raises(ValueError, match="negative"):
        adapter.set_preference(torch.tensor([2.0, -1.0]))  # unchecked input is validated
