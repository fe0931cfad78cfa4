"""Averaging trained adapters: the average's update is its members' mean update at every λ."""

from __future__ import annotations

import pytest
import torch

import tiny
from panacea_pl.layers import (
    AdapterLoadError,
    PanaceaConfig,
    export_peft,
    inject_adapter,
    load_adapter,
    save_adapter,
)
from panacea_pl.layers.average import average_adapters, read_member, save_average
from panacea_pl.modules.base import ADAPTER_CONFIG_KEY

LAMBDAS = [[1.0, 0.0], [0.3, 0.7], [0.0, 1.0]]


def trained_like(model_dir, config: PanaceaConfig, seed: int):
    """An adapter with every part away from its initial value, as after training."""
    torch.manual_seed(seed)
    adapter = inject_adapter(tiny.load(model_dir), config)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.numel() <= 4 else 0.0))
    return adapter


def as_checkpoint(adapter, path):
    """The two entries of a Panacea module's Lightning checkpoint that `read_member` reads."""
    state = {f"policy.model.{k}": v for k, v in adapter.state_dict().items()}
    state["policy.model.model.embed_tokens.weight"] = torch.zeros(3)  # not the adapter's
    torch.save({"state_dict": state, ADAPTER_CONFIG_KEY: adapter.config.to_dict()}, path)
    return path


def test_the_average_is_the_members_mean_update_at_every_lambda(tiny_llama_dir, tmp_path):
    """Members of different shapes (k, singular values per dimension, alpha) from a checkpoint
    and an adapter folder; the folder written loads into a fresh base model."""
    a = trained_like(tiny_llama_dir, PanaceaConfig(num_general=2, num_preferences=2, alpha=3.0), 0)
    b = trained_like(
        tiny_llama_dir, PanaceaConfig(num_general=0, num_preferences=2, rank_per_preference=2), 1
    )
    save_adapter(a, tmp_path / "a")
    average = save_average(
        [tmp_path / "a", as_checkpoint(b, tmp_path / "b.ckpt")],
        tmp_path / "average",
        weights=[0.25, 0.75],
    )
    loaded = load_adapter(tiny.load(tiny_llama_dir), average)
    assert loaded.config.num_general == 2 and loaded.config.rank_per_preference == 3
    for name, layer in loaded.layers.items():
        for lam in LAMBDAS:
            lam = torch.tensor(lam)
            wanted = 0.25 * a.layers[name].delta_weight(lam) + 0.75 * b.layers[name].delta_weight(
                lam
            )
            torch.testing.assert_close(layer.delta_weight(lam), wanted, rtol=1e-5, atol=1e-6)
    # one member: the run's own adapter, written as a folder from its checkpoint
    alone = load_adapter(
        tiny.load(tiny_llama_dir), save_average([tmp_path / "b.ckpt"], tmp_path / "b")
    )
    for name, layer in alone.layers.items():
        lam = torch.tensor([0.3, 0.7])
        wanted = b.layers[name].delta_weight(lam)
        torch.testing.assert_close(layer.delta_weight(lam), wanted, rtol=1e-5, atol=1e-6)
    # and the forward pass (the fused path, per-sample λ) agrees with the merged mean weights
    x = torch.randint(0, 100, (2, 5))
    lam = torch.tensor([[0.3, 0.7], [1.0, 0.0]])
    with loaded.preference(lam):
        got = loaded.model(x).logits
    for row in range(2):
        merged = tiny.load(tiny_llama_dir)
        modules = dict(merged.named_modules())
        with torch.no_grad():
            for name in loaded.layers:
                delta = sum(
                    w * m.layers[name].delta_weight(lam[row]) for w, m in ((0.25, a), (0.75, b))
                )
                modules[name].weight += delta
        torch.testing.assert_close(got[row], merged(x[row : row + 1]).logits[0], atol=1e-4, rtol=0)


