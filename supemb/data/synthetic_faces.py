"""SYNTHETIC faces -> age, for tests, demos and benchmarks (no download).

Generated deterministically for a seed with numpy; cartoons, not
photographs, saying nothing about real faces. As in the SupCR paper's
Figure 1, the nuisance (which person) dominates the pixels while the target
(age, 1..90 years) shows only through weak cues. Each identity has its own
background, skin tone, face shape, hair colour and style, eyes and shirt,
and is seen at several ages around an identity-specific centre. Age shows
through face proportions (children: rounder face, bigger and lower eyes,
smaller nose and mouth), wrinkles (forehead, eye corners, nose-to-mouth
lines, from ~30), grey hair (from ~35) and slightly paler skin; pose,
lighting and noise vary per image.

`render_face` draws one image; `face_arrays` a whole set in memory;
`make_face_dataset` writes PNGs and a labels.csv that `load_image_table`
reads, or UTKFace / AgeDB file names.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from supemb.data.synthetic_drawing import (
    IMAGE_SALT,
    cached_grid,
    paint,
    ranks,
    smooth_noise,
    soft_ellipse,
    split_column,
    to_uint8,
    write_labels,
)

AGE_RANGE: tuple[int, int] = (1, 90)
NAMINGS: tuple[str, ...] = ("csv", "utkface", "agedb")

# Salt keeps the identity streams apart from the per-image streams.
_IDENTITY_SALT = 0xFACE5


@dataclass(frozen=True)
class _Person:
    """One identity's fixed looks (fractions of the image size) and labels."""

    bg: np.ndarray
    bg2: np.ndarray
    bg_angle: float
    bg_freq: float
    skin: np.ndarray
    hair: np.ndarray
    iris: np.ndarray
    shirt: np.ndarray
    lips: np.ndarray
    cx: float
    cy: float
    rx: float
    ry: float
    jaw: float
    hair_top: float
    hair_side: float
    fringe: float
    eye_dx: float
    eye_r: float
    nose: float
    mouth: float
    centre_age: float
    gender: int  # UTKFace code: 0 male, 1 female
    race: int  # UTKFace code 0..4, from the skin tone (only for file names)
    grey_rank: np.ndarray  # [S, S] order in which hairs turn grey
    grey_onset: float  # age when hair starts to turn grey
    grey_span: float  # years from the first grey hair to (almost) all grey
    wrinkle_onset: float  # age when lines start to show


_SKIN_LIGHT = np.array([0.96, 0.82, 0.72])
_SKIN_DARK = np.array([0.36, 0.23, 0.16])
_HAIR_COLOURS = np.array(
    [[0.08, 0.06, 0.05], [0.3, 0.2, 0.12], [0.55, 0.4, 0.22], [0.85, 0.72, 0.45], [0.6, 0.25, 0.1]]
)  # black, brown, light brown, blond, red
_GREY_HAIR = np.array([0.8, 0.8, 0.8], np.float32)
_EYE_WHITE = np.array([0.95, 0.95, 0.93], np.float32)


