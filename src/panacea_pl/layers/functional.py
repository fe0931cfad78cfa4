"""The Panacea layer's forward and backward as one autograd function.

    y = x Wᵀ + b + ((x Vᵀ) ⊙ d) Uᵀ,    d = c · [σ_1 … σ_k, s·λ_1 … s·λ_m]

Autograd on the composed ops is correct but slow on CPU; this function removes the causes
(each measured with `bench/adapter_overhead.py`):
- BLAS runs a GEMM with only r = k + m rows on one side on about one thread, and 2–5× slower
  still when r is the output's contiguous dimension. Here the tokens are split into one block
  per CPU thread and every rank-r product is a `bmm` over those blocks, with the rank-r
  intermediates kept r-major: [blocks, r, tokens per block].
- Autograd adds the base and the adapter contributions to y and to ∂x in separate passes over
  the full activation; here the adapter's GEMM accumulates into the base GEMM's result.
- d is built inside, so σ, s and λ add no autograd nodes of their own.
On a GPU at a few thousand tokens per step the step waits on kernel launches, not on the GPU
(`bench/gpu/adapter_paths.py`), so the function also keeps its kernel count down: U, V and d
are cast to x's dtype inside it (fp32 adapters under bf16 autocast need no autograd cast nodes),
and with one block there are no per-block sums or copies.
"""

from __future__ import annotations

import math

import torch


def singular_values(
    sigma: torch.Tensor,
    scale: torch.Tensor,
    preference: torch.Tensor,
    scaling: float,
    rank_per_preference: int = 1,
) -> torch.Tensor:
    """d = c · [σ_1 … σ_k, s·λ_1 … s·λ_m]: [k + m] for λ [m], [B, k + m] for λ [B, m]; with
    `rank_per_preference` r, each s·λ_i r times in a row ([k + m·r])."""
    if preference.dim() > 1:
        sigma = sigma.expand(*preference.shape[:-1], sigma.shape[0])
    if rank_per_preference > 1:
        preference = preference.repeat_interleave(rank_per_preference, dim=-1)
    d = torch.cat([sigma, scale * preference], dim=-1)
    return d if scaling == 1.0 else d * scaling


def _token_blocks(tokens: int, d: torch.Tensor, device: torch.device) -> int:
    """Up to one block of tokens per CPU thread, splitting evenly (whole sequences per block
    for per-sample d); one block on GPUs and under `torch.compile` (the thread count is not
    traceable)."""
    if device.type != "cpu" or torch.compiler.is_compiling():
        return 1
    rows = tokens if d.dim() == 1 else d.shape[0]
    return max(math.gcd(torch.get_num_threads(), rows), 1)


