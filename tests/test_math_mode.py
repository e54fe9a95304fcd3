"""The precision policy: which math mode each command sets, and the CLI's choices come from the library."""
import numpy as np
import pytest
import torch
from cartoongan_cli.app import Precision, app
from typer.testing import CliRunner

from cartoongan import __version__
from cartoongan.config import PRECISIONS
from cartoongan.device import set_math_mode, tf32_enabled
from cartoongan.train.runs import pretrain
from cartoongan.weights.checkpoint import save_checkpoint
from cartoongan.weights.networks import generator_checkpoint, load_generator

from .helpers import blob_images, tiny_config

runner = CliRunner()


@pytest.fixture(autouse=True)
def restore_math_mode():
    yield
    set_math_mode("fp32")


@pytest.mark.parametrize("precision,tf32", [("fp32", False), ("tf32", True), ("bf16", True)])
def test_training_sets_the_math_mode_of_its_precision(tmp_path, precision, tf32, monkeypatch):
    # bf16 is refused on the CPU by the run checks; the trainer's own policy is what is tested here
    monkeypatch.setattr("cartoongan.train.runs.check_precision", lambda *a: None)
    set_math_mode("fp32" if tf32 else "tf32")  # start from the opposite state
    cfg = tiny_config(iters=1, precision=precision)
    pretrain(cfg, blob_images(tmp_path / "d", n=4), tmp_path / "run")
    assert tf32_enabled() is tf32


# not named `benchmark`: pytest-benchmark (installed on the GPU box) owns that fixture name
@pytest.mark.parametrize("timed", [True, False])
def test_training_lets_cudnn_time_its_algorithms_unless_told_not_to(tmp_path, timed):
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = not timed
    try:
        pretrain(tiny_config(iters=1, cudnn_benchmark=timed), blob_images(tmp_path / "d", n=4), tmp_path / "run")
        assert torch.backends.cudnn.benchmark is timed
    finally:
        torch.backends.cudnn.benchmark = before


@pytest.mark.parametrize("order", [("tf32", "fp32", "bf16"), ("fp32", "tf32", "fp32")])
def test_every_reader_of_the_math_mode_agrees(order):
    """torch.compile and other libraries read the legacy flags; torch raises on reading them when
    they disagree with the per-backend API, so each mode must leave both saying the same."""
    for precision in order:
        set_math_mode(precision)
        tf32 = precision != "fp32"
        assert tf32_enabled() is tf32
        assert torch.backends.cudnn.allow_tf32 is tf32
        assert torch.backends.cuda.matmul.allow_tf32 is tf32
        assert torch.get_float32_matmul_precision() == ("high" if tf32 else "highest")
        if hasattr(torch.backends, "mkldnn") and hasattr(torch.backends.mkldnn, "matmul"):
            assert torch.backends.mkldnn.matmul.fp32_precision == "ieee"  # the CPU stays IEEE


def test_rendering_always_uses_ieee_fp32(tmp_path, tiny_g):
    path = save_checkpoint(tmp_path / "g.pt", generator_checkpoint(tiny_g()))
    set_math_mode("tf32")
    load_generator(path, "cpu")
    assert not tf32_enabled()


def test_bf16_is_refused_on_the_cpu(tmp_path):
    res = runner.invoke(app, ["pretrain", "--recipe", "tiny", "--data", str(blob_images(tmp_path / "d", n=4)),
                              "--out", str(tmp_path / "run"), "--precision", "bf16", "--device", "cpu"])
    assert res.exit_code == 2 and "needs a CUDA device" in res.output
    assert not (tmp_path / "run" / "latest.pt").exists()


def test_cli_choices_are_the_library_values():
    assert tuple(p.value for p in Precision) == PRECISIONS
    res = runner.invoke(app, ["bench", "--precision", "fp16"])
    assert res.exit_code == 2 and "fp16" in res.output


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout.strip() == f"cartoongan {__version__}" and __version__[0].isdigit()


