"""The PPO critic: one value per preference dimension, conditioned on λ like the policy.

    critic = PanaceaCritic("path/to/model", adapter=PanaceaConfig(num_general=8, num_preferences=2))
    with critic.preference(lam_rows):                 # [N, m], one λ per sequence
        values = critic(input_ids, attention_mask, position_ids)    # [N, T, m]

Design: a separate backbone (any `AutoModel`, e.g. the policy's base model or a reward model's
backbone) with its own Panacea adapter, so λ enters the critic exactly as it enters the policy
(as singular values of every adapted layer), and a linear head with m outputs on the last hidden
states. V_i(s_t; λ) estimates dimension i's return-to-go of the policy at λ. A separate copy (as
in safe-rlhf and OpenRLHF) keeps value-loss gradients out of the policy; for a 7B policy it
doubles the frozen weights in memory, so a smaller backbone may serve as critic — it must read
the policy's token ids, i.e. share its tokenizer. The head starts at 0 (values 0 at step 0).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import AutoModel

from panacea_pl.checks import check_model_path, resolve_dtype
from panacea_pl.layers import PanaceaConfig, inject_adapter
from panacea_pl.preference import PreferenceLike


class PanaceaCritic(nn.Module):
    """A λ-conditioned value model with m outputs.

    Args:
        model_name_or_path: the backbone's folder or hub name (`AutoModel.from_pretrained`;
            a causal-LM folder gives its decoder without the LM head).
        adapter: the critic's Panacea adapter; `num_preferences` is m, the number of values.
        train_backbone: also train the backbone's own weights (safe-rlhf trains its critics in
            full; the default trains only the adapter and the head).
        dtype: dtype of the backbone weights.
        gradient_checkpointing: trade compute for activation memory (in training mode).
        disable_dropout: set the backbone's dropout to 0 (values of a rollout and of its PPO
            epochs then come from the same network).
    """

    def __init__(
        self,
        model_name_or_path: str,
        adapter: PanaceaConfig | None = None,
        train_backbone: bool = False,
        dtype: str = "float32",
        gradient_checkpointing: bool = False,
        disable_dropout: bool = True,
    ):
        super().__init__()
        self.model_name_or_path = model_name_or_path
        name = type(self).__name__
        torch_dtype = resolve_dtype(dtype, f"{name}.dtype")
        check_model_path(model_name_or_path, f"{name}.model_name_or_path")
        self.backbone = AutoModel.from_pretrained(model_name_or_path, dtype=torch_dtype)
        if disable_dropout:
            for module in self.backbone.modules():
                if isinstance(module, nn.Dropout):
                    module.p = 0.0
        self.backbone.train()
        self.adapter = inject_adapter(self.backbone, adapter or PanaceaConfig())
        if train_backbone:
            for param in self.backbone.parameters():
                param.requires_grad_(True)
        if gradient_checkpointing:
            self.adapter.enable_gradient_checkpointing(self.backbone)
        hidden = self.backbone.config.hidden_size
        self.value_head = nn.Linear(hidden, self.adapter.num_preferences)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    @property
    def num_preferences(self) -> int:
        return self.adapter.num_preferences

    @contextmanager
    def preference(self, preference: PreferenceLike) -> Iterator[None]:
        """λ ([m] or [N, m]) inside the block; the previous λ is restored after it."""
        with self.adapter.preference(preference):
            yield

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Values [N, T, m] (float32) of every prefix, under the current λ."""
        hidden = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state
        return self.value_head(hidden.float())
