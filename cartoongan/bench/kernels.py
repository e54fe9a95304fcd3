"""`cartoongan bench --kernels`: each speed choice timed against the alternative it replaced.

Every row runs forward + backward (training is where the time goes) of the library's own layer
("ours") and of an equivalent written the other way ("alternative"), on the same inputs; the
two are checked to agree before they are timed, so a row can never compare different maths.
The "FIR 2nd backward" rows differentiate an input gradient, as R1 and path length do, where
plain depthwise convs also compute the gradient of their fixed filters.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from ..device import math_mode, resolve_device
from ..errors import rows_kept
from ..models.discriminator import ConvLayer
from ..models.generator import Generator, ModulatedConv2d, StyledConv
from ..models import layers
from ..models.layers import Upsample
from ..ops.bias_act import SQRT2
from ..ops.fir import _depthwise, blur, fir_backend, triton_missing
from ..report import NullReporter, Reporter
from .speed import bench_trainer, default_batch, time_pair, trainer_phases

# (label, batch, channels, resolution of the input)
SHAPES = (("wide", 4, 256, 16), ("narrow", 16, 64, 32))


# the layer rows timing a double backward through the FIR filters (as R1 and path length do)
SECOND_BACKWARD = "FIR 2nd backward"

# the model-level rows timing the lazy regulariser steps (R1, path length)
REGULARISER_ROWS = ("FIR in R1 step", "FIR in path step")

# the model-level row timing the structure-loss iteration's source render
STRUCTURE_ROW = "structure source"

# the rows (CUDA with Triton only) timing the opt-in Triton FIR kernel against the default
TRITON_ROW = "FIR backend"
TRITON = functools.partial(fir_backend, "triton")

# the bench config whose whole training iteration (D + G step + EMA) the model-level rows time
MODEL_CONFIG = "demo64"


def shapes_legend() -> str:
    layers = ", ".join(f"{label} = {b}x{c}x{r}x{r}" for label, b, c, r in SHAPES)
    return f"{layers}, {MODEL_CONFIG} = its D + G step + EMA"


@dataclass
class KernelRow:
    choice: str
    shape: str
    ours: str
    ours_ms: float
    alternative: str
    alternative_ms: float
    speedup: float  # alternative_ms / ours_ms
    ours_ops: int = 0  # compute ops dispatched by one call (views excluded): kernel launches on a GPU
    alternative_ops: int = 0


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "aten" and not func.is_view:
            self.count += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[[], object], dev: torch.device | None = None) -> int:
    """How many compute ops (aten, views and other aliasing ops excluded) one call of fn on `dev`
    dispatches: on a GPU each is roughly one kernel launch, so this counts launch overhead on any
    device. Runs from a fixed seed, so that random choices (style mixing, say) match between the
    two sides of a row."""
    # the RNGs fn draws from are restored after: the CPU's, and dev's when it is a GPU (forking
    # every GPU's would start CUDA on a GPU box for a CPU row)
    cuda = [dev] if dev is not None and dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), _OpCounter() as counter:
        torch.manual_seed(0)
        fn()
    return counter.count


def _fold_blur(weight: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Compose a [A, B, 3, 3] conv weight with the 4x4 FIR kernel: [A, B, 6, 6]."""
    a, b, k, _ = weight.shape
    flat = F.pad(weight.reshape(a * b, 1, k, k), (3, 3, 3, 3))
    return F.conv2d(flat, kernel.flip(0, 1)[None, None].to(weight.dtype)).reshape(a, b, k + 3, k + 3)


