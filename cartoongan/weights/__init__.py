"""Checkpoints on disk and the networks built from them."""
