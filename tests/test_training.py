import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from cartoongan_cli.app import app
from PIL import Image
from typer.testing import CliRunner

from cartoongan import load_checkpoint, save_checkpoint
from cartoongan.config import load_recipe, validate
from cartoongan.errors import ConfigError, TrainingDiverged
from cartoongan.report import ListReporter
from cartoongan.train.runs import pretrain, resumed_config

from .helpers import blob_images, free_port, launch_as_rank, tiny_config

runner = CliRunner()


def weights(path):
    return load_checkpoint(path)


def test_resumed_run_matches_unbroken_run(tmp_path):
    data = blob_images(tmp_path / "data")
    cfg = tiny_config(iters=8, ckpt_every=4, sample_every=4, d_reg_every=2, g_reg_every=2, ada_interval=1, ada_target=-1.0)
    whole = pretrain(cfg, data, tmp_path / "whole")
    half = pretrain(tiny_config(iters=4, ckpt_every=4, sample_every=4, d_reg_every=2, g_reg_every=2, ada_interval=1,
                                ada_target=-1.0),
                    data, tmp_path / "split")
    assert half.step == 4
    resumed = pretrain(resumed_config(tmp_path / "split", {"train": {"iters": 8}}), data, tmp_path / "split", resume=True)
    assert resumed.step == 8
    a, b = weights(whole.latest), weights(resumed.latest)
    for net in ("g", "d", "g_ema"):
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), (net, key)
    assert a["ada_aug_p"] == b["ada_aug_p"] and a["ada_aug_p"] > 0
    assert torch.equal(a["train_state"]["mean_path"], b["train_state"]["mean_path"])


def test_kimg_counts_the_images_trained_on_through_a_batch_change(tmp_path):
    """kimg was step x the batch of the moment: after a resume at another --batch, the log and info
    counted the earlier steps at the new batch."""
    from cartoongan.metrics.plot import read_log
    from cartoongan.weights.networks import describe, images_trained

    data, run = blob_images(tmp_path / "data", n=4), tmp_path / "run"
    pretrain(tiny_config(iters=2, batch=2, log_every=1), data, run)
    pretrain(resumed_config(run, {"train": {"iters": 4, "batch": 4}}), data, run, resume=True)
    rows = read_log(run)
    assert [r["kimg"] for r in rows] == [0.002, 0.004, 0.008, 0.012]  # (2*2 + 2*4) / 1000 at the end
    ckpt = load_checkpoint(run / "latest.pt")
    assert ckpt["cartoongan"]["images"] == 12
    assert describe(ckpt)["training"].startswith("4 steps = 0.012 kimg (at batch 4 now")
    # a checkpoint from before the count: step x its recorded batch, as info always said
    del ckpt["cartoongan"]["images"]
    assert images_trained(ckpt["cartoongan"]) == 16 and describe(ckpt)["training"].startswith("4 steps x batch 4 = 0.016")
    save_checkpoint(run / "latest.pt", ckpt)  # ... and a resume of it goes on from there
    pretrain(resumed_config(run, {"train": {"iters": 5}}), data, run, resume=True)
    assert read_log(run)[-1]["kimg"] == 0.02


def test_run_directory_layout_and_log(tmp_path):
    data = blob_images(tmp_path / "data")
    res = pretrain(tiny_config(iters=4, ckpt_every=2, sample_every=2), data, tmp_path / "run")
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["000002.pt", "000004.pt"]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["000002.png", "000004.png"]
    assert Image.open(run / "samples" / "000004.png").size == (32, 32)  # 4 faces of 16 px, 2x2
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    for key in ("kimg", "loss_g", "loss_d", "r1", "path_length", "ada_p", "img_per_s"):
        assert key in rows[0]
    assert load_recipe(run / "config.toml").model.size == 16
    ckpt = load_checkpoint(res.latest)
    assert {"g", "d", "g_ema", "g_optim", "d_optim", "latent_avg"} <= set(ckpt)
    assert ckpt["cartoongan"]["step"] == 4


def test_existing_run_is_never_overwritten(tmp_path):
    data = blob_images(tmp_path / "data", n=4)
    pretrain(tiny_config(iters=1), data, tmp_path / "run")
    before = (tmp_path / "run" / "latest.pt").read_bytes()
    with pytest.raises(ConfigError, match="--resume"):
        pretrain(tiny_config(iters=1), data, tmp_path / "run")
    assert (tmp_path / "run" / "latest.pt").read_bytes() == before


