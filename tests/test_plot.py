"""`cartoongan plot RUN`: curves from log.jsonl."""
import json

from cartoongan_cli.app import app
from PIL import Image
from typer.testing import CliRunner

from cartoongan.metrics.plot import panels, read_log

runner = CliRunner()


def _write_log(run, rows, torn=False):
    run.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows) + ('{"step": 9' if torn else "")
    (run / "log.jsonl").write_text(text)


def test_plot_draws_losses_kid_and_ada(tmp_path):
    rows = [{"step": s, "kimg": s / 100, "loss_d": 1.0 / (s + 1), "loss_g": 0.5, "ada_p": 0.01 * s} for s in range(0, 40, 4)]
    rows += [{"step": 20, "kid": 0.05}, {"step": 40, "kid": 0.03}]
    _write_log(tmp_path / "run", rows, torn=True)
    assert len(read_log(tmp_path / "run")) == len(rows)  # the torn line is skipped
    assert [t for t, _ in panels(rows)] == ["losses", "KID / FID", "ADA p"]
    result = runner.invoke(app, ["plot", str(tmp_path / "run")])
    assert result.exit_code == 0 and "damaged" not in result.output, result.output  # a torn last line is a kill
    with Image.open(tmp_path / "run" / "curves.png") as img:
        assert img.size[1] > 2 * 260  # three panels stacked


def test_damaged_lines_inside_the_log_are_named_and_skipped(tmp_path):
    """The trainer never leaves these (a resume drops a torn last line), so a hand edit or a bad disk
    did: the curves have gaps, and plot says where."""
    rows = [{"step": s, "loss_d": 1.0, "loss_g": 0.5} for s in range(4)]
    _write_log(tmp_path / "run", rows)
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    lines[1] = lines[1][:7]
    (tmp_path / "run" / "log.jsonl").write_text("\n".join(lines + ['{"step": 9']) + "\n")
    result = runner.invoke(app, ["plot", str(tmp_path / "run")])
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "skipped 1 damaged line(s) (line 2), not JSON" in said, result.output
    assert (tmp_path / "run" / "curves.png").is_file()


def test_plot_without_kid_or_ada_and_missing_log(tmp_path):
    rows = [{"step": s, "loss_d": 1.0, "loss_g": 0.5, "ada_p": 0.0} for s in range(3)]
    assert [t for t, _ in panels(rows)] == ["losses"]
    result = runner.invoke(app, ["plot", str(tmp_path / "nothing")])
    assert result.exit_code == 1 and "run folder not found" in result.output and "Traceback" not in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["plot", str(tmp_path / "empty")])
    assert result.exit_code == 1 and "no training log at" in result.output and "Traceback" not in result.output
    # `plot demo` (the demo's folder, whose run is demo/finetune) named no run to pass
    for run in ("demo/finetune", "ablation/runs/freezeg"):
        (tmp_path / run).mkdir(parents=True)
        (tmp_path / run / "config.toml").write_text("[train]\n")
        (tmp_path / run / "log.jsonl").write_text("")
        top = tmp_path / run.split("/")[0]
        said = " ".join(runner.invoke(app, ["plot", str(top)]).output.split())
        assert f"it holds the run folder(s) {tmp_path / run}: pass one" in said, said


def test_json_lines_that_are_not_rows_are_counted_with_the_damaged_ones(tmp_path):
    """[1, 2] or {"step": "x"} parse as JSON but are no log row: they were dropped without a word."""
    rows = [{"step": s, "loss_d": 1.0, "loss_g": 0.5} for s in range(3)]
    _write_log(tmp_path / "run", rows)
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    lines[1:1] = ["[1, 2]", '{"step": "x", "loss_d": 1.0}', "{\"loss_d\": 1.0}", "not json"]
    (tmp_path / "run" / "log.jsonl").write_text("\n".join(lines + ["[3]"]) + "\n")  # a whole last line counts too
    result = runner.invoke(app, ["plot", str(tmp_path / "run")])
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "skipped 5 damaged line(s) (line 2, 3, 4, 5, 8)" in said, result.output
    assert [r["step"] for r in read_log(tmp_path / "run")] == [0, 1, 2]


def test_lines_past_the_parser_other_bytes_and_a_bom_cost_their_line_only(tmp_path):
    """A 5000-digit number or a 200,000-deep array raised out of json.loads (a traceback, in plot and
    in --resume alike); one line of other bytes refused the whole log as not text."""
    from cartoongan.train.run_dir import _row_step

    good = [json.dumps({"step": s, "loss_d": 1.0, "loss_g": 0.5}).encode() for s in range(3)]
    odd = [b'{"step": 5, "loss_d": ' + b"9" * 5000 + b"}", b"[" * 200_000, b'{"step": 6, "loss_d": "\xff"}']
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.jsonl").write_bytes(b"\xef\xbb\xbf" + b"\n".join(good[:1] + odd + good[1:]) + b"\n")
    result = runner.invoke(app, ["plot", str(tmp_path / "run")])
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "skipped 3 damaged line(s) (line 2, 3, 4)" in said, said
    assert len(read_log(tmp_path / "run")) == 3  # the BOM left line 1 whole
    assert [_row_step(line.decode("utf-8", "replace")) for line in odd[:2]] == [float("inf")] * 2
    from cartoongan.train.run_dir import RunDirectory  # a resume keeps the first row behind a BOM too

    (tmp_path / "run" / "log.jsonl").write_bytes(b"\xef\xbb\xbf" + b"\n".join(good) + b"\n")
    RunDirectory(tmp_path / "run")._truncate_log(1)
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()] == [0, 1]


