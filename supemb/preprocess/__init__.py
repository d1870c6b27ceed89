"""Preprocessing: decoded inputs -> model tensors (evaluation transforms and training augmentations)."""
