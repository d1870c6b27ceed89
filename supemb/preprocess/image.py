"""Image evaluation preprocessing: one definition for training, export and serving.

Given a `PreprocessSpec` (stored in the training run and in the bundle's
manifest.json):

    RGB -> resize the shorter side to resize_size (bilinear, antialiased when
    shrinking) -> centre crop image_size x image_size -> [0, 1] ->
    (x - mean) / std -> float32 [3, image_size, image_size]

The resize and crop are one Pillow call on the source box that the crop
covers (`crop_box`), so no intermediate image is rounded to whole pixels, and
every entry point (`eval_preprocess_array`, `eval_preprocess_batch`, and the
torch `supemb.preprocess.image_augment.eval_preprocess`) runs the same code:
they cannot drift.

numpy and Pillow only: serving preprocesses images without importing torch
(about 2 s). The torch parts (tensors, augmentation) are in
`supemb.preprocess.image_augment`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from supemb.data.image_files import load_image, to_rgb, upright
from supemb.errors import UserError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
RESAMPLE = "bilinear"  # the only one; named in to_dict() so a manifest says it


# ------------------------------------------------------------ preprocessing


def _triple(name: str, v: Any) -> tuple[float, float, float]:
    try:
        t = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        raise UserError(f"preprocessing: {name} must be 3 numbers, not {v!r}") from None
    if len(t) != 3 or not all(math.isfinite(x) for x in t):
        raise UserError(f"preprocessing: {name} must be 3 finite numbers, not {v!r}")
    return t  # type: ignore[return-value]


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes the encoder's input.

    image_size: the square crop fed to the encoder (pixels).
    resize_size: the shorter side is resized to this before the centre crop
    (>= image_size; 224/256 keeps the central 87.5%, ImageNet's habit).
    mean, std: per-channel (R, G, B) normalisation of [0, 1] values.
    """

    image_size: int = 224
    resize_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        # JSON gives lists and maybe floats: store the canonical types.
        object.__setattr__(self, "mean", _triple("mean", self.mean))
        object.__setattr__(self, "std", _triple("std", self.std))
        for name in ("image_size", "resize_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer, float)) or v != int(v) or v < 1:
                raise UserError(f"preprocessing: {name} must be a positive integer, not {v!r}")
            object.__setattr__(self, name, int(v))
        if self.resize_size < self.image_size:
            raise UserError(
                f"preprocessing: resize_size {self.resize_size} must be >= image_size {self.image_size}"
            )
        if min(self.std) <= 0:
            raise UserError(f"preprocessing: std must be > 0, not {self.std}")

    @classmethod
    def square(cls, size: int, **kwargs: Any) -> PreprocessSpec:
        """No cropping beyond the square: resize_size == image_size (small synthetic images)."""
        return cls(image_size=size, resize_size=size, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly; `from_dict(to_dict())` gives an equal spec."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["resample"] = RESAMPLE
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        """From `to_dict()` output (e.g. manifest.json); unknown keys are refused."""
        d = dict(d)
        resample = d.pop("resample", RESAMPLE)
        if resample != RESAMPLE:
            raise UserError(f"preprocessing: resample {resample!r} is not supported (only {RESAMPLE!r})")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"preprocessing: unknown keys {unknown} (known: {sorted(known)})")
        return cls(**d)


@lru_cache(maxsize=32)
def _affine(spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift), each float32 [3, 1, 1], with x_norm = x_uint8 * scale + shift."""
    mean, std = np.array(spec.mean, np.float64), np.array(spec.std, np.float64)
    scale = (1.0 / (255.0 * std)).astype(np.float32).reshape(3, 1, 1)
    shift = (-mean / std).astype(np.float32).reshape(3, 1, 1)
    return scale, shift


def normalize_uint8(rgb: np.ndarray, spec: PreprocessSpec, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [3, H, W], (x / 255 - mean) / std. out: optional [3, H, W] buffer."""
    scale, shift = _affine(spec)
    chw = rgb.transpose(2, 0, 1)
    if out is None:
        out = np.empty(chw.shape, np.float32)
    np.multiply(chw, scale, out=out, dtype=np.float32)
    out += shift
    return out


def crop_box(width: int, height: int, spec: PreprocessSpec) -> tuple[float, float, float, float]:
    """The source box (left, top, right, bottom) that "resize the shorter side to
    resize_size, then centre-crop image_size" keeps. Float coordinates: no
    rounding of an intermediate size."""
    side = min(width, height) * spec.image_size / spec.resize_size
    left, top = (width - side) / 2.0, (height - side) / 2.0
    return (left, top, left + side, top + side)


def resize_crop(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """RGB image -> uint8 [image_size, image_size, 3], resized and centre-cropped."""
    s = spec.image_size
    out = image.resize((s, s), Image.Resampling.BILINEAR, box=crop_box(image.width, image.height, spec))
    return np.asarray(out)


def as_rgb_image(image: str | Path | Image.Image | np.ndarray) -> Image.Image:
    """A path (decoded by `load_image`), a PIL image (any mode; turned upright by its EXIF
    orientation, as a file is) or a uint8 array ([H, W, 3] RGB; [H, W] grey and [H, W, 4]
    RGBA are accepted too) -> RGB image. An empty image is refused."""
    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, Image.Image):
        if min(image.size) == 0:
            raise UserError(f"image is empty ({image.width}x{image.height} pixels)")
        return to_rgb(upright(image))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise UserError(f"image array must be uint8 [H, W, 3] (or [H, W] grey, [H, W, 4] RGBA), "
                            f"not {image.dtype} {list(image.shape)}")
        if image.ndim == 2 and min(image.shape) > 0:
            return Image.fromarray(image, "L").convert("RGB")
        if image.ndim == 3 and image.shape[2] in (3, 4) and min(image.shape[:2]) > 0:
            mode = "RGB" if image.shape[2] == 3 else "RGBA"
            return to_rgb(Image.fromarray(np.ascontiguousarray(image), mode))
        raise UserError(f"image array must be uint8 [H, W, 3] (or [H, W] grey, [H, W, 4] RGBA), "
                        f"not shape {list(image.shape)}")
    raise UserError(f"an image must be a path, a PIL.Image or a uint8 array, not {type(image).__name__}")


def eval_preprocess_array(image: np.ndarray | Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """The evaluation preprocessing in numpy: uint8 [H, W, 3] (or a PIL image)
    -> float32 [3, image_size, image_size]. `eval_preprocess` is its torch version."""
    return normalize_uint8(resize_crop(as_rgb_image(image), spec), spec)


def eval_preprocess_batch(
    images: Sequence[str | Path | Image.Image | np.ndarray], spec: PreprocessSpec
) -> np.ndarray:
    """Paths, PIL images or uint8 arrays -> float32 [N, 3, S, S] (for ONNX Runtime)."""
    s = spec.image_size
    out = np.empty((len(images), 3, s, s), np.float32)
    for i, im in enumerate(images):
        normalize_uint8(resize_crop(as_rgb_image(im), spec), spec, out=out[i])
    return out
