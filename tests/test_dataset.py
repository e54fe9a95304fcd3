import re
import tracemalloc
from pathlib import Path

import numpy as np
import torch
import pytest
from PIL import Image

from cartoongan.data.dataset import load_dataset
from cartoongan.errors import DataError
from cartoongan.report import ListReporter


def _flat(path, rgb, side=24):
    Image.fromarray(np.full((side, side, 3), rgb, np.uint8)).save(path)


@pytest.fixture
def mixed(tmp_path):
    """a.png red, b.png corrupt, c.png green, d.png blue: the corrupt file sits between good ones."""
    root = tmp_path / "d"
    root.mkdir()
    _flat(root / "a.png", (255, 0, 0))
    (root / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(30))
    _flat(root / "c.png", (0, 255, 0))
    _flat(root / "d.png", (0, 0, 255))
    return root


def _colours(data):
    return [tuple(int(v) for v in img[:, 0, 0]) for img in data.images]


def test_each_image_stays_beside_its_name_past_a_skipped_file(mixed):
    data = load_dataset(mixed, 16)
    assert data.names == ["a.png", "c.png", "d.png"] and data.skipped == ["b.png"]
    assert data.images.shape == (3, 3, 16, 16) and data.images.is_contiguous()
    assert _colours(data) == [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def test_a_limit_counts_readable_images(mixed):
    data = load_dataset(mixed, 16, limit=2)
    assert data.names == ["a.png", "c.png"]
    assert _colours(data) == [(255, 0, 0), (0, 255, 0)]


def test_decoded_images_are_not_held_twice_while_loading(tmp_path, monkeypatch):
    # numpy reports its buffers to tracemalloc, torch does not: the old list-then-stack loader
    # traced the whole dataset twice over; decoding straight into one tensor traces ~one window of
    # images (4 a thread: 8 here, of 64)
    from cartoongan.data import dataset

    monkeypatch.setattr(dataset, "image_threads", lambda: 2)
    root = tmp_path / "d"
    root.mkdir()
    for i in range(64):
        _flat(root / f"{i:02d}.png", (i, 2 * i, 3 * i), side=64)
    tracemalloc.start()
    try:
        data = load_dataset(root, 64)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    dataset_bytes = data.images.numel()
    assert len(data) == 64
    assert peak < dataset_bytes / 2, f"traced {peak} bytes for a {dataset_bytes}-byte dataset"


def test_tiff_modes_and_a_dangling_link(tmp_path):
    """TIFF files count as images, in the modes scanners and tools write them (a float picture
    in [0, 1] is no black square); a link to a missing file is named as skipped, not dropped unseen."""
    root = tmp_path / "d"
    root.mkdir()
    grey = np.full((24, 24), 0.5, np.float32)
    Image.fromarray(grey).save(root / "float.tif")  # mode F
    Image.fromarray((grey * 65535).astype(np.uint16)).save(root / "deep.tiff")  # mode I;16
    Image.fromarray(np.full((24, 24, 3), 128, np.uint8)).convert("CMYK").save(root / "print.tif")
    Image.fromarray((grey * (2**31 - 1)).astype(np.int32)).save(root / "wide.tif")  # mode I, 32-bit: was white
    (root / "gone.png").symlink_to(tmp_path / "moved.png")
    reporter = ListReporter()
    data = load_dataset(root, 16, reporter)
    assert data.names == ["deep.tiff", "float.tif", "print.tif", "wide.tif"] and data.skipped == ["gone.png"]
    assert all(abs(int(img.float().mean()) - 127) <= 2 for img in data.images), [img.float().mean() for img in data.images]
    assert any("gone.png" in w for w in reporter.warnings), reporter.warnings


def test_a_dataset_the_host_cannot_hold_is_refused_before_decoding(mixed, monkeypatch):
    import cartoongan.data.dataset as dataset
    from cartoongan import hostmem

    decoded = []
    real = dataset.square_resize
    monkeypatch.setattr(dataset, "square_resize", lambda *a: decoded.append(1) or real(*a))
    monkeypatch.setattr(hostmem, "host_memory_available", lambda: 3 * 3 * 16 * 16 - 1)  # under 3 images of 16 px
    with pytest.raises(DataError, match=r"4 images at 16 px take 0\.0 GiB .* use a folder of 2 images or fewer"):
        load_dataset(mixed, 16)
    assert not decoded
    assert len(load_dataset(mixed, 16, limit=2)) == 2  # the first 2 fit


def test_a_training_run_folder_is_no_dataset(tmp_path):
    """`--data runs/x` used to train on (and `metrics` to score) the run's own sample grids."""
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(run / "samples" / "000004.png")
    (run / "config.toml").write_text("[train]\n")
    (run / "log.jsonl").write_text("")
    with pytest.raises(DataError, match="training run folder.*face images$"):
        load_dataset(run, 32)
    (run / "latest.pt").write_bytes(b"")
    with pytest.raises(DataError, match=f"pass its checkpoint {run / 'latest.pt'}"):
        load_dataset(run, 32)
    (run / "log.jsonl").unlink()  # an image folder that merely holds a config.toml is still one
    assert len(load_dataset(run, 32).images) == 1


def test_a_runs_samples_folder_is_no_dataset_either(tmp_path, monkeypatch):
    """`--data RUN/samples` (tab-completed) trained on the run's grids, and `metrics photos
    RUN/samples` scored them as faces; the run folder itself was refused. A folder below it (a
    `sample --outdir RUN/samples/eval`) or beside it (`RUN/faces`) is a set like any other."""
    run = tmp_path / "run"
    (run / "samples" / "eval").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(run / "samples" / "000004.png")
    Image.new("RGB", (32, 32)).save(run / "samples" / "eval" / "seed0000.png")
    (run / "config.toml").write_text("[train]\n")
    (run / "log.jsonl").write_text("")
    (run / "latest.pt").write_bytes(b"")
    with pytest.raises(DataError, match=f"{run / 'samples'} is inside the training run {run}, not a dataset .*"
                                        f"pass its checkpoint {run / 'latest.pt'}$"):
        load_dataset(run / "samples", 32)
    monkeypatch.chdir(run / "samples")
    with pytest.raises(DataError, match=f"is inside the training run {run}, not"):
        load_dataset(Path("."), 32)
    assert len(load_dataset(run / "samples" / "eval", 32).names) == 1
    (run / "faces").mkdir()
    Image.new("RGB", (32, 32)).save(run / "faces" / "a.png")
    assert len(load_dataset(run / "faces", 32).names) == 1
    assert len(load_dataset(run / "samples" / ".." / "faces", 32).names) == 1


def test_a_run_folder_inside_the_data_is_left_out_and_named(tmp_path):
    """`--data demo/` read the demo run's sample grids as faces, among the real images."""
    root = tmp_path / "demo"
    for sub in ("data/cartoon", "finetune/samples"):
        (root / sub).mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(root / "data" / "cartoon" / f"{i}.png")
    Image.new("RGB", (64, 64)).save(root / "finetune" / "samples" / "000004.png")
    (root / "finetune" / "config.toml").write_text("[train]\n")
    (root / "finetune" / "log.jsonl").write_text("")
    reporter = ListReporter()
    data = load_dataset(root, 32, reporter)
    assert sorted(data.names) == [f"data/cartoon/{i}.png" for i in range(3)]
    assert reporter.warnings == [f"left out the training run folder(s) inside {root} (finetune): their pictures "
                                 "are sample grids, not faces"]
    (root / "finetune" / "log.jsonl").unlink()  # no longer a run: its picture is data like any other
    assert len(load_dataset(root, 32, ListReporter()).names) == 4


def test_hidden_entries_and_macos_companions_are_no_pictures_of_the_set(tmp_path):
    """A zip made on a Mac holds __MACOSX/._N.png beside every N.png: they were each an 'unreadable
    image' in the warning. Hidden folders (.ipynb_checkpoints, .thumbnails, a staging folder) and
    hidden files are left out of folders and zips alike, without a word."""
    import zipfile

    folder = tmp_path / "set"
    (folder / ".thumbnails").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (16, 16), (60 * i, 90, 30)).save(folder / f"{i}.png")
        Image.new("RGB", (4, 4)).save(folder / ".thumbnails" / f"{i}.png")
        (folder / f"._{i}.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    with zipfile.ZipFile(tmp_path / "set.zip", "w") as zf:
        for i in range(3):
            zf.write(folder / f"{i}.png", f"set/{i}.png")
            zf.writestr(f"__MACOSX/set/._{i}.png", b"\x00\x05\x16\x07 AppleDouble")
            zf.writestr(f"set/.thumbnails/{i}.png", (folder / ".thumbnails" / f"{i}.png").read_bytes())
    for root, names in ((folder, ["0.png", "1.png", "2.png"]), (tmp_path / "set.zip", ["set/0.png", "set/1.png", "set/2.png"])):
        reporter = ListReporter()
        ds = load_dataset(root, 16, reporter)
        assert ds.names == names and reporter.warnings == [], (ds.names, reporter.warnings)
    hidden_root = tmp_path / ".cache" / "faces"  # a root that is itself hidden is the user's choice
    hidden_root.mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(hidden_root / "a.png")
    assert load_dataset(hidden_root, 16).names == ["a.png"]


def test_a_zip_of_utf8_names_without_the_utf8_flag_lists_them_as_its_folder(tmp_path):
    """Info-ZIP on Linux stores UTF-8 names without the flag that says so; zipfile read them as
    cp437 ('ä.png' as '├ñ.png'), so the zip sorted, and paired, apart from its folder (FID 291
    between a folder and its zip at --n 2)."""
    import zipfile

    names = ["ä.png", "中.png", "ö.png", "z.png"]
    folder = tmp_path / "u8"
    folder.mkdir()
    placeholders = {}
    with zipfile.ZipFile(tmp_path / "u8.zip", "w") as zf:
        for i, name in enumerate(names):
            Image.new("RGB", (16, 16), (60 * i, 90, 30)).save(folder / name)
            # an ASCII stand-in of the same length, patched below: zipfile itself always flags UTF-8
            stand_in = f"{i}" * (len(name.encode()) - 4) + ".png"
            placeholders[stand_in.encode()] = name.encode()
            zf.write(folder / name, stand_in)
    raw = (tmp_path / "u8.zip").read_bytes()
    for stand_in, name in placeholders.items():
        raw = raw.replace(stand_in, name)  # in the local header and in the central directory
    (tmp_path / "u8.zip").write_bytes(raw)
    assert not any(m.flag_bits & 0x800 for m in zipfile.ZipFile(tmp_path / "u8.zip").infolist())
    in_folder, in_zip = load_dataset(folder, 16), load_dataset(tmp_path / "u8.zip", 16)
    assert in_zip.names == in_folder.names == sorted(names)
    assert all(torch.equal(a, b) for a, b in zip(in_folder.images, in_zip.images))


def test_a_set_kept_only_under_hidden_names_is_refused_with_the_reason(tmp_path):
    import zipfile

    (tmp_path / "d" / ".faces").mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (8, 8)).save(tmp_path / "d" / ".faces" / f"{i}.png")
    with zipfile.ZipFile(tmp_path / "d.zip", "w") as zf:
        zf.write(tmp_path / "d" / ".faces" / "0.png", "__MACOSX/._0.png")
    for root, example in ((tmp_path / "d", ".faces/0.png"), (tmp_path / "d.zip", "__MACOSX/._0.png")):
        with pytest.raises(DataError, match=rf"under hidden names or __MACOSX/ were left out, e\.g\. {re.escape(example)}"):
            load_dataset(root, 8)
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match=r"looked for [^;]*\)$"):  # nothing hidden: no note
        load_dataset(tmp_path / "plain", 8)


