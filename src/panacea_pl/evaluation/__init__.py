"""Evaluators of f(λ) over a simplex grid, the result they return, and its plot."""

from panacea_pl.evaluation.base import FrontEvaluator
from panacea_pl.evaluation.implicit import ImplicitRewardEvaluator
from panacea_pl.evaluation.plot import plot_front
from panacea_pl.evaluation.result import FrontResult

__all__ = ["FrontEvaluator", "FrontResult", "ImplicitRewardEvaluator", "plot_front"]
