"""`bench --flops`: the arithmetic each training phase does, counted from the ops it dispatches.

A timing on a GPU means little without the floor under it: the floating-point operations a phase
must do over the device's rate. This counts them on any device (the CPU included, so every
session has them) for our phases and, with a reference checkout, for rosinality's, so that a speed
ratio can be read as the same work done faster or as work left out. Counted: what torch's FLOP
formulas cover (convolutions and their backward, matrix products); elementwise passes are
memory-bound and left to the bytes side. On CUDA, rosinality's fused upfirdn2d and bias-act
kernels are custom ops the count cannot see, so its FIR work counts only on the CPU (where its
fallback runs convolutions); ours count as the reference op whatever CARTOONGAN_FIR says.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from ..device import resolve_device
from ..errors import rows_kept
from ..ops.fir import fir_backend
from ..report import NullReporter, Reporter
from .speed import Phases, bench_trainer, check_configs, default_batch, trainer_phases


class FlopCounter(TorchDispatchMode):
    """Adds up torch's FLOP formula of every dispatched op that has one, per op name."""

    def __init__(self):
        super().__init__()
        self.by_op: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        formula = flop_registry.get(func._overloadpacket)
        if formula is None:
            # a composite op (F.linear under inference_mode, say) counts through what it is made of
            with self:
                out = func.decompose(*args, **kwargs)
            return func(*args, **kwargs) if out is NotImplemented else out
        out = func(*args, **kwargs)
        name = str(func._overloadpacket)
        self.by_op[name] = self.by_op.get(name, 0) + formula(*args, **kwargs, out_val=out)
        return out

    @property
    def total(self) -> int:
        return sum(self.by_op.values())


def count_flops(fn: Callable[[], None]) -> int:
    """FLOPs of one call of fn (forward and any backward it runs). Our FIR filters run as the
    reference op while counting: the same arithmetic as the Triton kernel, which the counter
    cannot see, so a count does not depend on CARTOONGAN_FIR."""
    with fir_backend("torch"), FlopCounter() as counter:
        fn()
    return counter.total


@dataclass
class FlopRow:
    config: str
    device: str  # rosinality's custom CUDA kernels count nothing: the device matters
    batch: int
    side: str  # ours, ours+struct (FreezeSG 2, structure loss 3), rosinality
    forward_gflop_img: float  # generator forward
    step_gflop_img: float  # D step + G step + EMA
    r1_gflop_img: float  # one lazy R1 step
    path_gflop_img: float  # one lazy path-length step
    iteration_gflop_img: float  # a training iteration, regularisers amortised as in the timings
    img_s_per_100_tflops: int  # the floor: img/s that 100 TFLOP/s would give if nothing else cost


def phase_flops(phases: Phases, config: str, device: str, batch: int, side: str) -> FlopRow:
    """Each phase's FLOPs per training image (the unit of img/s), from one call each, to 3 figures."""
    per_img = {k: count_flops(getattr(phases, k)) / batch / 1e9 for k in ("forward", "step", "r1", "path")}
    iteration = phases.per_iteration(per_img["step"], per_img["r1"], per_img["path"])
    return FlopRow(config, device, batch, side, *(_figures(per_img[k]) for k in ("forward", "step", "r1", "path")),
                   _figures(iteration), round(100e3 / iteration))


def _figures(x: float) -> float:
    return float(f"{x:.3g}")


def run_flop_count(configs: list[str], device: str = "auto", batch: int | None = None,
                   reference: str | Path | None = None, reporter: Reporter | None = None,
                   precision: str = "fp32") -> list[FlopRow]:
    """FLOP rows for each config: ours plain, ours with FreezeSG 2 + structure loss 3, and the
    reference's when `reference` is a rosinality checkout."""
    from .reference import _ReferenceLoop, check_reference_configs, load_reference

    reporter = reporter or NullReporter()
    dev = resolve_device(device)
    check_configs(configs, dev, batch)
    model = None
    if reference is not None:
        check_reference_configs(configs)
        model, gradfix = load_reference(reference, dev)
    rows, done = [], []
    with reporter.progress(len(configs), "counting FLOPs") as bar, rows_kept(rows, len(configs), "configs", done):
        for name in configs:
            n = batch or default_batch(name, dev)
            for struct, side in ((False, "ours"), (True, "ours+struct")):
                tr = bench_trainer(name, dev, n, precision, None, struct=struct)
                rows.append(phase_flops(trainer_phases(tr, n), name, str(dev), n, side))
                del tr
            if model is not None:
                phases = _ReferenceLoop(model, gradfix, name, dev, n).phases()
                rows.append(phase_flops(phases, name, str(dev), n, "rosinality"))
            done.append(name)
            bar.advance()
    return rows
