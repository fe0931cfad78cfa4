"""The life cycle every tokenised DataModule shares (the kinds users name are in
`panacea_pl.data.datamodules`: preference pairs, SFT targets, PPO prompts).

    class MyDataModule(TokenizedDataModule):   # a new kind: how rows are read, tokenised, collated
        kind = "mine"
        def _records(self, spec): ...
        def _tokenize(self, table, encoder): ...
        def _collator(self): ...

Life cycle (correct under DDP): `prepare_data` (Lightning runs it on local rank 0 only) reads,
adapts, splits and tokenises every source and saves the result with `datasets.save_to_disk`
under a content key (see `panacea_pl.data.cache`); when that key is already on disk it does
nothing — a second run does no tokenisation. `setup` (every rank) loads the saved tables and
mixes them (held-out rows of several sources or dimensions are shuffled once with `seed`, so any
prefix of the validation set covers all of them). Training batches come from a
`ResumableDataLoader` (`panacea_pl.data.resumable`): shuffled from `seed + epoch`, sharded by
rank under DDP, and restored mid-epoch from a checkpoint, except for `mixing: per_dimension`,
whose `PerDimensionBatchSampler` shards by rank itself.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import datasets
import lightning.pytorch as pl
from lightning.fabric.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader

from panacea_pl.checks import check_model_path
from panacea_pl.data.cache import (
    cache_key,
    cache_path,
    cache_root,
    is_cached,
    load_cached,
    quiet_progress,
    save_cached,
)
from panacea_pl.data.config import (
    BadRowPolicy,
    BoundDimension,
    DimensionSpec,
    MixingPolicy,
    SourceSpec,
    TokenizationSpec,
    bind_dimensions,
)
from panacea_pl.data.context import check_context, model_max_positions
from panacea_pl.data.errors import ConfigError, DataError
from panacea_pl.data.mixing import POLICIES, PerDimensionBatchSampler, mix_groups
from panacea_pl.data.resumable import ResumableDataLoader
from panacea_pl.data.schemas import SourceReport, get_schema
from panacea_pl.data.sources import source_fingerprint
from panacea_pl.data.split import split_by_prompt
from panacea_pl.data.tokenize import (
    TextEncoder,
    log_truncation,
    tokenizer_fingerprint,
)

log = logging.getLogger("panacea_pl.data")


def _info(message: str) -> None:
    if getattr(rank_zero_only, "rank", 0) == 0:
        log.info(message)


class TokenizedDataModule(pl.LightningDataModule):
    """Shared life cycle: cache key → prepare (build + save) → setup (load + mix) → loaders.

    The constructor below is the one of `PreferenceDataModule` and `SFTDataModule` (see
    `panacea_pl.data.datamodules`); a kind supplies `_records`, `_tokenize` and `_collator`.

    Args:
        tokenizer: tokenizer path or hub name, loaded with `AutoTokenizer.from_pretrained`.
        sources: the datasets (see `SourceSpec`).
        dimensions: the preference dimensions, in the order of `labels` (see `DimensionSpec`).
        tokenization: template and truncation (see `TokenizationSpec`; default: its defaults).
        batch_size: pairs per training batch (a batch has 2 × batch_size sequences).
        eval_batch_size: pairs per validation batch (default: batch_size).
        val_fraction: share of distinct prompts held out for validation, per source.
        seed: seed of the split, of the shuffling and of the per-dimension batch order.
        on_bad_row: `error` — stop at the first bad row with a message naming file, row and
            field; `skip` — drop bad rows and log how many, by reason.
        mixing: `proportional`, `interleaved` or `per_dimension` (see `panacea_pl.data.mixing`).
        mixing_weights: one weight per source for `interleaved` (default: equal turns).
        cache_dir: where tokenised data (and `datasets`' own cache) go (default:
            `HF_DATASETS_CACHE`).
        overwrite_cache: rebuild even when the tokenised data is cached.
        num_workers: DataLoader workers.
        pad_to_multiple_of: round the padded length up to a multiple of this.
    """

    kind: ClassVar[str] = ""
    #: whether the kind needs at least one `DimensionSpec` (prompts for PPO do not)
    requires_dimensions: ClassVar[bool] = True

    def __init__(
        self,
        tokenizer: str,
        sources: list[SourceSpec],
        dimensions: list[DimensionSpec],
        tokenization: TokenizationSpec | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.05,
        seed: int = 0,
        on_bad_row: BadRowPolicy = "error",
        mixing: MixingPolicy = "proportional",
        mixing_weights: list[float] | None = None,
        cache_dir: str | None = None,
        overwrite_cache: bool = False,
        num_workers: int = 0,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        super().__init__()
        if self.requires_dimensions and not dimensions:
            raise ConfigError("at least one dimension is needed")
        if not sources:
            raise ConfigError("at least one source is needed")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        if on_bad_row not in ("error", "skip"):
            raise ConfigError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if mixing not in POLICIES:
            raise ConfigError(f"mixing must be one of {POLICIES}, got {mixing!r}")
        if mixing_weights is not None and mixing != "interleaved":
            raise ConfigError("mixing_weights apply to mixing: interleaved only")
        try:
            self.tokenizer_path = check_model_path(tokenizer, f"{type(self).__name__}.tokenizer")
        except (FileNotFoundError, TypeError) as err:
            raise ConfigError(str(err)) from None
        self.sources = list(sources)
        self.dimensions = list(dimensions)
        self.tokenization = tokenization or TokenizationSpec()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.on_bad_row = on_bad_row
        self.mixing = mixing
        self.mixing_weights = mixing_weights
        self.cache_dir = cache_dir
        self.overwrite_cache = overwrite_cache
        self.num_workers = num_workers
        self.pad_to_multiple_of = pad_to_multiple_of
        self.bound: dict[str, list[BoundDimension]] = self._bind()
        self.train_dataset: datasets.Dataset | None = None
        self.val_dataset: datasets.Dataset | None = None
        #: what prepare_data/setup found: per-source reports, truncation counts, split sizes
        self.report: dict[str, Any] | None = None
        #: True when prepare_data found the tokenised data on disk, False when it built it
        self.cache_hit: bool | None = None
        self._tokenizer_obj: Any = None

    # ---- configuration ----------------------------------------------------------------------

    def _check_schemas(self) -> None:
        """Resolve every source's schema now, so a bad name fails before anything loads."""
        for spec in self.sources:
            try:
                get_schema(spec.schema)
            except ConfigError as err:
                raise ConfigError(f"source '{spec.name}': {err}") from None

    def _bind(self) -> dict[str, list[BoundDimension]]:
        self._check_schemas()
        bound = bind_dimensions(self.sources, self.dimensions)
        for name, dims in bound.items():
            if not dims:
                raise ConfigError(
                    f"source '{name}' is not used by any dimension; give it a DimensionSpec "
                    "or remove it"
                )
        return bound

    @property
    def dimension_names(self) -> list[str]:
        """Dimension names in configured order (the order of `labels` columns)."""
        return [d.name for d in self.dimensions]

    @property
    def num_dimensions(self) -> int:
        return len(self.dimension_names)

    @property
    def tokenizer(self) -> Any:
        """The tokenizer, loaded with `AutoTokenizer.from_pretrained(tokenizer)` on first use."""
        if self._tokenizer_obj is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer_obj = AutoTokenizer.from_pretrained(self.tokenizer_path)
            except Exception as err:  # noqa: BLE001 - name what could not be loaded
                raise ConfigError(
                    f"could not load the tokenizer {self.tokenizer_path!r}: "
                    f"{type(err).__name__}: {err}"
                ) from err
        return self._tokenizer_obj

    def cache_path(self) -> Path:
        """Where the tokenised tables of this configuration live."""
        payload = {
            "kind": self.kind,
            "sources": [{**asdict(s), "fingerprint": source_fingerprint(s)} for s in self.sources],
            "dimensions": [asdict(d) for d in self.dimensions],
            "tokenization": asdict(self.tokenization),
            "tokenizer": tokenizer_fingerprint(self.tokenizer),
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "on_bad_row": self.on_bad_row,
        }
        return cache_path(cache_root(self.cache_dir), self.kind, cache_key(payload))

    # ---- per-kind hooks ---------------------------------------------------------------------

    def _records(self, spec: SourceSpec) -> tuple[datasets.Dataset, SourceReport]:
        raise NotImplementedError

    def _groups(self, source_index: int, table: datasets.Dataset) -> list[int]:
        return [source_index] * len(table)

    def _tokenize(
        self, table: datasets.Dataset, encoder: TextEncoder
    ) -> tuple[datasets.Dataset, dict[str, int]]:
        raise NotImplementedError

    def _collator(self) -> Any:
        raise NotImplementedError

    # ---- life cycle -------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Build and save the tokenised tables, unless this configuration is cached already."""
        path = self.cache_path()
        if is_cached(path) and not self.overwrite_cache:
            self.cache_hit = True
            _info(f"tokenised {self.kind} data: using the cache at {path}")
            return
        self.cache_hit = False
        with quiet_progress():
            tables, report = self.build()
        save_cached(path, tables, report)
        _info(f"tokenised {self.kind} data: saved to {path}")

    def build(self) -> tuple[dict[str, datasets.Dataset], dict[str, Any]]:
        """Read, adapt, split and tokenise every source (what `prepare_data` saves).

        Returns:
            Tables `train_{i}` / `validation_{i}` per source i, and the report.
        """
        encoder = TextEncoder(self.tokenizer, self.tokenization)
        tables: dict[str, datasets.Dataset] = {}
        report: dict[str, Any] = {"sources": {}, "truncated": {}, "rows": {}}
        for i, spec in enumerate(self.sources):
            table, source_report = self._records(spec)
            table = table.add_column("group", self._groups(i, table))
            train, val = split_by_prompt(table, self.val_fraction, self.seed)
            cut_total: dict[str, int] = {}
            for split, part in (("train", train), ("validation", val)):
                part, cut = self._tokenize(part, encoder)
                tables[f"{split}_{i}"] = part
                for k, v in cut.items():
                    cut_total[k] = cut_total.get(k, 0) + v
            log_truncation(spec.name, len(table), cut_total, self.tokenization)
            report["sources"][spec.name] = source_report.to_dict()
            report["truncated"][spec.name] = cut_total
            report["rows"][spec.name] = {"train": len(train), "validation": len(val)}
        return tables, report

    def setup(self, stage: str | None = None) -> None:
        """Load the tokenised tables (building them first when running in a single process)."""
        if self.train_dataset is not None:
            return
        path = self.cache_path()
        if not is_cached(path):
            trainer = getattr(self, "trainer", None)
            if trainer is not None and trainer.world_size > 1:
                raise DataError(
                    f"no tokenised data at {path}: prepare_data did not run on this node (with "
                    "`prepare_data_per_node=False`, `cache_dir` must be on a filesystem that "
                    "every node sees)"
                )
            self.prepare_data()
        tables, report = load_cached(path)
        limit = model_max_positions(self.tokenizer_path)  # the model folder holding the tokenizer
        if limit is not None:
            check_context(tables, [s.name for s in self.sources], limit, self.tokenization)
        n = len(self.sources)
        train = datasets.concatenate_datasets([tables[f"train_{i}"] for i in range(n)])
        val = datasets.concatenate_datasets([tables[f"validation_{i}"] for i in range(n)])
        if len(set(val["group"])) > 1:
            # one fixed shuffle, so that any prefix of the held-out set (`limit_val_batches`,
            # an evaluator's `max_batches`) holds every source and dimension, not just the first
            val = val.shuffle(seed=self.seed, keep_in_memory=True)
        self.train_dataset = mix_groups(train, self.mixing, self.seed, self.mixing_weights)
        self.val_dataset = val
        self.report = report
        for spec in self.sources:
            for line in SourceReport(**report["sources"][spec.name]).lines():
                _info(line)
            rows = report["rows"][spec.name]
            _info(f"source '{spec.name}': {rows['train']} train / {rows['validation']} validation")

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise RuntimeError("call setup() before train_dataloader()")
        common = {
            "collate_fn": self._collator(),
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
        }
        if self.mixing == "per_dimension":
            trainer = getattr(self, "trainer", None)
            sampler = PerDimensionBatchSampler(
                None,
                self.batch_size,
                False,
                groups=self.train_dataset["group"],
                seed=self.seed,
                num_replicas=trainer.world_size if trainer is not None else None,
                rank=trainer.global_rank if trainer is not None else None,
            )
            return DataLoader(self.train_dataset, batch_sampler=sampler, **common)
        trainer = getattr(self, "trainer", None)
        return ResumableDataLoader(
            self.train_dataset, batch_size=self.batch_size, seed=self.seed,
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            **common,
        )  # fmt: skip

    def val_dataloader(self) -> DataLoader | list:
        if self.val_dataset is None:
            raise RuntimeError("call setup() before val_dataloader()")
        if len(self.val_dataset) == 0:
            return []
        return DataLoader(
            self.val_dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=self._collator(),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
