"""The paper's baselines as policies the evaluators take: several trained adapters behind one
model, swapped (DPS) or interpolated (rewarded soups) for each λ.

    base = PanaceaPolicy("path/to/model", adapter=PanaceaConfig(num_general=8, num_preferences=2))
    dps = DPSPolicy.from_adapters(base, {(1.0, 0.0): "dps/e0/adapter", (0.5, 0.5): …, …})
    rs = RewardedSoupsPolicy.from_adapters(base, ["rs/e0/adapter", "rs/e1/adapter"])
    with rs.preference([0.3, 0.7]):         # θ = 0.3·θ_0 + 0.7·θ_1, loaded into the one model
        logps = rs.sequence_logprobs(batch)
    front = DPSFront(dps, loss=MultiObjectiveDPOLoss(beta=0.1))
    Trainer(callbacks=[ParetoSweep(StoriesEvaluator())]).validate(front, datamodule=data)

Both are `panacea_pl.models.PreferencePolicy`s with `accepts_row_preferences = False`: a forward
pass takes one λ, and the evaluators send each λ of the grid in batches of its own. Member adapters are kept
as CPU tensors and copied into the one injected adapter when λ changes (nothing is copied while λ
stays the same), so a collection costs one model plus its adapters' weights.
`load_members(base, run_dir)` rebuilds the collection a `panacea-pl baseline` run trained.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import lightning.pytorch as pl
import torch
from safetensors.torch import load_file
from torch import nn

from panacea_pl.layers.io import CONFIG_NAME, WEIGHTS_NAME, AdapterLoadError
from panacea_pl.models import PanaceaPolicy
from panacea_pl.modules.base import default_dimension_names
from panacea_pl.objectives import MultiObjectiveDPOLoss
from panacea_pl.preference import PreferenceLike, validate_preference

MANIFEST_NAME = "members.json"


def read_adapter_state(directory: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of an adapter folder written by `save_adapter` (on the CPU)."""
    directory = Path(directory)
    if not (directory / CONFIG_NAME).is_file() or not (directory / WEIGHTS_NAME).is_file():
        raise AdapterLoadError(f"{directory} is not an adapter folder written by save_adapter")
    return load_file(str(directory / WEIGHTS_NAME))


def _base_policy(base: PanaceaPolicy | str | Path, first_adapter: str | Path) -> PanaceaPolicy:
    if isinstance(base, PanaceaPolicy):
        return base
    return PanaceaPolicy(str(base), adapter_path=str(first_adapter))