@pytest.mark.parametrize("command", ["prepare", "synth"])
@pytest.mark.parametrize("size,said", [(100, "--size 64 or 128 avoids that"), (64, None)])
def test_a_set_at_a_size_no_model_has_warns(tmp_path, size, said, command):
    """Every StyleGAN2 size is 2^k: a set prepared (or synthesised) at 100 px is resampled again
    by training."""
    from cartoongan.data.dataset import prepare_folder
    from cartoongan.data.synthetic import synthesize

    from .helpers import blob_images

    rep = ListReporter()
    if command == "prepare":
        prepare_folder(blob_images(tmp_path / "src", n=2), tmp_path / "out", size, rep)
    else:
        synthesize("photo", 2, size, tmp_path / "out", reporter=rep)
    assert len(list((tmp_path / "out").glob("*.png"))) == 2
    power = [w for w in rep.warnings if "power of two" in w]
    assert (power == []) if said is None else (len(power) == 1 and said in power[0]), rep.warnings


def test_linked_folders_are_followed_once_and_loops_left_out(tmp_path):
    """A set gathered with `ln -s /disk/webtoon data/` loaded nothing (rglob does not enter links to
    folders); a link back up (`up -> ..`, `self -> .`) or a second link to a folder must not repeat
    the set or never end."""
    from .helpers import blob_images

    store = blob_images(tmp_path / "disk" / "webtoon", n=3)
    data = tmp_path / "data"
    blob_images(data / "own", n=2, seed=1)
    (data / "webtoon").symlink_to(store, target_is_directory=True)
    (data / "again").symlink_to(store, target_is_directory=True)
    (data / "self").symlink_to(data, target_is_directory=True)
    (data / "own" / "up").symlink_to(tmp_path, target_is_directory=True)
    ds = load_dataset(data, 16)
    assert len(ds) == 5, ds.names
    assert sum(n.startswith(("webtoon", "again")) for n in ds.names) == 3 and not any("self" in n for n in ds.names)


