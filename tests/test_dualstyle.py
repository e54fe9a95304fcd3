"""DualStyleGAN: the model against its equations, the official file formats, the restricted reader, the CLI."""
import math
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cartoongan_cli.app import app
from PIL import Image
from typer.testing import CliRunner

from cartoongan.errors import CheckpointError
from cartoongan.models.dualstyle import DualStyleGenerator
from cartoongan.models.encoders import GradualStyleEncoder
from cartoongan.weights.dualstyle import (
    build_dualstyle, dualstyle_checkpoint, infer_encoder_config, load_dualstyle, load_psp, psp_checkpoint,
    read_exstyle_codes, write_exstyle_codes,
)

SIZE, DIM, N = 64, 32, 10  # 64 px has both kinds of extrinsic slot: ModRes 0-6, colour 7-9
SMALL = dict(style_dim=DIM, n_mlp=2, channel_base=512, channel_max=32)
ENCODER = dict(n_styles=N, units=(1, 1, 2, 1), widths=(16, 20, 24, DIM), input_size=32)
runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These networks are tiny: on a shared 2-core machine one intra-op thread is 5-30x faster
    than two (measured: 0.04-0.07 s vs 0.5-2 s per 64 px render at load 11)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def perturbed(module, seed=0, std=0.3):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * std)
        for name, b in module.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
    return module.eval()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = perturbed(DualStyleGenerator(SIZE, **SMALL))
    with torch.no_grad():  # residuals well above their near-zero initialisation
        for block in m.res[:7]:
            block.conv[0].weight.mul_(30)
            block.conv2[0].weight.mul_(30)
    return m


# ---- the equations, written out literally -----------------------------------------------------
def lit_equal_linear(x, sd, prefix, lr_mul=1.0, act=False):
    w, b = sd[prefix + ".weight"], sd[prefix + ".bias"]
    y = x @ (w * lr_mul / math.sqrt(w.shape[1])).t() + b * lr_mul
    return F.leaky_relu(y, 0.2) * math.sqrt(2) if act else y


def lit_modres(x, s, weight, sd, p):
    """x + w * conv2(AdaIN2(conv(AdaIN(x, s)), s)), conv = 3x3 equalised conv, bias, lrelu * sqrt 2."""
    def adain(h, name):
        gb = s @ sd[f"{p}.{name}.style.weight"].t() + sd[f"{p}.{name}.style.bias"]
        gamma, beta = gb.chunk(2, dim=1)
        return F.instance_norm(h) * gamma[:, :, None, None] + beta[:, :, None, None]

    def conv(h, name):
        w = sd[f"{p}.{name}.0.weight"]
        h = F.conv2d(h, w / math.sqrt(w[0].numel()), padding=1) + sd[f"{p}.{name}.1.bias"][None, :, None, None]
        return F.leaky_relu(h, 0.2) * math.sqrt(2)

    return x + weight * conv(adain(conv(adain(x, "norm"), "conv"), "norm2"), "conv2")


def test_modres_block_is_its_equation(model):
    sd = model.state_dict()
    x, s = torch.randn(2, model.generator.channels[16], 16, 16), torch.randn(2, DIM)
    for weight in (0.0, 0.6, 1.0):
        ours = model.res[3](x, s, weight)
        torch.testing.assert_close(ours, lit_modres(x, s, weight, sd, "res.3"), rtol=1e-4, atol=1e-4)
    assert (model.res[3](x, s, 1.0) - x).abs().mean() > 0.1  # the residual is not negligible here