def test_a_resume_with_a_new_lr_or_reg_interval_trains_with_it(tmp_path):
    """`--resume --lr 0.0001` was warned of ("[train] lr 0.002 -> 0.0001") and recorded, and the run
    went on bit for bit as before: the optimisers took lr and betas from the saved state."""
    data = blob_images(tmp_path / "data", n=4)
    for name in ("plain", "new"):
        pretrain(tiny_config(iters=2, ckpt_every=2, sample_every=100, g_reg_every=4, d_reg_every=16), data, tmp_path / name)
    plain = pretrain(resumed_config(tmp_path / "plain", {"train": {"iters": 4}}), data, tmp_path / "plain", resume=True)
    new = pretrain(resumed_config(tmp_path / "new", {"train": {"iters": 4, "lr": 0.0001, "g_reg_every": 2}}), data,
                   tmp_path / "new", resume=True)
    a, b = load_checkpoint(plain.latest), load_checkpoint(new.latest)
    g_group, d_group = b["g_optim"]["param_groups"][0], b["d_optim"]["param_groups"][0]
    assert g_group["lr"] == pytest.approx(0.0001 * 2 / 3) and g_group["betas"][1] == pytest.approx(0.99 ** (2 / 3))
    assert d_group["lr"] == pytest.approx(0.0001 * 16 / 17)
    assert a["g_optim"]["param_groups"][0]["lr"] == pytest.approx(0.002 * 4 / 5)
    assert not torch.equal(a["g"]["style.1.weight"], b["g"]["style.1.weight"])


def test_a_resume_without_data_reads_the_runs_own_record(tmp_path):
    from cartoongan.errors import CartoonganError
    from cartoongan.weights.checkpoint import save_checkpoint

    data = blob_images(tmp_path / "data", n=4)
    pretrain(tiny_config(iters=1), data, tmp_path / "run")
    res = pretrain(resumed_config(tmp_path / "run", {"train": {"iters": 2}}), None, tmp_path / "run", resume=True)
    assert res.step == 2
    ckpt = load_checkpoint(res.latest)
    assert ckpt["cartoongan"]["provenance"]["data"] == str(data)
    ckpt["cartoongan"]["provenance"] = {}
    save_checkpoint(res.latest, ckpt)
    with pytest.raises(CartoonganError, match="latest.pt does not record its data; pass --data again"):
        pretrain(resumed_config(tmp_path / "run", {"train": {"iters": 3}}), None, tmp_path / "run", resume=True)


def test_a_resume_on_data_inside_its_own_run_folder_is_refused(tmp_path):
    """`--resume pA --data pA/samples` trained on its own sample grids and wrote new ones into its
    dataset: a new run is refused that, a resume was not."""
    from cartoongan.errors import OutputError

    data = blob_images(tmp_path / "data", n=4)
    run = tmp_path / "run"
    pretrain(tiny_config(iters=1, sample_every=1), data, run)
    before = load_checkpoint(run / "latest.pt")["cartoongan"]["step"]
    with pytest.raises(OutputError, match=r"--data .*samples is inside .*run: the run writes its samples"):
        pretrain(resumed_config(run, {"train": {"iters": 2}}), run / "samples", run, resume=True)
    assert load_checkpoint(run / "latest.pt")["cartoongan"]["step"] == before


def test_messy_dataset_trains_and_names_the_corrupt_file(tmp_path):
    blob_images(tmp_path / "data", n=3)
    (tmp_path / "data" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    (tmp_path / "data" / "notes.txt").write_text("not an image")
    Image.fromarray((np.random.rand(20, 30) * 255).astype(np.uint8), "L").save(tmp_path / "data" / "gray.png")
    Image.fromarray((np.random.rand(20, 20, 4) * 255).astype(np.uint8), "RGBA").save(tmp_path / "data" / "alpha.png")
    Image.fromarray((np.random.rand(24, 24) * 65535).astype(np.uint16)).save(tmp_path / "data" / "deep.png")
    Image.fromarray((np.random.rand(24, 24, 3) * 255).astype(np.uint8)).convert("P").save(tmp_path / "data" / "pal.png")
    res = runner.invoke(app, ["pretrain", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
                              "--recipe", "tiny", "--iters", "2"])
    assert res.exit_code == 0, res.output
    assert "broken.png" in res.output and "skipped 1" in res.output
    cfg = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])
    assert cfg["step"] == 2


