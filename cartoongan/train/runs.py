"""Run directories: start, resume and execute `pretrain` and `finetune` runs."""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Callable

import tomllib
import torch

from ..config import FinetuneConfig, RunConfig, apply_overrides, bad_setting, changed_settings, from_dict, validate
from ..data.dataset import load_dataset
from ..device import check_precision, precision_note, resolve_device
from ..errors import CartoonganError, CheckpointError, ConfigError, DataError, Interrupted, first_line, naming
from ..models.discriminator import Discriminator
from ..models.generator import Generator
from ..ops.fir import triton_missing
from ..outputs import check_fresh_dir, check_output_dir, check_outside
from ..report import NullReporter, Reporter
from ..weights.checkpoint import load_checkpoint, provenance
from ..weights.networks import (ancestry, build_discriminator, build_generator, is_count, recorded_train,
                                weights_digest)
from .distributed import init_distributed
from .freeze import make_plan, settings_without_effect, struct_loss_reads, struct_loss_without_effect
from .memory import check_batch_fits
from .run_dir import check_not_in_training, check_run_layout, holds_unsaved_run, latest_stamp
from .evaluate import KidEvaluator
from .trainer import Networks, Trainer, TrainResult, new_networks


def _evaluator(cfg: RunConfig, data, run_dir: Path, info, reporter: Reporter) -> KidEvaluator | None:
    """KID against the training set every cfg.train.eval_every steps (main process), or None."""
    if cfg.train.eval_every and len(data) < 2:  # KID compares two sets of at least two features each
        raise ConfigError(f"--eval-every needs at least 2 training images for KID; the dataset has {len(data)}: "
                          "add images or pass --eval-every 0")
    if not cfg.train.eval_every or not info.is_main:
        return None
    return KidEvaluator(data.images, cfg.train.eval_n, info.device, run_dir, reporter)


def numbered_checkpoints(run_dir: Path) -> list[Path]:
    """RUN/checkpoints/NNNNNN.pt by step (past step 999999 the names grow a digit: not by name)."""
    folder = run_dir / "checkpoints"
    found = [p for p in folder.glob("[0-9]*.pt") if re.fullmatch(r"[0-9]+", p.stem)] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.stem))


def resumed_config(run_dir: Path, overrides: dict | None = None) -> RunConfig:
    """The config of an existing run (RUN_DIR/config.toml), with `iters` etc. optionally raised."""
    path, latest = run_dir / "config.toml", run_dir / "latest.pt"
    if run_dir.is_file():  # `--resume RUN/latest.pt`: the run is the folder
        raise ConfigError(f"--resume {run_dir} is a file: pass the run folder that holds it ({run_dir.parent})")
    if not run_dir.exists():
        raise ConfigError(f"--resume {run_dir}: no such run folder")
    if not latest.is_file():
        numbered = numbered_checkpoints(run_dir)
        raise ConfigError(f"--resume {run_dir}: no latest.pt there" + (
            f"; the run's newest checkpoint is {numbered[-1]}: copy it to {latest} to resume from there"
            if numbered else " to continue from"))
    overrides = overrides or {}
    own_file = path.is_file()
    cfg = _toml_config(path) if own_file else _checkpoint_config(latest, path)  # latest.pt keeps a copy
    seed = (overrides.get("train") or {}).get("seed")
    if seed is not None and seed != cfg.train.seed:
        # restore() sets the RNG state latest.pt saved, so a new seed would change nothing on one
        # process, while the warning of changed settings would claim it applies
        raise ConfigError(f"--seed {seed}: a resumed run continues its own random stream, restored from {latest}, "
                          f"which no seed changes: drop --seed (the run's is {cfg.train.seed}), or start a new run "
                          f"with --seed {seed}")
    fresh_d = (overrides.get("finetune") or {}).get("fresh_d")
    if fresh_d is not None and fresh_d != cfg.finetune.fresh_d:
        # D is restored from latest.pt: where a new run's D would start changes nothing
        raise ConfigError(f"--fresh-d: a resumed run's D is restored from {latest}, not started again: drop --fresh-d")
    cfg = apply_overrides(cfg, overrides)
    bad = _own_bad_value(cfg, overrides)
    if bad and own_file:
        raise CartoonganError(f"{path} holds a value this version refuses (damaged, edited by hand, or from an "
                              f"older version): {bad}: correct it (latest.pt keeps a copy under cartoongan.config), "
                              "delete it to resume with that copy, or start a new run")
    if bad:  # a file's content, as above: exit 1, not a usage error
        raise CartoonganError(f"{path} is missing and the config {latest} records holds a value this version refuses "
                              f"({bad}): restore config.toml or start a new run")
    return cfg


