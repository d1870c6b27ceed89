"""Named augmentation presets: one resolver for the image and the EEG tables.

A setting names a preset ("colour") or is a mapping that starts from one and
overrides fields (`{"preset": "colour", "brightness": 0.3}`, from YAML).
`{"preset": "custom", ...}` starts from the spec class's own defaults; the
resolved record `{"preset": NAME or "custom", **all fields}` resolves back
to the same spec. Errors are one line and name the allowed presets.
No heavy imports here: the tables live next to their specs
(`supemb.preprocess.image.IMAGE_AUGMENTS`, `supemb.preprocess.eeg_augment.EEG_AUGMENTS`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, TypeVar

from supemb.errors import UsageError, UserError

T = TypeVar("T")
CUSTOM = "custom"  # the record's name of a preset with changed fields; as a mapping's base: the class defaults
ALIASES = {"color": "colour"}


def preset_names(presets: Mapping[str, Any]) -> str:
    return ", ".join(presets)


def _canonical(name: Any) -> Any:
    if not isinstance(name, str):
        return name
    key = name.strip().lower()
    return ALIASES.get(key, key)


def _number(what: str, field: str, value: Any, length: int | None) -> Any:
    """A finite number (length None) or a list of `length` of them; bools refused."""

    def ok(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if length is None:
        if ok(value):
            return float(value)
    elif isinstance(value, (list, tuple)) and len(value) == length and all(ok(v) for v in value):
        return tuple(float(v) for v in value)
    shape = "a number" if length is None else f"{length} numbers"
    raise UsageError(f"{what} augmentation: {field} must be {shape}, not {value!r}")


def resolve_preset(value: str | Mapping[str, Any], presets: Mapping[str, T], cls: type[T],
                   what: str) -> tuple[str, T]:
    """A preset name or a `{"preset": NAME, **field overrides}` mapping -> (name, spec).

    name: the preset's name, or "custom" when overrides changed a field.
    what: "image" or "EEG", for messages.
    """
    allowed = preset_names(presets)
    if isinstance(value, str):
        name = _canonical(value)
        if name not in presets:
            raise UsageError(f"unknown {what} augmentation {value!r}; presets: {allowed}")
        return name, presets[name]
    if not isinstance(value, Mapping):
        raise UsageError(f"augment must be a preset name ({allowed}) or a mapping "
                         f"{{preset: NAME, field: value, ...}}, not {type(value).__name__}")
    overrides = {str(k).replace("-", "_"): v for k, v in value.items()}  # as YAML's top-level keys
    if "preset" not in overrides:
        raise UsageError(f"{what} augmentation mapping needs 'preset' (one of {allowed}, or {CUSTOM}) "
                         "to start from")
    base_name = _canonical(overrides.pop("preset"))
    if base_name == CUSTOM:
        base = cls()
    elif base_name in presets:
        base = presets[base_name]
    else:
        raise UsageError(f"unknown {what} augmentation {value['preset']!r}; presets: {allowed} "
                         f"(or {CUSTOM} with fields)")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(str(k) for k in overrides if k not in fields)
    if unknown:
        raise UsageError(f"{what} augmentation: unknown field(s) {', '.join(unknown)} "
                         f"(fields: {', '.join(fields)})")
    for key, v in overrides.items():
        default = getattr(base, key)
        overrides[key] = _number(what, key, v, len(default) if isinstance(default, tuple) else None)
    try:
        spec = dataclasses.replace(base, **overrides)  # type: ignore[type-var]
    except UserError as err:  # the spec's own range checks: one line already; a setting, so a usage error
        raise UsageError(str(err)) from None
    except (TypeError, ValueError) as err:
        raise UsageError(f"{what} augmentation: {err}") from None
    if base_name != CUSTOM and spec == presets[base_name]:
        return base_name, spec
    matches = [n for n, p in presets.items() if p == spec]  # a full record of a named preset
    return (matches[0] if matches else CUSTOM), spec
