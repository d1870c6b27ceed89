"""ResNet-18/34/50 image encoders (He et al. 2016), written from the paper.

Input `[B, in_chans, H, W]`, output `[B, embed_dim]`: the globally averaged
last feature map, with no classifier and no normalisation (the loss or the
serving wrapper normalises).

Two stems:

- ``"imagenet"``: 7x7 stride-2 convolution + 3x3 stride-2 max-pool (/4), the
  usual one for 224 px inputs.
- ``"small"``: one 3x3 stride-1 convolution and no max-pool, for 32-64 px
  inputs (CIFAR-style; the SupCon paper's CIFAR encoders use it), so the last
  stage still sees a 4x4 map at 32 px instead of 1x1.

Bottleneck blocks downsample in the 3x3 convolution ("ResNet v1.5"), which is
slightly more accurate than striding the first 1x1 convolution.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from supemb.errors import UserError

Stem = Literal["imagenet", "small"]
STEMS: tuple[str, ...] = ("imagenet", "small")


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    # Bias is redundant before BatchNorm (its shift absorbs it).
    return [
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
    ]


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    """Identity when shapes match, else a strided 1x1 projection + BN."""
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions + shortcut. `[B, c_in, H, W] -> [B, c_out, H/s, W/s]`."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.body = nn.Sequential(
            *_conv_bn(c_in, width, 3, stride), nn.ReLU(inplace=True), *_conv_bn(width, c_out, 3)
        )
        self.shortcut = _shortcut(c_in, c_out, stride)
        self.relu = nn.ReLU(inplace=True)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.body[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand x4, + shortcut."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.body = nn.Sequential(
            *_conv_bn(c_in, width, 1),
            nn.ReLU(inplace=True),
            *_conv_bn(width, width, 3, stride),
            nn.ReLU(inplace=True),
            *_conv_bn(width, c_out, 1),
        )
        self.shortcut = _shortcut(c_in, c_out, stride)
        self.relu = nn.ReLU(inplace=True)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.body[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


Block = type[BasicBlock] | type[Bottleneck]


class ResNet(nn.Module):
    """A ResNet trunk with global average pooling.

    Args:
        block: `BasicBlock` (ResNet-18/34) or `Bottleneck` (ResNet-50).
        layers: blocks per stage, e.g. (2, 2, 2, 2).
        stem: "imagenet" (7x7/2 conv + max-pool) or "small" (3x3/1 conv).
        in_chans: input channels (3 for RGB).
        width: channels of the first stage (64 in the paper); stages double it.
        zero_init_residual: start the last BN gamma of every block at 0, so
            each residual block begins as the identity (Goyal et al. 2017);
            this makes early training of deep nets steadier.

    Forward: `x: [B, in_chans, H, W]` -> `[B, embed_dim]` with
    `embed_dim = 8 * width * block.expansion` (512 for ResNet-18/34, 2048 for
    ResNet-50).
    """

    modality = "image"

    def __init__(
        self,
        block: Block,
        layers: tuple[int, ...],
        *,
        stem: Stem = "imagenet",
        in_chans: int = 3,
        width: int = 64,
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise UserError(f"ResNet: stem must be one of {', '.join(STEMS)}, got {stem!r}")
        if in_chans < 1 or width < 1:
            raise UserError(f"ResNet: in_chans and width must be >= 1, got {in_chans}, {width}")
        self.stem_kind = stem
        if stem == "imagenet":
            self.stem = nn.Sequential(
                *_conv_bn(in_chans, width, 7, stride=2),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        else:
            self.stem = nn.Sequential(*_conv_bn(in_chans, width, 3), nn.ReLU(inplace=True))

        stages: list[nn.Module] = []
        c_in = width
        for i, n_blocks in enumerate(layers):
            w = width * 2**i
            blocks = []
            for j in range(n_blocks):
                # Only the first block of stages 2.. halves the resolution.
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(c_in, w, stride))
                c_in = w * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.embed_dim: int = c_in
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # fan_out keeps the backward signal's variance (ReLU nets).
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn.weight)

    def forward_features(self, x: Tensor) -> Tensor:
        """`[B, in_chans, H, W]` -> last feature map `[B, embed_dim, h, w]`."""
        return self.stages(self.stem(x))

    def forward(self, x: Tensor) -> Tensor:
        """`x: [B, in_chans, H, W]` -> `[B, embed_dim]`."""
        # mean over H, W exports to one ReduceMean and works at any input size.
        return torch.mean(self.forward_features(x), dim=(2, 3))


def resnet18(
    *, stem: Stem = "imagenet", in_chans: int = 3, width: int = 64, zero_init_residual: bool = True
) -> ResNet:
    """ResNet-18 (BasicBlock, 2-2-2-2), embed_dim 8 * width (512)."""
    return ResNet(
        BasicBlock, (2, 2, 2, 2), stem=stem, in_chans=in_chans, width=width,
        zero_init_residual=zero_init_residual,
    )


def resnet34(
    *, stem: Stem = "imagenet", in_chans: int = 3, width: int = 64, zero_init_residual: bool = True
) -> ResNet:
    """ResNet-34 (BasicBlock, 3-4-6-3), embed_dim 8 * width (512)."""
    return ResNet(
        BasicBlock, (3, 4, 6, 3), stem=stem, in_chans=in_chans, width=width,
        zero_init_residual=zero_init_residual,
    )


def resnet50(
    *, stem: Stem = "imagenet", in_chans: int = 3, width: int = 64, zero_init_residual: bool = True
) -> ResNet:
    """ResNet-50 (Bottleneck, 3-4-6-3), embed_dim 32 * width (2048)."""
    return ResNet(
        Bottleneck, (3, 4, 6, 3), stem=stem, in_chans=in_chans, width=width,
        zero_init_residual=zero_init_residual,
    )
