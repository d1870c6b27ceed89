"""Face detection as a preprocessing step: the YuNet decoding, real faces found and non-faces
not (scikit-image's photos), the step's errors and options, one prediction per face, photos
already cropped, export of a detecting bundle, and training that detects each photo once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from supemb import modalities
from supemb.errors import UserError
from supemb.preprocess import faces as F

skimage_data = pytest.importorskip("skimage.data")  # test-only: scikit-image ships these photos


def _lfw(kind: str) -> list[np.ndarray]:
    """lfw_subset's 25 px crops, upscaled to 160 px and set on a grey 320 px canvas (context)."""
    data = skimage_data.lfw_subset()
    chosen = data[:100] if kind == "faces" else data[100:]
    out = []
    for x in chosen:
        canvas = Image.new("RGB", (320, 320), (128, 128, 128))
        canvas.paste(Image.fromarray((x * 255).astype(np.uint8)).convert("RGB").resize((160, 160)), (80, 80))
        out.append(np.asarray(canvas))
    return out


# ---------------------------------------------------------------- detector


def test_decode_follows_the_yunet_formulas() -> None:
    """One confident cell at stride 16 (row 3, column 5) with known offsets -> the box by hand."""
    outputs = {}
    for s in F.STRIDES:
        n = (F.SIDE // s) ** 2
        outputs |= {f"cls_{s}": np.zeros((1, n, 1), np.float32), f"obj_{s}": np.zeros((1, n, 1), np.float32),
                    f"bbox_{s}": np.zeros((1, n, 4), np.float32), f"kps_{s}": np.zeros((1, n, 10), np.float32)}
    cell = 3 * (F.SIDE // 16) + 5
    outputs["cls_16"][0, cell, 0], outputs["obj_16"][0, cell, 0] = 0.81, 1.0
    outputs["bbox_16"][0, cell] = [0.5, 0.25, np.log(2.0), np.log(3.0)]
    outputs["kps_16"][0, cell, :2] = [0.1, 0.2]
    boxes, scores, marks = F.decode(outputs, threshold=0.5)
    cx, cy, w, h = (5 + 0.5) * 16, (3 + 0.25) * 16, 2.0 * 16, 3.0 * 16
    np.testing.assert_allclose(boxes, [[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]], rtol=1e-6)
    np.testing.assert_allclose(scores, [0.9], rtol=1e-6)  # sqrt(0.81 * 1.0)
    np.testing.assert_allclose(marks[0, 0], [(5 + 0.1) * 16, (3 + 0.2) * 16], rtol=1e-6)
    assert len(F.decode(outputs, threshold=0.95)[0]) == 0


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float32)
    assert F._nms(boxes, np.array([0.6, 0.9, 0.7]), 0.3) == [1, 2]


def test_real_faces_are_found_and_non_faces_are_not() -> None:
    astronaut = F.detect(skimage_data.astronaut())
    assert len(astronaut) == 1 and astronaut[0].score > 0.9
    x0, y0, x1, y1 = astronaut[0].box
    assert 170 < x0 < 190 and 55 < y0 < 75 and 260 < x1 < 280 and 165 < y1 < 185  # Eileen Collins' face
    found = sum(bool(F.detect(x, 0.5)) for x in _lfw("faces"))
    false = sum(bool(F.detect(x, 0.5)) for x in _lfw("non-faces"))
    print(f"lfw_subset at threshold 0.5: faces found {found}/100, non-faces taken for faces {false}/100")
    assert found >= 95 and false <= 2
    for name in ("coffee", "chelsea", "rocket", "coins"):  # no face in these
        image = getattr(skimage_data, name)()
        image = np.stack([image] * 3, -1) if image.ndim == 2 else image[..., :3]
        assert F.detect(image, 0.5) == [], name


# ------------------------------------------------------------------ the step


def _bundle_with_face_step(tmp_path: Path) -> Path:
    import shutil

    from supemb.export.writer import PRECROPPED
    from supemb.predict import manifest as mf

    root = tmp_path / "age"
    shutil.copytree(Path(__file__).resolve().parents[1] / "supemb" / "bundles" / "age", root)
    m = json.loads((root / "manifest.json").read_text())
    plugin, pipe = modalities.from_record({"modality": m["modality"], **m["preprocessing"]}, "manifest")
    if not pipe.has("face"):
        m["preprocessing"] = plugin.detecting(pipe).to_record()
        m["gallery"]["face_detection"] = PRECROPPED
        m["format_version"] = mf.FORMAT_VERSION
        mf.seal(root, {k: v for k, v in m.items() if k != "files"})
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("photos")
    astronaut = Image.fromarray(skimage_data.astronaut())
    group = Image.new("RGB", (1024, 512), (40, 40, 40))
    group.paste(astronaut, (0, 0))
    group.paste(astronaut.resize((256, 256)), (600, 100))
    out = {"astronaut": astronaut, "group": group, "coffee": Image.fromarray(skimage_data.coffee())}
    for name, image in out.items():
        image.save(root / f"{name}.png")
    return {name: root / f"{name}.png" for name in out}


def test_a_detecting_bundle_crops_to_the_largest_face(photos: dict, tmp_path: Path) -> None:
    from supemb.predict.bundle import load_bundle

    bundle = load_bundle(_bundle_with_face_step(tmp_path), device="cpu")
    assert bundle.detects_faces
    astronaut, group = bundle.predict([photos["astronaut"], photos["group"]])
    assert astronaut.face["score"] > 0.9 and group.face["box"][0] < 512  # the larger (left) face of two
    crop = F.crop(Image.open(photos["astronaut"]).convert("RGB"), F.Face(tuple(astronaut.face["box"]), 1.0), 0.25)
    assert astronaut.value == pytest.approx(bundle.predict(crop, detect=False)[0].value, abs=1e-4)
    whole = bundle.predict(photos["astronaut"], detect=False)[0]  # the whole frame, as before
    assert whole.face is None and abs(whole.value - astronaut.value) > 1
    each = bundle.predict(photos["group"], faces="all")
    assert [p.source.endswith(f"(face {i} of 2)") for i, p in enumerate(each, 1)] == [True, True]
    assert each[0].value == pytest.approx(group.value, abs=1e-4) and each[1].face["box"][0] > 512
    with pytest.raises(UserError, match=f"no face found in {photos['coffee']}"):
        bundle.predict(photos["coffee"])
    skipped = bundle.predict([photos["coffee"], photos["astronaut"]], on_error="skip")
    assert "no face found" in skipped[0].error and skipped[1].ok
    each_none = bundle.predict([photos["coffee"]], faces="all", on_error="skip")[0].error
    assert each_none == skipped[0].error and "--no-detect" in each_none  # one wording, with its way out


def test_a_photo_given_as_a_pil_image_is_turned_upright_as_its_file_is(photos: dict, tmp_path: Path) -> None:
    """EXIF orientation 6 (the camera held sideways): the path and the opened image give one answer."""
    from supemb.predict.bundle import load_bundle

    bundle = load_bundle(_bundle_with_face_step(tmp_path), device="cpu")
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    sideways = tmp_path / "sideways.jpg"
    Image.open(photos["astronaut"]).transpose(Image.Transpose.ROTATE_90).save(sideways, exif=exif.tobytes(),
                                                                               quality=95)
    by_path = bundle.predict(sideways)[0]
    with Image.open(sideways) as opened:
        by_image = bundle.predict(opened)[0]
    assert by_path.face["score"] > 0.9 and by_image.face["box"] == by_path.face["box"]
    assert by_image.value == pytest.approx(by_path.value, abs=1e-4)


def test_predict_cli_shows_the_face_and_skips_detection_on_request(photos: dict, tmp_path: Path, capsys) -> None:
    from supemb.cli import main

    root = _bundle_with_face_step(tmp_path)
    assert main(["predict", str(root), str(photos["astronaut"])]) == 0
    assert "face [179, 63, 270, 174] score 0.94" in capsys.readouterr().out
    assert main(["predict", str(root), str(photos["coffee"])]) == 1
    assert f"no face found in {photos['coffee']}" in capsys.readouterr().err
    assert main(["predict", str(root), str(photos["coffee"]), "--no-detect", "--json"]) == 0
    assert "face" not in json.loads(capsys.readouterr().out)[0]
    assert main(["predict", str(root), str(photos["group"]), "--all-faces", "--json"]) == 0
    assert [p["face"]["box"][0] < 512 for p in json.loads(capsys.readouterr().out)] == [True, False]


@pytest.mark.parametrize("step, message", [
    ({"op": "face", "score_threshold": 1.5}, "score_threshold"),
    ({"op": "face", "detector": "haar"}, "haar"),
    ({"op": "face", "when_none": "guess"}, "when_none"),
    ({"op": "face", "zoom": 2}, "zoom"),
])
def test_bad_face_steps_are_refused(step: dict, message: str) -> None:
    steps = [{"op": "decode"}, step, {"op": "resize_crop", "image_size": 8}, {"op": "normalize",
                                                                               "mean": [0.5] * 3, "std": [0.2] * 3}]
    with pytest.raises(UserError, match=message):
        modalities.get("image").pipeline(steps, "manifest.json")


def test_when_none_whole_keeps_the_photo(photos: dict) -> None:
    image = modalities.get("image")
    pipe = image.pipeline([{"op": "decode"}, {"op": "face", "when_none": "whole"}])
    assert pipe.run(photos["coffee"]).size == Image.open(photos["coffee"]).size


# --------------------------------------------------------------- training


@pytest.fixture(scope="module")
def face_photos(tmp_path_factory) -> Path:
    """14 photos of the astronaut's face at different places and sizes, and one without a face."""
    root = tmp_path_factory.mktemp("face_photos")
    face = Image.fromarray(skimage_data.astronaut()).crop((140, 20, 310, 220))
    rng = np.random.default_rng(0)
    rows = ["path,age"]
    for i in range(14):
        canvas = Image.new("RGB", (256, 256), tuple(int(v) for v in rng.integers(0, 255, 3)))
        side = int(rng.integers(90, 150))
        canvas.paste(face.resize((side, int(side * 200 / 170))), (int(rng.integers(0, 100)), int(rng.integers(0, 60))))
        canvas.save(root / f"p{i}.png")
        rows.append(f"p{i}.png,{20 + 3 * i}")
    Image.fromarray(skimage_data.coffee()).resize((256, 256)).save(root / "cup.png")
    rows.append("cup.png,50")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_training_on_photos_detects_each_once_and_serves_the_same_step(face_photos: Path, tmp_path: Path,
                                                                        monkeypatch) -> None:
    from supemb.export.writer import export_run
    from supemb.predict.bundle import load_bundle
    from supemb.train.config import TrainConfig
    from supemb.train.trainer import train

    calls: list[int] = []
    real = F.detect
    monkeypatch.setattr(F, "detect", lambda rgb, threshold=0.6: calls.append(1) or real(rgb, threshold))
    cfg = dict(data=str(face_photos), target="age", loss="rnc", image_size=16, epochs=2, batch_size=4,
               linear_epochs=0, viz=False, knn_k=5, faces=True, encoder_kwargs={"width": 8, "depth": 2})
    with pytest.raises(UserError, match=f"no face found in {face_photos / 'cup.png'}"):
        train(TrainConfig(**cfg, out=str(tmp_path / "strict")))
    calls.clear()
    train(TrainConfig(**cfg, out=str(tmp_path / "run"), on_error="skip"))
    assert len(calls) == 15  # every photo once, whatever the epochs and evaluations
    prep = json.loads((tmp_path / "run" / "preprocessing.json").read_text())
    assert [s["op"] for s in prep["steps"]] == ["decode", "face", "resize_crop", "normalize"]
    model = json.loads((tmp_path / "run" / "model.json").read_text())
    assert model["data"]["no_face"] == [str(face_photos / "cup.png")]
    m = export_run(tmp_path / "run", tmp_path / "bundle", on_error="skip")
    assert "face_detection" not in m["gallery"]  # the gallery photos went through the step themselves
    p = load_bundle(tmp_path / "bundle", device="cpu").predict(face_photos / "p3.png")[0]
    assert p.face is not None and p.neighbours[0].id == "p3.png"


def test_eval_on_face_crops_skips_detection_when_told(tmp_path: Path, capsys) -> None:
    from supemb.cli import main
    from supemb.data.synthetic_faces import make_face_dataset

    root = _bundle_with_face_step(tmp_path)
    data = make_face_dataset(tmp_path / "crops", 24, size=32, seed=9)
    assert main(["eval", str(root), "--data", str(data), "--no-detect", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["served_mae"] > 0
    assert main(["eval", str(root), "--data", str(data), "--on-error", "skip", "--json"]) == 1  # it left some out
    out = capsys.readouterr()
    assert "no face found" in out.out + out.err  # the cartoon crops: the detector misses many of them
