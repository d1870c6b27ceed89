"""The gallery index's checked inputs: vectors and counts, refused in one line when wrong."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from supemb.errors import UserError


def as_vectors(x: Any, name: str, dim: int | None = None) -> np.ndarray:
    """Check `x` is a finite [N, D] array (D == dim if given); contiguous float32."""
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as err:
        raise UserError(f"{name} must be a numeric [N, D] array: {err}") from None
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise UserError(f"{name} must be a numeric [N, D] array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise UserError(f"{name} must be a 2-D array [N, D], got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise UserError(f"{name} have dimension {arr.shape[1]} but the index has dimension {dim}")
    if arr.shape[1] == 0:
        raise UserError(f"{name} have dimension 0")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        rows = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        raise UserError(f"{name} contain NaN or infinite values ({len(bad)} rows: {rows})")
    return arr


def positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise UserError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)
