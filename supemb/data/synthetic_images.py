"""SYNTHETIC image data sets for tests, demos and benchmarks (no download).

Everything here is generated, deterministically for a seed, with numpy; the
pictures are cartoons, not photographs, and say nothing about real webcams or
real faces. They mirror the setting of the SupCR paper's Figure 1: the
nuisance (which camera, which person) dominates the pixels, while the target
(temperature, age) shows only through weak, partly confounded cues. A
regressor trained with L1 tends to group embeddings by the nuisance; a
contrastive regression loss should order them by the target.

- Webcam frames -> outdoor temperature (-20..40 degC). Each camera is a fixed
  scene (horizon, buildings, road, trees, ground type, colour cast, exposure)
  with its own climate. Temperature shows through snow cover on the ground and
  roofs (below ~1 degC), grass colour (dead / green / dry), leaf colour (bare /
  autumn / green), sky blueness (confounded by random cloud cover) and heat
  haze near the horizon (above ~20 degC); lighting, clouds, colour balance and
  sensor noise vary per frame independently of temperature.
- Faces -> age (1..90 years). Each identity has its own background, skin
  tone, face shape, hair colour and style, eyes and shirt, and is seen at
  several ages around an identity-specific centre. Age shows through face
  proportions (children: rounder face, bigger and lower eyes, smaller nose and
  mouth), wrinkles (forehead, eye corners, nose-to-mouth lines, from ~30),
  grey hair (from ~35) and slightly paler skin; pose, lighting and noise vary
  per image.

`render_webcam` / `render_face` draw one image in memory; `webcam_arrays` /
`face_arrays` draw a whole set; `make_webcam_dataset` / `make_face_dataset`
write PNG files and a labels.csv in the layout `load_image_table` reads (or
UTKFace / AgeDB file names).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from supemb.data.images import split_labels

TEMPERATURE_RANGE: tuple[float, float] = (-20.0, 40.0)
AGE_RANGE: tuple[int, int] = (1, 90)
SPLIT_BY: tuple[str, ...] = ("image", "group")
NAMINGS: tuple[str, ...] = ("csv", "utkface", "agedb")

# Salts keep the scene/identity streams apart from the per-image streams.
_CAMERA_SALT = 0x5CE7E
_IDENTITY_SALT = 0xFACE5
_IMAGE_SALT = 0x1A6E


# ------------------------------------------------------------------ helpers


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1]: (Y, X), each float32 [size, size]."""
    c = ((np.arange(size, dtype=np.float32) + 0.5) / size).astype(np.float32)
    return np.meshgrid(c, c, indexing="ij")


@lru_cache(maxsize=8)
def _cached_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = _grid(size)
    y.flags.writeable = x.flags.writeable = False
    return y, x


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field in [0, 1]: cells x cells uniform values, bilinearly interpolated. [size, size]."""
    coarse = rng.random((cells + 1, cells + 1)).astype(np.float32)
    t = np.linspace(0, cells, size, dtype=np.float32)
    i = np.minimum(t.astype(int), cells - 1)
    f = t - i
    rows = coarse[i] * (1 - f)[:, None] + coarse[i + 1] * f[:, None]  # [size, cells+1]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _ranks(field: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Uniform ranks in [0, 1) of `field` over the pixels where mask > 0 (2 elsewhere),
    so "rank < p" covers exactly a fraction p of the masked pixels."""
    out = np.full(field.shape, 2.0, np.float32)
    idx = np.flatnonzero(mask.ravel() > 0)
    if idx.size:
        order = np.argsort(field.ravel()[idx], kind="stable")
        r = np.empty(idx.size, np.float32)
        r[order] = np.arange(idx.size, dtype=np.float32) / idx.size
        out.ravel()[idx] = r
    return out


def _smoothstep(lo: float, hi: float, v: float) -> float:
    t = min(max((v - lo) / (hi - lo), 0.0), 1.0)
    return t * t * (3 - 2 * t)


def _paint(img: np.ndarray, colour: np.ndarray, mask: np.ndarray) -> None:
    """In place: img = img * (1 - mask) + colour * mask. img float32 [H, W, 3],
    mask [H, W], colour [3] or [H, W, 3]."""
    img += mask[..., None] * (colour - img)


