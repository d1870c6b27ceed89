"""Embedding maps: valid PNGs for continuous and discrete targets, panels,
deterministic projections, small-N fallback, input checks, headless use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.image import imread

from supemb.train.viz import MIN_TSNE_POINTS, embedding_map, project_2d, side_by_side

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _arc(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings on a noisy arc whose angle is the target."""
    rng = np.random.default_rng(seed)
    y = rng.uniform(0, 80, n)
    a = np.deg2rad(y)
    return np.c_[np.cos(a), np.sin(a), rng.normal(0, 0.05, (n, 6))], y


def _clusters(n: int, n_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lab = np.arange(n) % n_classes
    d = max(8, n_classes)
    return np.eye(d)[lab] * 3 + rng.normal(0, 0.2, (n, d)), lab


def _read_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = imread(path)  # [H, W, 4] floats in [0, 1]
    assert img.ndim == 3 and img.shape[0] >= 200 and img.shape[1] >= 200
    rgba = np.round(img * 255).astype(np.uint8).reshape(-1, img.shape[2])
    packed = rgba[:, :3].astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.uint32)
    assert len(np.unique(packed)) > 20  # not a blank canvas
    return img[..., :3]


def _has_colour(img: np.ndarray, rgb: tuple[float, ...], alpha: float = 0.85, tol: float = 0.06) -> bool:
    """Is a marker of colour rgb (drawn with alpha over white) visible?"""
    blended = alpha * np.asarray(rgb[:3]) + (1 - alpha)
    return bool(np.any(np.max(np.abs(img - blended), axis=-1) < tol))


def test_continuous_map_writes_a_png_with_colorbar(tmp_path: Path) -> None:
    emb, y = _arc(80)
    out = embedding_map(emb, y, tmp_path / "sub" / "age.png", title="RnC", discrete=False, target_name="age")
    assert out == tmp_path / "sub" / "age.png"
    img = _read_png(out)
    # The colormap's extremes appear (the colorbar spans the target range).
    cmap = colormaps["viridis"]
    assert _has_colour(img, cmap(0.0), alpha=1.0) and _has_colour(img, cmap(1.0), alpha=1.0)
    assert _has_colour(img, cmap(1.0))  # and the marker of the largest target, drawn with alpha


def test_discrete_map_draws_every_class_colour(tmp_path: Path) -> None:
    emb, lab = _clusters(60, 3)
    out = embedding_map(emb, lab, tmp_path / "cls.png", title="SupCon", discrete=True,
                        label_names=["cat", "dog", "fox"])
    img = _read_png(out)
    tab10 = colormaps["tab10"]
    for c in range(3):
        assert _has_colour(img, tab10(c)), f"class {c} colour not drawn"
    assert not _has_colour(img, tab10(3))  # no fourth class
    # String labels work too, and many classes drop the legend but still draw.
    words = np.array(["low", "mid", "high"])[lab]
    _read_png(embedding_map(emb, words, tmp_path / "words.png", discrete=True, method="pca"))
    emb30, lab30 = _clusters(90, 30)
    _read_png(embedding_map(emb30, lab30, tmp_path / "many.png", discrete=True, method="pca"))


def test_side_by_side_panels(tmp_path: Path) -> None:
    emb, y = _arc(60)
    rand = np.random.default_rng(1).normal(size=(60, 8))
    single = _read_png(embedding_map(emb, y, tmp_path / "one.png", discrete=False, method="pca", size=4.0))
    both = _read_png(side_by_side([(rand, y, "L1"), (emb, y, "RnC"), (emb[:4], y[:4], "few")],
                                  tmp_path / "cmp.png", discrete=False, target_name="age", suptitle="val"))
    assert both.shape[1] > 2 * single.shape[1]  # three panels side by side
    grid = _read_png(side_by_side([(emb, y, "a"), (emb, y, "b"), (emb, y, "c")], tmp_path / "grid.png",
                                  discrete=False, method="pca", ncols=2))
    assert grid.shape[0] > 1.5 * single.shape[0]  # two rows
    lab = (y > 40).astype(int)
    _read_png(side_by_side([(rand, lab, "CE"), (emb, lab, "SupCon")], tmp_path / "d.png", discrete=True))
    with pytest.raises(ValueError, match="at least one"):
        side_by_side([], tmp_path / "none.png", discrete=False)


