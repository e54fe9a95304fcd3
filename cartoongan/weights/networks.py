"""Networks from checkpoints: architecture inferred from tensor shapes, state loaded strictly."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch

from ..device import resolve_device, set_math_mode
from ..errors import CheckpointError, naming
from ..models.architecture import channel_widths
from ..models.discriminator import Discriminator
from ..models.generator import Generator
from .checkpoint import FORMAT_VERSION, load_checkpoint, provenance


# ---- architecture from tensor shapes ------------------------------------------------------
def _fit_widths(widths: dict[int, int], what: str) -> dict:
    """Find (channel_multiplier, channel_base, channel_max) that reproduce per-resolution widths."""
    size, cmax = max(widths), max(widths.values())
    candidates = [(m, 16384) for m in (1, 2, 4, 8)] + [(1, widths[size] * size)]
    for mult, base in candidates:
        if channel_widths(size, mult, base, cmax) == widths:
            return dict(channel_multiplier=mult, channel_base=base, channel_max=cmax)
    raise CheckpointError(f"{what} has channel widths {widths} that no StyleGAN2 width rule reproduces")


def _require(sd: dict, key: str, what: str) -> torch.Tensor:
    if key not in sd or not torch.is_tensor(sd[key]) or sd[key].ndim < 2:
        raise CheckpointError(f"{what} state dict lacks '{key}': not a rosinality-layout StyleGAN2 {what}")
    return sd[key]


def infer_generator_config(sd: dict) -> dict:
    """Generator constructor arguments from a rosinality-layout state dict."""
    style_dim = _require(sd, "style.1.weight", "generator").shape[1]
    n_mlp = sum(1 for k in sd if k.startswith("style.") and k.endswith(".weight"))
    n_rgb = sum(1 for k in sd if re.fullmatch(r"to_rgbs\.\d+\.bias", k))
    widths = {4: _require(sd, "input.input", "generator").shape[1]}
    for b in range(1, n_rgb + 1):
        widths[4 * 2**b] = _require(sd, f"convs.{2 * b - 1}.conv.weight", "generator").shape[1]
    return dict(size=4 * 2**n_rgb, style_dim=style_dim, n_mlp=n_mlp, **_fit_widths(widths, "generator"))


def infer_discriminator_config(sd: dict) -> dict:
    """Discriminator constructor arguments from a rosinality-layout state dict."""
    n_res = sum(1 for k in sd if k.startswith("convs.") and k.endswith(".conv1.0.weight"))
    size = 4 * 2**n_res
    widths = {size: _require(sd, "convs.0.0.weight", "discriminator").shape[0]}
    for k in range(1, n_res + 1):
        widths[size // 2**k] = _require(sd, f"convs.{k}.conv2.1.weight", "discriminator").shape[0]
    return dict(size=size, **_fit_widths(widths, "discriminator"))


def check_fit(module: torch.nn.Module, sd: dict, what: str, cause: str = "") -> None:
    """CheckpointError unless the state dict `sd` loads strictly into module (the same keys and
    shapes); the message counts what is missing, unexpected and mis-shaped, then `cause`."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    extra = [k for k in sd if k not in own]
    bad = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    # integer weights would load (cast) without a word and render flat grey
    typed = [k for k in own if k in sd and own[k].is_floating_point() and not sd[k].is_floating_point()]
    if missing or extra or bad or typed:
        parts = [f"{len(v)} {n} (e.g. {v[0]})" for n, v in (("missing", missing), ("unexpected", extra),
                                                             ("mis-shaped", bad), ("not floating-point", typed)) if v]
        raise CheckpointError(f"{what} weights do not fit the network: {', '.join(parts)}{cause}")


def check_finite(module: torch.nn.Module, sd: dict, what: str) -> None:
    """Refuse weights holding NaN or inf (a diverged export) among the state dict `sd`'s values for
    module's parameters: they would render black images or train on garbage without a word."""
    if not all(bool(torch.isfinite(sd[name]).all()) for name, _ in module.named_parameters()):
        raise CheckpointError(f"{what} holds NaN or inf weights: use another checkpoint")


