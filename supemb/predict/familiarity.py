"""How familiar an input is compared with a bundle's gallery: the reference table and the percentile.

The statistic is an input's nearest-neighbour similarity to the gallery, in
the bundle's metric (cosine similarity, or -Euclidean distance for "l2";
`GalleryIndex.search`). Its reference distribution comes from the gallery
itself, leave-one-out: for each gallery item, the similarity of its nearest
*other* item. For a grouped modality (EEG: several rows = windows per
recording) the whole recording is left out (each window's nearest window of
another recording) and a recording's statistic is the median over its
windows; a query recording gets the same median over its windows' nearest
neighbours.

The manifest keeps a compact quantile table of that distribution and a
threshold (the similarity at `threshold_quantile`); an input's familiarity
is the percentile (0..1) of its statistic within the table, and it is
"unfamiliar" when its statistic is below the threshold. numpy and the FAISS
index only: serving imports no training code.

    ref = reference_table(index, vectors, groups)     # -> manifest["familiarity"]
    fam = Familiarity.from_manifest(ref, "manifest.json")
    scores, flags = fam.score(query_statistic(sim[:, 0], owner, n))
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from supemb.errors import UserError

if TYPE_CHECKING:  # FAISS loads only when an index is used
    from supemb.index.gallery import GalleryIndex

STATISTIC = "nearest_neighbour_similarity"
N_QUANTILES = 101  # the table: the 0th, 1st, ..., 100th percentile
# Below the gallery's own 5th percentile is "unfamiliar": chosen on the default bundles (README, docs/DESIGN.md).
# Inputs of another kind land just inside the gallery's low tail (median percentile 0.6-1.3% for faces sent
# to the webcam bundle and back), so a 1% cut misses a third to two thirds of them; 5% flags >= 95% of them
# and warns on about 5% of inputs like the gallery's (measured 3-6% for images, ~8% for EEG).
THRESHOLD_QUANTILE = 0.05
MAX_UNITS = 20_000  # larger galleries: a seeded sample of this many items/recordings is left out in turn
_CHUNK = 4096  # queries per search call


def index_vectors(path: str | Path) -> np.ndarray:
    """The vectors a FAISS index file holds, float32 [N, D] (flat, IVF or HNSW), read from
    a fresh copy so that a serving index stays untouched (IVF needs a direct map built)."""
    import faiss

    try:
        index = faiss.read_index(str(path))
    except RuntimeError as err:
        raise UserError(f"{path}: not a FAISS index or damaged: {str(err).strip().splitlines()[-1][:200]}") from None
    if hasattr(index, "invlists"):
        faiss.extract_index_ivf(index).make_direct_map()
    return np.asarray(index.reconstruct_n(0, int(index.ntotal)), np.float32)


def leave_out_similarities(index: GalleryIndex, vectors: np.ndarray, groups: np.ndarray | None = None,
                           units: np.ndarray | None = None) -> np.ndarray:
    """Each unit's leave-one-out nearest-neighbour similarity, float64 [U].

    vectors: the gallery [N, D] as `index` holds it. groups: [N] the unit
    (recording) of each row, or None (every row its own unit). units: the
    unit ids to compute (default all, in increasing order). A row's value is
    the similarity of its most similar row of another unit; a unit's is the
    median over its rows. Needs at least two units.
    """
    n = len(vectors)
    groups = np.arange(n) if groups is None else np.asarray(groups, np.int64)
    if len(groups) != n:
        raise UserError(f"familiarity: {len(groups)} group ids for {n} gallery rows")
    ids, sizes = np.unique(groups, return_counts=True)
    if len(ids) < 2:
        raise UserError("familiarity: a gallery of one item (or one recording) has no leave-one-out neighbour")
    units = ids if units is None else np.asarray(units, np.int64)
    rows = np.flatnonzero(np.isin(groups, units))
    k = min(int(sizes.max()) + 1, index.ntotal)  # at most size-1 other rows of the own unit come first
    best = np.empty(len(rows), np.float64)
    for start in range(0, len(rows), _CHUNK):
        r = rows[start:start + _CHUNK]
        sim, idx = index.search(vectors[r], k)
        other = groups[idx] != groups[r][:, None]
        first = other.argmax(axis=1)  # exact search: every row has one, as k exceeds its unit's size
        best[start:start + len(r)] = sim[np.arange(len(r)), first]
    return _median_by(best, groups[rows], units)


def query_statistic(top1: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Per input, the median over its rows of their nearest-neighbour similarity.

    top1: [R] each row's best similarity (`search(...)[0][:, 0]`); owner: [R]
    the input each row belongs to. Returns float64 [n], NaN for an input with
    no rows.
    """
    return _median_by(np.asarray(top1, np.float64), np.asarray(owner, np.int64), np.arange(n))


