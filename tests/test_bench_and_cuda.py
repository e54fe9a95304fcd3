import pytest
import torch
from cartoongan_cli.app import app
from typer.testing import CliRunner

from cartoongan.bench.speed import bench_config

runner = CliRunner()


def test_bench_cli_json_measures_and_restores_switches():
    import json

    from cartoongan.models.generator import ModulatedConv2d

    res = runner.invoke(app, ["bench", "--configs", "tiny, tiny", "--device", "cpu", "--repeats", "1", "--batch", "2",
                              "--grouped-modconv", "--json"])
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout)  # a name given twice is timed once
    assert row["config"] == "tiny" and row["batch"] == 2 and row["device"] == "cpu"
    assert min(row["g_forward_img_s"], row["train_iter_img_s"], row["struct_iter_img_s"], row["peak_mem_mb"]) > 0
    assert row["variant"] == "eager, grouped modconv"
    assert ModulatedConv2d.grouped is False
    res = runner.invoke(app, ["bench", "--configs", "huge", "--device", "cpu"])
    assert res.exit_code == 2 and "unknown huge" in res.output
    res = runner.invoke(app, ["bench", "--configs", "huge", "--device", "cpu", "--precision", "tf32"])
    assert "precision tf32 does nothing on cpu" in " ".join(res.output.split())  # its rows would say tf32


