r"""The gallery's nearest-neighbour index: FAISS over a bundle's embeddings.

Two metrics, the geometry the embedding's training loss shaped (a bundle's
manifest says which):

- ``"cosine"`` (the default): the encoder outputs L2-normalised vectors, and
  for unit vectors ``cos(q, x) = <q, x> / (|q| |x|) = <q, x>``, so the index
  uses the inner-product metric (``IndexFlatIP``, ``METRIC_INNER_PRODUCT``)
  and a search returns cosine similarities in [-1, 1].
- ``"l2"``: the encoder outputs raw (not normalised) vectors compared by
  Euclidean distance: ``IndexFlatL2`` / ``METRIC_L2``. FAISS returns squared
  distances ``d``; a search converts them to the similarity
  ``s = -sqrt(max(d, 0)) = -||q - x||_2`` (negated, so larger is more similar,
  as in Rank-N-Contrast's own similarity), in (-inf, 0].

Either way a search returns similarities, largest first. The index does not
normalise: it stores and compares what it is given (vectors that are not
unit length give plain inner products under "cosine").

Which index when:

- ``"flat"`` (``IndexFlatIP`` / ``IndexFlatL2``, the default): exact. A search is one matrix
  product with the gallery plus a top-k selection, O(N d) per query; on two CPU
  cores that is a few milliseconds per query at 1M x 128. Fine for every
  gallery this project builds from a labelled training set.
- ``"ivf"`` (``IndexIVFFlat``): k-means cuts the gallery into ``nlist`` cells;
  a query scans only the ``nprobe`` cells whose centroids are nearest, about
  ``nprobe / nlist`` of the gallery. Defaults: ``nlist ~ 4 sqrt(N)`` (at most
  N / 39, so k-means has its ~39 points per centroid), ``nprobe =
  max(8, nlist // 16)``: about 1/16 of the gallery, which keeps recall@10 >= 0.95
  on clustered embeddings (benchmarks/runtime.py measures it).
  Training samples at most 64 points per centroid (seeded).
- ``"hnsw"`` (``IndexHNSWFlat``): a navigable small-world graph with ``M``
  links per node; ``efSearch`` (default 128) candidates are kept while
  walking it. Fastest per query and no training, but the build is slow
  (``efConstruction``) and it takes ~``2 M`` extra ints per vector.

Past about a million items an approximate index pays off: IVF and HNSW trade
a few percent of recall@10 for an order of magnitude of speed. Raising
``nprobe`` / ``efSearch`` buys recall back at the cost of speed; both can be
changed after building (`set_search_params`) and travel in `params()`.

Results never contain FAISS's ``-1`` padding: k is clamped to the gallery size,
and a row for which an approximate index found fewer than k neighbours (too
few items in the probed cells) is searched again exhaustively. Equal
similarities come in increasing index order.

Threads: `search` may be called from many threads at once. It relies on FAISS
CPU search being ``const`` (no shared mutable state; each call allocates its
own heaps and visited tables), and it takes the read side of a readers/writer
lock whose write side `add` and `set_search_params` take, so the gallery never
changes under a running search. GPU indexes share one ``StandardGpuResources``,
which is not thread-safe, so on GPU searches are serialised. FAISS also runs
OpenMP inside each call; with many Python threads each call gets its own team.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

from supemb.errors import UserError
from supemb.index.checks import as_vectors, positive_int
from supemb.index.locks import ReadWriteLock

IndexKind = Literal["flat", "ivf", "hnsw"]
KINDS: tuple[str, ...] = ("flat", "ivf", "hnsw")
DEVICES: tuple[str, ...] = ("cpu", "cuda", "auto")
Metric = Literal["cosine", "l2"]
METRICS: tuple[str, ...] = ("cosine", "l2")
_FAISS_METRIC = {"cosine": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
_FLAT = {"cosine": faiss.IndexFlatIP, "l2": faiss.IndexFlatL2}

MIN_POINTS_PER_CENTROID = 39  # below this FAISS's k-means warns and centroids are poor
MAX_POINTS_PER_CENTROID = 64  # training sample size cap, per centroid
DEFAULT_EF_SEARCH = 128


def default_nlist(n: int) -> int:
    """IVF cells for a gallery of n: ~4 sqrt(n), clamped to [1, n // 39]."""
    return max(1, min(round(4 * math.sqrt(n)), n // MIN_POINTS_PER_CENTROID))


def default_nprobe(nlist: int) -> int:
    """Cells probed per query: 1/16 of them, at least 8 (never more than nlist)."""
    return min(nlist, max(8, nlist // 16))


def gpu_available() -> bool:
    """Whether this FAISS build has GPU support and sees a GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _check_metric(metric: Any) -> str:
    if metric not in METRICS:
        raise UserError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    return metric


def _metric_of(index: faiss.Index) -> str | None:
    """"cosine" for an inner-product index, "l2" for an L2 one, None for any other metric."""
    for name, code in _FAISS_METRIC.items():
        if index.metric_type == code:
            return name
    return None


def _similarities(dist: np.ndarray, metric: str) -> np.ndarray:
    """FAISS search scores -> similarities: inner products as they are; squared
    L2 distances d -> -sqrt(max(d, 0)) (max: rounding can make d slightly negative)."""
    if metric == "cosine":
        return dist
    return -np.sqrt(np.maximum(dist, 0.0))


def _kind_of(index: faiss.Index) -> str | None:
    if isinstance(index, faiss.IndexHNSWFlat):
        return "hnsw"
    if isinstance(index, faiss.IndexIVFFlat):
        return "ivf"
    if isinstance(index, faiss.IndexFlat):
        return "flat"
    return None


class GalleryIndex:
    """kNN over a gallery of float32 embeddings [N, dim]: cosine (inner product
    of L2-normalised vectors) or l2 (negated Euclidean distance), `metric`.

    Build with `GalleryIndex.build` or `GalleryIndex.load`, not the
    constructor. `search` returns (similarities [Q, k] float32, indices
    [Q, k] int64), each row by decreasing similarity.
    """

    def __init__(self, index: faiss.Index, kind: str, *, hnsw_m: int | None = None, device: str = "cpu") -> None:
        self.kind = kind
        metric = _metric_of(index)
        if metric is None:
            raise UserError(f"a FAISS index with metric type {index.metric_type}; supemb uses inner product "
                            "(cosine) or L2")
        self.metric: str = metric
        self.dim = int(index.d)
        self._hnsw_m = hnsw_m
        self._lock = ReadWriteLock()
        self._gpu_res = None
        self._index = index
        self.on_gpu = False
        if _wants_gpu(device) and kind != "hnsw":  # HNSW has no GPU version: stays on CPU
            self._gpu_res = faiss.StandardGpuResources()
            self._index = faiss.index_cpu_to_gpu(self._gpu_res, 0, index)
            self.on_gpu = True

    # ------------------------------------------------------------- building

    @classmethod
    def build(
        cls,
        emb: np.ndarray,
        kind: IndexKind = "flat",
        *,
        nlist: int | None = None,
        nprobe: int | None = None,
        hnsw_m: int = 32,
        ef_search: int | None = None,
        ef_construction: int = 200,
        seed: int = 0,
        device: str = "cpu",
        metric: Metric = "cosine",
    ) -> GalleryIndex:
        """Index the gallery `emb` [N, dim] (N >= 1).

        metric: "cosine" (inner product; give L2-normalised vectors) or "l2"
        (Euclidean distance of the vectors as given).
        ivf: `nlist` cells (default `default_nlist(N)`, at most N), `nprobe`
        probed per query (default `default_nprobe(nlist)`); k-means on a
        seeded sample of at most 64 * nlist rows. hnsw: `hnsw_m` links per
        node, `ef_construction` and `ef_search` (default 128) beam widths.
        device: "cpu", "cuda" (GPU FAISS required) or "auto" (GPU if any).
        """
        if kind not in KINDS:
            raise UserError(f"index kind must be one of {', '.join(KINDS)}, got {kind!r}")
        _check_device(device)
        _check_metric(metric)
        faiss_metric = _FAISS_METRIC[metric]
        emb = as_vectors(emb, "gallery embeddings")
        n, dim = emb.shape
        if n == 0:
            raise UserError("cannot build an index from an empty gallery (0 embeddings)")
        if kind != "ivf" and (nlist is not None or nprobe is not None):
            raise UserError(f"nlist/nprobe apply to an ivf index, not {kind}")
        if kind != "hnsw" and ef_search is not None:
            raise UserError(f"ef_search applies to an hnsw index, not {kind}")

        if kind == "flat":
            index = _FLAT[metric](dim)
            index.add(emb)
            return cls(index, kind, device=device)

        if kind == "ivf":
            nlist = default_nlist(n) if nlist is None else positive_int(nlist, "nlist")
            if nlist > n:
                raise UserError(f"nlist ({nlist}) cannot exceed the gallery size ({n})")
            nprobe = default_nprobe(nlist) if nprobe is None else min(positive_int(nprobe, "nprobe"), nlist)
            index = faiss.IndexIVFFlat(_FLAT[metric](dim), dim, nlist, faiss_metric)
            index.cp.seed = seed
            index.cp.max_points_per_centroid = MAX_POINTS_PER_CENTROID
            index.cp.min_points_per_centroid = 1  # small galleries: nlist is already clamped; no warning
            sample = emb
            if n > MAX_POINTS_PER_CENTROID * nlist:
                pick = np.random.default_rng(seed).choice(n, MAX_POINTS_PER_CENTROID * nlist, replace=False)
                sample = emb[np.sort(pick)]
            index.train(sample)
            index.add(emb)
            index.nprobe = nprobe
            return cls(index, kind, device=device)

        hnsw_m = positive_int(hnsw_m, "hnsw_m")
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss_metric)
        index.hnsw.efConstruction = positive_int(ef_construction, "ef_construction")
        index.hnsw.efSearch = DEFAULT_EF_SEARCH if ef_search is None else positive_int(ef_search, "ef_search")
        # HNSW draws node levels from its own RNG: seed it for a reproducible graph.
        index.hnsw.rng = faiss.RandomGenerator(seed)
        index.add(emb)
        return cls(index, kind, hnsw_m=hnsw_m, device=device)

    def add(self, emb: np.ndarray) -> None:
        """Append `emb` [M, dim] to the gallery; they get indices ntotal .. ntotal+M-1."""
        emb = as_vectors(emb, "embeddings to add", self.dim)
        if len(emb) == 0:
            return
        with self._lock.write():
            self._index.add(emb)

    def set_search_params(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change the recall/speed knob of an ivf (nprobe) or hnsw (ef_search) index."""
        if nprobe is not None and self.kind != "ivf":
            raise UserError(f"nprobe applies to an ivf index, not {self.kind}")
        if ef_search is not None and self.kind != "hnsw":
            raise UserError(f"ef_search applies to an hnsw index, not {self.kind}")
        with self._lock.write():
            if nprobe is not None:
                self._index.nprobe = min(positive_int(nprobe, "nprobe"), self._index.nlist)
            if ef_search is not None:
                self._index.hnsw.efSearch = positive_int(ef_search, "ef_search")

    # ------------------------------------------------------------ searching

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar gallery items of each query.

        queries: [Q, dim]. Returns (sim [Q, k'] float32, idx [Q, k'] int64)
        with k' = min(k, ntotal), rows by decreasing similarity, equal
        similarities by increasing index. sim: inner products ("cosine") or
        -||q - x||_2 ("l2").
        """
        k = positive_int(k, "k")
        queries = as_vectors(queries, "queries", self.dim)
        # GPU resources are not thread-safe: one search at a time there.
        with self._lock.write() if self.on_gpu else self._lock.read():
            k = min(k, self.ntotal)
            if len(queries) == 0:
                return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
            sim, idx = self._index.search(queries, k)
            short = np.flatnonzero((idx < 0).any(axis=1))
            if len(short):
                sim[short], idx[short] = self._exhaustive(queries[short], k)
        sim = _similarities(sim, self.metric)
        order = np.lexsort((idx, -sim), axis=-1)
        return np.take_along_axis(sim, order, -1), np.take_along_axis(idx, order, -1)

    def _exhaustive(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact search for rows an approximate index came back short on."""
        if self.kind == "ivf":
            return self._index.search(queries, k, params=faiss.SearchParametersIVF(nprobe=self._index.nlist))
        if self.kind == "hnsw":  # the graph's flat storage holds every vector
            return faiss.downcast_index(self._index.storage).search(queries, k)
        raise AssertionError(f"an exact {self.kind} index returned fewer than k = {k} results")

    # -------------------------------------------------------------- on disk

    def params(self) -> dict[str, Any]:
        """JSON-able settings, to be given back to `load` (None where n/a)."""
        index = self._index
        return {
            "kind": self.kind,
            "metric": self.metric,
            "dim": self.dim,
            "ntotal": self.ntotal,
            "nlist": int(index.nlist) if self.kind == "ivf" else None,
            "nprobe": int(index.nprobe) if self.kind == "ivf" else None,
            "hnsw_m": self._hnsw_m if self.kind == "hnsw" else None,
            "ef_search": int(index.hnsw.efSearch) if self.kind == "hnsw" else None,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the (CPU) index to `path` atomically: a temp file, then a rename."""
        path = Path(path)
        with self._lock.read():
            cpu = faiss.index_gpu_to_cpu(self._index) if self.on_gpu else self._index
            # A name of our own (not mkstemp) so the file gets the usual umask permissions.
            tmp = str(path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp"))
            try:
                faiss.write_index(cpu, tmp)
                os.replace(tmp, path)
            except BaseException as err:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                if isinstance(err, (RuntimeError, OSError)):
                    raise UserError(f"{path}: could not write the index: {err}") from None
                raise

    @classmethod
    def load(cls, path: str | os.PathLike, params: dict | None = None, device: str = "auto",
             metric: Metric | None = None) -> GalleryIndex:
        """Read an index written by `save`; `params` (from `params()`) restores
        nprobe / ef_search and is checked against the file (kind, metric, dim,
        ntotal). The metric comes from the file (FAISS's metric type: inner
        product = "cosine", L2 = "l2"); `metric`, when given (a bundle's
        manifest), must match it."""
        _check_device(device)
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such index file")
        try:
            index = faiss.read_index(str(path))  # already the concrete type (IndexIVFFlat, ...)
        except RuntimeError as err:
            reason = str(err).strip().splitlines()[-1][:200]
            raise UserError(f"{path}: not a FAISS index or damaged: {reason}") from None
        kind = _kind_of(index)
        if kind is None:
            raise UserError(f"{path}: a {type(index).__name__} index; supemb reads flat, ivf and hnsw indexes")
        actual_metric = _metric_of(index)
        if actual_metric is None:
            raise UserError(f"{path}: the index uses neither the inner-product metric (cosine) nor L2 "
                            f"(FAISS metric type {index.metric_type})")
        if metric is not None and _check_metric(metric) != actual_metric:
            raise UserError(f"{path}: the index file has metric {actual_metric!r} but the bundle says "
                            f"{metric!r}; the bundle's files do not belong together")
        params = dict(params or {})
        for key, actual in (("kind", kind), ("metric", actual_metric), ("dim", int(index.d)),
                            ("ntotal", int(index.ntotal))):
            expected = params.get(key)
            if expected is not None and expected != actual:
                raise UserError(f"{path}: the index file has {key} {actual!r} but its parameters say {expected!r}")
        if kind == "ivf" and params.get("nprobe") is not None:
            index.nprobe = min(positive_int(params["nprobe"], "nprobe"), index.nlist)
        if kind == "hnsw" and params.get("ef_search") is not None:
            index.hnsw.efSearch = positive_int(params["ef_search"], "ef_search")
        hnsw_m = params.get("hnsw_m")
        if kind == "hnsw" and hnsw_m is None:  # level 0 holds 2 M links per node
            hnsw_m = int(index.hnsw.nb_neighbors(0)) // 2
        return cls(index, kind, hnsw_m=hnsw_m, device=device)

    def vectors(self) -> np.ndarray | None:
        """The vectors this index holds, float32 [N, dim], where it can give them unchanged (a
        flat or HNSW index on the CPU); None otherwise (IVF needs a direct map built, a GPU copy
        stays as it is): read them from the file then (`supemb.predict.familiarity.index_vectors`)."""
        if self.on_gpu or self.kind == "ivf":
            return None
        return np.asarray(self._index.reconstruct_n(0, self.ntotal), np.float32)

    def __repr__(self) -> str:
        where = "gpu" if self.on_gpu else "cpu"
        return (f"GalleryIndex(kind={self.kind!r}, metric={self.metric!r}, dim={self.dim}, "
                f"ntotal={self.ntotal}, {where})")


def _check_device(device: str) -> None:
    if device not in DEVICES:
        raise UserError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cuda" and not gpu_available():
        raise UserError("device 'cuda' asked for, but this FAISS has no GPU support or sees no GPU "
                        "(install faiss-gpu, or use device 'cpu' / 'auto')")


def _wants_gpu(device: str) -> bool:
    return device == "cuda" or (device == "auto" and gpu_available())
