"""`cartoongan ablation`: the four methods, one budget, one table and figure (tiny networks)."""
import shutil

import pytest
from cartoongan_cli.app import app
from PIL import Image
from typer.testing import CliRunner

from cartoongan.config import load_recipe
from cartoongan.errors import ConfigError
from cartoongan.pipelines.ablation import COLUMNS, METHODS, markdown_table, run_ablation

from .test_finetune import make_source

runner = CliRunner()


def test_ablation_recipes_share_one_budget_and_differ_in_method():
    cfgs = [load_recipe(recipe) for _, recipe in METHODS]
    assert len({repr(c.train) for c in cfgs}) == 1  # same steps, batch, lr, ADA
    ft = [(c.finetune.freeze_g, c.finetune.freeze_sg, c.finetune.struct_loss, c.finetune.freeze_d) for c in cfgs]
    assert ft == [(0, 0, 0, 1), (2, 0, 0, 1), (0, 2, 0, 1), (0, 2, 3, 1)]


def test_ablation_runs_every_method_and_writes_table_and_figure(tmp_path, monkeypatch):
    source = make_source(tmp_path / "src.pt", size=32)  # 4 blocks: room for --struct-loss 3
    res = run_ablation(tmp_path / "abl", source=source, iters=1, n_eval=0, n_structure=4, n_ppl=0, n_cartoon=8,
                       seeds=[0, 1, 2])
    assert [r[0] for r in res.rows] == ["source (photo)"] + [name for name, _ in METHODS]
    assert res.rows[0][3] == "1.000"  # the source against itself
    if res.values[0]["identity"] is not None:  # dlib installed: the same faces are the same person
        assert abs(res.values[0]["identity"] - 1) < 1e-4 and all(v["identity"] <= 1 + 1e-4 for v in res.values)
    # one step barely moves g_ema: every method still scores about 1 against its source
    assert all(0.9 < v["structure"] < 1 + 1e-5 for v in res.values[1:]) and res.values[0]["fid"] is None
    assert res.table.read_text() == res.markdown and res.markdown.count("\n") == 2 + len(res.rows)
    with Image.open(res.figure) as img:
        assert img.size == (3 * 32, (1 + len(METHODS)) * 32)  # one row per generator, one column per seed
    # a second call reuses the finished runs; each generator is rendered once, for FID/KID and identity
    import cartoongan.pipelines.ablation as ablation

    rendered = []
    render = ablation.render_seeds
    monkeypatch.setattr(ablation, "render_seeds", lambda g, seeds, *a, **k: rendered.append(len(seeds)) or render(g, seeds, *a, **k))
    monkeypatch.setattr(ablation._Scorer, "_load_inception", lambda self, real: setattr(self, "inception", "stub"))
    monkeypatch.setattr(ablation._Scorer, "fid_kid", lambda self, fake: (float(len(fake)), 0.0))
    again = run_ablation(tmp_path / "abl", source=source, iters=1, n_eval=6, n_structure=4, n_ppl=0, seeds=[0])
    assert [r[3] for r in again.rows] == [r[3] for r in res.rows]
    # a reused run is timed from its log, as when it trained (it said "reused")
    assert [r[6] for r in again.rows] == [r[6] for r in res.rows] and all(r[6].isdigit() for r in res.rows[1:])
    assert rendered == [6] * (1 + len(METHODS)) and all(v["fid"] == 6 for v in again.values)
    # runs fine-tuned from another source are not passed off as this one's
    # (checked for every method before any work: the first method's run is missing, and is not trained)
    other = make_source(tmp_path / "other.pt", size=32, seed=1)
    shutil.rmtree(tmp_path / "abl" / "runs" / METHODS[0][1])
    monkeypatch.setattr(ablation, "finetune", lambda *a, **k: pytest.fail("fine-tuned before the check"))
    with pytest.raises(ConfigError, match="not the model .* choose another --out"):
        run_ablation(tmp_path / "abl", source=other, iters=1, n_eval=0, n_structure=4, n_ppl=0, seeds=[0])


