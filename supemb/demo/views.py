"""What the demo draws: the gallery map, the EEG spectrum, neighbour captions and the banner.

Functions of a bundle and a prediction; no gradio here. Figures use
matplotlib's object API on the Agg canvas (no pyplot state), so several
requests can draw at once (each gallery map guards its one figure with a lock).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from supemb.predict.bundle import Bundle, Prediction

MAP_POINTS = 4000  # gallery items drawn on the map (a seeded sample past this)
THUMB_PX = 96  # gallery thumbnails are shown enlarged to this (nearest neighbour: no blur)


# ------------------------------------------------------------- gallery map


def gallery_vectors(bundle: Bundle, max_points: int = MAP_POINTS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(positions [M], embeddings [M, D]) of at most `max_points` gallery items, as the
    index holds them: unit vectors for a cosine bundle, raw encoder outputs for l2.

    Read from a fresh copy of the bundle's index.faiss (checked when the
    bundle loaded) rather than the serving index, which stays untouched: an
    IVF index needs a direct map built before it can give vectors back.
    """
    import faiss

    index = faiss.read_index(str(bundle.root / "index.faiss"))
    n = int(index.ntotal)
    if hasattr(index, "invlists"):  # IVF: build the id -> (list, offset) map on this copy
        faiss.extract_index_ivf(index).make_direct_map()
    if n <= max_points:
        return np.arange(n), index.reconstruct_n(0, n)
    ids = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
    return ids, np.stack([index.reconstruct(int(i)) for i in ids])


@dataclass(eq=False)
class GalleryMap:
    """A fixed 2-D linear projection of the gallery embeddings, to place queries on.

    x: the embedding direction that covaries most with the target (the first
    partial-least-squares direction, Xc^T yc); y: the largest variation left
    once x is removed (the first principal component of the rest). A plain
    PCA's top two axes often show nuisance structure (a face's identity, a
    webcam's scene) rather than the label; this map shows whether the space
    follows the label, and, being linear and fitted once, puts a query where
    its embedding is, the same place every time.

    The gallery is drawn once; each query only adds its marks on a copy
    (matplotlib blitting), so a request costs milliseconds, not a full plot.
    """

    mean: np.ndarray  # [D]
    axes: np.ndarray  # [D, 2]
    points: np.ndarray  # [M, 2] the drawn gallery items
    targets: np.ndarray  # [M]
    explained: tuple[float, float]  # fraction of the gallery's variance along each axis
    title: str
    target_name: str
    colour_label: str
    label: str = "your input"  # the query's legend entry
    _canvas: Any = field(default=None, init=False, repr=False)  # (figure, background, star, extent)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @classmethod
    def fit(cls, bundle: Bundle, items: str = "items", label: str = "your input") -> GalleryMap:
        ids, vectors = gallery_vectors(bundle)
        x = vectors.astype(np.float64)
        y = np.asarray(bundle.targets, np.float64)[ids]
        mean = x.mean(axis=0)
        xc = x - mean
        w = xc.T @ (y - y.mean())
        if np.linalg.norm(w) < 1e-12:  # a constant target: no direction follows it
            w = np.eye(x.shape[1])[0]
        w /= np.linalg.norm(w)
        rest = xc - np.outer(xc @ w, w)
        # top eigenvector of the D x D covariance of the rest (cheaper than an SVD of M x D)
        _, evecs = np.linalg.eigh(rest.T @ rest)
        v = evecs[:, -1]
        v = v if v[np.abs(v).argmax()] >= 0 else -v  # an eigenvector's sign is arbitrary: fix it
        axes = np.stack([w, v], axis=1)
        total = max(float((xc**2).sum()), 1e-12)
        explained = tuple(float(((xc @ a) ** 2).sum() / total) for a in axes.T)
        unit = f" ({bundle.unit})" if bundle.unit else ""
        return cls(mean=mean, axes=axes, points=xc @ axes, targets=y, explained=explained,
                   title=f"the gallery's {bundle.index.ntotal} {items} in the embedding space",
                   target_name=bundle.target_name, colour_label=f"{bundle.target_name}{unit}",
                   label=label)

    def project(self, emb: np.ndarray) -> np.ndarray:
        """Embeddings [N, D] -> map positions [N, 2]."""
        return (np.asarray(emb, np.float64) - self.mean) @ self.axes

    def draw(self, query: Any) -> np.ndarray:
        """The map with the query as a star -> RGB uint8 [H, W, 3].

        query: the input's embedding [D] (a `Prediction.embedding`; for an EEG
        recording its windows' pooled embedding, where the averaged prediction
        comes from). A star beyond the gallery's extent is drawn on its edge.
        """
        q = self.project(np.reshape(np.asarray(query, np.float64), (1, -1)))[0]
        with self._lock:  # one figure per map, drawn on by one request at a time (a few ms)
            if self._canvas is None:
                self._canvas = self._background()
            fig, background, star, (lo, hi) = self._canvas
            fig.canvas.restore_region(background)
            star.set_offsets(np.clip(q, lo, hi)[None])
            star.axes.draw_artist(star)
            return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()

    def _background(self) -> tuple:
        fig = _figure(5.2, 4.2)
        ax = fig.add_axes((0.15, 0.12, 0.64, 0.8))
        cax = fig.add_axes((0.82, 0.12, 0.03, 0.8))
        sc = ax.scatter(self.points[:, 0], self.points[:, 1], c=self.targets, cmap="viridis", s=9,
                        alpha=0.75, linewidths=0)
        fig.colorbar(sc, cax=cax, label=self.colour_label)
        pad = 0.06 * (self.points.max(axis=0) - self.points.min(axis=0) + 1e-9)
        lo, hi = self.points.min(axis=0) - pad, self.points.max(axis=0) + pad
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        star = ax.scatter([], [], marker="*", s=360, c="#d62728", edgecolors="white", linewidths=1.2,
                          animated=True, zorder=5, label=self.label)
        ax.set_xlabel(f"direction that follows {self.target_name} ({self.explained[0]:.0%} of variance)")
        ax.set_ylabel(f"largest other variation ({self.explained[1]:.0%})")
        ax.set_title(self.title, fontsize=9)
        ax.legend(handles=[star], loc="best", fontsize=8, framealpha=0.85)
        fig.canvas.draw()
        extent = (self.points.min(axis=0), self.points.max(axis=0))  # a far star stays whole, on the edge
        return fig, fig.canvas.copy_from_bbox(fig.bbox), star, extent


