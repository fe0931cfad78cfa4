"""Checks of a whole run config that no single component can make, run before anything loads.

    check_dimension_agreement(config)   # `panacea-pl` calls it on the parsed config

The number of preference dimensions m is stated by several components of a YAML: the adapter
(`num_preferences`), the data (`num_dimensions`, `dimensions`, `dimension_names`), the
aggregator (`num_preferences`, a per-dimension `ideal` point), an evaluator (`num_dimensions`),
a fixed λ (`preference`), a saved adapter (`adapter_path`). The shipped YAMLs state the number
once, as the top-level `num_preferences`, and the components refer to it
(`${panacea.num_preferences:}`, resolved when the file is read); a list (dimension names, a λ,
the data's dimensions) still states m by its length, and a later file or a `--key value` can
still give the top level or one component another number. If
they disagree, the run would fail at step 0 with a shape error that names none of them, after
the model has loaded; here the error lists every statement of m with its config key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from jsonargparse import Namespace

from panacea_pl.layers.io import CONFIG_NAME

#: Keys whose integer value is m.
COUNT_KEYS = ("num_preferences", "num_dimensions")
#: Keys whose list length is m.
LIST_KEYS = ("dimension_names", "preference")


class DimensionMismatchError(ValueError):
    """Components of one config disagree on the number of preference dimensions m."""


def _items(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping):
        yield from node.items()
    elif isinstance(node, Namespace):
        yield from vars(node).items()


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(dotted path, key, value) for every key under `node` (mappings, Namespaces, lists)."""
    if isinstance(node, Sequence) and not isinstance(node, (str, bytes)):
        for i, child in enumerate(node):
            yield from _walk(child, f"{path}[{i}]")
        return
    for key, value in _items(node):
        key = str(key)
        where = f"{path}.{key}" if path else key
        yield where, key, value
        yield from _walk(value, where)


def _saved_adapter_m(path: str) -> int | None:
    """m of a saved adapter folder, or None when it cannot be read here (the loader says why)."""
    try:
        config = json.loads((Path(path).expanduser() / CONFIG_NAME).read_text())
        value = config.get("config", config).get("num_preferences")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def dimension_statements(config: Any) -> dict[str, int]:
    """Every statement of m in `config`: {config key: m}."""
    found: dict[str, int] = {}
    for where, key, value in _walk(config):
        if value is None or isinstance(value, bool):
            continue
        if key in COUNT_KEYS and isinstance(value, int):
            found[where] = value
        elif key in LIST_KEYS and isinstance(value, Sequence) and not isinstance(value, str):
            if value and all(isinstance(v, (int, float, str)) for v in value):
                found[where] = len(value)
        elif key == "ideal" and isinstance(value, Sequence) and not isinstance(value, str):
            if len(value) > 1:  # one number means "every dimension"
                found[where] = len(value)
        elif key == "dimensions" and where.startswith("data") and isinstance(value, Sequence):
            if value and not isinstance(value, str):
                found[where] = len(value)
        elif key == "adapter_path" and isinstance(value, str):
            m = _saved_adapter_m(value)
            if m is not None:
                found[f"{where} ({value})"] = m
    return found


def check_dimension_agreement(config: Any) -> int | None:
    """Raise `DimensionMismatchError` if the config states m in two ways; return m (or None)."""
    found = dimension_statements(config)
    values = set(found.values())
    if len(values) <= 1:
        return next(iter(values), None)
    lines = "\n".join(f"  {key} = {m}" for key, m in sorted(found.items()))
    raise DimensionMismatchError(
        f"the config disagrees on the number of preference dimensions m ({sorted(values)}):\n"
        f"{lines}\nSet them all to the same m (the adapter's num_preferences is the number of "
        "entries of λ; the data gives one label column per dimension)."
    )
