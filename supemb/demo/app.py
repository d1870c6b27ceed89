"""The supemb web demo: age, temperature and brain age, with the neighbours behind each prediction.

    supemb demo                                   # the default (synthetic demo) bundles
    supemb demo --bundle age=path/to/bundle       # serve your own age model

or from Python: `launch()`, or `build_app()` to get the `gr.Blocks`.

A thin layer over the library's public API: every prediction is
`Bundle.predict(..., embeddings=True)` (one ONNX pass per upload; the
prediction's own embedding places the input on the gallery map). Uploads are
decoded by `supemb.data` (image pixel limit, EEG checks), and anything wrong
with an upload becomes a one-line message in the page, never a dead app.

Safe defaults: bound to 127.0.0.1, uploads capped at MAX_FILE_SIZE, images at
MAX_PIXELS, and the only server folder the page can read from is the
examples' cache folder (besides gradio's own upload cache).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from supemb.data.image_files import DEFAULT_MAX_PIXELS, load_image
from supemb.errors import UserError
from supemb.predict import api
from supemb.predict.bundle import Bundle

from .examples import cache_dir, example_inputs
from .views import (
    GalleryMap,
    banner_markdown,
    eeg_neighbours,
    eeg_spectrum,
    face_view,
    image_neighbours,
    prediction_json,
    similarity_name,
    summary_markdown,
)

log = logging.getLogger("supemb.demo")

HOST = "127.0.0.1"
PORT = 7860
MAX_FILE_SIZE = "100mb"  # an hour of 19-channel EEG at 256 Hz as EDF is ~35 MB
MAX_PIXELS = DEFAULT_MAX_PIXELS
MAX_K = 50
CONCURRENCY = 4  # requests run at once (a Bundle is thread-safe); the rest wait in the queue
QUEUE_SIZE = 64  # waiting requests past this are refused ("queue full") instead of piling up


@dataclass(frozen=True)
class TabSpec:
    name: str  # the bundle name on the command line
    title: str
    modality: str
    items: str  # what a prediction's neighbours are, plural
    gallery_items: str  # what the gallery index holds, plural
    input_label: str
    intro: str


TABS: dict[str, TabSpec] = {
    "age": TabSpec("age", "Age", "image", "faces", "faces", "Face image",
                   "Upload a face photo (or pick an example) to estimate the person's age."),
    "temperature": TabSpec("temperature", "Temperature", "image", "webcam frames", "webcam frames",
                           "Outdoor webcam frame",
                           "Upload an outdoor webcam frame to estimate the air temperature."),
    "brain_age": TabSpec("brain_age", "Brain age", "eeg", "recordings", "EEG windows",
                         "EEG recording (EDF, BDF or FIF)",
                         "Upload a resting-state EEG recording to estimate the person's age from the signal."),
}


@dataclass(frozen=True)
class Served:
    """One tab's model: the loaded bundle, where it came from, and its gallery map."""

    spec: TabSpec
    bundle: Bundle
    path: Path
    gallery_map: GalleryMap


def _uploaded_path(value: Any) -> str | None:
    """The server-side path of an upload, from an image input's raw value.

    Image events run with preprocess=False: gr.Image's preprocessing opens the
    file with PIL itself, so a non-image upload would fail with an opaque
    processing error before our code runs; decoding is
    `supemb.data.image_files.load_image`'s job (pixel limit, clear messages). Even
    so, gradio has already checked that the file is one it received (an
    upload or an example), never a path a client names.
    """
    if value is None or isinstance(value, str):
        return value
    path = value.get("path") if isinstance(value, dict) else None
    if path is None:
        raise UserError("the image did not arrive as a file; upload it again")
    return str(path)


# ------------------------------------------------------------------ loading