def test_a_batch_larger_than_the_set_and_tf32_on_the_cpu_warn_and_train(tmp_path):
    """Neither stops a smoke test, but both mean something other than what the flag says: batches of
    repeated images (drawn with replacement), and IEEE fp32 where TF32 was asked for."""
    data = blob_images(tmp_path / "data", n=3)
    rep = ListReporter()
    result = pretrain(tiny_config(iters=1, batch=4, precision="tf32"), data, tmp_path / "r", rep)
    assert result.step == 1
    said = " | ".join(rep.warnings)
    assert "--batch 4 is larger than the 3 image(s)" in said and "--batch 3 or less" in said, said
    assert "precision tf32 does nothing on cpu" in said, said
    rep = ListReporter()
    pretrain(tiny_config(iters=1, batch=3, precision="fp32"), data, tmp_path / "r2", rep)
    assert not any("--batch" in w or "tf32" in w for w in rep.warnings), rep.warnings


def test_empty_dataset_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["pretrain", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r"), "--recipe", "tiny"])
    assert res.exit_code == 1 and "no readable images" in res.output and "Traceback" not in res.output


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    import cartoongan.train.trainer as training

    data = blob_images(tmp_path / "data", n=4)
    real_loss = training.g_nonsaturating_loss
    calls = {"n": 0}

    def poisoned(logits):
        calls["n"] += 1
        loss = real_loss(logits)
        return loss * float("nan") if calls["n"] >= 4 else loss

    monkeypatch.setattr(training, "g_nonsaturating_loss", poisoned)
    with pytest.raises(TrainingDiverged, match="NaN") as kept:
        pretrain(tiny_config(iters=10, ckpt_every=2, log_every=1), data, tmp_path / "run")
    assert "the last good checkpoint is" in str(kept.value) and "resume" in str(kept.value)
    ckpt = load_checkpoint(tmp_path / "run" / "latest.pt")
    assert ckpt["cartoongan"]["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["g"].values())
    # diverged before its first save: nothing to resume, so the message says to start again
    calls["n"] = 0
    with pytest.raises(TrainingDiverged, match="nothing resumes: start again") as lost:
        pretrain(tiny_config(iters=10, ckpt_every=8, log_every=1), data, tmp_path / "early")
    assert str(tmp_path / "early") in str(lost.value) and not (tmp_path / "early" / "latest.pt").exists()
    assert "the same --out will do" in str(lost.value)
    # ... and the same folder takes the new run, whose log starts afresh
    monkeypatch.setattr(training, "g_nonsaturating_loss", real_loss)
    pretrain(tiny_config(iters=2, ckpt_every=2, log_every=1), data, tmp_path / "early")
    log = [json.loads(line) for line in (tmp_path / "early" / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2] and all(math.isfinite(row["loss_g"]) for row in log)


@pytest.mark.parametrize("weights,advice", [
    ({}, "with a lower --lr or a larger R1 weight ([train] r1_gamma, now 10)"),
    ({"r1_gamma": 5000.0}, "with a lower --lr, or lower the R1 weight ([train] r1_gamma 5000), far above its default"),
    ({"path_weight": 1000.0}, "lower the path-length weight ([train] path_weight 1000), far above its default"),
], ids=["usual weights", "huge R1 weight", "huge path-length weight"])
def test_divergence_advice_suspects_a_huge_regularisation_weight(tmp_path, monkeypatch, weights, advice):
    """'a larger R1 weight' is wrong advice for a run whose R1 weight is 5000: lower it, there."""
    import cartoongan.train.trainer as training

    real_loss = training.g_nonsaturating_loss
    monkeypatch.setattr(training, "g_nonsaturating_loss", lambda logits: real_loss(logits) * float("nan"))
    with pytest.raises(TrainingDiverged) as diverged:
        pretrain(tiny_config(iters=2, ckpt_every=8, **weights), blob_images(tmp_path / "data", n=4), tmp_path / "run")
    assert advice in str(diverged.value) and ("larger" in advice) == ("larger" in str(diverged.value))


@pytest.mark.parametrize("key,value", [("r1_gamma", 1e308), ("r1_gamma", 1e5), ("path_weight", float("inf")),
                                       ("path_weight", float("nan")), ("r1_gamma", -1.0)])
def test_regularisation_weights_are_bounded(key, value):
    with pytest.raises(ConfigError, match=rf"^\[train\] {key} must be in \[0, 10000\], got"):
        validate(tiny_config(**{key: value}))
    validate(tiny_config(**{key: 1e4}))


@pytest.mark.parametrize("key,value", [("d_reg_every", 10**23), ("g_reg_every", 10**10), ("ada_interval", 10**10),
                                       ("log_every", 10**10), ("eval_every", 10**10), ("path_batch_shrink", 10**6)])
def test_intervals_are_bounded(key, value):
    """d_reg_every = 1e300 passed, then R1's loss scaling overflowed at step 0 (a traceback)."""
    with pytest.raises(ConfigError, match=rf"^(--\S+ \()?\[train\] {key}\)? must be <= "):
        validate(tiny_config(**{key: value}))


def test_the_structure_weight_is_bounded_as_the_regularisation_weights_are():
    """--struct-weight 1e308 trained into inf, and the divergence message advised --lr and R1."""
    cfg = tiny_config()
    cfg.finetune.struct_loss, cfg.finetune.struct_weight = 2, 1e308
    with pytest.raises(ConfigError, match=r"^--struct-weight \(\[finetune\] struct_weight\) must be in \[0, 10000\]"):
        validate(cfg)


@pytest.mark.parametrize("text,said", [
    ("[train]\niters = 1" + "0" * 400, "--iters ([train] iters) must be <= 10**9 (steps), got a number of 401 digits"),
    ("[train]\nlr = 1" + "0" * 400, "[train].lr is out of range: a number of 401 digits"),
    ("[model]\nsize = 1" + "0" * 400, "[model] size must be a power of two >= 8, got a number of 401 digits")])
def test_a_recipe_number_of_400_digits_is_one_line(tmp_path, text, said):
    """TOML integers have no size limit: float() of one raised OverflowError, a traceback."""
    from cartoongan_cli.app import app
    from typer.testing import CliRunner

    (tmp_path / "r.toml").write_text(text + "\n")
    res = CliRunner().invoke(app, ["pretrain", "--data", str(blob_images(tmp_path / "data", n=2)), "--out",
                                   str(tmp_path / "run"), "--recipe", str(tmp_path / "r.toml")])
    assert res.exit_code in (1, 2) and " ".join(res.output.split()).endswith(said), res.output


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_saves_and_exits_cleanly(tmp_path, stop):
    """A scheduler's preemption (SIGTERM) keeps the run's last step as a Ctrl-C does."""
    data = blob_images(tmp_path / "data", n=4)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "cartoongan_cli", "pretrain", "--data", str(data), "--out", str(run),
                             "--recipe", "tiny", "--iters", "100000"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not (run / "log.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(stop)
    output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 130, output
    assert "--resume" in output and "Traceback" not in output
    step = load_checkpoint(run / "latest.pt")["cartoongan"]["step"]
    assert step >= 5


def test_two_process_gloo_ranks_stay_identical(tmp_path):
    import torch.multiprocessing as mp

    data = blob_images(tmp_path / "data", n=8)
    mp.spawn(_ddp_rank_weights, args=(2, free_port(), data, tmp_path), nprocs=2, join=True)
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    moved = False
    start = torch.load(tmp_path / "start0.pt")
    for key in a:
        assert torch.equal(a[key], b[key]), key
        moved |= not torch.equal(a[key], start[key])
    assert moved
    assert (tmp_path / "run" / "latest.pt").exists()


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not a whole number"),
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE is 2 but RANK is not set"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 .* is not a rank of WORLD_SIZE=2"),
    ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_PORT": "29500"}, "WORLD_SIZE is 2 but MASTER_ADDR is not set"),
])
def test_a_hand_set_torchrun_environment_is_one_line_naming_the_variable(tmp_path, monkeypatch, env, message):
    """torchrun writes these; a user who sets WORLD_SIZE by hand got a KeyError or ValueError traceback."""
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    data = blob_images(tmp_path / "data", n=2)
    res = CliRunner().invoke(app, ["pretrain", "--recipe", "tiny", "--data", str(data), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert re.search(message, res.output) and "torchrun --nproc_per_node" in res.output, res.output
    assert "Traceback" not in res.output and not (tmp_path / "run" / "latest.pt").exists()


def _ddp_rank_weights(rank, world, port, data, out):
    import torch.distributed as dist

    import cartoongan.train.trainer as training

    launch_as_rank(rank, world, port)
    original_run = training.Trainer.run

    def run_and_record(self):
        torch.save({k: v.clone() for k, v in self.nets.g.state_dict().items()}, out / f"start{rank}.pt")
        result = original_run(self)
        torch.save({k: v.clone() for k, v in self.nets.g.state_dict().items()}, out / f"rank{rank}.pt")
        return result

    training.Trainer.run = run_and_record
    pretrain(tiny_config(iters=3, batch=4, ckpt_every=3), data, out / "run")
    dist.destroy_process_group()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_bf16_autocast_path_trains_a_finetune_step(device):
    """The bf16 code path (autocast around G, D and the structure loss; regularisers in fp32), run
    on the CPU's autocast too, so that CI exercises what CUDA users get with --precision bf16."""
    from cartoongan.bench.speed import bench_trainer

    tr = bench_trainer("tiny", torch.device(device), 4, "bf16", None, struct=True)
    ws = tr.nets.g.ws_from_z(torch.randn(2, tr.nets.g.style_dim, device=device))
    with torch.no_grad(), tr._amp():
        assert tr.nets.g.synthesis(ws).image.dtype == torch.bfloat16
    before = {k: v.clone() for k, v in tr.nets.g.state_dict().items()}
    for _ in range(2):
        tr.train_step()  # step 0 runs R1 and path length too
    for name in ("loss_d", "loss_g", "loss_struct", "r1", "path_length"):
        values = torch.stack(tr.stats[name])
        assert values.dtype == torch.float32 and torch.isfinite(values).all(), name
    after = tr.nets.g.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("convs.") for k in changed) and all(v.dtype == torch.float32 for v in after.values())


def test_fused_adam_follows_the_per_tensor_update_and_loads_its_state():
    """lazy_adam's fused update is the same Adam: within float rounding of the per-tensor
    update over several steps, and it continues from a state the per-tensor form saved (older
    checkpoints, rosinality's optimisers)."""
    from cartoongan.train.trainer import lazy_adam, load_optimizer_state

    torch.manual_seed(0)
    shapes = [(8, 4, 3, 3), (8,), (32, 32), (1,)]
    start = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(6)]

    def run(make, steps, state=None):
        params = [p.clone().requires_grad_(True) for p in start]
        opt = make(params)
        if state is not None:
            opt.load_state_dict(state)
        for g in grads[:steps]:
            for p, gi in zip(params, g):
                p.grad = gi.clone()
            opt.step()
        return params, opt

    fused = lambda ps: lazy_adam(ps, 0.002, 16)  # noqa: E731
    plain = lambda ps: torch.optim.Adam(ps, lr=0.002 * 16 / 17, betas=(0.0, 0.99 ** (16 / 17)), foreach=False)  # noqa: E731
    assert fused([torch.zeros(1, requires_grad=True)]).defaults["fused"] is True
    a, _ = run(fused, 6)
    b, _ = run(plain, 6)
    assert all(not torch.equal(p, s) for p, s in zip(a, start))
    assert all(torch.allclose(p, q, atol=1e-6, rtol=1e-5) for p, q in zip(a, b))
    # 3 steps per-tensor, then its saved state continues in the fused form for 3 more
    mid, opt = run(plain, 3)
    params = [p.detach().clone().requires_grad_(True) for p in mid]
    resumed = fused(params)
    load_optimizer_state(resumed, opt.state_dict())
    assert resumed.param_groups[0]["fused"] is True  # torch's own load would have taken the saved None
    for g in grads[3:6]:
        for p, gi in zip(params, g):
            p.grad = gi.clone()
        resumed.step()
    assert all(resumed.state[p]["step"].item() == 6 for p in params)
    assert all(torch.allclose(p, q, atol=1e-6, rtol=1e-5) for p, q in zip(params, b))


def test_dataset_placement_keeps_images_on_a_gpu_with_room():
    from cartoongan.data.dataset import DEVICE_SHARE, placement

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert placement(10, cpu, None) == "host"
    assert placement(100, cuda, int(100 / DEVICE_SHARE)) == "device"
    assert placement(101, cuda, int(100 / DEVICE_SHARE)) == "host"
    assert placement(1, cuda, None) == "host"


def test_batches_are_drawn_with_the_rng_of_the_images_device(monkeypatch):
    from cartoongan.data.dataset import ImageDataset

    seen = []
    for name in ("randint", "rand"):
        real = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, real=real, **k: seen.append(k.get("device")) or real(*a, **k))
    meta = ImageDataset(torch.zeros(5, 3, 8, 8, dtype=torch.uint8, device="meta"), list("abcde"))
    out = meta.batch(4, True, torch.device("meta"))
    assert out.shape == (4, 3, 8, 8) and out.dtype == torch.float32
    assert seen == [torch.device("meta")] * 2
    # on the CPU: values in [-1, 1], and a mirrored image is one of the dataset's, mirrored
    images = torch.randint(0, 256, (3, 3, 4, 4), dtype=torch.uint8)
    out = ImageDataset(images, list("abc")).batch(8, True, torch.device("cpu"))
    originals = (images.float() / 127.5 - 1.0)
    for img in out:
        assert any(torch.equal(img, o) or torch.equal(img, o.flip(2)) for o in originals)


