"""SeFa: `cartoongan factor` finds the latent directions of a generator's weights, `cartoongan edit`
walks the same latents along them through several generators."""
import numpy as np
import pytest
import torch
from cartoongan_cli.app import app
from PIL import Image
from typer.testing import CliRunner

from cartoongan.pipelines.sefa import closed_form_factor, edited_ws, modulation_weights
from cartoongan.weights.factor import load_factor, save_factor
from cartoongan.weights.networks import load_generator

from .test_finetune import make_source

runner = CliRunner()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("sefa")
    return make_source(root / "a.pt", size=16), make_source(root / "b.pt", size=16, seed=1)


def test_directions_are_the_right_singular_vectors_rosinality_stacks(ckpts):
    """The layers rosinality's closed_form_factorization.py stacks (every 'modulation' weight but the
    later toRGB layers'), so an index users share names the same direction; orthonormal, strongest
    first, each moving the styles by its singular value."""
    gen = load_generator(ckpts[0], "cpu")
    state = gen.state_dict()
    rows = torch.cat([v for k, v in state.items() if "modulation" in k and "to_rgbs" not in k and "weight" in k])
    theirs = torch.svd(rows.double()).V
    factor = closed_form_factor(gen)
    dim = gen.style_dim
    assert factor.eigvec.shape == (dim, dim) and torch.equal(modulation_weights(gen), rows.double())
    assert torch.allclose((factor.eigvec.double().T @ theirs).abs(), torch.eye(dim, dtype=torch.float64), atol=1e-4)
    assert torch.all(factor.values[:-1] >= factor.values[1:])
    moved = (rows.double() @ factor.eigvec.double()).norm(dim=0)  # how much each direction changes the styles
    assert torch.allclose(moved, factor.values.double(), rtol=1e-4)
    # the sign is fixed, so a CPU and a GPU (another LAPACK) give one file: the largest entry is positive
    peak = factor.eigvec.gather(0, factor.eigvec.abs().argmax(0, keepdim=True))
    assert torch.all(peak > 0)


def test_factor_files_round_trip_and_rosinality_files_load(tmp_path, ckpts):
    gen = load_generator(ckpts[0], "cpu")
    factor = closed_form_factor(gen, "a.pt")
    loaded = load_factor(save_factor(factor, tmp_path / "f.pt"), gen.style_dim)
    assert torch.equal(loaded.eigvec, factor.eigvec) and torch.equal(loaded.values, factor.values)
    assert loaded.source == "a.pt"
    torch.save({"ckpt": "x.pt", "eigvec": factor.eigvec.double()}, tmp_path / "theirs.pt")  # rosinality's file
    theirs = load_factor(tmp_path / "theirs.pt", gen.style_dim)
    assert theirs.values is None and theirs.eigvec.dtype == torch.float32
    stacked = torch.randn(600, 512, generator=torch.Generator().manual_seed(1))
    v = torch.linalg.svd(stacked, full_matrices=False)[2].T  # rosinality's torch.svd(W).V
    for dtype in (torch.float32, torch.float16, torch.bfloat16):  # columns up to 2e-3 off unit length in bfloat16
        torch.save({"ckpt": "x.pt", "eigvec": v.to(dtype)}, tmp_path / "v.pt")
        assert load_factor(tmp_path / "v.pt", 512).eigvec.shape == (512, 512)
    from cartoongan.errors import CheckpointError

    torch.save({"ckpt": "x.pt", "eigvec": torch.zeros(gen.style_dim + 1, 3)}, tmp_path / "wide.pt")
    with pytest.raises(CheckpointError, match=r"\(%d, 3\).*needs \[%d, K\]" % (gen.style_dim + 1, gen.style_dim)):
        load_factor(tmp_path / "wide.pt", gen.style_dim)
    torch.save({"eigvec": torch.full((gen.style_dim, 2), float("nan"))}, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="NaN or inf"):
        load_factor(tmp_path / "nan.pt", gen.style_dim)
    with pytest.raises(CheckpointError, match="is not a factor file .* `cartoongan factor CKPT"):
        load_factor(ckpts[0], gen.style_dim)


