"""Every tensor the library makes while it works says which device it goes to.

On CUDA, a tensor made on torch's default device (the CPU) and then combined with the run's tensors
stops the command ("Expected all tensors to be on the same device"): the LPIPS projection path did
exactly that, unseen by a CPU suite where every device is the CPU. This audit makes that class of bug
visible here: it watches the factory functions while every subcommand runs and fails on any call
from the library that names no device. Module constructors are left out: networks are built and then
moved (or loaded with map_location), which is right on every device.
"""
import sys
from pathlib import Path

import cartoongan
import numpy as np
import pytest
import torch
from PIL import Image
from torch.overrides import TorchFunctionMode

from .helpers import blob_images, invoke_ok

LIBRARY = Path(cartoongan.__file__).resolve().parent  # not a path test: a checkout may be named cartoongan

FACTORIES = {torch.zeros, torch.ones, torch.empty, torch.full, torch.rand, torch.randn, torch.randint,
             torch.arange, torch.tensor, torch.as_tensor, torch.linspace, torch.eye, torch.normal,
             torch.randperm, torch.scalar_tensor, torch.empty_strided}


def _library_caller():
    """(file, line, function) of the library code that called the factory, or None when the caller
    is not the library (a test, a third-party package, torch itself: torch 2.11's Adam makes its
    step counter without a device, on purpose) or a module is being built."""
    frame = sys._getframe(2)
    path = Path(frame.f_code.co_filename)
    if LIBRARY not in path.parents:
        return None
    where = f"{path.relative_to(LIBRARY)}:{frame.f_lineno} in {frame.f_code.co_name}"
    while frame is not None:
        if frame.f_code.co_name == "__init__" and isinstance(frame.f_locals.get("self"), torch.nn.Module):
            return None
        frame = frame.f_back
    return where


class DevicelessFactories(TorchFunctionMode):
    """Records library calls of a factory function that leave the device to torch's default, and
    seeded draws whose generator lives on another device than the tensor asked for."""

    def __init__(self):
        super().__init__()
        self.calls: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES:
            gen = kwargs.get("generator")
            device = kwargs.get("device")
            mismatch = gen is not None and device is not None and torch.device(device).type != gen.device.type
            if device is None or mismatch:
                where = _library_caller()
                if where is not None:
                    self.calls.add(f"torch.{func.__name__} at {where}")
        return func(*args, **kwargs)


def test_the_audit_sees_a_deviceless_factory_in_the_library():
    """The watcher itself: a library function that makes a tensor without a device is reported,
    the same call with a device is not, and a test's own tensors are not."""
    from cartoongan.ops import fir

    with DevicelessFactories() as watch:
        fir.make_kernel()  # torch.tensor(taps) with no device: called here, outside a constructor
        torch.zeros(3)
    assert len(watch.calls) == 1 and "make_kernel" in next(iter(watch.calls)), watch.calls
    with DevicelessFactories() as watch:
        torch.nn.Linear(2, 2)  # a constructor, from a test
        torch.randn(2, generator=torch.Generator(), device="cpu")
    assert watch.calls == set()


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("placement")
    Image.fromarray((np.random.RandomState(0).rand(40, 36, 3) * 255).astype(np.uint8)).save(root / "photo.png")
    return root, blob_images(root / "faces", n=8, size=32, seed=1), blob_images(root / "toons", n=8, size=32, seed=2)


def _installed(*keys: str) -> bool:
    from cartoongan.weights import registry

    return all(registry.check(key)[1] for key in keys)


