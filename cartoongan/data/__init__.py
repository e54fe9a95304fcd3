"""Images in and out: datasets, image IO, the built-in synthetic domains."""
