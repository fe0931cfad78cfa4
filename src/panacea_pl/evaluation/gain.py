"""G, the fraction of the achievable gain a policy captures, with standard errors.

    gain = achievable_gain(policy_values, base_values, optimum.value, optimum.value_se)
    gain.per_lambda, gain.per_lambda_se    # [G] G(λ) and its standard error
    gain.mean, gain.mean_se                # mean over the grid and its standard error

With V(λ) = λ·E[r] − β·KL(π ‖ π_ref) the KL-regularised value and V* the optimum's,

    G(λ) = 1 − regret(π, λ) / regret(π_ref, λ) = (V_π − V_ref) / (V* − V_ref),

0 for the base model and 1 for the optimum, whatever the scale of the rewards. The values are
per-sample estimates on common random numbers: `policy_values[g, k]` and `base_values[g, k]`
come from the same prompt and sampling noise k, so the numerator's error is that of the paired
differences (small when the policy stays near the base). The standard errors come from the delta
method: sample k's influence on G(λ) is ((a_k − b_k) + G·b_k) / R (centred), from the K paired
samples, plus G·se(V*) / R from the optimum's own estimate (independent reference samples). For
the mean over λ the sample part averages the influences over λ before taking their variance
(the λ share their samples), and the optimum part is added as if fully correlated across λ
(they share the optimum's reference samples): an upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_ACHIEVABLE = 1e-12


@dataclass(frozen=True)
class Gain:
    """G per λ and over the grid, with standard errors (NaN where V* ≤ V_ref)."""

    per_lambda: np.ndarray
    per_lambda_se: np.ndarray
    mean: float
    mean_se: float


def achievable_gain(
    policy_values: np.ndarray,
    base_values: np.ndarray,
    optimum_value: np.ndarray,
    optimum_value_se: np.ndarray | None = None,
) -> Gain:
    """G(λ) = (V_π − V_ref) / (V* − V_ref) from per-sample values on common random numbers.

    Args:
        policy_values: [G, K] per-sample λ·r − β·log(π/π_ref) of the policy at each λ.
        base_values: [G, K] per-sample λ·r of the base model (π_ref) on the same prompt and noise.
        optimum_value: [G] V*(λ).
        optimum_value_se: [G] its standard error (default 0).
    """
    a = np.asarray(policy_values, dtype=np.float64)
    b = np.asarray(base_values, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"need policy and base values [G, K] of one shape, got {a.shape}, {b.shape}"
        )
    v_opt = np.asarray(optimum_value, dtype=np.float64)
    se_opt = np.zeros_like(v_opt) if optimum_value_se is None else np.asarray(optimum_value_se)
    k = a.shape[1]
    achievable = v_opt - b.mean(1)  # R = V* − V_ref
    ok = achievable > MIN_ACHIEVABLE
    safe = np.where(ok, achievable, np.nan)
    g = (a - b).mean(1) / safe
    influence = ((a - b) + g[:, None] * b) / safe[:, None]  # [G, K], centred below
    influence -= influence.mean(1, keepdims=True)
    opt_part = np.abs(g) * se_opt / safe
    var_samples = influence.var(1, ddof=1) / k if k > 1 else np.zeros_like(g)
    mean_influence = influence.mean(0)
    mean_var = mean_influence.var(ddof=1) / k if k > 1 else 0.0
    return Gain(
        per_lambda=g,
        per_lambda_se=np.sqrt(var_samples + opt_part**2),
        mean=float(np.mean(g)),
        mean_se=float(np.sqrt(mean_var + np.mean(opt_part) ** 2)),
    )
