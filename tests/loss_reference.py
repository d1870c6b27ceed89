"""Brute-force versions of the losses, written as the papers' formulas in
plain nested loops over scalars (float64). Slow on purpose: they are the
ground truth the vectorised losses are tested against.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _items(features: Tensor, normalize: bool) -> list[Tensor]:
    """[B, V, D] -> list of n = V * B vectors, view-major like the losses."""
    batch, views, _ = features.shape
    out = []
    for v in range(views):
        for b in range(batch):
            z = features[b, v]
            out.append(z / torch.sqrt((z * z).sum()) if normalize else z)
    return out


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum()


def supcon_reference(
    features: Tensor, labels: list[int] | None, temperature: float,
    variant: str = "out", contrast_mode: str = "all",
) -> Tensor:
    batch, views, _ = features.shape
    z = _items(features, normalize=True)
    groups = [(labels[b] if labels is not None else b) for _ in range(views) for b in range(batch)]
    n = len(z)
    anchors = range(n) if contrast_mode == "all" else range(batch)
    losses = []
    for i in anchors:
        positives = [p for p in range(n) if p != i and groups[p] == groups[i]]
        if not positives:
            continue
        denom = sum(torch.exp(_dot(z[i], z[a]) / temperature) for a in range(n) if a != i)
        if variant == "out":
            terms = [torch.log(torch.exp(_dot(z[i], z[p]) / temperature) / denom) for p in positives]
            losses.append(-sum(terms) / len(positives))
        else:
            inner = sum(torch.exp(_dot(z[i], z[p]) / temperature) / denom for p in positives)
            losses.append(-torch.log(inner / len(positives)))
    if not losses:
        return features.sum() * 0.0
    return sum(losses) / len(losses)


def _label_distance(a: list[float], b: list[float], kind: str) -> float:
    if kind == "l1":
        return sum(abs(x - y) for x, y in zip(a, b))
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def rnc_reference(
    features: Tensor, targets: list, temperature: float,
    label_distance: str = "l1", similarity: str = "l2",
) -> Tensor:
    batch, views, _ = features.shape
    z = _items(features, normalize=similarity == "cosine")
    ys = [list(t) if isinstance(t, (list, tuple)) else [t] for t in targets]
    y = [ys[b] for _ in range(views) for b in range(batch)]
    n = len(z)

    def sim(i: int, j: int) -> Tensor:
        if similarity == "cosine":
            return _dot(z[i], z[j])
        return -torch.sqrt(((z[i] - z[j]) ** 2).sum())

    total = features.sum() * 0.0
    for i in range(n):
        for j in range(n):
            if j == i:
                continue
            d_ij = _label_distance(y[i], y[j], label_distance)
            denom = sum(
                torch.exp(sim(i, k) / temperature)
                for k in range(n)
                if k != i and _label_distance(y[i], y[k], label_distance) >= d_ij
            )
            total = total - torch.log(torch.exp(sim(i, j) / temperature) / denom)
    return total / (n * (n - 1))


def tsc_reference(
    features: Tensor, labels: list[int], class_targets: Tensor, temperature: float, weight: float,
) -> Tensor:
    batch, views, _ = features.shape
    z = _items(features, normalize=True)
    groups = [labels[b] for _ in range(views) for b in range(batch)]
    n = len(z)
    losses = []
    for i in range(n):
        contrast = [z[k] for k in range(n) if k != i] + [class_targets[c] for c in range(class_targets.shape[0])]
        denom = sum(torch.exp(_dot(z[i], a) / temperature) for a in contrast)
        positives = [p for p in range(n) if p != i and groups[p] == groups[i]]
        if not positives and weight == 0:
            continue
        s = sum((torch.log(torch.exp(_dot(z[i], z[p]) / temperature) / denom) for p in positives),
                features.sum() * 0.0)
        s = s + weight * torch.log(torch.exp(_dot(z[i], class_targets[groups[i]]) / temperature) / denom)
        losses.append(-s / max(len(positives), 1))
    return sum(losses) / len(losses)
