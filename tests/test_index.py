"""GalleryIndex: exact search against NumPy, recall of the approximate
indexes, persistence, input checks and concurrent searches."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from benchmark_module import load_benchmark

from supemb.errors import UserError
from supemb.index.gallery import (
    GalleryIndex,
    default_nlist,
    default_nprobe,
    gpu_available,
)

APPROX_BUILD = {"ivf": {}, "hnsw": {"hnsw_m": 16, "ef_construction": 64}}  # small M: a quick build
LOW_SETTING = {"ivf": {"nprobe": 1}, "hnsw": {"ef_search": 10}}


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def random_unit(n: int, d: int, seed: int) -> np.ndarray:
    return unit(np.random.default_rng(seed).standard_normal((n, d)))


def clustered(n: int, d: int, n_clusters: int, spread: float, seed: int) -> np.ndarray:
    """Unit vectors around random unit centres: centre + spread * N(0, I), normalised."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((n_clusters, d)))
    return unit(centres[rng.integers(0, n_clusters, n)] + spread * rng.standard_normal((n, d)))


def brute_force(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by float64 inner product; ties by increasing index (stable sort)."""
    sim = queries.astype(np.float64) @ gallery.astype(np.float64).T
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sim, idx, 1), idx


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)]))


@pytest.fixture(scope="module")
def clustered_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """20k x 64 gallery, 500 held-out queries, and their exact top-10 indices."""
    x = clustered(20_500, 64, n_clusters=200, spread=0.15, seed=0)
    gallery, queries = x[:20_000], x[20_000:]
    return gallery, queries, brute_force(gallery, queries, 10)[1]


# ---------------------------------------------------------------- exact search

def test_flat_equals_numpy_brute_force() -> None:
    gallery, queries = random_unit(3000, 32, seed=1), random_unit(60, 32, seed=2)
    sim, idx = GalleryIndex.build(gallery).search(queries, 10)
    ref_sim, ref_idx = brute_force(gallery, queries, 10)
    assert sim.dtype == np.float32 and idx.dtype == np.int64 and sim.shape == idx.shape == (60, 10)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sim, ref_sim, atol=1e-5)
    assert np.all(np.diff(sim, axis=1) <= 0)


@pytest.mark.parametrize("n_queries", [1, 40])  # FAISS: direct loops below 20 queries, BLAS above
def test_equal_similarities_come_in_index_order(n_queries: int) -> None:
    gallery = random_unit(300, 16, seed=3)
    copies = np.array([7, 41, 42, 99, 150, 151, 152, 200, 201, 260, 261, 299])
    gallery[copies] = gallery[5]  # 13 identical items: 5 and its copies
    sim, idx = GalleryIndex.build(gallery).search(np.repeat(gallery[5:6], n_queries, 0), 10)
    tied = {5, *copies.tolist()}
    for row_sim, row_idx in zip(sim, idx):
        assert set(row_idx) <= tied
        assert np.all(np.diff(row_idx) > 0), row_idx
        np.testing.assert_allclose(row_sim, 1.0, atol=1e-6)


def test_k_larger_than_the_gallery_is_clamped() -> None:
    gallery = random_unit(5, 8, seed=4)
    for kind in ("flat", "ivf", "hnsw"):
        sim, idx = GalleryIndex.build(gallery, kind).search(random_unit(3, 8, seed=5), 50)
        assert idx.shape == sim.shape == (3, 5), kind
        assert all(sorted(row) == [0, 1, 2, 3, 4] for row in idx.tolist()), kind


def test_empty_query_batch() -> None:
    sim, idx = GalleryIndex.build(random_unit(20, 8, seed=6)).search(np.zeros((0, 8)), 3)
    assert sim.shape == idx.shape == (0, 3)


# ---------------------------------------------------------- approximate search

@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_recall(kind: str, clustered_data) -> None:
    gallery, queries, exact = clustered_data
    index = GalleryIndex.build(gallery, kind, **APPROX_BUILD[kind])
    sim, idx = index.search(queries, 10)
    assert recall_at_k(idx, exact) >= 0.95
    # Similarities are the inner products of the items found (cosine, not L2), best first.
    np.testing.assert_allclose(sim, np.einsum("qd,qkd->qk", queries, gallery[idx]), atol=1e-5)
    assert np.all(np.diff(sim, axis=1) <= 0)
    # The recall measure can tell a starved search from a good one.
    index.set_search_params(**LOW_SETTING[kind])
    assert recall_at_k(index.search(queries, 10)[1], exact) < 0.95


def test_ivf_defaults() -> None:
    assert default_nlist(1_000_000) == 4000 and default_nprobe(4000) == 250
    assert default_nlist(20_000) == 20_000 // 39  # 566 clamped: 39 points per centroid
    assert default_nlist(10) == 1 and default_nprobe(1) == 1 and default_nprobe(64) == 8
    params = GalleryIndex.build(random_unit(4000, 8, seed=7), "ivf").params()
    assert params["nlist"] == default_nlist(4000) and params["nprobe"] == default_nprobe(params["nlist"])


def test_ivf_rows_short_of_k_are_searched_exhaustively() -> None:
    # ~4 items a cell and one cell probed: FAISS alone returns -1 padding for k = 20.
    gallery, queries = random_unit(200, 8, seed=8), random_unit(30, 8, seed=9)
    sim, idx = GalleryIndex.build(gallery, "ivf", nlist=50, nprobe=1).search(queries, 20)
    assert idx.min() >= 0
    assert np.all(np.diff(sim, axis=1) <= 0)
    np.testing.assert_allclose(sim, np.einsum("qd,qkd->qk", queries, gallery[idx]), atol=1e-5)


def test_builds_are_reproducible_with_a_seed(clustered_data) -> None:
    gallery, queries, _ = clustered_data
    a, b, c = (GalleryIndex.build(gallery[:5000], "ivf", nprobe=2, seed=s).search(queries, 10) for s in (3, 3, 4))
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])  # the seed picks the k-means sample and start


# ----------------------------------------------------------- add, save, load

@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_add_extends_the_gallery(kind: str) -> None:
    gallery = random_unit(1500, 16, seed=10)
    index = GalleryIndex.build(gallery[:1000], kind)
    index.add(gallery[1000:])
    assert index.ntotal == 1500 and index.params()["ntotal"] == 1500
    sim, idx = index.search(gallery[1000:1100], 1)  # each added item finds itself
    np.testing.assert_array_equal(idx[:, 0], np.arange(1000, 1100))
    np.testing.assert_allclose(sim[:, 0], 1.0, atol=1e-5)
    if kind == "flat":
        full = GalleryIndex.build(gallery).search(gallery[:50], 10)
        np.testing.assert_array_equal(index.search(gallery[:50], 10)[1], full[1])


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_vectors_are_what_the_file_holds_or_none_for_ivf(kind: str, tmp_path: Path) -> None:
    """A bundle's residual head needs the gallery's vectors: a flat or HNSW index gives them
    itself, exactly what the file holds; IVF says None (read the file instead)."""
    from supemb.predict.familiarity import index_vectors

    gallery = random_unit(300, 8, seed=21)
    GalleryIndex.build(gallery, kind).save(tmp_path / "i.faiss")
    loaded = GalleryIndex.load(tmp_path / "i.faiss", device="cpu")
    got = loaded.vectors()
    if kind == "ivf":
        assert got is None
    else:
        np.testing.assert_array_equal(got, index_vectors(tmp_path / "i.faiss"))
        np.testing.assert_allclose(got, gallery, atol=1e-6)
    assert loaded.search(gallery[:5], 1)[1][:, 0].tolist() == [0, 1, 2, 3, 4]  # still serves as before


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_round_trip(kind: str, tmp_path: Path) -> None:
    gallery, queries = random_unit(4000, 16, seed=11), random_unit(100, 16, seed=12)
    index = GalleryIndex.build(gallery, kind)
    before = index.search(queries, 10)
    params = index.params()
    path = tmp_path / "index.faiss"
    # The file keeps a starved setting; the params given to load() win over it.
    if kind == "ivf":
        index.set_search_params(nprobe=1)
    if kind == "hnsw":
        index.set_search_params(ef_search=1)
    index.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["index.faiss"]  # no temp file left behind

    loaded = GalleryIndex.load(path, params, device="auto")
    assert loaded.params() == params and loaded.kind == kind and not loaded.on_gpu
    after = loaded.search(queries, 10)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[0], before[0])
    if kind != "flat":
        starved = GalleryIndex.load(path).params()
        assert (starved["nprobe"], starved["ef_search"]) == ((1, None) if kind == "ivf" else (None, 1))


def test_save_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "index.faiss"
    GalleryIndex.build(random_unit(10, 8, seed=13)).save(path)
    GalleryIndex.build(random_unit(30, 8, seed=14)).save(path)
    assert GalleryIndex.load(path).ntotal == 30


# ------------------------------------------------------------- bad input

@pytest.fixture(scope="module")
def small_index() -> GalleryIndex:
    return GalleryIndex.build(random_unit(50, 8, seed=15))


def with_nan(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x[3, 2] = np.nan
    return x


@pytest.mark.parametrize(
    "emb, kwargs, message",
    [
        (np.ones(8, np.float32), {}, r"2-D array \[N, D\], got shape \(8,\)"),
        (np.zeros((0, 8), np.float32), {}, "empty gallery"),
        (with_nan(random_unit(10, 8, seed=16)), {}, r"NaN or infinite values \(1 rows: 3\)"),
        (np.full((4, 8), "a"), {}, "numeric"),
        (random_unit(10, 8, seed=17), {"kind": "annoy"}, "flat, ivf, hnsw"),
        (random_unit(10, 8, seed=17), {"kind": "ivf", "nlist": 11}, r"nlist \(11\) cannot exceed the gallery size"),
        (random_unit(10, 8, seed=17), {"kind": "flat", "nprobe": 4}, "ivf index, not flat"),
        (random_unit(10, 8, seed=17), {"kind": "hnsw", "hnsw_m": 0}, "hnsw_m must be an integer >= 1"),
    ],
)
def test_build_refuses_bad_input(emb, kwargs, message) -> None:
    with pytest.raises(UserError, match=message):
        GalleryIndex.build(emb, **kwargs)


@pytest.mark.parametrize(
    "queries, k, message",
    [
        (random_unit(3, 16, seed=18), 5, "queries have dimension 16 but the index has dimension 8"),
        (random_unit(8, 8, seed=18)[0], 5, r"2-D array \[N, D\], got shape \(8,\)"),
        (with_nan(random_unit(5, 8, seed=19)), 5, "queries contain NaN or infinite values"),
        (random_unit(3, 8, seed=18), 0, "k must be an integer >= 1, got 0"),
        (random_unit(3, 8, seed=18), 2.5, "k must be an integer >= 1, got 2.5"),
    ],
)
def test_search_refuses_bad_input(small_index: GalleryIndex, queries, k, message) -> None:
    with pytest.raises(UserError, match=message):
        small_index.search(queries, k)


def test_add_refuses_a_wrong_dimension(small_index: GalleryIndex) -> None:
    with pytest.raises(UserError, match="embeddings to add have dimension 4 but the index has dimension 8"):
        small_index.add(random_unit(2, 4, seed=20))
    assert small_index.ntotal == 50


def test_search_params_belong_to_their_kind(small_index: GalleryIndex) -> None:
    with pytest.raises(UserError, match="nprobe applies to an ivf index, not flat"):
        small_index.set_search_params(nprobe=4)


def test_load_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=f"{tmp_path / 'nope.faiss'}: no such index file"):
        GalleryIndex.load(tmp_path / "nope.faiss")


def test_load_refuses_a_damaged_file(tmp_path: Path, small_index: GalleryIndex) -> None:
    garbage = tmp_path / "garbage.faiss"
    garbage.write_bytes(b"\x00garbage\xff" * 64)
    with pytest.raises(UserError, match=f"{garbage}: not a FAISS index or damaged"):
        GalleryIndex.load(garbage)
    good = tmp_path / "good.faiss"
    small_index.save(good)
    truncated = tmp_path / "truncated.faiss"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError, match=f"{truncated}: not a FAISS index or damaged"):
        GalleryIndex.load(truncated)


@pytest.mark.parametrize("key, value", [("dim", 16), ("ntotal", 51), ("kind", "ivf"), ("metric", "l2")])
def test_load_refuses_params_that_do_not_match_the_file(
    tmp_path: Path, small_index: GalleryIndex, key: str, value
) -> None:
    path = tmp_path / "index.faiss"
    small_index.save(path)
    params = {**small_index.params(), key: value}
    with pytest.raises(UserError, match=f"the index file has {key} .* but its parameters say {value!r}"):
        GalleryIndex.load(path, params)


def test_save_into_a_missing_folder_is_a_user_error(tmp_path: Path, small_index: GalleryIndex) -> None:
    with pytest.raises(UserError, match="could not write the index"):
        small_index.save(tmp_path / "no" / "such" / "index.faiss")


# ------------------------------------------------------------ the l2 metric

def brute_force_l2(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by float64 -Euclidean distance (not squared); ties by increasing index."""
    diff = queries.astype(np.float64)[:, None, :] - gallery.astype(np.float64)[None, :, :]
    sim = -np.sqrt((diff**2).sum(axis=2))
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sim, idx, 1), idx


