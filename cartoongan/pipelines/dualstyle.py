"""`cartoongan dualstyle`: exemplar-based portrait stylisation with DualStyleGAN's released models.

A photo (an FFHQ-aligned face crop) is encoded by pSp into an intrinsic code (Z+, or W+ with
`encoder_wplus.pt`), or a saved intrinsic code is read; an exemplar's extrinsic code comes from the
model folder's `(refined_)exstyle_code.npy` (by position) or from encoding an exemplar image; the
DualStyleGAN generator renders the pair. The defaults are style_transfer.py's (truncation 0.75
towards 0, weights 0.75 x 7 + 1 x 11, preserve colour by swapping in the content's colour codes),
except the noise: the stored constant maps, so a render repeats exactly.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.images import PngWriter, image_errors, load_photo, make_grid, save_png, to_rgb, to_uint8
from ..device import resolve_device
from ..errors import CheckpointError, ConfigError, DataError
from ..npyfile import check_npy_file
from ..models.dualstyle import DualStyleGenerator, default_weights
from ..models.encoders import PSPEncoder
from ..models.latents import z_from_seed
from ..outputs import atomic_write, check_keeps_inputs, check_output_dir, check_replaceable_in, warn_of_leftovers
from ..report import NullReporter, Reporter
from .project import load_target, save_aligned
from ..weights.dualstyle import GENERATOR_FILE, find_exstyle_file, load_dualstyle, load_psp, read_exstyle_codes
from ..weights.known import missing_dualstyle_folder

TILE = 256  # overview and contact-sheet tiles (the official overview's size)
RENDER_BATCH = 8  # --random renders and writes this many at a time: memory holds a batch, not N faces
SHEET_MAX = 64  # random.png shows this many faces at most (1000 tiles of 256 px would be 16k x 8k)
EXEMPLAR_SIZE = 256  # destylize.py encoded exemplars from 256 px crops


@dataclass
class DualStyleOptions:
    """What to render. style_id: position in the exemplar-code file, or None with `style_image`."""

    style_id: int | None = 0
    all_styles: bool = False  # a contact sheet of every exemplar style instead of one result
    style_image: Path | None = None  # encode this exemplar instead of reading a stored code
    weights: list[float] | None = None  # n_latent blend weights (default: 0.75 x structure, 1 x colour)
    truncation: float = 0.75  # intrinsic path only, towards 0
    preserve_color: bool = False
    wplus: bool = False  # intrinsic codes are W+ (encoder_wplus.pt, or a W+ .npy)
    use_res: bool = True  # False renders the intrinsic StyleGAN2 alone
    noise_mode: str = "const"
    encoder: Path | None = None  # default: encoder(_wplus).pt one level above the model folder


@dataclass
class DualStyleResult:
    instyle: Path | None = None
    result: Path | None = None
    overview: Path | None = None
    sheet: Path | None = None
    aligned: Path | None = None
    samples: list[Path] = field(default_factory=list)
    style_name: str | None = None


# ---- loading ----------------------------------------------------------------------------------
def encoder_path(model_dir: Path, wplus: bool, override: Path | None = None) -> Path:
    """--encoder, else the release's layout: checkpoint/encoder(_wplus).pt beside checkpoint/<style>/."""
    if override is not None:
        return Path(override)
    name = "encoder_wplus.pt" if wplus else "encoder.pt"
    for folder in (Path(model_dir).parent, Path(model_dir)):
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"no {name} in {Path(model_dir).parent} or {model_dir}: pass --encoder PATH "
                          "(or an intrinsic code .npy as INPUT)")


