"""The training losses by name: what each is for and how to build it.

`LOSSES` is the one list of loss names `supemb train --loss` accepts; the
config's checks, the trainer's loss factory and the CLI choices all read it.

    spec = LOSSES["rnc"]
    spec.task, spec.contrastive, spec.projection, spec.temperature
    loss = build_loss(cfg, n_classes)      # cfg: anything with LossParams' fields

Importing this module does not import torch (so `supemb --help` stays fast):
the factories import their loss when called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from torch import nn

Task = Literal["classification", "regression"]


class LossParams(Protocol):
    """The settings a loss factory reads (`supemb.train.config.TrainConfig` has them all)."""

    loss: str
    temperature: float | None  # None: the loss's default (`LossSpec.temperature`)
    similarity: str | None  # RnC's feature similarity; None: "l2"
    projection_dim: int  # TSC places its class targets in the projection space
    label_smoothing: float  # ce
    seed: int  # TSC's target placement


@dataclass(frozen=True)
class LossSpec:
    """One training loss.

    factory: (params, n_classes) -> the loss module, with `temperature` already resolved.
    task: what its targets are.
    contrastive: True: stage 1 of the two-stage recipe on two views, `[B, V, D]` features;
        False: an end-to-end baseline on the encoder + linear head's output.
    projection: stage 1's head between encoder and loss, following each loss's paper:
        "mlp" (SupCon, TSC: dropped after stage 1) or "none" (RnC: the encoder output itself;
        also the baselines, which have no stage 1 head).
    temperature: what an unset --temperature becomes (None: the loss has none).
    metric: the geometry the loss shapes, served unless --metric says otherwise: "cosine"
        (L2-normalised encoder output) or "l2" (raw; RnC with its default similarity); None
        for the baselines, whose geometry is chosen on validation.
    summary: one line for help texts.
    """

    factory: Callable[[LossParams, int, float | None], nn.Module]
    task: Task
    contrastive: bool
    projection: Literal["mlp", "none"]
    temperature: float | None
    metric: Literal["cosine", "l2"] | None
    summary: str


def _supcon(p: LossParams, n_classes: int, temperature: float | None) -> nn.Module:
    from supemb.losses.supcon import SupConLoss

    return SupConLoss(temperature=temperature)


def _rnc(p: LossParams, n_classes: int, temperature: float | None) -> nn.Module:
    from supemb.losses.rnc import RnCLoss

    return RnCLoss(similarity=p.similarity or "l2", temperature=temperature)


def _tsc(p: LossParams, n_classes: int, temperature: float | None) -> nn.Module:
    from supemb.losses.tsc import TargetedSupConLoss

    return TargetedSupConLoss(n_classes, p.projection_dim, seed=p.seed, temperature=temperature)


def _ce(p: LossParams, n_classes: int, temperature: float | None) -> nn.Module:
    from torch import nn

    return nn.CrossEntropyLoss(label_smoothing=p.label_smoothing)


def _l1(p: LossParams, n_classes: int, temperature: float | None) -> nn.Module:
    from torch import nn

    return nn.L1Loss()


# The default temperatures are the ones validation picked in the temperature study
# (docs/temperature.md, experiments/temperature.py); TSC's was not studied: its paper's.
LOSSES: dict[str, LossSpec] = {
    "supcon": LossSpec(_supcon, task="classification", contrastive=True, projection="mlp", temperature=1.0,
                       metric="cosine", summary="supervised contrastive (classes; Khosla et al. 2020)"),
    "rnc": LossSpec(_rnc, task="regression", contrastive=True, projection="none", temperature=1.0,
                    metric="l2", summary="Rank-N-Contrast / SupCR (values; Zha et al. 2023)"),
    "tsc": LossSpec(_tsc, task="classification", contrastive=True, projection="mlp", temperature=0.1,
                    metric="cosine", summary="targeted supervised contrastive (long-tailed classes; Li et al. 2022)"),
    "ce": LossSpec(_ce, task="classification", contrastive=False, projection="none", temperature=None,
                   metric=None, summary="cross-entropy, end to end (baseline for classes)"),
    "l1": LossSpec(_l1, task="regression", contrastive=False, projection="none", temperature=None,
                   metric=None, summary="L1, end to end (baseline for values)"),
}


def default_temperature(loss: str) -> float | None:
    """What an unset --temperature becomes for `loss` (None for the baselines)."""
    return LOSSES[loss].temperature


def build_loss(params: LossParams, n_classes: int) -> nn.Module:
    """The loss module `params.loss` names, with its temperature (params' or the default)."""
    spec = LOSSES[params.loss]
    temperature = params.temperature if params.temperature is not None else spec.temperature
    return spec.factory(params, n_classes, temperature)
