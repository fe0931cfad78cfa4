"""llama2.c → Hugging Face converter: the documented greedy sample, tokenizer parity, bad inputs."""

from __future__ import annotations

import json
import struct

import pytest
import sentencepiece
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from panacea_pl.benchmarks.stories.sampling import torch_threads
from panacea_pl.convert.llama2c import Llama2cFormatError, convert_llama2c, main

# From ../shared/data/README.md §6 (llama2.c doc/stories260K.md, `./run stories260K.bin -z tok512.bin -t 0.0`).
GREEDY_FIRST_IDS = [403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338]
GREEDY_TEXT = """Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.
Lily's mom said, "Lily, let's go to the park." Lily was sad and didn't know what to do. She said, "I want to play with your ball, but I can't find it."
Lily was sad and didn't know what to do. She said, "I'm sorry, Lily. I didn't know what to do."
Lily didn't want to help her mom, so she said, "I'm sorry, mom. I didn't know what to do." Her mom said, "Don't worry, Lily. We can help you."""

SENTENCES = [
    "Once upon a time, there was a little girl named Lily.",
    'She said, "I\'m sorry, mom." Then they hugged.',
    "Tom had 3 red balls and 12 blue cars!",
    "Line one\nline two\ttab",
    "Café naïve ☃ 日本",
    "a",
]


@pytest.fixture(scope="module")
def stories_files(shared_data):
    folder = shared_data / "tinyllamas-stories260k"
    return folder / "stories260K.bin", folder / "tok512.bin", folder / "tok512.model"


@pytest.fixture(scope="module")
def converted(stories_files, tmp_path_factory):
    checkpoint, tok_bin, _ = stories_files
    return convert_llama2c(checkpoint, tok_bin, tmp_path_factory.mktemp("stories260k"))


def test_greedy_sample_matches_llama2c(converted):
    model = AutoModelForCausalLM.from_pretrained(converted).eval()
    tokenizer = AutoTokenizer.from_pretrained(converted)
    bos = torch.tensor([[tokenizer.bos_token_id]])
    with torch.inference_mode(), torch_threads(1):
        first_logits = model(bos).logits[0, -1]
        out = model.generate(bos, max_new_tokens=256, do_sample=False, eos_token_id=None)
    ids = out[0, 1:].tolist()
    assert len(ids) == 256
    assert ids[:16] == GREEDY_FIRST_IDS
    assert first_logits.argmax().item() == 403
    assert first_logits.max().item() == pytest.approx(17.02, abs=0.01)
    assert tokenizer.decode(ids, skip_special_tokens=True) == GREEDY_TEXT


def test_config_and_files(converted):
    config = json.loads((converted / "config.json").read_text())
    assert config["num_key_value_heads"] == 4 and config["num_attention_heads"] == 8
    assert config["hidden_size"] == 64 and config["intermediate_size"] == 172
    assert config["tie_word_embeddings"] is True
    assert (converted / "model.safetensors").is_file() and (converted / "tokenizer.json").is_file()
    generation = json.loads((converted / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [1, 2]


def test_tokenizer_encodes_like_sentencepiece_and_round_trips(converted, stories_files):
    tokenizer = AutoTokenizer.from_pretrained(converted)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(stories_files[2]))
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 0)
    assert len(tokenizer) == 512
    for text in SENTENCES:
        ids = tokenizer(text).input_ids
        assert ids == [1, *sp.encode(text)], text
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_from_model_file_equals_from_bin(converted, stories_files, tmp_path):
    checkpoint, _, tok_model = stories_files
    other = convert_llama2c(checkpoint, tok_model, tmp_path / "from_model")
    a = json.loads((converted / "tokenizer.json").read_text())["model"]
    b = json.loads((other / "tokenizer.json").read_text())["model"]
    assert a["vocab"] == b["vocab"] and a["merges"] == b["merges"]


def test_truncated_checkpoint_is_rejected(stories_files, tmp_path):
    checkpoint, tok_bin, _ = stories_files
    bad = tmp_path / "truncated.bin"
    bad.write_bytes(checkpoint.read_bytes()[:-4])
    with pytest.raises(Llama2cFormatError, match="1,056,536 bytes but its header"):
        convert_llama2c(bad, tok_bin, tmp_path / "out")


def test_bad_header_is_rejected(stories_files, tmp_path):
    _, tok_bin, _ = stories_files
    bad = tmp_path / "bad.bin"
    bad.write_bytes(struct.pack("<7i", 64, 172, 5, 6, 4, 512, 512) + bytes(64))
    with pytest.raises(Llama2cFormatError, match="n_heads % n_kv_heads"):
        convert_llama2c(bad, tok_bin, tmp_path / "out")


def test_tokenizer_of_other_size_is_rejected(stories_files, tmp_path):
    checkpoint, tok_bin, _ = stories_files
    short = tmp_path / "tok.bin"
    data = tok_bin.read_bytes()
    short.write_bytes(data[: len(data) - 20])
    with pytest.raises(Llama2cFormatError):
        convert_llama2c(checkpoint, short, tmp_path / "out")


def test_cli(stories_files, tmp_path, capsys):
    checkpoint, tok_bin, _ = stories_files
    assert main([str(checkpoint), str(tok_bin), str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "config.json").is_file() and "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing.bin"), str(tok_bin), str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "does not exist" in capsys.readouterr().err


def test_untied_classifier(tmp_path):
    """A negative vocab_size in the header means a separate classifier after the RoPE tables."""
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = 8, 12, 1, 2, 1, 16, 4
    kv_dim, head = dim * kv_heads // heads, dim // heads
    sizes = [vocab * dim, dim, dim * dim, kv_dim * dim, kv_dim * dim, dim * dim, dim]
    sizes += [hidden * dim, dim * hidden, hidden * dim, dim, seq_len * head, vocab * dim]
    rng = torch.Generator().manual_seed(0)
    floats = torch.randn(sum(sizes), generator=rng)
    header = struct.pack("<7i", dim, hidden, layers, heads, kv_heads, -vocab, seq_len)
    (tmp_path / "tiny.bin").write_bytes(header + floats.numpy().astype("<f4").tobytes())
    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [bytes([c]) for c in b"abcdefghijklm"]
    body = b"".join(struct.pack("<fi", -i, len(p)) + p for i, p in enumerate(pieces))
    (tmp_path / "tok.bin").write_bytes(struct.pack("<i", 6) + body)

    out = convert_llama2c(tmp_path / "tiny.bin", tmp_path / "tok.bin", tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(out)
    wcls = floats[-vocab * dim :].view(vocab, dim)
    torch.testing.assert_close(model.lm_head.weight.detach(), wcls)
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    assert model.config.num_key_value_heads == 1 and model.config.tie_word_embeddings is False
    assert AutoTokenizer.from_pretrained(out).convert_ids_to_tokens([1, 2, 3]) == [
        "<s>",
        "</s>",
        "a",
    ]


def test_conversion_leaves_the_global_rng_alone(stories_files, tmp_path):
    """A run that converts the model on first use must initialise its adapter like every later
    run, which loads the converted folder."""
    checkpoint, tok_bin, _ = stories_files
    torch.manual_seed(0)
    before = torch.get_rng_state()
    convert_llama2c(checkpoint, tok_bin, tmp_path / "out")
    assert torch.equal(torch.get_rng_state(), before)