def _factor_faults(style_dim: int) -> dict:
    """Factor files a command would misread: as a traceback, or as sheets of flat grey."""
    good = torch.linalg.qr(torch.randn(style_dim, style_dim, generator=torch.Generator().manual_seed(0)))[0]
    return {"0-d": {"eigvec": torch.tensor(1.0)}, "no columns": {"eigvec": torch.zeros(style_dim, 0)},
            "sparse": {"eigvec": good.to_sparse()}, "rescaled": {"eigvec": good * 1e30},
            "values 0-d": {"eigvec": good, "values": torch.tensor(3.0)}, "a list": {"eigvec": good.tolist()}}


@pytest.mark.parametrize("fault,message", [("0-d", "its directions are ()"), ("no columns", "(32, 0)"),
                                           ("sparse", "sparse_coo"), ("rescaled", "are not unit vectors"),
                                           ("values 0-d", None), ("a list", "its 'eigvec' is a list, not a tensor")])
def test_damaged_factor_files_are_named_by_info_and_edit_alike(tmp_path, ckpts, fault, message):
    path = tmp_path / "f.pt"
    torch.save(_factor_faults(32)[fault], path)
    info = runner.invoke(app, ["info", str(path)])
    edit = runner.invoke(app, ["edit", str(ckpts[0]), "--factor", str(path), "--index", "0", "--steps", "2",
                               "--seeds", "0", "--outdir", str(tmp_path / "e"), "--device", "cpu"])
    for res in (info, edit):
        assert "Traceback" not in res.output and (res.exception is None or isinstance(res.exception, SystemExit))
    if message is None:  # an odd optional entry: ignored, the directions still serve
        assert info.exit_code == 0 and "variance_share" not in info.output and edit.exit_code == 0, edit.output
        return
    for res in (info, edit):
        said = " ".join(res.output.split())
        assert res.exit_code == 1 and message in said and len(res.output.strip().splitlines()) == 1, said
    assert not (tmp_path / "e").exists()


def test_a_generator_whose_styles_ignore_w_has_no_directions(tmp_path, ckpts):
    from cartoongan.errors import CheckpointError

    gen = load_generator(ckpts[0], "cpu")
    with torch.no_grad():
        for name, p in gen.named_parameters():
            if name.endswith("modulation.weight"):
                p.zero_()
    with pytest.raises(CheckpointError, match="styles do not depend on w"):  # was the identity, "nan%"
        closed_form_factor(gen, "zero.pt")


def test_an_edit_moves_only_the_chosen_layers_by_each_amount():
    ws = torch.randn(2, 6, 4)
    direction = torch.tensor([1.0, 0, 0, 0])
    moved = edited_ws(ws, direction, [-2.0, 0.0, 3.0], range(1, 3))
    assert moved.shape == (6, 6, 4)
    assert torch.equal(moved[1], ws[0]) and torch.equal(moved[4], ws[1])  # amount 0: the latent itself
    delta = moved[5] - ws[1]  # latent 1, +3
    assert torch.allclose(delta[1:3, 0], torch.full((2,), 3.0)) and delta[[0, 3, 4, 5]].abs().max() == 0
    assert delta[:, 1:].abs().max() == 0


