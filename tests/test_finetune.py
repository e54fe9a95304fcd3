import copy
import os
import shutil
from pathlib import Path

import pytest
import torch
from cartoongan_cli.app import app
from typer.testing import CliRunner

from cartoongan import Discriminator, Generator, load_checkpoint, save_checkpoint
from cartoongan.config import FinetuneConfig
from cartoongan.errors import ConfigError
from cartoongan.pipelines.swap import swap_layers
from cartoongan.train.freeze import make_plan
from cartoongan.train.losses import structure_loss
from cartoongan.train.runs import finetune
from cartoongan.weights.networks import build_generator, generator_checkpoint

from .conftest import randomized
from .helpers import blob_images, tiny_config
from .reference_stylegan2 import expected_generator_shapes

runner = CliRunner()
ARCH = dict(style_dim=32, n_mlp=2, channel_base=512, channel_max=32)


def make_source(path, size=16, with_d=True, seed=0):
    torch.manual_seed(seed)
    g = randomized(Generator(size, **ARCH), seed, 0.2)
    g.estimate_w_avg(256)
    ckpt = generator_checkpoint(g)
    ckpt["g"] = ckpt["g_ema"]
    if with_d:
        ckpt["d"] = Discriminator(size, channel_base=512, channel_max=32).state_dict()
        ckpt["cartoongan"]["discriminator"] = dict(size=size, channel_multiplier=2, channel_base=512, channel_max=32)
    return save_checkpoint(path, ckpt)


def frozen_names(g, d, plan):
    frozen = {id(p) for m in plan.frozen_modules(g, d) for p in m.parameters()}
    return ({n for n, p in g.named_parameters() if id(p) in frozen},
            {n for n, p in d.named_parameters() if id(p) in frozen})


@pytest.mark.parametrize("method", [
    dict(freeze_g=2), dict(freeze_sg=2), dict(freeze_d=2), dict(struct_loss=2), dict(freeze_sg=1, struct_loss=2, freeze_d=1, freeze_mapping=True),
    dict(freeze_noise=True),
])
def test_frozen_parameters_bitwise_unchanged_and_trained_ones_move(tmp_path, method):
    src_path = make_source(tmp_path / "src.pt")
    data = blob_images(tmp_path / "data", n=6)
    cfg = tiny_config(iters=3, d_reg_every=2, g_reg_every=2)
    for k, v in method.items():
        setattr(cfg.finetune, k, v)
    res = finetune(cfg, src_path, data, tmp_path / "run")
    before, after = load_checkpoint(src_path), load_checkpoint(res.latest)
    g, d = Generator(16, **ARCH), Discriminator(16, channel_base=512, channel_max=32)
    plan = make_plan(cfg.finetune, g, d)
    g_frozen, d_frozen = frozen_names(g, d, plan)
    assert len(g_frozen) + len(d_frozen) > 0 or method == dict(struct_loss=2)
    for net, frozen, names in (("g", g_frozen, [n for n, _ in g.named_parameters()]),
                               ("d", d_frozen, [n for n, _ in d.named_parameters()])):
        for name in names:
            same = torch.equal(before[net][name], after[net][name])
            assert same == (name in frozen), (net, name, "frozen" if name in frozen else "trained")


def test_the_results_frozen_blocks_are_the_source_g_emas_exactly(tmp_path):
    """g started from the source's g and g_ema from its g_ema: the EMA pulled g_ema's frozen blocks
    toward the source's g (1.2e-4 after 12 steps here, 99.6% of the way over 80 kimg), so the model
    a user samples no longer had the source's frozen blocks. Now g's frozen blocks start as the
    source g_ema's, and both networks keep them bit for bit; each keeps its own constant noise."""
    src_path = make_source(tmp_path / "src.pt")
    src = load_checkpoint(src_path)
    torch.manual_seed(3)
    src["g"] = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in src["g"].items()}
    save_checkpoint(src_path, src)
    data = blob_images(tmp_path / "data", n=6)
    cfg = tiny_config(iters=4, d_reg_every=2, g_reg_every=2)
    cfg.finetune.freeze_g, cfg.finetune.freeze_mapping, cfg.finetune.freeze_noise = 2, True, True
    after = load_checkpoint(finetune(cfg, src_path, data, tmp_path / "run").latest)
    g, d = Generator(16, **ARCH), Discriminator(16, channel_base=512, channel_max=32)
    frozen, _ = frozen_names(g, d, make_plan(cfg.finetune, g, d))
    assert any(n.startswith("style.") for n in frozen) and any(n.endswith("noise.weight") for n in frozen)
    for name in frozen:
        assert torch.equal(after["g_ema"][name], src["g_ema"][name]), name
        assert torch.equal(after["g"][name], src["g_ema"][name]), name
    trained = [n for n, _ in g.named_parameters() if n not in frozen]
    assert all(not torch.equal(after["g"][n], src["g"][n]) for n in trained)  # the rest trains from the source's g
    # rosinality's train.py builds g and g_ema apart, so their constant noise maps differ (src["g"]'s
    # were moved above): the EMA copied g's into g_ema, and the frozen blocks drew with other noise
    noises = [k for k in src["g_ema"] if k.startswith("noises.")]
    assert noises and all(not torch.equal(src["g"][k], src["g_ema"][k]) for k in noises)
    for k in noises:
        assert torch.equal(after["g_ema"][k], src["g_ema"][k]) and torch.equal(after["g"][k], src["g"][k]), k


