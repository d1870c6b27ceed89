"""Export and serving: train tiny models, export bundles, load them, predict.

One image regression, one image classification and one EEG bundle are built
once per module (a few seconds each on CPU) and shared by the tests. The two
RnC bundles serve metric "l2" (raw encoder output, similarity = -Euclidean
distance), the SupCon one "cosine" (unit vectors, similarity = dot product).
"""

from __future__ import annotations

import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from supemb.cli import main as cli
from supemb.errors import UserError
from supemb.predict import manifest as mf
from supemb.predict.bundle import Prediction, load_bundle
from supemb.train.config import TrainConfig
from supemb.train.trainer import train


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runtime")


def _train(data: Path, out: Path, **kw) -> Path:
    cfg = dict(data=str(data), out=str(out), epochs=1, linear_epochs=1, batch_size=16, image_size=16,
               viz=False, knn_k=5)
    cfg.update(kw)
    train(TrainConfig(**cfg))
    return out


@pytest.fixture(scope="module")
def webcam(work: Path) -> Path:
    from supemb.data.synthetic_webcam import make_webcam_dataset

    return make_webcam_dataset(work / "webcam", 60, n_cameras=3, size=24, seed=0)


@pytest.fixture(scope="module")
def reg_bundle(work: Path, webcam: Path) -> Path:
    from supemb.export.writer import export_run

    run = _train(webcam, work / "run_reg", target="temperature", loss="rnc", metric="l2")
    export_run(run, work / "b_reg", unit="°C", thumbnails=8)
    return work / "b_reg"