# ---------------------------------------------------------------- spectrum


def eeg_spectrum(raw: Any, channels: list[str], band: tuple[float | None, float | None]) -> np.ndarray:
    """Welch power spectra of a recording's model channels (thin lines) and
    their mean (bold), with the model's band-pass shaded -> RGB uint8 image.

    raw: an mne Raw; channels: the names in raw to use (the model's, as found).
    """
    from matplotlib.ticker import NullLocator
    from scipy.signal import welch

    sfreq = float(raw.info["sfreq"])
    x = raw.get_data(picks=channels) * 1e6  # volts -> microvolts, [C, T]
    nperseg = int(min(x.shape[1], round(4 * sfreq)))  # 4 s segments: 0.25 Hz resolution
    f, p = welch(x, fs=sfreq, nperseg=nperseg, axis=-1)
    keep = (f >= 0.5) & (f <= min(sfreq / 2, 60.0))
    f, p = f[keep], np.maximum(p[:, keep], 1e-12)
    fig = _figure(5.2, 3.4)
    ax = fig.add_axes((0.15, 0.15, 0.8, 0.75))
    for row in p:
        ax.semilogy(f, row, color="0.6", linewidth=0.5, alpha=0.6)
    ax.semilogy(f, p.mean(axis=0), color="#1f77b4", linewidth=2.0, label=f"mean of {len(p)} channels")
    lo, hi = band
    ax.axvspan(lo or f[0], hi or f[-1], color="#2ca02c", alpha=0.08, label="band the model sees")
    ax.set_xlabel("frequency (Hz)")
    ax.set_ylabel("power (µV²/Hz)")
    ax.set_title("spectrum of the uploaded recording (Welch)", fontsize=9, y=1.02)  # a fixed y: no auto-placing
    ax.yaxis.set_minor_locator(NullLocator())  # unlabelled anyway, and costly to lay out per request
    ax.legend(loc="upper right", fontsize=8)
    return _render(fig)


