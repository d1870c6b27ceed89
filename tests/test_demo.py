"""The web demo (supemb/demo/app.py): served in-process and called like a user would.

Every tab is called through `gradio_client` and must give the library's own
prediction for the same file; bad uploads must come back as a message while
the app keeps answering; no server path outside the examples may be read.
A headless Chromium (Debian's `chromium`, driven by Playwright; no browser
download) loads the page, uploads a face and reads the prediction off it.
`SUPEMB_DEMO_SCREENSHOT=docs/img/demo.png` makes that test also refresh the
README's screenshot.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import socket
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest

import supemb
from supemb.cli import _load_demo, main
from supemb.errors import UserError
from supemb.predict import api

pytest.importorskip("gradio_client", reason="gradio_client is needed to call the demo")
from gradio_client import Client, handle_file  # noqa: E402

from supemb.demo import views  # noqa: E402

demo = _load_demo()  # what `supemb demo` serves

# gradio's queue calls pandas in ways pandas 3 deprecates: not ours to fix
pytestmark = [pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]

MAX_PIXELS = 4_000_000  # a lower limit than the default, so the "huge image" case stays cheap
MAX_FILE_MB = 2
TABS = ("age", "temperature", "brain_age")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, examples) of a demo running in this process on a free port."""
    examples_dir = tmp_path_factory.mktemp("cache") / "demo-examples"
    app = demo.launch(port=_free_port(), prevent_thread_lock=True, quiet=True, max_pixels=MAX_PIXELS,
                      max_file_size=f"{MAX_FILE_MB}mb", examples_dir=examples_dir)
    try:
        yield app.local_url, demo.example_inputs(examples_dir)
    finally:
        app.close()


@pytest.fixture(scope="module")
def client(served) -> Client:
    return Client(served[0], verbose=False, download_files=False)


def _library(tab: str, path: Path, k: int, detect: bool = False):
    """The library's prediction; the age tab's synthetic examples are face crops (detect=False)."""
    face = {"detect": detect} if tab == "age" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", api.DemoModelWarning)
        warnings.simplefilter("ignore", api.UnfamiliarInputWarning)
        value = {"age": supemb.predict_age, "temperature": supemb.predict_temperature,
                 "brain_age": supemb.predict_brain_age}[tab](str(path), k=k, **face)
        pred = api.get_bundle(None, tab).predict(str(path), k=k, **face)[0]
    return value, pred


def _inputs(tab: str, path: Path, k: int, cropped: bool = True) -> list:
    """What a client sends a tab: the file, k, and for a tab that finds faces "a face crop already"."""
    return [handle_file(str(path)), k, *([cropped] if tab == "age" else [])]


def pred_bundle(tab: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", api.DemoModelWarning)
        return api.get_bundle(None, tab)


_MAPS: dict = {}


def _maps() -> dict:
    """Each tab's gallery map, fitted here as the app fits it (once: fitting is deterministic)."""
    if not _MAPS:
        _MAPS.update({name: s.gallery_map for name, s in demo.load_served().items()})
    return _MAPS


def _served_image(served, value) -> np.ndarray:
    """An image output as the client got it (a file the server serves) -> RGB uint8 [H, W, 3]."""
    import io

    from PIL import Image

    assert isinstance(value, dict) and value.get("url"), value
    r = httpx.get(value["url"], timeout=30)
    assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))


# ------------------------------------------------------------- predictions


