"""Triton RMSNorm, forward and backward.

Same contract and rounding as linearize.rmsnorm.rms_norm:

    x: [..., N] (rows with a unit last stride); weight: [N] -> [..., N] in promote(weight, x) dtype
    y = w * round_to_x_dtype(xh),  xh = x * r,  r = rsqrt(mean(x^2) + eps)     (the mean in float32)

Backward (the rounding passes gradients through, as autograd's cast does), with gh = dy * w:
    dx = r * (gh - xh * mean(gh * xh)),    dw = sum over rows of dy * round_to_x_dtype(xh)

Why: PyTorch runs the forward as two dtype copies and five elementwise / reduction kernels over the
whole [B, T, N] tensor, and its backward as about as many again; here each program reads ROWS rows
once and writes them once, each way. Stage 2 (LoRA) runs 61 norms forward and backward per step.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .chunk import no_autograd


@triton.jit
def _load_rows(x_ptr, R, N, sx, eps, ROWS: tl.constexpr, BN: tl.constexpr):
    """This program's ROWS rows of x: (x as stored, x in float32, r = rsqrt(mean(x^2) + eps) per row,
    row indices, column indices, the [ROWS, BN] mask)."""
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    c = tl.arange(0, BN)
    m = (r < R)[:, None] & (c < N)[None, :]
    x = tl.load(x_ptr + r[:, None].to(tl.int64) * sx + c[None, :], mask=m, other=0.)
    xf = x.to(tl.float32)
    inv = 1.0 / tl.sqrt(tl.sum(xf * xf, 1) / N + eps)
    return x, xf, inv, r, c, m


@triton.jit
def _rmsnorm_kernel(x_ptr, w_ptr, o_ptr, R, N, sx, eps, ROWS: tl.constexpr, BN: tl.constexpr):
    x, xf, inv, r, c, m = _load_rows(x_ptr, R, N, sx, eps, ROWS, BN)
    mc = c < N
    y = (xf * inv[:, None]).to(x.dtype).to(tl.float32)  # HF rounds before the weight multiplies
    w = tl.load(w_ptr + c, mask=mc, other=0.).to(tl.float32)
    tl.store(o_ptr + r[:, None].to(tl.int64) * N + c[None, :], (w[None, :] * y).to(o_ptr.dtype.element_ty), mask=m)


@triton.jit
def _rmsnorm_bwd_kernel(x_ptr, w_ptr, dy_ptr, dx_ptr, dw_ptr, R, N, sx, sdy, eps,
                        ROWS: tl.constexpr, BN: tl.constexpr, DW: tl.constexpr):
    """dx for ROWS rows (r recomputed from x: one row reduction, cheaper than storing it); with DW,
    this program's partial sum of dw over its rows into dw_ptr[program, :N]."""
    x, xf, inv, r, c, m = _load_rows(x_ptr, R, N, sx, eps, ROWS, BN)
    mc = c < N
    xh = xf * inv[:, None]
    dy = tl.load(dy_ptr + r[:, None].to(tl.int64) * sdy + c[None, :], mask=m, other=0.).to(tl.float32)
    w = tl.load(w_ptr + c, mask=mc, other=0.).to(tl.float32)
    gh = dy * w[None, :]
    dot = tl.sum(gh * xh, 1) / N
    dx = inv[:, None] * (gh - xh * dot[:, None])
    tl.store(dx_ptr + r[:, None].to(tl.int64) * N + c[None, :], dx.to(dx_ptr.dtype.element_ty), mask=m)
    if DW:
        part = tl.sum(dy * xh.to(x.dtype).to(tl.float32), 0)
        tl.store(dw_ptr + tl.program_id(0).to(tl.int64) * N + c, part, mask=mc)


def _rows(N: int) -> tuple[int, int]:
    """(BN, ROWS): the row width's power of two and rows per program (about 4K elements a program)."""
    BN = triton.next_power_of_2(N)
    return BN, max(1, min(16, 4096 // BN))


def _forward(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    N = x.shape[-1]
    out = torch.empty(x.shape, device=x.device, dtype=torch.promote_types(weight.dtype, x.dtype))
    if out.numel() == 0:
        return out
    x2 = x.reshape(-1, N)  # a view when the rows are evenly strided, which is all the kernel needs
    R = x2.shape[0]
    BN, ROWS = _rows(N)
    _rmsnorm_kernel[(triton.cdiv(R, ROWS),)](x2, weight.contiguous(), out, R, N, x2.stride(0), float(eps),
                                              ROWS=ROWS, BN=BN, num_warps=4)
    return out


class RMSNormFunction(torch.autograd.Function):
    """The norm with autograd: x and the weight are saved, r is recomputed in the backward."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        ctx.save_for_backward(x, weight)
        ctx.eps = float(eps)
        return _forward(x, weight, eps)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        N = x.shape[-1]
        x2 = x.reshape(-1, N)
        dy2 = dy.reshape(-1, N)
        if dy2.stride(-1) != 1:
            dy2 = dy2.contiguous()
        R = x2.shape[0]
        dx = torch.empty(R, N, device=x.device, dtype=x.dtype)
        want_dw = ctx.needs_input_grad[1]
        if R == 0:
            return dx.view(x.shape), (torch.zeros_like(weight) if want_dw else None), None
        BN, ROWS = _rows(N)
        grid = triton.cdiv(R, ROWS)
        parts = torch.empty(grid if want_dw else 1, N, device=x.device, dtype=torch.float32)
        _rmsnorm_bwd_kernel[(grid,)](x2, weight.contiguous(), dy2, dx, parts, R, N, x2.stride(0), dy2.stride(0),
                                     ctx.eps, ROWS=ROWS, BN=BN, DW=want_dw, num_warps=4)
        dw = parts.sum(0).to(weight.dtype) if want_dw else None
        return dx.view(x.shape), dw, None


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Same contract as linearize.rmsnorm.rms_norm; the output is contiguous. Differentiable (in x and
    the weight) when autograd runs through it."""
    if no_autograd(x, weight):
        return _forward(x, weight, eps)
    return RMSNormFunction.apply(x, weight, eps)


def supports(x, weight) -> bool:
    """CUDA, unit last stride, not inside a torch.compile trace (there Inductor fuses the reference
    itself)."""
    return (x.is_cuda and x.dim() >= 1 and x.stride(-1) == 1 and x.shape[-1] == weight.shape[-1]
            and x.dtype in (torch.float16, torch.bfloat16, torch.float32)
            and not torch.compiler.is_compiling())
