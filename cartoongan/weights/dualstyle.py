"""DualStyleGAN's released files, read without running pickled code, and written in the same formats.

- `generator.pt`: `{"g_ema": state_dict}` of the DualStyleGAN generator (intrinsic StyleGAN2
  under `generator.`, structure transform `style.N`, extrinsic path `res.0` ... `res.{n_latent-1}`).
- `encoder.pt` / `encoder_wplus.pt`: `{"opts": dict, "state_dict": {"encoder.*", "decoder.*"},
  "latent_avg": tensor}` (pSp; the decoder is an FFHQ StyleGAN2 in rosinality's layout).
- `exstyle_code.npy` / `refined_exstyle_code.npy`: `numpy.save` of a dict {exemplar file name:
  float32 Z+ code [1, n_latent, style_dim]}; the style id is the position in the dict. These are
  pickles: `numpy.load(allow_pickle=True)` would run whatever they name, so they are read by an
  unpickler that can build only a dict of numpy arrays.
"""
from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError, first_line, naming
from ..npyfile import check_npy_file
from ..models.dualstyle import DualStyleGenerator
from ..models.encoders import GradualStyleEncoder, PSPEncoder
from ..models.generator import Generator
from ..outputs import atomic_write
from .checkpoint import check_checkpoint, read_torch_file
from .factor import describe_factor, is_factor_file
from .networks import _cpu_state, _load_state, describe, describe_checkpoint, infer_generator_config
from .unpickle import ArraysUnpickler

EXSTYLE_FILES = ("refined_exstyle_code.npy", "exstyle_code.npy")  # the official script's preference
GENERATOR_FILE = "generator.pt"


# ---- exemplar codes ------------------------------------------------------------------------
def read_exstyle_codes(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """An `(refined_)exstyle_code.npy` -> {exemplar name: float32 [1, n_latent, style_dim]}, in
    file order. Raises CheckpointError for anything else (and never runs code from the file)."""
    path = Path(path)
    shape, dtype, start = check_npy_file(path, "exemplar codes", CheckpointError)
    if dtype != np.dtype(object) or shape != ():
        raise CheckpointError(f"{path} holds a plain {dtype} array of shape {shape}, not a dict of "
                              "exemplar codes (a saved intrinsic code? pass it as INPUT)")
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            obj = ArraysUnpickler(io.BytesIO(fh.read())).load()
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"refusing to read {path}: {exc}; it must hold only a dict of numpy arrays") from None
    except Exception as exc:  # truncated or foreign bytes surface as many types
        raise CheckpointError(f"{path} is not a readable .npy of exemplar codes ({type(exc).__name__}: "
                              f"{first_line(exc, 100, '')})") from None
    return _check_codes(obj.item() if isinstance(obj, np.ndarray) and obj.shape == () else obj, path)


def _check_codes(obj, path: Path) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path} does not hold a non-empty dict of exemplar codes (found {type(obj).__name__})")
    codes = {}
    for name, code in obj.items():
        if not isinstance(name, str) or not isinstance(code, np.ndarray) or code.dtype.kind != "f":
            raise CheckpointError(f"{path}: entry {name!r} is not a float array under a file name")
        code = code.reshape((1,) + code.shape) if code.ndim == 2 else code
        if code.ndim != 3 or code.shape[0] != 1:
            raise CheckpointError(f"{path}: code of {name!r} has shape {code.shape}, expected (1, n_latent, style_dim)")
        code = code.astype(np.float32)  # checked after the cast: 1e300 in float64 is inf in float32
        if not np.isfinite(code).all():
            raise CheckpointError(f"{path}: code of {name!r} holds NaN or inf values: re-encode that exemplar")
        codes[name] = code
    shapes = {c.shape for c in codes.values()}
    if len(shapes) != 1:
        raise CheckpointError(f"{path}: exemplar codes of different shapes {sorted(shapes)}")
    return codes


def write_exstyle_codes(path: str | os.PathLike, codes: dict[str, np.ndarray]) -> Path:
    """Write codes in the official format (numpy.save of the dict), readable by the official scripts."""
    path = Path(path)
    holder = np.empty((), dtype=object)
    holder[()] = {k: np.asarray(v, dtype=np.float32) for k, v in codes.items()}
    with atomic_write(path) as fh:
        np.save(fh, holder, allow_pickle=True)
    return path


def find_exstyle_file(model_dir: str | os.PathLike) -> Path:
    """The refined codes when the model folder has them, else the plain ones (as style_transfer.py)."""
    for name in EXSTYLE_FILES:
        if (Path(model_dir) / name).is_file():
            return Path(model_dir) / name
    raise CheckpointError(f"{model_dir} has neither {' nor '.join(EXSTYLE_FILES)}: pass the folder of one "
                          "DualStyleGAN style (e.g. checkpoint/cartoon)")