@lru_cache(maxsize=1024)
def _person(identity: int, size: int) -> _Person:
    rng = np.random.default_rng([_IDENTITY_SALT, identity])
    tone = rng.random()
    skin = _SKIN_LIGHT * (1 - tone) + _SKIN_DARK * tone + rng.normal(0, 0.02, 3)
    hair = _HAIR_COLOURS[rng.integers(0, 2 if tone > 0.5 else len(_HAIR_COLOURS))] * rng.uniform(0.85, 1.15)
    gender = int(rng.integers(2))
    race = int(min(4, tone * 4.0)) if rng.random() < 0.9 else 4
    person = _Person(
        bg=rng.uniform(0.1, 0.9, 3), bg2=rng.uniform(0.1, 0.9, 3),
        bg_angle=float(rng.uniform(0, np.pi)), bg_freq=float(rng.choice([0.0, 0.0, 3.0, 6.0])),
        skin=np.clip(skin, 0, 1), hair=np.clip(hair, 0, 1),
        iris=rng.choice([[0.3, 0.2, 0.1], [0.2, 0.35, 0.55], [0.3, 0.45, 0.25], [0.1, 0.08, 0.06]]),
        shirt=rng.uniform(0.05, 0.95, 3), lips=np.clip(skin * [1.0, 0.7, 0.7] + rng.normal(0, 0.03, 3), 0, 1),
        cx=float(rng.uniform(0.46, 0.54)), cy=float(rng.uniform(0.46, 0.54)),
        rx=float(rng.uniform(0.22, 0.29)), ry=float(rng.uniform(0.29, 0.35)), jaw=float(rng.uniform(0.0, 0.3)),
        hair_top=float(rng.uniform(0.03, 0.1)), hair_side=float(rng.choice([0.0, 0.0, 0.2, 0.45]) if gender == 0
                                                              else rng.choice([0.0, 0.3, 0.5, 0.6])),
        fringe=float(rng.uniform(0.0, 0.25)),
        eye_dx=float(rng.uniform(0.36, 0.46)), eye_r=float(rng.uniform(0.035, 0.05)),
        nose=float(rng.uniform(0.18, 0.3)), mouth=float(rng.uniform(0.25, 0.4)),
        centre_age=float(rng.uniform(3, 86)), gender=gender, race=race,
        grey_rank=ranks(smooth_noise(rng, size, 10) + 0.5 * rng.random((size, size)), np.ones((size, size))),
        grey_onset=float(rng.uniform(28, 55)), grey_span=float(rng.uniform(25, 50)),
        wrinkle_onset=float(rng.uniform(22, 40)),
    )  # fmt: skip
    for name in ("bg", "bg2", "skin", "hair", "iris", "shirt", "lips"):
        object.__setattr__(person, name, np.asarray(getattr(person, name), np.float32))  # float32 all the way
    for name in ("grey_rank", "bg", "bg2", "skin", "hair", "iris", "shirt", "lips"):
        getattr(person, name).flags.writeable = False  # shared through the cache
    return person


