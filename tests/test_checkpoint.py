import os
import warnings
from pathlib import Path

import pytest
import torch

from cartoongan import build_discriminator, build_generator, load_checkpoint, save_checkpoint
from cartoongan.errors import CheckpointError
from cartoongan.weights.networks import (
    describe,
    generator_checkpoint,
    infer_discriminator_config,
    infer_generator_config,
)

from .reference_stylegan2 import expected_generator_shapes


def rosinality_file(tmp_path, g, d=None, name="ros.pt"):
    """A checkpoint as rosinality's train.py writes it: plain state dicts plus an argparse args."""
    import argparse

    ckpt = {"g_ema": g.state_dict(), "g": g.state_dict(), "args": argparse.Namespace(size=g.size, batch=4)}
    if d is not None:
        ckpt["d"] = d.state_dict()
    path = tmp_path / name
    torch.save(ckpt, path)
    return path


def test_rosinality_file_loads_with_inferred_architecture(tmp_path, tiny_g, tiny_d):
    g, d = tiny_g(32), tiny_d(32)
    ckpt = load_checkpoint(rosinality_file(tmp_path, g, d))
    assert "cartoongan" not in ckpt
    cfg = infer_generator_config(ckpt["g_ema"])
    assert (cfg["size"], cfg["style_dim"], cfg["n_mlp"]) == (32, 32, 2)
    g2 = build_generator(ckpt)
    assert g2.channels == g.channels
    z = torch.randn(2, 32)
    assert torch.equal(g2(z, noise_mode="const"), g(z, noise_mode="const"))
    assert infer_discriminator_config(ckpt["d"])["size"] == 32
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(build_discriminator(ckpt)(x), d(x))


def test_a_legacy_format_file_is_read_where_a_caller_asks_for_a_mapped_one(tmp_path, tiny_g, tiny_d):
    """torch < 1.6 wrote its legacy format, as older rosinality checkpoints are; torch maps only the
    zip one, so `demo`/`ablation --source old.pt` (which read their sources mapped) called it unreadable."""
    from cartoongan.weights.replacing import WITH_D, held_kind

    path = tmp_path / "old.pt"
    g, d = tiny_g(32), tiny_d(32)
    torch.save({"g_ema": g.state_dict(), "g": g.state_dict(), "d": d.state_dict()}, path,
               _use_new_zipfile_serialization=False)
    assert set(load_checkpoint(path, mmap=True)) >= {"g_ema", "g", "d"}
    assert held_kind(path) == WITH_D  # and so it is never replaced by a factor file, nor by g_ema alone
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    assert held_kind(tmp_path / "tensor.pt") == "a PyTorch file of another kind"  # no generator either


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_a_legacy_file_of_any_pickle_protocol_is_named_a_torch_file(tmp_path, tiny_g, protocol):
    """torch.save(..., _use_new_zipfile_serialization=False, pickle_protocol=4) puts a FRAME before
    the magic number: it was taken for an NVlabs pickle ("not an NVlabs pickle (found int)"), and
    torch's own weights-only loader cannot read protocols 4 and 5: that is said, with the fix."""
    from cartoongan.data.images import load_photo
    from cartoongan.errors import DataError
    from cartoongan.weights.nvlabs import convert_file, looks_like_nvlabs_pickle

    path = tmp_path / "old.bin"  # no telling suffix: the bytes decide
    g = tiny_g(16)
    torch.save({"g_ema": g.state_dict()}, path, _use_new_zipfile_serialization=False, pickle_protocol=protocol)
    assert not looks_like_nvlabs_pickle(path)
    with pytest.raises(CheckpointError, match="is a PyTorch checkpoint, not an NVlabs pickle: use it as it is"):
        convert_file(path, tmp_path / "out.pt")
    with pytest.raises(DataError, match="is a PyTorch checkpoint, not an image"):
        load_photo(path, 16)
    if protocol < 4:
        assert set(load_checkpoint(path)) == {"g_ema"}
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch's three-line note on the protocol is not shown
            with pytest.raises(CheckpointError, match=r"legacy \(non-zip\) PyTorch file pickled with protocol 4 "
                                                      r"or higher.*torch.save\(torch.load\("):
                load_checkpoint(path)
        from cartoongan.weights.replacing import held_kind

        assert held_kind(path) == "a legacy PyTorch file"  # someone's model: no output replaces it


