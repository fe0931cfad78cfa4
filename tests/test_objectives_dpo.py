"""Multi-objective DPO against hand-computed DPO and IPO losses."""

from __future__ import annotations

import math

import pytest
import torch

from panacea_pl.objectives import (
    CPOLoss,
    LinearScalarization,
    MultiObjectiveDPOLoss,
    MultiObjectiveIPOLoss,
)

# Two pairs; rows 0, 1 are responses a, rows 2, 3 responses b.
# pair 0: log-ratios a: -10 - (-11) = 1,  b: -12 - (-11) = -1  → h = 1 - (-1) = 2
# pair 1: log-ratios a:  -8 - (-8)  = 0,  b:  -7 - (-8)  =  1  → h = 0 - 1 = -1
POLICY = torch.tensor([-10.0, -8.0, -12.0, -7.0])
REFERENCE = torch.tensor([-11.0, -8.0, -11.0, -8.0])
LABELS = torch.tensor([[1, -1], [-1, 0]])


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_sigmoid_loss_hand_computed():
    out = MultiObjectiveDPOLoss(beta=0.1)(POLICY, REFERENCE, LABELS)
    # −log σ(x) = log(1 + e^{−x})
    # pair 0, dim 0: y = +1, β h = 0.1 * 2 = 0.2  → log(1 + e^{-0.2}) = log 1.818731 = 0.598139
    # pair 0, dim 1: y = −1, β h = -0.2           → log(1 + e^{0.2})  = log 2.221403 = 0.798139
    # pair 1, dim 0: y = −1, β h = 0.1 * 1 = 0.1  → log(1 + e^{-0.1}) = log 1.904837 = 0.644397
    # pair 1, dim 1: unlabelled → 0
    expected = torch.tensor([[0.598139, 0.798139], [0.644397, 0.0]])
    torch.testing.assert_close(out.losses, expected, atol=1e-6, rtol=0)
    assert out.losses[0, 0].item() == pytest.approx(softplus(-0.2))
    torch.testing.assert_close(out.mask, torch.tensor([[True, True], [True, False]]))
    torch.testing.assert_close(out.margins, torch.tensor([[0.2, -0.2], [0.1, 0.0]]))
    # accuracy: dim 0 both margins > 0 → 1; dim 1 its one margin is < 0 → 0
    torch.testing.assert_close(out.accuracy(), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(out.counts(), torch.tensor([2, 1]))
    # mean margin: dim 0 (0.2 + 0.1)/2 = 0.15; dim 1 -0.2
    torch.testing.assert_close(out.mean_margin(), torch.tensor([0.15, -0.2]))


def test_single_dimension_and_one_hot_row_are_plain_dpo():
    plain = MultiObjectiveDPOLoss(beta=0.1)(POLICY, REFERENCE, torch.tensor([[1], [-1]]))
    # plain DPO mean over both pairs: (0.598139 + 0.644397) / 2 = 0.621268
    mean = (softplus(-0.2) + softplus(-0.1)) / 2
    assert plain.losses.mean().item() == pytest.approx(mean)
    one_hot = torch.tensor([[0, 1, 0], [0, -1, 0]])
    out = MultiObjectiveDPOLoss(beta=0.1)(POLICY, REFERENCE, one_hot)
    torch.testing.assert_close(out.losses[:, 1], plain.losses[:, 0])
    # through LS with a one-hot λ (or any λ: only dim 1 is labelled) it is the same number
    for lam in ([0.0, 1.0, 0.0], [0.2, 0.8, 0.0]):
        agg = LinearScalarization()(out.losses, torch.tensor(lam), out.mask)
        assert agg.item() == pytest.approx(lam[1] * mean)


def test_label_smoothing():
    out = MultiObjectiveDPOLoss(beta=0.1, label_smoothing=0.1)(POLICY, REFERENCE, LABELS)
    # pair 0, dim 0: 0.9 * log(1 + e^{-0.2}) + 0.1 * log(1 + e^{0.2})
    #              = 0.9 * 0.598139 + 0.1 * 0.798139 = 0.538325 + 0.079814 = 0.618139
    assert out.losses[0, 0].item() == pytest.approx(0.618139, abs=1e-6)


def test_soft_labels_hand_computed():
    soft = torch.tensor([[0.5, -0.2], [0.0, 1.0]])
    out = MultiObjectiveDPOLoss(beta=0.1)(POLICY, REFERENCE, soft)
    # pair 0, dim 0: p = 0.75, βh = 0.2: 0.75·log(1 + e^{-0.2}) + 0.25·log(1 + e^{0.2})
    #              = 0.75 · 0.598139 + 0.25 · 0.798139 = 0.448604 + 0.199535 = 0.648139
    # pair 0, dim 1: p = 0.4:  0.4 · 0.598139 + 0.6 · 0.798139 = 0.239256 + 0.478883 = 0.718139
    # pair 1, dim 0: y = 0 → unlabelled; dim 1: p = 1, βh = −0.1: log(1 + e^{0.1}) = 0.744397
    expected = torch.tensor([[0.648139, 0.718139], [0.0, 0.744397]])
    torch.testing.assert_close(out.losses, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.mask, torch.tensor([[True, True], [False, True]]))
    # margins carry the sign of the label: dim 1 of pair 0 prefers b, βh = 0.2 → −0.2
    torch.testing.assert_close(out.margins, torch.tensor([[0.2, -0.2], [0.0, -0.1]]))
    # hard labels through the soft formula give plain DPO
    hard = MultiObjectiveDPOLoss(beta=0.1)(POLICY, REFERENCE, LABELS.float())
    assert hard.losses[0, 0].item() == pytest.approx(0.598139, abs=1e-6)


def test_soft_label_minimiser_is_the_label_probability():
    # the loss in h is minimised where σ(βh) = p: gradient zero there
    for y in (-0.6, 0.3, 0.9):
        p = (1 + y) / 2
        h = torch.tensor(math.log(p / (1 - p)) / 0.1, requires_grad=True)
        policy = torch.stack([h, torch.tensor(0.0)])
        loss = MultiObjectiveDPOLoss(beta=0.1)(policy, torch.zeros(2), torch.tensor([[y]]))
        loss.losses.sum().backward()
        assert abs(h.grad.item()) < 1e-6


def test_ipo_soft_target():
    out = MultiObjectiveIPOLoss(beta=0.1)(POLICY, REFERENCE, torch.tensor([[0.5]] * 2))
    # target h = y/(2β) = 2.5: pair 0 (2 − 2.5)² = 0.25, pair 1 (−1 − 2.5)² = 12.25
    torch.testing.assert_close(out.losses, torch.tensor([[0.25], [12.25]]))


def test_ipo_loss_hand_computed():
    out = MultiObjectiveIPOLoss(beta=0.1)(POLICY, REFERENCE, LABELS)
    # 1/(2β) = 5;  (h_i − 5)²: pair 0: (2 − 5)² = 9, (−2 − 5)² = 49;  pair 1: (1 − 5)² = 16
    torch.testing.assert_close(out.losses, torch.tensor([[9.0, 49.0], [16.0, 0.0]]))


def test_gradient_flows_to_policy_only_on_labelled_pairs():
    policy = POLICY.clone().requires_grad_()
    out = MultiObjectiveDPOLoss(beta=0.1)(policy, REFERENCE, torch.tensor([[1], [0]]))
    out.losses.sum().backward()
    assert policy.grad[0] != 0 and policy.grad[2] != 0
    assert policy.grad[1] == 0 and policy.grad[3] == 0
    assert not out.margins.requires_grad


def test_errors():
    with pytest.raises(ValueError, match=r"\[2B\]"):
        MultiObjectiveDPOLoss()(POLICY[:3], REFERENCE[:3], LABELS)
    with pytest.raises(ValueError, match="labels must have shape"):
        MultiObjectiveDPOLoss()(POLICY, REFERENCE, torch.tensor([1, -1]))
    with pytest.raises(ValueError, match=r"labels\[1, 0\] = 1.5: expected a label in \[-1, 1\]"):
        MultiObjectiveDPOLoss()(POLICY, REFERENCE, torch.tensor([[1.0, 0.0], [1.5, 0.0]]))
    with pytest.raises(ValueError, match=r"labels\[0, 1\] = nan"):
        MultiObjectiveDPOLoss()(POLICY, REFERENCE, torch.tensor([[1.0, float("nan")], [1, 0]]))
    with pytest.raises(ValueError, match="needs the reference's log-probs"):
        MultiObjectiveDPOLoss()(POLICY, None, LABELS)
    with pytest.raises(ValueError, match="label_smoothing must be a finite number >= 0"):
        MultiObjectiveDPOLoss(label_smoothing=-0.1)


def test_cpo_is_dpo_without_the_reference():
    # h = log π(a) − log π(b) on the policy alone: equal to DPO with a zero reference
    cpo = CPOLoss(beta=0.1)(POLICY, None, LABELS)
    dpo = MultiObjectiveDPOLoss(beta=0.1)(POLICY, torch.zeros_like(POLICY), LABELS)
    torch.testing.assert_close(cpo.losses, dpo.losses)
    assert CPOLoss.is_reference_free and not MultiObjectiveDPOLoss.is_reference_free
    # ... and it ignores a reference that is passed
    torch.testing.assert_close(CPOLoss(beta=0.1)(POLICY, REFERENCE, LABELS).losses, cpo.losses)


def test_implicit_rewards_are_beta_times_the_log_ratio():
    rewards = MultiObjectiveDPOLoss(beta=0.5).implicit_rewards(POLICY, REFERENCE)
    torch.testing.assert_close(rewards, 0.5 * (POLICY - REFERENCE))
    torch.testing.assert_close(CPOLoss(beta=0.5).implicit_rewards(POLICY, None), 0.5 * POLICY)
