"""What stage 1 trains: the encoder with its training head, and where a run stands.

`Model` is the encoder and its head (the projection of a contrastive loss, or a
baseline's linear head); `TrainForward` is its training forward pass, the module
DDP wraps under torchrun; `Position` is the (stage, epoch, step) a checkpoint resumes at.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from supemb.encoders.heads import EmbeddingModel


class TrainForward(nn.Module):
    """inputs -> the training head's output: what DDP wraps (its forward is the one DDP watches)."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.head(self.model.encoder(x))


class Model(EmbeddingModel):
    """encoder -> embedding (`EmbeddingModel`: L2-normalised for metric "cosine", raw for "l2"),
    plus the training `head`: the projection (contrastive; `nn.Identity` when the loss is
    applied to the encoder output) or the linear head (baseline). State: encoder.*, head.*."""

    def __init__(self, encoder: nn.Module, head: nn.Module, metric: str = "cosine") -> None:
        super().__init__(encoder, metric)
        self.head = head


@dataclass
class Position:
    """Where training stands: the next (stage, epoch, step) to run."""

    stage: int = 1
    epoch: int = 0
    step: int = 0  # batches already done in `epoch`
    loss_sum: float | None = None  # their losses summed, for the epoch's mean after a resume (None: not kept)