def load_model(model_dir: Path, device: torch.device) -> tuple[DualStyleGenerator, dict[str, np.ndarray]]:
    """The folder's generator.pt and its exemplar codes, checked against each other."""
    model_dir = Path(model_dir)
    if model_dir.is_file():  # the generator.pt itself, most often: its codes sit beside it
        beside = f"e.g. {model_dir.parent}, which holds" if (model_dir.parent / GENERATOR_FILE).is_file() \
            else "the one holding"
        raise CheckpointError(f"--model {model_dir} is a file: pass the folder of one DualStyleGAN style "
                              f"({beside} {GENERATOR_FILE} and the exemplar codes)")
    if not model_dir.exists():
        raise CheckpointError(missing_dualstyle_folder(model_dir))
    if not (model_dir / GENERATOR_FILE).is_file():
        raise CheckpointError(f"{model_dir} has no {GENERATOR_FILE}: pass the folder of one DualStyleGAN style")
    model = load_dualstyle(model_dir / GENERATOR_FILE, device)
    code_file = find_exstyle_file(model_dir)
    codes = read_exstyle_codes(code_file)
    shape = next(iter(codes.values())).shape
    if shape[1:] != (model.n_latent, model.style_dim):
        raise CheckpointError(f"{code_file}: its exemplar codes have shape {shape}, and the generator.pt beside it "
                              f"needs (1, {model.n_latent}, {model.style_dim}): the two come from different styles or "
                              "releases; put the style's own code file there")
    return model, codes


def read_intrinsic_code(path: Path, model: DualStyleGenerator) -> torch.Tensor:
    """A saved intrinsic code (.npy, plain float array, never a pickle) -> [1, n_latent, style_dim]
    (one face: result.png and the sheet show one)."""
    check_npy_file(path, "intrinsic code")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError:
        # pickles are never loaded; the one users pass here by mistake is the release's exemplar codes
        raise DataError(f"{path} is a pickled .npy (exemplar codes such as exstyle_code.npy are one), not a plain "
                        "array of floats: INPUT takes an intrinsic code, e.g. the instyle.npy dualstyle wrote") from None
    except OSError as exc:
        raise DataError(f"{path} is not a readable .npy ({exc})") from None
    arr = arr[None] if arr.ndim == 2 else arr
    if arr.dtype.kind != "f" or arr.shape != (1, model.n_latent, model.style_dim):
        raise DataError(f"{path} holds an array of {arr.dtype} of shape {arr.shape}; the model needs "
                        f"(1, {model.n_latent}, {model.style_dim}) floats")
    arr = arr.astype(np.float32)  # checked after the cast: 1e300 in float64 is inf in float32
    if not np.isfinite(arr).all():
        raise DataError(f"{path} holds NaN or inf values: encode the photo again")
    return torch.from_numpy(arr)


def pick_style(codes: dict[str, np.ndarray], style_id: int) -> tuple[str, torch.Tensor]:
    """(exemplar name, Z+ code [1, n_latent, D]) at position style_id of the file's dict."""
    names = list(codes)
    if not 0 <= style_id < len(names):
        raise ConfigError(f"--style-id {style_id} is out of range: this model has styles 0-{len(names) - 1}")
    return names[style_id], torch.from_numpy(codes[names[style_id]])


def find_exemplar(model_dir: Path, name: str) -> Path | None:
    """The exemplar picture for the overview, if it is anywhere the release or a user keeps it."""
    model_dir = Path(model_dir)
    for folder in (model_dir, model_dir / "images", model_dir / "images" / "train",
                   model_dir.parent.parent / "data" / model_dir.name / "images" / "train"):
        if (folder / name).is_file():
            return folder / name
    return None


# ---- rendering --------------------------------------------------------------------------------
def extrinsic_code(model: DualStyleGenerator, ex_zplus: torch.Tensor, instyle: torch.Tensor,
                   opts: DualStyleOptions) -> torch.Tensor:
    """Exemplar Z+ [1, n, D] -> extrinsic W+; preserve_color swaps in the content's colour rows
    (in Z+ before mapping for a Z+ content code, in W+ after it for a W+ one), as the release does."""
    colour = model.res_index + 1
    ex_zplus = ex_zplus.clone()
    if opts.preserve_color and not opts.wplus:
        ex_zplus = ex_zplus.expand(instyle.shape[0], -1, -1).clone()
        ex_zplus[:, colour:] = instyle[:, colour:]
    ex = model.map_zplus(ex_zplus)
    if opts.preserve_color and opts.wplus:
        ex = ex.expand(instyle.shape[0], -1, -1).clone()
        ex[:, colour:] = instyle[:, colour:]
    return ex