def test_projection_is_deterministic_for_a_seed() -> None:
    emb, _ = _arc(50)
    a, used = project_2d(emb, "tsne", seed=3)
    b, _ = project_2d(emb, "tsne", seed=3)
    assert used == "t-SNE" and a.shape == (50, 2)
    np.testing.assert_array_equal(a, b)
    p1, used = project_2d(emb * 7.0, "pca")
    p2, _ = project_2d(emb, "pca")
    assert used == "PCA"
    np.testing.assert_allclose(p1, p2, atol=1e-12)  # rows are normalised: scale does not matter


def test_l2_projection_keeps_the_raw_rows(tmp_path: Path) -> None:
    """An "l2" embedding is drawn as served: its rows' norms are part of the geometry."""
    rng = np.random.default_rng(4)
    direction = rng.normal(size=6)
    emb = np.outer(np.linspace(1.0, 5.0, 30), direction) + 0.01 * rng.normal(size=(30, 6))  # one ray
    cos_xy, _ = project_2d(emb, "pca", metric="cosine")
    l2_xy, _ = project_2d(emb, "pca", metric="l2")
    # the points differ along the ray by their norm: l2 spreads them, cosine collapses them
    assert np.ptp(l2_xy[:, 0]) > 100 * np.ptp(cos_xy[:, 0])
    centred = emb - emb.mean(axis=0)
    assert np.abs(l2_xy[:, 0]).max() == pytest.approx(np.abs(centred @ direction / np.linalg.norm(direction)).max(),
                                                       rel=1e-3)
    _read_png(embedding_map(emb, np.arange(30.0), tmp_path / "l2.png", discrete=False, method="pca", metric="l2"))
    with pytest.raises(ValueError, match="metric"):
        project_2d(emb, "pca", metric="dot")


def test_same_seed_same_png(tmp_path: Path) -> None:
    emb, lab = _clusters(40, 4)
    a = embedding_map(emb, lab, tmp_path / "a.png", discrete=True, seed=1).read_bytes()
    b = embedding_map(emb, lab, tmp_path / "b.png", discrete=True, seed=1).read_bytes()
    assert a == b


def test_pca_recovers_a_line() -> None:
    t = np.linspace(-1, 1, 30)
    emb = np.c_[np.ones(30), t, 0.5 * t]  # normalised rows still vary along one direction mostly
    xy, _ = project_2d(emb, "pca")
    rho = np.corrcoef(xy[:, 0], t)[0, 1]
    assert abs(rho) > 0.99


@pytest.mark.parametrize("n", [1, 2, MIN_TSNE_POINTS - 1])
def test_small_n_falls_back_to_pca(tmp_path: Path, n: int) -> None:
    emb, y = _arc(n)
    xy, used = project_2d(emb, "tsne")
    assert used == "PCA" and xy.shape == (n, 2) and np.isfinite(xy).all()
    _read_png(embedding_map(emb, y, tmp_path / f"n{n}.png", discrete=False))
    _read_png(embedding_map(emb, np.zeros(n, int), tmp_path / f"c{n}.png", discrete=True))


def test_max_points_subsamples(tmp_path: Path) -> None:
    emb, y = _arc(200)
    out = embedding_map(emb, y, tmp_path / "s.png", discrete=False, method="pca", max_points=25)
    _read_png(out)
    with pytest.raises(ValueError, match="max_points"):
        embedding_map(emb, y, tmp_path / "bad.png", discrete=False, method="pca", max_points=0)


def test_bad_inputs_raise(tmp_path: Path) -> None:
    emb, y = _arc(20)
    with pytest.raises(ValueError, match=r"\[N\] = \[20\]"):
        embedding_map(emb, y[:-1], tmp_path / "x.png", discrete=False)
    with pytest.raises(ValueError, match="discrete=True"):
        embedding_map(emb, np.array(["a", "b"] * 10), tmp_path / "x.png", discrete=False)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        project_2d(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="NaN"):
        project_2d(np.full((6, 2), np.nan))
    with pytest.raises(ValueError, match="method"):
        project_2d(emb, "umap")  # type: ignore[arg-type]
    assert not (tmp_path / "x.png").exists()


def test_headless_without_pyplot(tmp_path: Path) -> None:
    # No display and an interactive backend requested: the maps must still
    # render, and must never import pyplot (which would pick a GUI backend).
    code = (
        "import sys, numpy as np\n"
        "from supemb.train.viz import embedding_map\n"
        "rng = np.random.default_rng(0)\n"
        f"embedding_map(rng.normal(size=(30, 4)), rng.uniform(size=30), r'{tmp_path / 'h.png'}',"
        " discrete=False, method='pca')\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["MPLBACKEND"] = "TkAgg"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    _read_png(tmp_path / "h.png")