def test_a_swap_that_would_be_one_of_its_inputs_is_refused(tmp_path):
    """After a fine-tune with the 4-8 px blocks and the mapping frozen, `swap --res 8` wrote TARGET
    again ("wrote spsl.pt", exit 0: the README's own pipeline did this at 256 px), and a blend too
    narrow at the full --res wrote SOURCE again."""
    src_path = make_source(tmp_path / "src.pt", size=32)
    data = blob_images(tmp_path / "data", n=6)
    cfg = tiny_config(iters=2)
    cfg.finetune.freeze_g, cfg.finetune.freeze_mapping = 2, True
    target = finetune(cfg, src_path, data, tmp_path / "run").latest
    source, tuned = (build_generator(load_checkpoint(p), "g_ema") for p in (src_path, target))
    with pytest.raises(ConfigError, match=r"the swap would be TARGET itself: .* up to 8 px .*pass --res 16 or higher"):
        swap_layers(source, tuned, res=8)
    assert not torch.equal(swap_layers(source, tuned, res=16).state_dict()["convs.2.conv.weight"],
                           tuned.state_dict()["convs.2.conv.weight"])  # 16 px from SOURCE: a real swap
    with pytest.raises(ConfigError, match="the swap would be SOURCE itself"):
        swap_layers(source, tuned, res=32, blend_width=1e-300)


def test_settings_that_train_as_if_not_given_are_warned_of(tmp_path):
    """FreezeSG beside a frozen mapping (the paper recipe, as the reference) trained bit for bit as
    FreezeG, and a structure loss over frozen source-fed blocks logged 0.0 on every step: no word."""
    import json

    from cartoongan.report import ListReporter

    src_path = make_source(tmp_path / "src.pt", size=32)
    data = blob_images(tmp_path / "data", n=6)
    struct = {}
    for n in (1, 2):
        cfg = tiny_config(iters=3, log_every=1)
        cfg.finetune.freeze_sg, cfg.finetune.struct_loss = 2, n
        reporter = ListReporter()
        finetune(cfg, src_path, data, tmp_path / f"s{n}", reporter)
        rows = [json.loads(line) for line in (tmp_path / f"s{n}" / "log.jsonl").read_text().splitlines()]
        struct[n] = ([r["loss_struct"] for r in rows], [w for w in reporter.warnings if "struct_loss" in w])
    assert struct[1][0] == [0.0] * 3 and "it is 0 on every step" in struct[1][1][0] and "above 1" in struct[1][1][0]
    assert struct[2][0][-1] > 0 and struct[2][1] == []  # (0 at step 1 only: the target starts as the source)
    runs = {}
    for name, mapping in (("sg", True), ("g", False)):
        cfg = tiny_config(iters=2)
        cfg.finetune.freeze_sg, cfg.finetune.freeze_mapping = (2, True) if name == "sg" else (0, True)
        cfg.finetune.freeze_g = 0 if name == "sg" else 2
        reporter = ListReporter()
        runs[name] = load_checkpoint(finetune(cfg, src_path, data, tmp_path / name, reporter).latest)
        if name == "sg":
            assert any("does nothing beside freeze_mapping" in w for w in reporter.warnings), reporter.warnings
    assert all(torch.equal(runs["sg"]["g_ema"][k], runs["g"]["g_ema"][k]) for k in runs["g"]["g_ema"])  # why it warns


def test_freeze_noise_freezes_exactly_the_noise_strengths():
    g, d = Generator(16, **ARCH), Discriminator(16, channel_base=512, channel_max=32)
    g_frozen, d_frozen = frozen_names(g, d, make_plan(FinetuneConfig(freeze_noise=True), g, d))
    assert g_frozen == {n for n, _ in g.named_parameters() if n.endswith("noise.weight")} and len(g_frozen) == g.num_layers
    assert not d_frozen


def test_freeze_sg_feeds_source_w_to_exactly_the_frozen_slots(tmp_path):
    from cartoongan.train.distributed import DistInfo
    from cartoongan.train.trainer import Networks, Trainer

    torch.manual_seed(0)
    source = randomized(Generator(16, **ARCH), 1)
    g = randomized(Generator(16, **ARCH), 2)
    d = Discriminator(16, channel_base=512, channel_max=32)
    cfg = tiny_config()
    cfg.finetune.freeze_sg = 2
    plan = make_plan(cfg.finetune, g, d)
    from cartoongan.data.dataset import ImageDataset

    data = ImageDataset(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), ["a", "b"])
    trainer = Trainer(cfg, Networks(g, d, copy.deepcopy(g), source), data, tmp_path, DistInfo(), plan=plan, kind="finetune")
    z, z2 = torch.randn(3, 32), torch.randn(3, 32)
    for mix in ((None, None), (z2, 3)):
        ws, src_ws = trainer._ws(z, *mix)
        assert torch.equal(src_ws, source.ws_from_z(z, *mix))
        slots = sorted({s for b in range(2) for s in g.block_w_slots(b)})
        assert slots == [0, 1, 2, 3] == list(range(plan.source_slots))
        assert torch.equal(ws[:, :4], src_ws[:, :4])
        assert torch.equal(ws[:, 4:], g.ws_from_z(z, *mix)[:, 4:])
        assert not torch.allclose(ws[:, 4], src_ws[:, 4])


