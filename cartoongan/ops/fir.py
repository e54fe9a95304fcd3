"""FIR filtering and 2x resampling with StyleGAN2's upfirdn2d conventions, differentiable to any order.

Each filter is a depthwise convolution (or transposed convolution) with a FIXED kernel, so it
is linear in its input: its backward is its adjoint, the transposed op with the same kernel, and
the adjoint's backward is the op again. Writing the pair as autograd Functions that are each
other's backward makes every order of derivative another filter op with the same constant
kernel. Plain `F.conv2d(groups=C)` gets the first derivative right, but its double backward
(R1, path length) also computes the gradient of the fixed filter as a batch-folded convolution,
which costs seconds per step at 256 px on a GPU; these ops never do.
"""
from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sysconfig
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError

BLUR_KERNEL = (1, 3, 3, 1)

# How CUDA tensors are filtered: "torch" (depthwise convolutions, the reference and the default)
# or "triton" (ops/fir_triton.py, opt-in until a GPU benchmark shows it wins). The CPU always
# uses the reference.
FIR_BACKENDS = ("torch", "triton")
_backend = os.environ.get("CARTOONGAN_FIR", "torch")


@contextlib.contextmanager
def fir_backend(name: str):
    """Within: filter CUDA tensors with backend `name` (benchmarks, tests)."""
    global _backend
    if name not in FIR_BACKENDS:
        raise ValueError(f"FIR backend must be one of {FIR_BACKENDS}, got {name!r}")
    before, _backend = _backend, name
    try:
        yield
    finally:
        _backend = before


def active_fir_backend() -> str:
    """The backend CUDA tensors are filtered with now: CARTOONGAN_FIR, or fir_backend's within it."""
    return _backend


@functools.cache
def triton_missing() -> str | None:
    """What the Triton backend lacks on this machine, or None when it can run: the triton package,
    or (outside Triton's CPU interpreter) the C compiler and Python headers with which Triton
    builds its launcher on first use, which a bare GPU box may not have. Looked up once per
    process (every FIR op asks, and the lookups stat the file system), so later changes of $CC or
    TRITON_INTERPRET need `triton_missing.cache_clear()`."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "the triton package (torch's CUDA wheels bring it)"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return None
    # as Triton looks (triton/runtime/build.py): $CC whenever it is set, else gcc, else clang; the
    # headers of the install scheme, Debian's posix_local read as posix_prefix
    launcher = "for the launcher Triton builds on first use"
    cc = os.environ.get("CC")
    if cc is not None and not shutil.which(cc):
        return f"the C compiler CC={cc!r} names {launcher} (fix CC or unset it)"
    if cc is None and not (shutil.which("gcc") or shutil.which("clang")):
        return f"a C compiler {launcher} (install gcc or set CC)"
    scheme = sysconfig.get_default_scheme()
    include = sysconfig.get_paths(scheme="posix_prefix" if scheme == "posix_local" else scheme)["include"]
    if not os.path.exists(os.path.join(include, "Python.h")):
        return f"Python's C headers {launcher} (install python3-dev)"
    return None


def _triton_apply():
    """fir_triton.fir_apply, for the backend "triton"."""
    if _backend not in FIR_BACKENDS:
        raise ConfigError(f"CARTOONGAN_FIR={_backend} is not a FIR backend: use one of {', '.join(FIR_BACKENDS)}")
    missing = triton_missing()
    if missing:
        raise ConfigError(f"CARTOONGAN_FIR=triton needs {missing}; unset CARTOONGAN_FIR to use the default")
    from .fir_triton import fir_apply

    return fir_apply


def _triton_takes(x: torch.Tensor) -> bool:
    """Whether the Triton kernel filters x: NHWC activations on CUDA (or in Triton's CPU interpreter).
    The kernel tiles channels fastest, so NCHW reads would not coalesce: the reference takes those.
    Its pixel index is int32 (int64 division costs more): B*H*W under 2**28 keeps even a 2x
    upsampled output's pixel count (4 B*H*W, plus the padding's) below 2**31."""
    return (_backend != "torch" and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")
            and x.shape[1] > 1 and x.stride(1) == 1 and x.shape[0] * x.shape[2] * x.shape[3] < 2**28)


def _autocast_input(x: torch.Tensor) -> torch.Tensor:
    """x in the dtype F.conv2d would compute in under autocast."""
    device = x.device.type
    if x.dtype == torch.float32 and torch.is_autocast_enabled(device):
        return x.to(torch.get_autocast_dtype(device))
    return x


def make_kernel(taps=BLUR_KERNEL, gain: float = 1.0) -> torch.Tensor:
    """2D FIR kernel [k, k]: outer product of the 1D taps, normalised to sum to `gain`."""
    k1 = torch.tensor(taps, dtype=torch.float32)
    k = k1[:, None] * k1[None, :]
    return k / k.sum() * gain


def _depthwise(kernel: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[k, k] -> [C, 1, k, k] on x's device and in its dtype (a module's buffer is there already;
    a caller's kernel built on the CPU is moved)."""
    return kernel.to(device=x.device, dtype=x.dtype)[None, None].expand(x.shape[1], 1, *kernel.shape)