def _soft_ellipse(y: np.ndarray, x: np.ndarray, cy: float, cx: float, ry: float, rx: float, size: int) -> np.ndarray:
    """An antialiased filled ellipse mask in [0, 1] (edge about one pixel wide). [H, W]."""
    r = np.sqrt(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2)
    return np.clip((1.0 - r) * (min(rx, ry) * size) + 0.5, 0.0, 1.0)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _split_column(n: int, groups: np.ndarray, split_by: str, seed: int, val_frac: float, test_frac: float) -> list[str]:
    """Per-image splits, or whole groups (cameras, identities) per split."""
    if split_by not in SPLIT_BY:
        raise ValueError(f"split_by must be one of {SPLIT_BY}, not {split_by!r}")
    if split_by == "image":
        return split_labels(n, val_frac=val_frac, test_frac=test_frac, seed=seed)
    uniq = np.unique(groups)
    per_group = dict(zip(uniq.tolist(), split_labels(len(uniq), val_frac=val_frac, test_frac=test_frac, seed=seed)))
    return [per_group[int(g)] for g in groups]


# ------------------------------------------------------------------- webcam


@dataclass(frozen=True)
class _Scene:
    """One camera's fixed view. Arrays are [S, S, 3] colours or [S, S] weights."""

    base: np.ndarray  # everything but the sky, before weather
    sky: np.ndarray  # 1 where the sky shows
    sky_grey: np.ndarray  # overcast / pale sky colours
    sky_blue: np.ndarray  # clear sky colours
    grass: np.ndarray  # vegetation weight on the ground
    grass_tex: np.ndarray  # brightness texture of the vegetation
    leaves: np.ndarray  # tree crowns
    snow_rank: np.ndarray  # snow covers pixels with rank < cover
    snow_weight: np.ndarray  # how white snow gets there (roads less)
    near_horizon: np.ndarray  # haze weight
    cast: np.ndarray  # [3] colour balance
    exposure: float
    climate: tuple[float, float]  # temperature mean, sd (degC)