def folded_upsample_conv(conv: ModulatedConv2d, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The upsampling modulated conv as ONE 6x6 stride-2 transposed conv with the blur folded in."""
    s = conv.modulation.forward_scaled(w, conv.scale)  # as ModulatedConv2d: the weight's scale on the style
    weight = conv.weight[0]
    kernel = _fold_blur(weight.transpose(0, 1), conv.blur.kernel)
    y = F.conv_transpose2d(x * s[:, :, None, None], kernel, stride=2, padding=2)
    d = torch.rsqrt(s.square() @ weight.square().sum(dim=(2, 3)).t() + 1e-8)
    return y * d[:, :, None, None]


def folded_downsample_conv(layer: ConvLayer, x: torch.Tensor) -> torch.Tensor:
    """The discriminator's blur + stride-2 3x3 conv as ONE 6x6 stride-2 conv."""
    blur_mod, conv = layer[0], layer[1]
    kernel = _fold_blur(conv.weight * conv.scale, blur_mod.kernel)
    y = F.conv2d(x, kernel, stride=2, padding=blur_mod.pad[0])
    return F.leaky_relu(y + layer[2].bias.view(1, -1, 1, 1), 0.2) * SQRT2


def full_blur_skip(layer: ConvLayer, x: torch.Tensor) -> torch.Tensor:
    """The residual skip's blur at full resolution, then the 1x1 conv with stride 2."""
    blur_mod, conv = layer[0], layer[1]
    return F.conv2d(blur(x, blur_mod.kernel, blur_mod.pad), conv.weight * conv.scale, stride=2)


def zero_insertion_upsample(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """upfirdn2d(up=2, pad=(2, 1)) the direct way: insert zeros, pad, filter."""
    b, c, h, w = x.shape
    up = x.new_zeros(b, c, h, 2, w, 2)
    up[:, :, :, 0, :, 0] = x
    return blur(up.reshape(b, c, 2 * h, 2 * w), kernel, (2, 1))


def depthwise_blur(x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int], stride: int = 1) -> torch.Tensor:
    """ops.fir.blur as a plain depthwise conv: its double backward computes the fixed filter's gradient."""
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    return F.conv2d(x, _depthwise(kernel, x), stride=stride, groups=x.shape[1])


def depthwise_upsample2x(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """ops.fir.upsample2x as a plain depthwise transposed conv (same double-backward cost)."""
    return F.conv_transpose2d(x, _depthwise(kernel, x), stride=2, padding=1, groups=x.shape[1])


@contextlib.contextmanager
def depthwise_fir():
    """Within: the models' Blur and Upsample layers filter with the plain depthwise convs."""
    before = layers.blur, layers.upsample2x
    layers.blur, layers.upsample2x = depthwise_blur, depthwise_upsample2x
    try:
        yield
    finally:
        layers.blur, layers.upsample2x = before


@contextlib.contextmanager
def full_source_render():
    """Within: every synthesis renders all blocks, as the structure loss's source did before it
    stopped at the loss's last tap."""
    partial = Generator.synthesis

    def full(self, ws, *args, n_blocks=None, **kwargs):
        return partial(self, ws, *args, **kwargs)

    Generator.synthesis = full
    try:
        yield
    finally:
        Generator.synthesis = partial


def within(context: Callable[[], contextlib.AbstractContextManager], fn: Callable) -> Callable:
    """fn, run inside a fresh `context()` each call (the alternative side of a row)."""
    def run():
        with context():
            return fn()
    return run


def optimizer_steps(optimizers: list[torch.optim.Optimizer]) -> Callable[[], None]:
    """() -> one step of each optimizer, every parameter given a gradient once beforehand."""
    for opt in optimizers:
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = torch.randn_like(p)

    def run():
        for opt in optimizers:
            opt.step()
    return run


def triton_fir_available(dev: torch.device) -> bool:
    """Whether the Triton FIR backend can run here (a CUDA device, Triton and what it builds with)."""
    return dev.type == "cuda" and triton_missing() is None


def input_gradient(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """() -> d(sum fn(x)^2)/dx with its graph kept, so that a timed backward of it is a double
    backward of fn, as in R1 and path length."""
    def run():
        with torch.enable_grad():
            return torch.autograd.grad(fn(x).square().sum(), x, create_graph=True)[0]
    return run


def unfused_styled_conv(layer: StyledConv, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """StyledConv as separate passes: demodulate, add noise, add bias, leaky ReLU, gain."""
    y = layer.conv(x, w)
    y = y + layer.noise.weight * noise
    y = y + layer.activate.bias.view(1, -1, 1, 1)
    return F.leaky_relu(y, 0.2) * SQRT2


def _cases(batch: int, ch: int, res: int, dev: torch.device):
    """(choice, ours label, ours fn, alternative label, alternative fn), each fn() -> output tensor."""
    torch.manual_seed(0)
    nchw = torch.randn(batch, ch, res, res, device=dev)
    x = nchw.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    x_nchw = nchw.clone().requires_grad_(True)
    w = torch.randn(batch, 64, device=dev)
    conv = ModulatedConv2d(ch, ch, 3, 64).to(dev)
    up = ModulatedConv2d(ch, ch, 3, 64, upsample=True).to(dev)
    down = ConvLayer(ch, ch, 3, downsample=True).to(dev)
    skip = ConvLayer(ch, ch, 1, downsample=True, activate=False, bias=False).to(dev)
    styled = StyledConv(ch, ch, 64).to(dev)
    with torch.no_grad():
        styled.noise.weight.fill_(0.1)
        styled.activate.bias.normal_()
    noise = torch.randn(batch, 1, res, res, device=dev)
    rgb = torch.randn(batch, 3, res, res, device=dev, requires_grad=True)
    up_rgb = Upsample().to(dev)

    r1_like = input_gradient(down, x)
    path_like = input_gradient(lambda t: up_rgb(up(t, w)), x)
    return [
        ("modulated conv", "x*s, conv, *d", lambda: conv(x, w), "grouped",
         within(ModulatedConv2d.grouped_mode, lambda: conv(x, w))),
        ("upsampling conv", "3x3T + blur", lambda: up(x, w),
         "folded 6x6T", lambda: folded_upsample_conv(up, x, w)),
        ("downsampling conv", "blur + 3x3/2", lambda: down(x),
         "folded 6x6/2", lambda: folded_downsample_conv(down, x)),
        ("downsampling skip", "blur/2 + 1x1", lambda: skip(x),
         "blur + 1x1/2", lambda: full_blur_skip(skip, x)),
        ("RGB upsample", "transposed", lambda: up_rgb(rgb),
         "zero-insert", lambda: zero_insertion_upsample(rgb, up_rgb.kernel)),
        ("conv epilogue", "3 passes", lambda: styled(x, w, noise),
         "6 passes", lambda: unfused_styled_conv(styled, x, w, noise)),
        ("memory format", "NHWC", lambda: styled(x, w, noise),
         "NCHW", lambda: styled(x_nchw, w, noise)),
        (SECOND_BACKWARD, "D blur op", r1_like, "depthwise conv", within(depthwise_fir, r1_like)),
        (SECOND_BACKWARD, "G FIR ops", path_like, "depthwise conv", within(depthwise_fir, path_like)),
    ] + ([(TRITON_ROW, "depthwise blur", lambda: blur(x, down[0].kernel, (2, 2)), "triton",
           within(TRITON, lambda: blur(x, down[0].kernel, (2, 2)))),
          (TRITON_ROW, "depthwise up2x", lambda: up_rgb(x), "triton", within(TRITON, lambda: up_rgb(x)))]
         if triton_fir_available(dev) else [])


def _model_cases(dev: torch.device):
    """Whole-iteration rows: choices whose effect is spread over many layers; the last two time the
    lazy regulariser steps, whose double backward runs through every FIR filter."""
    batch = default_batch(MODEL_CONFIG, dev)
    trainers = [bench_trainer(MODEL_CONFIG, dev, batch, "fp32", None, struct=False, channels_last=cl)
                for cl in (True, False)]
    nhwc_phases, nchw_phases = (trainer_phases(tr, batch) for tr in trainers)
    nhwc, nchw = nhwc_phases.step, nchw_phases.step
    structure = trainer_phases(bench_trainer(MODEL_CONFIG, dev, batch, "fp32", None, struct=True), batch).step
    # the optimizers of the second trainer, so that its parameters move, not those timed above
    fused = [trainers[1].g_optim, trainers[1].d_optim]
    default = [torch.optim.Adam(opt.param_groups[0]["params"], lr=opt.defaults["lr"], betas=opt.defaults["betas"])
               for opt in fused]

    return [("memory format", "NHWC", nhwc, "NCHW", nchw),
            ("modulated conv", "x*s, conv, *d", nhwc, "grouped", within(ModulatedConv2d.grouped_mode, nhwc)),
            ("optimizer (G, D)", "fused Adam", optimizer_steps(fused), "torch default", optimizer_steps(default)),
            (STRUCTURE_ROW, "to last tap", structure, "full render", within(full_source_render, structure)),
            (REGULARISER_ROWS[0], "FIR ops", nhwc_phases.r1, "depthwise conv", within(depthwise_fir, nhwc_phases.r1)),
            (REGULARISER_ROWS[1], "FIR ops", nhwc_phases.path, "depthwise conv",
             within(depthwise_fir, nhwc_phases.path))] + (
        [(TRITON_ROW, "depthwise convs", nhwc, "triton", within(TRITON, nhwc)),
         (TRITON_ROW + " in R1", "depthwise convs", nhwc_phases.r1, "triton", within(TRITON, nhwc_phases.r1))]
        if triton_fir_available(dev) else [])


def _train_pass(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
    def run():
        fn().square().mean().backward()

    return run


def _row(choice: str, shape: str, ours: str, alternative: str, seconds: tuple[float, float],
         ops: tuple[int, int]) -> KernelRow:
    t_ours, t_alt = (1000 * t for t in seconds)
    return KernelRow(choice, shape, ours, round(t_ours, 2), alternative, round(t_alt, 2), round(t_alt / t_ours, 2),
                     *ops)


def run_kernel_bench(device: str = "auto", repeats: int = 5, reporter: Reporter | None = None) -> list[KernelRow]:
    """Time each (ours, alternative) pair, forward + backward, at the SHAPES (medians in ms of
    3 * repeats alternating runs; `repeats` for the slow double-backward rows), then the
    whole-iteration pairs at MODEL_CONFIG."""
    reporter = reporter or NullReporter()
    dev = resolve_device(device)
    layer_cases = [(label, case) for label, b, c, r in SHAPES for case in _cases(b, c, r, dev)]
    model_cases = _model_cases(dev)
    rows = []
    total = len(layer_cases) + len(model_cases)
    with reporter.progress(total, "op alternatives") as bar, rows_kept(rows, total):
        for label, (choice, ours_name, ours, alt_name, alt) in layer_cases:
            with torch.no_grad(), math_mode("fp32"):  # the 1e-3 below is IEEE fp32's, not TF32's
                a, b = ours(), alt()
                err = (a - b).abs().max() / a.abs().max()
            if err > 1e-3:
                raise RuntimeError(f"{choice}: the alternative disagrees with ours ({err.item():.2e})")
            runs = repeats if choice == SECOND_BACKWARD else 3 * repeats  # the old form takes seconds
            ours, alt = _train_pass(ours), _train_pass(alt)
            seconds = time_pair(ours, alt, dev, runs)
            rows.append(_row(choice, label, ours_name, alt_name, seconds, (count_ops(ours, dev), count_ops(alt, dev))))
            bar.advance()
        for choice, ours_name, ours, alt_name, alt in model_cases:
            lazy = choice in REGULARISER_ROWS  # slow steps: fewer runs, as `bench` times them
            seconds = time_pair(ours, alt, dev, max(1, repeats // 2) if lazy else repeats, 1 if lazy else 2)
            rows.append(_row(choice, MODEL_CONFIG, ours_name, alt_name, seconds, (count_ops(ours, dev), count_ops(alt, dev))))
            bar.advance()
    return rows
