"""cartoongan: fine-tune a StyleGAN2 face generator into a cartoon-face generator."""
from .errors import CartoonganError
from .models.discriminator import Discriminator
from .models.generator import Generator
from .weights.checkpoint import load_checkpoint, save_checkpoint
from .weights.networks import build_discriminator, build_generator

__version__ = "0.1.0"
__all__ = [
    "Generator", "Discriminator", "load_checkpoint", "save_checkpoint", "build_generator",
    "build_discriminator", "CartoonganError", "__version__",
]