def _toml_config(path: Path) -> RunConfig:
    """A run's config.toml as a RunConfig; CartoonganError (what to do) when it is damaged."""
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
        missing = [name for name in RunConfig().to_dict() if not isinstance(table.get(name), dict)]
        if missing:  # defaults would silently replace the run's batch, lr, ... for the rest of it
            raise ConfigError(f"it lacks [{'], ['.join(missing)}]")
        return from_dict(table)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError, ConfigError) as exc:
        raise CartoonganError(f"{path} is damaged ({exc}): restore it (latest.pt keeps a copy under "
                              "cartoongan.config), delete it to resume with that copy, or start a new run") from None


def _own_bad_value(cfg: RunConfig, overrides: dict) -> str | None:
    """'[section] key must be ..., got V' for an impossible value that came from the run's own
    config, not from a flag given now: validate() would blame that flag (`--batch must be >= 1`)
    though the user never passed it. A bad value a flag gave is left to validate()."""
    bad = bad_setting(cfg)
    if bad is None:
        return None
    section, key, what = bad
    if (overrides.get(section) or {}).get(key) is not None:
        return None
    return f"[{section}] {key} {what}"


def _checkpoint_config(latest: Path, path: Path) -> RunConfig:
    """The config a run's latest.pt recorded, for a run whose config.toml is gone."""
    meta = load_checkpoint(latest, mmap=True).get("cartoongan")  # its metadata alone: mapped, not read
    recorded = meta.get("config") if isinstance(meta, dict) else None
    if not isinstance(recorded, dict):
        raise ConfigError(f"{path} is missing and {latest} records no config: restore config.toml or start a new run")
    try:
        return from_dict(recorded)
    except ConfigError as exc:
        raise ConfigError(f"{path} is missing and the config {latest} records is invalid ({exc})") from None


def check_run_dir(run_dir: Path, data_path: str | Path, resume: bool, reporter: Reporter) -> None:
    """Before any work: a new run needs a new or empty folder outside its dataset (or one that an
    earlier attempt left before its first checkpoint: the run starts there afresh); a resumed run
    a folder it can write in. Raises ConfigError or OutputError (nothing is written)."""
    if resume:
        # before any data is read or "resuming" said: the lock taken to train would refuse it only then
        check_run_layout(run_dir)
        check_not_in_training(run_dir)
        check_output_dir(run_dir, "--resume")
        if data_path is not None:  # as a new run's: its samples would go into the images it trains on
            check_outside(run_dir, data_path, "--resume", "its samples would be read as training images")
            check_outside(data_path, run_dir, "--data", "the run writes its samples and checkpoints there (pass "
                          "the dataset it trains on)")
        return
    if (run_dir / "latest.pt").exists():
        raise ConfigError(f"{run_dir} already holds a run; pass --resume {run_dir} to continue it, or another --out")
    numbered = numbered_checkpoints(run_dir)
    if numbered:  # a run killed between its checkpoint files
        raise ConfigError(f"{run_dir} holds a run without latest.pt: copy its newest checkpoint {numbered[-1]} "
                          f"to {run_dir / 'latest.pt'} and pass --resume {run_dir}, or choose another --out")
    check_outside(run_dir, data_path, "--out", "its samples would be read as training images next time")
    if run_dir.is_dir() and holds_unsaved_run(run_dir):
        check_not_in_training(run_dir)  # a run before its first checkpoint looks the same while it trains
        reporter.warn(f"{run_dir} holds a run that stopped before its first checkpoint: starting afresh there")
        check_output_dir(run_dir, "--out")
        return
    if (run_dir / "config.toml").exists():
        raise ConfigError(f"{run_dir} holds a run that saved no checkpoint, beside other files: "
                          "delete it or choose another --out")
    check_fresh_dir(run_dir, "--out", "a run needs a folder of its own")


RESUME_KEYS = ("g", "d", "g_ema", "g_optim", "d_optim", "train_state")


