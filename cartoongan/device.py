"""Device selection: auto picks CUDA when present, else the CPU."""
from __future__ import annotations

import re

import torch

from .errors import ConfigError


def resolve_device(spec: str = "auto") -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> torch.device; a clear error when CUDA is asked for but absent."""
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if not m:
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got '{spec}'")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {spec}: no CUDA GPU is visible here; use --device cpu or auto")
    idx = int(m.group(1) or 0)
    if idx >= torch.cuda.device_count():
        raise ConfigError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
    return torch.device("cuda", idx)
