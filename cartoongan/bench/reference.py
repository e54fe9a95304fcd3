"""`cartoongan bench --reference PATH`: the same phases timed on rosinality/stylegan2-pytorch.

The user fetches the reference (`git clone https://github.com/rosinality/stylegan2-pytorch`);
nothing of it is bundled. Its `model.py` runs unmodified. On the CPU its `op` package would try
to compile CUDA kernels at import time, so the compile call is stubbed out while importing;
its own CPU fallbacks (upfirdn2d_native, the leaky ReLU path) are what then run. On CUDA the
compile is left alone, so its fused kernels are what gets measured.

The reference training iteration follows its train.py: D step, R1 (amortised over 16 steps),
G step, path length on half the batch (amortised over 4), EMA; its per-step `.item()` logging
syncs are left out, which only favours the reference.
"""
from __future__ import annotations

import contextlib
import importlib
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..device import peak_memory_mb, reset_peak_memory, resolve_device
from ..errors import ConfigError, first_line, rows_kept
from ..report import NullReporter, Reporter
from .speed import CONFIGS, Phases, bench_trainer, check_configs, default_batch, time_phases, trainer_phases

REFERENCE_URL = "https://github.com/rosinality/stylegan2-pytorch"


# the only architecture knobs rosinality's Generator/Discriminator take
REFERENCE_KEYS = {"size", "style_dim", "n_mlp", "channel_multiplier"}


@dataclass
class ComparisonRow:
    config: str
    device: str
    batch: int
    precision: str  # ours; the reference always runs fp32
    compile_mode: str  # ours: "eager" or a torch.compile mode (the reference runs eager)
    ours_forward_img_s: float
    reference_forward_img_s: float
    forward_ratio: float
    ours_train_img_s: float
    reference_train_img_s: float
    train_ratio: float
    struct_cost: float  # our structure-loss iteration's time over our plain one's (timed alternately)
    ours_peak_mb: float | None  # peak GPU memory one step + R1 + path length add (None on the CPU)
    reference_peak_mb: float | None


# the speed goals for one GPU at 256 px config F: training iteration at least 1.5x the reference
# (2x with bf16), generator forward at least 1.2x, a structure-loss iteration at most 1.35x a plain one
TRAIN_GOALS = {"fp32": 1.5, "tf32": 1.5, "bf16": 2.0}
FORWARD_GOAL, STRUCTURE_GOAL = 1.2, 1.35


@dataclass
class GoalRow:
    config: str
    precision: str
    measure: str  # "train" and "forward": ours / reference; "structure": our structure-loss / plain iteration
    bound: str  # the goal, e.g. ">= 1.5x"
    measured: float
    met: bool


def goal_rows(r: ComparisonRow) -> list[GoalRow]:
    """One comparison row checked against the goals (meant for r256 on a GPU; elsewhere a preview):
    train, forward and structure. Peak memory has no goal: it is reported beside the reference's in
    the comparison itself."""
    train = TRAIN_GOALS[r.precision]
    return [GoalRow(r.config, r.precision, "train", f">= {train}x", r.train_ratio, r.train_ratio >= train),
            GoalRow(r.config, r.precision, "forward", f">= {FORWARD_GOAL}x", r.forward_ratio,
                    r.forward_ratio >= FORWARD_GOAL),
            GoalRow(r.config, r.precision, "structure", f"<= {STRUCTURE_GOAL}x", r.struct_cost,
                    r.struct_cost <= STRUCTURE_GOAL)]


@contextlib.contextmanager
def _no_extension_build():
    """Make torch.utils.cpp_extension.load a no-op while the reference's `op` package imports."""
    import torch.utils.cpp_extension as ext

    real = ext.load
    ext.load = lambda *args, **kwargs: None
    try:
        yield
    finally:
        ext.load = real


def forget_reference_modules() -> None:
    """Drop the reference's `model` and `op` modules from the import cache."""
    for name in [m for m in sys.modules if m in ("model", "op") or m.startswith("op.")]:
        del sys.modules[name]