def open_resumable(run_dir: Path, cfg: RunConfig, kind: str) -> dict:
    """The run's latest.pt, once it is sure that resuming it to cfg.train.iters does something.
    Refuses (nothing changes) an export, a run of the other kind, or --iters <= the current step."""
    latest = run_dir / "latest.pt"
    try:
        ckpt = load_checkpoint(latest)
    except CheckpointError as exc:
        numbered = numbered_checkpoints(run_dir)
        if not numbered:
            raise
        raise CheckpointError(f"{exc}; the run's newest numbered checkpoint is {numbered[-1]}: copy it over "
                              f"{latest} to resume from there") from None
    meta = ckpt.get("cartoongan") or {}  # a dict: load_checkpoint refuses anything else
    step = meta.get("step")
    missing = [k for k in RESUME_KEYS if k not in ckpt] + ([] if is_count(step) else ["a step >= 0 (cartoongan.step)"])
    if missing:
        raise CheckpointError(f"{latest} lacks training state ({', '.join(missing)}), e.g. it was exported: "
                              "it cannot be resumed")
    if meta.get("kind", kind) not in ("pretrain", "finetune"):
        raise CheckpointError(f"{latest} records an unknown kind of run ({meta['kind']!r}): it cannot be resumed")
    if meta.get("kind", kind) != kind:
        raise ConfigError(f"{run_dir} is a {meta['kind']} run: continue it with "
                          f"`cartoongan {meta['kind']} --resume {run_dir}`")
    if step >= cfg.train.iters:
        raise ConfigError(f"{run_dir} is at step {step} and --iters is {cfg.train.iters}: pass --iters above "
                          f"{step} to train further (the run is unchanged)")
    return ckpt


def recorded_path(ckpt: dict, run_dir: Path, key: str) -> Path:
    """A path a resumable run recorded in its latest.pt (its data or source), for --resume without
    repeating it."""
    value = provenance(ckpt).get(key)
    if not value:
        raise CartoonganError(f"{run_dir}/latest.pt does not record its {key}; pass --{key} again")
    return Path(value)


def recorded_source(ckpt: dict, run_dir: Path) -> Path:
    """The source model a resumed finetune run recorded, refused (one line) when it is gone."""
    path = recorded_path(ckpt, run_dir, "source")
    if not path.is_file():
        raise CheckpointError(f"{run_dir} was fine-tuned from {path}, which is no longer there: put it back, "
                              "or pass --source with the same model")
    return path


def recorded_data(ckpt: dict, run_dir: Path) -> Path:
    """The dataset a resumed run recorded, refused (one line) when it is gone: a bare "dataset not
    found" left the user guessing that the path was the record's, and what would continue the run."""
    path = recorded_path(ckpt, run_dir, "data")
    if not path.exists():
        raise DataError(f"{run_dir} was trained on {path}, which is no longer there: put it back, or pass "
                        "--data with the folder (or .zip) it moved to")
    return path


def check_same_source(ckpt: dict, run_dir: Path, source_path: Path, digest: str,
                      fix: str = "pass that one, or start a new run",
                      changed_fix: str = "put the original back, or start a new run") -> None:
    """Refuse a source whose weights differ from the ones the run started from: its frozen layers
    and structure-loss targets would silently change mid-run. Runs that predate the record pass."""
    inputs = provenance(ckpt)
    recorded = inputs.get("source_digest")
    if not recorded or recorded == digest:
        return
    was = inputs.get("source")
    if was and Path(was).resolve() == Path(source_path).resolve():  # same file, other weights
        raise ConfigError(f"{source_path} has changed since {run_dir} was fine-tuned from it (its weights "
                          f"differ, e.g. its own run trained on): {changed_fix}")
    raise ConfigError(f"{source_path} is not the model {run_dir} was fine-tuned from "
                      f"({was or 'recorded in its latest.pt'}): {fix}")


