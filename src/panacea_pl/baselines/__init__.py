"""The paper's baselines, trained from YAML and logged exactly like Panacea's fronts.

    panacea-pl baseline --config experiments/stories/dps.yaml              # DPS
    panacea-pl baseline --config experiments/stories/rewarded_soups.yaml   # rewarded soups
    panacea-pl baseline --config experiments/stories/dps_ppo.yaml          # DPS for RLHF

- DPS (discrete policy solutions): one model per λ of the grid, each trained with
  `FixedPreferenceDPO` at its λ with Panacea's budget; λ runs its own model (`DPSPolicy`).
- DPS for RLHF / MORLHF: the same with `FixedPreferencePPO` members (PPO on λ·r − β·KL at one
  λ); with `LagrangianAdvantage` it is safe-rlhf's PPO-Lagrangian. `FixedPreferenceGRPO` is the
  critic-free member (GRPO / RLOO at one λ).
- RS (rewarded soups, Ramé et al. 2023): one model per dimension, trained at λ = e_i; λ runs the
  weight interpolation Σ_i λ_i θ_i (`RewardedSoupsPolicy`).

Both collections are `panacea_pl.models.PreferencePolicy`s with one λ per forward pass, so the
same evaluators and `ParetoSweep` score them (`runner` explains the run's files and metrics).
"""

from panacea_pl.baselines.baseline_cli import BaselineSettings
from panacea_pl.baselines.collection import (
    AdapterCollection,
    BaselineFront,
    DPSFront,
    DPSPolicy,
    RewardedSoupsFront,
    RewardedSoupsPolicy,
    load_members,
    read_adapter_state,
)
from panacea_pl.baselines.grpo import FixedPreferenceGRPO
from panacea_pl.baselines.module import FixedPreferenceDPO
from panacea_pl.baselines.ppo import FixedPreferencePPO
from panacea_pl.baselines.runner import (
    BaselineRun,
    Member,
    run_baseline,
    run_dps,
    run_rewarded_soups,
)

__all__ = [
    "AdapterCollection",
    "BaselineFront",
    "BaselineRun",
    "BaselineSettings",
    "DPSFront",
    "DPSPolicy",
    "FixedPreferenceDPO",
    "FixedPreferenceGRPO",
    "FixedPreferencePPO",
    "Member",
    "RewardedSoupsFront",
    "RewardedSoupsPolicy",
    "load_members",
    "read_adapter_state",
    "run_baseline",
    "run_dps",
    "run_rewarded_soups",
]
