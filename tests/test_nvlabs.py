"""NVlabs pickles: conversion parity with NVlabs' own code, and refusal of anything that would run code.

tests/data/nvlabs_tiny_expected.npz holds images and D logits computed by stylegan2-ada-pytorch
itself (run outside this repo) for the tiny network whose weights nvlabs_fixtures builds:
seeds 0-3 (z = RandomState(seed).randn(1, 32)), truncation 1 and 0.7, noise_mode const. G's
conv_clamp is 1.5 and D's 0.5 so that the clamps bind (without them NVlabs' images move by up to
12, its D logits by 1.4).
"""
import collections
import hashlib
import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from cartoongan_cli.app import app
from PIL import Image
from typer.testing import CliRunner

from cartoongan.weights.checkpoint import load_checkpoint
from cartoongan.weights.networks import build_discriminator, build_generator
from cartoongan.weights.nvlabs import FORMAT_ADA, FORMAT_TF
from cartoongan.weights.unpickle import ALLOWED_GLOBALS

from . import nvlabs_fixtures as fx

runner = CliRunner()
EXPECTED = np.load(Path(__file__).parent / "data" / "nvlabs_tiny_expected.npz")
SEEDS = [int(s) for s in EXPECTED["seeds"]]


@pytest.fixture(scope="module")
def ada_pkl(tmp_path_factory):
    path = tmp_path_factory.mktemp("ada") / "tiny.pkl"
    fx.write_ada_pickle(path)
    return path


@pytest.fixture(scope="module")
def tf_pkl(tmp_path_factory):
    path = tmp_path_factory.mktemp("tf") / "tiny_tf.pkl"
    fx.write_tf_pickle(path)
    return path


def _render(ckpt: dict, psi: float) -> torch.Tensor:
    from cartoongan.data.render import seeds_to_ws

    g = build_generator(ckpt).eval()
    with torch.no_grad():
        return g.synthesis(seeds_to_ws(g, SEEDS, psi), noise_mode="const").image


def _expected(psi: float) -> np.ndarray:
    i = list(EXPECTED["truncation"]).index(psi)
    return EXPECTED["images"][i * len(SEEDS):(i + 1) * len(SEEDS)]


def test_provenance_hash_covers_bytes_after_the_pickle(ada_pkl, tmp_path):
    """The unpickler stops at STOP: what follows must still be in the file's recorded sha256."""
    from cartoongan.weights.nvlabs import read_pickle

    padded = tmp_path / "padded.pkl"
    padded.write_bytes(Path(ada_pkl).read_bytes() + b"trailing bytes")
    _, digest = read_pickle(padded)
    assert digest == hashlib.sha256(padded.read_bytes()).hexdigest()
    assert digest != read_pickle(ada_pkl)[1]


@pytest.mark.parametrize("which", ["ada", "tf"])
def test_converted_generator_and_discriminator_match_nvlabs(which, ada_pkl, tf_pkl):
    ckpt = load_checkpoint(ada_pkl if which == "ada" else tf_pkl)
    meta = ckpt["cartoongan"]
    assert meta["provenance"]["format"] == (FORMAT_ADA if which == "ada" else FORMAT_TF)
    # hashed while unpickling (one pass over the file), yet the whole file's sha256
    assert meta["provenance"]["sha256"] == hashlib.sha256(Path(meta["provenance"]["source"]).read_bytes()).hexdigest()
    assert meta["generator"]["conv_clamp"] == 1.5 and meta["generator"]["lr_mlp"] == 0.01
    assert meta["discriminator"]["conv_clamp"] == 0.5
    assert {"g", "g_ema", "d", "latent_avg"} <= set(ckpt)
    for psi in (1.0, 0.7):
        diff = (_render(ckpt, psi) - torch.from_numpy(_expected(psi))).abs().max().item()
        assert diff < 1e-4, (psi, diff)
    with torch.no_grad():
        logits = build_discriminator(ckpt).eval()(torch.from_numpy(EXPECTED["images"][:4]))
    assert (logits - torch.from_numpy(EXPECTED["d_logits"])).abs().max().item() < 1e-4


