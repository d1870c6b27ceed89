"""The end of a run: the serving geometry chosen on validation, the final metrics, and
model.safetensors + model.json (+ the embedding map) written into the run directory.

`finish(trainer)` runs once the encoder is final (after stage 1's best epoch is
loaded and stage 2 is fitted); it returns the "final" line of metrics.jsonl.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from supemb.encoders.heads import LinearHead
from supemb.predict.calibration import coverage_of, uncertainty_scale
from supemb.predict.neighbours import group_mean, nearest_neighbours, predict_inputs
from supemb.train.config import METRICS
from supemb.train.linear_head import fit_probe, linear_metrics
from supemb.train.rundir import summary_line
from supemb.train.selection import KNN_KS, choose_knn, choose_residual, embedding_array

if TYPE_CHECKING:
    from supemb.train.trainer import Trainer


def choose_geometry(t: Trainer) -> dict[str, Any]:
    """The metric (where the loss does not fix it), kNN k and kNN temperature, chosen on
    validation (`supemb.train.selection`); sets the trainer's `metric`, `knn_k`, `knn_temperature`."""
    cfg = t.cfg
    train_feats, train_t, _ = t.frozen_split("train")
    val_feats, val_t, val_groups = t.frozen_split("val")
    t.metric, t.knn_k, t.knn_temperature = choose_knn(
        train_feats, train_t, val_feats, lambda pred: t.targets.item_scores(pred, val_t, val_groups),
        task=cfg.task, n_classes=t.n_classes,
        metrics_tried=[cfg.served_metric] if cfg.served_metric else list(METRICS),
        ks=[cfg.knn_k] if cfg.knn_k else KNN_KS)
    t.model.metric = t.metric
    out = {"metric": t.metric, "knn_k": t.knn_k, "knn_temperature": t.knn_temperature}
    if cfg.task == "regression" and len(val_t):
        t.knn_residual = choose_residual(
            train_feats, train_t, val_feats, lambda pred: t.targets.item_scores(pred, val_t, val_groups),
            metric=t.metric, k=t.knn_k, temperature=t.knn_temperature, ks=[cfg.knn_k] if cfg.knn_k else KNN_KS)
        out["served"] = "residual kNN" if t.knn_residual else "kNN"
    return out


def served_errors(t: Trainer, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(|error| [n], uncertainty [n]) of each input of `split` (an image, or an EEG recording)
    predicted as a bundle serves it: kNN against the train gallery in the chosen metric, k and
    temperature (of the targets, or of a linear head's residuals plus the head: `choose_residual`),
    windows pooled per recording (`predict_inputs`); the uncertainty unscaled."""
    train_feats, train_t, _ = t.frozen_split("train")
    feats, targets, groups = t.frozen_split(split)
    g, q = embedding_array(train_feats, t.metric), embedding_array(feats, t.metric)
    r = t.knn_residual
    k, temp = (r["k"], r["temperature"]) if r else (t.knn_k, t.knn_temperature)
    idx, sim = nearest_neighbours(q, g, min(k, len(g)), metric=t.metric)
    owner = np.unique(groups, return_inverse=True)[1] if t.data.plugin.grouped else np.arange(len(feats))
    n = int(owner.max()) + 1 if len(owner) else 0
    head = (lambda e: e @ np.asarray(r["weight"]) + r["bias"]) if r else (lambda e: np.zeros(len(e)))
    served = predict_inputs(sim, (train_t - head(g))[idx], owner, n, "regression", temperature=temp, offset=head(q))
    return np.abs(served.values - group_mean(targets, owner, n)), served.uncertainty


def calibrate(t: Trainer) -> dict[str, float]:
    """The served ± of a value scaled on validation (`supemb.predict.calibration`), and the share
    of val and test errors it covers ("val_knn_coverage", "test_knn_coverage"); {} for classes."""
    if t.cfg.task != "regression" or len(t.data.splits.get("val", ())) == 0:
        return {}
    served = {split: served_errors(t, split) for split in ("val", "test") if len(t.data.splits.get(split, ()))}
    t.knn_uncertainty_scale = uncertainty_scale(*served["val"])
    out = {"knn_uncertainty_scale": t.knn_uncertainty_scale}
    for split, (err, unc) in served.items():
        out[f"{split}_knn_coverage"] = coverage_of(err, unc * t.knn_uncertainty_scale)
        out[f"{split}_served_mae"] = float(err.mean())  # what a bundle serves (per recording for EEG)
    return out


def served_weights(t: Trainer) -> dict[str, torch.Tensor]:
    """What model.safetensors keeps: encoder.*, head.* (the projection head, if any) and
    linear.* (stage 2's head, or the baseline's own head)."""
    cfg = t.cfg
    state = t._weights_for_eval()
    weights = {k: v for k, v in state.items() if k.startswith("encoder.")}
    if cfg.contrastive:
        weights.update({k: v for k, v in state.items() if k.startswith("head.")})
        if cfg.linear_epochs > 0:
            weights.update({f"linear.{k}": v for k, v in t.linear.state_dict().items()})
    else:
        weights.update({"linear." + k[len("head."):]: v for k, v in state.items() if k.startswith("head.")})
    return weights


def finish(t: Trainer) -> dict[str, Any]:
    """Choose the geometry, evaluate val and test, write the weights, model.json and the map."""
    cfg = t.cfg
    final: dict[str, Any] = {"stage": "final", **choose_geometry(t), **calibrate(t)}
    has_linear = cfg.contrastive and cfg.linear_epochs > 0
    head = t.linear if has_linear else None
    if not cfg.contrastive:  # the baseline's own encoder gets the same converged linear probe
        head = LinearHead(t.embed_dim, t.linear.out_dim).to(t.device)
        final.update(fit_probe(head, t.frozen_split("train"), t.frozen_split("val"), t.targets))
    for split in ("val", "test"):
        if split not in t.data.splits or len(t.data.splits[split]) == 0:
            continue
        final.update(t._evaluate_epoch(split))
        if head is not None:
            final.update(linear_metrics(head, t.frozen_split(split), split, t.targets, t.device))
    t.run_dir.log(final)
    weights = served_weights(t)
    t.run_dir.write_weights(weights)
    t.run_dir.write_model({
        "encoder": t.encoder_name, "encoder_kwargs": t.encoder_kwargs, "embed_dim": t.embed_dim,
        "modality": t.data.modality, "task": cfg.task, "loss": cfg.loss, "target": t.data.target_name,
        "classes": list(t.data.classes), "target_mean": t.targets.mean, "target_std": t.targets.std,
        "knn_k": t.knn_k, "knn_temperature": t.knn_temperature, "knn_residual": t.knn_residual,
        **({"knn_uncertainty_scale": t.knn_uncertainty_scale} if t.knn_uncertainty_scale is not None else {}),
        "has_linear_head": any(k.startswith("linear.") for k in weights),
        "metric": t.metric, "projection": cfg.projection_head,
        "linear_head_input": "encoder output", "augment": t.data.augment_spec,
        "data": t.data.summary,
        "pretrained": t.pretrained,  # the published weights the run started from (None: random init)
    })
    if cfg.viz:
        feats, targets, _ = t.frozen_split("val")
        from supemb.train.viz import embedding_map

        embedding_map(embedding_array(feats, t.metric), targets, t.run_dir.embedding_map,
                      title=f"{cfg.loss}: validation embeddings", metric=t.metric,
                      discrete=cfg.task == "classification", seed=cfg.seed)
    print(summary_line(final), file=sys.stderr)
    return final