def _restore(trainer: Trainer, ckpt: dict, run_dir: Path, reporter: Reporter) -> None:
    recorded = (ckpt.get("cartoongan") or {}).get("config")
    seed = recorded_train(ckpt.get("cartoongan") or {}).get("seed")
    if is_count(seed) and seed < 2**32 and seed != trainer.t.seed:
        # --seed is refused on resume; an edited config.toml (or a library caller) gets the run's
        # own seed back, as the random stream restored is that seed's
        reporter.warn(f"[train] seed {trainer.t.seed} ignored: a resumed run continues its own random stream "
                      f"(seed {seed})")
        trainer.t.seed = seed
    try:
        trainer.restore(ckpt)
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{run_dir / 'latest.pt'} does not fit the run's config.toml ({first_line(exc, 160)}): "
                              "restore the run's files or start a new run") from None
    reporter.info(f"resuming {run_dir} at step {trainer.step}")
    changes = [c for c in changed_settings(recorded, trainer.cfg) if not _same_device(c, recorded, trainer)]
    if changes:  # a flag given with --resume applies from here on; say so, since it changes the run
        reporter.warn(f"resumed with changed settings (they apply from step {trainer.step} on): "
                      + "; ".join(changes))
    data = changed_data(provenance(ckpt), trainer.provenance)
    if data:  # as for settings: the run goes on, but it is no longer the run its log describes
        reporter.warn(f"resumed from step {trainer.step} on {data}")


def _same_device(change: str, recorded: dict, trainer: Trainer) -> bool:
    """Whether a change is of [train] device only in name: `demo --device cpu` over a demo run with
    'auto' on a machine with no GPU was warned of as "device 'auto' -> 'cpu'", which changes nothing."""
    if not change.startswith("[train] device "):
        return False
    try:
        return resolve_device(recorded["train"]["device"]) == trainer.dev
    except (CartoonganError, KeyError, TypeError, ValueError, RuntimeError):
        return False


def changed_data(recorded: dict, now: dict) -> str | None:
    """How a resumed run's data differs from what its latest.pt recorded: another folder, or the same
    one holding another number of images; None when the same (or when the run predates the record)."""
    was, count = recorded.get("data"), recorded.get("images")
    if not was:
        return None
    if was != now["data"]:
        return f"other data: {now['data']} ({now['images']} images), where it had {was} ({count} images)"
    if isinstance(count, int) and count != now["images"]:
        return f"{was} now holding {now['images']} images, where it had {count}"
    return None


def check_compile(compiled: bool, dev: torch.device) -> None:
    """torch.compile's CUDA kernels are Triton's, which builds a C launcher on first use: refuse a
    compiled run on a GPU box that lacks what that needs, before any training starts."""
    if not compiled or dev.type != "cuda":
        return
    missing = triton_missing()
    if missing:
        raise ConfigError(f"--compile on CUDA needs {missing}; or train without --compile")


def _start(cfg: RunConfig, reporter: Reporter):
    info = init_distributed(cfg.train.device)
    validate(cfg, info.world)
    check_precision(cfg.train.precision, info.device)
    if note := precision_note(cfg.train.precision, info.device):
        reporter.warn(note)
    check_compile(cfg.train.compiled, info.device)
    torch.manual_seed(cfg.train.seed + info.rank)
    return info


def warn_batch_repeats(batch: int, images: int, data_path: str | Path, reporter: Reporter) -> None:
    """Batches are drawn with replacement, so a batch larger than the set must hold copies: D's
    minibatch-stddev then sees less variety than it should. A smoke test may want that: warn only."""
    if batch > images:
        reporter.warn(f"--batch {batch} is larger than the {images} image(s) in {data_path}: every batch repeats "
                      f"images; add images or use --batch {images}{' or less' if images > 1 else ''}")


def compile_notice(compiled: bool, device: torch.device) -> str | None:
    """What to say before a compiled run's first steps, which go quiet while kernels are built."""
    if not compiled:
        return None
    if device.type == "cpu":
        return ("--compile on the CPU: inductor builds C++ kernels with the system compiler first "
                "(minutes, cached for later runs); CUDA graph modes do nothing here")
    return ("--compile: the first steps build Triton kernels (and record CUDA graphs in the graph modes) before "
            "the bar moves; the kernels are cached for later runs")


def _run(trainer: Trainer, stamp: tuple[int, int, int] | None) -> TrainResult:
    """Train, once every refusal is behind: a compiled run's first steps go quiet, so say why.
    stamp: the run folder's latest.pt when it was checked (see RunDirectory.expect)."""
    trainer.out.expect(stamp)
    notice = compile_notice(trainer.cfg.train.compiled, trainer.info.device)
    if notice:
        trainer.reporter.info(notice)
    return trainer.run()


