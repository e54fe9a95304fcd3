import pytest
import torch

from cartoongan.bench import kernels as bench_kernels
from cartoongan.bench.kernels import _cases, count_ops, run_kernel_bench
from cartoongan.models.generator import Generator
from cartoongan.ops import fir

GENERATOR_SYNTHESIS = Generator.synthesis


@pytest.mark.parametrize("batch,ch,res", [(2, 8, 8), (3, 5, 6)])
def test_every_alternative_computes_the_same_thing(batch, ch, res):
    cases = _cases(batch, ch, res, torch.device("cpu"))
    assert len(cases) == 9
    for choice, _, ours, _, alt in cases:
        a, b = ours(), alt()
        assert a.shape == b.shape, choice
        assert torch.allclose(a, b, atol=1e-4 * a.abs().max().item()), choice
        a.square().mean().backward()  # the timed pass is differentiable


def test_kernel_bench_rows(monkeypatch):
    from cartoongan.models.generator import ModulatedConv2d

    monkeypatch.setattr(bench_kernels, "SHAPES", (("small", 2, 8, 8),))
    monkeypatch.setattr(bench_kernels, "MODEL_CONFIG", "tiny")
    rows = run_kernel_bench("cpu", repeats=1)
    assert [r.choice for r in rows][:2] == ["modulated conv", "upsampling conv"] and len(rows) == 15
    assert [(r.shape, r.alternative) for r in rows[-6:]] == [
        ("tiny", "NCHW"), ("tiny", "grouped"), ("tiny", "torch default"), ("tiny", "full render"),
        ("tiny", "depthwise conv"), ("tiny", "depthwise conv")]
    assert ModulatedConv2d.grouped is False
    assert Generator.synthesis is bench_kernels.Generator.synthesis is GENERATOR_SYNTHESIS  # patch undone
    for r in rows:
        assert r.ours_ms > 0 and r.alternative_ms > 0
        assert r.speedup == pytest.approx(r.alternative_ms / r.ours_ms, rel=0.05, abs=0.01)
        assert r.ours_ops > 0 and r.alternative_ops > 0
    by_choice = {r.choice: r for r in rows}
    # the fused optimizer dispatches fewer ops than the per-tensor one; at 32 px the structure
    # loss's 3 taps need every block, so the source's render is the full one there
    assert by_choice["optimizer (G, D)"].ours_ops < by_choice["optimizer (G, D)"].alternative_ops
    assert by_choice["structure source"].ours_ops == by_choice["structure source"].alternative_ops


def test_count_ops_counts_compute_ops_not_views():
    x = torch.randn(4, 4)
    assert count_ops(lambda: x.view(16).unsqueeze(0).t().detach()) == 0
    assert count_ops(lambda: (x * 2 + 1).sum()) == 3


def test_kernel_bench_refuses_an_alternative_that_disagrees(monkeypatch):
    monkeypatch.setattr(bench_kernels, "SHAPES", (("small", 2, 8, 8),))
    monkeypatch.setattr(bench_kernels, "zero_insertion_upsample", lambda x, k: torch.zeros(2, 3, 16, 16))
    with pytest.raises(RuntimeError, match="RGB upsample: the alternative disagrees"):
        run_kernel_bench("cpu", repeats=1)


def test_cli_refuses_flags_the_kernel_bench_would_ignore(tmp_path):
    from cartoongan_cli.app import app
    from typer.testing import CliRunner

    runner = CliRunner()
    for extra in (["--configs", "tiny"], ["--reference", str(tmp_path)], ["--compile"], ["--no-channels-last"],
                  ["--compile-mode", "reduce-overhead"]):
        res = runner.invoke(app, ["bench", "--kernels", "--device", "cpu", *extra])
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, (extra, res.output)


def test_depthwise_fir_swaps_the_models_filters_and_restores_them():
    from cartoongan.models import layers
    from cartoongan.ops.fir import blur, upsample2x

    with bench_kernels.depthwise_fir():
        assert layers.blur is bench_kernels.depthwise_blur and layers.upsample2x is bench_kernels.depthwise_upsample2x
    assert layers.blur is blur and layers.upsample2x is upsample2x


def test_profile_lists_each_phases_leading_ops_and_their_shares():
    from cartoongan.bench.profile import PHASES, profile_phases

    rows = profile_phases("tiny", "cpu", batch=2, runs=1, top=4)
    assert sorted({r.phase for r in rows}) == sorted(PHASES)
    for phase in PHASES:
        mine = [r for r in rows if r.phase == phase]
        assert len(mine) == 5 and mine[-1].op == "(other)"
        assert sum(r.share for r in mine) == pytest.approx(100, abs=0.5)
        leading = mine[:-1]
        assert [r.ms for r in leading] == sorted((r.ms for r in leading), reverse=True)
        assert all(r.calls > 0 and r.ms > 0 for r in mine)
    # the convolutions lead a training step on any device
    assert any("conv" in r.op for r in rows if r.phase == "step" and r.op != "(other)")