# ------------------------------------------------------------------ figures


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure on its own Agg canvas (fixed margins: a layout engine costs more than the plot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _render(fig: Any) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


# ----------------------------------------------------------------- text bits


def similarity_name(bundle: Bundle) -> str:
    """What a neighbour's similarity number is, in the bundle's metric."""
    return "cosine similarity" if bundle.metric == "cosine" else "similarity = −distance"


def fmt_value(value: float, unit: str) -> str:
    """A value with its unit: "37.3 years", "12.5°C"; whole numbers without decimals ("43 years")."""
    sep = "" if unit.startswith("°") or not unit else " "
    text = f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"
    return f"{text}{sep}{unit}"


def summary_markdown(bundle: Bundle, pred: Prediction, k: int, what: str) -> str:
    """The headline: value ± uncertainty, and what they mean; how familiar the input is (flagged when unlike
    the gallery, `Prediction.unfamiliar`)."""
    unit = bundle.unit
    head = f"## {fmt_value(pred.value, unit)} ± {fmt_value(pred.uncertainty or 0.0, unit)}"
    windows = f", averaged over its {pred.windows} windows of {bundle.spec.window_s:g} s" if pred.windows else ""
    calibrated = "uncertainty_scale" in bundle.knn  # bundles exported before the calibration serve the plain spread
    if bundle.residual:  # kNN of a linear head's residuals (the manifest's knn.residual)
        how = (f"a linear trend over the model's embedding space, corrected by the similarity-weighted mean of "
               f"how far the {k} gallery {what} nearest to it lie off that trend; ± is the weighted spread of "
               "those offsets")
    else:
        how = (f"the similarity-weighted mean of the {k} gallery {what} nearest to it in the model's embedding "
               "space; ± is their weighted spread")
    text = (f"{head}\n\nPredicted {bundle.target_name}{windows}: {how}"
            + (", scaled so that about two in three validation errors fell inside it." if calibrated else "."))
    if pred.familiarity is None:  # a bundle exported before the familiarity table
        return text
    pct = f"{pred.familiarity:.1%}" if pred.familiarity < 0.1 else f"{pred.familiarity:.0%}"
    closeness = (f"**Familiarity {pct}**: it is nearer to the gallery than {pct} of the gallery's own {what} "
                 "are to the rest of it (nearest neighbours in the embedding space).")
    if pred.unfamiliar:
        q = bundle.familiarity.threshold_quantile if bundle.familiarity is not None else 0.0
        return (f"{text}\n\n⚠️ **Unfamiliar input: unlike the gallery.** {closeness} Below {q:.0%} an input is "
                f"flagged: the model may not have seen its like, so treat the value above as an extrapolation "
                f"(its ± is at least the spread of the gallery's own values).")
    return f"{text}\n\n{closeness}"


def prediction_json(bundle: Bundle, pred: Prediction, k: int, source: str) -> dict[str, Any]:
    """The prediction as data (for API clients): the library's Prediction, named by the upload
    (without its embedding: D numbers only the map needs)."""
    d = pred.to_dict()
    d.pop("embedding", None)
    d.update(source=source, target=bundle.target_name, unit=bundle.unit, k=k, bundle=bundle.name)
    return d


def image_neighbours(bundle: Bundle, pred: Prediction) -> list[tuple[np.ndarray, str]]:
    """(thumbnail, caption) per neighbour; a grey tile where the bundle has no thumbnails."""
    out = []
    for nb in pred.neighbours:
        if bundle.thumbnails is not None:
            t = bundle.thumbnails[nb.index]
            reps = max(1, THUMB_PX // t.shape[0])
            tile = np.repeat(np.repeat(t, reps, axis=0), reps, axis=1)
        else:
            tile = np.full((THUMB_PX, THUMB_PX, 3), 200, np.uint8)
        out.append((tile, f"{fmt_value(float(nb.label), bundle.unit)} · {nb.similarity:.2f}"))
    return out


def eeg_neighbours(bundle: Bundle, pred: Prediction) -> list[list[Any]]:
    """Rows [rank, recording, target, similarity] of the neighbouring gallery recordings."""
    return [[i + 1, nb.id or f"item {nb.index}", round(float(nb.label), 2), round(nb.similarity, 4)]
            for i, nb in enumerate(pred.neighbours)]


def banner_markdown(bundle: Bundle, tab: str, path: Path, what: str) -> str:
    """Which bundle serves this tab, and for the shipped defaults what they are not."""
    metrics = (bundle.manifest.get("training") or {}).get("test_metrics") or {}
    mae = metrics.get("test_served_mae", metrics.get("test_rec_knn_mae", metrics.get("test_knn_mae")))
    quality = f" · test MAE {fmt_value(float(mae), bundle.unit)}" if isinstance(mae, (int, float)) else ""
    lines = [(f"**Model:** {bundle.name} · `{path}` · gallery of {bundle.index.ntotal} {what} · "
              f"k = {bundle.default_k}{quality}")]
    if bundle.is_demo:
        lines.append(f"⚠️ **A demonstration model trained on synthetic data.** It has never seen a real "
                     f"{bundle.plugin.noun}: its predictions on real inputs "
                     f"mean nothing. Serve your own with `supemb demo --bundle {tab}=path/to/bundle`.")
    return "\n\n".join(lines)


def face_view(image: Any, face: dict | None, margin: float, height: int = 240) -> np.ndarray:
    """The uploaded photo with the detected face's box drawn, beside the square crop the model
    embedded (without a face: the photo alone, as it was embedded). uint8 [height, W, 3]."""
    from PIL import Image, ImageDraw

    from supemb.preprocess.faces import Face, crop

    photo = image.convert("RGB")
    scale = height / photo.height
    shown = photo.resize((max(1, round(photo.width * scale)), height))
    if face is None:
        return np.asarray(shown)
    x0, y0, x1, y1 = (v * scale for v in face["box"])
    ImageDraw.Draw(shown).rectangle((x0, y0, x1, y1), outline=(255, 40, 40), width=3)
    cut = crop(photo, Face(tuple(face["box"]), face["score"]), margin).resize((height, height))
    canvas = Image.new("RGB", (shown.width + 8 + height, height), (255, 255, 255))
    canvas.paste(shown, (0, 0))
    canvas.paste(cut, (shown.width + 8, 0))
    return np.asarray(canvas)
