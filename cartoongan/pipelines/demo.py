"""The offline demo: synthetic faces -> source generator -> cartoon fine-tune -> swap -> pictures."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ..config import apply_overrides, load_recipe, validate
from ..device import resolve_device
from ..data.synthetic import ensure_synthesized
from ..errors import CheckpointError, ctrl_c_hint
from ..outputs import atomic_write, check_fresh_dir, check_keeps_inputs, check_subfolders
from ..report import NullReporter, Reporter
from ..train.runs import check_same_source, finetune, pretrain, resumed_config, run_to_end
from ..weights.checkpoint import load_checkpoint
from ..weights.networks import infer_generator_config, load_generator, weights_digest
from .sample import sample_checkpoints
from .swap import swap_checkpoints

BUNDLED_SOURCE = Path(__file__).resolve().parent.parent / "pretrained" / "demo64_photo.pt"


# what run_demo writes into its folder: a folder holding only these is an earlier demo, safe to continue
DEMO_ENTRIES = {"data", "source", "finetune", "samples", "swapped.pt", "compare.png", "interpolation.gif"}


N_PHOTO = 3000  # synthetic photos the source is pretrained on when no bundled one is there
SOURCE_COMMAND = (f"cartoongan data synth --domain photo --n {N_PHOTO} --size 64 --seed 1 --out PHOTOS && "
                  "cartoongan pretrain --recipe demo64 --data PHOTOS --out RUN")


@dataclass
class DemoResult:
    compare: Path
    gif: Path
    source: Path
    cartoon: Path
    swapped: Path


def check_finetunable(source: Path, what: str, recipes: tuple[str, ...] = ()) -> None:
    """CheckpointError for a source without a discriminator: `what` fine-tunes its G and D, and has
    no --fresh-d (finetune's fix) to offer; or too small for the blocks `recipes` freeze or tap
    (`demo --source` of a 16 px model failed at the fine-tune, naming --struct-loss, a flag the demo
    has not, after writing its 1000 faces). Before any work (load_checkpoint names a missing one)."""
    ckpt = load_checkpoint(source, mmap=True)
    if "d" not in ckpt:
        raise CheckpointError(f"{source} has no discriminator ('d'): {what} fine-tunes the source's G and D "
                              "(FreezeD keeps D's layers); pass a training checkpoint with both, e.g. a run's latest.pt")
    size = infer_generator_config(ckpt.get("g_ema") or ckpt["g"])["size"]
    for name in recipes:
        ft = load_recipe(name).finetune
        least = 2 ** (max(ft.struct_loss, ft.freeze_g, ft.freeze_sg) + 2)  # as finetune's range checks
        if size < least:
            raise CheckpointError(f"{source} is a {size} px model, and {what} fine-tunes with the {name} recipe, "
                                  f"whose frozen and structure-loss blocks need a model of {least} px or more: "
                                  f"pass a source of {least} px or more")


def check_iters(iters: int | None, recipes: tuple[str, ...]) -> None:
    """Refuse an --iters the recipes' runs would refuse (past 10**9), before any data is made: each
    stage validates its config, but only once the synthetic faces are written."""
    if iters is not None:
        for name in recipes:
            validate(apply_overrides(load_recipe(name), _train_overrides(iters, None)))


def _again(out: Path) -> str:
    return f"run the demo again with --out {out} to continue"


def _earlier(run: Path, iters: int, what: str, reporter: Reporter) -> tuple[Path | None, bool]:
    """What an earlier demo left of a stage: (its latest.pt when it reached `iters`, so re-running
    `make demo` is cheap, else None; whether there is a run to resume)."""
    latest = run / "latest.pt"
    if not latest.exists():
        return None, False
    step = load_checkpoint(latest, mmap=True).get("cartoongan", {}).get("step", 0)  # its step alone
    if step < iters:
        return None, True
    reporter.info(f"{what} already at step {step}: {latest}")
    return latest, True


def _train_overrides(iters: int, device: str | None) -> dict:
    """The [train] values a demo stage sets over its recipe (or a resumed run's config)."""
    return {"train": {"iters": iters, **({"device": device} if device else {})}}


def _run_finetune(source: Path, data: Path, run: Path, iters: int, device: str | None, reporter: Reporter) -> Path:
    """Fine-tune, or pick up an earlier demo run where it stopped (a finished one only when it is of
    this source: one of another was passed off as this source's cartoon model; a resumed one is
    checked by finetune)."""
    done, resume = _earlier(run, iters, "fine-tuned model", reporter)
    if resume:  # finished or not: finetune's own check would advise finetune's fix ("start a new run")
        check_same_source(load_checkpoint(run / "latest.pt", mmap=True), run, source,
                          weights_digest(load_generator(source, "cpu")), fix="choose another --out for this source",
                          changed_fix="put the original back, or choose another --out for this source")
    if done is not None:
        return done
    if resume:
        cfg = resumed_config(run, _train_overrides(iters, device))
        return run_to_end(lambda: finetune(cfg, source, data, run, reporter, resume=True), _again(run.parent))
    cfg = apply_overrides(load_recipe("demo_finetune"), _train_overrides(iters, device))
    return run_to_end(lambda: finetune(cfg, source, data, run, reporter), _again(run.parent))


def _run_pretrain(photos: Path, run: Path, iters: int | None, device: str | None, reporter: Reporter) -> Path:
    """Pretrain the source (no bundled one), or pick up an earlier demo's: a finished one is used as
    it is (resuming it was refused as having nothing to do, after a stop in a later stage)."""
    cfg = load_recipe("demo64")
    cfg = apply_overrides(cfg, _train_overrides(iters or cfg.train.iters, device))
    done, resume = _earlier(run, cfg.train.iters, "source model", reporter)
    if done is not None:
        return done
    return run_to_end(lambda: pretrain(cfg, photos, run, reporter, resume=resume), _again(run.parent))


def run_demo(out: str | Path, reporter: Reporter | None = None, source: str | Path | None = None,
             finetune_iters: int | None = None, n_cartoon: int = 1000, seeds: list[int] | None = None,
             pretrain_iters: int | None = None, device: str | None = None) -> DemoResult:
    """The whole pipeline on built-in data; writes out/compare.png and out/interpolation.gif.

    source: a photo-domain checkpoint; default the bundled one, or (if that is absent) one
    pretrained here with the demo64 recipe (pretrain_iters steps). device: where the stages train
    and render (auto | cpu | cuda | cuda:N); None keeps the recipes' own (the CPU) for training
    and renders on auto.
    """
    reporter = reporter or NullReporter()
    if device is not None:  # a device that is not here is refused before anything is written
        resolve_device(device)
    check_iters(finetune_iters, ("demo_finetune",))
    check_iters(pretrain_iters, ("demo64",))
    out = check_fresh_dir(out, "--out", "the demo writes data, runs and pictures there",
                          lambda names: set(names) <= DEMO_ENTRIES)
    check_keeps_inputs(out, ["swapped.pt", "compare.png", "interpolation.gif"], [], "--out")
    check_subfolders(out, ["data", "source", "finetune", "samples"])
    seeds = seeds or list(range(8))
    if source is not None:  # a missing or damaged --source is refused before any data is made
        check_finetunable(Path(source), "the demo", ("demo_finetune",))
        load_generator(source, "cpu")
    with ctrl_c_hint(_again(out)):  # a Ctrl-C between stages: the rerun picks up what they finished
        cartoon_dir = out / "data" / "cartoon"
        ensure_synthesized("cartoon", n_cartoon, 64, cartoon_dir, seed=2, reporter=reporter)
        photo_dir = out / "data" / "photo"
        if source is None and BUNDLED_SOURCE.exists():
            source = BUNDLED_SOURCE
        if source is None:
            reporter.warn(f"no bundled source model at {BUNDLED_SOURCE}: pretraining one ({SOURCE_COMMAND})")
            ensure_synthesized("photo", N_PHOTO, 64, photo_dir, seed=1, reporter=reporter)
            source = _run_pretrain(photo_dir, out / "source", pretrain_iters, device, reporter)
        source = Path(source)  # checked above when given, bundled only when there, else just trained
        iters = finetune_iters or load_recipe("demo_finetune").train.iters
        cartoon = _run_finetune(source, cartoon_dir, out / "finetune", iters, device, reporter)
        swapped = swap_checkpoints(source, cartoon, out / "swapped.pt", res=16, reporter=reporter)
        pictures = sample_checkpoints([source, cartoon, swapped], seeds, out / "samples", truncation=0.8,
                                      noise_mode="const", interpolate=8, device=device or "auto",
                                      reporter=reporter)
        compare = _copy(pictures.compare, out / "compare.png")
        gif = _copy(pictures.gif, out / "interpolation.gif")
        return DemoResult(compare, gif, source, cartoon, swapped)


def _copy(src: Path, dst: Path) -> Path:
    with open(src, "rb") as fin, atomic_write(dst) as fout:
        shutil.copyfileobj(fin, fout)
    return dst
