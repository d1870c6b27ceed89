"""SYNTHETIC webcam frames -> outdoor temperature, for tests, demos and
benchmarks (no download).

Generated deterministically for a seed with numpy; cartoons, not
photographs, saying nothing about real webcams. They mirror the setting of
the SupCR paper's Figure 1: the nuisance (which camera) dominates the pixels,
while the target (temperature, -20..40 degC) shows only through weak, partly
confounded cues. Each camera is a fixed scene (horizon, buildings, road,
trees, ground type, colour cast, exposure) with its own climate. Temperature
shows through snow cover on the ground and roofs (below ~1 degC), grass
colour (dead / green / dry), leaf colour (bare / autumn / green), sky
blueness (confounded by random cloud cover) and heat haze near the horizon
(above ~20 degC); lighting, clouds, colour balance and sensor noise vary per
frame independently of temperature.

`render_webcam` draws one frame; `webcam_arrays` a whole set in memory;
`make_webcam_dataset` writes PNGs and a labels.csv that `load_image_table`
reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from supemb.data.synthetic_drawing import (
    IMAGE_SALT,
    grid,
    paint,
    ranks,
    smooth_noise,
    smoothstep,
    soft_ellipse,
    split_column,
    to_uint8,
    write_labels,
)

TEMPERATURE_RANGE: tuple[float, float] = (-20.0, 40.0)

# Salt keeps the scene streams apart from the per-image streams.
_CAMERA_SALT = 0x5CE7E


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
    y, x = grid(size)
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
    tex = 0.85 + 0.3 * smooth_noise(rng, size, 12) * smooth_noise(rng, size, 5)
    depth = (0.8 + 0.35 * np.clip(y - horizon, 0, 1))[..., None]
    base = (ground * tex[..., None] * depth).astype(np.float32) * below[..., None]
    grass = (below * grass_amount * (0.6 + 0.4 * smooth_noise(rng, size, 6))).astype(np.float32)
    snowable = below.copy()
    occluded = np.zeros_like(sky)  # pixels covered by buildings / trees

    if rng.random() < 0.6:  # a road towards a vanishing point on the horizon
        xc_bottom, xc_far = rng.uniform(0.2, 0.8), rng.uniform(0.35, 0.65)
        h_mid = float(np.mean(horizon))
        frac = np.clip((y - h_mid) / max(1.0 - h_mid, 1e-3), 0, 1)
        centre = xc_far + (xc_bottom - xc_far) * frac
        half = 0.01 + rng.uniform(0.12, 0.3) * frac
        road = np.clip((half - np.abs(x - centre)) * size + 0.5, 0, 1) * below
        paint(base, np.array([0.27, 0.27, 0.29]) * rng.uniform(0.8, 1.2), road)
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
        paint(base, colour_map, body)
        roof = body * np.clip((h_top + 2.0 / size - y) * size, 0, 1)
        occluded = np.maximum(occluded, body)
        snowable = np.maximum(snowable * (1 - body), roof)
        grass *= 1 - body

    leaves = np.zeros_like(sky)
    for _ in range(int(rng.integers(0, 5))):  # trees: trunk and crown
        cx, r = rng.uniform(0.05, 0.95), rng.uniform(0.05, 0.12)
        foot = float(np.interp(cx, x[0], horizon[0])) + rng.uniform(0.02, 0.15)
        trunk = np.clip((0.012 - np.abs(x - cx)) * size + 0.5, 0, 1) * ((y > foot - 2.2 * r) & (y < foot))
        paint(base, np.array([0.3, 0.22, 0.15]), trunk)
        crown = soft_ellipse(y, x, foot - 2.2 * r, cx, r * 1.1, r, size)
        leaves = np.maximum(leaves, crown)
        occluded = np.maximum(occluded, np.maximum(trunk, crown))
        grass *= 1 - crown
    sky = sky * (1 - occluded)
    base *= (1 - sky)[..., None]

    snow_weight = np.maximum(snowable, 0.5 * leaves).astype(np.float32)
    snow_rank = ranks(smooth_noise(rng, size, 8) + 0.3 * rng.random((size, size)), snow_weight)
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
    clarity = (0.3 + 0.6 * smoothstep(-20, 40, t)) * (1 - 0.85 * clouds)  # warm -> bluer, clouds -> greyer
    img = s.base + s.sky[..., None] * (s.sky_grey + clarity * (s.sky_blue - s.sky_grey))

    green, dry = smoothstep(-2, 12, t_season) * (1 - smoothstep(26, 38, t_season)), smoothstep(26, 38, t_season)
    grass = _DEAD_GRASS * (1 - green - dry) + _GREEN_GRASS * green + _DRY_GRASS * dry
    paint(img, grass * s.grass_tex[..., None], s.grass)
    leafy, autumn = smoothstep(8, 16, t_season), smoothstep(0, 6, t_season)
    leaf = _BARE_TREE * (1 - autumn) + (_AUTUMN_TREE * (1 - leafy) + _GREEN_TREE * leafy) * autumn
    paint(img, leaf * s.grass_tex[..., None], s.leaves)

    cover = min(max((1.5 - t + rng.normal(0, 3.0)) / 14.0, 0.0), 1.0) ** 0.7 * rng.uniform(0.3, 1.0)
    if cover > 0:
        snow = (s.snow_rank < cover) * s.snow_weight * rng.uniform(0.65, 0.9)
        paint(img, _SNOW, snow)
    haze = 0.45 * smoothstep(20, 40, t) * rng.uniform(0.5, 1.0)
    if haze > 0:
        paint(img, _HAZE, haze * s.near_horizon)

    light = rng.uniform(0.75, 1.15) * (1 - 0.25 * clouds)
    balance = 1 + rng.normal(0, 0.04, 3)
    img *= (s.cast * s.exposure * light * balance).astype(np.float32)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(0.02)
    return to_uint8(img)


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
        rng = np.random.default_rng([seed, IMAGE_SALT, i])  # one stream per image: n=50 is a prefix of n=500
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
    splits = split_column(n_images, cameras, split_by, seed, val_frac, test_frac)
    rows = []
    for i in range(n_images):
        rel = f"images/cam{cameras[i]:02d}_{i:05d}.png"
        Image.fromarray(images[i]).save(out / rel, compress_level=1)  # fast; the pixels are noisy anyway
        rows.append((rel, f"{float(temps[i]):.1f}", int(cameras[i]), splits[i]))
    return write_labels(out / "labels.csv", ("path", "temperature", "camera", "split"), rows)
