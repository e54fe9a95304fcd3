"""NVlabs StyleGAN2 pickles -> our (rosinality-layout) checkpoints, without running their code.

Two formats are read through `unpickle.safe_load` (no TensorFlow, no NVlabs code):
- stylegan2-ada-pytorch snapshots: a dict with `G`, `D`, `G_ema` (persistent modules), plus
  `augment_pipe` and `training_set_kwargs`, which are not needed here;
- TF-era StyleGAN2 pickles: a tuple `(G, D, Gs)` of `dnnlib.tflib.network.Network` states.

Both are first expressed as NVlabs-PyTorch parameter names (`synthesis.b8.conv0.weight`, ...)
with an architecture spec; one translation then builds the rosinality state dicts. Layout facts
(from reading the NVlabs and rosinality sources): NVlabs stores the synthesis conv weights
unscaled and applies the toRGB gain 1/sqrt(fan_in) to the styles, rosinality to the weight
(the same product); the mapping's `w_avg` is a buffer of `mapping`; TF keeps kernels HWIO,
dense weights [in, out], affine biases minus 1, and its upsampling conv kernels flipped.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import CartoonganError, CheckpointError, ConfigError, OutputError, first_line, naming
from ..filekind import is_legacy_torch, is_npz, is_text, is_torch_zip, special_kind, zip_names
from ..models.discriminator import Discriminator
from ..models.generator import Generator
from .checkpoint import FORMAT_VERSION, foreign_kind, provenance, read_torch_file, save_checkpoint
from .known import missing_checkpoint
from .networks import check_fit
from .registry import sha256_of
from .replacing import GENERATOR, WITH_D, check_weights_output, checkpoint_kind
from .unpickle import PersistentObject, TFNetwork, UnsafePickleError, safe_load

FORMAT_ADA = "stylegan2-ada-pytorch"
FORMAT_TF = "stylegan2-tf"
# classes that only StyleGAN3 (networks_stylegan3.py) pickles contain
_STYLEGAN3_CLASSES = {"SynthesisInput"}


class NotSupportedError(CheckpointError):
    """A readable NVlabs pickle whose network this toolkit cannot represent."""


# ---- reading --------------------------------------------------------------------------------
class _HashingReader:
    """A binary file whose bytes feed a sha256 as the unpickler reads them: the provenance hash of
    a pickle of several hundred MB costs no second pass over the file."""

    def __init__(self, fh):
        self.fh, self.sha = fh, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.sha.update(data)
        return data

    def readline(self, n: int = -1) -> bytes:
        data = self.fh.readline(n)
        self.sha.update(data)
        return data

    def readinto(self, buf) -> int:
        k = self.fh.readinto(buf)
        self.sha.update(memoryview(buf)[:k])
        return k

    def hexdigest(self) -> str:
        """The whole file's sha256, including anything after the pickle's STOP."""
        for chunk in iter(lambda: self.fh.read(1 << 20), b""):
            self.sha.update(chunk)
        return self.sha.hexdigest()


def read_pickle(path: str | os.PathLike) -> tuple[object, str]:
    """(the pickle's content as inert data (see unpickle.py), the file's sha256); CheckpointError
    on anything unsafe or broken."""
    path = Path(path)
    if kind := special_kind(path):
        raise CheckpointError(f"{path} is {kind}, not a checkpoint file: name the .pkl file")
    if not path.is_file():
        raise CheckpointError(missing_checkpoint(path) if not path.exists() else
                              f"{path} is a folder, not a checkpoint file: name the .pkl inside it")
    head = b""
    try:
        with open(path, "rb") as fh:
            _refuse_non_pickles(path, head := fh.read(32))
            fh.seek(0)
            reader = _HashingReader(fh)
            data = safe_load(reader)
            return data, reader.hexdigest()
    except CheckpointError:
        raise
    except PermissionError:
        raise CheckpointError(f"{path} cannot be read (permission denied)") from None
    except UnsafePickleError as exc:  # (a protocol-0 pickle that would run code is text too: said so)
        raise CheckpointError(f"refusing to load {path}: {exc} (not an NVlabs network pickle; "
                              "nothing from it was run)") from None
    except RecursionError:
        raise CheckpointError(f"{path} is not a readable NVlabs pickle (nested too deeply)") from None
    except Exception as exc:  # truncated or random bytes raise many types
        if is_text(head):  # a text file that is no protocol-0 pickle: "unpickling stack underflow" says nothing
            raise _not_a_pickle(path, "a text file") from None
        raise CheckpointError(f"{path} is not a readable NVlabs pickle (truncated or another format: "
                              f"{first_line(exc, 120)})") from None


def _refuse_non_pickles(path: Path, head: bytes) -> None:
    """CheckpointError naming what the file is, where its first bytes say it is no pickle at all
    (the unpickler would call a PNG 'a persistent id' and an empty file 'Ran out of input')."""
    if not head:
        raise CheckpointError(f"{path} is empty (0 bytes): an interrupted download or copy? Fetch or copy it again")
    if head.startswith(b"PK") or is_legacy_torch(head):
        names = zip_names(path) if head.startswith(b"PK") else None
        if is_legacy_torch(head) or is_torch_zip(names):  # torch.save's: already a checkpoint
            raise CheckpointError(f"{path} is a PyTorch checkpoint, not an NVlabs pickle: use it as it is "
                                  "(sample, finetune --source ...), or `cartoongan export` to slim it")
        kind = "a NumPy .npz archive" if is_npz(names) else "a zip archive" if names is not None else None
    else:
        kind = foreign_kind(head)  # (no text test: a protocol-0 pickle is text)
    if kind:
        raise _not_a_pickle(path, kind)


def _not_a_pickle(path: Path, kind: str) -> CheckpointError:
    return CheckpointError(f"{path} is not an NVlabs pickle: it is {kind}; pass the network .pkl NVlabs "
                           "publish (a stylegan2-ada-pytorch snapshot or a TF StyleGAN2 pickle)")


def detect_format(data: object) -> str:
    """FORMAT_ADA or FORMAT_TF for what read_pickle returned; CheckpointError otherwise."""
    if isinstance(data, dict) and isinstance(data.get("G_ema"), PersistentObject):
        return FORMAT_ADA
    if isinstance(data, tuple) and len(data) == 3 and all(isinstance(n, TFNetwork) for n in data):
        return FORMAT_TF
    kind = sorted(map(str, data))[:6] if isinstance(data, dict) else type(data).__name__
    if isinstance(data, dict) and isinstance(data.get("G"), PersistentObject):  # a snapshot of G alone
        raise CheckpointError(f"a stylegan2-ada-pytorch snapshot without G_ema (found {kind}): convert the "
                              "snapshot its training run wrote (network-snapshot-*.pkl holds G, D and G_ema)")
    raise CheckpointError(f"not an NVlabs StyleGAN2 network pickle (found {kind}); expected a "
                          "stylegan2-ada-pytorch snapshot or a TF (G, D, Gs) pickle")


# ---- stylegan2-ada-pytorch objects -> parameters and spec -----------------------------------
def _modules(obj: PersistentObject) -> dict:
    mods = obj.state.get("_modules") or {}
    return {k: v for k, v in mods.items() if v is not None}


def _named_tensors(obj: PersistentObject, prefix: str = "") -> dict[str, torch.Tensor]:
    """Parameters and buffers of a persistent module tree, by dotted name (like named_parameters)."""
    out = {}
    for group in ("_parameters", "_buffers"):
        for name, t in (obj.state.get(group) or {}).items():
            if torch.is_tensor(t):
                out[prefix + name] = t.detach().float()
    for name, child in _modules(obj).items():
        if not isinstance(child, PersistentObject):
            raise CheckpointError(f"unexpected module '{prefix}{name}' of type {type(child).__name__}")
        out.update(_named_tensors(child, f"{prefix}{name}."))
    return out


def _class_names(obj: PersistentObject) -> set[str]:
    names = {obj.class_name}
    for child in _modules(obj).values():
        if isinstance(child, PersistentObject):
            names |= _class_names(child)
    return names


def _attr(obj: PersistentObject, path: str, default=None):
    """A plain attribute at a dotted path through submodules, e.g. 'synthesis.b4.conv1.conv_clamp'."""
    *mods, name = path.split(".")
    for m in mods:
        obj = _modules(obj).get(m)
        if not isinstance(obj, PersistentObject):
            return default
    return obj.state.get(name, default)


def _log2(r: int) -> int:
    r = int(r)
    if r < 4 or r & (r - 1):
        raise ValueError(f"img_resolution {r} is not a power of two >= 4")
    return r.bit_length() - 1


def _number(x) -> float | None:
    return None if x is None else float(x)


def _check_generator_object(g: PersistentObject, name: str) -> None:
    if g.class_name != "Generator":
        raise CheckpointError(f"'{name}' is a {g.class_name}, not a Generator")
    if _class_names(g) & _STYLEGAN3_CLASSES:
        raise NotSupportedError("StyleGAN3 networks are not supported (only StyleGAN2 / StyleGAN2-ADA)")
    if int(g.state.get("c_dim") or 0) > 0:
        raise NotSupportedError(f"conditional models are not supported ('{name}' has c_dim = {g.state['c_dim']})")


def ada_generator(g: PersistentObject, name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(spec, tensors by NVlabs name) of a stylegan2-ada-pytorch Generator."""
    _check_generator_object(g, name)
    kw = g.state.get("_init_kwargs") or {}
    syn_kw = dict(kw.get("synthesis_kwargs") or {})
    res = int(g.state["img_resolution"])
    spec = dict(
        z_dim=int(g.state["z_dim"]), w_dim=int(g.state["w_dim"]), resolution=res,
        img_channels=int(g.state.get("img_channels", 3)),
        mapping_layers=int(_attr(g, "mapping.num_layers")),
        mapping_lr=float(_attr(g, "mapping.fc0.bias_gain", 0.01)),
        mapping_activation=_attr(g, "mapping.fc0.activation", "lrelu"),
        channel_base=int(syn_kw.get("channel_base", 32768)), channel_max=int(syn_kw.get("channel_max", 512)),
        conv_clamp=_number(_attr(g, "synthesis.b4.conv1.conv_clamp")),
        architecture=_attr(g, f"synthesis.b{res}.architecture", "skip"),
        activation=_attr(g, "synthesis.b4.conv1.activation", "lrelu"),
        use_noise=bool(_attr(g, "synthesis.b4.conv1.use_noise", True)),
    )
    return spec, _named_tensors(g)