def test_a_stopped_bench_prints_the_rows_it_measured(monkeypatch):
    """The device plan stops a step at its timeout with SIGINT: the configs already timed (minutes of
    GPU time) are printed, then the one-line interruption (exit 130); none timed: the plain one."""
    import json

    from cartoongan.bench import kernels, speed

    calls = []

    def timed(name, *args, **kw):
        calls.append(name)
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        return speed.BenchRow(name, "cpu", 2, "fp32", "eager", 1.0, 2.0, 3.0, 4.0)

    monkeypatch.setattr(speed, "bench_config", timed)
    stop_at = 3
    res = runner.invoke(app, ["bench", "--configs", "tiny,demo64,r64", "--device", "cpu", "--json"])
    assert res.exit_code == 130, res.output
    assert [r["config"] for r in json.loads(res.stdout)] == ["tiny", "demo64"]
    assert res.stderr.strip().splitlines()[-1] == "error: interrupted after 2 of 3 rows: the table holds those"
    calls.clear()
    stop_at = 1
    res = runner.invoke(app, ["bench", "--configs", "tiny,demo64", "--device", "cpu"])
    assert res.exit_code == 130 and res.output.strip().splitlines()[-1] == "error: interrupted", res.output
    # the op-by-op table keeps its rows the same way
    def pair(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return 1e-3, 2e-3

    monkeypatch.setattr(kernels, "time_pair", pair)
    calls.clear()
    res = runner.invoke(app, ["bench", "--kernels", "--device", "cpu", "--repeats", "1", "--json"])
    assert res.exit_code == 130 and len(json.loads(res.stdout)) == 1, res.output
    assert "interrupted after 1 of" in res.stderr


def test_a_stopped_flop_count_or_profile_prints_the_rows_it_made(monkeypatch):
    """`bench --flops` and `--profile` threw every finished row away at a Ctrl-C ("error:
    interrupted", nothing on stdout), where the plain table and --kernels keep theirs."""
    import json

    from cartoongan.bench import flops, profile
    from cartoongan.errors import RowsStopped

    calls = []

    def counted(phases, name, device, n, side):
        calls.append(name)
        if len(calls) == 3:  # the second config's first row
            raise KeyboardInterrupt
        return (name, side)

    monkeypatch.setattr(flops, "phase_flops", counted)
    monkeypatch.setattr(flops, "bench_trainer", lambda *a, **k: None)
    monkeypatch.setattr(flops, "trainer_phases", lambda *a, **k: None)
    with pytest.raises(RowsStopped) as stopped:
        flops.run_flop_count(["tiny", "demo64"], "cpu")
    assert len(stopped.value.rows) == 2 and str(stopped.value) == \
        "interrupted after 1 of 2 configs: the table holds those"

    def phase_rows(phase, events, cuda, runs, top):
        if phase == profile.PHASES[1]:
            raise KeyboardInterrupt
        return [profile.ProfileRow(phase, "aten::x", 1, 1.0, 50.0)] * 3

    monkeypatch.setattr(profile, "_rows", phase_rows)
    monkeypatch.setattr(profile, "trainer_phases", lambda *a, **k: type("P", (), {p: (lambda: None) for p in profile.PHASES}))
    monkeypatch.setattr(profile, "bench_trainer", lambda *a, **k: None)
    res = runner.invoke(app, ["bench", "--profile", "--configs", "tiny", "--device", "cpu", "--json"])
    assert res.exit_code == 130 and len(json.loads(res.stdout)) == 3, res.output
    assert f"interrupted after 1 of {len(profile.PHASES)} phases" in res.stderr


def test_a_bench_row_names_every_choice_that_was_not_the_default():
    """Rows of `make bench-cuda`'s compiled, NCHW or Triton runs read like the plain ones otherwise."""
    from cartoongan.bench.speed import bench_variant
    from cartoongan.ops.fir import fir_backend

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert bench_variant(cuda, None, True) == "eager"
    with fir_backend("triton"):
        assert bench_variant(cuda, "reduce-overhead", False) == "reduce-overhead, nchw, fir triton"
        assert bench_variant(cpu, "default", True) == "default"  # the CPU always filters with the reference


@pytest.mark.cuda
def test_cuda_generator_matches_cpu():
    """In the fp32 math mode (TF32 off, what rendering uses) the GPU matches the CPU; TF32 would not."""
    from cartoongan import Generator
    from cartoongan.device import set_math_mode

    torch.manual_seed(0)
    g = Generator(32, 64, 2, channel_base=1024, channel_max=64).eval()
    z = torch.randn(2, 64)
    cpu = g(z, noise_mode="const")
    set_math_mode("fp32")
    gpu = g.cuda()(z.cuda(), noise_mode="const").cpu()
    assert torch.allclose(cpu, gpu, atol=1e-4)


@pytest.mark.cuda
def test_noise_maps_are_drawn_on_the_torch_generators_device():
    """make_noise draws with a given torch.Generator on that generator's device: a CPU one gives a
    GPU model the CPU's maps, a CUDA one draws on the GPU (randn refuses a generator elsewhere)."""
    from cartoongan import Generator

    g = Generator(32, 64, 2, channel_base=1024, channel_max=64)
    on_cpu = g.make_noise(2, torch.Generator().manual_seed(1))
    from_cpu = g.cuda().make_noise(2, torch.Generator().manual_seed(1))
    assert all(m.is_cuda and torch.equal(m.cpu(), c) for m, c in zip(from_cpu, on_cpu))
    a, b = (g.make_noise(2, torch.Generator("cuda").manual_seed(1)) for _ in range(2))
    assert all(x.is_cuda and torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_training_steps(tmp_path, precision):
    from cartoongan.train.runs import pretrain

    from .helpers import blob_images, tiny_config

    cfg = tiny_config(iters=3, device="cuda", precision=precision)
    res = pretrain(cfg, blob_images(tmp_path / "d", n=4), tmp_path / "run")
    assert res.step == 3 and res.latest.exists()


@pytest.mark.cuda
def test_cuda_bench_row():
    row = bench_config("tiny", "cuda", repeats=2)
    assert row.device.startswith("cuda") and row.peak_mem_mb > 0


def test_default_configs_follow_the_device():
    from cartoongan.bench.speed import CONFIGS, default_configs

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert default_configs(cpu) == ["tiny", "demo64", "r64"] and "r256" in default_configs(cuda)
    assert default_configs(cpu, reference=True) == ["r64"] and default_configs(cuda, reference=True) == ["r256"]
    assert all(name in CONFIGS for name in default_configs(cuda))


@pytest.mark.cuda
@pytest.mark.parametrize("struct,ada", [(False, False), (True, False), (False, True)])
def test_cuda_training_phases_never_wait_for_the_host(struct, ada):
    """Every phase of an iteration (D, R1, G, path length, EMA; ADA augmenting and observing)
    queues its work without a host sync, so the CPU runs ahead of the GPU; the dataset sits on
    the GPU (place_for). ADA's own update, every `interval` steps, is the one read it allows."""
    from cartoongan.bench.speed import bench_trainer, trainer_phases

    tr = bench_trainer("tiny", torch.device("cuda"), 8, "fp32", None, struct=struct)
    if ada:
        tr.t.augment, tr.ada.p, tr.ada.interval = "ada", 0.5, 10**6
    assert tr.data.images.is_cuda
    phases = trainer_phases(tr, 8)
    for _ in range(3):  # warm-up: lazy optimizer state, cuDNN plans (their keys hold pointer
        for run in (phases.step, phases.r1, phases.path):  # alignment: more than one round of buffers)
            run()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for run in (phases.step, phases.r1, phases.path):
            run()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_a_profiler_that_records_nothing_is_one_line_not_an_empty_table(monkeypatch):
    """Without CUPTI torch's profiler sees no CUDA kernels at all: say so rather than print nothing."""
    import contextlib

    import cartoongan.bench.profile as prof
    from cartoongan.errors import CartoonganError

    blind = contextlib.contextmanager(lambda activities, **options: (yield type("P", (), {"key_averages": lambda self: []})()))
    monkeypatch.setattr(prof, "profile", blind)
    with pytest.raises(CartoonganError, match="recorded no ops for the step phase; time the phases with bench wi"):
        prof.profile_phases("tiny", "cpu", batch=2, runs=1)


@pytest.mark.cuda
def test_cuda_profile_lists_kernels():
    from cartoongan.bench.profile import PHASES, profile_phases

    rows = profile_phases("tiny", "cuda", batch=4, runs=1, top=4)
    for phase in PHASES:
        mine = [r for r in rows if r.phase == phase]
        assert mine and sum(r.share for r in mine) == pytest.approx(100, abs=0.5)
        assert not any(r.op.startswith("aten::") for r in mine)  # kernels, not the ops that launched them


def test_a_bench_request_refuses_what_no_view_takes_and_measures_the_view_it_names(monkeypatch):
    """The flag rules live in the library (BenchRequest), so a script that benches gets the CLI's
    refusals, and exactly one view's function is called."""
    from cartoongan.bench import kernels
    from cartoongan.bench.request import BenchRequest, measure
    from cartoongan.errors import ConfigError
    from cartoongan.report import NullReporter

    cpu = torch.device("cpu")
    for req, says in ((BenchRequest(kernels=True, configs="tiny"), "--kernels times fixed shapes"),
                      (BenchRequest(flops=True, repeats=3), "drop --repeats"),
                      # its ops ran in fp32 whatever --precision said: a "bf16" table of fp32 figures
                      (BenchRequest(kernels=True, precision="bf16"), "in fp32 beside its alternative: drop --precision"),
                      (BenchRequest(profile=True, configs="tiny,r64"), "at most one --configs"),
                      (BenchRequest(flops=True, grouped_modconv=True), "plain bench table only"),
                      (BenchRequest(configs=" , "), "names no config"),
                      (BenchRequest(configs="tiny,,tiny"), "has an empty name between its commas")):
        with pytest.raises(ConfigError, match=says):
            req.check(cpu)
    seen = []
    monkeypatch.setattr(kernels, "run_kernel_bench", lambda device, repeats, reporter: seen.append(repeats) or ["row"])
    req = BenchRequest(kernels=True, device="cpu")
    req.check(cpu)
    assert measure(req, cpu, NullReporter()) == ["row"] and seen == [5]
    assert BenchRequest(configs="r64, tiny, r64").names == ["r64", "tiny"]
    assert BenchRequest(profile=True).profiled(cpu) == "demo64" and BenchRequest(profile=True).profiled(torch.device("cuda")) == "r256"


def test_the_cpu_peak_memory_of_a_bench_config_leaves_out_earlier_configs():
    """On the CPU the peak was the process's since it started (ru_maxrss): `bench --configs
    demo64,tiny` gave tiny 1009 MB, demo64's peak; alone, tiny took 767-772 MB."""
    import os

    from cartoongan.device import peak_memory_mb, reset_peak_memory

    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("this kernel does not let a process reset its peak RSS")
    cpu = torch.device("cpu")
    big = torch.ones(300 * 2**20, dtype=torch.uint8)  # 300 MB touched
    before = peak_memory_mb(cpu)
    del big
    reset_peak_memory(cpu)
    assert peak_memory_mb(cpu) < before - 200
