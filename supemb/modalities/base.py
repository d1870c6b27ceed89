"""What a modality plug-in provides: the one place that knows images from EEG.

Everything else (the trainer, export, the bundle, `supemb eval`, the demo)
asks the plug-in of a run or a bundle (`supemb.modalities.get(name)`) and
never branches on the modality's name. A plug-in is a `Modality` instance:

- `ops`, `legacy_steps`, `default_steps`: its preprocessing as data
  (`supemb.preprocess.steps`); `augment_from` says where training's random
  views take over from the recorded steps;
- `spec`, `input_shape`, `decoder`: what a recorded pipeline means for the
  encoder's input, and the serving-time decoder `input -> rows [r, ...]`
  (one row per image; one per window of an EEG recording);
- `grouped`: several rows per input, aggregated per input (EEG recordings);
  evaluation then also reports per-input figures with the `rec_` prefix;
- `looks_like`, `formats`, `gallery`, `training_gallery`: how a dataset on
  disk is recognised and listed (without decoding it);
- `training_data`: the splits, augmentation and evaluation transform the
  trainer uses (imports torch lazily: serving never calls it);
- `recipe`, `augments`, `default_augment`: the default encoder, batch size,
  learning rate and augmentation presets;
- `thumbnails`: small previews for the demo's neighbour gallery (or None).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from supemb.errors import UserError
from supemb.preprocess.steps import Op, Pipeline, record_modality, record_steps


@dataclass
class Listing:
    """Labelled inputs of a dataset, not decoded: paths and one target each
    (a float, or a class name); `skipped` says which rows could not be used and why."""

    items: list[Any]
    targets: list[Any]
    skipped: list[str] = field(default_factory=list)


class Modality:
    """The plug-in interface (see the module docstring); subclasses fill it in."""

    name: str = ""
    title: str = ""  # in messages: "image", "EEG"
    noun: str = "input"  # how one input is called in messages and the demo ("photo", "recording")
    tasks: tuple[str, ...] = ("classification", "regression")
    grouped: bool = False  # several rows (windows) per input, aggregated per input
    formats: tuple[str, ...] = ()  # --format values that mean this modality
    augment_from: str = ""  # the op where training's augmentation replaces the recorded steps
    ops: Mapping[str, Op] = {}
    recipe: Mapping[str, Any] = {}  # encoder, encoder_kwargs, batch_size, lr; temperatures: {loss: tau}, optional
    default_augment: Mapping[str, str] = {}  # task -> augmentation preset
    contrastive_augment: Mapping[str, str] = {}  # task -> preset for contrastive losses, where it differs
    legacy_augment: str | None = None  # what runs from before the presets used (None: today's default)

    # ------------------------------------------------------- preprocessing

    def pipeline(self, steps: list[Mapping[str, Any]], where: str = "preprocessing") -> Pipeline:
        return Pipeline(self.name, steps, self.ops, where)

    def pipeline_from_record(self, record: Mapping[str, Any], where: str) -> Pipeline:
        """A run's preprocessing.json or a manifest's "preprocessing" -> the pipeline (both versions)."""
        steps = record_steps(record, where)
        if steps is None:
            flat = {k: v for k, v in record.items() if k not in ("modality", "version")}
            steps = self.legacy_steps(flat, where)
        return self.pipeline(steps, where)

    def legacy_steps(self, flat: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
        """A version-1 record (the flat spec fields) -> the equivalent steps."""
        raise NotImplementedError

    def spec(self, pipeline: Pipeline) -> Any:
        """The modality's spec object for this pipeline (image size and normalisation; EEG channels, rate, window)."""
        raise NotImplementedError

    def input_shape(self, pipeline: Pipeline) -> list[int]:
        """The encoder's input shape without the batch axis."""
        raise NotImplementedError

    def decoder(self, pipeline: Pipeline) -> Callable[[Any], np.ndarray]:
        """One serving input -> float32 rows `[r, *input_shape]` (raises UserError naming the input)."""
        raise NotImplementedError

    def encoder_kwargs(self, pipeline: Pipeline) -> dict[str, Any]:
        """What the encoder must be told about its input (EEG: channels, samples, rate)."""
        return {}

    # -------------------------------------------------------------- datasets

    def looks_like(self, data: Path) -> bool:
        """Whether a dataset path (with --format auto) holds this modality's files."""
        raise NotImplementedError

    def gallery(self, data: Path, target: str, task: str, fmt: str = "auto", on_error: str = "raise") -> Listing:
        """Every labelled input of a dataset, all splits (`supemb index`, `supemb eval`)."""
        raise NotImplementedError

    def training_gallery(self, cfg: Any) -> Listing:
        """The training split of a run's data, exactly as the trainer drew it (export's default gallery)."""
        raise NotImplementedError

    def training_data(self, cfg: Any, data: Path) -> Any:
        """The trainer's `supemb.train.data.PreparedData` (torch; training only)."""
        raise NotImplementedError

    def detecting(self, pipeline: Pipeline) -> Pipeline:
        """`pipeline` with a face-detection step (images only)."""
        raise UserError(f"face detection is for photos; {self.title} data has none")

    def thumbnails(self, items: list[Any], size: int) -> np.ndarray | None:
        """uint8 previews `[N, size, size, 3]` of gallery inputs, or None for a modality without them."""
        return None


def check_task(modality: Modality, task: str, data: Any) -> None:
    if task not in modality.tasks:
        raise UserError(f"{data}: {modality.name} data supports {' and '.join(modality.tasks)} targets "
                        f"in this version, not {task}")


def modality_of_record(record: Any, where: str) -> str:
    return record_modality(record, where)
