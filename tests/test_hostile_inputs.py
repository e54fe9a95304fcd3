"""Hostile and mistaken inputs, by class: every one ends in one line on stderr (exit 1, or 2 for
usage), no traceback, and nothing half-written or overwritten.

Classes: output paths x commands (checked before any work), failed writes (disk full) x writers,
run folders, resume faults, rich markup in messages, mismatched but well-formed inputs.
"""
import hashlib
import io
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from cartoongan_cli.app import app
from PIL import Image
from typer.testing import CliRunner

from cartoongan import Discriminator, Generator, load_checkpoint, save_checkpoint
from cartoongan.train.runs import pretrain
from cartoongan.weights.networks import generator_checkpoint

from .conftest import TINY, randomized
from .helpers import blob_images, stops_after, tiny_config

runner = CliRunner()


def error_line(res, code: int = 1) -> str:
    """The command failed the promised way: exit `code`, no exception, exactly one error line, last."""
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and res.output.strip().splitlines()[-1] == errors[0], res.output
    return errors[0]


def snapshot(folder: Path) -> dict:
    """Every file under `folder` (hidden ones too) with a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def tiny_ckpt(path: Path, seed: int = 0, size: int = 16, with_d: bool = False, **arch) -> Path:
    torch.manual_seed(seed)
    g = randomized(Generator(size, **{**TINY, **arch}), seed, 0.2)
    g.w_avg = torch.zeros(g.style_dim)
    ckpt = generator_checkpoint(g)
    if with_d:
        ckpt["g"] = ckpt["g_ema"]
        ckpt["d"] = Discriminator(size, channel_base=512, channel_max=32).state_dict()
    return save_checkpoint(path, ckpt)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Shared read-only inputs: two tiny checkpoints, a photo, a dataset and a finished 2-step run."""
    root = tmp_path_factory.mktemp("assets")
    a, b = tiny_ckpt(root / "a.pt", 1, with_d=True), tiny_ckpt(root / "b.pt", 2)
    Image.fromarray(np.full((20, 24, 3), 128, np.uint8)).save(root / "photo.png")
    data = blob_images(root / "data", n=4)
    (root / "run").mkdir()  # an existing empty folder is a fine place for a new run
    pretrain(tiny_config(iters=2, sample_every=2, ckpt_every=2), data, root / "run")
    return dict(a=a, b=b, photo=root / "photo.png", data=data, run=root / "run")


@pytest.fixture
def unwritable(tmp_path):
    """A folder nobody may create files in (as root, where permissions do not bind, sysfs)."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir(mode=0o555)
        yield folder
        folder.chmod(0o755)
        return
    folder = Path("/sys")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        yield folder
        return
    pytest.skip("no unwritable folder available to root here")


# ---- output paths x commands: refused before any work ----------------------------------------
# Every input is missing, so a command that read anything before checking its output would
# complain about the input instead.
MISSING = "missing.pt"
FOLDER_COMMANDS = {
    "sample": lambda out: ["sample", MISSING, "--outdir", out],
    "project": lambda out: ["project", "missing.png", "--source", MISSING, "--outdir", out, "--loss", "mse"],
    "toonify": lambda out: ["toonify", "missing.png", "--source", MISSING, "--target", MISSING, "--outdir", out],
    "data prepare": lambda out: ["data", "prepare", "missing_dir", "--out", out],
    "data synth": lambda out: ["data", "synth", "--domain", "cartoon", "--n", "2", "--size", "8", "--out", out],
    "pretrain": lambda out: ["pretrain", "--data", "missing_dir", "--out", out, "--recipe", "tiny"],
    "finetune": lambda out: ["finetune", "--source", MISSING, "--data", "missing_dir", "--out", out, "--recipe", "tiny"],
    "demo": lambda out: ["demo", "--out", out, "--source", MISSING],
    "dualstyle": lambda out: ["dualstyle", "missing.png", "--model", "missing_dir", "--outdir", out],
    "ablation": lambda out: ["ablation", "--out", out, "--source", MISSING],
}
FILE_COMMANDS = {
    "swap": lambda out: ["swap", MISSING, MISSING, "-o", out],
    "export": lambda out: ["export", MISSING, "-o", out],
    "align": lambda out: ["align", "missing.png", "-o", out],
    "convert": lambda out: ["convert", "missing.pkl", "-o", out],
    "plot": lambda out: ["plot", "missing_dir", "-o", out],
}


def _bad_path(kind: str, tmp_path: Path, unwritable_dir) -> Path:
    blocker = tmp_path / "blocker.txt"
    blocker.write_text("keep me")
    if kind == "existing file":
        return blocker
    if kind == "under a file":
        return blocker / "sub" / "out.pt"
    if kind == "unwritable parent":
        return unwritable_dir() / "cartoongan-out" / "out.pt"
    if kind == "existing folder":
        (tmp_path / "folder").mkdir()
        return tmp_path / "folder"
    if kind == "not a regular file":
        os.mkfifo(tmp_path / "fifo")
        return tmp_path / "fifo"
    if kind == "under a dangling link":  # mkdir through it fails with "File exists"
        (tmp_path / "gone").symlink_to(tmp_path / "nowhere", target_is_directory=True)
        return tmp_path / "gone" / "out.pt"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["existing file", "under a file", "unwritable parent", "under a dangling link",
                                  "not a regular file"])
@pytest.mark.parametrize("command", sorted(FOLDER_COMMANDS))
def test_output_folder_kinds_refused_before_any_work(tmp_path, request, command, kind):
    out = _bad_path(kind, tmp_path, lambda: request.getfixturevalue("unwritable"))
    if kind in ("unwritable parent", "under a dangling link"):
        out = out.parent
    before = snapshot(tmp_path)
    line = error_line(runner.invoke(app, FOLDER_COMMANDS[command](str(out))))
    assert str(out) in line and "missing" not in line.replace(str(out), "")
    if kind == "not a regular file":  # `--out /dev/null` was "a file"
        assert "is a named pipe (FIFO), not a folder" in line, line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["existing folder", "under a file", "unwritable parent", "not a regular file",
                                  "under a dangling link"])
@pytest.mark.parametrize("command", sorted(FILE_COMMANDS))
def test_output_file_kinds_refused_before_any_work(tmp_path, request, command, kind):
    out = _bad_path(kind, tmp_path, lambda: request.getfixturevalue("unwritable"))
    line = error_line(runner.invoke(app, FILE_COMMANDS[command](str(out))))
    assert str(out) in line and "not found" not in line
    assert (tmp_path / "blocker.txt").read_text() == "keep me"


@pytest.mark.parametrize("argv", [
    lambda a, b: ["export", str(a), "-o", str(a)],
    lambda a, b: ["swap", str(a), str(b), "-o", str(b)],
    lambda a, b: ["convert", str(a), "-o", str(a)],
    lambda a, b: ["align", str(a), "-o", str(a)],
], ids=["export", "swap", "convert", "align"])
def test_output_that_is_an_input_is_refused(tmp_path, assets, argv):
    a, b = shutil.copy(assets["a"], tmp_path / "a.pt"), shutil.copy(assets["b"], tmp_path / "b.pt")
    before = snapshot(tmp_path)
    assert "also an input" in error_line(runner.invoke(app, argv(a, b)))
    assert snapshot(tmp_path) == before


# ---- failed writes (disk full) x writers ----------------------------------------------------
@pytest.fixture
def disk_full(monkeypatch):
    """Every file opened through os.fdopen (all atomic writes) writes to /dev/full: ENOSPC."""
    def full(fd, mode="r", *args, **kwargs):
        os.close(fd)
        return open("/dev/full", mode, *args, **kwargs)
    monkeypatch.setattr(os, "fdopen", full)


DISK_FULL = {
    "sample": (lambda t, a: ["sample", str(a["a"]), "--seeds", "0", "--outdir", str(t / "o")], "seed0000.png"),
    "swap": (lambda t, a: ["swap", str(a["a"]), str(a["b"]), "-o", str(t / "old.pt")], "old.pt"),
    "export": (lambda t, a: ["export", str(a["a"]), "-o", str(t / "old.pt")], "old.pt"),
    "project": (lambda t, a: ["project", str(a["photo"]), "--no-align", "--source", str(a["a"]), "--steps", "1", "--loss", "mse",
                              "--outdir", str(t / "o")], "target.png"),
    "data synth": (lambda t, a: ["data", "synth", "--domain", "photo", "--n", "2", "--size", "8",
                                 "--out", str(t / "o")], "000000.png"),
    "data prepare": (lambda t, a: ["data", "prepare", str(a["data"]), "--size", "8", "--out", str(t / "o")],
                     "000000.png"),
    "pretrain": (lambda t, a: ["pretrain", "--data", str(a["data"]), "--out", str(t / "o"), "--recipe", "tiny",
                               "--iters", "1"], "config.toml"),
}


@pytest.mark.parametrize("command", sorted(DISK_FULL))
def test_disk_full_is_one_line_and_leaves_old_files_and_no_temp_files(tmp_path, assets, disk_full, command):
    argv, first_file = DISK_FULL[command]
    old = shutil.copy(assets["b"], tmp_path / "old.pt")  # an earlier output the command would replace
    before = snapshot(tmp_path)
    line = error_line(runner.invoke(app, argv(tmp_path, assets)))
    assert first_file in line and "No space left on device" in line
    after = snapshot(tmp_path)
    assert after["old.pt"] == before["old.pt"] and Path(old).is_file()
    assert not [name for name in after if name.endswith(".tmp")]
    # nothing half-written appeared (a run's .lock is empty: the kernel's flock is the lock)
    assert set(after) <= set(before) | {"o/params.jsonl", "o/.lock"}


# ---- run folders ------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["swap", "export", "convert"])
@pytest.mark.parametrize("name", ["latest.pt", "best.pt", "checkpoints/000002.pt"])
def test_a_runs_checkpoint_files_are_not_overwritten_by_exports(tmp_path, assets, command, name):
    run = tmp_path / "run"
    shutil.copytree(assets["run"], run)
    before = snapshot(run)
    line = error_line(runner.invoke(app, FILE_COMMANDS[command](str(run / name))))
    assert f"checkpoint file of the training run {run}" in line and snapshot(run) == before


@pytest.mark.parametrize("command", ["swap", "export", "convert"])
@pytest.mark.parametrize("name", ["out.png", "w.NPZ", "g.pkl"])
def test_a_checkpoint_is_not_written_under_another_formats_name(tmp_path, assets, command, name):
    before = snapshot(tmp_path)
    line = error_line(runner.invoke(app, FILE_COMMANDS[command](str(tmp_path / name))))
    assert "this writes a PyTorch checkpoint: name a .pt file" in line and snapshot(tmp_path) == before


@pytest.mark.parametrize("command", ["swap", "export", "convert", "factor"])
def test_an_output_replaces_only_a_file_of_its_own_kind(tmp_path, assets, command):
    """`factor -o trained.pt` wrote a 67 KB factor file over a trained generator (and `export`
    would write a generator over a factor file): refused before any work, the file kept."""
    factor, generator = tmp_path / "factor.pt", shutil.copy(assets["b"], tmp_path / "trained.pt")
    assert runner.invoke(app, ["factor", str(assets["a"]), "-o", str(factor)]).exit_code == 0
    writes_factor = command == "factor"
    kept = Path(generator if writes_factor else factor)
    before = kept.read_bytes()
    argv = ["factor", MISSING, "-o", str(kept)] if writes_factor else FILE_COMMANDS[command](str(kept))
    line = error_line(runner.invoke(app, argv))
    held, writes = ("a generator checkpoint", "a SeFa factor file") if writes_factor else \
        ("a SeFa factor file", "a generator checkpoint")
    assert f"{kept} holds {held}, which this would replace with {writes}" in line and kept.read_bytes() == before
    # a file of its own kind is replaced, as rerunning a command to the same name expects
    same = ["factor", str(assets["b"]), "-o", str(factor)] if writes_factor else \
        ["export", str(assets["a"]), "-o", str(generator)]
    assert runner.invoke(app, same).exit_code == 0


@pytest.mark.parametrize("command", ["swap", "export", "convert"])
def test_a_generator_output_never_replaces_a_training_checkpoint_kept_outside_its_run(tmp_path, assets, command):
    """`swap S T -o backup_train.pt` (a run's latest.pt copied out as a backup) wrote g_ema over it:
    D, both optimisers and the training state, what the run resumes with, were gone."""
    backup = Path(shutil.copy(assets["run"] / "latest.pt", tmp_path / "backup_train.pt"))
    before = backup.read_bytes()
    line = error_line(runner.invoke(app, FILE_COMMANDS[command](str(backup))))
    assert f"{backup} holds a training checkpoint (G, D and optimiser state: it resumes), which this would replace " \
        "with a generator checkpoint" in line and backup.read_bytes() == before


def test_an_output_without_d_never_replaces_a_checkpoint_with_its_d(tmp_path, assets):
    """`export src.pt -o mysource.pt` keeps G, g_ema and D (as the bundled demo64_photo.pt does);
    `swap S T -o mysource.pt` replaced it with g_ema alone, and `finetune --source mysource.pt`
    then refused it for having no discriminator. With D over a generator alone is fine."""
    source = tmp_path / "mysource.pt"
    assert runner.invoke(app, ["export", str(assets["a"]), "-o", str(source)]).exit_code == 0
    assert "d" in load_checkpoint(source)
    before = source.read_bytes()
    for argv in (["swap", str(assets["a"]), str(assets["b"]), "-o", str(source)],
                 ["export", str(assets["a"]), "--g-ema-only", "-o", str(source)]):
        line = error_line(runner.invoke(app, argv))
        assert f"{source} holds a generator checkpoint with its discriminator (what finetune --source needs), which " \
            "this would replace with a generator checkpoint" in line and source.read_bytes() == before, line
    assert runner.invoke(app, ["export", str(assets["a"]), "-o", str(source)]).exit_code == 0  # its own kind
    alone = tmp_path / "alone.pt"
    assert runner.invoke(app, ["export", str(assets["a"]), "--g-ema-only", "-o", str(alone)]).exit_code == 0
    assert runner.invoke(app, ["export", str(assets["a"]), "-o", str(alone)]).exit_code == 0  # gains D: nothing lost
    assert "d" in load_checkpoint(alone)


@pytest.mark.parametrize("command", ["swap", "export", "convert", "factor"])
def test_an_output_never_replaces_someone_elses_file_only_an_empty_or_torn_one(tmp_path, assets, command):
    """`export g.pt -o train.py`, `factor -o run.sh`, `swap ... -o face.pt` (a PNG under a .pt
    name) replaced the file: only a list of image suffixes was refused. Now any file that is not
    of the command's kind is refused by what it is; an empty file or a torn checkpoint is replaced."""
    import zipfile

    held = {"train.py": (b"print('my script')\n", "a text file"), "run": (b"#!/bin/sh\n", "a text file"),
            "face.pt": (Path(assets["photo"]).read_bytes(), "a PNG image"),
            "blob.bin": (bytes(range(200, 256)) * 3, "a file of another format")}
    archive = tmp_path / "faces.pt"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.png", "x")
    paths = {tmp_path / name: kind for name, (data, kind) in held.items()} | {archive: "a zip archive"}
    for name, (data, _) in held.items():
        (tmp_path / name).write_bytes(data)
    for path, kind in paths.items():
        before = path.read_bytes()
        argv = ["factor", MISSING, "-o", str(path)] if command == "factor" else FILE_COMMANDS[command](str(path))
        line = error_line(runner.invoke(app, argv))
        assert f"{path} holds {kind}, which this would replace with" in line and path.read_bytes() == before
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "torn.pt").write_bytes(Path(assets["a"]).read_bytes()[:3000])  # a copy cut short
    source = str(assets["a"])
    for name in ("empty.pt", "torn.pt"):
        out = str(tmp_path / name)
        argv = {"factor": ["factor", source, "-o", out], "swap": ["swap", source, str(assets["b"]), "-o", out],
                "export": ["export", source, "-o", out],
                "convert": ["export", source, "-o", out]}  # the same check_weights_output; no pickle among the assets
        assert runner.invoke(app, argv[command]).exit_code == 0, name


