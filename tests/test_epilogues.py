"""The fused layer epilogues (bias, noise, gain and leaky ReLU folded into the conv or done in place):
same maths as the textbook composition, differentiable twice (R1, path length), fewer buffers kept."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from cartoongan.models.discriminator import ConvLayer
from cartoongan.models.generator import ModulatedConv2d, StyledConv
from cartoongan.models.layers import EqualLinear

from .conftest import randomized

SQRT2 = math.sqrt(2)


def textbook_conv_layer(layer: ConvLayer, x: torch.Tensor) -> torch.Tensor:
    """blur?, conv, + bias, leaky ReLU, * sqrt2, clamp?: each step its own pass."""
    mods = list(layer)
    if layer.downsample:
        x = mods.pop(0)(x)
    conv = mods.pop(0)
    x = F.conv2d(x, conv.weight * conv.scale, stride=conv.stride, padding=conv.padding)
    if layer.activate:
        x = F.leaky_relu(x + mods.pop(0).bias.view(1, -1, 1, 1), 0.2) * SQRT2
    return mods.pop(0)(x) if mods else x


def textbook_styled_conv(layer: StyledConv, x, w, noise):
    y = layer.conv(x, w)
    y = y + layer.noise.weight * noise
    return F.leaky_relu(y + layer.activate.bias.view(1, -1, 1, 1), 0.2) * SQRT2


def textbook_modulated_conv(conv: ModulatedConv2d, x, w):
    """The paper's per-sample weights: W * scale * style, demodulated, as a grouped conv."""
    style = F.linear(w, conv.modulation.weight * conv.modulation.scale) + conv.modulation.bias
    weight = conv.weight * conv.scale * style[:, None, :, None, None]  # [B, out, in, k, k]
    if conv.demodulate:
        weight = weight / weight.square().sum(dim=(2, 3, 4), keepdim=True).add(1e-8).sqrt()
    b, cin, h, _ = x.shape
    out_ch, k = weight.shape[1], weight.shape[-1]
    if not conv.upsample:
        y = F.conv2d(x.reshape(1, b * cin, h, -1), weight.reshape(b * out_ch, cin, k, k), padding=k // 2, groups=b)
        return y.reshape(b, out_ch, *y.shape[2:])
    y = F.conv_transpose2d(x.reshape(1, b * cin, h, -1), weight.transpose(1, 2).reshape(b * cin, out_ch, k, k),
                           stride=2, groups=b)
    return conv.blur(y.reshape(b, out_ch, *y.shape[2:]))


@pytest.mark.parametrize("kw", [dict(kernel_size=3), dict(kernel_size=3, upsample=True),
                                dict(kernel_size=1, demodulate=False)])
def test_modulated_conv_matches_the_papers_per_sample_weights_and_their_gradients(kw):
    """The equalised-lr scale rides on the style inside one addmm: the output and every
    parameter's gradient must still be those of W * scale * s."""
    torch.manual_seed(0)
    conv = randomized(ModulatedConv2d(3, 4, style_dim=8, **kw)).double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 8, dtype=torch.float64, requires_grad=True)
    grads = []
    for fn in (conv, lambda x, w: textbook_modulated_conv(conv, x, w)):
        y = fn(x, w)
        grads.append((y, *torch.autograd.grad(y.square().sum(), [x, w, *conv.parameters()])))
    for ours, textbook in zip(*grads):
        torch.testing.assert_close(ours, textbook, rtol=1e-10, atol=1e-12)


def textbook_linear(layer: EqualLinear, x):
    y = F.linear(x, layer.weight * layer.scale) + layer.bias * layer.lr_mul
    return F.leaky_relu(y, 0.2) * SQRT2


def saved_activations(fn, min_size: int) -> int:
    """Distinct buffers of at least min_size elements that autograd keeps for the backward."""
    kept = set()

    def pack(t):
        if t.numel() >= min_size:
            kept.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return len(kept)


@pytest.mark.parametrize("kw", [dict(kernel_size=3), dict(kernel_size=3, downsample=True),
                                dict(kernel_size=1, downsample=True, activate=False, bias=False),
                                dict(kernel_size=3, conv_clamp=0.5)])
def test_conv_layer_matches_the_textbook_form_and_is_twice_differentiable(kw):
    torch.manual_seed(0)
    layer = randomized(ConvLayer(3, 4, **kw)).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(layer(x), textbook_conv_layer(layer, x), atol=1e-12)
    assert gradcheck(layer, (x,), fast_mode=True) and gradgradcheck(layer, (x,), fast_mode=True)


@pytest.mark.parametrize("upsample", [False, True])
def test_styled_conv_matches_the_textbook_form_and_is_twice_differentiable(upsample):
    torch.manual_seed(0)
    layer = randomized(StyledConv(3, 4, 8, upsample=upsample)).double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 8, dtype=torch.float64, requires_grad=True)
    noise = torch.randn(2, 1, 12 if upsample else 6, 12 if upsample else 6, dtype=torch.float64)
    assert torch.allclose(layer(x, w, noise), textbook_styled_conv(layer, x, w, noise), atol=1e-12)
    fn = lambda x, w: layer(x, w, noise)  # noqa: E731
    assert gradcheck(fn, (x, w), fast_mode=True) and gradgradcheck(fn, (x, w), fast_mode=True)


def test_activated_linear_matches_the_textbook_form_and_is_twice_differentiable():
    torch.manual_seed(0)
    layer = randomized(EqualLinear(5, 3, lr_mul=0.01, activation=True)).double()
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(layer(x), textbook_linear(layer, x), atol=1e-12)
    assert gradcheck(layer, (x,), fast_mode=True) and gradgradcheck(layer, (x,), fast_mode=True)


def test_fused_stacks_keep_fewer_activation_buffers_for_the_backward():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    w = torch.randn(2, 8)
    noise = torch.randn(2, 1, 16, 16)
    d = [ConvLayer(8, 8, 3) for _ in range(3)]
    g = [StyledConv(8, 8, 8) for _ in range(3)]
    size = x.numel()

    def run(layer_fn, layers):
        def go():
            h = x
            for layer in layers:
                h = layer_fn(layer, h)
            h.sum().backward()
        return go

    d_fused = saved_activations(run(lambda m, h: m(h), d), size)
    d_text = saved_activations(run(textbook_conv_layer, d), size)
    g_fused = saved_activations(run(lambda m, h: m(h, w, noise), g), size)
    g_text = saved_activations(run(lambda m, h: textbook_styled_conv(m, h, w, noise), g), size)
    # the textbook form keeps each activation's input (for leaky ReLU's backward) and its output
    # (the next layer's input) apart; in place they are one buffer: one fewer per layer but the last
    assert d_fused == d_text - 2 and g_fused == g_text - 2


def test_styled_conv_still_broadcasts_a_larger_noise_batch():
    """In place cannot grow a tensor: one input with three noise maps gives three outputs, as before."""
    torch.manual_seed(0)
    layer = randomized(StyledConv(3, 4, 8)).double()
    x, w = torch.randn(1, 3, 6, 6, dtype=torch.float64), torch.randn(1, 8, dtype=torch.float64)
    noise = torch.randn(3, 1, 6, 6, dtype=torch.float64)
    out = layer(x, w, noise)
    assert out.shape == (3, 4, 6, 6) and torch.allclose(out, textbook_styled_conv(layer, x, w, noise), atol=1e-12)