def raw_vectors(n: int, d: int, seed: int) -> np.ndarray:
    """Not unit length: norms spread over 0.2-5, so L2 and inner-product neighbours differ."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) * rng.uniform(0.2, 5.0, (n, 1))).astype(np.float32)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_l2_index_returns_negative_euclidean_distances(kind: str, tmp_path: Path) -> None:
    gallery, queries = raw_vectors(2000, 16, seed=40), raw_vectors(50, 16, seed=41)
    # exhaustive settings: the approximate kinds then find the exact neighbours too
    opts = {"ivf": {"nprobe": 10_000}, "hnsw": {"ef_search": 2000}}.get(kind, {})
    index = GalleryIndex.build(gallery, kind, metric="l2", **opts)
    assert index.metric == "l2" and index.params()["metric"] == "l2"
    sim, idx = index.search(queries, 10)
    ref_sim, ref_idx = brute_force_l2(gallery, queries, 10)
    np.testing.assert_array_equal(idx, ref_idx)
    # FAISS's squared distances, as -sqrt: float32 rounding of d ~ 100 is ~1e-5, ~1e-6 after the sqrt
    np.testing.assert_allclose(sim, ref_sim, rtol=1e-5, atol=1e-4)
    assert sim.dtype == np.float32 and np.all(sim <= 0) and np.all(np.diff(sim, axis=1) <= 0)
    # a gallery item finds itself at similarity 0 (distance 0)
    self_sim, self_idx = index.search(gallery[:20], 1)
    np.testing.assert_array_equal(self_idx[:, 0], np.arange(20))
    np.testing.assert_allclose(self_sim[:, 0], 0.0, atol=1e-3)
    # the inner-product index over the same raw vectors ranks differently
    assert not np.array_equal(GalleryIndex.build(gallery, "flat").search(queries, 10)[1], idx)
    # save / load keeps the metric (read from the FAISS file) and the results
    path = tmp_path / "index.faiss"
    index.save(path)
    params = index.params()
    for loaded in (GalleryIndex.load(path, params), GalleryIndex.load(path), GalleryIndex.load(path, metric="l2")):
        assert loaded.metric == "l2" and loaded.params() == params
        after = loaded.search(queries, 10)
        np.testing.assert_array_equal(after[1], idx)
        np.testing.assert_array_equal(after[0], sim)
    assert faiss_metric_type(path) == "METRIC_L2"


def faiss_metric_type(path: Path) -> str:
    import faiss

    t = faiss.read_index(str(path)).metric_type
    return {faiss.METRIC_L2: "METRIC_L2", faiss.METRIC_INNER_PRODUCT: "METRIC_INNER_PRODUCT"}[t]


def test_l2_ivf_rows_short_of_k_are_searched_exhaustively() -> None:
    gallery, queries = raw_vectors(200, 8, seed=42), raw_vectors(30, 8, seed=43)
    sim, idx = GalleryIndex.build(gallery, "ivf", nlist=50, nprobe=1, metric="l2").search(queries, 20)
    assert idx.min() >= 0 and np.all(np.isfinite(sim)) and np.all(np.diff(sim, axis=1) <= 0)
    want = -np.linalg.norm(queries[:, None, :].astype(np.float64) - gallery[idx].astype(np.float64), axis=2)
    np.testing.assert_allclose(sim, want, rtol=1e-5, atol=1e-4)
    # short rows were completed by an exhaustive search: the exact neighbours
    dist = np.linalg.norm(queries[:, None, :].astype(np.float64) - gallery[None].astype(np.float64), axis=2)
    np.testing.assert_array_equal(np.sort(idx, axis=1), np.sort(np.argsort(dist, axis=1)[:, :20], axis=1))


def test_l2_add_extends_the_gallery() -> None:
    gallery = raw_vectors(300, 8, seed=44)
    index = GalleryIndex.build(gallery[:200], metric="l2")
    index.add(gallery[200:])
    sim, idx = index.search(gallery[200:], 1)
    np.testing.assert_array_equal(idx[:, 0], np.arange(200, 300))
    np.testing.assert_allclose(sim[:, 0], 0.0, atol=1e-3)


def test_cosine_index_is_unchanged_and_the_metric_is_checked(tmp_path: Path, small_index: GalleryIndex) -> None:
    assert small_index.metric == "cosine" and small_index.params()["metric"] == "cosine"
    assert faiss_metric_type(_saved(small_index, tmp_path / "c.faiss")) == "METRIC_INNER_PRODUCT"
    with pytest.raises(UserError, match="metric must be one of cosine, l2"):
        GalleryIndex.build(random_unit(10, 8, seed=45), metric="dot")
    # a manifest that says l2 around an inner-product file (and the reverse) is refused
    with pytest.raises(UserError, match="has metric 'cosine' but the bundle says 'l2'"):
        GalleryIndex.load(tmp_path / "c.faiss", metric="l2")
    l2_path = _saved(GalleryIndex.build(raw_vectors(20, 8, seed=46), metric="l2"), tmp_path / "l.faiss")
    with pytest.raises(UserError, match="has metric 'l2' but the bundle says 'cosine'"):
        GalleryIndex.load(l2_path, metric="cosine")
    # old params without a metric still load
    old = {k: v for k, v in small_index.params().items() if k != "metric"}
    assert GalleryIndex.load(tmp_path / "c.faiss", old).metric == "cosine"


def _saved(index: GalleryIndex, path: Path) -> Path:
    index.save(path)
    return path


# ---------------------------------------------------------------- devices

@pytest.mark.skipif(gpu_available(), reason="FAISS with GPU support and a GPU: 'cuda' is valid here")
def test_cuda_without_gpu_faiss_is_a_user_error(tmp_path: Path, small_index: GalleryIndex) -> None:
    with pytest.raises(UserError, match="device 'cuda'.*no GPU support"):
        GalleryIndex.build(random_unit(10, 8, seed=21), device="cuda")
    small_index.save(tmp_path / "index.faiss")
    with pytest.raises(UserError, match="device 'cuda'"):
        GalleryIndex.load(tmp_path / "index.faiss", device="cuda")
    assert not GalleryIndex.build(random_unit(10, 8, seed=21), device="auto").on_gpu


def test_unknown_device_is_a_user_error() -> None:
    with pytest.raises(UserError, match="device must be one of cpu, cuda, auto"):
        GalleryIndex.build(random_unit(10, 8, seed=22), device="tpu")


# ---------------------------------------------------------------- threads

@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_concurrent_searches_match_one_thread(kind: str, clustered_data) -> None:
    gallery, queries, _ = clustered_data
    index = GalleryIndex.build(gallery[:5000], kind, **APPROX_BUILD.get(kind, {}))
    batches = [queries[i * 25 : (i + 1) * 25] for i in range(20)]
    expected = [index.search(b, 10) for b in batches]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: (i, index.search(batches[i % 20], 10)), range(8 * 20)))
    for i, (sim, idx) in results:
        np.testing.assert_array_equal(idx, expected[i % 20][1])
        np.testing.assert_array_equal(sim, expected[i % 20][0])


def test_add_during_searches_gives_a_consistent_gallery() -> None:
    # Each search must see the gallery before or after each add, never half of one.
    gallery, queries = random_unit(3000, 16, seed=23), random_unit(40, 16, seed=24)
    sizes = [1000, 1500, 2000, 2500, 3000]
    answers = [brute_force(gallery[:n], queries, 5)[1] for n in sizes]
    index = GalleryIndex.build(gallery[:1000])
    done = threading.Event()

    def searcher() -> int:
        mismatches = 0
        while not done.is_set():
            idx = index.search(queries, 5)[1]
            mismatches += not any(np.array_equal(idx, a) for a in answers)
        return mismatches

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(searcher) for _ in range(3)]
        for lo, hi in zip(sizes, sizes[1:]):
            index.add(gallery[lo:hi])
        done.set()
        assert [f.result() for f in futures] == [0, 0, 0]
    np.testing.assert_array_equal(index.search(queries, 5)[1], answers[-1])


# -------------------------------------------------- the benchmark's baseline

def test_benchmark_numpy_baseline_is_exact() -> None:
    bench = load_benchmark("runtime")
    gallery, queries = random_unit(2500, 16, seed=25), random_unit(30, 16, seed=26)
    sim, idx = bench.numpy_topk(gallery, queries, 10, block=300, seed_block=100)  # ragged last block
    ref_sim, ref_idx = brute_force(gallery, queries, 10)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sim, ref_sim, atol=1e-5)
