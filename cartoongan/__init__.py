"""cartoongan: fine-tune a StyleGAN2 face generator into a cartoon-face generator."""
from .checkpoint import build_discriminator, build_generator, load_checkpoint, save_checkpoint
from .discriminator import Discriminator
from .errors import CartoonganError
from .generator import Generator

__version__ = "0.1.0"
__all__ = [
    "Generator", "Discriminator", "load_checkpoint", "save_checkpoint", "build_generator",
    "build_discriminator", "CartoonganError", "__version__",
]
