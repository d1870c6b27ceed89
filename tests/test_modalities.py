"""Modality plug-ins and preprocessing as recorded steps: records round-trip, old
(flat) records give the same tensors as before, training's split pipeline equals
the whole one, datasets are recognised, and nothing outside the plug-ins branches
on a modality's name."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from supemb import modalities
from supemb.errors import UserError
from supemb.preprocess.eeg import EEGSpec, preprocess_recording
from supemb.preprocess.image import PreprocessSpec, eval_preprocess_array
from supemb.preprocess.steps import VERSION, Pipeline

ROOT = Path(__file__).resolve().parents[1]


def _photo(seed: int = 0, w: int = 40, h: int = 30) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _edf(tmp_path: Path, seconds: float = 25.0, seed: int = 0) -> Path:
    from supemb.data.synthetic_eeg import write_edf
    from supemb.preprocess.eeg import TUH_CHANNELS

    rng = np.random.default_rng(seed)
    n = int(seconds * 250)
    data = rng.normal(0, 20, (len(TUH_CHANNELS), n)) + np.sin(np.arange(n) / 9.0) * 30
    return write_edf(tmp_path / f"r{seed}.edf", data, 250.0, [f"EEG {c}-REF" for c in TUH_CHANNELS])


# ------------------------------------------------------------------ records


def test_image_record_round_trips_and_matches_the_legacy_spec() -> None:
    image = modalities.get("image")
    legacy = {"modality": "image", **PreprocessSpec(image_size=24, resize_size=28, mean=(0.4, 0.5, 0.6),
                                                      std=(0.2, 0.3, 0.25)).to_dict()}
    plugin, pipe = modalities.from_record(legacy, "old.json")
    assert plugin is image and [s["op"] for s in pipe.steps] == ["decode", "resize_crop", "normalize"]
    record = pipe.to_record()
    assert record["version"] == VERSION and json.loads(json.dumps(record)) == record
    again = modalities.from_record(record, "new.json")[1]
    assert again == pipe
    photo = _photo()
    want = eval_preprocess_array(photo, PreprocessSpec.from_dict({k: v for k, v in legacy.items() if k != "modality"}))
    np.testing.assert_array_equal(pipe.run(photo), want)
    rows = image.decoder(pipe)(photo)
    assert rows.shape == (1, 3, 24, 24) and image.input_shape(pipe) == [3, 24, 24]
    assert image.spec(pipe) == PreprocessSpec(image_size=24, resize_size=28, mean=(0.4, 0.5, 0.6),
                                              std=(0.2, 0.3, 0.25))


def test_eeg_record_matches_the_legacy_windows(tmp_path: Path) -> None:
    eeg = modalities.get("eeg")
    spec = EEGSpec(window_s=4.0, stride_s=3.0, offset_s=1.0)
    plugin, pipe = modalities.from_record({"modality": "eeg", **spec.to_dict()}, "old.json")
    assert plugin is eeg and [s["op"] for s in pipe.steps] == ["signal", "windows"]
    path = _edf(tmp_path)
    rows = eeg.decoder(pipe)(path)
    x = preprocess_recording(path, spec)
    n = (x.shape[1] - 100 - 400) // 300 + 1  # offset 1 s, windows of 4 s every 3 s at 100 Hz
    assert rows.shape == (n, spec.n_channels, 400)
    np.testing.assert_array_equal(rows[1], x[:, 400:800])
    assert eeg.spec(pipe) == spec and eeg.input_shape(pipe) == [spec.n_channels, 400]
    assert eeg.encoder_kwargs(pipe) == {"n_chans": spec.n_channels, "n_times": 400, "sfreq": 100.0}
    assert modalities.from_record(pipe.to_record(), "new.json")[1] == pipe


def test_training_split_equals_the_whole_pipeline(tmp_path: Path) -> None:
    image = modalities.get("image")
    pipe = image.pipeline([{"op": "decode"}, {"op": "resize_crop", "image_size": 16, "resize_size": 20},
                           {"op": "normalize", "mean": [0.5] * 3, "std": [0.25] * 3}])
    before, after = pipe.split_at(image.augment_from)
    path = tmp_path / "a.png"
    Image.fromarray(_photo(3)).save(path)
    decoded = before.run(path)
    assert isinstance(decoded, Image.Image)
    np.testing.assert_array_equal(after.run(decoded), pipe.run(path))
    eeg = modalities.get("eeg")
    epipe = eeg.pipeline(eeg.legacy_steps(EEGSpec(window_s=2.0, stride_s=2.0).to_dict(), "x"))
    ebefore, eafter = epipe.split_at(eeg.augment_from)
    edf = _edf(tmp_path, seconds=12.0, seed=1)
    np.testing.assert_array_equal(eafter.run(ebefore.run(edf)), epipe.run(edf))


@pytest.mark.parametrize("record, message", [
    ({"modality": "image", "version": 2, "steps": [{"op": "face_swap"}]}, "face_swap"),
    ({"modality": "image", "version": 3, "steps": []}, "newer supemb"),
    ({"modality": "image", "version": 2, "steps": [{"op": "resize_crop", "image_size": 8, "zoom": 2}]}, "zoom"),
    ({"modality": "image", "version": 2, "steps": [{"op": "resize_crop", "image_size": 0}]}, "image_size"),
    ({"modality": "sonar", "version": 2, "steps": []}, "sonar"),
    ({"modality": "eeg", "version": 2, "steps": [{"op": "windows", "window_s": -1, "stride_s": 1, "offset_s": 0}]},
     "window_s"),
    ({"version": 2, "steps": []}, "modality"),
])
def test_bad_records_are_one_line_errors_naming_the_file(record: dict, message: str) -> None:
    with pytest.raises(UserError, match=message) as err:
        modalities.from_record(record, "run/preprocessing.json")
    assert "\n" not in str(err.value) and "run/preprocessing.json" in str(err.value)


def test_a_missing_step_is_named() -> None:
    image = modalities.get("image")
    pipe = image.pipeline([{"op": "decode"}])
    with pytest.raises(UserError, match="no 'resize_crop' step"):
        image.input_shape(pipe)


# ---------------------------------------------------------------- datasets


def test_detect_recognises_eeg_and_images(tmp_path: Path) -> None:
    (tmp_path / "eeg").mkdir()
    _edf(tmp_path / "eeg")
    (tmp_path / "img" / "cat").mkdir(parents=True)
    Image.fromarray(_photo()).save(tmp_path / "img" / "cat" / "a.png")
    assert modalities.detect(tmp_path / "eeg").name == "eeg"
    assert modalities.detect(tmp_path / "img").name == "image"
    assert modalities.detect(tmp_path / "img", "eeg").name == "eeg"  # --format decides
    assert modalities.detect(tmp_path / "eeg", "folder").name == "image"
    with pytest.raises(UserError, match="--format 'tiff'"):
        modalities.detect(tmp_path / "img", "tiff")
    assert set(modalities.formats()) >= {"auto", "csv", "folder", "utkface", "agedb", "eeg"}


def test_thumbnails_are_the_centre_crop() -> None:
    image = modalities.get("image")
    photo = _photo(5, w=50, h=30)
    thumbs = image.thumbnails([photo], 8)
    assert thumbs.shape == (1, 8, 8, 3) and thumbs.dtype == np.uint8
    np.testing.assert_array_equal(thumbs[0], np.asarray(Image.fromarray(photo).resize(
        (8, 8), Image.Resampling.BILINEAR, box=(10, 0, 40, 30))))
    assert modalities.get("eeg").thumbnails(["x.edf"], 8) is None


def test_no_modality_branching_outside_the_plug_ins() -> None:
    """The rest of the code asks the plug-in; it never compares a modality's name."""
    pattern = re.compile(r"""modality\s*[!=]=\s*["'](image|eeg)["']|["'](image|eeg)["']\s*[!=]=\s*\w*modality""")
    offenders = []
    for path in sorted((ROOT / "supemb").rglob("*.py")):
        if "modalities" in path.parts:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


