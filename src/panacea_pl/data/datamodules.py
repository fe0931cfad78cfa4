"""The DataModules a YAML names: preference pairs (DPO, reward models), SFT targets, PPO prompts.

    from panacea_pl.data import DimensionSpec, PreferenceDataModule, SourceSpec

    dm = PreferenceDataModule(
        tokenizer="path/to/tokenizer",
        sources=[SourceSpec(name="pku", schema="pku_saferlhf", path="pku.jsonl")],
        dimensions=[
            DimensionSpec(name="helpful", source="pku", field="better_response_id"),
            DimensionSpec(name="harmless", source="pku", field="safer_response_id"),
        ],
        batch_size=8,
    )
    dm.prepare_data(); dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))   # see panacea_pl.data.collate for the layout

Each is `TokenizedDataModule` (its constructor, caching, splitting, mixing and loaders) plus how
one kind reads, tokenises and collates its rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets

from panacea_pl.data.collate import PreferenceCollator, PromptCollator, SFTCollator
from panacea_pl.data.config import (
    BadRowPolicy,
    BoundDimension,
    SourceSpec,
    TokenizationSpec,
    bind_dimensions,
)
from panacea_pl.data.datamodule import TokenizedDataModule
from panacea_pl.data.records import pair_records, prompt_records, sft_records
from panacea_pl.data.schemas import SourceReport
from panacea_pl.data.tokenize import (
    TextEncoder,
    pad_token_id,
    tokenize_pairs,
    tokenize_prompts,
    tokenize_sft,
)


class PreferenceDataModule(TokenizedDataModule):
    """Preference pairs labelled in one or more dimensions, batched for DPO / reward models.

    YAML (LightningCLI), PKU-SafeRLHF with two dimensions on the same pairs:

        data:
          class_path: panacea_pl.data.PreferenceDataModule
          init_args:
            tokenizer: path/to/tokenizer
            sources:
              - {name: pku, schema: pku_saferlhf, path: PKU-Alignment/PKU-SafeRLHF}
            dimensions:
              - {name: helpful, source: pku, field: better_response_id}
              - {name: harmless, source: pku, field: safer_response_id}
            batch_size: 8

    HH-RLHF, helpful vs harmless (one dimension per source; the public files have a few rows
    with an empty final turn, hence `on_bad_row: skip`, which counts them in the log):

        data:
          class_path: panacea_pl.data.PreferenceDataModule
          init_args:
            tokenizer: path/to/tokenizer
            sources:
              - name: helpful
                schema: hh_rlhf
                path: Anthropic/hh-rlhf
                data_files: [helpful-base/train.jsonl.gz, helpful-online/train.jsonl.gz,
                             helpful-rejection-sampled/train.jsonl.gz]
              - {name: harmless, schema: hh_rlhf, path: Anthropic/hh-rlhf, data_dir: harmless-base}
            dimensions:
              - {name: helpful, source: helpful, field: chosen}
              - {name: harmless, source: harmless, field: chosen}
            mixing: interleaved          # or proportional / per_dimension
            on_bad_row: skip

    Args: see `TokenizedDataModule` (batch_size counts pairs; a batch has 2 × batch_size
        sequences).
    """

    kind = "pairs"

    def _records(self, spec: SourceSpec) -> tuple[datasets.Dataset, SourceReport]:
        return pair_records(
            spec, self.bound[spec.name], self.num_dimensions, self.on_bad_row, self.cache_dir
        )

    def _tokenize(
        self, table: datasets.Dataset, encoder: TextEncoder
    ) -> tuple[datasets.Dataset, dict[str, int]]:
        return tokenize_pairs(table, encoder)

    def _collator(self) -> PreferenceCollator:
        return PreferenceCollator(pad_token_id(self.tokenizer), self.pad_to_multiple_of)


class SFTDataModule(TokenizedDataModule):
    """Prompt + target sequences, one target per dimension, for Panacea-SFT.

    Sources of schema `sft` give their target columns (`DimensionSpec.field` = the column);
    preference-pair sources give the preferred response of each dimension that labels a pair.
    Groups for `mixing` are the dimensions (`per_dimension`: each batch serves one dimension).

        data:
          class_path: panacea_pl.data.SFTDataModule
          init_args:
            tokenizer: path/to/tokenizer
            sources: [{name: pku, schema: pku_saferlhf, path: pku.jsonl}]
            dimensions:
              - {name: helpful, source: pku, field: better_response_id}
              - {name: harmless, source: pku, field: safer_response_id}

    Args: see `TokenizedDataModule` (batch_size counts sequences; `mixing_weights` has one
        weight per dimension for `interleaved`).
    """

    kind = "sft"

    def _records(self, spec: SourceSpec) -> tuple[datasets.Dataset, SourceReport]:
        return sft_records(
            spec, self.bound[spec.name], self.num_dimensions, self.on_bad_row, self.cache_dir
        )

    def _groups(self, source_index: int, table: datasets.Dataset) -> list[int]:
        return list(table["dimension"])

    def _tokenize(
        self, table: datasets.Dataset, encoder: TextEncoder
    ) -> tuple[datasets.Dataset, dict[str, int]]:
        return tokenize_sft(table, encoder)

    def _collator(self) -> SFTCollator:
        return SFTCollator(pad_token_id(self.tokenizer), self.pad_to_multiple_of)


class PromptDataModule(TokenizedDataModule):
    """Distinct prompts of any source, left-padded for generation (PPO rollouts).

        data:
          class_path: panacea_pl.data.PromptDataModule
          init_args:
            tokenizer: path/to/tokenizer
            sources: [{name: hh, schema: hh_rlhf, path: hh/test.jsonl.gz}]
            dimension_names: [helpful, harmless]

    Args:
        tokenizer: tokenizer path or hub name.
        sources: the datasets; any schema (its prompt column, or HH-RLHF's shared prefix).
        dimension_names: the dimensions of the rewards the prompts are rolled out for (only
            exposed as `dimension_names` / `num_dimensions`; prompts carry no labels).
        tokenization: template and prompt truncation (`max_prompt_length`).
        batch_size, eval_batch_size, val_fraction, seed, on_bad_row, cache_dir,
        overwrite_cache, num_workers, pad_to_multiple_of: as for `TokenizedDataModule`.
    """

    kind = "prompts"
    requires_dimensions = False

    def __init__(
        self,
        tokenizer: str,
        sources: list[SourceSpec],
        dimension_names: list[str] | None = None,
        tokenization: TokenizationSpec | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.0,
        seed: int = 0,
        on_bad_row: BadRowPolicy = "error",
        cache_dir: str | None = None,
        overwrite_cache: bool = False,
        num_workers: int = 0,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        self._names = list(dimension_names or [])
        super().__init__(
            tokenizer, sources, [], tokenization, batch_size, eval_batch_size, val_fraction,
            seed, on_bad_row, "proportional", None, cache_dir, overwrite_cache, num_workers,
            pad_to_multiple_of,
        )  # fmt: skip

    def _bind(self) -> dict[str, list[BoundDimension]]:
        self._check_schemas()
        return bind_dimensions(self.sources, [])

    @property
    def dimension_names(self) -> list[str]:
        return list(self._names)

    def _records(self, spec: SourceSpec) -> tuple[datasets.Dataset, SourceReport]:
        return prompt_records(spec, self.on_bad_row, self.cache_dir)

    def _tokenize(
        self, table: datasets.Dataset, encoder: TextEncoder
    ) -> tuple[datasets.Dataset, dict[str, int]]:
        return tokenize_prompts(table, encoder)

    def _collator(self) -> PromptCollator:
        return PromptCollator(pad_token_id(self.tokenizer), self.pad_to_multiple_of)


__all__: Sequence[str] = ["PreferenceDataModule", "PromptDataModule", "SFTDataModule"]
