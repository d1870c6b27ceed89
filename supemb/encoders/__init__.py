"""Encoders and heads.

- `build_encoder(name, **kwargs)` / `ENCODERS`: the explicit registry
  (image: small_cnn, resnet18/34/50 and their `_small`-stem variants; EEG:
  shallow, deep4; `timm:<name>` when timm is installed).
- `ProjectionHead` (stage 1), `LinearHead` (stage 2), `EmbeddingModel`
  (inputs -> the served embedding: L2-normalised encoder output for metric
  "cosine", the raw output for "l2"; what a bundle's encoder.onnx computes).
- `export_onnx(module, example_input, path)`: one .onnx file, dynamic batch;
  `parity(module, onnx, x)`: max |ONNX Runtime - PyTorch| at batch 1 and N.

Every encoder is an `nn.Module` with `embed_dim` and `modality` and returns
un-normalised features `[B, embed_dim]`.
"""

from supemb.encoders.eeg import Deep4Net, ShallowConvNet, deep4, eeg_signal_kwargs, shallow
from supemb.encoders.heads import EmbeddingModel, LinearHead, ProjectionHead, embedding_of
from supemb.encoders.onnx_util import HalfPrecision, export_onnx, parity, parity_scale
from supemb.encoders.registry import (
    ENCODERS,
    Encoder,
    EncoderSpec,
    Modality,
    TimmEncoder,
    build_encoder,
    known_encoders,
)
from supemb.encoders.resnet import ResNet, resnet18, resnet34, resnet50
from supemb.encoders.small import SmallCNN, small_cnn

__all__ = [
    "ENCODERS",
    "Deep4Net",
    "EmbeddingModel",
    "Encoder",
    "EncoderSpec",
    "HalfPrecision",
    "LinearHead",
    "Modality",
    "ProjectionHead",
    "ResNet",
    "ShallowConvNet",
    "SmallCNN",
    "TimmEncoder",
    "build_encoder",
    "deep4",
    "eeg_signal_kwargs",
    "embedding_of",
    "export_onnx",
    "known_encoders",
    "parity",
    "parity_scale",
    "resnet18",
    "resnet34",
    "resnet50",
    "shallow",
    "small_cnn",
]