def test_cli_factor_then_edit_two_models_with_the_same_latents(tmp_path, ckpts):
    """factor writes the file; edit renders a sheet per index, a row per (seed, model) and a column per
    amount; the middle column (amount 0) is what `sample --trunc` renders for the seed."""
    a, b = ckpts
    res = runner.invoke(app, ["factor", str(a), "-o", str(tmp_path / "f.pt")])
    assert res.exit_code == 0 and "directions, the first 5 hold" in res.output, res.output
    res = runner.invoke(app, ["info", str(tmp_path / "f.pt")])
    assert res.exit_code == 0 and "SeFa factor" in res.output, res.output
    res = runner.invoke(app, ["edit", str(a), str(b), "--factor", str(tmp_path / "f.pt"), "--index", "0,2", "--steps",
                              "3", "--degree", "4", "--seeds", "0-1", "--outdir", str(tmp_path / "e"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["index000.png", "index002.png"]
    sheet = np.asarray(Image.open(tmp_path / "e" / "index002.png"))
    assert sheet.shape == (4 * 16, 3 * 16, 3)  # rows: seed 0 through a, b, seed 1 through a, b
    tile = lambda r, c: sheet[16 * r: 16 * r + 16, 16 * c: 16 * c + 16].astype(int)  # noqa: E731
    res = runner.invoke(app, ["sample", str(a), str(b), "--seeds", "0-1", "--trunc", "0.7", "--outdir", str(tmp_path / "s"),
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    for row, (model, seed) in enumerate([("a", 0), ("b", 0), ("a", 1), ("b", 1)]):
        plain = np.asarray(Image.open(tmp_path / "s" / model / f"seed{seed:04d}.png")).astype(int)
        assert np.abs(tile(row, 1) - plain).max() <= 1, (model, seed)
        assert np.abs(tile(row, 0) - tile(row, 2)).mean() > 1  # the direction changes the picture
    assert np.abs(tile(0, 0) - tile(1, 0)).mean() > 1  # two models, one latent: two pictures
    # without --factor the first model's own directions: the same sheet as its factor file gives
    res = runner.invoke(app, ["edit", str(a), str(b), "--index", "2", "--steps", "3", "--degree", "4", "--seeds", "0-1",
                              "--outdir", str(tmp_path / "own"), "--device", "cpu"])
    assert res.exit_code == 0 and "SeFa of" in res.output, res.output
    assert np.array_equal(np.asarray(Image.open(tmp_path / "own" / "index002.png")), sheet)


@pytest.mark.parametrize("flags, message", [
    (["--index", "99"], "--index 99: the factor holds 32 directions (0-31)"),
    (["--layers", "2-40"], "--layers 2-40: the generator has w+ layers 0-5"),
    (["--layers", "11"], "--layers 11: the generator has w+ layers 0-5"),
    (["--layers", "x"], "'x' is not a layer or a range of w+ layers"),
    (["--degree", "0"], "must be a number > 0 and at most 100"),
    (["--degree", "nan"], "must be a number > 0 and at most 100"),
    (["--degree", "1e20"], "got 1e+20"),  # rendered flat grey sheets, exit 0
    (["--layers", "5-2"], "--layers 5-2 runs backwards: write the lower layer first (2-5)"),
    (["--seeds", "0-64"], "--seeds gives 65 seeds; a sheet holds at most 64"),
    (["--index", "1-0"], "range '1-0' runs backwards"),
])
def test_edit_refuses_what_cannot_be_before_writing(tmp_path, ckpts, flags, message):
    res = runner.invoke(app, ["edit", str(ckpts[0]), *flags, "--outdir", str(tmp_path / "e"), "--device", "cpu"])
    said = " ".join(res.output.split())
    assert res.exit_code in (1, 2) and message in said, said
    assert not (tmp_path / "e").exists()


def test_a_folder_in_the_way_of_a_later_sheet_is_refused_before_any_sheet(tmp_path, ckpts):
    """A folder named index003.png was found after the sheets before it were rendered and written."""
    out = tmp_path / "e"
    (out / "index003.png").mkdir(parents=True)
    res = runner.invoke(app, ["edit", str(ckpts[0]), "--index", "0-3", "--steps", "2", "--seeds", "0",
                              "--outdir", str(out), "--device", "cpu"])
    said = " ".join(res.output.split())
    assert res.exit_code == 1 and f"{out / 'index003.png'} is a folder, where the command writes a file" in said, said
    assert not list(out.glob("index00[0-2].png"))


def test_a_repeated_index_is_one_sheet_and_a_ctrl_c_names_the_sheets_kept(tmp_path, ckpts, monkeypatch):
    from cartoongan.pipelines import sefa

    argv = ["edit", str(ckpts[0]), "--steps", "2", "--seeds", "0", "--device", "cpu", "--outdir"]
    res = runner.invoke(app, [*argv, str(tmp_path / "a"), "--index", "1,0,1,1"])
    assert res.exit_code == 0 and "wrote 2 sheet(s)" in res.output and "index001.png, index000.png" in res.output
    real, made = sefa.save_png, []

    def stop_at_the_second(*a, **kw):
        if made:
            raise KeyboardInterrupt
        made.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(sefa, "save_png", stop_at_the_second)
    res = runner.invoke(app, [*argv, str(tmp_path / "b"), "--index", "0-2"])
    said = " ".join(res.output.split())
    assert res.exit_code == 130 and "interrupted after 1 of 3 sheets, each written to" in said, said
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["index000.png"]


def test_outputs_never_replace_inputs(tmp_path, ckpts):
    a, _ = ckpts
    res = runner.invoke(app, ["factor", str(a), "-o", str(a)])
    assert res.exit_code == 1 and "is also an input of this command" in res.output
    res = runner.invoke(app, ["factor", str(a), "-o", str(tmp_path / "f.png")])
    assert res.exit_code == 1 and "names a PNG image" in res.output
    (tmp_path / "e").mkdir()
    link = tmp_path / "e" / "index000.png"
    link.symlink_to(a)
    res = runner.invoke(app, ["edit", str(a), "--index", "0", "--outdir", str(tmp_path / "e"), "--device", "cpu"])
    assert res.exit_code == 1 and "would overwrite the input" in res.output and link.is_symlink()


def test_checkpoints_of_two_architectures_are_refused_by_name(tmp_path, ckpts):
    other = make_source(tmp_path / "big.pt", size=32)
    res = runner.invoke(app, ["edit", str(ckpts[0]), str(other), "--outdir", str(tmp_path / "e"), "--device", "cpu"])
    said = " ".join(res.output.split())
    assert res.exit_code == 1 and f"{other} is a 32 px generator with w of 32, {ckpts[0]} a 16 px one" in said, said
    assert not (tmp_path / "e").exists()


def test_a_repeated_seed_is_one_row_of_each_sheet(tmp_path, ckpts):
    """`--seeds 0,1,0` drew seed 0's row twice, and `--seeds 0-40,0-40` (41 seeds) was refused as 82."""
    argv = ["edit", str(ckpts[0]), "--steps", "2", "--index", "0", "--device", "cpu", "--outdir"]
    assert runner.invoke(app, [*argv, str(tmp_path / "once"), "--seeds", "0,1"]).exit_code == 0
    res = runner.invoke(app, [*argv, str(tmp_path / "twice"), "--seeds", "0,1,0,0-1"])
    assert res.exit_code == 0, res.output
    assert np.array_equal(np.asarray(Image.open(tmp_path / "twice" / "index000.png")),
                          np.asarray(Image.open(tmp_path / "once" / "index000.png")))
    res = runner.invoke(app, [*argv, str(tmp_path / "many"), "--seeds", "0-40,0-40"])
    assert res.exit_code == 0, res.output


def test_sheets_an_earlier_edit_left_in_the_folder_are_warned_of(tmp_path, ckpts):
    """`edit a.pt --index 0-3`, then `edit b.pt --index 0-1` into one --outdir: sheets 2 and 3 of a
    stayed beside b's without a word."""
    a, b = map(str, ckpts)
    out = str(tmp_path / "e")
    common = ["--steps", "2", "--seeds", "0", "--outdir", out, "--device", "cpu"]
    assert runner.invoke(app, ["edit", a, "--index", "0-3", *common]).exit_code == 0
    res = runner.invoke(app, ["edit", b, "--index", "0-1", *common])
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and f"{out} also holds 2 sheet(s) this run does not write (index002.png, " \
        "index003.png)" in said, said
    res = runner.invoke(app, ["edit", b, "--index", "0-3", *common])
    assert res.exit_code == 0 and "also holds" not in res.output, res.output
