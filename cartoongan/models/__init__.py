"""Networks: layers, the StyleGAN2 generator and discriminator, latents."""