def pretrain(cfg: RunConfig, data_path: str | Path | None, run_dir: str | Path, reporter: Reporter | None = None,
             resume: bool = False) -> TrainResult:
    """Train a generator from scratch on a folder (or zip) of images; see Trainer for the loop.
    A resumed run may leave data_path None: the run's own record is used."""
    reporter = reporter or NullReporter()
    run_dir = Path(run_dir)
    check_run_dir(run_dir, data_path, resume, reporter)
    stamp = latest_stamp(run_dir)  # what the checks saw, and a resume loads: the trainer's lock re-checks it
    ckpt = open_resumable(run_dir, cfg, "pretrain") if resume else None
    data_path = data_path or recorded_data(ckpt, run_dir)
    info = _start(cfg, reporter)
    default = vars(FinetuneConfig())
    if set_here := [k for k, v in vars(cfg.finetune).items() if v != default[k]]:
        # `pretrain --recipe paper_freezesg` trained a plain model, recording the freezes as if applied
        reporter.warn(f"the recipe's [finetune] settings ({', '.join(set_here)}) apply to `cartoongan finetune` only: "
                      "pretrain trains every layer and ignores them")
    check_batch_fits(cfg.model, cfg.train.batch, info.device)
    data = load_dataset(data_path, cfg.model.size, reporter)
    warn_batch_repeats(cfg.train.batch, len(data), data_path, reporter)
    nets = new_networks(cfg, info.device)
    trainer = Trainer(cfg, nets, data, run_dir, info, reporter=reporter, kind="pretrain",
                      provenance={"data": str(Path(data_path).resolve()), "images": len(data)},
                      evaluator=_evaluator(cfg, data, run_dir, info, reporter))
    if resume:
        _restore(trainer, ckpt, run_dir, reporter)
    del ckpt  # the trainer holds its own copies: don't keep the whole file in memory for the run
    return _run(trainer, stamp)


def _source_networks(cfg: RunConfig, source_path: Path, device: torch.device,
                     reporter: Reporter, resume: bool = False) -> tuple[Networks, list[str]]:
    """The networks a fine-tune starts from, and the source's own lineage (see ancestry). resume:
    D is the run's (restored over these), so where the source's D comes from is not said."""
    with naming(source_path):
        ckpt = load_checkpoint(source_path)
        ancestors = ancestry(provenance(ckpt))
        source = build_generator(ckpt, "g_ema", device)
        g = build_generator(ckpt, "g", device) if "g" in ckpt else copy.deepcopy(source)
        d = build_discriminator(ckpt, device) if "d" in ckpt else None
    if resume and d is None:  # a run made with --fresh-d: the placeholder takes the run's D
        d = _random_d(source, device)
    if d is not None and cfg.finetune.fresh_d and not resume:
        reporter.warn(f"{source_path} has a discriminator: fresh_d (--fresh-d) does nothing, D starts from the "
                      "source's")
    if d is None and cfg.finetune.fresh_d and cfg.finetune.freeze_d:
        # FreezeD keeps what a pretrained D learned; a fresh D's blocks would stay random for good
        raise ConfigError(f"freeze_d {cfg.finetune.freeze_d} (--freeze-d) keeps D's pretrained blocks, and {source_path} "
                          "has no discriminator: with --fresh-d they would be random and never train; drop --freeze-d, "
                          "or pass a source that has its D")
    if d is None and cfg.finetune.fresh_d:
        reporter.warn(f"{source_path} has no discriminator: starting D from random weights (--fresh-d)")
        d = _random_d(source, device)
    elif d is None:
        raise CheckpointError(f"{source_path} has no discriminator ('d'), e.g. a convert_weight.py export; "
                              "pass --fresh-d to start D from random weights")
    if d.size != source.size:
        raise CheckpointError(f"{source_path}: D is {d.size}px but G is {source.size}px")
    if g.config != source.config:
        raise CheckpointError(f"{source_path}: its 'g' and 'g_ema' are different networks: "
                              "use a checkpoint whose two generators match")
    for key in ("size", "style_dim", "n_mlp", "channel_multiplier", "channel_base", "channel_max"):
        setattr(cfg.model, key, source.config[key])
    g_ema = copy.deepcopy(source)
    return Networks(g=g, d=d, g_ema=g_ema, source=source), ancestors


