"""The image plug-in: photos and webcam frames, one encoder input per image.

Preprocessing steps (`supemb.preprocess.steps`):
    decode       a path (EXIF-rotated, size-guarded), PIL image or uint8 array -> RGB image
    resize_crop  shorter side to resize_size, centre crop image_size (bilinear) -> uint8 [S, S, 3]
    normalize    (x / 255 - mean) / std, channels first -> float32 [3, S, S]
Training decodes once per image (the steps before `resize_crop`) and replaces
the rest with random views (`supemb.preprocess.image_augment`).
Datasets: a CSV, class folders, UTKFace or AgeDB file names (`supemb.data`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from supemb.errors import UserError, raise_or_skip
from supemb.modalities.base import Listing, Modality, check_task
from supemb.preprocess.steps import Op, Pipeline, only_keys

# The normalisation of images trained from scratch here (a pretrained backbone would bring its own).
TRAIN_MEAN, TRAIN_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@lru_cache(maxsize=32)
def _spec(image_size: int, resize_size: int, mean: tuple[float, ...] = (0.5, 0.5, 0.5),
          std: tuple[float, ...] = (0.25, 0.25, 0.25)) -> Any:
    from supemb.preprocess.image import PreprocessSpec

    return PreprocessSpec(image_size=image_size, resize_size=resize_size, mean=mean, std=std)


# ------------------------------------------------------------------ ops


def _decode(x: Any, params: Mapping[str, Any]) -> Any:
    from supemb.preprocess.image import as_rgb_image

    image = as_rgb_image(x)
    if isinstance(x, (str, Path)):
        image.info["supemb_source"] = str(x)  # so a later step's error can name the file
    return image


def _face(x: Any, params: Mapping[str, Any]) -> Any:
    from supemb.preprocess.faces import face_step

    return face_step(x, dict(params))


def _check_face(params: Mapping[str, Any]) -> dict[str, Any]:
    from supemb.preprocess.faces import check_params

    return check_params(dict(params))


def _check_decode(params: Mapping[str, Any]) -> dict[str, Any]:
    only_keys(params, set(), "decode")
    return {}


def _resize_crop(x: Any, params: Mapping[str, Any]) -> np.ndarray:
    from supemb.preprocess.image import as_rgb_image, resize_crop

    return resize_crop(as_rgb_image(x), _spec(params["image_size"], params["resize_size"]))


def _check_resize_crop(params: Mapping[str, Any]) -> dict[str, Any]:
    from supemb.preprocess.image import RESAMPLE

    only_keys(params, {"image_size", "resize_size", "resample"}, "resize_crop")
    if params.get("resample", RESAMPLE) != RESAMPLE:
        raise UserError(f"preprocessing: resample {params['resample']!r} is not supported (only {RESAMPLE!r})")
    size = params.get("image_size")
    spec = _spec_checked(image_size=size, resize_size=params.get("resize_size", size))
    return {"image_size": spec.image_size, "resize_size": spec.resize_size, "resample": RESAMPLE}


def _normalize(x: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    from supemb.preprocess.image import normalize_uint8

    size = x.shape[0]
    return normalize_uint8(x, _spec(size, size, tuple(params["mean"]), tuple(params["std"])))


def _check_normalize(params: Mapping[str, Any]) -> dict[str, Any]:
    only_keys(params, {"mean", "std"}, "normalize")
    spec = _spec_checked(image_size=1, resize_size=1, mean=params.get("mean"), std=params.get("std"))
    return {"mean": list(spec.mean), "std": list(spec.std)}


def _spec_checked(**kwargs: Any) -> Any:
    from supemb.preprocess.image import PreprocessSpec

    return PreprocessSpec(**kwargs)


OPS: dict[str, Op] = {
    "decode": Op("decode", _decode, _check_decode, "path / PIL image / uint8 array -> RGB image"),
    "face": Op("face", _face, _check_face, "RGB image -> the square crop around its largest face (YuNet)"),
    "resize_crop": Op("resize_crop", _resize_crop, _check_resize_crop, "-> uint8 [S, S, 3]"),
    "normalize": Op("normalize", _normalize, _check_normalize, "-> float32 [3, S, S]"),
}


def steps_for(image_size: int, resize_size: int | None = None, mean: tuple[float, ...] = TRAIN_MEAN,
              std: tuple[float, ...] = TRAIN_STD, faces: bool = False) -> list[dict[str, Any]]:
    """The standard image steps: decode, (crop to the face,) resize + centre crop, normalise."""
    return [{"op": "decode"}, *([{"op": "face"}] if faces else []),
            {"op": "resize_crop", "image_size": image_size, "resize_size": resize_size or image_size},
            {"op": "normalize", "mean": list(mean), "std": list(std)}]


def with_face_step(pipeline: Pipeline, **params: Any) -> Pipeline:
    """`pipeline` with a face step before its resize/crop (no change if it has one)."""
    if pipeline.has("face"):
        return pipeline
    steps = [dict(s) for s in pipeline.steps]
    at = next(i for i, s in enumerate(steps) if s["op"] == "resize_crop")
    return Pipeline(pipeline.modality, [*steps[:at], {"op": "face", **params}, *steps[at:]], pipeline.ops,
                    pipeline.where)


# ---------------------------------------------------------------- plug-in


class ImageModality(Modality):
    name = "image"
    title = "image"
    noun = "photo"
    tasks = ("classification", "regression")
    grouped = False
    formats = ("csv", "folder", "utkface", "agedb")
    augment_from = "resize_crop"
    ops = OPS
    # Chosen on validation (docs/recipe.md, experiments/recipe.py).
    recipe = {"encoder": "small_cnn", "encoder_kwargs": {"convs": 2}, "batch_size": 128, "lr": 3e-3}
    # supemb.preprocess.image_augment.IMAGE_AUGMENTS; chosen on validation (docs/recipe.md).
    default_augment = {"classification": "light", "regression": "colour"}
    legacy_augment = "simclr"  # runs written before the presets

    def legacy_steps(self, flat: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
        spec = _spec_from_flat(flat, where)
        return steps_for(spec.image_size, spec.resize_size, spec.mean, spec.std)

    def spec(self, pipeline: Pipeline) -> Any:
        """`supemb.preprocess.image.PreprocessSpec` of the resize/crop and normalisation steps."""
        crop, norm = pipeline.params("resize_crop"), pipeline.params("normalize")
        return _spec(crop["image_size"], crop["resize_size"], tuple(norm["mean"]), tuple(norm["std"]))

    def input_shape(self, pipeline: Pipeline) -> list[int]:
        s = pipeline.params("resize_crop")["image_size"]
        return [3, s, s]

    def decoder(self, pipeline: Pipeline) -> Callable[[Any], Any]:
        """An input -> its one row [1, 3, S, S]; with a face step, `Decoded(row, {"face": box and score})`."""
        if not pipeline.has("face"):
            return lambda item: pipeline.run(item)[None]
        from supemb.embed.batches import Decoded
        from supemb.preprocess.faces import FACE_INFO

        before, after = pipeline.split_at("resize_crop")

        def decode(item: Any) -> Any:
            image = before.run(item)
            row = after.run(image)[None]
            face = image.info.get(FACE_INFO)
            return Decoded(row, {"face": face}) if face else row

        return decode

    def augments(self) -> tuple[dict[str, Any], Callable[[Any], tuple[str, Any]]]:
        """(the presets, value -> (preset name, spec)); torch (training only)."""
        from supemb.preprocess.image_augment import IMAGE_AUGMENTS, image_augment

        return IMAGE_AUGMENTS, image_augment

    # -------------------------------------------------------------- datasets

    def looks_like(self, data: Path) -> bool:
        from supemb.data.image_files import is_image_file

        if data.is_file():
            return data.suffix.lower() == ".csv" or is_image_file(data)
        return data.is_dir()

    def _table(self, data: Path, target: str, task: str, fmt: str, on_error: str, seed: int = 0,
               decodable: bool = False) -> Any:
        """The labelled table; `decodable` with on_error "skip" also leaves out the images that do
        not decode (each is decoded once here), so training never meets one mid-epoch."""
        from dataclasses import replace

        from supemb.data.image_layouts import load_image_table
        from supemb.data.image_table import verify_images

        table = load_image_table(data, target, format=fmt, task=task, seed=seed, on_error=on_error)
        if table.task != task:
            raise UserError(f"{data}: target {target!r} is {table.task} data, but the task is {task}")
        if decodable and on_error == "skip":
            good, bad = verify_images(table.records, on_error="skip")
            if not good:
                raise UserError(f"{data}: no image decodes ({len(bad)} skipped; first problem: {bad[0]})")
            table = replace(table, records=tuple(good), skipped=table.skipped + tuple(bad))
        return table

    def gallery(self, data: Path, target: str, task: str, fmt: str = "auto", on_error: str = "raise") -> Listing:
        table = self._table(data, target, task, fmt, on_error)
        return _listing(table.records, task, [str(s) for s in table.skipped])

    def training_gallery(self, cfg: Any) -> Listing:
        table = self._table(Path(cfg.data), cfg.target, cfg.task, cfg.format,
                            raise_or_skip(cfg.on_error), seed=cfg.seed, decodable=True)  # what training used
        return _listing(table.split("train"), cfg.task)

    def training_data(self, cfg: Any, data: Path) -> Any:
        import torch

        from supemb.preprocess.image_augment import ContrastiveAugment
        from supemb.train.data import PreparedData, Split, resolve_augment, splits_of

        check_task(self, cfg.task, data)
        # before reading data: fail fast
        aug, aug_record = resolve_augment(cfg.augment, self, cfg.task, cfg.contrastive)
        table = self._table(data, cfg.target, cfg.task, cfg.format,
                            raise_or_skip(cfg.on_error), seed=cfg.seed, decodable=True)
        pipe = self.training_pipeline(cfg)
        before, after = pipe.split_at(self.augment_from)  # decode once; augmentation replaces the rest
        contrastive = ContrastiveAugment(self.spec(pipe), aug)
        load, no_face = _loader(before, [str(r.path) for r in table.records], cfg.on_error)

        def split_of(name: str) -> Split:
            records = [r for r in table.split(name) if str(r.path) not in no_face]
            paths = [str(r.path) for r in records]
            return Split(load=lambda i: load(paths[i]), targets=table.targets(records),
                         groups=np.arange(len(records)), names=paths)

        summary = {**table.summary(), "augment": aug_record, **({"no_face": sorted(no_face)} if no_face else {})}
        small = None if cfg.faces else upsampling_notice([str(r.path) for r in table.split("train")], cfg.image_size)
        return PreparedData(
            modality=self.name, task=table.task, target_name=table.target, classes=table.classes,
            splits=splits_of(split_of, data), preprocessing=pipe.to_record(),
            augment=lambda img, g: contrastive(img, generator=g),
            eval_transform=lambda img: torch.from_numpy(after.run(img)),
            encoder_kwargs={}, summary=summary, augment_spec=aug_record, notices=[small] if small else [])

    def training_pipeline(self, cfg: Any) -> Pipeline:
        """decode, (face,) resize_crop, normalize: `--faces` adds the face step; pretrained weights
        bring their own normalisation."""
        mean, std = TRAIN_MEAN, TRAIN_STD
        if getattr(cfg, "pretrained", None):
            from supemb.encoders.pretrained import normalisation

            mean, std = normalisation(cfg.encoder, cfg.pretrained)
        steps = steps_for(cfg.image_size, mean=mean, std=std, faces=cfg.faces)
        return self.pipeline(steps, "training preprocessing")

    def detecting(self, pipeline: Pipeline) -> Pipeline:
        """`pipeline` with a face step (default settings) before its resize/crop."""
        return with_face_step(pipeline)

    def thumbnails(self, items: list[Any], size: int) -> np.ndarray:
        """uint8 [N, size, size, 3] centre-cropped thumbnails."""
        pipe = self.pipeline(steps_for(size)[:2], "thumbnails")
        out = np.empty((len(items), size, size, 3), np.uint8)
        for i, item in enumerate(items):
            out[i] = pipe.run(item)
        return out


def upsampling_notice(paths: list[str], image_size: int, sample: int = 16) -> str | None:
    """One line when the first `sample` training images are all smaller than `image_size`
    (read from their headers): training then upsamples every image, which costs time and
    adds no detail. None when any is as large, or cannot be read here (the loader will say)."""
    from PIL import Image

    sizes = []
    for path in paths[:sample]:
        try:
            with Image.open(path) as im:
                sizes.append(im.size)
        except (OSError, ValueError):
            return None
    if not sizes or max(max(s) for s in sizes) >= image_size:
        return None
    w, h = max(s[0] for s in sizes), max(s[1] for s in sizes)
    return (f"note: the training images are at most {w}x{h} px and --image-size {image_size} upsamples them "
            f"({(image_size / max(w, h)) ** 2:.0f}x the pixels to compute on, no more detail); "
            f"--image-size {max(w, h)} trains at their own size")


def _loader(before: Pipeline, paths: list[str], on_error: str) -> tuple[Callable[[str], Any], set[str]]:
    """(path -> the decoded training image, the paths left out for want of a face). With a face
    step the faces of all photos are found once here (`detect_all`), and loading crops by the
    cached box, so no epoch runs the detector again; without one, loading runs `before`."""
    if not before.has("face"):
        return before.run, set()
    from supemb.preprocess.faces import crop, detect_all

    params = before.params("face")
    decode = before.without("face")
    faces = detect_all(paths, params, decode.run)
    missing = {p for p, face in faces.items() if face is None}
    if missing and on_error != "skip" and params["when_none"] == "error":
        first = sorted(missing)[0]
        raise UserError(f"no face found in {first} ({len(missing)} of {len(paths)} photos have none); "
                        "--on-error skip leaves them out")
    if params["when_none"] == "whole":
        missing = set()

    def load(path: str) -> Any:
        image, face = decode.run(path), faces[path]
        return image if face is None else crop(image, face, params["margin"])

    return load, missing


def _listing(records: Any, task: str, skipped: list[str] | None = None) -> Listing:
    targets = [float(r.target) if task == "regression" else r.target for r in records]
    return Listing([str(r.path) for r in records], targets, skipped or [])


def _spec_from_flat(flat: Mapping[str, Any], where: str) -> Any:
    from supemb.preprocess.image import PreprocessSpec

    try:
        return PreprocessSpec.from_dict(dict(flat))
    except UserError as err:
        raise UserError(f"{where}: {err}") from None


IMAGE = ImageModality()
