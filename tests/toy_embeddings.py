"""Small embeddings with known geometry, shared by the neighbour and retrieval tests."""

from __future__ import annotations

import numpy as np


def circle(angles_deg: np.ndarray | list[float]) -> np.ndarray:
    """Unit 2-D vectors at the given angles: cosine similarity ranks by angle gap."""
    a = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    return np.stack([np.cos(a), np.sin(a)], axis=1)


def clusters(n_per: int, n_classes: int, dim: int = 16, noise: float = 0.05, seed: int = 0):
    """(emb [n_per * n_classes, dim], labels): tight clusters around scaled one-hot centres."""
    rng = np.random.default_rng(seed)
    centers = np.eye(dim)[:n_classes] * 3.0
    labels = np.repeat(np.arange(n_classes), n_per)
    emb = centers[labels] + rng.normal(0, noise, (len(labels), dim))
    return emb, labels
