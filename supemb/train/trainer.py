"""The two-stage trainer behind `supemb train`.

Stage 1: encoder (+ projection head), two augmented views per sample, a
contrastive loss (SupCon / RnC / TSC). Where the loss is applied follows each
loss's paper (`TrainConfig.projection`): SupCon and TSC on an MLP projection
that is dropped after stage 1, RnC directly on the encoder output, as in the
RnC reference code.

The served embedding is the geometry the loss shaped (`TrainConfig.served_metric`):
SupCon/TSC compare L2-normalised features ("cosine"); RnC with its default
similarity (negative Euclidean distance) orders the raw encoder output ("l2"),
so that is what kNN evaluation, ordinality, the maps and the exported bundle
use. A baseline's geometry (no contrastive loss shaped it) and every run's
kNN temperature are chosen on the validation split at the end; model.json
records both.

Stage 2: the encoder frozen, a linear head fitted to convergence on its raw
features: ridge regression, or multinomial logistic regression, each with its
regularisation chosen on validation (`supemb.train.probe`). `--loss ce|l1`
trains encoder + linear head end to end instead (one augmented view), on the
same data, augmentation and budget; its frozen encoder then gets the same
converged linear probe, so every comparison is like for like.

The run directory holds:

    config.json           the resolved configuration
    preprocessing.json    what serving must do to an input (from the data module)
    model.json            encoder name/kwargs, embedding size, task, classes, target stats
    model.safetensors     final weights (encoder.*, head.*, linear.*)
    checkpoints/last.pt   resume point (atomic; also written on Ctrl-C)
    checkpoints/best.pt   the best validation epoch of stage 1 / the baseline
    metrics.jsonl         one JSON line per epoch and stage, then the test metrics
    embeddings.png        2-D map of the validation embeddings, coloured by target

Every random draw is a function of the seed, the epoch and the item index
(`supemb.train.data`), and the RNG state is checkpointed, so a run resumed
after an interruption ends with the same weights as one never interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from supemb.errors import UserError
from supemb.losses import RnCLoss, SupConLoss, TargetedSupConLoss
from supemb.encoders.heads import LinearHead, ProjectionHead
from supemb.encoders.registry import build_encoder
from supemb.train import evaluate, probe
from supemb.predict.neighbours import embedding_array
from supemb.train.selection import KNN_KS, choose_knn
from supemb.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from supemb.train.config import METRICS, TrainConfig, save_config
from supemb.train.data import EvalDataset, PreparedData, SeededDataset, epoch_order, prepare_data

# The default recipe per modality: what an unset --encoder, --batch-size and --lr become.
# Chosen on validation splits of synthetic webcams, synthetic faces, synthetic EEG and
# digits, the contrastive loss and its plain baseline alike (docs/recipe.md,
# experiments/recipe.py). The resolved values are written to config.json.
RECIPE: dict[str, dict[str, Any]] = {
    "image": {"encoder": "small_cnn", "encoder_kwargs": {"convs": 2}, "batch_size": 128, "lr": 3e-3},
    "eeg": {"encoder": "shallow", "encoder_kwargs": {}, "batch_size": 64, "lr": 1e-3},
}


class Model(nn.Module):
    """encoder -> embedding; `head` is the projection (contrastive; `nn.Identity` when the loss
    is applied to the encoder output) or the linear head (baseline).

    metric: the geometry served (see `supemb.train.config.METRICS`): "cosine" embeds
    the L2-normalised encoder output, "l2" the raw encoder output."""

    # What `embed` returns per metric, recorded in model.json: serving and export rebuild it from this.
    EMBEDDINGS = {"cosine": "l2-normalised encoder output", "l2": "encoder output"}
    EMBEDDING = EMBEDDINGS["cosine"]  # runs written before the metric was recorded

    def __init__(self, encoder: nn.Module, head: nn.Module, metric: str = "cosine") -> None:
        super().__init__()
        if metric not in self.EMBEDDINGS:
            raise UserError(f"metric must be one of {', '.join(self.EMBEDDINGS)}, got {metric!r}")
        self.encoder, self.head, self.metric = encoder, head, metric

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """x: a batch of inputs -> embeddings `[B, embed_dim]` in the served geometry."""
        return self.embedding_of(self.encoder(x), self.metric)

    @staticmethod
    def embedding_of(features: torch.Tensor, metric: str = "cosine") -> torch.Tensor:
        """Encoder features `[B, embed_dim]` -> the embedding (`embed` without re-running the encoder)."""
        return F.normalize(features, dim=-1) if metric == "cosine" else features


@dataclass
class Position:
    """Where training stands: the next (stage, epoch, step) to run."""

    stage: int = 1
    epoch: int = 0
    step: int = 0  # batches already done in `epoch`


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device torch knows (try cpu or cuda)") from None


# The contrastive temperature an unset --temperature becomes: the one validation picked in
# the temperature study (docs/temperature.md, experiments/temperature.py). TSC keeps SupCon's.
DEFAULT_TEMPERATURE = {"supcon": 0.5, "rnc": 1.0, "tsc": 0.1}  # TSC: not studied, its paper's


def build_loss(cfg: TrainConfig, n_classes: int) -> nn.Module:
    t = {"temperature": cfg.temperature if cfg.temperature is not None else DEFAULT_TEMPERATURE.get(cfg.loss, 1.0)}
    if cfg.loss == "supcon":
        return SupConLoss(**t)
    if cfg.loss == "rnc":
        return RnCLoss(similarity=cfg.similarity or "l2", **t)
    if cfg.loss == "tsc":
        return TargetedSupConLoss(n_classes, cfg.projection_dim, seed=cfg.seed, **t)
    if cfg.loss == "ce":
        return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    return nn.L1Loss()


class Trainer:
    def __init__(self, cfg: TrainConfig, *, resume: bool = False, interrupt_at_step: int | None = None) -> None:
        self.out = Path(cfg.out)
        self.ckpt_dir = self.out / "checkpoints"
        last = self.ckpt_dir / "last.pt"
        if resume and not last.is_file():
            raise UserError(f"{last}: nothing to resume (no checkpoint in {self.out})")
        if not resume and last.is_file():
            raise UserError(f"{self.out}: already holds a training run; pass --resume to continue it "
                            "or choose another --out")
        self.cfg = cfg
        self.resume = resume
        self.interrupt_at_step = interrupt_at_step  # tests: simulate Ctrl-C at this global step
        self.device = resolve_device(cfg.device)
        self.amp = cfg.amp and self.device.type == "cuda"
        self.global_step = 0
        self._frozen: dict[str, tuple] | None = None  # split -> embed_split result, once the encoder is final

    # ---------------------------------------------------------------- setup

    def _setup(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        self.data: PreparedData = prepare_data(cfg)
        self.n_classes = len(self.data.classes)
        recipe = RECIPE[self.data.modality]
        name = cfg.encoder or recipe["encoder"]
        kwargs = {**(recipe["encoder_kwargs"] if cfg.encoder is None else {}), **cfg.encoder_kwargs}
        self.encoder_name = name
        self.encoder_kwargs = {**self.data.encoder_kwargs, **kwargs}
        # config.json records what was resolved (encoder, its settings, batch size, lr, augmentation),
        # so a resumed or repeated run does not depend on later changes of the defaults.
        cfg = self.cfg = self.resolved_cfg = dataclasses.replace(
            cfg, encoder=name, encoder_kwargs=kwargs, augment=self.data.augment_spec or cfg.augment,
            batch_size=cfg.batch_size or recipe["batch_size"], lr=cfg.lr or recipe["lr"],
            temperature=cfg.temperature if cfg.temperature is not None else DEFAULT_TEMPERATURE.get(cfg.loss))
        encoder = build_encoder(name, **self.encoder_kwargs)
        if encoder.modality != self.data.modality:
            raise UserError(f"encoder {name!r} is for {encoder.modality} inputs, but {cfg.data} is {self.data.modality} data")
        self.embed_dim = int(encoder.embed_dim)
        train_targets = self.data.splits["train"].targets
        self.target_mean = float(train_targets.mean()) if cfg.task == "regression" else 0.0
        self.target_std = float(train_targets.std() + 1e-8) if cfg.task == "regression" else 1.0
        out_dim = self.n_classes if cfg.task == "classification" else 1
        if cfg.contrastive:
            head: nn.Module = (ProjectionHead(self.embed_dim, cfg.projection_dim) if cfg.projection_head == "mlp"
                               else nn.Identity())
        else:
            head = LinearHead(self.embed_dim, out_dim)
        # The geometry of the per-epoch kNN evaluation; a baseline's served one is chosen at the end.
        self.metric = cfg.served_metric or "cosine"
        self.knn_k = cfg.knn_k or 10  # per-epoch evaluation; chosen on validation at the end
        self.knn_temperature: float | None = None  # chosen on validation at the end
        self.model = Model(encoder, head, self.metric).to(self.device)
        self.loss_fn = build_loss(cfg, self.n_classes).to(self.device)
        self.linear = LinearHead(self.embed_dim, out_dim).to(self.device)  # stage 2
        params = list(self.model.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.ema = {k: v.detach().clone() for k, v in self.model.state_dict().items()} if cfg.ema_decay else None
        n_train = len(self.data.splits["train"])
        drop_last = cfg.contrastive and n_train > cfg.batch_size
        self.steps_per_epoch = n_train // cfg.batch_size if drop_last else math.ceil(n_train / cfg.batch_size)
        self.drop_last = drop_last
        self.total_steps = max(1, self.steps_per_epoch * cfg.epochs)
        self.warmup_steps = int(cfg.warmup_epochs * self.steps_per_epoch)
        self.best_score = -math.inf
        self.position = Position()

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to 0 over the whole run."""
        if step < self.warmup_steps:
            return self.cfg.lr * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return self.cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    # ----------------------------------------------------------- checkpoints

    def _state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "loss": self.loss_fn.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema,
            "position": [self.position.stage, self.position.epoch, self.position.step],
            "global_step": self.global_step,
            "best_score": self.best_score,
            "rng": rng_state(),
        }

    def _save(self, name: str) -> Path:
        path = self.ckpt_dir / name
        save_checkpoint(self._state(), path)
        return path

    def _restore(self) -> None:
        state = load_checkpoint(self.ckpt_dir / "last.pt", map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.loss_fn.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.ema = state["ema"]
        self.position = Position(*state["position"])
        self.global_step = int(state["global_step"])
        self.best_score = float(state["best_score"])
        set_rng_state(state["rng"])

    # -------------------------------------------------------------- training

    def run(self) -> dict[str, Any]:
        self._setup()
        self.out.mkdir(parents=True, exist_ok=True)
        if self.resume:
            self._restore()
            print(f"resuming {self.out} at stage {self.position.stage}, epoch {self.position.epoch + 1}, "
                  f"step {self.position.step}", file=sys.stderr)
        else:
            save_config(self.resolved_cfg, self.out / "config.json")
            (self.out / "preprocessing.json").write_text(json.dumps(self.data.preprocessing, indent=2) + "\n")
            (self.out / "metrics.jsonl").write_text("")
        if self.position.stage == 1:
            self._stage_one()
            self.position = Position(stage=2)
            self._save("last.pt")
        self._load_best()
        self._frozen = {}  # the encoder no longer changes: embed each split once from here on
        if self.cfg.contrastive and self.cfg.linear_epochs > 0:
            self._stage_two()
        return self._finish()

    def _train_loader(self, epoch: int, skip: int) -> torch.utils.data.DataLoader:
        views = 2 if self.cfg.contrastive else 1
        ds = SeededDataset(self.data.splits["train"], self.data.augment, views, self.cfg.seed)
        ds.epoch = epoch
        order = epoch_order(len(ds), self.cfg.seed, epoch)[skip * self.cfg.batch_size:]
        return torch.utils.data.DataLoader(
            ds, batch_size=self.cfg.batch_size, sampler=order, drop_last=self.drop_last,
            num_workers=self.cfg.num_workers,
        )

    def _stage_one(self) -> None:
        cfg = self.cfg
        what = f"stage 1 ({cfg.loss})" if cfg.contrastive else f"baseline ({cfg.loss}, end to end)"
        for epoch in range(self.position.epoch, cfg.epochs):
            self.model.train()
            self.loss_fn.train()
            skip = self.position.step if epoch == self.position.epoch else 0
            bar = tqdm(self._train_loader(epoch, skip), total=self.steps_per_epoch, initial=skip,
                       desc=f"{what} epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=None, file=sys.stderr)
            running, seen, t0 = 0.0, 0, time.perf_counter()
            step = skip
            try:
                for x, y, _ in bar:
                    if self.interrupt_at_step is not None and self.global_step == self.interrupt_at_step:
                        raise KeyboardInterrupt
                    loss = self._train_step(x, y, epoch, step)
                    step += 1
                    self.position = Position(1, epoch, step)
                    running += loss
                    seen += 1
                    bar.set_postfix(loss=f"{running / seen:.4f}")
            except KeyboardInterrupt:
                path = self._save("last.pt")
                bar.close()
                print(f"interrupted at epoch {epoch + 1}, step {step}: saved {path}; continue with "
                      f"supemb train --resume --out {self.out}", file=sys.stderr)
                raise
            bar.close()
            metrics = self._evaluate_epoch()
            metrics.update(stage=1, epoch=epoch + 1, loss=running / max(seen, 1),
                           lr=self.lr_at(self.global_step - 1), seconds=time.perf_counter() - t0)
            self._log(metrics)
            self.position = Position(1, epoch + 1, 0)
            score = self._score(metrics)
            if score > self.best_score:
                self.best_score = score
                self._save("best.pt")
            self._save("last.pt")
            print(_summary_line(metrics), file=sys.stderr)

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, epoch: int, step: int) -> float:
        cfg = self.cfg
        lr = self.lr_at(self.global_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            if cfg.contrastive:
                b, v = x.shape[:2]
                feats = self.model.head(self.model.encoder(x.flatten(0, 1))).view(b, v, -1)
                loss = self.loss_fn(feats, y)
            else:
                out = self.model.head(self.model.encoder(x))
                if cfg.task == "classification":
                    loss = self.loss_fn(out, y.long())
                else:
                    loss = self.loss_fn(out.squeeze(1), (y.float() - self.target_mean) / self.target_std)
        if not torch.isfinite(loss):
            self._save("last.pt")
            raise UserError(f"the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                            f"try a lower --lr (now {cfg.lr}) or --grad-clip; the run was saved in {self.out}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            with torch.no_grad():
                for k, v in self.model.state_dict().items():
                    if v.is_floating_point():
                        self.ema[k].lerp_(v, 1.0 - cfg.ema_decay)
                    else:
                        self.ema[k].copy_(v)
        self.global_step += 1
        return loss.item()

    # ------------------------------------------------------------ evaluation

    def _weights_for_eval(self) -> dict[str, torch.Tensor]:
        return self.ema if self.ema is not None else self.model.state_dict()

    @torch.no_grad()
    def embed_split(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(raw encoder features [N, D], targets [N], groups [N], head outputs [N, out] or None).

        `embedding_array(features, metric)` turns the features into the served embedding.
        Once the encoder is final (stage 2 and the end), each split is embedded once."""
        if self._frozen is not None and name in self._frozen:
            return self._frozen[name]
        split = self.data.splits[name]
        loader = torch.utils.data.DataLoader(EvalDataset(split, self.data.eval_transform),
                                             batch_size=max(self.cfg.batch_size, 64), shuffle=False,
                                             num_workers=self.cfg.num_workers)
        current = None
        if self.ema is not None:
            current = {k: v.clone() for k, v in self.model.state_dict().items()}
            self.model.load_state_dict(self.ema)
        self.model.eval()
        embs, outs = [], []
        for x, _, _ in loader:
            feats = self.model.encoder(x.to(self.device))
            embs.append(feats.float().cpu())
            if not self.cfg.contrastive:
                outs.append(self.model.head(feats).float().cpu())
        if current is not None:
            self.model.load_state_dict(current)
        head_out = torch.cat(outs).numpy() if outs else None
        result = torch.cat(embs).numpy(), split.targets, split.groups, head_out
        if self._frozen is not None:
            self._frozen[name] = result
        return result

    def _head_predictions(self, out: np.ndarray) -> np.ndarray:
        if self.cfg.task == "classification":
            return out.argmax(1)
        return out[:, 0] * self.target_std + self.target_mean

    def _evaluate_epoch(self, split: str = "val") -> dict[str, Any]:
        train_feats, train_t, _, _ = self.embed_split("train")
        feats, t, groups, head_out = self.embed_split(split)
        metrics = evaluate.embedding_metrics(
            embedding_array(train_feats, self.metric), train_t, embedding_array(feats, self.metric), t, groups,
            self.cfg.task, self.knn_k, self.data.modality == "eeg", metric=self.metric,
            temperature=self._epoch_knn_temperature())
        if head_out is not None:
            metrics.update(evaluate.head_metrics(self._head_predictions(head_out), t, groups, self.cfg.task,
                                                 self.data.modality == "eeg", prefix="head"))
        return {f"{split}_{k}": v for k, v in metrics.items()}

    def _epoch_knn_temperature(self) -> float | None:
        """The kNN weights' temperature: the one chosen on validation once there is one; before,
        the loss's own for an L2 geometry (the scale its softmax works at), else the cosine default."""
        if self.knn_temperature is not None:
            return self.knn_temperature
        if self.metric == "l2" and isinstance(self.loss_fn, RnCLoss):
            return float(self.loss_fn.temperature)
        return None

    def _score(self, metrics: dict[str, Any]) -> float:
        """Higher is better: the metric that picks the best epoch.

        EEG is scored per recording (window predictions averaged), the level it
        is evaluated and served at; images per item.
        """
        key = "head" if not self.cfg.contrastive else "knn"
        if self.cfg.task == "classification":
            return float(metrics[f"val_{key}_acc"])
        rec = f"val_rec_{key}_mae"
        return -float(metrics[rec] if rec in metrics else metrics[f"val_{key}_mae"])

    def _log(self, metrics: dict[str, Any]) -> None:
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics, sort_keys=True) + "\n")

    def _load_best(self) -> None:
        best = self.ckpt_dir / "best.pt"
        if best.is_file():
            state = load_checkpoint(best, map_location=self.device)
            self.model.load_state_dict(state["model"])
            self.ema = state["ema"]

    # --------------------------------------------------------------- stage 2

    def _stage_two(self) -> None:
        """The linear head on the frozen encoder's raw features (computed once: no augmentation)."""
        if self.cfg.head_fit == "sgd":
            self._stage_two_sgd()
            return
        info = self._fit_probe(self.linear)
        val_feats, val_t, val_groups, _ = self.embed_split("val")
        metrics = self._linear_metrics(val_feats, val_t, val_groups, "val")
        metrics.update(stage=2, **info)
        self._log(metrics)
        print(_summary_line(metrics), file=sys.stderr)

    def _probe_score(self, pred: np.ndarray, targets: np.ndarray, groups: np.ndarray) -> float:
        """Higher is better: validation accuracy, or minus the (recording-level for EEG) MAE."""
        m = evaluate.head_metrics(pred, targets, groups, self.cfg.task, self.data.modality == "eeg", prefix="p")
        if self.cfg.task == "classification":
            return m["p_acc"]
        return -m.get("rec_p_mae", m["p_mae"])

    def _fit_probe(self, head: LinearHead) -> dict[str, Any]:
        """Fit `head` to convergence on the frozen encoder (ridge or multinomial logistic
        regression, regularisation chosen on validation); returns what the fit chose."""
        train_feats, train_t, _, _ = self.embed_split("train")
        val_feats, val_t, val_groups, _ = self.embed_split("val")
        if self.cfg.task == "regression":
            fit = probe.fit_ridge(train_feats, train_t, val_feats,
                                  lambda pred: self._probe_score(pred, val_t, val_groups))
            # The head outputs standardised targets (see _head_predictions).
            weight = fit.weight / self.target_std
            bias = (fit.bias - self.target_mean) / self.target_std
            info = {"probe": "ridge", "probe_alpha": fit.alpha, "probe_grad_norm": fit.grad_norm}
        else:
            rows = np.arange(len(val_t))

            def score(probs: np.ndarray) -> float:
                # accuracy; ties (frequent on small splits) go to the better validation likelihood
                loglik = float(np.mean(np.log(np.maximum(probs[rows, val_t.astype(np.int64)], 1e-12))))
                return self._probe_score(probs.argmax(1), val_t, val_groups) + 1e-4 * loglik

            fit = probe.fit_logistic(train_feats, train_t, self.n_classes, val_feats, score)
            weight, bias = fit.weight, fit.bias
            info = {"probe": "logistic", "probe_c": fit.c, "probe_converged": fit.converged,
                    "probe_iterations": fit.n_iter}
        with torch.no_grad():
            head.fc.weight.copy_(torch.as_tensor(weight, dtype=head.fc.weight.dtype))
            head.fc.bias.copy_(torch.as_tensor(bias, dtype=head.fc.bias.dtype))
        return info

    def _stage_two_sgd(self) -> None:
        """The former stage 2: AdamW on the linear head for `linear_epochs` (kept for comparison)."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed + 2)
        train_emb, train_t, _, _ = self.embed_split("train")
        val_emb, val_t, val_groups, _ = self.embed_split("val")
        x = torch.from_numpy(train_emb).to(self.device)
        if cfg.task == "classification":
            y = torch.from_numpy(train_t).long().to(self.device)
            loss_fn: nn.Module = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        else:
            y = ((torch.from_numpy(train_t).float() - self.target_mean) / self.target_std).to(self.device)
            loss_fn = nn.L1Loss()
        opt = torch.optim.AdamW(self.linear.parameters(), lr=cfg.linear_lr, weight_decay=0.0)
        n = x.shape[0]
        steps = max(1, math.ceil(n / cfg.batch_size)) * cfg.linear_epochs
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        g = torch.Generator().manual_seed(cfg.seed + 3)
        for epoch in range(cfg.linear_epochs):
            self.linear.train()
            order = torch.randperm(n, generator=g)
            total = 0.0
            for i in range(0, n, cfg.batch_size):
                idx = order[i:i + cfg.batch_size]
                out = self.linear(x[idx])
                loss = loss_fn(out, y[idx]) if cfg.task == "classification" else loss_fn(out[:, 0], y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(idx)
            metrics = self._linear_metrics(val_emb, val_t, val_groups, "val")
            metrics.update(stage=2, epoch=epoch + 1, loss=total / n)
            self._log(metrics)
        print(_summary_line(metrics), file=sys.stderr)

    @torch.no_grad()
    def _linear_metrics(self, feats: np.ndarray, t: np.ndarray, groups: np.ndarray, split: str,
                        head: LinearHead | None = None) -> dict[str, Any]:
        head = self.linear if head is None else head
        head.eval()
        out = head(torch.from_numpy(feats).to(self.device)).float().cpu().numpy()
        m = evaluate.head_metrics(self._head_predictions(out), t, groups, self.cfg.task,
                                  self.data.modality == "eeg", prefix="linear")
        return {f"{split}_{k}": v for k, v in m.items()}

    # ------------------------------------------------------ serving geometry

    def _choose_geometry(self) -> dict[str, Any]:
        """The metric (where the loss does not fix it), kNN k and kNN temperature, chosen on
        validation (`supemb.train.selection`); sets `self.metric`, `self.knn_k`, `self.knn_temperature`."""
        cfg = self.cfg
        train_feats, train_t, _, _ = self.embed_split("train")
        val_feats, val_t, val_groups, _ = self.embed_split("val")
        self.metric, self.knn_k, self.knn_temperature = choose_knn(
            train_feats, train_t, val_feats, lambda pred: self._probe_score(pred, val_t, val_groups),
            task=cfg.task, n_classes=self.n_classes,
            metrics_tried=[cfg.served_metric] if cfg.served_metric else list(METRICS),
            ks=[cfg.knn_k] if cfg.knn_k else KNN_KS)
        self.model.metric = self.metric
        return {"metric": self.metric, "knn_k": self.knn_k, "knn_temperature": self.knn_temperature}

    # --------------------------------------------------------------- finish

    def _finish(self) -> dict[str, Any]:
        cfg = self.cfg
        final: dict[str, Any] = {"stage": "final", **self._choose_geometry()}
        has_linear = cfg.contrastive and cfg.linear_epochs > 0
        probe_head = None
        if not cfg.contrastive:  # the baseline's own encoder gets the same converged linear probe
            probe_head = LinearHead(self.embed_dim, self.linear.out_dim).to(self.device)
            final.update(self._fit_probe(probe_head))
        for split in ("val", "test"):
            if split not in self.data.splits or len(self.data.splits[split]) == 0:
                continue
            final.update(self._evaluate_epoch(split))
            if has_linear or probe_head is not None:
                feats, t, groups, _ = self.embed_split(split)
                final.update(self._linear_metrics(feats, t, groups, split, probe_head))
        self._log(final)
        # encoder.*, head.* (the projection head, if any) and linear.* (stage 2, or the baseline's head)
        state = self._weights_for_eval()
        weights = {k: v for k, v in state.items() if k.startswith("encoder.")}
        if cfg.contrastive:
            weights.update({k: v for k, v in state.items() if k.startswith("head.")})
            if cfg.linear_epochs > 0:
                weights.update({f"linear.{k}": v for k, v in self.linear.state_dict().items()})
        else:
            weights.update({"linear." + k[len("head."):]: v for k, v in state.items() if k.startswith("head.")})
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(self.out / "model.safetensors"))
        meta = {
            "encoder": self.encoder_name, "encoder_kwargs": self.encoder_kwargs, "embed_dim": self.embed_dim,
            "modality": self.data.modality, "task": cfg.task, "loss": cfg.loss, "target": self.data.target_name,
            "classes": list(self.data.classes), "target_mean": self.target_mean, "target_std": self.target_std,
            "knn_k": self.knn_k, "knn_temperature": self.knn_temperature,
            "has_linear_head": any(k.startswith("linear.") for k in weights),
            "metric": self.metric, "embedding": Model.EMBEDDINGS[self.metric], "projection": cfg.projection_head,
            "linear_head_input": "encoder output", "augment": self.data.augment_spec,
            "data": self.data.summary,
        }
        (self.out / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
        if cfg.viz:
            feats, t, _, _ = self.embed_split("val")
            emb = embedding_array(feats, self.metric)
            from supemb.train.viz import embedding_map

            embedding_map(emb, t, self.out / "embeddings.png", title=f"{cfg.loss}: validation embeddings",
                          metric=self.metric,
                          discrete=cfg.task == "classification", seed=cfg.seed)
        print(_summary_line(final), file=sys.stderr)
        return final


def _summary_line(metrics: dict[str, Any]) -> str:
    keys = [k for k in metrics if any(s in k for s in ("_mae", "_acc", "ordinality", "map_at_r"))]
    body = "  ".join(f"{k}={metrics[k]:.4g}" for k in sorted(keys) if isinstance(metrics[k], (int, float)))
    head = f"stage {metrics.get('stage')} epoch {metrics.get('epoch', '')}".strip()
    loss = f"  loss={metrics['loss']:.4f}" if "loss" in metrics else ""
    return f"{head}{loss}  {body}"


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train as `cfg` says; returns the final metrics."""
    return Trainer(cfg).run()


def load_run_config(out: str | Path) -> TrainConfig:
    path = Path(out) / "config.json"
    if not path.is_file():
        raise UserError(f"{path}: not found; is {out} a supemb training run?")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    if isinstance(d, dict) and "augment" not in d:
        # Runs from before the presets: images used the SimCLR recipe, EEG today's default.
        prep = Path(out) / "preprocessing.json"
        if prep.is_file() and json.loads(prep.read_text()).get("modality") == "image":
            d["augment"] = "simclr"
        for key, old in (("head_fit", "sgd"), ("metric", "cosine")):
            d.setdefault(key, old)  # what those runs did (stage-2 SGD, cosine everywhere)
    return TrainConfig.from_dict(d, source=str(path))


def embed_run(out: str | Path, split: str = "val") -> tuple[np.ndarray, np.ndarray, TrainConfig, str]:
    """The final encoder's embeddings of one split of a finished run, in its served geometry:
    (emb [N, D], targets [N], cfg, metric)."""
    cfg = load_run_config(out)
    weights_path = Path(out) / "model.safetensors"
    if not weights_path.is_file():
        raise UserError(f"{weights_path}: not found; has the run in {out} finished?")
    t = Trainer(cfg, resume=True)
    t._setup()
    if split not in t.data.splits or len(t.data.splits[split]) == 0:
        raise UserError(f"{out}: the data has no {split!r} split")
    from safetensors.torch import load_file

    weights = load_file(str(weights_path))
    encoder = {k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")}
    t.model.encoder.load_state_dict(encoder)
    feats, targets, _, _ = t.embed_split(split)
    meta_path = Path(out) / "model.json"
    metric = json.loads(meta_path.read_text()).get("metric", "cosine") if meta_path.is_file() else "cosine"
    return embedding_array(feats, metric), targets, cfg, metric


def resume_run(out: str | Path) -> dict[str, Any]:
    """Continue the run in `out` with the settings it started with."""
    return Trainer(load_run_config(out), resume=True).run()