@lru_cache(maxsize=256)
def _scene(camera_id: int, size: int) -> _Scene:
    rng = np.random.default_rng([_CAMERA_SALT, camera_id])
    y, x = _grid(size)
    horizon = rng.uniform(0.3, 0.6) + rng.uniform(-0.15, 0.15) * (x - 0.5)
    below = np.clip((y - horizon) * size + 0.5, 0.0, 1.0)  # ground weight, antialiased
    sky = 1.0 - below

    # Sky colour gradients, brighter towards the horizon.
    t = np.clip(y / np.maximum(horizon, 1e-3), 0, 1)[..., None]
    blue_top = np.array([0.18, 0.38, 0.82]) * rng.uniform(0.85, 1.1) + rng.normal(0, 0.04, 3)
    grey_top = np.array([0.58, 0.6, 0.64]) * rng.uniform(0.8, 1.1)
    sky_blue = blue_top * (1 - t) + np.array([0.68, 0.8, 0.95]) * t
    sky_grey = grey_top * (1 - t) + np.array([0.8, 0.8, 0.82]) * t

    # Ground: a type (grass field, dirt, pavement, sand) with texture and depth shading.
    kinds = [((0.3, 0.42, 0.22), 1.0), ((0.45, 0.38, 0.28), 0.35), ((0.36, 0.36, 0.38), 0.0), ((0.7, 0.62, 0.46), 0.1)]
    colour, grass_amount = kinds[int(rng.integers(len(kinds)))]
    ground = np.array(colour) + rng.normal(0, 0.04, 3)
    tex = 0.85 + 0.3 * _smooth_noise(rng, size, 12) * _smooth_noise(rng, size, 5)
    depth = (0.8 + 0.35 * np.clip(y - horizon, 0, 1))[..., None]
    base = (ground * tex[..., None] * depth).astype(np.float32) * below[..., None]
    grass = (below * grass_amount * (0.6 + 0.4 * _smooth_noise(rng, size, 6))).astype(np.float32)
    snowable = below.copy()
    occluded = np.zeros_like(sky)  # pixels covered by buildings / trees

    if rng.random() < 0.6:  # a road towards a vanishing point on the horizon
        xc_bottom, xc_far = rng.uniform(0.2, 0.8), rng.uniform(0.35, 0.65)
        h_mid = float(np.mean(horizon))
        frac = np.clip((y - h_mid) / max(1.0 - h_mid, 1e-3), 0, 1)
        centre = xc_far + (xc_bottom - xc_far) * frac
        half = 0.01 + rng.uniform(0.12, 0.3) * frac
        road = np.clip((half - np.abs(x - centre)) * size + 0.5, 0, 1) * below
        _paint(base, np.array([0.27, 0.27, 0.29]) * rng.uniform(0.8, 1.2), road)
        grass *= 1 - road
        snowable *= 1 - 0.6 * road  # traffic keeps roads clearer

    for _ in range(int(rng.integers(0, 5))):  # buildings standing on the horizon
        x0, w = rng.uniform(-0.1, 0.9), rng.uniform(0.08, 0.3)
        h_top = float(np.mean(horizon)) - rng.uniform(0.08, 0.35)
        h_bot = float(np.mean(horizon)) + rng.uniform(0.0, 0.06)
        body = (
            np.clip((x - x0) * size + 0.5, 0, 1) * np.clip((x0 + w - x) * size + 0.5, 0, 1)
            * np.clip((y - h_top) * size + 0.5, 0, 1) * np.clip((h_bot - y) * size + 0.5, 0, 1)
        )  # fmt: skip
        wall = np.clip(rng.uniform(0.25, 0.8) * np.ones(3) + rng.normal(0, 0.08, 3), 0, 1)
        windows = (np.sin(x * size * 1.4 + rng.uniform(0, 6)) > 0.3) & (np.sin(y * size * 1.1) > 0.2)
        colour_map = wall * (1 - 0.45 * windows[..., None].astype(np.float32))
        _paint(base, colour_map, body)
        roof = body * np.clip((h_top + 2.0 / size - y) * size, 0, 1)
        occluded = np.maximum(occluded, body)
        snowable = np.maximum(snowable * (1 - body), roof)
        grass *= 1 - body

    leaves = np.zeros_like(sky)
    for _ in range(int(rng.integers(0, 5))):  # trees: trunk and crown
        cx, r = rng.uniform(0.05, 0.95), rng.uniform(0.05, 0.12)
        foot = float(np.interp(cx, x[0], horizon[0])) + rng.uniform(0.02, 0.15)
        trunk = np.clip((0.012 - np.abs(x - cx)) * size + 0.5, 0, 1) * ((y > foot - 2.2 * r) & (y < foot))
        _paint(base, np.array([0.3, 0.22, 0.15]), trunk)
        crown = _soft_ellipse(y, x, foot - 2.2 * r, cx, r * 1.1, r, size)
        leaves = np.maximum(leaves, crown)
        occluded = np.maximum(occluded, np.maximum(trunk, crown))
        grass *= 1 - crown
    sky = sky * (1 - occluded)
    base *= (1 - sky)[..., None]

    snow_weight = np.maximum(snowable, 0.5 * leaves).astype(np.float32)
    snow_rank = _ranks(_smooth_noise(rng, size, 8) + 0.3 * rng.random((size, size)), snow_weight)
    near_horizon = np.exp(-np.abs(y - horizon) / 0.15).astype(np.float32)
    cast = rng.uniform(0.75, 1.25, 3)
    cast /= cast.mean()
    scene = _Scene(
        base=base.astype(np.float32), sky=sky.astype(np.float32),
        sky_grey=sky_grey.astype(np.float32), sky_blue=sky_blue.astype(np.float32),
        grass=grass.astype(np.float32), grass_tex=tex.astype(np.float32), leaves=leaves.astype(np.float32),
        snow_rank=snow_rank, snow_weight=snow_weight, near_horizon=near_horizon,
        cast=cast.astype(np.float32), exposure=float(rng.uniform(0.65, 1.15)),
        climate=(float(rng.uniform(-3, 22)), float(rng.uniform(6, 11))),
    )  # fmt: skip
    for a in (scene.base, scene.sky, scene.sky_grey, scene.sky_blue, scene.grass, scene.leaves, scene.snow_rank):
        a.flags.writeable = False  # shared through the cache
    return scene


_DEAD_GRASS = np.array([0.45, 0.4, 0.3], np.float32)
_GREEN_GRASS = np.array([0.24, 0.46, 0.16], np.float32)
_DRY_GRASS = np.array([0.58, 0.52, 0.3], np.float32)
_BARE_TREE = np.array([0.36, 0.31, 0.27], np.float32)
_AUTUMN_TREE = np.array([0.6, 0.38, 0.14], np.float32)
_GREEN_TREE = np.array([0.16, 0.38, 0.13], np.float32)
_SNOW = np.array([0.93, 0.95, 0.98], np.float32)
_HAZE = np.array([0.86, 0.85, 0.8], np.float32)


