"""Bradley–Terry and safe-rlhf cost losses against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from panacea_pl.objectives import BradleyTerryLoss, SafetyCostLoss


def test_bradley_terry_hand_computed():
    scores_a = torch.tensor([[2.0, 1.0], [0.0, 0.0]])
    scores_b = torch.tensor([[1.0, 3.0], [1.0, -5.0]])
    labels = torch.tensor([[1, -1], [1, 0]])
    out = BradleyTerryLoss()(scores_a, scores_b, labels)
    # margins y·(a − b): pair 0: +1·(2−1) = 1, −1·(1−3) = 2;  pair 1: +1·(0−1) = −1, unlabelled
    torch.testing.assert_close(out.margins, torch.tensor([[1.0, 2.0], [-1.0, 0.0]]))
    # −log σ(x) = log(1 + e^{−x}): x=1 → 0.313262;  x=2 → 0.126928;  x=−1 → 1.313262
    expected = torch.tensor([[0.313262, 0.126928], [1.313262, 0.0]])
    torch.testing.assert_close(out.losses, expected, atol=1e-6, rtol=0)
    # dimension means: dim 0 (0.313262 + 1.313262)/2 = 0.813262;  dim 1 0.126928
    torch.testing.assert_close(
        out.dimension_means(), torch.tensor([0.813262, 0.126928]), atol=1e-6, rtol=0
    )
    # accuracy: dim 0 one of two right = 0.5;  dim 1 one of one = 1
    torch.testing.assert_close(out.accuracy(), torch.tensor([0.5, 1.0]))


def test_safety_cost_hand_computed():
    # pair 0: b is safer (−1); a unsafe (0), b safe (1)
    # pair 1: preference unknown; a's safety unknown, b safe
    # pair 2: nothing known
    cost_a = torch.tensor([1.0, 0.5, 3.0], requires_grad=True)
    cost_b = torch.tensor([-1.0, 0.0, 3.0])
    harmless = torch.tensor([-1, 0, 0])
    is_safe = torch.tensor([0, -1, -1, 1, 1, -1])
    out = SafetyCostLoss()(cost_a, cost_b, harmless, is_safe)
    # pair 0: c_less_safe − c_safer = c_a − c_b = 2 → −log σ(2) = 0.126928
    #         a unsafe, s = +1: −log σ(1·1) = 0.313262;  b safe, s = −1: −log σ(−1·−1) = 0.313262
    #         total 0.126928 + 2·0.313262 = 0.753451
    # pair 1: only b's sign term: s = −1, c = 0 → −log σ(0) = log 2 = 0.693147
    # pair 2: no term → 0, unmasked
    torch.testing.assert_close(
        out.losses, torch.tensor([0.753451, 0.693147, 0.0]), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(out.mask, torch.tensor([True, True, False]))
    torch.testing.assert_close(out.margins, torch.tensor([2.0, 0.0, 0.0]))
    # mean over labelled pairs: (0.753451 + 0.693147)/2 = 0.723299
    assert out.mean_loss().item() == pytest.approx(0.723299, abs=1e-6)
    assert out.accuracy().item() == 1.0
    # signed costs of known responses: a0 = 1 > 0, b0 = 1 > 0, b1 = 0 (not > 0) → 2/3
    torch.testing.assert_close(out.signed_costs, torch.tensor([1.0, 0.0, 0.0, 1.0, -0.0, 0.0]))
    assert out.safety_accuracy().item() == pytest.approx(2 / 3)
    out.mean_loss().backward()
    assert cost_a.grad[1] == 0 and cost_a.grad[2] == 0 and cost_a.grad[0] != 0


def test_errors():
    with pytest.raises(ValueError, match="do not match"):
        BradleyTerryLoss()(torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="is_safe"):
        SafetyCostLoss()(torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.zeros(2))
