"""Training: the loop, losses, augmentation, freezing, data parallelism, run directories."""
