"""Loading published weights into our encoders: torchvision ResNet state dicts, and timm's own.

`supemb train --pretrained SOURCE` (`TrainConfig.pretrained`) starts a run
from published weights instead of a random initialisation:

- a file: a torchvision-format ResNet state dict (`torch.save(model.state_dict(),
  path)` of `torchvision.models.resnet18/34/50`), for our ``resnet18/34/50``
  and their ``_small`` variants. ``.safetensors`` files are read with
  safetensors, anything else with `torch.load(..., weights_only=True)`, which
  refuses pickled objects. supemb never downloads the file.
- ``timm``: a ``timm:<name>`` encoder built by `timm.create_model(...,
  pretrained=True)` (`supemb.encoders.registry.build_timm_pretrained`).

torchvision's names -> ours (`torchvision_name` maps ours to theirs)::

    conv1, bn1                                  stem.0, stem.1
    layer{i}.{j}.conv1, bn1, conv2, bn2         stages.{i-1}.{j}.body.0, 1, 3, 4
    layer{i}.{j}.conv3, bn3 (Bottleneck)        stages.{i-1}.{j}.body.6, 7
    layer{i}.{j}.downsample.0, downsample.1     stages.{i-1}.{j}.shortcut.0, 1
    fc.weight, fc.bias                          dropped (we have no classifier)

Every one of our tensors must be in the file with our shape, and the file may
hold nothing else but ``fc.*``; otherwise one line names the file and the first
key that does not fit (with the architecture the file looks like). Files
written before BatchNorm counted its batches lack ``num_batches_tracked``;
those counters keep their initial value.

The small stem (``resnet*_small``, or ``stem="small"``): its 3x3 convolution
cannot take the 7x7 ImageNet one, and the ImageNet ``bn1`` normalises that 7x7
convolution's output, so the whole stem (``conv1.*``, ``bn1.*``) is skipped
and trained from scratch; every layer after it loads. The run records the
skipped keys. No other key is ever skipped.

Preprocessing follows the weights (`normalisation`): a torchvision file was
trained on ImageNet-normalised inputs (`supemb.preprocess.image.IMAGENET_MEAN`
/ `IMAGENET_STD`); a timm model's mean and std come from its pretrained_cfg.
The crop size stays the run's ``--image-size``.
"""

from __future__ import annotations

import hashlib
import importlib
import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from supemb.encoders.registry import TIMM_PREFIX, build_timm_pretrained
from supemb.encoders.resnet import ResNet
from supemb.errors import UserError
from supemb.preprocess.image import IMAGENET_MEAN, IMAGENET_STD

TIMM = "timm"  # the --pretrained value that asks timm for its own weights
CLASSIFIER = "fc."  # torchvision's classifier, which our encoders do not have
# Our block's body index -> torchvision's module name (BasicBlock uses 0-4, Bottleneck 0-7; 2, 5 are ReLUs).
BODY = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2", "6": "conv3", "7": "bn3"}
STEM = {"0": "conv1", "1": "bn1"}
# (blocks per stage, bottleneck) -> the torchvision model a file looks like (for error messages).
KNOWN = {((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), False): "resnet34",
         ((3, 4, 6, 3), True): "resnet50", ((3, 4, 23, 3), True): "resnet101",
         ((3, 8, 36, 3), True): "resnet152"}
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal colour codes in torch's messages
# torch.load(weights_only=True) refusing a pickled object: "Unsupported global: GLOBAL module.Name ..."
_PICKLED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def normalisation(encoder: str | None, pretrained: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the inputs the weights named by `pretrained` were trained on:
    timm's pretrained_cfg for ``timm`` (ImageNet's when it has none), ImageNet's for a file."""
    if pretrained == TIMM:
        cfg = _timm_pretrained_cfg(encoder or "")
        mean, std = _cfg_value(cfg, "mean"), _cfg_value(cfg, "std")
        if mean is not None and std is not None:
            return tuple(float(v) for v in mean), tuple(float(v) for v in std)
    return IMAGENET_MEAN, IMAGENET_STD


