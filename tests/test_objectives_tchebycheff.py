"""Loss-side and advantage-side Tchebycheff are one idea: with L = −J and z^L = −z they pick the
same active dimension, and their running ideal points mirror each other."""

from __future__ import annotations

import torch

from panacea_pl.objectives import Tchebycheff, TchebycheffAdvantage
from panacea_pl.objectives.tchebycheff import weighted_gaps


def test_weighted_gaps_by_hand():
    gaps = torch.tensor([[1.0, 4.0], [3.0, -2.0]])
    lam = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
    assert weighted_gaps(gaps, lam).tolist() == [[0.5, 2.0], [0.75, -1.5]]
    mask = torch.tensor([[True, False], [True, True]])
    assert weighted_gaps(gaps, lam, mask).tolist() == [[0.5, float("-inf")], [0.75, -1.5]]


def test_losses_and_objectives_pick_the_same_dimension():
    """Per row λ: the loss aggregator's max is λ_i*·(L_i* − z^L_i*), and the advantage aggregator
    weights dimension i* with λ_i*, for J = −L and z = −z^L (margins alike)."""
    lam = torch.tensor([[0.2, 0.8], [0.9, 0.1], [0.5, 0.5]])
    losses = torch.tensor([[1.0, 0.5], [0.8, 1.0], [1.5, 1.0]])
    z_loss = [0.25, 0.0]
    loss_agg = Tchebycheff(ideal=z_loss, margin=0.1)
    adv_agg = TchebycheffAdvantage(ideal=[-z for z in z_loss], margin=0.1)
    gaps = losses - (torch.tensor(z_loss) - 0.1)  # L − (z − margin), by hand
    active = (lam * gaps).argmax(-1)  # [1, 0, 0]
    assert active.tolist() == [1, 0, 0]
    out = adv_agg(torch.zeros(3, 1, 2), lam, values=-losses)
    assert (
        out.weights.tolist()
        == torch.zeros(3, 2).scatter(1, active[:, None], lam.gather(1, active[:, None])).tolist()
    )
    torch.testing.assert_close(loss_agg(losses, lam), (lam * gaps).amax(-1).mean())


def test_running_ideals_mirror_each_other():
    loss_agg = Tchebycheff(ideal="running", num_preferences=2).train()
    adv_agg = TchebycheffAdvantage(ideal="running", num_preferences=2).train()
    lam = torch.tensor([0.5, 0.5])
    for losses in (torch.tensor([[2.0, 3.0]]), torch.tensor([[1.0, 4.0]])):
        loss_agg(losses, lam)
        adv_agg(torch.zeros(1, 1, 2), lam, values=-losses)
    assert loss_agg.ideal_point.tolist() == [1.0, 3.0]
    assert adv_agg.ideal_point.tolist() == [-1.0, -3.0]