class AdapterCollection(nn.Module):
    """Several adapters of the same shape behind one model; subclasses say which weights a λ
    gets (`weights_for`).

    Args:
        base: the model with one injected adapter of the members' shape; its adapter weights are
            overwritten whenever λ changes.
        preferences: [K, m] the λ each member was trained at.
        states: K adapter state dicts (`adapter.state_dict()` or `read_adapter_state`).
    """

    accepts_row_preferences = False

    def __init__(
        self,
        base: PanaceaPolicy,
        preferences: torch.Tensor | Sequence[Sequence[float]],
        states: Sequence[Mapping[str, torch.Tensor]],
    ):
        super().__init__()
        self.base = base
        m = base.num_preferences
        prefs = validate_preference(preferences, m)
        if prefs.dim() != 2 or len(prefs) != len(states) or not len(states):
            raise ValueError(
                f"need one λ row per member adapter, got {list(prefs.shape)} λ for "
                f"{len(states)} adapters"
            )
        expected = {n: p.shape for n, p in base.adapter.named_parameters()}
        self.states: list[dict[str, torch.Tensor]] = []
        for k, state in enumerate(states):
            shapes = {n: t.shape for n, t in state.items()}
            if shapes != expected:
                missing = sorted(set(expected) - set(shapes))[:3]
                unexpected = sorted(set(shapes) - set(expected))[:3]
                wrong = [n for n in set(expected) & set(shapes) if expected[n] != shapes[n]][:3]
                raise AdapterLoadError(
                    f"member {k} (λ={prefs[k].tolist()}) does not fit the base adapter: missing "
                    f"{missing}, unexpected {unexpected}, other shape {wrong}"
                )
            self.states.append({n: t.detach().cpu() for n, t in state.items()})
        self.member_preferences = prefs.float()
        self._loaded: tuple[float, ...] | None = None

    # ---- PreferencePolicy --------------------------------------------------------------------

    @property
    def model(self) -> nn.Module:
        return self.base.model

    @property
    def num_preferences(self) -> int:
        return self.base.num_preferences

    def set_preference(self, preference: PreferenceLike) -> None:
        """Load the weights for λ ([m], or [B, m] with equal rows) into the model."""
        lam = self._one_preference(preference)
        key = tuple(lam.tolist())
        if key == self._loaded:
            return
        weights, adapter_input = self.weights_for(lam)
        adapter = self.base.adapter
        with torch.no_grad():
            for name, param in adapter.named_parameters():
                param.copy_(weights[name])
        adapter.set_preference(adapter_input)
        self._loaded = key

    @contextmanager
    def preference(self, preference: PreferenceLike) -> Iterator[None]:
        """`set_preference` for the block. The weights stay loaded after it (restoring them would
        cost a second copy for nothing: every user of the collection sets λ first)."""
        self.set_preference(preference)
        yield

    def reference(self) -> AbstractContextManager:
        """The reference policy: the base model, adapter disabled."""
        return self.base.adapter.disabled()

    def sequence_logprobs(self, batch: dict) -> torch.Tensor:
        return self.base.sequence_logprobs(batch)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.base(input_ids, attention_mask)

    def tokenizer(self):
        return self.base.tokenizer()

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        preference: PreferenceLike,
        **generate_kwargs,
    ) -> torch.Tensor:
        """Generate with one λ ([m], or [B, m] with equal rows)."""
        self.set_preference(preference)
        return self.model.generate(
            input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs
        )

    # ---- what a λ gets -----------------------------------------------------------------------

    def weights_for(self, preference: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The adapter weights for λ, and the λ fed to the adapter's preference slots."""
        raise NotImplementedError

    def invalidate(self) -> None:
        """Forget which weights are loaded (call after changing the base adapter by hand)."""
        self._loaded = None

    def _one_preference(self, preference: PreferenceLike) -> torch.Tensor:
        lam = validate_preference(preference, self.num_preferences, device="cpu")
        if lam.dim() == 2:
            if not torch.equal(lam, lam[:1].expand_as(lam)):
                raise ValueError(
                    f"{type(self).__name__} runs one λ per forward pass, got {len(lam)} rows with "
                    "different λ; evaluate with per_sample=False (see PreferencePolicy)"
                )
            lam = lam[0]
        return lam


class DPSPolicy(AdapterCollection):
    """Discrete policy solutions: one model trained per λ of a grid; λ runs the member trained
    at λ (the nearest member by L1 distance if λ is off the grid, e.g. a coarser DPS grid than
    the sweep's; with `exact=True` an off-grid λ is an error).

    Args:
        base, preferences, states: see `AdapterCollection`.
        exact: refuse a λ no member was trained at (tolerance 1e-6).
    """

    def __init__(
        self,
        base: PanaceaPolicy,
        preferences: torch.Tensor | Sequence[Sequence[float]],
        states: Sequence[Mapping[str, torch.Tensor]],
        exact: bool = False,
    ):
        super().__init__(base, preferences, states)
        self.exact = exact

    def member_for(self, preference: torch.Tensor) -> int:
        """Index of the member that serves λ."""
        distance = (self.member_preferences - preference.float()[None]).abs().sum(1)
        index = int(distance.argmin())
        if self.exact and float(distance[index]) > 1e-6:
            raise ValueError(
                f"no DPS member was trained at λ={preference.tolist()}; members: "
                f"{self.member_preferences.tolist()}"
            )
        return index

    def weights_for(self, preference: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        index = self.member_for(preference)
        return self.states[index], self.member_preferences[index]

    @classmethod
    def from_adapters(
        cls,
        base: PanaceaPolicy | str | Path,
        adapters: Mapping[Sequence[float], str | Path]
        | Sequence[tuple[Sequence[float], str | Path]],
        exact: bool = False,
    ) -> DPSPolicy:
        """From adapter folders keyed by the λ they were trained at. `base` may be a model path
        (the first adapter is then loaded onto it with `load_adapter`)."""
        items = list(adapters.items() if isinstance(adapters, Mapping) else adapters)
        base = _base_policy(base, items[0][1])
        prefs = [list(map(float, lam)) for lam, _ in items]
        return cls(base, prefs, [read_adapter_state(d) for _, d in items], exact=exact)


class RewardedSoupsPolicy(AdapterCollection):
    """Rewarded soups (Ramé et al., 2023): one adapter per dimension i, trained at λ = e_i
    (single-objective DPO); λ runs the weight interpolation θ(λ) = Σ_i λ_i θ_i.

    For Panacea's SVD-style adapter the interpolation is over each of its tensors separately —
    U, V, σ and s of every layer — as rewarded soups does with LoRA's A and B; the adapter's
    preference slots get Σ_i λ_i e_i = λ, the interpolation of the members' own (fixed) input.
    At λ = e_i this is member i exactly. The members share their initialisation (the runner seeds
    every member alike), which the linear interpolation of fine-tuned weights relies on.

    Args:
        base: see `AdapterCollection`.
        states: m adapter state dicts, member i trained at e_i, in dimension order.
    """

    def __init__(self, base: PanaceaPolicy, states: Sequence[Mapping[str, torch.Tensor]]):
        m = base.num_preferences
        if len(states) != m:
            raise ValueError(
                f"rewarded soups needs one adapter per dimension: {m}, got {len(states)}"
            )
        super().__init__(base, torch.eye(m, dtype=torch.float64), states)

    def weights_for(self, preference: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        lam = preference.tolist()
        weights = {}
        for name in self.states[0]:
            total = lam[0] * self.states[0][name]
            for i in range(1, len(lam)):
                total = total + lam[i] * self.states[i][name]
            weights[name] = total
        return weights, preference

    @classmethod
    def from_adapters(
        cls, base: PanaceaPolicy | str | Path, adapters: Sequence[str | Path]
    ) -> RewardedSoupsPolicy:
        """From m adapter folders, the one trained at e_i i-th."""
        base = _base_policy(base, adapters[0])
        return cls(base, [read_adapter_state(d) for d in adapters])


def load_members(base: PanaceaPolicy | str | Path, run_dir: str | Path) -> AdapterCollection:
    """The collection a `panacea-pl baseline` run trained, from its `members.json`."""
    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / MANIFEST_NAME).read_text())
    members = manifest["members"]
    dirs = [run_dir / member["adapter"] for member in members]
    if manifest["kind"] == "dps":
        return DPSPolicy.from_adapters(
            base, [(member["preference"], d) for member, d in zip(members, dirs, strict=True)]
        )
    return RewardedSoupsPolicy.from_adapters(base, dirs)


class BaselineFront(pl.LightningModule):
    """A baseline's collection as a LightningModule, for `Trainer.validate` with `ParetoSweep`:
    the evaluators find `policy`, `loss.beta` and `dimension_names` as on `PanaceaDPO`.

    Nothing is trained or computed per validation batch; at the end of validation the training
    compute of the members is logged as `compute/{name}` beside the sweep's `pareto/*_final`.

    Args:
        policy: the collection.
        loss: the members' DPO loss (its β is the implicit-reward evaluator's).
        dimension_names: default: the datamodule's `dimension_names`.
        training_compute: e.g. {"train_steps": …, "train_seconds": …, "members": …}.
    """

    def __init__(
        self,
        policy: AdapterCollection,
        loss: MultiObjectiveDPOLoss | None = None,
        dimension_names: Sequence[str] | None = None,
        training_compute: Mapping[str, float] | None = None,
    ):
        super().__init__()
        self.policy = policy
        self.loss = loss if loss is not None else MultiObjectiveDPOLoss()
        self._dimension_names = list(dimension_names) if dimension_names is not None else None
        self.training_compute = dict(training_compute or {})

    @property
    def num_preferences(self) -> int:
        return self.policy.num_preferences

    @property
    def dimension_names(self) -> list[str]:
        if self._dimension_names is None:
            self._dimension_names = default_dimension_names(self)
        return self._dimension_names

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        return None

    def on_validation_epoch_end(self) -> None:
        for name, value in self.training_compute.items():
            self.log(f"compute/{name}", float(value))


class DPSFront(BaselineFront):
    """DPS's front (`BaselineFront` over a `DPSPolicy`)."""


class RewardedSoupsFront(BaselineFront):
    """Rewarded soups' front (`BaselineFront` over a `RewardedSoupsPolicy`)."""