def test_whole_forward_is_the_papers_two_paths(model):
    """Intrinsic Z+ (truncated towards 0), extrinsic Z+ through the structure transform into ModRes after
    the 4-32 px convs, and w*T_c(ex) + (1-w)*latent on the later style inputs, rebuilt by hand."""
    sd, g = model.state_dict(), model.generator
    torch.manual_seed(1)
    inz, exz = torch.randn(2, N, DIM), torch.randn(1, N, DIM)
    weights = [0.3, 0.5, 0.7, 0.9, 1.0, 0.4, 0.8, 0.25, 0.6, 0.9]
    psi = 0.7
    with torch.no_grad():
        got = model(inz, exz, truncation=psi, weights=weights, noise_mode="const")
        lat = psi * g.mapping(inz.reshape(-1, DIM)).reshape(2, N, DIM)
        ex = g.mapping(exz.reshape(-1, DIM)).reshape(1, N, DIM).expand(2, -1, -1)
        pn = ex * torch.rsqrt(ex.square().mean(-1, keepdim=True) + 1e-8)
        struct = lit_equal_linear(lit_equal_linear(pn, sd, "style.1", 0.01, True), sd, "style.2", 0.01, True)

        def style(k):
            if k <= 6:
                return lat[:, k]
            return weights[k] * lit_equal_linear(ex[:, k], sd, f"res.{k}") + (1 - weights[k]) * lat[:, k]

        noise = [getattr(g.noises, f"noise_{i}") for i in range(g.num_layers)]
        # (layer, slot) in the order the image is built; convs at slots 0-6 are followed by ModRes k
        order = [("conv1", 0), ("to_rgb1", 1)] + [item for b in range(1, 5) for item in
                                                [(f"convs.{2 * b - 2}", 2 * b - 1), (f"convs.{2 * b - 1}", 2 * b),
                                                 (f"to_rgbs.{b - 1}", 2 * b + 1)]]
        x, skip = g.input(2), None
        for name, k in order:
            layer = g.get_submodule(name)
            if "rgb" in name:
                skip = layer(x, style(k), skip)
                continue
            x = layer(x, style(k), noise[k])
            if k <= 6:
                x = lit_modres(x, struct[:, k], weights[k], sd, f"res.{k}")
    scale = float(skip.abs().max())
    assert scale > 1
    torch.testing.assert_close(got, skip, rtol=0, atol=2e-5 * scale)


def test_zero_weights_no_res_and_fuse_index_zero_give_the_intrinsic_stylegan(model):
    torch.manual_seed(2)
    inz, exz = torch.randn(1, N, DIM), torch.randn(1, N, DIM)
    with torch.no_grad():
        ws = model.intrinsic_ws(inz, "z+", 0.75)
        plain = model.generator.synthesis(ws, noise_mode="const").image
        ex = model.map_zplus(exz)
        for kw in (dict(weights=[0.0] * N), dict(use_res=False), dict(fuse_index=0)):
            torch.testing.assert_close(model.synthesis(ws, ex, **kw), plain, rtol=1e-5, atol=1e-5)
        # fuse_index 6 keeps the ModRes slots and drops the colour ones
        only_structure = model.synthesis(ws, ex, [1.0] * 7 + [0.0] * 3)
        torch.testing.assert_close(model.synthesis(ws, ex, [1.0] * N, fuse_index=6), only_structure)
        assert (model.synthesis(ws, ex) - plain).abs().mean() > 0.05
    # truncation goes towards 0, not towards the average w
    torch.testing.assert_close(ws, 0.75 * model.map_zplus(inz))


# ---- official file formats --------------------------------------------------------------------
def test_generator_file_round_trip_with_the_official_key_names(tmp_path, model):
    path = tmp_path / "generator.pt"
    torch.save(dualstyle_checkpoint(model), path)
    raw = torch.load(path, weights_only=True)
    assert list(raw) == ["g_ema"]
    keys = set(raw["g_ema"])
    for key in ("generator.style.1.weight", "generator.input.input", "generator.noises.noise_0", "style.1.weight",
                "style.2.bias", "res.0.conv.0.weight", "res.0.conv.1.bias", "res.6.norm2.style.weight",
                "res.7.weight", "res.9.bias"):
        assert key in keys, key
    assert not any(k.startswith("res.10") or k.startswith("style.3") for k in keys)
    loaded = load_dualstyle(path)
    assert loaded.generator.channels == model.generator.channels
    assert {k: loaded.config[k] for k in ("size", "style_dim", "n_mlp", "n_structure_mlp", "res_index")} == \
        dict(size=SIZE, style_dim=DIM, n_mlp=2, n_structure_mlp=2, res_index=6)
    z, e = torch.randn(1, N, DIM), torch.randn(1, N, DIM)
    with torch.no_grad():
        torch.testing.assert_close(loaded(z, e), model(z, e), rtol=0, atol=0)
    bad = dict(raw["g_ema"])
    bad.pop("res.3.norm.style.bias")
    with pytest.raises(CheckpointError, match="missing"):
        build_dualstyle(bad)


