"""Data parallelism with torch.distributed: NCCL on GPUs, gloo on CPUs, launched by torchrun.

Gradients are averaged by hand after each backward rather than through DDP's wrapper, because
lazy R1 (double backward), path length and frozen blocks leave different parameter sets with
gradients on different steps, which DDP's bucketing does not expect.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..device import resolve_device
from ..errors import CartoonganError, ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_LAUNCH_HINT = "start a multi-process run with `torchrun --nproc_per_node N -m cartoongan_cli ...`, or unset WORLD_SIZE"


def launch_env(environ=os.environ) -> tuple[int, int, int]:
    """(rank, local rank, world size) that torchrun put in the environment; (0, 0, 1) without it.

    Raises ConfigError for values torchrun would never write (a hand-set WORLD_SIZE without RANK)."""
    def number(name: str, default: str | None) -> int:
        text = environ.get(name, default)
        if text is None:
            raise ConfigError(f"WORLD_SIZE is {environ['WORLD_SIZE']} but {name} is not set: {_LAUNCH_HINT}")
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{name}={text!r} is not a whole number: {_LAUNCH_HINT}") from None

    world = number("WORLD_SIZE", "1")
    if world <= 1:
        return 0, 0, 1
    rank, local = number("RANK", None), number("LOCAL_RANK", "0")
    if not 0 <= rank < world or local < 0:
        raise ConfigError(f"RANK={rank} (LOCAL_RANK={local}) is not a rank of WORLD_SIZE={world}: {_LAUNCH_HINT}")
    return rank, local, world


def init_distributed(device_spec: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); else a single process."""
    rank, local, world = launch_env()
    if world <= 1:
        return DistInfo(device=resolve_device(device_spec))
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing and not dist.is_initialized():
        verb = "is" if len(missing) == 1 else "are"
        raise ConfigError(f"WORLD_SIZE is {world} but {' and '.join(missing)} {verb} not set: {_LAUNCH_HINT}")
    device = resolve_device(device_spec)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world=world, device=device)


def average_gradients(params, info: DistInfo) -> None:
    """All-reduce the gradients of `params` (those that have one) into their mean, in one buffer."""
    if info.world <= 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= info.world
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_module(module: torch.nn.Module, info: DistInfo) -> None:
    """Make every rank start from rank 0's parameters and buffers."""
    if info.world <= 1:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


def sum_across(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.world <= 1:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t


class StopVote:
    """Makes every rank stop after the same step when a Ctrl-C (or torchrun's forwarding of one)
    reaches the ranks at different moments.

    A rank that stopped alone would leave the others waiting in the next gradient all-reduce, never
    saving, until torchrun kills them. Each step every rank casts its own flag into an asynchronous
    MAX all-reduce on a CPU (gloo) group and reads the previous step's result, so all ranks decide
    on the same step, one step after the first flag, without a host-GPU sync per step. One process:
    the flag itself, at once."""

    def __init__(self, info: DistInfo):
        self._group = dist.new_group(backend="gloo") if info.world > 1 else None
        self._pending: tuple[dist.Work, torch.Tensor] | None = None

    def poll(self, requested: bool) -> bool:
        """Whether the run stops after this step; `requested` is this rank's own flag."""
        if self._group is None:
            return requested
        decided = self._result()
        flag = torch.tensor([int(requested)], dtype=torch.int32)
        work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        self._pending = (work, flag)
        return decided

    def settle(self, requested: bool) -> bool:
        """Whether the run stops after this step, decided now: the vote this step cast, and this
        rank's flag now, in one blocking all-reduce (for the moment after an evaluation, where the
        other ranks wait for rank 0 anyway; poll would carry the flag to the next step)."""
        if self._group is None:
            return requested
        decided = self._result()
        return self._any_now(requested) or decided

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        """Around what rank 0 alone does before the first step (taking the run's lock, checking its
        latest.pt, writing config.toml): when that fails there, every rank stops with it, saying so.
        The others would otherwise wait in their first collective until rank 0's exit broke it
        (a page of c10d's C++ frames) or torchrun killed them."""
        try:
            yield
        except BaseException:
            if self._group is not None:
                self._any_now(True)
            raise
        if self._group is not None and self._any_now(False):
            raise CartoonganError("another rank could not start the run (rank 0's line says why): "
                                  "this rank stopped with it")

    def _any_now(self, flag: bool) -> bool:
        """Whether any rank's `flag` is set: a blocking MAX all-reduce of every rank's."""
        vote = torch.tensor([int(flag)], dtype=torch.int32)
        dist.all_reduce(vote, op=dist.ReduceOp.MAX, group=self._group)
        return bool(vote.item())

    def _result(self) -> bool:
        if self._pending is None:
            return False
        work, flag = self._pending
        work.wait()
        self._pending = None
        return bool(flag.item())

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        # after a normal end every rank has cast the same votes, so the last one completes; after an
        # error (a second Ctrl-C) the others may be gone, and waiting could hang
        if exc_type is None:
            self._result()
        if self._group is not None:
            dist.destroy_process_group(self._group)
        return False
