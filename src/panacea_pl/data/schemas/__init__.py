"""Schema adapters: one per public dataset layout, all yielding the canonical records.

    from panacea_pl.data.schemas import SCHEMAS, get_schema, register_schema
    sorted(SCHEMAS)   # ['generic', 'helpsteer', 'helpsteer2', 'hh_rlhf', 'pku_saferlhf', ...]
    get_schema("my_package.schemas.MySchema")   # a user's Schema subclass, by import path

A source names its schema by a short name of `SCHEMAS` or by the import path of a `Schema`
subclass (or instance) in the user's own module, so a YAML reaches a new schema with no
registration: `sources: [{name: mine, schema: my_package.schemas.MySchema, path: ...}]`.

See `panacea_pl.data.schemas.base` for the canonical record layouts and each module for the
rules of its dataset.
"""

from __future__ import annotations

import importlib

from panacea_pl.data.errors import ConfigError
from panacea_pl.data.schemas.base import (
    PAIR_FEATURES,
    PROMPT_FEATURES,
    SFT_FEATURES,
    Schema,
    SourceReport,
)
from panacea_pl.data.schemas.generic import Generic, Prompts, SFTTargets
from panacea_pl.data.schemas.hh_rlhf import HHRLHF, split_transcripts
from panacea_pl.data.schemas.pku import PKUSafeRLHF
from panacea_pl.data.schemas.ratings import HelpSteer, UltraFeedback

SCHEMAS: dict[str, Schema] = {
    "pku_saferlhf": PKUSafeRLHF(),
    "hh_rlhf": HHRLHF(),
    "helpsteer": HelpSteer(),
    "helpsteer2": HelpSteer(),
    "ultrafeedback": UltraFeedback(),
    "generic": Generic(),
    "sft": SFTTargets(),
    "prompts": Prompts(),
}


def register_schema(name: str, schema: Schema) -> None:
    """Make a custom `Schema` available to `SourceSpec(schema=name)`."""
    SCHEMAS[name] = schema


def get_schema(name: str) -> Schema:
    """The schema a source names: a key of `SCHEMAS`, or the import path of a `Schema` subclass
    (instantiated without arguments) or instance."""
    if name in SCHEMAS:
        return SCHEMAS[name]
    expected = (
        f"expected one of {sorted(SCHEMAS)} or the import path of a Schema subclass "
        "(e.g. my_package.schemas.MySchema)"
    )
    module_name, _, attribute = str(name).rpartition(".")
    if not module_name:
        raise ConfigError(f"unknown schema '{name}'; {expected}")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"schema '{name}' cannot be imported ({err}); {expected}") from None
    if isinstance(found, type) and issubclass(found, Schema):
        found = found()
    if not isinstance(found, Schema):
        raise ConfigError(f"schema '{name}' is a {type(found).__name__}, not a Schema; {expected}")
    return found


__all__ = [
    "PAIR_FEATURES",
    "PROMPT_FEATURES",
    "SCHEMAS",
    "SFT_FEATURES",
    "HHRLHF",
    "Generic",
    "HelpSteer",
    "PKUSafeRLHF",
    "Prompts",
    "SFTTargets",
    "Schema",
    "SourceReport",
    "UltraFeedback",
    "get_schema",
    "register_schema",
    "split_transcripts",
]
