"""Bilinear resampling of images at a fixed sampling grid, differentiable to any order in the image.

`F.grid_sample` has no second derivative on CUDA, yet R1 differentiates twice through the ADA
augmentation of real images. For a constant grid the resampling is linear in the image: its
backward is its adjoint (`grid_sample`'s input gradient, a scatter with the same weights), and
the adjoint's backward is the resampling again. The two Functions below are each other's
backward, so every order of derivative is one of these two ops on the same grid.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_BILINEAR, _REFLECTION = 0, 2  # aten's enums for mode="bilinear" and padding_mode="reflection"


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # bf16/fp16 images are resampled in fp32, as autocast does with grid_sample
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _sample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    with torch.autocast(x.device.type, enabled=False):
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _scatter(grad: torch.Tensor, grid: torch.Tensor, in_shape: torch.Size) -> torch.Tensor:
    """The adjoint of _sample: grad [B, C, Ho, Wo] -> [B, C, H, W] (grid_sample's input gradient)."""
    # the input only gives the shape here: its values enter just the grid gradient, not asked for
    shape_only = grad.new_zeros(in_shape)
    with torch.autocast(grad.device.type, enabled=False):
        return torch.ops.aten.grid_sampler_2d_backward(grad, shape_only, grid, _BILINEAR, _REFLECTION, False,
                                                       [True, False])[0]


class _Resample(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(x)
        grid = grid.detach().to(dtype)
        ctx.save_for_backward(grid)
        ctx.in_shape, ctx.in_dtype = x.shape, x.dtype
        return _sample(x.to(dtype), grid).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (grid,) = ctx.saved_tensors
        return _ResampleAdjoint.apply(grad, grid, ctx.in_shape).to(ctx.in_dtype), None


class _ResampleAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grad: torch.Tensor, grid: torch.Tensor, in_shape: torch.Size) -> torch.Tensor:
        ctx.save_for_backward(grid)
        ctx.out_dtype = grad.dtype
        return _scatter(grad.to(grid.dtype).contiguous(), grid, in_shape).to(grad.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (grid,) = ctx.saved_tensors
        return _Resample.apply(grad, grid).to(ctx.out_dtype), None, None


def resample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of x [B, C, H, W] at grid [B, Ho, Wo, 2] (normalised coordinates,
    align_corners=False, reflection at the borders, as `F.grid_sample`) -> [B, C, Ho, Wo] in
    x's dtype. Differentiable to any order in x; the grid is a constant (it gets no gradient)."""
    return _Resample.apply(x, grid)