def weights_digest(module: torch.nn.Module) -> str:
    """A short sha256 of a network's tensors (names, dtypes, shapes, bytes), whatever file format
    they came from: what a fine-tuning run records of its source, to know it again on resume."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself: no copy
    return h.hexdigest()[:16]


def _load_state(module: torch.nn.Module, sd: dict, what: str) -> None:
    check_fit(module, sd, what)
    module.load_state_dict(sd, strict=True)


def _check_state(module: torch.nn.Module, sd: dict, what: str) -> None:
    """What every command refuses a network's weights for (misfit, integer, NaN or inf), checked
    against a module that may be an empty shell (on the meta device)."""
    check_fit(module, sd, what)
    check_finite(module, sd, what)


GENERATOR_KEYS = ("size", "style_dim", "n_mlp", "channel_multiplier", "channel_base", "channel_max")


def generator_config(ckpt: dict, which: str = "g_ema") -> dict:
    """The generator's constructor arguments: recorded by cartoongan, or inferred from tensor shapes."""
    meta = ckpt.get("cartoongan") or {}
    if isinstance(meta, dict) and isinstance(meta.get("generator"), dict):
        cfg = dict(meta["generator"])
        bad = [k for k in GENERATOR_KEYS
               if not isinstance(cfg.get(k), int) or isinstance(cfg.get(k), bool) or cfg.get(k) < 1]
        if bad:
            raise CheckpointError(f"its recorded generator configuration lacks whole numbers >= 1 for {', '.join(bad)}")
        return cfg
    return infer_generator_config(ckpt[which])


def _generator_shell(ckpt: dict, which: str) -> tuple[Generator, str]:
    """(a Generator of the checkpoint's `which` architecture, checked to take those weights, the
    key taken: g_ema falls back to g), without loading them. Built on torch's default device:
    network_checks builds it on the meta device, an empty shell that costs nothing."""
    if which not in ckpt:
        which = "g" if which == "g_ema" and "g" in ckpt else which
    if which not in ckpt or not isinstance(ckpt[which], dict):
        raise CheckpointError(f"checkpoint has no '{which}' generator weights")
    try:
        gen = Generator(**generator_config(ckpt, which))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint's generator configuration is invalid: {exc}") from None
    _check_state(gen, ckpt[which], f"generator '{which}'")
    return gen, which


def build_generator(ckpt: dict, which: str = "g_ema", device: str | torch.device = "cpu") -> Generator:
    """A Generator holding the checkpoint's `which` weights (g_ema, or g), with w_avg when stored."""
    gen, which = _generator_shell(ckpt, which)
    gen.load_state_dict(ckpt[which], strict=True)
    if torch.is_tensor(ckpt.get("latent_avg")):
        gen.w_avg = ckpt["latent_avg"].detach().float().reshape(-1)[: gen.style_dim].clone()
    return gen.to(device)


def load_generator(path: str | os.PathLike, device: str | torch.device = "auto") -> Generator:
    """The g_ema of the checkpoint at `path`, on `device` ('auto' picks CUDA when present), in
    eval mode, for rendering: fp32 math is IEEE (no TF32), so GPU renders match CPU renders.
    Every error names the file."""
    return read_generator(path, device)[0]


def read_generator(path: str | os.PathLike, device: str | torch.device = "auto") -> tuple[Generator, dict]:
    """load_generator, and the checkpoint's provenance ({} when it records none)."""
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    set_math_mode("fp32")
    with naming(path):
        ckpt = load_checkpoint(path)
        return build_generator(ckpt, device=dev).eval(), provenance(ckpt)


