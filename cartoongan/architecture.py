"""Channel widths per resolution, shared by the generator and the discriminator."""
from __future__ import annotations

import math

import torch


def log2_size(size: int) -> int:
    """log2 of a power-of-two resolution >= 8; raises ValueError otherwise."""
    log = int(round(math.log2(size))) if size > 0 else 0
    if size < 8 or 2**log != size:
        raise ValueError(f"resolution must be a power of two >= 8, got {size}")
    return log


def channel_widths(size: int, channel_multiplier: int = 2, channel_base: int = 16384, channel_max: int = 512) -> dict[int, int]:
    """Feature channels at each resolution 4, 8, ..., size.

    With the defaults this is rosinality's table: 512 up to 32 px, then 256*m, 128*m, ... .
    Small CPU models lower channel_base and channel_max.
    """
    return {
        2**i: max(1, min(channel_max, channel_multiplier * channel_base // 2**i))
        for i in range(2, log2_size(size) + 1)
    }


# Widest layer up to which NHWC pays on the CPU: `bench --kernels` measured channels-last 1.2x
# faster than NCHW at 64 channels and 0.89x at 256 (r64, 512 wide: 0.90x for a whole iteration).
CPU_CHANNELS_LAST_MAX_WIDTH = 128


def use_channels_last(setting: bool | None, device: torch.device, widths: dict[int, int]) -> bool:
    """The memory format of a network's activations: `setting` when given, else NHWC on CUDA
    (tensor cores) and on the CPU only for narrow networks."""
    if setting is not None:
        return setting
    return device.type == "cuda" or max(widths.values()) <= CPU_CHANNELS_LAST_MAX_WIDTH
