"""Objectives: per-dimension losses (DPO, Bradley–Terry, safety cost, SFT) and aggregators.

from panacea_pl.objectives import MultiObjectiveDPOLoss, Tchebycheff
out = MultiObjectiveDPOLoss(beta=0.1)(policy_logps, reference_logps, labels)
loss = Tchebycheff()(out.losses, preference, out.mask)
"""

from panacea_pl.objectives.aggregation import (
    Aggregator,
    LinearScalarization,
    SmoothTchebycheff,
    Tchebycheff,
)
from panacea_pl.objectives.dpo import MultiObjectiveDPOLoss
from panacea_pl.objectives.outputs import CostLosses, DimensionLosses, PairwiseLosses, masked_mean
from panacea_pl.objectives.reward import BradleyTerryLoss, SafetyCostLoss
from panacea_pl.objectives.sft import PreferenceSFTLoss

__all__ = [
    "Aggregator",
    "BradleyTerryLoss",
    "CostLosses",
    "DimensionLosses",
    "LinearScalarization",
    "MultiObjectiveDPOLoss",
    "PairwiseLosses",
    "PreferenceSFTLoss",
    "SafetyCostLoss",
    "SmoothTchebycheff",
    "Tchebycheff",
    "masked_mean",
]