def test_structure_loss_zero_for_equal_nets_positive_after_moving_and_grad_only_to_target():
    torch.manual_seed(0)
    source = randomized(Generator(16, **ARCH), 1).requires_grad_(False)
    target = copy.deepcopy(source).requires_grad_(True)
    z = torch.randn(2, 32)
    noises = source.make_noise(2)
    ws = source.ws_from_z(z)
    for tap in ("rgbs", "features"):
        kw = {"return_" + tap: True}
        s = getattr(source.synthesis(ws, noises=noises, **kw), tap)
        t = getattr(target.synthesis(target.ws_from_z(z), noises=noises, **kw), tap)
        assert structure_loss(t, s, 2).item() == 0.0
    with torch.no_grad():
        target.convs[0].conv.weight.add_(0.3)
    s = source.synthesis(ws, noises=noises, return_rgbs=True).rgbs
    t = target.synthesis(target.ws_from_z(z), noises=noises, return_rgbs=True).rgbs
    loss = structure_loss(t, s, 2)
    assert loss.item() > 0
    loss.backward()
    assert all(p.grad is None for p in source.parameters())
    assert target.convs[0].conv.weight.grad.abs().sum() > 0
    # the 8 px and 16 px outputs count; the 4 px one does not
    assert target.to_rgb1.conv.weight.grad is None or target.to_rgb1.conv.weight.grad.abs().sum() > 0


def test_source_runs_once_per_g_step(tmp_path, monkeypatch):
    import cartoongan.models.generator as gen_mod

    calls = []
    original = gen_mod.Generator.synthesis

    def counting(self, ws, *a, **k):
        calls.append((id(self), torch.is_grad_enabled(), k.get("n_blocks")))
        return original(self, ws, *a, **k)

    monkeypatch.setattr(gen_mod.Generator, "synthesis", counting)
    src_path = make_source(tmp_path / "src.pt")
    cfg = tiny_config(iters=2, g_reg_every=0, d_reg_every=100)
    cfg.finetune.struct_loss = 1
    cfg.train.sample_every = cfg.train.ckpt_every = 100
    calls.clear()
    finetune(cfg, src_path, blob_images(tmp_path / "data", n=4), tmp_path / "run")
    by_net = {}
    for net, grad, n_blocks in calls:
        by_net.setdefault(net, []).append((grad, n_blocks))
    # per step: target renders in the D step (no grad) and the G step (grad), in full; the source
    # once, without grad, and only up to the loss's last tap (blocks 0..1 of a 16 px network's 3)
    source_calls = [v for v in by_net.values() if v == [(False, 2), (False, 2)]]
    assert len(source_calls) == 1


def test_swap_takes_low_blocks_from_source_and_loads_in_rosinality_layout(tmp_path):
    torch.manual_seed(0)
    source, target = randomized(Generator(32, **ARCH), 1), randomized(Generator(32, **ARCH), 2)
    out = swap_layers(source, target, res=8)
    for b in range(out.n_blocks):
        origin = source if out.resolutions[b] <= 8 else target
        for m_out, m_src in zip(out.block_modules(b), origin.block_modules(b)):
            for (k, v), v_src in zip(m_out.state_dict().items(), m_src.state_dict().values()):
                assert torch.equal(v, v_src), (b, k)
        for name in out.block_noise_names(b):
            assert torch.equal(getattr(out.noises, name), getattr(origin.noises, name))
    assert all(torch.equal(a, b) for a, b in zip(out.style.parameters(), source.style.parameters()))
    mapped_by_target = swap_layers(source, target, res=8, mapping="target")
    assert all(torch.equal(a, b) for a, b in zip(mapped_by_target.style.parameters(), target.style.parameters()))
    shapes = {k: tuple(v.shape) for k, v in out.state_dict().items()}
    assert shapes == expected_generator_shapes(32, 32, 2, out.channels)


def test_swap_blend_width_is_a_smooth_mix(tmp_path):
    torch.manual_seed(0)
    source, target = randomized(Generator(32, **ARCH), 1), randomized(Generator(32, **ARCH), 2)
    out = swap_layers(source, target, res=8, blend_width=0.5)
    w = lambda g: g.to_rgbs[0].conv.weight  # 8 px block: mostly source  # noqa: E731
    t = ((w(out) - w(source)) / (w(target) - w(source))).mean().item()
    assert 0 < t < 0.5
    # a blend narrow enough to overflow exp() is the hard switch, not a crash
    from cartoongan.pipelines.swap import target_fraction

    assert [target_fraction(r, 8, 1e-300) for r in (4, 8, 16, 32)] == [0.0, 0.0, 1.0, 1.0]


