"""Familiarity: the gallery's leave-one-out reference, the percentile of an input, and the flag.

The arithmetic against direct numpy computations; then the default bundles:
inputs of another kind (the other bundle's synthetic images, digits,
scikit-image's sample photographs, noise recordings) are flagged, held-out
inputs from the bundle's own generator mostly are not.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from supemb.errors import UserError
from supemb.index.gallery import GalleryIndex
from supemb.predict import api
from supemb.predict import familiarity as fam
from supemb.predict import manifest as mf
from supemb.predict.bundle import load_bundle

# ------------------------------------------------------------ arithmetic


def _gallery(metric: str, n: int = 60, d: int = 8, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    x[7] = x[3]  # an exact duplicate is another item: its neighbour is at similarity max
    if metric == "cosine":
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _similarity(x: np.ndarray, metric: str) -> np.ndarray:
    """All pairwise similarities [N, N] in float64, by the bundle's convention."""
    x = x.astype(np.float64)
    if metric == "cosine":
        return x @ x.T
    return -np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_leave_one_out_is_the_nearest_other_item(metric: str) -> None:
    x = _gallery(metric)
    s = _similarity(x, metric)
    np.fill_diagonal(s, -np.inf)
    want = s.max(axis=1)
    got = fam.leave_out_similarities(GalleryIndex.build(x, metric=metric), x)
    np.testing.assert_allclose(got, want, atol=1e-5)
    top = 1.0 if metric == "cosine" else 0.0
    assert got[3] == pytest.approx(top, abs=1e-5) and got[7] == pytest.approx(top, abs=1e-5)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_leave_one_recording_out_is_the_median_over_its_windows(metric: str) -> None:
    x = _gallery(metric, n=70)
    groups = np.repeat(np.arange(14), np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 4, 4, 6]))
    groups = np.random.default_rng(1).permutation(groups)  # windows of a recording need not be adjacent
    s = _similarity(x, metric)
    s[groups[:, None] == groups[None, :]] = -np.inf  # the whole recording is left out, not the window alone
    per_row = s.max(axis=1)
    want = np.array([np.median(per_row[groups == g]) for g in range(14)])
    got = fam.leave_out_similarities(GalleryIndex.build(x, metric=metric), x, groups)
    np.testing.assert_allclose(got, want, atol=1e-5)
    some = np.array([2, 5, 11])
    np.testing.assert_allclose(fam.leave_out_similarities(GalleryIndex.build(x, metric=metric), x, groups, some),
                               want[some], atol=1e-5)


def test_query_statistic_is_the_median_over_an_inputs_rows() -> None:
    top1 = np.array([0.1, 0.9, 0.5, 0.3, 0.7, 0.2])
    owner = np.array([0, 2, 0, 0, 2, 3])
    got = fam.query_statistic(top1, owner, 5)
    np.testing.assert_allclose(got[[0, 2, 3]], [0.3, 0.8, 0.2])
    assert np.isnan(got[1]) and np.isnan(got[4])  # no rows: no statistic


def test_percentile_against_the_empirical_distribution() -> None:
    values = np.random.default_rng(2).gamma(2.0, size=5000)
    table = fam.quantile_table(values)
    np.testing.assert_allclose(table, np.quantile(values, np.arange(101) / 100))
    x = np.random.default_rng(3).uniform(values.min(), values.max(), 400)
    direct = (values[None, :] < x[:, None]).mean(axis=1)  # the fraction of the reference below x
    assert np.abs(fam.percentile(x, table) - direct).max() < 0.011  # within one table step
    np.testing.assert_allclose(fam.percentile(table, table), np.arange(101) / 100, atol=1e-12)
    assert fam.percentile(values.min() - 1, table) == 0.0 and fam.percentile(values.max() + 1, table) == 1.0
    mid = (table[10] + table[11]) / 2  # linear between neighbouring quantiles
    assert fam.percentile(mid, table) == pytest.approx(0.105)


