"""PanaceaDPO / PanaceaSFT on tiny models: the loss wiring, training, checkpoints, failures."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

import tiny
from panacea_pl.data.collate import SFTCollator
from panacea_pl.layers import PanaceaConfig, PanaceaLinear
from panacea_pl.models import PanaceaPolicy, sequence_logprobs
from panacea_pl.modules import PanaceaDPO, PanaceaSFT
from panacea_pl.objectives import MultiObjectiveDPOLoss, Tchebycheff


def policy(model_dir, num_general=4):
    return PanaceaPolicy(
        str(model_dir), adapter=PanaceaConfig(num_general=num_general, num_preferences=2)
    )


class OneHot(PanaceaDPO):
    """λ fixed at a corner, to compare with plain single-objective DPO."""

    def sample_preference(self, batch_size):
        return torch.tensor([1.0, 0.0])


def test_one_hot_lambda_is_plain_dpo_against_the_base_model(tiny_model_dir):
    rows, collate = tiny.pair_rows(tiny_model_dir)
    batch = collate(rows)
    module = OneHot(policy(tiny_model_dir), loss=MultiObjectiveDPOLoss(beta=0.5))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter
        for layer in module.policy.adapter.layers.values():
            layer.panacea_U.copy_(torch.randn(layer.panacea_U.shape, generator=gen) * 0.2)
    loss = module._shared_step(batch, "train")

    base = tiny.load(tiny_model_dir)
    with torch.no_grad(), module.policy.adapter.preference([1.0, 0.0]):
        pol = sequence_logprobs(
            module.policy(batch["input_ids"], batch["attention_mask"]),
            batch["input_ids"],
            batch["response_mask"],
        )[0]
        ref = sequence_logprobs(
            base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
            batch["input_ids"],
            batch["response_mask"],
        )[0]
    b = len(rows)
    expected = []
    for i, labels in enumerate(tiny.LABELS):
        if labels[0] == 0:
            continue
        h = (pol[i] - ref[i]) - (pol[b + i] - ref[b + i])
        expected.append(-F.logsigmoid(0.5 * labels[0] * h))
    torch.testing.assert_close(loss, torch.stack(expected).mean(), rtol=1e-5, atol=1e-6)


def fit(module, rows, collate, tmp_path, steps, **trainer_kwargs):
    loader = DataLoader(rows, batch_size=2, collate_fn=collate, shuffle=False)
    trainer = tiny.quiet_trainer(
        max_steps=steps,
        default_root_dir=tmp_path,
        **trainer_kwargs,
    )
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    return trainer


@pytest.mark.slow
def test_training_lowers_the_loss_and_logs_per_dimension(tiny_llama_dir, tmp_path):
    rows, collate = tiny.pair_rows(tiny_llama_dir)
    module = PanaceaDPO(
        policy(tiny_llama_dir),
        dimension_names=["helpful", "harmless"],
        optimizer=lambda p: torch.optim.Adam(p, lr=2e-2),
    )
    batch = collate(rows)
    centre = torch.tensor([0.5, 0.5])

    def loss_at_centre():
        with torch.no_grad():
            return module.aggregate(module.dimension_losses(batch, centre), centre).item()

    before = loss_at_centre()
    trainer = fit(module, rows, collate, tmp_path, steps=30, enable_checkpointing=False)
    after = loss_at_centre()
    assert after < before - 0.05
    logged = trainer.callback_metrics
    for key in [
        "train/helpful/loss",
        "train/harmless/accuracy",
        "train/lambda/helpful",
        "val/helpful/margin",
        "val/harmless/loss",
        "val/loss",
    ]:
        assert key in logged, sorted(logged)


@pytest.mark.slow
def test_bf16_mixed_training_lowers_the_loss(tiny_llama_dir, tmp_path, monkeypatch):
    """The precision of the 7B configs: the adapter runs fused under autocast and learns."""

    def not_fused(*args):
        raise AssertionError("the adapter left the fused path under bf16-mixed")

    monkeypatch.setattr(PanaceaLinear, "_forward_composed", not_fused)
    rows, collate = tiny.pair_rows(tiny_llama_dir)
    module = PanaceaDPO(policy(tiny_llama_dir), optimizer=lambda p: torch.optim.Adam(p, lr=2e-2))
    batch = collate(rows)
    centre = torch.tensor([0.5, 0.5])

    def loss_at_centre():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return module.aggregate(module.dimension_losses(batch, centre), centre).item()

    before = loss_at_centre()
    fit(
        module,
        rows,
        collate,
        tmp_path,
        steps=20,
        precision="bf16-mixed",
        enable_checkpointing=False,
    )
    after = loss_at_centre()
    assert after < before - 0.05
    assert all(p.dtype == torch.float32 for p in module.policy.adapter.parameters())


def test_tchebycheff_per_sample_training_runs(tiny_gpt2_dir, tmp_path):
    rows, collate = tiny.pair_rows(tiny_gpt2_dir)
    module = PanaceaDPO(
        policy(tiny_gpt2_dir),
        aggregator=Tchebycheff(ideal="running", num_preferences=2),
        per_sample_preference=True,
    )
    logger = CSVLogger(tmp_path, name="logs")
    fit(module, rows, collate, tmp_path, steps=4, enable_checkpointing=False, logger=logger)
    assert torch.isfinite(module.aggregator.ideal_point).all()
    # dashboards group runs by it; it is logged, not a module argument (resume reads those back)
    hparams = yaml.safe_load((Path(logger.log_dir) / "hparams.yaml").read_text())
    assert hparams["aggregation"] == "Tchebycheff"
    assert "aggregation" not in module.hparams


def test_checkpoint_holds_adapter_and_sampler_and_resumes_the_lambda_sequence(
    tiny_llama_dir, tmp_path
):
    rows, collate = tiny.pair_rows(tiny_llama_dir)
    module = PanaceaDPO(policy(tiny_llama_dir), seed=3)
    trainer = fit(module, rows, collate, tmp_path, steps=2, enable_checkpointing=False)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    keys = set(ckpt["state_dict"])
    assert keys and all("panacea_" in k for k in keys), sorted(keys)[:5]
    assert "panacea_preference_sampler" in ckpt and ckpt["optimizer_states"]
    expected_next = module.sampler.sample()

    resumed = PanaceaDPO(policy(tiny_llama_dir), seed=999)
    resumed.on_load_checkpoint(ckpt)
    resumed.load_state_dict(ckpt["state_dict"], strict=False)
    torch.testing.assert_close(resumed.sampler.sample(), expected_next)
    for name, p in module.policy.adapter.named_parameters():
        torch.testing.assert_close(dict(resumed.policy.adapter.named_parameters())[name], p)


def test_non_finite_loss_names_step_lambda_and_dimensions(tiny_llama_dir):
    rows, collate = tiny.pair_rows(tiny_llama_dir)
    module = PanaceaDPO(policy(tiny_llama_dir), dimension_names=["helpful", "harmless"])
    with torch.no_grad():
        next(iter(module.policy.adapter.layers.values())).panacea_scale.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"global step 0.*λ=.*'helpful'"):
        module._shared_step(collate(rows), "train")


def test_sft_one_hot_is_the_nll_of_that_dimension(tiny_llama_dir):
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    rows = [
        {
            "prompt_ids": [tok.bos_token_id, *tok(p)["input_ids"]],
            "target_ids": [*tok(r[0])["input_ids"], tok.eos_token_id],
            "dimension": i % 2,
        }
        for i, (p, r) in enumerate(zip(tiny.PROMPTS, tiny.RESPONSES, strict=True))
    ]
    batch = SFTCollator(pad_token_id=tok.pad_token_id)(rows)

    class Corner(PanaceaSFT):
        def sample_preference(self, batch_size):
            return torch.tensor([0.0, 1.0])

    module = Corner(policy(tiny_llama_dir))
    loss = module._shared_step(batch, "train")
    base = tiny.load(tiny_llama_dir)  # identity at init: the policy is the base model
    with torch.no_grad():
        logits = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps, lengths = sequence_logprobs(logits, batch["input_ids"], batch["response_mask"])
    nll = -(logps / lengths)[batch["dimension"] == 1].mean()
    torch.testing.assert_close(loss, nll, rtol=1e-5, atol=1e-6)


class RecordingDPO(PanaceaDPO):
    """Records every training λ, to compare an interrupted run with an uninterrupted one."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def sample_preference(self, batch_size):
        lam = super().sample_preference(batch_size)
        self.seen.append(lam.tolist())
        return lam


