"""Device selection: auto picks CUDA when present, else the CPU."""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator

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


def check_precision(precision: str, dev: torch.device) -> None:
    """bf16 autocast is for GPUs: refuse it on the CPU (where it is slow and not what was meant)."""
    if precision == "bf16" and dev.type != "cuda":
        raise ConfigError("--precision bf16 needs a CUDA device; use fp32 on the CPU")


def precision_note(precision: str, dev: torch.device) -> str | None:
    """The warning for a precision that does nothing on dev (tf32 off CUDA), else None."""
    if precision == "tf32" and dev.type != "cuda":
        return (f"precision tf32 does nothing on {dev.type}: TF32 is CUDA tensor-core math, so this computes in "
                "IEEE fp32 (say --precision fp32 to silence this)")
    return None


def set_math_mode(precision: str) -> None:
    """Choose how fp32 convolutions and matmuls compute on CUDA (no effect on the CPU).

    'fp32' is IEEE fp32 (TF32 off, as NVlabs trains: GPU results match the CPU to ~1e-5);
    'tf32' and 'bf16' allow TF32 tensor-core math for fp32 work (Ampere and later: ~10-bit
    mantissa products, several times faster convolutions). Rendering commands use 'fp32'.
    Torch with the per-backend fp32_precision API refuses to READ its legacy flags
    (`cudnn.allow_tf32`, `get_float32_matmul_precision()`, which torch.compile and other
    libraries still read) once they disagree with it, so the legacy flags are set to the same
    state first, then the per-backend ones; CPU matmuls stay IEEE whatever the legacy setter
    implies for oneDNN.
    """
    tf32 = precision != "fp32"
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    if not hasattr(torch.backends.cudnn, "conv"):  # torch before the fp32_precision API
        return
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    mode = "tf32" if tf32 else "ieee"
    torch.backends.cudnn.conv.fp32_precision = mode
    torch.backends.cuda.matmul.fp32_precision = mode
    torch.backends.mkldnn.matmul.fp32_precision = "ieee"


# every per-backend fp32 precision switch torch has (those present in the running version)
_PRECISION_SWITCHES = (("cudnn", "conv"), ("cudnn", "rnn"), ("cuda", "matmul"),
                       ("mkldnn", "conv"), ("mkldnn", "rnn"), ("mkldnn", "matmul"))


def _legacy_flags() -> dict:
    """The legacy TF32 flags that can be read now: torch refuses to read one once a caller has set
    the per-backend switches under it differently."""
    b = torch.backends
    getters = {"cudnn": lambda: b.cudnn.allow_tf32, "cuda_matmul": lambda: b.cuda.matmul.allow_tf32,
               "matmul_precision": torch.get_float32_matmul_precision}
    flags = {}
    for name, get in getters.items():
        try:
            flags[name] = get()
        except RuntimeError:
            pass
    return flags


def _switches() -> dict:
    """The per-backend fp32 precision switches this torch has: none before the API (2.9), where
    `cuda.matmul` exists but raises on any attribute it does not know."""
    b = torch.backends
    found = {(be, op): getattr(getattr(b, be), op, None) for be, op in _PRECISION_SWITCHES}
    return {key: switch for key, switch in found.items() if hasattr(switch, "fp32_precision")}


def _math_state() -> dict:
    return {"legacy": _legacy_flags(),
            "switches": {key: switch.fp32_precision for key, switch in _switches().items()}}


def _restore_math_state(state: dict) -> None:
    """Legacy flags first, then the per-backend switches (torch keeps both and its legacy getters
    compare them), the order set_math_mode uses."""
    b = torch.backends
    legacy = state["legacy"]
    if "cudnn" in legacy:
        b.cudnn.allow_tf32 = legacy["cudnn"]
    if "cuda_matmul" in legacy:
        b.cuda.matmul.allow_tf32 = legacy["cuda_matmul"]
    if "matmul_precision" in legacy:
        torch.set_float32_matmul_precision(legacy["matmul_precision"])
    switches = _switches()
    for key, value in state["switches"].items():
        switches[key].fp32_precision = value


@contextmanager
def math_mode(precision: str) -> Iterator[None]:
    """set_math_mode(precision) for the block, then the caller's math mode back: every switch and
    legacy flag that could be read before (torch refuses to read a legacy flag that disagrees with
    the switches under it; such a flag comes back agreeing with them). Library calls that need IEEE
    fp32 (Inception, KID during training) so leave a training run's TF32 alone."""
    state = _math_state()
    try:
        set_math_mode(precision)
        yield
    finally:
        _restore_math_state(state)


def tf32_enabled() -> bool:
    """Whether fp32 convolutions on CUDA currently run in TF32."""
    if not hasattr(torch.backends.cudnn, "conv"):
        return torch.backends.cudnn.allow_tf32
    return torch.backends.cudnn.conv.fp32_precision == "tf32"


def reset_peak_memory(dev: torch.device) -> None:
    """Start a peak-memory measurement on `dev` (CUDA: the allocator's peak; the CPU: this
    process's peak RSS, reset through Linux's clear_refs where the kernel allows it)."""
    if dev.type == "cuda":
        # before any CUDA work in the process, the allocator has no state for the device and
        # reset_peak_memory_stats raises 'Invalid device argument'
        torch.cuda.init()
        torch.empty(1, device=dev)
        torch.cuda.reset_peak_memory_stats(dev)
        return
    try:  # "5" resets VmHWM: without it, a later config's peak was the process's peak so far
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_memory_mb(dev: torch.device) -> float:
    """Peak memory since reset_peak_memory: CUDA allocator peak, or this process's peak RSS on the
    CPU (VmHWM; the process's peak since it started where /proc cannot be read)."""
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
