"""Will one training step fit in the host's memory? Checked before a CPU run starts.

On CUDA an allocation that fails raises, and the CLI reports it in one line. On the CPU, Linux
overcommits: the allocation succeeds and the kernel's OOM killer ends the process mid-step, with
no message at all. So a CPU batch that clearly cannot fit is refused up front instead.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import ConfigError
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


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # 'max' (no limit) and the like are no number


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def _cgroup_room(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes left under this process's cgroup memory limit (v2, else v1), or None without a limit.
    Inactive page cache counts as free, as the kernel reclaims it before it kills anything."""
    limit, used = _read_int(root / "memory.max"), _read_int(root / "memory.current")
    cache = _stat(root / "memory.stat", "inactive_file")
    if limit is None:
        v1 = root / "memory"
        limit, used = _read_int(v1 / "memory.limit_in_bytes"), _read_int(v1 / "memory.usage_in_bytes")
        cache = _stat(v1 / "memory.stat", "total_inactive_file")
        if limit is not None and limit >= 2**60:  # v1 writes "no limit" as a huge number
            return None
    if limit is None or used is None:
        return None
    return max(limit - used + cache, 0)


def host_memory_available() -> int | None:
    """Bytes the host can still give this process without swapping (Linux: MemAvailable, capped by
    a cgroup limit), or None where that cannot be read."""
    available = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    room = _cgroup_room()
    return available if room is None or available is None else min(available, room)


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


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
    raise ConfigError(f"--batch {batch} needs over {_gib(batch * per_image)} of memory for one training step at "
                      f"{model.size} px on the CPU ({per_image / 2**20:.1f} MiB an image), and {_gib(free)} is "
                      f"free: {fix}")