def test_a_factor_file_or_a_zip_of_images_as_a_checkpoint_is_named_for_what_it_is(tmp_path, assets):
    """`sample factor.pt` said "holds no generator ... found ['ckpt', 'eigvec', 'values']" of a
    file `info` names; a zip of images gave torch's "[enforce fail at inline_container.cc:180]";
    `--lpips-weights FOLDER` said "no such file" of a folder that is there."""
    import zipfile

    factor, images, empty = tmp_path / "factor.pt", tmp_path / "faces.zip", tmp_path / "empty.zip"
    assert runner.invoke(app, ["factor", str(assets["a"]), "-o", str(factor)]).exit_code == 0
    with zipfile.ZipFile(images, "w") as zf:
        zf.write(assets["photo"], "rgb.png")
    zipfile.ZipFile(empty, "w").close()
    for argv, said in ((["sample", str(factor)], f"{factor} is a SeFa factor file (`cartoongan factor` writes them), "
                                                  "not a generator: pass it as `edit --factor`"),
                       (["export", str(factor), "-o", str(tmp_path / "x.pt")], "is a SeFa factor file"),
                       (["info", str(images)], f"{images} is a zip archive of 1 file(s) (rgb.png), not a PyTorch checkpoint"),
                       (["sample", str(empty)], f"{empty} is an empty zip archive, not a PyTorch checkpoint"),
                       (["project", str(assets["photo"]), "--source", str(assets["a"]), "--no-align", "--lpips-weights",
                         str(tmp_path), "--outdir", str(tmp_path / "p")],
                        f"--lpips-weights {tmp_path} is a folder, not a file")):
        line = error_line(runner.invoke(app, argv))
        assert said in line and "enforce fail" not in line, line
    assert "factor" in runner.invoke(app, ["info", str(factor)]).output.lower()


@pytest.mark.parametrize("how", ["typed inside checkpoints/", "through a link"])
def test_a_runs_checkpoints_are_known_by_any_path(tmp_path, assets, monkeypatch, how):
    run = tmp_path / "run"
    shutil.copytree(assets["run"], run)
    before = snapshot(run)
    if how == "through a link":
        (tmp_path / "ck").symlink_to(run / "checkpoints")
        target = str(tmp_path / "ck" / "000002.pt")
    else:
        monkeypatch.chdir(run / "checkpoints")
        target = "000002.pt"
    line = error_line(runner.invoke(app, ["export", str(assets["a"]), "-o", target]))
    assert "checkpoint file of the training run" in line and snapshot(run) == before


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
@pytest.mark.parametrize("where", ["dataset folder", "other non-empty folder", "inside the dataset", "existing run",
                                   "unsaved run beside other files"])
def test_run_folder_must_be_new_empty_or_resumed(tmp_path, assets, command, where):
    data = blob_images(tmp_path / "data", n=2)
    out = {"dataset folder": data, "other non-empty folder": tmp_path / "docs", "inside the dataset": data / "run",
           "existing run": tmp_path / "run", "unsaved run beside other files": tmp_path / "mixed"}[where]
    if where in ("other non-empty folder", "unsaved run beside other files"):
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    if where == "unsaved run beside other files":  # a failed run's leftovers may go, the notes may not
        (out / "config.toml").write_text("")
    if where == "existing run":
        shutil.copytree(assets["run"], out)
    before = snapshot(tmp_path)
    argv = ([command, "--data", str(data), "--out", str(out), "--recipe", "tiny"]
            + (["--source", str(assets["a"])] if command == "finetune" else []))
    res = runner.invoke(app, argv)
    line = error_line(res, 2 if where in ("existing run", "unsaved run beside other files") else 1)
    expect = {"existing run": "--resume", "unsaved run beside other files": "beside other files"}.get(where, "folder")
    assert str(out) in line and expect in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("argv", [
    lambda t: ["data", "prepare", str(t / "src"), "--out", str(t / "src")],
    lambda t: ["data", "prepare", str(t / "src"), "--out", str(t / "docs")],
    lambda t: ["data", "synth", "--domain", "cartoon", "--n", "2", "--size", "8", "--out", str(t / "src")],
    lambda t: ["demo", "--out", str(t / "docs")],
], ids=["prepare into its source", "prepare into a non-empty folder", "synth over a dataset",
        "demo into a non-empty folder"])
def test_dataset_and_demo_folders_are_not_overwritten(tmp_path, argv):
    blob_images(tmp_path / "src", n=2)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    assert "choose" in error_line(runner.invoke(app, argv(tmp_path)))
    assert snapshot(tmp_path) == before


def test_synth_rewrites_its_own_folder_without_stale_faces(tmp_path):
    out = tmp_path / "faces"
    base = ["data", "synth", "--domain", "cartoon", "--size", "8", "--out", str(out)]
    assert runner.invoke(app, base + ["--n", "3"]).exit_code == 0
    res = runner.invoke(app, base + ["--n", "2", "--seed", "5"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "params.jsonl"]
    assert len((out / "params.jsonl").read_text().splitlines()) == 2


def test_synth_stopped_in_its_own_folder_leaves_the_new_faces_only_and_says_so(tmp_path, monkeypatch):
    """A Ctrl-C while rewriting an earlier synthesis left new faces and old ones mixed, and said only
    'interrupted'."""
    from cartoongan.data import synthetic

    out = tmp_path / "faces"
    base = ["data", "synth", "--domain", "cartoon", "--size", "8", "--out", str(out)]
    assert runner.invoke(app, base + ["--n", "5"]).exit_code == 0
    real, saved = synthetic.save_image, []

    def stop_at_the_third(img, path, **kw):
        if len(saved) == 2:
            raise KeyboardInterrupt
        saved.append(path)
        return real(img, path, **kw)

    monkeypatch.setattr(synthetic, "save_image", stop_at_the_third)
    res = runner.invoke(app, base + ["--n", "8", "--seed", "3"])
    said = " ".join(res.output.split())
    assert res.exit_code == 130 and "interrupted after 2 of 8 faces" in said and "run the same command again" in said
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "params.jsonl"]
    assert len((out / "params.jsonl").read_text().splitlines()) == 2
    from cartoongan.errors import OutputError

    monkeypatch.setattr(synthetic, "save_image", real)
    assert runner.invoke(app, base + ["--n", "5"]).exit_code == 0  # a full disk at the third face: no mix either
    saved.clear()

    def disk_full_at_the_third(img, path, **kw):
        if len(saved) == 2:
            raise OutputError(f"cannot write {path}: No space left on device")
        saved.append(path)
        return real(img, path, **kw)

    monkeypatch.setattr(synthetic, "save_image", disk_full_at_the_third)
    assert runner.invoke(app, base + ["--n", "8", "--seed", "3"]).exit_code == 1
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "params.jsonl"]