def _checkout_folder(path: str | Path) -> Path:
    """The resolved folder of a checkout that has rosinality's model.py and op/ package."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise ConfigError(f"--reference {path}: no such folder; clone {REFERENCE_URL} and pass its folder")
    missing = [name for name, there in (("model.py", (root / "model.py").is_file()), ("op/", (root / "op").is_dir()))
               if not there]
    if missing:
        raise ConfigError(f"--reference {path}: no {' and '.join(missing)} there; clone {REFERENCE_URL} and pass its "
                          "folder")
    return root


def load_reference(path: str | Path, device: torch.device):
    """Import the reference checkout's `model` module (its Generator and Discriminator)."""
    root = _checkout_folder(path)
    forget_reference_modules()  # a previous --reference (tests) must not shadow this one
    sys.path.insert(0, str(root))
    try:
        guard = _no_extension_build() if device.type != "cuda" else contextlib.nullcontext()
        with guard:
            model = importlib.import_module("model")
            gradfix = importlib.import_module("op.conv2d_gradfix")
    except (Exception, SystemExit) as exc:  # their import can fail in many ways (nvcc, ninja, an exit); say which
        raise ConfigError(f"--reference {path}: importing its model.py failed ({type(exc).__name__}: {exc})") from exc
    finally:
        sys.path.remove(str(root))
    lacking = [name for name in ("Generator", "Discriminator") if not callable(getattr(model, name, None))]
    if lacking or not callable(getattr(gradfix, "no_weight_gradients", None)):
        # another project's model.py (or an older checkout): their calls would fail minutes in
        what = ", ".join(lacking) if lacking else "op.conv2d_gradfix.no_weight_gradients"
        raise ConfigError(f"--reference {path}: its model.py is not rosinality's stylegan2-pytorch (no {what}); "
                          f"clone {REFERENCE_URL} and pass its folder")
    return model, gradfix


def _reference_networks(model, name: str, dev: torch.device):
    arch, _, _ = CONFIGS[name]
    torch.manual_seed(0)

    def generator():
        return model.Generator(arch["size"], arch["style_dim"], arch["n_mlp"], channel_multiplier=arch["channel_multiplier"])

    try:
        g, g_ema = generator(), generator()
        d = model.Discriminator(arch["size"], channel_multiplier=arch["channel_multiplier"])
        g_ema.load_state_dict(g.state_dict())
    except (TypeError, ValueError, AttributeError, KeyError, RuntimeError) as exc:  # a modified or older model.py
        raise ConfigError(f"the reference's Generator/Discriminator do not build as rosinality's do "
                          f"({type(exc).__name__}: {first_line(exc, 120)}): pass a checkout of {REFERENCE_URL}") from None
    return g.to(dev), d.to(dev), g_ema.to(dev).eval(), arch


