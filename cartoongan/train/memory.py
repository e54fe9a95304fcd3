"""Will one training step fit in the host's memory? Checked before a CPU run starts.

On CUDA an allocation that fails raises, and the CLI reports it in one line. On the CPU, Linux
overcommits: the allocation succeeds and the kernel's OOM killer ends the process mid-step, with
no message at all. So a CPU batch that clearly cannot fit is refused up front instead.
"""
from __future__ import annotations

import torch

from ..config import ModelConfig
from ..errors import ConfigError
from ..hostmem import gib, host_memory_available
from ..models.architecture import channel_widths

# Host bytes one image of the batch costs per activation element (a C x r x r feature map counts
# C*r*r elements, summed over resolutions): measured from the peak RSS of one training step at
# batches 4 and 32, with R1, path length and ADA on, it was 43-48 at 32, 64 and 128 px and 65 in a
# fine-tune with the structure loss. The lower figure, with a quarter off, so that the check only
# refuses batches that cannot fit, never one that might.
ACTIVATION_BYTES = 32


def activation_elements(model: ModelConfig) -> int:
    """Sum of C * r * r over the network's resolutions: one image's feature map elements per layer."""
    widths = channel_widths(model.size, model.channel_multiplier, model.channel_base, model.channel_max)
    return sum(c * r * r for r, c in widths.items())


def bytes_per_image(model: ModelConfig) -> int:
    """A lower estimate of the host memory one image of the batch takes in a training step."""
    return activation_elements(model) * ACTIVATION_BYTES


def check_batch_fits(model: ModelConfig, batch: int, device: torch.device) -> None:
    """ConfigError naming the batch that fits when `batch` images of `model` clearly exceed the
    host's free memory in one CPU training step; nothing on CUDA, or where memory is unknown."""
    if device.type != "cpu":
        return
    free = host_memory_available()
    if free is None:
        return
    per_image = bytes_per_image(model)
    if batch * per_image <= free:
        return
    fits = free // per_image
    fix = f"use --batch {fits} or less" if fits else "even --batch 1 does not fit: free memory or train on a GPU"
    raise ConfigError(f"--batch {batch} needs over {gib(batch * per_image)} of memory for one training step at "
                      f"{model.size} px on the CPU ({per_image / 2**20:.1f} MiB an image), and {gib(free)} is "
                      f"free: {fix}")
