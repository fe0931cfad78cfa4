"""Evaluators of f(λ) over a simplex grid, the result they return, its plot, and finished
runs read back from disk."""

from panacea_pl.evaluation.base import FrontEvaluator
from panacea_pl.evaluation.implicit import ImplicitRewardEvaluator
from panacea_pl.evaluation.plot import plot_front
from panacea_pl.evaluation.result import FrontResult
from panacea_pl.evaluation.reward_model import RewardModelEvaluator
from panacea_pl.evaluation.runs import LoggedRun, load_policy, load_run, read_front_csv

__all__ = [
    "FrontEvaluator",
    "FrontResult",
    "ImplicitRewardEvaluator",
    "LoggedRun",
    "RewardModelEvaluator",
    "load_policy",
    "load_run",
    "plot_front",
    "read_front_csv",
]