def test_a_folder_of_checkpoints_given_as_images_says_what_it_holds(tmp_path):
    """`metrics REAL run/checkpoints` (a checkpoint sweep typed as a folder): not just 'no images'."""
    (tmp_path / "checkpoints").mkdir()
    for step in (2, 4):
        (tmp_path / "checkpoints" / f"{step:06d}.pt").write_bytes(b"PK")
    with pytest.raises(DataError, match=re.escape(f"it holds 2 checkpoint(s) (000002.pt, 000004.pt): a command that "
                                                  f"renders them takes the files, e.g. {tmp_path / 'checkpoints'}/*.pt")):
        load_dataset(tmp_path / "checkpoints", 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as exc:
        load_dataset(tmp_path / "empty", 16)
    assert "it holds" not in str(exc.value)


@pytest.mark.parametrize("limit", [None, 5])
def test_decoding_on_several_threads_gives_the_serial_result(tmp_path, monkeypatch, limit):
    """Same images, names, order and skipped files whatever the thread count, the first `limit`
    readable ones too (a damaged file inside the window must not shift them)."""
    from cartoongan.data import dataset

    from .helpers import blob_images

    data = blob_images(tmp_path / "d", n=9)
    (data / "img003b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 10)
    loads = {}
    for threads in (1, 3):
        monkeypatch.setattr(dataset, "image_threads", lambda t=threads: t)
        rep = ListReporter()
        loads[threads] = (load_dataset(data, 16, rep, limit=limit), rep.warnings)
    (one, warned_one), (three, warned_three) = loads[1], loads[3]
    assert one.names == three.names and torch.equal(one.images, three.images) and warned_one == warned_three
    assert len(one) == (limit or 9) and "img003b.png" not in one.names and "img003b.png" in " ".join(warned_one)


def test_prepare_writes_the_same_files_on_several_threads(tmp_path, monkeypatch):
    from cartoongan.data import dataset

    from .helpers import blob_images

    src = blob_images(tmp_path / "src", n=7)
    from cartoongan.data import images

    for threads in (1, 3):
        monkeypatch.setattr(images, "image_threads", lambda t=threads: t)
        dataset.prepare_folder(src, tmp_path / f"out{threads}", 16)
    one, three = sorted((tmp_path / "out1").iterdir()), sorted((tmp_path / "out3").iterdir())
    assert [p.name for p in one] == [p.name for p in three] == [f"{i:06d}.png" for i in range(7)]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, three))


