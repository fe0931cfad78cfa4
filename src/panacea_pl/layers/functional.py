"""The Panacea layer's forward and backward as one autograd function.

    y = x Wᵀ + b + ((x Vᵀ) ⊙ d) Uᵀ          (c is folded into d)

Autograd on the composed ops is correct but slow on CPU for two reasons this function removes:
- it sums the base and the adapter contributions to ∂x (and to y) in separate elementwise
  passes over the full activation; here the adapter's GEMM accumulates into the base's result
  (BLAS's β = 1 epilogue), so each full-size tensor is written once;
- it computes the skinny products x Vᵀ, g U and gᵀ h with r as the output's contiguous
  dimension, a layout BLAS handles 2–5× slower at r = 10 (MKL, measured) than the r-major
  products V xᵀ, Uᵀ gᵀ and hᵀ g used here.
`bench/adapter_overhead.py` measures the effect on a whole training step.
"""

from __future__ import annotations

import torch


def _scale(h_t: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """hᵀ [r, N] scaled by d: [r] (one λ) or [B, r] (one row per sequence, N = B·T)."""
    if d.dim() == 1:
        return h_t * d.unsqueeze(1)
    r, n = h_t.shape
    return (h_t.view(r, d.shape[0], -1) * d.T.unsqueeze(-1)).view(r, n)


def _reduce(p_t: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """∂d from the per-token products pᵀ [r, N]: summed over tokens to d's shape."""
    if d.dim() == 1:
        return p_t.sum(1)
    return p_t.view(p_t.shape[0], d.shape[0], -1).sum(2).T


def _token_blocks(x: torch.Tensor) -> int:
    """How many token blocks to split a skinny product into: one per CPU thread.

    BLAS runs a GEMM whose one side has only r rows on about one thread; splitting the token
    dimension into a batch lets `bmm` spread it over all of them (1.5× faster with 2 threads,
    measured). GPUs and odd token counts keep the single GEMM.
    """
    blocks = torch.get_num_threads() if x.device.type == "cpu" else 1
    return blocks if blocks > 1 and x.shape[0] % blocks == 0 else 1


def _small_times_tokens(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """a [r, K] @ x [N, K]ᵀ -> [r, N]."""
    blocks = _token_blocks(x)
    if blocks == 1:
        return a @ x.T
    r, n = a.shape[0], x.shape[0]
    out = torch.bmm(a.expand(blocks, -1, -1), x.view(blocks, n // blocks, -1).transpose(1, 2))
    return out.transpose(0, 1).reshape(r, n)


def _tokens_times_tokens(h_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """h_t [r, N] @ x [N, K] -> [r, K] (a sum over tokens)."""
    blocks = _token_blocks(x)
    if blocks == 1:
        return h_t @ x
    r, n = h_t.shape
    parts = torch.bmm(
        h_t.view(r, blocks, n // blocks).transpose(0, 1), x.view(blocks, n // blocks, -1)
    )
    return parts.sum(0)


def _add_low_rank_(out: torch.Tensor, h_t: torch.Tensor, b: torch.Tensor) -> None:
    """out [N, O] += h_t [r, N]ᵀ @ b [r, O], in place."""
    blocks = _token_blocks(out)
    if blocks == 1:
        out.addmm_(h_t.T, b)
        return
    r, n = h_t.shape
    out.view(blocks, n // blocks, -1).baddbmm_(
        h_t.view(r, blocks, n // blocks).permute(1, 2, 0), b.expand(blocks, -1, -1)
    )


def singular_values(
    sigma: torch.Tensor, scale: torch.Tensor, preference: torch.Tensor, scaling: float
) -> torch.Tensor:
    """d = c · [σ_1 … σ_k, s·λ_1 … s·λ_m]: [k + m] for λ [m], [B, k + m] for λ [B, m]."""
    sigma = sigma.expand(*preference.shape[:-1], sigma.shape[0])
    d = torch.cat([sigma, scale * preference], dim=-1)
    return d if scaling == 1.0 else d * scaling


class PanaceaLinearFunction(torch.autograd.Function):
    """y = x Wᵀ + b + ((x Vᵀ) ⊙ d) Uᵀ for x [..., in], W [out, in], V [r, in], U [out, r],
    with d = `singular_values(σ, s, λ, c)` built inside, so it adds no autograd nodes.

    λ is [m] or [B, m] with B = x.shape[0]; every tensor has the same dtype and device. The
    rank-r intermediates are kept r-major ([r, N], contiguous) for the fast GEMM layouts.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, V, sigma, scale, preference, U, scaling):
        d = singular_values(sigma, scale, preference, scaling)
        ctx.scaling, ctx.rank = scaling, sigma.shape[0]
        x2 = x.reshape(-1, x.shape[-1])
        xv_t = _small_times_tokens(V, x2)
        hd_t = _scale(xv_t, d)
        out = torch.addmm(bias, x2, weight.T) if bias is not None else x2 @ weight.T
        _add_low_rank_(out, hd_t, U.T)
        ctx.save_for_backward(x2, weight, V, d, U, xv_t, hd_t, preference)
        ctx.x_shape = x.shape
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x2, weight, V, d, U, xv_t, hd_t, preference = ctx.saved_tensors
        need_x, need_w, need_b, need_v, need_sigma, need_scale, _, need_u, _ = ctx.needs_input_grad
        g2 = grad.reshape(-1, grad.shape[-1])
        gu_t = _small_times_tokens(U.T.contiguous(), g2)  # (g U)ᵀ: [r, N]
        gud_t = _scale(gu_t, d)
        grad_x = grad_w = grad_b = grad_v = grad_sigma = grad_scale = grad_u = None
        if need_x:
            grad_x = g2 @ weight
            _add_low_rank_(grad_x, gud_t, V)
            grad_x = grad_x.view(ctx.x_shape)
        if need_w:
            grad_w = g2.T @ x2
        if need_b:
            grad_b = g2.sum(0)
        if need_v:
            grad_v = _tokens_times_tokens(gud_t, x2)
        if need_sigma or need_scale:
            grad_d = _reduce(gu_t * xv_t, d) * ctx.scaling
            grad_d = grad_d.view(-1, grad_d.shape[-1])
            grad_sigma = grad_d[:, : ctx.rank].sum(0)
            lam = preference.reshape(-1, preference.shape[-1])
            grad_scale = (grad_d[:, ctx.rank :] * lam).sum().view(1)
        if need_u:
            grad_u = _tokens_times_tokens(hd_t, g2).T
        return grad_x, grad_w, grad_b, grad_v, grad_sigma, grad_scale, None, grad_u, None


def panacea_linear(x, weight, bias, V, sigma, scale, preference, U, scaling=1.0):
    """Functional form of `PanaceaLinearFunction` (see its docstring for shapes)."""
    return PanaceaLinearFunction.apply(x, weight, bias, V, sigma, scale, preference, U, scaling)
