"""The StyleGAN2 training loop, shared by `pretrain` and `finetune`.

One Trainer owns the networks, optimisers and counters; each phase (D step, lazy R1, G step,
lazy path length, EMA, ADA) is a short method. All randomness comes from the global torch RNGs,
whose states are saved with every checkpoint, so a resumed run matches an unbroken one.
"""
from __future__ import annotations

import contextlib
import copy
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import GRAPH_MODES, RunConfig, TrainConfig
from ..data.dataset import ImageDataset
from ..device import math_mode, set_math_mode
from ..errors import Interrupted, OutputError, TrainingDiverged
from ..models.discriminator import Discriminator
from ..models.generator import Generator
from ..report import NullReporter, Reporter
from ..weights.networks import images_trained, is_count, recorded_train, training_checkpoint
from .augment import AdaController, augment
from .distributed import DistInfo, StopVote, average_gradients, broadcast_module, sum_across
from .evaluate import KidEvaluator
from .freeze import FreezePlan
from .losses import (
    d_logistic_loss,
    ema_beta,
    ema_update,
    g_nonsaturating_loss,
    path_length_penalty,
    r1_penalty,
    structure_loss,
)
from .run_dir import RunDirectory, holds_unsaved_run


@dataclass
class Networks:
    """g and d train; g_ema is their running average; source is the frozen generator of a finetune."""

    g: Generator
    d: Discriminator
    g_ema: Generator
    source: Generator | None = None


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    interrupted: bool = False
    latest: Path | None = None
    log: list[dict] = field(default_factory=list)

    @property
    def stopped(self) -> str:
        """What an interrupted run kept, for its one line: 'interrupted at step N; saved PATH'
        (without the path on a rank other than 0, which saves nothing)."""
        saved = f"; saved {self.latest}" if self.latest is not None else ""
        return f"interrupted at step {self.step}{saved}"


FUSED_ADAM_DEVICES = ("cpu", "cuda")
# a regularisation weight this many times its default is suspected first when a run diverges
LARGE_WEIGHT = 10


def lazy_adam(params, lr: float, reg_every: int) -> torch.optim.Adam:
    """Adam with StyleGAN2's lazy-regularisation correction of lr and betas (beta1 = 0).

    The fused update runs every parameter in one or two kernels instead of several per tensor:
    3x faster on the CPU (config F, 59 M parameters: 32 vs 81 ms per step), and on CUDA it
    removes hundreds of launches per step.
    """
    params = list(params)
    ratio = reg_every / (reg_every + 1) if reg_every > 0 else 1.0
    fused = bool(params) and all(p.device.type in FUSED_ADAM_DEVICES and p.is_floating_point() for p in params)
    return torch.optim.Adam(params, lr=lr * ratio, betas=(0.0, 0.99**ratio), fused=fused or None)


def load_optimizer_state(optim: torch.optim.Optimizer, state: dict) -> None:
    """Load a saved optimizer state (Adam's moments and step counts), keeping this optimizer's own
    settings: torch takes every group setting from the saved dict, so a resumed run kept the lr
    and betas it was saved with (`--resume --lr`, a changed g_reg_every: warned of as applied, and
    bit for bit ignored), and a state saved unfused (an older run, rosinality's train.py) switched
    the fused update off for the rest of the run."""
    own = {k: optim.defaults[k] for k in ("fused", "foreach") if k in optim.defaults}
    groups = [{**saved, **own, "lr": mine["lr"], "betas": mine["betas"]}
              for saved, mine in zip(state["param_groups"], optim.param_groups)]
    optim.load_state_dict({**state, "param_groups": groups})


class _EvaluationCut(Exception):
    """A stop asked for during a KID evaluation, which ends it there: with a large --eval-n it can
    take minutes, longer than a scheduler waits between its SIGTERM and its SIGKILL."""


