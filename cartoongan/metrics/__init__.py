"""Measurements of images and generators."""
