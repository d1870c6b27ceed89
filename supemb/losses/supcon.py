r"""Supervised contrastive loss (SupCon; Khosla et al., NeurIPS 2020).

Features `[B, V, D]` (V augmented views of B samples) are flattened to
n = V * B items z_1..z_n and L2-normalised (``normalize=True``). For an anchor
i, A(i) is every item but i and P(i) ⊂ A(i) the items with i's label (the
other views of the same sample always among them). With logits
l_ia = z_i · z_a / τ:

    L_out(i) = -1/|P(i)| Σ_{p∈P(i)} log( exp(l_ip) / Σ_{a∈A(i)} exp(l_ia) )
    L_in(i)  = -log( 1/|P(i)| Σ_{p∈P(i)} exp(l_ip) / Σ_{a∈A(i)} exp(l_ia) )

The loss is the mean over anchors that have at least one positive; anchors
with none (a single-view sample whose label is unique in the batch) contribute
nothing, and a batch where no anchor has a positive gives 0 with a gradient of
zeros. Without labels every sample is its own class: SimCLR / NT-Xent.

``contrast_mode="all"`` uses every item as an anchor; ``"one"`` only the first
view of each sample (anchors still contrast against all n items).

Temperature scaling: the reference implementation multiplies the loss by
``temperature / base_temperature`` (0.07 / 0.07 by default there). Here that
factor is applied only when ``base_temperature`` is given; by default the loss
is the formula above, unscaled.

How it is computed: L_out needs Σ_p l_ip, which equals z_i · (S_y - z_i) / τ
where S_y is the sum of the items of i's class, so no n x n positive mask is
built; the denominator is one masked log-sum-exp. L_in needs a log-sum-exp over
positives and does build the boolean mask.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from supemb.losses._common import (
    check_batch_labels,
    check_features,
    finite_or_raise,
    flatten_views,
    full_precision,
    graph_grad,
    promote,
)


class SupConLoss(nn.Module):
    """SupCon / SimCLR loss on `[B, V, D]` features.

    Args:
        temperature: τ in the logits z_i · z_a / τ.
        variant: "out" (the paper's L_out, the default and better one) or "in".
        contrast_mode: "all" (every view is an anchor) or "one" (first view only).
        base_temperature: if given, the loss is multiplied by τ / base_temperature
            (the reference code's scaling); None means no scaling.
        normalize: L2-normalise the features first (the loss assumes unit vectors).
        reduction: "mean" over anchors with a positive, or "none" for the
            per-anchor losses `[n_anchors]` (0 for anchors without a positive).
    """

    def __init__(
        self,
        temperature: float = 0.1,
        variant: Literal["out", "in"] = "out",
        contrast_mode: Literal["all", "one"] = "all",
        base_temperature: float | None = None,
        normalize: bool = True,
        reduction: Literal["mean", "none"] = "mean",
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if base_temperature is not None and base_temperature <= 0:
            raise ValueError(f"base_temperature must be > 0, got {base_temperature}")
        if variant not in ("out", "in"):
            raise ValueError(f"variant must be 'out' or 'in', got {variant!r}")
        if contrast_mode not in ("all", "one"):
            raise ValueError(f"contrast_mode must be 'all' or 'one', got {contrast_mode!r}")
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        self.temperature = float(temperature)
        self.variant = variant
        self.contrast_mode = contrast_mode
        self.base_temperature = base_temperature
        self.normalize = normalize
        self.reduction = reduction

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        """features: `[B, V, D]` (or `[B, D]` = one view); labels: `[B]` or None."""
        features = check_features(features)
        batch, views, _ = features.shape
        if labels is None:
            groups = torch.arange(batch, device=features.device)
        else:
            groups = check_batch_labels(labels, batch).to(features.device)
        with full_precision(features.device.type):
            z = flatten_views(promote(features))  # [n, D], n = V * B
            n_anchors = batch if self.contrast_mode == "one" else z.shape[0]
            if self.variant == "out" and self.reduction == "mean":
                loss = _SupConOutMean.apply(z, groups.repeat(views), n_anchors, self.temperature, self.normalize)
            else:
                if self.normalize:
                    z = F.normalize(z, dim=-1)
                per_anchor, has_pos = supcon_terms(z, groups.repeat(views), self.temperature, self.variant, n_anchors)
                if self.reduction == "none":
                    loss = per_anchor
                else:  # mean over anchors with a positive; none at all -> 0, graph kept
                    loss = per_anchor.sum() / has_pos.sum().clamp_min(1)
            if self.base_temperature is not None:
                loss = loss * (self.temperature / self.base_temperature)
            return finite_or_raise(loss, features)


class _SupConOutMean(torch.autograd.Function):
    """L_out averaged over anchors with a positive, with an analytic gradient.

    x: `[n, D]` items (L2-normalised inside when `normalize`); groups: `[n]` class of each item; anchors are the
    first A items. Forward and backward share one `[A, n]` softmax and one
    boolean positive mask; the gradient wrt the logits is
    w_a (softmax_ak - [k ∈ P(a)] / |P(a)|), then two matmuls.
    """

    @staticmethod
    def forward(ctx, x: Tensor, groups: Tensor, n_anchors: int, temperature: float, normalize: bool) -> Tensor:
        norm = x.norm(dim=1, keepdim=True).clamp_min_(1e-12) if normalize else None
        z = x / norm if normalize else x
        anchors = z[:n_anchors]
        logits = torch.mm(anchors, z.T).mul_(1.0 / temperature)  # [A, n]
        pos = groups[:n_anchors, None] == groups[None, :]
        pos.diagonal().fill_(False)  # an anchor is not its own positive
        n_pos = pos.sum(1).to(z.dtype)
        pos_sum = torch.where(pos, logits, 0.0).sum(1)
        logits.diagonal().fill_(float("-inf"))  # no self-contrast
        # a lone item (n = 1) has nothing to contrast with: its row is all -inf, its max taken as 0
        row_max = logits.amax(1, keepdim=True).nan_to_num_(neginf=0.0)
        e = logits.sub_(row_max).exp_()
        denom = e.sum(1, keepdim=True).clamp_min_(torch.finfo(z.dtype).tiny)  # >= 1 for every other row
        log_denom = denom.log().add_(row_max).squeeze(1)  # [A]
        has_pos = n_pos > 0
        # weight of each anchor in the mean; 0 for anchors without a positive
        w = has_pos.to(z.dtype) / has_pos.sum().clamp_min(1)
        loss = (w * torch.where(has_pos, log_denom - pos_sum / n_pos.clamp_min(1), 0.0)).sum()
        ctx.save_for_backward(x, groups, z, pos, e, denom, w, n_pos, norm)
        ctx.n_anchors, ctx.temperature, ctx.normalize = n_anchors, temperature, normalize
        return loss

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, groups, z, pos, e, denom, w, n_pos, norm = ctx.saved_tensors
        a = ctx.n_anchors
        if torch.is_grad_enabled():  # create_graph=True: a gradient that can be differentiated again
            def mean_loss(x: Tensor) -> Tensor:
                per_anchor, has_pos = supcon_terms(F.normalize(x, dim=-1) if ctx.normalize else x, groups,
                                                   ctx.temperature, "out", a)
                return per_anchor.sum() / has_pos.sum().clamp_min(1)

            return graph_grad(mean_loss, x, grad_out), None, None, None, None
        k = w * (grad_out / ctx.temperature)  # [A]
        soft = e * (k[:, None] / denom)
        g = torch.where(pos, soft - (k / n_pos.clamp_min(1))[:, None], soft)  # dL/d(z_a·z_k)
        grad = g.T @ z[:a]  # contrast side
        grad[:a] += g @ z  # anchor side
        if norm is not None:  # through z = x / |x|: drop the radial part, divide by |x|
            grad = (grad - (grad * z).sum(1, keepdim=True) * z) / norm
        return grad, None, None, None, None


def supcon_terms(
    z: Tensor, groups: Tensor, temperature: float, variant: str, n_anchors: int
) -> tuple[Tensor, Tensor]:
    """Per-anchor SupCon losses.

    z: `[n, D]` items; groups: `[n]` class of each item; the anchors are the
    first `n_anchors` items. Returns (loss `[n_anchors]`, 0 where the anchor has
    no positive; has_positive `[n_anchors]` bool).
    """
    anchors = z[:n_anchors]
    logits = anchors @ z.T / temperature  # [A, n]
    self_mask = torch.eye(n_anchors, z.shape[0], dtype=torch.bool, device=z.device)
    log_denom = torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), dim=1)  # [A]

    _, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    n_pos = counts[inverse[:n_anchors]] - 1  # the anchor itself is not a positive
    has_pos = n_pos > 0
    n_pos_safe = n_pos.clamp_min(1).to(z.dtype)

    if variant == "out":
        class_sums = z.new_zeros(counts.shape[0], z.shape[1]).index_add_(0, inverse, z)
        pos_sum = (anchors * (class_sums[inverse[:n_anchors]] - anchors)).sum(-1) / temperature
        per_anchor = log_denom - pos_sum / n_pos_safe
    else:
        pos_mask = (inverse[:n_anchors, None] == inverse[None, :]) & ~self_mask
        # Rows without a positive get finite dummies (excluded below) so the
        # log-sum-exp and its gradient stay finite.
        pos_logits = torch.where(pos_mask, logits, float("-inf"))
        pos_logits = torch.where(has_pos[:, None], pos_logits, 0.0)
        per_anchor = log_denom + torch.log(n_pos_safe) - torch.logsumexp(pos_logits, dim=1)
    return torch.where(has_pos, per_anchor, 0.0), has_pos