def ancestry(provenance: dict) -> list[str]:
    """The weight digests a fine-tuned checkpoint descends from, nearest first: its source, that
    source's source, ... (`lineage`, which fine-tuning records; older runs record `source_digest`
    alone); [] for a model that records none (pretrained, converted, someone else's)."""
    chain = provenance.get("lineage") if isinstance(provenance, dict) else None
    if isinstance(chain, list) and all(isinstance(d, str) for d in chain):
        return chain
    digest = provenance.get("source_digest") if isinstance(provenance, dict) else None
    return [digest] if isinstance(digest, str) else []


def lineage(source: Generator, source_provenance: dict, target: Generator, target_provenance: dict) -> str | None:
    """How a fine-tuned TARGET stands to the SOURCE it is used with (swap, toonify), by the lineage
    fine-tuning records: "swapped" when SOURCE descends from TARGET, "unrelated" when TARGET
    descends from other models only; None when TARGET descends from SOURCE, or nothing is recorded."""
    source_chain = ancestry(source_provenance)
    if source_chain and weights_digest(target) in source_chain:  # digests copy weights to the host: only when needed
        return "swapped"
    chain = ancestry(target_provenance)
    if chain and weights_digest(source) not in chain:
        return "unrelated"
    return None


def _discriminator_shell(ckpt: dict) -> Discriminator:
    """A Discriminator of the checkpoint's architecture whose weights `d` would load, without
    loading them (see _generator_shell)."""
    if not isinstance(ckpt.get("d"), dict):
        raise CheckpointError("checkpoint has no discriminator ('d')")
    meta = ckpt.get("cartoongan") or {}
    cfg = meta.get("discriminator") if isinstance(meta, dict) and isinstance(meta.get("discriminator"), dict) \
        else infer_discriminator_config(ckpt["d"])
    disc = Discriminator(**cfg)
    _check_state(disc, ckpt["d"], "discriminator 'd'")
    return disc


def build_discriminator(ckpt: dict, device: str | torch.device = "cpu") -> Discriminator:
    """A Discriminator holding the checkpoint's `d` weights."""
    disc = _discriminator_shell(ckpt)
    disc.load_state_dict(ckpt["d"], strict=True)
    return disc.to(device)