def test_jfif_and_jpe_photos_are_read_and_heic_ones_named_as_left_out(tmp_path):
    """`.jpe`/`.jfif` (JPEGs PIL reads) and a phone's `.heic` were left out without a word, in
    training, `data prepare` and `project FOLDER` alike."""
    Image.new("RGB", (16, 16), (200, 0, 0)).save(tmp_path / "a.png")
    for name in ("b.jpe", "c.jfif"):
        Image.new("RGB", (16, 16), (0, 200, 0)).save(tmp_path / name, format="JPEG")
    (tmp_path / "d.HEIC").write_bytes(b"\0\0\0\x18ftypheic")
    reporter = ListReporter()
    data = load_dataset(tmp_path, 16, reporter)
    assert sorted(data.names) == ["a.png", "b.jpe", "c.jfif"]
    assert any("left out 1 HEIC photo(s) (d.HEIC), a format not read here: save them as JPEG or PNG" in w
               for w in reporter.warnings), reporter.warnings
    from cartoongan.data.dataset import some_image_sources

    reporter = ListReporter()  # project and toonify of a folder list it so
    assert len(some_image_sources(tmp_path, reporter)) == 3 and any("HEIC" in w for w in reporter.warnings)
    for name in ("a.png", "b.jpe", "c.jfif"):
        (tmp_path / name).unlink()
    with pytest.raises(DataError, match=r"no readable images .*; it holds 1 HEIC photo\(s\) \(d.HEIC\)"):
        load_dataset(tmp_path, 16, ListReporter())