def test_encoder_file_round_trip_and_official_structure(tmp_path, model):
    enc = perturbed(GradualStyleEncoder(**ENCODER), seed=3, std=0.05)
    avg = torch.randn(N, DIM)
    torch.save(psp_checkpoint(enc, model.generator, avg), tmp_path / "encoder.pt")
    psp, decoder = load_psp(tmp_path / "encoder.pt", with_decoder=True)
    assert psp.space == "z+" and psp.encoder.config == enc.config and decoder.size == SIZE
    photo = torch.rand(1, 3, 128, 128) * 2 - 1
    want = enc(F.adaptive_avg_pool2d(photo, 32)) + avg  # larger inputs are area-averaged, as the release does
    torch.testing.assert_close(psp.encode(photo), want)
    # the released IR-SE-50 layout: 24 units, pyramid laterals 256->512 and 128->512, heads with 4/5/6 convs
    with torch.device("meta"):
        official = GradualStyleEncoder()
    sd = official.state_dict()
    assert infer_encoder_config(sd) == dict(n_styles=18, units=(3, 4, 14, 3), widths=(64, 128, 256, 512),
                                            input_size=256, in_ch=3)
    assert tuple(sd["latlayer1.weight"].shape) == (512, 256, 1, 1) and tuple(sd["latlayer2.weight"].shape) == (512, 128, 1, 1)
    assert tuple(sd["body.23.res_layer.5.fc1.weight"].shape) == (32, 512, 1, 1)
    assert "styles.2.convs.6.weight" in sd and "styles.2.convs.8.weight" not in sd
    assert "styles.6.convs.8.weight" in sd and "styles.7.convs.10.weight" in sd and "styles.17.linear.weight" in sd
    assert "body.3.shortcut_layer.0.weight" in sd and "body.1.shortcut_layer.0.weight" not in sd


# ---- exemplar codes: the restricted reader ------------------------------------------------------
def test_exstyle_codes_round_trip_in_order(tmp_path):
    codes = {f"img{i}.jpg": np.random.RandomState(i).randn(1, N, DIM).astype(np.float32) for i in (5, 1, 3)}
    path = write_exstyle_codes(tmp_path / "exstyle_code.npy", codes)
    read = read_exstyle_codes(path)
    assert list(read) == ["img5.jpg", "img1.jpg", "img3.jpg"]
    assert all(np.array_equal(read[k], codes[k]) for k in codes)
    # the format the official scripts read: numpy.load(allow_pickle=True).item()
    assert list(np.load(path, allow_pickle=True).item()) == list(codes)
    np.save(tmp_path / "direct.npy", codes)  # what destylize.py does
    assert list(read_exstyle_codes(tmp_path / "direct.npy")) == list(codes)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_hostile_npy_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    hostile = tmp_path / "exstyle_code.npy"
    holder = np.empty((), dtype=object)
    holder[()] = {"a.jpg": _Payload(marker)}
    np.save(hostile, holder, allow_pickle=True)
    with pytest.raises(CheckpointError, match="builtins.open|io.open"):
        read_exstyle_codes(hostile)
    assert not marker.exists()
    # a raw pickle stream behind a valid object-array header, calling eval
    with open(tmp_path / "evil.npy", "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": ()})
        fh.write(b"cbuiltins\neval\n(V__import__('os').system('touch " + str(marker).encode() + b"')\ntR.")
    with pytest.raises(CheckpointError, match="not allowed"):
        read_exstyle_codes(tmp_path / "evil.npy")
    assert not marker.exists()
    np.save(tmp_path / "plain.npy", np.zeros((1, N, DIM), np.float32))
    with pytest.raises(CheckpointError, match="plain"):
        read_exstyle_codes(tmp_path / "plain.npy")
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY" + pickle.dumps([1]))
    with pytest.raises(CheckpointError):
        read_exstyle_codes(tmp_path / "junk.npy")


