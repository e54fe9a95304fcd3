"""The side-by-side harness, run against a stand-in checkout with rosinality's layout and API.

The real reference can't be fetched in CI; the stand-in's `op` package tries to build a CUDA
extension at import, as rosinality's does, so these tests also show the CPU stub works.
"""
import json

import pytest
from cartoongan_cli.app import app
from typer.testing import CliRunner

from cartoongan.bench import speed as bench
from cartoongan.bench.reference import compare_with_reference, forget_reference_modules
from cartoongan.errors import ConfigError

MODEL_PY = '''
import torch
from torch import nn
from op import conv2d_gradfix  # noqa: F401  (rosinality's model.py imports from op as well)
from cartoongan import Discriminator as D, Generator as G

CALLS = []


class Generator(nn.Module):
    def __init__(self, size, style_dim, n_mlp, channel_multiplier=2):
        super().__init__()
        self.net = G(size, style_dim, n_mlp, channel_multiplier=channel_multiplier, channel_max=32)

    def forward(self, styles, return_latents=False, randomize_noise=True):
        CALLS.append(("g", len(styles), return_latents, randomize_noise))
        z2 = styles[1] if len(styles) > 1 else None
        ws = self.net.ws_from_z(styles[0], z2, 1 if z2 is not None else None)
        image = self.net.synthesis(ws, noise_mode="random" if randomize_noise else "const").image
        return image, (ws if return_latents else None)


class Discriminator(nn.Module):
    def __init__(self, size, channel_multiplier=2):
        super().__init__()
        self.net = D(size, channel_multiplier=channel_multiplier, channel_max=32)

    def forward(self, x):
        CALLS.append(("d", x.requires_grad))
        return self.net(x)
'''

OP_INIT = '''
from torch.utils.cpp_extension import load

fused = load("fused", sources=["fused_bias_act.cpp", "fused_bias_act_kernel.cu"])  # fails unless stubbed
'''

GRADFIX = '''
import contextlib

USED = []


@contextlib.contextmanager
def no_weight_gradients():
    USED.append(True)
    yield
'''


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    root = tmp_path / "stylegan2-pytorch"
    (root / "op").mkdir(parents=True)
    (root / "model.py").write_text(MODEL_PY)
    (root / "op" / "__init__.py").write_text(OP_INIT)
    (root / "op" / "conv2d_gradfix.py").write_text(GRADFIX)
    small = dict(size=8, style_dim=32, n_mlp=2, channel_multiplier=1)
    monkeypatch.setitem(bench.CONFIGS, "r8", (small, 2, 2))
    yield root
    forget_reference_modules()


def test_compare_runs_both_sides_through_every_phase(checkout):
    import sys

    (row,) = compare_with_reference(checkout, ["r8"], "cpu", repeats=1)
    assert row.config == "r8" and row.batch == 2 and row.device == "cpu" and row.precision == "fp32"
    for ours, ref, ratio in [(row.ours_forward_img_s, row.reference_forward_img_s, row.forward_ratio),
                             (row.ours_train_img_s, row.reference_train_img_s, row.train_ratio)]:
        assert ours > 0 and ref > 0 and ratio == pytest.approx(ours / ref, rel=0.02, abs=0.01)
    assert row.struct_cost > 0 and row.compile_mode == "eager"
    calls = sys.modules["model"].CALLS
    assert ("g", 1, False, False) in calls  # the forward phase, constant noise
    assert any(c[0] == "g" and c[2] for c in calls)  # path length asks for the latents
    assert ("d", True) in calls  # R1 differentiates D at the reals
    assert sys.modules["op.conv2d_gradfix"].USED  # ... inside its no_weight_gradients


def _row(precision="fp32", train=1.6, forward=1.3, struct=1.05, peaks=(None, None)):
    from cartoongan.bench.reference import ComparisonRow

    return ComparisonRow("r256", "cuda:0", 16, precision, "eager", ours_forward_img_s=800.0, reference_forward_img_s=600.0,
                         forward_ratio=forward, ours_train_img_s=80.0, reference_train_img_s=50.0, train_ratio=train,
                         struct_cost=struct, ours_peak_mb=peaks[0], reference_peak_mb=peaks[1])


def test_goals_follow_the_precision_and_each_bound():
    from cartoongan.bench.reference import TRAIN_GOALS, goal_rows
    from cartoongan.config import PRECISIONS

    def verdicts(r):
        return [(g.measure, g.bound, g.measured, g.met) for g in goal_rows(r)]

    assert verdicts(_row("fp32", 1.5, 1.2, 1.35)) == [("train", ">= 1.5x", 1.5, True), ("forward", ">= 1.2x", 1.2, True),
                                                      ("structure", "<= 1.35x", 1.35, True)]
    assert verdicts(_row("bf16", 1.6, 1.199, 1.351)) == [("train", ">= 2.0x", 1.6, False),
                                                         ("forward", ">= 1.2x", 1.199, False),
                                                         ("structure", "<= 1.35x", 1.351, False)]
    assert goal_rows(_row("tf32", 1.5))[0].met
    assert set(TRAIN_GOALS) == set(PRECISIONS)  # a new precision needs its goal before a bench can end in a KeyError


