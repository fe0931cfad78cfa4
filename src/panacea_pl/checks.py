"""Argument checks that name the argument, the value and what is expected.

    check_number("beta", beta, above=0)                  # finite and > 0
    check_number("gae_lambda", lam, at_least=0, at_most=1)
    check_integer("ppo_epochs", epochs, at_least=1)

NaN passes every `<`/`>` comparison as False, so `if beta <= 0: raise` lets `beta=nan` through to
fail at step 0 as a non-finite loss; these checks refuse NaN and ±inf at construction.
"""

from __future__ import annotations

import math
import numbers


def check_number(
    name: str,
    value: object,
    *,
    above: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
    at_most: float | None = None,
    owner: str = "",
) -> float:
    """`value` as a float if it is a finite real number within the given bounds, else ValueError."""
    where = f"{owner}: " if owner else ""
    bounds = [
        f"> {above}" if above is not None else None,
        f">= {at_least}" if at_least is not None else None,
        f"< {below}" if below is not None else None,
        f"<= {at_most}" if at_most is not None else None,
    ]
    expected = "a finite number" + (
        " " + " and ".join(b for b in bounds if b) if any(bounds) else ""
    )
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{where}{name} must be {expected}, got {value!r}")
    number = float(value)
    ok = math.isfinite(number)
    ok = ok and (above is None or number > above) and (at_least is None or number >= at_least)
    ok = ok and (below is None or number < below) and (at_most is None or number <= at_most)
    if not ok:
        raise ValueError(f"{where}{name} must be {expected}, got {value!r}")
    return number


def check_integer(name: str, value: object, *, at_least: int | None = None, owner: str = "") -> int:
    """`value` if it is an int (not a bool) >= `at_least`, else ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{owner + ': ' if owner else ''}{name} must be an integer, got {value!r}")
    if at_least is not None and value < at_least:
        raise ValueError(
            f"{owner + ': ' if owner else ''}{name} must be an integer >= {at_least}, got {value!r}"
        )
    return int(value)