def test_cli_convert_then_sample_reproduces_nvlabs_pngs(tmp_path, ada_pkl):
    pt = tmp_path / "tiny.pt"
    res = runner.invoke(app, ["convert", str(ada_pkl), "-o", str(pt)])
    assert res.exit_code == 0, res.output
    assert "stylegan2-ada-pytorch" in res.output
    for psi, src in ((1.0, pt), (0.7, ada_pkl)):  # the .pt, and the .pkl read directly
        out = tmp_path / f"out{psi}"
        res = runner.invoke(app, ["sample", str(src), "--seeds", "0-3", "--trunc", str(psi), "--outdir", str(out)])
        assert res.exit_code == 0, res.output
        want = (torch.from_numpy(_expected(psi)).permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
        got = np.stack([np.asarray(Image.open(out / f"seed{s:04d}.png")) for s in SEEDS]).astype(int)
        assert np.abs(got - want.numpy().astype(int)).max() <= 2


def test_other_commands_read_pkl_directly(tmp_path, ada_pkl):
    res = runner.invoke(app, ["info", str(ada_pkl), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["resolution"] == 32 and summary["provenance"]["format"] == "stylegan2-ada-pytorch"
    assert summary["format"] == "nvlabs-pickle" and summary["kind"] is None  # the file, not what convert writes
    res = runner.invoke(app, ["export", str(ada_pkl), "-o", str(tmp_path / "slim.pt"), "--g-ema-only"])
    assert res.exit_code == 0, res.output
    assert set(load_checkpoint(tmp_path / "slim.pt")) == {"g_ema", "latent_avg", "cartoongan"}


def test_hostile_embedded_source_is_never_run(tmp_path):
    marker = tmp_path / "pwned.txt"
    src = f"open({str(marker)!r}, 'w').write('ran')\nimport os\nos.system('touch {marker}')\n"
    pkl = tmp_path / "hostile_src.pkl"
    fx.write_ada_pickle(pkl, src=src, with_d=False)
    assert src.encode() in pkl.read_bytes()  # the text really is in the file
    res = runner.invoke(app, ["convert", str(pkl), "-o", str(tmp_path / "ok.pt")])
    assert res.exit_code == 0, res.output  # the weights are plain data: converting them is safe
    assert not marker.exists()
    # the same source under a class name no StyleGAN2 generator has: refused, still never run
    g = fx.generator_object(fx.TINY, fx.random_generator_weights(fx.TINY, 0), src)
    g.meta["class_name"] = "Exploit"
    fx.dump({"G_ema": g}, pkl)
    _assert_refused(tmp_path, pkl, "not a Generator")
    assert not marker.exists()


class _Reduce:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _hostile_pickles(marker: Path) -> dict[str, bytes]:
    cmd = f"touch {marker}"
    getattr_chain = (b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVsystem\ntR(V"
                     + cmd.encode() + b"\ntR.")
    nested = io.BytesIO()  # a tensor whose storage bytes are themselves a hostile pickle
    pickle.dump(_Reduce(os.system, (cmd,)), nested)
    import torch.storage
    return {
        "os_system": pickle.dumps({"G_ema": _Reduce(os.system, (cmd,))}),
        "exec": pickle.dumps(_Reduce(exec, (f"open({str(marker)!r}, 'w')",))),
        "eval": pickle.dumps(_Reduce(eval, (f"open({str(marker)!r}, 'w')",))),
        "getattr_chain": getattr_chain,
        "nested_storage": pickle.dumps(_Reduce(torch.storage._load_from_bytes, (nested.getvalue(),))),
        "object_array": pickle.dumps({"G_ema": np.array([_Reduce(os.system, (cmd,))], dtype=object)}),
    }


def _assert_refused(tmp_path: Path, pkl: Path, words: str = "") -> str:
    out = tmp_path / "never.pt"
    res = runner.invoke(app, ["convert", str(pkl), "-o", str(out)])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and res.output.strip().startswith("error:")
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert words.lower() in res.output.lower(), res.output
    assert not out.exists() and not list(tmp_path.glob(".never.pt.*"))
    return res.output


@pytest.mark.parametrize("kind", ["os_system", "exec", "eval", "getattr_chain", "nested_storage", "object_array"])
def test_pickles_that_try_to_run_code_are_refused(tmp_path, kind):
    marker = tmp_path / "pwned.txt"
    pkl = tmp_path / f"{kind}.pkl"
    pkl.write_bytes(_hostile_pickles(marker)[kind])
    _assert_refused(tmp_path, pkl, "refusing")
    assert not marker.exists()
    # and through a command that merely reads a checkpoint
    res = runner.invoke(app, ["info", str(pkl)])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1 and not marker.exists()


def test_truncated_and_random_files_are_refused(tmp_path, ada_pkl):
    data = ada_pkl.read_bytes()
    for n in (10, len(data) // 2, len(data) - 1):
        (tmp_path / "cut.pkl").write_bytes(data[:n])
        _assert_refused(tmp_path, tmp_path / "cut.pkl", "not a readable NVlabs pickle")
    rng = np.random.default_rng(0)
    for i in range(3):
        (tmp_path / "rand.pkl").write_bytes(rng.bytes(4096) if i else b"\x80\x04" + rng.bytes(4096))
        _assert_refused(tmp_path, tmp_path / "rand.pkl")


def test_files_that_are_no_pickle_at_all_are_named_for_what_they_are(tmp_path):
    """A PNG was 'refusing a persistent id', an empty file 'Ran out of input', and any zip 'a
    PyTorch checkpoint: use it as it is'."""
    import zipfile

    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "png.pkl", format="PNG")
    (tmp_path / "zero.pkl").write_bytes(b"")
    with zipfile.ZipFile(tmp_path / "faces.pkl", "w") as zf:
        zf.writestr("000000.png", b"not really")
    np.savez(tmp_path / "w.npz", w=np.zeros(3))
    (tmp_path / "w.npz").rename(tmp_path / "w.pkl")
    for name, words in (("png", "is not an NVlabs pickle: it is a PNG image"), ("zero", "is empty (0 bytes)"),
                        ("faces", "is not an NVlabs pickle: it is a zip archive"),
                        ("w", "is not an NVlabs pickle: it is a NumPy .npz archive")):
        _assert_refused(tmp_path, tmp_path / f"{name}.pkl", words)


@pytest.mark.parametrize("text", ["print('hi')\n", "notes\n"])
def test_a_text_file_named_pkl_is_called_a_text_file(tmp_path, text):
    """It was 'truncated or another format: unpickling stack underflow' (or an unsafe global)."""
    (tmp_path / "s.pkl").write_text(text)
    _assert_refused(tmp_path, tmp_path / "s.pkl", "s.pkl is not an NVlabs pickle: it is a text file")


def test_convert_of_another_pickle_names_the_file(tmp_path):
    """`convert dict.pkl` said 'not an NVlabs StyleGAN2 network pickle (found ['a'])', no file named."""
    (tmp_path / "dict.pkl").write_bytes(pickle.dumps({"a": 1}))
    said = _assert_refused(tmp_path, tmp_path / "dict.pkl", "not an NVlabs StyleGAN2 network pickle")
    assert str(tmp_path / "dict.pkl") in said, said


def test_stylegan3_and_conditional_models_are_not_supported(tmp_path):
    spec, w = fx.TINY, fx.random_generator_weights(fx.TINY, 0)
    g3 = fx.generator_object(spec, w)
    syn = g3.meta["state"]["_modules"]["synthesis"]
    syn.meta["state"]["_modules"]["input"] = fx.Persistent("SynthesisInput", {}, {}, {}, {})
    fx.dump({"G": g3, "G_ema": g3, "D": None}, tmp_path / "sg3.pkl")
    _assert_refused(tmp_path, tmp_path / "sg3.pkl", "StyleGAN3 networks are not supported")
    gc = fx.generator_object(spec, w)
    gc.meta["state"]["c_dim"] = 10
    fx.dump({"G_ema": gc}, tmp_path / "cond.pkl")
    _assert_refused(tmp_path, tmp_path / "cond.pkl", "conditional models are not supported")


def test_allow_list_is_small_and_names_no_callable_that_runs_code():
    names = {f"{m}.{n}" for m, n in ALLOWED_GLOBALS}
    assert len(names) <= 16
    assert not names & {"builtins.eval", "builtins.exec", "builtins.getattr", "os.system", "builtins.__import__"}
    # each NVlabs entry resolves to an inert stand-in, not to anything importable from those packages
    for (module, _name), target in ALLOWED_GLOBALS.items():
        assert not getattr(target, "__module__", "").startswith(("torch_utils", "dnnlib", "legacy"))
    assert ALLOWED_GLOBALS[("collections", "OrderedDict")] is collections.OrderedDict


def test_tf_configs_other_than_stylegan2_synthesis_are_not_supported(tmp_path):
    spec = fx.TINY
    gen = fx.tf_generator_network(spec, fx.random_generator_weights(spec, 0))
    gen._state["components"]["synthesis"]._state["build_func_name"] = "G_synthesis_stylegan_revised"
    disc = fx.tf_discriminator_network(spec, fx.random_discriminator_weights(spec, 1))
    fx.dump((gen, disc, gen), tmp_path / "config_b.pkl")
    _assert_refused(tmp_path, tmp_path / "config_b.pkl", "is not supported")


def test_torch_checkpoints_named_pkl_still_load_as_checkpoints(tmp_path, tiny_g):
    from cartoongan import save_checkpoint
    from cartoongan.weights.networks import generator_checkpoint

    path = save_checkpoint(tmp_path / "model.pkl", generator_checkpoint(tiny_g(16)))
    ckpt = load_checkpoint(path)
    assert "provenance" not in ckpt["cartoongan"] and build_generator(ckpt).size == 16
    assert build_generator(ckpt).config["conv_clamp"] is None


def test_malformed_networks_fail_with_one_line(tmp_path):
    spec, w = fx.TINY, fx.random_generator_weights(fx.TINY, 0)
    for damage in ("drop_resolution", "inf_resolution", "zero_resolution", "negative_resolution", "drop_weight",
                   "bad_shape"):
        g = fx.generator_object(spec, w)
        st = g.meta["state"]
        if damage == "drop_resolution":
            del st["img_resolution"]
        elif damage.endswith("_resolution"):
            st["img_resolution"] = {"inf": float("inf"), "zero": 0, "negative": -16}[damage.split("_")[0]]
        else:
            b8 = st["_modules"]["synthesis"].meta["state"]["_modules"]["b8"].meta["state"]
            params = b8["_modules"]["conv0"].meta["state"]["_parameters"]
            if damage == "drop_weight":
                del params["weight"]
            else:
                params["weight"] = torch.nn.Parameter(torch.zeros(3, 3, 3, 3), requires_grad=False)
        fx.dump({"G_ema": g}, tmp_path / f"{damage}.pkl")
        _assert_refused(tmp_path, tmp_path / f"{damage}.pkl")


def test_an_unreadable_pickle_is_one_line(tmp_path, ada_pkl, monkeypatch):
    """A pickle the user may not read (as root, chmod cannot show it: open is made to refuse)."""
    from cartoongan.errors import CheckpointError
    from cartoongan.weights import nvlabs

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(nvlabs, "open", refused, raising=False)
    with pytest.raises(CheckpointError, match="cannot be read .permission denied."):
        nvlabs.read_pickle(ada_pkl)


def test_a_snapshot_without_g_ema_is_named_as_one(tmp_path):
    """It was called 'not an NVlabs StyleGAN2 network pickle', which it is."""
    spec = fx.TINY
    snap = fx.ada_snapshot(spec, fx.random_generator_weights(spec, 0), None)
    del snap["G_ema"]
    fx.dump(snap, tmp_path / "g_only.pkl")
    _assert_refused(tmp_path, tmp_path / "g_only.pkl", "a stylegan2-ada-pytorch snapshot without G_ema")


def test_convert_without_o_keeps_another_checkpoint_of_the_default_name(tmp_path, ada_pkl, tiny_g):
    """rosinality's stylegan2-ffhq-config-f.pt sits beside NVlabs' .pkl of that name: `convert
    X.pkl` replaced X.pt with the conversion, without a word. Its own earlier conversion is replaced
    (a rerun), as is any file named with -o."""
    from cartoongan import save_checkpoint
    from cartoongan.weights.networks import generator_checkpoint

    pkl = tmp_path / "ffhq.pkl"
    pkl.write_bytes(ada_pkl.read_bytes())
    theirs = save_checkpoint(tmp_path / "ffhq.pt", generator_checkpoint(tiny_g()))
    before = theirs.read_bytes()
    res = runner.invoke(app, ["convert", str(pkl)])
    said = " ".join(res.output.split())
    assert res.exit_code == 1 and f"{theirs}, the default output name, already exists and is no conversion of " \
        "ffhq.pkl: give -o" in said, said
    assert theirs.read_bytes() == before
    theirs.unlink()
    for _ in range(2):  # made, then made again over its own conversion
        res = runner.invoke(app, ["convert", str(pkl)])
        assert res.exit_code == 0 and f"wrote {theirs}" in " ".join(res.output.split()), res.output
    moved = tmp_path / "moved"  # the pair moved: its path no longer matches, its bytes do
    moved.mkdir()
    for f in (pkl, theirs):
        f.rename(moved / f.name)
    assert runner.invoke(app, ["convert", str(moved / pkl.name)]).exit_code == 0
    save_checkpoint(theirs, generator_checkpoint(tiny_g()))
    assert runner.invoke(app, ["convert", str(moved / pkl.name), "-o", str(theirs)]).exit_code == 0  # named: replaced
