"""Tokenisation and collation: templates, BOS/EOS, truncation, masks, padding, one pass per pair."""

from __future__ import annotations

import json
import logging

import datasets
import pytest
import torch
from transformers import AutoTokenizer

from panacea_pl.data import (
    DimensionSpec,
    PreferenceCollator,
    PromptCollator,
    SFTCollator,
    SourceSpec,
    TextEncoder,
    TokenizationSpec,
    bind_dimensions,
    pair_records,
)
from panacea_pl.data.errors import ConfigError
from panacea_pl.data.tokenize import log_truncation, tokenize_pairs, tokenize_prompts

PKU_32 = "pku-saferlhf-align-anything-32/train.json"
NO_LIMIT = TokenizationSpec(max_prompt_length=None, max_response_length=None)


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir):
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def pku_pairs(shared_data, tmp_path_factory):
    """The 32 classic PKU pairs, labelled helpful and harmless (m = 2)."""
    spec = SourceSpec(name="pku", schema="pku_saferlhf", path=str(shared_data / PKU_32))
    dims = [
        DimensionSpec(name="helpful", source="pku", field="better_response_id"),
        DimensionSpec(name="harmless", source="pku", field="safer_response_id"),
    ]
    cache = str(tmp_path_factory.mktemp("hf"))
    return pair_records(spec, bind_dimensions([spec], dims)["pku"], 2, cache_dir=cache)[0]


def test_preference_batch_layout_and_masks_decode_to_the_texts(tok, pku_pairs):
    table, cut = tokenize_pairs(pku_pairs, TextEncoder(tok, NO_LIMIT))
    assert cut == {"prompt": 0, "response_a": 0, "response_b": 0}
    rows = [table[i] for i in range(5)]
    batch = PreferenceCollator(pad_token_id=tok.pad_token_id)(rows)
    B = len(rows)
    T = batch["input_ids"].shape[1]
    assert batch["input_ids"].dtype == torch.long and batch["input_ids"].shape == (2 * B, T)
    assert batch["attention_mask"].dtype == torch.long and batch["attention_mask"].shape == (
        2 * B,
        T,
    )
    assert batch["response_mask"].dtype == torch.bool and batch["response_mask"].shape == (2 * B, T)
    assert batch["labels"].shape == (B, 2) and batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == [r["labels"] for r in rows]
    assert batch["is_safe"].tolist() == [r["is_safe_a"] for r in rows] + [
        r["is_safe_b"] for r in rows
    ]
    assert not batch["response_mask"][:, 0].any()
    assert (batch["response_mask"] <= batch["attention_mask"].bool()).all()
    for i in range(2 * B):
        row = rows[i % B]
        response = row["response_a"] if i < B else row["response_b"]
        ids = batch["input_ids"][i]
        length = int(batch["attention_mask"][i].sum())
        assert batch["attention_mask"][i, :length].all()  # right-padded
        assert (ids[length:] == tok.pad_token_id).all()
        assert tok.decode(ids[batch["response_mask"][i]]) == f" {response}</s>"
        prompt_part = ids[:length][~batch["response_mask"][i, :length]]
        assert tok.decode(prompt_part) == f"<s>\n\nHuman: {row['prompt']}\n\nAssistant:"


def test_each_pair_is_forwarded_once_whatever_the_number_of_dimensions(tok, pku_pairs):
    table, _ = tokenize_pairs(pku_pairs, TextEncoder(tok, NO_LIMIT))
    rows = [table[i] for i in range(8)]
    two = PreferenceCollator(tok.pad_token_id)(rows)
    one = PreferenceCollator(tok.pad_token_id)([{**r, "labels": r["labels"][:1]} for r in rows])
    assert two["input_ids"].shape[0] == one["input_ids"].shape[0] == 2 * len(rows)
    assert torch.equal(two["input_ids"], one["input_ids"])
    assert two["labels"].shape == (8, 2) and one["labels"].shape == (8, 1)
    # one table row per pair although both dimensions label each pair
    assert len(table) == 32


def test_truncation_prompt_left_response_right_and_logged(tok, pku_pairs, caplog):
    spec = TokenizationSpec(max_prompt_length=6, max_response_length=5)
    table, cut = tokenize_pairs(pku_pairs, TextEncoder(tok, spec))
    full, _ = tokenize_pairs(pku_pairs, TextEncoder(tok, NO_LIMIT))
    assert cut == {
        "prompt": sum(len(p) > 6 for p in full["prompt_ids"]),
        "response_a": sum(len(r) > 5 for r in full["response_a_ids"]),
        "response_b": sum(len(r) > 5 for r in full["response_b_ids"]),
    }
    assert cut["prompt"] > 0 and cut["response_a"] > 0
    for short, long in zip(table["prompt_ids"], full["prompt_ids"], strict=True):
        assert short[0] == tok.bos_token_id and len(short) <= 6
        assert short[1:] == long[len(long) - len(short) + 1 :]  # the prompt's last tokens
        assert short[-1] == long[-1]
    for short, long in zip(table["response_a_ids"], full["response_a_ids"], strict=True):
        assert short == long[:5]  # the response's first tokens; a cut response has no EOS
    with caplog.at_level(logging.INFO, logger="panacea_pl.data"):
        log_truncation("pku", len(table), cut, spec)
    assert f"truncated prompt in {cut['prompt']} of 32 rows" in caplog.text