# ---- the DualStyleGAN generator -------------------------------------------------------------
def is_dualstyle_state(sd) -> bool:
    return isinstance(sd, dict) and "generator.input.input" in sd and "res.0.norm.style.weight" in sd


def infer_dualstyle_config(sd: dict) -> dict:
    """DualStyleGenerator constructor arguments from an official-layout state dict."""
    inner = {k[len("generator."):]: v for k, v in sd.items() if k.startswith("generator.")}
    cfg = infer_generator_config(inner)
    n_structure = sum(1 for k in sd if re.fullmatch(r"style\.\d+\.weight", k))
    modres = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"res\.(\d+)\.norm\.style\.weight", k)))
    if not n_structure or not modres or modres != list(range(len(modres))):
        raise CheckpointError("DualStyleGAN weights lack the structure transform (style.N) or ModRes blocks res.0...")
    return dict(cfg, n_structure_mlp=n_structure, res_index=modres[-1])


def build_dualstyle(sd: dict, device: str | torch.device = "cpu") -> DualStyleGenerator:
    """A DualStyleGenerator holding an official-layout state dict (strict: every key must fit)."""
    if not is_dualstyle_state(sd):
        raise CheckpointError("not a DualStyleGAN generator: its state dict needs generator.* and res.0.* keys")
    try:
        model = DualStyleGenerator(**infer_dualstyle_config(sd))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"DualStyleGAN configuration is invalid: {exc}") from None
    _load_state(model, sd, "DualStyleGAN generator")
    return model.to(device).eval()


def load_dualstyle(path: str | os.PathLike, device: str | torch.device = "cpu") -> DualStyleGenerator:
    """An official `generator.pt` (or one written by `dualstyle_checkpoint`) -> DualStyleGenerator."""
    ckpt = read_torch_file(path)
    sd = ckpt.get("g_ema") if isinstance(ckpt, dict) else None
    if not is_dualstyle_state(sd):
        raise CheckpointError(f"{path} is not a DualStyleGAN generator.pt (needs 'g_ema' with generator.* and res.* keys)")
    return build_dualstyle(sd, device)


def dualstyle_checkpoint(model: DualStyleGenerator) -> dict:
    """The official format: {"g_ema": state_dict}, nothing else."""
    return {"g_ema": _cpu_state(model)}


# ---- the pSp encoder ------------------------------------------------------------------------
def is_psp_file(ckpt) -> bool:
    return isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict) and \
        any(k.startswith("encoder.") for k in ckpt["state_dict"])


def infer_encoder_config(sd: dict) -> dict:
    """GradualStyleEncoder arguments from its state dict (keys without the `encoder.` prefix)."""
    units, widths = [], []
    n_units = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.", k)))
    for i in range(n_units):
        in_ch, depth = sd[f"body.{i}.res_layer.0.weight"].shape[0], sd[f"body.{i}.res_layer.1.weight"].shape[0]
        if i == 0 or in_ch != depth:  # a stage opens with the first unit and at every width change
            units.append(0)
            widths.append(depth)
        units[-1] += 1
    n_styles = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"styles\.(\d+)\.", k)))
    n_down = sum(1 for k in sd if re.fullmatch(r"styles\.0\.convs\.\d+\.weight", k))
    return dict(n_styles=n_styles, units=tuple(units), widths=tuple(widths), input_size=16 * 2**n_down,
                in_ch=sd["input_layer.0.weight"].shape[1])