def test_device_side_work_never_reads_values_back_or_builds_host_literals():
    """What a training iteration runs on the device (ADA, G and D with noise, the losses, R1, path
    length) dispatches no `.item()`-style read-back and no tensor built from host values: on CUDA
    each would block the host until the GPU catches up. The CPU's dispatcher shows them too."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from cartoongan import Discriminator, Generator
    from cartoongan.train.augment import augment
    from cartoongan.train.losses import d_logistic_loss, path_length_penalty, r1_penalty

    host_ops = {"aten._local_scalar_dense", "aten.lift_fresh", "aten.lift_fresh_copy", "aten.item"}

    class Watch(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if str(func.overloadpacket) in host_ops:
                self.seen.append(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    g, d = Generator(16, style_dim=32, n_mlp=2, channel_base=512, channel_max=32), Discriminator(16, channel_base=512, channel_max=32)
    real = torch.rand(4, 3, 16, 16) * 2 - 1
    with Watch() as watch:
        ws = g.ws_from_z(torch.randn(4, 32)).detach().requires_grad_(True)
        fake = g.synthesis(ws).image
        d_logistic_loss(d(augment(real, 0.5)), d(augment(fake.detach(), 0.5))).backward()
        x = real.clone().requires_grad_(True)
        r1_penalty(d(augment(x, 0.5)), x).backward()
        penalty, _, _ = path_length_penalty(g.synthesis(ws).image, ws, torch.zeros(()))
        penalty.backward()
    assert watch.seen == []


@pytest.mark.parametrize("channels_last", [True, False])
def test_d_sees_reals_and_fakes_in_one_memory_format(channels_last):
    """With --compile a change of input strides recompiles D, so reals come in the layout G's fakes have."""
    from cartoongan.bench.speed import bench_trainer

    tr = bench_trainer("tiny", torch.device("cpu"), 4, "fp32", None, struct=False, channels_last=channels_last)
    seen = []
    d = tr.d_fwd
    tr.d_fwd = lambda x: seen.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()) or d(x)
    tr.d_step()
    tr.g_step()
    assert seen == [channels_last] * 3  # D step: reals, fakes; G step: fakes


