"""`cartoongan bench --profile`: where one training iteration's time goes, phase by phase.

Each phase the trainer runs (D + G step with EMA, lazy R1, lazy path length) is profiled after a
warm-up, and the ops (on the CPU) or kernels (on CUDA) that take the most self time are listed
with their share of the phase. On a GPU this is the table to read before choosing a kernel to
write: it names the convolutions, elementwise passes and layout conversions that lead.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from ..device import resolve_device
from ..errors import CartoonganError, rows_kept
from ..report import NullReporter, Reporter
from .speed import bench_trainer, default_batch, synchronize, trainer_phases

PHASES = ("step", "r1", "path")


@dataclass
class ProfileRow:
    phase: str  # step (D + G + EMA), r1 or path
    op: str  # an aten op (CPU) or a kernel (CUDA); "(other)" sums the rest
    calls: int | float  # per call of the phase: a whole number unless the runs differed
    ms: float  # self time per call of the phase
    share: float  # percent of the phase's self time


def _per_call(count: int, runs: int) -> int | float:
    return count // runs if count % runs == 0 else round(count / runs, 1)


def _self_time(event, cuda: bool) -> float:
    return event.self_device_time_total if cuda else event.self_cpu_time_total


def _rows(phase: str, events, cuda: bool, runs: int, top: int) -> list[ProfileRow]:
    # on CUDA only the kernels (and copies) count: an op's own "device time" is its kernels', again;
    # on the GPU timeline user annotations (the optimizer's step, record_function ranges) span
    # kernels counted already
    kind = DeviceType.CUDA if cuda else DeviceType.CPU
    timed = [e for e in events if e.device_type == kind and _self_time(e, cuda) > 0
             and not (cuda and getattr(e, "is_user_annotation", False))]
    total = sum(_self_time(e, cuda) for e in timed) or 1.0
    timed.sort(key=lambda e: _self_time(e, cuda), reverse=True)
    rows = [ProfileRow(phase, e.key[:60], _per_call(e.count, runs), round(_self_time(e, cuda) / runs / 1000, 3),
                       round(100 * _self_time(e, cuda) / total, 1)) for e in timed[:top]]
    rest = timed[top:]
    if rest:
        t = sum(_self_time(e, cuda) for e in rest)
        rows.append(ProfileRow(phase, "(other)", _per_call(sum(e.count for e in rest), runs),
                               round(t / runs / 1000, 3), round(100 * t / total, 1)))
    return rows


def profile_phases(name: str, device: str = "auto", precision: str = "fp32", batch: int | None = None,
                   runs: int = 2, top: int = 10, reporter: Reporter | None = None) -> list[ProfileRow]:
    """Profile `runs` calls of each training phase of bench config `name` (after one warm-up call);
    the `top` ops or kernels by self time per phase, then "(other)"."""
    reporter = reporter or NullReporter()
    dev = resolve_device(device)
    batch = batch or default_batch(name, dev)
    cuda = dev.type == "cuda"
    if not cuda:  # kineto, read at its first use, logs "gpuGetDeviceCount failed" as an ERROR on a CPU box
        os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    phases = trainer_phases(bench_trainer(name, dev, batch, precision, None, struct=False), batch)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    rows, done = [], []
    with reporter.progress(len(PHASES), f"profiling {name}") as bar, rows_kept(rows, len(PHASES), "phases", done):
        for phase in PHASES:
            fn = getattr(phases, phase)
            fn()
            synchronize(dev)
            # one cycle: acc_events only quiets torch 2.11's warning that later cycles would clear this one
            with profile(activities=activities, acc_events=True) as prof:
                for _ in range(runs):
                    fn()
                synchronize(dev)
            phase_rows = _rows(phase, prof.key_averages(), cuda, runs, top)
            if not phase_rows:  # an empty table would read as "nothing to see"
                what = ("no CUDA kernels: it needs CUPTI (torch's CUDA wheels bring it as nvidia-cuda-cupti)"
                        if cuda else f"no ops for the {phase} phase")
                raise CartoonganError(f"the profiler recorded {what}; time the phases with bench without --profile")
            rows += phase_rows
            done.append(phase)
            bar.advance()
    return rows