def test_a_sample_of_several_checkpoints_is_not_read_as_one_set(tmp_path, monkeypatch):
    """`metrics photos fig` of `sample A B --outdir fig` scored both models' renders as one set, and
    compare.png as a face of it."""
    for model in ("a", "b"):
        (tmp_path / "fig" / model).mkdir(parents=True)
        for seed in range(2):
            Image.new("RGB", (16, 16), (seed * 90, 0, 0)).save(tmp_path / "fig" / model / f"seed{seed:04d}.png")
    Image.new("RGB", (32, 32)).save(tmp_path / "fig" / "compare.png")
    with pytest.raises(DataError, match=r"fig is `sample`'s comparison of 2 checkpoints \(a, b\): read as one set, "
                                        r"their renders would be scored as one model's; pass one checkpoint's folder"):
        load_dataset(tmp_path / "fig", 16, ListReporter())
    assert len(load_dataset(tmp_path / "fig" / "a", 16, ListReporter())) == 2
    Image.new("RGB", (16, 16)).save(tmp_path / "fig" / "seed0000.png")  # renders at the top too: no third model
    with pytest.raises(DataError, match=r"comparison of 2 checkpoints \(a, b\)"):
        load_dataset(tmp_path / "fig", 16, ListReporter())
    (tmp_path / "fig" / "seed0000.png").unlink()
    from cartoongan_cli.app import app  # metrics refuses it before REAL's features are extracted
    from typer.testing import CliRunner

    import cartoongan.metrics.suite as suite
    monkeypatch.setattr(suite, "load_images", lambda *a, **k: pytest.fail("read images before refusing"))
    res = CliRunner().invoke(app, ["metrics", str(tmp_path / "fig" / "a"), str(tmp_path / "fig"), "--metrics", "kid"])
    assert res.exit_code == 1 and "comparison of 2 checkpoints" in res.output, res.output
    (tmp_path / "fig" / "b" / "seed0000.png").unlink()
    (tmp_path / "fig" / "b" / "seed0001.png").unlink()
    reporter = ListReporter()  # one checkpoint's folder left: compare.png above it is still no face
    assert sorted(load_dataset(tmp_path / "fig", 16, reporter).names) == ["a/seed0000.png", "a/seed0001.png"]


def test_gifs_beside_the_images_are_named_as_left_out(tmp_path):
    """They were left out without a word, where every other file not read is named."""
    for i in range(2):
        Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(tmp_path / f"{i}.png")
    Image.new("RGB", (16, 16)).save(tmp_path / "face.gif")
    reporter = ListReporter()
    assert len(load_dataset(tmp_path, 16, reporter)) == 2
    assert any("left out 1 GIF(s)" in w and "face.gif" in w for w in reporter.warnings), reporter.warnings
    import zipfile

    with zipfile.ZipFile(tmp_path / "set.zip", "w") as zf:  # a Mac's zip: its ._ shadows are no GIFs of the set
        for name in ("0.png", "1.png"):
            zf.write(tmp_path / name, f"faces/{name}")
        zf.writestr("__MACOSX/faces/._anim.gif", b"\0")
    reporter = ListReporter()
    assert len(load_dataset(tmp_path / "set.zip", 16, reporter)) == 2
    assert not any("GIF" in w for w in reporter.warnings), reporter.warnings
    (tmp_path / "0.png").unlink()
    (tmp_path / "1.png").unlink()
    with pytest.raises(DataError, match="no readable images"):  # a GIF-only folder: the formats read are named
        load_dataset(tmp_path, 16, ListReporter())