def test_a_log_with_nothing_to_draw_is_one_line_and_a_single_row_is_drawn(tmp_path):
    _write_log(tmp_path / "run", [{"step": 0, "foo": 1}, {"step": 1, "loss_d": float("nan")}, {"step": 2, "ada_p": "x"},
                                  {"step": 3, "ada_p": float("nan")}])
    result = runner.invoke(app, ["plot", str(tmp_path / "run")])
    assert result.exit_code == 1 and "hold no finite loss, KID/FID or ADA value" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "run" / "curves.png").exists()
    _write_log(tmp_path / "one", [{"step": 2, "loss_d": 0.7, "loss_g": 1.1}])  # a 2-step run logs once
    assert runner.invoke(app, ["plot", str(tmp_path / "one")]).exit_code == 0


def test_plot_replaces_its_own_pictures_only(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _write_log(run, [{"step": s, "loss_d": 1.0, "loss_g": 0.5} for s in range(4)])
    (run / "samples").mkdir()
    grid = run / "samples" / "000002.png"
    Image.new("RGB", (8, 8), (9, 9, 9)).save(grid)
    before = grid.read_bytes()
    result = runner.invoke(app, ["plot", str(run), "-o", str(grid)])
    assert result.exit_code == 1 and "is no picture plot drew" in result.output and grid.read_bytes() == before
    (run / "notes.png").write_text("not a picture at all")
    result = runner.invoke(app, ["plot", str(run), "-o", str(run / "notes.png")])
    assert result.exit_code == 1 and "is no picture plot drew" in result.output
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # the grid's 64 px now open as a decompression bomb
    result = runner.invoke(app, ["plot", str(run), "-o", str(grid)])
    assert result.exit_code == 1 and "is no picture plot drew" in result.output and grid.read_bytes() == before
    monkeypatch.undo()
    assert runner.invoke(app, ["plot", str(run)]).exit_code == 0
    assert runner.invoke(app, ["plot", str(run)]).exit_code == 0  # its own curves.png, drawn again
    with Image.open(run / "curves.png") as img:
        assert img.info["Software"] == "cartoongan plot"


def test_a_legend_too_tall_to_lay_out_draws_without_a_matplotlib_warning(tmp_path, recwarn):
    """80 KID keys: matplotlib's "Tight layout not applied" came out as a raw warning and source line."""
    rows = [{"step": i, "loss_g": 1.0, "loss_d": 1.0, **{f"kid_{j:02d}": 0.1 * j for j in range(80)}} for i in (1, 2, 3)]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = runner.invoke(app, ["plot", str(tmp_path), "-o", str(tmp_path / "c.png")])
    assert res.exit_code == 0 and "warning" not in res.output.lower(), res.output
    assert not [w for w in recwarn if "layout" in str(w.message)] and Image.open(tmp_path / "c.png").size[1] > 0


def test_a_damaged_line_or_a_value_that_is_no_number_breaks_the_curve(tmp_path):
    """The warning said "the curves have gaps there" and the line was drawn straight across a torn
    row, a NaN loss and a string value, as if they had been measured."""
    import math

    from cartoongan.metrics.plot import plot_run, read_log, series

    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text("\n".join([
        '{"step": 1, "loss_d": 1.0}', '{"step": 2, "loss_d": 2.0}', '{"step": 3, "loss_d": 9.0, oops',
        '{"step": 4, "loss_d": 4.0}', '{"step": 5, "loss_d": NaN}', '{"step": 6, "loss_d": "high"}',
        '{"step": 7, "loss_d": 7.0}', '{"step": 8, "loss_g": 1.0}']) + "\n")
    steps, values = series(read_log(run, gaps=True), "loss_d")
    kept = [(s, v) for s, v in zip(steps, values) if v == v]
    assert kept == [(1, 1.0), (2, 2.0), (4, 4.0), (7, 7.0)]
    assert [i for i, v in enumerate(values) if math.isnan(v)] == [2, 4, 5]  # breaks between 2|4 and 4|7
    assert len(read_log(run)) == 7  # without gaps: the rows alone, as before
    assert plot_run(run).is_file()


def test_a_checkpoint_or_image_given_for_the_log_is_named_without_reading_it_as_text(tmp_path):
    """`plot RUN/latest.pt` read the whole file as lines, warned of 49238 damaged ones, then said
    "not a log.jsonl (it is not text)"."""
    import torch

    torch.save({"g": torch.zeros(4096)}, tmp_path / "latest.pt")
    Image.new("RGB", (4, 4)).save(tmp_path / "face.png")
    import zipfile

    import numpy as np

    with zipfile.ZipFile(tmp_path / "faces.zip", "w") as zf:
        zf.write(tmp_path / "face.png", "face.png")
    np.savez(tmp_path / "codes.npz", w=np.zeros(3))
    for name, kind in (("latest.pt", "a PyTorch checkpoint"), ("face.png", "a PNG image"),
                       ("faces.zip", "a zip archive"), ("codes.npz", "a NumPy archive (.npz)")):
        res = runner.invoke(app, ["plot", str(tmp_path / name)])
        said = " ".join(res.output.split())
        assert res.exit_code == 1 and f"is not a training log: it is {kind}" in said, said
        assert "damaged" not in said and len(res.output.strip().splitlines()) == 1, res.output