# ---- the command, end to end --------------------------------------------------------------------
@pytest.fixture(scope="module")
def release(tmp_path_factory, model):
    """checkpoint/encoder.pt + checkpoint/toon/{generator.pt, exstyle_code.npy, images/}, like the release."""
    root = tmp_path_factory.mktemp("checkpoint")
    style_dir = root / "toon"
    style_dir.mkdir()
    torch.save(dualstyle_checkpoint(model), style_dir / "generator.pt")
    rng = np.random.RandomState(0)
    codes = {f"ex{i}.png": rng.randn(1, N, DIM).astype(np.float32) for i in range(3)}
    write_exstyle_codes(style_dir / "exstyle_code.npy", codes)
    (style_dir / "images").mkdir()
    Image.fromarray(rng.randint(0, 255, (48, 48, 3), dtype=np.uint8)).save(style_dir / "images" / "ex1.png")
    enc = perturbed(GradualStyleEncoder(**ENCODER), seed=4, std=0.05)
    torch.save(psp_checkpoint(enc, model.generator, torch.zeros(DIM)), root / "encoder.pt")
    photo = root / "photo.png"
    Image.fromarray(rng.randint(0, 255, (80, 80, 3), dtype=np.uint8)).save(photo)
    return style_dir, photo


def _run(*args):
    # the release fixture's photo is noise (no face to align); test_cli_aligns_a_real_photo covers --align
    res = runner.invoke(app, ["dualstyle", *map(str, args), "--device", "cpu", "--no-align"])
    return res


def test_cli_photo_then_saved_code_then_sheet(tmp_path, release, model):
    style_dir, photo = release
    out = tmp_path / "out"
    res = _run(photo, "--model", style_dir, "--style-id", "1", "--outdir", out)
    assert res.exit_code == 0, res.output
    assert "ex1.png" in res.output
    assert Image.open(out / "result.png").size == (SIZE, SIZE)
    assert Image.open(out / "overview.png").size == (4 * 256, 256)  # photo, reconstruction, exemplar, result
    code = np.load(out / "instyle.npy")
    assert code.shape == (1, N, DIM) and code.dtype == np.float32
    # the saved code renders the same image again, and equals the library's render of it
    res = _run(out / "instyle.npy", "--model", style_dir, "--style-id", "1", "--outdir", tmp_path / "again")
    assert res.exit_code == 0, res.output
    first = np.asarray(Image.open(out / "result.png"))
    assert np.array_equal(first, np.asarray(Image.open(tmp_path / "again" / "result.png")))
    assert Image.open(tmp_path / "again" / "overview.png").size == (3 * 256, 256)  # no photo tile
    ex = torch.from_numpy(read_exstyle_codes(style_dir / "exstyle_code.npy")["ex1.png"])
    with torch.no_grad():
        want = model(torch.from_numpy(code), ex, truncation=0.75)
    want = (want * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
    assert np.abs(first.astype(int) - want.astype(int)).max() <= 1
    # other styles, preserve colour and --no-res change the picture
    for flags in (["--style-id", "1", "--preserve-color"], ["--no-res"]):
        res = _run(out / "instyle.npy", "--model", style_dir, *flags, "--outdir", tmp_path / "x")
        assert res.exit_code == 0, res.output
        assert not np.array_equal(first, np.asarray(Image.open(tmp_path / "x" / "result.png"))), flags
    res = _run(out / "instyle.npy", "--model", style_dir, "--style-id", "all", "--outdir", tmp_path / "all")
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "all" / "sheet.png").size == (3 * SIZE, SIZE)