@pytest.fixture(scope="module")
def class_folder(work: Path) -> Path:
    root = work / "classes"
    rng = np.random.default_rng(0)
    for c, colour in enumerate(("red", "green", "blue")):
        (root / colour).mkdir(parents=True)
        for i in range(12):
            px = rng.integers(0, 60, (20, 20, 3))
            px[..., c] += 180
            Image.fromarray(px.astype(np.uint8)).save(root / colour / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def cls_bundle(work: Path, class_folder: Path) -> Path:
    from supemb.export.writer import export_run

    run = _train(class_folder, work / "run_cls", target="class", loss="supcon", epochs=2, metric="cosine")
    export_run(run, work / "b_cls")
    return work / "b_cls"


@pytest.fixture(scope="module")
def eeg_data(work: Path) -> Path:
    from supemb.data.synthetic_eeg import make_eeg_dataset

    return make_eeg_dataset(work / "eeg", 12, duration_s=12.0, sfreq=100.0, seed=0)


@pytest.fixture(scope="module")
def eeg_bundle(work: Path, eeg_data: Path) -> Path:
    """Exported as a .zip: loading a zipped bundle is part of the contract."""
    from supemb.export.writer import export_run

    run = _train(eeg_data, work / "run_eeg", target="age", loss="rnc", batch_size=8, metric="l2",
                 eeg={"window_s": 4.0, "stride_s": 4.0})
    export_run(run, work / "b_eeg.zip", unit="years")
    return work / "b_eeg.zip"


def _images(csv_path: Path, n: int) -> list[Path]:
    lines = csv_path.read_text().splitlines()[1:n + 1]
    return [csv_path.parent / line.split(",")[0] for line in lines]


def _held_out(csv_path: Path) -> list[Path]:
    """The val and test images of a labels.csv (the bundle's gallery is the training split)."""
    lines = [line.split(",") for line in csv_path.read_text().splitlines()[1:]]
    return [csv_path.parent / cells[0] for cells in lines if cells[-1] in ("val", "test")]


# ------------------------------------------------ the kNN by hand (plain numpy, none of supemb's arithmetic)


def _gallery_ranking(b, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every gallery item ranked for each row [R, D]: (order [R, G], similarities [R, G]) by decreasing
    similarity, computed from the bundle's stored gallery vectors in float64 (l2: -distance; cosine: dot)."""
    import faiss

    gallery = faiss.read_index(str(b.root / "index.faiss")).reconstruct_n(0, b.index.ntotal).astype(np.float64)
    q = np.asarray(rows, np.float64)
    sim = q @ gallery.T if b.metric == "cosine" else -np.linalg.norm(q[:, None, :] - gallery[None], axis=2)
    order = np.argsort(-sim, axis=1, kind="stable")
    return order, np.take_along_axis(sim, order, axis=1)


def _median_by_hand(y: np.ndarray, w: np.ndarray) -> float:
    """The value minimising sum_j w_j |y_j - m| (the midpoint if a whole interval does)."""
    cost = np.array([np.sum(w * np.abs(y - c)) for c in y])
    best = y[cost <= cost.min() + 1e-9]
    return 0.5 * (best.min() + best.max())


def _served_pm(b, preds: list, spread: np.ndarray, scale: float | None = None) -> np.ndarray:
    """The ± served for spreads [R]: times the calibrated scale; for an input flagged unfamiliar, at
    least the 68.27 % quantile of the gallery targets' distance to their median (what knowing only
    them would give)."""
    t = np.asarray(b.targets, np.float64)
    prior = np.quantile(np.abs(t - np.median(t)), 0.6827)
    pm = np.asarray(spread) * (b.uncertainty_scale if scale is None else scale)
    return np.where([bool(p.unfamiliar) for p in preds], np.maximum(pm, prior), pm)


def _knn_by_hand(b, rows: np.ndarray, k: int, reduce: str = "mean",
                 knn: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's kNN value and spread [R] from the manifest's settings: softmax weights
    exp(s / t) over the k most similar gallery items; the weighted mean (or median) and
    sqrt(sum w (y - weighted mean)^2). knn: other settings than the manifest's."""
    knn = b.manifest["knn"] if knn is None else knn
    assert knn["weighting"] == "softmax"
    order, sim = _gallery_ranking(b, rows)
    near, s = order[:, :k], sim[:, :k]
    w = np.exp((s - s[:, :1]) / knn["temperature"])
    w /= w.sum(axis=1, keepdims=True)
    y = np.asarray(b.targets, np.float64)
    offset = np.zeros(len(rows))
    if knn.get("residual"):  # kNN of a linear head's residuals, plus the head's value for the query
        import faiss

        head_w, head_b = np.asarray(knn["residual"]["weight"], np.float64), knn["residual"]["bias"]
        gallery = faiss.read_index(str(b.root / "index.faiss")).reconstruct_n(0, b.index.ntotal).astype(np.float64)
        y = y - (gallery @ head_w + head_b)
        offset = np.asarray(rows, np.float64) @ head_w + head_b
    y = y[near]
    mean = (w * y).sum(axis=1)
    spread = np.sqrt((w * (y - mean[:, None]) ** 2).sum(axis=1))
    value = mean if reduce == "mean" else np.array([_median_by_hand(yy, ww) for yy, ww in zip(y, w)])
    return value + offset, spread


# ------------------------------------------------------------ round trips


def test_image_regression_round_trip(reg_bundle: Path, webcam: Path) -> None:
    b = load_bundle(reg_bundle, device="cpu")
    m = b.manifest
    assert (m["task"], m["modality"], m["target"]) == ("regression", "image", {"name": "temperature", "unit": "°C"})
    assert max(m["onnx"]["parity_max_abs_diff"].values()) <= 1e-4
    assert set(m["onnx"]["parity_max_abs_diff"]) == {"batch_1", "batch_16"}
    assert b.device == "cpu" and b.index.ntotal == m["gallery"]["items"] > 0
    # the ONNX file is one self-contained file with a dynamic batch axis
    assert sorted(p.name for p in reg_bundle.iterdir()) == sorted(
        ["manifest.json", "encoder.onnx", "index.faiss", "targets.npy", "gallery.json", "thumbnails.npy"])
    import onnx

    graph = onnx.load(str(reg_bundle / "encoder.onnx")).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param
    emb = b.embed(_images(webcam, 5))
    assert emb.shape == (5, b.embedding_dim)
    unseen = _held_out(webcam)  # not in the gallery: several neighbours weigh in
    preds = b.predict(unseen, k=4)
    medians = b.predict(unseen, k=4, reduce="median")
    value, spread = _knn_by_hand(b, b.embed(unseen), 4)
    median, _ = _knn_by_hand(b, b.embed(unseen), 4, reduce="median")
    assert np.abs(median - value).max() > 0.1  # the two reductions differ here, so reduce= is exercised
    scale = b.manifest["knn"]["uncertainty_scale"]  # the spread calibrated on validation
    assert scale == b.uncertainty_scale != 1.0
    assert any(p.unfamiliar for p in preds) and not all(p.unfamiliar for p in preds)  # both kinds of ± below
    for p, pm, v, sp, med in zip(preds, medians, value, _served_pm(b, preds, spread), median):
        assert isinstance(p, Prediction) and p.ok
        assert p.value == pytest.approx(v, abs=1e-3) and p.uncertainty == pytest.approx(sp, abs=1e-3)
        assert pm.value == pytest.approx(med, abs=1e-3) and pm.uncertainty == pytest.approx(sp, abs=1e-3)
        assert len(p.neighbours) == 4
        sims = [n.similarity for n in p.neighbours]
        assert sims == sorted(sims, reverse=True)
        json.dumps(p.to_dict())  # JSON-able for the CLI and the demo
    assert b.thumbnails is not None and b.thumbnails.shape == (b.index.ntotal, 8, 8, 3)


@pytest.mark.parametrize("residual", [True, False])
def test_served_value_with_and_without_a_residual_head(residual: bool, reg_bundle: Path, webcam: Path,
                                                       tmp_path: Path) -> None:
    """knn.residual (a linear head on the embedding) changes the served value to head(query) +
    the kNN of the gallery's residuals; without it, the kNN of the targets. Both against the
    hand computation, on a copy of the bundle whose manifest says one or the other."""
    import shutil

    from supemb.predict import manifest as mf

    root = tmp_path / "b"
    shutil.copytree(reg_bundle, root)
    m = {k: v for k, v in mf.read_manifest(root).items() if k != "files"}
    knn = {k: v for k, v in m["knn"].items() if k != "residual"}
    if residual:  # a head far from the trained one, so the two paths cannot agree by chance
        knn["residual"] = {"weight": [float(v) for v in np.random.default_rng(5).normal(0, 30, m["embedding_dim"])],
                           "bias": 7.5}
    mf.seal(root, {**m, "knn": knn})
    b = load_bundle(root, device="cpu")
    unseen = _held_out(webcam)
    value, spread = _knn_by_hand(b, b.embed(unseen), 4)
    preds = b.predict(unseen, k=4)
    assert [p.value for p in preds] == pytest.approx(value, abs=1e-3)
    assert [p.uncertainty for p in preds] == pytest.approx(_served_pm(b, preds, spread), abs=1e-3)
    if residual:  # the residual path really differs from plain kNN of the targets
        plain, _ = _knn_by_hand(b, b.embed(unseen), 4, knn={k: v for k, v in knn.items() if k != "residual"})
        assert np.abs(np.array([p.value for p in preds]) - plain).max() > 1.0


def test_bundle_files_get_usual_permissions(reg_bundle: Path, tmp_path: Path) -> None:
    """Not the 0600/0700 of temporary files: a bundle installed for others must be readable."""
    plain = tmp_path / "plain"
    plain.write_text("x")
    plain_dir = tmp_path / "plain_dir"
    plain_dir.mkdir()
    assert reg_bundle.stat().st_mode & 0o777 == plain_dir.stat().st_mode & 0o777
    for f in reg_bundle.iterdir():
        assert f.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777, f.name


@pytest.mark.parametrize("which", ["reg", "cls"])
def test_gallery_item_finds_itself(which: str, reg_bundle: Path, cls_bundle: Path) -> None:
    """The gallery was embedded by the exported ONNX model through serving's
    own preprocessing, so a gallery image's nearest neighbour is itself:
    at similarity 1 (cosine) or 0 (l2: minus a distance of 0)."""
    b = load_bundle(reg_bundle if which == "reg" else cls_bundle, device="cpu")
    assert b.metric == ("l2" if which == "reg" else "cosine")
    ids = b.ids[:4]
    root = Path(b.manifest["gallery"]["source"].split(" (")[0])
    root = root.parent if root.is_file() else root
    preds = b.predict([root / i for i in ids], k=1)
    for j, p in enumerate(preds):
        # cosine: 1 to rounding; l2: a distance of 0 comes out of FAISS's |q|^2 + |g|^2 - 2 q.g as ~1e-3
        best, tol = (1.0, 1e-5) if b.metric == "cosine" else (0.0, 1e-3)
        assert p.neighbours[0].index == j and p.neighbours[0].similarity == pytest.approx(best, abs=tol)
        if b.task == "regression":
            assert p.value == pytest.approx(float(b.targets[j]), abs=1e-5)
        else:
            assert p.label == b.labels[int(b.targets[j])]


def test_input_kinds_agree(reg_bundle: Path, webcam: Path) -> None:
    import supemb

    path = _images(webcam, 1)[0]
    pil = Image.open(path)
    arr = np.asarray(pil.convert("RGB"))
    one = supemb.predict_temperature(path, bundle=reg_bundle)
    assert isinstance(one, float)
    assert supemb.predict_temperature(str(path), bundle=reg_bundle) == one
    assert supemb.predict_temperature(pil, bundle=reg_bundle) == pytest.approx(one, abs=1e-6)
    assert supemb.predict_temperature(arr, bundle=reg_bundle) == pytest.approx(one, abs=1e-6)
    many = supemb.predict_temperature([path, pil, arr], bundle=reg_bundle)
    assert isinstance(many, list) and np.allclose(many, one, atol=1e-6)
    assert supemb.predict_temperature(path, bundle=reg_bundle, k=1) == pytest.approx(
        float(load_bundle(reg_bundle).predict(path, k=1)[0].value))
    with pytest.raises(UserError, match="predicts age, but this one predicts 'temperature'"):
        supemb.predict_age(path, bundle=reg_bundle)  # a temperature bundle is not an age model


def test_classification_round_trip(cls_bundle: Path, class_folder: Path) -> None:
    b = load_bundle(cls_bundle, device="cpu")
    assert b.task == "classification" and b.labels == ["blue", "green", "red"]
    assert b.targets.dtype == np.int64
    paths = [class_folder / c / "0.png" for c in ("red", "green", "blue")]
    for p, want in zip(b.predict(paths), ("red", "green", "blue")):
        assert p.label in b.labels and sum(p.probabilities.values()) == pytest.approx(1.0)
        assert p.uncertainty == pytest.approx(1 - max(p.probabilities.values()))
        assert p.neighbours[0].label == want  # the image itself is in the gallery
    with pytest.raises(UserError, match="regression"):
        import supemb

        supemb.predict_age(paths[0], bundle=cls_bundle)


def test_eeg_round_trip(eeg_bundle: Path, eeg_data: Path) -> None:
    import mne

    import supemb

    b = load_bundle(eeg_bundle, device="cpu")
    assert b.modality == "eeg" and b.groups is not None and len(b.recordings) >= 2
    # the recording's value and uncertainty from its windows, by hand: the mean of
    # the windows' kNN predictions; sqrt(mean within-window spread^2 + their variance)
    assert b.knn["reduce"] == "mean"
    for rec in sorted(eeg_data.glob("*.edf")):  # one whose windows disagree, so the combination is exercised
        rows, _, _ = b.encoder.embed_rows([rec])
        pred, spread = _knn_by_hand(b, rows, 3)
        if np.var(pred) > 0.01:
            break
    p = b.predict(rec, k=3)[0]
    assert p.ok and p.windows == 3  # 12 s recording, 4 s windows, 4 s stride
    assert len({n.id for n in p.neighbours}) == len(p.neighbours) <= 3  # neighbours are recordings
    assert p.value == pytest.approx(pred.mean(), abs=1e-4)  # float64 from the stored vectors, FAISS in float32
    scale = b.manifest["knn"]["uncertainty_scale"]  # calibrated per recording on the run's validation split
    assert scale != 1.0
    assert p.uncertainty == pytest.approx(scale * np.sqrt(np.mean(spread**2) + np.var(pred)), abs=1e-4)
    assert np.var(pred) > 0  # the windows disagree: the combination is exercised
    raw = mne.io.read_raw_edf(rec, preload=True, verbose="error")
    age_path = supemb.predict_brain_age(rec, bundle=eeg_bundle)
    assert supemb.predict_brain_age(raw, bundle=eeg_bundle) == pytest.approx(age_path, abs=1e-5)
    assert supemb.predict_brain_age([rec, rec], bundle=eeg_bundle) == pytest.approx([age_path] * 2)
    assert b.embed([rec]).shape == (1, b.embedding_dim)


# ------------------------------------------------------------ damaged bundles


def _copy(bundle: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(bundle, out)
    return out


@pytest.mark.parametrize("damage, message", [
    ("flip", "checksum mismatch"),
    ("truncate", "truncated"),
    ("remove", "missing from the bundle"),
    ("manifest", "not valid JSON"),
])
def test_damaged_bundle_is_refused(reg_bundle: Path, tmp_path: Path, damage: str, message: str) -> None:
    b = _copy(reg_bundle, tmp_path)
    if damage == "flip":
        data = bytearray((b / "targets.npy").read_bytes())
        data[-1] ^= 0xFF
        (b / "targets.npy").write_bytes(bytes(data))
    elif damage == "truncate":
        data = (b / "encoder.onnx").read_bytes()
        (b / "encoder.onnx").write_bytes(data[: len(data) // 2])
    elif damage == "remove":
        (b / "index.faiss").unlink()
    else:
        (b / "manifest.json").write_text("{ not json")
    with pytest.raises(UserError, match=message):
        load_bundle(b)
    assert cli(["predict", str(b), "x.png"]) == 1


def test_encoder_that_does_not_match_the_index(reg_bundle: Path, tmp_path: Path) -> None:
    """A consistent manifest (re-sealed) around an ONNX model of another size."""
    import torch

    from supemb.encoders.onnx_util import export_onnx

    b = _copy(reg_bundle, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    s = next(step["image_size"] for step in m["preprocessing"]["steps"] if step["op"] == "resize_crop")
    export_onnx(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * s * s, 7)),
                torch.zeros(2, 3, s, s), b / "encoder.onnx", input_name="input", output_name="embedding")
    mf.seal(b, {k: v for k, v in m.items() if k != "files"})
    with pytest.raises(UserError, match="do not belong together"):
        load_bundle(b)


# ------------------------------------------------------------ bad inputs


@pytest.fixture()
def bad_inputs(tmp_path: Path) -> dict[str, Path]:
    good = np.full((20, 20, 3), 128, np.uint8)
    Image.fromarray(good).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello, not an image\n")
    return {"ok": tmp_path / "ok.png", "truncated": tmp_path / "truncated.png", "empty": tmp_path / "empty.png",
            "text": tmp_path / "text.png", "missing": tmp_path / "missing.png"}


@pytest.mark.parametrize("kind", ["truncated", "empty", "text", "missing"])
def test_bad_image_is_named(reg_bundle: Path, bad_inputs: dict[str, Path], kind: str, capsys) -> None:
    b = load_bundle(reg_bundle, device="cpu")
    with pytest.raises(UserError) as err:
        b.predict([bad_inputs["ok"], bad_inputs[kind]])
    assert str(bad_inputs[kind]) in str(err.value) and "\n" not in str(err.value)
    assert cli(["predict", str(reg_bundle), str(bad_inputs["ok"]), str(bad_inputs[kind])]) == 1
    captured = capsys.readouterr()
    assert str(bad_inputs[kind]) in captured.err and "Traceback" not in captured.err
    assert captured.out == ""  # fail mode: nothing half-printed


def test_on_error_skip_keeps_the_good(reg_bundle: Path, bad_inputs: dict[str, Path], capsys) -> None:
    b = load_bundle(reg_bundle, device="cpu")
    order = ["ok", "truncated", "ok", "missing", "text", "empty"]
    preds = b.predict([bad_inputs[k] for k in order], on_error="skip")
    assert [p.ok for p in preds] == [k == "ok" for k in order]
    assert preds[0].value == preds[2].value
    assert all(str(bad_inputs[k]) in p.error for k, p in zip(order, preds) if k != "ok")
    rc = cli(["predict", str(reg_bundle), *map(str, (bad_inputs[k] for k in order)), "--on-error", "skip", "--json"])
    captured = capsys.readouterr()
    assert rc == 1
    out = json.loads(captured.out)
    assert [("error" not in p) for p in out] == [k == "ok" for k in order]
    assert captured.err.count("skipped:") == 4


def test_bad_eeg_inputs(eeg_bundle: Path, tmp_path: Path) -> None:
    from supemb.data.synthetic_eeg import make_eeg_dataset

    short = make_eeg_dataset(tmp_path / "short", 2, duration_s=2.0, sfreq=100.0, seed=1)
    rec = sorted(short.glob("*.edf"))[0]
    b = load_bundle(eeg_bundle, device="cpu")
    with pytest.raises(UserError, match=f"{rec}.*too short"):
        b.predict(rec)
    import mne

    few = mne.io.RawArray(np.zeros((3, 2000)), mne.create_info(["Fp1", "Fp2", "Cz"], 100.0, "eeg"), verbose="error")
    with pytest.raises(UserError, match="too few channels"):
        b.predict(few)
    assert cli(["predict", str(eeg_bundle), str(rec)]) == 1


# ------------------------------------------------------------ threads


def test_threads_agree_with_one(reg_bundle: Path, webcam: Path) -> None:
    b = load_bundle(reg_bundle, device="cpu")
    paths = _images(webcam, 12)
    want = [p.value for p in b.predict(paths)]
    barrier = threading.Barrier(8)

    def worker(i: int) -> list[float]:
        barrier.wait()
        got = []
        for _ in range(3):
            got.extend(p.value for p in b.predict(paths[i % 4:] + paths[: i % 4], batch_size=5))
        return got

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(worker, range(8)))
    for i, got in enumerate(results):
        rotated = want[i % 4:] + want[: i % 4]
        assert got == pytest.approx(rotated * 3, abs=1e-6)


# ------------------------------------------------------------ export options, index, eval


def test_export_refuses_existing_and_bad_parity(work: Path, reg_bundle: Path, monkeypatch) -> None:
    from supemb.export import writer as export

    with pytest.raises(UserError, match="already exists"):
        export.export_run(work / "run_reg", reg_bundle)
    monkeypatch.setitem(export.PARITY_TOL, "float32", 0.0)
    target = work / "never"
    with pytest.raises(UserError, match="parity check failed"):
        export.export_run(work / "run_reg", target)
    assert not target.exists() and not list(work.glob(".never*"))


def test_fp16_export(work: Path, tmp_path: Path, webcam: Path) -> None:
    from supemb.export.writer import export_run

    m = export_run(work / "run_reg", tmp_path / "half", fp16=True)
    diff = max(m["onnx"]["parity_max_abs_diff"].values())
    # l2: raw embeddings, the tolerance scaled by their largest norm when above 1
    assert m["onnx"]["dtype"] == "float16" and m["metric"] == "l2" and 0 < diff <= m["onnx"]["parity_tolerance"]
    assert m["onnx"]["parity_tolerance"] >= 1e-2
    full = load_bundle(work / "b_reg").embed(_images(webcam, 4))
    half = load_bundle(tmp_path / "half").embed(_images(webcam, 4))
    assert np.abs(full - half).max() <= m["onnx"]["parity_tolerance"]


def test_index_rebuild_and_append(reg_bundle: Path, tmp_path: Path, webcam: Path, capsys) -> None:
    b_dir = _copy(reg_bundle, tmp_path)
    n0 = load_bundle(b_dir).index.ntotal
    assert cli(["index", str(b_dir), "--data", str(webcam)]) == 0  # all 60 images, every split
    b = load_bundle(b_dir)
    assert b.index.ntotal == 60 and len(b.ids) == 60 and b.thumbnails.shape[0] == 60
    assert cli(["index", str(b_dir), "--data", str(webcam), "--append"]) == 0
    b = load_bundle(b_dir)
    assert b.index.ntotal == 120 and n0 < 60
    # the same data twice: the added ids, which the gallery holds already, are told apart by the data's folder
    tag = (webcam.parent if webcam.is_file() else webcam).name
    assert len(set(b.ids)) == 120 and b.ids[60:] == [f"{tag}/{i}" for i in b.ids[:60]]
    assert b.metric == b.index.metric == "l2"  # appending keeps the bundle's metric
    assert cli(["index", str(b_dir), "--data", str(webcam), "--index", "hnsw"]) == 0
    b = load_bundle(b_dir)
    assert b.manifest["index"]["kind"] == "hnsw" and b.index.ntotal == 60
    assert b.manifest["metric"] == b.manifest["index"]["metric"] == b.index.metric == "l2"  # so does a rebuild
    assert b.predict(_images(webcam, 1))[0].ok
    # the rebuilt index answers in the l2 convention: a gallery item finds itself at -distance 0
    sim, idx = b.index.search(b.embed([webcam.parent / b.ids[0]]), 1)
    assert idx[0, 0] == 0 and sim[0, 0] == pytest.approx(0.0, abs=1e-3)


def _labels_csv(csv_path: Path, column: str) -> tuple[list[Path], np.ndarray]:
    import csv

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    return [csv_path.parent / r["path"] for r in rows], np.array([float(r[column]) for r in rows])


def test_eval_cli(reg_bundle: Path, cls_bundle: Path, eeg_bundle: Path, webcam: Path, class_folder: Path,
                  eeg_data: Path, tmp_path: Path, capsys) -> None:
    """Every figure `supemb eval` prints, recomputed here from the bundle's stored gallery by brute force."""
    from scipy.stats import spearmanr

    # regression: MAE / RMSE / R² / mean spread of the kNN, and the ordinality of the embeddings
    assert cli(["eval", str(reg_bundle), "--data", str(webcam), "--json"]) == 0
    out = capsys.readouterr()
    m = json.loads(out.out)
    b = load_bundle(reg_bundle, device="cpu")
    paths, y = _labels_csv(webcam, "temperature")
    # the data holds the bundle's own gallery (its training split): counted, and the user told
    in_gallery = set(b.ids) & {str(Path(p).relative_to(webcam.parent)) for p in paths}
    assert 0 < m["in_gallery"] == len(in_gallery) < len(paths)
    assert f"{m['in_gallery']} of 60 items are in the bundle's gallery" in out.err
    emb = b.embed(paths).astype(np.float64)
    pred, spread = _knn_by_hand(b, emb, b.default_k)
    err = pred - y
    assert m["items"] == 60 and m["k"] == b.default_k
    assert "knn_mae" not in m  # named for what is served, which the manifest says (here, plain or residual kNN)
    assert m["served"] == ("residual kNN" if b.manifest["knn"].get("residual") else "kNN")
    assert m["served_mae"] == pytest.approx(np.abs(err).mean(), abs=1e-3)
    assert m["served_mae"] < 0.9 * np.abs(y - y.mean()).mean()  # and it is not the predict-the-mean figure
    assert m["served_rmse"] == pytest.approx(np.sqrt(np.mean(err**2)), abs=1e-3)
    assert m["served_r2"] == pytest.approx(1 - np.sum(err**2) / np.sum((y - y.mean()) ** 2), abs=1e-4)
    scale = b.manifest["knn"]["uncertainty_scale"]  # the served ± is the spread calibrated on validation
    assert scale > 0 and scale != 1.0
    served = _served_pm(b, b.predict(paths), spread)  # an input flagged unfamiliar: at least the targets' own ±
    assert m["served_spread"] == pytest.approx(served.mean(), abs=1e-3)
    assert m["served_coverage"] == pytest.approx(np.mean(np.abs(err) <= served), abs=1e-9)
    i, j = np.triu_indices(len(y), k=1)
    rho = spearmanr(np.linalg.norm(emb[i] - emb[j], axis=1), np.abs(y[i] - y[j])).statistic
    assert m["ordinality"] == pytest.approx(rho, abs=1e-6)

    # classification: accuracy, P@1 and MAP@R against the gallery (the queries include gallery images)
    hard = tmp_path / "hard"  # colours barely apart: an imperfect retrieval, so a wrong MAP@R would show
    rng = np.random.default_rng(1)
    for c, colour in enumerate(("red", "green", "blue")):
        (hard / colour).mkdir(parents=True)
        for n in range(8):
            px = rng.integers(0, 150, (20, 20, 3)) + rng.integers(0, 60, 3)  # a random tint per image
            px[..., c] += 25
            Image.fromarray(px.astype(np.uint8)).save(hard / colour / f"{n}.png")
    assert cli(["eval", str(cls_bundle), "--data", str(hard), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    b = load_bundle(cls_bundle, device="cpu")
    paths = sorted(hard.rglob("*.png"))
    truth = np.array([b.labels.index(p.parent.name) for p in paths])
    order, sim = _gallery_ranking(b, b.embed(paths))
    k = min(b.default_k, b.index.ntotal)
    w = np.exp((sim[:, :k] - sim[:, :1]) / b.manifest["knn"]["temperature"])
    votes = np.array([[w[q, b.targets[order[q, :k]] == c].sum() for c in range(len(b.labels))]
                      for q in range(len(paths))])
    ap = []
    for q in range(len(paths)):
        r = int(np.sum(b.targets == truth[q]))
        rel = b.targets[order[q, :r]] == truth[q]
        ap.append(np.sum(np.cumsum(rel)[rel] / (np.flatnonzero(rel) + 1)) / r)
    assert m["items"] == 24
    assert m["knn_acc"] == pytest.approx(np.mean(votes.argmax(axis=1) == truth), abs=1e-9)
    assert m["p_at_1"] == pytest.approx(np.mean(b.targets[order[:, 0]] == truth), abs=1e-9)
    assert m["map_at_r"] == pytest.approx(np.mean(ap), abs=1e-6)
    assert 0.3 < m["map_at_r"] < 0.95 and m["p_at_1"] < 1.0

    # EEG: per recording, the mean of its windows' kNN predictions
    assert cli(["eval", str(eeg_bundle), "--data", str(eeg_data), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    b = load_bundle(eeg_bundle, device="cpu")
    recs, ages = _labels_csv(eeg_data / "labels.csv", "age")
    rows, owner, _ = b.encoder.embed_rows(recs)
    window_pred, _ = _knn_by_hand(b, rows, b.default_k)
    rec_pred = np.array([window_pred[owner == i].mean() for i in range(len(recs))])
    assert m["items"] == 12
    assert m["served_mae"] == pytest.approx(np.abs(rec_pred - ages).mean(), abs=1e-3)


# ------------------------------------------------------------ devices


@pytest.mark.filterwarnings("ignore:Specified provider:UserWarning")  # ONNX Runtime's own notice
def test_cuda_fallback_is_detected_and_warned(reg_bundle: Path, monkeypatch) -> None:
    """ONNX Runtime quietly drops a CUDA provider it cannot start; we say so.
    Here the CPU build is told CUDA is available, asked for it, and falls back."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has CUDA: no fallback to provoke")
    real = ort.get_available_providers
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real()])
    with pytest.warns(RuntimeWarning, match="fell back to CPU"):
        b = load_bundle(reg_bundle, device="auto")
    assert b.device == "cpu"


def test_cuda_requested_without_cuda_is_a_clear_error(reg_bundle: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has CUDA")
    with pytest.raises(UserError, match="no CUDA provider"):
        load_bundle(reg_bundle, device="cuda")
    with pytest.raises(UserError, match="auto, cpu or cuda"):
        load_bundle(reg_bundle, device="tpu")


# ------------------------------------------------------------ metrics: cosine and l2


def test_l2_bundle_serves_raw_embeddings_by_euclidean_distance(reg_bundle: Path, work: Path, webcam: Path) -> None:
    """An RnC (L2-distance) run exported: raw encoder output, an L2 FAISS index,
    similarities -||q - g||, and kNN weights with the run's own temperature."""
    import faiss
    import torch

    from supemb.train.rundir import RunDir

    b = load_bundle(reg_bundle, device="cpu")
    m = b.manifest
    meta = json.loads((work / "run_reg" / "model.json").read_text())
    assert meta["metric"] == "l2" and meta["embedding"] == "encoder output"
    assert m["metric"] == b.metric == b.index.metric == m["index"]["metric"] == "l2"
    assert faiss.read_index(str(reg_bundle / "index.faiss")).metric_type == faiss.METRIC_L2
    served = meta["knn_residual"] or {"temperature": meta["knn_temperature"], "k": meta["knn_k"]}  # as chosen
    assert (m["knn"]["temperature"], m["knn"]["k"]) == (pytest.approx(served["temperature"]), served["k"])
    assert ("residual" in m["knn"]) == (meta["knn_residual"] is not None)
    assert m["format_version"] == (3 if meta["knn_residual"] else 2)  # older readers refuse a residual bundle
    assert ("parity_head_max_abs_diff" in m["onnx"]) == (meta["knn_residual"] is not None)
    # the ONNX output is the raw encoder output (not unit length), as PyTorch computes it
    module, _, _ = RunDir(work / "run_reg").embedding_model()
    x = np.concatenate([b.encoder.decode(p) for p in _images(webcam, 6)])
    with torch.no_grad():
        raw = module.encoder(torch.from_numpy(x)).numpy()
    emb = b.embed_arrays(x)
    np.testing.assert_allclose(emb, raw, atol=1e-4)
    assert not np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-3)
    # neighbours and similarities: brute force over the gallery's vectors
    gallery = faiss.read_index(str(reg_bundle / "index.faiss")).reconstruct_n(0, b.index.ntotal)
    dist = np.linalg.norm(emb[:, None, :].astype(np.float64) - gallery[None].astype(np.float64), axis=2)
    preds = b.predict_embeddings(emb, np.arange(len(emb)), [f"q{i}" for i in range(len(emb))], k=4)
    for i, p in enumerate(preds):
        want = np.argsort(dist[i], kind="stable")[:4]
        assert [n.index for n in p.neighbours] == want.tolist()
        np.testing.assert_allclose([n.similarity for n in p.neighbours], -dist[i, want], rtol=1e-4, atol=1e-4)
        # the prediction: softmax weights exp(-d / t) with the manifest's (the run's) temperature, over
        # the targets, or over a linear head's residuals plus the head's value (where the run chose it)
        w = np.exp(-(dist[i, want] - dist[i, want].min()) / served["temperature"])
        w /= w.sum()
        head_w, head_b = np.asarray(served.get("weight", np.zeros(emb.shape[1])), np.float64), served.get("bias", 0.0)
        y = b.targets[want].astype(np.float64) - (gallery[want].astype(np.float64) @ head_w + head_b)
        value = float(w @ y)
        assert p.value == pytest.approx(value + float(emb[i].astype(np.float64) @ head_w + head_b), abs=1e-4)
        # the ± : their weighted spread times the scale the run calibrated on validation
        scale = meta["knn_uncertainty_scale"]
        assert m["knn"]["uncertainty_scale"] == scale and scale != 1.0
        assert p.uncertainty == pytest.approx(scale * float(np.sqrt(w @ (y - value) ** 2)), abs=1e-4)


def test_eeg_l2_recording_embedding_is_the_plain_mean(eeg_bundle: Path, eeg_data: Path) -> None:
    from supemb.predict.neighbours import recording_embeddings

    b = load_bundle(eeg_bundle, device="cpu")
    assert b.metric == "l2"
    recs = sorted(eeg_data.glob("*.edf"))[:2]
    rows, owner, _ = b.encoder.embed_rows(recs)
    got = b.embed(recs)
    want = np.stack([rows[owner == i].mean(axis=0) for i in range(2)])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert not np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)  # not normalised
    # cosine bundles keep today's: the normalised mean of the windows' unit vectors
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    cos = recording_embeddings(unit, owner, 2, "cosine")
    mean = np.stack([unit[owner == i].mean(axis=0) for i in range(2)])
    np.testing.assert_allclose(cos, mean / np.linalg.norm(mean, axis=1, keepdims=True), rtol=1e-5)


def test_old_manifest_without_a_metric_is_cosine(cls_bundle: Path, class_folder: Path, tmp_path: Path) -> None:
    """Bundles written before the metric was recorded (no "metric", no index
    "metric") load and predict exactly as before: cosine."""
    b_dir = _copy(cls_bundle, tmp_path)
    m = json.loads((b_dir / "manifest.json").read_text())
    assert m["metric"] == "cosine" and m["knn"]["temperature"] > 0
    old = {k: v for k, v in m.items() if k not in ("files", "metric")}
    old["index"] = {k: v for k, v in m["index"].items() if k != "metric"}
    mf.seal(b_dir, old)
    assert "metric" not in json.loads((b_dir / "manifest.json").read_text())
    new, legacy = load_bundle(cls_bundle, device="cpu"), load_bundle(b_dir, device="cpu")
    assert legacy.metric == legacy.index.metric == "cosine"
    paths = [class_folder / c / f"{i}.png" for c in ("red", "green", "blue") for i in (0, 5)]
    for p, q in zip(new.predict(paths, k=5), legacy.predict(paths, k=5)):
        assert p.to_dict() == q.to_dict()
    emb = legacy.embed(paths)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert cli(["predict", str(b_dir), str(paths[0])]) == 0


def _final_line(run: Path) -> dict:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [x for x in lines if x.get("stage") == "final"][-1]


def _split_items(run: Path, split: str) -> tuple[list[Path], np.ndarray]:
    """The inputs of a run's `split` (images, or EEG recordings) and their targets, as the trainer drew them."""
    from supemb import modalities
    from supemb.data.image_layouts import load_image_table
    from supemb.train.rundir import RunDir

    cfg = RunDir(run).config()
    if json.loads((run / "model.json").read_text())["modality"] == "eeg":
        recs = [r for r in modalities.get("eeg")._records(cfg) if r.split == split]
    else:
        table = load_image_table(Path(cfg.data), cfg.target, format=cfg.format, task=cfg.task, seed=cfg.seed)
        recs = list(table.split(split))
    return [Path(r.path) for r in recs], np.array([float(r.target) for r in recs])


@pytest.mark.parametrize("run_name, bundle_fixture", [("run_reg", "reg_bundle"), ("run_eeg", "eeg_bundle")])
def test_served_uncertainty_is_calibrated_on_validation(run_name: str, bundle_fixture: str, work: Path,
                                                        request) -> None:
    """The bundle's ± (an image's, a recording's) is the kNN spread times model.json's scale; that
    scale is the smallest covering 68.27 % of the run's own validation errors, and the coverage and
    served MAE the run reports on val and test are what the bundle's predictions give."""
    from supemb.predict.calibration import COVERAGE, coverage_of, uncertainty_scale

    b = load_bundle(request.getfixturevalue(bundle_fixture), device="cpu")
    meta = json.loads((work / run_name / "model.json").read_text())
    final = _final_line(work / run_name)
    scale = meta["knn_uncertainty_scale"]
    assert b.uncertainty_scale == b.manifest["knn"]["uncertainty_scale"] == final["knn_uncertainty_scale"] == scale
    for split in ("val", "test"):
        paths, y = _split_items(work / run_name, split)
        preds = b.predict(paths)
        err = np.array([p.value for p in preds]) - y
        unc = np.array([p.uncertainty for p in preds])
        # FAISS/ONNX in float32 against the trainer's float64: an item on the edge may flip
        assert abs(coverage_of(err, unc) - final[f"{split}_knn_coverage"]) <= 1 / len(y) + 1e-9
        # what the run says its bundle serves (plain or residual kNN, as model.json records) is what it serves
        assert np.abs(err).mean() == pytest.approx(final[f"{split}_served_mae"], abs=1e-3)
        if split == "val":
            assert np.all(unc > 0) and coverage_of(err, unc) >= COVERAGE - 1 / len(y)
            assert uncertainty_scale(err, unc / scale) == pytest.approx(scale, rel=1e-3)


@pytest.mark.parametrize("which", ["image-cosine", "eeg-l2"])
def test_forced_residual_knn_is_served_as_the_run_measured_it(which: str, webcam: Path, eeg_data: Path,
                                                             tmp_path: Path, monkeypatch, capsys) -> None:
    """Whatever validation would choose, a run made to serve the residual kNN (a cosine image run;
    an EEG run, windows pooled per recording) records it, exports it, and its bundle serves on val
    and test exactly the MAE and coverage the run reported; `supemb eval` reports that MAE by name."""
    from supemb.export.writer import export_run
    from supemb.predict.calibration import coverage_of
    from supemb.train import final, selection
    from supemb.train.rundir import RunDir

    def always(train_feats, train_targets, val_feats, item_scores, *, metric, k, temperature, ks=selection.KNN_KS):
        return selection.fit_residual(train_feats, train_targets, val_feats, item_scores, metric=metric, ks=ks)

    monkeypatch.setattr(final, "choose_residual", always)
    if which == "eeg-l2":
        run = _train(eeg_data, tmp_path / "run", target="age", loss="rnc", batch_size=8, metric="l2",
                     eeg={"window_s": 4.0, "stride_s": 4.0})
    else:
        run = _train(webcam, tmp_path / "run", target="temperature", loss="l1", metric="cosine")
    meta, fin = RunDir(run).model(), _final_line(run)
    assert meta["knn_residual"] and meta["format_version"] == 2 and fin["served"] == "residual kNN"
    index = "ivf" if which == "image-cosine" else "flat"  # IVF: the residuals come from the file, not the index
    m = export_run(run, tmp_path / "b", unit="u", index=index)
    assert m["index"]["kind"] == index
    if index == "ivf":  # every cell probed: IVF finds what flat finds, so the MAE must match exactly
        assert m["index"]["nprobe"] == m["index"]["nlist"]
    assert m["format_version"] == 3 and m["knn"]["residual"]["weight"] == meta["knn_residual"]["weight"]
    assert (m["knn"]["k"], m["knn"]["temperature"]) == (meta["knn_residual"]["k"], meta["knn_residual"]["temperature"])
    # the head's values are parity-checked too, in target units, relative to the target's spread
    assert m["onnx"]["parity_head_tolerance"] == pytest.approx(1e-4 * meta["target_std"])
    assert 0.0 <= m["onnx"]["parity_head_max_abs_diff"] <= m["onnx"]["parity_head_tolerance"]
    b = load_bundle(tmp_path / "b", device="cpu")
    assert b.metric == which.split("-")[1]
    for split in ("val", "test"):
        paths, y = _split_items(run, split)
        preds = b.predict(paths)
        err = np.array([p.value for p in preds]) - y
        assert np.abs(err).mean() == pytest.approx(fin[f"{split}_served_mae"], abs=1e-3)
        unc = np.array([p.uncertainty for p in preds])
        assert abs(coverage_of(err, unc) - fin[f"{split}_knn_coverage"]) <= 1 / len(y) + 1e-9
    if which == "image-cosine":  # the test split as a CSV of its own: eval's served figure is the run's
        paths, y = _split_items(run, "test")
        (tmp_path / "test.csv").write_text("path,temperature\n" + "".join(f"{p},{t}\n" for p, t in zip(paths, y)))
        assert cli(["eval", str(tmp_path / "b"), "--data", str(tmp_path / "test.csv"), "--json"]) == 0
        ev = json.loads(capsys.readouterr().out)
        assert ev["served"] == "residual kNN" and ev["items"] == len(y) and "knn_mae" not in ev
        assert ev["served_mae"] == pytest.approx(fin["test_served_mae"], abs=1e-3)
        assert ev["served_coverage"] == pytest.approx(fin["test_knn_coverage"], abs=1 / len(y) + 1e-9)


def test_manifest_without_an_uncertainty_scale_serves_the_plain_spread(reg_bundle: Path, webcam: Path,
                                                                       tmp_path: Path) -> None:
    """Bundles written before the calibration load and serve the neighbours' spread unscaled."""
    b_dir = _copy(reg_bundle, tmp_path)
    m = json.loads((b_dir / "manifest.json").read_text())
    old = {k: v for k, v in m.items() if k != "files"}
    old["knn"] = {k: v for k, v in m["knn"].items() if k != "uncertainty_scale"}
    mf.seal(b_dir, old)
    new, legacy = load_bundle(reg_bundle, device="cpu"), load_bundle(b_dir, device="cpu")
    assert legacy.uncertainty_scale == 1.0 != new.uncertainty_scale
    unseen = _held_out(webcam)
    new.familiarity = legacy.familiarity = None  # the spreads alone (no floor for unfamiliar inputs)
    for p, q in zip(new.predict(unseen), legacy.predict(unseen)):
        assert p.value == q.value and p.uncertainty == pytest.approx(q.uncertainty * new.uncertainty_scale)


def test_run_metric_and_temperature_from_model_json(work: Path, reg_bundle: Path, webcam: Path,
                                                    tmp_path: Path) -> None:
    from supemb.export import writer as export
    from supemb.train.rundir import run_knn_temperature, run_metric

    assert run_metric({}) == "cosine"  # a run older than the metric
    assert run_metric({"embedding": "l2-normalised encoder output"}) == "cosine"
    assert run_metric({"metric": "l2", "embedding": "encoder output"}) == "l2"
    with pytest.raises(UserError, match="cannot export"):
        run_metric({"metric": "l2", "embedding": "l2-normalised encoder output"})
    with pytest.raises(UserError, match="cannot export"):
        run_metric({"embedding": "projection output"})
    with pytest.raises(UserError, match="metric 'dot'"):
        run_metric({"metric": "dot"})
    assert run_knn_temperature({}, "regression") == 0.1
    assert run_knn_temperature({"knn_temperature": None}, "classification") == 0.07
    assert run_knn_temperature({"knn_temperature": 0.8}, "regression") == 0.8
    with pytest.raises(UserError, match="knn_temperature"):
        run_knn_temperature({"knn_temperature": -1}, "regression")
    from supemb.train.rundir import RunDir

    assert RunDir(work / "run_reg").uncertainty_scale({}) == 1.0  # a run from before the calibration
    for bad in (0, -1.0, float("nan"), "2", None):
        with pytest.raises(UserError, match="model.json: knn_uncertainty_scale must be a positive number"):
            RunDir(work / "run_reg").uncertainty_scale({"knn_uncertainty_scale": bad})
    assert RunDir(work / "run_reg").knn_residual({"embed_dim": 2}) is None  # plain kNN, or a run from before
    good = {"k": 5, "temperature": 0.5, "weight": [1.0, 2.0], "bias": 0.0}
    assert RunDir(work / "run_reg").knn_residual({"embed_dim": 2, "knn_residual": good}) == good
    for bad, what in (({**good, "k": 0}, "k must be a positive integer"), ({**good, "weight": [1.0]}, "weight must be 2"),
                      ({**good, "temperature": -1}, "temperature must be a positive number"),
                      ({"weight": [1.0, 2.0], "bias": 0.0}, "must be a mapping with k, temperature, weight, bias")):
        with pytest.raises(UserError, match=f"model.json: knn_residual {what}"):
            RunDir(work / "run_reg").knn_residual({"embed_dim": 2, "knn_residual": bad})
    for dim in (None, "2", 0):  # the head's length cannot be checked without a sound embed_dim
        with pytest.raises(UserError, match=f"model.json: embed_dim must be a positive integer, got {dim!r}"):
            RunDir(work / "run_reg").knn_residual({"embed_dim": dim, "knn_residual": good})
    # a run whose model.json says cosine exports a normalising graph and an inner-product index
    run = tmp_path / "run"
    shutil.copytree(work / "run_reg", run)
    meta = json.loads((run / "model.json").read_text())
    meta.update(metric="cosine", embedding="l2-normalised encoder output")
    del meta["knn_temperature"], meta["knn_residual"]  # as a run written before either
    (run / "model.json").write_text(json.dumps(meta))
    m = export.export_run(run, tmp_path / "b")
    assert m["metric"] == m["index"]["metric"] == "cosine" and m["knn"]["temperature"] == 0.1
    b = load_bundle(tmp_path / "b", device="cpu")
    x = np.concatenate([b.encoder.decode(p) for p in _images(webcam, 3)])
    emb = b.embed_arrays(x)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    raw = load_bundle(reg_bundle, device="cpu").embed_arrays(x)  # the same weights served as l2
    np.testing.assert_allclose(emb, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)


@pytest.mark.parametrize("which", ["image", "eeg"])
def test_runs_and_bundles_with_flat_preprocessing_still_work(which: str, work: Path, reg_bundle: Path,
                                                             eeg_bundle: Path, webcam: Path, eeg_data: Path,
                                                             tmp_path: Path) -> None:
    """A run directory and a bundle written before preprocessing was a list of steps (version 1:
    the flat spec) export and predict exactly as the current format does."""
    from supemb import modalities
    from supemb.export.writer import export_run

    run_name, bundle = ("run_reg", reg_bundle) if which == "image" else ("run_eeg", eeg_bundle)
    run = tmp_path / "run"
    shutil.copytree(work / run_name, run)
    plugin, pipe = modalities.from_record(json.loads((run / "preprocessing.json").read_text()), "new")
    flat = {"modality": plugin.name, **plugin.spec(pipe).to_dict()}  # what preprocessing.json held before
    (run / "preprocessing.json").write_text(json.dumps(flat))
    m = export_run(run, tmp_path / "b_old_run", thumbnails=8 if which == "image" else 0)
    assert m["preprocessing"] == pipe.to_record()
    assert m["format_version"] == (mf.FORMAT_VERSION if "residual" in m["knn"] else mf.PLAIN_KNN_FORMAT_VERSION)
    # the same bundle with a version-1 manifest (flat preprocessing)
    old_bundle = tmp_path / "b_v1"
    shutil.copytree(tmp_path / "b_old_run", old_bundle)
    v1 = {k: v for k, v in m.items() if k != "files"}
    v1.update(format_version=1, preprocessing=flat)
    mf.seal(old_bundle, v1)
    items = (_images(webcam, 4) if which == "image"
             else sorted(eeg_data.rglob("*.edf"))[:2])
    want = load_bundle(tmp_path / "b_old_run", device="cpu").predict(items, embeddings=True)
    got = load_bundle(old_bundle, device="cpu").predict(items, embeddings=True)
    assert [p.to_dict() for p in got] == [p.to_dict() for p in want]
    # a manifest from a newer supemb is refused with a message that says so
    v_next = {**v1, "format_version": mf.FORMAT_VERSION + 1}
    mf.seal(old_bundle, v_next)
    with pytest.raises(UserError, match="newer than this supemb reads"):
        load_bundle(old_bundle, device="cpu")


def test_eval_counts_appended_items_under_their_new_names(reg_bundle: Path, tmp_path: Path, webcam: Path,
                                                         capsys) -> None:
    """Other images under the same relative names, appended: the gallery renames them "TAG/id", and eval
    on that data still sees each item's nearest neighbour is the item itself."""
    from PIL import Image, ImageOps

    b_dir = _copy(reg_bundle, tmp_path)
    assert cli(["index", str(b_dir), "--data", str(webcam)]) == 0
    other = tmp_path / "other"
    shutil.copytree(webcam.parent, other)
    for png in other.rglob("*.png"):
        ImageOps.invert(Image.open(png).convert("RGB")).save(png)
    assert cli(["index", str(b_dir), "--data", str(other / webcam.name), "--append"]) == 0
    b = load_bundle(b_dir)
    assert b.index.ntotal == 120 and b.ids[60:] == [f"other/{i}" for i in b.ids[:60]]
    capsys.readouterr()
    assert cli(["eval", str(b_dir), "--data", str(other / webcam.name), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["in_gallery"] == 60


def test_same_item_knows_the_names_append_gives(tmp_path: Path) -> None:
    from supemb.export.gallery import append_tag, same_item

    assert same_item("a/b.png", "a/b.png", "more") and same_item("more/a/b.png", "a/b.png", "more")
    assert same_item("more-2/a/b.png", "a/b.png", "more") and same_item("more-13/a/b.png", "a/b.png", "more")
    assert not same_item("less/a/b.png", "a/b.png", "more") and not same_item("more-x/a/b.png", "a/b.png", "more")
    assert not same_item("more/a/c.png", "a/b.png", "more") and not same_item("a/b.png", "b.png", "c")
    assert not same_item("morer/a/b.png", "a/b.png", "more") and not same_item("b.png", "more/b.png", "more")
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "labels.csv").write_text("path,y\n")
    assert append_tag(tmp_path / "more" / "labels.csv") == append_tag(tmp_path / "more") == "more"


def test_appended_ids_that_collide_get_the_added_datas_folder_and_then_a_number() -> None:
    from supemb.export.gallery import append_gallery_json

    old = {"ids": ["a.png", "b.png", "more/b.png"]}
    got = append_gallery_json(old, {"ids": ["b.png", "c.png"]}, tag="more")
    assert got["ids"] == ["a.png", "b.png", "more/b.png", "more-2/b.png", "c.png"]
    # EEG: every window of a recording carries its id; the windows keep one name, a new one only if it collides
    old = {"ids": ["r1.edf", "r1.edf", "r2.edf"], "groups": [0, 0, 1], "recordings": ["r1.edf", "r2.edf"]}
    new = {"ids": ["r3.edf", "r3.edf", "r2.edf", "r2.edf"], "groups": [0, 0, 1, 1], "recordings": ["r3.edf", "r2.edf"]}
    got = append_gallery_json(old, new, tag="more")
    assert got["ids"] == ["r1.edf", "r1.edf", "r2.edf", "r3.edf", "r3.edf", "more/r2.edf", "more/r2.edf"]
    assert got["recordings"] == ["r1.edf", "r2.edf", "r3.edf", "more/r2.edf"] and got["groups"] == [0, 0, 1, 2, 2, 3, 3]