def test_compare_refuses_a_missing_checkout_and_foreign_configs(tmp_path, checkout):
    with pytest.raises(ConfigError, match="clone https://github.com/rosinality/stylegan2-pytorch"):
        compare_with_reference(tmp_path / "nowhere", ["r8"], "cpu")
    with pytest.raises(ConfigError, match="tiny: sets channel_base, channel_max"):
        compare_with_reference(checkout, ["tiny"], "cpu")
    (checkout / "model.py").write_text("raise ImportError('needs ninja')\n")
    with pytest.raises(ConfigError, match="importing its model.py failed .ImportError: needs ninja"):
        compare_with_reference(checkout, ["r8"], "cpu")
    (checkout / "model.py").write_text("import sys\nsys.exit(0)\n")  # ended bench with exit 0 and no table
    with pytest.raises(ConfigError, match="importing its model.py failed .SystemExit: 0"):
        compare_with_reference(checkout, ["r8"], "cpu")


def test_a_checkout_of_something_else_is_one_line_naming_what_it_lacks(tmp_path, checkout):
    """A model.py without rosinality's classes (another project, an older checkout) came out as
    "AttributeError: module 'model' has no attribute 'Generator'", a traceback; one whose classes
    take other arguments, as a TypeError; a folder without op/ was "no model.py and op/ there"."""
    forget_reference_modules()
    (checkout / "model.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match="is not rosinality's stylegan2-pytorch .no Generator, Discriminator."):
        compare_with_reference(checkout, ["r8"], "cpu")
    forget_reference_modules()
    (checkout / "model.py").write_text("class Generator:\n    def __init__(self):\n        pass\n\n"
                                       "Discriminator = Generator\n")
    with pytest.raises(ConfigError, match="do not build as rosinality's do .TypeError"):
        compare_with_reference(checkout, ["r8"], "cpu")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match="half: no op/ there"):
        compare_with_reference(tmp_path / "half", ["r8"], "cpu")
    with pytest.raises(ConfigError, match="nowhere: no such folder"):
        compare_with_reference(tmp_path / "nowhere", ["r8"], "cpu")


def test_cli_prints_ratio_table_and_one_line_errors(checkout, monkeypatch):
    import cartoongan.bench.reference as reference

    monkeypatch.setattr(reference, "compare_with_reference", lambda *a: [_row(peaks=(900.0, 1200.0))])
    runner = CliRunner()
    res = runner.invoke(app, ["bench", "--reference", str(checkout), "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout)
    assert row["train_ratio"] == 1.6 and row["struct_cost"] == 1.05 and row["compile_mode"] == "eager"
    res = runner.invoke(app, ["bench", "--reference", str(checkout), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert max(len(ln) for ln in res.output.splitlines()) <= 80
    cells = {}
    for line in res.output.splitlines():
        parts = [c.strip() for c in line.split("│")]
        if len(parts) == 8:
            cells[parts[1]] = parts[2:7]
    assert cells["G forward, img/s"] == ["800.0", "600.0", "1.3", ">= 1.2x", "yes"]
    assert cells["training iteration, img/s"] == ["80.0", "50.0", "1.6", ">= 1.5x", "yes"]
    assert cells["structure-loss iter. / plain"] == ["-", "-", "1.05", "<= 1.35x", "yes"]
    assert cells["peak MB above weights"] == ["900.0", "1200.0", "0.75", "-", "-"]
    monkeypatch.undo()  # the real comparison refuses a missing checkout in one line
    res = runner.invoke(app, ["bench", "--reference", str(checkout.parent / "missing"), "--device", "cpu"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1 and "--reference" in res.output


def test_cli_compiles_our_side_of_the_reference_comparison_in_the_mode_asked(checkout, monkeypatch):
    import cartoongan.bench.reference as reference

    seen = []
    monkeypatch.setattr(reference, "compare_with_reference", lambda *a: seen.append(a[-1]) or [])
    runner = CliRunner()
    for flags, mode in (([], None), (["--compile"], "default"), (["--compile-mode", "reduce-overhead"], "reduce-overhead")):
        res = runner.invoke(app, ["bench", "--reference", str(checkout), "--device", "cpu", "--json", *flags])
        assert res.exit_code == 0, res.output
        assert seen.pop() == mode
    res = runner.invoke(app, ["bench", "--reference", str(checkout), "--device", "cpu", "--compile-mode", "fast"])
    assert res.exit_code == 2 and "reduce-overhead" in res.output


def test_flops_count_the_reference_beside_ours(checkout):
    import sys

    from cartoongan.bench.flops import run_flop_count

    rows = run_flop_count(["r8"], "cpu", reference=checkout)
    assert [r.side for r in rows] == ["ours", "ours+struct", "rosinality"]
    ref = rows[2]
    assert 0 < ref.forward_gflop_img < ref.step_gflop_img and ref.r1_gflop_img > 0 and ref.path_gflop_img > 0
    assert sys.modules["op.conv2d_gradfix"].USED  # its R1 was counted as its train.py runs it
    res = CliRunner().invoke(app, ["bench", "--flops", "--reference", str(checkout), "--configs", "r8", "--device",
                                   "cpu"])
    assert res.exit_code == 0 and "rosinality" in res.output and "r8, batch 2, on cpu" in res.output, res.output
    res = CliRunner().invoke(app, ["bench", "--flops", "--reference", str(checkout), "--configs", "tiny"])
    assert res.exit_code == 2 and "rosinality's networks lack" in res.output