def test_swap_and_toonify_name_models_given_the_wrong_way_round_or_unrelated(tmp_path):
    """SOURCE fine-tuned from TARGET (its provenance's source digest is TARGET's weights): the photo
    and cartoon models look swapped. A reverse swap is a fair experiment, so it is a warning; the
    same check holds for an exported (slim) fine-tuned checkpoint."""
    src = make_source(tmp_path / "src.pt")
    data = blob_images(tmp_path / "data", n=4)
    assert runner.invoke(app, ["finetune", "--source", str(src), "--data", str(data), "--out", str(tmp_path / "r"),
                               "--recipe", "tiny", "--iters", "1"]).exit_code == 0
    assert runner.invoke(app, ["export", str(tmp_path / "r" / "latest.pt"), "-o", str(tmp_path / "t.pt")]).exit_code == 0
    for tuned in (tmp_path / "r" / "latest.pt", tmp_path / "t.pt"):
        res = runner.invoke(app, ["swap", str(tuned), str(src), "-o", str(tmp_path / "rev.pt")])
        said = " ".join(res.output.split())
        assert res.exit_code == 0 and f"{tuned} descends from {src} (fine-tuned from it, or from a model fine-tuned from it): SOURCE and TARGET look swapped" in said, said
        (tmp_path / "rev.pt").unlink()
    res = runner.invoke(app, ["swap", str(src), str(tmp_path / "t.pt"), "-o", str(tmp_path / "ok.pt")])
    assert res.exit_code == 0 and "warning" not in res.output, res.output
    other = make_source(tmp_path / "other.pt", seed=3)  # another photo model: its layers do not line up with t.pt's
    res = runner.invoke(app, ["swap", str(other), str(tmp_path / "t.pt"), "-o", str(tmp_path / "mixed.pt")])
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and (f"{tmp_path / 't.pt'} was fine-tuned from another model ({src.resolve()}), not "
                                   f"from {other}") in said, said
    # a chain photo -> t.pt -> t2.pt records its whole lineage: the photo model is still t2's ancestor
    assert runner.invoke(app, ["finetune", "--source", str(tmp_path / "t.pt"), "--data", str(data), "--out",
                               str(tmp_path / "r2"), "--recipe", "tiny", "--iters", "1"]).exit_code == 0
    t2 = tmp_path / "r2" / "latest.pt"
    assert len(load_checkpoint(t2)["cartoongan"]["provenance"]["lineage"]) == 2
    for source, warned in ((src, False), (tmp_path / "t.pt", False), (other, True)):
        res = runner.invoke(app, ["swap", str(source), str(t2), "-o", str(tmp_path / f"chain{source.stem}.pt")])
        said = " ".join(res.output.split())
        assert res.exit_code == 0 and ("was fine-tuned from another model" in said) == warned, said
    res = runner.invoke(app, ["swap", str(t2), str(src), "-o", str(tmp_path / "back.pt")])
    assert "SOURCE and TARGET look swapped" in " ".join(res.output.split()), res.output
    photo = next(data.iterdir())
    for source, target, expected in ((tmp_path / "t.pt", src, "--source looks like the cartoon model"),
                                     (other, tmp_path / "t.pt", "a latent projected with --source need not carry over"),
                                     (src, tmp_path / "t.pt", None)):
        res = runner.invoke(app, ["toonify", str(photo), "--source", str(source), "--target", str(target), "--no-align",
                                  "--steps", "1", "--loss", "mse", "--outdir", str(tmp_path / f"toon{source.stem}")])
        said = " ".join(res.output.split())
        assert res.exit_code == 0, said
        assert (expected in said) if expected else "warning" not in said, said


def test_info_names_the_data_of_each_stretch_of_a_run_resumed_on_other_data(tmp_path):
    """A resume on other data is warned of, but `info` then credited the whole run to the last data:
    the first stretch's data is kept in the history, as changed settings are."""
    import json

    src = make_source(tmp_path / "src.pt")
    toons, photos = blob_images(tmp_path / "toons", n=4), blob_images(tmp_path / "photos", n=3, seed=1)
    run = tmp_path / "r"
    assert runner.invoke(app, ["finetune", "--source", str(src), "--data", str(toons), "--out", str(run),
                               "--recipe", "tiny", "--iters", "2"]).exit_code == 0
    res = runner.invoke(app, ["finetune", "--resume", str(run), "--iters", "3", "--data", str(photos)])
    assert res.exit_code == 0 and "resumed from step 2 on other data" in " ".join(res.output.split()), res.output
    summary = json.loads(runner.invoke(app, ["info", str(run / "latest.pt"), "--json"]).stdout)
    assert summary["data"] == f"{photos.resolve()} (since step 2; before it, steps 0-2: {toons.resolve()} (4 images))"
    assert runner.invoke(app, ["finetune", "--resume", str(run), "--iters", "4"]).exit_code == 0  # the same data
    assert json.loads(runner.invoke(app, ["info", str(run / "latest.pt"), "--json"]).stdout)["data"] == summary["data"]
    assert "data" not in json.loads(runner.invoke(app, ["info", str(src), "--json"]).stdout)


def test_a_swap_that_would_be_its_source_says_why_it_is(tmp_path):
    """`swap SW T --res 8` where SW is an earlier `swap S T --res 8` would be SW itself: refused
    as "the blend gives TARGET no share", though no blend was given. The blend's own case stays."""
    a, b = make_source(tmp_path / "a.pt", seed=1), make_source(tmp_path / "b.pt", seed=2)
    assert runner.invoke(app, ["swap", str(a), str(b), "--res", "8", "-o", str(tmp_path / "sw.pt")]).exit_code == 0
    res = runner.invoke(app, ["swap", str(tmp_path / "sw.pt"), str(b), "--res", "8", "-o", str(tmp_path / "again.pt")])
    said = " ".join(res.output.split())
    assert res.exit_code == 2 and "SOURCE already holds TARGET's blocks above 8 px" in said and "blend" not in said, said
    res = runner.invoke(app, ["swap", str(a), str(b), "--res", "16", "--blend-width", "0.01", "-o", str(tmp_path / "x.pt")])
    assert res.exit_code == 2 and "the blend gives TARGET no share" in " ".join(res.output.split()), res.output


def test_info_names_the_method_and_training_a_model_was_made_with(tmp_path):
    """A shared fine-tuned model (exported: no run folder beside it) still says how it was made."""
    import json

    src = make_source(tmp_path / "src.pt")
    data = blob_images(tmp_path / "data", n=4)
    assert runner.invoke(app, ["finetune", "--source", str(src), "--data", str(data), "--out", str(tmp_path / "r"),
                               "--recipe", "tiny", "--iters", "2", "--freeze-sg", "2", "--freeze-d", "1",
                               "--struct-loss", "1", "--augment", "none"]).exit_code == 0
    assert runner.invoke(app, ["export", str(tmp_path / "r" / "latest.pt"), "-o", str(tmp_path / "t.pt")]).exit_code == 0
    res = runner.invoke(app, ["info", str(tmp_path / "t.pt"), "--json"])
    summary = json.loads(res.stdout)
    assert summary["method"] == "FreezeSG 2, FreezeD 1, structure loss over 1 resolution (weight 1, rgb taps)", summary
    assert summary["training"] == "2 steps x batch 4 = 0.008 kimg, augment none, precision fp32", summary
    res = runner.invoke(app, ["info", str(src), "--json"])  # no recorded config: no such rows
    assert "method" not in json.loads(res.stdout) and "training" not in json.loads(res.stdout)


