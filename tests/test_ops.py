"""ops.fir and ops.resample: exact stand-ins for the plain PyTorch forms they replace, differentiable
to any order, and never differentiating a fixed filter or grid_sample's backward."""
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck
from torch.utils._python_dispatch import TorchDispatchMode

from cartoongan import Discriminator
from cartoongan.models import layers
from cartoongan.ops.fir import blur, make_kernel, upsample2x
from cartoongan.ops.resample import resample
from cartoongan.train import augment as augment_module
from cartoongan.train.augment import augment, geometric_matrix
from cartoongan.train.losses import path_length_penalty, r1_penalty

# every blur the models use: G's upsampling-conv blur, D's blur before the stride-2 3x3 conv, D's
# strided skip blur; plus an uneven pad (bench's zero-insertion upsample)
BLURS = [((1, 1), 1, 4.0), ((2, 2), 1, 1.0), ((1, 1), 2, 1.0), ((2, 1), 1, 1.0), ((2, 1), 2, 1.0)]


def old_blur(x, kernel, pad, stride=1):
    """The depthwise F.conv2d form that ops.fir.blur replaced."""
    c = x.shape[1]
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    return F.conv2d(x, kernel.to(x.dtype)[None, None].expand(c, 1, *kernel.shape), stride=stride, groups=c)


def old_upsample2x(x, kernel):
    """The depthwise F.conv_transpose2d form that ops.fir.upsample2x replaced."""
    c = x.shape[1]
    return F.conv_transpose2d(x, kernel.to(x.dtype)[None, None].expand(c, 1, *kernel.shape), stride=2,
                              padding=1, groups=c)


def old_resample(x, grid):
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def dense_resample(x, grid):
    """old_resample as an explicit linear map: grid_sample of the identity basis (forward only) gives
    the sampling matrix, so every derivative is an einsum (aten's grid_sampler_2d_backward has no
    derivative before torch 2.14, on any device)."""
    b, c, h, w = x.shape
    basis = torch.eye(h * w, dtype=x.dtype, device=x.device).reshape(h * w, 1, h, w)
    m = torch.stack([old_resample(basis, grid[i:i + 1].to(x.dtype).expand(h * w, *grid.shape[1:]))[:, 0]
                     for i in range(b)])  # [B, H*W, Ho, Wo]
    return torch.einsum("bck,bkyx->bcyx", x.reshape(b, c, h * w), m)


def _grid(n, out_hw, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    g = geometric_matrix(n, out_hw[0], 1.0, "cpu")
    return F.affine_grid(g[:, :2].to(dtype), [n, 1, *out_hw], align_corners=False)


OPS = [(f"blur{pad}/{stride}", lambda x, k=make_kernel(gain=g), p=pad, s=stride: blur(x, k, p, s),
        lambda x, k=make_kernel(gain=g), p=pad, s=stride: old_blur(x, k, p, s)) for pad, stride, g in BLURS]
OPS.append(("upsample2x", lambda x, k=make_kernel(gain=4.0): upsample2x(x, k),
            lambda x, k=make_kernel(gain=4.0): old_upsample2x(x, k)))
OPS.append(("resample", lambda x, g=_grid(2, (6, 7)): resample(x, g),
            lambda x, g=_grid(2, (6, 7)): old_resample(x, g)))


@pytest.mark.parametrize("name,op,old", OPS, ids=[o[0] for o in OPS])
def test_op_matches_the_form_it_replaced_and_is_twice_differentiable(name, op, old):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)  # odd, non-square
    y, y_old = op(x), old(x)
    assert y.shape == y_old.shape and torch.allclose(y, y_old, rtol=0, atol=1e-12)
    g = torch.randn_like(y)
    (gx,), (gx_old,) = torch.autograd.grad(y, x, g), torch.autograd.grad(y_old, x, g)
    assert torch.allclose(gx, gx_old, rtol=0, atol=1e-12)
    small = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True) if name != "resample" else x
    assert gradcheck(op, (small,), fast_mode=True) and gradgradcheck(op, (small,), fast_mode=True)


def test_fp32_forward_and_backward_are_bit_identical_to_the_old_forms():
    x = torch.randn(2, 8, 16, 16).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    for name, op, old in OPS[:-1]:
        y, y_old = op(x), old(x)
        g = torch.randn_like(y)
        assert torch.equal(y, y_old), name
        assert torch.equal(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(y_old, x, g)[0]), name


