import pytest
import torch

from cartoongan import Discriminator, Generator
from cartoongan.models.architecture import channel_widths
from cartoongan.models.generator import ModulatedConv2d


@pytest.mark.parametrize("size", [8, 16, 32])
def test_shapes_at_each_resolution(tiny_g, size):
    g = tiny_g(size)
    z = torch.randn(3, g.style_dim)
    out = g.synthesis(g.ws_from_z(z), return_rgbs=True, return_features=True)
    assert out.image.shape == (3, 3, size, size)
    assert g.n_latent == 2 * (size.bit_length() - 1) - 2
    assert [r.shape[-1] for r in out.rgbs] == g.resolutions
    assert [f.shape[1] for f in out.features] == [g.channels[r] for r in g.resolutions]
    assert torch.equal(out.rgbs[-1], out.image)
    d = Discriminator(size, channel_base=512, channel_max=32)
    assert d(out.image).shape == (3, 1)


def test_partial_synthesis_is_the_full_renders_prefix(tiny_g):
    g = tiny_g(32)
    ws = g.ws_from_z(torch.randn(2, g.style_dim))
    noises = g.make_noise(2)
    full = g.synthesis(ws, noises=noises, return_rgbs=True, return_features=True)
    for n in range(1, g.n_blocks + 1):
        part = g.synthesis(ws, noises=noises, return_rgbs=True, return_features=True, n_blocks=n)
        assert len(part.rgbs) == len(part.features) == n
        assert all(torch.equal(a, b) for a, b in zip(part.rgbs + part.features, full.rgbs[:n] + full.features[:n]))
        assert torch.equal(part.image, full.rgbs[n - 1])
    for bad in (0, g.n_blocks + 1):
        with pytest.raises(ValueError, match="n_blocks"):
            g.synthesis(ws, n_blocks=bad)


def test_rosinality_widths():
    assert channel_widths(256, 2) == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128}
    assert channel_widths(64, 1) == {4: 512, 8: 512, 16: 512, 32: 512, 64: 256}


def test_bad_resolution_rejected():
    with pytest.raises(ValueError, match="power of two"):
        Generator(48)


def test_each_w_slot_feeds_its_block(tiny_g):
    g = tiny_g(16)
    ws = g.ws_from_z(torch.randn(2, g.style_dim)).clone()
    base = g.synthesis(ws, noise_mode="const", return_rgbs=True).rgbs
    for b in range(g.n_blocks):
        for slot in g.block_w_slots(b):
            moved = ws.clone()
            moved[:, slot] += 1.0
            rgbs = g.synthesis(moved, noise_mode="const", return_rgbs=True).rgbs
            # lower blocks that do not read the slot are untouched; block b's RGB output moves
            # (a block's toRGB slot is also the next block's first conv slot, as in rosinality)
            for lower in range(b):
                if slot not in g.block_w_slots(lower):
                    assert torch.equal(rgbs[lower], base[lower])
            assert not torch.allclose(rgbs[b], base[b])


def test_noise_modes(tiny_g):
    g = tiny_g(16)
    z = torch.randn(2, g.style_dim)
    const1, const2 = g(z, noise_mode="const"), g(z, noise_mode="const")
    rand1, rand2 = g(z, noise_mode="random"), g(z, noise_mode="random")
    none1, none2 = g(z, noise_mode="none"), g(z, noise_mode="none")
    assert torch.equal(const1, const2) and torch.equal(none1, none2)
    assert not torch.allclose(rand1, rand2)
    assert not torch.allclose(const1, none1)
    zero_noise = [torch.zeros_like(n) for n in g.make_noise(2)]
    assert torch.allclose(g(z, noises=zero_noise), none1, atol=1e-6)
    with pytest.raises(ValueError, match="noise_mode"):
        g(z, noise_mode="loud")


def test_truncation(tiny_g):
    g = tiny_g(16)
    w_avg = g.estimate_w_avg(n=512)
    z = torch.randn(3, g.style_dim)
    ws0 = g.ws_from_z(z, truncation=0.0)
    assert torch.allclose(ws0, w_avg.expand_as(ws0))
    assert torch.equal(g.ws_from_z(z, truncation=1.0), g.ws_from_z(z))
    half = g.ws_from_z(z, truncation=0.5)
    assert torch.allclose(half, (g.ws_from_z(z) + w_avg) / 2, atol=1e-6)


def test_truncation_without_average_is_an_error(tiny_g):
    g = tiny_g(16)
    with pytest.raises(RuntimeError, match="w_avg"):
        g.ws_from_z(torch.randn(1, g.style_dim), truncation=0.7)


def test_style_mixing_crossover(tiny_g):
    g = tiny_g(16)
    z1, z2 = torch.randn(2, g.style_dim), torch.randn(2, g.style_dim)
    ws = g.ws_from_z(z1, z2, crossover=3)
    w1, w2 = g.mapping(z1), g.mapping(z2)
    assert torch.allclose(ws[:, :3], w1[:, None].expand(-1, 3, -1))
    assert torch.allclose(ws[:, 3:], w2[:, None].expand(-1, g.n_latent - 3, -1))
    with pytest.raises(ValueError, match="crossover"):
        g.ws_from_z(z1, z2, crossover=g.n_latent)


@pytest.mark.parametrize("up", [False, True])
def test_grouped_and_scaled_modconv_agree(up):
    torch.manual_seed(0)
    conv = ModulatedConv2d(8, 6, 3, 16, upsample=up)
    x, w = torch.randn(3, 8, 8, 8), torch.randn(3, 16)
    scaled = conv(x, w)
    with pytest.raises(RuntimeError), ModulatedConv2d.grouped_mode():
        assert torch.allclose(conv(x, w), scaled, atol=1e-5)
        raise RuntimeError  # the class switch is restored even when the block fails
    assert ModulatedConv2d.grouped is False


def test_gradients_reach_every_parameter(tiny_g):
    g = tiny_g(16)
    g.train()
    g(torch.randn(2, g.style_dim)).square().mean().backward()
    missing = [n for n, p in g.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []



def test_memory_formats_compute_the_same_image(tiny_g):
    g = tiny_g()
    z = torch.randn(2, g.style_dim)
    outs = []
    for setting in (True, False):
        g.channels_last = setting
        outs.append(g(z, noise_mode="const"))
    assert outs[0].shape == (2, 3, 16, 16) and torch.allclose(outs[0], outs[1], atol=1e-4)


def test_synthesis_and_discriminator_trace_as_one_graph_each():
    """torch.compile (train.compile, bench --compile) pays only if dynamo sees each network whole:
    a graph break splits it and leaves Python between the pieces on every call."""
    import torch._dynamo as dynamo

    g = Generator(32, 32, 2, channel_base=512, channel_max=32)
    ws = torch.randn(2, g.n_latent, 32)
    for kw in ({}, {"return_rgbs": True, "n_blocks": 3}, {"return_features": True, "noise_mode": "const"}):
        explained = dynamo.explain(g.synthesis)(ws, **kw)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), (kw, explained.break_reasons)
    explained = dynamo.explain(Discriminator(32, channel_base=512, channel_max=32))(torch.randn(2, 3, 32, 32))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