def test_cuda_profile_shares_count_kernels_not_the_annotations_around_them():
    """On the GPU timeline `Optimizer.step#Adam.step` spans the optimizer's kernels: counting it too
    would count that time twice and shrink every other share."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from cartoongan.bench.profile import _rows

    def event(key, us, annotation=False):
        return SimpleNamespace(key=key, count=1, self_device_time_total=us, device_type=DeviceType.CUDA,
                               is_user_annotation=annotation)

    events = [event("conv_kernel", 600.0), event("adam_kernel", 400.0),
              event("Optimizer.step#Adam.step", 400.0, annotation=True)]
    rows = _rows("step", events, cuda=True, runs=1, top=5)
    assert [(r.op, r.share) for r in rows] == [("conv_kernel", 60.0), ("adam_kernel", 40.0)]


def test_profile_call_counts_print_whole_unless_the_runs_differed():
    """Counts are per call of a phase: 88 calls in 2 runs print as 44, not 44.0; 89 as 44.5."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from cartoongan.bench.profile import _rows

    events = [SimpleNamespace(key=k, count=n, self_cpu_time_total=us, device_type=DeviceType.CPU)
              for k, n, us in (("aten::conv2d", 88, 900.0), ("aten::add", 89, 50.0), ("aten::mul", 7, 30.0),
                               ("aten::sum", 6, 20.0))]
    rows = _rows("step", events, cuda=False, runs=2, top=2)
    assert [(r.op, str(r.calls)) for r in rows] == [("aten::conv2d", "44"), ("aten::add", "44.5"), ("(other)", "6.5")]


@pytest.mark.parametrize("extra", [["--configs", "tiny,demo64"], ["--kernels"], ["--reference", "."], ["--compile"]])
def test_cli_profile_refuses_what_it_would_ignore(extra):
    from cartoongan_cli.app import app
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, ["bench", "--profile", "--device", "cpu", *extra])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output


def test_cli_profile_profiles_as_many_calls_as_repeats_asks(monkeypatch):
    from cartoongan_cli.app import app
    from typer.testing import CliRunner

    from cartoongan.bench import profile

    seen = []
    real = profile.profile_phases
    monkeypatch.setattr(profile, "profile_phases", lambda *a, **kw: seen.append(kw["runs"]) or real(*a, **kw))
    for extra, runs in (([], 2), (["--repeats", "1"], 1)):
        res = CliRunner().invoke(app, ["bench", "--profile", "--configs", "tiny", "--batch", "2", "--device", "cpu",
                                       *extra])
        assert res.exit_code == 0 and "(other)" in res.output, res.output
        assert seen[-1] == runs


def test_kernel_bench_adds_the_triton_rows_where_triton_can_run(monkeypatch):
    """On CUDA with Triton the bench times the opt-in Triton FIR kernel too (here the switch is forced
    on the CPU, where both sides take the reference path, to check the rows' plumbing)."""
    monkeypatch.setattr(bench_kernels, "SHAPES", (("small", 2, 8, 8),))
    monkeypatch.setattr(bench_kernels, "MODEL_CONFIG", "tiny")
    monkeypatch.setattr(bench_kernels, "triton_fir_available", lambda dev: True)
    rows = [r for r in run_kernel_bench("cpu", repeats=1) if r.choice.startswith(bench_kernels.TRITON_ROW)]
    assert [(r.shape, r.ours, r.alternative) for r in rows] == [
        ("small", "depthwise blur", "triton"), ("small", "depthwise up2x", "triton"),
        ("tiny", "depthwise convs", "triton"), ("tiny", "depthwise convs", "triton")]
    assert fir._backend == "torch"  # the switch is undone


def test_op_counts_restore_only_the_rngs_of_their_device(monkeypatch):
    """A CPU row forks no GPU's RNG (which would start CUDA on a GPU box); a GPU row forks its own."""
    import contextlib

    forked = []

    @contextlib.contextmanager
    def recording(devices=None, **kw):
        forked.append(devices)
        yield

    monkeypatch.setattr(torch.random, "fork_rng", recording)
    count_ops(lambda: torch.ones(2) + 1, torch.device("cpu"))
    count_ops(lambda: torch.ones(2) + 1, torch.device("cuda", 0))
    assert forked == [[], [torch.device("cuda", 0)]]
