"""Supervised contrastive losses.

- `SupConLoss`: classes (Khosla et al. 2020); SimCLR without labels.
- `RnCLoss`: continuous targets, SupCR / Rank-N-Contrast (Zha et al.).
- `TargetedSupConLoss`: long-tailed classes (Li et al. 2022).
- `LOSSES` / `build_loss` (`supemb.losses.registry`): every loss `supemb train`
  accepts, the plain baselines included, with its task and defaults.

All take features `[B, V, D]` (V views per sample) and compute in float32 or
float64 even under autocast. The loss classes load lazily, so reading the
registry (the CLI's --loss choices) does not import torch.
"""

from __future__ import annotations

from typing import Any

from supemb.losses.registry import LOSSES, LossSpec, build_loss, default_temperature

__all__ = ["LOSSES", "LossSpec", "RnCLoss", "SupConLoss", "TargetedSupConLoss", "build_loss",
           "default_temperature", "uniform_targets"]

_LAZY = {
    "RnCLoss": "supemb.losses.rnc",
    "SupConLoss": "supemb.losses.supcon",
    "TargetedSupConLoss": "supemb.losses.tsc",
    "uniform_targets": "supemb.losses.tsc",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'supemb.losses' has no attribute {name!r}")