# ------------------------------------------------------- a third modality


class _VectorModality(modalities.Modality):
    """A toy third modality: an .npy file of one feature vector, scaled by a recorded factor."""

    name, title, noun = "vector", "vector", "vector"
    tasks = ("regression",)
    formats = ("vectors",)
    augment_from = "scale"
    ops = {
        "load": modalities.base.Op("load", lambda x, p: np.load(x) if isinstance(x, (str, Path)) else np.asarray(x),
                                   lambda p: {}),
        "scale": modalities.base.Op("scale", lambda x, p: (x * p["factor"]).astype(np.float32)[None],
                                    lambda p: {"factor": float(p["factor"])}),
    }

    def input_shape(self, pipeline: Pipeline) -> list[int]:
        return [4]

    def decoder(self, pipeline: Pipeline):
        return pipeline.run

    def spec(self, pipeline: Pipeline):
        return pipeline.params("scale")


def test_a_third_modality_is_one_plug_in_and_one_registry_line(tmp_path: Path, monkeypatch) -> None:
    """Serving a bundle of a new modality needs its plug-in and one REGISTRY entry, nothing else."""
    import sys
    import types

    import torch

    from supemb.encoders.onnx_util import export_onnx
    from supemb.index.gallery import GalleryIndex
    from supemb.predict import manifest as mf
    from supemb.predict.bundle import load_bundle

    module = types.ModuleType("supemb_test_vector_plugin")
    module.VECTOR = _VectorModality()
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(modalities.REGISTRY, "vector", (module.__name__, "VECTOR"))

    root = tmp_path / "bundle"
    root.mkdir()
    net = torch.nn.Linear(4, 3).eval()
    export_onnx(net, torch.zeros(2, 4), root / "encoder.onnx", input_name="input", output_name="embedding")
    gallery = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    with torch.no_grad():
        emb = net(torch.from_numpy(gallery * 2.0)).numpy()
    GalleryIndex.build(emb, metric="l2").save(root / "index.faiss")
    np.save(root / "targets.npy", np.arange(10, dtype=np.float64))
    (root / "gallery.json").write_text(json.dumps({"ids": [f"v{i}" for i in range(10)]}))
    pipe = module.VECTOR.pipeline([{"op": "load"}, {"op": "scale", "factor": 2}])
    mf.seal(root, {"format": mf.FORMAT, "format_version": mf.FORMAT_VERSION, "task": "regression",
                   "modality": "vector", "preprocessing": pipe.to_record(), "embedding_dim": 3, "metric": "l2",
                   "knn": {"k": 1, "temperature": 0.1}, "index": {"kind": "flat", "metric": "l2"}})
    np.save(tmp_path / "q.npy", gallery[7])
    bundle = load_bundle(root, device="cpu")
    p = bundle.predict(tmp_path / "q.npy", embeddings=True)[0]
    assert p.value == 7.0 and p.neighbours[0].id == "v7" and p.neighbours[0].similarity == pytest.approx(0, abs=1e-3)
    np.testing.assert_allclose(p.embedding, emb[7], atol=1e-5)


