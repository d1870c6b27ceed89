r"""Targeted supervised contrastive loss (TSC; Li et al., CVPR 2022) for long-tailed classes.

Head classes crowd tail classes on the hypersphere. TSC fixes C target points
u_1..u_C spread uniformly on the unit sphere before training, assigns each
class one target, and pulls each class towards its target while contrasting
against all targets.

Targets: minimise (1/C) Σ_i log Σ_j exp(u_i · u_j / t) over unit vectors (projected
gradient descent from a seeded random start), first at t = 1, then at t = 0.07
as the authors' target generation does; for C <= D + 1 this converges to a
regular simplex (pairwise cosine -1/(C-1)), and beyond it the low t keeps the
closest targets apart (C = 100 in D = 8: largest cosine 0.52, against 0.70 at
t = 1 alone). `uniform_targets` is
deterministic for (C, D, seed, steps) and caches the result as .npy
(``$SUPEMB_CACHE`` or ``~/.cache/supemb``).

Assignment: a running (EMA) centroid of each class's normalised features is
kept; every `reassign_every` training steps the class -> target assignment is
the one maximising Σ_c centroid_c · u_{a(c)} (Hungarian algorithm, scipy's
`linear_sum_assignment`), so semantically close classes get close targets.
Centroids and assignment are buffers: they are saved and restored with the
state dict. In eval mode nothing is updated.

Loss, for normalised items z_i (flattened views), positives P(i) = the other
items of i's class, contrast set A(i) = {z_k : k ≠ i} ∪ {u_1..u_C}, logits / τ:

    L(i) = -1/|P(i)| [ Σ_{p∈P(i)} log( exp(z_i·z_p/τ) / Σ_{a∈A(i)} exp(z_i·a/τ) )
                       + λ log( exp(z_i·u_{a(y_i)}/τ) / Σ_{a∈A(i)} exp(z_i·a/τ) ) ]

averaged over anchors. Choices where the paper and practice differ:
- The paper's KCL term samples k positives per anchor (k = 6) from a MoCo
  queue; here every in-batch positive is used (as in SupCon), and the
  normaliser 1/(k+1) becomes 1/|P(i)|. An anchor with no positive keeps the
  target term alone (normaliser 1).
- The target term's weight λ (``target_weight``) defaults to 1.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from supemb.losses._common import (
    check_batch_labels,
    check_features,
    finite_or_raise,
    flatten_views,
    full_precision,
    promote,
)


def _cache_dir() -> Path:
    return Path(os.environ.get("SUPEMB_CACHE", Path.home() / ".cache" / "supemb")) / "tsc_targets"


TARGET_TEMPERATURE = 0.07  # the second phase's t, the one the paper's authors' target generation uses


def _optimise_targets(num_classes: int, dim: int, seed: int, steps: int, lr: float) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    u = F.normalize(torch.randn(num_classes, dim, generator=gen, dtype=torch.float64), dim=1)
    # t = 1 converges fast (to the regular simplex when C <= D + 1); t = 0.07 then spreads the closest
    # pairs further apart when there are more classes than D + 1 (from t = 1 alone: a larger largest cosine)
    for t, n_steps in ((1.0, steps), (TARGET_TEMPERATURE, steps // 2)):
        for _ in range(n_steps):
            u.requires_grad_(True)
            loss = torch.logsumexp(u @ u.T / t, dim=1).mean()
            (grad,) = torch.autograd.grad(loss, u)
            with torch.no_grad():
                # Riemannian step: drop the radial part of the gradient (it only
                # changes the norm, which the projection undoes), step, re-project.
                grad = grad - (grad * u).sum(1, keepdim=True) * u
                u = F.normalize(u - lr * t * num_classes * grad, dim=1)
    return u.detach().numpy().astype(np.float32)


def uniform_targets(
    num_classes: int, dim: int, seed: int = 0, steps: int = 2000, lr: float = 0.5,
    cache: bool = True,
) -> Tensor:
    """C unit vectors in R^D spread uniformly: `[num_classes, dim]` float32."""
    if num_classes < 2:
        raise ValueError(f"TSC needs at least 2 classes, got {num_classes}")
    if dim < 2:
        raise ValueError(f"TSC needs an embedding of at least 2 dimensions, got {dim}")
    key = hashlib.sha256(f"{num_classes}-{dim}-{seed}-{steps}-{lr}-t{TARGET_TEMPERATURE}".encode()).hexdigest()[:16]
    path = _cache_dir() / f"targets_C{num_classes}_D{dim}_{key}.npy"
    if cache and path.is_file():
        try:
            arr = np.load(path, allow_pickle=False)
            if arr.shape == (num_classes, dim) and np.isfinite(arr).all():
                return torch.from_numpy(arr)
        except (OSError, ValueError):
            pass  # a damaged cache file is simply recomputed
    arr = _optimise_targets(num_classes, dim, seed, steps, lr)
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(tmp, arr, allow_pickle=False)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only home only costs recomputation
    return torch.from_numpy(arr)


class TargetedSupConLoss(nn.Module):
    """Targeted SupCon on `[B, V, D]` features with integer labels in [0, num_classes).

    Args:
        num_classes: C, the number of classes (and of targets).
        dim: D, the feature size the loss receives.
        temperature: τ.
        target_weight: λ, the weight of the target term.
        reassign_every: redo the Hungarian assignment every this many training
            steps (0 = never: keep the current assignment).
        centroid_momentum: EMA momentum of the class centroids.
        seed: seed of the target generation.
    """

    targets: Tensor
    assignment: Tensor
    centroids: Tensor
    seen: Tensor
    steps: Tensor

    def __init__(
        self,
        num_classes: int,
        dim: int,
        temperature: float = 0.1,
        target_weight: float = 1.0,
        reassign_every: int = 1,
        centroid_momentum: float = 0.9,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if target_weight < 0:
            raise ValueError(f"target_weight must be >= 0, got {target_weight}")
        if not 0.0 <= centroid_momentum < 1.0:
            raise ValueError(f"centroid_momentum must be in [0, 1), got {centroid_momentum}")
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.temperature = float(temperature)
        self.target_weight = float(target_weight)
        self.reassign_every = int(reassign_every)
        self.centroid_momentum = float(centroid_momentum)
        self.register_buffer("targets", uniform_targets(num_classes, dim, seed=seed))
        self.register_buffer("assignment", torch.arange(num_classes))  # class -> target row
        self.register_buffer("centroids", torch.zeros(num_classes, dim))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def class_targets(self) -> Tensor:
        """`[C, D]`: the target assigned to each class, in class order."""
        return self.targets[self.assignment]

    @torch.no_grad()
    def update_assignment(self, z: Tensor, labels: Tensor) -> None:
        """Fold a batch's class means into the centroids and maybe reassign.

        z: `[n, D]` normalised items; labels: `[n]` class of each item.
        """
        z = z.detach().to(self.centroids.dtype)
        sums = torch.zeros_like(self.centroids).index_add_(0, labels, z)
        counts = torch.bincount(labels, minlength=self.num_classes)
        present = counts > 0
        means = F.normalize(sums[present] / counts[present, None], dim=1)
        m = torch.where(self.seen[present], self.centroid_momentum, 0.0)[:, None]
        self.centroids[present] = F.normalize(m * self.centroids[present] + (1 - m) * means, dim=1)
        self.seen |= present
        self.steps += 1
        if self.reassign_every > 0 and int(self.steps) % self.reassign_every == 0:
            cost = -(self.centroids @ self.targets.T).double().cpu().numpy()  # [C classes, C targets]
            rows, cols = linear_sum_assignment(cost)
            self.assignment[torch.as_tensor(rows, device=self.assignment.device)] = torch.as_tensor(
                cols, device=self.assignment.device
            )

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """features: `[B, V, D]` (or `[B, D]`); labels: `[B]` integers in [0, C)."""
        features = check_features(features)
        batch, views, dim = features.shape
        if dim != self.dim:
            raise ValueError(f"features have D = {dim} but the loss was built for dim = {self.dim}")
        labels = check_batch_labels(labels, batch).to(features.device).long()
        if bool((labels < 0).any()) or bool((labels >= self.num_classes).any()):
            raise ValueError(f"labels must be integers in [0, {self.num_classes}) for TargetedSupConLoss")
        with full_precision(features.device.type):
            z = F.normalize(flatten_views(promote(features)), dim=-1)  # [n, D]
            y = labels.repeat(views)
            if self.training:
                # Checked before the update: a bad batch must not corrupt the centroids.
                finite_or_raise(z.sum(), features)
                self.update_assignment(z, y)
            loss = tsc_loss(z, y, self.class_targets().to(z.dtype), self.temperature, self.target_weight)
            return finite_or_raise(loss, features)


def tsc_loss(z: Tensor, y: Tensor, class_targets: Tensor, temperature: float, weight: float) -> Tensor:
    """z: `[n, D]` unit items; y: `[n]` classes; class_targets: `[C, D]` (row c = class c's target)."""
    n = z.shape[0]
    item_logits = z @ z.T / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    target_logits = z @ class_targets.T / temperature  # [n, C]
    log_denom = torch.logsumexp(
        torch.cat([item_logits.masked_fill(self_mask, float("-inf")), target_logits], dim=1), dim=1
    )
    # Σ_p z_i·z_p via class sums (no n x n positive mask), as in SupCon.
    class_sums = torch.zeros_like(class_targets).index_add_(0, y, z)
    n_pos = torch.bincount(y, minlength=class_targets.shape[0])[y] - 1
    pos_sum = (z * (class_sums[y] - z)).sum(-1) / temperature
    own_target = target_logits.gather(1, y[:, None]).squeeze(1)
    numer = (n_pos * log_denom - pos_sum) + weight * (log_denom - own_target)
    per_anchor = numer / n_pos.clamp_min(1).to(z.dtype)
    valid = (n_pos > 0) | (weight > 0)
    return torch.where(valid, per_anchor, 0.0).sum() / valid.sum().clamp_min(1)
