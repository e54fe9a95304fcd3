"""The paper's comparison in one command: four fine-tuning methods from one source, one budget, one table.

FreezeD + ADA, FreezeG, FreezeSG and FreezeSG + structure loss are fine-tuned from the same
photo-domain source on the built-in cartoon faces (recipes/ablation64_*.toml: the same steps, batch,
lr and ADA for all four), then measured: FID and KID of g_ema against the cartoon set, the structure
score against the source for the same latents, and PPL (LPIPS VGG, W space). A figure renders the
same seeds through the source and every method, one row each.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import apply_overrides, load_recipe
from ..data.dataset import load_dataset
from ..data.render import render_seeds
from ..data.synthetic import ensure_synthesized
from ..device import resolve_device
from ..errors import CartoonganError, ConfigError, ctrl_c_hint, naming
from ..hostmem import gib, images_past_memory
from ..metrics.plot import read_log
from ..metrics.structure import generator_structure_scores
from ..models.generator import Generator
from ..outputs import atomic_write, check_fresh_dir, check_keeps_inputs, check_subfolders
from ..report import NullReporter, Reporter
from ..train.runs import check_same_source, finetune, resumed_config, run_to_end
from ..weights.checkpoint import load_checkpoint
from ..weights.networks import load_generator, weights_digest
from .demo import BUNDLED_SOURCE, check_finetunable, check_iters
from .sample import sample_checkpoints

METHODS = (  # (table name, recipe)
    ("FreezeD + ADA", "ablation64_freezed_ada"),
    ("FreezeG", "ablation64_freezeg"),
    ("FreezeSG", "ablation64_freezesg"),
    ("FreezeSG + structure loss", "ablation64_structure_loss"),
)
OWN_ENTRIES = {"data", "runs", "samples", "ablation.md", "figure.png"}  # an earlier ablation's: reused
COLUMNS = ("method", "FID ↓", "KID×10³ ↓", "structure ↑", "PPL (W) ↓", "identity ↑", "fine-tune s")


@dataclass
class AblationResult:
    rows: list[list] = field(default_factory=list)  # one per method (and the source), COLUMNS order
    values: list[dict] = field(default_factory=list)  # the same, unrounded (None: not measured)
    markdown: str = ""
    table: Path | None = None
    figure: Path | None = None


def earlier_steps(runs: Path, methods: tuple[tuple[str, str], ...], source: Path, digest: str) -> dict[str, int]:
    """The step of each method's earlier run under `runs` (by recipe), once each is known to come
    from this source (digest: its weights_digest); checked before any work, so that a mixed folder
    is refused before the first fine-tune, not after it."""
    steps = {}
    for _, recipe in methods:
        latest = runs / recipe / "latest.pt"
        if latest.exists():
            ckpt = load_checkpoint(latest, mmap=True)  # its record and step alone
            check_same_source(ckpt, latest.parent, source, digest, fix="choose another --out for this source",
                              changed_fix="put the original back, or choose another --out for this source")
            steps[recipe] = int((ckpt.get("cartoongan") or {}).get("step") or 0)
    return steps


def check_one_budget(steps: dict[str, int], iters: int | None, runs: Path) -> None:
    """Refuse earlier runs (steps: earlier_steps) that trained past this ablation's budget (iters,
    or each recipe's own): reused as they stand, they would be compared with methods trained less."""
    over = {recipe: step for recipe, step in steps.items() if step > (iters or load_recipe(recipe).train.iters)}
    if over:
        budget = f"--iters {iters}" if iters else "their recipes' iters"
        listed = ", ".join(f"{recipe} at step {step}" for recipe, step in over.items())
        raise ConfigError(f"earlier runs under {runs} trained past {budget} ({listed}), and the table compares the "
                          f"methods at one budget: give --iters {max(over.values())} or more, or another --out")


def _finetune(recipe: str, source: Path, data: Path, run: Path, iters: int | None, step: int | None,
              device: str | None, reporter: Reporter) -> Path:
    """Fine-tune (or continue / reuse an earlier run of) one method; returns its latest.pt. step:
    where the earlier run stands (None: there is none); device: where it trains (None: the recipe's own)."""
    cfg = load_recipe(recipe)
    iters = iters or cfg.train.iters
    again = _again(run.parent.parent)
    overrides = {"train": {"iters": iters, **({"device": device} if device else {})}}
    if step is not None:
        if step >= iters:
            return run / "latest.pt"
        cfg = resumed_config(run, overrides)
        return run_to_end(lambda: finetune(cfg, source, data, run, reporter, resume=True), again)
    cfg = apply_overrides(cfg, overrides)
    return run_to_end(lambda: finetune(cfg, source, data, run, reporter), again)


