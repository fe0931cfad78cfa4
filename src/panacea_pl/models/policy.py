"""The policy: a Hugging Face causal LM with the Panacea adapter, built from a path.

    policy = PanaceaPolicy("path/to/model", adapter=PanaceaConfig(num_general=8, num_preferences=2))
    logps = policy.sequence_logprobs(batch)                  # adapter on, current λ
    with policy.adapter.disabled():
        ref = policy.sequence_logprobs(batch)                # the reference, no second copy
    tokens = policy.generate(**policy.tokenizer()(prompts, return_tensors="pt", padding=True),
                             preference=grid, max_new_tokens=32)   # one λ row per prompt

LightningCLI builds it from YAML (`class_path: panacea_pl.models.PanaceaPolicy`).

Evaluators reach a policy only through `PreferencePolicy` (set λ, run the reference, log-probs,
the model for generation), so the baselines' policy collections (`panacea_pl.baselines`) are
evaluated by the same code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from panacea_pl.checks import check_model_path, resolve_dtype
from panacea_pl.layers import PanaceaConfig, inject_adapter, load_adapter, read_adapter_config
from panacea_pl.layers.io import CONFIG_NAME
from panacea_pl.models.logprobs import sequence_logprobs
from panacea_pl.preference import PreferenceLike


@runtime_checkable
class PreferencePolicy(Protocol):
    """What an evaluator needs from a policy steered by λ.

    Panacea's policy takes a different λ per row of a batch (`accepts_row_preferences` True); a
    collection of baseline models (DPS, rewarded soups) swaps weights and takes one λ per
    forward pass (False): evaluators then send every λ in batches of its own. (Not to be
    confused with a training module's `per_sample_preference`, which says whether training
    *draws* one λ per example.)

    Attributes:
        model: the causal LM that is run and generates (with the current λ's weights).
        accepts_row_preferences: whether one forward pass may take a different λ per row.
    """

    model: nn.Module
    accepts_row_preferences: bool

    @property
    def num_preferences(self) -> int: ...

    def set_preference(self, preference: torch.Tensor) -> None:
        """Use λ of shape [m], or [B, m] (one row per sequence; equal rows unless per-sample)."""
        ...

    def preference(self, preference: torch.Tensor) -> AbstractContextManager:
        """`set_preference` for a block."""
        ...

    def reference(self) -> AbstractContextManager:
        """A block in which `model` is the reference policy (for KL and implicit rewards)."""
        ...

    def sequence_logprobs(self, batch: dict) -> torch.Tensor:
        """Summed response-token log-probs [N] of a pair or SFT batch under the current λ."""
        ...


class PanaceaPolicy(nn.Module):
    """A causal LM plus the Panacea adapter (a `PreferencePolicy` with per-sample λ).

    Args:
        model_name_or_path: a Hugging Face model folder or hub name (`from_pretrained`).
        adapter: shape and placement of a new adapter. With `adapter_path` too, its num_general and
            num_preferences must equal the saved adapter's.
        adapter_path: a folder written by `save_adapter`, to continue from or evaluate.
        dtype: dtype of the base weights ("float32", "bfloat16"/"bf16", "float16"/"fp16", …).
        gradient_checkpointing: trade compute for activation memory.
        disable_dropout: set the base model's dropout to 0, so the policy and its reference
            (the same model, adapter off) see the same network, as DPO assumes (TRL does the
            same). The adapter's own dropout is set in `PanaceaConfig`.
    """

    def __init__(
        self,
        model_name_or_path: str,
        adapter: PanaceaConfig | None = None,
        adapter_path: str | None = None,
        dtype: str = "float32",
        gradient_checkpointing: bool = False,
        disable_dropout: bool = True,
    ):
        super().__init__()
        name = type(self).__name__
        torch_dtype = resolve_dtype(dtype, f"{name}.dtype")
        check_model_path(model_name_or_path, f"{name}.model_name_or_path")
        if adapter_path is not None:
            check_adapter_agrees(adapter, adapter_path)
        self.model_name_or_path = model_name_or_path
        self.model = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=torch_dtype)
        if disable_dropout:
            for module in self.model.modules():
                if isinstance(module, nn.Dropout):
                    module.p = 0.0
        self.model.train()
        if adapter_path is not None:
            self.adapter = load_adapter(self.model, adapter_path)
        else:
            self.adapter = inject_adapter(self.model, adapter or PanaceaConfig())
        if gradient_checkpointing:
            self.adapter.enable_gradient_checkpointing(self.model)

    accepts_row_preferences = True

    @property
    def num_preferences(self) -> int:
        return self.adapter.num_preferences

    def set_preference(self, preference: torch.Tensor) -> None:
        """λ for the next forward passes: [m], or [B, m] with one row per sequence."""
        self.adapter.set_preference(preference)

    @contextmanager
    def preference(self, preference: torch.Tensor) -> Iterator[None]:
        """λ inside the block; the previous λ is restored after it."""
        with self.adapter.preference(preference):
            yield

    def reference(self) -> AbstractContextManager:
        """The reference policy: the same model with the adapter disabled."""
        return self.adapter.disabled()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits [N, T, V] under the current λ."""
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).logits

    def sequence_logprobs(self, batch: dict) -> torch.Tensor:
        """Summed response-token log-probs [N] of a pair or SFT batch under the current λ."""
        logits = self(batch["input_ids"], batch["attention_mask"])
        return sequence_logprobs(logits, batch["input_ids"], batch["response_mask"])[0]

    def tokenizer(self):
        """The tokenizer saved with the model (left padding, for generation)."""
        tok = AutoTokenizer.from_pretrained(self.model_name_or_path)
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return tok

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        preference: PreferenceLike,
        **generate_kwargs,
    ) -> torch.Tensor:
        """Generate with λ of shape [m] (all rows) or [B, m] (one per prompt row) in one batched
        call; with num_return_sequences / num_beams, each λ row serves all of its prompt's
        sequences."""
        config = getattr(self.model, "generation_config", None)
        # generate expands each prompt to max(num_beams, num_return_sequences) sequences
        repeats = max(
            int(generate_kwargs.get(key) or getattr(config, key, 1) or 1)
            for key in ("num_return_sequences", "num_beams")
        )
        with self.adapter.preference(preference, repeats=repeats):
            return self.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs
            )


FIELDS_COMPARED = (
    "num_preferences",
    "num_general",
    "rank_per_preference",
    "alpha",
    "dropout",
    "dtype",
)


def check_adapter_agrees(adapter: PanaceaConfig | None, adapter_path: str) -> PanaceaConfig:
    """Read a saved adapter's config and refuse one that contradicts the `adapter` also given.

    Compared: `FIELDS_COMPARED` (target_modules are saved as full
    layer names and checked against the model when the adapter loads).

    Raises:
        AdapterLoadError: `adapter_path` is not a readable adapter folder.
        ValueError: a field differs; the message names both values and the file.
    """
    saved = read_adapter_config(adapter_path)
    if adapter is None:
        return saved
    differ = [
        f"{field} {getattr(adapter, field)!r} (adapter) vs {getattr(saved, field)!r} (saved)"
        for field in FIELDS_COMPARED
        if getattr(adapter, field) != getattr(saved, field)
    ]
    if differ:
        raise ValueError(
            f"the adapter saved in {Path(adapter_path) / CONFIG_NAME} contradicts the `adapter` "
            f"config given with it: {'; '.join(differ)}. Make them agree, or drop `adapter` to "
            "use the saved one's config"
        )
    return saved