def render_face(identity: int, age: float, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One SYNTHETIC face: uint8 [size, size, 3].

    The looks are fixed by identity; age (years) sets proportions, wrinkles,
    grey hair and skin; rng draws pose, expression, lighting and noise.
    """
    p = _person(int(identity), int(size))
    # People look younger or older than they are; grey hair and wrinkles
    # start at a different age in every person.
    a = max(float(age) + rng.normal(0, 3.0), 0.5)
    child = min(max((18.0 - a) / 17.0, 0.0), 1.0)
    adult = min(max((a - 20.0) / 65.0, 0.0), 1.0)  # slow changes through adult life
    old = min(max((a - p.wrinkle_onset) / 50.0, 0.0), 1.0)
    grey = min(max((a - p.grey_onset) / p.grey_span, 0.0), 1.0) ** 1.2
    y0, x0 = cached_grid(size)
    # Pose: shift and scale about the image centre; (y, x) are face coordinates of each pixel.
    scale, dy, dx = 1.0 + rng.normal(0, 0.03), rng.normal(0, 0.02), rng.normal(0, 0.02)
    y = (y0 - 0.5) / scale + 0.5 - dy
    x = (x0 - 0.5) / scale + 0.5 - dx

    def window(top: float, bottom: float, left: float, right: float) -> tuple[slice, slice]:
        """The pixels covering a box in face coordinates (small features are drawn only there)."""

        def span(lo: float, hi: float, d: float) -> slice:
            a0 = int(np.floor(((lo + d - 0.5) * scale + 0.5) * size - 0.5)) - 1
            a1 = int(np.ceil(((hi + d - 0.5) * scale + 0.5) * size - 0.5)) + 2
            return slice(min(max(a0, 0), size), min(max(a1, 0), size))

        return span(top, bottom, dy), span(left, right, dx)

    # Background: two colours, plain or striped.
    u = np.cos(p.bg_angle) * x + np.sin(p.bg_angle) * y
    mix = (0.5 + 0.5 * np.sin(u * (p.bg_freq * np.pi))) if p.bg_freq else u
    img = p.bg + mix[..., None] * (p.bg2 - p.bg)

    rx = p.rx * (1 + 0.06 * child)
    ry = p.ry * (1 - 0.12 * child)  # children: rounder faces
    cx, cy = p.cx, p.cy + 0.03 * child
    paint(img, p.shirt, soft_ellipse(y, x, cy + ry + 0.28, cx, 0.2, 0.42, size))  # shoulders
    paint(img, p.skin * 0.9, np.clip((0.09 - np.abs(x - cx)) * size, 0, 1) * (y > cy))  # neck

    # Hair behind the face: a cap, and side hair for longer styles; grey
    # hairs appear in a fixed per-person order as age goes up.
    hair_col = p.hair + (p.grey_rank < grey)[..., None] * (0.9 * (_GREY_HAIR - p.hair))
    top = p.hair_top * (1 - 0.4 * old * (1 - p.gender))  # thinning, mostly in men
    cap = soft_ellipse(y, x, cy - 0.04, cx, ry + top, rx + top * 0.7, size)
    cap *= np.clip((cy - 0.04 + p.hair_side - y) * size, 0, 1)
    paint(img, hair_col, cap)

    # Face: an ellipse narrowing towards the jaw (less in children); the
    # lower face lengthens and the jaw widens through adult life.
    ry_low = ry * (1 + 0.1 * adult)
    below = np.clip((y - cy) / ry_low, 0, 1)
    rx_jaw = rx * (1 - p.jaw * (1 - 0.7 * child) * (1 - 0.4 * adult) * below**2)
    ry_map = np.where(y > cy, ry_low, ry)
    face = np.clip((1.0 - np.sqrt(((y - cy) / ry_map) ** 2 + ((x - cx) / rx_jaw) ** 2)) * rx * size + 0.5, 0, 1)
    fade = 0.15 * adult  # paler, less saturated skin with age
    skin = p.skin * (1 - fade) + fade * (p.skin.mean() + 0.05)
    paint(img, skin, face)
    fringe = face * np.clip((cy - ry * (0.75 - p.fringe) - y) * size, 0, 1)
    paint(img, hair_col, fringe)

    # Features: eye height and size, nose and mouth scale with childhood.
    ey = cy - ry * 0.12 * (1 - child)
    er = p.eye_r * (1 + 0.45 * child)
    dark = np.zeros_like(face)  # wrinkles and folds, applied as shading
    for side in (-1.0, 1.0):
        ex = cx + side * rx * p.eye_dx
        w = window(ey - er * 1.6 - 0.05, ey + er + 0.04, ex - er * 2.8, ex + er * 2.8)
        ys, xs, im = y[w], x[w], img[w]
        open_ = 1.0 - 0.35 * adult  # eyelids droop with age
        paint(im, _EYE_WHITE, soft_ellipse(ys, xs, ey, ex, er * 0.7 * open_, er * 1.3, size))
        paint(im, p.iris, soft_ellipse(ys, xs, ey, ex, er * 0.6 * open_, er * 0.6, size))
        paint(im, hair_col[w] * 0.8, soft_ellipse(ys, xs, ey - er * 1.6 - 0.02, ex, 0.012, er * 1.5, size))
        if old > 0:  # crow's feet: short lines fanning out from the outer eye corner
            out = side * (xs - ex)
            near = (out > er * 1.4) & (out < er * 2.6)
            for k in (-1.0, 0.0, 1.0):
                seg = near & (np.abs(ys - ey - k * 0.6 * (out - er * 1.5)) < 0.6 / size)
                dark[w] = np.maximum(dark[w], seg * (0.7 * old))
    nose_len = ry * p.nose * (1 - 0.35 * child)
    w = window(ey + 0.03, ey + 0.03 + nose_len, cx - 0.02, cx + 0.02)
    nose = (np.abs(x[w] - cx) < 0.8 / size) & (y[w] > ey + 0.03) & (y[w] < ey + 0.03 + nose_len)
    dark[w] = np.maximum(dark[w], nose * 0.35)
    my = ey + 0.03 + nose_len + 0.06 * (1 - 0.3 * child)
    mw = rx * p.mouth * (1 - 0.2 * child)
    smile = rng.normal(0, 0.01)
    w = window(my - 0.06, my + 0.06, cx - mw - 0.02, cx + mw + 0.02)
    ys, xs = y[w], x[w]
    paint(img[w], p.lips, soft_ellipse(ys + smile * ((xs - cx) / mw) ** 2, xs, my, cx, 0.014, mw, size))
    # Forehead lines and nose-to-mouth folds, from about 30 years on.
    if old > 0:
        w = window(cy - ry * 0.65, cy - ry * 0.38, cx - rx * 0.5, cx + rx * 0.5)
        ys, xs = y[w], x[w]
        inside = np.abs(xs - cx) < rx * 0.45
        for j in range(3):
            line = inside & (np.abs(ys - (cy - ry * (0.42 + 0.1 * j)) - 0.006 * np.sin(xs * 25.0)) < 0.55 / size)
            dark[w] = np.maximum(dark[w], line * (old * (1.0 - 0.25 * j)))
        w = window(ey + 0.06, my + 0.01, cx - mw - 0.06, cx + mw + 0.06)
        ys, xs = y[w], x[w]
        for side in (-1.0, 1.0):
            fold_x = cx + side * (mw * 0.9 + 0.02 * (my - ys) / max(my - ey, 1e-3))
            fold = (np.abs(xs - fold_x) < 0.6 / size) & (ys > ey + 0.06) & (ys < my + 0.01)
            dark[w] = np.maximum(dark[w], fold * (0.8 * old))
    # Shading, light (overall gain and a left-right gradient), sensor noise.
    light = rng.uniform(0.8, 1.15) * (1.0 + rng.uniform(-0.15, 0.15) * (x0 - 0.5) * 2)
    img *= (light * (1.0 - 0.35 * dark * face))[..., None]
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(0.025)
    return to_uint8(img)


def face_arrays(
    n_images: int, *, n_identities: int = 40, size: int = 64, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A SYNTHETIC face set in memory: (images uint8 [N, S, S, 3], ages int64 [N]
    in 1..90, identities int64 [N]).

    Each identity is seen at ages around its own centre age (sd 12 years).
    """
    ids = np.empty(n_images, np.int64)
    ages = np.empty(n_images, np.int64)
    images = np.empty((n_images, size, size, 3), np.uint8)
    for i in range(n_images):
        rng = np.random.default_rng([seed, IMAGE_SALT, i])  # one stream per image: n=50 is a prefix of n=500
        ids[i] = rng.integers(n_identities)
        ages[i] = int(np.clip(round(rng.normal(_person(int(ids[i]), size).centre_age, 12.0)), *AGE_RANGE))
        images[i] = render_face(int(ids[i]), float(ages[i]), rng, size)
    return images, ages, ids


def make_face_dataset(
    out_dir: str | Path,
    n_images: int,
    *,
    n_identities: int = 40,
    size: int = 64,
    seed: int = 0,
    naming: str = "csv",
    split_by: str = "image",
    val_frac: float = 0.1,
    test_frac: float = 0.1,
) -> Path:
    """Write a SYNTHETIC face data set.

    naming "csv": `out_dir/images/id{k}_{i}.png` and `out_dir/labels.csv`
    (path,age,identity,split); returns the CSV path. split_by: "image" or
    "group" (whole identities per split).
    naming "utkface": `out_dir/{age}_{gender}_{race}_{date}.jpg`;
    naming "agedb": `out_dir/{i}_{Name}_{age}_{m|f}.jpg`. These write JPEGs and
    no labels.csv (the names are the labels) and return out_dir.
    """
    if naming not in NAMINGS:
        raise ValueError(f"naming must be one of {NAMINGS}, not {naming!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images, ages, ids = face_arrays(n_images, n_identities=n_identities, size=size, seed=seed)
    if naming != "csv":
        for i in range(n_images):
            p = _person(int(ids[i]), size)
            if naming == "utkface":
                name = f"{ages[i]}_{p.gender}_{p.race}_{20170101000000000 + i}.jpg"
            else:
                name = f"{i}_Person{ids[i]:03d}_{ages[i]}_{'mf'[p.gender]}.jpg"
            Image.fromarray(images[i]).save(out / name, quality=95)
        return out
    (out / "images").mkdir(exist_ok=True)
    splits = split_column(n_images, ids, split_by, seed, val_frac, test_frac)
    rows = []
    for i in range(n_images):
        rel = f"images/id{ids[i]:03d}_{i:05d}.png"
        Image.fromarray(images[i]).save(out / rel, compress_level=1)
        rows.append((rel, int(ages[i]), int(ids[i]), splits[i]))
    return write_labels(out / "labels.csv", ("path", "age", "identity", "split"), rows)