# ------------------------------------------- training sees what serving sees


def test_training_and_serving_give_the_same_tensors(tmp_path: Path) -> None:
    """The trainer's evaluation input for an item equals the serving decoder's rows for its file:
    both come from the recorded steps (images: decode, then the rest; EEG: the signal, then windows)."""
    import torch

    from supemb.data.synthetic_eeg import make_eeg_dataset
    from supemb.data.synthetic_webcam import make_webcam_dataset
    from supemb.train.config import TrainConfig
    from supemb.train.data import prepare_data

    webcam = make_webcam_dataset(tmp_path / "w", 30, n_cameras=2, size=20, seed=1)
    data = prepare_data(TrainConfig(data=str(webcam), target="temperature", out="o", loss="rnc", image_size=16))
    plugin, pipe = modalities.from_record(data.preprocessing, "preprocessing.json")
    split = data.splits["val"]
    for i in range(len(split)):
        served = plugin.decoder(pipe)(split.names[i])
        assert torch.equal(data.eval_transform(split.load(i)), torch.from_numpy(served[0]))

    eeg_dir = make_eeg_dataset(tmp_path / "e", 8, duration_s=12.0, sfreq=100.0, seed=2)
    data = prepare_data(TrainConfig(data=str(eeg_dir), target="age", out="o", loss="rnc",
                                    eeg={"window_s": 4.0, "stride_s": 2.0}))
    plugin, pipe = modalities.from_record(data.preprocessing, "preprocessing.json")
    split = data.splits["train"]
    for rec, path in enumerate(split.names):
        rows = np.flatnonzero(split.groups == rec)
        trained = np.stack([data.eval_transform(split.load(int(i))).numpy() for i in rows])
        np.testing.assert_array_equal(trained, plugin.decoder(pipe)(path))


def test_a_recording_shorter_than_the_default_window_serves_with_its_own(tmp_path: Path) -> None:
    """A 6 s recording and a 4 s-window pipeline: one window, not a refusal measured against the
    default 10 s window; shorter than its own window, it is refused naming the file."""
    eeg = modalities.get("eeg")
    pipe = eeg.pipeline(eeg.legacy_steps(EEGSpec(window_s=4.0, stride_s=4.0).to_dict(), "x"))
    rows = eeg.decoder(pipe)(_edf(tmp_path, seconds=6.0, seed=3))
    assert rows.shape[0] == 1
    with pytest.raises(UserError, match="r4.edf"):
        eeg.decoder(pipe)(_edf(tmp_path, seconds=3.0, seed=4))
