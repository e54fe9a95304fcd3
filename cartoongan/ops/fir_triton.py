"""The FIR filter op as one Triton kernel (CUDA), beside the depthwise-convolution reference in fir.py.

Why: in NHWC a depthwise convolution may be routed through a layout conversion, and each call
materialises the expanded [C, 1, k, k] weight; this kernel reads the activations in whatever
layout they have (strides are arguments), keeps the k x k taps in registers and accumulates in
fp32. It computes exactly `_Geometry.apply` (a strided correlation, or the transposed op), so the
autograd Functions in fir.py use it for every order of derivative unchanged.

Opt-in (`CARTOONGAN_FIR=triton`, or `fir.fir_backend("triton")`) until a GPU benchmark shows it
wins: `cartoongan bench --kernels --device cuda` times both. The tests check it against the
reference with Triton's CPU interpreter (TRITON_INTERPRET=1) and, on a GPU, natively.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl


@triton.jit
def _fir_kernel(x_ptr, w_ptr, y_ptr, total, C, H, W, OH, OW, P,
                sxb, sxc, sxh, sxw, syb, syc, syh, syw,
                K: tl.constexpr, S: tl.constexpr, TRANSPOSED: tl.constexpr, F64: tl.constexpr,
                BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pix = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    pmask, cmask = pix < total, ch < C
    b = pix // (OH * OW)
    rem = pix % (OH * OW)
    oy, ox = rem // OW, rem % OW
    b64, ch64 = b.to(tl.int64), ch.to(tl.int64)
    if F64:  # fp64 inputs (gradcheck) accumulate in fp64, everything else in fp32
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for ky in tl.static_range(K):
        for kx in tl.static_range(K):
            if TRANSPOSED:  # out[o] += x[i] * w[k] wherever i * S - P + k == o
                ty, tx = oy + P - ky, ox + P - kx
                ty0, tx0 = tl.maximum(ty, 0), tl.maximum(tx, 0)
                iy, ix = ty0 // S, tx0 // S
                ok = (ty >= 0) & (tx >= 0) & (ty0 % S == 0) & (tx0 % S == 0) & (iy < H) & (ix < W)
            else:  # out[o] += x[o * S - P + k] * w[k]
                iy, ix = oy * S - P + ky, ox * S - P + kx
                ok = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
            iy, ix = tl.where(ok, iy, 0).to(tl.int64), tl.where(ok, ix, 0).to(tl.int64)
            offs = (b64 * sxb + iy * sxh + ix * sxw)[:, None] + ch64[None, :] * sxc
            m = (ok & pmask)[:, None] & cmask[None, :]
            acc += tl.load(x_ptr + offs, mask=m, other=0.0).to(acc.dtype) * tl.load(w_ptr + ky * K + kx).to(acc.dtype)
    out = (b64 * syb + oy.to(tl.int64) * syh + ox.to(tl.int64) * syw)[:, None] + ch64[None, :] * syc
    tl.store(y_ptr + out, acc.to(y_ptr.dtype.element_ty), mask=pmask[:, None] & cmask[None, :])


def fir_apply(x: torch.Tensor, kernel: torch.Tensor, geometry, block_p: int = 32, block_c: int = 32) -> torch.Tensor:
    """`geometry.apply` (a fir._Geometry) in one kernel: x [B, C, H, W] (any layout) filtered by
    kernel [k, k]; the output keeps x's memory format (by stride order) and dtype.

    The tile is block_p output pixels x block_c channels, channels fastest: coalesced and
    vectorised for NHWC (what the models use); correct but uncoalesced for NCHW. 32 x 32 keeps
    sm_90 at about 70 registers a thread for NHWC (64 x 32 spilled for NCHW)."""
    b, c, h, w = x.shape
    k = kernel.shape[-1]
    oh, ow = geometry.out_size((h, w), k)
    nhwc = c > 1 and x.stride(1) < x.stride(3)  # channels_last, or a slice of it
    y = torch.empty(b, c, oh, ow, device=x.device, dtype=x.dtype,
                    memory_format=torch.channels_last if nhwc else torch.contiguous_format)
    total = b * oh * ow
    if total == 0 or c == 0:
        return y
    f64 = x.dtype == torch.float64
    taps = kernel.detach().to(device=x.device, dtype=torch.float64 if f64 else torch.float32).contiguous()
    if c < block_c:  # few channels (RGB): narrower tiles, more pixels per program
        narrow = triton.next_power_of_2(c)
        block_p, block_c = min(256, block_p * block_c // narrow), narrow
    grid = (triton.cdiv(total, block_p), triton.cdiv(c, block_c))
    # Triton launches on the current device, which need not be x's
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _fir_kernel[grid](x, taps, y, total, c, h, w, oh, ow, geometry.padding, *x.stride(), *y.stride(),
                          K=k, S=geometry.stride, TRANSPOSED=geometry.transposed, F64=f64,
                          BLOCK_P=block_p, BLOCK_C=block_c)
    return y