def test_a_compiled_run_says_why_its_first_steps_are_quiet_on_either_device():
    from cartoongan.train.runs import compile_notice

    assert compile_notice(False, torch.device("cpu")) is None and compile_notice(False, torch.device("cuda")) is None
    assert "inductor builds C++ kernels" in compile_notice(True, torch.device("cpu"))
    assert "build Triton kernels" in compile_notice(True, torch.device("cuda", 0))


@pytest.mark.parametrize("mode", ["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"])
def test_compile_mode_reaches_torch_compile_and_graph_replays_keep_the_fakes(monkeypatch, mode):
    """The mode goes to torch.compile (None for its default). Under CUDA-graph replays the D step's
    no-grad fakes are copied out of the graph's memory before D's next compiled call."""
    import cartoongan.train.trainer as trainer
    from cartoongan.bench.speed import bench_trainer

    modes = []
    monkeypatch.setattr(trainer.torch, "compile", lambda fn, mode=None: modes.append(mode) or fn)
    tr = bench_trainer("tiny", torch.device("cpu"), 4, "fp32", mode, struct=False)
    assert modes == [None if mode == "default" else mode] * 2
    g_syn, images, seen = tr.g_syn, [], []
    tr.g_syn = lambda ws: (out := g_syn(ws), images.append(out.image))[0]
    d = tr.d_fwd
    tr.d_fwd = lambda x: seen.append(x) or d(x)
    tr.d_step()
    # the fakes D saw share memory with the synthesis output unless graphs replay
    shares = seen[1].untyped_storage().data_ptr() == images[0].untyped_storage().data_ptr()
    assert shares is (mode not in ("reduce-overhead", "max-autotune"))


