"""Tokenised lengths are checked against the model's positions when the data is set up."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from panacea_pl.data import DataError, DimensionSpec, PreferenceDataModule, SourceSpec
from panacea_pl.data import TokenizationSpec as Tok
from panacea_pl.data.context import model_max_positions

PKU_500 = "pku-saferlhf-sample-500/PKU-Alignment_PKU-SafeRLHF_sample.jsonl"


@pytest.fixture(scope="module")
def gpt2_32(tmp_path_factory, tiny_tokenizer_dir):
    """A GPT-2 with 32 positions (learned position embeddings: longer input is an IndexError)."""
    path = tmp_path_factory.mktemp("gpt2_32")
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    config = GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2, n_positions=32)
    GPT2LMHeadModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def module(shared_data, model_dir, cache, tokenization):
    return PreferenceDataModule(
        tokenizer=str(model_dir),
        sources=[SourceSpec(name="pku", schema="pku_saferlhf", path=str(shared_data / PKU_500))],
        dimensions=[DimensionSpec(name="helpful", source="pku", field="better_response_id")],
        tokenization=tokenization,
        cache_dir=str(cache),
    )


def test_max_positions_from_the_model_config(gpt2_32, tiny_tokenizer_dir):
    positions, origin = model_max_positions(str(gpt2_32))
    assert positions == 32 and "max_position_embeddings = 32" in origin and "config.json" in origin
    assert model_max_positions(str(tiny_tokenizer_dir)) is None  # tokenizer only: no config


@pytest.mark.slow
def test_too_long_for_the_model_is_refused_at_setup(shared_data, gpt2_32, tmp_path):
    dm = module(shared_data, gpt2_32, tmp_path, Tok(max_prompt_length=64, max_response_length=64))
    with pytest.raises(
        DataError,
        match=r"source 'pku', (train|validation) row \d+ \(prompt .*\): prompt \d+ \+ response \d+ "
        r"= \d+ tokens, beyond the model's 32 positions \(max_position_embeddings = 32 in .*config.json\).*"
        r"max_prompt_length` \+ `max_response_length` to at most 32 \(now 64 \+ 64\)",
    ):
        dm.setup("fit")
    fits = module(shared_data, gpt2_32, tmp_path, Tok(max_prompt_length=16, max_response_length=16))
    fits.setup("fit")
    assert len(fits.train_dataset) > 0
