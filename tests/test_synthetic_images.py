"""SYNTHETIC webcam and face generators: deterministic, loadable, the target
present but weak next to the camera / identity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from supemb.data.image_files import load_image
from supemb.data.image_layouts import load_image_table
from supemb.data.synthetic_faces import AGE_RANGE, face_arrays, make_face_dataset, render_face
from supemb.data.synthetic_webcam import TEMPERATURE_RANGE, make_webcam_dataset, render_webcam, webcam_arrays

N = 400  # enough for the statistics below, fast to draw


@pytest.fixture(scope="module")
def webcams() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return webcam_arrays(N, n_cameras=8, seed=0)


@pytest.fixture(scope="module")
def faces() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return face_arrays(N, n_identities=30, seed=0)


def _features(images: np.ndarray, k: int = 8) -> np.ndarray:
    """[N, S, S, 3] uint8 -> [N, (S/k)^2 * 3] block means in [0, 1]."""
    n, s = images.shape[:2]
    return images.reshape(n, s // k, k, s // k, k, 3).mean((2, 4)).reshape(n, -1) / 255.0


def _ridge_mae(x: np.ndarray, y: np.ndarray, n_train: int, lam: float = 1.0) -> tuple[float, float]:
    """Held-out MAE of ridge regression on x, and of predicting the training mean."""
    mu, sd = x[:n_train].mean(0), x[:n_train].std(0) + 1e-6
    a = np.c_[(x - mu) / sd, np.ones(len(x))]
    w = np.linalg.solve(a[:n_train].T @ a[:n_train] + lam * np.eye(a.shape[1]), a[:n_train].T @ y[:n_train])
    return float(np.abs(a[n_train:] @ w - y[n_train:]).mean()), float(np.abs(y[:n_train].mean() - y[n_train:]).mean())


def _between_group_fraction(x: np.ndarray, groups: np.ndarray) -> float:
    """Share of the pixel variance explained by group means (eta squared)."""
    mu = x.mean(0)
    between = sum((groups == g).sum() * ((x[groups == g].mean(0) - mu) ** 2).sum() for g in np.unique(groups))
    return float(between / ((x - mu) ** 2).sum())


def _within_group(v: np.ndarray, groups: np.ndarray) -> np.ndarray:
    out = v.astype(float).copy()
    for g in np.unique(groups):
        out[groups == g] -= out[groups == g].mean()
    return out


def _within_group_ridge_ratio(x: np.ndarray, y: np.ndarray, groups: np.ndarray, n_train: int) -> float:
    """Ridge on group-centred pixels and targets, held-out MAE over that of
    guessing the group mean: < 1 means the target shows beyond the group."""
    xw = x - np.stack([x[groups == g].mean(0) for g in groups])
    ridge, zero = _ridge_mae(xw, _within_group(y, groups), n_train, lam=10.0)
    return ridge / zero


def _same_group_nearest_neighbour(x: np.ndarray, groups: np.ndarray) -> float:
    sq = (x**2).sum(1)
    d = sq[:, None] + sq[None, :] - 2 * x @ x.T
    np.fill_diagonal(d, np.inf)
    return float((groups[d.argmin(1)] == groups).mean())


# ------------------------------------------------------------------- webcam


def test_render_webcam_shape_and_determinism() -> None:
    a = render_webcam(3, 5.0, np.random.default_rng(1))
    b = render_webcam(3, 5.0, np.random.default_rng(1))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert render_webcam(3, 5.0, np.random.default_rng(1), size=32).shape == (32, 32, 3)
    # Same frame noise, another camera: a different scene.
    other = render_webcam(4, 5.0, np.random.default_rng(1))
    assert np.abs(a.astype(int) - other.astype(int)).mean() > 10


def test_snow_when_cold() -> None:
    # Averaged over frames: the ground (bottom rows) is whiter at -15 than at +20.
    def ground_whiteness(t: float) -> float:
        frames = [render_webcam(c, t, np.random.default_rng(i)) for c in range(6) for i in range(4)]
        return float(np.mean([f[48:].min(-1).mean() for f in frames]))

    assert ground_whiteness(-15.0) > ground_whiteness(20.0) + 20


def test_webcam_arrays_deterministic_and_in_range(webcams: tuple) -> None:
    images, temps, cams = webcams
    assert images.shape == (N, 64, 64, 3) and temps.dtype == np.float32 and cams.dtype == np.int64
    assert TEMPERATURE_RANGE[0] <= temps.min() and temps.max() <= TEMPERATURE_RANGE[1]
    assert set(np.unique(cams)) == set(range(8))
    again = webcam_arrays(50, n_cameras=8, seed=0)
    np.testing.assert_array_equal(again[0], images[:50])
    np.testing.assert_array_equal(again[1], temps[:50])
    assert not np.array_equal(webcam_arrays(50, n_cameras=8, seed=1)[0], images[:50])


def test_webcam_temperature_learnable_but_camera_dominates(webcams: tuple) -> None:
    images, temps, cams = webcams
    x = _features(images)
    ridge, mean = _ridge_mae(x, temps.astype(float), n_train=320)
    assert ridge < 0.7 * mean  # a linear model on 8x8 block means already beats the mean
    # ... and not only by telling cameras (and so climates) apart.
    assert _within_group_ridge_ratio(x, temps.astype(float), cams, n_train=320) < 0.8
    assert _between_group_fraction(x, cams) > 0.45  # the camera explains most pixel variance
    assert _same_group_nearest_neighbour(x, cams) > 0.95  # pixel neighbours are same-camera frames
    # Within a camera, colder frames have whiter ground (snow).
    white = images[:, 40:].min(-1).mean((1, 2))
    r = np.corrcoef(_within_group(white, cams), _within_group(temps, cams))[0, 1]
    assert r < -0.3


def test_make_webcam_dataset_loads(tmp_path: Path) -> None:
    csv_path = make_webcam_dataset(tmp_path / "cams", 60, n_cameras=4, size=32, seed=2)
    assert csv_path == tmp_path / "cams" / "labels.csv"
    assert csv_path.read_text().splitlines()[0] == "path,temperature,camera,split"
    table = load_image_table(tmp_path / "cams", "temperature")
    assert table.task == "regression" and len(table) == 60 and not table.skipped
    assert table.summary()["splits"] == {"train": 48, "val": 6, "test": 6, "unsplit": 0}
    first = table.records[0]
    assert load_image(first.path).size == (32, 32)
    images, temps, _ = webcam_arrays(60, n_cameras=4, size=32, seed=2)
    np.testing.assert_array_equal(np.asarray(load_image(first.path)), images[0])  # PNG is lossless
    assert first.target == pytest.approx(float(temps[0]), abs=0.051)
    cameras = load_image_table(tmp_path / "cams", "camera", task="classification")
    assert cameras.classes == ("0", "1", "2", "3")
    again = make_webcam_dataset(tmp_path / "again", 60, n_cameras=4, size=32, seed=2)
    assert again.read_text() == csv_path.read_text()


def test_webcam_split_by_camera(tmp_path: Path) -> None:
    make_webcam_dataset(tmp_path, 80, n_cameras=10, size=16, seed=0, split_by="group")
    table = load_image_table(tmp_path, "camera", task="classification")
    split_of: dict[str, set] = {}
    for r in table.records:
        split_of.setdefault(str(r.target), set()).add(r.split)
    assert all(len(s) == 1 for s in split_of.values())
    assert {s for v in split_of.values() for s in v} == {"train", "val", "test"}


# -------------------------------------------------------------------- faces


def test_render_face_shape_and_determinism() -> None:
    a = render_face(7, 40.0, np.random.default_rng(3))
    np.testing.assert_array_equal(a, render_face(7, 40.0, np.random.default_rng(3)))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert render_face(7, 40.0, np.random.default_rng(3), size=48).shape == (48, 48, 3)


def test_faces_age_shows() -> None:
    # One person, same pose/light stream: an 85-year-old differs from a 25-year-old
    # more than two 25-year-old draws differ from each other.
    def draws(age: float) -> np.ndarray:
        return np.stack([render_face(2, age, np.random.default_rng(i)).astype(float) for i in range(8)]).mean(0)

    young, young2, old = draws(25.0), draws(25.5), draws(85.0)
    assert np.abs(old - young).mean() > 3 * np.abs(young2 - young).mean()


def test_face_arrays_deterministic_and_in_range(faces: tuple) -> None:
    images, ages, ids = faces
    assert images.shape == (N, 64, 64, 3) and ages.dtype == np.int64
    assert AGE_RANGE[0] <= ages.min() and ages.max() <= AGE_RANGE[1]
    assert ages.max() - ages.min() > 60
    again = face_arrays(40, n_identities=30, seed=0)
    np.testing.assert_array_equal(again[0], images[:40])
    np.testing.assert_array_equal(again[1], ages[:40])


def test_face_age_learnable_but_identity_dominates(faces: tuple) -> None:
    images, ages, ids = faces
    x = _features(images)
    ridge, mean = _ridge_mae(x, ages.astype(float), n_train=320)
    assert ridge < 0.6 * mean
    assert _within_group_ridge_ratio(x, ages.astype(float), ids, n_train=320) < 0.9
    assert _between_group_fraction(x, ids) > 0.7
    assert _same_group_nearest_neighbour(x, ids) > 0.95
    # Within a person, older images have less colourful hair (grey) at the top.
    top = images[:, 2:22, 16:48].astype(float)
    colourful = (top.max(-1) - top.min(-1)).mean((1, 2))
    r = np.corrcoef(_within_group(colourful, ids), _within_group(ages, ids))[0, 1]
    assert r < -0.15


def test_make_face_dataset_csv(tmp_path: Path) -> None:
    csv_path = make_face_dataset(tmp_path, 30, n_identities=5, size=32, seed=1)
    assert csv_path.read_text().splitlines()[0] == "path,age,identity,split"
    table = load_image_table(tmp_path, "age")
    assert table.task == "regression" and len(table) == 30
    assert all(AGE_RANGE[0] <= r.target <= AGE_RANGE[1] for r in table.records)


@pytest.mark.parametrize("naming", ["utkface", "agedb"])
def test_make_face_dataset_named_layouts(tmp_path: Path, naming: str) -> None:
    out = make_face_dataset(tmp_path, 25, n_identities=5, size=32, seed=1, naming=naming)
    assert out == tmp_path and not (tmp_path / "labels.csv").exists()
    table = load_image_table(tmp_path, "age")  # the layout is detected from the names
    assert table.layout == naming and len(table) == 25 and not table.skipped
    _, ages, _ = face_arrays(25, n_identities=5, size=32, seed=1)
    assert sorted(r.target for r in table.records) == sorted(float(a) for a in ages)
    gender = load_image_table(tmp_path, "gender", format=naming)
    assert set(gender.classes) <= {"female", "male"}