def _random_d(source: Generator, device: torch.device) -> Discriminator:
    """A discriminator of random weights for the source generator's architecture."""
    gc = source.config
    return Discriminator(gc["size"], gc["channel_multiplier"], gc["channel_base"], gc["channel_max"]).to(device)


def finetune(cfg: RunConfig, source_path: str | Path | None, data_path: str | Path | None, run_dir: str | Path,
             reporter: Reporter | None = None, resume: bool = False) -> TrainResult:
    """Fine-tune a pretrained generator on a new domain with FreezeG/SG/D and the structure loss.
    A resumed run may leave source_path and data_path None: the run's own record is used."""
    reporter = reporter or NullReporter()
    run_dir = Path(run_dir)
    check_run_dir(run_dir, data_path, resume, reporter)
    stamp = latest_stamp(run_dir)  # what the checks saw, and a resume loads: the trainer's lock re-checks it
    ckpt = open_resumable(run_dir, cfg, "finetune") if resume else None
    source_path = Path(source_path) if source_path else recorded_source(ckpt, run_dir)
    data_path = data_path or recorded_data(ckpt, run_dir)
    ft = cfg.finetune
    info = _start(cfg, reporter)
    nets, ancestors = _source_networks(cfg, source_path, info.device, reporter, resume)
    check_batch_fits(cfg.model, cfg.train.batch, info.device)
    digest = weights_digest(nets.source)
    if resume:
        check_same_source(ckpt, run_dir, source_path, digest)
    if not 0 <= ft.struct_loss <= nets.g.n_blocks - 1:
        raise ConfigError(f"--struct-loss {ft.struct_loss} is out of range: a {nets.g.size}px network "
                          f"allows 0..{nets.g.n_blocks - 1}")
    plan = make_plan(ft, nets.g, nets.d)
    plan.start_frozen_from(nets.g, nets.g_ema)  # (a resume then loads the run's own g over it: see below)
    notes = settings_without_effect(ft)
    for note in notes if not resume else []:  # a resume's: once its newly frozen blocks are known
        reporter.warn(note)
    if not (ft.struct_loss or plan.source_slots):
        nets.source = None  # nothing reads it: save the memory
    data = load_dataset(data_path, nets.g.size, reporter)
    warn_batch_repeats(cfg.train.batch, len(data), data_path, reporter)
    trainer = Trainer(cfg, nets, data, run_dir, info, plan=plan, reporter=reporter, kind="finetune",
                      provenance={"source": str(source_path.resolve()), "source_digest": digest,
                                  "lineage": [digest, *ancestors], "data": str(Path(data_path).resolve()),
                                  "images": len(data)},
                      evaluator=_evaluator(cfg, data, run_dir, info, reporter))
    reporter.table("fine-tuning plan", ["net", "block", "resolution", "parameters", "state"], plan.rows(nets.g, nets.d))
    if resume:
        _restore(trainer, ckpt, run_dir, reporter)
        # blocks frozen from here on (a raised --freeze-g): g takes the run's g_ema there, as a run
        # frozen from its start holds the source's in both; else the EMA would go on moving them
        if newly := plan.start_frozen_from(nets.g, nets.g_ema):
            reporter.warn(f"{len(newly)} parameter tensor(s) frozen from step {trainer.step} on ({newly[0]}, ...) keep "
                          "the run's g_ema values there, in g and g_ema alike: the source's are kept only by blocks "
                          "frozen from the run's start")
        # blocks frozen from here hold the run's values, not the source's: a loss that reads them is not 0
        wrong = struct_loss_without_effect(ft) if newly and struct_loss_reads(nets.g, newly, ft.struct_loss) else None
        for note in notes:
            if note != wrong:
                reporter.warn(note)
    del ckpt  # the trainer holds its own copies: don't keep the whole file in memory for the run
    return _run(trainer, stamp)


def run_to_end(train: Callable[[], TrainResult], hint: str) -> Path:
    """latest.pt of a training stage run to its end by a pipeline (demo, ablation). A Ctrl-C stops
    the pipeline there, with `hint` (how to go on: the pipeline's own command, not --resume):
    the first as an Interrupted once the stage has saved, the second as the trainer's."""
    try:
        result = train()
    except Interrupted as exc:
        raise exc.with_hint(hint) from None
    if result.interrupted:
        raise Interrupted(result.stopped, hint)
    return result.latest
