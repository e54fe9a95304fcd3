import json
import os
from pathlib import Path

import pytest
import torch
from cartoongan_cli.app import app
from PIL import Image
from typer.testing import CliRunner

from cartoongan import load_checkpoint, save_checkpoint
from cartoongan.weights.networks import generator_checkpoint

from .helpers import blob_images, cli_where_permissions_bind, stops_after

runner = CliRunner()


@pytest.fixture
def two_ckpts(tmp_path, tiny_g):
    a = save_checkpoint(tmp_path / "a.pt", generator_checkpoint(tiny_g(16, seed=1)))
    b = save_checkpoint(tmp_path / "b.pt", generator_checkpoint(tiny_g(16, seed=2)))
    return a, b


def test_sample_one_checkpoint(tmp_path, two_ckpts):
    out = tmp_path / "out"
    res = runner.invoke(app, ["sample", str(two_ckpts[0]), "--seeds", "0-2,7", "--outdir", str(out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "seed0000.png", "seed0001.png", "seed0002.png", "seed0007.png"]
    assert Image.open(out / "seed0007.png").size == (16, 16)
    assert Image.open(out / "grid.png").size == (64, 16)


def test_sample_into_a_folder_an_earlier_run_left_images_in_warns_of_them(tmp_path, two_ckpts):
    """`sample a.pt --seeds 0-5`, then `sample b.pt --seeds 0-1` into the same --outdir: seeds 2-5 of
    the first model stayed beside b's 0-1 without a word, one folder of two models for an FID tool."""
    out = tmp_path / "o"
    assert runner.invoke(app, ["sample", str(two_ckpts[0]), "--seeds", "0-5", "--outdir", str(out)]).exit_code == 0
    res = runner.invoke(app, ["sample", str(two_ckpts[1]), "--seeds", "0-1", "--outdir", str(out)])
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and f"{out} also holds 4 image(s) this run does not write (seed0002.png, seed0003.png, " \
        "seed0004.png, ...)" in said, said
    assert (out / "seed0005.png").is_file()  # left as they are: nothing is deleted
    res = runner.invoke(app, ["sample", str(two_ckpts[1]), "--seeds", "0-5", "--outdir", str(out)])
    assert res.exit_code == 0 and "also holds" not in res.output


def test_sample_warns_of_an_earlier_sample_of_another_layout(tmp_path, two_ckpts):
    """One checkpoint, then two, into one --outdir (or the reverse, or other checkpoints): the first
    run's seedNNNN.png and grid.png (or its folders and compare.png) stayed beside the new ones
    without a word, and `metrics` of the folder mixed them in."""
    a, b = map(str, two_ckpts)
    out = tmp_path / "o"
    assert runner.invoke(app, ["sample", a, "--seeds", "0-1", "--outdir", str(out)]).exit_code == 0
    res = runner.invoke(app, ["sample", a, b, "--seeds", "0-1", "--outdir", str(out)])
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and f"{out} also holds 3 file(s) or folder(s) of an earlier sample this run does " \
        "not write (grid.png, seed0000.png, seed0001.png)" in said, said
    res = runner.invoke(app, ["sample", a, "--seeds", "0-1", "--outdir", str(out)])  # back to one: the folders
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and "also holds 3 file(s) or folder(s) of an earlier sample this run does not write " \
        "(a, b, compare.png)" in said, said
    other = tmp_path / "o2"
    assert runner.invoke(app, ["sample", a, b, "--seeds", "0", "--outdir", str(other)]).exit_code == 0
    res = runner.invoke(app, ["sample", b, a, "--seeds", "0", "--outdir", str(other)])  # the same two: nothing
    assert res.exit_code == 0 and "also holds" not in res.output, res.output


def test_sample_warns_of_an_earlier_interpolation_gif_it_does_not_replace(tmp_path, two_ckpts):
    """`sample a.pt --interpolate 3`, then `sample b.pt` into one --outdir: a's GIF stayed beside b's
    grid.png without a word."""
    a, b = map(str, two_ckpts)
    out = tmp_path / "o"
    assert runner.invoke(app, ["sample", a, "--seeds", "0-1", "--interpolate", "2", "--outdir", str(out)]).exit_code == 0
    res = runner.invoke(app, ["sample", b, "--seeds", "0-1", "--outdir", str(out)])
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and "of an earlier sample this run does not write (interpolation.gif)" in said, said
    res = runner.invoke(app, ["sample", b, "--seeds", "0-1", "--interpolate", "2", "--outdir", str(out)])
    assert res.exit_code == 0 and "also holds" not in res.output, res.output


def test_sample_finds_a_file_where_a_later_checkpoints_folder_goes_before_it_renders(tmp_path, two_ckpts,
                                                                                   monkeypatch):
    """A file where the second checkpoint's folder goes was found when its turn came: after every
    render of the first (hours with --seeds 0-49999). (A folder where a render, the picture or the
    GIF goes was already refused up front, by check_keeps_inputs.)"""
    from cartoongan.pipelines import sample

    a, b = map(str, two_ckpts)
    out = tmp_path / "o"
    out.mkdir()
    (out / "b").write_text("notes")
    monkeypatch.setattr(sample, "render_ws", lambda *args, **kw: pytest.fail("rendered"))
    res = runner.invoke(app, ["sample", a, b, "--seeds", "0-3", "--outdir", str(out)])
    said = " ".join(res.output.split())
    assert res.exit_code == 1 and f"{out / 'b'} is a file, where the command makes a folder" in said, said
    assert res.output.count("\n") == 1 and (out / "b").read_text() == "notes"


def test_two_long_checkpoint_names_of_one_stem_get_folders_a_file_system_takes(tmp_path, two_ckpts):
    """Two checkpoints of one 240-character stem: their folders `0_<parent>_<stem>` passed 255 bytes,
    found after the first one's renders ("File name too long")."""
    import shutil

    long = "x" * 240
    paths = []
    for i, ckpt in enumerate(two_ckpts):
        (tmp_path / f"d{i}" / long).mkdir(parents=True)
        paths.append(str(shutil.copy(ckpt, tmp_path / f"d{i}" / long / f"{long}.pt")))
    out = tmp_path / "o"
    res = runner.invoke(app, ["sample", *paths, "--seeds", "0", "--outdir", str(out)])
    assert res.exit_code == 0, res.output
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(folders) == 2 and all(len(f) <= 200 and (out / f / "seed0000.png").is_file() for f in folders), folders
    assert folders[0].startswith("0_x") and folders[1].startswith("1_x") and folders[0][-8:] != folders[1][-8:]


def test_projected_w_of_a_folder_with_a_subfolder_it_cannot_read_is_refused(tmp_path, two_ckpts):
    """`--projected-w DIR` with one photo's folder unreadable: glob passed over it, and the other
    photos rendered (renumbered) as if it had never been there."""
    from cartoongan.weights.networks import load_generator

    g = load_generator(two_ckpts[0])
    w = torch.zeros(1, g.n_latent, g.style_dim).numpy()
    for name in ("ann", "bob"):
        (tmp_path / "pw" / name).mkdir(parents=True)
        __import__("numpy").savez(tmp_path / "pw" / name / "projected_w.npz", w=w)
    (tmp_path / "pw" / "bob").chmod(0)
    try:
        res = cli_where_permissions_bind(["sample", two_ckpts[0], "--projected-w", tmp_path / "pw",
                                          "--outdir", tmp_path / "o"])
    finally:
        (tmp_path / "pw" / "bob").chmod(0o755)
    said = " ".join(res.stderr.split())
    assert res.returncode == 1 and "cannot read bob (permission denied)" in said, res
    assert not (tmp_path / "o").exists()


def test_a_checkpoint_named_like_the_comparison_picture_gets_another_folder(tmp_path, two_ckpts):
    """`sample compare.png.pt b.pt`: its folder was DIR/compare.png, and the picture could not be
    written there, after all the rendering ("cannot write compare.png: Is a directory")."""
    import shutil

    odd = shutil.copy(two_ckpts[0], tmp_path / "compare.png.pt")
    out = tmp_path / "o"
    res = runner.invoke(app, ["sample", str(odd), str(two_ckpts[1]), "--seeds", "0,1", "--interpolate", "2",
                              "--outdir", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "compare.png").is_file() and (out / "interpolation.gif").is_file()
    assert len([p for p in out.iterdir() if p.is_dir()]) == 2


@pytest.mark.parametrize("name", ["...pt", "..pt", "seed0000.png.pt"])
def test_a_checkpoint_named_dots_renders_into_its_own_folder_under_outdir(tmp_path, two_ckpts, name):
    """`...pt` has the stem "..": its renders went to --outdir's parent, over a user's seed0000.png
    there; `..pt` (stem ".") put them loose in --outdir beside compare.png; `seed0000.png.pt`'s
    folder would stand where a render goes, refused by the next run."""
    import shutil

    work = tmp_path / "work"
    work.mkdir()
    odd = shutil.copy(two_ckpts[0], work / name)
    kept = tmp_path / "seed0000.png"
    kept.write_text("mine")
    out = tmp_path / "renders"
    for _ in range(2):  # the same command again into the same --outdir
        res = runner.invoke(app, ["sample", str(odd), str(two_ckpts[1]), "--seeds", "0", "--outdir", str(out)])
        assert res.exit_code == 0, res.output
    assert kept.read_text() == "mine"
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(folders) == 2 and all((out / f / "seed0000.png").is_file() for f in folders), folders
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["compare.png"]


@pytest.mark.parametrize("ckpts,flags,taken", [(1, [], "grid.png"), (2, [], "compare.png"),
                                               (1, ["--interpolate", "2"], "interpolation.gif")])
def test_a_folder_in_the_way_of_a_summary_picture_is_refused_before_rendering(tmp_path, two_ckpts, ckpts, flags, taken):
    """A folder named grid.png, compare.png or interpolation.gif in --outdir was found only when the
    picture was written, after every image was rendered (hours for --seeds 0-49999)."""
    out = tmp_path / "o"
    (out / taken).mkdir(parents=True)
    res = runner.invoke(app, ["sample", *map(str, two_ckpts[:ckpts]), "--seeds", "0,1", *flags, "--outdir", str(out)])
    said = " ".join(res.output.split())
    assert res.exit_code == 1 and f"{out / taken} is a folder, where the command writes a file: move it away" in said, said
    assert not list(out.rglob("seed*.png"))  # nothing rendered first


def test_projections_of_a_folder_are_named_by_the_images_they_become(tmp_path, two_ckpts):
    """A projected_w.npz may hold several w: the info line named proj0001 after the second folder
    while it was the first folder's second latent (and counted folders as projections)."""
    import numpy as np

    from cartoongan.pipelines import sample as sample_mod
    from cartoongan.report import ListReporter

    gen_shape = (load_checkpoint(two_ckpts[0])["g_ema"]["style.1.weight"].shape[0],)
    n_latent = 2 * 4 - 2  # 16 px: log2(16) * 2 - 2
    for name, count in (("a", 2), ("b", 1)):
        (tmp_path / "p" / name).mkdir(parents=True)
        np.savez(tmp_path / "p" / name / "projected_w.npz",
                 w=np.random.default_rng(count).standard_normal((count, n_latent, *gen_shape)).astype("f4"))
    reporter = ListReporter()
    res = sample_mod.sample_checkpoints([two_ckpts[0]], [], tmp_path / "o", device="cpu",
                                        projected_w=tmp_path / "p", reporter=reporter)
    assert sorted(p.name for p in res.folders[0].glob("proj*.png")) == [f"proj{i:04d}.png" for i in range(3)]
    assert reporter.infos == [f"3 projection(s) from 2 folder(s) of {tmp_path / 'p'}: proj0000-proj0001: a, proj0002: b"]


def test_repeated_seeds_are_rendered_once_and_the_gif_walks_them_as_given(tmp_path, two_ckpts):
    """`--seeds 0-2,1-3` rendered seeds 1 and 2 twice, each time over the same file, and showed
    them twice in the grid. A walk that returns to a seed (the GIF) keeps the order given."""
    from cartoongan.pipelines import sample as sample_mod
    from cartoongan.report import ListReporter

    reporter = ListReporter()
    res = sample_mod.sample_checkpoints([two_ckpts[0]], [0, 1, 2, 1, 2, 3], tmp_path / "o", device="cpu",
                                        interpolate=2, reporter=reporter)
    assert sorted(p.name for p in res.folders[0].glob("seed*.png")) == [f"seed{i:04d}.png" for i in range(4)]
    assert Image.open(res.grid).size == (4 * 16, 16)
    assert [(b.description, b.total) for b in reporter.bars] == [("rendering", 4), ("interpolating", 6 * 2)]
    assert reporter.infos == ["2 repeated seed(s) rendered once: 4 image(s) (the GIF walks through the seeds as given)"]
    assert Image.open(res.gif).n_frames == 6 * 2


@pytest.mark.parametrize("n_ckpts", [1, 2])
def test_many_seeds_are_all_written_and_the_picture_shows_the_first(tmp_path, two_ckpts, monkeypatch, n_ckpts):
    from cartoongan.pipelines import sample as sample_mod
    from cartoongan.report import ListReporter

    monkeypatch.setattr(sample_mod, "GRID_MAX", 4)
    reporter = ListReporter()
    res = sample_mod.sample_checkpoints(list(two_ckpts[:n_ckpts]), list(range(11)), tmp_path / "o", device="cpu",
                                        reporter=reporter)
    for folder in res.folders:
        assert sorted(p.name for p in folder.glob("seed*.png")) == [f"seed{i:04d}.png" for i in range(11)]
    picture = res.grid or res.compare
    assert Image.open(picture).size == (4 * 16, n_ckpts * 16)
    assert reporter.infos == [f"{picture.name} shows the first 4 of the 11 images"]
    assert [(b.description, b.total, b.completed) for b in reporter.bars] == [("rendering", 11 * n_ckpts, 11 * n_ckpts)]


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("at", [1, 4])
def test_ctrl_c_while_rendering_names_what_was_written(tmp_path, two_ckpts, monkeypatch, at, threads):
    """Each image is its own file the moment it is rendered: a Ctrl-C says how many are there (and
    that the picture is not); one before any image is written is the plain interruption. On several
    writer threads the files whole on disk are counted, whichever they are."""
    from cartoongan.data import images

    monkeypatch.setattr(images, "image_threads", lambda: threads)
    monkeypatch.setattr(images, "save_png", stops_after(at - 1, images.save_png))
    res = runner.invoke(app, ["sample", str(two_ckpts[0]), "--seeds", "0-9", "--outdir", str(tmp_path / "o")])
    assert res.exit_code == 130, res.output
    line = res.output.strip().splitlines()[-1]
    written = sorted(p.name for p in (tmp_path / "o").glob("*.png"))
    if at == 1:
        assert line == "error: interrupted" and written == []
        return
    # stops_after's count is not atomic, so concurrent writers may get one call past it: the line
    # must name exactly the files that are there
    count = len(written) if threads > 1 else 3
    assert line == (f"error: interrupted after {count} of 10 images, each written to {tmp_path / 'o'} as it was "
                    "rendered; grid.png was not"), line
    assert threads > 1 or written == [f"seed{i:04d}.png" for i in range(3)]


def test_ctrl_c_while_making_the_gif_names_what_was_written(tmp_path, two_ckpts, monkeypatch):
    """Every image and grid.png were written, and the line said only "interrupted"."""
    from cartoongan.pipelines import sample as sample_mod

    # the images' one batch renders; the GIF's first render is stopped
    monkeypatch.setattr(sample_mod, "render_ws", stops_after(1, sample_mod.render_ws))
    res = runner.invoke(app, ["sample", str(two_ckpts[0]), "--seeds", "0-2", "--interpolate", "2",
                              "--outdir", str(tmp_path / "o")])
    assert res.exit_code == 130, res.output
    assert res.output.strip().splitlines()[-1] == (
        f"error: interrupted while making interpolation.gif, which was not written; the 3 image(s) and grid.png are "
        f"in {tmp_path / 'o'}: run again for the GIF")
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["grid.png", "seed0000.png", "seed0001.png",
                                                                  "seed0002.png"]


def test_rendering_holds_a_batch_not_every_image(tmp_path, tiny_g):
    """The images are written a batch at a time: what numpy holds (tracemalloc sees its buffers)
    grows by less than an image per seed, where rendering every image first held each one twice."""
    import tracemalloc

    from cartoongan.pipelines.sample import sample_checkpoints

    ckpt = save_checkpoint(tmp_path / "g.pt", generator_checkpoint(tiny_g(64, seed=1)))
    sample_checkpoints([ckpt], [0], tmp_path / "warm", device="cpu")  # first-call caches out of the count
    peaks = {}
    for n in (192, 384):
        tracemalloc.start()
        try:
            sample_checkpoints([ckpt], list(range(n)), tmp_path / f"o{n}", device="cpu")
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    per_seed = (peaks[384] - peaks[192]) / 192
    assert per_seed < 64 * 64 * 3, peaks


def test_sample_several_checkpoints_same_w(tmp_path, two_ckpts):
    out = tmp_path / "cmp"
    res = runner.invoke(app, ["sample", *map(str, two_ckpts), "--seeds", "3,4", "--outdir", str(out), "--interpolate", "2",
                              "--device", "cpu"])  # compared below with a CPU render
    assert res.exit_code == 0, res.output
    assert Image.open(out / "compare.png").size == (32, 32)
    assert (out / "a" / "seed0003.png").exists() and (out / "b" / "seed0004.png").exists()
    gif = Image.open(out / "interpolation.gif")
    assert gif.n_frames == 4 and gif.size == (32, 16)
    # the second generator rendered the first generator's w: same as rendering it by hand
    from cartoongan import build_generator, load_checkpoint
    from cartoongan.data.render import render_ws, seeds_to_ws

    ga, gb = (build_generator(load_checkpoint(p)) for p in two_ckpts)
    expected = render_ws(gb, seeds_to_ws(ga, [3]))[0]
    assert (torch.from_numpy(expected).numpy() == __import__("numpy").array(Image.open(out / "b" / "seed0003.png"))).all()


@pytest.mark.parametrize("args,flag", [
    (["--seeds", "3-1"], "--seeds"),
    (["--seeds", "x"], "--seeds"),
    (["--trunc", "-1"], "--trunc"),
    (["--trunc", "nan"], "--trunc"),
])
def test_bad_flag_values_are_usage_errors(two_ckpts, args, flag):
    res = runner.invoke(app, ["sample", str(two_ckpts[0]), *args])
    assert res.exit_code == 2
    assert flag in res.output


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_bad_checkpoint_is_one_line(tmp_path, content):
    path = tmp_path / "bad.pt"
    if content is not None:
        path.write_bytes(content)
    res = runner.invoke(app, ["sample", str(path), "--outdir", str(tmp_path / "o")])
    assert res.exit_code == 1
    assert "Traceback" not in res.output and res.output.strip().startswith("error:")
    assert len(res.output.strip().splitlines()) == 1


def test_info_reads_as_text_not_python_reprs(tmp_path, two_ckpts):
    """`info swapped.pt` showed `step │ None` and a provenance dict's repr with `'blend_width': None`."""
    out = tmp_path / "s.pt"
    assert runner.invoke(app, ["swap", str(two_ckpts[0]), str(two_ckpts[1]), "--res", "8", "-o", str(out)]).exit_code == 0
    res = runner.invoke(app, ["info", str(out)])
    assert res.exit_code == 0 and "None" not in res.stdout and "{'" not in res.stdout, res.stdout
    assert "res: 8" in res.stdout and "blend_width: -" in res.stdout
    data = json.loads(runner.invoke(app, ["info", str(out), "--json"]).stdout)
    assert data["provenance"]["blend_width"] is None  # the data itself is kept in --json


def test_info_of_a_zero_dimensional_npy_says_what_it_is(tmp_path):
    """A 0-d array's shape was a blank cell beside the kind 'an intrinsic code when shaped ...'."""
    import numpy as np

    np.save(tmp_path / "z.npy", np.array(3.0))
    res = runner.invoke(app, ["info", str(tmp_path / "z.npy")])
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in res.stdout.splitlines()
            if line.count("│") >= 3}
    assert res.exit_code == 0 and rows["shape"] == "-" and rows["kind"].startswith("a single number"), res.stdout


def test_info_json(two_ckpts):
    res = runner.invoke(app, ["info", str(two_ckpts[0]), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["resolution"] == 16 and data["style_dim"] == 32 and data["format"] == "cartoongan"


def test_info_json_is_strict_json_with_a_nan_in_the_metadata(two_ckpts, tmp_path):
    """A checkpoint whose recorded step is NaN printed `"step": NaN`, which strict parsers refuse."""
    ckpt = load_checkpoint(two_ckpts[0])
    ckpt.setdefault("cartoongan", {})["step"] = float("nan")
    path = save_checkpoint(tmp_path / "nan_step.pt", ckpt)
    res = runner.invoke(app, ["info", str(path), "--json"])
    assert res.exit_code == 0, res.output
    strict = json.loads(res.stdout, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert "step" in strict and strict["step"] is None, strict


def test_result_tables_are_on_stdout_warnings_on_stderr(two_ckpts, tmp_path):
    """`info X > file` keeps the table (it went to stderr, leaving the file empty); a warning stays
    out of the file. weights list likewise."""
    import subprocess
    import sys

    ckpt = load_checkpoint(two_ckpts[0])
    ckpt["g_ema"] = {k: v.long() for k, v in ckpt["g_ema"].items()}
    torch.save(ckpt, tmp_path / "int.pt")
    res = subprocess.run([sys.executable, "-m", "cartoongan_cli", "info", str(tmp_path / "int.pt")],
                         capture_output=True, text=True, env={**__import__("os").environ, "COLUMNS": "120"})
    assert res.returncode == 0 and "resolution" in res.stdout and "warning" not in res.stdout, res
    assert "g_ema would be refused" in res.stderr
    res = runner.invoke(app, ["weights", "list"])
    assert res.exit_code == 0 and "inception_fid" in res.stdout


@pytest.mark.parametrize("rank, world, drawn", [(None, None, True), ("0", "2", True), ("1", "2", False),
                                               ("1", None, True)])  # a cluster's RANK, no torchrun
def test_only_torchruns_rank_0_reports(monkeypatch, capsys, rank, world, drawn):
    """Every torchrun worker writes to the one terminal: two ranks' bars overwrote each other, and
    K ranks said each warning, info line and the fine-tuning plan K times over."""
    from cartoongan_cli.console import RichReporter

    for name, value in (("RANK", rank), ("WORLD_SIZE", world)):
        monkeypatch.delenv(name, raising=False)
        if value is not None:
            monkeypatch.setenv(name, value)
    reporter = RichReporter()
    with reporter.progress(3, "pretrain") as bar:
        bar.advance(3, loss_g=0.5)
    reporter.warn("a warning every rank gives")
    reporter.info("resuming run at step 4")
    reporter.table("fine-tuning plan", ["block", "state"], [["block 0", "frozen"]])
    err = capsys.readouterr().err
    assert ("pretrain" in err and "3/3" in err) == drawn, err
    for text in ("a warning every rank gives", "resuming run at step 4", "fine-tuning plan"):
        assert (text in err) == drawn, err


def test_a_run_table_piped_to_a_log_keeps_its_cells_whole():
    """The fine-tuning plan and the ablation summary go to stderr: piped to a log they folded at
    80 columns ("FreezeSG / + / structure / loss" on four lines); with COLUMNS they fold to fit."""
    import subprocess
    import sys

    cell = "FreezeSG 2 + structure loss over 3 resolutions (weight 1, rgb taps)"
    code = ("from cartoongan_cli.console import RichReporter; "
            f"RichReporter().table('plan', ['method', 'kid', 'note'], [[{cell!r}, '0.0123', {cell!r}]])")
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    res = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 0 and any(line.count(cell) == 2 for line in res.stderr.splitlines()), res.stderr
    res = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         env={**env, "COLUMNS": "60"}, timeout=120)
    assert res.returncode == 0 and cell not in res.stderr and max(map(len, res.stderr.splitlines())) <= 60


def test_piped_results_keep_table_cells_and_lines_whole(capsys):
    """With no terminal rich folds stdout at 80 columns: a table's cells broke mid-word
    ("fid-helper-pyto / rch==0.1.3") and a long "wrote PATH" line broke in two, for a script or a
    file to misread. Now a piped table is as wide as its cells; in a terminal (COLUMNS) it folds."""
    import os
    import subprocess
    import sys

    from cartoongan_cli.console import out
    from cartoongan_cli.weights import _entries

    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    res = subprocess.run([sys.executable, "-m", "cartoongan_cli", "weights", "list"], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0
    packages = {e.requirement for e in _entries([])}
    assert max(map(len, packages)) > 15  # a cell that 80 columns had folded
    assert all(any(p in line for line in res.stdout.splitlines()) for p in packages), res.stdout
    folded = subprocess.run([sys.executable, "-m", "cartoongan_cli", "weights", "list"], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, env={**env, "COLUMNS": "60"}, timeout=120)
    assert max(map(len, folded.stdout.splitlines())) <= 60
    path = "/" + "/".join(["a-long-folder-name"] * 12) + "/seed0000.png"
    out.print(f"wrote {path}")
    assert capsys.readouterr().out == f"wrote {path}\n"


def test_closed_stdout_is_not_a_traceback(tmp_path):
    """`cartoongan ... | head` closing the pipe early: exit quietly, nothing on stderr."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes
    try:
        res = subprocess.run([sys.executable, "-m", "cartoongan_cli", "--version"], stdout=write,
                             stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert res.returncode == 1 and res.stderr == ""


TRAIN_ARGS = {"--iters": ("iters", 7), "--batch": ("batch", 3), "--lr": ("lr", 0.01), "--augment": ("augment", "none"),
              "--augment-p": ("augment_p", 0.25), "--precision": ("precision", "tf32"), "--device": ("device", "cpu"),
              "--seed": ("seed", 5), "--compile-mode": ("compile_mode", "reduce-overhead"),
              "--eval-every": ("eval_every", 9), "--eval-n": ("eval_n", 4)}
FINETUNE_ARGS = {"--freeze-g": ("freeze_g", 2), "--freeze-sg": ("freeze_sg", 1), "--freeze-d": ("freeze_d", 3),
                 "--freeze-mapping": ("freeze_mapping", True), "--train-noise": ("freeze_noise", False),
                 "--struct-loss": ("struct_loss", 2), "--struct-weight": ("struct_weight", 0.5),
                 "--struct-tap": ("struct_tap", "features"), "--fresh-d": ("fresh_d", True)}


def _flags(table: dict) -> list[str]:
    out = []
    for flag, (_, value) in table.items():
        out += [flag] if isinstance(value, bool) else [flag, str(value)]
    return out


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_every_training_flag_reaches_its_config_key(tmp_path, monkeypatch, command):
    """The CLI builds its overrides from its own argument names: a flag that lands on no key, or on
    another one, fails here. --compile-mode also turns compiling on."""
    from types import SimpleNamespace

    seen = []

    def run(cfg, *args, **kw):
        seen.append(cfg)
        return SimpleNamespace(interrupted=False, step=0, latest=tmp_path / "latest.pt", run_dir=tmp_path)

    monkeypatch.setattr(f"cartoongan.train.runs.{command}", run)
    common = ["--recipe", "tiny", "--data", str(tmp_path), "--out", str(tmp_path / "run"), *_flags(TRAIN_ARGS)]
    extra = ["--source", str(tmp_path / "src.pt"), *_flags(FINETUNE_ARGS)] if command == "finetune" else []
    res = runner.invoke(app, [command, *common, *extra])
    assert res.exit_code == 0, res.output
    (cfg,) = seen
    for section, table in (("train", TRAIN_ARGS), ("finetune", FINETUNE_ARGS if extra else {})):
        for key, value in table.values():
            got = getattr(getattr(cfg, section), key)
            assert got == value and type(got) is type(value), (section, key, got)  # choices as plain values
    assert cfg.train.compile is True
    res = runner.invoke(app, [command, *common, *extra, "--no-compile"])
    assert res.exit_code == 2 and "--compile-mode compiles" in res.output and len(seen) == 1
    # --no-compile wins over a recipe's mode, which alone would compile
    recipe = tmp_path / "graphs.toml"
    recipe.write_text('[train]\ncompile_mode = "reduce-overhead"\n')
    no_mode = [a for a in common if a not in ("--compile-mode", "reduce-overhead")]
    no_mode[no_mode.index("tiny")] = str(recipe)
    res = runner.invoke(app, [command, *no_mode, *extra, "--no-compile"])
    assert res.exit_code == 0, res.output
    assert not seen[-1].train.compiled and seen[-1].train.compile_mode == "default"


def test_the_cuda_home_warning_of_a_cpu_box_is_not_shown_but_others_are(caplog):
    import logging

    import cartoongan_cli.console  # noqa: F401  (installs the filter)

    logger = logging.getLogger("torch.utils.cpp_extension")
    with caplog.at_level(logging.WARNING):
        logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local")
        logger.warning("Error checking compiler version for %s", "c++")
    assert [r.getMessage() for r in caplog.records] == ["Error checking compiler version for c++"]


def test_generators_of_one_name_get_folders_named_after_their_own_folders(tmp_path, monkeypatch):
    """sample's per-generator folders, when two checkpoints share a stem: a file given from the
    current folder is named after that folder too (it was '1__swapped')."""
    from cartoongan.pipelines.sample import unique_names

    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    names = unique_names([tmp_path / "src" / "swapped.pt", Path("swapped.pt")])
    assert names == ["0_src_swapped", "1_run_swapped"]


def test_a_name_holding_a_newline_keeps_errors_and_warnings_on_one_line(tmp_path):
    """Linux allows a newline in a file name: quoted raw it split the one-line error (and warning)."""
    from .helpers import blob_images

    odd = tmp_path / "bad\nname.pt"
    odd.write_text("not a checkpoint")
    res = runner.invoke(app, ["sample", str(odd), "--seeds", "0", "--outdir", str(tmp_path / "o")])
    assert res.exit_code == 1 and res.output.count("\n") == 1, repr(res.output)
    assert "bad\\nname.pt is not a PyTorch checkpoint" in res.output
    data = blob_images(tmp_path / "data", n=2)
    (data / "odd\r\nfile.png").write_bytes(b"junk")
    res = runner.invoke(app, ["data", "prepare", str(data), "--size", "8", "--out", str(tmp_path / "p")])
    assert res.exit_code == 0 and "odd\r\nfile" not in res.output, repr(res.output)  # rich may wrap, not the name
    assert "unreadable image(s) in" in res.output and "odd\\r\\nfile.png" in res.output, repr(res.output)


def test_an_ascii_only_stdout_gets_an_accented_path_escaped_not_a_traceback(tmp_path, two_ckpts):
    """PYTHONIOENCODING=ascii (or a Windows console redirected to a file, cp1252) cannot encode
    'café' or the ablation table's arrows: the result line raised UnicodeEncodeError after the
    work was done. The streams are set up at import, so this runs the CLI as a user does."""
    import os
    import subprocess
    import sys

    out = tmp_path / "café"
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    res = subprocess.run([sys.executable, "-m", "cartoongan_cli", "sample", str(two_ckpts[0]), "--seeds", "0",
                          "--outdir", str(out), "--device", "cpu"], env=env, capture_output=True, timeout=120)
    assert res.returncode == 0 and b"Traceback" not in res.stderr, res.stderr.decode(errors="replace")
    assert b"caf\\xe9" in res.stdout and (out / "grid.png").is_file(), res.stdout


def test_a_strict_utf8_stdout_gets_a_non_utf8_path_as_its_own_bytes_not_a_traceback(tmp_path, two_ckpts):
    """Under an installed en_US.UTF-8 locale Python's stdout is strict UTF-8, and a Linux file
    name may hold any bytes: `wrote <name>/grid.png` raised UnicodeEncodeError after the work was
    done. The name is written back as the bytes it was read from."""
    import subprocess
    import sys

    out = os.path.join(os.fsencode(tmp_path), b"o\xffut")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    res = subprocess.run([sys.executable, "-m", "cartoongan_cli", "sample", str(two_ckpts[0]), "--seeds", "0",
                          "--outdir", out, "--device", "cpu"], env=env, capture_output=True, timeout=120)
    assert res.returncode == 0 and b"Traceback" not in res.stderr, res.stderr.decode(errors="replace")
    assert out + b"/grid.png" in res.stdout and os.path.isfile(out + b"/grid.png"), res.stdout


def test_a_non_utf8_name_in_a_warning_is_its_own_bytes_on_stderr(tmp_path):
    """stderr's default (backslashreplace) printed a Latin-1 file name as the text `bad\\udce9.png` in
    every warning and error naming it, where stdout gave the real bytes: a user could not paste it."""
    import subprocess
    import sys

    data = blob_images(tmp_path / "data", n=2)
    (data / os.fsdecode(b"bad\xe9.png")).write_bytes(b"junk")
    res = subprocess.run([sys.executable, "-m", "cartoongan_cli", "data", "prepare", str(data), "--size", "8",
                          "--out", str(tmp_path / "p")], capture_output=True, timeout=120,
                         env={**os.environ, "COLUMNS": "400"})
    assert res.returncode == 0 and b"bad\xe9.png" in res.stderr and b"udce9" not in res.stderr, res.stderr


def test_progress_piped_to_a_log_is_a_line_every_so_often_and_at_the_end(monkeypatch, capsys):
    """`make demo 2> log` (nohup, CI) printed the fine-tuning plan and then nothing for 11 minutes:
    rich draws a bar where stderr is no terminal only once it is done."""
    from cartoongan_cli import console as con

    clock = [0.0]
    monkeypatch.setattr(con.time, "monotonic", lambda: clock[0])
    assert not con.console.is_terminal  # pytest's capture, as a log
    with con.RichReporter().progress(100, "finetune") as bar:
        for step in range(100):
            clock[0] += 1.0
            bar.advance(1, loss_g=1.5, img_per_s=40.0)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("finetune")]
    assert lines[0] == "finetune 30/100 (30%) 0:00:30, 0:01:10 left  loss_g 1.5  img_per_s 40"
    assert len(lines) == 4 and lines[-1].startswith("finetune 100/100 (100%) 0:01:40  loss_g")
    with con.RichReporter().progress(60, "render") as bar:  # the last step on a tick: its line once
        for step in range(60):
            clock[0] += 1.0
            bar.advance(1)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("render")]
    assert lines == ["render 30/60 (50%) 0:00:30, 0:00:30 left", "render 60/60 (100%) 0:01:00"], lines


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
@pytest.mark.parametrize("argv", [["info", "CKPT"], ["info", "CKPT", "--json"], ["sample", "--help"], ["--version"]])
def test_a_full_disk_under_stdout_is_one_line_not_a_traceback(two_ckpts, argv):
    """`cartoongan info X > report.txt` on a full disk: the result (or the help) cannot be written,
    which raised OSError out of rich's writer as a traceback."""
    import subprocess
    import sys

    argv = [str(two_ckpts[0]) if a == "CKPT" else a for a in argv]
    with open("/dev/full", "w") as full:
        res = subprocess.run([sys.executable, "-m", "cartoongan_cli", *argv], stdout=full, stderr=subprocess.PIPE,
                             timeout=120)
    assert res.returncode == 1 and b"Traceback" not in res.stderr, res.stderr.decode(errors="replace")
    assert res.stderr.decode().strip().startswith("error: cannot write") and b"No space left" in res.stderr


@pytest.mark.parametrize("argv,example", [
    (["swap", "A.pt", "B.pt", "-o"], "swapped.pt"), (["export", "A.pt", "-o"], "shared.pt"),
    (["convert", "A.pkl", "-o"], "converted.pt"), (["factor", "A.pt", "-o"], "factor.pt"),
    (["align", "me.jpg", "-o"], "aligned.png"), (["plot", "RUN", "-o"], "curves.png")])
@pytest.mark.parametrize("end", ["/", "/."])
def test_an_output_file_flag_ending_in_a_slash_names_a_folder(tmp_path, argv, example, end):
    """`swap A B -o new/` wrote a checkpoint called `new`: Path() drops the slash."""
    target = f"{tmp_path / 'new'}{end}"
    res = runner.invoke(app, [*argv, target])
    assert res.exit_code == 2, res.output
    said = " ".join(res.output.split())
    assert f"{target} names a folder (it ends in '{end[-1]}'): name a file, e.g. {tmp_path / 'new' / example}" in said, said
    assert not (tmp_path / "new").exists()


def test_a_file_named_like_an_option_gets_told_how_to_name_it(tmp_path, monkeypatch, two_ckpts):
    """`cartoongan info -old.pt` said only "No such option: -o": click reads the name as a flag."""
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copy(two_ckpts[0], tmp_path / "-old.pt")
    res = runner.invoke(app, ["info", "-old.pt"])
    assert res.exit_code == 2 and "No such option: -o; for the file -old.pt, write ./-old.pt" in res.output, res.output
    assert runner.invoke(app, ["info", "./-old.pt"]).exit_code == 0
    res = runner.invoke(app, ["info", "-q"])  # no such file: the plain usage error
    assert res.exit_code == 2 and "write ./" not in res.output


def test_a_tilde_after_an_equals_sign_is_the_home_folder(tmp_path, two_ckpts, monkeypatch):
    """bash expands `--outdir ~/x` but not `--outdir=~/x`, which reached us as a folder named '~'."""
    from cartoongan_cli.app import expand_home

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    res = runner.invoke(app, ["sample", str(two_ckpts[0]), "--seeds", "0", "--outdir=~/samples"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "home" / "samples" / "grid.png").is_file() and not (Path.cwd() / "~").exists()
    assert expand_home(["~/a", "--x=a~b", "--y=~"]) == ["~/a", "--x=a~b", f"--y={tmp_path / 'home'}"]


def test_filesystem_errors_on_a_users_path_are_one_line_and_others_stay_errors():
    import errno

    from cartoongan_cli.app import filesystem_error

    assert filesystem_error(OSError(errno.EACCES, "Permission denied", "/data/faces")) == "/data/faces: Permission denied"
    long = "/tmp/" + "y" * 300 + "/latest.pt"
    line = filesystem_error(OSError(errno.ENAMETOOLONG, "File name too long", long))
    assert "its longest part is 300 bytes" in line and len(line) < 250 and line.startswith("/tmp/yyy")
    assert filesystem_error(OSError(errno.EIO, "Input/output error")) is None  # no path: not the user's to fix
