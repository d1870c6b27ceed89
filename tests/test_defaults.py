"""The default bundles shipped in supemb/bundles (built by export/build_defaults.py)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

import supemb
from supemb.predict import api
from supemb.predict.bundle import load_bundle

NAMES = ("age", "temperature", "brain_age")


@pytest.mark.parametrize("name", NAMES)
def test_default_bundle_is_shipped_and_sound(name: str) -> None:
    path = api.default_bundle_path(name)
    b = load_bundle(path, device="cpu")  # verifies checksums and shapes
    assert b.is_demo and b.manifest["synthetic"] is True and b.task == "regression"
    assert b.modality == ("eeg" if name == "brain_age" else "image")
    size_mb = sum(f.stat().st_size for f in path.iterdir()) / 1e6
    assert size_mb < 5, f"{name}: {size_mb:.1f} MB, the defaults must stay small"
    # 1e-4 of the embedding scale: unit vectors (cosine), or relative to the largest norm (l2)
    onnx = b.manifest["onnx"]
    assert max(onnx["parity_max_abs_diff"].values()) <= onnx.get("parity_tolerance", 1e-4)
    import faiss

    gallery = faiss.read_index(str(path / "index.faiss"))
    scale = max(1.0, float(np.linalg.norm(gallery.reconstruct_n(0, gallery.ntotal), axis=1).max()))
    assert onnx["parity_tolerance"] <= 1e-4 * scale * 1.5  # relative to the embeddings' size, not loosened
    if "residual" in b.knn:  # its head's values checked too: 1e-4 of the targets' spread, not loosened
        assert onnx["parity_head_max_abs_diff"] <= onnx["parity_head_tolerance"] <= 1e-4 * float(b.targets.std()) * 1.5
    # RnC-trained: the bundle serves the raw encoder output the loss ordered, searched by L2 distance
    assert b.metric == "l2" and b.index.metric == "l2"
    if b.modality == "image":
        assert b.thumbnails is not None  # the demo shows neighbours from these


def _fresh_faces(tmp_path: Path, n: int = 60):
    from supemb.data.synthetic_faces import face_arrays

    images, ages, _ = face_arrays(n, size=32, seed=123)  # a seed the bundle never saw
    return list(images), ages.astype(float)


def test_predict_age_default_warns_once_and_learned_something(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(api, "_warned", set())
    images, ages = _fresh_faces(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = supemb.predict_age(images[0], detect=False)  # synthetic faces are face crops already
        pred = np.array(supemb.predict_age(images, detect=False))
    demo = [w for w in caught if issubclass(w.category, api.DemoModelWarning)]
    assert len(demo) == 1 and "synthetic" in str(demo[0].message)
    assert demo[0].filename == __file__  # pointed at the caller's line, not inside supemb
    assert isinstance(first, float) and pred.shape == (len(images),) and pred[0] == pytest.approx(first)
    # better than predicting the mean age: the model has learned the (synthetic) age cues
    b = load_bundle(api.default_bundle_path("age"))
    baseline = np.abs(ages - b.targets.mean()).mean()
    assert np.abs(pred - ages).mean() < 0.5 * baseline  # measured: 5.1 against 19.4 years
    # the values are the bundle's kNN, recomputed from its own gallery and manifest
    value, _ = _knn_by_hand(b, b.embed(images, detect=False), np.arange(len(images)), len(images))
    np.testing.assert_allclose(pred, value, atol=1e-4)


def test_predict_temperature_default(tmp_path: Path) -> None:
    from supemb.data.synthetic_webcam import webcam_arrays

    images, temps, _ = webcam_arrays(60, size=32, seed=123)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", api.DemoModelWarning)
        pred = np.array(supemb.predict_temperature(list(images)))
    b = load_bundle(api.default_bundle_path("temperature"))
    assert np.abs(pred - temps).mean() < np.abs(temps - b.targets.mean()).mean()


def _knn_by_hand(b, rows: np.ndarray, owner: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each input's value and uncertainty from the bundle's own gallery vectors and targets and its
    manifest's kNN settings, in plain numpy: brute-force distances, softmax of similarity / t over the
    k nearest, the weighted mean per window, pooled per input (law of total variance). With the
    manifest's knn.residual (a linear head h), the mean is of the neighbours' y - h(g) and each
    window's h(q) is added before pooling."""
    import faiss

    knn = b.manifest["knn"]
    assert knn["weighting"] == "softmax" and knn["reduce"] == "mean" and b.manifest["metric"] == "l2"
    gallery = faiss.read_index(str(b.root / "index.faiss")).reconstruct_n(0, b.index.ntotal).astype(np.float64)
    head_w, head_b = np.zeros(gallery.shape[1]), 0.0
    if "residual" in knn:
        head_w, head_b = np.asarray(knn["residual"]["weight"], np.float64), float(knn["residual"]["bias"])
    y = np.asarray(b.targets, np.float64) - (gallery @ head_w + head_b)
    sim = -np.linalg.norm(rows.astype(np.float64)[:, None, :] - gallery[None], axis=2)  # [R, G]
    near = np.argsort(-sim, axis=1, kind="stable")[:, : knn["k"]]
    s = np.take_along_axis(sim, near, axis=1)
    w = np.exp((s - s[:, :1]) / knn["temperature"])
    w /= w.sum(axis=1, keepdims=True)
    knn_mean = (w * y[near]).sum(axis=1)
    spread2 = (w * (y[near] - knn_mean[:, None]) ** 2).sum(axis=1)
    mean = knn_mean + rows.astype(np.float64) @ head_w + head_b
    value = np.array([mean[owner == i].mean() for i in range(n)])
    unc = np.array([np.sqrt(np.mean(spread2[owner == i] + (mean[owner == i] - value[i]) ** 2)) for i in range(n)])
    return value, unc