def test_cli_new_exemplar_random_faces_info_and_errors(tmp_path, release, monkeypatch):
    import cartoongan.pipelines.dualstyle as pipeline

    style_dir, photo = release
    loads = []
    real_load = pipeline.load_psp
    monkeypatch.setattr(pipeline, "load_psp", lambda *a: loads.append(a[0]) or real_load(*a))
    res = _run(photo, "--model", style_dir, "--style", style_dir / "images" / "ex1.png", "--outdir", tmp_path / "s")
    assert res.exit_code == 0, res.output
    assert len(loads) == 1  # the photo and the exemplar image are encoded with one loaded encoder
    assert Image.open(tmp_path / "s" / "overview.png").size == (4 * 256, 256)
    np.save(tmp_path / "z.npy", np.zeros((1, N, DIM), np.float32))  # a code INPUT: --style's picture uses --encoder
    res = _run(tmp_path / "z.npy", "--model", style_dir, "--style", style_dir / "images" / "ex1.png", "--encoder",
               style_dir.parent / "encoder.pt", "--outdir", tmp_path / "z")
    assert res.exit_code == 0 and len(loads) == 2, res.output
    res = _run("--random", "3", "--model", style_dir, "--style-id", "2", "--outdir", tmp_path / "r")
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "r" / "random.png").size == (3 * SIZE, SIZE)
    assert len(list((tmp_path / "r").glob("random_*.png"))) == 3
    for f, word in ((style_dir / "generator.pt", "DualStyleGAN generator"), (style_dir / "exstyle_code.npy", "exemplar"),
                    (style_dir.parent / "encoder.pt", "pSp"), (tmp_path / "r" / "..", None)):
        if word is None:  # a saved intrinsic code
            np.save(tmp_path / "code.npy", np.zeros((1, N, DIM), np.float32))
            f, word = tmp_path / "code.npy", "intrinsic code"
        res = runner.invoke(app, ["info", str(f), "--json"])
        assert res.exit_code == 0 and word in res.output, res.output
        assert "non_finite" not in res.output
    (tmp_path / "e").mkdir()
    shutil.copy(photo, tmp_path / "e" / "result.png")  # the photo, where the result would go
    no_face, two_faces = tmp_path / "no_face.npy", tmp_path / "two_faces.npy"
    np.save(no_face, np.zeros((0, N, DIM), np.float32))
    np.save(two_faces, np.zeros((2, N, DIM), np.float32))
    nan_code = tmp_path / "nan_code.npy"  # a black picture is not a result
    np.save(nan_code, np.full((1, N, DIM), np.nan, np.float32))
    res = runner.invoke(app, ["info", str(nan_code), "--json"])
    assert res.exit_code == 0 and f"{N * DIM} of {N * DIM} values are NaN or inf" in res.output, res.output
    for args, code, text in (
        ([photo, "--model", style_dir, "--style-id", "7"], 2, "styles 0-2"),
        ([photo, "--model", style_dir, "--style-id", "\u00b2"], 2, "a position in the exemplar-code file"),
        ([photo, "--model", style_dir, "--random", "2"], 2, "not both"),
        (["--model", style_dir, "--random", "0"], 2, "greater than or equal to 1"),  # not "give INPUT"
        ([photo, "--model", style_dir, "--no-res", "--style-id", "all", "--preserve-color"], 2,
         "--no-res renders the intrinsic StyleGAN2 alone, without an exemplar, so --style-id, --preserve-color would be unused"),
        ([style_dir / "exstyle_code.npy", "--model", style_dir], 1, "is a pickled .npy (exemplar codes"),
        ([photo, "--model", style_dir, "--weight", "1,1"], 2, "needs 10 values"),
        ([photo, "--model", style_dir, "--weight", ",".join(["nan"] + ["1"] * (N - 1))], 2, "finite numbers"),
        ([nan_code, "--model", style_dir], 1, "NaN or inf"),
        ([photo, "--model", style_dir, "--trunc", "inf"], 2, "from 0 to 10"),
        ([photo, "--model", style_dir, "--trunc", "1e30"], 2, "from 0 to 10"),
        (["--model", style_dir, "--random", "2", "--preserve-color", "--wplus"], 2,
         "so --preserve-color, --wplus would be unused"),  # both were dropped without a word
        ([nan_code, "--model", style_dir, "--encoder", photo], 2, "is an intrinsic code, which needs no encoding"),
        ([photo, "--model", style_dir, "--no-align", "--weight", ",".join(["1e38"] * N)], 2, "NaN or inf"),
        ([tmp_path / "e" / "result.png", "--model", style_dir], 1, "would overwrite the input"),
        ([photo, "--model", style_dir, "--encoder", tmp_path / "none.pt"], 1, "not found"),
        ([tmp_path / "r" / "random.png", "--model", tmp_path], 1, "no generator.pt"),
        ([photo, "--model", tmp_path / "nowhere" / "cartoon"], 1, "DualStyleGAN style folder not found: "),
        ([photo, "--model", style_dir / "generator.pt"], 1, f"is a file: pass the folder of one DualStyleGAN style (e.g. {style_dir},"),
        ([photo, "--model", tmp_path / "e" / "result.png"], 1, "style (the one holding generator.pt and"),
        ([no_face, "--model", style_dir], 1, f"shape (0, {N}, {DIM}); the model needs (1, {N}, {DIM})"),  # a traceback
        ([two_faces, "--model", style_dir], 1, f"shape (2, {N}, {DIM})"),  # rendered both, kept the first
        ([photo, "--model", style_dir, "--style", photo, "--style-id", "2"], 2,
         "--style IMAGE and --style-id 2 exclude each other"),  # --style-id went unused
    ):
        res = _run(*args, "--outdir", tmp_path / "e")
        assert res.exit_code == code, res.output
        assert text in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "e" / "instyle.npy").exists()  # the refused NaN render left the code it was of
    # each release file passed where a StyleGAN2 checkpoint belongs is named for what it is
    for f, text in ((style_dir / "generator.pt", "is a DualStyleGAN generator, not a StyleGAN2 one"),
                    (style_dir.parent / "encoder.pt", "is a pSp encoder, not a StyleGAN2 checkpoint")):
        res = runner.invoke(app, ["sample", str(f), "--seeds", "0", "--outdir", str(tmp_path / "g"), "--device", "cpu"])
        assert res.exit_code == 1 and text in res.output, res.output
    (tmp_path / "cut.png").write_bytes(photo.read_bytes()[:300])
    for exemplar, text in ((tmp_path / "cut.png", "cut.png is not a readable image"),
                           (tmp_path / "none.png", "exemplar not found")):
        res = _run(photo, "--model", style_dir, "--style", exemplar, "--outdir", tmp_path / "f")
        assert res.exit_code == 1 and text in res.output, res.output
        assert not (tmp_path / "f" / "instyle.npy").exists()  # refused before the photo was encoded