def test_a_compile_mode_in_a_recipe_compiles_without_the_compile_flag(tmp_path, monkeypatch):
    import cartoongan.train.trainer as trainer

    modes = []
    monkeypatch.setattr(trainer.torch, "compile", lambda fn, mode=None: modes.append(mode) or fn)
    reporter = ListReporter()
    pretrain(tiny_config(iters=1, compile=False, compile_mode="max-autotune-no-cudagraphs"),
             blob_images(tmp_path / "d", n=4), tmp_path / "run", reporter)
    assert modes == ["max-autotune-no-cudagraphs"] * 2
    # on the CPU the first compile is minutes of C++ builds: the run says so before it goes quiet
    assert any(m.startswith("--compile on the CPU") for m in reporter.infos), reporter.infos


def test_an_unknown_compile_mode_is_one_clear_error():
    from cartoongan.config import validate
    from cartoongan.errors import ConfigError

    with pytest.raises(ConfigError, match=r"compile_mode\) must be default, reduce-overhead"):
        validate(tiny_config(compile_mode="fastest"))


def _compiled_or_eager_steps(monkeypatch, backend: str | None):
    """Four bf16 finetune iterations (FreezeG 2, structure loss 3, ADA at p = 0.5, both lazy
    regularisers at step 0), mixing in the first two only; with `backend`, D and the synthesis go through the real
    torch.compile. Gives the trainer and the count of compiled graphs after each iteration."""
    import cartoongan.train.trainer as trainer
    from torch._dynamo.utils import counters

    from cartoongan.bench.speed import bench_trainer

    real_compile = torch.compile
    if backend:
        monkeypatch.setattr(trainer.torch, "compile", lambda fn, mode=None: real_compile(fn, backend=backend))
    torch._dynamo.reset()
    counters.clear()
    tr = bench_trainer("tiny", torch.device("cpu"), 4, "bf16", "default" if backend else None, struct=True)
    monkeypatch.setattr(trainer.torch, "compile", real_compile)
    # FreezeG rather than FreezeSG: w+ from the target mapping alone is an expand unless it mixes
    tr.plan = dataclasses.replace(tr.plan, source_slots=0)
    tr.t.augment, tr.t.augment_p = "ada", 0.5
    torch.manual_seed(1)
    graphs = []
    for mixing in (1.0, 1.0, 0.0, 0.0):
        tr.t.mixing = mixing
        tr.train_step()
        graphs.append(counters["stats"]["unique_graphs"])
    return tr, graphs, dict(counters["graph_break"])