def training_seconds(run: Path) -> float | None:
    """The time a run spent training, from its log.jsonl: each row's images over its img/s (the
    trainer leaves sampling and KID out of those), every resumed stretch included; so a finished run
    reused, or one continued, is timed whole. None without a readable log."""
    try:
        rows = read_log(run)
    except CartoonganError:
        return None
    seconds, kimg, counted = 0.0, 0.0, False
    for row in rows:  # only training rows: a KID row's kimg is inside the next training row's stretch
        now, speed = row.get("kimg"), row.get("img_per_s")
        if isinstance(now, (int, float)) and isinstance(speed, (int, float)) and speed > 0 and now >= kimg:
            seconds, kimg, counted = seconds + (now - kimg) * 1000 / speed, now, True
    return seconds if counted else None


def _again(out: Path) -> str:
    return f"run the ablation again with --out {out} to continue"


class _Scorer:
    """Metrics that need pretrained networks (FID/KID: Inception, PPL: LPIPS, identity: dlib).

    A missing network turns its columns into 'n/a' with one warning, so the structure scores
    (which need nothing) are still reported."""

    def __init__(self, real: torch.Tensor | None, n_ppl: int, device: torch.device, reporter: Reporter):
        self.reporter, self.n_ppl, self.device = reporter, n_ppl, device
        self.inception = self.lpips = self.real_features = self.faces = None
        if real is not None:
            self._load_inception(real)
        if n_ppl:
            self._load_lpips()
        self._load_faces()

    def _load_inception(self, real: torch.Tensor) -> None:
        try:
            from ..metrics.inception import InceptionFeatures

            self.inception = InceptionFeatures(self.device)
            self.real_features = self.inception(real, self.reporter, "inception features: cartoon set")
        except (CartoonganError, ImportError) as exc:  # missing weights or package: reported, the table says n/a
            self.inception = None
            self.reporter.warn(f"FID/KID not computed: {exc}")

    def _load_lpips(self) -> None:
        try:
            from ..metrics.lpips import lpips_vgg

            self.lpips = lpips_vgg().to(self.device)
        except (CartoonganError, ImportError) as exc:
            self.reporter.warn(f"PPL not computed: {exc}")

    def _load_faces(self) -> None:
        try:
            from ..metrics.identity import FaceEmbedder

            self.faces = FaceEmbedder()
        except (CartoonganError, ImportError) as exc:
            self.reporter.warn(f"identity not computed: {exc}")

    def identity(self, source: np.ndarray, fake: np.ndarray) -> float | None:
        """Mean dlib identity similarity of each sample to the source's sample of the same seed."""
        if self.faces is None:
            return None
        from ..metrics.identity import mean_identity

        return mean_identity(source, fake, self.reporter, self.faces)

    def fid_kid(self, fake: np.ndarray) -> tuple[float | None, float | None]:
        if self.inception is None:
            return None, None
        from ..metrics.fid import fid_from_features, kid_from_features

        feats = self.inception(fake, self.reporter, "inception features: samples")
        return fid_from_features(self.real_features, feats), kid_from_features(self.real_features, feats)

    def ppl(self, gen: Generator) -> float | None:
        if self.lpips is None:
            return None
        from ..metrics.ppl import perceptual_path_length

        return perceptual_path_length(gen, lambda a, b: self.lpips(a, b).flatten(), n=self.n_ppl, space="w")


def _measure(scorer: _Scorer, src_gen: Generator, gen: Generator, src_images: np.ndarray, images: np.ndarray,
             n_eval: int, n_structure: int) -> dict:
    """One generator's figures; images/src_images: its and the source's renders of seeds 0.. (uint8 NHWC)."""
    fid, kid = scorer.fid_kid(images[:n_eval]) if n_eval else (None, None)
    return {"fid": fid, "kid": kid,
            "structure": generator_structure_scores(src_gen, gen, list(range(n_structure))).mean().item(),
            "ppl": scorer.ppl(gen),
            "identity": scorer.identity(src_images[:n_structure], images[:n_structure])}


def _fmt(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value * scale:.{digits}f}"