@pytest.mark.parametrize("tab", TABS)
@pytest.mark.parametrize("k", [10, 3])
def test_each_tab_gives_the_library_prediction(client, served, tab: str, k: int) -> None:
    example = served[1][tab][0]
    out = client.predict(*_inputs(tab, example.path, k), api_name=f"/predict_{tab}")
    summary, data = out[0], out[1]
    value, pred = _library(tab, example.path, k)
    assert "error" not in data
    assert data["value"] == pytest.approx(value, abs=1e-6)
    assert data["uncertainty"] == pytest.approx(pred.uncertainty, abs=1e-6)
    assert data["k"] == k and len(data["neighbours"]) == k
    for got, want in zip(data["neighbours"], pred.neighbours):
        assert got["index"] == want.index and got["id"] == want.id
        assert got["label"] == pytest.approx(want.label) and got["similarity"] == pytest.approx(want.similarity,
                                                                                                abs=1e-6)
    assert data["source"] == example.path.name  # named by the upload, not the server's copy
    assert f"{value:.1f}" in summary and "±" in summary
    neighbours, gallery_map = out[2], out[-1]
    if tab == "brain_age":
        rows = neighbours["data"]
        assert [r[1] for r in rows] == [n.id for n in pred.neighbours]
        # the spectrum: the uploaded recording's own, drawn here from the same file
        from supemb.data.eeg_files import channel_lookup, read_recording

        raw = read_recording(example.path)
        lookup, b = channel_lookup(raw.ch_names), pred_bundle(tab)
        want = views.eeg_spectrum(raw, [lookup[c] for c in b.spec.channels], (b.spec.l_freq, b.spec.h_freq))
        assert np.array_equal(_served_image(served, out[3]), want)
    else:
        assert len(neighbours) == k and all(item["caption"] for item in neighbours)
    # the map: the gallery with a star where this input's embedding projects, as the library draws it
    b = pred_bundle(tab)
    face = {"detect": False} if tab == "age" else {}
    emb = b.predict(str(example.path), k=k, embeddings=True, **face)[0].embedding
    got = _served_image(served, gallery_map)
    assert np.array_equal(got, _maps()[tab].draw(emb))
    assert not np.array_equal(got, _maps()[tab].draw(np.asarray(emb) + 10.0))  # the star moves with the input


def test_examples_are_written_once_and_labelled(tmp_path: Path) -> None:
    first = demo.example_inputs(tmp_path / "ex")
    stamp = {e.path: e.path.stat().st_mtime_ns for items in first.values() for e in items}
    again = demo.example_inputs(tmp_path / "ex")
    assert again == first and all(e.path.stat().st_mtime_ns == stamp[e.path] for items in again.values()
                                  for e in items)
    assert set(first) == set(TABS) and all(len(v) >= 3 for v in first.values())
    ages = [int(re.search(r"age (\d+)", e.label).group(1)) for e in first["age"] if e.cropped]
    assert len(ages) >= 3 and all(1 <= a <= 90 for a in ages)
    photos = [e for e in first["age"] if not e.cropped]  # a real photo, whose face the tab finds
    assert len(photos) == 1 and photos[0].path.suffix == ".jpg"


def test_gallery_map_places_gallery_items_on_their_own_points() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", api.DemoModelWarning)
        b = api.get_bundle(None, "age")
    _, vectors = views.gallery_vectors(b)
    gmap = demo.GalleryMap.fit(b)
    # the index's own vectors: each is its own nearest neighbour, at the metric's top similarity
    sim, idx = b.index.search(np.ascontiguousarray(vectors[:5], dtype=np.float32), 1)
    assert list(idx[:, 0]) == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(sim[:, 0], 1.0 if b.metric == "cosine" else 0.0, atol=1e-3)
    assert np.allclose(gmap.project(vectors[:5]), gmap.points[:5])
    # the x axis follows the target, the map is fixed (same fit, same map) and draws an RGB image
    assert np.corrcoef(gmap.points[:, 0], gmap.targets)[0, 1] > 0.3
    assert np.array_equal(demo.GalleryMap.fit(b).axes, gmap.axes)
    img = gmap.draw(vectors[:1])
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3


# ------------------------------------------------------------- bad uploads


