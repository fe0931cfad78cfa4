"""Objectives: per-dimension losses (DPO, Bradley–Terry, safety cost, SFT, PPO) and aggregators
(of losses, and of PPO advantages: `advantage`; both Tchebycheffs share `tchebycheff`), and the
critic-free group advantages and loss of GRPO/RLOO (`group_advantage`, `grpo`).

from panacea_pl.objectives import MultiObjectiveDPOLoss, Tchebycheff
out = MultiObjectiveDPOLoss(beta=0.1)(policy_logps, reference_logps, labels)
loss = Tchebycheff()(out.losses, preference, out.mask)
"""

from panacea_pl.objectives.advantage import (
    AdvantageAggregator,
    AggregatedAdvantages,
    LagrangianAdvantage,
    LinearAdvantage,
    TchebycheffAdvantage,
)
from panacea_pl.objectives.aggregation import (
    Aggregator,
    LinearScalarization,
    SmoothTchebycheff,
    Tchebycheff,
)
from panacea_pl.objectives.dpo import (
    CPOLoss,
    MultiObjectiveDPOLoss,
    MultiObjectiveIPOLoss,
    PreferenceLoss,
)
from panacea_pl.objectives.group_advantage import GroupAdvantage, GroupAdvantages, RLOOAdvantage
from panacea_pl.objectives.grpo import GroupPolicyLoss, GroupPolicyLossOutput
from panacea_pl.objectives.outputs import CostLosses, DimensionLosses, PairwiseLosses, masked_mean
from panacea_pl.objectives.pair_labels import BradleyTerryLabels, PairLabeler, RewardOrderLabels
from panacea_pl.objectives.ppo import (
    ClippedPolicyLoss,
    ClippedValueLoss,
    PolicyLossOutput,
    generalized_advantages,
    masked_whiten,
)
from panacea_pl.objectives.reward import BradleyTerryLoss, SafetyCostLoss
from panacea_pl.objectives.sft import PreferenceSFTLoss

__all__ = [
    "AdvantageAggregator",
    "AggregatedAdvantages",
    "Aggregator",
    "BradleyTerryLabels",
    "BradleyTerryLoss",
    "CPOLoss",
    "ClippedPolicyLoss",
    "ClippedValueLoss",
    "CostLosses",
    "DimensionLosses",
    "GroupAdvantage",
    "GroupAdvantages",
    "GroupPolicyLoss",
    "GroupPolicyLossOutput",
    "LagrangianAdvantage",
    "LinearAdvantage",
    "LinearScalarization",
    "MultiObjectiveDPOLoss",
    "MultiObjectiveIPOLoss",
    "PairLabeler",
    "PairwiseLosses",
    "PolicyLossOutput",
    "PreferenceLoss",
    "PreferenceSFTLoss",
    "RLOOAdvantage",
    "RewardOrderLabels",
    "SafetyCostLoss",
    "SmoothTchebycheff",
    "Tchebycheff",
    "TchebycheffAdvantage",
    "generalized_advantages",
    "masked_mean",
    "masked_whiten",
]