def test_info_says_a_fixed_augmentation_and_an_ada_p_just_begun():
    """`--augment none --augment-p 0.3` augments every batch at p 0.3: info said "augment none". An
    ADA p of 0.000384 read "p now 0.000", as if it never augmented."""
    from cartoongan.weights.networks import _recorded_training

    meta = {"step": 4, "images": 16, "config": {"train": {"batch": 4, "augment": "none", "augment_p": 0.3,
                                                          "precision": "fp32"}}}
    assert _recorded_training(meta, {})["training"] == \
        "4 steps x batch 4 = 0.016 kimg, augment at a fixed p 0.3, precision fp32"
    meta["config"]["train"].update(augment="ada", augment_p=0.0)
    assert "augment ada (p now 0.000384)" in _recorded_training(meta, {"ada_aug_p": 0.000384})["training"]
    meta["config"]["train"].update(augment="none")
    assert "augment none," in _recorded_training(meta, {})["training"]


def test_swap_cli_writes_provenance_and_refuses_mismatch(tmp_path):
    a = make_source(tmp_path / "a.pt", seed=1)
    b = make_source(tmp_path / "b.pt", seed=2)
    res = runner.invoke(app, ["swap", str(a), str(b), "-o", str(tmp_path / "s.pt")])
    assert res.exit_code == 0, res.output
    ckpt = load_checkpoint(tmp_path / "s.pt")
    # the default switch (16) at the 16 px models' full size would copy SOURCE: half their size instead
    assert ckpt["cartoongan"]["provenance"]["res"] == 8 and ckpt["cartoongan"]["kind"] == "swap"
    swapped, target = build_generator(ckpt), build_generator(load_checkpoint(b))
    assert torch.equal(swapped.to_rgbs[-1].conv.weight, target.to_rgbs[-1].conv.weight)
    res = runner.invoke(app, ["swap", str(a), str(b), "--res", "16", "-o", str(tmp_path / "full.pt")])
    assert res.exit_code == 2 and "--res 16 is the models' full size" in res.output and "[4, 8]" in res.output, res.output
    assert not (tmp_path / "full.pt").exists()
    for extra in (["--mapping", "target"], ["--blend-width", "1"]):  # then not a copy: allowed
        res = runner.invoke(app, ["swap", str(a), str(b), "--res", "16", *extra, "-o", str(tmp_path / "f.pt")])
        assert res.exit_code == 0, (extra, res.output)
    c = make_source(tmp_path / "c.pt", size=32)
    res = runner.invoke(app, ["swap", str(a), str(c), "-o", str(tmp_path / "x.pt")])
    assert res.exit_code == 1 and "differ in size: 16 vs 32" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x.pt").exists()


def test_freeze_counts_out_of_range_name_the_limit():
    g, d = Generator(256, 8, 1, channel_base=64, channel_max=8), Discriminator(256, channel_base=64, channel_max=8)
    with pytest.raises(ConfigError, match=r"--freeze-sg 9 .*0\.\.6"):
        make_plan(FinetuneConfig(freeze_sg=9), g, d)
    with pytest.raises(ConfigError, match=r"--freeze-d 7"):
        make_plan(FinetuneConfig(freeze_d=7), g, d)


@pytest.mark.parametrize("args,expect", [
    (["--freeze-g", "9"], "--freeze-g 9 is out of range"),
    (["--struct-loss", "7"], "--struct-loss 7 is out of range"),
    (["--struct-weight", "-1", "--struct-loss", "1"], "--struct-weight ([finetune] struct_weight) must be"),
    (["--struct-weight", "2"], "the structure loss, which is off"),
    (["--struct-tap", "features"], "--struct-tap picks the taps of the structure loss, which is off"),
    (["--eval-n", "4"], "--eval-n sizes the KID evaluation, which is off: add --eval-every K"),
    (["--struct-weight", "0", "--struct-loss", "1"], "must be > 0 while the structure loss is on"),
])
def test_finetune_bad_values(tmp_path, args, expect):
    src = make_source(tmp_path / "src.pt")
    data = blob_images(tmp_path / "data", n=2)
    res = runner.invoke(app, ["finetune", "--source", str(src), "--data", str(data), "--out", str(tmp_path / "r"),
                              "--recipe", "tiny", "--iters", "1", *args])
    assert res.exit_code == 2 and expect in res.output and "Traceback" not in res.output


def test_pretrain_eval_n_without_evaluations_is_refused_and_a_resumed_runs_own_evaluations_count(tmp_path):
    data = blob_images(tmp_path / "data", n=2)
    base = ["pretrain", "--data", str(data), "--recipe", "tiny"]
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "r"), "--iters", "1", "--eval-n", "4"])
    assert res.exit_code == 2 and "--eval-n sizes the KID evaluation, which is off" in res.output, res.output
    assert not (tmp_path / "r").exists()
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "r"), "--iters", "1", "--eval-every", "5", "--eval-n", "2"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["pretrain", "--resume", str(tmp_path / "r"), "--iters", "2", "--eval-n", "3"])
    assert res.exit_code == 0, res.output  # the run's config.toml has evaluations on


