"""Run directories: start, resume and execute `pretrain` and `finetune` runs."""
from __future__ import annotations

import copy
from pathlib import Path

import tomllib
import torch

from ..config import RunConfig, from_dict, validate
from ..data.dataset import load_dataset
from ..errors import CheckpointError, ConfigError
from ..models.discriminator import Discriminator
from ..report import NullReporter, Reporter
from ..weights.checkpoint import load_checkpoint
from ..weights.networks import build_discriminator, build_generator
from .distributed import init_distributed
from .freeze import make_plan
from .evaluate import KidEvaluator
from .trainer import Networks, Trainer, TrainResult, new_networks


def _evaluator(cfg: RunConfig, data, run_dir: Path, info, reporter: Reporter) -> KidEvaluator | None:
    """KID against the training set every cfg.train.eval_every steps (main process), or None."""
    if not cfg.train.eval_every or not info.is_main:
        return None
    return KidEvaluator(data.images, cfg.train.eval_n, info.device, run_dir, reporter)


def resumed_config(run_dir: Path, overrides: dict | None = None) -> RunConfig:
    """The config of an existing run (RUN_DIR/config.toml), with `iters` etc. optionally raised."""
    path = run_dir / "config.toml"
    if not (run_dir / "latest.pt").is_file() or not path.is_file():
        raise ConfigError(f"--resume {run_dir}: no latest.pt and config.toml there to continue from")
    cfg = from_dict(tomllib.loads(path.read_text()))
    for section, values in (overrides or {}).items():
        for key, value in values.items():
            if value is not None:
                setattr(getattr(cfg, section), key, value)
    return cfg


def _check_fresh(run_dir: Path) -> None:
    if (run_dir / "latest.pt").exists():
        raise ConfigError(f"{run_dir} already holds a run; pass --resume {run_dir} to continue it, or another --out")


def _start(cfg: RunConfig, reporter: Reporter):
    info = init_distributed(cfg.train.device)
    validate(cfg, info.world)
    if cfg.train.precision == "bf16" and info.device.type != "cuda":
        raise ConfigError("--precision bf16 needs a CUDA device; use fp32 on the CPU")
    torch.manual_seed(cfg.train.seed + info.rank)
    return info


def pretrain(cfg: RunConfig, data_path: str | Path, run_dir: str | Path, reporter: Reporter | None = None,
             resume: bool = False) -> TrainResult:
    """Train a generator from scratch on a folder (or zip) of images; see Trainer for the loop."""
    reporter = reporter or NullReporter()
    run_dir = Path(run_dir)
    if not resume:
        _check_fresh(run_dir)
    info = _start(cfg, reporter)
    data = load_dataset(data_path, cfg.model.size, reporter)
    nets = new_networks(cfg, info.device)
    trainer = Trainer(cfg, nets, data, run_dir, info, reporter=reporter, kind="pretrain",
                      provenance={"data": str(data_path), "images": len(data)},
                      evaluator=_evaluator(cfg, data, run_dir, info, reporter))
    if resume:
        trainer.restore(load_checkpoint(run_dir / "latest.pt"))
        reporter.info(f"resuming {run_dir} at step {trainer.step}")
    return trainer.run()


def _source_networks(cfg: RunConfig, source_path: Path, device: torch.device, reporter: Reporter) -> Networks:
    ckpt = load_checkpoint(source_path)
    source = build_generator(ckpt, "g_ema", device)
    g = build_generator(ckpt, "g", device) if "g" in ckpt else copy.deepcopy(source)
    if "d" in ckpt:
        d = build_discriminator(ckpt, device)
    elif cfg.finetune.fresh_d:
        reporter.warn(f"{source_path} has no discriminator: starting D from random weights (--fresh-d)")
        gc = source.config
        d = Discriminator(gc["size"], gc["channel_multiplier"], gc["channel_base"], gc["channel_max"]).to(device)
    else:
        raise CheckpointError(f"{source_path} has no discriminator ('d'), e.g. a convert_weight.py export; "
                              "pass --fresh-d to start D from random weights")
    if d.size != source.size:
        raise CheckpointError(f"{source_path}: D is {d.size}px but G is {source.size}px")
    for key in ("size", "style_dim", "n_mlp", "channel_multiplier", "channel_base", "channel_max"):
        setattr(cfg.model, key, source.config[key])
    g_ema = copy.deepcopy(source)
    return Networks(g=g, d=d, g_ema=g_ema, source=source)


def finetune(cfg: RunConfig, source_path: str | Path, data_path: str | Path, run_dir: str | Path,
             reporter: Reporter | None = None, resume: bool = False) -> TrainResult:
    """Fine-tune a pretrained generator on a new domain with FreezeG/SG/D and the structure loss."""
    reporter = reporter or NullReporter()
    run_dir, source_path = Path(run_dir), Path(source_path)
    if not resume:
        _check_fresh(run_dir)
    ft = cfg.finetune
    if ft.struct_weight < 0 or ft.struct_weight != ft.struct_weight:
        raise ConfigError(f"--struct-weight must be >= 0, got {ft.struct_weight}")
    if ft.struct_tap not in ("rgb", "features"):
        raise ConfigError(f"--struct-tap must be rgb or features, got '{ft.struct_tap}'")
    info = _start(cfg, reporter)
    nets = _source_networks(cfg, source_path, info.device, reporter)
    if not 0 <= ft.struct_loss <= nets.g.n_blocks - 1:
        raise ConfigError(f"--struct-loss {ft.struct_loss} is out of range: a {nets.g.size}px network "
                          f"allows 0..{nets.g.n_blocks - 1}")
    plan = make_plan(ft, nets.g, nets.d)
    if not (ft.struct_loss or plan.source_slots):
        nets.source = None  # nothing reads it: save the memory
    data = load_dataset(data_path, nets.g.size, reporter)
    trainer = Trainer(cfg, nets, data, run_dir, info, plan=plan, reporter=reporter, kind="finetune",
                      provenance={"source": str(source_path.resolve()), "data": str(data_path), "images": len(data)},
                      evaluator=_evaluator(cfg, data, run_dir, info, reporter))
    reporter.table("fine-tuning plan", ["net", "block", "resolution", "parameters", "state"], plan.rows(nets.g, nets.d))
    if resume:
        trainer.restore(load_checkpoint(run_dir / "latest.pt"))
        reporter.info(f"resuming {run_dir} at step {trainer.step}")
    return trainer.run()
