"""2-D maps of embeddings, coloured by target, written as PNG.

`embedding_map` draws one map; `side_by_side` draws several in one figure
with a shared colour scale (e.g. "L1 scatters ages, RnC orders them"). Both
draw on a bare `matplotlib.figure.Figure` rendered by the Agg canvas: no
pyplot, no display, no global backend switch, so they work headless and
inside a running training process.

Projection (`project_2d`): rows are drawn in the geometry they are served
in, `metric`: L2-normalised first for "cosine" (serving compares cosine
similarities), as given for "l2" (serving compares Euclidean distances of
the raw encoder output); then reduced with t-SNE (scikit-learn; PCA init, fixed
seed, perplexity min(30, (N - 1) / 3)) or PCA (numpy SVD with a fixed sign
convention). Both are deterministic for a seed. t-SNE needs a handful of
points; below `MIN_TSNE_POINTS` the map falls back to PCA and says so on its
axes. Large sets are subsampled to `max_points` with the seed first, since
t-SNE cost grows quickly with N.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from supemb.predict.neighbours import check_metric, l2_normalize

Method = Literal["tsne", "pca"]

MIN_TSNE_POINTS = 5
_TSNE_INPUT_DIMS = 50  # PCA to this many dimensions before t-SNE (the usual speed-up)
_MAX_LEGEND_CLASSES = 20
_CONTINUOUS_CMAP = "viridis"


# -------------------------------------------------------------- projection


def _pca(x: np.ndarray, n_components: int) -> np.ndarray:
    """Principal-component scores. x: [N, D] -> [N, n_components] float64.

    Centred SVD; each component's sign is fixed so that its largest-magnitude
    loading is positive (deterministic across runs). Missing components (N or D
    smaller than n_components) are zero columns.
    """
    xc = x - x.mean(axis=0, keepdims=True)
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    m = min(n_components, len(s))
    signs = np.sign(vt[np.arange(m), np.argmax(np.abs(vt[:m]), axis=1)])
    signs[signs == 0] = 1.0
    scores = u[:, :m] * s[:m] * signs
    if m < n_components:
        scores = np.hstack([scores, np.zeros((len(x), n_components - m))])
    return scores


def _tsne(x: np.ndarray, seed: int) -> np.ndarray:
    """t-SNE to 2-D. x: [N, D] with N >= MIN_TSNE_POINTS -> [N, 2]."""
    # Imported here: only t-SNE needs scikit-learn (threadpoolctl comes with it).
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    if x.shape[1] > _TSNE_INPUT_DIMS:
        x = _pca(x, _TSNE_INPUT_DIMS)
    perplexity = float(min(30.0, max(1.0, (len(x) - 1) / 3.0)))  # must stay below N
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    # One thread: the Barnes-Hut gradient's parallel sums are not bit-reproducible
    # across thread counts, and OpenMP threads competing with a busy core (a
    # training process, a data loader) made a 300-point map 20-50x slower.
    with threadpool_limits(limits=1):
        return np.asarray(tsne.fit_transform(x), dtype=np.float64)


def project_2d(emb: npt.ArrayLike, method: Method = "tsne", seed: int = 0,
               metric: str = "cosine") -> tuple[np.ndarray, str]:
    """Embeddings to 2-D coordinates for plotting.

    emb: [N, D] (N >= 1); L2-normalised here for metric "cosine", used as
    given for "l2". method: "tsne" or "pca"; t-SNE with fewer than
    MIN_TSNE_POINTS rows falls back to PCA.
    Returns (xy [N, 2] float64, the method actually used: "t-SNE" or "PCA").
    """
    x = np.asarray(emb, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"embeddings must have shape [N, D] with N, D >= 1, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or Inf values")
    if method not in ("tsne", "pca"):
        raise ValueError(f"method must be 'tsne' or 'pca', got {method!r}")
    if check_metric(metric) == "cosine":
        x = l2_normalize(x)
    if method == "tsne" and len(x) >= MIN_TSNE_POINTS:
        return _tsne(x, seed), "t-SNE"
    return _pca(x, 2), "PCA"


def _subsample(n: int, max_points: int | None, seed: int) -> np.ndarray:
    """Sorted row indices: all of them, or max_points drawn without replacement."""
    if max_points is None or n <= max_points:
        return np.arange(n)
    if max_points < 1:
        raise ValueError(f"max_points must be positive, got {max_points}")
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


# ------------------------------------------------------------------ colours


def _check_targets(targets: npt.ArrayLike, n: int, discrete: bool) -> np.ndarray:
    t = np.asarray(targets)
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim != 1 or len(t) != n:
        raise ValueError(f"targets must have shape [N] = [{n}] to match the embeddings, got {t.shape}")
    if not discrete:
        try:
            t = t.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError("continuous targets must be numbers; pass discrete=True for class labels") from None
        if not np.isfinite(t).all():
            raise ValueError("targets contain NaN or Inf values")
    return t


def _class_colours(n_classes: int) -> list[tuple[float, float, float, float]]:
    """Distinct colours: tab10 / tab20, or evenly spaced hues past 20 classes."""
    from matplotlib import colormaps

    if n_classes <= 10:
        cmap = colormaps["tab10"]
        return [cmap(i) for i in range(n_classes)]
    if n_classes <= 20:
        cmap = colormaps["tab20"]
        return [cmap(i) for i in range(n_classes)]
    cmap = colormaps["turbo"]
    return [cmap(v) for v in np.linspace(0.0, 1.0, n_classes)]


def _marker_size(n: int) -> float:
    return float(np.clip(3000.0 / max(n, 1), 2.0, 40.0))


def _draw_continuous(ax: Axes, xy: np.ndarray, t: np.ndarray, norm: Normalize, cmap: Colormap | str) -> None:
    order = np.argsort(t, kind="stable")  # high values on top, so the extremes stay visible
    ax.scatter(xy[order, 0], xy[order, 1], c=t[order], cmap=cmap, norm=norm,
               s=_marker_size(len(xy)), alpha=0.85, linewidths=0)


def _draw_discrete(ax: Axes, xy: np.ndarray, t: np.ndarray, classes: np.ndarray, colours: list) -> None:
    for c, colour in zip(classes, colours):
        m = t == c
        if m.any():
            ax.scatter(xy[m, 0], xy[m, 1], color=colour, s=_marker_size(len(xy)), alpha=0.85, linewidths=0)


def _legend_handles(classes: np.ndarray, colours: list, label_names: Sequence[str] | None) -> list[Line2D]:
    def name(c: object) -> str:
        if label_names is not None and isinstance(c, (int, np.integer)) and 0 <= int(c) < len(label_names):
            return str(label_names[int(c)])
        return str(c)

    return [Line2D([], [], marker="o", linestyle="", color=col, label=name(c)) for c, col in zip(classes, colours)]


def _style(ax: Axes, title: str, used: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(f"{used} 1", fontsize=8)
    ax.set_ylabel(f"{used} 2", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal", adjustable="datalim")


def _save(fig: Figure, out_png: str | Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # attach the Agg canvas: rendering never touches a display
    fig.savefig(out, format="png", dpi=fig.dpi)
    return out


# --------------------------------------------------------------------- maps


def side_by_side(
    maps: Sequence[tuple[npt.ArrayLike, npt.ArrayLike, str]],
    out_png: str | Path,
    *,
    discrete: bool,
    method: Method = "tsne",
    seed: int = 0,
    ncols: int | None = None,
    panel_size: float = 4.0,
    target_name: str = "",
    label_names: Sequence[str] | None = None,
    max_points: int | None = 3000,
    suptitle: str = "",
    dpi: int = 100,
    metric: str = "cosine",
) -> Path:
    """Several embedding maps in one PNG, one panel per (emb [N_i, D_i], targets [N_i], title).

    All panels share one colour scale: a common colorbar over the pooled
    target range (continuous), or one class -> colour mapping and one legend
    (discrete; the legend is left out past 20 classes). Each panel is
    projected on its own (`project_2d`, same method, seed and metric: "cosine"
    normalises the rows first, "l2" keeps them raw) after a seeded subsample
    to `max_points` (None: keep all).
    discrete: True for class labels (ints or strings), False for values.
    label_names: legend names for integer class ids.
    Returns the path written.
    """
    if len(maps) == 0:
        raise ValueError("side_by_side needs at least one (embeddings, targets, title) panel")
    panels = []
    for i, panel in enumerate(maps):
        if len(panel) != 3:
            raise ValueError(f"panel {i}: expected (embeddings, targets, title), got {len(panel)} items")
        emb, targets, title = panel
        e = np.asarray(emb, dtype=np.float64)
        if e.ndim != 2:
            raise ValueError(f"panel {i} ({title}): embeddings must have shape [N, D], got {e.shape}")
        t = _check_targets(targets, len(e), discrete)
        keep = _subsample(len(e), max_points, seed)
        xy, used = project_2d(e[keep], method, seed, metric)
        panels.append((xy, t[keep], str(title), used))

    n = len(panels)
    cols = min(n, 4) if ncols is None else max(1, int(ncols))
    rows = -(-n // cols)
    # Constrained layout from the start: "outside" legends and shared colorbars need it.
    fig = Figure(figsize=(panel_size * cols + 1.2, panel_size * rows + 0.4), dpi=dpi, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)

    if discrete:
        classes = np.unique(np.concatenate([p[1] for p in panels]))
        colours = _class_colours(len(classes))
        for ax, (xy, t, title, used) in zip(axes.flat, panels):
            _draw_discrete(ax, xy, t, classes, colours)
            _style(ax, title, used)
        if len(classes) <= _MAX_LEGEND_CLASSES:
            fig.legend(handles=_legend_handles(classes, colours, label_names), loc="outside right center",
                       title=target_name or None, fontsize=8, frameon=False)
    else:
        pooled = np.concatenate([p[1] for p in panels])
        norm = Normalize(vmin=float(pooled.min()), vmax=float(pooled.max()))
        if norm.vmin == norm.vmax:  # one value: widen so the colorbar still has a range
            norm = Normalize(vmin=norm.vmin - 0.5, vmax=norm.vmax + 0.5)
        for ax, (xy, t, title, used) in zip(axes.flat, panels):
            _draw_continuous(ax, xy, t, norm, _CONTINUOUS_CMAP)
            _style(ax, title, used)
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=_CONTINUOUS_CMAP), ax=list(axes.flat[:n]),
                           shrink=0.85, pad=0.02)
        if target_name:
            bar.set_label(target_name)
    if suptitle:
        fig.suptitle(suptitle)
    return _save(fig, out_png)


def embedding_map(
    emb: npt.ArrayLike,
    targets: npt.ArrayLike,
    out_png: str | Path,
    title: str = "",
    method: Method = "tsne",
    seed: int = 0,
    *,
    discrete: bool,
    target_name: str = "",
    label_names: Sequence[str] | None = None,
    max_points: int | None = 3000,
    size: float = 6.0,
    dpi: int = 100,
    metric: str = "cosine",
) -> Path:
    """A 2-D map of embeddings, one point per row, coloured by target.

    emb: [N, D] (N >= 1); targets: [N]. discrete=False: a continuous colormap
    with a colorbar (labelled `target_name`); discrete=True: one colour per
    class with a legend (names from `label_names` for integer ids; no legend
    past 20 classes). Projection as in `project_2d` (rows normalised for
    metric "cosine", raw for "l2") after a seeded subsample to `max_points`;
    fewer than MIN_TSNE_POINTS points are drawn with PCA.
    Writes a PNG (parent folders created) and returns its path.
    """
    return side_by_side(
        [(emb, targets, title)], out_png, discrete=discrete, method=method, seed=seed, ncols=1,
        panel_size=size, target_name=target_name, label_names=label_names, max_points=max_points, dpi=dpi,
        metric=metric,
    )
