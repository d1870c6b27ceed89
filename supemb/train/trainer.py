"""The two-stage trainer behind `supemb train`.

Stage 1: encoder (+ projection head), two augmented views per sample, a
contrastive loss (SupCon / RnC / TSC). Where the loss is applied follows each
loss's paper (`TrainConfig.projection`): SupCon and TSC on an MLP projection
that is dropped after stage 1, RnC directly on the encoder output, as in the
RnC reference code. The embedding is always the L2-normalised encoder output
(`Model.embed`); with RnC that is the space the loss orders.

Stage 2: the encoder frozen, a linear head fitted on its embeddings
(cross-entropy with label smoothing, or L1 on standardised targets). `--loss ce|l1` trains encoder + linear head end to end
instead (one augmented view), on the same data, augmentation and budget.

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
from supemb.models.heads import LinearHead, ProjectionHead
from supemb.models.registry import build_encoder
from supemb.train import evaluate
from supemb.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from supemb.train.config import TrainConfig, save_config
from supemb.train.data import EvalDataset, PreparedData, SeededDataset, epoch_order, prepare_data

DEFAULT_ENCODER = {"image": "small_cnn", "eeg": "shallow"}


class Model(nn.Module):
    """encoder -> embedding; `head` is the projection (contrastive; `nn.Identity` when the loss
    is applied to the encoder output) or the linear head (baseline)."""

    # What `embed` returns, recorded in model.json: serving and export rebuild it from this.
    EMBEDDING = "l2-normalised encoder output"

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """x: a batch of inputs -> unit-length embeddings `[B, embed_dim]`."""
        return self.embedding_of(self.encoder(x))

    @staticmethod
    def embedding_of(features: torch.Tensor) -> torch.Tensor:
        """Encoder features `[B, embed_dim]` -> the embedding (`embed` without re-running the encoder)."""
        return F.normalize(features, dim=-1)


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


def build_loss(cfg: TrainConfig, n_classes: int) -> nn.Module:
    t = {} if cfg.temperature is None else {"temperature": cfg.temperature}
    if cfg.loss == "supcon":
        return SupConLoss(**t)
    if cfg.loss == "rnc":
        return RnCLoss(**t)
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

    # ---------------------------------------------------------------- setup

    def _setup(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        self.data: PreparedData = prepare_data(cfg)
        self.n_classes = len(self.data.classes)
        name = cfg.encoder or DEFAULT_ENCODER[self.data.modality]
        self.encoder_name = name
        self.encoder_kwargs = {**self.data.encoder_kwargs, **cfg.encoder_kwargs}
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
        self.model = Model(encoder, head).to(self.device)
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
            save_config(self.cfg, self.out / "config.json")
            (self.out / "preprocessing.json").write_text(json.dumps(self.data.preprocessing, indent=2) + "\n")
            (self.out / "metrics.jsonl").write_text("")
        if self.position.stage == 1:
            self._stage_one()
            self.position = Position(stage=2)
            self._save("last.pt")
        self._load_best()
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
        """(embeddings [N, D], targets [N], groups [N], head outputs [N, out] or None)."""
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
            embs.append(Model.embedding_of(feats).float().cpu())
            if not self.cfg.contrastive:
                outs.append(self.model.head(feats).float().cpu())
        if current is not None:
            self.model.load_state_dict(current)
        head_out = torch.cat(outs).numpy() if outs else None
        return torch.cat(embs).numpy(), split.targets, split.groups, head_out

    def _head_predictions(self, out: np.ndarray) -> np.ndarray:
        if self.cfg.task == "classification":
            return out.argmax(1)
        return out[:, 0] * self.target_std + self.target_mean

    def _evaluate_epoch(self, split: str = "val") -> dict[str, Any]:
        train_emb, train_t, _, _ = self.embed_split("train")
        emb, t, groups, head_out = self.embed_split(split)
        metrics = evaluate.embedding_metrics(train_emb, train_t, emb, t, groups, self.cfg.task,
                                             self.cfg.knn_k, self.data.modality == "eeg")
        if head_out is not None:
            metrics.update(evaluate.head_metrics(self._head_predictions(head_out), t, groups, self.cfg.task,
                                                 self.data.modality == "eeg", prefix="head"))
        return {f"{split}_{k}": v for k, v in metrics.items()}

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
        """Linear head on frozen embeddings (computed once: no augmentation)."""
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
    def _linear_metrics(self, emb: np.ndarray, t: np.ndarray, groups: np.ndarray, split: str) -> dict[str, Any]:
        self.linear.eval()
        out = self.linear(torch.from_numpy(emb).to(self.device)).float().cpu().numpy()
        m = evaluate.head_metrics(self._head_predictions(out), t, groups, self.cfg.task,
                                  self.data.modality == "eeg", prefix="linear")
        return {f"{split}_{k}": v for k, v in m.items()}

    # --------------------------------------------------------------- finish

    def _finish(self) -> dict[str, Any]:
        cfg = self.cfg
        final: dict[str, Any] = {"stage": "final"}
        for split in ("val", "test"):
            if split not in self.data.splits or len(self.data.splits[split]) == 0:
                continue
            final.update(self._evaluate_epoch(split))
            if cfg.contrastive and cfg.linear_epochs > 0:
                emb, t, groups, _ = self.embed_split(split)
                final.update(self._linear_metrics(emb, t, groups, split))
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
            "knn_k": cfg.knn_k, "has_linear_head": any(k.startswith("linear.") for k in weights),
            "embedding": Model.EMBEDDING, "projection": cfg.projection_head,
            "data": self.data.summary,
        }
        (self.out / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
        if cfg.viz:
            emb, t, _, _ = self.embed_split("val")
            from supemb.train.viz import embedding_map

            embedding_map(emb, t, self.out / "embeddings.png", title=f"{cfg.loss}: validation embeddings",
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
        return TrainConfig.from_dict(json.loads(path.read_text()), source=str(path))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None


def embed_run(out: str | Path, split: str = "val") -> tuple[np.ndarray, np.ndarray, TrainConfig]:
    """The final encoder's embeddings of one split of a finished run: (emb [N, D], targets [N], cfg)."""
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
    emb, targets, _, _ = t.embed_split(split)
    return emb, targets, cfg


def resume_run(out: str | Path) -> dict[str, Any]:
    """Continue the run in `out` with the settings it started with."""
    return Trainer(load_run_config(out), resume=True).run()
