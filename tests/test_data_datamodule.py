"""DataModules: cache hit on the second run, deterministic split, mixing policies, DDP sharding
as Lightning injects it, LightningCLI-style construction from YAML, a short Trainer run."""

from __future__ import annotations

import gzip
import json
import math
from collections import Counter
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.fabric.utilities.data import _replace_dunder_methods
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import BatchSampler, DataLoader
from torch.utils.data.distributed import DistributedSampler

import panacea_pl.data.datamodules as dm_module
from panacea_pl.data import (
    DimensionSpec,
    PerDimensionBatchSampler,
    PreferenceDataModule,
    PromptDataModule,
    SFTDataModule,
    SourceSpec,
    TokenizationSpec,
)
from panacea_pl.data.tokenize import TextEncoder

PKU_500 = "pku-saferlhf-sample-500/PKU-Alignment_PKU-SafeRLHF_sample.jsonl"
SHORT = TokenizationSpec(max_prompt_length=48, max_response_length=32)


def pku_module(shared_data, tokenizer, cache, **kw) -> PreferenceDataModule:
    return PreferenceDataModule(
        tokenizer=str(tokenizer),
        sources=[SourceSpec(name="pku", schema="pku_saferlhf", path=str(shared_data / PKU_500))],
        dimensions=[
            DimensionSpec(name="helpful", source="pku", field="better_response_id"),
            DimensionSpec(name="harmless", source="pku", field="safer_response_id"),
        ],
        tokenization=kw.pop("tokenization", SHORT),
        cache_dir=str(cache),
        **kw,
    )


def hh_module(shared_data, tokenizer, cache, **kw) -> PreferenceDataModule:
    """HH-RLHF helpful (300 rows) vs harmless (100 rows): one dimension per source."""
    return PreferenceDataModule(
        tokenizer=str(tokenizer),
        sources=[
            SourceSpec(
                name="helpful",
                schema="hh_rlhf",
                max_rows=300,
                path=str(shared_data / "hh-rlhf-helpful-base-test/test.jsonl.gz"),
            ),
            SourceSpec(
                name="harmless",
                schema="hh_rlhf",
                max_rows=100,
                path=str(shared_data / "hh-rlhf-harmless-test/test.jsonl.gz"),
            ),
        ],  # fmt: skip
        dimensions=[
            DimensionSpec(name="helpful", source="helpful", field="chosen"),
            DimensionSpec(name="harmless", source="harmless", field="chosen"),
        ],
        tokenization=SHORT,
        on_bad_row="skip",
        cache_dir=str(cache),
        **kw,
    )


def test_second_run_reads_the_cache_and_does_no_tokenisation(
    shared_data, tiny_tokenizer_dir, tmp_path, monkeypatch
):
    first = pku_module(shared_data, tiny_tokenizer_dir, tmp_path, batch_size=4)
    first.prepare_data()
    first.setup("fit")
    assert first.cache_hit is False
    assert first.cache_path().is_dir()

    def forbidden(*args, **kwargs):
        raise AssertionError("the second run must not read, adapt or tokenise")

    monkeypatch.setattr(TextEncoder, "_encode", forbidden)
    monkeypatch.setattr(dm_module, "tokenize_pairs", forbidden)
    monkeypatch.setattr(dm_module, "pair_records", forbidden)
    second = pku_module(shared_data, tiny_tokenizer_dir, tmp_path, batch_size=4)
    second.prepare_data()
    second.setup("fit")
    assert second.cache_hit is True
    assert second.train_dataset["prompt_ids"] == first.train_dataset["prompt_ids"]
    assert second.report == first.report
    assert second.report["sources"]["pku"]["labelled"]["helpful"] == {"a": 159, "b": 341}
    next(iter(second.train_dataloader()))

    # a different tokenisation is a different cache entry (and would tokenise)
    other = pku_module(shared_data, tiny_tokenizer_dir, tmp_path,
                       tokenization=TokenizationSpec(max_prompt_length=40))  # fmt: skip
    assert other.cache_path() != first.cache_path()
    with pytest.raises(AssertionError, match="must not"):
        other.prepare_data()


@pytest.mark.slow
def test_split_is_deterministic_by_seed_and_by_prompt(shared_data, tiny_tokenizer_dir, tmp_path):
    def val_prompts(seed, cache):
        dm = pku_module(shared_data, tiny_tokenizer_dir, cache, seed=seed, val_fraction=0.1)
        dm.setup("fit")
        train, val = set(dm.train_dataset["prompt"]), set(dm.val_dataset["prompt"])
        assert not train & val  # no prompt on both sides
        assert len(dm.train_dataset) + len(dm.val_dataset) == 500
        return sorted(val)

    a = val_prompts(0, tmp_path / "a")
    assert len(a) == 49  # round(0.1 × 490 distinct prompts)
    assert val_prompts(0, tmp_path / "b") == a  # fresh build, same seed → same split
    assert val_prompts(1, tmp_path / "c") != a