class _ReferenceLoop:
    """rosinality's train.py phases (defaults: mixing 0.9, r1 10, path weight 2, lazy 16/4)."""

    def __init__(self, model, gradfix, name: str, dev: torch.device, batch: int):
        self.g, self.d, self.g_ema, arch = _reference_networks(model, name, dev)
        self.gradfix, self.dev, self.batch, self.style_dim = gradfix, dev, batch, arch["style_dim"]
        self.real = torch.rand(batch, 3, arch["size"], arch["size"], device=dev) * 2 - 1
        g_ratio, d_ratio = 4 / 5, 16 / 17
        self.g_optim = torch.optim.Adam(self.g.parameters(), lr=0.002 * g_ratio, betas=(0.0, 0.99**g_ratio))
        self.d_optim = torch.optim.Adam(self.d.parameters(), lr=0.002 * d_ratio, betas=(0.0, 0.99**d_ratio))
        self.mean_path = torch.zeros((), device=dev)

    def _noise(self, n: int):
        if random.random() < 0.9:
            return list(torch.randn(2, n, self.style_dim, device=self.dev).unbind(0))
        return [torch.randn(n, self.style_dim, device=self.dev)]

    def forward(self, z: torch.Tensor) -> None:
        with torch.no_grad():
            self.g([z], randomize_noise=False)

    def d_step(self) -> None:
        self.g.requires_grad_(False)
        self.d.requires_grad_(True)
        fake, _ = self.g(self._noise(self.batch))
        loss = F.softplus(self.d(fake)).mean() + F.softplus(-self.d(self.real)).mean()
        self.d.zero_grad()
        loss.backward()
        self.d_optim.step()

    def r1_step(self) -> None:
        real = self.real.detach().requires_grad_(True)
        pred = self.d(real)
        with self.gradfix.no_weight_gradients():
            (grad,) = torch.autograd.grad(pred.sum(), real, create_graph=True)
        penalty = grad.pow(2).reshape(grad.shape[0], -1).sum(1).mean()
        self.d.zero_grad()
        (10 / 2 * penalty * 16 + 0 * pred[0]).backward()
        self.d_optim.step()

    def g_step(self) -> None:
        self.g.requires_grad_(True)
        self.d.requires_grad_(False)
        fake, _ = self.g(self._noise(self.batch))
        loss = F.softplus(-self.d(fake)).mean()
        self.g.zero_grad()
        loss.backward()
        self.g_optim.step()

    def path_step(self) -> None:
        fake, latents = self.g(self._noise(max(1, self.batch // 2)), return_latents=True)
        noise = torch.randn_like(fake) / math.sqrt(fake.shape[2] * fake.shape[3])
        (grad,) = torch.autograd.grad((fake * noise).sum(), latents, create_graph=True)
        lengths = grad.pow(2).sum(2).mean(1).sqrt()
        mean = self.mean_path + 0.01 * (lengths.mean() - self.mean_path)
        self.g.zero_grad()
        (2 * 4 * (lengths - mean).pow(2).mean() + 0 * fake[0, 0, 0, 0]).backward()
        self.g_optim.step()
        self.mean_path = mean.detach()

    @torch.no_grad()
    def ema(self) -> None:
        ours = dict(self.g.named_parameters())
        for k, p in self.g_ema.named_parameters():
            p.mul_(0.999).add_(ours[k], alpha=0.001)

    def phases(self) -> Phases:
        z = torch.randn(self.batch, self.style_dim, device=self.dev)

        def step():
            self.d_step()
            self.g_step()
            self.ema()

        def r1():
            self.g.requires_grad_(False)
            self.d.requires_grad_(True)
            self.r1_step()

        def path():
            self.g.requires_grad_(True)
            self.d.requires_grad_(False)
            self.path_step()

        return Phases(lambda: self.forward(z), step, r1, path, d_reg_every=16, g_reg_every=4)


def _peak_mb(phases: Phases, dev: torch.device) -> float | None:
    """Peak GPU memory of one step, one R1 step and one path-length step, above what was allocated
    before them (both sides' weights, gradients and optimizer state stay resident while either
    runs, so only the memory a side's own passes add tells them apart). None on the CPU."""
    if dev.type != "cuda":
        return None
    torch.cuda.synchronize(dev)
    reset_peak_memory(dev)
    resident = torch.cuda.memory_allocated(dev) / 2**20
    for phase in (phases.step, phases.r1, phases.path):
        phase()
    torch.cuda.synchronize(dev)
    return round(peak_memory_mb(dev) - resident, 1)


def check_reference_configs(configs: list[str]) -> None:
    """Refuse a config that rosinality's networks can't build (the narrowed ones)."""
    for name in configs:
        extra = set(CONFIGS[name][0]) - REFERENCE_KEYS
        if extra:
            raise ConfigError(f"--configs {name}: sets {', '.join(sorted(extra))}, which rosinality's networks "
                              "lack; compare with r64 or r256")


def compare_with_reference(path: str | Path, configs: list[str], device: str = "auto", repeats: int = 5,
                           batch: int | None = None, reporter: Reporter | None = None,
                           precision: str = "fp32", compile_mode: str | None = None) -> list[ComparisonRow]:
    """Time ours (at `precision`) and the reference (fp32, the precision its train.py uses) at the
    same configs, batch and device, phase by phase and alternately. Both run under the math mode
    `precision` sets (set_math_mode: TF32 allowed for tf32 and bf16) and with the cuDNN autotuning
    our trainer turns on, so fp32 work is compared like for like. Our structure-loss iteration
    (FreezeSG 2, structure loss 3) is timed against our plain one in the same run. `compile_mode`
    torch.compiles our networks (the reference stays eager, as its train.py runs)."""
    reporter = reporter or NullReporter()
    dev = resolve_device(device)
    check_configs(configs, dev, batch)
    check_reference_configs(configs)  # before anything is timed
    model, gradfix = load_reference(path, dev)
    rows = []
    with reporter.progress(len(configs), "ours vs reference") as bar, rows_kept(rows, len(configs)):
        for name in configs:
            n = batch or default_batch(name, dev)
            ours = trainer_phases(bench_trainer(name, dev, n, precision, compile_mode, struct=False), n)
            reference = _ReferenceLoop(model, gradfix, name, dev, n).phases()
            (o_fwd, o_iter), (r_fwd, r_iter) = time_phases(ours, reference, dev, repeats)
            peaks = _peak_mb(ours, dev), _peak_mb(reference, dev)
            del reference
            # the structure-loss cost in the same run, against our plain iteration timed beside it
            structure = trainer_phases(bench_trainer(name, dev, n, precision, compile_mode, struct=True), n)
            (_, plain_iter), (_, struct_iter) = time_phases(ours, structure, dev, repeats)
            rows.append(ComparisonRow(name, str(dev), n, precision, compile_mode or "eager",
                                      round(n / o_fwd, 2), round(n / r_fwd, 2), round(r_fwd / o_fwd, 3),
                                      round(n / o_iter, 2), round(n / r_iter, 2), round(r_iter / o_iter, 3),
                                      round(struct_iter / plain_iter, 3), *peaks))
            bar.advance()
    return rows