def _median_by(values: np.ndarray, keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Median of `values` [R] per key in `wanted` [U] (NaN where a key has none)."""
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], values[order]
    lo = np.searchsorted(keys, wanted, "left")
    hi = np.searchsorted(keys, wanted, "right")
    return np.array([np.median(values[a:b]) if b > a else np.nan for a, b in zip(lo, hi)], np.float64)


def quantile_table(values: np.ndarray, n: int = N_QUANTILES) -> np.ndarray:
    """The n quantiles of `values` at 0, 1/(n-1), ..., 1 (linear interpolation), float64 [n]."""
    return np.quantile(np.asarray(values, np.float64), np.linspace(0.0, 1.0, n))


def percentile(x: np.ndarray | float, table: np.ndarray) -> np.ndarray:
    """Where `x` falls in the distribution whose quantile table (at evenly spaced
    levels 0..1) is `table` [n]: 0 below its minimum, 1 above its maximum, linear
    between neighbouring quantiles; a value equal to a run of tied quantiles gets
    the middle of their levels. Returns float64 of x's shape."""
    table = np.asarray(table, np.float64)
    x = np.asarray(x, np.float64)
    levels = np.linspace(0.0, 1.0, len(table))
    lo = np.searchsorted(table, x, "left")
    hi = np.searchsorted(table, x, "right")
    tied = hi > lo
    mid = (lo + hi - 1) / 2 / (len(table) - 1)
    i = np.clip(lo, 1, len(table) - 1)
    a, b = table[i - 1], table[i]
    frac = np.clip((x - a) / np.where(b > a, b - a, 1.0), 0.0, 1.0)
    between = levels[i - 1] + frac * (levels[i] - levels[i - 1])
    out = np.where(tied, mid, np.where(lo == 0, 0.0, np.where(lo >= len(table), 1.0, between)))
    return np.where(np.isnan(x), np.nan, out)


def _sig(x: float) -> float:
    return float(f"{x:.7g}")  # compact JSON; float32 similarities carry ~7 digits anyway


def reference_table(index: GalleryIndex, vectors: np.ndarray, groups: np.ndarray | None = None, *,
                    threshold_quantile: float = THRESHOLD_QUANTILE, n_quantiles: int = N_QUANTILES,
                    max_units: int = MAX_UNITS, seed: int = 0) -> dict[str, Any] | None:
    """The manifest's "familiarity" object for the gallery `vectors` [N, D] held
    by `index` (`groups` [N]: each row's recording, for a grouped modality), or
    None for a gallery of fewer than two items or recordings (nothing to leave
    one out against). Past `max_units` units a seeded sample of them is left
    out in turn, each searched against the whole gallery."""
    g = np.arange(len(vectors)) if groups is None else np.asarray(groups, np.int64)
    ids = np.unique(g)
    if len(ids) < 2:
        return None
    units = ids if len(ids) <= max_units else np.sort(np.random.default_rng(seed).choice(ids, max_units, False))
    values = leave_out_similarities(index, vectors, g, units)
    return {
        "statistic": STATISTIC,
        "k": 1,
        "metric": index.metric,
        "leave_out": "item" if groups is None else "recording",
        "per_recording": None if groups is None else "median over its windows",
        "units": int(len(units)),
        "of_units": int(len(ids)),
        "quantiles": [_sig(v) for v in quantile_table(values, n_quantiles)],
        "threshold_quantile": float(threshold_quantile),
        "threshold": _sig(float(np.quantile(values, threshold_quantile))),
    }


def bundle_reference(root: str | Path, manifest: dict[str, Any], **options: Any) -> dict[str, Any] | None:
    """`reference_table` of an existing bundle directory from its own files: the
    vectors read back from index.faiss, the recordings from gallery.json."""
    from supemb.index.gallery import GalleryIndex

    root = Path(root)
    index = GalleryIndex.load(root / "index.faiss", params=manifest.get("index"), device="cpu",
                              metric=manifest.get("metric", "cosine"))
    groups = json.loads((root / "gallery.json").read_text()).get("groups")
    return reference_table(index, index_vectors(root / "index.faiss"), groups, **options)


@dataclass(frozen=True)
class Familiarity:
    """A manifest's familiarity table, checked: `quantiles` [n] non-decreasing, `threshold`."""

    quantiles: np.ndarray
    threshold: float
    threshold_quantile: float

    @classmethod
    def from_manifest(cls, rec: Any, where: str) -> Familiarity | None:
        """The table in a manifest's "familiarity" (None: absent); a malformed one raises naming `where`."""
        if rec is None:
            return None
        try:
            q = np.asarray(rec["quantiles"], np.float64)
            threshold = float(rec["threshold"])
            tq = float(rec.get("threshold_quantile", math.nan))
        except (TypeError, KeyError, ValueError) as err:
            raise UserError(f"{where}: \"familiarity\" needs \"quantiles\" and \"threshold\" numbers ({err})") from None
        if q.ndim != 1 or len(q) < 2 or not np.isfinite(q).all() or (np.diff(q) < 0).any() \
                or not math.isfinite(threshold):
            raise UserError(f"{where}: \"familiarity\" quantiles must be >= 2 finite non-decreasing numbers "
                            "and its threshold finite; the bundle is damaged")
        return cls(q, threshold, tq)

    def score(self, stat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Statistics [n] -> (familiarity [n] in 0..1, unfamiliar [n] bool: statistic < threshold)."""
        stat = np.asarray(stat, np.float64)
        return percentile(stat, self.quantiles), stat < self.threshold
