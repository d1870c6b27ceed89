"""A small CNN image encoder for tests, demos and CPU training.

`depth` blocks of 3x3 conv-BN-ReLU; every block halves the resolution (stride
2) and block i has `width * 2**i` channels, so with the defaults (width 32,
depth 3) it has about 94k parameters, a 64x64 input ends as an 8x8 map and
the embedding has 128 dimensions. `convs` > 1 adds stride-1 convolutions of
the same width after each block's strided one (deeper at little cost: they
run at the reduced resolution). `norm` "group" (GroupNorm) or "none" replaces
BatchNorm where batch statistics are unwanted: a model that normalises each
sample on its own trains identically on one process or several CPU processes
(PyTorch's SyncBatchNorm needs GPUs; see supemb.train.distributed).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from supemb.errors import UserError

NORMS = {
    "batch": nn.BatchNorm2d,
    "group": lambda c: nn.GroupNorm(min(8, c), c),
    "none": lambda c: nn.Identity(),
}


class SmallCNN(nn.Module):
    """Conv-BN-ReLU stack + global average pooling.

    Args:
        width: channels of the first block; block i has width * 2**i.
        depth: number of blocks (each one stride 2).
        in_chans: input channels.
        convs: convolutions per block (the first strided, the rest stride 1).
        norm: "batch" (BatchNorm, the default), "group" (GroupNorm, up to 8 groups) or "none".

    Forward: `x: [B, in_chans, H, W]` -> `[B, embed_dim]`,
    `embed_dim = width * 2**(depth - 1)`.
    """

    modality = "image"

    def __init__(self, *, width: int = 32, depth: int = 3, in_chans: int = 3, convs: int = 1,
                 norm: str = "batch") -> None:
        super().__init__()
        if width < 1 or depth < 1 or in_chans < 1 or convs < 1:
            raise UserError(
                f"small_cnn: width, depth, in_chans and convs must be >= 1, got {width}, {depth}, {in_chans}, {convs}"
            )
        if norm not in NORMS:
            raise UserError(f"small_cnn: norm must be one of {', '.join(NORMS)}, got {norm!r}")
        layers: list[nn.Module] = []
        c_in = in_chans
        for i in range(depth):
            c_out = width * 2**i
            for j in range(convs):
                layers += [
                    nn.Conv2d(c_in, c_out, 3, stride=2 if j == 0 else 1, padding=1, bias=norm == "none"),
                    NORMS[norm](c_out),
                    nn.ReLU(inplace=True),
                ]
                c_in = c_out
        self.features = nn.Sequential(*layers)
        self.embed_dim: int = c_in
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """`x: [B, in_chans, H, W]` -> `[B, embed_dim]`."""
        return torch.mean(self.features(x), dim=(2, 3))


def small_cnn(*, width: int = 32, depth: int = 3, in_chans: int = 3, convs: int = 1,
              norm: str = "batch") -> SmallCNN:
    """The default small encoder (~94k parameters at width 32, depth 3, convs 1)."""
    return SmallCNN(width=width, depth=depth, in_chans=in_chans, convs=convs, norm=norm)