def test_a_torn_legacy_checkpoint_is_replaced_and_a_pickled_model_is_not(tmp_path, tiny_g):
    """A protocol-2 file cut short (an old rosinality checkpoint, copied half) was refused as "a
    legacy PyTorch file", and a whole torch.save(model) (pickled classes) was taken for torn."""
    import shlex

    from torch import nn

    from cartoongan.weights.replacing import held_kind

    whole = tmp_path / "old.pt"
    torch.save({"g_ema": tiny_g(16).state_dict()}, whole, _use_new_zipfile_serialization=False)
    torn = tmp_path / "torn.pt"
    torn.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert held_kind(torn) is None and held_kind(whole) == "a generator checkpoint"
    torch.save(nn.Linear(2, 2), tmp_path / "model.pt")
    assert held_kind(tmp_path / "model.pt") == "a PyTorch file that needs pickled code to load"
    quoted = tmp_path / "it's.pt"  # the re-save line is a command that works, whatever the name
    torch.save({"g_ema": {}}, quoted, _use_new_zipfile_serialization=False, pickle_protocol=4)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(quoted)
    argv = shlex.split(str(exc.value).split("`")[1])
    assert argv[:2] == ["python", "-c"] and repr(str(quoted)) in argv[2]


def test_config_f_widths_are_recognised():
    from cartoongan import Generator

    sd = Generator(64, 16, 1, channel_multiplier=2).state_dict()
    cfg = infer_generator_config(sd)
    assert (cfg["channel_multiplier"], cfg["channel_base"], cfg["channel_max"]) == (2, 16384, 512)