def test_batches_from_the_datamodule(shared_data, tiny_tokenizer_dir, tmp_path):
    dm = pku_module(shared_data, tiny_tokenizer_dir, tmp_path, batch_size=4)
    dm.setup("fit")
    assert dm.dimension_names == ["helpful", "harmless"] and dm.num_dimensions == 2
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 8 and batch["labels"].shape == (4, 2)
    assert batch["is_safe"].shape == (8,) and set(batch["is_safe"].tolist()) <= {0, 1}
    assert batch["input_ids"].shape[1] <= 48 + 32
    val = next(iter(dm.val_dataloader()))
    assert val["input_ids"].shape[0] == 8


def usable_hh_rows(path: Path, n: int) -> int:
    """Independent count of the first n rows that give a pair: different transcripts, both
    final Assistant turns non-empty."""
    with gzip.open(path, "rt") as fh:
        rows = [json.loads(line) for _, line in zip(range(n), fh, strict=False)]

    def final(t: str) -> str:
        return t.rpartition("\n\nAssistant:")[2].strip()

    return sum(
        r["chosen"] != r["rejected"] and bool(final(r["chosen"])) and bool(final(r["rejected"]))
        for r in rows
    )


def group_of_rows(dm) -> np.ndarray:
    return np.asarray(dm.train_dataset["group"])


def test_mixing_policies(shared_data, tiny_tokenizer_dir, tmp_path):
    prop = hh_module(shared_data, tiny_tokenizer_dir, tmp_path, val_fraction=0.0)
    prop.setup("fit")
    n_help = usable_hh_rows(shared_data / "hh-rlhf-helpful-base-test/test.jsonl.gz", 300)
    n_harm = usable_hh_rows(shared_data / "hh-rlhf-harmless-test/test.jsonl.gz", 100)
    sizes = Counter(group_of_rows(prop).tolist())
    assert sizes == {0: n_help, 1: n_harm}
    report = prop.report["sources"]
    assert (
        sum(report["helpful"]["skipped"].values()) + sum(report["helpful"]["dropped"].values())
        == 300 - n_help
    )
    labels = np.asarray(prop.train_dataset["labels"])
    assert (labels[group_of_rows(prop) == 0] == [1, 0]).all()
    assert (labels[group_of_rows(prop) == 1] == [0, 1]).all()

    inter = hh_module(shared_data, tiny_tokenizer_dir, tmp_path, val_fraction=0.0,
                      mixing="interleaved")  # fmt: skip
    inter.setup("fit")
    groups = group_of_rows(inter)
    assert Counter(groups.tolist()) == {0: n_help, 1: n_help}  # harmless repeated: equal share
    assert groups[:6].tolist() == [0, 1, 0, 1, 0, 1]  # taking turns

    weighted = hh_module(shared_data, tiny_tokenizer_dir, tmp_path, val_fraction=0.0,
                         mixing="interleaved", mixing_weights=[1.0, 3.0])  # fmt: skip
    weighted.setup("fit")
    share = Counter(group_of_rows(weighted).tolist())
    assert share[1] > 2 * share[0]

    per = hh_module(shared_data, tiny_tokenizer_dir, tmp_path, val_fraction=0.0,
                    mixing="per_dimension", batch_size=16)  # fmt: skip
    per.setup("fit")
    loader = per.train_dataloader()
    assert isinstance(loader.batch_sampler, PerDimensionBatchSampler)
    seen = []
    for batch in loader:
        labelled = (batch["labels"] != 0).any(0)
        assert labelled.sum() == 1  # every batch serves one dimension
        seen.append(int(labelled.nonzero()))
    expected = {0: math.ceil(n_help / 16), 1: math.ceil(n_harm / 16)}
    assert Counter(seen) == expected
    assert len(loader) == sum(expected.values())


def _indices(loader) -> list[list[int]]:
    return [list(b) for b in loader.batch_sampler]