def _cpu_state(module: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def generator_checkpoint(g_ema: Generator, **meta) -> dict:
    """A checkpoint holding only g_ema and latent_avg (like rosinality's convert_weight.py), plus metadata."""
    ckpt = {"g_ema": _cpu_state(g_ema),
            "cartoongan": {"version": FORMAT_VERSION, "generator": dict(g_ema.config), **meta}}
    if g_ema.w_avg is not None:
        ckpt["latent_avg"] = g_ema.w_avg.detach().cpu()
    return ckpt


def training_checkpoint(g: Generator, d: Discriminator, g_ema: Generator, g_optim: torch.optim.Optimizer,
                        d_optim: torch.optim.Optimizer, w_avg: torch.Tensor | None, ada_p: float,
                        train_state: dict, **meta) -> dict:
    """The full training state in rosinality's train.py layout (g, d, g_ema, g_optim, d_optim,
    ada_aug_p, latent_avg) plus ours: `cartoongan` (configs, step, provenance) and `train_state`
    (path-length mean, ADA state, RNG states) for an exact resume."""
    ckpt = {
        "g": _cpu_state(g), "d": _cpu_state(d), "g_ema": _cpu_state(g_ema),
        "g_optim": g_optim.state_dict(), "d_optim": d_optim.state_dict(), "ada_aug_p": ada_p,
        "cartoongan": {"version": FORMAT_VERSION, "generator": dict(g.config), "discriminator": dict(d.config),
                       **meta},
        "train_state": train_state,
    }
    if w_avg is not None:
        ckpt["latent_avg"] = w_avg.cpu()
    return ckpt


def is_count(value) -> bool:
    """A whole number >= 0 as a checkpoint's metadata holds one (a bool is none, though an int)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def recorded_train(meta: dict) -> dict:
    """The [train] table a run's checkpoint records (its `cartoongan` metadata's config), or {}
    for a checkpoint without one (rosinality's, an older or hand-made file)."""
    config = meta.get("config") if isinstance(meta, dict) else None
    train = config.get("train") if isinstance(config, dict) else None
    return train if isinstance(train, dict) else {}


def images_trained(meta: dict, batch: int | None = None) -> int | None:
    """The images a run's checkpoint (its `cartoongan` metadata) has trained on: the count it
    records, or for one written before the count was kept, step x the batch its config records
    (else `batch`): right unless the batch changed on a resume. None when unknown."""
    if is_count(meta.get("images")):
        return meta["images"]
    step, recorded = meta.get("step"), recorded_train(meta).get("batch")
    batch = recorded if is_count(recorded) and recorded >= 1 else batch
    return step * batch if is_count(step) and batch is not None else None


def describe(ckpt: dict) -> dict:
    """A summary for `cartoongan info`: architecture, contents, step and provenance."""
    which = "g_ema" if "g_ema" in ckpt else "g"
    cfg = generator_config(ckpt, which)
    try:
        channels = channel_widths(cfg["size"], cfg["channel_multiplier"], cfg["channel_base"], cfg["channel_max"])
    except (ValueError, ZeroDivisionError) as exc:
        raise CheckpointError(f"its generator configuration is invalid: {exc}") from None
    # parameters only: the constant noise maps and the FIR kernels (blur.kernel, upsample.kernel) are
    # buffers, and counted they made info disagree with the fine-tuning plan's rows by 128
    n_params = sum(v.numel() for k, v in ckpt[which].items() if not k.startswith("noises.") and k.split(".")[-1] != "kernel")
    meta = ckpt.get("cartoongan") if isinstance(ckpt.get("cartoongan"), dict) else {}
    return {
        "resolution": cfg["size"],
        "style_dim": cfg["style_dim"],
        "mapping_layers": cfg["n_mlp"],
        "channels": channels,
        "generator_parameters": n_params,
        "contains": [k for k in ("g", "g_ema", "d", "g_optim", "d_optim", "latent_avg", "ada_aug_p") if k in ckpt],
        "step": meta.get("step"),
        "kind": meta.get("kind"),
        "provenance": meta.get("provenance"),
        **_recorded_training(meta, ckpt),
        "format": "cartoongan" if meta else "rosinality",
        "networks": network_checks(ckpt),
    }


def _recorded_training(meta: dict, ckpt: dict) -> dict:
    """The method and training of a run's checkpoint, from its recorded config, for `info`: what a
    shared fine-tuned model was made with (FreezeSG 2, structure loss 3, ...) without its run folder."""
    config = meta.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("train"), dict):
        return {}
    t, rows = config["train"], {}
    if meta.get("kind") == "finetune" and isinstance(config.get("finetune"), dict):
        # a resume changed the settings: each stretch, oldest first
        rows["method"] = _with_stretches(finetune_method(config["finetune"]), meta, "finetune", dict,
                                         lambda h: finetune_method(h["finetune"]))
    now = meta["provenance"].get("data") if isinstance(meta.get("provenance"), dict) else None
    if isinstance(now, str) and (data := _with_stretches(now, meta, "data", str, _data_of)) != now:
        rows["data"] = data  # a resume took other data: only then a row
    step, batch, p, images = meta.get("step"), t.get("batch"), ckpt.get("ada_aug_p"), images_trained(meta)
    parts = []
    if is_count(step) and is_count(batch) and images == step * batch:
        parts.append(f"{step} steps x batch {batch} = {images / 1000:g} kimg")
    elif images is not None:  # the batch changed on a resume: steps x the batch now would be wrong
        parts.append(f"{step} steps = {images / 1000:g} kimg (at batch {batch} now; it changed on a resume)")
    fixed = t.get("augment_p")
    if t.get("augment") == "none" and isinstance(fixed, (int, float)) and fixed > 0:
        # --augment none --augment-p 0.3 augments every batch at p 0.3: "augment none" said otherwise
        parts.append(f"augment at a fixed p {fixed:g}")
    elif t.get("augment"):
        known = isinstance(p, (int, float)) and t["augment"] == "ada"  # an export drops ada_aug_p
        # .3g: an ADA that has just begun to augment (p 0.000384) read "p now 0.000"
        parts.append(f"augment {t['augment']}" + (f" (p now {float(p):.3g})" if known else ""))
    parts += [f"precision {t['precision']}"] if t.get("precision") else []
    if parts:
        rows["training"] = ", ".join(parts)
    return rows