# ---- TF networks -> parameters and spec ------------------------------------------------------
def _tf_params(net: TFNetwork, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for name, value in net.state.get("variables") or []:
        out[prefix + str(name)] = np.asarray(value)
    for name, comp in (net.state.get("components") or {}).items():
        if isinstance(comp, TFNetwork):
            out.update(_tf_params(comp, f"{prefix}{name}/"))
    return out


def _tf_kwargs(net: TFNetwork) -> dict:
    kw = net.state.get("static_kwargs") or {}
    return dict(kw) if isinstance(kw, dict) else {}


def _tf_filter(kw: dict) -> torch.Tensor:
    taps = torch.tensor([float(v) for v in (kw.get("resample_kernel") or [1, 3, 3, 1])])
    f = taps[:, None] * taps[None, :] if taps.ndim == 1 else taps
    return f / f.sum()


def tf_generator(net: TFNetwork, name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(spec, tensors by NVlabs-PyTorch name) of a TF StyleGAN2 generator (config F, skip)."""
    kw = _tf_kwargs(net)
    if int(kw.get("label_size") or 0) > 0:
        raise NotSupportedError(f"conditional models are not supported ('{name}' has label_size = {kw['label_size']})")
    syn = (net.state.get("components") or {}).get("synthesis")
    syn_func = syn.state.get("build_func_name") if isinstance(syn, TFNetwork) else None
    if syn_func != "G_synthesis_stylegan2":
        raise NotSupportedError(f"TF synthesis network '{syn_func}' is not supported (only G_synthesis_stylegan2, "
                                "config E/F)")
    res = int(kw.get("resolution", 1024))
    params = _tf_params(net)
    if any(k.startswith("synthesis/ToRGB_lod") for k in params) or kw.get("architecture", "skip") != "skip":
        raise NotSupportedError("only the 'skip' generator architecture is supported")
    spec = dict(
        z_dim=int(kw.get("latent_size", 512)), w_dim=int(kw.get("dlatent_size", 512)), resolution=res,
        img_channels=int(kw.get("num_channels", 3)), mapping_layers=int(kw.get("mapping_layers", 8)),
        mapping_lr=float(kw.get("mapping_lrmul", 0.01)), mapping_activation=kw.get("mapping_nonlinearity", "lrelu"),
        channel_base=int(kw.get("fmap_base", 16384)) * 2, channel_max=int(kw.get("fmap_max", 512)),
        conv_clamp=_number(kw.get("conv_clamp")), architecture="skip",
        activation=kw.get("nonlinearity", "lrelu"), use_noise=bool(kw.get("use_noise", True)),
    )

    v = _TFVars(params, f"TF network '{name}'")
    out = {"mapping.w_avg": v("dlatent_avg")}
    for i in range(spec["mapping_layers"]):
        out[f"mapping.fc{i}.weight"] = v(f"mapping/Dense{i}/weight").t()
        out[f"mapping.fc{i}.bias"] = v(f"mapping/Dense{i}/bias")
    out["synthesis.b4.const"] = v("synthesis/4x4/Const/const")[0]
    f = _tf_filter(kw)
    for r in (2**k for k in range(2, _log2(res) + 1)):
        layers = [("conv1", "Conv", 0)] if r == 4 else [("conv0", "Conv0_up", 2 * _log2(r) - 5),
                                                        ("conv1", "Conv1", 2 * _log2(r) - 4)]
        for ours, tf_name, noise_idx in layers:
            out.update(_tf_synthesis_layer(v, r, ours, tf_name, noise_idx if spec["use_noise"] else None))
            if ours == "conv0":
                out[f"synthesis.b{r}.conv0.resample_filter"] = f
        out.update(_tf_synthesis_layer(v, r, "torgb", "ToRGB", None))
        if r > 4:
            out[f"synthesis.b{r}.resample_filter"] = f
    return spec, out


class _TFVars:
    """TF variables by name as float tensors; `conv` turns an HWIO kernel into OIHW."""

    def __init__(self, params: dict[str, np.ndarray], what: str):
        self.params, self.what = params, what

    def __call__(self, key: str) -> torch.Tensor:
        if key not in self.params:
            raise CheckpointError(f"{self.what} lacks variable '{key}'")
        return torch.from_numpy(np.ascontiguousarray(self.params[key])).float()

    def conv(self, key: str, flip: bool = False) -> torch.Tensor:
        w = self(key)  # TF's upsampling conv flips its kernel before conv2d_transpose: undo it
        return (w.flip([0, 1]) if flip else w).permute(3, 2, 0, 1)


def _tf_synthesis_layer(v: _TFVars, r: int, ours: str, tf_name: str, noise_idx: int | None) -> dict:
    """One modulated layer (conv or toRGB) of block r under NVlabs-PyTorch names."""
    src, dst = f"synthesis/{r}x{r}/{tf_name}", f"synthesis.b{r}.{ours}"
    out = {f"{dst}.weight": v.conv(f"{src}/weight", flip=tf_name == "Conv0_up"), f"{dst}.bias": v(f"{src}/bias"),
           f"{dst}.affine.weight": v(f"{src}/mod_weight").t(), f"{dst}.affine.bias": v(f"{src}/mod_bias") + 1}
    if noise_idx is not None:
        out[f"{dst}.noise_strength"] = v(f"{src}/noise_strength").reshape([])
        out[f"{dst}.noise_const"] = v(f"synthesis/noise{noise_idx}")[0, 0]
    return out


def tf_discriminator(net: TFNetwork) -> tuple[dict, dict[str, torch.Tensor]]:
    """(spec, tensors by NVlabs-PyTorch name) of a TF StyleGAN2 residual discriminator."""
    kw = _tf_kwargs(net)
    spec = dict(resolution=int(kw.get("resolution", 1024)), channel_base=int(kw.get("fmap_base", 16384)) * 2,
                channel_max=int(kw.get("fmap_max", 512)), architecture=kw.get("architecture", "resnet"),
                mbstd_group_size=int(kw.get("mbstd_group_size", 4)),
                mbstd_num_channels=int(kw.get("mbstd_num_features", 1)), c_dim=int(kw.get("label_size") or 0),
                conv_clamp=_number(kw.get("conv_clamp")))

    t = _TFVars(_tf_params(net), "TF discriminator")
    out, f = {}, _tf_filter(kw)
    res = spec["resolution"]
    out[f"b{res}.fromrgb.weight"] = t.conv(f"{res}x{res}/FromRGB/weight")
    out[f"b{res}.fromrgb.bias"] = t(f"{res}x{res}/FromRGB/bias")
    r = res
    while r > 4:
        for i, tf_name in ((0, "Conv0"), (1, "Conv1_down")):
            out[f"b{r}.conv{i}.weight"] = t.conv(f"{r}x{r}/{tf_name}/weight")
            out[f"b{r}.conv{i}.bias"] = t(f"{r}x{r}/{tf_name}/bias")
        out[f"b{r}.skip.weight"] = t.conv(f"{r}x{r}/Skip/weight")
        out[f"b{r}.conv1.resample_filter"] = out[f"b{r}.skip.resample_filter"] = f
        r //= 2
    out["b4.conv.weight"] = t.conv("4x4/Conv/weight")
    out["b4.conv.bias"] = t("4x4/Conv/bias")
    out["b4.fc.weight"], out["b4.fc.bias"] = t("4x4/Dense0/weight").t(), t("4x4/Dense0/bias")
    out["b4.out.weight"], out["b4.out.bias"] = t("Output/weight").t(), t("Output/bias")
    return spec, out


def ada_discriminator(d: PersistentObject) -> tuple[dict, dict[str, torch.Tensor]]:
    """(spec, tensors by NVlabs name) of a stylegan2-ada-pytorch Discriminator."""
    kw = d.state.get("_init_kwargs") or {}
    res = int(d.state["img_resolution"])
    spec = dict(resolution=res, channel_base=int(kw.get("channel_base", 32768)),
                channel_max=int(kw.get("channel_max", 512)),
                architecture=_attr(d, f"b{res}.architecture", "resnet"),
                mbstd_group_size=_attr(d, "b4.mbstd.group_size", 4),
                mbstd_num_channels=int(_attr(d, "b4.mbstd.num_channels", 1) or 0),
                c_dim=int(d.state.get("c_dim") or 0), conv_clamp=_number(_attr(d, "b4.conv.conv_clamp")))
    return spec, _named_tensors(d)


# ---- NVlabs names -> rosinality layout ------------------------------------------------------
def _kernel(f: torch.Tensor, gain: float, correlate: bool) -> torch.Tensor:
    """An NVlabs resample filter (2D, sum 1; applied as a true convolution) as one of our FIR
    kernels: flipped where ours correlates (conv2d), as is where ours convolves (conv_transpose2d)."""
    f = f.float()
    if f.ndim == 1:
        f = f[:, None] * f[None, :]
    if f.shape != (4, 4):
        raise NotSupportedError(f"resample filters of shape {tuple(f.shape)} are not supported (only 4 taps)")
    return (f.flip([0, 1]) if correlate else f) * gain


def _generator_config(spec: dict) -> dict:
    bad = [(k, spec[k], v) for k, v in (("img_channels", 3), ("architecture", "skip"), ("activation", "lrelu"),
                                       ("mapping_activation", "lrelu")) if spec[k] != v]
    if bad:
        k, got, want = bad[0]
        raise NotSupportedError(f"generator {k} = {got!r} is not supported (only {want!r})")
    if spec["z_dim"] != spec["w_dim"]:
        raise NotSupportedError(f"z_dim {spec['z_dim']} != w_dim {spec['w_dim']} is not supported")
    return dict(size=spec["resolution"], style_dim=spec["w_dim"], n_mlp=spec["mapping_layers"], channel_multiplier=1,
                channel_base=spec["channel_base"], channel_max=spec["channel_max"], lr_mlp=spec["mapping_lr"],
                conv_clamp=spec["conv_clamp"])


def _styled(sd: dict, p: dict, src: str, dst: str, noise_key: str, use_noise: bool) -> None:
    sd[f"{dst}.conv.weight"] = p[f"{src}.weight"][None]
    sd[f"{dst}.conv.modulation.weight"] = p[f"{src}.affine.weight"]
    sd[f"{dst}.conv.modulation.bias"] = p[f"{src}.affine.bias"]
    sd[f"{dst}.activate.bias"] = p[f"{src}.bias"]
    if use_noise:
        sd[f"{dst}.noise.weight"] = p[f"{src}.noise_strength"].reshape(1)
        sd[noise_key] = p[f"{src}.noise_const"][None, None]
    else:  # no noise input: zero strength, zero constant
        sd[f"{dst}.noise.weight"] = torch.zeros(1)
        sd[noise_key] = None  # zeros, made once the resolution is known


def _to_rgb(sd: dict, p: dict, src: str, dst: str) -> None:
    sd[f"{dst}.conv.weight"] = p[f"{src}.weight"][None]
    sd[f"{dst}.conv.modulation.weight"] = p[f"{src}.affine.weight"]
    sd[f"{dst}.conv.modulation.bias"] = p[f"{src}.affine.bias"]
    sd[f"{dst}.bias"] = p[f"{src}.bias"].view(1, -1, 1, 1)


def generator_state(spec: dict, p: dict[str, torch.Tensor]) -> tuple[dict, dict, torch.Tensor | None]:
    """(our Generator config, rosinality state dict, w_avg or None) from NVlabs-named tensors."""
    cfg = _generator_config(spec)
    try:
        sd = {f"style.{i + 1}.{k}": p[f"mapping.fc{i}.{k}"] for i in range(cfg["n_mlp"]) for k in ("weight", "bias")}
        sd["input.input"] = p["synthesis.b4.const"][None]
        use_noise = spec["use_noise"]
        _styled(sd, p, "synthesis.b4.conv1", "conv1", "noises.noise_0", use_noise)
        _to_rgb(sd, p, "synthesis.b4.torgb", "to_rgb1")
        for b in range(1, _log2(cfg["size"]) - 1):
            r = 4 * 2**b
            _styled(sd, p, f"synthesis.b{r}.conv0", f"convs.{2 * b - 2}", f"noises.noise_{2 * b - 1}", use_noise)
            _styled(sd, p, f"synthesis.b{r}.conv1", f"convs.{2 * b - 1}", f"noises.noise_{2 * b}", use_noise)
            _to_rgb(sd, p, f"synthesis.b{r}.torgb", f"to_rgbs.{b - 1}")
            sd[f"convs.{2 * b - 2}.conv.blur.kernel"] = _kernel(p[f"synthesis.b{r}.conv0.resample_filter"], 4, True)
            sd[f"to_rgbs.{b - 1}.upsample.kernel"] = _kernel(p[f"synthesis.b{r}.resample_filter"], 4, False)
    except KeyError as exc:
        raise CheckpointError(f"generator lacks NVlabs parameter {exc}") from None
    for i in range(2 * _log2(cfg["size"]) - 3):
        if sd.get(f"noises.noise_{i}") is None:
            res = 2 ** ((i + 5) // 2)
            sd[f"noises.noise_{i}"] = torch.zeros(1, 1, res, res)
    w_avg = p.get("mapping.w_avg")
    return cfg, {k: v.contiguous() for k, v in sd.items()}, w_avg


def discriminator_state(spec: dict, p: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """(our Discriminator config, rosinality state dict) from NVlabs-named tensors."""
    if spec["c_dim"] > 0:
        raise NotSupportedError("conditional discriminators are not supported")
    if spec["architecture"] != "resnet" or spec["mbstd_num_channels"] != 1:
        raise NotSupportedError(f"discriminator architecture {spec['architecture']!r} with "
                                f"{spec['mbstd_num_channels']} mbstd channels is not supported (only resnet, 1)")
    res = spec["resolution"]
    cfg = dict(size=res, channel_multiplier=1, channel_base=spec["channel_base"], channel_max=spec["channel_max"],
               stddev_group=int(spec["mbstd_group_size"] or 4), conv_clamp=spec["conv_clamp"])
    try:
        sd = {"convs.0.0.weight": p[f"b{res}.fromrgb.weight"], "convs.0.1.bias": p[f"b{res}.fromrgb.bias"]}
        k, r = 1, res
        while r > 4:
            sd[f"convs.{k}.conv1.0.weight"] = p[f"b{r}.conv0.weight"]
            sd[f"convs.{k}.conv1.1.bias"] = p[f"b{r}.conv0.bias"]
            sd[f"convs.{k}.conv2.0.kernel"] = _kernel(p[f"b{r}.conv1.resample_filter"], 1, True)
            sd[f"convs.{k}.conv2.1.weight"] = p[f"b{r}.conv1.weight"]
            sd[f"convs.{k}.conv2.2.bias"] = p[f"b{r}.conv1.bias"]
            sd[f"convs.{k}.skip.0.kernel"] = _kernel(p[f"b{r}.skip.resample_filter"], 1, True)
            sd[f"convs.{k}.skip.1.weight"] = p[f"b{r}.skip.weight"]
            k, r = k + 1, r // 2
        sd.update({"final_conv.0.weight": p["b4.conv.weight"], "final_conv.1.bias": p["b4.conv.bias"],
                   "final_linear.0.weight": p["b4.fc.weight"], "final_linear.0.bias": p["b4.fc.bias"],
                   "final_linear.1.weight": p["b4.out.weight"], "final_linear.1.bias": p["b4.out.bias"]})
    except KeyError as exc:
        raise CheckpointError(f"discriminator lacks NVlabs parameter {exc}") from None
    return cfg, {k: v.contiguous() for k, v in sd.items()}


def _checked(module: torch.nn.Module, sd: dict, what: str) -> dict:
    """sd if it loads strictly into module (right keys and shapes); CheckpointError otherwise."""
    check_fit(module, sd, what, ": the pickle's channel settings disagree with its weights")
    return sd


# ---- the conversion ------------------------------------------------------------------------
def convert(path: str | os.PathLike) -> dict:
    """Read an NVlabs pickle and return an ordinary checkpoint: g_ema (and g, d where present),
    latent_avg, and `cartoongan` metadata naming the source file and its format."""
    path = Path(path)
    data, sha256 = read_pickle(path)
    fmt = detect_format(data)
    try:
        return _convert(path, data, fmt, sha256)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError, OverflowError,
            ZeroDivisionError) as exc:  # OverflowError: int(inf) of a damaged size field
        raise CheckpointError(f"{path} is a {fmt} pickle with malformed networks "
                              f"({type(exc).__name__}: {first_line(exc, 100, '')})") from None


def _convert(path: Path, data, fmt: str, sha256: str) -> dict:
    nets: dict[str, tuple[dict, dict]] = {}
    if fmt == FORMAT_ADA:
        for key, ours in (("G_ema", "g_ema"), ("G", "g")):
            if isinstance(data.get(key), PersistentObject):
                nets[ours] = ada_generator(data[key], key)
        d_spec = ada_discriminator(data["D"]) if isinstance(data.get("D"), PersistentObject) else None
    else:
        g, d, gs = data
        nets["g_ema"], nets["g"] = tf_generator(gs, "Gs"), tf_generator(g, "G")
        d_spec = tf_discriminator(d) if d.state.get("variables") else None

    ckpt: dict = {}
    g_cfg = None
    for ours, (spec, params) in nets.items():
        cfg, sd, w_avg = generator_state(spec, params)
        if g_cfg is not None and cfg != g_cfg:
            raise CheckpointError(f"G and G_ema of {path.name} have different architectures")
        g_cfg = cfg
        ckpt[ours] = _checked(Generator(**cfg), sd, f"generator '{ours}'")
        if ours == "g_ema" and w_avg is not None:
            ckpt["latent_avg"] = w_avg.reshape(-1).clone()
    meta = {"version": FORMAT_VERSION, "generator": g_cfg, "kind": "converted",
            "provenance": {"source": str(path.resolve()), "format": fmt, "sha256": sha256}}
    if d_spec is not None:
        d_cfg, d_sd = discriminator_state(*d_spec)
        ckpt["d"] = _checked(Discriminator(**d_cfg), d_sd, "discriminator 'd'")
        meta["discriminator"] = d_cfg
    ckpt["cartoongan"] = meta
    return ckpt


def looks_like_nvlabs_pickle(path: str | os.PathLike) -> bool:
    """True for a raw pickle stream (or any .pkl) that is not a torch.save file, whatever its suffix."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(32)
    except OSError:
        return False
    # torch.save files are zip archives (PK) or, in the legacy format, start with a pickled magic long
    if head[:2] == b"PK" or is_legacy_torch(head):
        return False
    return path.suffix.lower() == ".pkl" or head[:1] == b"\x80"


def default_output(src: str | os.PathLike) -> Path:
    """Where `convert SRC` writes without -o: SRC with .pt, refused where that name is SRC itself
    (ConfigError), or an existing file other than a conversion of SRC (OutputError) (rosinality's
    stylegan2-ffhq-config-f.pt sits beside NVlabs' .pkl of the same name, and was replaced)."""
    src = Path(src)
    if src.suffix.lower() == ".pt":
        raise ConfigError(f"{src} already ends in .pt, the default output name: give -o for the converted file")
    dst = src.with_suffix(".pt")
    if dst.exists() and not _converted_from(dst, src):
        raise OutputError(f"{dst}, the default output name, already exists and is no conversion of {src.name}: "
                          f"give -o for the converted file (or move {dst.name} away)")
    return dst


def _converted_from(dst: Path, src: Path) -> bool:
    """Whether dst is a checkpoint `convert` made of src: its provenance names src's path, or
    (the pair moved since) src's bytes."""
    try:
        made = provenance(read_torch_file(dst, mmap=True))
    except (CartoonganError, AttributeError):  # AttributeError: a file that is no dict
        return False
    if made.get("source") == str(src.resolve()):
        return True
    try:
        return isinstance(made.get("sha256"), str) and made["sha256"] == sha256_of(src)
    except OSError:  # src unreadable: its conversion, next, names that
        return False


def convert_file(src: str | os.PathLike, dst: str | os.PathLike) -> tuple[Path, dict]:
    """Convert the NVlabs pickle `src` and write the checkpoint to `dst` (only once it converted)."""
    src, dst = Path(src), Path(dst)
    check_weights_output(dst, (GENERATOR, WITH_D), "-o", inputs=[src])  # before the conversion; what it holds, after
    with naming(src):  # as `info` names it: "not an NVlabs StyleGAN2 network pickle" alone names no file
        ckpt = convert(src)
    check_weights_output(dst, checkpoint_kind(ckpt), "-o", inputs=[src])
    return save_checkpoint(dst, ckpt), ckpt