def test_what_we_write_has_rosinality_keys_and_round_trips(tmp_path, tiny_g):
    g = tiny_g(16)
    g.estimate_w_avg(256)
    path = save_checkpoint(tmp_path / "ours.pt", generator_checkpoint(g, kind="test", step=7))
    ckpt = load_checkpoint(path)
    got = {k: tuple(v.shape) for k, v in ckpt["g_ema"].items()}
    assert got == expected_generator_shapes(16, 32, 2, g.channels)
    assert torch.equal(ckpt["latent_avg"], g.w_avg)
    g2 = build_generator(ckpt)
    z = torch.randn(2, 32)
    assert torch.equal(g2(z, noise_mode="const"), g(z, noise_mode="const"))
    info = describe(ckpt)
    assert info["resolution"] == 16 and info["step"] == 7 and info["contains"] == ["g_ema", "latent_avg"]


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {Exploit.marker}",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    Exploit.marker = marker
    path = tmp_path / "evil.pt"
    torch.save({"g_ema": {}, "payload": Exploit()}, path)
    with pytest.raises(CheckpointError, match=r"refusing .*\(refused global (posix|nt)\.system\)"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("content,match", [
    (b"hello, I am text\n", "not a PyTorch checkpoint: it is a text file$"),
    (b"notes\n", "not a PyTorch checkpoint: it is a text file$"),  # not "refusing"
    (b"\x07\x01" + bytes(60), "not a readable .*its first bytes are not a pickle or a zip archive"),
    (None, "not a readable .*cut short"),  # truncated real checkpoint
    (b"", r"is empty \(0 bytes\)"),
    (b"\x89PNG\r\n\x1a\n" + bytes(40), "not a PyTorch checkpoint: it is a PNG image"),  # renamed picture
])
def test_unreadable_files(tmp_path, tiny_g, content, match):
    path = tmp_path / "bad.pt"
    if content is None:
        good = save_checkpoint(tmp_path / "good.pt", generator_checkpoint(tiny_g(16)))
        content = good.read_bytes()[:-300]
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_a_runs_text_files_name_its_checkpoint(tmp_path, tiny_g):
    """config.toml or log.jsonl tab-completed where the run's latest.pt belongs."""
    save_checkpoint(tmp_path / "latest.pt", generator_checkpoint(tiny_g(16)))
    for name, text in (("config.toml", "[train]\niters = 4\n"), ("log.jsonl", '{"step": 2, "loss_g": 0.5}\n')):
        (tmp_path / name).write_text(text)
        with pytest.raises(CheckpointError, match=rf"{name} is not a PyTorch checkpoint: it is a text file; "
                                                  rf"the run's checkpoint is .*latest\.pt$"):
            load_checkpoint(tmp_path / name)


@pytest.mark.parametrize("command", [["sample", "{}", "--seeds", "0"], ["convert", "{}"],
                                     ["finetune", "--source", "{}", "--data", "{data}", "--out", "{data}/../run"]])
def test_a_missing_well_known_model_says_where_to_get_it_and_where_to_put_it(tmp_path, command):
    """The FFHQ models and Cartoon-StyleGAN's, by their publishers' names: no package ships them."""
    from cartoongan_cli.app import app
    from typer.testing import CliRunner

    from cartoongan.weights.known import KNOWN_GENERATORS

    runner = CliRunner()
    name = "ffhq-res256-mirror-paper256-noaug.pkl" if command[0] == "convert" else "ffhq256.pt"
    path, mine = tmp_path / "networks" / name, tmp_path / f"mine{Path(name).suffix}"
    (tmp_path / "data").mkdir()
    res = runner.invoke(app, [a.format(path, data=tmp_path / "data") for a in command])
    url = KNOWN_GENERATORS[name][1]
    assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
    assert " ".join(res.output.split()).endswith(f"download it from {url} and save it as {path}"), res.output
    res = runner.invoke(app, [a.format(mine, data=tmp_path / "data") for a in command])
    assert res.exit_code == 1 and res.output.strip().endswith(f"checkpoint not found: {mine}"), res.output


def test_missing_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint file: name a .pt inside it$"):
        load_checkpoint(tmp_path)
    (tmp_path / "latest.pt").write_bytes(b"")  # a run folder: its latest.pt is named
    with pytest.raises(CheckpointError, match=r"a training run's is .*latest\.pt"):
        load_checkpoint(tmp_path)


def test_convert_of_a_torch_checkpoint_says_it_needs_none(tmp_path, tiny_g):
    from cartoongan.weights.nvlabs import read_pickle
    from cartoongan.weights.networks import generator_checkpoint

    save_checkpoint(tmp_path / "g.pt", generator_checkpoint(tiny_g()))
    with pytest.raises(CheckpointError, match="is a PyTorch checkpoint, not an NVlabs pickle: use it as it is"):
        read_pickle(tmp_path / "g.pt")


def test_quoted_causes_are_cut_at_a_word():
    from cartoongan.errors import first_line

    cut = first_line(ValueError("PytorchStreamReader failed reading zip archive: failed finding central directory"), 50)
    assert cut.endswith("…") and len(cut) <= 51 and cut[:-1] == "PytorchStreamReader failed reading zip archive:"


def test_dict_without_generator(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"model": {"w": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="no generator"):
        load_checkpoint(path)


def test_a_state_dict_saved_through_ddp_or_torch_compile_loads(tmp_path, tiny_g, tiny_d):
    """`torch.save({"g_ema": ddp_g.state_dict()})` names every weight 'module.…', a compiled network's
    '_orig_mod.…' (and a compiled DDP one both): the same network, so it loads as one; a prefix
    on only some names is no wrapper's and stays (then refused as foreign keys)."""
    g, d = tiny_g(32), tiny_d(32)
    wrapped = lambda sd, prefix: {prefix + k: v for k, v in sd.items()}  # noqa: E731
    torch.save({"g_ema": wrapped(g.state_dict(), "module._orig_mod."), "d": wrapped(d.state_dict(), "module.")},
               tmp_path / "ddp.pt")
    ckpt = load_checkpoint(tmp_path / "ddp.pt")
    z = torch.randn(2, 32)
    assert torch.equal(build_generator(ckpt)(z, noise_mode="const"), g(z, noise_mode="const"))
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(build_discriminator(ckpt)(x), d(x))
    partly = dict(g.state_dict())
    partly["module.extra"] = partly.pop("style.1.weight")
    torch.save({"g_ema": partly}, tmp_path / "partly.pt")
    with pytest.raises(CheckpointError, match="lacks 'style.1.weight'"):
        build_generator(load_checkpoint(tmp_path / "partly.pt"))


def test_a_bare_generator_state_dict_is_its_g_ema_and_a_bare_d_is_named(tmp_path, tiny_g, tiny_d):
    """`torch.save(g_ema.state_dict(), path)`, with no checkpoint dict around it, is how many scripts
    save a generator; a discriminator's weights alone cannot render anything."""
    g, d = tiny_g(32), tiny_d(32)
    torch.save(g.state_dict(), tmp_path / "g.pt")
    torch.save({"module." + k: v for k, v in d.state_dict().items()}, tmp_path / "d.pt")
    z = torch.randn(2, 32)
    assert torch.equal(build_generator(load_checkpoint(tmp_path / "g.pt"))(z, noise_mode="const"),
                       g(z, noise_mode="const"))
    with pytest.raises(CheckpointError, match="is a discriminator's state dict alone, with no generator"):
        load_checkpoint(tmp_path / "d.pt")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"holds no generator \('g_ema' or 'g'\); found \['weight'\]"):
        load_checkpoint(tmp_path / "other.pt")


def test_foreign_and_mismatched_keys(tmp_path, tiny_g):
    g = tiny_g(16)
    sd = dict(g.state_dict())
    sd["extra.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="unexpected"):
        build_generator({"g_ema": sd, "cartoongan": {"generator": g.config}})
    sd = dict(g.state_dict())
    sd["conv1.conv.weight"] = torch.zeros(1, 2, 2, 3, 3)
    with pytest.raises(CheckpointError, match="mis-shaped"):
        build_generator({"g_ema": sd, "cartoongan": {"generator": g.config}})
    sd = dict(g.state_dict())
    del sd["style.1.weight"]
    with pytest.raises(CheckpointError, match="lacks 'style.1.weight'"):
        build_generator({"g_ema": sd})


def test_kill_mid_save_keeps_previous_file(tmp_path, tiny_g, monkeypatch):
    path = save_checkpoint(tmp_path / "latest.pt", generator_checkpoint(tiny_g(16), step=1))
    before = path.read_bytes()

    def dying_save(obj, fh):
        fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"g_ema": {}})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]