def test_a_ctrl_c_inside_the_temporary_files_creation_leaves_no_temporary_file(tmp_path, monkeypatch):
    """mkstemp named the file only on returning: a Ctrl-C landing inside it left a 0-byte .tmp."""
    from cartoongan.outputs import atomic_write

    real_open = os.open

    def created_then_interrupted(path, flags, mode=0o777, **kw):
        real_open(path, flags, mode, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "open", created_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(tmp_path / "a.png") as fh:
            fh.write(b"x")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
    from cartoongan.errors import OutputError

    with pytest.raises(OutputError, match="cannot write"):  # a create that fails: named, not a raw OSError
        with atomic_write(tmp_path / ("a" * 296 + ".png")) as fh:
            fh.write(b"x")
    assert list(tmp_path.iterdir()) == []
    with atomic_write(tmp_path / ("a" * 246 + ".png")) as fh:  # a name the file system allows: its
        fh.write(b"x")  # temp file's longer one used to make it fail
    assert [p.name for p in tmp_path.iterdir()] == ["a" * 246 + ".png"]


@pytest.mark.parametrize("rel", ["checkpoints/000004.pt", "checkpoints/deeper/000004.pt"])
def test_a_write_under_a_file_names_the_file_in_the_way(tmp_path, rel):
    """A file named `checkpoints` appearing mid-run: the failed save named the whole path ("a file
    is in the way"), which sent people looking for a 000004.pt."""
    from cartoongan import outputs
    from cartoongan.errors import OutputError

    (tmp_path / "checkpoints").write_text("someone's")
    with pytest.raises(OutputError, match=rf"\({re.escape(str(tmp_path / 'checkpoints'))} is a file, where a "
                                          r"folder is needed: move it away\)$"):
        with outputs.atomic_write(tmp_path / rel) as fh:
            fh.write(b"a checkpoint")
    assert (tmp_path / "checkpoints").read_text() == "someone's"


def test_a_killed_writers_temporary_file_goes_with_the_next_write_into_its_folder(tmp_path):
    """A SIGKILL mid-save (swap, export, sample) left `.NAME.xxxx.tmp`, as large as the output, for
    good. The next write into that folder removes it; a live process's, or another host's, stays."""
    import signal
    import subprocess
    import sys

    from cartoongan import outputs

    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys\n"
        "from cartoongan.outputs import atomic_write\n"
        "with atomic_write(sys.argv[1]) as fh:\n"
        "    fh.write(b'half a checkpoint'); fh.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"),
        str(tmp_path / "swapped.pt")], capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(".swapped.pt.") and left.read_bytes() == b"half a checkpoint"
    live = tmp_path / f".other.pt.{outputs._HOST_TAG}p{os.getppid()}-abc123.tmp"
    elsewhere = tmp_path / f".other.pt.{'0' if outputs._HOST_TAG[0] != '0' else '1'}{outputs._HOST_TAG[1:]}p{2**22 + 7}-abc123.tmp"
    live.write_bytes(b"being written")
    elsewhere.write_bytes(b"being written on another machine")
    with outputs.atomic_write(tmp_path / "swapped.pt") as fh:
        fh.write(b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([elsewhere.name, live.name, "swapped.pt"])


# ---- resume faults: refused with one line, the run unchanged --------------------------------
def _damage(run: Path, fault: str) -> list[str]:
    """Damage a copy of the finished 2-step run; return the extra command-line arguments."""
    if fault == "corrupt config.toml":
        (run / "config.toml").write_bytes(b"[train\niters = = 3\n\xff")
    elif fault == "unknown key in config.toml":
        (run / "config.toml").write_text((run / "config.toml").read_text() + "\n[train.extra]\nx = 1\n")
    elif fault == "config.toml of another model":
        text = (run / "config.toml").read_text()
        (run / "config.toml").write_text(text.replace("size = 16", "size = 32", 1))
        return ["--iters", "5"]
    elif fault == "exported latest.pt":
        ckpt = load_checkpoint(run / "latest.pt")
        save_checkpoint(run / "latest.pt", {k: ckpt[k] for k in ("g_ema", "g", "d", "cartoongan")})
        return ["--iters", "5"]
    elif fault == "truncated latest.pt":
        data = (run / "latest.pt").read_bytes()
        (run / "latest.pt").write_bytes(data[: len(data) // 2])
        return ["--iters", "5"]
    elif fault.startswith("--iters"):
        return fault.split()
    elif fault.endswith(" is a folder"):  # the run's own name, holding the other kind
        name = fault.split()[0]
        (run / name).unlink(missing_ok=True)
        (run / name).mkdir()
        (run / name / "keep.txt").write_text("someone's")
        return ["--iters", "5"]
    elif fault.endswith(" is a named pipe"):
        (run / fault.split()[0]).unlink()
        os.mkfifo(run / fault.split()[0])
        return ["--iters", "5"]
    elif fault.endswith(" is a file"):
        name = fault.split()[0]
        shutil.rmtree(run / name)
        (run / name).write_text("someone's")
        return ["--iters", "5"]
    return []


@pytest.mark.parametrize("fault,code,names", [
    ("corrupt config.toml", 1, "config.toml"),
    ("unknown key in config.toml", 1, "config.toml"),
    ("config.toml of another model", 1, "latest.pt"),
    ("exported latest.pt", 1, "latest.pt"),
    ("truncated latest.pt", 1, "newest numbered checkpoint is"),
    ("--iters 1", 2, "step 2"),
    ("--iters 2", 2, "step 2"),
    ("finished, no --iters", 2, "step 2"),
    # each was named as the run folder, or after a step; its "--resume" hint then failed again
    (".lock is a folder", 1, ".lock is a folder, where the run keeps its .lock file"),
    ("log.jsonl is a folder", 1, "log.jsonl is a folder, where the run keeps its log.jsonl file"),
    ("checkpoints is a file", 1, "checkpoints is a file, where the run keeps its checkpoints/ folder"),
    ("samples is a file", 1, "samples is a file, where the run keeps its samples/ folder"),
    ("log.jsonl is a named pipe", 1, "log.jsonl is a named pipe (FIFO), where the run keeps its log.jsonl file"),
])
def test_resume_faults_refused_and_run_unchanged(tmp_path, assets, fault, code, names):
    run = Path(shutil.copytree(assets["run"], tmp_path / "run"))
    extra = _damage(run, fault)
    before = snapshot(run)
    line = error_line(runner.invoke(app, ["pretrain", "--resume", str(run), *extra]), code)
    assert names in line and str(run) in line
    assert snapshot(run) == before  # config.toml, log.jsonl and checkpoints byte-identical


@pytest.mark.parametrize("argv", [
    lambda run, a: ["pretrain", "--resume", str(run), "--out", str(run.parent / "other"), "--iters", "5"],
    lambda run, a: ["pretrain", "--resume", str(run), "--recipe", "tiny", "--iters", "5"],
    lambda run, a: ["finetune", "--resume", str(run), "--source", str(a["a"]), "--iters", "5"],
], ids=["--out with --resume", "--recipe with --resume", "finetune --resume on a pretrain run"])
def test_resume_flag_conflicts_refused(tmp_path, assets, argv):
    run = Path(shutil.copytree(assets["run"], tmp_path / "run"))
    before = snapshot(tmp_path)
    assert "--resume" in error_line(runner.invoke(app, argv(run, assets)), 2)
    assert snapshot(tmp_path) == before


def test_disk_full_on_resume_keeps_the_run_and_says_how_to_continue(tmp_path, assets, disk_full):
    run = Path(shutil.copytree(assets["run"], tmp_path / "run"))
    before = snapshot(run)
    line = error_line(runner.invoke(app, ["pretrain", "--resume", str(run), "--iters", "3"]))
    assert "config.toml" in line and "No space left" in line and f"--resume {run}" in line
    assert snapshot(run) == before


# ---- rich markup: text in square brackets survives -------------------------------------------
def test_bracketed_recipe_table_and_setting_survive(tmp_path):
    for text, expected in (("[foo]\nx = 1\n", "unknown recipe table [foo]"),
                           ("[train]\nitres = 3\n", "unknown setting [train].itres")):
        (tmp_path / "r.toml").write_text(text)
        res = runner.invoke(app, ["pretrain", "--recipe", str(tmp_path / "r.toml"), "--data", "d", "--out", "o"])
        assert expected in error_line(res, 2)


def test_bracketed_paths_survive_in_errors_warnings_tables_and_results(tmp_path, assets):
    folder = tmp_path / "[red]x"
    folder.mkdir()
    assert f"{folder}/[bold]m.pt" in error_line(runner.invoke(app, ["sample", str(folder / "[bold]m.pt")]))
    ckpt = str(shutil.copy(assets["a"], folder / "[b]a.pt"))
    res = runner.invoke(app, ["info", ckpt])  # the table's title; long lines fold, hence the joins below
    assert res.exit_code == 0 and f"{folder}/[b]a.pt" in "".join(res.output.split())
    res = runner.invoke(app, ["sample", ckpt, "--seeds", "0", "--outdir", str(folder / "[o]")])
    assert res.exit_code == 0 and f"{folder}/[o]/grid.png" in "".join(res.output.split())
    data = blob_images(folder / "[set]", n=1)
    (data / "[bad].png").write_bytes(b"not a png")
    res = runner.invoke(app, ["data", "prepare", str(data), "--size", "8", "--out", str(tmp_path / "p")])
    assert res.exit_code == 0 and f"{data}:[bad].png" in "".join(res.output.split())


# ---- mismatched but well-formed inputs ------------------------------------------------------
def _w(tmp_path, array) -> Path:
    np.savez(tmp_path / "w.npz", w=array)
    return tmp_path / "w.npz"


@pytest.mark.parametrize("w,expected", [
    (np.zeros((1, 8, 32), np.float32), "(N, 6, 32)"),  # another model's n_latent (a 32 px one)
    (np.zeros((1, 6, 64), np.float32), "(N, 6, 32)"),  # another model's style_dim
    (np.zeros((31,), np.float32), "holds w of shape (31,), but the generator of"),  # a w of another style_dim
    (np.zeros((2, 2, 3, 32), np.float32), "expected floats"),
    (np.full((8, 32), np.nan, np.float32), "NaN"),
    (np.array([["a"]]), "expected floats"),
    (np.zeros((1, 6, 32), np.int64), "int64 array"),
], ids=["n_latent", "style_dim", "1-d", "4-d", "nan", "strings", "integers"])
def test_projected_w_from_another_model(tmp_path, assets, w, expected):
    path = _w(tmp_path, w)
    res = runner.invoke(app, ["sample", str(assets["a"]), "--projected-w", str(path), "--outdir", str(tmp_path / "o")])
    line = error_line(res)
    assert str(path) in line and expected in line
    assert not (tmp_path / "o").exists()


def test_a_projected_w_that_would_render_nan_is_refused_not_saved_black(tmp_path, assets, monkeypatch):
    # finite, the right shape, far outside the mapping's range: the render would overflow to inf/NaN,
    # refused when the w is read (the render's own finite check stands behind it)
    path = _w(tmp_path, np.full((2, 6, 32), 3e38, np.float32))
    res = runner.invoke(app, ["sample", str(assets["a"]), "--projected-w", str(path), "--outdir", str(tmp_path / "o")])
    assert "far outside any mapping network's w" in error_line(res)
    assert not list(tmp_path.rglob("*.png"))
    from cartoongan.pipelines import project

    monkeypatch.setattr(project, "W_MAX", float("inf"))  # past that check, the render's own refuses it
    res = runner.invoke(app, ["sample", str(assets["a"]), "--projected-w", str(path), "--outdir", str(tmp_path / "o")])
    assert "rendered NaN or inf" in error_line(res)


def test_a_truncation_of_the_library_is_checked_like_the_flag(tmp_path, assets):
    from cartoongan.errors import ConfigError
    from cartoongan.pipelines.sample import sample_checkpoints

    with pytest.raises(ConfigError, match="from 0 to 10"):
        sample_checkpoints([assets["a"]], [0], tmp_path / "o", truncation=float("nan"), device="cpu")
    assert not list(tmp_path.rglob("*.png"))


def _edit(path: Path, tmp_path: Path, edit) -> Path:
    ckpt = load_checkpoint(path)
    edit(ckpt)
    torch.save(ckpt, tmp_path / "edited.pt")
    return tmp_path / "edited.pt"


def _integer_weights(c):
    c["g_ema"].update({k: v.long() for k, v in c["g_ema"].items() if v.is_floating_point()})


@pytest.mark.parametrize("argv", [lambda p, t: ["sample", str(p), "--outdir", str(t / "o")],
                                  lambda p, t: ["export", str(p), "-o", str(t / "x.pt")],
                                  lambda p, t: ["swap", str(p), str(p), "-o", str(t / "s.pt")]],
                         ids=["sample", "export", "swap"])
def test_integer_weights_are_refused_not_rendered_grey(tmp_path, assets, argv):
    path = _edit(assets["b"], tmp_path, _integer_weights)
    line = error_line(runner.invoke(app, argv(path, tmp_path)))
    assert "not floating-point" in line and not (tmp_path / "o").exists() and not (tmp_path / "x.pt").exists()


def _nan_discriminator(c):
    c["d"] = {k: v.clone() for k, v in c["d"].items()}
    next(v for v in c["d"].values() if v.is_floating_point()).view(-1)[0] = float("nan")


@pytest.mark.parametrize("name,edit,expected", [
    ("a", lambda c: c.update(g_ema={k: v.long() for k, v in c["g_ema"].items()}),
     {"g_ema": "not floating-point", "g": "loads", "d": "loads"}),
    ("a", _nan_discriminator, {"g_ema": "loads", "g": "loads", "d": "holds NaN or inf"}),
    ("b", lambda c: None, {"g_ema": "loads"}),
    ("a", lambda c: c.update(g=Generator(16, **{**TINY, "channel_max": 16}).state_dict()) or c.pop("cartoongan"),
     {"g_ema": "loads", "g": "another architecture than g_ema", "d": "loads"}),
    ("b", lambda c: c["cartoongan"]["generator"].update(size=2**20), {"g_ema": "do not fit"}),
], ids=["integer g_ema", "NaN in d", "sound", "g of another architecture (rosinality)",
        "recorded size 2**20"])
def test_info_says_which_network_every_command_would_refuse(tmp_path, assets, name, edit, expected):
    """info describes a damaged checkpoint (exit 0) and warns, per network, with the line that a
    command loading it would stop on; a sound one gets no warning."""
    path = _edit(assets[name], tmp_path, edit)
    res = runner.invoke(app, ["info", str(path), "--json"])
    assert res.exit_code == 0, res.output
    checks = __import__("json").loads(res.output)["networks"]
    assert set(checks) == set(expected) and all(want in checks[k] for k, want in expected.items()), checks
    res = runner.invoke(app, ["info", str(path)])
    warned = [k for k, v in expected.items() if v != "loads"]
    text = " ".join(res.output.split())
    assert res.exit_code == 0 and text.count("warning:") == len(warned)
    assert all(f"{k} would be refused" in text for k in warned)


@pytest.mark.parametrize("command", ["info", "sample"])
@pytest.mark.parametrize("edit,expected", [
    (lambda c: c.update(latent_avg=torch.zeros(7)), "latent_avg"),
    (lambda c: c.update(latent_avg="zeros"), "latent_avg"),
    (lambda c: c.update(g_ema=[1, 2]), "state dict"),
    (lambda c: c.update(g_ema=torch.zeros(3)), "state dict"),
    (lambda c: c["g_ema"].update({"style.1.weight": "w"}), "holds a str at 'style.1.weight', not a tensor"),
    (lambda c: c.update(cartoongan="v1"), "'cartoongan'"),
    (lambda c: c["cartoongan"].update(provenance="abc"), "'cartoongan.provenance' is a str"),
    (lambda c: c["cartoongan"]["generator"].pop("size"), "size"),
    (lambda c: c["g_ema"].update({"style.1.weight": torch.zeros(5)}) or c.pop("cartoongan"), "style.1.weight"),
], ids=["latent_avg size", "latent_avg type", "g_ema list", "g_ema tensor", "g_ema value", "meta type",
        "provenance type", "meta generator", "1-d weight"])
def test_mismatched_checkpoint_contents(tmp_path, assets, command, edit, expected):
    path = _edit(assets["b"], tmp_path, edit)
    argv = ["info", str(path)] if command == "info" else ["sample", str(path), "--outdir", str(tmp_path / "o")]
    line = error_line(runner.invoke(app, argv))
    assert str(path) in line and expected in line


@pytest.mark.parametrize("command", ["project", "toonify"])
@pytest.mark.parametrize("side", [64, 40], ids=["bomb error", "bomb warning"])
def test_decompression_bomb_photo(tmp_path, assets, monkeypatch, command, side):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x64 is over twice the limit, 40x40 just over it
    photo = tmp_path / "bomb.png"
    Image.new("L", (side, side)).save(photo)
    argv = [command, str(photo), "--source", str(assets["a"]), "--steps", "1", "--loss", "mse",
            "--outdir", str(tmp_path / "o")] + (["--target", str(assets["b"])] if command == "toonify" else [])
    line = error_line(runner.invoke(app, argv))
    assert str(photo) in line and "too large" in line


def test_dataset_names_too_large_images_apart_from_damaged_ones(tmp_path, monkeypatch):
    """An image over PIL's bomb limit is whole: calling it unreadable sends the user looking for damage."""
    from cartoongan.data.dataset import load_aligned_dataset, load_dataset
    from cartoongan.errors import DataError
    from cartoongan.report import ListReporter

    data = blob_images(tmp_path / "d", n=2, size=24)  # 24 x 32 = 768 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.new("L", (40, 40)).save(data / "big.png")  # just over the limit: PIL's warning, not its error
    (data / "junk.png").write_bytes(b"not an image")
    rep = ListReporter()
    ds = load_dataset(data, 8, rep)
    assert len(ds) == 2 and sorted(ds.skipped) == ["big.png", "junk.png"]
    huge = [w for w in rep.warnings if "big.png" in w]
    assert len(huge) == 1 and "over PIL's decompression-bomb limit (1000 pixels)" in huge[0] and "junk" not in huge[0]
    assert any("skipped 1 unreadable image(s)" in w and "junk.png" in w for w in rep.warnings), rep.warnings
    pytest.importorskip("dlib")
    rep = ListReporter()
    with pytest.raises(DataError, match="no faces found"):  # blobs have no face; the warnings come first
        load_aligned_dataset(data, 8, rep)
    assert any("decompression-bomb limit" in w and "big.png" in w and "junk" not in w for w in rep.warnings), rep.warnings


def test_data_prepare_stopped_while_writing_leaves_out_as_it_was(tmp_path, monkeypatch):
    """A Ctrl-C during the writing (minutes for 70,000 PNGs): no half-set in --out to refuse the rerun."""
    from cartoongan.data import images

    src = blob_images(tmp_path / "src", n=5)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".keep").write_text("")  # hidden files are allowed in --out and stay
    real_save = images.save_png
    monkeypatch.setattr(images, "save_png", stops_after(3, real_save))
    argv = ["data", "prepare", str(src), "--size", "8", "--out", str(tmp_path / "out")]
    res = runner.invoke(app, argv)
    assert res.exit_code == 130, res.output
    assert sorted(os.listdir(tmp_path / "out")) == [".keep"] and sorted(os.listdir(tmp_path)) == ["out", "src"]
    monkeypatch.setattr(images, "save_png", real_save)
    res = runner.invoke(app, argv)
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(tmp_path / "out")) == [".keep"] + [f"{i:06d}.png" for i in range(5)]


@pytest.mark.parametrize("command", ["prepare", "synth"])
def test_a_second_data_prepare_into_the_same_folder_stops_at_once(tmp_path, command):
    """Both found --out empty (or, for synth, their own), then both wrote their images: a set of
    two sources (synth: one seed's faces over part of the other's, under either's params.jsonl). The
    one that comes second (here: the lock held by this test, as a running one holds it) stops,
    names the first's pid, and leaves --out as it was; the lock file goes with the run that made it."""
    import fcntl

    src = blob_images(tmp_path / "src", n=3)
    lock = tmp_path / ".out.writing.lock"
    argv = (["data", "prepare", str(src), "--size", "8", "--out", str(tmp_path / "out")] if command == "prepare" else
            ["data", "synth", "--domain", "photo", "--n", "3", "--size", "8", "--seed", "1", "--out", str(tmp_path / "out")])
    with open(lock, "w") as held:
        held.write("4242\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        line = error_line(runner.invoke(app, argv))
    assert "--out" in line and "is being written by another process (pid 4242)" in line, line
    assert not (tmp_path / "out").exists()
    res = runner.invoke(app, argv)
    assert res.exit_code == 0, res.output
    written = sorted(os.listdir(tmp_path / "out"))
    assert [n for n in written if n != "params.jsonl"] == [f"{i:06d}.png" for i in range(3)] and not lock.exists()


def test_data_prepare_stages_inside_out_when_its_parent_is_closed(tmp_path, monkeypatch):
    """--out a writable mount point whose parent we may not write (root here, so refused by a stub)."""
    src = blob_images(tmp_path / "src", n=3)
    (tmp_path / "out").mkdir()
    real_mkdir, made = Path.mkdir, []

    def mkdir(self, *args, **kw):
        if self.name == ".out.partial":
            raise PermissionError(13, "Permission denied")
        made.append(self.name)
        return real_mkdir(self, *args, **kw)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    res = runner.invoke(app, ["data", "prepare", str(src), "--size", "8", "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert ".partial" in made and sorted(os.listdir(tmp_path / "out")) == [f"{i:06d}.png" for i in range(3)]


def test_data_prepare_stages_inside_a_mounted_out(tmp_path, monkeypatch):
    """--out a mount point: a folder beside it is on another filesystem, where os.replace fails."""
    from cartoongan.data import dataset

    src = blob_images(tmp_path / "src", n=2)
    out = tmp_path / "mnt"
    out.mkdir()
    real_stat = os.stat

    def stat(path, *args, **kw):  # out on a device of its own
        result = real_stat(path, *args, **kw)
        if Path(path) == out:
            return os.stat_result((*result[:2], result.st_dev + 1, *result[3:]))
        return result

    monkeypatch.setattr(dataset.os, "stat", stat)
    moved = []
    real_replace = os.replace
    monkeypatch.setattr(dataset.os, "replace", lambda a, b: moved.append(Path(a).parent.name) or real_replace(a, b))
    res = runner.invoke(app, ["data", "prepare", str(src), "--size", "8", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert set(moved) == {".partial"} and sorted(os.listdir(out)) == ["000000.png", "000001.png"]


def test_zip_dataset_with_a_corrupt_member_skips_it(tmp_path):
    blob_images(tmp_path / "imgs", n=2)
    with zipfile.ZipFile(tmp_path / "d.zip", "w", zipfile.ZIP_STORED) as zf:
        for p in sorted((tmp_path / "imgs").iterdir()):
            zf.write(p, p.name)
    raw = bytearray((tmp_path / "d.zip").read_bytes())
    at = raw.find(b"IDAT") + 8  # flip a byte inside the first PNG's data: a CRC error on reading
    raw[at] ^= 0xFF
    (tmp_path / "d.zip").write_bytes(bytes(raw))
    res = runner.invoke(app, ["data", "prepare", str(tmp_path / "d.zip"), "--size", "8", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "skipped 1" in res.output and len(list((tmp_path / "o").iterdir())) == 1


@pytest.mark.parametrize("side", [64, 40], ids=["bomb error", "bomb warning"])
def test_every_photo_reader_refuses_bombs_and_names_the_file(tmp_path, monkeypatch, side):
    """Photos for project/toonify, photos to align and DualStyleGAN exemplars are opened through one
    check: a bomb, a missing file and a non-image are each one DataError naming the file."""
    from cartoongan.data.align import read_photo
    from cartoongan.data.images import load_photo
    from cartoongan.errors import DataError
    from cartoongan.pipelines.dualstyle import load_exemplar

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    bomb, junk = tmp_path / "bomb.png", tmp_path / "junk.png"
    Image.new("L", (side, side)).save(bomb)
    junk.write_bytes(b"\x00\x01 not an image")
    for read, missing in ((lambda p: load_photo(p, 8), "photo not found"), (read_photo, "photo not found"),
                          (load_exemplar, "exemplar not found")):
        for path, expected in ((bomb, "too large to decode safely"), (junk, "is not a readable image.*save it again as PNG"),
                               (tmp_path / "gone.png", missing), (tmp_path, "is a folder, not an image file")):
            with pytest.raises(DataError, match=expected) as exc:
                read(path)
            assert str(path) in str(exc.value)


def test_every_photo_reader_names_a_checkpoint_or_array_in_the_photos_place(tmp_path, assets):
    """The likeliest wrong file for a photo is another argument's: `project --source S TARGET.pt`,
    a projected_w.npz, a DualStyleGAN code .npy. Each is named for what it is, not 'damaged'."""
    from cartoongan.data.align import read_photo
    from cartoongan.data.images import load_photo
    from cartoongan.errors import DataError
    from cartoongan.pipelines.dualstyle import load_exemplar

    np.save(tmp_path / "code.npy", np.zeros((1, 4), np.float32))
    (tmp_path / "notes.png").write_text("a list of photos to take\n")
    np.savez(tmp_path / "projected_w.npz", w=np.zeros((1, 4), np.float32))
    legacy = tmp_path / "old.pt"
    torch.save({"g_ema": {}}, legacy, _use_new_zipfile_serialization=False)
    zipped_other = tmp_path / "photos.zip"  # a zip of photos in a photo's place: "not a readable image" said nothing
    with zipfile.ZipFile(zipped_other, "w") as zf:
        zf.writestr("readme.txt", "hi")
    cases = ((assets["a"], "is a PyTorch checkpoint, not an image"), (legacy, "is a PyTorch checkpoint, not an image"),
             (tmp_path / "code.npy", "is a NumPy array (.npy), not an image"),
             (tmp_path / "projected_w.npz", "is a NumPy archive (.npz), not an image"),
             (tmp_path / "notes.png", "is a text file, not an image"),
             (zipped_other, "is a zip archive (unzip it to pass its folder), not an image"))
    for read, what in ((lambda p: load_photo(p, 8), "photo"), (read_photo, "photo"), (load_exemplar, "exemplar")):
        for path, expected in cases:
            with pytest.raises(DataError, match=re.escape(expected)) as exc:
                read(path)
            assert str(path) in str(exc.value)
            if "not an image" in expected:
                assert f"pass the {what} (PNG or JPEG) here" in str(exc.value)
    line = error_line(runner.invoke(app, ["project", "--source", str(assets["a"]), str(assets["a"]),
                                          "--no-align", "--steps", "1", "--outdir", str(tmp_path / "p")]))
    assert "is a PyTorch checkpoint, not an image: pass the photo" in line and not (tmp_path / "p").exists()


# ---- outputs that would overwrite what the command reads, or a run's files ------------------
@pytest.mark.parametrize("target", ["log.jsonl", "latest.pt", "config.toml"])
def test_plot_never_turns_a_runs_files_into_a_picture(tmp_path, assets, target):
    run = Path(shutil.copytree(assets["run"], tmp_path / "run"))
    before = snapshot(run)
    line = error_line(runner.invoke(app, ["plot", str(run), "-o", str(run / target)]))
    assert "name a .png file" in line
    assert snapshot(run) == before


def test_plot_of_a_file_that_is_not_a_log_is_one_line(tmp_path, assets):
    line = error_line(runner.invoke(app, ["plot", str(assets["photo"]), "-o", str(tmp_path / "c.png")]))
    assert "is not a training log: it is a" in line and not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("command,name", [("project", "target.png"), ("project", "proj.png"),
                                          ("toonify", "toonify.png")])
def test_an_input_photo_inside_outdir_under_an_output_name_is_kept(tmp_path, assets, command, name):
    outdir = tmp_path / "out"
    outdir.mkdir()
    photo = shutil.copy(assets["photo"], outdir / name)
    before = snapshot(outdir)
    argv = [command, str(photo), "--source", str(assets["a"]), "--no-align", "--steps", "1", "--loss", "mse",
            "--outdir", str(outdir)] + (["--target", str(assets["b"])] if command == "toonify" else [])
    line = error_line(runner.invoke(app, argv))
    assert "would overwrite the input" in line and name in line
    assert snapshot(outdir) == before


# ---- impossible settings in a recipe or a checkpoint ------------------------------------------
@pytest.mark.parametrize("table,key,value", [("model", "style_dim", 0), ("model", "channel_max", -8),
                                             ("model", "n_mlp", -1), ("train", "path_batch_shrink", 0),
                                             ("train", "n_sample", 0), ("train", "ada_target", "nan")])
def test_impossible_recipe_values_name_their_key(tmp_path, assets, table, key, value):
    line = _pretrain_refused_recipe(tmp_path, assets, f"[{table}]\n{key} = {value}\n")
    assert f"[{table}] {key} must be" in line


def _pretrain_refused_recipe(tmp_path: Path, assets: dict, text: str) -> str:
    """The usage-error line of a pretrain with a recipe of `text`, which must not have started a run."""
    recipe, out = tmp_path / "r.toml", tmp_path / "run"
    recipe.write_text(text)
    line = error_line(runner.invoke(app, ["pretrain", "--data", str(assets["data"]), "--out", str(out),
                                          "--recipe", str(recipe), "--iters", "1"]), 2)
    assert not out.exists()
    return line


@pytest.mark.parametrize("key,value,words", [("device", "5", "must be a string"), ("precision", "[1]", "must be a string"),
                                             ("augment", "{ a = 1 }", "must be a string"),
                                             ("xflip", '"yes"', "must be true or false")])
def test_a_recipe_value_of_the_wrong_type_names_its_key(tmp_path, assets, key, value, words):
    """A number where a string belongs reached the trainer's string methods: an AttributeError traceback."""
    assert f"[train].{key} {words}" in _pretrain_refused_recipe(tmp_path, assets, f"[train]\n{key} = {value}\n")


def test_a_runs_config_toml_value_of_the_wrong_type_names_its_key(tmp_path, assets):
    run = Path(shutil.copytree(assets["run"], tmp_path / "run"))
    text = (run / "config.toml").read_text()
    (run / "config.toml").write_text(text.replace('device = "cpu"', "device = 5"))
    before = snapshot(run)
    line = error_line(runner.invoke(app, ["pretrain", "--resume", str(run), "--iters", "3"]))
    assert "config.toml is damaged ([train].device must be a string" in line and snapshot(run) == before


def test_a_recipe_value_that_has_a_flag_names_both(tmp_path, assets):
    line = _pretrain_refused_recipe(tmp_path, assets, "[train]\nlr = nan\n")
    assert "--lr ([train] lr) must be a finite number > 0" in line


def test_a_checkpoint_recording_an_empty_architecture_is_refused(tmp_path, assets):
    def zero_style(c):
        c["cartoongan"]["generator"]["style_dim"] = 0
    path = _edit(assets["b"], tmp_path, zero_style)
    line = error_line(runner.invoke(app, ["sample", str(path), "--outdir", str(tmp_path / "o")]))
    assert "whole numbers >= 1 for style_dim" in line


# ---- running out of memory -----------------------------------------------------------------
@pytest.mark.parametrize("error,says", [
    (lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you "
                          "tried to allocate 1099511627776 bytes"), "out of memory: lower --batch"),
    (lambda: MemoryError(), "out of memory: lower --batch"),
    (lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), "the GPU ran out of memory"),
], ids=["host allocator", "python", "gpu"])
def test_running_out_of_memory_is_one_line(tmp_path, assets, monkeypatch, error, says):
    from cartoongan.pipelines import sample

    def exhausted(*args, **kwargs):
        raise error()
    monkeypatch.setattr(sample, "sample_checkpoints", exhausted)
    line = error_line(runner.invoke(app, ["sample", str(assets["a"]), "--outdir", str(tmp_path / "o")]))
    assert says in line


def test_other_runtime_errors_are_not_called_out_of_memory(tmp_path, assets, monkeypatch):
    from cartoongan.pipelines import sample

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")
    monkeypatch.setattr(sample, "sample_checkpoints", broken)
    res = runner.invoke(app, ["sample", str(assets["a"]), "--outdir", str(tmp_path / "o")])
    assert isinstance(res.exception, RuntimeError) and "a bug" in str(res.exception)


def test_a_seed_range_of_billions_is_refused_at_once(tmp_path, assets):
    res = runner.invoke(app, ["sample", str(assets["a"]), "--seeds", "0-4294967295", "--outdir", str(tmp_path / "o")])
    assert res.exit_code == 2 and "more than 100000 seeds" in " ".join(res.output.split()), res.output


@pytest.mark.parametrize("seeds", ["\u0663", "1-\u0663", "\uff17"])
def test_seeds_are_ascii_digits_only(tmp_path, assets, seeds):
    """int() reads Arabic-Indic 3 and fullwidth 7 as numbers: a pasted seed list in another script
    would quietly render seeds nobody typed."""
    res = runner.invoke(app, ["sample", str(assets["a"]), "--seeds", seeds, "--outdir", str(tmp_path / "o")])
    assert res.exit_code == 2 and "is not a seed or a range" in res.output and not (tmp_path / "o").exists()


def test_a_run_another_process_is_training_is_left_to_it(tmp_path, assets):
    """Two `--resume`s of one run would both train and overwrite each other's checkpoints and log:
    the second stops at once, naming the first; once that one has ended the run resumes."""
    import fcntl

    run = Path(shutil.copytree(assets["run"], tmp_path / "run"))
    with open(run / ".lock", "a+") as held:  # as a training process holds it (flock is per open file)
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.seek(0)
        held.truncate()
        held.write("4242\n")
        held.flush()
        before = snapshot(run)
        res = runner.invoke(app, ["pretrain", "--resume", str(run), "--iters", "3"])
        assert "is being trained by another process (pid 4242)" in error_line(res)
        assert len(res.output.strip().splitlines()) == 1, res.output  # no "resuming", no data loaded first
        assert snapshot(run) == before
    res = runner.invoke(app, ["pretrain", "--resume", str(run), "--iters", "3"])
    assert res.exit_code == 0, res.output
    assert load_checkpoint(run / "latest.pt")["cartoongan"]["step"] == 3


def test_a_run_training_before_its_first_checkpoint_is_not_taken_over(tmp_path, assets):
    """Before its first checkpoint a run in progress looks like a failed one (config.toml, log,
    samples): its lock tells them apart, before any data is read."""
    import fcntl

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text("")
    (run / "log.jsonl").write_text('{"step": 1}\n')
    with open(run / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        before = snapshot(run)
        res = runner.invoke(app, ["pretrain", "--data", str(assets["data"]), "--out", str(run), "--recipe", "tiny"])
        line = error_line(res)
        assert "is being trained by another process (pid 4242)" in line and "afresh" not in res.output
        assert "loading data" not in res.output and snapshot(run) == before


def test_an_unlistable_run_folder_is_not_taken_for_an_unsaved_run(tmp_path, monkeypatch):
    from cartoongan.train import run_dir

    (tmp_path / "config.toml").write_text("")
    assert run_dir.holds_unsaved_run(tmp_path)

    def unlistable(folder):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(run_dir, "visible_entries", unlistable)
    assert not run_dir.holds_unsaved_run(tmp_path)  # check_fresh_dir then says it cannot be listed


def test_a_source_with_nan_weights_is_refused_before_training(tmp_path, assets):
    def poison(c):
        next(iter(c["g_ema"].values())).fill_(float("nan"))
    source = _edit(assets["a"], tmp_path, poison)
    out = tmp_path / "run"
    line = error_line(runner.invoke(app, ["finetune", "--source", str(source), "--data", str(assets["data"]),
                                          "--out", str(out), "--recipe", "tiny", "--iters", "1"]))
    assert "generator 'g_ema' holds NaN or inf weights" in line and str(source) in line
    assert not (out / "latest.pt").exists()
    # rendering it would write black pictures with exit 0
    line = error_line(runner.invoke(app, ["sample", str(source), "--outdir", str(tmp_path / "o")]))
    assert "holds NaN or inf weights" in line and not (tmp_path / "o").exists()
    # a NaN discriminator is refused as it is built, like a generator
    def poison_d(c):
        next(iter(c["d"].values())).fill_(float("nan"))
    source = _edit(assets["a"], tmp_path, poison_d)
    line = error_line(runner.invoke(app, ["finetune", "--source", str(source), "--data", str(assets["data"]),
                                          "--out", str(out), "--recipe", "tiny", "--iters", "1"]))
    assert "discriminator 'd' holds NaN or inf weights" in line and str(source) in line


def test_an_image_passed_as_the_dataset_is_called_a_file_not_missing(tmp_path, assets):
    line = error_line(runner.invoke(app, ["pretrain", "--data", str(assets["photo"]), "--out", str(tmp_path / "r"),
                                          "--recipe", "tiny", "--iters", "1"]))
    assert "is a file, not a dataset" in line and "not found" not in line
    assert f"(e.g. {assets['photo'].parent})" in line


def test_a_checkpoint_passed_as_the_dataset_gets_no_folder_suggested(tmp_path, assets):
    line = error_line(runner.invoke(app, ["finetune", "--source", str(assets["a"]), "--data", str(assets["a"]),
                                          "--out", str(tmp_path / "r"), "--recipe", "tiny", "--iters", "1"]))
    assert "is a file, not a dataset" in line and "e.g." not in line


@pytest.mark.parametrize("argv,says", [
    (["finetune", "--freeze-sg", "x"], "'--freeze-sg'"),
    (["sample"], "Missing argument"),
    (["sample", "x.pt", "--seeds"], "Option '--seeds' requires an argument (see `cartoongan sample --help`)"),
    (["data", "synth", "--n"], "(see `cartoongan data synth --help`)"),
    (["sampel", "a.pt"], "No such command 'sampel'"),
    (["data", "synth", "--n", "2", "--bogus"], "--bogus"),
    (["pretrain", "--lr", "nan", "--data", "d", "--out", "o", "--recipe", "tiny"], "--lr ([train] lr) must be a finite"),
])
def test_usage_errors_are_one_line_that_points_at_help(tmp_path, argv, says):
    res = runner.invoke(app, argv)
    line = error_line(res, 2)
    assert says in line and len(res.output.strip().splitlines()) == 1, res.output
    assert "--lr" in argv or line.endswith("--help`)")


@pytest.mark.parametrize("argv", [[], ["data"]])
def test_a_group_without_a_command_shows_its_help(argv):
    res = runner.invoke(app, argv)
    assert "Usage:" in res.output and "Commands" in res.output and "error:" not in res.output


# ---- values no real use needs, refused at once (before any work) -------------------------------
def _nan_checkpoint(t: Path, assets) -> Path:
    ckpt = load_checkpoint(assets["a"])
    ckpt["g_ema"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in ckpt["g_ema"].items()}
    return save_checkpoint(t / "nan.pt", ckpt)


REFUSED = {  # argv (from tmp_path and assets), exit code, words of the line
    "a training seed past 32 bits": (lambda t, a: ["pretrain", "--data", str(a["data"]), "--out", str(t / "r"),
                                                    "--recipe", "tiny", "--seed", "99999999999999999999"],
                                     2, "--seed ([train] seed) must be in [0, 2**32 - 1]"),
    "a synth seed past 32 bits": (lambda t, a: ["data", "synth", "--domain", "cartoon", "--n", "1", "--seed", str(2**32),
                                                "--out", str(t / "s")], 2, "'--seed'"),
    "a synth size of 1e12": (lambda t, a: ["data", "synth", "--domain", "cartoon", "--n", "1", "--size", "1000000000000",
                                           "--out", str(t / "s")], 2, "'--size'"),
    "a synth count of 1e12": (lambda t, a: ["data", "synth", "--domain", "cartoon", "--n", "1000000000000",
                                            "--out", str(t / "s")], 2, "'--n'"),
    "a prepare size of 1e12": (lambda t, a: ["data", "prepare", str(a["data"]), "--size", "1000000000000",
                                             "--out", str(t / "p")], 2, "'--size'"),
    "an interpolation of a million frames": (lambda t, a: ["sample", str(a["a"]), "--seeds", "0-999", "--interpolate",
                                                           "1000", "--outdir", str(t / "o")], 2, "at most 5000"),
    "a projected w that is a plain .npy": (lambda t, a: (np.save(t / "w.npy", np.zeros((1, 4, 32))),
                                                         ["sample", str(a["a"]), "--projected-w", str(t / "w.npy"),
                                                          "--outdir", str(t / "o")])[1], 1, "not a projected_w.npz"),
    "an empty --configs": (lambda t, a: ["bench", "--configs", ","], 2, "names no config"),
    "an empty path": (lambda t, a: ["pretrain", "--data", str(a["data"]), "--out", "", "--recipe", "tiny"],
                      2, "empty string"),
    "--n-eval 1 for FID": (lambda t, a: ["ablation", "--out", str(t / "ab"), "--n-eval", "1"], 2, "--n-eval 1"),
    "convert of a .pt without -o": (lambda t, a: ["convert", str(a["a"])], 2, "already ends in .pt"),
    "export of NaN weights": (lambda t, a: ["export", str(_nan_checkpoint(t, a)), "-o", str(t / "x.pt")],
                              1, "holds NaN or inf weights"),
    "demo from a damaged source": (lambda t, a: (Path(t / "bad.pt").write_bytes(b"PK\x03\x04 cut"),
                                                 ["demo", "--out", str(t / "demo"), "--source", str(t / "bad.pt")])[1],
                                   1, "bad.pt"),
    "align -o a folder": (lambda t, a: ["align", str(a["photo"]), "-o", str(t)], 1, "aligned.png"),
    "metrics of a missing second set": (lambda t, a: ["metrics", str(a["data"]), str(t / "none")], 1, "not found"),
    "a pretrain batch of 1e8": (lambda t, a: ["pretrain", "--data", str(a["data"]), "--out", str(t / "r"),
                                              "--recipe", "tiny", "--batch", str(10**8)],
                                2, "--batch ([train] batch) must be <= 100000, got 100000000"),
    "a finetune batch of 1e8": (lambda t, a: ["finetune", "--source", str(a["a"]), "--data", str(a["data"]),
                                              "--out", str(t / "r"), "--recipe", "tiny", "--batch", str(10**8)],
                                2, "--batch ([train] batch) must be <= 100000"),
    "a recipe batch of 1e300": (lambda t, a: ((t / "r.toml").write_text("[train]\nbatch = 1e300\n"),
                                              ["pretrain", "--data", str(a["data"]), "--out", str(t / "r"),
                                               "--recipe", str(t / "r.toml")])[1], 2, "must be <= 100000"),
    "--iters 1e300": (lambda t, a: ["pretrain", "--data", str(a["data"]), "--out", str(t / "r"), "--recipe", "tiny",
                                    "--iters", "1" + "0" * 300], 2, "--iters ([train] iters) must be <= 10**9"),
    "a CPU bench batch no memory holds": (lambda t, a: ["bench", "--device", "cpu", "--configs", "tiny", "--batch",
                                                         str(10**8)], 2, "--batch 100000000 needs over"),
    "a CPU bench --profile batch no memory holds": (lambda t, a: ["bench", "--device", "cpu", "--configs", "demo64",
                                                                   "--profile", "--batch", str(10**8)],
                                                    2, "at 64 px on the CPU"),
    "a CPU bench --flops batch no memory holds": (lambda t, a: ["bench", "--device", "cpu", "--configs", "tiny",
                                                                 "--flops", "--batch", str(10**8)], 2, "needs over"),
    "a sample truncation of 1e308": (lambda t, a: ["sample", str(a["a"]), "--trunc", "1e308", "--outdir", str(t / "o")],
                                     2, "from 0 to 10"),
    "a sample truncation of 11": (lambda t, a: ["sample", str(a["a"]), "--trunc", "11", "--outdir", str(t / "o")],
                                  2, "got 11.0"),
    "a metrics truncation of 1e38": (lambda t, a: ["metrics", str(a["data"]), str(a["a"]), "--trunc", "1e38"],
                                     2, "from 0 to 10"),
    "an edit truncation of 1e308": (lambda t, a: ["edit", str(a["a"]), "--factor", str(t / "f.pt"), "--trunc", "1e308",
                                                  "--outdir", str(t / "o")], 2, "from 0 to 10"),
    "a projection of a billion steps": (lambda t, a: ["project", str(a["photo"]), "--source", str(a["a"]), "--steps",
                                                      "1000000000", "--outdir", str(t / "o")], 2, "'--steps'"),
    "--resume of the run's latest.pt": (lambda t, a: ["pretrain", "--resume", str(a["run"] / "latest.pt"), "--iters",
                                                       "5"], 2, "is a file: pass the run folder that holds it"),
    "--resume of a missing folder": (lambda t, a: ["pretrain", "--resume", str(t / "nope"), "--iters", "5"],
                                     2, "no such run folder"),
    "export under a safetensors name": (lambda t, a: ["export", str(a["a"]), "-o", str(t / "g.safetensors")], 1,
                                        "names a safetensors file"),
    "a folder with no image at all": (lambda t, a: ((t / "txt").mkdir(), (t / "txt" / "a.txt").write_text("x"),
                                                    ["data", "prepare", str(t / "txt"), "--out", str(t / "p")])[2],
                                      1, "no readable images"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_impossible_values_are_refused_before_any_work(tmp_path, assets, case):
    make_argv, code, words = REFUSED[case]
    argv = make_argv(tmp_path, assets)
    before = snapshot(tmp_path)
    res = runner.invoke(app, argv)
    line = error_line(res, code)
    assert words in line and len(res.output.strip().splitlines()) == 1, res.output  # no progress bar first
    assert snapshot(tmp_path) == before  # nothing written: no run, no dataset, no demo data


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_a_cpu_batch_no_memory_holds_is_refused_before_any_work(tmp_path, assets, monkeypatch, command):
    """The host memory check, with a host of 1 GiB free: the batch ceiling comes long before any
    real host runs out."""
    from cartoongan.train import memory

    monkeypatch.setattr(memory, "host_memory_available", lambda: 2**30)
    source = ["--source", str(assets["a"])] if command == "finetune" else []
    argv = [command, *source, "--data", str(assets["data"]), "--out", str(tmp_path / "r"), "--recipe", "tiny",
            "--batch", "5000"]
    res = runner.invoke(app, argv)
    line = error_line(res, 2)
    size = 16 if command == "finetune" else 32  # a finetune takes its source's size
    assert "--batch 5000 needs over" in line and f"of memory for one training step at {size} px" in line
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


@pytest.mark.parametrize("command,name", [("sample", "seed0000.png"), ("sample", "b/seed0001.png"),
                                          ("project", "proj.png")])
def test_an_input_hard_linked_under_an_output_name_is_kept(tmp_path, assets, command, name):
    """The same file by another name: a hard link in --outdir to the checkpoint (sample) or the
    photo (project) the command reads, at a path it would write."""
    outdir = tmp_path / "out"
    (outdir / "b").mkdir(parents=True)
    src = shutil.copy(assets["a"] if command == "sample" else assets["photo"], tmp_path / "input")
    os.link(src, outdir / name)
    before = snapshot(tmp_path)
    argv = (["sample", str(src), str(assets["b"]), "--seeds", "0-1", "--outdir", str(outdir)] if command == "sample"
            else ["project", str(src), "--source", str(assets["a"]), "--no-align", "--steps", "1", "--loss", "mse",
                  "--outdir", str(outdir)])
    line = error_line(runner.invoke(app, argv))
    assert "would overwrite the input" in line and name in line and snapshot(tmp_path) == before


@pytest.mark.parametrize("name", ["grid.png", "seed0000.png"])
def test_sample_never_overwrites_its_checkpoint(tmp_path, assets, name):
    folder = tmp_path / "sx"
    folder.mkdir()
    shutil.copy(assets["a"], folder / name)  # a checkpoint under an output's name
    before = snapshot(folder)
    line = error_line(runner.invoke(app, ["sample", str(folder / name), "--seeds", "0", "--outdir", str(folder)]))
    assert "would overwrite the input" in line and snapshot(folder) == before


def test_plot_skips_values_no_axis_can_hold(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"step": 1, "loss_g": -1e308, "loss_d": 1.0}\n'
                                        '{"step": 2, "loss_g": 1e308, "loss_d": 0.5}\n'
                                        '{"step": 3, "loss_g": 0.7, "loss_d": NaN}\n')
    res = runner.invoke(app, ["plot", str(tmp_path)])
    assert res.exit_code == 0, res.output
    with Image.open(tmp_path / "curves.png") as img:
        assert img.size[0] > 100


# ---- images and archives as they come ----------------------------------------------------------
def test_exif_orientation_is_applied_to_dataset_images(tmp_path, monkeypatch):
    """A phone's portrait JPEG is stored sideways with an Orientation tag: trained on upright."""
    from cartoongan.data.dataset import load_dataset

    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[:16, :16] = (255, 0, 0)  # red top-left as stored; Orientation 6 shows it top-right
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "d").mkdir()
    Image.fromarray(pixels).save(tmp_path / "d" / "a.jpg", exif=exif, quality=95)
    image = load_dataset(tmp_path / "d", 32).images[0].permute(1, 2, 0).numpy().astype(int)
    assert image[4, 28, 0] > 200 and image[4, 4, 0] < 60  # red now top-right
    # damaged EXIF (reading it raises, as struct.error does for a bad tag value): the picture as stored
    import struct

    def damaged(self, *a):
        raise struct.error("required argument is not an integer")

    monkeypatch.setattr(Image.Exif, "get", damaged)
    image = load_dataset(tmp_path / "d", 32).images[0].permute(1, 2, 0).numpy().astype(int)
    assert image[4, 4, 0] > 200


def test_metrics_size_a_set_by_its_common_side_not_its_first_file(tmp_path, monkeypatch):
    from cartoongan.data import dataset
    from cartoongan.metrics.suite import load_images

    blob_images(tmp_path / "d", n=3, size=32)
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "d" / "0.png")  # sorts first
    walks = []
    listing = dataset._every_listed
    monkeypatch.setattr(dataset, "_every_listed", lambda root: walks.append(root) or listing(root))
    assert load_images(tmp_path / "d", None, torch.device("cpu")).images.shape == (4, 32, 32, 3)
    assert len(walks) == 1  # the size is found in the same listing the images load from


def test_zip_members_that_cannot_be_read_are_skipped_and_named(tmp_path, monkeypatch):
    from cartoongan.data import dataset

    blob_images(tmp_path / "d", n=3, size=24)
    with zipfile.ZipFile(tmp_path / "d.zip", "w") as zf:
        for p in sorted((tmp_path / "d").glob("*.png")):
            zf.write(p, p.name)
        zf.writestr("huge.png", b"\0" * 4096)
    names = sorted(p.name for p in (tmp_path / "d").glob("*.png"))
    real_read = zipfile.ZipFile.read
    monkeypatch.setattr(dataset, "MAX_MEMBER_BYTES", 2048)  # huge.png inflates past it: never read

    def read(self, member, pwd=None):
        name = getattr(member, "filename", member)  # read by entry (members may share a name)
        assert name != "huge.png"
        if name == names[0]:
            raise RuntimeError(f"File {name!r} is encrypted, password required for extraction")
        return real_read(self, member, pwd)

    monkeypatch.setattr(zipfile.ZipFile, "read", read)
    warnings = []
    reporter = type("R", (), {"warn": lambda self, m: warnings.append(m),
                              "progress": lambda self, *a, **k: __import__("contextlib").nullcontext(
                                  type("B", (), {"advance": lambda self, *a, **k: None})())})()
    data = dataset.load_dataset(tmp_path / "d.zip", 16, reporter)
    assert len(data) == 2 and "huge.png" in warnings[0] and names[0] in warnings[0]
    warnings.clear()  # and pictures far smaller than the training size are named as upscaled
    monkeypatch.setattr(zipfile.ZipFile, "read", real_read)
    data = dataset.load_dataset(tmp_path / "d", 128, reporter)
    assert len(data) == 3 and warnings == [f"3 image(s) in {tmp_path / 'd'} are under a quarter of 128 px and "
                                           f"were upscaled: {', '.join(names)}"]


def test_a_source_whose_g_and_g_ema_differ_is_refused_before_training(tmp_path, assets):
    ckpt = load_checkpoint(assets["a"])
    other = load_checkpoint(tiny_ckpt(tmp_path / "wide.pt", 3, channel_max=16))
    ckpt["g"] = other["g_ema"]
    ckpt.pop("cartoongan")  # as rosinality's files: each network's architecture read from its shapes
    save_checkpoint(tmp_path / "mixed.pt", ckpt)
    res = runner.invoke(app, ["finetune", "--source", str(tmp_path / "mixed.pt"), "--data", str(assets["data"]),
                              "--out", str(tmp_path / "f"), "--recipe", "tiny", "--iters", "1"])
    assert "'g' and 'g_ema' are different networks" in error_line(res) and not (tmp_path / "f").exists()


# ---- damaged .npy files, and flags that would do nothing ------------------------------------
def _npy_faults(tmp_path: Path) -> dict[str, Path]:
    """A zero-byte file, a truncated array, a header claiming ~37 TB, and an .npz, each as `.npy`."""
    whole = tmp_path / "whole.npy"
    np.save(whole, np.zeros((4, 6, 32), np.float32))
    faults = {name: tmp_path / f"{name}.npy" for name in ("empty", "truncated", "huge", "npz")}
    faults["empty"].write_bytes(b"")
    faults["truncated"].write_bytes(whole.read_bytes()[:200])
    with open(faults["huge"], "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 18, 512)})
        fh.write(bytes(64))
    np.savez(tmp_path / "w.npz", w=np.zeros((68, 2)))
    shutil.copy(tmp_path / "w.npz", faults["npz"])
    return faults


NPY_MESSAGES = {"empty": "is empty (0 bytes)", "truncated": "is truncated or damaged", "huge": "is truncated or damaged",
                "npz": "is a NumPy .npz archive"}


@pytest.mark.parametrize("fault", list(NPY_MESSAGES))
@pytest.mark.parametrize("command", ["info", "align"])
def test_damaged_npy_files_are_named_for_what_is_wrong(tmp_path, assets, command, fault):
    path = _npy_faults(tmp_path)[fault]
    argv = (["info", str(path)] if command == "info" else
            ["align", str(assets["photo"]), "-o", str(tmp_path / "a.png"), "--landmarks", str(path)])
    line = error_line(runner.invoke(app, argv))
    assert str(path) in line and NPY_MESSAGES[fault] in line, line
    assert not (tmp_path / "a.png").exists()


def test_an_npz_passed_as_a_checkpoint_is_named_as_one(tmp_path):
    path = _w(tmp_path, np.zeros((1, 6, 32), np.float32))
    line = error_line(runner.invoke(app, ["info", str(path)]))
    assert "NumPy .npz archive" in line and "--projected-w" in line and "truncated" not in line


@pytest.mark.parametrize("extra,named", [(["--seeds", "0-3"], "--seeds"), (["--trunc", "0.5"], "--trunc"),
                                         (["--interpolate", "3", "--seeds", "1"], "--seeds, --interpolate")])
def test_sample_flags_that_projected_w_ignores_are_refused(tmp_path, assets, extra, named):
    path = _w(tmp_path, np.zeros((1, 6, 32), np.float32))
    res = runner.invoke(app, ["sample", str(assets["a"]), "--projected-w", str(path), "--outdir", str(tmp_path / "o"),
                              *extra])
    assert error_line(res, 2).startswith(f"error: {named} cannot be used with --projected-w")
    assert not (tmp_path / "o").exists()


def test_flags_that_would_do_nothing_in_project_and_align_are_refused(tmp_path, assets):
    res = runner.invoke(app, ["project", str(assets["photo"]), "--source", str(assets["a"]), "--outdir",
                              str(tmp_path / "p"), "--steps", "1", "--no-align", "--loss", "mse",
                              "--lpips-weights", str(assets["a"])])
    assert "--lpips-weights does nothing with --loss mse" in error_line(res, 2) and not (tmp_path / "p").exists()
    np.save(tmp_path / "lm.npy", np.zeros((68, 2)))
    res = runner.invoke(app, ["align", str(assets["photo"]), "-o", str(tmp_path / "a.png"), "--landmarks",
                              str(tmp_path / "lm.npy"), "--all-faces"])
    assert "--all-faces cannot be used with --landmarks" in error_line(res, 2) and not (tmp_path / "a.png").exists()


def test_a_pickled_tensor_reaching_past_its_storage_is_refused_not_grown(tmp_path):
    import collections
    import pickle
    import warnings

    with warnings.catch_warnings():  # TypedStorage is deprecated, and it is what old pickles hold
        warnings.simplefilter("ignore")
        storage = torch.zeros(4).storage().__reduce__()

    class Storage:
        def __reduce__(self):
            return storage

    class Tensor:  # offset 10**9 into 4 values: torch would grow the storage to 4 GB to fit it
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (Storage(), 10**9, (4,), (1,), False, collections.OrderedDict())

    with open(tmp_path / "past.pkl", "wb") as fh:
        pickle.dump({"G_ema": Tensor()}, fh)
    line = error_line(runner.invoke(app, ["info", str(tmp_path / "past.pkl")]))
    assert "reaches past its storage of 4 values" in line


def test_swapping_a_generator_with_itself_is_refused(tmp_path, assets):
    shutil.copy(assets["b"], tmp_path / "copy.pt")  # the same weights under another name, too
    for target in (assets["b"], tmp_path / "copy.pt"):
        res = runner.invoke(app, ["swap", str(assets["b"]), str(target), "-o", str(tmp_path / "s.pt")])
        assert "hold the same generator" in error_line(res, 2) and not (tmp_path / "s.pt").exists()
    invoke = runner.invoke(app, ["swap", str(assets["b"]), str(assets["a"]), "-o", str(tmp_path / "s.pt")])
    assert invoke.exit_code == 0 and (tmp_path / "s.pt").exists(), invoke.output


def test_interpolating_one_seed_is_refused(tmp_path, assets):
    """The CLI refuses it (a GIF of one frame repeated); the demo's library path, which may render
    one seed, is not the CLI's and keeps working (its Ctrl-C tests)."""
    res = runner.invoke(app, ["sample", str(assets["a"]), "--seeds", "5", "--interpolate", "4",
                              "--outdir", str(tmp_path / "o")])
    assert "--seeds gives one (5)" in error_line(res, 2) and not (tmp_path / "o").exists()
    res = runner.invoke(app, ["sample", str(assets["a"]), "--seeds", "5,5", "--interpolate", "4",  # a still GIF
                              "--outdir", str(tmp_path / "o")])
    assert "--seeds gives one (5, 2 times)" in error_line(res, 2) and not (tmp_path / "o").exists()
    res = runner.invoke(app, ["sample", str(assets["a"]), "--seeds", "5-6", "--interpolate", "2",
                              "--outdir", str(tmp_path / "o")])
    assert res.exit_code == 0 and (tmp_path / "o" / "interpolation.gif").is_file(), res.output


@pytest.fixture
def fifo(tmp_path):
    """A named pipe, and a watchdog that opens its other end once anything reads it (so a reader that
    blocks is released with EOF and the test fails instead of hanging); yields (path, was_read)."""
    import threading

    path = tmp_path / "pipe.pt"
    os.mkfifo(path)
    done, read = threading.Event(), []

    def watch():
        while not done.wait(0.05):
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # ENXIO until a reader opens it
                read.append(True)
            except OSError:
                pass

    threading.Thread(target=watch, daemon=True).start()
    yield path, read
    done.set()


@pytest.mark.parametrize("argv,expected", [
    (lambda p, a, t: ["info", p], "is a named pipe (FIFO), not a checkpoint file"),
    (lambda p, a, t: ["sample", p, "--outdir", t], "is a named pipe (FIFO), not a checkpoint file"),
    (lambda p, a, t: ["swap", a["a"], p, "-o", t + ".pt"], "is a named pipe (FIFO), not a checkpoint file"),
    (lambda p, a, t: ["convert", p, "-o", t + ".pt"], "is a named pipe (FIFO), not a checkpoint file"),
    (lambda p, a, t: ["pretrain", "--data", p, "--out", t, "--recipe", "tiny"], "is a named pipe (FIFO), not a dataset"),
    (lambda p, a, t: ["metrics", p, a["data"]], "is a named pipe (FIFO), not a dataset"),
    (lambda p, a, t: ["pretrain", "--data", a["data"], "--out", t, "--recipe", p], "is a named pipe (FIFO), not a TOML"),
    (lambda p, a, t: ["project", "--source", a["a"], p, "--no-align", "--outdir", t],
     "is a named pipe (FIFO), not an image file"),
    (lambda p, a, t: ["align", p, "-o", t + ".png"], "is a named pipe (FIFO), not an image file"),
    (lambda p, a, t: ["sample", a["a"], "--projected-w", p, "--outdir", t], "is a named pipe (FIFO), not a projected_w"),
], ids=["info", "sample", "swap", "convert", "pretrain", "metrics", "recipe", "project", "align", "projected-w"])
def test_a_named_pipe_is_refused_unread(tmp_path, assets, fifo, argv, expected):
    """A FIFO (or a device: /dev/null was called 'a folder') in a file's place: opening it to read
    would wait for a writer forever. Each reader names what it is before opening it."""
    path, read = fifo
    args = [str(x) for x in argv(str(path), assets, str(tmp_path / "out"))]
    line = error_line(runner.invoke(app, args), 2 if "TOML" in expected else 1)  # a recipe is a usage error
    assert expected in line and str(path) in line, line
    assert not read and not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [
    lambda a, n: ["sample", a["a"], "--seeds", "0", "--outdir", n],
    lambda a, n: ["sample", n + ".pt"],
    lambda a, n: ["swap", a["a"], a["b"], "-o", n + ".pt"],
    lambda a, n: ["pretrain", "--data", a["data"], "--out", n, "--recipe", "tiny"],
    lambda a, n: ["pretrain", "--data", n, "--out", n[:20], "--recipe", "tiny"],
    lambda a, n: ["metrics", a["data"], n],
    lambda a, n: ["align", n + ".png", "-o", "face.png"],
    lambda a, n: ["plot", n],
], ids=["sample --outdir", "sample CKPT", "swap -o", "pretrain --out", "pretrain --data", "metrics", "align", "plot"])
def test_a_name_too_long_for_the_filesystem_is_one_line(tmp_path, assets, argv, monkeypatch):
    """Path.exists() raises ENAMETOOLONG (it swallows only 'not found'), so every check that asked
    about such a path ended in a traceback."""
    monkeypatch.chdir(tmp_path)
    name = "x" * 300
    line = error_line(runner.invoke(app, [str(x) for x in argv(assets, name)]))
    assert "a name too long for the filesystem (its longest part is" in line and "choose a shorter name" in line, line
    assert list(tmp_path.iterdir()) == []


def test_zip_members_that_share_a_name_are_each_read(tmp_path):
    """Reading by name gave the last of them every time: three copies of one face, no word said."""
    import warnings as py_warnings

    from cartoongan.data.dataset import load_dataset

    with zipfile.ZipFile(tmp_path / "dup.zip", "w") as zf, py_warnings.catch_warnings():
        py_warnings.simplefilter("ignore")  # zipfile's "Duplicate name" note
        for shade in (0, 128, 255):
            buf = io.BytesIO()
            Image.new("RGB", (16, 16), (shade,) * 3).save(buf, format="PNG")
            zf.writestr("faces/x.png", buf.getvalue())
    data = load_dataset(tmp_path / "dup.zip", 16)
    assert sorted(int(img.float().mean()) for img in data.images) == [0, 128, 255]


def test_writes_never_touch_the_umask(tmp_path, monkeypatch):
    """Reading the umask means setting it to 0 and back, which every write did: two PngWriter threads
    interleaving could leave the process at 0 (every later file world-writable). It is read once."""
    from cartoongan import outputs

    calls = []
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or 0o022)
    with outputs.atomic_write(tmp_path / "a.bin") as fh:
        fh.write(b"x")
    assert calls == [] and (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o666 & ~outputs._UMASK


@pytest.mark.parametrize("argv, what", [
    (["info", "LINK"], "checkpoint"),
    (["swap", "LINK", "{a}"], "checkpoint"),
    (["sample", "{a}", "--projected-w", "LINK", "--outdir", "{out}"], "projected w"),
    (["project", "LINK", "--source", "{a}", "--outdir", "{out}"], "photo"),
    (["pretrain", "--recipe", "tiny", "--data", "LINK", "--out", "{out}"], "dataset"),
    (["pretrain", "--recipe", "LINK", "--data", "{data}", "--out", "{out}"], "recipe"),
    (["metrics", "{data}", "LINK"], "checkpoint"),  # by its name, a model
    (["plot", "LINK"], "run folder"),
    (["dualstyle", "{photo}", "--model", "LINK", "--style-id", "0", "--outdir", "{out}"], "DualStyleGAN style folder"),
])
@pytest.mark.parametrize("link", ["dangling", "loop"])
def test_a_link_that_leads_nowhere_is_named_as_one(tmp_path, assets, argv, what, link):
    """`ls` lists a link to a drive that is not mounted, so "dataset not found: faces" sent people
    looking for a typo; a link to a well-known model got "download it" instead."""
    name = tmp_path / "ffhq256.pt"  # a known name: the download hint would be the wrong fix
    if link == "dangling":
        name.symlink_to(tmp_path / "unmounted" / "ffhq256.pt")
        says = f"it is a link to {tmp_path / 'unmounted' / 'ffhq256.pt'}, which does not exist"
    else:
        (tmp_path / "other").symlink_to(name)
        name.symlink_to(tmp_path / "other")
        says = "it is a loop of symbolic links"
    fill = {"a": assets["a"], "out": tmp_path / "out", "data": assets["data"], "photo": assets["photo"]}
    argv = [str(name) if a == "LINK" else a.format(**fill) for a in argv]
    res = runner.invoke(app, argv)
    line = " ".join(res.output.split())
    assert res.exit_code in (1, 2) and res.output.count("\n") == 1, res.output
    assert f"{what} not found: {name}: {says}" in line and "download" not in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [
    ["pretrain", "--recipe", "tiny", "--data", "{data}", "--out", "LOOP"],
    ["data", "prepare", "{data}", "--size", "8", "--out", "LOOP"],
    ["bench", "--reference", "LOOP", "--configs", "r64"],
])
def test_a_loop_of_links_where_a_folder_goes_is_one_line(tmp_path, assets, argv):
    """Path.resolve() raises a bare RuntimeError on a loop of links (Python 3.11): the output
    folder checks and bench's checkout lookup ended in a traceback."""
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "back")
    (tmp_path / "back").symlink_to(loop)
    res = runner.invoke(app, [str(loop) if a == "LOOP" else a.format(data=assets["data"]) for a in argv])
    assert res.exit_code in (1, 2) and res.output.count("\n") == 1, res.output
    assert "a loop of symbolic links" in res.output and str(loop) in " ".join(res.output.split()), res.output


def test_a_pipe_or_device_under_an_images_name_in_a_dataset_is_named_unread(tmp_path):
    """A FIFO or a link to a device among a set's pictures was left out without a word (every
    other unreadable file is named); it is named now, and still never opened (a FIFO would wait)."""
    from cartoongan.data.dataset import image_sources, load_dataset
    from cartoongan.report import ListReporter

    data = blob_images(tmp_path / "data", n=3)
    os.mkfifo(data / "pipe.png")
    (data / "sub").mkdir()
    (data / "sub" / "dev.jpg").symlink_to("/dev/zero")  # reading it would never end either
    assert {name for name, _ in image_sources(data)} >= {"pipe.png", "sub/dev.jpg"}
    reporter = ListReporter()
    got = load_dataset(data, 8, reporter)
    assert len(got.names) == 3 and sorted(got.skipped) == ["pipe.png", "sub/dev.jpg"]
    assert any("skipped 2 unreadable image(s)" in w and "pipe.png" in w and "sub/dev.jpg" in w
               for w in reporter.warnings), reporter.warnings


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
@pytest.mark.parametrize("command", ["export", "sample"])
def test_an_output_on_a_virtual_file_system_is_named_as_such_not_as_missing(tmp_path, command):
    """`export -o /proc/x.pt` said "/proc: No such file or directory" of a folder that exists."""
    src = save_checkpoint(tmp_path / "g.pt", generator_checkpoint(Generator(16, **TINY)))
    args = (["export", str(src), "-o", "/proc/x.pt"] if command == "export"
            else ["sample", str(src), "--seeds", "0", "--outdir", "/proc/cartoongan-x"])
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and "No such file" not in res.output
    assert "/proc: its file system takes no new files" in " ".join(res.output.split())


def test_a_lock_whose_holder_ended_between_our_open_and_our_lock_is_taken_again(tmp_path, monkeypatch):
    """The lock file goes at the end of a run, while still held. A run that had opened it just
    before locked the unlinked file, and a third run then locked a fresh one: two writers. The
    lock taken must be the one the name leads to."""
    from cartoongan import outputs
    from cartoongan.errors import OutputError

    out = tmp_path / "faces"
    real = outputs.lock_with_pid
    calls = []

    def holder_ends_first(fh):
        if not calls:  # the first holder unlinks its lock file as we are about to lock it
            os.unlink(fh.name)
        calls.append(fh.name)
        return real(fh)

    monkeypatch.setattr(outputs, "lock_with_pid", holder_ends_first)
    with outputs.sole_writer(out, "data synth"):
        assert len(calls) == 2  # retried on the file the name now leads to
        monkeypatch.setattr(outputs, "lock_with_pid", real)
        with pytest.raises(OutputError, match="being written by another process"):
            with outputs.sole_writer(out, "data synth"):
                pass
    assert not list(tmp_path.glob(".*lock"))


def test_an_out_name_near_the_name_limit_still_gets_its_lock(tmp_path):
    """`data synth --out` of 241-255 bytes (legal) was refused: the lock beside it,
    .NAME.writing.lock, passed 255 bytes; the line named neither cause nor fix."""
    from cartoongan import outputs
    from cartoongan.errors import OutputError

    out = tmp_path / ("b" * 252)
    with outputs.sole_writer(out, "data synth"):
        with pytest.raises(OutputError, match="being written by another process"):
            with outputs.sole_writer(out, "data synth"):
                pass
    assert not list(tmp_path.glob(".*lock"))
    res = runner.invoke(app, ["data", "synth", "--domain", "photo", "--n", "2", "--size", "8", "--out", str(out)])
    assert res.exit_code == 0 and len(list(out.glob("*.png"))) == 2, res.output