@dataclass(frozen=True)
class _Geometry:
    """One depthwise filter op: conv2d (transposed=False) or conv_transpose2d, same stride and padding on both axes."""

    transposed: bool
    stride: int
    padding: int
    output_padding: tuple[int, int] = (0, 0)

    def out_size(self, in_size: tuple[int, int], k: int) -> tuple[int, int]:
        """[H, W] of the output for an input of `in_size` and a k x k kernel."""
        s, p = self.stride, self.padding
        if self.transposed:
            return tuple((n - 1) * s - 2 * p + k + extra for n, extra in zip(in_size, self.output_padding))
        return tuple((n + 2 * p - k) // s + 1 for n in in_size)

    def apply(self, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        if _triton_takes(x):
            return _triton_apply()(_autocast_input(x), kernel, self)
        c = x.shape[1]
        weight = _depthwise(kernel, x)
        if self.transposed:
            return F.conv_transpose2d(x, weight, stride=self.stride, padding=self.padding,
                                      output_padding=self.output_padding, groups=c)
        return F.conv2d(x, weight, stride=self.stride, padding=self.padding, groups=c)

    def adjoint(self, in_size: tuple[int, int], k: int) -> _Geometry:
        """The transposed op, mapping this op's output back onto an input of `in_size` [H, W]."""
        if self.transposed:
            return _Geometry(False, self.stride, self.padding)
        # output_padding restores the rows and columns that the strided conv dropped
        back = _Geometry(True, self.stride, self.padding).out_size(self.out_size(in_size, k), k)
        return _Geometry(True, self.stride, self.padding, tuple(n - m for n, m in zip(in_size, back)))


class _FirFilter(torch.autograd.Function):
    """y = geometry.apply(x, kernel); the kernel is a constant: it never receives a gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, kernel: torch.Tensor, geometry: _Geometry) -> torch.Tensor:
        ctx.kernel, ctx.geometry = kernel, geometry
        ctx.in_size, ctx.in_dtype = tuple(x.shape[-2:]), x.dtype
        return geometry.apply(x, kernel)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        adjoint = ctx.geometry.adjoint(ctx.in_size, ctx.kernel.shape[-1])
        return _fir(grad, ctx.kernel, adjoint).to(ctx.in_dtype), None, None


def _fir(x: torch.Tensor, kernel: torch.Tensor, geometry: _Geometry) -> torch.Tensor:
    """Depthwise filtering of x [B, C, H, W] by the constant `kernel` [k, k] (no grad to the kernel)."""
    return _FirFilter.apply(x, kernel.detach(), geometry)


def blur(x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int], stride: int = 1) -> torch.Tensor:
    """Pad by (before, after) on both axes, then filter each channel with `kernel` [k, k].

    x: [B, C, H, W] -> [B, C, (H + before + after - k) // stride + 1, ...]. The kernel is
    symmetric, so correlation equals the convolution of upfirdn2d.
    """
    if pad[0] == pad[1]:  # the convolution pads symmetric borders itself (no padded copy)
        return _fir(x, kernel, _Geometry(False, stride, pad[0]))
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    return _fir(x, kernel, _Geometry(False, stride, 0))


def upsample2x(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """upfirdn2d(x, kernel, up=2, pad=(2, 1)) as one strided transposed depthwise conv.

    x: [B, C, H, W] -> [B, C, 2H, 2W]; `kernel` [4, 4] already carries the gain of 4.
    """
    return _fir(x, kernel, _Geometry(True, 2, 1))
