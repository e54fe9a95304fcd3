"""Layer swapping: low-resolution blocks from one generator, high-resolution blocks from another."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError
from ..models.generator import Generator
from ..weights.checkpoint import save_checkpoint
from ..report import NullReporter, Reporter
from ..weights.networks import generator_checkpoint, lineage, read_generator
from ..weights.replacing import GENERATOR, check_weights_output

DEFAULT_RES = 16
MAPPINGS = ("source", "target")  # whose mapping network (and w_avg) a swapped generator keeps


def check_compatible(a: Generator, b: Generator, names=("SOURCE", "TARGET")) -> None:
    """Raise CheckpointError naming the first architectural difference between two generators."""
    for key in ("size", "style_dim", "n_mlp", "lr_mlp"):
        if a.config[key] != b.config[key]:
            raise CheckpointError(f"{names[0]} and {names[1]} differ in {key}: {a.config[key]} vs {b.config[key]}")
    if a.channels != b.channels:
        diff = next(r for r in a.channels if a.channels[r] != b.channels[r])
        raise CheckpointError(f"{names[0]} and {names[1]} differ in channel width at {diff}px: "
                              f"{a.channels[diff]} vs {b.channels[diff]}")


def target_fraction(res: int, switch_res: int, blend_width: float | None) -> float:
    """Share of TARGET in the block at `res`: 0 up to switch_res and 1 above (hard switch), or a
    logistic ramp in log2(resolution) centred between switch_res and 2 * switch_res (Toonify's blend)."""
    if not blend_width:
        return 0.0 if res <= switch_res else 1.0
    x = (math.log2(res) - math.log2(switch_res) - 0.5) / blend_width
    return 0.5 * (1.0 + math.tanh(x / 2))  # the logistic, without exp's overflow for narrow blends


@torch.no_grad()
def _blend_into(dst: list[torch.Tensor], src: list[torch.Tensor], tgt: list[torch.Tensor], t: float) -> None:
    for d, s, g in zip(dst, src, tgt):
        d.copy_(torch.lerp(s.float(), g.float(), t).to(d.dtype) if 0 < t < 1 else (s if t == 0 else g))


def default_res(size: int) -> int:
    """DEFAULT_RES, or half the model's size where that is lower: a switch at the full size takes
    every block from the source."""
    return min(DEFAULT_RES, size // 2)


def swap_layers(source: Generator, target: Generator, res: int | None = None, mapping: str = "source",
                blend_width: float | None = None) -> Generator:
    """A new generator: blocks at resolution <= res (and the constant) from source, the rest from target.

    res: None for default_res(size). mapping: which network's mapping (and w_avg) the result uses.
    blend_width: optional smooth logistic transition (in octaves) instead of a hard switch.
    """
    check_compatible(source, target)
    res = default_res(source.size) if res is None else res
    if res not in source.resolutions:
        raise ConfigError(f"--res must be one of {source.resolutions}, got {res}")
    if res == source.size and mapping == "source" and not blend_width:
        raise ConfigError(f"--res {res} is the models' full size: every block and the mapping would come from "
                          f"SOURCE, a copy of it; choose a lower --res from {source.resolutions[:-1]}")
    if mapping not in MAPPINGS:
        raise ConfigError(f"--mapping must be {' or '.join(MAPPINGS)}, got '{mapping}'")
    if blend_width is not None and not (blend_width >= 0 and math.isfinite(blend_width)):
        raise ConfigError(f"--blend-width must be a finite number >= 0, got {blend_width}")
    out = copy.deepcopy(target)
    for b in range(out.n_blocks):
        t = target_fraction(out.resolutions[b], res, blend_width)
        _blend_into(_block_tensors(out, b), _block_tensors(source, b), _block_tensors(target, b), t)
        noise = lambda g: [getattr(g.noises, n) for n in g.block_noise_names(b)]  # noqa: E731
        _blend_into(noise(out), noise(source), noise(target), 0.0 if t < 0.5 else 1.0)
    keep = source if mapping == "source" else target
    out.style.load_state_dict(keep.style.state_dict())
    out.w_avg = None if keep.w_avg is None else keep.w_avg.clone()
    _refuse_a_copy(out, source, target, res, blend_width)
    return out


def _block_tensors(g: Generator, b: int) -> list[torch.Tensor]:
    """The weights of synthesis block b (views: writing them writes the network)."""
    return [p for m in g.block_modules(b) for p in m.state_dict().values()]


def _refuse_a_copy(out: Generator, source: Generator, target: Generator, res: int,
                   blend_width: float | None = None) -> None:
    """ConfigError when the swap is one of its inputs, weight for weight: a TARGET fine-tuned with
    its blocks up to R (and the mapping) frozen holds SOURCE's there (the paper recipes freeze 4-16 px
    and the mapping, and the usual --res is 16), a SOURCE that already holds TARGET's weights above
    R (an earlier swap of the two), or a blend too narrow to give TARGET any share."""
    if _same_weights(out, target):
        differ = [r for b, r in enumerate(source.resolutions)
                  if not all(map(torch.equal, _block_tensors(source, b), _block_tensors(target, b)))]
        lowest = differ[0] if differ else None
        hint = (f"pass --res {lowest} or higher (the lowest block where they differ is {lowest} px)"
                if lowest and lowest < source.size else
                f"only the {lowest} px block differs: pass --res {lowest} with --mapping target, or a --blend-width"
                if lowest else "they are the same model")
        raise ConfigError(f"the swap would be TARGET itself: SOURCE and TARGET hold the same blocks up to {res} px "
                          f"and the same mapping (TARGET froze them while fine-tuning); {hint}")
    if _same_weights(out, source) and blend_width:
        raise ConfigError(f"the swap would be SOURCE itself: at --res {res} the blend gives TARGET no share of "
                          "any block; pass a wider --blend-width or a lower --res")
    if _same_weights(out, source):  # no blend: what it takes from TARGET, SOURCE holds already
        raise ConfigError(f"the swap would be SOURCE itself: SOURCE already holds TARGET's blocks above {res} px "
                          "and the mapping the swap takes (is SOURCE an earlier swap of TARGET, or the other way "
                          "round?); pass a lower --res, or the photo model as SOURCE")


def _same_weights(a: Generator, b: Generator) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)


def swap_checkpoints(source_path: str | Path, target_path: str | Path, out_path: str | Path,
                     res: int | None = None, mapping: str = "source", blend_width: float | None = None,
                     reporter: Reporter | None = None) -> Path:
    """Load two checkpoints' g_ema, swap their layers (res None: default_res), and write the result
    as a new checkpoint (`out_path` is checked first)."""
    check_weights_output(out_path, GENERATOR, "--output", inputs=[source_path, target_path])
    source, source_record = read_generator(source_path, "cpu")
    target, target_record = read_generator(target_path, "cpu")
    # warnings, not refusals: a reverse swap (cartoon layout, photo texture) is a fair experiment, and
    # a model fine-tuned before runs recorded their lineage knows only its last source
    relation = lineage(source, source_record, target, target_record)
    if relation == "swapped":
        (reporter or NullReporter()).warn(
            f"{source_path} descends from {target_path} (fine-tuned from it, or from a model fine-tuned from it): "
            "SOURCE and TARGET look swapped (SOURCE is the "
            "photo model whose structure is kept, TARGET the fine-tuned one); swapping as given")
    elif relation == "unrelated":
        (reporter or NullReporter()).warn(
            f"{target_path} was fine-tuned from another model ({target_record.get('source')}), not from "
            f"{source_path}: the layers of unrelated models do not line up; swapping as given")
    if _same_weights(source, target):
        raise ConfigError(f"{source_path} and {target_path} hold the same generator: a swap of it with itself "
                          "is a copy; pass the fine-tuned (cartoon) generator as TARGET")
    try:
        swapped = swap_layers(source, target, res, mapping, blend_width)
    except CheckpointError as exc:
        raise CheckpointError(f"cannot swap {source_path} with {target_path}: {exc}") from None
    res = default_res(source.size) if res is None else res
    provenance = {"source": str(Path(source_path).resolve()), "target": str(Path(target_path).resolve()),
                  "res": res, "mapping": mapping, "blend_width": blend_width}
    return save_checkpoint(out_path, generator_checkpoint(swapped, kind="swap", provenance=provenance))
