"""Schema adapters: one per public dataset layout, all yielding the canonical records.

    from panacea_pl.data.schemas import SCHEMAS, get_schema, register_schema
    sorted(SCHEMAS)   # ['generic', 'helpsteer', 'helpsteer2', 'hh_rlhf', 'pku_saferlhf', ...]

See `panacea_pl.data.schemas.base` for the canonical record layouts and each module for the
rules of its dataset.
"""

from __future__ import annotations

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
    """The registered schema called `name`."""
    try:
        return SCHEMAS[name]
    except KeyError:
        raise ConfigError(f"unknown schema '{name}'; expected one of {sorted(SCHEMAS)}") from None


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