def markdown_table(rows: list[list]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _check_renders_fit(n: int, size: int) -> None:
    """ConfigError when the source's renders and one method's (uint8, held side by side) cannot fit
    in the host's free memory: the kernel's OOM killer would end the run without a word."""
    if past := images_past_memory(n, size, sets=2):
        need, free, fits = past
        raise ConfigError(f"--n-eval/--n-structure {n} holds two sets of {n} renders at {size} px "
                          f"({gib(need)}) and {gib(free)} is free: use {fits} or less")


def run_ablation(out: str | Path, reporter: Reporter | None = None, source: str | Path | None = None,
                 iters: int | None = None, n_eval: int = 200, n_structure: int = 64, n_ppl: int = 100,
                 n_cartoon: int = 1000, seeds: list[int] | None = None,
                 methods: tuple[tuple[str, str], ...] = METHODS, device: str | None = None) -> AblationResult:
    """Fine-tune every method, measure it, write out/ablation.md and out/figure.png.

    n_eval: samples (and at most as many cartoon-set images) for FID/KID (0 skips them); n_structure: seeds for the
    structure score; n_ppl: PPL samples (0 skips PPL). Existing runs under out/runs are reused. device: where
    the methods train and the figures are measured (auto | cpu | cuda | cuda:N; None: the recipes' own, the CPU).
    """
    reporter = reporter or NullReporter()
    if n_eval == 1:
        raise ConfigError("--n-eval 1: FID and KID compare sets of at least 2 images; pass 2 or more, or 0 to skip them")
    dev = resolve_device(device or "cpu")  # before anything is written: a device that is not here is one line
    check_iters(iters, tuple(recipe for _, recipe in methods))
    out = check_fresh_dir(out, "--out", "ablation writes data/, runs/, samples/, ablation.md and figure.png there",
                          reusable=lambda names: set(names) <= OWN_ENTRIES)
    # found after the training otherwise: a folder where a file goes, a file where a folder does
    check_keeps_inputs(out, ["ablation.md", "figure.png"], [], "--out")
    check_subfolders(out, ["data", "runs", "samples"])
    seeds = seeds or list(range(8))
    source = Path(source) if source else BUNDLED_SOURCE
    # before any rendering, not at the first method; a missing source gets load_checkpoint's line
    check_finetunable(source, "every method", tuple(recipe for _, recipe in methods))
    src_gen = load_generator(source, dev)
    _check_renders_fit(max(n_eval, n_structure), src_gen.size)
    with ctrl_c_hint(_again(out)):  # a Ctrl-C between stages: the rerun reuses the finished runs
        steps = earlier_steps(out / "runs", methods, source, weights_digest(src_gen))
        check_one_budget(steps, iters, out / "runs")
        data = out / "data" / "cartoon"
        ensure_synthesized("cartoon", n_cartoon, 64, data, seed=2, reporter=reporter)
        real = load_dataset(data, src_gen.size, limit=n_eval).images if n_eval else None  # uint8 NCHW
        scorer = _Scorer(real, n_ppl, dev, reporter)
        # one render per generator serves FID/KID (first n_eval seeds) and identity (first n_structure)
        n_render = max(n_eval, n_structure)
        src_images = render_seeds(src_gen, range(n_render))
        result, paths = AblationResult(), []
        for name, recipe in (("source (photo)", None), *methods):
            if recipe is None:
                path, seconds = source, 0.0
            else:
                path = _finetune(recipe, source, data, out / "runs" / recipe, iters, steps.get(recipe), device, reporter)
                seconds = training_seconds(path.parent)
            paths.append(path)
            gen = src_gen if recipe is None else load_generator(path, dev)
            with naming(path):  # which method's model drew NaN, if one did
                images = src_images if recipe is None else render_seeds(gen, range(n_render))
            values = {"method": name, **_measure(scorer, src_gen, gen, src_images, images, n_eval, n_structure),
                      "seconds": seconds}
            row = [name, _fmt(values["fid"]), _fmt(values["kid"], 1e3), _fmt(values["structure"], digits=3),
                   _fmt(values["ppl"], digits=1), _fmt(values["identity"], digits=3),
                   "—" if recipe is None else "n/a" if seconds is None else f"{seconds:.0f}"]
            reporter.info(" | ".join(str(c) for c in row))
            result.rows.append(row)
            result.values.append(values)
        result.markdown = markdown_table(result.rows)
        result.table = out / "ablation.md"
        with atomic_write(result.table, "w") as fh:
            fh.write(result.markdown)
        pictures = sample_checkpoints(paths, seeds, out / "samples", noise_mode="const", device=str(dev), reporter=reporter)
        result.figure = Path(pictures.compare.replace(out / "figure.png")) if pictures.compare else None
        reporter.table("ablation (rows: source, then each method)", COLUMNS, result.rows)
        return result
