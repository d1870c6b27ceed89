"""Stage 2: a linear head on the frozen encoder's raw features, fitted, scored and evaluated.

`fit_probe` fits it to convergence (ridge regression, or multinomial logistic
regression; regularisation chosen on validation, `supemb.train.probe`);
`fit_sgd` is the former AdamW stage 2 (`--head-fit sgd`, kept for comparison).
`fit_stage_two` is stage 2 as `TrainConfig.head_fit` says. `Targets` says
what a head predicts and how its predictions are scored.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from supemb.encoders.heads import LinearHead
from supemb.predict.neighbours import aggregate_by_group
from supemb.train import evaluate, probe
from supemb.train.config import TrainConfig

# (raw encoder features [N, D], targets [N], groups [N]) of one split
Split = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Targets:
    """What a head predicts: class logits, or a value standardised by the training targets'
    mean and std; EEG (`per_recording`) is scored per recording, the level it is served at."""

    task: str  # "classification" | "regression"
    n_classes: int
    mean: float = 0.0
    std: float = 1.0
    per_recording: bool = False

    @property
    def out_dim(self) -> int:
        return self.n_classes if self.task == "classification" else 1

    def decode(self, out: np.ndarray) -> np.ndarray:
        """Head outputs `[N, out_dim]` -> predictions `[N]` (class ids, or values in target units)."""
        if self.task == "classification":
            return out.argmax(1)
        return out[:, 0] * self.std + self.mean

    def metrics(self, pred: np.ndarray, targets: np.ndarray, groups: np.ndarray, prefix: str) -> dict[str, float]:
        return evaluate.head_metrics(pred, targets, groups, self.task, self.per_recording, prefix=prefix)

    def item_scores(self, pred: np.ndarray, targets: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """What `score` averages, item by item (per recording for EEG values): 1/0 for a
        right/wrong class, minus the absolute error of a value."""
        if self.task == "classification":
            return (np.asarray(pred) == np.asarray(targets)).astype(np.float64)
        pred, targets = np.asarray(pred, dtype=np.float64), np.asarray(targets, dtype=np.float64)
        if self.per_recording:
            _, pred = aggregate_by_group(pred, groups)
            _, targets = aggregate_by_group(targets, groups)
        return -np.abs(pred - targets)

    def score(self, pred: np.ndarray, targets: np.ndarray, groups: np.ndarray) -> float:
        """Higher is better: accuracy, or minus the (recording-level for EEG) MAE."""
        return float(self.item_scores(pred, targets, groups).mean())


def fit_probe(head: LinearHead, train: Split, val: Split, targets: Targets) -> dict[str, Any]:
    """Fit `head` to convergence on the frozen features; returns what the fit chose (for metrics.jsonl)."""
    train_feats, train_t, _ = train
    val_feats, val_t, val_groups = val
    if targets.task == "regression":
        fit = probe.fit_ridge(train_feats, train_t, val_feats, lambda pred: targets.score(pred, val_t, val_groups))
        # The head outputs standardised targets (see Targets.decode).
        weight = fit.weight / targets.std
        bias = (fit.bias - targets.mean) / targets.std
        info = {"probe": "ridge", "probe_alpha": fit.alpha, "probe_grad_norm": fit.grad_norm}
    else:
        rows = np.arange(len(val_t))

        def score(probs: np.ndarray) -> float:
            # accuracy; ties (frequent on small splits) go to the better validation likelihood
            loglik = float(np.mean(np.log(np.maximum(probs[rows, val_t.astype(np.int64)], 1e-12))))
            return targets.score(probs.argmax(1), val_t, val_groups) + 1e-4 * loglik

        fit = probe.fit_logistic(train_feats, train_t, targets.n_classes, val_feats, score)
        weight, bias = fit.weight, fit.bias
        info = {"probe": "logistic", "probe_c": fit.c, "probe_converged": fit.converged,
                "probe_iterations": fit.n_iter}
    with torch.no_grad():
        head.fc.weight.copy_(torch.as_tensor(weight, dtype=head.fc.weight.dtype))
        head.fc.bias.copy_(torch.as_tensor(bias, dtype=head.fc.bias.dtype))
    return info


@torch.no_grad()
def linear_metrics(head: LinearHead, split: Split, name: str, targets: Targets,
                   device: torch.device) -> dict[str, Any]:
    """The head's metrics on one split, keys `{name}_linear_*` (e.g. val_linear_mae)."""
    feats, t, groups = split
    head.eval()
    out = head(torch.from_numpy(feats).to(device)).float().cpu().numpy()
    m = targets.metrics(targets.decode(out), t, groups, "linear")
    return {f"{name}_{k}": v for k, v in m.items()}


def fit_sgd(head: LinearHead, train: Split, val: Split, targets: Targets, cfg: TrainConfig,
            device: torch.device, log: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """AdamW on `head` for `cfg.linear_epochs` (cosine schedule, seeded order); logs each
    epoch's validation metrics with `log` and returns the last ones."""
    torch.manual_seed(cfg.seed + 2)
    train_feats, train_t, _ = train
    x = torch.from_numpy(train_feats).to(device)
    if targets.task == "classification":
        y = torch.from_numpy(train_t).long().to(device)
        loss_fn: nn.Module = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    else:
        y = ((torch.from_numpy(train_t).float() - targets.mean) / targets.std).to(device)
        loss_fn = nn.L1Loss()
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.linear_lr, weight_decay=0.0)
    n = x.shape[0]
    steps = max(1, math.ceil(n / cfg.batch_size)) * cfg.linear_epochs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    g = torch.Generator().manual_seed(cfg.seed + 3)
    metrics: dict[str, Any] = {}
    for epoch in range(cfg.linear_epochs):
        head.train()
        order = torch.randperm(n, generator=g)
        total = 0.0
        for i in range(0, n, cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            out = head(x[idx])
            loss = loss_fn(out, y[idx]) if targets.task == "classification" else loss_fn(out[:, 0], y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        metrics = linear_metrics(head, val, "val", targets, device)
        metrics.update(stage=2, epoch=epoch + 1, loss=total / n)
        log(metrics)
    return metrics


def fit_stage_two(head: LinearHead, train: Split, val: Split, targets: Targets, cfg: TrainConfig,
                  device: torch.device, log: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Stage 2 as `cfg.head_fit` says ("convex": `fit_probe`, "sgd": `fit_sgd`); logs its
    metrics.jsonl line(s) with `log` and returns the last."""
    if cfg.head_fit == "sgd":
        return fit_sgd(head, train, val, targets, cfg, device, log)
    info = fit_probe(head, train, val, targets)
    metrics = linear_metrics(head, val, "val", targets, device)
    metrics.update(stage=2, **info)
    log(metrics)
    return metrics
