"""Build NVlabs-format pickles (stylegan2-ada-pytorch snapshots, TF (G, D, Gs) tuples) from
random weights, with placeholder text where NVlabs files embed their module source.

The object layout (class names, module trees, attributes, parameter names) follows what those
formats contain; nothing of NVlabs' code or text is used. The pickles reference the same
globals the real files do (`torch_utils.persistence._reconstruct_persistent_obj`,
`dnnlib.util.EasyDict`, `dnnlib.tflib.network.Network`), resolved while dumping through
stand-in modules that exist only inside `_fake_modules()`.
"""
from __future__ import annotations

import collections
import contextlib
import math
import pickle
import sys
import types

import numpy as np
import torch

PLACEHOLDER_SRC = "# placeholder module source: this text is never compiled by cartoongan\n"

# the tiny network the parity data in tests/data/nvlabs_tiny_expected.npz was made for
TINY = dict(z_dim=32, w_dim=32, resolution=32, mapping_layers=2, mapping_lr=0.01, channel_base=512,
            channel_max=32, conv_clamp=1.5, d_conv_clamp=0.5, mbstd_group_size=4, weight_seed=2024)


def widths(spec: dict) -> dict[int, int]:
    r, out = 4, {}
    while r <= spec["resolution"]:
        out[r] = min(spec["channel_base"] // r, spec["channel_max"])
        r *= 2
    return out


def _filter() -> torch.Tensor:
    f = torch.tensor([1.0, 3.0, 3.0, 1.0])
    f = f[:, None] * f[None, :]
    return f / f.sum()


# ---- random weights under NVlabs-PyTorch names ----------------------------------------------
def random_generator_weights(spec: dict, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def rn(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=g) * scale + shift

    ch, w = widths(spec), spec["w_dim"]
    p = {"mapping.w_avg": rn(w, scale=0.5)}
    for i in range(spec["mapping_layers"]):
        fan_in = spec["z_dim"] if i == 0 else w
        p[f"mapping.fc{i}.weight"] = rn(w, fan_in, scale=1 / spec["mapping_lr"])
        p[f"mapping.fc{i}.bias"] = rn(w, scale=0.1 / spec["mapping_lr"])
    for r, c in ch.items():
        pre = f"synthesis.b{r}"
        layers = [("conv1", c, c, 1)] if r == 4 else [("conv0", ch[r // 2], c, 2), ("conv1", c, c, 1)]
        if r == 4:
            p[f"{pre}.const"] = rn(c, 4, 4)
        p[f"{pre}.resample_filter"] = _filter()
        for name, cin, cout, _up in layers:
            p[f"{pre}.{name}.weight"] = rn(cout, cin, 3, 3)
            p[f"{pre}.{name}.noise_strength"] = rn(1, scale=0.3).reshape([])
            p[f"{pre}.{name}.bias"] = rn(cout, scale=0.2)
            p[f"{pre}.{name}.resample_filter"] = _filter()
            p[f"{pre}.{name}.noise_const"] = rn(r, r)
            p[f"{pre}.{name}.affine.weight"] = rn(cin, w)
            p[f"{pre}.{name}.affine.bias"] = rn(cin, scale=0.2, shift=1.0)
        p[f"{pre}.torgb.weight"] = rn(3, c, 1, 1)
        p[f"{pre}.torgb.bias"] = rn(3, scale=0.1)
        p[f"{pre}.torgb.affine.weight"] = rn(c, w)
        p[f"{pre}.torgb.affine.bias"] = rn(c, scale=0.2, shift=1.0)
    return p


def random_discriminator_weights(spec: dict, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ch, res = widths(spec), spec["resolution"]
    p = {}
    r = res
    while r > 4:
        pre = f"b{r}"
        p[f"{pre}.resample_filter"] = _filter()
        if r == res:
            p[f"{pre}.fromrgb.weight"] = torch.randn(ch[r], 3, 1, 1, generator=g)
            p[f"{pre}.fromrgb.bias"] = torch.randn(ch[r], generator=g) * 0.1
            p[f"{pre}.fromrgb.resample_filter"] = _filter()
        for name, cin, cout, k in (("conv0", ch[r], ch[r], 3), ("conv1", ch[r], ch[r // 2], 3), ("skip", ch[r], ch[r // 2], 1)):
            p[f"{pre}.{name}.weight"] = torch.randn(cout, cin, k, k, generator=g)
            if name != "skip":
                p[f"{pre}.{name}.bias"] = torch.randn(cout, generator=g) * 0.1
            p[f"{pre}.{name}.resample_filter"] = _filter()
        r //= 2
    c = ch[4]
    p["b4.conv.weight"] = torch.randn(c, c + 1, 3, 3, generator=g)
    p["b4.conv.bias"] = torch.randn(c, generator=g) * 0.1
    p["b4.conv.resample_filter"] = _filter()
    p["b4.fc.weight"] = torch.randn(c, c * 16, generator=g)
    p["b4.fc.bias"] = torch.randn(c, generator=g) * 0.1
    p["b4.out.weight"] = torch.randn(1, c, generator=g)
    p["b4.out.bias"] = torch.randn(1, generator=g) * 0.1
    return p


# ---- stand-in globals for dumping ------------------------------------------------------------
def _reconstruct_persistent_obj(meta):  # never called: only its name is pickled
    raise RuntimeError("stand-in")


class EasyDict(dict):
    pass


class Network:
    """Pickles like dnnlib.tflib.network.Network: the class global, then its state dict."""

    def __init__(self, state: dict):
        self._state = state

    def __getstate__(self):
        return self._state


@contextlib.contextmanager
def _fake_modules():
    names = {"torch_utils": {}, "torch_utils.persistence": {"_reconstruct_persistent_obj": _reconstruct_persistent_obj},
             "dnnlib": {}, "dnnlib.util": {"EasyDict": EasyDict}, "dnnlib.tflib": {},
             "dnnlib.tflib.network": {"Network": Network}}
    saved = {n: sys.modules.get(n) for n in names}
    for n, attrs in names.items():
        mod = types.ModuleType(n)
        for k, v in attrs.items():
            setattr(mod, k, v)
            v.__module__ = n
            v.__qualname__ = k
        sys.modules[n] = mod
    try:
        yield
    finally:
        for n, old in saved.items():
            if old is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = old
        for obj, (mod, qual) in ((_reconstruct_persistent_obj, (__name__, "_reconstruct_persistent_obj")),
                                 (EasyDict, (__name__, "EasyDict")), (Network, (__name__, "Network"))):
            obj.__module__, obj.__qualname__ = mod, qual


# ---- stylegan2-ada-pytorch object trees -------------------------------------------------------
class Persistent:
    """Pickles like a torch_utils.persistence object: _reconstruct_persistent_obj(meta)."""

    def __init__(self, class_name: str, attrs: dict, params: dict, buffers: dict, modules: dict,
                 source: str = PLACEHOLDER_SRC):
        od = collections.OrderedDict
        self.meta = dict(type="class", version=6, module_src=source, class_name=class_name, state=dict(
            training=False, _parameters=od((k, torch.nn.Parameter(v, requires_grad=False)) for k, v in params.items()),
            _buffers=od(buffers), _non_persistent_buffers_set=set(), _backward_hooks=od(), _forward_hooks=od(),
            _forward_pre_hooks=od(), _state_dict_hooks=od(), _load_state_dict_pre_hooks=od(), _modules=od(modules),
            **attrs))

    def __reduce__(self):
        return _reconstruct_persistent_obj, (self.meta,)


def _tree(p: dict, prefix: str, class_name: str, attrs: dict, params: list, buffers: list, modules: dict,
          source: str) -> Persistent:
    return Persistent(class_name, attrs, {k: p[prefix + k] for k in params if prefix + k in p},
                      {k: p[prefix + k] for k in buffers if prefix + k in p}, modules, source)


def _fc(p, prefix, in_f, lr=1.0, act="linear", src=PLACEHOLDER_SRC):
    return _tree(p, prefix, "FullyConnectedLayer", dict(activation=act, weight_gain=np.float64(lr / np.sqrt(in_f)),
                                                          bias_gain=lr), ["weight", "bias"], [], {}, src)


def generator_object(spec: dict, p: dict, src: str = PLACEHOLDER_SRC) -> Persistent:
    ch, w, res = widths(spec), spec["w_dim"], spec["resolution"]
    blocks = {}
    for r, c in ch.items():
        pre = f"synthesis.b{r}."
        layers = {}
        for name, cin, up in ([("conv1", c, 1)] if r == 4 else [("conv0", ch[r // 2], 2), ("conv1", c, 1)]):
            lp = f"{pre}{name}."
            layers[name] = _tree(p, lp, "SynthesisLayer", dict(
                resolution=r, up=up, use_noise=True, activation="lrelu", conv_clamp=spec["conv_clamp"], padding=1,
                act_gain=np.sqrt(2.0)), ["weight", "noise_strength", "bias"], ["resample_filter", "noise_const"],
                {"affine": _fc(p, lp + "affine.", w, src=src)}, src)
        layers["torgb"] = _tree(p, pre + "torgb.", "ToRGBLayer", dict(
            conv_clamp=spec["conv_clamp"], weight_gain=float(1 / np.sqrt(c))), ["weight", "bias"], [],
            {"affine": _fc(p, pre + "torgb.affine.", w, src=src)}, src)
        blocks[f"b{r}"] = _tree(p, pre, "SynthesisBlock", dict(
            in_channels=0 if r == 4 else ch[r // 2], w_dim=w, resolution=r, img_channels=3, is_last=r == res,
            architecture="skip", use_fp16=False, channels_last=False, num_conv=1 if r == 4 else 2, num_torgb=1),
            ["const"], ["resample_filter"], layers, src)
    n_ws = 2 * int(math.log2(res)) - 2
    synthesis = Persistent("SynthesisNetwork", dict(w_dim=w, img_resolution=res, img_resolution_log2=int(math.log2(res)),
                                                    img_channels=3, block_resolutions=list(ch), num_ws=n_ws),
                           {}, {}, blocks, src)
    fcs = {f"fc{i}": _fc(p, f"mapping.fc{i}.", spec["z_dim"] if i == 0 else w, spec["mapping_lr"], "lrelu", src)
           for i in range(spec["mapping_layers"])}
    mapping = _tree(p, "mapping.", "MappingNetwork", dict(
        z_dim=spec["z_dim"], c_dim=0, w_dim=w, num_ws=n_ws, num_layers=spec["mapping_layers"], w_avg_beta=0.995),
        [], ["w_avg"], fcs, src)
    kwargs = EasyDict(z_dim=spec["z_dim"], c_dim=0, w_dim=w, img_resolution=res, img_channels=3,
                      mapping_kwargs=EasyDict(num_layers=spec["mapping_layers"]),
                      synthesis_kwargs=EasyDict(channel_base=spec["channel_base"], channel_max=spec["channel_max"],
                                                num_fp16_res=0, conv_clamp=spec["conv_clamp"]))
    return Persistent("Generator", dict(z_dim=spec["z_dim"], c_dim=0, w_dim=w, img_resolution=res, img_channels=3,
                                        num_ws=n_ws, _init_args=(), _init_kwargs=kwargs),
                      {}, {}, {"synthesis": synthesis, "mapping": mapping}, src)


def discriminator_object(spec: dict, p: dict, src: str = PLACEHOLDER_SRC) -> Persistent:
    ch, res, clamp = widths(spec), spec["resolution"], spec["d_conv_clamp"]

    def conv(prefix, down=1, act="lrelu", c=clamp):
        return _tree(p, prefix, "Conv2dLayer", dict(activation=act, up=1, down=down, conv_clamp=c),
                     ["weight", "bias"], ["resample_filter"], {}, src)

    blocks, r = {}, res
    while r > 4:
        mods = {"fromrgb": conv(f"b{r}.fromrgb.")} if r == res else {}
        mods.update(conv0=conv(f"b{r}.conv0."), conv1=conv(f"b{r}.conv1.", 2), skip=conv(f"b{r}.skip.", 2, "linear"))
        blocks[f"b{r}"] = _tree(p, f"b{r}.", "DiscriminatorBlock", dict(
            in_channels=0 if r == res else ch[r], resolution=r, img_channels=3, architecture="resnet", use_fp16=False),
            [], ["resample_filter"], mods, src)
        r //= 2
    mbstd = Persistent("MinibatchStdLayer", dict(group_size=spec["mbstd_group_size"], num_channels=1), {}, {}, {}, src)
    blocks["b4"] = Persistent("DiscriminatorEpilogue", dict(in_channels=ch[4], cmap_dim=0, resolution=4, img_channels=3,
                                                            architecture="resnet"), {}, {},
                              dict(mbstd=mbstd, conv=conv("b4.conv."), fc=_fc(p, "b4.fc.", ch[4] * 16, act="lrelu", src=src),
                                   out=_fc(p, "b4.out.", ch[4], src=src)), src)
    kwargs = EasyDict(c_dim=0, img_resolution=res, img_channels=3, channel_base=spec["channel_base"],
                      channel_max=spec["channel_max"], conv_clamp=clamp)
    return Persistent("Discriminator", dict(c_dim=0, img_resolution=res, img_channels=3, _init_args=(),
                                            _init_kwargs=kwargs), {}, {}, blocks, src)


def ada_snapshot(spec: dict, g: dict, d: dict | None, src: str = PLACEHOLDER_SRC, **extra) -> dict:
    snap = {"G": generator_object(spec, g, src), "G_ema": generator_object(spec, g, src),
            "training_set_kwargs": EasyDict(path="placeholder.zip", use_labels=False, xflip=False),
            "augment_pipe": None}
    if d is not None:
        snap["D"] = discriminator_object(spec, d, src)
    snap.update(extra)
    return snap


def dump(obj, path) -> None:
    with _fake_modules(), open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=4)


def write_ada_pickle(path, spec: dict = TINY, src: str = PLACEHOLDER_SRC, with_d: bool = True) -> None:
    g = random_generator_weights(spec, spec["weight_seed"])
    d = random_discriminator_weights(spec, spec["weight_seed"] + 1) if with_d else None
    dump(ada_snapshot(spec, g, d, src), path)


# ---- TF (G, D, Gs) -----------------------------------------------------------------------------
def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().astype(np.float32)


def _tf_conv(t: torch.Tensor, flip: bool = False) -> np.ndarray:  # OIHW -> HWIO (TF flips its up conv)
    w = t.permute(2, 3, 1, 0)
    return _np(w.flip([0, 1]) if flip else w)


def tf_generator_network(spec: dict, p: dict, src: str = PLACEHOLDER_SRC) -> Network:
    ch = widths(spec)
    mapping = [("dlatent_avg", _np(p["mapping.w_avg"]))]
    for i in range(spec["mapping_layers"]):
        mapping += [(f"Dense{i}/weight", _np(p[f"mapping.fc{i}.weight"].t())), (f"Dense{i}/bias", _np(p[f"mapping.fc{i}.bias"]))]
    syn = [("4x4/Const/const", _np(p["synthesis.b4.const"][None]))]
    noise = []
    for r in ch:
        log_r = int(math.log2(r))
        layers = [("conv1", "Conv", 0)] if r == 4 else [("conv0", "Conv0_up", 2 * log_r - 5), ("conv1", "Conv1", 2 * log_r - 4)]
        for ours, tf_name, idx in layers:
            s, d = f"synthesis.b{r}.{ours}", f"{r}x{r}/{tf_name}"
            syn += [(f"{d}/weight", _tf_conv(p[f"{s}.weight"], tf_name == "Conv0_up")),
                    (f"{d}/mod_weight", _np(p[f"{s}.affine.weight"].t())), (f"{d}/mod_bias", _np(p[f"{s}.affine.bias"] - 1)),
                    (f"{d}/noise_strength", _np(p[f"{s}.noise_strength"])), (f"{d}/bias", _np(p[f"{s}.bias"]))]
            noise.append((f"noise{idx}", _np(p[f"{s}.noise_const"][None, None])))
        s, d = f"synthesis.b{r}.torgb", f"{r}x{r}/ToRGB"
        syn += [(f"{d}/weight", _tf_conv(p[f"{s}.weight"])), (f"{d}/mod_weight", _np(p[f"{s}.affine.weight"].t())),
                (f"{d}/mod_bias", _np(p[f"{s}.affine.bias"] - 1)), (f"{d}/bias", _np(p[f"{s}.bias"]))]
    kwargs = dict(latent_size=spec["z_dim"], dlatent_size=spec["w_dim"], resolution=spec["resolution"],
                  mapping_layers=spec["mapping_layers"], mapping_lrmul=spec["mapping_lr"],
                  fmap_base=spec["channel_base"] // 2, fmap_max=spec["channel_max"], conv_clamp=spec["conv_clamp"])

    return _tf_net("G", "G_main", [("dlatent_avg", mapping[0][1])], src, kwargs, dict(
        mapping=_tf_net("G_mapping", "G_mapping", mapping[1:], src),
        synthesis=_tf_net("G_synthesis", "G_synthesis_stylegan2", syn + [("lod", np.float32(0))] + sorted(noise), src)))


def _tf_net(name, func, variables, src, kw=None, components=None) -> Network:
    return Network(dict(version=4, name=name, static_kwargs=kw or {}, components=components or {},
                        build_module_src=src, build_func_name=func, variables=variables))


def tf_discriminator_network(spec: dict, p: dict, src: str = PLACEHOLDER_SRC) -> Network:
    res = spec["resolution"]
    v = [(f"{res}x{res}/FromRGB/weight", _tf_conv(p[f"b{res}.fromrgb.weight"])),
         (f"{res}x{res}/FromRGB/bias", _np(p[f"b{res}.fromrgb.bias"]))]
    r = res
    while r > 4:
        for ours, tf_name in (("conv0", "Conv0"), ("conv1", "Conv1_down")):
            v += [(f"{r}x{r}/{tf_name}/weight", _tf_conv(p[f"b{r}.{ours}.weight"])),
                  (f"{r}x{r}/{tf_name}/bias", _np(p[f"b{r}.{ours}.bias"]))]
        v.append((f"{r}x{r}/Skip/weight", _tf_conv(p[f"b{r}.skip.weight"])))
        r //= 2
    v += [("4x4/Conv/weight", _tf_conv(p["b4.conv.weight"])), ("4x4/Conv/bias", _np(p["b4.conv.bias"])),
          ("4x4/Dense0/weight", _np(p["b4.fc.weight"].t())), ("4x4/Dense0/bias", _np(p["b4.fc.bias"])),
          ("Output/weight", _np(p["b4.out.weight"].t())), ("Output/bias", _np(p["b4.out.bias"]))]
    kwargs = dict(resolution=res, fmap_base=spec["channel_base"] // 2, fmap_max=spec["channel_max"],
                  mbstd_group_size=spec["mbstd_group_size"], conv_clamp=spec["d_conv_clamp"])
    return _tf_net("D", "D_stylegan2", v, src, kwargs)


def write_tf_pickle(path, spec: dict = TINY, src: str = PLACEHOLDER_SRC) -> None:
    g = random_generator_weights(spec, spec["weight_seed"])
    d = random_discriminator_weights(spec, spec["weight_seed"] + 1)
    gen = tf_generator_network(spec, g, src)
    dump((gen, tf_discriminator_network(spec, d, src), gen), path)
