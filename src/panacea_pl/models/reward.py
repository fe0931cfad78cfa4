"""A vector-valued reward model (one score per dimension) with an optional safety-cost head.

    scorer = VectorRewardModel("path/to/backbone", dimension_names=["helpful", "harmless"],
                               cost_head=True)
    out = scorer(input_ids, attention_mask)    # out.scores [N, m], out.cost [N] or None
    scorer.save("runs/rm/scorer"); scorer = VectorRewardModel.load("runs/rm/scorer")

Each sequence is scored from the backbone's last hidden state at its last real token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer

from panacea_pl.checks import check_model_path, resolve_dtype

HEADS_NAME = "heads.safetensors"
META_NAME = "scorer_config.json"


@dataclass
class ScorerOutput:
    scores: torch.Tensor  # [N, m], higher is better in every dimension
    cost: torch.Tensor | None  # [N], > 0 means unsafe


class VectorRewardModel(nn.Module):
    """Backbone + linear heads: m reward scores and, optionally, one safety cost.

    Args:
        model_name_or_path: backbone folder or hub name (any `AutoModel`).
        dimension_names: one name per reward score.
        cost_head: add a cost head (safe-rlhf's cost model; harmlessness = −cost).
        dtype: backbone dtype.
    """

    def __init__(
        self,
        model_name_or_path: str,
        dimension_names: list[str],
        cost_head: bool = False,
        dtype: str = "float32",
    ):
        super().__init__()
        self.model_name_or_path = model_name_or_path
        self.dimension_names = list(dimension_names)
        name = type(self).__name__
        torch_dtype = resolve_dtype(dtype, f"{name}.dtype")
        check_model_path(model_name_or_path, f"{name}.model_name_or_path")
        self.backbone = AutoModel.from_pretrained(model_name_or_path, dtype=torch_dtype)
        self.backbone.train()  # from_pretrained returns eval mode; the Trainer decides the mode
        hidden = self.backbone.config.hidden_size
        self.score_head = nn.Linear(hidden, len(self.dimension_names))
        self.cost_head = nn.Linear(hidden, 1) if cost_head else None
        for head in (self.score_head, self.cost_head):
            if head is not None:
                nn.init.normal_(head.weight, std=1 / (hidden + 1) ** 0.5)
                nn.init.zeros_(head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> ScorerOutput:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        last = attention_mask.long().cumsum(-1).argmax(-1)  # index of the last real token
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()
        cost = self.cost_head(pooled).squeeze(-1) if self.cost_head is not None else None
        return ScorerOutput(scores=self.score_head(pooled), cost=cost)

    @torch.no_grad()
    def score_texts(self, texts: list[str], batch_size: int = 16) -> ScorerOutput:
        """Score full texts (prompt + response) with the tokenizer saved beside the backbone."""
        tok = AutoTokenizer.from_pretrained(self.model_name_or_path)
        tok.padding_side = "right"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        device = self.score_head.weight.device
        scores, costs = [], []
        for start in range(0, len(texts), batch_size):
            enc = tok(texts[start : start + batch_size], return_tensors="pt", padding=True)
            out = self(enc["input_ids"].to(device), enc["attention_mask"].to(device))
            scores.append(out.scores)
            if out.cost is not None:
                costs.append(out.cost)
        return ScorerOutput(torch.cat(scores), torch.cat(costs) if costs else None)

    def save(self, directory: str | Path) -> Path:
        """Backbone (`save_pretrained`, with its tokenizer) + heads (safetensors) + JSON meta."""
        directory = Path(directory)
        self.backbone.save_pretrained(directory / "backbone")
        AutoTokenizer.from_pretrained(self.model_name_or_path).save_pretrained(
            directory / "backbone"
        )
        heads = {f"score_head.{k}": v for k, v in self.score_head.state_dict().items()}
        if self.cost_head is not None:
            heads |= {f"cost_head.{k}": v for k, v in self.cost_head.state_dict().items()}
        save_file({k: v.contiguous() for k, v in heads.items()}, str(directory / HEADS_NAME))
        meta = {"dimension_names": self.dimension_names, "cost_head": self.cost_head is not None}
        (directory / META_NAME).write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path, dtype: str = "float32") -> VectorRewardModel:
        """Load a scorer written by `save` (evaluation and PPO load it by path)."""
        directory = Path(directory)
        if not (directory / META_NAME).is_file():
            raise FileNotFoundError(f"no {META_NAME} in {directory}: not a saved VectorRewardModel")
        meta = json.loads((directory / META_NAME).read_text())
        model = cls(str(directory / "backbone"), meta["dimension_names"], meta["cost_head"], dtype)
        heads = load_file(str(directory / HEADS_NAME))
        model.score_head.load_state_dict(
            {k[11:]: v for k, v in heads.items() if k.startswith("score_head.")}
        )
        if model.cost_head is not None:
            model.cost_head.load_state_dict(
                {k[10:]: v for k, v in heads.items() if k.startswith("cost_head.")}
            )
        return model