def test_refuses_members_that_cannot_be_averaged(tiny_llama_dir, tiny_gpt2_dir, tmp_path):
    two = trained_like(tiny_llama_dir, PanaceaConfig(num_general=0, num_preferences=2), 0)
    three = trained_like(tiny_llama_dir, PanaceaConfig(num_general=0, num_preferences=3), 0)
    other_layers = trained_like(
        tiny_llama_dir,
        PanaceaConfig(num_general=0, num_preferences=2, target_modules=["q_proj"]),
        0,
    )
    paths = {}
    for name, adapter in (("two", two), ("three", three), ("q", other_layers)):
        paths[name] = save_adapter(adapter, tmp_path / name)
    members = {name: read_member(path) for name, path in paths.items()}
    with pytest.raises(ValueError, match="at least one adapter, got none"):
        average_adapters([])
    with pytest.raises(ValueError, match="has m = 3 preference dimensions, .* has 2"):
        average_adapters([members["two"], members["three"]])
    with pytest.raises(ValueError, match="adapt different layers"):
        average_adapters([members["two"], members["q"]])
    with pytest.raises(ValueError, match="3 weights for 2 adapters"):
        average_adapters([members["two"], members["two"]], [0.2, 0.3, 0.5])
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(AdapterLoadError, match="junk.ckpt is not a readable checkpoint"):
        read_member(tmp_path / "junk.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(AdapterLoadError, match="plain.ckpt holds no Panacea adapter"):
        read_member(tmp_path / "plain.ckpt")
    with pytest.raises(AdapterLoadError, match="nowhere: no such checkpoint or adapter folder"):
        read_member(tmp_path / "nowhere")


def test_an_average_exports_to_peft_and_merges_like_any_adapter(tiny_llama_dir, tmp_path):
    """Its rank is the runs' ranks added up; the PEFT LoRA at one λ, and the base model with
    that λ's update merged in, serve the same logits."""
    peft = pytest.importorskip("peft")
    runs = [
        trained_like(tiny_llama_dir, PanaceaConfig(num_general=1, num_preferences=2), seed)
        for seed in (0, 1)
    ]
    paths = [save_adapter(run, tmp_path / f"run{i}") for i, run in enumerate(runs)]
    average = load_adapter(tiny.load(tiny_llama_dir), save_average(paths, tmp_path / "average"))
    assert average.config.total_rank == 2 * runs[0].config.total_rank
    x = torch.randint(0, 100, (2, 5))
    with average.preference([0.2, 0.8]):
        expected = average.model(x).logits
    export_peft(average, tmp_path / "lora", [0.2, 0.8])
    served = peft.PeftModel.from_pretrained(tiny.load(tiny_llama_dir), tmp_path / "lora").eval()
    torch.testing.assert_close(served(x).logits, expected, rtol=1e-5, atol=1e-5)
    average.merge([0.2, 0.8])  # and merged into the base weights, as the README says
    torch.testing.assert_close(average.model(x).logits, expected, rtol=1e-5, atol=1e-5)


def test_refuses_a_changed_folder_and_a_diverged_checkpoint(tiny_llama_dir, tmp_path):
    """The same checks as `load_adapter`: the weights' recorded sha256, and finite values."""
    adapter = trained_like(tiny_llama_dir, PanaceaConfig(num_general=0, num_preferences=2), 0)
    folder = save_adapter(adapter, tmp_path / "run")
    weights = folder / "panacea_adapter.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in a weight: still a readable safetensors file
    weights.write_bytes(bytes(data))
    with pytest.raises(AdapterLoadError, match="run/panacea_adapter.safetensors is truncated or"):
        read_member(folder)
    with torch.no_grad():
        next(iter(adapter.layers.values())).panacea_V[0, 0] = float("nan")
    with pytest.raises(AdapterLoadError, match=r"nan.ckpt: 1 adapter tensors hold NaN .*panacea_V"):
        read_member(as_checkpoint(adapter, tmp_path / "nan.ckpt"))


@pytest.mark.slow
def test_the_console_command_writes_weights_and_refuses_bad_members(tiny_llama_dir, tmp_path):
    """`panacea-pl average` in a subprocess: the weights given are the ones recorded, and bad
    input exits with status 2 and a message naming the file or the count."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    command = Path(sys.executable).with_name("panacea-pl")
    paths = [
        str(save_adapter(trained_like(tiny_llama_dir, PanaceaConfig(0, 2), s), tmp_path / f"r{s}"))
        for s in (0, 1)
    ]

    def run(*args):
        return subprocess.run(
            [str(command), "average", *args], cwd=tmp_path, capture_output=True, text=True
        )

    done = run("--out", "avg", *paths, "--weights", "0.3", "0.7")
    assert done.returncode == 0, done.stderr
    assert "averaged 2 adapters into avg" in done.stdout and not done.stderr
    meta = json.loads((tmp_path / "avg" / "panacea_config.json").read_text())
    assert meta["weights"] == [0.3, 0.7] and meta["averaged_from"] == paths
    for args, message in (
        (("--out", "x", *paths, "--weights", "1"), "1 weights for 2 adapters"),
        (("--out", "x", paths[0], "missing.ckpt"), "missing.ckpt: no such checkpoint or adapter"),
    ):
        failed = run(*args)
        assert failed.returncode == 2 and message in failed.stderr, failed.stderr
        assert "Traceback" not in failed.stderr
        assert not (tmp_path / "x").exists()