def test_compiled_training_traces_whole_graphs_compiles_once_and_follows_eager(monkeypatch):
    """What --compile hands torch.compile, traced for real (dynamo and AOTAutograd; the aot_eager
    backend runs the traced graphs as they are, so nothing is built): D and the synthesis, with the
    FIR autograd Functions and the structure loss's toRGB taps, trace with no graph break; after the
    first iteration nothing compiles again (a recompile per step would cost a GPU run minutes and,
    under reduce-overhead, a CUDA graph each), mixed or unmixed w+ alike, and D takes reals and
    fakes in one dtype; the losses and weights follow the eager trainer's. At bf16 only:
    fp32 shows no hazard bf16 does not (it passed alike), and each precision costs 20-30 s."""
    compiled, graphs, breaks = _compiled_or_eager_steps(monkeypatch, "aot_eager")
    eager, _, _ = _compiled_or_eager_steps(monkeypatch, None)
    assert breaks == {}
    # synthesis without and with grad, D on detached and on differentiable inputs
    assert graphs[0] == graphs[-1] == 4, graphs
    assert set(compiled.stats) == set(eager.stats) >= {"loss_d", "loss_g", "loss_struct", "r1", "path_length"}
    for name, values in eager.stats.items():
        assert torch.allclose(torch.stack(compiled.stats[name]), torch.stack(values), rtol=1e-4, atol=1e-6), name
    for p, q in zip(compiled.nets.g.parameters(), eager.nets.g.parameters()):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-5)


