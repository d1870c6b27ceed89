"""Shared pieces of the SYNTHETIC image generators (`synthetic_webcam`,
`synthetic_faces`): pixel grids, smooth noise, soft masks and painting on
float32 [H, W, 3] images in [0, 1], the split column and the labels.csv writer.

Changing anything here changes every synthetic image byte for byte (tests,
the default bundles and the evidence pin them).
"""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

import numpy as np

from supemb.data.splits import split_labels

SPLIT_BY: tuple[str, ...] = ("image", "group")
# Salt of the per-image random streams (scenes and identities have their own).
IMAGE_SALT = 0x1A6E


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1]: (Y, X), each float32 [size, size]."""
    c = ((np.arange(size, dtype=np.float32) + 0.5) / size).astype(np.float32)
    return np.meshgrid(c, c, indexing="ij")


@lru_cache(maxsize=8)
def cached_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """`grid(size)`, cached and read-only."""
    y, x = grid(size)
    y.flags.writeable = x.flags.writeable = False
    return y, x


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field in [0, 1]: cells x cells uniform values, bilinearly interpolated. [size, size]."""
    coarse = rng.random((cells + 1, cells + 1)).astype(np.float32)
    t = np.linspace(0, cells, size, dtype=np.float32)
    i = np.minimum(t.astype(int), cells - 1)
    f = t - i
    rows = coarse[i] * (1 - f)[:, None] + coarse[i + 1] * f[:, None]  # [size, cells+1]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def ranks(field: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Uniform ranks in [0, 1) of `field` over the pixels where mask > 0 (2 elsewhere),
    so "rank < p" covers exactly a fraction p of the masked pixels."""
    out = np.full(field.shape, 2.0, np.float32)
    idx = np.flatnonzero(mask.ravel() > 0)
    if idx.size:
        order = np.argsort(field.ravel()[idx], kind="stable")
        r = np.empty(idx.size, np.float32)
        r[order] = np.arange(idx.size, dtype=np.float32) / idx.size
        out.ravel()[idx] = r
    return out


def smoothstep(lo: float, hi: float, v: float) -> float:
    """0 below lo, 1 above hi, a smooth cubic in between."""
    t = min(max((v - lo) / (hi - lo), 0.0), 1.0)
    return t * t * (3 - 2 * t)


def paint(img: np.ndarray, colour: np.ndarray, mask: np.ndarray) -> None:
    """In place: img = img * (1 - mask) + colour * mask. img float32 [H, W, 3],
    mask [H, W], colour [3] or [H, W, 3]."""
    img += mask[..., None] * (colour - img)


def soft_ellipse(y: np.ndarray, x: np.ndarray, cy: float, cx: float, ry: float, rx: float, size: int) -> np.ndarray:
    """An antialiased filled ellipse mask in [0, 1] (edge about one pixel wide). [H, W]."""
    r = np.sqrt(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2)
    return np.clip((1.0 - r) * (min(rx, ry) * size) + 0.5, 0.0, 1.0)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """float [H, W, 3] in [0, 1] (clipped) -> uint8, rounded."""
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def split_column(n: int, groups: np.ndarray, split_by: str, seed: int, val_frac: float, test_frac: float) -> list[str]:
    """Per-image splits, or whole groups (cameras, identities) per split."""
    if split_by not in SPLIT_BY:
        raise ValueError(f"split_by must be one of {SPLIT_BY}, not {split_by!r}")
    if split_by == "image":
        return split_labels(n, val_frac=val_frac, test_frac=test_frac, seed=seed)
    uniq = np.unique(groups)
    per_group = dict(zip(uniq.tolist(), split_labels(len(uniq), val_frac=val_frac, test_frac=test_frac, seed=seed)))
    return [per_group[int(g)] for g in groups]



def write_labels(path: Path, header: tuple[str, ...], rows: list[tuple]) -> Path:
    """Write a labels.csv (header, then rows); returns its path."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path
