"""Heads on top of an encoder, and the module that turns an encoder into the served embedding.

- `ProjectionHead`: stage 1 (SupCon / TSC; RnC only if asked, its paper
  applies the loss to the encoder output). An MLP from the encoder's
  features to a small space where the contrastive loss is computed; it is
  dropped after stage 1 (the encoder's features serve better than the
  projection's, as SimCLR and SupCon found).
- `LinearHead`: stage 2. One linear layer on the frozen encoder's features,
  to n_classes logits (CE) or n_targets values (L1).
- `EmbeddingModel`: inputs -> the embedding in a metric: the L2-normalised
  encoder output for "cosine", the raw encoder output for "l2". The trainer
  evaluates it, export writes it as `encoder.onnx`.
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


# What the embedding is, per served metric ("cosine": compared by dot product, "l2": by
# negative Euclidean distance); the names are `supemb.train.config.METRICS`.
METRICS = ("cosine", "l2")


def embedding_of(features: Tensor, metric: str = "cosine", eps: float = 1e-12) -> Tensor:
    """Encoder features `[B, D]` -> the embedding `[B, D]` in `metric`: unit rows for "cosine",
    the features themselves for "l2" (what an L2-distance loss shaped)."""
    return F.normalize(features, dim=-1, eps=eps) if metric == "cosine" else features


class EmbeddingModel(nn.Module):
    """An encoder and the metric it is served in: `x` -> embeddings `[B, embed_dim]`.

    metric "cosine": each row has norm 1 (FAISS inner product is then cosine
    similarity); "l2": the encoder's raw output, compared by Euclidean distance.
    The state dict is the encoder's under `encoder.` (as model.safetensors stores it).
    """

    def __init__(self, encoder: nn.Module, metric: str = "cosine") -> None:
        super().__init__()
        if metric not in METRICS:
            raise UserError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
        self.encoder, self.metric = encoder, metric

    @property
    def embed_dim(self) -> int:
        return int(self.encoder.embed_dim)

    @property
    def modality(self) -> str:
        return str(self.encoder.modality)

    def forward(self, x: Tensor) -> Tensor:
        """`x`: a batch of the encoder's inputs -> `[B, embed_dim]` in `self.metric`."""
        return embedding_of(self.encoder(x), self.metric)

    def embed(self, x: Tensor) -> Tensor:
        """The same as calling the module (the name the trainer's `Model` reads best with)."""
        return self(x)