def load_served(bundles: Mapping[str, str | Path | Bundle] | None = None) -> dict[str, Served]:
    """The three tabs' bundles: the defaults, with `bundles` (name -> bundle dir) replacing some."""
    bundles = dict(bundles or {})
    unknown = sorted(set(bundles) - set(TABS))
    if unknown:
        raise UserError(f"no demo tab {', '.join(map(repr, unknown))}; the tabs are {', '.join(TABS)}")
    served = {}
    for name, spec in TABS.items():
        given = bundles.get(name)
        with warnings.catch_warnings():  # the banner says it, in the page
            warnings.simplefilter("ignore", api.DemoModelWarning)
            b = api.get_bundle(given, name)
        if b.task != "regression" or b.modality != spec.modality:
            raise UserError(f"{b.source}: the {spec.title} tab needs an {spec.modality} regression bundle, "
                            f"but this one does {b.modality} {b.task}")
        path = api.default_bundle_path(name) if given is None else Path(b.source)
        label = f"your {b.plugin.noun}" if b.plugin.grouped else "your input"
        gallery_map = GalleryMap.fit(b, spec.gallery_items, label=label)
        served[name] = Served(spec, b, path, gallery_map)
    return served


# ----------------------------------------------------------------- handlers


def _k(served: Served, k: Any) -> int:
    if k is None or k == "":
        return served.bundle.default_k
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise UserError(f"k must be a whole number, got {k!r}") from None
    if not 1 <= k <= MAX_K:
        raise UserError(f"k must be between 1 and {MAX_K}, got {k}")
    return k


CROPPED = "the photo is a face crop already (skip face detection)"  # the checkbox of a face-finding tab


def _failure(source: str, message: str, n_outputs: int) -> tuple:
    gr.Warning(message)
    return (f"### ⚠️ {message}", {"source": source, "error": message}) + (None,) * (n_outputs - 2)


def _guarded(spec: TabSpec, n_outputs: int, run: Any, path: str | None, k: Any) -> tuple:
    """Runs a handler; a bad upload (or a bug) becomes a message in the page."""
    if not path:
        return ("Upload a file or pick an example to see a prediction.", None) + (None,) * (n_outputs - 2)
    source = Path(path).name
    try:
        return run(path, source, k)
    except UserError as err:
        message = re.sub(r"^input \d+ \(\w+\): ", "", str(err))  # the library's name for a list item
        for server_path in {str(path), str(Path(path).resolve())}:  # name the upload, not the server's copy
            message = message.replace(server_path, source)
        # the page's own control, not the library's and command line's
        message = message.replace("pass detect=False / --no-detect for a photo", f"tick \"{CROPPED}\" for a photo")
        return _failure(source, message, n_outputs)
    except Exception as err:  # the app must keep serving; the log keeps the traceback
        log.exception("demo %s: %s failed", spec.name, source)
        return _failure(source, f"{source}: could not be processed ({type(err).__name__})", n_outputs)


def predict_image(served: Served, path: str | None, k: Any = None, max_pixels: int = MAX_PIXELS,
                  cropped: bool = False) -> tuple:
    """An uploaded image -> (summary, prediction JSON, neighbour thumbnails, [the face it used,]
    gallery map). A bundle that finds faces crops the photo to its largest face first, unless
    `cropped` says the photo is a face crop already; the face view shows the box and the crop."""
    b, spec = served.bundle, served.spec

    def run(path: str, source: str, k: Any) -> tuple:
        kk = _k(served, k)
        image = load_image(path, max_pixels=max_pixels)
        image.info["supemb_source"] = source  # a "no face found" message names the upload
        pred = b.predict([image], k=kk, embeddings=True, detect=not cropped)[0]  # a bad image raises UserError
        summary = summary_markdown(b, pred, len(pred.neighbours), spec.items)
        face = []
        if b.detects_faces:
            face = [face_view(image, pred.face, b.pipeline.params("face")["margin"])]
            summary += (f"\n\nFrom the face found at {[round(v) for v in pred.face['box']]} (detector score "
                        f"{pred.face['score']:.2f})." if pred.face else "\n\nFace detection skipped: the whole "
                        "photo was taken as the face crop.")
        return (summary, prediction_json(b, pred, len(pred.neighbours), source), image_neighbours(b, pred),
                *face, served.gallery_map.draw(pred.embedding))

    return _guarded(spec, 5 if b.detects_faces else 4, run, path, k)


