import json

import numpy as np
import pytest
from cartoongan_cli.app import app
from PIL import Image
from typer.testing import CliRunner

from cartoongan.data.synthetic import synthesize

runner = CliRunner()


def test_synth_is_deterministic_and_records_parameters(tmp_path):
    a = synthesize("cartoon", 5, 32, tmp_path / "a", seed=3)
    b = synthesize("cartoon", 5, 32, tmp_path / "b", seed=3)
    c = synthesize("cartoon", 5, 32, tmp_path / "c", seed=4)
    for i in range(5):
        name = f"{i:06d}.png"
        assert (a / name).read_bytes() == (b / name).read_bytes()
        assert Image.open(a / name).size == (32, 32) and Image.open(a / name).mode == "RGB"
    assert (a / "000000.png").read_bytes() != (c / "000000.png").read_bytes()
    rows = [json.loads(line) for line in (a / "params.jsonl").read_text().splitlines()]
    assert [r["file"] for r in rows] == [f"{i:06d}.png" for i in range(5)]
    for key in ("face_w", "cx", "skin", "hair_style", "hair", "eye_spacing", "eye_size", "iris", "mouth_curve",
                "background", "domain"):
        assert key in rows[0]


def test_domains_share_parameters_but_differ_in_look(tmp_path):
    photo = synthesize("photo", 4, 64, tmp_path / "p", seed=9)
    cartoon = synthesize("cartoon", 4, 64, tmp_path / "c", seed=9)
    strip = lambda f: {k: v for k, v in json.loads(f.read_text().splitlines()[0]).items() if k != "domain"}  # noqa: E731
    assert strip(photo / "params.jsonl") == strip(cartoon / "params.jsonl")
    p = np.asarray(Image.open(photo / "000000.png"), dtype=float)
    c = np.asarray(Image.open(cartoon / "000000.png"), dtype=float)
    # cartoons are flat: far fewer distinct colours than the shaded, textured photo
    assert len(np.unique(c.reshape(-1, 3), axis=0)) < len(np.unique(p.reshape(-1, 3), axis=0)) / 2
    # same layout: the background corner colour agrees within shading
    assert np.abs(p[:4, :4].mean((0, 1)) - c[:4, :4].mean((0, 1))).max() < 60


def test_synth_cli_and_prepare(tmp_path):
    res = runner.invoke(app, ["data", "synth", "--domain", "photo", "--n", "3", "--size", "16", "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "s").glob("*.png"))) == 3
    Image.new("RGB", (30, 20), (255, 0, 0)).save(tmp_path / "s" / "wide.jpg")
    (tmp_path / "s" / "junk.png").write_bytes(b"junk")
    res = runner.invoke(app, ["data", "prepare", str(tmp_path / "s"), "--size", "8", "--out", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    assert "skipped 1" in res.output
    files = sorted((tmp_path / "p").glob("*.png"))
    assert len(files) == 4 and all(Image.open(f).size == (8, 8) for f in files)


def test_bad_domain_is_usage_error(tmp_path):
    res = runner.invoke(app, ["data", "synth", "--domain", "anime", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--domain" in res.output


@pytest.mark.slow
def test_demo_pipeline_end_to_end(tmp_path):
    """`make demo-check`: the demo with few steps; every output exists and is a valid image."""
    from cartoongan.pipelines.demo import BUNDLED_SOURCE, run_demo

    kwargs = dict(finetune_iters=4, n_cartoon=40, seeds=[0, 1, 2])
    if not BUNDLED_SOURCE.exists():
        kwargs.update(pretrain_iters=2)
    res = run_demo(tmp_path / "demo", **kwargs)
    compare = Image.open(res.compare)
    compare.verify()
    assert Image.open(res.compare).size == (3 * 64, 3 * 64)
    gif = Image.open(res.gif)
    assert gif.n_frames == 3 * 8 and gif.size == (3 * 64, 64)
    for ckpt in (res.cartoon, res.swapped):
        assert ckpt.exists()


def test_an_interrupted_synthesis_is_finished_and_a_finished_one_kept(tmp_path):
    """The demo and the ablation reuse their synthesized data; a folder a stopped run left part-way
    (params.jsonl already there) must be written again, not trained on."""
    from cartoongan.data.synthetic import ensure_synthesized, synthesized_count

    out = tmp_path / "cartoon"
    synthesize("cartoon", 3, 16, out, seed=2)
    lines = (out / "params.jsonl").read_text().splitlines(keepends=True)
    (out / "params.jsonl").write_text("".join(lines[:1]))
    (out / "000002.png").unlink()
    ensure_synthesized("cartoon", 3, 16, out, seed=2)
    assert synthesized_count(out) == 3 and (out / "000002.png").is_file()
    stamp = (out / "000000.png").stat().st_mtime_ns
    ensure_synthesized("cartoon", 3, 16, out, seed=2)
    assert (out / "000000.png").stat().st_mtime_ns == stamp


def test_synthesis_into_an_earlier_one_says_it_replaces_it(tmp_path):
    from cartoongan.data.synthetic import synthesize
    from cartoongan.report import ListReporter

    synthesize("photo", 4, 16, tmp_path / "s")
    reporter = ListReporter()
    synthesize("cartoon", 2, 16, tmp_path / "s", reporter=reporter)
    assert reporter.warnings == [f"{tmp_path / 's'} holds an earlier synthesis of 4 face(s): replacing it with 2 cartoon face(s)"]
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["000000.png", "000001.png", "params.jsonl"]


def test_demo_trains_on_the_device_given(tmp_path):
    """demo --device: the fine-tune's run records it (a fresh one and a continued one); without it
    the recipe's own device (the CPU) stays, so the suite on a GPU machine keeps the demo there."""
    import tomllib

    from cartoongan.pipelines.demo import run_demo

    from .test_finetune import make_source

    src = make_source(tmp_path / "src.pt", size=32)
    config = tmp_path / "demo" / "finetune" / "config.toml"
    run_demo(tmp_path / "demo", source=src, finetune_iters=1, n_cartoon=4, seeds=[0])
    assert tomllib.loads(config.read_text())["train"]["device"] == "cpu"
    res = run_demo(tmp_path / "demo", source=src, finetune_iters=2, n_cartoon=4, seeds=[0], device="auto")
    assert tomllib.loads(config.read_text())["train"]["device"] == "auto" and res.compare.is_file()
