"""Per-dimension preference data: public datasets → canonical pairs → token batches.

    from panacea_pl.data import DimensionSpec, PreferenceDataModule, SourceSpec

    dm = PreferenceDataModule(
        tokenizer="path/to/tokenizer",
        sources=[SourceSpec(name="pku", schema="pku_saferlhf", path="PKU-Alignment/PKU-SafeRLHF")],
        dimensions=[
            DimensionSpec(name="helpful", source="pku", field="better_response_id"),
            DimensionSpec(name="harmless", source="pku", field="safer_response_id"),
        ],
    )

Modules, one job each:

- `config`      SourceSpec, DimensionSpec, TokenizationSpec (what LightningCLI builds from YAML)
- `sources`     read local json/jsonl/jsonl.gz/parquet/csv or a hub dataset through `datasets`
- `schemas/`    one adapter per dataset layout → canonical pair / SFT / prompt records
- `records`     one source → records, with the shared drops, counts and checks
- `split`       deterministic train/validation split by prompt
- `tokenize`    chat or plain template, BOS/EOS, left/right truncation
- `cache`       tokenised tables saved with `datasets` under a content key
- `mixing`      proportional / interleaved / per-dimension batches
- `resumable`   training batches that resume mid-epoch, shuffled per (seed, epoch), sharded by rank
- `collate`     padded tensor batches (the batch contracts)
- `datamodule`  TokenizedDataModule: the life cycle (cache, split, mix, loaders) every kind shares
- `datamodules` PreferenceDataModule, SFTDataModule, PromptDataModule
"""

from panacea_pl.data.collate import PreferenceCollator, PromptCollator, SFTCollator
from panacea_pl.data.config import (
    BoundDimension,
    DimensionSpec,
    SourceSpec,
    TokenizationSpec,
    bind_dimensions,
)
from panacea_pl.data.datamodule import TokenizedDataModule
from panacea_pl.data.datamodules import PreferenceDataModule, PromptDataModule, SFTDataModule
from panacea_pl.data.errors import ConfigError, DataError
from panacea_pl.data.mixing import PerDimensionBatchSampler, mix_groups
from panacea_pl.data.records import pair_records, preferred_targets, prompt_records, sft_records
from panacea_pl.data.resumable import ResumableDataLoader, ResumableSampler
from panacea_pl.data.schemas import SCHEMAS, Schema, SourceReport, register_schema
from panacea_pl.data.sources import load_source
from panacea_pl.data.split import split_by_prompt
from panacea_pl.data.tokenize import TextEncoder

__all__ = [
    "SCHEMAS",
    "BoundDimension",
    "ConfigError",
    "DataError",
    "DimensionSpec",
    "PerDimensionBatchSampler",
    "PreferenceCollator",
    "PreferenceDataModule",
    "TokenizedDataModule",
    "PromptCollator",
    "PromptDataModule",
    "ResumableDataLoader",
    "ResumableSampler",
    "SFTCollator",
    "SFTDataModule",
    "Schema",
    "SourceReport",
    "SourceSpec",
    "TextEncoder",
    "TokenizationSpec",
    "bind_dimensions",
    "load_source",
    "mix_groups",
    "pair_records",
    "preferred_targets",
    "prompt_records",
    "register_schema",
    "sft_records",
    "split_by_prompt",
]