def predict_eeg(served: Served, path: str | None, k: Any = None) -> tuple:
    """An uploaded recording -> (summary, prediction JSON, neighbour table, spectrum, gallery map)."""
    from supemb.data.eeg_files import channel_lookup, read_recording

    b, spec = served.bundle, served.spec

    def run(path: str, source: str, k: Any) -> tuple:
        kk = _k(served, k)
        raw = read_recording(path)  # read once: the model and the spectrum both use it
        pred = b.predict([raw], k=kk, embeddings=True)[0]  # a bad recording raises UserError
        lookup = channel_lookup(raw.ch_names)
        spectrum = eeg_spectrum(raw, [lookup[c] for c in b.spec.channels], (b.spec.l_freq, b.spec.h_freq))
        return (summary_markdown(b, pred, len(pred.neighbours), spec.items),
                prediction_json(b, pred, len(pred.neighbours), source),
                eeg_neighbours(b, pred),
                spectrum,
                served.gallery_map.draw(pred.embedding))

    return _guarded(spec, 5, run, path, k)


# ---------------------------------------------------------------------- UI

_CSS = """
.supemb-banner {border-left: 4px solid #f0ad4e; padding-left: 0.8em;}
.supemb-summary h2 {margin-bottom: 0.2em;}
.supemb-input img {width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated;}
"""


def _tab(served: Served, examples: list[Any], max_pixels: int) -> None:
    """One tab: banner, input column (upload, k, examples), results column."""
    spec, b = served.spec, served.bundle
    eeg = b.plugin.grouped  # a recording: its windows pooled, neighbours listed as recordings, a spectrum
    # outputs first (unrendered) so the examples, in the input column, can name them
    summary = gr.Markdown("Upload a file or pick an example to see a prediction.", render=False,
                          elem_classes="supemb-summary", elem_id=f"{spec.name}-summary")
    if eeg:
        neighbours = gr.Dataframe(headers=["rank", "recording", b.target_name, "similarity"], render=False,
                                  label="nearest gallery recordings", interactive=False,
                                  elem_id=f"{spec.name}-neighbours")
        extra = [gr.Image(label="spectrum", show_label=False, type="numpy", interactive=False, format="png",
                          render=False, elem_id=f"{spec.name}-spectrum")]
    else:
        neighbours = gr.Gallery(label=f"nearest gallery {spec.items} (label · {similarity_name(b)})",
                                render=False, columns=5, object_fit="contain", elem_id=f"{spec.name}-neighbours")
        extra = [gr.Image(label="the face it used: the box in your photo, and the crop", type="numpy",
                          interactive=False, format="png", render=False, elem_id=f"{spec.name}-face")
                 ] if b.detects_faces else []
    gallery_map = gr.Image(label="where your input lands among the gallery", show_label=False, type="numpy",
                           interactive=False, format="png", render=False, elem_id=f"{spec.name}-map")
    details = gr.JSON(label="prediction", render=False, elem_id=f"{spec.name}-json")
    outputs = [summary, details, neighbours, *extra, gallery_map]  # what predict_eeg / predict_image return

    def handler(value: Any, k: Any, cropped: bool = False) -> tuple:
        if eeg:
            return predict_eeg(served, value, k)
        try:
            path = _uploaded_path(value)
        except UserError as err:
            return _failure("image", str(err), len(outputs))
        return predict_image(served, path, k, max_pixels=max_pixels, cropped=bool(cropped))

    handler.__name__ = f"predict_{spec.name}"  # names the API endpoint's function in gradio's docs

    gr.Markdown(banner_markdown(b, spec.name, served.path, spec.gallery_items),
                elem_classes="supemb-banner", elem_id=f"{spec.name}-banner")
    with gr.Row():
        with gr.Column(scale=2):
            gr.Markdown(spec.intro)
            if eeg:
                inp = gr.File(label=spec.input_label, file_types=[".edf", ".bdf", ".fif"], type="filepath",
                              elem_id=f"{spec.name}-input")
            else:
                inp = gr.Image(label=spec.input_label, type="filepath", image_mode=None,
                               sources=["upload", "clipboard"], height=240, elem_classes="supemb-input",
                               elem_id=f"{spec.name}-input")
            k = gr.Slider(1, MAX_K, value=min(b.default_k, MAX_K), step=1, label="neighbours (k)")
            inputs = [inp, k]
            if not eeg and b.detects_faces:  # DeepFace's "skip": a photo that is a face crop already
                inputs.append(gr.Checkbox(False, label=CROPPED,
                                          elem_id=f"{spec.name}-cropped"))
            button = gr.Button("Predict", variant="primary", elem_id=f"{spec.name}-predict")
            # before the examples, which would otherwise take the api_name (they register one of their own)
            raw = {"preprocess": eeg}  # images: the handler decodes (see _uploaded_path)
            button.click(handler, inputs, outputs, api_name=f"predict_{spec.name}", **raw)
            inp.upload(handler, inputs, outputs, api_visibility="private", **raw)
            if examples:  # the synthetic faces are crops already: their examples skip detection
                gr.Examples([[str(e.path), b.default_k, *([e.cropped] if len(inputs) > 2 else [])] for e in examples],
                            inputs, outputs, fn=handler, run_on_click=True, cache_examples=False,
                            example_labels=[e.label for e in examples], label="examples (one click)")
            gallery_map.render()
        with gr.Column(scale=3):
            summary.render()
            neighbours.render()
            for component in extra:
                component.render()
            with gr.Accordion("prediction as data (JSON)", open=False):
                details.render()


