"""The fused Panacea linear function against autograd on the composed ops."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from panacea_pl.layers import PanaceaConfig
from panacea_pl.layers.functional import panacea_linear
from panacea_pl.layers.layer import AdapterState, PanaceaLinear

NAMES = ["x", "W", "b", "V", "sigma", "scale", "U"]


def composed(x, weight, bias, V, sigma, scale, lam, U, scaling):
    """The reference: y = x Wᵀ + b + ((x Vᵀ) ⊙ d) Uᵀ, d = c·[σ, s·λ], with plain autograd ops."""
    d = torch.cat([sigma.expand(*lam.shape[:-1], -1), scale * lam], -1) * scaling
    if d.dim() == 2:
        d = d.view(d.shape[0], *([1] * (x.dim() - 2)), d.shape[-1])
    out = x @ weight.T + ((x @ V.T) * d) @ U.T
    return out if bias is None else out + bias


def inputs(per_sample: bool, bias: bool, shape=(4, 6, 5), out_features=7, k=3, m=2):
    """(x, W, b, V, σ, s, λ, U) in float64, all but λ requiring grad."""
    g = torch.Generator().manual_seed(0)

    def rand(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_(True)

    lam = torch.rand(shape[0], m, generator=g, dtype=torch.float64) if per_sample else None
    lam = torch.tensor([0.3, 0.7], dtype=torch.float64) if lam is None else lam / lam.sum(1, True)
    return (
        rand(*shape),
        rand(out_features, shape[-1]),
        rand(out_features) if bias else None,
        rand(k + m, shape[-1]),
        rand(k),
        rand(1),
        lam,
        rand(out_features, k + m),
    )


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("scaling", [1.0, 0.5])
def test_fused_matches_composed_values_and_gradients(threads, per_sample, bias, scaling):
    """One token block (1 thread) and several (2 and 3 threads: per-sample λ splits by whole
    sequences, so 3 threads give 3 blocks for one λ but 1 for 4 sequences)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        args = inputs(per_sample, bias)
        grad_out = torch.randn(4, 6, 7, dtype=torch.float64)
        fused = panacea_linear(*args, scaling)
        wanted = composed(*args, scaling)
        torch.testing.assert_close(fused, wanted)
        trainable = [a for i, a in enumerate(args) if i != 6]
        named = [(n, a) for n, a in zip(NAMES, trainable, strict=True) if a is not None]
        tensors = [a for _, a in named]
        got = torch.autograd.grad(fused, tensors, grad_out)
        expected = torch.autograd.grad(wanted, tensors, grad_out)
        for (name, _), a, b in zip(named, got, expected, strict=True):
            torch.testing.assert_close(a, b, msg=lambda m, n=name: f"gradient of {n}: {m}")
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("per_sample", [False, True])
def test_gradcheck(per_sample):
    args = inputs(per_sample, bias=True, shape=(2, 3, 4))
    assert torch.autograd.gradcheck(lambda *a: panacea_linear(*a, 0.5), args)


@pytest.mark.parametrize("per_sample", [False, True])
def test_several_singular_values_per_preference(per_sample):
    """rank_per_preference r = 2: each s·λ_i scales r consecutive rows of V (columns of U)."""
    x, weight, bias, _, sigma, scale, lam, _ = inputs(per_sample, bias=True, shape=(2, 3, 4))
    g = torch.Generator().manual_seed(1)
    V = torch.randn(3 + 2 * 2, 4, generator=g, dtype=torch.float64).requires_grad_(True)
    U = torch.randn(7, 3 + 2 * 2, generator=g, dtype=torch.float64).requires_grad_(True)
    args = (x, weight, bias, V, sigma, scale, lam, U)
    wanted = composed(x, weight, bias, V, sigma, scale, lam.repeat_interleave(2, -1), U, 0.5)
    torch.testing.assert_close(panacea_linear(*args, 0.5, 2), wanted)
    assert torch.autograd.gradcheck(lambda *a: panacea_linear(*a, 0.5, 2), args)