def test_export_drops_training_state(tmp_path, tiny_g, tiny_d):
    from cartoongan_cli.app import app
    from typer.testing import CliRunner

    g = tiny_g(16)
    ckpt = generator_checkpoint(g, step=3)
    ckpt.update(g=g.state_dict(), d=tiny_d(16).state_dict(), g_optim={"state": {}}, train_state={"x": 1})
    src = save_checkpoint(tmp_path / "full.pt", ckpt)
    res = CliRunner().invoke(app, ["export", str(src), "-o", str(tmp_path / "slim.pt")])
    assert res.exit_code == 0, res.output
    slim = load_checkpoint(tmp_path / "slim.pt")
    assert set(slim) == {"g_ema", "g", "d", "cartoongan"} and slim["cartoongan"]["step"] == 3
    res = CliRunner().invoke(app, ["export", str(src), "-o", str(tmp_path / "g.pt"), "--g-ema-only"])
    assert set(load_checkpoint(tmp_path / "g.pt")) == {"g_ema", "cartoongan"}


def test_export_g_ema_only_of_a_checkpoint_without_g_ema_is_refused(tmp_path, tiny_g):
    """It wrote a file of metadata alone (exit 0, '0.0 MiB'), which every reader then refused."""
    from cartoongan_cli.app import app
    from typer.testing import CliRunner

    ckpt = generator_checkpoint(tiny_g(16))
    ckpt["g"] = ckpt.pop("g_ema")
    src = save_checkpoint(tmp_path / "only_g.pt", ckpt)
    res = CliRunner().invoke(app, ["export", str(src), "-o", str(tmp_path / "x.pt"), "--g-ema-only"])
    assert res.exit_code == 1 and "holds no g_ema, so --g-ema-only would keep no generator" in res.output
    assert not (tmp_path / "x.pt").exists()
    res = CliRunner().invoke(app, ["export", str(src), "-o", str(tmp_path / "x.pt")])
    assert res.exit_code == 0 and "g" in load_checkpoint(tmp_path / "x.pt")
    del ckpt["g"]  # no generator at all: refused on reading, before --g-ema-only could suggest keeping g
    src = save_checkpoint(tmp_path / "none.pt", ckpt)
    res = CliRunner().invoke(app, ["export", str(src), "-o", str(tmp_path / "y.pt"), "--g-ema-only"])
    assert res.exit_code == 1 and "holds no generator ('g_ema' or 'g')" in res.output and "g stays" not in res.output


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")  # torch's note on making one
@pytest.mark.parametrize("key,make,match", [
    ("g_ema", lambda t: t.to_sparse(), r"'g_ema' holds a sparse coo tensor: .*to_dense\(\)\) \(at 'style.1.weight'\)"),
    ("g", lambda t: torch.empty_like(t, device="meta"), "'g' holds a meta tensor .* from a network that holds its weights"),
    ("d", lambda t: t.to_sparse_csr(), "'d' holds a sparse csr tensor"),
    ("latent_avg", lambda t: torch.empty_like(t, device="meta"), "latent_avg is a meta tensor"),
])
def test_tensors_no_network_can_use_are_named_where_the_file_is_read(tmp_path, tiny_g, tiny_d, key, make, match):
    """torch.save keeps sparse and meta (value-less) tensors; every command failed on them later, in
    torch's traceback (meta: 'Tensor.item() cannot be called on meta tensors')."""
    from cartoongan_cli.app import app
    from typer.testing import CliRunner

    g, d = tiny_g(), tiny_d()
    ckpt = {"g_ema": g.state_dict(), "g": g.state_dict(), "d": d.state_dict(), "latent_avg": torch.zeros(g.style_dim)}
    state = ckpt[key] if key != "latent_avg" else None
    if state is None:
        ckpt[key] = make(ckpt[key])
    else:
        name = "style.1.weight" if key != "d" else next(k for k, v in state.items() if v.ndim == 2)
        ckpt[key] = {**state, name: make(state[name])}
    path = tmp_path / "odd.pt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)
    for command in (["info", str(path)], ["sample", str(path), "--seeds", "0", "--outdir", str(tmp_path / "s")]):
        res = CliRunner().invoke(app, command)
        assert res.exit_code == 1 and res.output.count("\n") == 1 and "odd.pt" in res.output, res.output
    assert not (tmp_path / "s").exists()


