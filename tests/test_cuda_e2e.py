"""`make cuda-check`: every subcommand on a GPU at the paper's architecture (256 px, config F),
with ADA actually augmenting (p > 0, so R1 differentiates through it), in fp32,
tf32 and bf16. Skipped without a GPU; each of these broke on CUDA while the CPU suite was green."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from .helpers import blob_images, invoke_ok

pytestmark = pytest.mark.cuda

RECIPE = """
[model]
size = 256
style_dim = 512
n_mlp = 8
channel_multiplier = 2

[train]
batch = 4
augment = "ada"
augment_p = 0.5
ada_kimg = 100
d_reg_every = 2
g_reg_every = 2
sample_every = 100
ckpt_every = 100
log_every = 1
n_sample = 4
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One pretrain -> finetune -> swap chain per precision, shared by the checks below."""
    root = tmp_path_factory.mktemp("cuda")
    (root / "r.toml").write_text(RECIPE)
    faces = blob_images(root / "faces", n=8, size=256, seed=1)
    toons = blob_images(root / "toons", n=8, size=256, seed=2)
    out = {}
    for precision in ("fp32", "tf32", "bf16"):
        d = root / precision
        invoke_ok(["pretrain", "--recipe", str(root / "r.toml"), "--data", str(faces), "--out", str(d / "src"),
             "--iters", "4", "--precision", precision, "--device", "cuda"])
        invoke_ok(["finetune", "--recipe", str(root / "r.toml"), "--source", str(d / "src" / "latest.pt"), "--data",
             str(toons), "--out", str(d / "ft"), "--iters", "4", "--freeze-sg", "2", "--struct-loss", "3",
             "--precision", precision, "--device", "cuda"])
        invoke_ok(["swap", str(d / "src" / "latest.pt"), str(d / "ft" / "latest.pt"), "-o", str(d / "swap.pt")])
        out[precision] = d
    return root, out


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_training_chain_augments_and_regularises_on_cuda(runs, precision):
    import json

    d = runs[1][precision]
    for run in ("src", "ft"):
        rows = [json.loads(line) for line in (d / run / "log.jsonl").read_text().splitlines()]
        assert all(np.isfinite(v) for r in rows for v in r.values() if isinstance(v, float))
        assert any("r1" in k for k in rows[0]) and any("path" in k for r in rows for k in r), rows[0]
        assert rows[0]["ada_p"] > 0
    assert (d / "swap.pt").is_file()


def test_sample_and_toonify_on_cuda(runs):
    root, out = runs
    d = out["fp32"]
    invoke_ok(["sample", str(d / "src" / "latest.pt"), str(d / "swap.pt"), "--seeds", "0-2", "--outdir", str(d / "s"),
         "--device", "cuda"])
    assert Image.open(d / "s" / "compare.png").size == (3 * 256, 2 * 256)
    Image.fromarray((np.random.RandomState(0).rand(300, 280, 3) * 255).astype(np.uint8)).save(root / "photo.png")
    invoke_ok(["toonify", str(root / "photo.png"), "--source", str(d / "src" / "latest.pt"), "--target", str(d / "swap.pt"),
         "--steps", "3", "--loss", "mse", "--outdir", str(d / "t"), "--device", "cuda", "--no-align"])
    assert Image.open(d / "t" / "toonify.png").size == (3 * 256, 256)


def test_lpips_projection_with_a_cpu_perceptual_model_on_cuda(runs, tmp_path):
    """The LPIPS path mixed devices when the perceptual model came from the caller."""
    import lpips

    from cartoongan.pipelines.project import ProjectConfig, project_photo

    root, out = runs
    perceptual = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).requires_grad_(False)
    Image.fromarray((np.random.RandomState(1).rand(256, 256, 3) * 255).astype(np.uint8)).save(tmp_path / "p.png")
    cfg = ProjectConfig(steps=2, loss="lpips+mse", w_avg_samples=500)
    paths = project_photo(tmp_path / "p.png", out["fp32"] / "src" / "latest.pt", tmp_path / "o", cfg,
                          device="cuda", perceptual=perceptual)
    assert Image.open(paths["proj"]).size == (256, 256)


def test_cuda_render_matches_cpu_render(runs):
    """Rendering runs in IEEE fp32 (no TF32), so the GPU and the CPU agree far below one 8-bit step."""
    from cartoongan.models.latents import z_from_seed
    from cartoongan.weights.networks import load_generator

    path = runs[1]["tf32"] / "ft" / "latest.pt"
    z = torch.cat([z_from_seed(s, 512) for s in range(2)])
    cpu = load_generator(path, "cpu")(z, noise_mode="const")
    gpu = load_generator(path, "cuda")(z.cuda(), noise_mode="const").cpu()
    assert (cpu - gpu).abs().max() < 1e-3


def test_bench_cuda_in_a_fresh_process():
    """`bench --device cuda` as a user runs it: the first CUDA call in the process is the bench's own."""
    res = subprocess.run([sys.executable, "-m", "cartoongan_cli", "bench", "--device", "cuda", "--configs", "tiny",
                          "--repeats", "1", "--json"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert '"peak_mem_mb"' in res.stdout


def test_ada_state_resumed_on_cuda_can_be_saved_again():
    """A resume loads ADA's pending statistics on the CPU; new ones arrive on the GPU; a save mixes both."""
    from cartoongan.train.augment import AdaController

    ada = AdaController(interval=4)
    ada.load_state_dict({"p": 0.1, "pending": torch.tensor([1.0, 4.0]), "steps": 2})
    ada.observe(torch.ones(4, 1, device="cuda"))
    state = ada.state_dict()
    assert state["pending"].device.type == "cpu" and state["pending"].tolist() == [5.0, 8.0]


def test_ada_update_waits_for_the_gpu_once():
    """ADA's update every `interval` D steps reads r_t back: one wait for the GPU, not one per entry."""
    import warnings

    from cartoongan.train.augment import AdaController

    ada = AdaController(interval=4)
    for _ in range(4):
        ada.observe(torch.ones(8, 1, device="cuda"))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ada.maybe_update()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len([w for w in caught if "synchroniz" in str(w.message)]) == 1, [str(w.message) for w in caught]
    assert ada.p > 0


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_training_on_cuda(tmp_path, mode, monkeypatch):
    """train.compile_mode on a GPU: with CUDA-graph replays (reduce-overhead) torch raises if a graph
    output is read after a later replay overwrote it, the hazard the D step's copied fakes avoid.
    Finetune with the structure loss, ADA and both lazy regularisers, at a small architecture so
    that compiling stays short."""
    import json

    recipe = tmp_path / "c.toml"
    recipe.write_text("[model]\nsize = 32\nstyle_dim = 64\nn_mlp = 2\nchannel_multiplier = 1\nchannel_base = 1024\n"
                      "channel_max = 64\n\n[train]\nbatch = 4\naugment = \"ada\"\naugment_p = 0.5\nd_reg_every = 2\n"
                      f"g_reg_every = 2\nlog_every = 1\nsample_every = 100\nckpt_every = 100\ncompile = true\n"
                      f"compile_mode = \"{mode}\"\n")
    from torch._dynamo.utils import counters
    from torch._inductor import cudagraph_utils

    from cartoongan.ops.fir import triton_missing

    if triton_missing():
        pytest.skip(f"torch.compile on CUDA needs {triton_missing()}")
    faces, toons = blob_images(tmp_path / "f", n=8, size=32, seed=1), blob_images(tmp_path / "t", n=8, size=32, seed=2)
    counters.clear()
    skipped = []  # why torch skipped CUDA graphs, for the failure message (it logs, and goes on)
    monkeypatch.setattr(cudagraph_utils.cudagraphs_log, "warning", lambda msg, *a, **k: skipped.append(msg % a))
    invoke_ok(["pretrain", "--recipe", str(recipe), "--data", str(faces), "--out", str(tmp_path / "src"), "--iters", "2",
         "--device", "cuda"])
    invoke_ok(["finetune", "--recipe", str(recipe), "--source", str(tmp_path / "src" / "latest.pt"), "--data", str(toons),
         "--out", str(tmp_path / "ft"), "--iters", "6", "--freeze-sg", "1", "--struct-loss", "2", "--device", "cuda"])
    rows = [json.loads(line) for line in (tmp_path / "ft" / "log.jsonl").read_text().splitlines()]
    assert len(rows) >= 5 and all(np.isfinite(v) for r in rows for v in r.values() if isinstance(v, float))
    assert any("loss_struct" in k for r in rows for k in r)
    # it compiled, and (reduce-overhead) recorded CUDA graphs and skipped none: torch skips them
    # silently, e.g. for an input left on the CPU, and the run would pass without testing them
    assert counters["stats"]["unique_graphs"] > 0
    assert counters["inductor"]["cudagraph_skips"] == 0, skipped
    if mode == "reduce-overhead":  # the synthesis's w+ is a non-static input of every recorded graph
        assert counters["inductor"]["cudagraph_recorded_non_static_inputs"] > 0, dict(counters["inductor"])


def test_demo_and_ablation_on_cuda(tmp_path):
    """`demo --device cuda` and `ablation --device cuda`: the bundled 64 px source fine-tuned, swapped,
    rendered and measured on the GPU (pretrained metric networks the box lacks give way to n/a)."""
    from cartoongan.pipelines.ablation import METHODS, run_ablation
    from cartoongan.pipelines.demo import run_demo

    res = run_demo(tmp_path / "demo", finetune_iters=2, n_cartoon=16, seeds=[0, 1], device="cuda")
    assert Image.open(res.compare).size == (2 * 64, 3 * 64) and res.gif.is_file()
    abl = run_ablation(tmp_path / "abl", iters=1, n_eval=4, n_structure=4, n_ppl=4, n_cartoon=8, seeds=[0],
                       device="cuda")
    assert [v["method"] for v in abl.values[1:]] == [name for name, _ in METHODS]
    assert all(0 < v["structure"] <= 1 + 1e-4 for v in abl.values), abl.values
    assert Image.open(abl.figure).size == (64, (1 + len(METHODS)) * 64)


def test_inception_features_and_a_checkpoint_sweep_on_cuda(runs):
    """FID's Inception module on the GPU computes the CPU's features (IEEE fp32 there too); metrics
    of REAL against two checkpoints renders and scores each on CUDA (a seeded random Inception:
    the pretrained file is not on the box)."""
    from cartoongan.metrics.inception import InceptionFeatures
    from cartoongan.metrics.suite import compare_with_real

    from .test_inception_net import random_network

    root, out = runs
    images = (np.random.RandomState(0).rand(3, 96, 80, 3) * 255).astype(np.uint8)
    cpu = InceptionFeatures("cpu", network=random_network())(images)
    gpu_features = InceptionFeatures("cuda", network=random_network().cuda())
    assert np.abs(cpu - gpu_features(images)).max() < 1e-3 * max(1.0, np.abs(cpu).max())
    fakes = [out["fp32"] / "src" / "latest.pt", out["fp32"] / "ft" / "latest.pt"]
    rows = compare_with_real(root / "faces", fakes, "fid,kid", n=4, device="cuda", features=gpu_features)
    assert len(rows) == 2 and all(np.isfinite(r["fid"]) and r["fid"] > 0 for r in rows), rows


def test_edit_on_cuda_matches_the_cpu(runs, tmp_path):
    """`edit --device cuda`: the moved w+ rendered on the GPU give the CPU's sheet (IEEE fp32 renders)."""
    d = runs[1]["fp32"]
    sheets = {}
    for device in ("cpu", "cuda"):
        invoke_ok(["edit", str(d / "src" / "latest.pt"), str(d / "ft" / "latest.pt"), "--index", "0,3", "--steps", "3",
                   "--seeds", "0-1", "--outdir", str(tmp_path / device), "--device", device])
        sheets[device] = np.asarray(Image.open(tmp_path / device / "index003.png"), np.int16)
    assert sheets["cpu"].shape == (4 * 256, 3 * 256, 3) and np.abs(sheets["cpu"] - sheets["cuda"]).max() <= 2