def test_the_kernel_never_receives_a_gradient():
    k = make_kernel().requires_grad_(True)
    x = torch.randn(1, 2, 8, 8, requires_grad=True)
    (gx,) = torch.autograd.grad(blur(x, k, (2, 2)).square().sum(), x, create_graph=True)
    (gx + upsample2x(x, k).sum()).square().sum().backward()
    assert k.grad is None and x.grad is not None


class FilterWeightGradients(TorchDispatchMode):
    """Counts convolutions that compute the gradient of a fixed 4x4 FIR filter: a conv whose result
    is filter-sized while its 'weight' is an activation, or a conv backward asked for the gradient
    of a depthwise [C, 1, 4, 4] weight. The models' learned weights are 3x3 and 1x1, so neither
    pattern can come from them."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.convolution.default:
            if tuple(out.shape[-2:]) == (4, 4) and min(args[1].shape[-2:]) > 4:
                self.count += 1
        elif func is torch.ops.aten.convolution_backward.default:
            weight, mask = args[2], args[-1]
            if mask[1] and weight.shape[1] == 1 and tuple(weight.shape[-2:]) == (4, 4):
                self.count += 1
        return out


def _old_fir(monkeypatch):
    monkeypatch.setattr(layers, "blur", old_blur)
    monkeypatch.setattr(layers, "upsample2x", old_upsample2x)


def _r1_filter_gradients(d) -> int:
    real = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    penalty = r1_penalty(d(real), real)
    with FilterWeightGradients() as probe:
        penalty.backward()
    return probe.count


def _path_filter_gradients(g) -> int:
    ws = g.ws_from_z(torch.randn(2, g.style_dim)).detach().requires_grad_(True)
    penalty, _, _ = path_length_penalty(g.synthesis(ws).image, ws, torch.zeros(()))
    with FilterWeightGradients() as probe:
        penalty.backward()
    return probe.count


def test_r1_and_path_length_never_differentiate_a_fixed_filter(tiny_g, monkeypatch):
    d, g = Discriminator(8, channel_base=64, channel_max=8), tiny_g(8, channel_max=8)
    assert _r1_filter_gradients(d) == 0
    assert _path_filter_gradients(g) == 0
    _old_fir(monkeypatch)  # the probe does see the old depthwise forms compute the filter's gradient
    assert _r1_filter_gradients(d) > 0
    assert _path_filter_gradients(g) > 0


def _graph_nodes(t: torch.Tensor) -> set[str]:
    seen, todo, names = set(), [t.grad_fn], set()
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        todo.extend(n for n, _ in fn.next_functions)
    return names


def _ada_r1(d):
    """R1 through ADA at p = 1: (first-order gradient, penalty, d(penalty)/d(D params))."""
    real = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    torch.manual_seed(3)
    logits = d(augment(real, 1.0))
    (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    penalty = grad.square().flatten(1).sum(1).mean()
    return grad, penalty, torch.autograd.grad(penalty, list(d.parameters()), allow_unused=True)


def test_r1_through_ada_differentiates_twice_without_grid_samplers_double_backward(tiny_d, monkeypatch):
    d = tiny_d(16)
    grad, penalty, param_grads = _ada_r1(d)
    nodes = _graph_nodes(grad)
    assert "_ResampleAdjointBackward" in nodes and "GridSampler2DBackwardBackward0" not in nodes
    assert sum(p is not None for p in param_grads) > len(param_grads) // 2
    # the old form needed aten's grid_sampler_2d_backward derivative (absent on CUDA, and on the CPU
    # before torch 2.14): compare with the same sampling as an explicit linear map instead
    monkeypatch.setattr(augment_module, "resample", dense_resample)
    old_grad, old_penalty, old_param_grads = _ada_r1(d)
    assert not {"_ResampleAdjointBackward", "GridSampler2DBackwardBackward0"} & _graph_nodes(old_grad)
    assert torch.allclose(penalty, old_penalty, rtol=1e-5)
    for p, q in zip(param_grads, old_param_grads):
        assert (p is None) == (q is None)
        if p is not None:  # float32 sums in another order (AVX2 vs AVX-512): near-zero entries differ
            assert torch.allclose(p, q, rtol=1e-4, atol=1e-5 * q.abs().max().item())


def test_resample_under_bf16_autocast_keeps_dtypes():
    grid = _grid(2, (8, 8), dtype=torch.bfloat16)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(2, 3, 8, 8, dtype=dtype, requires_grad=True)
        with torch.autocast("cpu", torch.bfloat16):
            y = resample(x, grid)
            (gx,) = torch.autograd.grad(y.float().square().sum(), x, create_graph=True)
            gx.float().square().sum().backward()
        assert y.dtype == gx.dtype == x.grad.dtype == dtype
        ref = old_resample(x.detach().float(), grid.float())
        assert torch.allclose(y.float(), ref, atol=0.05)


def test_a_kernel_built_on_another_device_is_moved_to_the_inputs(monkeypatch):
    """A caller's [k, k] kernel (made on the CPU by make_kernel) filters a tensor on another device:
    'meta' stands in for CUDA, whose convolutions refuse a CPU weight."""
    import cartoongan.ops.fir as fir

    seen = []
    for name in ("conv2d", "conv_transpose2d"):
        real = getattr(fir.F, name)
        monkeypatch.setattr(fir.F, name, lambda x, w, *a, real=real, **k: seen.append(w.device) or real(x, w, *a, **k))
    x = torch.randn(1, 2, 8, 8, device="meta")
    assert blur(x, make_kernel(), (1, 1)).shape == (1, 2, 7, 7)
    assert upsample2x(x, make_kernel(gain=4.0)).shape == (1, 2, 16, 16)
    assert seen == [torch.device("meta")] * 2


@pytest.mark.cuda
@pytest.mark.parametrize("name,op,old", OPS, ids=[o[0] for o in OPS])
def test_cuda_ops_match_the_cpu_and_are_twice_differentiable(name, op, old):
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    xc = x.cuda().requires_grad_(True)
    cuda_op = (lambda t: resample(t, _grid(2, (6, 7)).cuda())) if name == "resample" else op
    y = cuda_op(xc)
    assert torch.allclose(y.cpu(), old(x), atol=1e-12)
    small = torch.randn(1, 2, 5, 6, dtype=torch.float64, device="cuda", requires_grad=True)
    small = xc if name == "resample" else small
    # CUDA's grid_sample backward and some cuDNN algorithms accumulate in a varying order
    assert (gradcheck(cuda_op, (small,), fast_mode=True, nondet_tol=1e-12)
            and gradgradcheck(cuda_op, (small,), fast_mode=True, nondet_tol=1e-12))


@pytest.mark.cuda
@pytest.mark.parametrize("autocast", [False, True])
def test_cuda_r1_through_ada(tiny_d, autocast):
    d = tiny_d(16).cuda()
    real = torch.randn(4, 3, 16, 16, device="cuda", requires_grad=True)
    with torch.autocast("cuda", torch.bfloat16, enabled=autocast):
        logits = d(augment(real, 1.0)).float()
    penalty = r1_penalty(logits, real)
    penalty.backward()  # the old grid_sample form raised: no derivative for grid_sampler_2d_backward
    assert torch.isfinite(penalty) and d.convs[0][0].weight.grad.abs().sum() > 0


def test_bf16_and_fp32_images_are_resampled_at_the_same_positions():
    """ADA augments bf16 fakes and fp32 reals: the sampling grid must not be rounded to bf16 for one
    of them, or D could tell them apart by where the pixels were taken."""
    from cartoongan.train.augment import augment

    x = (torch.rand(2, 3, 64, 64) > 0.5).float() * 2 - 1  # sharp edges everywhere
    torch.manual_seed(3)
    ref = augment(x, 1.0)
    torch.manual_seed(3)
    low = augment(x.bfloat16(), 1.0).float()
    assert (low - ref).abs().max() < 0.1  # bf16 value rounding only, no half-pixel shifts
    # the trainer augments inside autocast (--precision bf16), which would run the matrix products
    # and affine_grid's in bf16: the same positions must come out, for reals and fakes alike
    for images in (x, x.bfloat16()):
        torch.manual_seed(3)
        with torch.autocast("cpu", torch.bfloat16):
            under = augment(images, 1.0).float()
        assert (under - ref).abs().max() < 0.1