def test_source_without_d_needs_fresh_d(tmp_path):
    src = make_source(tmp_path / "src.pt", with_d=False)
    data = blob_images(tmp_path / "data", n=2)
    base = ["finetune", "--source", str(src), "--data", str(data), "--recipe", "tiny", "--iters", "1"]
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "r1")])
    assert res.exit_code == 1 and "--fresh-d" in res.output and len(res.output.strip().splitlines()) == 1
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "r2"), "--fresh-d", "--freeze-sg", "2", "--struct-loss", "2"])
    assert res.exit_code == 0, res.output
    assert "random weights" in res.output and "fine-tuning plan" in res.output
    assert load_checkpoint(tmp_path / "r2" / "latest.pt")["cartoongan"]["kind"] == "finetune"
    # FreezeD of a fresh D would keep random blocks for good: refused (it was the one warning above)
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "r3"), "--fresh-d", "--freeze-d", "2"])
    assert res.exit_code == 2 and "with --fresh-d they would be random and never train" in res.output, res.output
    assert not (tmp_path / "r3" / "latest.pt").exists()


def test_fresh_d_with_a_source_that_has_d_says_it_does_nothing(tmp_path):
    src = make_source(tmp_path / "src.pt")
    res = runner.invoke(app, ["finetune", "--source", str(src), "--data", str(blob_images(tmp_path / "data", n=2)),
                              "--recipe", "tiny", "--iters", "1", "--out", str(tmp_path / "r"), "--fresh-d"])
    assert res.exit_code == 0 and "--fresh-d) does nothing" in " ".join(res.output.split()), res.output


def test_a_resume_says_nothing_of_where_d_starts_and_refuses_a_new_fresh_d(tmp_path):
    """A resumed run's D comes from its latest.pt, yet the resume warned "has no discriminator:
    starting D from random weights", or with --fresh-d "does nothing, D starts from the source's",
    and recorded fresh_d False -> True as a change that applies from here on."""
    data = blob_images(tmp_path / "data", n=2)
    for name, with_d, flags in (("nod", False, ["--fresh-d"]), ("hasd", True, [])):
        src = make_source(tmp_path / f"{name}.pt", with_d=with_d)
        run = tmp_path / name
        assert runner.invoke(app, ["finetune", "--source", str(src), "--data", str(data), "--recipe", "tiny",
                                   "--iters", "1", "--out", str(run), *flags]).exit_code == 0
        d_before = load_checkpoint(run / "latest.pt")["d"]
        res = runner.invoke(app, ["finetune", "--resume", str(run), "--iters", "2"])
        said = " ".join(res.output.split())
        assert res.exit_code == 0 and "discriminator" not in said and "random weights" not in said, said
        d_after = load_checkpoint(run / "latest.pt")["d"]
        assert any(not torch.equal(d_before[k], d_after[k]) for k in d_before)  # the run's D trained on
    res = runner.invoke(app, ["finetune", "--resume", str(tmp_path / "hasd"), "--iters", "3", "--fresh-d"])
    assert res.exit_code == 2 and "a resumed run's D is restored from" in " ".join(res.output.split()), res.output
    assert load_checkpoint(tmp_path / "hasd" / "latest.pt")["cartoongan"]["step"] == 2


def test_blocks_frozen_from_a_resume_hold_one_value_in_g_and_g_ema(tmp_path):
    """`--resume --freeze-g 3` over a --freeze-g 2 run: block 2 was fixed in g at its trained value
    while g_ema, the model users sample, kept moving toward it: frozen parts differed in g and g_ema."""
    src = make_source(tmp_path / "src.pt", size=32)
    data = blob_images(tmp_path / "data", n=2, size=32)
    run = tmp_path / "run"
    assert runner.invoke(app, ["finetune", "--source", str(src), "--data", str(data), "--recipe", "tiny",
                               "--iters", "2", "--freeze-g", "1", "--out", str(run)]).exit_code == 0
    res = runner.invoke(app, ["finetune", "--resume", str(run), "--iters", "4", "--freeze-g", "2"])
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and "frozen from step 2 on" in said and "keep the run's g_ema values" in said, said
    mid = load_checkpoint(run / "latest.pt")
    res = runner.invoke(app, ["finetune", "--resume", str(run), "--iters", "6"])
    assert res.exit_code == 0 and "frozen from step" not in res.output, res.output  # nothing newly frozen
    end = load_checkpoint(run / "latest.pt")
    block1 = [k for k in end["g"] if k.startswith(("convs.0.", "convs.1.", "to_rgbs.0."))]
    assert block1
    for k in block1:
        assert torch.equal(end["g"][k], end["g_ema"][k]) and torch.equal(end["g_ema"][k], mid["g_ema"][k]), k


def test_a_structure_loss_over_blocks_a_resume_froze_is_not_called_zero(tmp_path):
    """`--resume --freeze-sg 2 --struct-loss 1` over a --freeze-sg 1 run: block 1 keeps the run's
    values, not the source's, so the loss over it is not 0 (it logged 1e-05); the warning said it
    was 0 on every step. A run frozen so from its start is still warned of."""
    src = make_source(tmp_path / "src.pt", size=32)
    data = blob_images(tmp_path / "data", n=2, size=32)
    run = tmp_path / "run"
    common = ["--recipe", "tiny", "--batch", "2"]
    assert runner.invoke(app, ["finetune", "--source", str(src), "--data", str(data), *common, "--iters", "2",
                               "--freeze-sg", "1", "--struct-loss", "1", "--out", str(run)]).exit_code == 0
    res = runner.invoke(app, ["finetune", "--resume", str(run), "--iters", "3", "--freeze-sg", "2"])
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and "frozen from step 2 on" in said and "0 on every step" not in said, said
    res = runner.invoke(app, ["finetune", "--source", str(src), "--data", str(data), *common, "--iters", "2",
                              "--freeze-sg", "2", "--struct-loss", "1", "--out", str(tmp_path / "fresh")])
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and "0 on every step" in said and "give --struct-loss above 1" in said, said
    # a resume that freezes only blocks above the loss's taps: the loss is still 0, and said so
    res = runner.invoke(app, ["finetune", "--resume", str(tmp_path / "fresh"), "--iters", "3", "--freeze-g", "3"])
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and "frozen from step 2 on" in said and "0 on every step" in said, said
    # FreezeSG 2 with FreezeG 3 and its own mapping: --struct-loss 2 reads the target's w slots already
    from cartoongan.config import FinetuneConfig
    from cartoongan.train.freeze import struct_loss_without_effect

    note = struct_loss_without_effect(FinetuneConfig(freeze_g=3, freeze_sg=2, struct_loss=1))
    assert note.endswith("give --struct-loss above 1"), note


