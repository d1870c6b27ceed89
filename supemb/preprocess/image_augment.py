"""Image preprocessing that makes torch tensors: the evaluation transform and
the two-view augmentations of contrastive training.

`eval_preprocess` / `EvalTransform`: the evaluation preprocessing of
`supemb.preprocess.image` (numpy) as a float32 tensor [3, S, S].

Augmentation (`ContrastiveAugment`, the SupCon recipe): random resized crop,
horizontal flip, colour jitter (brightness, contrast, saturation, hue, in a
random order, applied with probability jitter_p), random greyscale, then the
same normalisation. `IMAGE_AUGMENTS` names label-preserving presets of it
("simclr": the SupCon recipe; "colour", "light": no hue shift, no greyscale;
"none": the evaluation preprocessing); `image_augment(value)` resolves a
setting.

Training-side: imports torch (serving uses `supemb.preprocess.image`).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance
from torch.utils.data import get_worker_info

from supemb.data.image_files import to_rgb
from supemb.errors import UserError
from supemb.preprocess.image import PreprocessSpec, crop_box, eval_preprocess_array, normalize_uint8


def eval_preprocess(image: Image.Image | np.ndarray, spec: PreprocessSpec) -> torch.Tensor:
    """The evaluation preprocessing: PIL image (any mode) -> float32 tensor [3, S, S]."""
    return torch.from_numpy(eval_preprocess_array(image, spec))


class EvalTransform:
    """`eval_preprocess` as a picklable callable (val, test and gallery images)."""

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