class _StopFlag:
    """Turns Ctrl-C, and SIGTERM (a scheduler's preemption, torchrun passing either on), into a
    flag checked between steps, so the state saved is never half-updated. A second Ctrl-C stops at
    once (KeyboardInterrupt); a repeated SIGTERM does not, as launchers may deliver one twice (the
    scheduler to every process, torchrun again to its workers) and their SIGKILL follows anyway."""

    def __init__(self):
        self.requested = False
        self._old = {}
        self._cuttable = False

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        if self._cuttable:
            self._cuttable = False
            raise _EvaluationCut

    @contextlib.contextmanager
    def cut_short(self):
        """A stretch that a stop ends at once with _EvaluationCut, also one asked for before it:
        only for work that changes nothing of the run's state (an evaluation)."""
        if self.requested:
            raise _EvaluationCut
        self._cuttable = True
        try:
            yield
        finally:
            self._cuttable = False

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Trainer:
    def __init__(self, cfg: RunConfig, nets: Networks, data: ImageDataset, run_dir: Path, info: DistInfo,
                 plan: FreezePlan | None = None, reporter: Reporter | None = None, kind: str = "pretrain",
                 provenance: dict | None = None, evaluator: KidEvaluator | None = None):
        self.cfg, self.t, self.nets, self.data = cfg, cfg.train, nets, data
        self.evaluator = evaluator  # KID every t.eval_every steps, best.pt (main process only)
        self.run_dir, self.info, self.kind = Path(run_dir), info, kind
        self.out = RunDirectory(run_dir, writes=info.is_main)
        self.plan = plan or FreezePlan()
        self.reporter = reporter or NullReporter()
        self.provenance = provenance or {}
        # the fine-tuning settings of earlier stretches of a resumed run: [{"until_step", "finetune"}]
        self.history: list[dict] = []
        self.numbered_saved = False  # whether the resumed step had checkpoints/NNNNNN.pt saved (restore)
        self.dev = info.device
        self.local_batch = self.t.batch // info.world
        data.place_for(self.dev)  # on a GPU with room for it: no copy, no host wait per batch
        ft = cfg.finetune
        self.struct_n = ft.struct_loss if kind == "finetune" else 0
        self.plan.apply(nets.g, nets.d)
        for net in (nets.g, nets.d):
            broadcast_module(net, info)
        nets.g_ema.requires_grad_(False).eval()
        if nets.source is not None:
            nets.source.requires_grad_(False).eval()
        self.g_optim = lazy_adam(nets.g.parameters(), self.t.lr, self.t.g_reg_every)
        self.d_optim = lazy_adam(nets.d.parameters(), self.t.lr, self.t.d_reg_every)
        self.ada = AdaController(self.t.ada_target, self.t.ada_interval, self.t.ada_kimg, self.t.batch, self.t.augment_p)
        self.step = 0
        # images trained on: step x batch only while the batch never changed (a resume may change it)
        self.images = 0
        self.mean_path = torch.zeros((), device=self.dev)
        self.w_avg = nets.g_ema.w_avg.clone().to(self.dev) if nets.g_ema.w_avg is not None else None
        self.stats: dict[str, list[torch.Tensor]] = {}
        self.unchecked: list[torch.Tensor] = []
        self.log: list[dict] = []
        # runs.py allows bf16 on CUDA only; on the CPU it serves to test the same code path
        self.autocast = self.t.precision == "bf16"
        set_math_mode(self.t.precision)
        # a run's conv shapes are fixed (batch, R1 batch, path-length batch), so timing cuDNN's
        # algorithms once per shape pays for itself within the first iterations
        torch.backends.cudnn.benchmark = self.t.cudnn_benchmark
        self.d_fwd, self.g_syn = nets.d, nets.g.synthesis
        compiled = self.t.compiled
        if compiled:
            mode = None if self.t.compile_mode == "default" else self.t.compile_mode
            self.d_fwd, self.g_syn = torch.compile(nets.d, mode=mode), torch.compile(nets.g.synthesis, mode=mode)
        # CUDA-graph replays reuse their outputs' memory once the next compiled call begins a new
        # step with no backward pending: the D step's no-grad fakes must be copied out first
        self.graphs = compiled and self.t.compile_mode in GRAPH_MODES

    # ---- helpers ---------------------------------------------------------------------
    def _amp(self):
        return torch.autocast(self.dev.type, torch.bfloat16) if self.autocast else contextlib.nullcontext()

    def _track(self, name: str, value: torch.Tensor) -> None:
        value = value.detach().float()
        self.stats.setdefault(name, []).append(value)
        self.unchecked.append(value)  # checked for NaN/inf together, when a save or a log line needs it

    def _latents(self, n: int):
        """z, optional z2 and crossover for style mixing (crossover drawn once per batch)."""
        g = self.nets.g
        z = torch.randn(n, g.style_dim, device=self.dev)
        # the host decides whether and where to mix from the CPU RNG: a GPU draw read back would stall
        if self.t.mixing > 0 and torch.rand((), device="cpu").item() < self.t.mixing:
            crossover = int(torch.randint(1, g.n_latent, (), device="cpu").item())
            return z, torch.randn(n, g.style_dim, device=self.dev), crossover
        return z, None, None

    def _ws(self, z, z2, crossover, for_structure: bool = False):
        """Target w+, with FreezeSG's slots from the source mapping; also the source's own w+
        (None unless FreezeSG or, when for_structure, the structure loss needs it)."""
        ws = self.nets.g.ws_from_z(z, z2, crossover)
        src_ws = None
        if self.nets.source is not None and (self.plan.source_slots or (for_structure and self.struct_n)):
            with torch.no_grad():
                src_ws = self.nets.source.ws_from_z(z, z2, crossover)
        k = self.plan.source_slots
        if k:
            ws = torch.cat([src_ws[:, :k], ws[:, k:]], dim=1)
        # one stride pattern whether or not the batch mixes (broadcast w+ is an expand, a mixed one a
        # cat): a compiled synthesis guards on strides and would compile, and record graphs, twice
        return ws.contiguous(), src_ws

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        return augment(x, self.ada.p) if self.t.augment == "ada" or self.t.augment_p > 0 else x

    def _optimize(self, optim, params_of: torch.nn.Module, loss: torch.Tensor) -> None:
        optim.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(params_of.parameters(), self.info)
        optim.step()

    # ---- phases ----------------------------------------------------------------------
    def _reals(self, n: int) -> torch.Tensor:
        """A batch of real images in D's memory format, as G's fakes come: one compiled D graph
        serves both (with --compile, a stride change recompiles)."""
        layout = torch.channels_last if self.nets.d.channels_last else torch.contiguous_format
        return self.data.batch(n, self.t.xflip, self.dev, layout)

    def d_step(self) -> None:
        n = self.local_batch
        real = self._reals(n)
        with torch.no_grad(), self._amp():
            ws, _ = self._ws(*self._latents(n))
            fake = self.g_syn(ws).image
            if self.graphs:
                fake = fake.clone()
        # under bf16 the fakes come in bf16: reals in the same dtype go through ADA with the same
        # rounding (nothing for D to tell them apart by), and a compiled D serves both with one graph
        real = real.to(fake.dtype)
        with self._amp():
            real_logits = self.d_fwd(self._augment(real))
            fake_logits = self.d_fwd(self._augment(fake))
            loss = d_logistic_loss(real_logits.float(), fake_logits.float())
        self._optimize(self.d_optim, self.nets.d, loss)
        self._track("loss_d", loss)
        self._track("real_score", real_logits.float().mean())
        self._track("fake_score", fake_logits.float().mean())
        if self.t.augment == "ada":
            self.ada.observe(real_logits.float())
            self.ada.maybe_update(lambda s: sum_across(s, self.info))

    def r1_step(self) -> None:
        real = self._reals(self.local_batch).requires_grad_(True)
        logits = self.nets.d(self._augment(real))
        penalty = r1_penalty(logits, real)
        loss = self.t.r1_gamma / 2 * penalty * self.t.d_reg_every + 0 * logits[0, 0]
        self._optimize(self.d_optim, self.nets.d, loss)
        self._track("r1", penalty)

    def g_step(self) -> None:
        n = self.local_batch
        z, z2, c = self._latents(n)
        with self._amp():
            ws, src_ws = self._ws(z, z2, c, for_structure=True)
            tap = self.cfg.finetune.struct_tap
            noises = self.nets.g.make_noise(n) if self.struct_n else None
            out = self.g_syn(ws, noises=noises, return_rgbs=bool(self.struct_n) and tap == "rgb",
                             return_features=bool(self.struct_n) and tap == "features")
            loss = g_nonsaturating_loss(self.d_fwd(self._augment(out.image)).float())
        self._track("loss_g", loss)
        if self.struct_n:
            with torch.no_grad(), self._amp():
                # the loss reads blocks 1..n only: the source stops there (block 0 is the 4 px one)
                src = self.nets.source.synthesis(src_ws, noises=noises, return_rgbs=tap == "rgb",
                                                 return_features=tap == "features",
                                                 n_blocks=self.struct_n + 1)
            pick = (lambda o: o.rgbs) if tap == "rgb" else (lambda o: o.features)
            s_loss = structure_loss(pick(out), pick(src), self.struct_n, self.cfg.finetune.struct_weight)
            self._track("loss_struct", s_loss)
            loss = loss + s_loss
        self._optimize(self.g_optim, self.nets.g, loss)
        with torch.no_grad():
            w = ws[:, -1].detach().float().mean(0)
            self.w_avg = w.clone() if self.w_avg is None else torch.lerp(w, self.w_avg, 0.995)

    def path_step(self) -> None:
        n = max(1, self.local_batch // self.t.path_batch_shrink)
        ws, _ = self._ws(*self._latents(n))
        if not ws.requires_grad:  # mapping frozen and all slots fixed: differentiate w.r.t. w+ itself
            ws = ws.detach().requires_grad_(True)
        images = self.nets.g.synthesis(ws).image
        penalty, self.mean_path, length = path_length_penalty(images, ws, self.mean_path)
        loss = self.t.path_weight * self.t.g_reg_every * penalty + 0 * images[0, 0, 0, 0]
        self._optimize(self.g_optim, self.nets.g, loss)
        self.mean_path = sum_across(self.mean_path, self.info) / self.info.world
        self._track("path_length", length)

    def d_phase(self, regularize: bool) -> None:
        """D step with G frozen, then R1 when `regularize`."""
        self.nets.g.requires_grad_(False)
        self.d_step()
        if regularize:
            self.r1_step()
        self.plan.apply(self.nets.g, self.nets.d)

    def g_phase(self, regularize: bool) -> None:
        """G step with D frozen, then path length when `regularize`."""
        self.nets.d.requires_grad_(False)
        self.g_step()
        if regularize:
            self.path_step()
        self.plan.apply(self.nets.g, self.nets.d)

    def train_step(self) -> None:
        """One iteration: D step, lazy R1, G step, lazy path length, EMA."""
        t = self.t
        self.d_phase(t.r1_gamma > 0 and self.step % t.d_reg_every == 0)
        self.g_phase(t.g_reg_every > 0 and t.path_weight > 0 and self.step % t.g_reg_every == 0)
        ema_update(self.nets.g_ema, self.nets.g, ema_beta(t.batch, t.ema_kimg))
        self.step += 1
        self.images += t.batch

    # ---- state -----------------------------------------------------------------------
    def checkpoint(self) -> dict:
        n = self.nets
        train_state = {
            "mean_path": self.mean_path.cpu(), "ada": self.ada.state_dict(),
            "best_kid": self.evaluator.best if self.evaluator else None,
            "kid_data": self.evaluator.digest if self.evaluator else None,  # what best_kid was measured against
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(self.dev) if self.dev.type == "cuda" else None,
        }
        meta = {"kind": self.kind, "step": self.step, "images": self.images, "config": self.cfg.to_dict(),
                "provenance": self.provenance, **({"history": self.history} if self.history else {})}
        return training_checkpoint(n.g, n.d, n.g_ema, self.g_optim, self.d_optim, self.w_avg, self.ada.p,
                                   train_state, **meta)

    def _history(self, meta: dict) -> list[dict]:
        """The recorded history, and the stretch up to now when this resume changes the fine-tuning
        settings or the data folder (`info` named only the last ones, of a model half trained with
        others: `provenance.data` is the data of the last stretch)."""
        recorded = meta.get("history")
        history = [h for h in recorded if isinstance(h, dict)] if isinstance(recorded, list) else []
        config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
        before, now = config.get("finetune"), self.cfg.to_dict()["finetune"]
        if self.kind == "finetune" and isinstance(before, dict) and before != now and self.step > 0:
            history.append({"until_step": self.step, "finetune": before})
        was = meta.get("provenance") if isinstance(meta.get("provenance"), dict) else {}
        if isinstance(was.get("data"), str) and was["data"] != self.provenance.get("data") and self.step > 0:
            history.append({"until_step": self.step, "data": was["data"], "images": was.get("images")})
        return history

    def restore(self, ckpt: dict) -> None:
        """Continue from a checkpoint written by `checkpoint()` (weights, optimisers, counters, RNG)."""
        n = self.nets
        n.g.load_state_dict(ckpt["g"])
        n.d.load_state_dict(ckpt["d"])
        n.g_ema.load_state_dict(ckpt["g_ema"])
        load_optimizer_state(self.g_optim, ckpt["g_optim"])
        load_optimizer_state(self.d_optim, ckpt["d_optim"])
        ts = ckpt["train_state"]
        self.mean_path = ts["mean_path"].to(self.dev)
        if not self._augment_changed(recorded_train(ckpt["cartoongan"])):
            self.ada.load_state_dict(ts["ada"])
        # else a new --augment-p (or --augment) applies from here, as the resume warning says: the
        # fresh controller starts at the new p (fixed with augment none), not at the p tuned so far
        other_data = self.evaluator is not None and ts.get("kid_data") not in (None, self.evaluator.digest)
        if self.evaluator is not None and ts.get("best_kid") is not None:
            if not other_data:  # (no record: a run saved before it)
                self.evaluator.best = float(ts["best_kid"])
            else:  # another dataset: its KIDs are not comparable with the old ones, and best.pt stayed on them
                self.reporter.warn(f"the best KID so far ({float(ts['best_kid']):.4g}) was measured against other "
                                   f"training images: best.pt is chosen afresh from step {int(ckpt['cartoongan']['step'])} "
                                   "on, against these")
        self.step = int(ckpt["cartoongan"]["step"])
        self.numbered_saved = saved_numbered(self.step, recorded_train(ckpt["cartoongan"]), self.t)
        self.images = images_trained(ckpt["cartoongan"], self.t.batch)
        self.history = self._history(ckpt["cartoongan"])
        if not other_data:
            self._keep_a_newer_best()
        if torch.is_tensor(ckpt.get("latent_avg")):
            self.w_avg = ckpt["latent_avg"].to(self.dev)
        torch.set_rng_state(ts["rng_cpu"])
        if self.dev.type == "cuda" and ts.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(ts["rng_cuda"], self.dev)
        if self.info.world > 1:  # ranks must not share a random stream
            torch.manual_seed(self.t.seed + self.info.rank + 7919 * self.step)

    def _augment_changed(self, train: dict) -> bool:
        """Whether the run's recorded [train] table had another augment or augment_p than this one;
        False for keys it does not record (an older run)."""
        return any(key in train and train[key] != getattr(self.t, key) for key in ("augment", "augment_p"))

    def _keep_a_newer_best(self) -> None:
        """A best.pt newer than the checkpoint resumed (its log row is dropped with the rows past
        that step) is still this run's lowest KID: only a lower one may replace it, or the resumed
        run would overwrite a better model with a worse one."""
        if self.evaluator is None or not self.info.is_main:
            return
        newer = self.out.best_after(self.step, self.kind, self.cfg.to_dict()["model"])
        if newer is not None and newer[1] < self.evaluator.best:
            self.evaluator.best = newer[1]
            self.reporter.info(f"{self.out.best} (step {newer[0]}, KID {newer[1]:.4g}) is newer than the step "
                               f"resumed, {self.step}: kept; only a lower KID replaces it")

    def _check_finite(self) -> None:
        # one check for every value tracked since the last, not three ops per value; a bad value
        # stays in the list, so that every later check fails too
        if self.unchecked and not bool(torch.isfinite(torch.stack(self.unchecked)).all()):
            latest = self.out.latest
            again = "the same --out will do" if holds_unsaved_run(self.run_dir) else "in a new --out"
            fix = (f"the last good checkpoint is {latest}; resume with {self._steadier()}"
                   if latest.exists() else
                   f"no checkpoint was written to {self.run_dir} yet, so nothing resumes: start again ({again}) "
                   f"with {self._steadier()}")
            raise TrainingDiverged(f"a loss became NaN or inf by step {self.step}; {fix}")
        self.unchecked.clear()

    def _steadier(self) -> str:
        """What may steady a diverged run: a lower lr, and a larger R1 weight unless this run's is
        already huge, when it (or a huge path-length weight) is the likelier cause."""
        t, huge = self.t, []
        if t.r1_gamma > LARGE_WEIGHT * TrainConfig.r1_gamma:
            huge.append(f"the R1 weight ([train] r1_gamma {t.r1_gamma:g})")
        if t.g_reg_every and t.path_weight > LARGE_WEIGHT * TrainConfig.path_weight:
            huge.append(f"the path-length weight ([train] path_weight {t.path_weight:g})")
        if huge:
            defaults = "its default" if len(huge) == 1 else "their defaults"
            return f"a lower --lr, or lower {' and '.join(huge)}, far above {defaults}"
        if t.r1_gamma == 0:
            return f"a lower --lr, or R1 on ([train] r1_gamma is 0; {TrainConfig.r1_gamma:g} is the default)"
        return f"a lower --lr or a larger R1 weight ([train] r1_gamma, now {t.r1_gamma:g})"

    def save(self, numbered: bool) -> Path | None:
        self._check_finite()
        return self.out.save(self.checkpoint(), self.step, numbered) if self.info.is_main else None

    def evaluate(self, cut_short=contextlib.nullcontext, stopping: bool = False) -> float | None:
        """KID of g_ema now, logged to log.jsonl; a new best is saved as best.pt. None on a rank
        other than 0, and when a stop cuts the evaluation short (`cut_short`: _StopFlag's) or the
        run is stopping already (`stopping`: another rank's stop, which this rank's flag lacks)."""
        if self.evaluator is None or not self.info.is_main:
            return None
        self._check_finite()
        try:
            if stopping:
                raise _EvaluationCut
            with math_mode("fp32"), cut_short():  # KID as `cartoongan metrics` computes it, whatever the precision
                kid = self.evaluator(self.nets.g_ema)
        except _EvaluationCut:
            self.reporter.warn(f"the stop cut step {self.step}'s KID evaluation short: the step is saved, "
                               "its KID is not logged")
            return None
        row = {"step": self.step, "kimg": round(self.images / 1000, 3), "kid": kid}
        self.log.append(row)
        self.out.append_log(row)
        if self.evaluator.improved(kid):
            self.out.save_best(self.checkpoint())
        return kid

    def write_log(self, seconds: float, images: int) -> dict:
        self._check_finite()
        row = {"step": self.step, "kimg": round(self.images / 1000, 3)}
        for name, values in self.stats.items():
            row[name] = round(torch.stack(values).mean().item(), 5)
        row["ada_p"] = round(self.ada.p, 5)
        row["img_per_s"] = round(images / max(seconds, 1e-9), 2)
        self.stats.clear()
        self.log.append(row)
        self.out.append_log(row)
        return row

    # ---- the loop --------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train to cfg.train.iters. A failed write (disk full) stops with an OutputError that says
        which checkpoint the run keeps."""
        try:
            with StopVote(self.info) as vote, contextlib.ExitStack() as held:
                with vote.starting():  # rank 0's refusal (the lock, the latest.pt check) stops every rank
                    held.enter_context(self.out.exclusive())
                    self.out.start(self.cfg, self.step, self.numbered_saved)
                return self._run(vote)
        except OutputError as exc:
            latest = self.out.latest
            if not latest.is_file():
                raise
            raise OutputError(f"{exc}; the run keeps {latest}: continue with --resume {self.run_dir}") from None

    def _stopped_at_once(self) -> Interrupted:
        if not self.info.is_main:  # rank 0 writes the checkpoints, and its line says what they hold
            return Interrupted(f"stopped at once at step {self.step} (a second Ctrl-C)", "rank 0's line says what the run kept")
        saved = self.out.saved_step
        head = (f"stopped at once after step {self.step} (a second Ctrl-C)" if saved == self.step else
                f"stopped at once at step {self.step} (a second Ctrl-C), without saving it")
        if saved is None or not self.out.latest.is_file():
            return Interrupted(f"{head}; nothing was saved yet", "the same command starts the run again")
        return Interrupted(f"{head}; {self.out.latest} holds step {saved}", f"continue with --resume {self.run_dir}")

    def _run(self, vote: StopVote) -> TrainResult:
        t = self.t
        result = TrainResult(self.run_dir, self.step)
        with _StopFlag() as stop, self.reporter.progress(t.iters, self.kind, completed=self.step) as bar:
            try:
                self._steps(stop, vote, bar, result)
            except KeyboardInterrupt:
                if not stop.requested:
                    raise  # not the loop's second stop: nothing of the run's to speak of
                raise self._stopped_at_once() from None  # say what the run kept
        # a stop asked for during the last step: that step is saved, and a pipeline (demo, ablation)
        # must not go on to its next stage as if nobody had asked
        result.interrupted |= stop.requested
        result.step, result.log = self.step, self.log
        return result

    def _steps(self, stop: _StopFlag, vote: StopVote, bar, result: TrainResult) -> None:
        """Train to cfg.train.iters, or to the step after a Ctrl-C (`stop`, agreed on by every rank
        through `vote`), logging, sampling, evaluating and saving on the way (result.latest,
        result.interrupted)."""
        t = self.t

        def clock() -> float:  # once the GPU has caught up with the work queued so far
            if self.dev.type == "cuda":
                torch.cuda.synchronize(self.dev)
            return time.perf_counter()

        tick_time, tick_step = clock(), self.step
        start_time, start_step, paused_total = tick_time, self.step, 0.0

        def log_row() -> dict:  # the steps since the last row: their losses; the bar's img_per_s
            nonlocal tick_time, tick_step
            now = clock()
            row = self.write_log(now - tick_time, (self.step - tick_step) * t.batch)
            tick_time, tick_step = now, self.step
            shown = {k: row[k] for k in ("loss_g", "loss_d", "ada_p") if k in row}
            # the bar's speed is this session's mean: the last row's alone (the log's img_per_s) made a
            # run's last line read 40 img/s for a fine-tune that averaged 9.5
            trained = now - start_time - paused_total
            if trained > 0:
                shown["img_per_s"] = (self.step - start_step) * t.batch / trained
            return shown

        while self.step < t.iters:
            self.train_step()
            last = self.step == t.iters
            # read once: a Ctrl-C landing between the save below and the break would stop the run
            # with this step unsaved (and, before the first checkpoint, with nothing saved at all)
            stopping = vote.poll(stop.requested)
            logged = self.step % t.log_every == 0 or last or stopping
            fields = log_row() if logged else {}
            sampling = self.step % t.sample_every == 0 or last
            evaluating = bool(t.eval_every) and (self.step % t.eval_every == 0 or last)
            if sampling or evaluating:
                paused = clock()
                if sampling:
                    self.out.save_samples(self.nets.g_ema, self.step, t.n_sample)
                kid = self.evaluate(stop.cut_short, stopping) if evaluating else None
                pause = clock() - paused  # img_per_s is the training's: not the pictures' nor KID's
                tick_time, paused_total = tick_time + pause, paused_total + pause
                fields = {**fields, "kid": kid} if kid is not None else fields
            # a stop asked for during the evaluation makes this step the last: every rank votes
            # again, at once (the others wait for rank 0 here, not in the next step's gradients)
            if evaluating and not stopping and vote.settle(stop.requested):
                stopping = True
                fields = fields if logged else {**log_row(), **fields}
            if self.step % t.ckpt_every == 0 or last or stopping:
                result.latest = self.save(numbered=self.step % t.ckpt_every == 0 or last)
            bar.advance(1, **fields)
            if stopping:
                result.interrupted = True
                break


def saved_numbered(step: int, recorded: dict, now: TrainConfig) -> bool:
    """Whether the save of `step` wrote checkpoints/NNNNNN.pt beside latest.pt: at every ckpt_every
    steps and at the last step of the call, by the [train] settings it recorded (a resume may
    change both; a stop before the end saved latest.pt alone)."""
    every = recorded.get("ckpt_every") if is_count(recorded.get("ckpt_every")) and recorded["ckpt_every"] else now.ckpt_every
    iters = recorded.get("iters") if is_count(recorded.get("iters")) else now.iters
    return step % every == 0 or step == iters


def new_networks(cfg: RunConfig, device: torch.device) -> Networks:
    """Freshly initialised G, D and G_ema (a copy of G) for pretraining."""
    g = Generator(**cfg.model.generator_kwargs()).to(device)
    d = Discriminator(**cfg.model.discriminator_kwargs()).to(device)
    return Networks(g=g, d=d, g_ema=copy.deepcopy(g).eval())
