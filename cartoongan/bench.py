"""`cartoongan bench`: generator forward, training iteration and structure-loss iteration speed.

Phases are timed separately (warm-up, then the median of repeats; CUDA synchronised) and the
lazy regularisers are amortised by their intervals, so a benchmark of a large config stays short.
"""
from __future__ import annotations

import copy
import resource
import statistics
import time
from dataclasses import dataclass

import torch

from .config import RunConfig
from .data import ImageDataset
from .device import resolve_device
from .distributed import DistInfo
from .freeze import make_plan
from .losses import ema_beta, ema_update
from .report import NullReporter, Reporter
from .training import Networks, Trainer, new_networks

# name: (model overrides, batch on CPU, batch on CUDA)
CONFIGS = {
    "tiny": (dict(size=32, style_dim=64, n_mlp=2, channel_multiplier=1, channel_base=1024, channel_max=64), 8, 32),
    "demo64": (dict(size=64, style_dim=128, n_mlp=4, channel_multiplier=1, channel_base=2048, channel_max=64), 16, 64),
    "r64": (dict(size=64, style_dim=512, n_mlp=8, channel_multiplier=1), 4, 32),
    "r256": (dict(size=256, style_dim=512, n_mlp=8, channel_multiplier=2), 2, 16),
}


@dataclass
class BenchRow:
    config: str
    device: str
    batch: int
    precision: str
    g_forward_img_s: float
    train_iter_img_s: float
    struct_iter_img_s: float | None
    peak_mem_mb: float


def _time(fn, dev: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median seconds of fn() after warm-up."""
    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _trainer(name: str, dev: torch.device, batch: int, precision: str, compile_: bool, struct: bool,
             channels_last: bool = True) -> Trainer:
    model, _, _ = CONFIGS[name]
    cfg = RunConfig()
    for k, v in model.items():
        setattr(cfg.model, k, v)
    cfg.train.batch, cfg.train.precision, cfg.train.compile = batch, precision, compile_
    cfg.train.augment = "none"
    torch.manual_seed(0)
    nets = new_networks(cfg, dev)
    for net in (nets.g, nets.d, nets.g_ema):
        net.channels_last = channels_last
    kind = "pretrain"
    if struct:
        nets = Networks(nets.g, nets.d, nets.g_ema, copy.deepcopy(nets.g).eval())
        cfg.finetune.freeze_sg, cfg.finetune.struct_loss, kind = 2, 3, "finetune"
    images = torch.randint(0, 255, (max(batch, 8), 3, cfg.model.size, cfg.model.size), dtype=torch.uint8)
    data = ImageDataset(images, [str(i) for i in range(len(images))])
    plan = make_plan(cfg.finetune, nets.g, nets.d) if struct else None
    return Trainer(cfg, nets, data, "/nonexistent", DistInfo(device=dev), plan=plan, kind=kind)


def _iteration_seconds(tr: Trainer, dev: torch.device, repeats: int) -> float:
    """D step + G step + EMA, plus R1 / 16 and path length / 4 (their lazy intervals)."""
    beta = ema_beta(tr.t.batch, tr.t.ema_kimg)

    def plain():
        tr.d_phase(regularize=False)
        tr.g_phase(regularize=False)
        ema_update(tr.nets.g_ema, tr.nets.g, beta)

    t = _time(plain, dev, repeats)
    t += _time(tr.r1_step, dev, max(1, repeats // 2), warmup=1) / tr.t.d_reg_every
    tr.nets.d.requires_grad_(False)
    t += _time(tr.path_step, dev, max(1, repeats // 2), warmup=1) / tr.t.g_reg_every
    tr.plan.apply(tr.nets.g, tr.nets.d)
    return t


def bench_config(name: str, device: str = "auto", precision: str = "fp32", repeats: int = 5,
                 batch: int | None = None, compile_: bool = False, channels_last: bool = True,
                 grouped_modconv: bool = False, structure: bool = True) -> BenchRow:
    """Measure one config on one device. `channels_last=False` and `grouped_modconv` measure the
    slower alternatives; `structure=False` skips the structure-loss iteration."""
    from .generator import ModulatedConv2d

    ModulatedConv2d.grouped = grouped_modconv
    try:
        return _bench_config(name, resolve_device(device), precision, repeats, batch, compile_, channels_last,
                             structure)
    finally:
        ModulatedConv2d.grouped = False


def _bench_config(name, dev, precision, repeats, batch, compile_, channels_last, structure) -> BenchRow:
    _, cpu_batch, cuda_batch = CONFIGS[name]
    batch = batch or (cuda_batch if dev.type == "cuda" else cpu_batch)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    tr = _trainer(name, dev, batch, precision, compile_, struct=False, channels_last=channels_last)
    g = tr.nets.g
    z = torch.randn(batch, g.style_dim, device=dev)

    @torch.no_grad()
    def forward():
        with tr._amp():
            g(z, noise_mode="const")

    t_fwd = _time(forward, dev, repeats)
    t_iter = _iteration_seconds(tr, dev, repeats)
    t_struct = None
    if structure:
        st = _trainer(name, dev, batch, precision, compile_, struct=True, channels_last=channels_last)
        t_struct = _iteration_seconds(st, dev, repeats)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return BenchRow(name, str(dev), batch, precision, round(batch / t_fwd, 2), round(batch / t_iter, 2),
                    round(batch / t_struct, 2) if t_struct else None, round(peak, 1))


def run_bench(configs: list[str], device: str = "auto", precision: str = "fp32", repeats: int = 5,
              batch: int | None = None, compile_: bool = False, reporter: Reporter | None = None,
              channels_last: bool = True, grouped_modconv: bool = False) -> list[BenchRow]:
    reporter = reporter or NullReporter()
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        from .errors import ConfigError

        raise ConfigError(f"--configs: unknown {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    rows = []
    with reporter.progress(len(configs), "benchmarking") as bar:
        for name in configs:
            rows.append(bench_config(name, device, precision, repeats, batch, compile_, channels_last, grouped_modconv))
            bar.advance()
    return rows