def test_percentile_of_tied_quantiles_is_their_middle() -> None:
    table = np.array([0.0, 1.0, 1.0, 1.0, 2.0])  # levels 0, .25, .5, .75, 1
    assert fam.percentile(1.0, table) == pytest.approx(0.5)
    assert fam.percentile(0.5, table) == pytest.approx(0.125)
    assert fam.percentile(1.5, table) == pytest.approx(0.875)
    assert np.isnan(fam.percentile(np.nan, table))


def test_reference_table_records_how_it_was_computed() -> None:
    x = _gallery("l2", n=300)
    index = GalleryIndex.build(x, metric="l2")
    ref = fam.reference_table(index, x)
    values = fam.leave_out_similarities(index, x)
    assert ref["statistic"] == "nearest_neighbour_similarity" and ref["k"] == 1 and ref["metric"] == "l2"
    assert ref["leave_out"] == "item" and ref["units"] == ref["of_units"] == 300
    assert len(ref["quantiles"]) == 101 and ref["threshold_quantile"] == fam.THRESHOLD_QUANTILE
    np.testing.assert_allclose(ref["quantiles"], np.quantile(values, np.arange(101) / 100), rtol=1e-6)
    assert ref["threshold"] == pytest.approx(np.quantile(values, fam.THRESHOLD_QUANTILE), rel=1e-6)
    json.dumps(ref)  # goes into the manifest as it is
    grouped = fam.reference_table(index, x, np.arange(300) // 3, threshold_quantile=0.1)
    assert grouped["leave_out"] == "recording" and grouped["units"] == 100 and grouped["threshold_quantile"] == 0.1
    sampled = fam.reference_table(index, x, max_units=50)
    assert sampled["units"] == 50 and sampled["of_units"] == 300
    assert fam.reference_table(index, x, np.zeros(300, np.int64)) is None  # one recording: nothing to leave out


def test_score_flags_below_the_threshold() -> None:
    f = fam.Familiarity.from_manifest({"quantiles": [0.0, 1.0, 2.0, 3.0, 4.0], "threshold": 0.5}, "m.json")
    scores, flags = f.score(np.array([-1.0, 0.4, 0.6, 2.0, 9.0]))
    np.testing.assert_allclose(scores, [0.0, 0.1, 0.15, 0.5, 1.0])
    assert flags.tolist() == [True, True, False, False, False]


@pytest.mark.parametrize("bad", [{"quantiles": [3.0, 1.0], "threshold": 1.0}, {"quantiles": [1.0]},
                                 {"quantiles": "x", "threshold": 1}, {"quantiles": [0, 1], "threshold": None},
                                 {"quantiles": [0, float("nan")], "threshold": 0}, [1, 2]])
def test_a_damaged_table_is_refused_naming_the_file(bad) -> None:
    with pytest.raises(UserError, match="m.json.*familiarity"):
        fam.Familiarity.from_manifest(bad, "m.json")


# ------------------------------------------------------- bundles and export


def _copy_default(name: str, tmp_path: Path) -> Path:
    out = tmp_path / name
    shutil.copytree(api.default_bundle_path(name), out)
    return out


def _drop_familiarity(root: Path) -> None:
    m = json.loads((root / mf.MANIFEST).read_text())
    del m["familiarity"]
    (root / mf.MANIFEST).write_text(json.dumps(m, indent=2))


def test_an_old_manifest_without_the_table_predicts_as_before(tmp_path: Path) -> None:
    from supemb.data.synthetic_faces import face_arrays

    old = _copy_default("age", tmp_path)
    _drop_familiarity(old)
    images = list(face_arrays(4, size=32, seed=77)[0])
    before = load_bundle(old).predict(images, detect=False)
    now = load_bundle(api.default_bundle_path("age")).predict(images, detect=False)
    for p, q in zip(before, now):
        assert p.familiarity is None and p.unfamiliar is None
        assert "familiarity" not in p.to_dict() and "unfamiliar" not in p.to_dict()
        assert q.familiarity is not None and 0.0 <= q.familiarity <= 1.0 and isinstance(q.unfamiliar, bool)
        assert p.value == q.value and p.neighbours == q.neighbours
    with warnings.catch_warnings():
        warnings.simplefilter("error", api.UnfamiliarInputWarning)  # no table: nothing to warn about
        api.predict_age(np.zeros((32, 32, 3), np.uint8), bundle=old, detect=False)


@pytest.mark.parametrize("name", ["age", "temperature", "brain_age"])
def test_default_tables_are_what_the_bundles_own_files_give(name: str, tmp_path: Path) -> None:
    from supemb.export.writer import add_familiarity

    shipped = json.loads((api.default_bundle_path(name) / mf.MANIFEST).read_text())
    assert shipped["familiarity"]["leave_out"] == ("recording" if name == "brain_age" else "item")
    root = _copy_default(name, tmp_path)
    _drop_familiarity(root)
    assert add_familiarity(root) == shipped  # same table, same place, same checksums
    assert (root / mf.MANIFEST).read_bytes() == (api.default_bundle_path(name) / mf.MANIFEST).read_bytes()


def test_reindex_records_the_new_gallerys_table(tmp_path: Path) -> None:
    from supemb.data.synthetic_faces import make_face_dataset
    from supemb.export.writer import reindex

    root = _copy_default("age", tmp_path)
    data = make_face_dataset(tmp_path / "faces", 40, size=32, seed=5)
    m = reindex(root, data)
    assert m["familiarity"]["units"] == 40
    assert m["familiarity"] == fam.bundle_reference(root, m)
    first = str(data.parent / json.loads((root / "gallery.json").read_text())["ids"][0])
    assert load_bundle(root).predict(first, detect=False)[0].familiarity == 1.0  # as near as can be
    m = reindex(root, data, append=True)  # now every item has its twin: the reference is all ties at the top
    assert m["familiarity"]["units"] == 80 and m["familiarity"] == fam.bundle_reference(root, m)
    assert m["familiarity"]["quantiles"][0] == m["familiarity"]["quantiles"][-1] == pytest.approx(0.0, abs=1e-3)


def test_export_records_a_leave_one_recording_out_table(tmp_path: Path) -> None:
    from supemb.data.synthetic_eeg import make_eeg_dataset
    from supemb.export.writer import export_run
    from supemb.train.config import TrainConfig
    from supemb.train.trainer import train

    data = make_eeg_dataset(tmp_path / "eeg", 10, duration_s=12.0, sfreq=100.0, seed=0)
    train(TrainConfig(data=str(data), out=str(tmp_path / "run"), epochs=1, linear_epochs=1, batch_size=8,
                      viz=False, knn_k=3, target="age", loss="rnc", eeg={"window_s": 4.0, "stride_s": 4.0}))
    m = export_run(tmp_path / "run", tmp_path / "bundle", unit="years")
    ref = m["familiarity"]
    recordings = len(json.loads((tmp_path / "bundle" / "gallery.json").read_text())["recordings"])
    assert ref["leave_out"] == "recording" and ref["units"] == recordings and ref["metric"] == m["metric"]
    assert ref == fam.bundle_reference(tmp_path / "bundle", m)  # the table export wrote is the files' own
    p = load_bundle(tmp_path / "bundle").predict(sorted(data.glob("*.edf"))[0])[0]
    assert p.familiarity is not None and p.unfamiliar is not None


# ----------------------------------------------- the default bundles' flags


def _digits(n: int = 100) -> list[np.ndarray]:
    """scikit-learn's 8x8 digits, upscaled 4x to 32x32 grey RGB uint8."""
    from sklearn.datasets import load_digits

    grey = (load_digits().images[:n] / 16.0 * 255).astype(np.uint8)
    big = grey.repeat(4, axis=1).repeat(4, axis=2)
    return list(np.repeat(big[..., None], 3, axis=3))


SKIMAGE_SAMPLES = ("astronaut", "camera", "coffee", "coins", "chelsea", "rocket", "moon", "page", "text", "brick",
                   "grass", "gravel", "colorwheel", "clock", "cell", "retina", "hubble_deep_field",
                   "immunohistochemistry")


def _skimage_photos() -> list[np.ndarray]:
    data = pytest.importorskip("skimage.data", reason="scikit-image (a dev extra) is not installed")
    out = []
    for name in SKIMAGE_SAMPLES:
        try:
            a = np.asarray(getattr(data, name)())
        except Exception:  # noqa: BLE001 - a sample missing from this version (no download is tried)
            continue
        a = np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a[..., :3]
        out.append(np.ascontiguousarray(a, dtype=np.uint8))
    if len(out) < 5:
        pytest.skip("scikit-image ships too few of its sample images here")
    return out


def _flag_rate(bundle_name: str, items: list) -> float:
    bundle = load_bundle(api.default_bundle_path(bundle_name))
    # the embedding's own judgement: a face bundle's detector would refuse most of these first
    preds = bundle.predict(items, **({"detect": False} if bundle.detects_faces else {}))
    return float(np.mean([p.unfamiliar for p in preds]))


@pytest.mark.parametrize("name", ["age", "temperature"])
def test_images_of_another_kind_are_flagged(name: str) -> None:
    from supemb.data.synthetic_faces import face_arrays
    from supemb.data.synthetic_webcam import webcam_arrays

    other = webcam_arrays if name == "age" else face_arrays  # made for the other default bundle
    assert _flag_rate(name, list(other(200, size=32, seed=123)[0])) >= 0.85
    assert _flag_rate(name, _digits()) >= 0.85


@pytest.mark.parametrize("name", ["age", "temperature"])
def test_photographs_are_flagged(name: str) -> None:
    assert _flag_rate(name, _skimage_photos()) >= 0.85


@pytest.mark.parametrize("name", ["age", "temperature"])
def test_held_out_images_of_the_bundles_own_kind_mostly_are_not(name: str) -> None:
    from supemb.data.synthetic_faces import face_arrays
    from supemb.data.synthetic_webcam import webcam_arrays

    own = face_arrays if name == "age" else webcam_arrays
    assert _flag_rate(name, list(own(300, size=32, seed=321)[0])) <= 0.12  # threshold: the gallery's 5%


def _noise_recordings(folder: Path, n: int) -> list[Path]:
    """Brown (1/f^2) noise on the model's channels: a drifting, disconnected-looking recording."""
    from supemb.data.synthetic_eeg import TUH_FILE_CHANNELS, write_edf

    names = [f"EEG {c}-REF" for c in TUH_FILE_CHANNELS]
    out = []
    for i in range(n):
        walk = np.cumsum(np.random.default_rng([9, i]).normal(size=(len(names), 3000)), axis=1)
        walk -= walk.mean(axis=1, keepdims=True)
        out.append(write_edf(folder / f"noise_{i}.edf", 20 * walk / walk.std(), 100.0, names))
    return out


def test_eeg_noise_is_flagged_and_held_out_recordings_mostly_are_not(tmp_path: Path) -> None:
    from supemb.data.synthetic_eeg import make_eeg_dataset

    assert _flag_rate("brain_age", _noise_recordings(tmp_path, 20)) >= 0.9
    held = make_eeg_dataset(tmp_path / "held", 60, duration_s=30.0, sfreq=100.0, seed=11)
    assert _flag_rate("brain_age", sorted(held.glob("*.edf"))) <= 0.15


@pytest.fixture()
def three_digits_and_a_face(tmp_path: Path) -> list[Path]:
    """in_0..2.png: digits (flagged by the age bundle); in_3.png: a held-out synthetic face (not flagged)."""
    from PIL import Image

    from supemb.data.synthetic_faces import face_arrays

    paths = []
    for i, img in enumerate([*_digits(3), face_arrays(1, size=32, seed=123)[0][0]]):
        paths.append(tmp_path / f"in_{i}.png")
        Image.fromarray(img).save(paths[-1])
    return paths


def test_predict_functions_warn_naming_the_input(three_digits_and_a_face: list[Path]) -> None:
    paths = three_digits_and_a_face
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = api.predict_age(paths, detect=False)  # the embedding's judgement, not the detector's
        api.predict_age(paths[-1], detect=False)
    flagged = [w for w in caught if issubclass(w.category, api.UnfamiliarInputWarning)]
    assert len(values) == 4 and len(flagged) == 1  # one warning per call, none for the familiar face
    text = str(flagged[0].message)
    assert "3 of 4 inputs" in text and all(f"in_{i}.png" in text for i in range(3)) and "in_3.png" not in text
    assert "familiarity 0.0" in text and flagged[0].filename == __file__  # points at the caller


def test_an_unfamiliar_inputs_plus_minus_is_at_least_the_gallerys_own_spread(tmp_path: Path) -> None:
    """White noise far from the brain-age gallery used to get a ± near 0 (one neighbour carries the kernel);
    flagged inputs are served at least the ± of knowing only the gallery's targets, the rest as calibrated."""
    from supemb.data.synthetic_eeg import make_eeg_dataset
    from supemb.predict.calibration import prior_halfwidth

    bundle = load_bundle(api.default_bundle_path("brain_age"))
    prior = prior_halfwidth(bundle.targets)
    t = np.asarray(bundle.targets, dtype=np.float64)
    assert 0.6 <= np.mean(np.abs(t - np.median(t)) <= prior) <= 0.75 and prior > 5  # years
    noise = bundle.predict(_noise_recordings(tmp_path, 6))
    assert all(p.unfamiliar for p in noise) and all(p.uncertainty >= prior for p in noise)
    held = bundle.predict(sorted(make_eeg_dataset(tmp_path / "held", 12, duration_s=30.0, sfreq=100.0,
                                                  seed=11).glob("*.edf")))
    familiar = [p for p in held if not p.unfamiliar]
    assert familiar and any(p.uncertainty < prior for p in familiar)  # calibrated, not floored


def test_cli_line_and_json_carry_familiarity(three_digits_and_a_face: list[Path], capsys) -> None:
    from supemb.cli import main as cli

    bundle = str(api.default_bundle_path("age"))
    paths = [str(p) for p in three_digits_and_a_face]
    assert cli(["predict", bundle, *paths, "--no-detect"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all("\tfamiliarity: " in line for line in lines)
    assert ["UNFAMILIAR" in line for line in lines] == [True, True, True, False]
    assert cli(["predict", bundle, *paths, "--json", "--no-detect"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [d["unfamiliar"] for d in out] == [True, True, True, False]
    assert all(0.0 <= d["familiarity"] <= 1.0 for d in out) and out[0]["familiarity"] < 0.05 < out[3]["familiarity"]


def test_demo_summary_shows_familiarity_and_the_flag(three_digits_and_a_face: list[Path], tmp_path: Path) -> None:
    from supemb.demo.views import summary_markdown

    b = load_bundle(api.default_bundle_path("age"))
    digit, face = b.predict([three_digits_and_a_face[0], three_digits_and_a_face[3]], detect=False)
    flagged, familiar = summary_markdown(b, digit, 10, "faces"), summary_markdown(b, face, 10, "faces")
    assert "Familiarity" in flagged and "Unfamiliar input" in flagged
    assert "**Familiarity " in familiar and "Unfamiliar" not in familiar
    old = _copy_default("age", tmp_path)
    _drop_familiarity(old)
    b_old = load_bundle(old)
    assert "amiliar" not in summary_markdown(b_old, b_old.predict(three_digits_and_a_face[0], detect=False)[0], 10, "faces")
    # the ± is said to be calibrated only where the manifest has the scale
    assert "two in three validation errors fell inside it." in familiar
    m = json.loads((old / mf.MANIFEST).read_text())
    del m["knn"]["uncertainty_scale"]
    (old / mf.MANIFEST).write_text(json.dumps(m, indent=2))
    b_old = load_bundle(old)
    text = summary_markdown(b_old, b_old.predict(three_digits_and_a_face[3], detect=False)[0], 10, "faces")
    spread = "± is the weighted spread of those offsets." if b_old.residual else "± is their weighted spread."
    assert spread in text and "validation" not in text