def build_app(bundles: Mapping[str, str | Path | Bundle] | None = None, *, max_pixels: int = MAX_PIXELS,
              examples_dir: Path | None = None) -> gr.Blocks:
    """The demo's `gr.Blocks`, queued (serve it with `launch`, which adds the safe launch settings).

    bundles: tab name ("age", "temperature", "brain_age") -> bundle directory
    (or a loaded Bundle), replacing that tab's default bundle.
    examples_dir: where the example inputs are kept (default `examples.cache_dir()`).
    """
    return _blocks(load_served(bundles), max_pixels, examples_dir)


def _blocks(served: dict[str, Served], max_pixels: int, examples_dir: Path | None) -> gr.Blocks:
    examples = example_inputs(examples_dir)
    with gr.Blocks(title="supemb demo", analytics_enabled=False) as app:
        gr.Markdown("# supemb: predictions you can check\n"
                    "Each model maps its input into an embedding space whose geometry follows the label. "
                    "The prediction is the similarity-weighted mean of the nearest labelled gallery items, "
                    "and those neighbours, shown beside each prediction, are its explanation.")
        for name, s in served.items():
            with gr.Tab(s.spec.title, id=name):
                _tab(s, examples.get(name, []), max_pixels)
    app.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    return app


def launch(bundles: Mapping[str, str | Path | Bundle] | None = None, host: str = HOST, port: int = PORT, *,
           prevent_thread_lock: bool = False, max_file_size: str | int = MAX_FILE_SIZE,
           max_pixels: int = MAX_PIXELS, examples_dir: Path | None = None, quiet: bool = False) -> gr.Blocks:
    """Build and serve the demo at http://host:port (127.0.0.1 unless asked).
    prevent_thread_lock=True returns at once with the server running (tests);
    stop it with `app.close()`; `app.local_url` is its address."""
    served = load_served(bundles)
    examples_dir = Path(examples_dir) if examples_dir is not None else cache_dir()
    app = _blocks(served, max_pixels, examples_dir)
    try:
        app.launch(server_name=host, server_port=port, prevent_thread_lock=True, max_file_size=max_file_size,
                   allowed_paths=[str(examples_dir)],  # the examples, nothing else of ours
                   show_error=False, quiet=True, ssr_mode=False, mcp_server=False, css=_CSS, footer_links=["api"])
    except OSError as err:
        app.close()
        reason = str(err).split(". ")[0]
        raise UserError(f"cannot serve on {host}:{port} ({reason}); pick another port with --port") from None
    if not quiet:
        for name, s in served.items():
            note = "; a demonstration model trained on synthetic data" if s.bundle.is_demo else ""
            print(f"supemb demo: {name}: {s.bundle.name} from {s.path}{note}")
        if host not in ("127.0.0.1", "localhost", "::1"):
            print(f"supemb demo: bound to {host}: anyone who can reach this machine can use the demo")
        print(f"supemb demo: open {app.local_url} in a browser (Ctrl-C stops it)", flush=True)
    if not prevent_thread_lock:
        app.block_thread()  # until Ctrl-C
    return app