def load_psp(path: str | os.PathLike, space: str | None = None, device: str | torch.device = "cpu",
             with_decoder: bool = False) -> tuple[PSPEncoder, Generator | None]:
    """An official `encoder.pt` / `encoder_wplus.pt` -> (PSPEncoder, its decoder when asked for).

    space: "z+" or "w+"; by default "w+" when the file name says wplus (the released names), else "z+".
    """
    path = Path(path)
    ckpt = read_torch_file(path)
    if not is_psp_file(ckpt):
        raise CheckpointError(f"{path} is not a pSp encoder file (needs 'state_dict' with encoder.* keys)")
    opts = ckpt.get("opts") if isinstance(ckpt.get("opts"), dict) else {}
    kind = opts.get("encoder_type", "GradualStyleEncoder")
    if kind != "GradualStyleEncoder":
        raise CheckpointError(f"{path}: encoder_type {kind!r} is not supported (only GradualStyleEncoder)")
    sd = {k[len("encoder."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("encoder.")}
    try:
        encoder = GradualStyleEncoder(**infer_encoder_config(sd))
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: encoder weights are not a pSp GradualStyleEncoder ({exc})") from None
    _load_state(encoder, sd, "pSp encoder")
    avg = ckpt.get("latent_avg") if opts.get("start_from_latent_avg", True) else None
    space = space or ("w+" if "wplus" in path.name.lower() else "z+")
    psp = PSPEncoder(encoder.eval(), avg.float() if torch.is_tensor(avg) else None, space).to(device)
    decoder = None
    if with_decoder:
        dec_sd = {k[len("decoder."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("decoder.")}
        if dec_sd:
            decoder = Generator(**infer_generator_config(dec_sd))
            _load_state(decoder, dec_sd, "pSp decoder")
            decoder = decoder.to(device).eval()
    return psp, decoder


def psp_checkpoint(encoder: GradualStyleEncoder, decoder: Generator | None = None,
                   latent_avg: torch.Tensor | None = None, opts: dict | None = None) -> dict:
    """The official pSp format: {"opts", "state_dict" (encoder.*, decoder.*), "latent_avg"}."""
    sd = {f"encoder.{k}": v for k, v in _cpu_state(encoder).items()}
    if decoder is not None:
        sd.update({f"decoder.{k}": v for k, v in _cpu_state(decoder).items()})
    base = dict(encoder_type="GradualStyleEncoder", input_nc=encoder.config["in_ch"],
                output_size=decoder.size if decoder is not None else 4 * 2 ** (encoder.n_styles // 2),
                start_from_latent_avg=latent_avg is not None, learn_in_w=False)
    ckpt = {"opts": {**base, **(opts or {})}, "state_dict": sd}
    if latent_avg is not None:
        ckpt["latent_avg"] = latent_avg.detach().cpu()
    return ckpt


# ---- `cartoongan info` ---------------------------------------------------------------------
def _non_finite(arrays) -> dict:
    """{"non_finite": "K of N values are NaN or inf: …"} when any number is, else {}: such a code
    renders a black picture, which dualstyle refuses."""
    arrays = [a for a in arrays if a.dtype.kind in "fc"]
    bad = sum(int(a.size - np.count_nonzero(np.isfinite(a))) for a in arrays)
    if not bad:
        return {}
    total = sum(a.size for a in arrays)
    return {"non_finite": f"{bad} of {total} values are NaN or inf: not usable as a code"}


def describe_file(path: str | os.PathLike) -> dict:
    """A summary for `cartoongan info` of an exemplar-code .npy, a DualStyleGAN generator.pt, a pSp
    encoder file or an ordinary checkpoint (networks.describe), each file read once."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        check_npy_file(path, "code file", CheckpointError)
        try:  # a plain array (a saved intrinsic code) loads without pickles
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError):
            arr = None
        if arr is not None:
            return {"kind": "array (an intrinsic code when shaped (1, n_latent, style_dim))" if arr.ndim else
                    "a single number (a 0-d array), not a code",
                    "shape": list(arr.shape), "dtype": str(arr.dtype), **_non_finite([arr])}
        codes = read_exstyle_codes(path)
        names = list(codes)
        return {"kind": "DualStyleGAN exemplar codes (Z+)", "exemplars": len(names),
                "code_shape": list(next(iter(codes.values())).shape),
                "first": names[:3], "last": names[-1], **_non_finite(codes.values())}
    from .nvlabs import looks_like_nvlabs_pickle

    if path.is_file() and looks_like_nvlabs_pickle(path):  # load_checkpoint converts those in memory
        # what the file is, not what `convert` would make of it (format cartoongan, kind converted)
        return {**describe_checkpoint(path), "kind": None, "format": "nvlabs-pickle"}
    ckpt = read_torch_file(path)
    if is_factor_file(ckpt):
        return describe_factor(ckpt, path)
    if isinstance(ckpt, dict) and is_dualstyle_state(ckpt.get("g_ema")):
        sd = ckpt["g_ema"]
        cfg = infer_dualstyle_config(sd)
        count = lambda pred: sum(v.numel() for k, v in sd.items() if pred(k))  # noqa: E731
        return {"kind": "DualStyleGAN generator", "resolution": cfg["size"], "style_dim": cfg["style_dim"],
                "n_latent": 2 * cfg["size"].bit_length() - 4,
                "structure_slots (ModRes)": f"0-{cfg['res_index']}", "structure_transform_layers": cfg["n_structure_mlp"],
                "intrinsic_parameters": count(lambda k: k.startswith("generator.") and ".noises." not in k),
                "extrinsic_parameters": count(lambda k: not k.startswith("generator."))}
    if is_psp_file(ckpt):
        sd = {k[len("encoder."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("encoder.")}
        cfg = infer_encoder_config(sd)
        opts = ckpt.get("opts") if isinstance(ckpt.get("opts"), dict) else {}
        avg = ckpt.get("latent_avg")
        return {"kind": "pSp encoder (GradualStyleEncoder)", "input_size": cfg["input_size"],
                "n_styles": cfg["n_styles"], "backbone_units": list(cfg["units"]), "widths": list(cfg["widths"]),
                "code_space": "w+" if "wplus" in path.name.lower() else "z+ (DualStyleGAN) unless trained otherwise",
                "latent_avg": list(avg.shape) if torch.is_tensor(avg) else None,
                "decoder_resolution": opts.get("output_size"),
                "parameters": sum(v.numel() for v in sd.values())}
    with naming(path):
        return describe(check_checkpoint(path, ckpt))
