"""Heads on top of an encoder, and the L2-normalising wrapper used for serving.

- `ProjectionHead`: stage 1 (SupCon / TSC; RnC only if asked, its paper
  applies the loss to the encoder output). An MLP from the encoder's
  features to a small space where the contrastive loss is computed; it is
  dropped after stage 1 (the encoder's features serve better than the
  projection's, as SimCLR and SupCon found).
- `LinearHead`: stage 2. One linear layer on the frozen encoder's features,
  to n_classes logits (CE) or n_targets values (L1).
- `NormalizedEncoder`: encoder + L2 normalisation, what `encoder.onnx` in a
  cosine bundle computes (an "l2" bundle serves the encoder's raw output).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from supemb.errors import UserError


def _check_dims(owner: str, **dims: int) -> None:
    bad = {k: v for k, v in dims.items() if not (isinstance(v, int) and v >= 1)}
    if bad:
        listed = ", ".join(f"{k}={v!r}" for k, v in bad.items())
        raise UserError(f"{owner}: sizes must be positive integers, got {listed}")


class ProjectionHead(nn.Module):
    """Linear -> [BN] -> ReLU -> Linear.

    Args:
        in_dim: encoder embed_dim.
        out_dim: projection size (128, as in SupCon).
        hidden_dim: hidden width; None means in_dim (SupCon's choice).
        batch_norm: BN after the first linear layer (SimCLR v2 style). It needs
            more than one sample per batch in training mode.

    Forward: `features: [B, in_dim]` -> `[B, out_dim]` (not normalised: the
    losses normalise).
    """

    def __init__(
        self, in_dim: int, out_dim: int = 128, hidden_dim: int | None = None, batch_norm: bool = True
    ) -> None:
        super().__init__()
        hidden = in_dim if hidden_dim is None else hidden_dim
        _check_dims("ProjectionHead", in_dim=in_dim, out_dim=out_dim, hidden_dim=hidden)
        self.in_dim, self.out_dim = in_dim, out_dim
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden, bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden))
        layers += [nn.ReLU(inplace=True), nn.Linear(hidden, out_dim)]
        self.net = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        """`features: [B, in_dim]` -> `[B, out_dim]`."""
        return self.net(features)


class LinearHead(nn.Module):
    """One linear layer: `[B, in_dim]` -> `[B, out_dim]` logits or values.

    out_dim is n_classes for classification, n_targets (usually 1) for
    regression; the output keeps its last axis even when it is 1.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        _check_dims("LinearHead", in_dim=in_dim, out_dim=out_dim)
        self.in_dim, self.out_dim = in_dim, out_dim
        self.fc = nn.Linear(in_dim, out_dim)

    def forward(self, features: Tensor) -> Tensor:
        """`features: [B, in_dim]` -> `[B, out_dim]`."""
        return self.fc(features)


class NormalizedEncoder(nn.Module):
    """Wraps an encoder so it returns unit-length embeddings `[B, embed_dim]`.

    This is what a cosine bundle's `encoder.onnx` computes: FAISS inner
    product on these vectors is cosine similarity. (An "l2" bundle serves
    the encoder's raw output, compared by Euclidean distance.)
    """

    def __init__(self, encoder: nn.Module, eps: float = 1e-12) -> None:
        super().__init__()
        self.encoder = encoder
        self.embed_dim: int = int(encoder.embed_dim)
        self.modality: str = str(encoder.modality)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """`x`: the encoder's input -> `[B, embed_dim]`, each row of norm 1."""
        return F.normalize(self.encoder(x), dim=1, eps=self.eps)
