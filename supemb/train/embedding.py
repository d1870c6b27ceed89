"""Embedding a split with the trainer's current encoder, and a finished run's final encoder.

`embed_split` is what per-epoch evaluation, stage 2 and the end of a run embed
(sharded over the ranks under torchrun); `embed_run` is `supemb viz`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from supemb.errors import UserError
from supemb.predict.neighbours import embedding_array
from supemb.train import distributed
from supemb.train.config import TrainConfig
from supemb.train.data import EvalDataset
from supemb.train.rundir import RunDir

if TYPE_CHECKING:
    from supemb.train.trainer import Trainer


@torch.no_grad()
def embed_split(t: Trainer, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(raw encoder features [N, D], targets [N], groups [N], head outputs [N, out] or None).

    The evaluation weights (the EMA's, where the run keeps one) on the evaluation transform;
    `embedding_array(features, metric)` turns the features into the served embedding. With
    several ranks each embeds its shard and every rank gets the whole split, in order."""
    split = t.data.splits[name]
    dataset = EvalDataset(split, t.data.eval_transform)
    if t.world.active:
        dataset = torch.utils.data.Subset(dataset, distributed.shard(len(split), t.world))
    loader = torch.utils.data.DataLoader(dataset, batch_size=max(t.cfg.batch_size, 64), shuffle=False,
                                         num_workers=t.workers, pin_memory=t.device.type == "cuda")
    current = None
    if t.ema is not None:
        current = {k: v.clone() for k, v in t.model.state_dict().items()}
        t.model.load_state_dict(t.ema)
    t.model.eval()
    embs, outs = [], []
    for x, _, _ in loader:
        feats = t.model.encoder(x.to(t.device))
        embs.append(feats.float().cpu())
        if not t.cfg.contrastive:
            outs.append(t.model.head(feats).float().cpu())
    if current is not None:
        t.model.load_state_dict(current)
    feats = torch.cat(embs) if embs else torch.zeros(0, t.embed_dim)
    feats = distributed.gather_rows(feats.to(t.device), t.world).cpu()
    head_out = None
    if not t.cfg.contrastive:
        out = torch.cat(outs) if outs else torch.zeros(0, t.targets.out_dim)
        head_out = distributed.gather_rows(out.to(t.device), t.world).cpu().numpy()
    return feats.numpy(), split.targets, split.groups, head_out


def embed_run(out: str | Path, split: str = "val") -> tuple[np.ndarray, np.ndarray, TrainConfig, str]:
    """The final encoder's embeddings of one split of a finished run, in its served geometry:
    (emb [N, D], targets [N], cfg, metric)."""
    from supemb.train.trainer import Trainer

    run = RunDir(out)
    cfg = run.config()
    metric = run.metric()  # an unfinished run (no model.json) stops here, before any data is read
    t = Trainer(cfg, resume=True)
    t._setup()
    if split not in t.data.splits or len(t.data.splits[split]) == 0:
        raise UserError(f"{out}: the data has no {split!r} split")
    run.load_encoder(t.model.encoder)
    t.ema = None  # the saved weights are the ones evaluated (the EMA's, where the run kept one)
    feats, targets, _, _ = t.embed_split(split)
    return embedding_array(feats, metric), targets, cfg, metric
