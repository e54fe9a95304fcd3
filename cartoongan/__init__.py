"""cartoongan: fine-tune a StyleGAN2 face generator into a cartoon-face generator."""
from importlib import metadata as _metadata

from .errors import CartoonganError
from .models.discriminator import Discriminator
from .models.generator import Generator
from .weights.checkpoint import load_checkpoint, save_checkpoint
from .weights.networks import build_discriminator, build_generator

try:  # one source of truth: the version in pyproject.toml, as installed
    __version__ = _metadata.version("cartoongan")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
__all__ = [
    "Generator", "Discriminator", "load_checkpoint", "save_checkpoint", "build_generator",
    "build_discriminator", "CartoonganError", "__version__",
]