def test_predict_brain_age_default(tmp_path: Path) -> None:
    """The value is the bundle's kNN recomputed by hand, and closer to the true ages than
    predicting the gallery's mean age (recordings of seeds the bundle never saw)."""
    import csv

    from supemb.data.synthetic_eeg import make_eeg_dataset

    data = make_eeg_dataset(tmp_path, 8, duration_s=30.0, sfreq=100.0, seed=123)
    recs = sorted(data.glob("*.edf"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", api.DemoModelWarning)
        warnings.simplefilter("ignore", api.UnfamiliarInputWarning)
        ages = np.array(supemb.predict_brain_age(recs))
        b = api.get_bundle(None, "brain_age")
        preds = b.predict(recs)
    rows, owner, _ = b.encoder.embed_rows(recs)
    value, unc = _knn_by_hand(b, rows, owner, len(recs))
    np.testing.assert_allclose(ages, value, atol=1e-4)
    scale = b.manifest["knn"]["uncertainty_scale"]  # the spread calibrated on the run's validation recordings
    assert scale > 1  # this bundle's spread was too narrow (docs/calibration.md)
    np.testing.assert_allclose([p.uncertainty for p in preds], scale * unc, atol=1e-4)
    with open(data / "labels.csv") as f:
        truth = {row["path"]: float(row["age"]) for row in csv.DictReader(f)}
    y = np.array([truth[r.name] for r in recs])
    mae, baseline = np.abs(ages - y).mean(), np.abs(y - b.targets.mean()).mean()
    assert mae < 0.6 * baseline, (mae, baseline)  # measured: 4.7 against 13.7 years


def test_missing_default_bundle_says_how_to_rebuild(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(api, "DEFAULTS_DIR", tmp_path)
    from supemb.errors import UserError

    with pytest.raises(UserError, match="build_defaults"):
        supemb.predict_age(np.zeros((8, 8, 3), np.uint8))


@pytest.mark.parametrize("k", [1.7, True, "abc", 0, np.float32(3)])
def test_a_k_that_is_not_a_whole_number_is_refused_not_rounded(k) -> None:
    from supemb.errors import UserError

    b = load_bundle(api.default_bundle_path("temperature"), device="cpu")
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(UserError, match="k must be a whole number >= 1"):
        b.predict(image, k=k)
    assert len(b.predict(image, k=np.int64(3))[0].neighbours) == 3  # numpy integers are whole numbers


@pytest.mark.parametrize("inputs", [b"\x89PNG\r\n", bytearray(8), np.zeros(12, np.uint8)], ids=["bytes", "bytearray",
                                                                                                  "1-D array"])
def test_file_bytes_and_flat_arrays_are_refused_not_split_into_inputs(inputs) -> None:
    from supemb.errors import UserError

    b = load_bundle(api.default_bundle_path("temperature"), device="cpu")
    with pytest.raises(UserError, match=r"pass the file's path|not shape \[12\]"):
        b.predict(inputs)


def test_the_warnings_a_user_filters_are_importable_from_the_package() -> None:
    assert supemb.UnfamiliarInputWarning is api.UnfamiliarInputWarning
    assert supemb.DemoModelWarning is api.DemoModelWarning
    assert all(getattr(supemb, name) is not None for name in supemb.__all__)


@pytest.mark.parametrize("call, bundle, says", [
    ("predict_age", "temperature", "predict_age needs a bundle that predicts age, but this one predicts "
                                   "'temperature' in °C"),
    ("predict_temperature", "age", "predict_temperature needs a bundle that predicts temperature, but this one "
                                   "predicts 'age' in years"),
    ("predict_age", "brain_age", "predict_age needs an image regression bundle, but this one does eeg regression"),
    ("predict_brain_age", "age", "predict_brain_age needs an eeg regression bundle, but this one does image"),
])
def test_a_bundle_of_another_quantity_is_refused_not_served_in_the_wrong_unit(call, bundle, says) -> None:
    """A temperature bundle used to answer predict_age in °C, as if it were years."""
    from supemb.errors import UserError

    with pytest.raises(UserError) as err:
        getattr(supemb, call)(np.zeros((32, 32, 3), np.uint8), bundle=api.default_bundle_path(bundle))
    assert says in str(err.value) and "\n" not in str(err.value)


def test_only_a_target_recognisably_of_another_quantity_is_refused(monkeypatch) -> None:
    """Refused: a temperature for predict_age, an age for predict_temperature, known by a word of the target's
    name (camelCase split) or its unit, however written. A target of unknown kind ('y', no unit) is served."""
    from supemb.errors import UserError

    b = load_bundle(api.default_bundle_path("temperature"), device="cpu")
    temperatures = [("air_temp", ""), ("t2m", "deg C"), ("tmax", "degrees Celsius"), ("t", "℃"), ("t", "ºC"),
                    ("t", "° C"), ("Temperature", "K"), ("t", "°F")]
    ages = [("PatientAge", ""), ("BrainAge", ""), ("age", "yrs."), ("y", "years")]
    for (name, unit), call, other in [*((t, "temperature", "age") for t in temperatures),
                                      *((a, "age", "temperature") for a in ages)]:
        monkeypatch.setattr(b, "target_name", name)
        monkeypatch.setattr(b, "unit", unit)
        api._check_task(b, "image", f"predict_{call}", call)  # served
        with pytest.raises(UserError, match=f"needs a bundle that predicts {other}"):
            api._check_task(b, "image", f"predict_{other}", other)
    for name, unit in [("y", ""), ("storage", "GB")]:  # unknown: served by either call
        monkeypatch.setattr(b, "target_name", name)
        monkeypatch.setattr(b, "unit", unit)
        api._check_task(b, "image", "predict_age", "age")
        api._check_task(b, "image", "predict_temperature", "temperature")


@pytest.mark.parametrize("bundle", [123, 4.5, ["b"]])
def test_a_bundle_argument_that_is_not_a_path_is_one_line(bundle) -> None:
    from supemb.errors import UserError

    with pytest.raises(UserError, match=f"bundle= is a path .* not {type(bundle).__name__}$"):
        supemb.predict_temperature(np.zeros((32, 32, 3), np.uint8), bundle=bundle)
