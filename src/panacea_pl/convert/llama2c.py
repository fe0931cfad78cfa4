"""Convert a llama2.c checkpoint and its SentencePiece tokenizer into a Hugging Face model folder.

    panacea-pl convert-llama2c stories260K.bin tok512.bin out/stories260k
    python -m panacea_pl.convert.llama2c stories260K.bin tok512.model out/stories260k

    from panacea_pl.convert.llama2c import convert_llama2c
    folder = convert_llama2c("stories260K.bin", "tok512.bin", "out/stories260k")
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)

The checkpoint is llama2.c's legacy ("version 0") export: a header of 7 little-endian int32
(`dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len`; a negative vocab_size means
the classifier is not tied to the embedding), then float32 weights in llama2.c's order. llama2.c
rotates interleaved pairs (i, i+1) of each head with RoPE, Hugging Face Llama rotates the two halves
of the head, so the rows of `wq` and `wk` are permuted per head. Norm eps 1e-5 and RoPE theta 10000
are llama2.c's fixed values.

The tokenizer is either llama2.c's `tok*.bin` export (pieces and scores) or the SentencePiece
`.model` it came from; both give the same BPE vocabulary, merges ranked by piece score, byte
fallback and a `▁` prefix on the first word, saved as a fast `LlamaTokenizer` (`tokenizer.json`).
It encodes like SentencePiece on text without runs of spaces or leading/trailing spaces (which
SentencePiece's `remove_extra_whitespaces` normaliser collapses and the fast tokenizer, like
llama2.c's own encoder, keeps).
Special tokens: `<unk>` 0, `<s>` 1 (BOS, added in front of every encoding), `</s>` 2. The original
has no pad token; padding uses `<unk>`, which byte fallback never produces, so a pad is never
confused with a real token (and, unlike pad = EOS, masking pads never masks an end of text).

llama2.c models separate training stories with BOS and never see `</s>`, so `run.c` stops when the
model emits BOS. The saved generation config does the same: `eos_token_id = [1, 2]`.
"""

from __future__ import annotations

import argparse
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, LlamaTokenizer

HEADER = struct.Struct("<7i")
NORM_EPS = 1e-5
ROPE_THETA = 10000.0
UNK, BOS, EOS = "<unk>", "<s>", "</s>"


class Llama2cFormatError(ValueError):
    """A file that is not a llama2.c checkpoint or tokenizer of the expected shape."""


