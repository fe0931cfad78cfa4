"""PanaceaOnlineDPO on tiny models and its pair labels: hand-computed labels and pair layout, the
loss of a rollout equal to the λ-weighted DPO loss computed by hand, one-hot λ with the reward's
order as the judge is TRL's single-objective online DPO, a short fit, and the shipped stories
config through the `panacea-pl` console script."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from panacea_pl.evaluation.crn import GumbelSampler, mix32
from panacea_pl.layers import PanaceaConfig
from panacea_pl.models import PanaceaPolicy
from panacea_pl.modules import PanaceaOnlineDPO
from panacea_pl.objectives import (
    BradleyTerryLabels,
    MultiObjectiveDPOLoss,
    RewardOrderLabels,
    Tchebycheff,
)
from panacea_pl.rows import group_members, within_group_pairs
from test_entry_points import assert_quiet
from test_modules_ppo import TokenShare, fit_on_prompts, prompt_batch

ROOT = Path(__file__).resolve().parents[1]


def test_bradley_terry_labels_by_hand():
    a = torch.tensor([[0.10, 0.00], [0.00, 0.05]])
    b = torch.tensor([[0.06, 0.00], [0.04, 0.01]])
    soft = BradleyTerryLabels(temperature=0.04)(a, b)
    # σ(1) = 0.731059, so y = 2σ − 1 = 0.462117; σ(−1) → −0.462117; equal rewards → 0
    expected = torch.tensor([[0.462117, 0.0], [-0.462117, 0.462117]])
    torch.testing.assert_close(soft, expected, atol=1e-6, rtol=0)
    per_dim = BradleyTerryLabels(temperature=[0.04, 0.02])(a, b)
    torch.testing.assert_close(per_dim[1, 1], 2 * torch.sigmoid(torch.tensor(2.0)) - 1)
    assert BradleyTerryLabels(0.04).effective_kl_coef(1.25) == pytest.approx(0.05)
    assert BradleyTerryLabels([0.04, 0.02]).effective_kl_coef(1.25) is None
    torch.manual_seed(0)
    big_a, big_b = a[:1].repeat(20000, 1), b[:1].repeat(20000, 1)
    drawn = BradleyTerryLabels(0.04, soft=False)(big_a, big_b)
    assert set(drawn.unique().tolist()) == {-1.0, 1.0}
    # P(+1) = σ(1) = 0.7311; 20,000 draws: standard error 0.0031
    assert abs((drawn[:, 0] == 1).float().mean().item() - 0.731059) < 0.013
    order = RewardOrderLabels()(a, b)
    torch.testing.assert_close(order, torch.tensor([[1.0, 0.0], [-1.0, 1.0]]))


def test_labels_clear_errors():
    with pytest.raises(ValueError, match="temperature"):
        BradleyTerryLabels(temperature=0.0)
    with pytest.raises(ValueError, match=r"\[P, m\]"):
        BradleyTerryLabels()(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="3 temperatures for 2 dimensions"):
        BradleyTerryLabels([0.1, 0.2, 0.3])(torch.zeros(3, 2), torch.zeros(3, 2))


def test_group_rows_and_every_unordered_pair_within_each_group():
    pairs = within_group_pairs(2, 3)
    assert pairs.tolist() == [[0, 1], [0, 2], [1, 2], [3, 4], [3, 5], [4, 5]]
    assert within_group_pairs(3, 2).tolist() == [[0, 1], [2, 3], [4, 5]]
    assert group_members(torch.tensor([2, 0]), 3).tolist() == [6, 7, 8, 0, 1, 2]


def build(model_dir, **kwargs) -> PanaceaOnlineDPO:
    torch.manual_seed(0)
    policy = PanaceaPolicy(str(model_dir), adapter=PanaceaConfig(num_general=2, num_preferences=2))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter, so that λ and the reference matter
        for layer in policy.adapter.layers.values():
            layer.panacea_U.copy_(torch.randn(layer.panacea_U.shape, generator=gen) * 0.3)
    settings = dict(
        responses_per_prompt=3,
        max_new_tokens=5,
        labeler=BradleyTerryLabels(temperature=0.2),
        loss=MultiObjectiveDPOLoss(beta=0.5),
    )
    return PanaceaOnlineDPO(policy, TokenShare(), **(settings | kwargs))


def response_logps(module, scored, lam_rows, reference=False) -> torch.Tensor:
    """Σ_t log π(y_t) over each response, one row at a time (no batching shared with the module)."""
    out = []
    policy, rollout = module.policy, scored.rollout
    for r in range(len(scored)):
        seq = rollout.sequences[r : r + 1]
        mask = rollout.attention_mask[r : r + 1]
        context = policy.reference() if reference else policy.preference(lam_rows[r : r + 1])
        with torch.no_grad(), context:
            logits = policy.model(
                input_ids=seq, attention_mask=mask, position_ids=rollout.position_ids[r : r + 1]
            ).logits
        token = torch.log_softmax(logits[0, :-1].float(), -1).gather(-1, seq[0, 1:, None])[:, 0]
        out.append((token * scored.mask[r]).sum())
    return torch.stack(out)


def log_ratios(module, scored) -> torch.Tensor:
    """[N] log π(y|λ) − log π_ref(y) of each response, row by row."""
    policy = response_logps(module, scored, scored.preference)
    return policy - response_logps(module, scored, None, reference=True)


def test_the_loss_of_a_rollout_is_the_lambda_weighted_dpo_loss_by_hand(tiny_llama_dir):
    """4 prompts × 3 responses at one λ per prompt: 12 pairs; each pair's loss in dimension i is
    −p log σ(β h) − (1 − p) log σ(−β h) with p = σ(Δr_i/τ), h the pair's log-ratio margin, and the
    optimised loss is the mean of Σ_i λ_i L_i over the pairs labelled in some dimension."""
    module = build(tiny_llama_dir).train()
    scored = module.score_rollout(prompt_batch(tiny_llama_dir))
    assert len(scored) == 12 and scored.logps is None
    groups = scored.preference.view(4, 3, 2)
    torch.testing.assert_close(groups, groups[:, :1].expand(-1, 3, -1))
    losses, preference, labels = module.pair_losses(scored, torch.arange(4))
    loss = module.aggregate(losses, preference)
    ratio = log_ratios(module, scored)
    expected = []
    for j in range(4):
        for g, h in ((0, 1), (0, 2), (1, 2)):
            a, b = 3 * j + g, 3 * j + h
            margin = 0.5 * (ratio[a] - ratio[b])
            p = torch.sigmoid((scored.rewards[a] - scored.rewards[b]) / 0.2)
            per_dim = -p * F.logsigmoid(margin) - (1 - p) * F.logsigmoid(-margin)
            lam = scored.preference[a]
            if (p == 0.5).all():  # tied in every dimension: unlabelled, not in the mean
                continue
            per_dim = torch.where(p == 0.5, 0.0, per_dim)  # a tie is unlabelled
            expected.append((lam * per_dim).sum())

    torch.testing.assert_close(preference, scored.preference[::3].repeat_interleave(3, 0))
    assert len(expected) >= 6, "most pairs tied: pick other prompts"
    torch.testing.assert_close(
        labels,
        2
        * torch.sigmoid(
            torch.stack(
                [
                    scored.rewards[3 * j + g] - scored.rewards[3 * j + h]
                    for j in range(4)
                    for g, h in ((0, 1), (0, 2), (1, 2))
                ]
            )
            / 0.2
        )
        - 1,
    )
    torch.testing.assert_close(loss, torch.stack(expected).mean(), atol=1e-5, rtol=1e-5)


def test_one_hot_lambda_with_the_reward_order_is_single_objective_online_dpo(tiny_llama_dir):
    """TRL's OnlineDPOTrainer: two responses per prompt, the higher-reward one chosen, loss
    −log σ(β·(h_chosen − h_rejected)). With λ = e_0 and `RewardOrderLabels` that is ours (pairs
    tied in dimension 0 are unlabelled and left out of the mean)."""
    module = build(tiny_llama_dir, responses_per_prompt=2, labeler=RewardOrderLabels()).train()
    one_hot = torch.tensor([1.0, 0.0])
    scored = module.score_rollout(prompt_batch(tiny_llama_dir), one_hot)
    losses, preference, _ = module.pair_losses(scored, torch.arange(4))
    loss = module.aggregate(losses, preference)
    ratio = log_ratios(module, scored)
    terms = []
    for j in range(4):
        r = scored.rewards[2 * j : 2 * j + 2, 0]
        if r[0] == r[1]:
            continue
        chosen, rejected = (2 * j, 2 * j + 1) if r[0] > r[1] else (2 * j + 1, 2 * j)
        terms.append(-F.logsigmoid(0.5 * (ratio[chosen] - ratio[rejected])))
    assert terms, "every pair tied: pick other prompts"
    torch.testing.assert_close(loss, torch.stack(terms).mean(), atol=1e-5, rtol=1e-5)


def read_metrics(log_dir: Path) -> list[dict[str, str]]:
    with open(log_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_fit_with_minibatches_and_tchebycheff_trains_and_logs(tiny_llama_dir, tmp_path):
    module = build(
        tiny_llama_dir,
        aggregator=Tchebycheff(ideal=0.0),
        epochs=2,
        minibatch_size=1,
        optimizer=lambda params: torch.optim.AdamW(params, lr=0.01, weight_decay=0.0),
    )
    trainer, before = fit_on_prompts(module, tiny_llama_dir, tmp_path, "odpo")
    # 2 batches × 2 prompts; 2 epochs × 2 minibatches of 1 prompt = 4 steps per batch
    assert trainer.global_step == 8
    after = module.policy.adapter.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    metrics = trainer.logged_metrics
    for key in ("train/even/reward", "train/odd/label", "train/kl", "train/lambda/even", "val/kl"):
        assert key in metrics, key
    assert 0 <= metrics["train/odd/label"] <= 1
    assert metrics["train/kl"] != 0
    assert math.isfinite(float(metrics["train/loss"]))


def test_clear_errors(tiny_llama_dir):
    with pytest.raises(ValueError, match="responses_per_prompt"):
        build(tiny_llama_dir, responses_per_prompt=1)
    with pytest.raises(ValueError, match="epochs"):
        build(tiny_llama_dir, epochs=0)
    module = build(tiny_llama_dir, dimension_names=["odd", "even"])
    with pytest.raises(ValueError, match="in the same order"):
        module.on_fit_start()


@pytest.mark.slow
def test_shipped_online_dpo_config_fits_through_the_console_script(
    shared_data, tmp_path, panacea_cli
):
    """`panacea-pl fit --config experiments/stories/panacea_online_dpo.yaml` with tiny overrides,
    in a process of its own (`panacea_cli`): exit 0, quiet, a checkpoint after the expected
    steps, per-dimension metrics."""
    args = [
        "fit",
        "--config",
        str(ROOT / "experiments" / "stories" / "panacea_online_dpo.yaml"),
        "--trainer.max_epochs=2",
        "--trainer.callbacks=[]",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.save_dir={tmp_path}",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
        "--model.init_args.responses_per_prompt=2",
        "--model.init_args.max_new_tokens=8",
        "--data.init_args.num_prompts=4",
        "--data.init_args.batch_size=4",
    ]
    code, out = panacea_cli.run(args, cwd=tmp_path, env={"PANACEA_DATA_DIR": str(shared_data)})
    assert code == 0, out[-6000:]
    assert_quiet(out)
    state = torch.load(next(tmp_path.rglob("last.ckpt")), weights_only=False)
    assert state["global_step"] == 2  # one optimiser step per iteration
    rows = read_metrics(next(tmp_path.rglob("metrics.csv")).parent)
    assert {"train/happy/label", "train/sad/objective", "train/kl"} <= set().union(*rows)


class PromptKeyedSampler(GumbelSampler):
    """Keyed sampling whose noise depends on the prompt's tokens and the response's index within
    its group only: the same responses whichever rank and batch a prompt lands in."""

    def __init__(self, group_size: int, pad_token_id: int):
        super().__init__(torch.zeros(0, dtype=torch.int64), prompt_width=0)
        self.group_size, self.pad_token_id = group_size, pad_token_id
        self.last_length = None

    def __call__(self, input_ids, scores):
        if self.last_length is None or input_ids.shape[1] <= self.last_length:  # a new generate
            self.prompt_width = input_ids.shape[1]
            keys = []
            for row, ids in enumerate(input_ids.tolist()):
                key = row % self.group_size
                for token in (t for t in ids if t != self.pad_token_id):
                    key = int(mix32(torch.tensor(key * 31 + token)))
                keys.append(key)
            self.keys = torch.tensor(keys)
        self.last_length = input_ids.shape[1]
        return super().__call__(input_ids, scores)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ddp_processes_equal_one_with_the_global_batch(tiny_llama_dir, tmp_path):
    """Prompt-keyed sampling (so both runs draw the same responses), one λ per prompt dealt like
    the prompts, the aggregator's means over the global batch: 2 ranks × 2 prompts train the
    weights 1 × 4 prompts do."""
    from test_modules_grpo import fit_ranks

    pad = build(tiny_llama_dir).tokenizer.pad_token_id

    def module():
        sampler = PromptKeyedSampler(group_size=3, pad_token_id=pad)
        return build(
            tiny_llama_dir,
            generation_kwargs={"do_sample": False, "logits_processor": [sampler]},
            # SGD: Adam's first step g/(|g| + ε) would magnify float noise in small gradients
            optimizer=lambda params: torch.optim.SGD(params, lr=1.0),
        )

    single = module()
    initial = {k: p.detach().clone() for k, p in single.named_parameters() if p.requires_grad}
    fit_ranks(single, tmp_path / "one", batch_size=4)
    fit_ranks(
        module(), tmp_path / "two", batch_size=2, devices=2, accelerator="cpu", strategy="ddp_fork"
    )
    one = torch.load(tmp_path / "one" / "rank0.pt")
    ranks = [torch.load(tmp_path / "two" / f"rank{r}.pt") for r in (0, 1)]
    assert any(not torch.equal(initial[k], one[k]) for k in initial)
    for key, value in one.items():
        torch.testing.assert_close(ranks[0][key], value, msg=lambda m, k=key: f"{k}: {m}")
        torch.testing.assert_close(ranks[1][key], value, msg=lambda m, k=key: f"{k}: {m}")