def test_a_data_parallel_rank_that_writes_nothing_reports_nothing(capsys):
    """Under torchrun only rank 0 writes: another rank's result (no latest.pt of its own) printed
    'done: ..., checkpoint None'; interrupted, it says so without naming a file."""
    from cartoongan_cli import train as train_cli

    from cartoongan.train.trainer import TrainResult

    train_cli._report_result(TrainResult(Path("run"), 2))
    assert capsys.readouterr().out == ""
    with pytest.raises(SystemExit) as stopped:
        train_cli._report_result(TrainResult(Path("run"), 2, interrupted=True))
    assert stopped.value.code == 130 and "None" not in capsys.readouterr().err


def test_finetune_resume_reloads_the_source(tmp_path):
    src = make_source(tmp_path / "src.pt")
    data = blob_images(tmp_path / "data", n=4)
    base = ["--recipe", "tiny", "--freeze-sg", "1", "--struct-loss", "1"]
    assert runner.invoke(app, ["finetune", "--source", str(src), "--data", str(data), "--out", str(tmp_path / "r"),
                               "--iters", "2", *base]).exit_code == 0
    other = make_source(tmp_path / "other.pt", seed=1)
    res = runner.invoke(app, ["finetune", "--resume", str(tmp_path / "r"), "--iters", "3", "--source", str(other)])
    assert res.exit_code == 2 and "is not the model" in res.output and str(src.resolve()) in res.output
    src.rename(tmp_path / "moved.pt")  # the recorded source is gone: named, not blamed on the run
    res = runner.invoke(app, ["finetune", "--resume", str(tmp_path / "r"), "--iters", "3"])
    assert res.exit_code == 1 and "no longer there" in res.output and len(res.output.strip().splitlines()) == 1
    # the same weights under another name are the same source
    res = runner.invoke(app, ["finetune", "--resume", str(tmp_path / "r"), "--iters", "3",
                              "--source", str(tmp_path / "moved.pt")])
    assert res.exit_code == 0, res.output
    assert load_checkpoint(tmp_path / "r" / "latest.pt")["cartoongan"]["step"] == 3


def test_resume_names_the_settings_its_flags_change_and_records_them(tmp_path):
    """A flag given with --resume applies from the resumed step: the run says which settings differ
    from the ones it recorded (nothing when only --iters grows), and config.toml keeps the new ones."""
    src = make_source(tmp_path / "src.pt")
    data = blob_images(tmp_path / "data", n=4)
    run = tmp_path / "r"
    assert runner.invoke(app, ["finetune", "--source", str(src), "--data", str(data), "--out", str(run),
                               "--recipe", "tiny", "--iters", "1", "--freeze-sg", "2"]).exit_code == 0
    res = runner.invoke(app, ["finetune", "--resume", str(run), "--iters", "2"])
    assert res.exit_code == 0 and "changed settings" not in res.output, res.output
    res = runner.invoke(app, ["finetune", "--resume", str(run), "--iters", "3", "--freeze-sg", "1", "--lr", "0.001"])
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and "from step 2 on" in said, res.output
    assert "[finetune] freeze_sg 2 -> 1" in said and "[train] lr 0.002 -> 0.001" in said and "iters" not in said
    assert "freeze_sg = 1" in (run / "config.toml").read_text()


def test_resume_names_other_data_and_a_changed_image_count(tmp_path):
    """--data given with --resume, or the run's folder grown since: the run goes on (adding images is
    a fair thing to do) but says so, since its log no longer describes one dataset."""
    src = make_source(tmp_path / "src.pt")
    data = blob_images(tmp_path / "data", n=4)
    run = tmp_path / "r"
    assert runner.invoke(app, ["finetune", "--source", str(src), "--data", str(data), "--out", str(run),
                               "--recipe", "tiny", "--iters", "1"]).exit_code == 0
    res = runner.invoke(app, ["finetune", "--resume", str(run), "--iters", "2", "--data", str(data)])
    assert res.exit_code == 0 and "resumed from step" not in res.output, res.output  # the same data
    blob_images(tmp_path / "more", n=3, seed=1)
    res = runner.invoke(app, ["finetune", "--resume", str(run), "--iters", "3", "--data", str(tmp_path / "more")])
    said = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    assert (f"resumed from step 2 on other data: {(tmp_path / 'more').resolve()} (3 images), "
            f"where it had {data.resolve()} (4 images)") in said, said
    shutil.copy(tmp_path / "more" / sorted(os.listdir(tmp_path / "more"))[0], tmp_path / "more" / "extra.png")
    res = runner.invoke(app, ["finetune", "--resume", str(run), "--iters", "4"])  # its recorded data, grown
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and "now holding 4 images, where it had 3" in said, said
    assert load_checkpoint(run / "latest.pt")["cartoongan"]["provenance"]["images"] == 4