def test_identity_template_for_raw_continuations(tok):
    spec = TokenizationSpec(prompt_template="{prompt}", response_template="{response}")
    encoder = TextEncoder(tok, spec)
    prompts, _ = encoder.prompts(["Once upon a time"])
    responses, _ = encoder.responses(["Once upon a time"], [" there was a dog."])
    assert tok.decode(prompts[0] + responses[0]) == "<s>Once upon a time there was a dog.</s>"
    assert prompts[0][0] == tok.bos_token_id and responses[0][-1] == tok.eos_token_id
    no_special = TextEncoder(tok, TokenizationSpec(prompt_template="{prompt}", add_bos=False,
                                                   add_eos=False, response_template="{response}"))  # fmt: skip
    p, _ = no_special.prompts(["Once"])
    r, _ = no_special.responses(["Once"], [" upon"])
    assert tok.decode(p[0] + r[0]) == "Once upon"
    with pytest.raises(ConfigError, match="must contain '{prompt}'"):
        TokenizationSpec(prompt_template="Q:")


def test_chat_template_is_used_when_the_tokenizer_has_one(tiny_tokenizer_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tok.chat_template = (
        "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}"
        "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
    )
    tok.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    encoder = TextEncoder(tok, TokenizationSpec())
    assert encoder.use_chat
    prompts, _ = encoder.prompts(["Hi there"])
    responses, _ = encoder.responses(["Hi there"], ["Hello Lily"])
    assert tok.decode(prompts[0]) == "<s>user: Hi there</s>assistant:"  # one BOS, from the template
    assert tok.decode(responses[0]) == " Hello Lily</s>"  # the template's EOS, not a second one
    plain = TextEncoder(tok, TokenizationSpec(use_chat_template=False))
    assert not plain.use_chat
    bare = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    with pytest.raises(ConfigError, match="has no chat template"):
        TextEncoder(bare, TokenizationSpec(use_chat_template=True))


def test_prompt_batch_is_left_padded_with_text(tok):
    table = datasets.Dataset.from_list(
        [{"prompt": "Hi", "source": "s"}, {"prompt": "How do I bake bread today?", "source": "s"}]
    )
    table, _ = tokenize_prompts(table, TextEncoder(tok, TokenizationSpec()))
    batch = PromptCollator(tok.pad_token_id)([table[0], table[1]])
    assert batch["prompt_text"] == ["Hi", "How do I bake bread today?"]
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.dtype == torch.long and ids.shape == mask.shape and ids.shape[0] == 2
    short = len(table[0]["prompt_ids"])
    assert ids.shape[1] == len(table[1]["prompt_ids"]) > short
    assert mask[0].tolist() == [0] * (ids.shape[1] - short) + [1] * short
    assert ids[0, -short:].tolist() == table[0]["prompt_ids"]
    assert (ids[0, : ids.shape[1] - short] == tok.pad_token_id).all()
    assert mask[1].all() and ids[:, -1].ne(tok.pad_token_id).all()  # all prompts end at T-1


def test_sft_batch(tok):
    rows = [
        {"prompt_ids": [1, 5, 6], "target_ids": [7, 2], "dimension": 1},
        {"prompt_ids": [1, 5], "target_ids": [8, 9, 10, 2], "dimension": 0},
    ]
    batch = SFTCollator(pad_token_id=0, pad_to_multiple_of=8)(rows)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7, 2, 0, 0, 0], [1, 5, 8, 9, 10, 2, 0, 0]]
    assert batch["response_mask"].tolist() == [
        [False, False, False, True, True, False, False, False],
        [False, False, True, True, True, True, False, False],
    ]
    assert batch["attention_mask"].sum(1).tolist() == [5, 6]
    assert batch["dimension"].tolist() == [1, 0]


def test_no_pad_token_falls_back_to_eos(tiny_tokenizer_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tok.pad_token = None
    encoder = TextEncoder(tok, TokenizationSpec())
    assert encoder.pad_id == tok.eos_token_id
    json.dumps(encoder.spec.__dict__)  # plain values
