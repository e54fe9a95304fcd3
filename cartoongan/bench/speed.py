"""`cartoongan bench`: generator forward, training iteration and structure-loss iteration speed.

Phases are timed separately (warm-up, then the median of repeats; CUDA synchronised) and the
lazy regularisers are amortised by their intervals, so a benchmark of a large config stays short.
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..config import ModelConfig, RunConfig, apply_overrides
from ..data.dataset import ImageDataset
from ..device import peak_memory_mb, reset_peak_memory, resolve_device
from ..errors import ConfigError, rows_kept
from ..models.generator import ModulatedConv2d
from ..ops.fir import active_fir_backend
from ..report import NullReporter, Reporter
from ..train.distributed import DistInfo
from ..train.freeze import make_plan
from ..train.losses import ema_beta, ema_update
from ..train.memory import check_batch_fits
from ..train.trainer import Networks, Trainer, new_networks

# name: (model overrides, batch on CPU, batch on CUDA)
CONFIGS = {
    "tiny": (dict(size=32, style_dim=64, n_mlp=2, channel_multiplier=1, channel_base=1024, channel_max=64), 8, 32),
    "demo64": (dict(size=64, style_dim=128, n_mlp=4, channel_multiplier=1, channel_base=2048, channel_max=64), 16, 64),
    "r64": (dict(size=64, style_dim=512, n_mlp=8, channel_multiplier=1), 4, 32),
    "r256": (dict(size=256, style_dim=512, n_mlp=8, channel_multiplier=2), 2, 16),
}


def default_configs(dev: torch.device, reference: bool = False) -> list[str]:
    """What `bench` measures unless told: small configs on the CPU, the paper's 256 px on CUDA;
    with a reference, the one config of the targets (rosinality can't build the narrow ones)."""
    if reference:
        return ["r256" if dev.type == "cuda" else "r64"]
    return ["tiny", "r64", "r256"] if dev.type == "cuda" else ["tiny", "demo64", "r64"]


def default_batch(name: str, dev: torch.device) -> int:
    """The batch CONFIGS gives config `name` on this kind of device."""
    _, cpu_batch, cuda_batch = CONFIGS[name]
    return cuda_batch if dev.type == "cuda" else cpu_batch


@dataclass
class BenchRow:
    config: str
    device: str
    batch: int
    precision: str
    variant: str  # what else was not the default: "eager", or the compile mode, then nchw, grouped, fir triton
    g_forward_img_s: float
    train_iter_img_s: float
    struct_iter_img_s: float | None
    peak_mem_mb: float


def synchronize(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_pair(first, second, dev: torch.device, repeats: int, warmup: int = 2) -> tuple[float, float | None]:
    """Median seconds of first() and of second() (None: only first), timed alternately so that
    drift in the machine's speed hits both alike."""
    fns = [f for f in (first, second) if f is not None]

    def once(fn):
        synchronize(dev)
        start = time.perf_counter()
        fn()
        synchronize(dev)
        return time.perf_counter() - start

    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[once(fn) for fn in fns] for _ in range(repeats)]
    medians = [statistics.median(t[i] for t in times) for i in range(len(fns))]
    return medians[0], (medians[1] if second is not None else None)


@dataclass
class Phases:
    """One training setup's phases as self-contained calls (each sets the requires_grad flags it
    needs), so that they can be timed in any order, or alternately with another setup's."""

    forward: Callable[[], None]  # generator forward, no grad
    step: Callable[[], None]  # D step + G step + EMA
    r1: Callable[[], None]  # lazy R1 step
    path: Callable[[], None]  # lazy path-length step
    d_reg_every: int
    g_reg_every: int

    def per_iteration(self, step: float, r1: float, path: float) -> float:
        """A training iteration's worth of a per-call measure (seconds, FLOPs): the step, plus the
        lazy regularisers amortised over their intervals."""
        return step + r1 / self.d_reg_every + path / self.g_reg_every


def time_phases(a: Phases, b: Phases | None, dev: torch.device, repeats: int):
    """(forward seconds, iteration seconds) of a and of b (None when b is None)."""
    out = [time_pair(getattr(a, k), getattr(b, k) if b else None, dev, n, w)
           for k, n, w in (("forward", repeats, 2), ("step", repeats, 2), ("r1", max(1, repeats // 2), 1),
                           ("path", max(1, repeats // 2), 1))]
    ours = (out[0][0], a.per_iteration(out[1][0], out[2][0], out[3][0]))
    theirs = (out[0][1], b.per_iteration(out[1][1], out[2][1], out[3][1])) if b else None
    return ours, theirs


def bench_trainer(name: str, dev: torch.device, batch: int, precision: str, compile_mode: str | None, struct: bool,
                  channels_last: bool = True) -> Trainer:
    """A Trainer at config `name` on random uint8 images (FreezeSG 2 + structure loss 3 when `struct`,
    less where the network has fewer blocks)."""
    cfg = RunConfig()
    cfg.model = config_model(name)
    cfg.train.batch, cfg.train.precision = batch, precision
    check_batch_fits(cfg.model, batch, dev)  # the kernel's OOM killer would end the bench without a word
    cfg.train.compile, cfg.train.compile_mode = compile_mode is not None, compile_mode or "default"
    cfg.train.augment = "none"
    torch.manual_seed(0)
    nets = new_networks(cfg, dev)
    for net in (nets.g, nets.d, nets.g_ema):
        net.channels_last = channels_last
    kind = "pretrain"
    if struct:
        nets = Networks(nets.g, nets.d, nets.g_ema, copy.deepcopy(nets.g).eval())
        # the paper's setting, cut down to what a network of few blocks allows
        most = nets.g.n_blocks - 1
        cfg.finetune.freeze_sg, cfg.finetune.struct_loss, kind = min(2, most), min(3, most), "finetune"
    images = torch.randint(0, 255, (max(batch, 8), 3, cfg.model.size, cfg.model.size), dtype=torch.uint8)
    data = ImageDataset(images, [str(i) for i in range(len(images))])
    plan = make_plan(cfg.finetune, nets.g, nets.d) if struct else None
    return Trainer(cfg, nets, data, "/nonexistent", DistInfo(device=dev), plan=plan, kind=kind)


def trainer_phases(tr: Trainer, batch: int) -> Phases:
    """The Trainer's own phases, as run by its train_step."""
    dev, nets, plan = tr.dev, tr.nets, tr.plan
    z = torch.randn(batch, nets.g.style_dim, device=dev)
    beta = ema_beta(tr.t.batch, tr.t.ema_kimg)

    @torch.no_grad()
    def forward():
        with tr._amp():  # the trainer's synthesis: compiled when the trainer compiles
            tr.g_syn(nets.g.ws_from_z(z), noise_mode="const")

    def step():
        tr.d_phase(regularize=False)
        tr.g_phase(regularize=False)
        ema_update(nets.g_ema, nets.g, beta)

    def only(frozen: torch.nn.Module, phase):
        def run():
            frozen.requires_grad_(False)
            phase()
            plan.apply(nets.g, nets.d)
        return run

    return Phases(forward, step, only(nets.g, tr.r1_step), only(nets.d, tr.path_step), tr.t.d_reg_every,
                  tr.t.g_reg_every)


def bench_config(name: str, device: str = "auto", precision: str = "fp32", repeats: int = 5,
                 batch: int | None = None, compile_mode: str | None = None, channels_last: bool = True,
                 grouped_modconv: bool = False, structure: bool = True) -> BenchRow:
    """Measure one config on one device. `compile_mode` (one of config.COMPILE_MODES; None: eager)
    torch.compiles D and the synthesis; `channels_last=False` and `grouped_modconv` measure the
    slower alternatives; `structure=False` skips the structure-loss iteration."""
    with ModulatedConv2d.grouped_mode(grouped_modconv):
        return _bench_config(name, resolve_device(device), precision, repeats, batch, compile_mode, channels_last,
                             structure)


def bench_variant(dev: torch.device, compile_mode: str | None, channels_last: bool) -> str:
    """The row's choices besides config and precision, so that two rows (or two runs' JSON) say
    what differed: "eager" or the compile mode, then "nchw", "grouped modconv", "fir triton" where
    used (the Triton FIR kernel takes CUDA tensors only)."""
    parts = [compile_mode or "eager"]
    if not channels_last:
        parts.append("nchw")
    if ModulatedConv2d.grouped:
        parts.append("grouped modconv")
    if dev.type == "cuda" and active_fir_backend() != "torch":
        parts.append(f"fir {active_fir_backend()}")
    return ", ".join(parts)


def _bench_config(name, dev, precision, repeats, batch, compile_mode, channels_last, structure) -> BenchRow:
    batch = batch or default_batch(name, dev)
    reset_peak_memory(dev)
    tr = bench_trainer(name, dev, batch, precision, compile_mode, struct=False, channels_last=channels_last)
    (t_fwd, t_iter), _ = time_phases(trainer_phases(tr, batch), None, dev, repeats)
    t_struct = None
    if structure:
        st = bench_trainer(name, dev, batch, precision, compile_mode, struct=True, channels_last=channels_last)
        (_, t_struct), _ = time_phases(trainer_phases(st, batch), None, dev, repeats)
    peak = peak_memory_mb(dev)
    return BenchRow(name, str(dev), batch, precision, bench_variant(dev, compile_mode, channels_last),
                    round(batch / t_fwd, 2), round(batch / t_iter, 2),
                    round(batch / t_struct, 2) if t_struct else None, round(peak, 1))


def config_model(name: str) -> ModelConfig:
    """The ModelConfig of bench config `name`."""
    return apply_overrides(RunConfig(), {"model": CONFIGS[name][0]}).model


def check_configs(configs: list[str], dev: torch.device | None = None, batch: int | None = None) -> None:
    """ConfigError for an unknown config name or, given `dev`, a batch (default: each config's)
    that cannot fit: before any bar or network, not after the configs listed first."""
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise ConfigError(f"--configs: unknown {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    for name in configs if dev is not None else []:
        check_batch_fits(config_model(name), batch or default_batch(name, dev), dev)


def run_bench(configs: list[str], device: str = "auto", precision: str = "fp32", repeats: int = 5,
              batch: int | None = None, compile_mode: str | None = None, reporter: Reporter | None = None,
              channels_last: bool = True, grouped_modconv: bool = False) -> list[BenchRow]:
    reporter = reporter or NullReporter()
    check_configs(configs, resolve_device(device), batch)
    rows = []
    with reporter.progress(len(configs), "benchmarking") as bar, rows_kept(rows, len(configs)):
        for name in configs:
            rows.append(bench_config(name, device, precision, repeats, batch, compile_mode, channels_last,
                                     grouped_modconv))
            bar.advance()
    return rows
