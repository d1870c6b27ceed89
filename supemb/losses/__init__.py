"""Supervised contrastive losses.

- `SupConLoss`: classes (Khosla et al. 2020); SimCLR without labels.
- `RnCLoss`: continuous targets, SupCR / Rank-N-Contrast (Zha et al.).
- `TargetedSupConLoss`: long-tailed classes (Li et al. 2022).

All take features `[B, V, D]` (V views per sample) and compute in float32 or
float64 even under autocast.
"""

from supemb.losses.rnc import RnCLoss
from supemb.losses.supcon import SupConLoss
from supemb.losses.tsc import TargetedSupConLoss, uniform_targets

__all__ = ["RnCLoss", "SupConLoss", "TargetedSupConLoss", "uniform_targets"]