def test_a_read_only_output_is_refused_and_a_replaced_one_keeps_its_permissions(tmp_path, tiny_g):
    """`export a.pt -o keep.pt` over a read-only keep.pt replaced it (the rename needs the folder
    writable only), where `cp` refuses; and a replaced file came out 0644 whatever it was (a 0640
    file readable by the world after a rerun)."""
    from cartoongan.weights.networks import generator_checkpoint

    from .helpers import cli_where_permissions_bind

    src = save_checkpoint(tmp_path / "a.pt", generator_checkpoint(tiny_g(seed=1)))
    keep = save_checkpoint(tmp_path / "keep.pt", generator_checkpoint(tiny_g(seed=2)))
    before = keep.read_bytes()
    keep.chmod(0o444)
    res = cli_where_permissions_bind(["export", src, "-o", keep])
    assert res.returncode == 1 and f"error: {keep} is read-only: make it writable (chmod u+w)" in res.stderr, res
    assert keep.read_bytes() == before and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    keep.chmod(0o640)
    res = cli_where_permissions_bind(["export", src, "-o", keep])
    assert res.returncode == 0, res
    assert keep.read_bytes() != before and keep.stat().st_mode & 0o777 == 0o640


def test_a_read_only_file_among_a_commands_many_outputs_is_found_before_the_work(tmp_path, tiny_g):
    """Found at its own write, a read-only file stopped a resume at its first save (the steps
    before it lost) and a sample after the renders before it."""
    from cartoongan.train.runs import pretrain
    from cartoongan.weights.networks import generator_checkpoint

    from .helpers import blob_images, cli_where_permissions_bind, tiny_config

    run = tmp_path / "run"
    pretrain(tiny_config(iters=2), blob_images(tmp_path / "data", n=4), run)
    log = (run / "log.jsonl").read_text()
    (run / "latest.pt").chmod(0o444)
    res = cli_where_permissions_bind(["pretrain", "--resume", run, "--iters", "4"])
    assert res.returncode == 1 and f"error: {run / 'latest.pt'} is read-only" in res.stderr, res
    assert (run / "log.jsonl").read_text() == log and not list((run / "checkpoints").glob("00000[34].pt"))
    ckpt = save_checkpoint(tmp_path / "g.pt", generator_checkpoint(tiny_g()))
    out = tmp_path / "s"
    out.mkdir()
    (out / "seed0003.png").write_bytes(b"kept")
    (out / "seed0003.png").chmod(0o444)
    res = cli_where_permissions_bind(["sample", ckpt, "--seeds", "0-3", "--outdir", out])
    assert res.returncode == 1 and f"error: {out / 'seed0003.png'} is read-only" in res.stderr, res
    assert sorted(p.name for p in out.iterdir()) == ["seed0003.png"]


