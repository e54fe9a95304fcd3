"""Freezing plans for FreezeG, FreezeSG and FreezeD, over named resolution blocks."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import FinetuneConfig
from ..errors import ConfigError
from ..models.discriminator import Discriminator
from ..models.generator import Generator, NoiseInjection


@dataclass
class FreezePlan:
    """Which blocks train. Generator blocks count from 4 px up; discriminator blocks from `size` down."""

    g_frozen: int = 0  # lowest-resolution synthesis blocks frozen (FreezeG / FreezeSG)
    d_frozen: int = 0  # highest-resolution discriminator blocks frozen (FreezeD)
    mapping_frozen: bool = False
    source_slots: int = 0  # w+ slots 0..source_slots-1 taken from the source mapping (FreezeSG)
    noise_frozen: bool = False  # every synthesis layer's noise strength keeps the source's value

    def frozen_modules(self, g: Generator, d: Discriminator) -> list[nn.Module]:
        return self._g_frozen_modules(g) + [m for k in range(1, self.d_frozen + 1) for m in d.block_modules(k)]

    def _g_frozen_modules(self, g: Generator) -> list[nn.Module]:
        mods = [m for b in range(self.g_frozen) for m in g.block_modules(b)]
        if self.mapping_frozen:
            mods.append(g.style)
        if self.noise_frozen:
            mods += [m for m in g.modules() if isinstance(m, NoiseInjection)]
        return mods

    @torch.no_grad()
    def start_frozen_from(self, g: Generator, g_ema: Generator) -> list[str]:
        """g's frozen parameters take g_ema's values (the source's g_ema, which the structure loss and
        FreezeSG's slots read too). Left as the source's `g`, they were what the EMA pulled the
        result's g_ema toward (99.6% of the way over 80 kimg at a 10 kimg half-life): the frozen
        blocks of the model a user samples drifted from the source's. Equal in both, they stay so
        bit for bit (a lerp of equal values is that value). Returns the names of those that differed."""
        frozen = {id(p) for m in self._g_frozen_modules(g) for p in m.parameters()}
        ema = dict(g_ema.named_parameters())
        changed = []
        for name, p in g.named_parameters():
            if id(p) in frozen and not torch.equal(p, ema[name]):
                changed.append(name)
                p.copy_(ema[name])
        return changed

    def apply(self, g: Generator, d: Discriminator) -> None:
        """Set requires_grad: False on the frozen blocks, True everywhere else."""
        for p in list(g.parameters()) + list(d.parameters()):
            p.requires_grad_(True)
        for m in self.frozen_modules(g, d):
            for p in m.parameters():
                p.requires_grad_(False)

    def rows(self, g: Generator, d: Discriminator) -> list[tuple]:
        """(network, block, resolution, parameters, state) for the start-of-run table."""
        def count(mods):
            return sum(p.numel() for m in mods for p in m.parameters())

        state = lambda frozen: "frozen" if frozen else "trained"  # noqa: E731
        rows = [("G", "mapping", "-", count([g.style]), state(self.mapping_frozen))]
        if self.noise_frozen:
            rows.append(("G", "noise strengths", "all", count([m for m in g.modules() if isinstance(m, NoiseInjection)]),
                         "frozen"))
        for b in range(g.n_blocks):
            from_source = [s < self.source_slots for s in g.block_w_slots(b)]  # FreezeSG's slots
            name = f"block {b}" + (" (w slots from source)" if all(from_source) else
                                   " (first w slot from source)" if any(from_source) else "")
            rows.append(("G", name, f"{g.resolutions[b]}px", count(g.block_modules(b)), state(b < self.g_frozen)))
        for k in range(1, d.n_blocks + 1):
            res = d.size // 2 ** (k - 1)
            rows.append(("D", f"block {k}" + (" +fromRGB" if k == 1 else ""), f"{res}px", count(d.block_modules(k)),
                         state(k <= self.d_frozen)))
        rows.append(("D", "final", "4px", count([d.final_conv, d.final_linear]), "trained"))
        return rows


def make_plan(cfg: FinetuneConfig, g: Generator, d: Discriminator) -> FreezePlan:
    """Check the counts against the networks and build the plan; errors name the flag and its limit."""
    for flag, value, limit in (("--freeze-g", cfg.freeze_g, g.n_blocks - 1),
                               ("--freeze-sg", cfg.freeze_sg, g.n_blocks - 1),
                               ("--freeze-d", cfg.freeze_d, d.n_blocks)):
        if not 0 <= value <= limit:
            raise ConfigError(f"{flag} {value} is out of range: a {g.size}px network allows 0..{limit}")
    return FreezePlan(
        g_frozen=max(cfg.freeze_g, cfg.freeze_sg),
        d_frozen=cfg.freeze_d,
        mapping_frozen=cfg.freeze_mapping,
        source_slots=2 * cfg.freeze_sg,
        noise_frozen=cfg.freeze_noise,
    )


def settings_without_effect(cfg: FinetuneConfig) -> list[str]:
    """Warnings for settings that train exactly as if they were not given, each accepted without a
    word before: a FreezeG count inside FreezeSG's, FreezeSG beside a frozen mapping, and a
    structure loss over blocks and w slots that are all the source's (it is 0 on every step)."""
    notes = [note] if (note := redundant_freeze_g(cfg)) else []
    if cfg.freeze_sg and cfg.freeze_mapping:
        # a frozen target mapping is the source's: its slots 0..2N-1 are the source's w already
        notes.append(f"freeze_sg {cfg.freeze_sg} (--freeze-sg) does nothing beside freeze_mapping (--freeze-mapping): "
                     "the frozen mapping is the source's, so every w slot is the source's already and this trains as "
                     f"--freeze-g {max(cfg.freeze_g, cfg.freeze_sg)} --freeze-mapping (as the reference code's "
                     "FreezeSG does); drop --freeze-mapping for FreezeSG proper")
    default = FinetuneConfig()
    if not cfg.struct_loss and (cfg.struct_weight, cfg.struct_tap) != (default.struct_weight, default.struct_tap):
        # the flags are refused so; a recipe's value is read as one a later --struct-loss may use
        notes.append(f"struct_weight {cfg.struct_weight} / struct_tap {cfg.struct_tap} shape the structure loss, which "
                     "is off (struct_loss 0): they do nothing in this run")
    if note := struct_loss_without_effect(cfg):
        notes.append(note)
    return notes


def struct_loss_without_effect(cfg: FinetuneConfig) -> str | None:
    """The warning for a structure loss over blocks and w slots that are all the source's (frozen
    from the run's start: blocks a resume freezes keep the run's values, and the loss sees them)."""
    n = cfg.struct_loss
    if n and max(cfg.freeze_g, cfg.freeze_sg) >= n + 1 and (cfg.freeze_sg >= n + 1 or cfg.freeze_mapping):
        # its taps (8 .. 2^(n+2) px) read blocks 0..n and w slots 0..2n+1, all frozen and from the source
        # the lowest loss that reads a block or w slot of the target's own: past FreezeSG's slots, or
        # with the mapping frozen (every slot the source's) past the frozen blocks
        fed = max(cfg.freeze_g, cfg.freeze_sg) if cfg.freeze_mapping else cfg.freeze_sg
        return (f"struct_loss {n} (--struct-loss) compares only blocks the source feeds whole (frozen, with the "
                f"source's w): it is 0 on every step and costs a source pass; give --struct-loss above {fed - 1}")
    return None


def struct_loss_reads(g: Generator, names: list[str], n: int) -> bool:
    """Whether any of g's parameters `names` lies where a structure loss over n resolutions reads:
    blocks 0..n, or the mapping (the w of every slot)."""
    read = {id(p) for b in range(n + 1) for m in g.block_modules(b) for p in m.parameters()}
    read |= {id(p) for p in g.style.parameters()}
    params = dict(g.named_parameters())
    return any(id(params[name]) in read for name in names if name in params)


def redundant_freeze_g(cfg: FinetuneConfig) -> str | None:
    """The warning for a FreezeG count that FreezeSG's already covers (it freezes those blocks too),
    which was accepted without a word: a user who meant FreezeG on top of FreezeSG (the paper's
    FreezeSG 2 + FreezeG 3) asked for nothing. None when FreezeG adds blocks, or is not set."""
    if 0 < cfg.freeze_g <= cfg.freeze_sg:
        return (f"freeze_g {cfg.freeze_g} (--freeze-g) does nothing beside freeze_sg {cfg.freeze_sg} (--freeze-sg), "
                f"which freezes the {cfg.freeze_sg} lowest G blocks too: to freeze more blocks than FreezeSG's, "
                f"give --freeze-g above {cfg.freeze_sg}")
    return None