@torch.no_grad()
def render(model: DualStyleGenerator, instyle: torch.Tensor, ex_zplus: torch.Tensor, opts: DualStyleOptions,
           space: str | None = None) -> torch.Tensor:
    """Intrinsic code + exemplar Z+ code -> images [B, 3, size, size]."""
    space = space or ("w+" if opts.wplus else "z+")
    weights = opts.weights if opts.weights is not None else default_weights(model.n_latent, model.res_index)
    if len(weights) != model.n_latent:
        raise ConfigError(f"--weight needs {model.n_latent} values (one per w+ slot), got {len(weights)}")
    ws = model.intrinsic_ws(instyle, space, opts.truncation)
    ex = extrinsic_code(model, ex_zplus, instyle, opts) if opts.use_res else None
    images = model.synthesis(ws, ex, weights, use_res=opts.use_res, noise_mode=opts.noise_mode)
    if not bool(torch.isfinite(images).all()):  # finite weights can still overflow: not a black picture
        raise ConfigError("the render holds NaN or inf values: --weight or --trunc is far out of range "
                          "(weights are about 0..1, truncation 0..1)")
    return images


@torch.no_grad()
def reconstruct(model: DualStyleGenerator, instyle: torch.Tensor, wplus: bool, noise_mode: str) -> torch.Tensor:
    """The intrinsic code through the intrinsic StyleGAN2 alone, untruncated: the encoder's reconstruction."""
    ws = model.intrinsic_ws(instyle, "w+" if wplus else "z+")
    return model.synthesis(ws, None, use_res=False, noise_mode=noise_mode)


