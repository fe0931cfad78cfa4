"""Common random numbers for front sweeps: sampling noise fixed per row, shared across λ.

    keys = row_keys(seed, torch.arange(K))                   # one key per prompt × sample
    sampler = GumbelSampler(tile_rows(keys, G), prompt_width=input_ids.shape[1])  # G λ blocks
    out = model.generate(input_ids, attention_mask, do_sample=False,
                         logits_processor=LogitsProcessorList([sampler]), max_new_tokens=32)

Sampling a token as argmax_v(logit_v / T + g_v) with g_v i.i.d. standard Gumbel is exact
categorical sampling from softmax(logit / T) (the Gumbel-max trick), so greedy decoding of the
noised logits *is* ancestral sampling. The noise g is a pure function of (row key, position,
token id): a counter-based hash of integers, not a stateful generator. Hence

- every λ of a sweep sees the same noise for the same prompt and sample (the key is the row's
  index within a λ block), so a policy that ignores λ yields exactly one point, and two policies
  compared on one key set differ only by what they are;
- a row's sample depends on nothing else in its batch: not the chunking, not the other rows, not
  the number of processes that shard the sweep, not the device (integer arithmetic is exact).

The hash is a 32-bit xor-shift-multiply mixer evaluated in int64 lanes with the products split so
that no intermediate overflows (`_mul32`): portable across CPU and CUDA.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
_M1, _M2 = 0x7FEB352D, 0x846CA68B  # odd multipliers of a well-mixing 32-bit integer hash
_GOLDEN = 0x9E3779B9


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x · c) mod 2³² for 0 ≤ x < 2³², without int64 overflow (16-bit halves)."""
    lo, hi = x & 0xFFFF, x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash of int64 tensor values taken mod 2³² (same on any device)."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, _M1)
    x = x ^ (x >> 15)
    x = _mul32(x, _M2)
    return x ^ (x >> 16)


def row_keys(seed: int, rows: torch.Tensor | list[int]) -> torch.Tensor:
    """[N] int64 noise keys for `rows` (indices within a λ block) under `seed`."""
    rows = torch.as_tensor(rows, dtype=torch.int64)
    return mix32(mix32(torch.full_like(rows, seed & _MASK32) + _GOLDEN) ^ mix32(rows))


def uniform_noise(keys: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    """[N, vocab] float32 uniforms in (0, 1) on a 2⁻²³ lattice: a function of (key, step, token
    id) only."""
    keys = keys.to(torch.int64)
    per_step = mix32(keys ^ mix32(torch.tensor(step * _GOLDEN + 1, device=keys.device)))
    tokens = mix32(torch.arange(vocab, device=keys.device, dtype=torch.int64) * _GOLDEN + 7)
    bits = mix32(per_step[:, None] ^ tokens[None, :]) >> 9  # 23 bits: u < 1 exactly in float32
    return (bits.float() + 0.5) * 2.0**-23


def gumbel_noise(keys: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    """[N, vocab] float32 standard Gumbel noise, −log(−log u) of `uniform_noise`."""
    return -torch.log(-torch.log(uniform_noise(keys, step, vocab)))


class GumbelSampler:
    """A `transformers` logits processor that turns greedy decoding into keyed sampling.

    Adds `gumbel_noise(keys, step)` to the (temperature-scaled, top-p-filtered) scores, so the
    argmax that greedy decoding takes is a sample from the filtered softmax. Give
    `do_sample=False` to `generate` (the sampling happens here) and one key per row.

    Args:
        keys: [B] int64 noise keys of the batch's rows (`row_keys`).
        prompt_width: the (padded) prompt length of the batch; step t is token t of the response.
        temperature: T > 0 of softmax(logits / T).
        top_p: nucleus mass kept before sampling (1: all tokens).
    """

    def __init__(
        self, keys: torch.Tensor, prompt_width: int, temperature: float = 1.0, top_p: float = 1.0
    ):
        if not temperature > 0 or not 0 < top_p <= 1:
            raise ValueError(f"need temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
        self.keys = torch.as_tensor(keys, dtype=torch.int64)
        self.prompt_width = prompt_width
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if len(self.keys) != scores.shape[0]:
            raise ValueError(f"{len(self.keys)} noise keys for a batch of {scores.shape[0]} rows")
        step = input_ids.shape[1] - self.prompt_width
        scores = scores.float() / self.temperature
        if self.top_p < 1:
            scores = _top_p(scores, self.top_p)
        keys = self.keys.to(scores.device)
        return scores + gumbel_noise(keys, step, scores.shape[-1])


def _top_p(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Scores outside the smallest set of tokens with probability mass ≥ top_p set to −inf."""
    ordered, order = scores.sort(-1, descending=True)
    mass_before = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1)
    drop = torch.zeros_like(scores, dtype=torch.bool).scatter(-1, order, mass_before >= top_p)
    return scores.masked_fill(drop, float("-inf"))