def test_a_recipe_path_in_a_missing_folder_is_not_taken_for_the_built_in_and_a_bom_is_read(tmp_path, monkeypatch):
    """`--recipe my_recipes/tiny.toml` (a typo in the folder) trained the built-in tiny without a
    word; a recipe an editor saved with a byte-order mark was "not valid TOML ... at line 1"."""
    from cartoongan.config import load_recipe

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"recipe not found: my_recipes/tiny.toml"):
        load_recipe("my_recipes/tiny.toml")
    with pytest.raises(ConfigError, match="recipe not found"):
        load_recipe("/nonexistent/dir/tiny.toml")
    assert load_recipe("tiny").train.iters == load_recipe("tiny.toml").train.iters  # a bare name is a built-in's
    (tmp_path / "bom.toml").write_bytes("\ufeff[train]\nbatch = 2\n".encode())
    assert load_recipe(tmp_path / "bom.toml").train.batch == 2


def test_pretrain_says_a_recipes_finetune_table_does_not_apply(tmp_path):
    """`pretrain --recipe paper_freezesg` trained every layer and recorded freeze_g = 3 in
    config.toml as if it applied, with no word."""
    from cartoongan.report import ListReporter

    data = blob_images(tmp_path / "data", n=4)
    cfg = tiny_config(iters=1)
    cfg.finetune.freeze_g, cfg.finetune.struct_loss = 2, 1
    reporter = ListReporter()
    pretrain(cfg, data, tmp_path / "run", reporter)
    assert any("[finetune] settings (freeze_g, struct_loss) apply to `cartoongan finetune` only" in w
               for w in reporter.warnings), reporter.warnings
    quiet = ListReporter()
    pretrain(tiny_config(iters=1), data, tmp_path / "run2", quiet)
    assert not any("[finetune]" in w for w in quiet.warnings)


def test_a_resume_that_names_the_same_device_otherwise_is_no_change(tmp_path):
    """`demo --device cpu` over a demo run recorded with 'auto' on a machine without a GPU warned
    "resumed with changed settings: [train] device 'auto' -> 'cpu'": nothing changed."""
    from cartoongan.report import ListReporter

    data = blob_images(tmp_path / "data", n=4)
    pretrain(tiny_config(iters=1, device="auto"), data, tmp_path / "run")
    reporter = ListReporter()
    pretrain(resumed_config(tmp_path / "run", {"train": {"iters": 2, "device": "cpu"}}), data, tmp_path / "run",
             reporter, resume=True)
    assert not any("changed settings" in w for w in reporter.warnings), reporter.warnings
    reporter = ListReporter()
    pretrain(resumed_config(tmp_path / "run", {"train": {"iters": 3, "lr": 0.001}}), data, tmp_path / "run",
             reporter, resume=True)
    assert any("[train] lr 0.002 -> 0.001" in w for w in reporter.warnings)  # a real change still is


def test_a_recipe_that_is_a_folder_is_named_as_one(tmp_path, monkeypatch):
    """`--recipe rec/` (a folder) said "recipe not found: rec"; a folder named like a built-in
    recipe beside `--recipe demo64` still means the built-in."""
    from cartoongan.config import load_recipe

    (tmp_path / "rec").mkdir()
    with pytest.raises(ConfigError, match=r"^--recipe \S+rec is a folder, not a TOML file: name a recipe file in it"):
        load_recipe(tmp_path / "rec")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo64").mkdir()
    assert load_recipe("demo64").model.size == 64
