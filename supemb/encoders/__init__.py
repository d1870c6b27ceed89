"""Encoders and heads.

- `build_encoder(name, **kwargs)` / `ENCODERS`: the explicit registry
  (image: small_cnn, resnet18/34/50 and their `_small`-stem variants; EEG:
  shallow, deep4; `timm:<name>` when timm is installed).
- `ProjectionHead` (stage 1), `LinearHead` (stage 2), `NormalizedEncoder`
  (L2-normalised output, what a cosine bundle's encoder.onnx computes; an
  "l2" bundle's computes the encoder's raw output).
- `export_onnx(module, example_input, path)`: one .onnx file, dynamic batch.

Every encoder is an `nn.Module` with `embed_dim` and `modality` and returns
un-normalised features `[B, embed_dim]`.
"""

from supemb.encoders.eeg import Deep4Net, ShallowConvNet, deep4, eeg_signal_kwargs, shallow
from supemb.encoders.heads import LinearHead, NormalizedEncoder, ProjectionHead
from supemb.encoders.onnx_util import export_onnx, onnx_max_abs_diff
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
    "Encoder",
    "EncoderSpec",
    "LinearHead",
    "Modality",
    "NormalizedEncoder",
    "ProjectionHead",
    "ResNet",
    "ShallowConvNet",
    "SmallCNN",
    "TimmEncoder",
    "build_encoder",
    "deep4",
    "eeg_signal_kwargs",
    "export_onnx",
    "known_encoders",
    "onnx_max_abs_diff",
    "resnet18",
    "resnet34",
    "resnet50",
    "shallow",
    "small_cnn",
]
