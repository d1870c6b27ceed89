"""The encoder registry: one explicit dict from name to how to build it.

Nothing registers itself on import; adding an encoder means adding a line to
`ENCODERS`. `build_encoder(name, **kwargs)` checks the keyword arguments
against the factory's signature, so a typo in a config file is a clear
`UserError` instead of a `TypeError` deep inside a constructor.

Names:

- image (`[B, 3, H, W]`): ``small_cnn``, ``resnet18``, ``resnet34``,
  ``resnet50`` (ImageNet stem by default, ``stem="small"`` to change it), and
  ``resnet18_small``, ``resnet34_small``, ``resnet50_small``: the same with
  the small (3x3, no max-pool) stem as default, for 32-64 px inputs.
- EEG (`[B, n_chans, n_times]`): ``shallow``, ``deep4``; they require
  ``n_chans``, ``n_times`` and ``sfreq`` (see `eeg_signal_kwargs`).
- ``timm:<model name>``: any timm model, if timm is installed (``pip install
  supemb[timm]``); `build_encoder` builds it without weights, and
  `build_timm_pretrained` (what ``--pretrained timm`` uses, through
  `supemb.encoders.pretrained`) with timm's own pretrained weights.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Literal, Mapping, Protocol, runtime_checkable

from torch import Tensor, nn

from supemb.encoders.eeg import deep4, shallow
from supemb.encoders.resnet import resnet18, resnet34, resnet50
from supemb.encoders.small import small_cnn
from supemb.errors import UserError

Modality = Literal["image", "eeg"]
TIMM_PREFIX = "timm:"


@runtime_checkable
class Encoder(Protocol):
    """What every built encoder is: an `nn.Module` with these two attributes.

    embed_dim: size of the output features.
    modality: "image" (input `[B, C, H, W]`) or "eeg" (`[B, n_chans, n_times]`).
    Calling it returns un-normalised features `[B, embed_dim]`.
    """

    embed_dim: int
    modality: str

    def __call__(self, x: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class EncoderSpec:
    """How to build one registered encoder.

    factory: a function taking keyword-only arguments and returning the module.
    modality: what input it takes.
    summary: one line for `--help` and error messages.
    defaults: keyword arguments applied before the caller's (which win).
    """

    factory: Callable[..., nn.Module]
    modality: Modality
    summary: str
    defaults: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def arguments(self) -> dict[str, inspect.Parameter]:
        return dict(inspect.signature(self.factory).parameters)

    def required(self) -> list[str]:
        """Keyword arguments that have no default (the EEG signal contract)."""
        return [
            n for n, p in self.arguments().items()
            if p.default is inspect.Parameter.empty and n not in self.defaults
        ]


def _spec(factory: Callable[..., nn.Module], modality: Modality, summary: str, **defaults: Any) -> EncoderSpec:
    return EncoderSpec(factory, modality, summary, MappingProxyType(defaults))


ENCODERS: dict[str, EncoderSpec] = {
    "small_cnn": _spec(small_cnn, "image", "3 conv-BN-ReLU blocks, ~94k params, 128-d; fast on CPU"),
    "resnet18": _spec(resnet18, "image", "ResNet-18, 512-d, ImageNet stem (stem='small' for 32-64 px)"),
    "resnet34": _spec(resnet34, "image", "ResNet-34, 512-d, ImageNet stem (stem='small' for 32-64 px)"),
    "resnet50": _spec(resnet50, "image", "ResNet-50, 2048-d, ImageNet stem (stem='small' for 32-64 px)"),
    "resnet18_small": _spec(resnet18, "image", "ResNet-18, 512-d, 3x3 stem without max-pool", stem="small"),
    "resnet34_small": _spec(resnet34, "image", "ResNet-34, 512-d, 3x3 stem without max-pool", stem="small"),
    "resnet50_small": _spec(resnet50, "image", "ResNet-50, 2048-d, 3x3 stem without max-pool", stem="small"),
    "shallow": _spec(shallow, "eeg", "ShallowConvNet-style EEG encoder (log band power), 128-d"),
    "deep4": _spec(deep4, "eeg", "Deep4-style EEG encoder (4 conv-pool blocks), 128-d"),
}


def known_encoders() -> list[str]:
    """Registered names, plus the timm pattern."""
    return [*ENCODERS, f"{TIMM_PREFIX}<name>"]


def build_encoder(name: str, **kwargs: Any) -> nn.Module:
    """Build the encoder `name` (see the module docstring) with `kwargs`.

    Returns an `nn.Module` satisfying `Encoder` (has `embed_dim`, `modality`),
    freshly initialised (never pretrained). Raises `UserError` for an unknown
    name, an unknown or missing keyword argument, or a bad value.
    """
    if name.startswith(TIMM_PREFIX):
        return _build_timm(name[len(TIMM_PREFIX):], kwargs)
    spec = ENCODERS.get(name)
    if spec is None:
        raise UserError(f"unknown encoder {name!r}; known encoders: {', '.join(known_encoders())}")
    accepted = spec.arguments()
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise UserError(
            f"encoder {name!r}: unknown argument(s) {', '.join(unknown)}; "
            f"it accepts {', '.join(accepted) or 'none'}"
        )
    missing = [n for n in spec.required() if n not in kwargs]
    if missing:
        raise UserError(f"encoder {name!r} needs {', '.join(missing)} (the {spec.modality} signal contract)")
    model = spec.factory(**{**spec.defaults, **kwargs})
    # A factory that forgets the contract is a bug, not a user error.
    assert isinstance(model, Encoder) and model.modality == spec.modality, name
    return model


class TimmEncoder(nn.Module):
    """A timm model built with num_classes=0, so it returns pooled features.

    Forward: `x: [B, C, H, W]` -> `[B, embed_dim]` with embed_dim the model's
    `num_features`.
    """

    modality = "image"

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        self.model = model
        self.timm_name = name
        self.embed_dim: int = int(model.num_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def build_timm_pretrained(name: str, **kwargs: Any) -> TimmEncoder:
    """The timm encoder `name` (``timm:<model name>``) with timm's pretrained weights:
    `timm.create_model(..., pretrained=True)` with the Hugging Face hub offline, so they come from
    timm's cache (put there beforehand by timm on a machine with network); supemb never downloads.
    `UserError` for a name without the prefix or weights that are not cached."""
    if not name.startswith(TIMM_PREFIX):
        raise UserError(f"encoder {name!r}: timm's pretrained weights need a {TIMM_PREFIX}<name> encoder")
    return _build_timm(name[len(TIMM_PREFIX):], kwargs, pretrained=True)


def _timm_module(model_name: str) -> Any:
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise UserError(
            f"encoder {TIMM_PREFIX}{model_name} needs timm, which is not installed: "
            f"pip install supemb[timm]"
        ) from None


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """The Hugging Face hub (where timm's weights live) told to use its cache only."""
    before = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({k: "1" for k in before})
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _build_timm(model_name: str, kwargs: dict[str, Any], pretrained: bool = False) -> TimmEncoder:
    if not model_name:
        raise UserError(f"encoder {TIMM_PREFIX!r} needs a model name, e.g. {TIMM_PREFIX}resnet18")
    timm = _timm_module(model_name)
    # pretrained is not an encoder setting: only `build_timm_pretrained` (--pretrained timm) asks for it.
    for forced in ("pretrained", "num_classes"):
        if forced in kwargs:
            raise UserError(f"encoder {TIMM_PREFIX}{model_name}: {forced} cannot be set (it is fixed)")
    try:
        with _offline():
            model = timm.create_model(model_name, pretrained=pretrained, num_classes=0, **kwargs)
    except RuntimeError as e:  # timm's "Unknown model (...)"
        raise UserError(f"encoder {TIMM_PREFIX}{model_name}: {e}") from None
    except (OSError, ValueError) as e:  # pretrained weights not in timm's cache and not fetchable
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"encoder {TIMM_PREFIX}{model_name}: timm's pretrained weights are not in its cache "
                        f"and supemb does not download ({first}); fetch them once with timm where there is "
                        "network, or pass --pretrained FILE") from None
    return TimmEncoder(model, model_name)
