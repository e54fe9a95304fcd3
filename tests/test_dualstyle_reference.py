"""Opt-in parity with the released DualStyleGAN code (not bundled: its licence is non-commercial).

    git clone https://github.com/williamyang1991/DualStyleGAN /tmp/DualStyleGAN
    DUALSTYLEGAN_REF=/tmp/DualStyleGAN pytest -q tests/test_dualstyle_reference.py

Runs its `model/dualstylegan.py` and pSp encoder unmodified on the CPU (the CUDA build its `op`
package starts at import is stubbed, so its own CPU fallbacks run) at 64 px with the release's
widths, and compares with ours on the same random weights. About a minute on 2 cores.
"""
import os
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from cartoongan.models.dualstyle import DualStyleGenerator
from cartoongan.models.encoders import GradualStyleEncoder
from cartoongan.pipelines.dualstyle import DualStyleOptions, render
from cartoongan.weights.dualstyle import (
    build_dualstyle,
    dualstyle_checkpoint,
    infer_encoder_config,
)

from .test_dualstyle import perturbed

REF = os.environ.get("DUALSTYLEGAN_REF")
pytestmark = pytest.mark.skipif(not REF, reason="set DUALSTYLEGAN_REF to a DualStyleGAN checkout")


@pytest.fixture(scope="module")
def official():
    import torch.utils.cpp_extension as ext

    real_load = ext.load
    ext.load = lambda *a, **k: None
    sys.path.insert(0, str(Path(REF).resolve()))
    try:
        from model.dualstylegan import DualStyleGAN
        from model.encoder.encoders.psp_encoders import (
            GradualStyleEncoder as OfficialEncoder,
        )
        yield DualStyleGAN, OfficialEncoder
    finally:
        ext.load = real_load
        sys.path.pop(0)
        for name in [m for m in sys.modules if m == "model" or m.startswith("model.")]:
            del sys.modules[name]


def test_generator_matches_the_release(official):
    DualStyleGAN, _ = official
    torch.manual_seed(0)
    ours = perturbed(DualStyleGenerator(64, 512, 8, channel_multiplier=1), 1, 0.05)
    with torch.no_grad():
        for block in ours.res[:7]:
            block.conv[0].weight.mul_(20)
            block.conv2[0].weight.mul_(20)
    sd = dualstyle_checkpoint(ours)["g_ema"]
    ref = DualStyleGAN(64, 512, 8, 1, res_index=6).eval()
    ref.load_state_dict(sd, strict=True)  # our file is theirs, key for key
    ours = build_dualstyle(sd)
    inz, exz = torch.randn(2, 10, 512), torch.randn(1, 10, 512)
    weights = [0.2, 0.5, 0.75, 0.9, 1.0, 0.6, 0.3, 1.0, 0.4, 0.8]
    with torch.no_grad():
        for preserve in (False, True):
            latent = exz.repeat(2, 1, 1)
            if preserve:
                latent[:, 7:] = inz[:, 7:]
            ex = ref.generator.style(latent.reshape(-1, 512)).reshape(latent.shape)
            want, _ = ref([inz], ex, z_plus_latent=True, truncation=0.75, truncation_latent=0,
                          randomize_noise=False, use_res=True, interp_weights=weights)
            got = render(ours, inz, exz, DualStyleOptions(weights=weights, preserve_color=preserve))
            assert float((got - want).abs().max()) < 1e-5 * float(want.abs().max()) + 1e-4
        for fuse in (0, 3, 8):
            ex = ref.generator.style(exz.reshape(-1, 512)).reshape(1, 10, 512).repeat(2, 1, 1)
            want, _ = ref([inz], ex, z_plus_latent=True, randomize_noise=False, fuse_index=fuse, interp_weights=weights)
            got = ours.synthesis(ours.intrinsic_ws(inz), ours.map_zplus(exz), weights, fuse_index=fuse)
            assert float((got - want).abs().max()) < 1e-5 * float(want.abs().max()) + 1e-4


def test_encoder_matches_the_release(official):
    _, OfficialEncoder = official
    torch.manual_seed(0)
    ref = perturbed(OfficialEncoder(50, "ir_se", Namespace(input_nc=3, n_styles=10)), 2, 0.02)
    sd = ref.state_dict()
    ours = GradualStyleEncoder(**infer_encoder_config(sd)).eval()
    ours.load_state_dict(sd, strict=True)
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