def test_per_dimension_sampler_under_lightning_ddp_injection():
    groups = [0] * 37 + [1] * 11 + [2] * 20
    dataset = list(range(len(groups)))
    per_rank = []
    for rank in range(2):
        with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
            sampler = PerDimensionBatchSampler(None, 4, False, groups=groups, seed=3)
            loader = DataLoader(dataset, batch_sampler=sampler)
        injected = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True)
        loader = _update_dataloader(loader, injected, mode=RunningStage.TRAINING)
        assert loader.batch_sampler.num_replicas == 2 and loader.batch_sampler.rank == rank
        loader.batch_sampler.sampler.set_epoch(1)  # what Lightning does each epoch
        per_rank.append(loader.batch_sampler.batches())
    # same number of batches and the same group at every step on both ranks
    assert len(per_rank[0]) == len(per_rank[1]) == 5 + 2 + 3
    assert [g for g, _ in per_rank[0]] == [g for g, _ in per_rank[1]]
    for g_batches in per_rank:
        for g, idx in g_batches:
            assert {groups[i] for i in idx} == {g}
    rows = [set(i for _, idx in r for i in idx) for r in per_rank]
    assert rows[0] | rows[1] == set(dataset)  # every row served (odd groups padded by one)
    assert len(rows[0] & rows[1]) <= 2
    # epochs reshuffle
    s = PerDimensionBatchSampler(None, 4, False, groups=groups, seed=3, num_replicas=2, rank=0)
    s.set_epoch(1)
    assert s.batches() == per_rank[0]
    s.set_epoch(2)
    assert s.batches() != per_rank[0]


def test_default_loader_is_sharded_by_lightnings_distributed_sampler(
    shared_data, tiny_tokenizer_dir, tmp_path
):
    dm = pku_module(shared_data, tiny_tokenizer_dir, tmp_path, batch_size=8, val_fraction=0.0)
    dm.setup("fit")
    shards = []
    for rank in range(2):
        with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
            loader = dm.train_dataloader()
        sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=True)
        loader = _update_dataloader(loader, sampler, mode=RunningStage.TRAINING)
        assert isinstance(loader.sampler, DistributedSampler)
        shards.append(list(loader.sampler))
        assert next(iter(loader))["input_ids"].shape[0] == 16
    assert set(shards[0]).isdisjoint(shards[1]) and len(shards[0]) + len(shards[1]) == 500


class _Consumer(pl.LightningModule):
    """Reads batches and counts them (no model: the data path is what is under test)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.shapes: list[tuple[int, ...]] = []

    def training_step(self, batch, batch_idx):
        self.shapes.append(tuple(batch["input_ids"].shape))
        assert batch["input_ids"].shape[0] == 2 * batch["labels"].shape[0]
        return (self.w * batch["response_mask"].float().mean()).sum()

    def validation_step(self, batch, batch_idx):
        assert batch["response_mask"].any()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("mixing", ["proportional", "per_dimension"])
def test_trainer_fit_runs_the_datamodule_hooks(shared_data, tiny_tokenizer_dir, tmp_path, mixing):
    dm = hh_module(shared_data, tiny_tokenizer_dir, tmp_path, batch_size=4, mixing=mixing)
    model = _Consumer()
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=3, limit_val_batches=2, accelerator="cpu", devices=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert len(model.shapes) == 3 and all(s[0] == 8 for s in model.shapes)


def test_datamodule_is_built_from_yaml_like_lightning_cli(
    shared_data, tiny_tokenizer_dir, tmp_path
):
    from jsonargparse import ArgumentParser

    config = f"""
data:
  tokenizer: {tiny_tokenizer_dir}
  sources:
    - name: helpful
      schema: hh_rlhf
      path:
        - {shared_data}/hh-rlhf-helpful-base-test/test.jsonl.gz
        - {shared_data}/hh-rlhf-helpful-online-test/test.jsonl.gz
      max_rows: 40
    - {{name: harmless, schema: hh_rlhf, max_rows: 40,
        path: {shared_data}/hh-rlhf-harmless-test/test.jsonl.gz}}
  dimensions:
    - {{name: helpful, source: helpful, field: chosen}}
    - {{name: harmless, source: harmless, field: chosen, direction: higher}}
  tokenization: {{max_prompt_length: 64, prompt_template: "{{prompt}}"}}
  mixing: per_dimension
  on_bad_row: skip
  cache_dir: {tmp_path}