def test_every_subcommand_names_the_device_of_what_it_makes(chain):
    """pretrain with ADA augmenting (R1 and path length every step), finetune with FreezeSG, the
    structure loss and KID evaluation, swap, sample with an interpolation GIF, project with LPIPS,
    and toonify: no tensor from the library is left on the default device. (KID and LPIPS read
    pretrained networks: where their packages are missing, as on the GPU box, those two parts
    give way to the structure loss alone and the MSE projection.)"""
    root, faces, toons = chain
    src, ft = root / "src", root / "ft"
    regularise = ["--augment", "ada", "--augment-p", "0.5", "--device", "cpu"]
    kid = ["--eval-every", "3"] if _installed("inception_fid") else []
    lpips = [] if _installed("lpips_vgg16", "lpips_vgg_lin") else ["--loss", "mse"]
    with DevicelessFactories() as watch:
        invoke_ok(["pretrain", "--recipe", "tiny", "--data", str(faces), "--out", str(src), "--iters", "3", *regularise])
        invoke_ok(["finetune", "--recipe", "tiny", "--source", str(src / "latest.pt"), "--data", str(toons), "--out",
             str(ft), "--iters", "3", "--freeze-sg", "1", "--struct-loss", "2", *kid, *regularise])
        invoke_ok(["swap", str(src / "latest.pt"), str(ft / "latest.pt"), "-o", str(root / "swap.pt")])
        invoke_ok(["sample", str(src / "latest.pt"), str(root / "swap.pt"), "--seeds", "0-1", "--interpolate", "3",
             "--trunc", "0.7", "--outdir", str(root / "s"), "--device", "cpu"])
        invoke_ok(["project", str(root / "photo.png"), "--source", str(src / "latest.pt"), "--steps", "2",
             "--outdir", str(root / "p"), "--no-align", "--device", "cpu", *lpips])
        invoke_ok(["toonify", str(root / "photo.png"), "--source", str(src / "latest.pt"), "--target", str(root / "swap.pt"),
             "--steps", "2", "--loss", "mse", "--outdir", str(root / "t"), "--no-align", "--device", "cpu"])
    assert sorted(watch.calls) == []
    assert (root / "s" / "interpolation.gif").is_file() and (root / "p" / "proj.png").is_file()


def test_the_later_subcommands_name_the_device_of_what_they_make(chain):
    """The commands added after the audit: metrics of a checkpoint sweep (REAL's features once),
    toonify and project of a folder of photos, sample of a folder's projections, factor and edit, and the demo and
    ablation pipelines with a device given."""
    from cartoongan.pipelines.ablation import METHODS, run_ablation
    from cartoongan.pipelines.demo import run_demo

    from .test_finetune import make_source

    root, faces, _ = chain
    photos = root / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray((np.random.RandomState(i).rand(40, 36, 3) * 255).astype(np.uint8)).save(photos / f"p{i}.png")
    src = make_source(root / "src32.pt", size=32)  # 4 blocks: the demo's and ablation's recipes need 3
    fake = make_source(root / "fake32.pt", size=32, seed=1)
    metrics = ["fid,kid"] if _installed("inception_fid") else ["psnr"]
    with DevicelessFactories() as watch:
        invoke_ok(["metrics", str(faces), str(src), str(fake), "--metrics", *metrics, "--n", "4", "--device", "cpu"])
        invoke_ok(["toonify", str(photos), "--source", str(src), "--target", str(fake), "--steps", "1", "--loss", "mse",
                   "--outdir", str(root / "tf"), "--no-align", "--device", "cpu"])
        invoke_ok(["project", str(photos), "--source", str(src), "--steps", "1", "--loss", "mse",
                   "--outdir", str(root / "pf"), "--no-align", "--device", "cpu"])
        invoke_ok(["sample", str(fake), "--projected-w", str(root / "pf"), "--outdir", str(root / "sp"), "--device", "cpu"])
        invoke_ok(["factor", str(src), "-o", str(root / "f.pt")])
        invoke_ok(["edit", str(src), str(fake), "--factor", str(root / "f.pt"), "--index", "0", "--steps", "3", "--seeds",
                   "0-1", "--layers", "0-3", "--outdir", str(root / "ed"), "--device", "cpu"])
        run_demo(root / "demo", source=src, finetune_iters=1, n_cartoon=4, seeds=[0], device="cpu")
        run_ablation(root / "abl", source=src, iters=1, n_eval=0, n_structure=2, n_ppl=0, n_cartoon=4, seeds=[0],
                     methods=METHODS[:1], device="cpu")
    assert sorted(watch.calls) == []
    assert (root / "tf" / "toonify.png").is_file() and len(list((root / "sp").glob("proj*.png"))) == 2