def render_webcam(camera_id: int, temperature: float, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One SYNTHETIC webcam frame: uint8 [size, size, 3].

    The scene is fixed by camera_id; temperature (degC) sets snow, grass,
    leaves, sky and haze; rng draws the frame's weather, light and noise.
    """
    s = _scene(int(camera_id), int(size))
    # The scene shows the logged temperature only loosely: the air where the
    # camera looks differs from the sensor's, vegetation lags the season, and
    # snow depends on how long ago it fell.
    t = float(temperature) + rng.normal(0, 2.0)
    t_season = float(temperature) + rng.normal(0, 6.0)
    clouds = rng.random() ** 0.7
    clarity = (0.3 + 0.6 * _smoothstep(-20, 40, t)) * (1 - 0.85 * clouds)  # warm -> bluer, clouds -> greyer
    img = s.base + s.sky[..., None] * (s.sky_grey + clarity * (s.sky_blue - s.sky_grey))

    green, dry = _smoothstep(-2, 12, t_season) * (1 - _smoothstep(26, 38, t_season)), _smoothstep(26, 38, t_season)
    grass = _DEAD_GRASS * (1 - green - dry) + _GREEN_GRASS * green + _DRY_GRASS * dry
    _paint(img, grass * s.grass_tex[..., None], s.grass)
    leafy, autumn = _smoothstep(8, 16, t_season), _smoothstep(0, 6, t_season)
    leaf = _BARE_TREE * (1 - autumn) + (_AUTUMN_TREE * (1 - leafy) + _GREEN_TREE * leafy) * autumn
    _paint(img, leaf * s.grass_tex[..., None], s.leaves)

    cover = min(max((1.5 - t + rng.normal(0, 3.0)) / 14.0, 0.0), 1.0) ** 0.7 * rng.uniform(0.3, 1.0)
    if cover > 0:
        snow = (s.snow_rank < cover) * s.snow_weight * rng.uniform(0.65, 0.9)
        _paint(img, _SNOW, snow)
    haze = 0.45 * _smoothstep(20, 40, t) * rng.uniform(0.5, 1.0)
    if haze > 0:
        _paint(img, _HAZE, haze * s.near_horizon)

    light = rng.uniform(0.75, 1.15) * (1 - 0.25 * clouds)
    balance = 1 + rng.normal(0, 0.04, 3)
    img *= (s.cast * s.exposure * light * balance).astype(np.float32)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(0.02)
    return _to_uint8(img)


def webcam_arrays(
    n_images: int, *, n_cameras: int = 8, size: int = 64, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A SYNTHETIC webcam set in memory: (images uint8 [N, S, S, 3],
    temperatures float32 [N] in degC (0.1 resolution), cameras int64 [N]).

    Cameras are drawn uniformly; each camera's temperatures follow its own
    climate (mean, sd), clipped to TEMPERATURE_RANGE.
    """
    cameras = np.empty(n_images, np.int64)
    temps = np.empty(n_images, np.float32)
    images = np.empty((n_images, size, size, 3), np.uint8)
    for i in range(n_images):
        rng = np.random.default_rng([seed, _IMAGE_SALT, i])  # one stream per image: n=50 is a prefix of n=500
        cameras[i] = rng.integers(n_cameras)
        mean, sd = _scene(int(cameras[i]), size).climate
        temps[i] = round(float(np.clip(rng.normal(mean, sd), *TEMPERATURE_RANGE)), 1)
        images[i] = render_webcam(int(cameras[i]), float(temps[i]), rng, size)
    return images, temps, cameras


def make_webcam_dataset(
    out_dir: str | Path,
    n_images: int,
    *,
    n_cameras: int = 8,
    size: int = 64,
    seed: int = 0,
    split_by: str = "image",
    val_frac: float = 0.1,
    test_frac: float = 0.1,
) -> Path:
    """Write a SYNTHETIC webcam data set: `out_dir/images/cam{c}_{i}.png` and
    `out_dir/labels.csv` (path,temperature,camera,split). Returns the CSV path.

    split_by: "image" (seeded per image) or "group" (whole cameras per split).
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, temps, cameras = webcam_arrays(n_images, n_cameras=n_cameras, size=size, seed=seed)
    splits = _split_column(n_images, cameras, split_by, seed, val_frac, test_frac)
    rows = []
    for i in range(n_images):
        rel = f"images/cam{cameras[i]:02d}_{i:05d}.png"
        Image.fromarray(images[i]).save(out / rel, compress_level=1)  # fast; the pixels are noisy anyway
        rows.append((rel, f"{float(temps[i]):.1f}", int(cameras[i]), splits[i]))
    return _write_labels(out / "labels.csv", ("path", "temperature", "camera", "split"), rows)


def _write_labels(path: Path, header: tuple[str, ...], rows: list[tuple]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


# -------------------------------------------------------------------- faces


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
        grey_rank=_ranks(_smooth_noise(rng, size, 10) + 0.5 * rng.random((size, size)), np.ones((size, size))),
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
    y0, x0 = _cached_grid(size)
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
    _paint(img, p.shirt, _soft_ellipse(y, x, cy + ry + 0.28, cx, 0.2, 0.42, size))  # shoulders
    _paint(img, p.skin * 0.9, np.clip((0.09 - np.abs(x - cx)) * size, 0, 1) * (y > cy))  # neck

    # Hair behind the face: a cap, and side hair for longer styles; grey
    # hairs appear in a fixed per-person order as age goes up.
    hair_col = p.hair + (p.grey_rank < grey)[..., None] * (0.9 * (_GREY_HAIR - p.hair))
    top = p.hair_top * (1 - 0.4 * old * (1 - p.gender))  # thinning, mostly in men
    cap = _soft_ellipse(y, x, cy - 0.04, cx, ry + top, rx + top * 0.7, size)
    cap *= np.clip((cy - 0.04 + p.hair_side - y) * size, 0, 1)
    _paint(img, hair_col, cap)

    # Face: an ellipse narrowing towards the jaw (less in children); the
    # lower face lengthens and the jaw widens through adult life.
    ry_low = ry * (1 + 0.1 * adult)
    below = np.clip((y - cy) / ry_low, 0, 1)
    rx_jaw = rx * (1 - p.jaw * (1 - 0.7 * child) * (1 - 0.4 * adult) * below**2)
    ry_map = np.where(y > cy, ry_low, ry)
    face = np.clip((1.0 - np.sqrt(((y - cy) / ry_map) ** 2 + ((x - cx) / rx_jaw) ** 2)) * rx * size + 0.5, 0, 1)
    fade = 0.15 * adult  # paler, less saturated skin with age
    skin = p.skin * (1 - fade) + fade * (p.skin.mean() + 0.05)
    _paint(img, skin, face)
    fringe = face * np.clip((cy - ry * (0.75 - p.fringe) - y) * size, 0, 1)
    _paint(img, hair_col, fringe)

    # Features: eye height and size, nose and mouth scale with childhood.
    ey = cy - ry * 0.12 * (1 - child)
    er = p.eye_r * (1 + 0.45 * child)
    dark = np.zeros_like(face)  # wrinkles and folds, applied as shading
    for side in (-1.0, 1.0):
        ex = cx + side * rx * p.eye_dx
        w = window(ey - er * 1.6 - 0.05, ey + er + 0.04, ex - er * 2.8, ex + er * 2.8)
        ys, xs, im = y[w], x[w], img[w]
        open_ = 1.0 - 0.35 * adult  # eyelids droop with age
        _paint(im, _EYE_WHITE, _soft_ellipse(ys, xs, ey, ex, er * 0.7 * open_, er * 1.3, size))
        _paint(im, p.iris, _soft_ellipse(ys, xs, ey, ex, er * 0.6 * open_, er * 0.6, size))
        _paint(im, hair_col[w] * 0.8, _soft_ellipse(ys, xs, ey - er * 1.6 - 0.02, ex, 0.012, er * 1.5, size))
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
    _paint(img[w], p.lips, _soft_ellipse(ys + smile * ((xs - cx) / mw) ** 2, xs, my, cx, 0.014, mw, size))
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
    return _to_uint8(img)


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
        rng = np.random.default_rng([seed, _IMAGE_SALT, i])  # one stream per image: n=50 is a prefix of n=500
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
    splits = _split_column(n_images, ids, split_by, seed, val_frac, test_frac)
    rows = []
    for i in range(n_images):
        rel = f"images/id{ids[i]:03d}_{i:05d}.png"
        Image.fromarray(images[i]).save(out / rel, compress_level=1)
        rows.append((rel, int(ages[i]), int(ids[i]), splits[i]))
    return _write_labels(out / "labels.csv", ("path", "age", "identity", "split"), rows)
