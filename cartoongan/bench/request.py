"""What one `bench` call asks for: the view its flags choose, checked, and measured."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError
from ..report import Reporter


def config_names(csv: str) -> list[str]:
    """The names of a `--configs` list, once each in the order given (a repeated name would only
    time the same config again)."""
    return list(dict.fromkeys(c.strip() for c in csv.split(",") if c.strip()))


@dataclass(frozen=True)
class BenchRequest:
    """The flags of one bench call. Exactly one view is measured: `kernels` (each speed choice
    against its alternative), `profile` (where a phase's time goes), `flops` (FLOPs per image),
    `reference` (a rosinality checkout side by side), else the plain table of our phases."""

    device: str = "auto"
    configs: str | None = None  # comma-separated config names; None: the device's defaults
    precision: str = "fp32"
    batch: int | None = None
    repeats: int | None = None  # None: 5 timed repeats, or 2 profiled calls
    compile_mode: str | None = None  # a torch.compile mode; None: eager
    channels_last: bool = True
    grouped_modconv: bool = False
    reference: Path | None = None
    kernels: bool = False
    profile: bool = False
    flops: bool = False

    @property
    def names(self) -> list[str] | None:
        return config_names(self.configs) if self.configs is not None else None

    def check(self, dev: torch.device) -> None:
        """Refuse (ConfigError) flags that no single view takes together."""
        if self.configs is not None and not self.names:
            raise ConfigError(f"--configs '{self.configs}' names no config: give e.g. tiny,r64")
        if self.configs is not None and not all(c.strip() for c in self.configs.split(",")):
            # as --seeds: an empty item is most often a name left out ("tiny,$CFG")
            raise ConfigError(f"--configs '{self.configs}' has an empty name between its commas: give e.g. tiny,r64")
        if self.kernels and (self.reference is not None or self.configs or self.batch or self.profile or self.flops):
            raise ConfigError("--kernels times fixed shapes; drop --reference, --configs, --batch, --profile and "
                              "--flops")
        if self.kernels and self.precision != "fp32":  # its ops run in fp32 whatever was asked: a "bf16" table would lie
            raise ConfigError(f"--kernels times each op in fp32 beside its alternative: drop --precision {self.precision}")
        if self.flops and self.profile:
            raise ConfigError("--flops and --profile are two views of the phases: give one")
        if self.flops and self.repeats is not None:
            raise ConfigError("--flops counts one call of each phase exactly: drop --repeats")
        special = self.kernels or self.profile or self.flops
        if special and self.compile_mode:
            raise ConfigError("--compile and --compile-mode apply to the plain bench table and --reference only")
        if (special or self.reference is not None) and (self.grouped_modconv or not self.channels_last):
            raise ConfigError("--grouped-modconv and --no-channels-last apply to the plain bench table only")
        if self.profile and (self.reference is not None or (self.configs and len(self.names) != 1)):
            raise ConfigError("--profile looks at one config: give at most one --configs name and no --reference")
        if self.profile:
            from .speed import check_configs

            check_configs([self.profiled(dev)], dev, self.batch)

    def profiled(self, dev: torch.device) -> str:
        """The one config --profile looks at."""
        return self.names[0] if self.names else ("r256" if dev.type == "cuda" else "demo64")

    def title(self, dev: torch.device) -> str:
        if self.profile:
            return f"{self.profiled(dev)} on {dev}: self time per phase call ({'kernels' if dev.type == 'cuda' else 'ops'})"
        if self.kernels:
            from .kernels import shapes_legend

            return f"speed choices, fwd+bwd ms ({shapes_legend()}); x = alternative / ours"
        return "cartoongan bench (img/s, higher is better)"


def measure(req: BenchRequest, dev: torch.device, reporter: Reporter) -> list:
    """The rows of the one view `req` chose (after req.check(dev)). A Ctrl-C raises RowsStopped
    with the rows measured so far."""
    # imported here, not above: each view pulls in its own dependencies (rosinality's code, the
    # profiler), and tests stand in for these functions on their modules
    from .speed import default_configs, run_bench

    timed = req.repeats or 5
    if req.profile:
        from .profile import profile_phases

        return profile_phases(req.profiled(dev), req.device, req.precision, req.batch, runs=req.repeats or 2,
                              reporter=reporter)
    if req.flops:
        from .flops import run_flop_count

        names = req.names or default_configs(dev, reference=req.reference is not None)
        return run_flop_count(names, req.device, req.batch, req.reference, reporter, req.precision)
    if req.kernels:
        from .kernels import run_kernel_bench

        return run_kernel_bench(req.device, timed, reporter)
    if req.reference is not None:
        from .reference import compare_with_reference

        names = req.names or default_configs(dev, reference=True)
        return compare_with_reference(req.reference, names, req.device, timed, req.batch, reporter, req.precision,
                                      req.compile_mode)
    return run_bench(req.names or default_configs(dev), req.device, req.precision, timed, req.batch,
                     req.compile_mode, reporter, req.channels_last, req.grouped_modconv)
