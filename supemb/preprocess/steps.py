"""Preprocessing as data: an ordered list of steps, recorded with the model and run by one function.

A step is a JSON object `{"op": NAME, **params}`; the ops a modality knows
are its plug-in's `ops` (`supemb.modalities`). The list is written to a run's
preprocessing.json and to a bundle's manifest as

    {"modality": "image", "version": 2, "steps": [{"op": "decode"},
     {"op": "resize_crop", "image_size": 32, "resize_size": 32, "resample": "bilinear"},
     {"op": "normalize", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}]}

and `Pipeline.run` applies it in training (evaluation transform and the
steps before augmentation), in export (the gallery) and in serving, so the
three cannot drift. A new preprocessing stage (a face crop, a re-reference)
is one more op in the plug-in and one more step in the list.

Training splits a pipeline where augmentation takes over
(`Pipeline.split_at`): the steps before run once per input (decoding,
cropping to the subject), the rest are replaced by random views.
Records written before the step list (version 1: the plug-in's flat spec
fields) are read through the plug-in's `legacy_steps`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from supemb.errors import UserError

VERSION = 2  # of the preprocessing record; 1 = a flat spec without "steps"


@dataclass(frozen=True)
class Op:
    """One kind of preprocessing step.

    run(x, params) -> x': the step applied to one input.
    check(params) -> canonical params (JSON-friendly); raises UserError for bad ones.
    """

    name: str
    run: Callable[[Any, Mapping[str, Any]], Any]
    check: Callable[[Mapping[str, Any]], dict[str, Any]]
    doc: str = ""


class Pipeline:
    """A modality's ordered preprocessing steps, validated against its ops."""

    def __init__(self, modality: str, steps: list[Mapping[str, Any]], ops: Mapping[str, Op],
                 where: str = "preprocessing") -> None:
        self.modality, self.ops, self.where = modality, ops, where
        canon: list[dict[str, Any]] = []
        for i, step in enumerate(steps):
            if not isinstance(step, Mapping) or not isinstance(step.get("op"), str):
                raise UserError(f"{where}: step {i} must be an object with an \"op\", got {step!r}")
            op = ops.get(step["op"])
            if op is None:
                raise UserError(f"{where}: step {i} has op {step['op']!r}, which {modality} preprocessing "
                                f"does not know (known: {', '.join(ops)}; written by a newer supemb?)")
            params = {k: v for k, v in step.items() if k != "op"}
            try:
                canon.append({"op": op.name, **op.check(params)})
            except UserError as err:
                raise UserError(f"{where}: step {i} ({op.name}): {err}") from None
        self.steps: tuple[dict[str, Any], ...] = tuple(canon)

    def __repr__(self) -> str:
        return f"Pipeline({self.modality}: {' -> '.join(s['op'] for s in self.steps)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pipeline) and (self.modality, self.steps) == (other.modality, other.steps)

    def __hash__(self) -> int:
        return hash((self.modality, repr(self.steps)))

    # ------------------------------------------------------------- record

    def to_record(self) -> dict[str, Any]:
        """What preprocessing.json and the manifest's "preprocessing" hold."""
        return {"modality": self.modality, "version": VERSION, "steps": [dict(s) for s in self.steps]}

    # ---------------------------------------------------------------- run

    def run(self, x: Any) -> Any:
        """Every step in order: one input (a path, an image, a recording) -> what the last step gives."""
        for step in self.steps:
            x = self.ops[step["op"]].run(x, step)
        return x

    __call__ = run

    def params(self, op: str) -> dict[str, Any]:
        """The parameters of the (first) step with this op; a UserError naming the record if absent."""
        for step in self.steps:
            if step["op"] == op:
                return {k: v for k, v in step.items() if k != "op"}
        raise UserError(f"{self.where}: the {self.modality} preprocessing has no {op!r} step")

    def has(self, op: str) -> bool:
        return any(step["op"] == op for step in self.steps)

    def without(self, op: str) -> Pipeline:
        """The same steps less every `op` step (e.g. a face step, for photos already cropped)."""
        return self._sub(tuple(s for s in self.steps if s["op"] != op))

    def split_at(self, op: str) -> tuple[Pipeline, Pipeline]:
        """(the steps before `op`, `op` and the steps after it): where training's augmentation takes over."""
        for i, step in enumerate(self.steps):
            if step["op"] == op:
                return self._sub(self.steps[:i]), self._sub(self.steps[i:])
        raise UserError(f"{self.where}: the {self.modality} preprocessing has no {op!r} step")

    def _sub(self, steps: tuple[dict[str, Any], ...]) -> Pipeline:
        return Pipeline(self.modality, list(steps), self.ops, self.where)


def record_modality(record: Any, where: str) -> str:
    """The "modality" of a preprocessing record (preprocessing.json or a manifest's), checked to be a string."""
    if not isinstance(record, Mapping) or not isinstance(record.get("modality"), str):
        raise UserError(f"{where}: the preprocessing record needs a \"modality\"")
    return record["modality"]


def record_steps(record: Mapping[str, Any], where: str) -> list[Mapping[str, Any]] | None:
    """A version-2 record's steps; None for a version-1 (flat) record; a UserError for a newer version."""
    version = record.get("version", 1 if "steps" not in record else VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UserError(f"{where}: preprocessing version must be a positive integer, got {version!r}")
    if version > VERSION:
        raise UserError(f"{where}: preprocessing version {version} was written by a newer supemb "
                        f"(this one reads up to {VERSION}); upgrade supemb")
    if version == 1:
        return None
    steps = record.get("steps")
    if not isinstance(steps, list):
        raise UserError(f"{where}: preprocessing \"steps\" must be a list")
    return steps


def number(params: Mapping[str, Any], key: str, where: str, *, positive: bool = True,
           optional: bool = False) -> float | None:
    """params[key] as a finite float (> 0 when positive); None allowed when optional."""
    import math

    v = params.get(key)
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v <= 0):
        raise UserError(f"{where}: {key} must be a {'positive ' if positive else ''}number, got {v!r}")
    return float(v)


def only_keys(params: Mapping[str, Any], allowed: set[str], op: str) -> None:
    """Refuse parameters an op does not know (a record from a newer supemb, or a typo)."""
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise UserError(f"preprocessing step {op!r}: unknown parameters {', '.join(unknown)} "
                        f"(known: {', '.join(sorted(allowed)) or 'none'})")