def _with_stretches(now: str, meta: dict, key: str, kind: type, said) -> str:
    """`now`, and where the history holds earlier stretches of `key` (each a `kind`), each of them
    as said(entry), oldest first: "X (since step 4; before it, steps 0-4: Y)"."""
    earlier = [h for h in meta.get("history") or [] if isinstance(h, dict) and isinstance(h.get(key), kind)]
    if not earlier:
        return now
    start, parts = 0, []
    for h in earlier:
        parts.append(f"steps {start}-{h.get('until_step')}: {said(h)}")
        start = h.get("until_step")
    return f"{now} (since step {start}; before it, {'; '.join(parts)})"


def _data_of(entry: dict) -> str:
    return entry["data"] + (f" ({entry['images']} images)" if is_count(entry.get("images")) else "")


def finetune_method(ft: dict) -> str:
    """A [finetune] table in the paper's words: 'FreezeSG 2, FreezeD 1, structure loss over 3 resolutions'."""
    parts = [f"{name} {ft[key]}" for name, key in (("FreezeG", "freeze_g"), ("FreezeSG", "freeze_sg"),
                                                   ("FreezeD", "freeze_d")) if ft.get(key)]
    parts += [what for what, key in (("mapping frozen", "freeze_mapping"), ("noise frozen", "freeze_noise")) if ft.get(key)]
    if ft.get("struct_loss"):
        weight, n = ft.get("struct_weight", 1.0), ft["struct_loss"]
        weight = f"{weight:g}" if isinstance(weight, (int, float)) else weight  # a hand-edited file: as it is
        parts.append(f"structure loss over {n} resolution{'s' if n != 1 else ''} (weight {weight}, "
                     f"{ft.get('struct_tap', 'rgb')} taps)")
    return ", ".join(parts) or "plain fine-tune (nothing frozen, no structure loss)"


def network_checks(ckpt: dict) -> dict[str, str]:
    """For each network the checkpoint holds (g_ema, g, d): "loads", or the line with which a
    command would refuse it (weights that do not fit, integer or NaN weights; for finetune's
    --source, a g or d of another architecture than g_ema). Built as empty shells on the meta
    device: no memory for the weights, and a recorded size of 2**20 costs nothing."""
    builders = {"g_ema": lambda: _generator_shell(ckpt, "g_ema")[0], "g": lambda: _generator_shell(ckpt, "g")[0],
                "d": lambda: _discriminator_shell(ckpt)}
    checks, nets = {}, {}
    for name, build in builders.items():
        if name not in ckpt:
            continue
        try:
            with torch.device("meta"):
                nets[name] = build()
            checks[name] = "loads"
        except CheckpointError as exc:
            checks[name] = str(exc)
    ref = nets.get("g_ema")
    if ref is not None and "g" in nets and nets["g"].config != ref.config:
        checks["g"] = "another architecture than g_ema: finetune refuses the checkpoint as its --source"
    if ref is not None and "d" in nets and nets["d"].size != ref.size:
        checks["d"] = (f"{nets['d'].size} px where g_ema is {ref.size} px: finetune refuses the checkpoint "
                       "as its --source")
    return checks


def describe_checkpoint(path: str | Path) -> dict:
    """describe(load_checkpoint(path)), with every error naming the file."""
    with naming(path):
        return describe(load_checkpoint(path))
