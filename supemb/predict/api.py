"""The one-call library API: `supemb.predict_age`, `predict_temperature`, `predict_brain_age`.

With no `bundle`, each uses the default bundle shipped inside the package
(`supemb/bundles/<name>/`): small demonstration models trained by
`export/build_defaults.py` on the project's synthetic data. They show the
pipeline working end to end; they are not models of real faces, webcams or
brains, and the first call of each warns so once. Train and export your own
(README, "Serve your own model") and pass `bundle=`.

A path, a PIL image or an HxWx3 uint8 array gives a float; a list gives a
list. An input unlike the bundle's gallery (`Prediction.unfamiliar`: its
nearest-neighbour similarity is below the manifest's familiarity threshold)
still gets its value, with an `UnfamiliarInputWarning` naming it. Loaded bundles are cached per (path, device) and safe to share
between threads.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from pathlib import Path
from typing import Any

from supemb.errors import UserError
from supemb.predict.bundle import Bundle, Prediction, _as_list, load_bundle

DEFAULTS_DIR = Path(__file__).resolve().parents[1] / "bundles"
DEFAULT_BUNDLES = {"age": "age", "temperature": "temperature", "brain_age": "brain_age"}
BUILD_COMMAND = "python export/build_defaults.py"

_cache: dict[tuple[str, str], Bundle] = {}
_warned: set[str] = set()
_lock = threading.Lock()


class DemoModelWarning(UserWarning):
    """A default bundle (trained on synthetic data) is in use."""


class UnfamiliarInputWarning(UserWarning):
    """An input is unlike the bundle's gallery: its value is an extrapolation (`Prediction.unfamiliar`)."""


MAX_NAMED = 5  # flagged inputs named in one warning


def warn_unfamiliar(b: Bundle, preds: list[Prediction], stacklevel: int = 2) -> None:
    """One `UnfamiliarInputWarning` naming the flagged inputs of `preds` and their familiarity (none: no warning)."""
    flagged = [p for p in preds if p.unfamiliar]
    if not flagged:
        return
    named = "; ".join(f"{p.source} (familiarity {p.familiarity:.3f})" for p in flagged[:MAX_NAMED])
    more = f" and {len(flagged) - MAX_NAMED} more" if len(flagged) > MAX_NAMED else ""
    q = b.familiarity.threshold_quantile if b.familiarity is not None else float("nan")
    subject = "an input is" if len(preds) == 1 else f"{len(flagged)} of {len(preds)} inputs are"
    warnings.warn(f"supemb: {subject} unlike the gallery of the {b.name!r} bundle (familiarity below {q:g}: "
                  f"the nearest gallery neighbour farther than for {1 - q:.0%} of the gallery's own items): "
                  f"{named}{more}; a prediction there is an extrapolation", UnfamiliarInputWarning, stacklevel=stacklevel + 1)


def default_bundle_path(name: str) -> Path:
    if name not in DEFAULT_BUNDLES:
        raise UserError(f"no default bundle {name!r}; the defaults are {', '.join(DEFAULT_BUNDLES)}")
    path = DEFAULTS_DIR / DEFAULT_BUNDLES[name]
    if not (path / "manifest.json").is_file():
        raise UserError(f"{path}: the default {name} bundle is missing from this installation; "
                        f"rebuild it with `{BUILD_COMMAND}` or pass bundle=")
    return path


def get_bundle(bundle: str | Path | Bundle | None, default: str, device: str = "auto") -> Bundle:
    """A loaded bundle: `bundle` itself, a cached load of its path, or the default `default`."""
    if isinstance(bundle, Bundle):
        return bundle
    if bundle is not None and not isinstance(bundle, (str, os.PathLike)):
        raise UserError(f"bundle= is a path to a bundle folder or .zip, or a loaded Bundle, "
                        f"not {type(bundle).__name__}")
    path = default_bundle_path(default) if bundle is None else Path(bundle)
    key = (str(path.resolve()), device)
    with _lock:
        if key not in _cache:
            _cache[key] = load_bundle(path, device=device)
        b = _cache[key]
        if bundle is None and b.is_demo and default not in _warned:
            _warned.add(default)
            warnings.warn(f"supemb: the default {default} bundle is a demonstration model trained on synthetic "
                          "data, not a model of real inputs; train and export your own and pass bundle= "
                          "(see the README)", DemoModelWarning, stacklevel=3)  # -> predict_age etc. -> the caller
    return b