def test_read_only_outputs_of_toonify_are_found_before_it_projects_and_a_best_pt_unwritten_is_left(tmp_path, tiny_g):
    """A read-only toonify.png was found after the projection, its target, projection and w already
    replaced beside the old picture. A read-only best.pt is no bar to a resume without evaluations,
    which never writes it."""
    from cartoongan.train.runs import pretrain
    from cartoongan.weights.networks import generator_checkpoint

    from .helpers import blob_images, cli_where_permissions_bind, tiny_config

    ckpt = save_checkpoint(tmp_path / "g.pt", generator_checkpoint(tiny_g()))
    out = tmp_path / "t"
    out.mkdir()
    (out / "toonify.png").write_bytes(b"kept")
    (out / "toonify.png").chmod(0o444)
    photo = blob_images(tmp_path / "photos", n=1) / "img000.png"
    res = cli_where_permissions_bind(["toonify", photo, "--source", ckpt, "--target", ckpt, "--no-align", "--loss",
                                      "mse", "--steps", "1", "--outdir", out])
    assert res.returncode == 1 and f"error: {out / 'toonify.png'} is read-only" in res.stderr, res
    assert sorted(p.name for p in out.iterdir()) == ["toonify.png"]
    run = tmp_path / "run"
    pretrain(tiny_config(iters=2), blob_images(tmp_path / "data", n=4), run)
    (run / "best.pt").write_bytes((run / "latest.pt").read_bytes())
    (run / "best.pt").chmod(0o444)
    res = cli_where_permissions_bind(["pretrain", "--resume", run, "--iters", "3"])
    assert res.returncode == 0, res