def test_ablation_refuses_a_training_run_as_out(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text("")
    (run / "latest.pt").write_bytes(b"")
    result = runner.invoke(app, ["ablation", "--out", str(run)])
    assert result.exit_code == 1 and "is not empty" in result.output and "ablation writes" in result.output
    assert sorted(p.name for p in run.iterdir()) == ["config.toml", "latest.pt"]


def test_markdown_table_shape():
    text = markdown_table([["a", 1, 2, 3, 4, 5]])
    assert text.splitlines()[0].count("|") == len(COLUMNS) + 1 and "| a | 1 |" in text


def test_ablation_cli_missing_source(tmp_path):
    result = runner.invoke(app, ["ablation", "--out", str(tmp_path), "--source", str(tmp_path / "none.pt")])
    assert result.exit_code == 1 and f"checkpoint not found: {tmp_path / 'none.pt'}" in result.output
    result = runner.invoke(app, ["ablation", "--out", str(tmp_path), "--source", str(tmp_path / "ffhq256.pt")])
    assert result.exit_code == 1 and "download it from https://drive.google.com/" in result.output


def test_ablation_source_without_discriminator_is_refused_before_any_work(tmp_path, tiny_g):
    from cartoongan.weights.networks import generator_checkpoint
    from cartoongan.weights.checkpoint import save_checkpoint

    source = save_checkpoint(tmp_path / "g_only.pt", generator_checkpoint(tiny_g(16)))  # a convert_weight.py export
    result = runner.invoke(app, ["ablation", "--out", str(tmp_path / "abl"), "--source", str(source), "--iters", "1"])
    assert result.exit_code == 1 and "has no discriminator ('d')" in result.output, result.output
    assert "--fresh-d" not in result.output  # a flag ablation does not have
    assert not (tmp_path / "abl" / "data").exists()  # refused before the cartoon set was made


@pytest.mark.parametrize("command", ["demo", "ablation"])
def test_a_source_too_small_for_the_recipes_is_refused_before_any_work(tmp_path, tiny_g, tiny_d, command):
    """`demo --source` of a 16 px model wrote its 1000 faces, then failed naming --struct-loss, a
    flag the demo has not."""
    from cartoongan.weights.checkpoint import save_checkpoint
    from cartoongan.weights.networks import generator_checkpoint

    ckpt = generator_checkpoint(tiny_g(16))
    ckpt["g"], ckpt["d"] = ckpt["g_ema"], tiny_d(16).state_dict()
    source = save_checkpoint(tmp_path / "small.pt", ckpt)
    result = runner.invoke(app, [command, "--out", str(tmp_path / "o"), "--source", str(source), "--iters", "1"])
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and f"{source} is a 16 px model" in said and "pass a source of 32 px or more" in said, said
    assert "--struct-loss" not in said and not (tmp_path / "o" / "data").exists()


@pytest.mark.parametrize("command", ["demo", "ablation"])
def test_an_iters_past_the_recipes_limit_is_refused_before_the_data_is_made(tmp_path, command):
    """`demo --iters 2000000000` wrote its 1000 cartoon faces first, then refused the fine-tune's
    config."""
    result = runner.invoke(app, [command, "--out", str(tmp_path / "o"), "--iters", "2000000000"])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "--iters ([train] iters) must be <= 10**9 (steps), got 2000000000" in said, said
    assert not (tmp_path / "o" / "data").exists()


@pytest.mark.parametrize("command,entry,kind", [
    ("ablation", "figure.png", "a folder"), ("ablation", "ablation.md", "a folder"), ("ablation", "samples", "a file"),
    ("ablation", "runs", "a file"), ("demo", "swapped.pt", "a folder"), ("demo", "compare.png", "a folder"),
    ("demo", "samples", "a file"), ("demo", "finetune", "a file")])
def test_an_entry_of_the_wrong_kind_in_out_is_refused_before_any_work(tmp_path, command, entry, kind):
    """A folder at ablation's figure.png (or a file at its samples/) was found after every method
    had trained, and named as samples/compare.png or as --outdir; a folder at the demo's
    swapped.pt got swap's --output advice, a flag the demo has not."""
    out = tmp_path / "o"
    (out / entry).mkdir(parents=True) if kind == "a folder" else (out.mkdir(), (out / entry).write_bytes(b""))
    result = runner.invoke(app, [command, "--out", str(out), "--iters", "1"])
    said = " ".join(result.output.split())
    where = "where the command writes a file" if kind == "a folder" else "where the command makes a folder"
    assert result.exit_code == 1 and f"{out / entry} is {kind}, {where}: move it away, or use another --out" in said, said
    assert not (out / "data").exists()


def test_ablation_renders_that_cannot_fit_are_refused_before_any_work(tmp_path, monkeypatch):
    from cartoongan import hostmem

    monkeypatch.setattr(hostmem, "host_memory_available", lambda: 2**20)  # 1 MiB free: 64 renders at 64 px need 1.5
    result = runner.invoke(app, ["ablation", "--out", str(tmp_path / "abl"), "--n-eval", "0", "--n-structure", "64"])
    assert result.exit_code == 2 and "--n-eval/--n-structure 64 holds two sets" in result.output, result.output
    assert "use 42 or less" in result.output and not (tmp_path / "abl" / "data").exists()
    result = runner.invoke(app, ["ablation", "--out", str(tmp_path / "abl"), "--n-eval", "50001"])
    assert result.exit_code == 2 and "--n-eval" in result.output and not (tmp_path / "abl").exists()


def test_ctrl_c_while_measuring_says_to_run_the_ablation_again(tmp_path, monkeypatch):
    """Outside its fine-tunes (which say what they saved) a Ctrl-C was a bare 'interrupted'; the
    rerun reuses the finished runs, so the line says so."""
    from cartoongan.errors import Interrupted
    from cartoongan.pipelines import ablation

    source = make_source(tmp_path / "src.pt", size=32)
    monkeypatch.setattr(ablation, "_measure", lambda *a, **kw: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(Interrupted) as exc:
        run_ablation(tmp_path / "abl", source=source, iters=1, n_eval=0, n_structure=2, n_ppl=0, n_cartoon=4,
                     seeds=[0], methods=METHODS[:1])
    assert str(exc.value) == f"interrupted: run the ablation again with --out {tmp_path / 'abl'} to continue"


def test_the_device_reaches_every_fine_tune_and_the_measuring(tmp_path, monkeypatch):
    """--device: each method trains there (its run records it, also when an earlier run is continued)
    and its generator is loaded there; without it the recipes' own device (the CPU) stays."""
    import tomllib

    import torch

    from cartoongan.pipelines import ablation

    source = make_source(tmp_path / "src.pt", size=32)
    loaded, load = [], ablation.load_generator
    monkeypatch.setattr(ablation, "load_generator", lambda path, dev: loaded.append(dev) or load(path, dev))
    args = dict(source=source, n_eval=0, n_structure=2, n_ppl=0, n_cartoon=4, seeds=[0], methods=METHODS[:1])
    config = tmp_path / "abl" / "runs" / METHODS[0][1] / "config.toml"
    run_ablation(tmp_path / "abl", iters=1, **args)
    assert tomllib.loads(config.read_text())["train"]["device"] == "cpu"
    run_ablation(tmp_path / "abl", iters=2, device="auto", **args)  # continues the run, now on auto
    assert tomllib.loads(config.read_text())["train"]["device"] == "auto"
    assert loaded[-2:] == [torch.device("cpu")] * 2  # auto is the CPU here: source and method, resolved


def test_earlier_runs_trained_past_the_budget_are_refused_not_compared(tmp_path, monkeypatch):
    """A run stopped at step 5 of --iters 50, then the ablation rerun with --iters 2: that run was
    reused at step 5 beside methods trained 2 steps, in a table that claims one budget."""
    from cartoongan.pipelines import ablation

    source = make_source(tmp_path / "src.pt", size=32)
    args = dict(source=source, n_eval=0, n_structure=2, n_ppl=0, n_cartoon=4, seeds=[0], methods=METHODS[:1])
    run_ablation(tmp_path / "abl", iters=2, **args)
    monkeypatch.setattr(ablation, "ensure_synthesized", lambda *a, **k: pytest.fail("worked before the check"))
    with pytest.raises(ConfigError, match=rf"trained past --iters 1 \({METHODS[0][1]} at step 2\).* --iters 2 or more"):
        run_ablation(tmp_path / "abl", iters=1, **args)
    monkeypatch.undo()
    first = ablation.training_seconds(tmp_path / "abl" / "runs" / METHODS[0][1])
    assert run_ablation(tmp_path / "abl", iters=2, **args).rows[1][6] == f"{first:.0f}"  # its own budget: reused


def test_training_seconds_add_up_every_stretch_of_a_resumed_run(tmp_path):
    """The column timed only the call that trained: a run continued by a rerun showed its last
    stretch, a finished one "reused". The log holds each row's images and speed."""
    from cartoongan.pipelines.ablation import training_seconds

    (tmp_path / "log.jsonl").write_text("\n".join([
        '{"step": 1, "kimg": 0.008, "img_per_s": 4.0}',    # 8 images at 4/s: 2 s
        '{"step": 2, "kimg": 0.016, "img_per_s": 8.0}',    # 1 s
        '{"step": 2, "kimg": 0.020, "kid": 0.5}',          # an evaluation's row: no stretch of its own
        '{"step": 3, "kimg": 0.024, "img_per_s": 2.0}',    # a resumed stretch: 4 s
        '{"step": 4, "kimg": 0.032}']) + "\n")             # no speed: not counted
    assert training_seconds(tmp_path) == pytest.approx(7.0)
    assert training_seconds(tmp_path / "none") is None
    (tmp_path / "log.jsonl").write_text('{"step": 1, "kimg": 0.008}\n')  # no speed logged: not "0"
    assert training_seconds(tmp_path) is None


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_device_that_is_not_here_is_refused_before_anything_is_written(tmp_path):
    for command in ("ablation", "demo"):
        result = runner.invoke(app, [command, "--out", str(tmp_path / command), "--device", "cuda"])
        assert result.exit_code == 2 and "--device cuda: no CUDA GPU is visible here" in result.output, result.output
        assert not (tmp_path / command).exists()


def test_a_demo_run_of_another_source_is_refused_with_the_demos_own_fix(tmp_path):
    """`demo --out d --iters 2` over a stopped demo of another source ended with finetune's advice,
    "pass that one, or start a new run": flags the demo does not have."""
    from cartoongan.errors import ConfigError
    from cartoongan.pipelines import demo
    from cartoongan.train.runs import finetune

    from .helpers import blob_images, tiny_config
    from .test_finetune import make_source

    a, b = make_source(tmp_path / "a.pt", seed=1), make_source(tmp_path / "b.pt", seed=2)
    data = blob_images(tmp_path / "data", n=4)
    finetune(tiny_config(iters=1), a, data, tmp_path / "run")
    for iters in (1, 3):  # finished, and stopped short of the demo's steps
        with pytest.raises(ConfigError, match=r"b.pt is not the model .* choose another --out for this source$"):
            demo._run_finetune(b, data, tmp_path / "run", iters, "cpu", demo.NullReporter())
