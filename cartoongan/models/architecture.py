"""Channel widths per resolution, shared by the generator and the discriminator."""
from __future__ import annotations

import math


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
