"""Per-epoch evaluation: kNN on embeddings and the predictions of a head.

Thin glue over `supemb.predict.retrieval` (the metrics) and
`supemb.predict.neighbours` (per-recording averages), used by the trainer.
EEG windows also get recording-level metrics ("rec_" keys): window
predictions averaged per recording, as serving does.
"""

from __future__ import annotations

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
