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


def brute_l2(q: np.ndarray, g: np.ndarray, k: int, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by -Euclidean distance (not squared) of the rows as given, one query at a time;
    ties by increasing index (stable sort)."""
    idx, sim = [], []
    for i, row in enumerate(q):
        s = -np.sqrt(((g - row) ** 2).sum(axis=1))
        if exclude_self:
            s[i] = -np.inf
        order = np.argsort(-s, kind="stable")[:k]
        idx.append(order)
        sim.append(s[order])
    return np.array(idx), np.array(sim)


def scaled_data(seed: int, n_q: int = 40, n_g: int = 150, d: int = 6):
    """Rows with very different norms, so the l2 and cosine neighbours differ."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n_q, d)) * rng.uniform(0.2, 5.0, (n_q, 1))
    g = rng.normal(size=(n_g, d)) * rng.uniform(0.2, 5.0, (n_g, 1))
    return q, g
