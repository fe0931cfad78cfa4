"""Preference vectors λ on the probability simplex: validation, sampling and evaluation grids.

from panacea_pl.preference import validate_preference, DirichletSampler, simplex_grid
lam = validate_preference([0.3, 0.7], num_preferences=2)   # tensor([0.3, 0.7])
grid = simplex_grid(num_preferences=3, divisions=4)         # 15 × 3 Das–Dennis lattice
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

PreferenceLike = torch.Tensor | np.ndarray | Sequence[float] | Sequence[Sequence[float]]

SUM_TOLERANCE = 1e-4


class PreferenceError(ValueError):
    """A preference vector that is not a point of the simplex."""


def validate_preference(
    preference: PreferenceLike,
    num_preferences: int,
    *,
    normalize: bool = False,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Check that `preference` is one λ of shape [m] or a batch of shape [B, m] on the simplex.

    Args:
        preference: λ as a tensor, array or (nested) list; numbers written as strings are
            parsed ("0.3,0.7", "[0.3, 0.7]", ["0.3", "0.7"]).
        num_preferences: m, the number of preference dimensions expected.
        normalize: divide each row by its sum instead of rejecting rows that do not sum to 1.
            Rows must still be non-negative with a positive sum.
        dtype: dtype of the returned tensor.
        device: device of the returned tensor (default: where it already is, or CPU).

    Returns:
        A float tensor of shape [m] or [B, m] whose rows sum to 1.

    Raises:
        PreferenceError: wrong shape or length, NaN/inf, a negative entry, or a row whose sum is
            not 1 (when `normalize` is False). The message names the offending row.
    """
    lam = as_preference_tensor(preference)
    if lam.dim() not in (1, 2) or lam.shape[-1] != num_preferences:
        raise PreferenceError(
            f"preference must have shape [{num_preferences}] or [batch, {num_preferences}] "
            f"(one weight per preference dimension), got shape {list(lam.shape)}"
        )
    rows = lam.reshape(-1, num_preferences)

    def where(i: int) -> str:
        return f"preference {rows[i].tolist()}" + (f" (row {i})" if lam.dim() == 2 else "")

    bad = (~torch.isfinite(rows)).any(dim=1).nonzero()
    if len(bad):
        raise PreferenceError(f"{where(int(bad[0]))} contains NaN or infinity")
    bad = (rows < 0).any(dim=1).nonzero()
    if len(bad):
        raise PreferenceError(f"{where(int(bad[0]))} has a negative weight; λ must be >= 0")
    sums = rows.sum(dim=1)
    if normalize:
        bad = (sums <= 0).nonzero()
        if len(bad):
            raise PreferenceError(f"{where(int(bad[0]))} sums to 0 and cannot be normalised")
        rows = rows / sums[:, None]
    else:
        bad = ((sums - 1).abs() > SUM_TOLERANCE).nonzero()
        if len(bad):
            i = int(bad[0])
            raise PreferenceError(
                f"{where(i)} sums to {float(sums[i]):.6g}, not 1; pass normalize=True to rescale it"
            )
    return rows.reshape(lam.shape).to(dtype=dtype, device=device)


_EXPECTED = "numbers, e.g. [0.3, 0.7], the string '0.3,0.7', or a [batch, m] tensor"