def test_resume_with_a_source_whose_file_was_trained_on_says_it_changed(tmp_path):
    """The recorded source path, overwritten by other weights (its own run resumed in place): not
    'X is not the model the run was fine-tuned from (X)'."""
    src = make_source(tmp_path / "src.pt")
    data = blob_images(tmp_path / "data", n=4)
    assert runner.invoke(app, ["finetune", "--source", str(src), "--data", str(data), "--out", str(tmp_path / "r"),
                               "--recipe", "tiny", "--iters", "1"]).exit_code == 0
    make_source(src, seed=1)
    res = runner.invoke(app, ["finetune", "--resume", str(tmp_path / "r"), "--iters", "2"])
    assert res.exit_code == 2 and "has changed since" in res.output and "is not the model" not in res.output
    assert len(res.output.strip().splitlines()) == 1 and load_checkpoint(tmp_path / "r" / "latest.pt")["cartoongan"]["step"] == 1


@pytest.mark.parametrize("freeze_g,freeze_sg", [(3, 2), (0, 2), (2, 0)])
def test_the_plan_table_names_the_blocks_whose_w_slots_come_from_the_source(freeze_g, freeze_sg):
    """FreezeSG 2 takes w+ slots 0-3: blocks 0 and 1 wholly, block 2's first conv too (slot 3);
    FreezeG alone takes none, however many blocks it freezes."""
    g, d = Generator(64, style_dim=32, n_mlp=2, channel_base=512, channel_max=32), Discriminator(64, channel_base=512, channel_max=32)
    rows = make_plan(FinetuneConfig(freeze_g=freeze_g, freeze_sg=freeze_sg), g, d).rows(g, d)
    labels = {name: state for net, name, _, _, state in rows if net == "G" and name.startswith("block")}
    wholly = [n for n in labels if n.endswith("(w slots from source)")]
    partly = [n for n in labels if n.endswith("(first w slot from source)")]
    assert (wholly, partly) == ((["block 0 (w slots from source)", "block 1 (w slots from source)"],
                                 ["block 2 (first w slot from source)"]) if freeze_sg else ([], []))
    assert sum(state == "frozen" for state in labels.values()) == max(freeze_g, freeze_sg)



@pytest.mark.parametrize("freeze_g,warned", [(1, True), (2, True), (3, False), (0, False)])
def test_a_freeze_g_within_freeze_sg_is_named_as_doing_nothing(tmp_path, freeze_g, warned):
    """--freeze-sg 2 --freeze-g 1 was accepted without a word: FreezeSG's blocks win, so a user who
    meant FreezeG on top of it (the paper's FreezeG 3 + FreezeSG 2) got nothing of what was asked."""
    src = make_source(tmp_path / "src.pt", size=32)  # 4 blocks: FreezeG 3 is possible
    data = blob_images(tmp_path / "data", n=4)
    res = runner.invoke(app, ["finetune", "--source", str(src), "--data", str(data), "--out", str(tmp_path / "r"),
                              "--recipe", "tiny", "--iters", "1", "--freeze-sg", "2", "--freeze-g", str(freeze_g)])
    assert res.exit_code == 0, res.output
    assert ("--freeze-g) does nothing beside freeze_sg 2" in " ".join(res.output.split())) == warned


def test_info_counts_the_generators_parameters_as_the_plan_does(tmp_path):
    """info said 461624 of the bundled model, the plan's rows (and g.parameters()) 461496: it
    counted the eight FIR kernel buffers as parameters."""
    from cartoongan.weights.networks import describe

    path = Path(__file__).parents[1] / "cartoongan" / "pretrained" / "demo64_photo.pt"
    ckpt = load_checkpoint(path)
    g = build_generator(ckpt, "g_ema")
    assert describe(ckpt)["generator_parameters"] == sum(p.numel() for p in g.parameters())


def test_a_recipes_structure_loss_settings_without_the_loss_are_warned_of():
    """A recipe's struct_weight = 5.0 with struct_loss 0 trained without it and said nothing (the
    flag is refused so)."""
    from cartoongan.train.freeze import settings_without_effect

    assert any("they do nothing in this run" in n for n in settings_without_effect(FinetuneConfig(struct_weight=5.0)))
    assert any("they do nothing" in n for n in settings_without_effect(FinetuneConfig(struct_tap="features")))
    assert settings_without_effect(FinetuneConfig(struct_loss=2, struct_weight=5.0)) == []
    assert settings_without_effect(FinetuneConfig()) == []


def test_info_names_each_stretch_of_a_run_whose_resume_changed_the_method(tmp_path):
    """info said "plain fine-tune (nothing frozen, no structure loss)" of a model that trained half
    its steps with FreezeSG 2 and the structure loss, before a resume turned both off."""
    from cartoongan.train.runs import resumed_config
    from cartoongan.weights.networks import describe

    src_path = make_source(tmp_path / "src.pt", size=32)
    data = blob_images(tmp_path / "data", n=4)
    cfg = tiny_config(iters=2, ckpt_every=2)
    cfg.finetune.freeze_sg, cfg.finetune.struct_loss = 2, 3
    run = tmp_path / "run"
    finetune(cfg, src_path, data, run)
    finetune(resumed_config(run, {"train": {"iters": 3}}), None, None, run, resume=True)  # the same: no stretch
    assert "history" not in load_checkpoint(run / "latest.pt")["cartoongan"]
    finetune(resumed_config(run, {"train": {"iters": 5}, "finetune": {"freeze_sg": 0, "struct_loss": 0}}), None, None,
             run, resume=True)
    method = describe(load_checkpoint(run / "latest.pt"))["method"]
    assert method == ("plain fine-tune (nothing frozen, no structure loss) (since step 3; before it, steps 0-3: "
                      "FreezeSG 2, structure loss over 3 resolutions (weight 1, rgb taps))"), method