def test_odd_token_count_and_frozen_inputs():
    """N not divisible by the thread count; no gradient asked for x, W or b."""
    x, weight, bias, V, sigma, scale, lam, U = inputs(per_sample=True, bias=True, shape=(3, 5, 4))
    x, weight, bias = (t.detach() for t in (x, weight, bias))
    trained = (V, sigma, scale, U)
    grads = torch.autograd.grad(
        panacea_linear(x, weight, bias, V, sigma, scale, lam, U).sum(), trained
    )
    wanted = torch.autograd.grad(
        composed(x, weight, bias, V, sigma, scale, lam, U, 1.0).sum(), trained
    )
    for a, b in zip(grads, wanted, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("base_cls", [nn.Linear, Conv1D])
def test_layer_fused_path_matches_its_composed_path(base_cls):
    """PanaceaLinear gives the same outputs and gradients either way (GPT-2's Conv1D too)."""
    torch.manual_seed(0)
    base = nn.Linear(6, 5) if base_cls is nn.Linear else Conv1D(5, 6)
    state = AdapterState(PanaceaConfig(num_general=2, num_preferences=2, alpha=2.0))
    layer = PanaceaLinear(base, state)
    with torch.no_grad():
        layer.panacea_U.normal_()
        layer.panacea_sigma.normal_()
    state.preference = torch.tensor([[0.2, 0.8], [0.6, 0.4]])
    x = torch.randn(2, 3, 6, requires_grad=True)
    assert layer._fused(x)
    fused = layer(x)
    composed_out = layer._forward_composed(x, layer.singular_values(state.preference))
    torch.testing.assert_close(fused, composed_out)
    params = [x, *(p for p in layer.parameters() if p.requires_grad)]
    got = torch.autograd.grad(fused.square().sum(), params)
    wanted = torch.autograd.grad(composed_out.square().sum(), params)
    for a, b in zip(got, wanted, strict=True):
        torch.testing.assert_close(a, b)


def test_dropout_and_mixed_dtypes_take_the_composed_path():
    base = nn.Linear(6, 5)
    layer = PanaceaLinear(base, AdapterState(PanaceaConfig(num_general=2, dropout=0.1)))
    x = torch.randn(2, 3, 6)
    assert not layer.train()._fused(x)
    assert layer.eval()._fused(x)
    assert not layer._fused(x.to(torch.bfloat16))


def test_bf16_adapter_on_bf16_base_takes_the_fused_path():
    """All-bf16 layers run fused and agree with the composed ops to bf16 precision."""
    torch.manual_seed(0)
    base = nn.Linear(16, 12).to(torch.bfloat16)
    state = AdapterState(PanaceaConfig(num_general=4, num_preferences=2, dtype="bfloat16"))
    layer = PanaceaLinear(base, state)
    with torch.no_grad():
        layer.panacea_U.normal_()
    state.preference = torch.tensor([0.25, 0.75])
    x = torch.randn(4, 8, 16, dtype=torch.bfloat16, requires_grad=True)
    assert layer._fused(x)
    fused = layer(x)
    composed_out = layer._forward_composed(x, layer.singular_values(state.preference))
    assert fused.dtype == torch.bfloat16
    torch.testing.assert_close(fused, composed_out, atol=0.05, rtol=0.02)
    (grad_u,) = torch.autograd.grad(fused.float().square().sum(), [layer.panacea_U])
    (wanted,) = torch.autograd.grad(composed_out.float().square().sum(), [layer.panacea_U])
    torch.testing.assert_close(grad_u.float(), wanted.float(), atol=0.5, rtol=0.05)


@pytest.mark.parametrize("per_sample", [False, True])
def test_empty_batch(per_sample):
    x, weight, bias, V, sigma, scale, lam, U = inputs(per_sample, bias=True)
    x = x[:0].detach().requires_grad_(True)
    lam = lam[:0] if per_sample else lam
    out = panacea_linear(x, weight, bias, V, sigma, scale, lam, U)
    assert out.shape == (0, 6, 7)
    out.sum().backward()
    assert torch.equal(V.grad, torch.zeros_like(V))


def test_autocast_takes_the_fused_path_in_autocast_dtype():
    """fp32 layer under bf16 autocast: fused, bf16 output, fp32 gradients matching the
    separate ops under the same autocast."""
    torch.manual_seed(0)
    layer = PanaceaLinear(nn.Linear(16, 12), AdapterState(PanaceaConfig(num_general=4)))
    with torch.no_grad():
        layer.panacea_U.normal_()
    layer.state.preference = torch.tensor([0.25, 0.75])
    x = torch.randn(4, 8, 16)
    params = [p for p in layer.parameters() if p.requires_grad]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer._fused(x)
        fused = layer(x)
        composed_out = layer._forward_composed(x, layer.singular_values(layer.state.preference))
    assert fused.dtype == torch.bfloat16
    torch.testing.assert_close(fused, composed_out.to(torch.bfloat16), atol=0.05, rtol=0.02)
    got = torch.autograd.grad(fused.float().square().sum(), params)
    wanted = torch.autograd.grad(composed_out.float().square().sum(), params)
    for a, b in zip(got, wanted, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=0.5, rtol=0.05)


def test_fp32_adapter_on_bf16_inputs_is_cast_inside_with_fp32_gradients():
    """x and W in bf16, U, V, σ, s, λ in fp32 (bf16 autocast's case): no autograd cast nodes
    between the parameters and the function, fp32 gradients close to the fp64 reference."""
    x, weight, _, V, sigma, scale, lam, U = inputs(per_sample=True, bias=False)
    adapter = [t.detach().float().requires_grad_(True) for t in (V, sigma, scale, U)]
    out = panacea_linear(
        x.detach().bfloat16(),
        weight.detach().bfloat16(),
        None,
        *adapter[:3],
        lam.float(),
        adapter[3],
    )
    assert out.dtype == torch.bfloat16
    parents = {type(fn).__name__ for fn, _ in out.grad_fn.next_functions if fn is not None}
    assert parents == {"AccumulateGrad"}, parents
    grads = torch.autograd.grad(out.float().sum(), adapter)
    wanted = torch.autograd.grad(
        composed(x.detach(), weight.detach(), None, V, sigma, scale, lam, U, 1.0).sum(),
        (V, sigma, scale, U),
    )
    for got, exact in zip(grads, wanted, strict=True):
        assert got.dtype == torch.float32
        assert (got.double() - exact).abs().max() <= 0.02 * exact.abs().max()


@pytest.mark.parametrize("per_sample", [False, True])
def test_torch_compile_traces_the_function_whole_with_eager_gradients(per_sample):
    """`torch.compile` (how CUDA graphs capture a step) sees one graph, no breaks: the CPU
    thread count that picks token blocks is not traceable, so a compiled call uses one block;
    values and gradients equal the eager call's."""
    torch._dynamo.reset()
    args = inputs(per_sample, bias=True)
    explained = torch._dynamo.explain(panacea_linear)(*args, 0.5)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), [
        r.reason for r in explained.break_reasons
    ]
    grad_out = torch.randn(4, 6, 7, dtype=torch.float64)
    compiled = torch.compile(panacea_linear, backend="aot_eager", fullgraph=True)
    results = []
    for fn in (panacea_linear, compiled):
        args = inputs(per_sample, bias=True)
        out = fn(*args, 0.5)
        grads = torch.autograd.grad(
            out, [a for a in args if a is not None and a.requires_grad], grad_out
        )
        results.append((out, grads))
    torch.testing.assert_close(results[1][0], results[0][0])
    for got, wanted in zip(results[1][1], results[0][1], strict=True):
        torch.testing.assert_close(got, wanted)
    torch._dynamo.reset()