@pytest.mark.cuda
def test_cuda_render_matches_cpu(model):
    """The same codes on CUDA (TF32 convolutions by default) and on the CPU."""
    torch.manual_seed(5)
    inz, exz = torch.randn(2, N, DIM), torch.randn(1, N, DIM)
    with torch.no_grad():
        cpu = model(inz, exz, truncation=0.75)
        gpu = model.to("cuda")(inz.cuda(), exz.cuda(), truncation=0.75).cpu()
    model.to("cpu")
    assert float((gpu - cpu).abs().max()) < 1e-2 * float(cpu.abs().max())


def test_cli_aligns_a_real_photo(tmp_path, release):
    """By default the photo's face is FFHQ-aligned before encoding, and the aligned crop is kept."""
    pytest.importorskip("dlib")
    style_dir, _ = release
    astronaut = Path(__file__).parent / "data" / "astronaut.jpg"
    res = runner.invoke(app, ["dualstyle", str(astronaut), "--model", str(style_dir), "--outdir", str(tmp_path / "o"),
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "o" / "aligned.png").size == (1024, 1024)  # FFHQ's size, whatever the model's
    noface = runner.invoke(app, ["dualstyle", str(release[1]), "--model", str(style_dir), "--outdir",
                                 str(tmp_path / "n"), "--device", "cpu"])
    assert noface.exit_code == 1 and "no face" in noface.output and not (tmp_path / "n" / "result.png").exists()


@pytest.mark.cuda
def test_cli_encodes_and_stylizes_on_cuda(tmp_path, release):
    """`dualstyle PHOTO --device cuda`: the encoder, the extrinsic code and the render on the GPU give
    the CPU's picture within a few 8-bit steps (renders run in IEEE fp32 on both)."""
    style_dir, photo = release
    got = {}
    for device in ("cpu", "cuda"):
        res = runner.invoke(app, ["dualstyle", str(photo), "--model", str(style_dir), "--style-id", "1", "--device",
                                  device, "--no-align", "--outdir", str(tmp_path / device)])
        assert res.exit_code == 0, res.output
        got[device] = np.asarray(Image.open(tmp_path / device / "result.png"), np.int16)
    assert np.abs(got["cpu"] - got["cuda"]).max() <= 4


def test_exemplar_codes_of_another_release_name_their_file(tmp_path, release):
    import shutil

    style_dir, photo = release
    other = tmp_path / "toon"
    shutil.copytree(style_dir, other)
    write_exstyle_codes(other / "exstyle_code.npy", {"ex0.png": np.zeros((1, N + 2, DIM), np.float32)})
    res = _run(photo, "--model", other, "--outdir", tmp_path / "o")
    said = " ".join(res.output.split())
    assert res.exit_code == 1 and f"{other / 'exstyle_code.npy'}: its exemplar codes have shape (1, {N + 2}, {DIM})" \
        in said and "put the style's own code file there" in said, said


def test_random_faces_are_rendered_a_batch_at_a_time_and_a_ctrl_c_says_how_many_are_written(
        tmp_path, release, monkeypatch):
    """--random 1000 rendered every face in one batch (1.5 GB at 64 px) before writing any, and a
    Ctrl-C said only "interrupted"; random.png held every face."""
    from cartoongan.data import images
    import cartoongan.pipelines.dualstyle as pipeline

    from .helpers import stops_after

    style_dir, _ = release
    batches = []
    real_render = pipeline.render
    monkeypatch.setattr(pipeline, "render", lambda m, z, *a, **k: batches.append(len(z)) or real_render(m, z, *a, **k))
    monkeypatch.setattr(pipeline, "RENDER_BATCH", 2)
    monkeypatch.setattr(pipeline, "SHEET_MAX", 3)
    res = _run("--random", "5", "--model", style_dir, "--outdir", tmp_path / "r")
    assert res.exit_code == 0, res.output
    assert batches == [2, 2, 1] and len(list((tmp_path / "r").glob("random_*.png"))) == 5
    assert Image.open(tmp_path / "r" / "random.png").size == (3 * SIZE, SIZE)
    assert "random.png shows the first 3 of the 5 faces" in " ".join(res.output.split())
    monkeypatch.setattr(images, "image_threads", lambda: 1)
    monkeypatch.setattr(images, "save_png", stops_after(3, images.save_png))
    res = _run("--random", "5", "--model", style_dir, "--outdir", tmp_path / "s")
    assert res.exit_code == 130, res.output
    assert res.output.strip().splitlines()[-1] == (
        f"error: interrupted after 3 of 5 images, each written to {tmp_path / 's'} as it was rendered; "
        "random.png was not")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [f"random_{i:04d}.png" for i in range(3)]


def test_a_rerun_into_one_folder_warns_of_the_earlier_runs_files(tmp_path, release):
    """A photo's run, then a code's into the same --outdir, left the photo's aligned.png (and an
    earlier --random run's faces) beside the new result without a word."""
    style_dir, photo = release
    out = tmp_path / "o"
    assert _run("--random", "2", "--model", style_dir, "--outdir", out).exit_code == 0
    res = _run(photo, "--model", style_dir, "--outdir", out)
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and f"{out} also holds 3 file(s) this run does not write (random.png, " \
        "random_0000.png, random_0001.png): an earlier run's" in said, said
    shutil.copy(out / "instyle.npy", tmp_path / "code.npy")  # (the code in --outdir would be overwritten: refused)
    res = _run(tmp_path / "code.npy", "--model", style_dir, "--style-id", "all", "--outdir", out)
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and "also holds 5 file(s) this run does not write (overview.png, random.png, " \
        "random_0000.png, ...)" in said, said
    res = _run(out / "instyle.npy", "--model", style_dir, "--outdir", tmp_path / "fresh")
    assert res.exit_code == 0 and "also holds" not in res.output, res.output