def test_resumed_fit_continues_the_same_lambda_sequence_and_weights(tiny_llama_dir, tmp_path):
    rows, collate = tiny.pair_rows(tiny_llama_dir)

    def run(max_epochs, root, ckpt_path=None):
        torch.manual_seed(0)
        module = RecordingDPO(policy(tiny_llama_dir), seed=5)
        loader = DataLoader(rows, batch_size=2, collate_fn=collate)
        trainer = tiny.quiet_trainer(
            max_epochs=max_epochs,
            default_root_dir=root,
            num_sanity_val_steps=0,
            callbacks=[pl.callbacks.ModelCheckpoint(dirpath=root, save_last=True)],
        )
        trainer.fit(module, loader, ckpt_path=ckpt_path)
        return module

    full = run(2, tmp_path / "full")
    run(1, tmp_path / "part")
    resumed = run(2, tmp_path / "part", ckpt_path=str(tmp_path / "part" / "last.ckpt"))
    assert len(full.seen) == 4 and resumed.seen == full.seen[2:]
    for (name, a), (_, b) in zip(
        full.policy.adapter.named_parameters(),
        resumed.policy.adapter.named_parameters(),
        strict=True,
    ):
        torch.testing.assert_close(a, b, msg=name)


def test_a_reference_free_loss_skips_the_reference_pass(tiny_llama_dir, monkeypatch):
    from panacea_pl.objectives import CPOLoss

    rows, collate = tiny.pair_rows(tiny_llama_dir)
    module = PanaceaDPO(policy(tiny_llama_dir), loss=CPOLoss(beta=0.1))
    batch = collate(rows[:2])
    disabled = []
    original = module.policy.adapter.disabled

    def counting_disabled(*args, **kwargs):
        disabled.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module.policy.adapter, "disabled", counting_disabled)
    losses = module.dimension_losses(batch, torch.tensor([0.5, 0.5]))
    assert torch.isfinite(losses.losses).all() and not disabled
    module.loss = MultiObjectiveDPOLoss(beta=0.1)
    module.dimension_losses(batch, torch.tensor([0.5, 0.5]))
    assert disabled  # DPO does run the reference