def start_from(pretrained: str, encoder: nn.Module, name: str, kwargs: Mapping[str, Any],
               say: Callable[[str], None] = lambda line: None) -> tuple[nn.Module, dict[str, Any]]:
    """`encoder` (built as `name` with `kwargs`) started from `pretrained` (a file or ``timm``).

    Returns (the encoder with the weights, a JSON-friendly record of what was
    loaded: source, file and sha256, tensors loaded, keys skipped and dropped,
    the normalisation); `say` gets one line saying so. A timm encoder is built
    anew by timm with its weights.
    """
    model, record = _load(pretrained, encoder, name, kwargs)
    say(describe(record))
    return model, record


def _load(pretrained: str, encoder: nn.Module, name: str,
          kwargs: Mapping[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    if pretrained == TIMM:
        model = build_timm_pretrained(name, **kwargs)
        cfg = getattr(model.model, "pretrained_cfg", None)
        mean, std = normalisation(name, TIMM)
        size = _cfg_value(cfg, "input_size")
        return model, {"source": "timm", "model": name[len(TIMM_PREFIX):], "mean": list(mean), "std": list(std),
                       "pretrained_input_size": [int(v) for v in size] if size is not None else None}
    path = Path(pretrained)
    if name.startswith(TIMM_PREFIX):
        raise UserError(f"{path}: --pretrained FILE loads torchvision ResNet weights; for encoder {name} "
                        f"use --pretrained {TIMM} (timm's own weights)")
    if not isinstance(encoder, ResNet):
        raise UserError(f"{path}: --pretrained FILE loads torchvision ResNet weights into resnet18/34/50 "
                        f"(or their _small variants), not into encoder {name!r}")
    state, fmt = read_state_dict(path)
    record = load_torchvision_resnet(encoder, state, path, name)
    return encoder, {"source": "torchvision", "file": str(path), "format": fmt, "sha256": sha256_of(path),
                     **record, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def describe(record: Mapping[str, Any]) -> str:
    """One line for the terminal: where the run starts from."""
    if record["source"] == "timm":
        return f"starting from timm's pretrained {record['model']} (mean {record['mean']}, std {record['std']})"
    skipped = f", skipped {len(record['skipped'])} ({record['skip_rule']})" if record["skipped"] else ""
    return (f"starting from {record['file']} (sha256 {record['sha256'][:12]}...): "
            f"{record['loaded']} tensors loaded{skipped}, dropped {', '.join(record['dropped']) or 'nothing'}")


# ------------------------------------------------------------ torchvision files


def read_state_dict(path: Path) -> tuple[dict[str, Tensor], str]:
    """The tensors of `path` and its format ("safetensors" or "torch"); never unpickles objects.

    `UserError` (one line naming the file) for a missing or unreadable file, a
    pickled object, or anything but a flat mapping of names to tensors."""
    if not path.is_file():
        raise UserError(f"{path}: pretrained weights not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path)), "safetensors"
        except (SafetensorError, OSError, ValueError) as err:
            raise UserError(f"{path}: cannot read the safetensors file ({_first_line(err)})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickled objects (refused), truncated or foreign files
        text = _ANSI.sub("", str(err))
        pickled = _PICKLED_GLOBAL.search(text) if isinstance(err, pickle.UnpicklingError) else None
        if pickled:
            raise UserError(f"{path}: not a plain state dict (it holds pickled Python objects, e.g. {pickled[1]}, "
                            f"which supemb does not load; save model.state_dict() instead)") from None
        raise UserError(f"{path}: not a plain torch tensor file; torch.load(weights_only=True) refused it "
                        f"({type(err).__name__}: {_torch_reason(text, type(err).__name__)})") from None
    if not isinstance(state, Mapping):
        raise UserError(f"{path}: expected a state dict (names -> tensors), as "
                        f"torch.save(model.state_dict(), path) writes, got {type(state).__name__}")
    for key, value in state.items():
        if not isinstance(key, str):
            raise UserError(f"{path}: expected a state dict (names -> tensors); key {key!r} is not a name "
                            f"({type(key).__name__})")
        if not isinstance(value, Tensor):
            raise UserError(f"{path}: expected a state dict (names -> tensors); key {key!r} holds "
                            f"{type(value).__name__}")
    return dict(state), "torch"


def _torch_reason(text: str, fallback: str) -> str:
    """The gist of a torch.load error, on one line: torch's own reason after its advice
    ("WeightsUnpickler error: ..."), else its first non-empty line."""
    _, found, reason = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (reason if found else text).splitlines() if line.strip()]
    return lines[0] if lines else fallback


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def torchvision_name(ours: str) -> str:
    """Our ResNet state-dict key -> torchvision's (see the module docstring), e.g.
    ``stages.1.0.shortcut.0.weight`` -> ``layer2.0.downsample.0.weight``."""
    parts = ours.split(".")
    if parts[0] == "stem":
        return ".".join([STEM[parts[1]], *parts[2:]])
    _, stage, block, part, index, *param = parts  # stages.{i}.{j}.body|shortcut.{k}.{param}
    module = BODY[index] if part == "body" else f"downsample.{index}"
    return ".".join([f"layer{int(stage) + 1}", block, module, *param])


def load_torchvision_resnet(encoder: ResNet, state: Mapping[str, Tensor], path: Path,
                            name: str) -> dict[str, Any]:
    """Copy torchvision-named `state` into `encoder` (in place) by the mapping and the
    small-stem rule above. Returns {"loaded": tensors copied, "skipped": torchvision keys
    not loaded, "skip_rule", "dropped": the classifier keys}; `UserError` if it does not fit."""
    ours = encoder.state_dict()
    small = encoder.stem_kind == "small"
    looks = _looks_like(state)
    new: dict[str, Tensor] = {}
    skipped: list[str] = []
    for key, value in ours.items():
        theirs = torchvision_name(key)
        if small and key.startswith("stem."):
            if theirs in state:
                skipped.append(theirs)
            continue
        if theirs not in state:
            if key.endswith("num_batches_tracked"):
                continue  # files from before BatchNorm counted batches
            raise UserError(f"{path}: not torchvision {name} weights: {theirs} is missing{looks}")
        if tuple(state[theirs].shape) != tuple(value.shape):
            raise UserError(f"{path}: not torchvision {name} weights: {theirs} has shape "
                            f"{list(state[theirs].shape)}, {name} expects {list(value.shape)}{looks}")
        new[key] = state[theirs]
    expected = {torchvision_name(k) for k in ours}
    extra = [k for k in state if k not in expected and not k.startswith(CLASSIFIER)]
    if extra:
        raise UserError(f"{path}: not torchvision {name} weights: unexpected key {extra[0]}{looks}")
    for key, tensor in new.items():
        ours[key] = tensor.to(ours[key].dtype)
    encoder.load_state_dict(ours)
    return {"loaded": len(new), "skipped": skipped,
            "skip_rule": "small stem: conv1 and bn1 start fresh" if skipped else None,
            "dropped": sorted(k for k in state if k.startswith(CLASSIFIER))}


def _looks_like(state: Mapping[str, Tensor]) -> str:
    """' (the file looks like resnet50 weights)', or what it lacks, for an error message."""
    blocks: dict[int, int] = {}
    for key in state:
        m = re.match(r"layer([1-4])\.(\d+)\.", key)
        if m:
            blocks[int(m[1])] = max(blocks.get(int(m[1]), 0), int(m[2]) + 1)
    if not blocks:
        return " (the file holds no torchvision ResNet: no layer1-4 keys)"
    bottleneck = any(".conv3." in k for k in state)
    found = KNOWN.get((tuple(blocks.get(i, 0) for i in range(1, 5)), bottleneck))
    return f" (the file looks like {found} weights)" if found else ""


# --------------------------------------------------------------------- timm


def _timm_pretrained_cfg(encoder: str) -> Any:
    """timm's pretrained_cfg of a ``timm:<name>`` encoder (a dict or timm's PretrainedCfg), or None."""
    if not encoder.startswith(TIMM_PREFIX):
        raise UserError(f"--pretrained {TIMM} needs a {TIMM_PREFIX}<name> encoder, not {encoder!r}")
    model_name = encoder[len(TIMM_PREFIX):]
    try:
        timm = importlib.import_module("timm")
    except ImportError:
        raise UserError(f"encoder {encoder} needs timm, which is not installed: pip install supemb[timm]") from None
    get = getattr(timm, "get_pretrained_cfg", None) or getattr(getattr(timm, "models", None),
                                                               "get_pretrained_cfg", None)
    if get is None:
        return None
    try:
        return get(model_name)
    except RuntimeError as err:  # an unknown pretrained tag
        raise UserError(f"encoder {encoder}: {_first_line(err)}") from None


def _cfg_value(cfg: Any, key: str) -> Any:
    if cfg is None:
        return None
    return cfg.get(key) if isinstance(cfg, Mapping) else getattr(cfg, key, None)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
