"""Triton RMSNorm, forward only (no autograd: prefill, scoring).

Same contract and rounding as linearize.rmsnorm.rms_norm:

    x: [..., N] (rows with a unit last stride); weight: [N] -> [..., N] in promote(weight, x) dtype
    y = w * round_to_x_dtype(x * rsqrt(mean(x^2) + eps))     (the mean in float32)

Why: PyTorch runs that formula as two dtype copies and five elementwise / reduction kernels over the
whole [B, T, N] tensor; here each program reads ROWS rows once and writes them once.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .chunk import no_autograd


@triton.jit
def _rmsnorm_kernel(x_ptr, w_ptr, o_ptr, R, N, sx, eps, ROWS: tl.constexpr, BN: tl.constexpr):
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    c = tl.arange(0, BN)
    mr, mc = r < R, c < N
    m = mr[:, None] & mc[None, :]
    x = tl.load(x_ptr + r[:, None].to(tl.int64) * sx + c[None, :], mask=m, other=0.)
    xf = x.to(tl.float32)
    inv = 1.0 / tl.sqrt(tl.sum(xf * xf, 1) / N + eps)
    y = (xf * inv[:, None]).to(x.dtype).to(tl.float32)  # HF rounds before the weight multiplies
    w = tl.load(w_ptr + c, mask=mc, other=0.).to(tl.float32)
    tl.store(o_ptr + r[:, None].to(tl.int64) * N + c[None, :], (w[None, :] * y).to(o_ptr.dtype.element_ty), mask=m)


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Same contract as linearize.rmsnorm.rms_norm, forward only; the output is contiguous."""
    N = x.shape[-1]
    out = torch.empty(x.shape, device=x.device, dtype=torch.promote_types(weight.dtype, x.dtype))
    if out.numel() == 0:
        return out
    x2 = x.reshape(-1, N)  # a view when the rows are evenly strided, which is all the kernel needs
    R = x2.shape[0]
    BN = triton.next_power_of_2(N)
    ROWS = max(1, min(16, 4096 // BN))
    _rmsnorm_kernel[(triton.cdiv(R, ROWS),)](x2, weight.contiguous(), out, R, N, x2.stride(0), float(eps),
                                              ROWS=ROWS, BN=BN, num_warps=4)
    return out


def supports(x, weight) -> bool:
    """CUDA, unit last stride, no autograd through the norm, not inside a torch.compile trace (there
    Inductor fuses the reference itself)."""
    return (x.is_cuda and x.dim() >= 1 and x.stride(-1) == 1 and x.shape[-1] == weight.shape[-1]
            and x.dtype in (torch.float16, torch.bfloat16, torch.float32)
            and not torch.compiler.is_compiling()
            and no_autograd(x, weight))