def test_bench_peak_memory_starts_cuda_before_resetting(monkeypatch):
    """`bench --device cuda` crashed resetting the peak before any CUDA work; reset must initialise first."""
    import cartoongan.device as device

    calls = []
    monkeypatch.setattr(torch.cuda, "init", lambda: calls.append("init"))
    monkeypatch.setattr(torch, "empty", lambda *a, **k: calls.append("alloc"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d: calls.append("reset"))
    device.reset_peak_memory(torch.device("cuda", 0))
    assert calls == ["init", "alloc", "reset"]
    calls.clear()
    device.reset_peak_memory(torch.device("cpu"))
    assert calls == []


def test_kid_during_training_is_computed_in_ieee_fp32(tmp_path):
    """A tf32 run's KID (and so its best.pt) must be the number `cartoongan metrics` would give."""
    import cartoongan.train.trainer as trainer

    seen = []

    class Probe:
        best = None

        def __call__(self, g_ema):
            seen.append(tf32_enabled())
            return 0.5

        def improved(self, kid):
            return False

    cfg = tiny_config(iters=2, precision="tf32")
    tr = trainer.Trainer.__new__(trainer.Trainer)  # only what evaluate() reads
    tr.evaluator, tr.info, tr.t, tr.step, tr.images, tr.log = Probe(), type("I", (), {"is_main": True})(), cfg.train, 2, 4, []
    tr.out = type("O", (), {"append_log": lambda self, row: None})()
    tr.unchecked, tr.nets = [], type("N", (), {"g_ema": None})()
    set_math_mode("tf32")
    assert tr.evaluate() == 0.5
    assert seen == [False] and tf32_enabled()


def test_metrics_on_two_folders_compute_in_ieee_fp32(tmp_path):
    """No generator is loaded between two folders, so nothing else would leave torch's default
    (TF32 cuDNN convolutions) for Inception: FID/KID must not depend on what ran before."""
    from cartoongan.metrics import suite

    seen = []

    def probe(images, reporter, description):
        seen.append(tf32_enabled())
        return np.random.default_rng(len(seen)).normal(size=(len(images), 4))

    a, b = blob_images(tmp_path / "a", n=4, seed=0), blob_images(tmp_path / "b", n=4, seed=1)
    set_math_mode("tf32")
    suite.compute_metrics(a, b, "kid", features=probe)
    assert seen == [False, False]
    assert tf32_enabled()  # and the caller's mode is back afterwards


def test_inception_features_compute_in_ieee_fp32_whoever_calls(tmp_path):
    """A run's KID cache of the training set's features is made before the trainer sets its
    precision (from the process's default, TF32 convs on CUDA): the extractor itself must pick
    IEEE fp32, as for the fakes' features later."""
    from cartoongan.metrics.inception import InceptionFeatures

    seen = []

    def network(t):
        seen.append(tf32_enabled())
        return t.mean((2, 3))

    set_math_mode("tf32")
    InceptionFeatures(network=network, batch=2, resize=False)(torch.zeros(3, 3, 8, 8, dtype=torch.uint8))
    assert seen == [False, False]
    assert tf32_enabled()


def _every_math_switch():
    """What each reader of the math mode sees now ('raises' where torch refuses to read it)."""
    readers = {"cudnn legacy": lambda: torch.backends.cudnn.allow_tf32,
               "matmul legacy": lambda: torch.backends.cuda.matmul.allow_tf32,
               "matmul precision": torch.get_float32_matmul_precision}
    for be in ("cudnn", "cuda", "mkldnn"):
        for op in ("conv", "rnn", "matmul"):
            switch = getattr(getattr(torch.backends, be), op, None)
            if hasattr(switch, "fp32_precision"):
                readers[f"{be}.{op}"] = lambda s=switch: s.fp32_precision
    seen = {}
    for name, read in readers.items():
        try:
            seen[name] = read()
        except RuntimeError:
            seen[name] = "raises"
    return seen


@pytest.mark.parametrize("start", ["fp32", "tf32", "mixed APIs"])
@pytest.mark.parametrize("inner", ["fp32", "tf32"])
def test_math_mode_block_gives_the_callers_state_back_exactly(start, inner):
    """A library call that needs IEEE fp32 must not change what a user's process (or a training
    run) had set, including a mix of torch's legacy and per-backend switches."""
    from cartoongan.device import math_mode

    if start == "mixed APIs":
        torch.backends.cudnn.allow_tf32 = True
        if hasattr(torch.backends.cudnn, "conv"):
            torch.backends.cudnn.conv.fp32_precision = "ieee"
    else:
        set_math_mode(start)
    before = _every_math_switch()
    with math_mode(inner):
        assert tf32_enabled() is (inner != "fp32")
    assert _every_math_switch() == before
    with pytest.raises(KeyError), math_mode(inner):
        raise KeyError("an error inside the block restores too")
    assert _every_math_switch() == before


def test_math_mode_on_a_torch_before_the_per_backend_switches(monkeypatch):
    """torch < 2.9 (pyproject allows 2.4) has only the legacy flags, and its cuBLAS module raises
    on any attribute it does not know, fp32_precision included."""
    from types import SimpleNamespace

    from cartoongan.device import math_mode

    class OldCuBLAS:
        def __init__(self):
            object.__setattr__(self, "allow_tf32", False)

        def __getattr__(self, name):
            raise AttributeError(f"Unknown attribute {name}")

        def __setattr__(self, name, value):
            if name != "allow_tf32":
                raise AttributeError(f"Unknown attribute {name}")
            object.__setattr__(self, name, value)

    monkeypatch.setattr(torch.backends, "cudnn", SimpleNamespace(allow_tf32=True, benchmark=False))
    monkeypatch.setattr(torch.backends.cuda, "matmul", OldCuBLAS())
    monkeypatch.setattr(torch.backends, "mkldnn", SimpleNamespace())
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        with math_mode("fp32"):
            # (a real old torch ties the matmul precision to the cuBLAS flag; this stand-in does not)
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)
