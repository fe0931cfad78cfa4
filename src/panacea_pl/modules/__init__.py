"""LightningModules, one per training procedure."""

from panacea_pl.modules.base import PanaceaModule
from panacea_pl.modules.dpo import PanaceaDPO
from panacea_pl.modules.grpo import PanaceaGRPO
from panacea_pl.modules.online_dpo import PanaceaOnlineDPO
from panacea_pl.modules.ppo import PanaceaPPO
from panacea_pl.modules.ppo_rewards import RewardFunction, VectorRewardFunction
from panacea_pl.modules.reward import RewardModelModule
from panacea_pl.modules.sft import PanaceaSFT

__all__ = [
    "PanaceaDPO",
    "PanaceaGRPO",
    "PanaceaModule",
    "PanaceaOnlineDPO",
    "PanaceaPPO",
    "PanaceaSFT",
    "RewardFunction",
    "RewardModelModule",
    "VectorRewardFunction",
]
