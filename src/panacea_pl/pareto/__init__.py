"""Pareto fronts: dominance, hypervolume and other front metrics, plain and as torchmetrics.

from panacea_pl.pareto import Hypervolume, hypervolume
hypervolume([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]], reference=[0.0, 0.0])   # 6.0
"""

from panacea_pl.pareto.front import (
    HypervolumeEstimate,
    hypervolume,
    hypervolume_estimate,
    inner_product,
    non_dominated_mask,
    spacing,
    sparsity,
)
from panacea_pl.pareto.metrics import FrontMetric, Hypervolume, InnerProduct, Spacing, Sparsity

__all__ = [
    "FrontMetric",
    "Hypervolume",
    "HypervolumeEstimate",
    "InnerProduct",
    "Spacing",
    "Sparsity",
    "hypervolume",
    "hypervolume_estimate",
    "inner_product",
    "non_dominated_mask",
    "sparsity",
    "spacing",
]