def _bad_files(tmp: Path, examples: dict) -> dict[str, tuple[str, Path, str]]:
    """name -> (tab, file, what the message must say)."""
    from PIL import Image

    from supemb.data.synthetic_eeg import write_edf

    text = tmp / "notes.png"
    text.write_text("not an image at all\n")
    png = examples["age"][0].path.read_bytes()
    truncated = tmp / "cut.png"
    truncated.write_bytes(png[: len(png) // 2])
    huge = tmp / "huge.png"
    Image.new("L", (2500, 2000)).save(huge)  # 5 MP > MAX_PIXELS, a few kB on disk
    rng = np.random.default_rng(0)
    short = write_edf(tmp / "short.edf", rng.normal(0, 20, (19, 500)), 100.0,
                      ["FP1", "FP2", "F7", "F3", "FZ", "F4", "F8", "T3", "C3", "CZ", "C4", "T4", "T5", "P3",
                       "PZ", "P4", "T6", "O1", "O2"])
    few = write_edf(tmp / "few.edf", rng.normal(0, 20, (4, 3000)), 100.0, ["FP1", "FP2", "O1", "O2"])
    garbage = tmp / "garbage.edf"
    garbage.write_bytes(b"0" * 5000)
    return {
        "not an image": ("age", text, "not an image"),
        "truncated image": ("age", truncated, "truncated"),
        "huge image": ("temperature", huge, "over the limit"),
        "EEG too short": ("brain_age", short, "too short"),
        "EEG too few channels": ("brain_age", few, "too few channels"),
        "not an EDF": ("brain_age", garbage, "cannot read"),
    }


def test_bad_uploads_show_a_message_and_the_app_keeps_serving(client, served, tmp_path: Path) -> None:
    for case, (tab, path, expect) in _bad_files(tmp_path, served[1]).items():
        summary, data = client.predict(*_inputs(tab, path, 10), api_name=f"/predict_{tab}")[:2]
        assert expect in data["error"], case
        assert data["error"].startswith(path.name), case  # names the user's file, not the server's copy
        assert "/tmp" not in data["error"] and expect in summary, case
        good = served[1][tab][0]
        data = client.predict(*_inputs(tab, good.path, 10), api_name=f"/predict_{tab}")[1]
        assert data["value"] == pytest.approx(_library(tab, good.path, 10)[0], abs=1e-6), case


def test_wrong_file_type_for_eeg_is_refused_with_a_message(client, tmp_path: Path) -> None:
    from gradio_client.exceptions import AppError

    notes = tmp_path / "notes.txt"
    notes.write_text("not a recording")
    with pytest.raises(AppError, match=r"Invalid file type.*\.edf"):  # gr.File's own check, shown in the page
        client.predict(handle_file(str(notes)), 10, api_name="/predict_brain_age")


def test_a_photo_without_a_face_names_the_pages_own_checkbox(client, tmp_path: Path) -> None:
    """Not the library's detect=False / --no-detect, nor its "input 0 (Image):" prefix."""
    from PIL import Image
    from skimage import data as skimage_data

    from supemb.demo.app import CROPPED

    cup = tmp_path / "cup.png"
    Image.fromarray(skimage_data.coffee()).save(cup)
    error = client.predict(*_inputs("age", cup, 10, cropped=False), api_name="/predict_age")[1]["error"]
    assert error.startswith("no face found in cup.png") and f'tick "{CROPPED}"' in error
    assert "--no-detect" not in error and "detect=False" not in error


def test_k_out_of_range_is_a_message(client, served) -> None:
    data = client.predict(*_inputs("age", served[1]["age"][0].path, 500), api_name="/predict_age")[1]
    assert "k must be between 1 and 50" in data["error"]


def test_uploads_are_bounded_and_server_paths_unreadable(served) -> None:
    url, examples = served
    too_big = httpx.post(f"{url}gradio_api/upload", files={"files": ("big.png", b"0" * (MAX_FILE_MB + 1) * 2**20)})
    assert too_big.status_code == 413
    for path in ("/etc/passwd", api.default_bundle_path("age") / "manifest.json", Path(__file__)):
        r = httpx.get(f"{url}gradio_api/file={path}")
        assert r.status_code in (403, 404), path
    assert httpx.get(f"{url}gradio_api/file={examples['age'][0].path}").status_code == 200  # examples only
    # a request naming a server file instead of uploading one is refused, and the app goes on
    r = httpx.post(f"{url}gradio_api/call/predict_age",
                   json={"data": [{"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}, 10]})
    events = httpx.get(f"{url}gradio_api/call/predict_age/{r.json()['event_id']}", timeout=60).text
    assert "event: error" in events and "root:" not in events


def test_banner_names_the_bundle_and_says_synthetic(served) -> None:
    config = httpx.get(f"{served[0]}config").json()
    texts = {c["props"].get("elem_id"): str(c["props"].get("value")) for c in config["components"]}
    for tab in TABS:
        banner = texts[f"{tab}-banner"]
        assert str(api.default_bundle_path(tab)) in banner
        assert "synthetic data" in banner and f"supemb demo --bundle {tab}=path/to/bundle" in banner


def test_summary_and_banner_say_what_the_bundle_serves() -> None:
    """A value from a residual kNN is explained as a trend plus its neighbours' offsets, one from
    plain kNN as the neighbours' mean; the banner's test MAE is what the bundle serves."""
    from types import SimpleNamespace

    from supemb.demo.views import banner_markdown, summary_markdown
    from supemb.predict.bundle import Prediction

    pred = Prediction(source="x", value=12.0, uncertainty=2.0)
    for residual, phrase in (({"weight": [1.0], "bias": 0.0}, "a linear trend over the model's embedding space"),
                             (None, "the similarity-weighted mean of the 7 gallery frames nearest")):
        b = SimpleNamespace(unit="°C", target_name="temperature", knn={"uncertainty_scale": 1.1}, residual=residual,
                            spec=None)
        text = summary_markdown(b, pred, 7, "frames")
        assert phrase in text and "two in three validation errors" in text
    metrics = {"test_served_mae": 3.2, "test_knn_mae": 3.9}
    b = SimpleNamespace(manifest={"training": {"test_metrics": metrics}}, name="t", index=SimpleNamespace(ntotal=9),
                        default_k=7, unit="°C", is_demo=False)
    assert "test MAE 3.2°C" in banner_markdown(b, "temperature", Path("b"), "frames")
    b.manifest["training"]["test_metrics"] = {"test_knn_mae": 3.9}  # a bundle exported before: its kNN figure
    assert "test MAE 3.9°C" in banner_markdown(b, "temperature", Path("b"), "frames")


# ------------------------------------------------------------ bundles, CLI


def test_a_bundle_replaces_one_tab_and_must_fit_it() -> None:
    served = demo.load_served({"age": api.default_bundle_path("temperature")})
    assert served["age"].bundle.name.startswith("temperature") and served["temperature"].bundle.is_demo
    assert served["age"].path == api.default_bundle_path("temperature")
    with pytest.raises(UserError, match="Age tab needs an image regression bundle"):
        demo.load_served({"age": api.default_bundle_path("brain_age")})
    with pytest.raises(UserError, match="no demo tab 'nose'"):
        demo.load_served({"nose": api.default_bundle_path("age")})


def test_cli_demo_usage_errors(capsys, tmp_path: Path) -> None:
    assert main(["demo", "--bundle", "age"]) == 2
    assert "expected NAME=DIR" in capsys.readouterr().err
    assert main(["demo", "--bundle", f"nose={tmp_path}"]) == 2  # a usage error, found before any file is read
    assert "no demo tab 'nose'" in capsys.readouterr().err


def test_cli_demo_busy_port_is_a_clear_error(capsys, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SUPEMB_CACHE", str(tmp_path))  # the examples go here, not into ~/.cache
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert main(["demo", "--port", str(s.getsockname()[1])]) == 1
    assert "pick another port with --port" in capsys.readouterr().err


# ----------------------------------------------------------------- browser


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_browser_upload_of_a_real_photo_shows_the_face_and_the_flag(served, tmp_path: Path) -> None:
    """A real photo (matplotlib's Grace Hopper portrait) uploaded in the age tab: the library's
    prediction from her face, the box and the crop drawn, and the flag that she is unlike the
    synthetic gallery."""
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    browser_path = _chromium()
    if browser_path is None:
        pytest.skip("no system Chromium (apt-get install chromium); the browser test needs it")
    url, examples = served
    example = next(e for e in examples["age"] if not e.cropped)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url, wait_until="networkidle")
            assert "demonstration model trained on synthetic data" in page.locator("#age-banner").inner_text()
            page.locator("#age-input input[type=file]").set_input_files(str(example.path))
            summary = page.locator("#age-summary")
            summary.filter(has_text="±").wait_for(timeout=30_000)
            text = summary.inner_text()
            shown = float(re.search(r"(-?\d+(?:\.\d+)?) years ±", text).group(1))
            page.locator("#age-neighbours img").first.wait_for(timeout=10_000)
            page.locator("#age-face img").first.wait_for(timeout=10_000)  # the box in the photo, and the crop
            page.wait_for_timeout(500)  # let the map image paint
            shot = tmp_path / "demo.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    k = api.get_bundle(None, "age").default_k  # the page's slider starts at the bundle's k
    value, pred = _library("age", example.path, k, detect=True)
    assert shown == pytest.approx(value, abs=0.05)  # shown to 1 decimal
    assert pred.face is not None and f"From the face found at {[round(v) for v in pred.face['box']]}" in text
    assert pred.unfamiliar and "Unfamiliar input" in text  # a real face, unlike the synthetic gallery
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("SUPEMB_DEMO_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["SUPEMB_DEMO_SCREENSHOT"])


def test_prediction_json_is_the_library_prediction() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", api.DemoModelWarning)
        b = api.get_bundle(None, "age")
    from supemb.data.synthetic_faces import face_arrays

    image = face_arrays(1, size=32, seed=7)[0][0]
    pred = b.predict(image, detect=False)[0]
    d = demo.prediction_json(b, pred, 10, "x.png")
    assert d["value"] == pred.value and d["neighbours"] == [dataclasses.asdict(n) for n in pred.neighbours]


def test_demo_is_the_packaged_module_over_the_public_api() -> None:
    import inspect

    assert demo.__name__ == "supemb.demo.app"
    assert Path(demo.__file__).parent == Path(supemb.__file__).parent / "demo"
    for module in (demo, views):  # the demo goes through Bundle.predict / embed, not the encoder's internals
        source = inspect.getsource(module)
        assert "embed_rows" not in source and "predict_embeddings" not in source and ".encoder" not in source


def test_prediction_embedding_is_the_inputs_embedding(tmp_path: Path) -> None:
    """Bundle.predict(..., embeddings=True): each input's `embed` row, from the same pass, JSON-able."""
    import json

    from supemb.data.synthetic_eeg import make_eeg_dataset
    from supemb.data.synthetic_faces import face_arrays

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", api.DemoModelWarning)
        image_bundle, eeg_bundle = api.get_bundle(None, "age"), api.get_bundle(None, "brain_age")
    faces = list(face_arrays(2, size=32, seed=5)[0])
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    preds = image_bundle.predict([faces[0], str(bad), faces[1]], on_error="skip", embeddings=True, detect=False)
    want = image_bundle.embed(faces, detect=False)
    assert preds[1].error and preds[1].embedding is None  # a skipped input has no embedding
    for p, row in zip([preds[0], preds[2]], want):
        assert len(p.embedding) == image_bundle.embedding_dim
        np.testing.assert_allclose(p.embedding, row, rtol=1e-6, atol=1e-6)
    assert json.loads(json.dumps(preds[0].to_dict()))["embedding"] == pytest.approx(preds[0].embedding)
    plain = image_bundle.predict(faces[0], detect=False)[0]  # the default: no embedding, the same prediction
    assert plain.embedding is None and "embedding" not in plain.to_dict()
    assert plain.value == pytest.approx(preds[0].value, abs=1e-5)
    assert [n.index for n in plain.neighbours] == [n.index for n in preds[0].neighbours]

    folder = make_eeg_dataset(tmp_path / "eeg", 2, duration_s=40.0, sfreq=100.0, seed=3)
    recordings = sorted(str(f) for f in folder.iterdir() if f.suffix == ".edf")
    preds = eeg_bundle.predict(recordings, embeddings=True)
    want = eeg_bundle.embed(recordings)  # a recording's pooled windows (recording_embeddings)
    assert want.shape == (2, eeg_bundle.embedding_dim) and preds[0].windows > 1
    for p, row in zip(preds, want):
        np.testing.assert_allclose(p.embedding, row, rtol=1e-5, atol=1e-6)
    assert not np.allclose(want[0], want[1])


def test_the_space_entry_point_refuses_a_bad_port_in_one_line() -> None:
    """demo/app.py reads GRADIO_SERVER_PORT as a host sets it; gradio itself dies on a bad one at import."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "demo" / "app.py")], capture_output=True, text=True,
                          env={**os.environ, "GRADIO_SERVER_PORT": "abc"}, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == "demo/app.py: GRADIO_SERVER_PORT must be a port number 0-65535, got 'abc'"
