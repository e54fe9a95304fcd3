"""How much memory this process can still take from the host (Linux: MemAvailable and any cgroup
limit). Read before work whose size a user sets, on the CPU: Linux overcommits, so a too-large
allocation succeeds and the kernel's OOM killer ends the process later, with no message at all."""
from __future__ import annotations

from pathlib import Path


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


def images_past_memory(n: int, size: int, sets: int = 1) -> tuple[int, int, int] | None:
    """(bytes needed, bytes free, how many images per set fit) when `sets` sets of n uint8 RGB
    images of size x size px cannot be held in host memory at once; None when they can (or when
    free memory cannot be read)."""
    per_image, free = sets * 3 * size * size, host_memory_available()
    if free is None or n * per_image <= free:
        return None
    return n * per_image, free, free // per_image


def gib(n: int) -> str:
    """n bytes as GiB with one decimal, for messages."""
    return f"{n / 2**30:.1f} GiB"