@dataclass(frozen=True)
class Llama2cHeader:
    """The 7-int header of a legacy llama2.c checkpoint."""

    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.head_size * self.n_kv_heads

    def tensor_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """The float32 arrays after the header, in file order."""
        L, d, h, kv = self.n_layers, self.dim, self.hidden_dim, self.kv_dim
        shapes = [
            ("token_embedding", (self.vocab_size, d)),
            ("rms_att", (L, d)),
            ("wq", (L, d, d)),
            ("wk", (L, kv, d)),
            ("wv", (L, kv, d)),
            ("wo", (L, d, d)),
            ("rms_ffn", (L, d)),
            ("w1", (L, h, d)),
            ("w2", (L, d, h)),
            ("w3", (L, h, d)),
            ("rms_final", (d,)),
            ("freq_cis", (2, self.seq_len, self.head_size // 2)),
        ]
        if not self.shared_classifier:
            shapes.append(("wcls", (self.vocab_size, d)))
        return shapes

    def expected_bytes(self) -> int:
        return HEADER.size + 4 * sum(int(np.prod(shape)) for _, shape in self.tensor_shapes())


def read_header(data: bytes, source: str = "checkpoint") -> Llama2cHeader:
    """Parse and validate the header of a legacy llama2.c checkpoint.

    Raises:
        Llama2cFormatError: the header is truncated or inconsistent.
    """
    if len(data) < HEADER.size:
        raise Llama2cFormatError(f"{source}: {len(data)} bytes is too short for a llama2.c header")
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = HEADER.unpack_from(data)
    header = Llama2cHeader(dim, hidden, layers, heads, kv_heads, abs(vocab), seq_len, vocab > 0)
    problems = []
    if min(dim, hidden, layers, heads, kv_heads, seq_len) <= 0 or vocab == 0:
        problems.append("every field must be positive (vocab_size may be negative: untied head)")
    elif dim % heads or heads % kv_heads or (dim // heads) % 2:
        problems.append("need dim % n_heads == 0, n_heads % n_kv_heads == 0 and an even head size")
    if problems:
        raise Llama2cFormatError(
            f"{source} is not a legacy llama2.c checkpoint: header (dim, hidden_dim, n_layers, "
            f"n_heads, n_kv_heads, vocab_size, seq_len) = "
            f"{(dim, hidden, layers, heads, kv_heads, vocab, seq_len)}; {problems[0]}. "
            "Only the legacy (version 0) export of llama2.c is supported."
        )
    return header


def read_checkpoint(path: str | Path) -> tuple[Llama2cHeader, dict[str, np.ndarray]]:
    """Read a legacy llama2.c checkpoint into its header and named float32 arrays.

    Raises:
        Llama2cFormatError: bad header, or a file size that does not match the header.
    """
    path = Path(path)
    data = path.read_bytes()
    header = read_header(data, str(path))
    if len(data) != header.expected_bytes():
        raise Llama2cFormatError(
            f"{path} has {len(data):,} bytes but its header {header} implies "
            f"{header.expected_bytes():,}; the file is truncated or not a legacy llama2.c export"
        )
    arrays, offset = {}, HEADER.size
    for name, shape in header.tensor_shapes():
        count = int(np.prod(shape))
        arrays[name] = np.frombuffer(data, dtype="<f4", count=count, offset=offset).reshape(shape)
        offset += 4 * count
    return header, arrays


def read_tokenizer_pieces(path: str | Path, vocab_size: int) -> list[tuple[str, float]]:
    """The (piece, score) list of a llama2.c `tok*.bin` export or a SentencePiece `.model`.

    Pieces use SentencePiece's `▁` for spaces; ids 0, 1, 2 are `<unk>`, `<s>`, `</s>`.

    Raises:
        Llama2cFormatError: a malformed file or a vocabulary size other than `vocab_size`.
    """
    path = Path(path)
    if path.suffix == ".model":
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        pieces = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    else:
        pieces = _read_llama2c_tokenizer(path)
    if len(pieces) != vocab_size:
        raise Llama2cFormatError(
            f"{path} has {len(pieces)} pieces but the checkpoint's vocab_size is {vocab_size}"
        )
    if [p for p, _ in pieces[:3]] != [UNK, BOS, EOS]:
        raise Llama2cFormatError(f"{path}: ids 0, 1, 2 must be {UNK}, {BOS}, {EOS}")
    return pieces


def _read_llama2c_tokenizer(path: Path) -> list[tuple[str, float]]:
    data = path.read_bytes()
    pieces, offset = [], 4  # int32 max_token_length, then (float32 score, int32 length, bytes)*
    while offset < len(data):
        if offset + 8 > len(data):
            raise Llama2cFormatError(f"{path}: truncated entry at byte {offset}")
        score, length = struct.unpack_from("<fi", data, offset)
        raw = data[offset + 8 : offset + 8 + length]
        if length < 0 or len(raw) != length:
            raise Llama2cFormatError(f"{path}: bad piece length {length} at byte {offset}")
        text = raw.decode("utf-8")
        text = text.strip("\n") if text in ("\n<s>\n", "\n</s>\n") else text
        pieces.append((text.replace(" ", "▁"), score))
        offset += 8 + length
    return pieces


def build_tokenizer(pieces: Sequence[tuple[str, float]]) -> LlamaTokenizer:
    """A fast Llama tokenizer (BPE, byte fallback, merges ranked by score) from (piece, score)."""
    return LlamaTokenizer(
        vocab={piece: i for i, (piece, _) in enumerate(pieces)},
        merges=bpe_merges(pieces),
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=UNK,
        add_bos_token=True,
        add_eos_token=False,
        add_prefix_space=True,
        legacy=False,
    )


def bpe_merges(pieces: Sequence[tuple[str, float]]) -> list[tuple[str, str]]:
    """SentencePiece BPE as a merge list: every split of a piece into two pieces, best score first.

    SentencePiece merges the adjacent pair whose union has the highest score; ranking each
    (left, right) by the score of left + right reproduces that. Special and byte pieces are atomic.
    """
    ids = {piece: i for i, (piece, _) in enumerate(pieces)}
    ranked = []
    for piece, score in pieces:
        if piece in (UNK, BOS, EOS) or (piece.startswith("<0x") and len(piece) == 6):
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                ranked.append((-score, ids[left], ids[right], left, right))
    return [(left, right) for *_, left, right in sorted(ranked)]


def build_model(header: Llama2cHeader, arrays: dict[str, np.ndarray]) -> LlamaForCausalLM:
    """A `LlamaForCausalLM` holding the checkpoint's weights (RoPE rows permuted to HF order)."""
    config = LlamaConfig(
        vocab_size=header.vocab_size,
        hidden_size=header.dim,
        intermediate_size=header.hidden_dim,
        num_hidden_layers=header.n_layers,
        num_attention_heads=header.n_heads,
        num_key_value_heads=header.n_kv_heads,
        head_dim=header.head_size,
        max_position_embeddings=header.seq_len,
        rms_norm_eps=NORM_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        hidden_act="silu",
        tie_word_embeddings=header.shared_classifier,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    state = {
        "model.embed_tokens.weight": arrays["token_embedding"],
        "model.norm.weight": arrays["rms_final"],
    }
    state["lm_head.weight"] = arrays["token_embedding" if header.shared_classifier else "wcls"]
    for i in range(header.n_layers):
        prefix = f"model.layers.{i}."
        state |= {
            prefix + "input_layernorm.weight": arrays["rms_att"][i],
            prefix + "self_attn.q_proj.weight": _interleaved_to_halves(
                arrays["wq"][i], header.n_heads
            ),
            prefix + "self_attn.k_proj.weight": _interleaved_to_halves(
                arrays["wk"][i], header.n_kv_heads
            ),
            prefix + "self_attn.v_proj.weight": arrays["wv"][i],
            prefix + "self_attn.o_proj.weight": arrays["wo"][i],
            prefix + "post_attention_layernorm.weight": arrays["rms_ffn"][i],
            prefix + "mlp.gate_proj.weight": arrays["w1"][i],
            prefix + "mlp.down_proj.weight": arrays["w2"][i],
            prefix + "mlp.up_proj.weight": arrays["w3"][i],
        }
    model = LlamaForCausalLM(config)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()}, strict=True)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=[1, 2], pad_token_id=0)
    return model.eval()


def _interleaved_to_halves(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder each head's rows from RoPE pairs (0,1),(2,3),… to halves (0..h/2-1 | h/2..h-1)."""
    out, inp = weight.shape
    return weight.reshape(n_heads, out // n_heads // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def convert_llama2c(checkpoint: str | Path, tokenizer: str | Path, output_dir: str | Path) -> Path:
    """Convert a llama2.c checkpoint and tokenizer into a Hugging Face folder (safetensors).

    Args:
        checkpoint: the legacy llama2.c `.bin` checkpoint (e.g. `stories260K.bin`).
        tokenizer: llama2.c's `tok*.bin` export or the SentencePiece `.model` it was made from.
        output_dir: folder to write `config.json`, `model.safetensors`, `tokenizer.json`, ….

    Returns:
        `output_dir`, loadable with `AutoModelForCausalLM` / `AutoTokenizer.from_pretrained`.

    Raises:
        FileNotFoundError: a missing input file.
        Llama2cFormatError: a malformed checkpoint or tokenizer.
    """
    checkpoint, tokenizer, output_dir = Path(checkpoint), Path(tokenizer), Path(output_dir)
    for path in (checkpoint, tokenizer):
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
    header, arrays = read_checkpoint(checkpoint)
    pieces = read_tokenizer_pieces(tokenizer, header.vocab_size)
    # the model's random init (overwritten) must not move the caller's RNG: a run that converts
    # on first use would otherwise initialise its adapter differently from every later run
    with torch.random.fork_rng(devices=[]):
        model = build_model(header, arrays)
    model.save_pretrained(output_dir)
    build_tokenizer(pieces).save_pretrained(output_dir)
    return output_dir


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `convert-llama2c CHECKPOINT TOKENIZER OUTPUT_DIR`; the exit status (0 when
    the folder was written, 2 on a bad input)."""
    parser = argparse.ArgumentParser(
        prog="panacea-pl convert-llama2c",
        description="Convert a llama2.c checkpoint + tokenizer into a Hugging Face Llama folder.",
    )
    parser.add_argument("checkpoint", type=Path, help="legacy llama2.c .bin checkpoint")
    parser.add_argument("tokenizer", type=Path, help="llama2.c tok*.bin or SentencePiece .model")
    parser.add_argument("output_dir", type=Path, help="folder to write the Hugging Face model to")
    args = parser.parse_args(argv)
    try:
        folder = convert_llama2c(args.checkpoint, args.tokenizer, args.output_dir)
    except (FileNotFoundError, Llama2cFormatError) as error:
        parser.exit(2, f"error: {error}\n")
    print(f"wrote {folder} (load it with AutoModelForCausalLM.from_pretrained({str(folder)!r}))")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
