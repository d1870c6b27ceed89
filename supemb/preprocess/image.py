"""Image preprocessing (one definition for training, export and serving) and
the two-view augmentations of contrastive training.

Evaluation preprocessing, given a `PreprocessSpec` (stored in the training
run and in the bundle's manifest.json):

    RGB -> resize the shorter side to resize_size (bilinear, antialiased when
    shrinking) -> centre crop image_size x image_size -> [0, 1] ->
    (x - mean) / std -> float32 [3, image_size, image_size]

The resize and crop are one Pillow call on the source box that the crop
covers, so no intermediate image is rounded to whole pixels and every entry
point (`eval_preprocess` for PIL images -> torch, `eval_preprocess_array` and
`eval_preprocess_batch` for numpy) runs the same code: they cannot drift.

Augmentation (`ContrastiveAugment`, the SupCon recipe): random resized crop,
horizontal flip, colour jitter (brightness, contrast, saturation, hue, in a
random order, applied with probability jitter_p), random greyscale, then the
same normalisation. `TwoViews` stacks two independent draws.
`IMAGE_AUGMENTS` names label-preserving presets of it ("simclr": the SupCon
recipe; "colour", "light": no hue shift, no greyscale; "none": the
evaluation preprocessing); `image_augment(value)` resolves a setting.

torch is imported only where a tensor is made: serving preprocesses with
numpy and Pillow without paying for the torch import (about 2 s).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance

from supemb.data.images import load_image, to_rgb
from supemb.errors import UserError

if TYPE_CHECKING:
    import torch

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
    """A path (decoded by `load_image`), a PIL image (any mode) or a uint8 array
    ([H, W, 3] RGB; [H, W] grey and [H, W, 4] RGBA are accepted too) -> RGB image."""
    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise UserError(f"image array must be uint8 [H, W, 3], not {image.dtype} {list(image.shape)}")
        if image.ndim == 2:
            return Image.fromarray(image, "L").convert("RGB")
        if image.ndim == 3 and image.shape[2] in (3, 4) and min(image.shape[:2]) > 0:
            mode = "RGB" if image.shape[2] == 3 else "RGBA"
            return to_rgb(Image.fromarray(np.ascontiguousarray(image), mode))
        raise UserError(f"image array must be uint8 [H, W, 3], not shape {list(image.shape)}")
    raise UserError(f"an image must be a path, a PIL.Image or a uint8 array, not {type(image).__name__}")


def eval_preprocess_array(image: np.ndarray | Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """The evaluation preprocessing in numpy: uint8 [H, W, 3] (or a PIL image)
    -> float32 [3, image_size, image_size]. Identical to `eval_preprocess`."""
    return normalize_uint8(resize_crop(as_rgb_image(image), spec), spec)


def eval_preprocess(image: Image.Image | np.ndarray, spec: PreprocessSpec) -> torch.Tensor:
    """The evaluation preprocessing: PIL image (any mode) -> float32 tensor [3, S, S]."""
    import torch

    return torch.from_numpy(eval_preprocess_array(image, spec))


def eval_preprocess_batch(
    images: Sequence[str | Path | Image.Image | np.ndarray], spec: PreprocessSpec
) -> np.ndarray:
    """Paths, PIL images or uint8 arrays -> float32 [N, 3, S, S] (for ONNX Runtime)."""
    s = spec.image_size
    out = np.empty((len(images), 3, s, s), np.float32)
    for i, im in enumerate(images):
        normalize_uint8(resize_crop(as_rgb_image(im), spec), spec, out=out[i])
    return out


class EvalTransform:
    """`eval_preprocess` as a picklable callable for `ImageDataset` (val, test, gallery)."""

    def __init__(self, spec: PreprocessSpec) -> None:
        self.spec = spec

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        return eval_preprocess(image, self.spec)

    def __repr__(self) -> str:
        return f"EvalTransform({self.spec})"


# ------------------------------------------------------------- augmentation


@dataclass(frozen=True)
class AugmentSpec:
    """The SupCon augmentation recipe's parameters (defaults: the paper's).

    scale: area fraction range of the random crop; ratio: its aspect range.
    scale (1, 1) means no random crop: the view is the evaluation crop
    (`crop_box`), so with no flip, jitter or greyscale it equals `eval_preprocess`.
    brightness/contrast/saturation: factor drawn from [1 - v, 1 + v]; hue:
    shift drawn from [-v, v] of the colour circle (<= 0.5). jitter_p: the
    chance that colour jitter runs at all; grey_p: chance of greyscale.
    """

    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    jitter_p: float = 0.8
    grey_p: float = 0.2

    def __post_init__(self) -> None:
        for name in ("scale", "ratio"):
            v = tuple(float(x) for x in getattr(self, name))
            if len(v) != 2 or not (0 < v[0] <= v[1]) or (name == "scale" and v[1] > 1):
                raise UserError(f"augmentation: {name} must be (low, high) with 0 < low <= high, not {v}")
            object.__setattr__(self, name, v)
        for name in ("flip_p", "jitter_p", "grey_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"augmentation: {name} must be in [0, 1]")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise UserError(f"augmentation: {name} must be >= 0")
        if not 0 <= self.hue <= 0.5:
            raise UserError("augmentation: hue must be in [0, 0.5]")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scale"], d["ratio"] = list(self.scale), list(self.ratio)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AugmentSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"augmentation: unknown keys {unknown} (known: {sorted(known)})")
        return cls(**d)


# Label-preserving presets (see docs/DESIGN.md, "Augmentation presets"). Hue
# shifts and greyscale destroy colour (which carries e.g. outdoor temperature
# in a webcam image, or skin and hair tone in a face); flips change digits.
_COLOUR_SAFE = dict(scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3), brightness=0.2, contrast=0.2, saturation=0.0,
                    hue=0.0, jitter_p=0.8, grey_p=0.0)
IMAGE_AUGMENTS: dict[str, AugmentSpec] = {
    # The SupCon/SimCLR recipe: classes whose identity survives colour changes.
    "simclr": AugmentSpec(),
    # Colour-preserving: targets carried by colour (webcam temperature, faces).
    "colour": AugmentSpec(flip_p=0.5, **_COLOUR_SAFE),
    # "colour" without the flip: orientation-bearing images (digits, text).
    "light": AugmentSpec(flip_p=0.0, **_COLOUR_SAFE),
    # No augmentation: the evaluation preprocessing (a control).
    "none": AugmentSpec(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, brightness=0.0, contrast=0.0,
                        saturation=0.0, hue=0.0, jitter_p=0.0, grey_p=0.0),
}


def image_augment(value: str | dict[str, Any] | AugmentSpec) -> tuple[str, AugmentSpec]:
    """A preset name ("colour"), a mapping `{"preset": NAME, **field overrides}`
    or an `AugmentSpec` -> (preset name or "custom", spec). Bad names or
    fields: a one-line `UsageError` naming the presets."""
    from supemb.preprocess.presets import CUSTOM, resolve_preset

    if isinstance(value, AugmentSpec):
        names = [n for n, p in IMAGE_AUGMENTS.items() if p == value]
        return (names[0] if names else CUSTOM), value
    return resolve_preset(value, IMAGE_AUGMENTS, AugmentSpec, "image")


def random_crop_box(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], draw: Callable[[int], list[float]]
) -> tuple[float, float, float, float]:
    """A random box covering `scale` of the area with aspect (w/h) in `ratio`.

    Up to 10 tries (area uniform, log-aspect uniform, position uniform); when
    none fits, the largest centred box within the aspect range.
    draw(k): k uniforms in [0, 1).
    """
    area = float(width * height)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        ua, ur, ux, uy = draw(4)
        target = area * (scale[0] + (scale[1] - scale[0]) * ua)
        aspect = math.exp(log_lo + (log_hi - log_lo) * ur)
        w, h = math.sqrt(target * aspect), math.sqrt(target / aspect)
        if w <= width and h <= height:
            x0, y0 = ux * (width - w), uy * (height - h)
            return (x0, y0, x0 + w, y0 + h)
    w, h = float(width), float(height)
    if w / h < ratio[0]:
        h = w / ratio[0]
    elif w / h > ratio[1]:
        w = h * ratio[1]
    x0, y0 = (width - w) / 2.0, (height - h) / 2.0
    return (x0, y0, x0 + w, y0 + h)


def _shift_hue(image: Image.Image, shift: float) -> Image.Image:
    """Rotate hue by `shift` of the colour circle (positive: red -> yellow -> green).

    A rotation of RGB about the grey axis, one 3x3 matrix in Pillow's C code:
    about 8x faster than a round trip through HSV, keeps greys grey, and
    shifts HSV hue by close to `shift`.
    """
    t = 2.0 * math.pi * shift
    c, s = math.cos(t), math.sin(t)
    a, b = (1.0 - c) / 3.0, s / math.sqrt(3.0)
    m = (
        c + a, a - b, a + b, 0.0,
        a + b, c + a, a - b, 0.0,
        a - b, a + b, c + a, 0.0,
    )  # fmt: skip
    return image.convert("RGB", m)


def color_jitter(image: Image.Image, factors: Sequence[float], order: Sequence[int]) -> Image.Image:
    """Apply brightness, contrast, saturation factors and a hue shift
    (factors = (b, c, s, h)) in `order` (a permutation of 0..3)."""
    for k in order:
        f = factors[k]
        if k == 0 and f != 1.0:
            image = ImageEnhance.Brightness(image).enhance(f)
        elif k == 1 and f != 1.0:
            image = ImageEnhance.Contrast(image).enhance(f)
        elif k == 2 and f != 1.0:
            image = ImageEnhance.Color(image).enhance(f)
        elif k == 3 and f != 0.0:
            image = _shift_hue(image, f)
    return image


class ContrastiveAugment:
    """One augmented view: RGB PIL image -> float32 tensor [3, S, S] (S = spec.image_size).

    Randomness, in order of precedence: the `generator` passed to the call;
    else, with `seed` set, a private generator seeded from `seed` (and, in a
    DataLoader worker, from the worker's seed too, so workers and epochs
    differ); else torch's global RNG, which DataLoader seeds per worker from
    its base seed, so `torch.manual_seed` makes a run reproducible.
    """

    def __init__(self, spec: PreprocessSpec, aug: AugmentSpec | None = None, *, seed: int | None = None) -> None:
        self.spec = spec
        self.aug = aug if aug is not None else AugmentSpec()
        self.seed = seed
        self._gen: torch.Generator | None = None
        self._gen_owner: tuple[int, int | None] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Worker processes build their own generator (see _generator).
        state = dict(self.__dict__)
        state["_gen"], state["_gen_owner"] = None, None
        return state

    def _generator(self) -> torch.Generator | None:
        if self.seed is None:
            return None
        import torch
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        owner = (os.getpid(), None if info is None else int(info.seed))
        if self._gen is None or self._gen_owner != owner:
            # Forked workers inherit a copy of the parent's generator: reseed per worker.
            seed = self.seed
            if info is not None:
                seed = int(np.random.SeedSequence([self.seed, info.seed]).generate_state(1)[0])
            self._gen = torch.Generator().manual_seed(seed)
            self._gen_owner = owner
        return self._gen

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        import torch

        g = generator if generator is not None else self._generator()

        def draw(k: int) -> list[float]:
            return torch.rand(k, generator=g, dtype=torch.float64).tolist()

        a, s = self.aug, self.spec.image_size
        image = to_rgb(image)
        box = random_crop_box(image.width, image.height, a.scale, a.ratio, draw)
        if a.scale == (1.0, 1.0):
            # No random crop: the evaluation crop, resized exactly as `resize_crop` does.
            # (The box above was still drawn, so every preset consumes the same numbers.)
            view = image.resize((s, s), Image.Resampling.BILINEAR, box=crop_box(image.width, image.height, self.spec))
        else:
            # reducing_gap: shrink big photos by whole factors first (much faster, same look).
            view = image.resize((s, s), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)
        u = draw(11)  # fixed count: flip, jitter?, 4 factors, 4 order keys, grey
        if u[0] < a.flip_p:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if u[1] < a.jitter_p:
            factors = (
                1.0 + a.brightness * (2 * u[2] - 1),
                1.0 + a.contrast * (2 * u[3] - 1),
                1.0 + a.saturation * (2 * u[4] - 1),
                a.hue * (2 * u[5] - 1),
            )
            factors = (max(factors[0], 0.0), max(factors[1], 0.0), max(factors[2], 0.0), factors[3])
            order = sorted(range(4), key=lambda k: u[6 + k])
            view = color_jitter(view, factors, order)
        if u[10] < a.grey_p:
            view = view.convert("L").convert("RGB")
        return torch.from_numpy(normalize_uint8(np.asarray(view), self.spec))

    def __repr__(self) -> str:
        return f"ContrastiveAugment({self.spec}, {self.aug}, seed={self.seed})"


class TwoViews:
    """n independent draws of `transform`, stacked: PIL image -> [n_views, 3, S, S]."""

    def __init__(self, transform: Callable[..., torch.Tensor], n_views: int = 2) -> None:
        if n_views < 1:
            raise ValueError("n_views must be >= 1")
        self.transform = transform
        self.n_views = n_views

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        import torch

        image = to_rgb(image)  # convert once, not per view
        if generator is None:
            views = [self.transform(image) for _ in range(self.n_views)]
        else:
            views = [self.transform(image, generator) for _ in range(self.n_views)]
        return torch.stack(views)

    def __repr__(self) -> str:
        return f"TwoViews({self.transform!r}, n_views={self.n_views})"