# the quantities the calls serve, recognised by a word of the target's name (camelCase split) or its unit
QUANTITIES = {"age": ("age", {"years", "year", "yrs", "yr", "y", "months", "month"}),
              "temperature": ("temp", {"°c", "c", "degc", "°celsius", "celsius", "°f", "f", "degf", "fahrenheit",
                                       "k", "kelvin"})}


def _is(b: Bundle, quantity: str) -> bool:
    stem, units = QUANTITIES[quantity]
    words = re.split(r"[^a-z]+", re.sub(r"([a-z])([A-Z])", r"\1 \2", b.target_name).lower())
    unit = b.unit.lower().replace("℃", "°c").replace("℉", "°f").replace("º", "°").replace("degrees", "°")
    unit = re.sub(r"[\s.]+", "", unit).replace("deg", "°").replace("°°", "°")
    return any(w.startswith(stem) for w in words) or unit in units or unit.lstrip("°") in units


def _check_task(b: Bundle, want_modality: str, what: str, quantity: str) -> None:
    if b.task != "regression" or b.modality != want_modality:
        article = "an" if want_modality[0] in "aeiou" else "a"
        raise UserError(f"{b.source}: {what} needs {article} {want_modality} regression bundle, "
                        f"but this one does {b.modality} {b.task}")
    other = [q for q in QUANTITIES if q != quantity and _is(b, q)]  # a target of unknown kind is served
    if other and not _is(b, quantity):
        unit = f" in {b.unit}" if b.unit else ""
        raise UserError(f"{b.source}: {what} needs a bundle that predicts {quantity}, but this one predicts "
                        f"{b.target_name!r}{unit}; serve it with supemb.load_bundle(path).predict(inputs)")


def _values(b: Bundle, inputs: Any, k: int | None, **predict: Any) -> float | list[float]:
    items, single = _as_list(inputs)
    preds = b.predict(items, k=k, **predict)
    warn_unfamiliar(b, preds, stacklevel=3)  # -> predict_age etc. -> the caller
    values = [float(p.value) for p in preds]  # on_error="raise": every prediction has a value
    return values[0] if single else values


def predict_age(image: Any, bundle: str | Path | Bundle | None = None, k: int | None = None,
                detect: bool = True) -> float | list[float]:
    """Age in years from a photo of a person (a path, PIL image or HxWx3 uint8 array), or a list of
    them. A bundle that finds faces (the default one does) predicts from the photo's largest face;
    a photo without one is an error naming it. detect=False: the photos are face crops already."""
    b = get_bundle(bundle, "age")
    _check_task(b, "image", "predict_age", "age")
    return _values(b, image, k, detect=detect)


def predict_temperature(image: Any, bundle: str | Path | Bundle | None = None,
                        k: int | None = None) -> float | list[float]:
    """Outdoor temperature (in the bundle's unit: °C for the default one) from a webcam frame (path, PIL
    image or HxWx3 uint8 array), or a list."""
    b = get_bundle(bundle, "temperature")
    _check_task(b, "image", "predict_temperature", "temperature")
    return _values(b, image, k)


def predict_brain_age(recording: Any, bundle: str | Path | Bundle | None = None,
                      k: int | None = None) -> float | list[float]:
    """Brain age in years from resting EEG: an EDF/BDF/FIF path or an `mne.io.Raw`, or a list."""
    b = get_bundle(bundle, "brain_age")
    _check_task(b, "eeg", "predict_brain_age", "age")
    return _values(b, recording, k)
