"""Panacea with multi-objective DPO: one DPO loss per dimension, aggregated with λ.

    module = PanaceaDPO(policy=PanaceaPolicy(path, adapter=PanaceaConfig(num_general=8, num_preferences=2)),
                        loss=MultiObjectiveDPOLoss(beta=0.1), aggregator=Tchebycheff())
    Trainer(max_steps=200).fit(module, datamodule=PreferenceDataModule(...))

The reference is the policy with its adapter disabled: no second copy of the model.
"""

from __future__ import annotations

import torch

from panacea_pl.models import PanaceaPolicy
from panacea_pl.modules.base import PanaceaModule
from panacea_pl.objectives import MultiObjectiveDPOLoss, PairwiseLosses, PreferenceLoss
from panacea_pl.rows import pair_rows


class PanaceaDPO(PanaceaModule):
    """Multi-objective DPO on preference-pair batches (see `panacea_pl.data.collate`).

    Logs per dimension `{stage}/{dimension}/loss`, `/accuracy` (implicit-reward accuracy) and
    `/margin` (mean implicit-reward margin of the preferred response), plus `{stage}/loss` (the
    aggregate that was optimised) and `train/lambda/{dimension}`.

    Args:
        policy: the causal LM with the Panacea adapter.
        loss: the per-dimension preference loss (`MultiObjectiveDPOLoss`, `MultiObjectiveIPOLoss`,
            the reference-free `CPOLoss`, or a user's `PreferenceLoss` subclass); a
            reference-free loss skips the reference pass.
        **kwargs: see `PanaceaModule` (aggregator, preference sampling, optimiser, …).
    """

    def __init__(self, policy: PanaceaPolicy, loss: PreferenceLoss | None = None, **kwargs):
        super().__init__(policy, **kwargs)
        self.loss = loss if loss is not None else MultiObjectiveDPOLoss()

    def dimension_losses(self, batch: dict, preference: torch.Tensor) -> PairwiseLosses:
        rows = preference if preference.dim() == 1 else pair_rows(preference)
        adapter = self.policy.adapter
        with adapter.preference(rows, checked=True):  # drawn on the simplex by the sampler
            policy_logps = self.policy.sequence_logprobs(batch)
        reference_logps = None
        if not self.loss.is_reference_free:
            with torch.no_grad(), adapter.disabled():
                reference_logps = self.policy.sequence_logprobs(batch)
        return self.loss(policy_logps, reference_logps, batch["labels"])

    def dimension_metrics(self, losses: PairwiseLosses) -> dict[str, torch.Tensor]:
        return {
            "loss": losses.dimension_means(),
            "accuracy": losses.accuracy(),
            "margin": losses.mean_margin(),
        }
