"""The modality registry: name -> plug-in (`supemb.modalities.base.Modality`).

    from supemb import modalities
    m = modalities.get("eeg")                       # the EEG plug-in
    m, pipe = modalities.from_record(prep, "x.json")  # a recorded preprocessing
    m = modalities.detect(Path("data/"), "auto")    # what a dataset holds

A third modality is one module with a `Modality` subclass instance and one
line in `REGISTRY`. Plug-ins are imported on first use, so serving an EEG
bundle does not import the image code and vice versa.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from supemb.errors import UserError
from supemb.modalities.base import Modality
from supemb.preprocess.steps import Pipeline, record_modality

# name -> (module, attribute). Detection asks them in this order; the last one is the fallback.
REGISTRY: dict[str, tuple[str, str]] = {
    "eeg": ("supemb.modalities.eeg", "EEG"),
    "image": ("supemb.modalities.image", "IMAGE"),
}
FALLBACK = "image"  # what --format auto means when no plug-in recognises the data


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get(name: str, where: str = "modality") -> Modality:
    """The plug-in called `name`; a one-line UserError for an unknown one."""
    if name not in REGISTRY:
        raise UserError(f"{where}: modality {name!r} is not one this supemb knows ({', '.join(REGISTRY)})")
    module, attr = REGISTRY[name]
    return getattr(importlib.import_module(module), attr)


def from_record(record: Mapping[str, Any], where: str) -> tuple[Modality, Pipeline]:
    """A preprocessing record (preprocessing.json, a manifest's "preprocessing") -> (plug-in, pipeline)."""
    modality = get(record_modality(record, where), where)
    return modality, modality.pipeline_from_record(record, where)


def formats() -> tuple[str, ...]:
    """Every --format value: "auto" and each plug-in's own."""
    return ("auto", *(f for name in REGISTRY for f in get(name).formats))


def detect(data: Path, fmt: str = "auto") -> Modality:
    """The plug-in for a dataset path: the one whose formats include `fmt`, or, for
    "auto", the first that recognises the files (else the fallback)."""
    for name in REGISTRY:
        if fmt in get(name).formats:
            return get(name)
    if fmt != "auto":
        raise UserError(f"--format {fmt!r} is not one supemb reads ({', '.join(formats())})")
    for name in REGISTRY:
        if name != FALLBACK and get(name).looks_like(data):
            return get(name)
    return get(FALLBACK)