"""
    parser = ArgumentParser()
    parser.add_class_arguments(PreferenceDataModule, "data")
    cfg = parser.parse_string(config)
    dm = parser.instantiate(cfg).data
    assert isinstance(dm, PreferenceDataModule)
    assert isinstance(dm.sources[0], SourceSpec) and isinstance(dm.dimensions[1], DimensionSpec)
    assert dm.sources[0].path[1].endswith("helpful-online-test/test.jsonl.gz")
    assert isinstance(dm.tokenization, TokenizationSpec)
    assert dm.tokenization.prompt_template == "{prompt}" and dm.tokenization.max_prompt_length == 64
    assert dm.dimension_names == ["helpful", "harmless"] and dm.mixing == "per_dimension"
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["labels"].shape[1] == 2 and (batch["labels"] != 0).any(0).sum() == 1


def test_twelve_dimensions_from_one_generic_source(tiny_tokenizer_dir, tmp_path):
    rng = np.random.default_rng(0)
    names = [f"d{k}" for k in range(12)]
    rows = []
    for i in range(40):
        labels = rng.choice([1, -1, 0, None], size=12).tolist()
        rows.append({"prompt": f"p{i}", "response_a": "a", "response_b": "b",
                     **dict(zip(names, labels, strict=True))})  # fmt: skip
    for k, name in enumerate(names):  # every dimension labels at least one pair
        rows[k][name] = 1
    path = tmp_path / "g.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = PreferenceDataModule(
        tokenizer=str(tiny_tokenizer_dir),
        sources=[SourceSpec(name="g", schema="generic", path=str(path))],
        dimensions=[DimensionSpec(name=n, source="g", field=n) for n in names],
        val_fraction=0.0, batch_size=40, cache_dir=str(tmp_path),
    )  # fmt: skip
    dm.setup("fit")
    assert dm.num_dimensions == 12
    kept = [r for r in rows if any(r[n] for n in names)]
    batch = next(iter(dm.train_dataloader()))
    assert batch["labels"].shape == (len(kept), 12) and batch["input_ids"].shape[0] == 2 * len(kept)
    for k, name in enumerate(names):
        expected = {"a": sum(r[name] == 1 for r in kept), "b": sum(r[name] == -1 for r in kept)}
        assert dm.report["sources"]["g"]["labelled"][name] == expected
        assert int((batch["labels"][:, k] == 1).sum()) == expected["a"]


def test_sft_datamodule_from_pairs_and_from_sft_rows(shared_data, tiny_tokenizer_dir, tmp_path):
    sft = SFTDataModule(
        tokenizer=str(tiny_tokenizer_dir),
        sources=[SourceSpec(name="pku", schema="pku_saferlhf",
                            path=str(shared_data / "pku-saferlhf-align-anything-32/train.json"))],
        dimensions=[
            DimensionSpec(name="helpful", source="pku", field="better_response_id"),
            DimensionSpec(name="harmless", source="pku", field="safer_response_id"),
        ],
        tokenization=TokenizationSpec(max_prompt_length=None, max_response_length=None),
        batch_size=64, val_fraction=0.0, cache_dir=str(tmp_path), mixing="per_dimension",
    )  # fmt: skip
    sft.setup("fit")
    assert len(sft.train_dataset) == 64
    tok = sft.tokenizer
    for batch in sft.train_dataloader():
        assert batch["dimension"].unique().numel() == 1  # per-dimension batches
        for i in range(batch["input_ids"].shape[0]):
            text = tok.decode(batch["input_ids"][i][batch["response_mask"][i]])
            assert text.endswith("</s>") and not batch["response_mask"][i, 0]

    rows = [
        {"prompt": "p1", "good": "yes", "safe": None},
        {"prompt": "p2", "good": "a", "safe": "b"},
    ]
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = SFTDataModule(
        tokenizer=str(tiny_tokenizer_dir),
        sources=[SourceSpec(name="s", schema="sft", path=str(path))],
        dimensions=[DimensionSpec("good", "s", "good"), DimensionSpec("safe", "s", "safe")],
        val_fraction=0.0, batch_size=8, cache_dir=str(tmp_path),
    )  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert sorted(batch["dimension"].tolist()) == [0, 0, 1]
    targets = sorted(
        dm.tokenizer.decode(batch["input_ids"][i][batch["response_mask"][i]]) for i in range(3)
    )
    assert targets == [" a</s>", " b</s>", " yes</s>"]


def test_prompt_datamodule(shared_data, tiny_tokenizer_dir, tmp_path):
    dm = PromptDataModule(
        tokenizer=str(tiny_tokenizer_dir),
        sources=[SourceSpec(name="hs", schema="helpsteer",
                            path=str(shared_data / "helpsteer-sample-500/nvidia_HelpSteer_sample.jsonl"))],
        dimension_names=["helpful", "concise"],
        tokenization=TokenizationSpec(max_prompt_length=16),
        batch_size=5, cache_dir=str(tmp_path),
    )  # fmt: skip
    dm.setup("fit")
    assert dm.dimension_names == ["helpful", "concise"] and dm.num_dimensions == 2
    assert len(dm.train_dataset) == 139
    assert dm.report["truncated"]["hs"]["prompt"] > 0
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["prompt_text"]) == 5 and batch["input_ids"].shape == (5, 16)
    assert batch["attention_mask"][:, -1].all()  # left-padded: every prompt ends at the right
    assert dm.val_dataloader() == []


def test_setup_without_prepare_builds_in_a_single_process(
    shared_data, tiny_tokenizer_dir, tmp_path
):
    dm = pku_module(shared_data, tiny_tokenizer_dir, tmp_path)
    dm.setup("fit")  # no prepare_data call: builds itself (single process)
    assert dm.cache_hit is False and Path(dm.cache_path()).is_dir()
