"""Tensor operations below the layers: FIR filtering, resampling, bias and activation."""
