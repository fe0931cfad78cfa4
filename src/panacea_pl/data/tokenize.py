"""Text → token ids for prompts and responses: chat template or plain template, BOS/EOS, truncation.

    from transformers import AutoTokenizer
    from panacea_pl.data import TokenizationSpec
    from panacea_pl.data.tokenize import TextEncoder

    encoder = TextEncoder(AutoTokenizer.from_pretrained("path/to/tokenizer"), TokenizationSpec())
    prompt_ids, cut = encoder.prompts(["How do I bake bread?"])
    response_ids, cut = encoder.responses(["How do I bake bread?"], ["Mix flour and water."])

The rules (template, BOS/EOS, left/right truncation) are documented on `TokenizationSpec`.
Prompts and responses are tokenised separately (`add_special_tokens=False`) and concatenated by
the collators, so a response's tokens are the same in every pair it is part of.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from typing import Any

import datasets

from panacea_pl.data.config import TokenizationSpec
from panacea_pl.data.errors import ConfigError, DataError

log = logging.getLogger("panacea_pl.data")


class TextEncoder:
    """Applies a `TokenizationSpec` with a Hugging Face tokenizer.

    Args:
        tokenizer: a loaded `transformers` tokenizer.
        spec: template, special-token and truncation settings.
    """

    def __init__(self, tokenizer: Any, spec: TokenizationSpec) -> None:
        self.tokenizer = tokenizer
        self.spec = spec
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if spec.use_chat_template and not has_template:
            raise ConfigError(
                "use_chat_template is true but the tokenizer has no chat template; set it to "
                "false (or null) to use the plain template"
            )
        self.use_chat = has_template if spec.use_chat_template is None else spec.use_chat_template
        self.bos_id: int | None = tokenizer.bos_token_id if spec.add_bos else None
        self.eos_id: int | None = tokenizer.eos_token_id if spec.add_eos else None
        self.pad_id: int = pad_token_id(tokenizer)

    # ---- prompts ----------------------------------------------------------------------------

    def prompt_texts(self, prompts: Sequence[str]) -> list[str]:
        """The prompt strings after templating (what gets tokenised)."""
        if self.use_chat:
            return [
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
                )
                for p in prompts
            ]
        return [self.spec.prompt_template.replace("{prompt}", p) for p in prompts]

    def prompts(self, prompts: Sequence[str]) -> tuple[list[list[int]], int]:
        """Token ids of each prompt (BOS first), truncated from the left.

        Returns:
            The ids per prompt and the number of prompts that were truncated.
        """
        texts = self.prompt_texts(prompts)
        out: list[list[int]] = []
        truncated = 0
        limit = self.spec.max_prompt_length
        for text, ids in zip(texts, self._encode(texts), strict=True):
            bos = [self.bos_id] if self.bos_id is not None else []
            if bos and ids and ids[0] == self.bos_id:
                ids = ids[1:]
            if limit is not None and len(bos) + len(ids) > limit:
                keep = limit - len(bos)
                ids = ids[len(ids) - keep :] if keep > 0 else []
                truncated += 1
            ids = bos + ids
            if not ids:
                raise DataError(f"prompt {text[:60]!r} tokenises to no token and there is no BOS")
            out.append(ids)
        return out, truncated

    # ---- responses --------------------------------------------------------------------------

    def response_texts(self, prompts: Sequence[str], responses: Sequence[str]) -> list[str]:
        """The response strings after templating (what gets tokenised, EOS aside)."""
        if not self.use_chat:
            return [self.spec.response_template.replace("{response}", r) for r in responses]
        out = []
        for p, r in zip(prompts, responses, strict=True):
            user = [{"role": "user", "content": p}]
            head = self.tokenizer.apply_chat_template(
                user, tokenize=False, add_generation_prompt=True
            )
            full = self.tokenizer.apply_chat_template(
                [*user, {"role": "assistant", "content": r}], tokenize=False
            )
            if not full.startswith(head):
                raise ConfigError(
                    "the tokenizer's chat template renders a conversation that does not start "
                    "with the rendered prompt (it rewrites earlier turns), so the response cannot "
                    "be cut out; set `use_chat_template: false` to use the plain template"
                )
            out.append(full[len(head) :])
        return out

    def responses(
        self, prompts: Sequence[str], responses: Sequence[str]
    ) -> tuple[list[list[int]], int]:
        """Token ids of each response (+ EOS), truncated from the right.

        Args:
            prompts: the prompt of each response (a chat template may depend on it).
            responses: the response texts.

        Returns:
            The ids per response and the number of responses that were truncated.
        """
        texts = self.response_texts(prompts, responses)
        eos_text = getattr(self.tokenizer, "eos_token", None)
        limit = self.spec.max_response_length
        out: list[list[int]] = []
        truncated = 0
        for text, ids in zip(texts, self._encode(texts), strict=True):
            ends_with_eos = (ids and ids[-1] == self.eos_id) or (
                self.use_chat and eos_text and text.rstrip().endswith(eos_text)
            )
            if self.eos_id is not None and not ends_with_eos:
                ids = [*ids, self.eos_id]
            if limit is not None and len(ids) > limit:
                ids = ids[:limit]
                truncated += 1
            if not ids:
                raise DataError(f"response {text[:60]!r} tokenises to no token")
            out.append(ids)
        return out, truncated

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its EOS id, else 0 (padding is masked out anyway)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of what decides token ids: vocabulary/merges/normaliser, special tokens, template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        body = backend.to_str()
    else:  # slow tokenizers: let `datasets` hash the object
        from datasets.fingerprint import Hasher

        body = Hasher.hash(tokenizer)
    meta = {
        "class": type(tokenizer).__name__,
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "pad": tokenizer.pad_token_id,
        "chat_template": getattr(tokenizer, "chat_template", None),
    }
    digest = hashlib.sha256(body.encode("utf-8"))
    digest.update(json.dumps(meta, sort_keys=True, default=str).encode("utf-8"))
    return digest.hexdigest()


def tokenize_pairs(table: datasets.Dataset, encoder: TextEncoder) -> tuple[datasets.Dataset, dict]:
    """Add `prompt_ids`, `response_a_ids`, `response_b_ids` to canonical pairs.

    Returns:
        The table and truncation counts `{"prompt": n, "response_a": n, "response_b": n}`.
    """
    prompts = table["prompt"]
    prompt_ids, cut_p = encoder.prompts(prompts)
    a_ids, cut_a = encoder.responses(prompts, table["response_a"])
    b_ids, cut_b = encoder.responses(prompts, table["response_b"])
    table = _add(
        table, {"prompt_ids": prompt_ids, "response_a_ids": a_ids, "response_b_ids": b_ids}
    )
    return table, {"prompt": cut_p, "response_a": cut_a, "response_b": cut_b}


def tokenize_sft(table: datasets.Dataset, encoder: TextEncoder) -> tuple[datasets.Dataset, dict]:
    """Add `prompt_ids`, `target_ids` to SFT records (returns truncation counts too)."""
    prompts = table["prompt"]
    prompt_ids, cut_p = encoder.prompts(prompts)
    target_ids, cut_t = encoder.responses(prompts, table["target"])
    table = _add(table, {"prompt_ids": prompt_ids, "target_ids": target_ids})
    return table, {"prompt": cut_p, "target": cut_t}


def tokenize_prompts(
    table: datasets.Dataset, encoder: TextEncoder
) -> tuple[datasets.Dataset, dict]:
    """Add `prompt_ids` to prompt records (returns truncation counts too)."""
    prompt_ids, cut_p = encoder.prompts(table["prompt"])
    return _add(table, {"prompt_ids": prompt_ids}), {"prompt": cut_p}


def _add(table: datasets.Dataset, columns: dict[str, list[list[int]]]) -> datasets.Dataset:
    feature = datasets.List(datasets.Value("int32"))
    if len(table) == 0:  # (add_column trips over some empty selections)
        features = table.features.copy()
        features.update({name: feature for name in columns})
        return datasets.Dataset.from_dict({k: [] for k in features}, features=features)
    for name, values in columns.items():
        table = table.add_column(name, values, feature=feature)
    return table


def log_truncation(source: str, total: int, counts: dict[str, int], spec: TokenizationSpec) -> None:
    """Log how many rows had a field truncated (warning when any was)."""
    cut = {k: v for k, v in counts.items() if v}
    if not cut:
        log.info(f"source '{source}': no truncation in {total} rows")
        return
    limits = f"max_prompt_length={spec.max_prompt_length}, max_response_length={spec.max_response_length}"
    detail = ", ".join(f"{field} in {n} of {total} rows" for field, n in cut.items())
    log.warning(f"source '{source}': truncated {detail} ({limits})")
