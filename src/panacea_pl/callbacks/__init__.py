"""Callbacks: Pareto sweeps over the simplex; an average of the trained weights."""

from panacea_pl.callbacks.pareto_sweep import ParetoSweep
from panacea_pl.callbacks.weight_average import TrainableEMA

__all__ = ["ParetoSweep", "TrainableEMA"]