def as_preference_tensor(preference: PreferenceLike | str) -> torch.Tensor:
    """λ as a float64 tensor, parsing numbers given as strings; no simplex check.

    Raises:
        PreferenceError: something that is not numbers (the message shows it and what is expected).
    """
    if isinstance(preference, torch.Tensor):
        if preference.is_complex() or preference.dtype == torch.bool:
            raise PreferenceError(f"preference has dtype {preference.dtype}; expected {_EXPECTED}")
        return preference.detach().to(torch.float64)
    try:
        return torch.as_tensor(_parse(preference, preference), dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        if isinstance(err, PreferenceError):
            raise
        raise PreferenceError(
            f"preference {_show(preference)} is not a vector or matrix of numbers ({err}); "
            f"expected {_EXPECTED}"
        ) from None


def _parse(value: Any, whole: Any, top: bool = True) -> Any:
    """Numbers from strings, recursively through lists; arrays of strings become lists.

    A string at the top is a vector ("0.5" → [0.5]); inside a list, a single number is a scalar.
    """
    if isinstance(value, np.ndarray) and value.dtype.kind in "USO":
        value = value.tolist()
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        text = value.strip().strip("[]()").replace(",", " ").split()
        if not text:
            raise PreferenceError(f"preference {_show(whole)} is empty; expected {_EXPECTED}")
        try:
            numbers = [float(t) for t in text]
        except ValueError:
            raise PreferenceError(
                f"preference {_show(whole)}: {value!r} is not a number or a comma-separated "
                f"list of numbers; expected {_EXPECTED}"
            ) from None
        return numbers[0] if len(numbers) == 1 and not top and "," not in value else numbers
    if isinstance(value, bool) or value is None or isinstance(value, dict | set):
        raise PreferenceError(f"preference {_show(whole)}: expected {_EXPECTED}")
    if isinstance(value, list | tuple):
        return [_parse(v, whole, top=False) for v in value]
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def checked_step_preference(preference: PreferenceLike, num_preferences: int) -> torch.Tensor:
    """λ as a loss receives it each step: validated at the boundary, free of host syncs after it.

    Lists, arrays, strings and CPU tensors are checked in full (`validate_preference`: on the
    simplex, finite), which costs no device sync. A tensor already on an accelerator is only
    shape-checked by the caller: it was made by a sampler or `set_preference`, which validated
    it, and its values can only be read with a host sync (three `.nonzero()` calls) per step.

    Returns:
        The tensor (float64 for host input, unchanged for accelerator tensors).
    """
    if isinstance(preference, torch.Tensor) and preference.device.type != "cpu":
        return preference
    lam = as_preference_tensor(preference)
    if lam.shape[-1:] != (num_preferences,):
        return lam  # the caller's shape check names the losses it must match
    return validate_preference(lam, num_preferences, dtype=torch.float64)


class DirichletSampler:
    """Samples λ ~ Dirichlet(α) with its own generator, so its state can be checkpointed.

    α = 1 is uniform on the simplex; α < 1 favours the corners, α > 1 the centre.

    Args:
        num_preferences: m.
        alpha: concentration, a scalar or one value per dimension.
        seed: seed of the private generator.
    """

    def __init__(self, num_preferences: int, alpha: float | Sequence[float] = 1.0, seed: int = 0):
        if isinstance(num_preferences, bool) or not isinstance(num_preferences, int):
            raise PreferenceError(
                f"num_preferences must be an integer >= 1, got {num_preferences!r}"
            )
        if num_preferences < 1:
            raise PreferenceError(f"num_preferences must be >= 1, got {num_preferences}")
        expected = (
            f"a finite positive number or {num_preferences} of them (1 is uniform on the simplex)"
        )
        try:
            conc = torch.as_tensor(_parse(alpha, alpha, top=False), dtype=torch.float64).flatten()
        except (TypeError, ValueError, RuntimeError):
            raise PreferenceError(f"Dirichlet alpha = {alpha!r}: expected {expected}") from None
        if conc.numel() == 1:
            conc = conc.expand(num_preferences).clone()
        if conc.numel() != num_preferences:
            raise PreferenceError(
                f"Dirichlet alpha = {alpha!r} has {conc.numel()} values; expected {expected}"
            )
        if not (torch.isfinite(conc).all() and (conc > 0).all()):
            raise PreferenceError(
                f"Dirichlet alpha = {alpha!r}: expected {expected}; NaN, infinity, 0 and negative "
                "values do not define a distribution on the simplex"
            )
        self.num_preferences = num_preferences
        self.alpha = conc
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, batch_size: int | None = None) -> torch.Tensor:
        """One λ of shape [m] (batch_size None) or [batch_size, m], float32 on CPU."""
        n = 1 if batch_size is None else batch_size
        gamma = torch._standard_gamma(
            self.alpha.expand(n, -1).contiguous(), generator=self.generator
        )
        lam = (gamma / gamma.sum(dim=1, keepdim=True)).float()
        return lam[0] if batch_size is None else lam

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "alpha": self.alpha.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.alpha = state["alpha"].clone()


def simplex_grid(num_preferences: int, divisions: int) -> torch.Tensor:
    """The Das–Dennis lattice: every λ with entries in {0, 1/H, …, 1} summing to 1, corners included.

    It has C(H + m − 1, m − 1) points, e.g. 11 for m = 2, H = 10. Rows are ordered
    lexicographically with the first weight descending, so for m = 2 the first row is (1, 0).
    """
    if num_preferences < 1 or divisions < 1:
        raise PreferenceError(
            f"need num_preferences >= 1 and divisions >= 1, got {num_preferences}, {divisions}"
        )
    points = list(_compositions(divisions, num_preferences))
    return torch.tensor(points, dtype=torch.float32) / divisions


def _compositions(total: int, parts: int):
    """All tuples of `parts` non-negative ints summing to `total`, first entry descending."""
    if parts == 1:
        yield (total,)
        return
    for first in range(total, -1, -1):
        for rest in _compositions(total - first, parts - 1):
            yield (first, *rest)
