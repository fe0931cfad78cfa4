"""Checks of user inputs shared by the adapter, the models, the data and the modules: dtype
names, model paths, numbers.

    from panacea_pl.checks import resolve_dtype, check_model_path, check_number
    resolve_dtype("bf16", "PanaceaPolicy.dtype")             # torch.bfloat16
    check_model_path("./no/such/model", "model_name_or_path")  # FileNotFoundError naming both
    check_number("beta", beta, above=0)                       # finite and > 0, else ValueError

NaN passes every `<`/`>` comparison as False, so `if beta <= 0: raise` lets `beta=nan` through to
fail at step 0 as a non-finite loss; `check_number` refuses NaN and ±inf at construction.

No Lightning or transformers import, so the adapter stays usable from plain PyTorch.
"""

from __future__ import annotations

import math
import numbers
import os

import torch

#: accepted spellings (lower case, without a "torch." prefix) → torch dtype
DTYPE_ALIASES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "f32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "f16": torch.float16,
    "float64": torch.float64,
    "fp64": torch.float64,
    "double": torch.float64,
}


def resolve_dtype(value: str | torch.dtype, field: str) -> torch.dtype:
    """The floating-point torch dtype a user named, e.g. "bf16", "torch.float16" or torch.half.

    Args:
        value: a dtype name (any alias of `DTYPE_ALIASES`, case-insensitive, with or without
            "torch.") or a floating-point `torch.dtype`.
        field: the argument that held it, for the message (e.g. "PanaceaConfig.dtype").

    Raises:
        ValueError: anything else; the message lists the valid names.
    """
    if isinstance(value, torch.dtype) and value.is_floating_point:
        return value
    if isinstance(value, str):
        key = value.strip().lower().removeprefix("torch.")
        if key in DTYPE_ALIASES:
            return DTYPE_ALIASES[key]
    raise ValueError(
        f"{field} = {value!r} is not a floating-point dtype; expected one of "
        f"{', '.join(sorted(DTYPE_ALIASES))} (or a torch float dtype)"
    )


def dtype_name(dtype: torch.dtype) -> str:
    """ "bfloat16" for torch.bfloat16: the canonical name, as `getattr(torch, name)` reads it."""
    return str(dtype).removeprefix("torch.")


def looks_like_local_path(path: str) -> bool:
    """Whether a string names a local file or folder rather than a hub id ("owner/name")."""
    return (
        path.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or (os.sep != "/" and os.sep in path)
        or path in (".", "..")
        or path.count("/") > 1
    )


def check_model_path(path: str | os.PathLike, argument: str) -> str:
    """Refuse a model or tokenizer path that looks local but does not exist, before loading.

    A string that is not a local-looking path is left to `from_pretrained` (a hub id, or a folder
    relative to the current directory that exists).

    Args:
        path: what the user passed.
        argument: the argument that named it (e.g. "PanaceaPolicy.model_name_or_path").

    Returns:
        `path` as a string, with `~` expanded.

    Raises:
        FileNotFoundError: the folder does not exist; the message names the argument.
        TypeError: `path` is not a string or path.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"{argument} must be a folder path or hub id (a string), got {path!r}")
    text = os.path.expanduser(os.fspath(path))
    if os.path.exists(text):
        if not os.path.isdir(text):
            raise FileNotFoundError(
                f"{argument} = {os.fspath(path)!r} is a file; expected a model folder (with "
                "config.json) or a hub id"
            )
        return text
    if looks_like_local_path(os.fspath(path)) or isinstance(path, os.PathLike):
        raise FileNotFoundError(
            f"{argument} = {os.fspath(path)!r}: no such folder (resolved to "
            f"{os.path.abspath(text)!r}); expected an existing model folder or a hub id "
            "'owner/name'"
        )
    _check_hub_id(text, argument)
    return text


def _check_hub_id(name: str, argument: str) -> None:
    """A string that is no local folder must be a valid hub id, and cached when offline."""
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise FileNotFoundError(
            f"{argument} = {name!r}: no such folder (resolved to {os.path.abspath(name)!r}), "
            "and not a hub id of the form 'owner/name'; expected an existing model folder"
        ) from None
    if not constants.HF_HUB_OFFLINE:
        return
    if not any(
        isinstance(try_to_load_from_cache(name, f), str)
        for f in ("config.json", "tokenizer_config.json")
    ):
        raise FileNotFoundError(
            f"{argument} = {name!r}: no such folder (resolved to {os.path.abspath(name)!r}), "
            "and HF_HUB_OFFLINE=1 forbids downloading it as a hub model (it is not in the local "
            "hub cache); expected an existing model folder"
        )


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
