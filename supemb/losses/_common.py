"""Pieces shared by the contrastive losses: input checks, view flattening,
similarity matrices and off-diagonal views.

Conventions: a batch holds B samples with V views each, features `[B, V, D]`.
Flattened, item `v * B + b` is view v of sample b (view-major, as in the
papers' reference code); the loss values do not depend on this order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor


def check_features(features: Tensor, name: str = "features") -> Tensor:
    """Validate `[B, V, D]` features (a `[B, D]` tensor is taken as V = 1).

    Raises ValueError on a wrong rank or an empty batch. Values are checked
    after the loss is computed (`finite_or_raise`): a NaN/Inf input always
    makes the loss non-finite, so the common case costs no extra pass.
    """
    if not isinstance(features, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(features).__name__}")
    if features.dim() == 2:
        features = features.unsqueeze(1)
    if features.dim() != 3:
        raise ValueError(
            f"{name} must have shape [B, V, D] (or [B, D]), got {tuple(features.shape)}"
        )
    if features.shape[0] == 0 or features.shape[1] == 0 or features.shape[2] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {features.dtype}")
    return features


def finite_or_raise(loss: Tensor, features: Tensor, name: str = "features") -> Tensor:
    """Return `loss`; if it is not finite because `features` is not, say so."""
    if not bool(torch.isfinite(loss).all()) and not bool(torch.isfinite(features).all()):
        raise ValueError(f"{name} contains NaN or Inf values")
    return loss


def check_batch_labels(labels: Tensor, batch: int, name: str = "labels") -> Tensor:
    """Class labels `[B]` (any integer dtype, or float holding integers)."""
    if not isinstance(labels, Tensor):
        labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ValueError(
            f"{name} must have shape [B] = [{batch}] to match features, got {tuple(labels.shape)}"
        )
    if labels.is_floating_point() and not bool(torch.isfinite(labels).all()):
        raise ValueError(f"{name} contains NaN or Inf values")
    if labels.is_floating_point() and not bool((labels == labels.round()).all()):
        bad = labels[labels != labels.round()][0].item()
        raise ValueError(f"{name} must be class indices (integers, or floats holding integers), got {bad:g}")
    return labels


def flatten_views(features: Tensor) -> Tensor:
    """`[B, V, D]` -> `[V * B, D]`, view-major (all first views, then all second views)."""
    return features.transpose(0, 1).reshape(-1, features.shape[-1])


@contextlib.contextmanager
def full_precision(device_type: str) -> Iterator[None]:
    """Compute a loss in float32 even inside an autocast region.

    Low temperatures (0.05) turn similarities into logits up to ~20; bf16/fp16
    exp/log-sum-exp on those loses too much precision and can overflow.
    """
    if torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    else:
        yield


def promote(x: Tensor) -> Tensor:
    """Half precision -> float32; float32/float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def safe_sqrt(x: Tensor) -> Tensor:
    """sqrt with gradient 0 (not inf/NaN) at 0; negative rounding noise -> 0."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), 0.0)


def pairwise_sq_l2(a: Tensor) -> Tensor:
    """Squared Euclidean distances between rows of `a` `[n, D]` -> `[n, n]`.

    Uses the Gram matrix: O(n^2) memory instead of the O(n^2 D) of explicit
    differences. The diagonal holds rounding noise around 0 (callers that need
    it exactly drop it); negative noise is clamped to 0.
    """
    sq = a.pow(2).sum(-1)
    return (sq[:, None] + sq[None, :] - 2.0 * (a @ a.T)).clamp_min(0.0)


def graph_grad(loss_of: Callable[[Tensor], Tensor], x: Tensor, grad_out: Tensor) -> Tensor:
    """grad_out * d loss_of(x) / dx by autograd, with its graph (a custom Function's backward under
    create_graph=True): its analytic gradient has no graph, so a second derivative through it would
    silently miss terms (Hessian-vector products, gradient penalties); this one is exact."""
    return torch.autograd.grad(loss_of(x), x, grad_out, create_graph=True)[0]
