"""Which torch device a run trains on, from `--device`."""

from __future__ import annotations

import torch

from supemb.errors import UserError


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when a GPU is there, else cpu; any other name as torch knows it,
    refused with one line when it cannot run here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device torch knows (try cpu or cuda)") from None
