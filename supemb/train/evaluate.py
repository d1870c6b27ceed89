"""Per-epoch evaluation: kNN on embeddings and the predictions of a head.

Thin glue over `supemb.predict.retrieval` (the metrics) and
`supemb.predict.neighbours` (per-recording averages), used by the trainer.
EEG windows also get recording-level metrics ("rec_" keys): window
predictions averaged per recording, as serving does.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from supemb.predict import retrieval
from supemb.predict.neighbours import aggregate_by_group


def embedding_metrics(
    train_emb: np.ndarray, train_targets: np.ndarray, emb: np.ndarray, targets: np.ndarray,
    groups: np.ndarray, task: str, k: int, per_recording: bool,
    metric: str = "cosine", temperature: float | None = None,
) -> dict[str, float]:
    """kNN (queries `emb` [N, D] against the train gallery), retrieval, ordinality.

    metric: "cosine" or "l2", the geometry the embeddings are compared in
    (`supemb.predict.neighbours`); temperature: of the kNN weights, in that
    metric's similarity units (None: the cosine defaults of `embedding_report`)."""
    return retrieval.embedding_report(
        train_emb, train_targets, emb, targets, task, k=k, temperature=temperature,
        val_groups=groups if per_recording else None, metric=metric,
    )


def head_metrics(
    pred: np.ndarray, targets: np.ndarray, groups: np.ndarray, task: str, per_recording: bool, prefix: str,
) -> dict[str, float]:
    """Metrics of a head's predictions `pred` [N] (values, or class ids)."""
    out: dict[str, float] = {}
    if task == "regression":
        out.update({f"{prefix}_{k}": v for k, v in retrieval.regression_metrics(pred, targets).items()})
        if per_recording:
            _, rec_pred = aggregate_by_group(pred, groups)
            _, rec_t = aggregate_by_group(targets, groups)
            out.update({f"rec_{prefix}_{k}": v for k, v in retrieval.regression_metrics(rec_pred, rec_t).items()})
    else:
        out[f"{prefix}_acc"] = retrieval.accuracy(pred, targets)
        out[f"{prefix}_bacc"] = retrieval.balanced_accuracy(pred, targets)
    return {k: float(v) for k, v in out.items() if np.isfinite(v)}


def epoch_score(metrics: dict[str, Any], task: str, contrastive: bool) -> tuple[float, float]:
    """Higher is better: the (figure, tie-break) pair of an epoch's val metrics that picks the best epoch.

    Classification: validation accuracy (the model's head for a baseline, kNN
    for a contrastive run), ties, frequent once a small split is saturated,
    by the validation MAP@R of the embedding, the same for both sides (a later
    epoch that clusters the classes more tightly wins over the first one to
    reach the accuracy). Regression: the MAE, EEG per recording (the level it
    is evaluated and served at), images per item; no tie-break.
    """
    key = "knn" if contrastive else "head"
    if task == "classification":
        tie = float(metrics.get("val_map_at_r", math.nan))
        return float(metrics[f"val_{key}_acc"]), tie if math.isfinite(tie) else -math.inf
    rec = f"val_rec_{key}_mae"
    return -float(metrics[rec] if rec in metrics else metrics[f"val_{key}_mae"]), 0.0


def score_pair(saved: Any) -> tuple[float, float]:
    """A checkpoint's best score as (figure, tie-break); one float (written before ties) has none."""
    if isinstance(saved, (list, tuple)):
        return float(saved[0]), float(saved[1])
    return float(saved), -math.inf