def tiles(images: torch.Tensor, size: int) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] -> [B, size, size, 3] uint8, area-averaged when smaller."""
    if images.shape[-1] > size:
        images = F.adaptive_avg_pool2d(images, size)
    elif images.shape[-1] < size:
        images = F.interpolate(images, size=(size, size), mode="nearest")
    return to_uint8(images)


def load_exemplar(path: Path, size: int = EXEMPLAR_SIZE) -> torch.Tensor:
    """An exemplar picture as destylize.py prepares one: shorter side bilinearly resized to `size`,
    then the centred size x size crop. -> [1, 3, size, size] in [-1, 1]."""
    with image_errors(path, "exemplar"), Image.open(path) as img:
        img = to_rgb(img)
    w, h = img.size
    if w <= h:
        img = img.resize((size, int(size * h / w)), Image.BILINEAR)
    else:
        img = img.resize((int(size * w / h), size), Image.BILINEAR)
    w, h = img.size
    left, top = int(round((w - size) / 2)), int(round((h - size) / 2))
    arr = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1)[None] / 127.5 - 1


def encode_exemplar(path: Path, encoder: PSPEncoder) -> torch.Tensor:
    """An exemplar picture -> its Z+ code [1, n_latent, D], the way destylize.py made
    exstyle_code.npy (its 256 px crop through the Z+ pSp encoder)."""
    if encoder.space != "z+":
        raise ConfigError("--style IMAGE needs the Z+ encoder (encoder.pt), not a W+ one")
    image = load_exemplar(path, encoder.encoder.input_size).to(next(encoder.encoder.parameters()).device)
    return encoder.encode(image).cpu()


# ---- the command ------------------------------------------------------------------------------
# what stylize and random_portraits can write under --outdir, as a pattern
DUALSTYLE_FILES = r"result\.png|instyle\.npy|overview\.png|sheet\.png|aligned\.png|random(_\d{4,})?\.png"


def stylize(input_path: Path, model_dir: Path, outdir: Path, opts: DualStyleOptions, device: str = "auto",
            reporter: Reporter | None = None, align: bool = False) -> DualStyleResult:
    """`cartoongan dualstyle INPUT`: writes result.png, instyle.npy and overview.png (or sheet.png
    with opts.all_styles). INPUT: a photo (with `align`, its face is FFHQ-aligned first and saved as
    aligned.png, the frame pSp was trained on; else it must be an aligned crop) or an intrinsic code .npy."""
    reporter = reporter or NullReporter()
    outdir = check_output_dir(outdir, "--outdir")
    photo_input = Path(input_path).suffix.lower() != ".npy"
    written = _stylize_outputs(opts, aligned=photo_input and align)
    check_keeps_inputs(outdir, written, [input_path, opts.style_image])
    check_replaceable_in(outdir, written)
    dev = resolve_device(device)
    model, codes = load_model(model_dir, dev)
    _check_options(opts, model, codes)
    _warn_of_leftovers(outdir, written, reporter)
    res = DualStyleResult()
    photo = zplus_encoder = aligned = None
    if not photo_input:
        instyle = read_intrinsic_code(Path(input_path), model).to(dev)
    else:
        encoder, _ = load_psp(encoder_path(model_dir, opts.wplus, opts.encoder), "w+" if opts.wplus else "z+", dev)
        _check_encoder(encoder, model)
        photo, aligned = load_target(input_path, model.size, align, reporter)
        photo = photo.to(dev)
        instyle = encoder.encode(photo)
        zplus_encoder = None if opts.wplus else encoder  # the one an exemplar image is encoded with too
        reporter.info(f"encoded {input_path} into a {'W+' if opts.wplus else 'Z+'} code")
    if opts.all_styles:
        res.sheet = _contact_sheet(model, codes, instyle, opts, outdir / "sheet.png", reporter)
        res.instyle = _save_instyle(instyle, outdir)
        res.aligned = save_aligned(aligned, outdir) if aligned is not None else None
        return res
    name, ex_zplus, exemplar_tile = _exemplar(model_dir, model, codes, opts, dev, zplus_encoder)
    res.style_name = name
    image = render(model, instyle, ex_zplus.to(dev), opts)  # refused (NaN): no file of this run written
    res.instyle = _save_instyle(instyle, outdir)
    res.aligned = save_aligned(aligned, outdir) if aligned is not None else None
    res.result = save_png(to_uint8(image)[0], outdir / "result.png")
    strip = ([tiles(photo, TILE)[0]] if photo is not None else []) + \
        [tiles(reconstruct(model, instyle, opts.wplus, opts.noise_mode), TILE)[0]] + \
        ([exemplar_tile] if exemplar_tile is not None else []) + [tiles(image, TILE)[0]]
    res.overview = save_png(make_grid(np.stack(strip), cols=len(strip)), outdir / "overview.png")
    return res


def _stylize_outputs(opts: DualStyleOptions, aligned: bool) -> list[str]:
    """The files stylize writes under --outdir."""
    return ["instyle.npy", *(["sheet.png"] if opts.all_styles else ["result.png", "overview.png"]),
            *(["aligned.png"] if aligned else [])]


def _save_instyle(instyle: torch.Tensor, outdir: Path) -> Path:
    with atomic_write(outdir / "instyle.npy") as fh:
        np.save(fh, instyle.cpu().numpy().astype(np.float32))
    return outdir / "instyle.npy"


def _check_options(opts: DualStyleOptions, model: DualStyleGenerator, codes: dict) -> None:
    """Refuse impossible options before any encoding or rendering."""
    if opts.weights is not None and len(opts.weights) != model.n_latent:
        raise ConfigError(f"--weight needs {model.n_latent} values (one per w+ slot), got {len(opts.weights)}")
    if opts.style_image is not None and (opts.all_styles or opts.style_id):
        given = "all" if opts.all_styles else opts.style_id
        raise ConfigError(f"--style IMAGE and --style-id {given} exclude each other: the exemplar is the image "
                          "(drop --style-id), or the code file's style (drop --style)")
    if opts.style_image is None and not opts.all_styles:
        pick_style(codes, opts.style_id or 0)
    if opts.style_image is not None:  # a bad exemplar fails now, not after the photo's encoding
        with image_errors(opts.style_image, "exemplar"), Image.open(opts.style_image) as img:
            img.load()
    if opts.noise_mode not in ("const", "random"):
        raise ConfigError(f"noise mode must be const or random, got {opts.noise_mode!r}")


def _check_encoder(encoder: PSPEncoder, model: DualStyleGenerator) -> None:
    n, d = encoder.encoder.n_styles, encoder.encoder.styles[0].linear.weight.shape[0]
    if (n, d) != (model.n_latent, model.style_dim):
        raise CheckpointError(f"the encoder gives {n} codes of {d}, the generator needs {model.n_latent} of {model.style_dim}")


def _exemplar(model_dir: Path, model: DualStyleGenerator, codes: dict, opts: DualStyleOptions, dev,
              encoder: PSPEncoder | None = None):
    """(name, Z+ code, overview tile or None) of the chosen exemplar; `encoder`: the Z+ encoder
    already loaded for the input, if any."""
    if opts.style_image is not None:
        if encoder is None:
            encoder, _ = load_psp(encoder_path(model_dir, False, None if opts.wplus else opts.encoder), "z+", dev)
            _check_encoder(encoder, model)
        code = encode_exemplar(Path(opts.style_image), encoder)
        return Path(opts.style_image).name, code, tiles(load_photo(opts.style_image, TILE), TILE)[0]
    name, code = pick_style(codes, opts.style_id or 0)
    found = find_exemplar(model_dir, name)
    return name, code, tiles(load_photo(found, TILE), TILE)[0] if found else None


def _contact_sheet(model, codes, instyle, opts: DualStyleOptions, path: Path, reporter: Reporter, batch: int = 4) -> Path:
    """Every exemplar style applied to the first intrinsic code: one tile per style, in file order."""
    dev = instyle.device
    names = list(codes)
    size = min(TILE, model.size)
    out = []
    with reporter.progress(len(names), "styles") as bar:
        for i in range(0, len(names), batch):
            ex = torch.from_numpy(np.concatenate([codes[n] for n in names[i: i + batch]])).to(dev)
            ins = instyle[:1].expand(len(ex), -1, -1)
            out.append(tiles(render(model, ins, ex, opts), size))
            bar.advance(len(ex))
    return save_png(make_grid(np.concatenate(out), cols=min(8, len(names))), path)


@torch.no_grad()
def random_portraits(model_dir: Path, n: int, outdir: Path, opts: DualStyleOptions, device: str = "auto",
                     reporter: Reporter | None = None, seed: int = 0) -> DualStyleResult:
    """Random intrinsic codes (z from seeds seed..seed+n-1, one w for every slot, as generate.py)
    in one exemplar's style: outdir/random_SEED.png, rendered and written a batch at a time, and
    outdir/random.png (a grid of the first SHEET_MAX)."""
    reporter = reporter or NullReporter()
    outdir = check_output_dir(outdir, "--outdir")
    names = [f"random_{s:04d}.png" for s in range(seed, seed + n)]
    check_keeps_inputs(outdir, [*names, "random.png"], [])
    check_replaceable_in(outdir, [*names, "random.png"])
    dev = resolve_device(device)
    model, codes = load_model(model_dir, dev)
    _check_options(opts, model, codes)
    style, ex_zplus = pick_style(codes, opts.style_id or 0)
    opts = DualStyleOptions(**{**opts.__dict__, "preserve_color": False, "wplus": False})
    _warn_of_leftovers(outdir, [*names, "random.png"], reporter)
    res, sheet, writer = DualStyleResult(style_name=style), [], PngWriter()
    try:
        with reporter.progress(n, "rendering") as bar, writer:
            for i in range(0, n, RENDER_BATCH):
                z = torch.cat([z_from_seed(s, model.style_dim) for s in range(seed + i, seed + min(i + RENDER_BATCH, n))])
                images = render(model, z.to(dev), ex_zplus.to(dev), opts, space="z")
                for path in writer.write(to_uint8(images), [outdir / name for name in names[i: i + RENDER_BATCH]]):
                    res.samples.append(path)
                    bar.advance()
                if i < SHEET_MAX:
                    sheet.extend(tiles(images[: SHEET_MAX - i], min(TILE, model.size)))
    except KeyboardInterrupt:
        if not writer.written:
            raise
        raise writer.stopped(n, outdir, "random.png") from None
    if n > SHEET_MAX:
        reporter.info(f"random.png shows the first {SHEET_MAX} of the {n} faces")
    res.sheet = save_png(make_grid(np.stack(sheet), cols=min(8, len(sheet))), outdir / "random.png")
    return res


def _warn_of_leftovers(outdir: Path, written: list[str], reporter: Reporter) -> None:
    """An earlier input's aligned.png, or another run's random faces, read as this run's otherwise."""
    ours = set(written)
    warn_of_leftovers(outdir, lambda name: re.fullmatch(DUALSTYLE_FILES, name) is not None and name not in ours,
                      reporter)
