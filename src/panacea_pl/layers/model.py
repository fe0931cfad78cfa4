"""Inject the Panacea adapter into a model and drive it: set λ, switch it off, merge, list params.

    from panacea_pl.layers import PanaceaConfig, inject_adapter
    adapter = inject_adapter(model, PanaceaConfig(num_general=8, num_preferences=2))
    with adapter.preference([0.2, 0.8]):
        out = model.generate(**inputs)
    with adapter.disabled():          # the reference model: same weights, adapter off
        ref_logits = model(**inputs).logits

Works on any torch model with nn.Linear or transformers Conv1D layers; no training framework.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from transformers.pytorch_utils import Conv1D

from panacea_pl.layers.config import DEFAULT_TARGET_MODULES, PanaceaConfig
from panacea_pl.layers.layer import AdapterState, PanaceaLinear
from panacea_pl.preference import PreferenceError, PreferenceLike, validate_preference


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: a DTensor shard (FSDP2) is all-gathered, a plain tensor returned as is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def find_target_modules(model: nn.Module, target_modules: list[str] | str | None) -> list[str]:
    """Full names of the linear layers selected by `target_modules` (see PanaceaConfig)."""
    linear = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear | Conv1D) and not isinstance(module, PanaceaLinear)
    ]
    if target_modules is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in DEFAULT_TARGET_MODULES:
            raise ValueError(
                f"no default target modules for model type {model_type!r}; pass "
                f"target_modules (names or a regex). Linear layers in this model: "
                f"{_summarise(linear)}"
            )
        target_modules = DEFAULT_TARGET_MODULES[model_type]
    if isinstance(target_modules, str):
        pattern = re.compile(target_modules)
        chosen = [name for name in linear if pattern.fullmatch(name)]
    else:
        chosen = [n for n in linear if any(n == t or n.endswith("." + t) for t in target_modules)]
    if not chosen:
        raise ValueError(
            f"target_modules {target_modules!r} matched no nn.Linear/Conv1D layer. "
            f"Linear layers in this model: {_summarise(linear)}"
        )
    return chosen


def _summarise(names: list[str], limit: int = 12) -> str:
    """Distinct leaf names first (what users type), then a few full names."""
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    return f"leaf names {leaves}; e.g. {names[:limit]}" if names else "none"


def inject_adapter(model: nn.Module, config: PanaceaConfig) -> PanaceaAdapter:
    """Wrap the target layers of `model` in place, freeze everything else, return the handle.

    Args:
        model: any torch model, typically a transformers causal LM.
        config: the adapter's shape and placement.

    Returns:
        The `PanaceaAdapter` controlling the injected layers (`PanaceaAdapter.of(model)` finds
        it again later).
    """
    if any(isinstance(m, PanaceaLinear) for m in model.modules()):
        raise ValueError("model already has a Panacea adapter; use PanaceaAdapter.of(model)")
    names = find_target_modules(model, config.target_modules)
    for param in model.parameters():
        param.requires_grad_(False)
    state = AdapterState(config=config)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = PanaceaLinear(getattr(parent, child), state)
        setattr(parent, child, layer)
        state.layers[name] = layer
    return PanaceaAdapter(model, state)


class PanaceaAdapter:
    """Handle on the adapter injected into one model. Holds no tensors of its own."""

    def __init__(self, model: nn.Module, state: AdapterState):
        self.model = model
        self.state = state

    @classmethod
    def of(cls, model: nn.Module) -> PanaceaAdapter:
        """The adapter already injected into `model` (also through DDP/Lightning wrappers)."""
        for module in model.modules():
            if isinstance(module, PanaceaLinear):
                return cls(model, module.state)
        raise ValueError("model has no Panacea adapter; call inject_adapter(model, config) first")

    # ---- shape -------------------------------------------------------------------------------

    @property
    def config(self) -> PanaceaConfig:
        return self.state.config

    @property
    def num_preferences(self) -> int:
        return self.state.config.num_preferences

    @property
    def layers(self) -> dict[str, PanaceaLinear]:
        """Injected layers by the full name of the module they replaced."""
        return self.state.layers

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The adapter's learnable parameters (U, V, σ, s of every layer) with full names."""
        for name, layer in self.layers.items():
            for pname, param in layer.named_parameters(recurse=False):
                yield f"{name}.{pname}", param

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_parameters()]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Adapter tensors only, keyed like `named_parameters`, whole: the shards of a model
        sharded with FSDP2 (`fully_shard`) are gathered, so every rank must call this."""
        return {name: full_tensor(p.detach()) for name, p in self.named_parameters()}

    # ---- preference --------------------------------------------------------------------------

    def set_preference(
        self,
        preference: PreferenceLike,
        *,
        normalize: bool = False,
        repeats: int = 1,
        checked: bool = False,
    ) -> None:
        """Use λ (shape [m]) for the whole batch, or one row per sequence (shape [B, m]).

        Args:
            preference: λ, [m] or [B, m].
            normalize: rescale rows to sum 1 (see `validate_preference`).
            repeats: each of the B rows serves this many consecutive sequences, so the batch
                must have B · repeats rows (generate with num_return_sequences or num_beams).
                Any other batch size is an error, never a silent repetition.
            checked: λ is a tensor that was validated where it entered (the modules' λ sampler
                draws it on the simplex): only its shape is checked, so a training step reads
                no value back from an accelerator (a full check costs three host syncs).

        Raises:
            PreferenceError: λ is not on the simplex (see `validate_preference`).
            RuntimeError: the adapter is merged at a different λ.
        """
        device = next(iter(self.layers.values())).panacea_scale.device
        if checked and isinstance(preference, torch.Tensor) and not normalize:
            if preference.dim() not in (1, 2) or preference.shape[-1] != self.num_preferences:
                raise PreferenceError(
                    f"preference must have shape [{self.num_preferences}] or [batch, "
                    f"{self.num_preferences}], got shape {list(preference.shape)}"
                )
            lam = preference.to(device=device, dtype=torch.float32)
        else:
            lam = validate_preference(
                preference, self.num_preferences, normalize=normalize, device=device
            )
        merged = self.state.merged_preference
        if merged is not None and not (lam.shape == merged.shape and torch.equal(lam, merged)):
            raise RuntimeError(
                f"adapter is merged at λ={merged.tolist()}; call unmerge() before switching to "
                f"λ={lam.tolist()}"
            )
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
        self.state.preference = lam
        self.state.repeats = repeats

    @property
    def current_preference(self) -> torch.Tensor | None:
        """The λ in use: [m], [B, m], or None before the first `set_preference`."""
        return self.state.preference

    @contextmanager
    def preference(
        self,
        preference: PreferenceLike,
        *,
        normalize: bool = False,
        repeats: int = 1,
        checked: bool = False,
    ) -> Iterator[None]:
        """Use λ inside the block (arguments as `set_preference`), then restore the previous one."""
        previous = self.state.preference, self.state.repeats
        self.set_preference(preference, normalize=normalize, repeats=repeats, checked=checked)
        try:
            yield
        finally:
            self.state.preference, self.state.repeats = previous

    def recompute_context(self) -> tuple[AbstractContextManager, AbstractContextManager]:
        """`context_fn` for `torch.utils.checkpoint` (non-reentrant): nothing around the forward,
        and around the recomputation in backward this adapter's λ, repeats and on/off switch as
        they were at the forward. Activation checkpointing recomputes a block during backward,
        after the `preference(λ)` block that ran it has exited: without this the recomputation
        would see no λ (an error) or another one (wrong gradients)."""
        state = self.state
        snapshot = (state.preference, state.repeats, state.enabled)
        return nullcontext(), self._as_at(snapshot)

    @contextmanager
    def _as_at(self, snapshot: tuple) -> Iterator[None]:
        state = self.state
        saved = (state.preference, state.repeats, state.enabled)
        state.preference, state.repeats, state.enabled = snapshot
        try:
            yield
        finally:
            state.preference, state.repeats, state.enabled = saved

    def enable_gradient_checkpointing(self, model: nn.Module) -> None:
        """Hugging Face's activation checkpointing on `model` (which holds this adapter), with
        each block's recomputation under the λ of its forward (`recompute_context`)."""
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={
                "use_reentrant": False,
                "context_fn": self.recompute_context,
            }
        )

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the base model: the adapter adds nothing inside the block (the DPO/PPO reference)."""
        if self.state.merged_preference is not None:
            raise RuntimeError("cannot disable a merged adapter; call unmerge() first")
        previous, self.state.enabled = self.state.enabled, False
        try:
            yield
        finally:
            self.state.enabled = previous

    # ---- merge -------------------------------------------------------------------------------

    @property
    def merged(self) -> bool:
        return self.state.merged_preference is not None

    @torch.no_grad()
    def merge(self, preference: PreferenceLike | None = None) -> None:
        """Add the update for one λ into the base weights; the forward pass is then the base cost.

        Args:
            preference: λ of shape [m]; None uses the current preference.
        """
        if self.merged:
            raise RuntimeError("adapter is already merged; call unmerge() first")
        if preference is not None:
            self.set_preference(preference)
        lam = self.state.preference
        if lam is None or lam.dim() != 1:
            raise RuntimeError("merge needs one λ of shape [m], not none or a per-sample batch")
        self._check_untied()
        for layer in self.layers.values():
            weight = layer.base_layer.weight
            weight.add_(layer.delta_weight(lam).to(weight.dtype))
        self.state.merged_preference = lam

    def _check_untied(self) -> None:
        """Refuse to merge into a weight another layer also uses (tied input and output
        embeddings): the merge would change that layer too."""
        users: dict[int, list[str]] = {}
        for name, param in self.model.named_parameters(remove_duplicate=False):
            if param.numel() and param.data_ptr():
                users.setdefault(param.data_ptr(), []).append(name)
        for name, layer in self.layers.items():
            shared = users.get(layer.base_layer.weight.data_ptr(), [])
            if len(shared) > 1:
                raise ValueError(
                    f"cannot merge the adapter of {name}: its weight is also "
                    f"{[n for n in shared if not n.endswith(name + '.base_layer.weight')]} "
                    "(tied embeddings), so merging would change that layer too. Use the adapter "
                    "unmerged (set_preference), or untie first: "
                    f"{name}.base_layer.weight = nn.Parameter(weight.clone())"
                )

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the merged update again (exact up to floating-point rounding)."""
        lam = self.state.merged_preference
        if lam is None:
            raise RuntimeError("adapter is not merged")
        for layer in self.layers.values():
            weight = layer.base_layer.weight
            weight.sub_(layer.delta_weight(lam).to(weight.dtype))
        self.state.merged_preference = None

    # ---- regularisation ----------------------------------------------------------------------

    def orthogonality_loss(self) -> torch.Tensor:
        """Σ over layers of ‖UᵀU − I‖² + ‖VVᵀ − I‖² (AdaLoRA); add it to the loss with a weight."""
        return torch.stack([layer.orthogonality_penalty() for layer in self.layers.values()]).sum()