def _scale(h: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """h [blocks, r, n] ⊙ d, for d [r] (one λ) or [B, r] (one row per sequence)."""
    if d.dim() == 1:
        return h * d.view(1, -1, 1)
    blocks, r, n = h.shape
    per_block = d.shape[0] // blocks
    d = d.view(blocks, per_block, r).transpose(1, 2).unsqueeze(-1)  # [blocks, r, B/blocks, 1]
    return (h.view(blocks, r, per_block, n // max(per_block, 1)) * d).view(blocks, r, n)


def _reduce(p: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """∂d from the per-token products p [blocks, r, n]: summed over tokens to d's shape, in
    fp32 at least (bf16 products summed straight into fp32)."""
    dtype = torch.promote_types(p.dtype, torch.float32)
    if d.dim() == 1:
        return p.sum((0, 2), dtype=dtype)
    blocks, r, n = p.shape
    per_block = d.shape[0] // blocks
    per_sequence = p.view(blocks, r, per_block, n // max(per_block, 1)).sum(-1, dtype=dtype)
    return per_sequence.transpose(1, 2).reshape(d.shape)


class PanaceaLinearFunction(torch.autograd.Function):
    """y = x Wᵀ + b + ((x Vᵀ) ⊙ d) Uᵀ for x [..., in], W [out, in], V [r, in], U [out, r],
    d = `singular_values(σ, s, λ, c, r)`.

    λ is [m] or [B, m] with B = x.shape[0]. x, W and b share a dtype (the compute dtype); U, V,
    σ, s and λ share another (the adapter's, e.g. fp32 under bf16 autocast): U, V and d are cast
    to the compute dtype inside, and their gradients come back in the adapter's dtype.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, V, sigma, scale, preference, U, scaling, repeats=1):
        dtype = x.dtype
        d = singular_values(sigma, scale, preference, scaling, repeats).to(dtype)
        V, U = V.to(dtype), U.to(dtype)
        x2 = x.reshape(-1, x.shape[-1])
        blocks = _token_blocks(x2.shape[0], d, x.device)
        xb = x2.view(blocks, -1, x2.shape[-1])
        xv = torch.bmm(V.expand(blocks, -1, -1), xb.transpose(1, 2))  # [blocks, r, n]
        hd = _scale(xv, d)
        u_t = U.T.expand(blocks, -1, -1)
        if bias is None:  # low-rank part first: the big GEMM then adds into it at no extra pass
            out = torch.bmm(hd.transpose(1, 2), u_t).view(x2.shape[0], -1).addmm_(x2, weight.T)
        else:
            out = torch.addmm(bias, x2, weight.T)
            out.view(blocks, -1, out.shape[-1]).baddbmm_(hd.transpose(1, 2), u_t)
        ctx.save_for_backward(xb, weight, V, d, U, xv, hd, preference)
        ctx.x_shape, ctx.scaling, ctx.num_general = x.shape, scaling, sigma.shape[0]
        ctx.repeats = repeats
        ctx.adapter_dtype = sigma.dtype
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        xb, weight, V, d, U, xv, hd, preference = ctx.saved_tensors
        need_x, need_w, need_b, need_v, need_sigma, need_scale, _, need_u = ctx.needs_input_grad[:8]
        blocks, adapter_dtype = xb.shape[0], ctx.adapter_dtype
        gb = grad.reshape(blocks, -1, grad.shape[-1])
        u_t = U.T.contiguous() if xb.device.type == "cpu" else U.T  # for CPU BLAS, not cuBLAS
        gu = torch.bmm(u_t.expand(blocks, -1, -1), gb.transpose(1, 2))  # (g U)ᵀ
        gud = _scale(gu, d)
        grad_x = grad_w = grad_b = grad_v = grad_sigma = grad_scale = grad_u = None
        if need_x:
            grad_x = torch.bmm(gud.transpose(1, 2), V.expand(blocks, -1, -1))
            grad_x = grad_x.view(-1, V.shape[1]).addmm_(gb.flatten(0, 1), weight).view(ctx.x_shape)
        if need_w:
            grad_w = gb.flatten(0, 1).T @ xb.flatten(0, 1)
        if need_b:
            grad_b = gb.sum((0, 1))
        if need_v:
            grad_v = _sum_blocks(torch.bmm(gud, xb)).to(adapter_dtype)
        if need_sigma or need_scale:
            grad_d = _reduce(gu * xv, d)  # fp32, rounded once at the end
            if ctx.scaling != 1.0:
                grad_d = grad_d * ctx.scaling
            grad_sigma, grad_lam = grad_d[..., : ctx.num_general], grad_d[..., ctx.num_general :]
            if d.dim() == 2:
                grad_sigma = grad_sigma.sum(0)
            lam = (
                preference.repeat_interleave(ctx.repeats, dim=-1) if ctx.repeats > 1 else preference
            )
            lam = lam.reshape(-1).to(grad_lam.dtype)
            grad_scale = torch.dot(grad_lam.reshape(-1), lam).view(1).to(adapter_dtype)
            grad_sigma = grad_sigma.to(adapter_dtype)
        if need_u:
            grad_u = _sum_blocks(torch.bmm(hd, gb)).T.to(adapter_dtype)
        return grad_x, grad_w, grad_b, grad_v, grad_sigma, grad_scale, None, grad_u, None, None


def _sum_blocks(t: torch.Tensor) -> torch.Tensor:
    """t [blocks, ...] summed over blocks; a view when there is one."""
    return t[0] if t.shape[0] == 1 else t.sum(0)


def panacea_linear(x, weight, bias, V, sigma, scale, preference, U, scaling=1.0, repeats=1):
    """Functional form of `PanaceaLinearFunction` (see its docstring for shapes; `repeats` is
    the config's `rank_per_preference`)."""
    return PanaceaLinearFunction.apply(
        x, weight, bias, V, sigma, scale, preference, U, scaling, repeats
    )
