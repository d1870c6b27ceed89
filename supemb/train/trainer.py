"""The two-stage trainer behind `supemb train`: it runs stage 1 and drives the rest.

Stage 1: encoder (+ projection head), two augmented views per sample, a
contrastive loss (SupCon / RnC / TSC; `supemb.losses.registry`), applied where
each loss's paper applies it (`TrainConfig.projection_head`): SupCon and TSC on
an MLP projection dropped after stage 1, RnC on the encoder output itself.
`--loss ce|l1` trains encoder + linear head end to end instead (one augmented
view), on the same data, augmentation and budget.

The embedding evaluated each epoch is in the geometry the loss shaped
(`TrainConfig.served_metric`: SupCon/TSC "cosine", RnC "l2" with its default
similarity). Stage 2 (`supemb.train.linear_head`) fits a linear head to
convergence on the frozen encoder's raw features; a baseline's frozen encoder
gets the same probe, so every comparison is like for like. The end of a run
(`supemb.train.final`) chooses the geometry (baselines) and kNN settings on
validation and writes the weights and model.json into the run directory
(`supemb.train.rundir`).

Every random draw is a function of the seed, the epoch and the item index
(`supemb.train.data`) and the RNG state is checkpointed, so a resumed run ends
with the weights of an uninterrupted one. Under torchrun every rank runs this
code on its slice of the global batch (`supemb.train.distributed`).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from supemb.encoders.heads import LinearHead, ProjectionHead
from supemb.encoders.pretrained import start_from
from supemb.encoders.registry import build_encoder
from supemb.errors import UserError
from supemb.losses.registry import build_loss
from supemb.losses.rnc import RnCLoss
from supemb.predict.neighbours import embedding_array
from supemb.train import distributed, evaluate
from supemb.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from supemb.train.config import TrainConfig, resolve_defaults
from supemb.train.data import EpochBatches, PreparedData, SeededDataset, prepare_data, worker_errors
from supemb.train.embedding import embed_split
from supemb.train.interrupt import StepBoundary
from supemb.train.final import finish
from supemb.train.linear_head import Targets, fit_stage_two
from supemb.train.model import Model, Position, TrainForward
from supemb.train.rundir import RunDir, load_run_config, summary_line
from supemb.train.world import World


class Trainer:
    """One run of `cfg` into `cfg.out` (`run()`), or, with `resume`, the continuation of one."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, interrupt_at_step: int | None = None) -> None:
        self.run_dir = RunDir(cfg.out)
        self.out = self.run_dir.path
        self.world = World.from_env()  # torchrun's processes; a world of one otherwise
        last = self.run_dir.last
        if self.world.main:  # the run directory is rank 0's (other machines may not see it)
            if resume and not last.is_file():
                raise UserError(f"{last}: nothing to resume (no checkpoint in {self.out})")
            if not resume and last.is_file():
                raise UserError(f"{self.out}: already holds a training run; pass --resume to continue it "
                                "or choose another --out")
        self.cfg = cfg
        self.resume = resume
        self.interrupt_at_step = interrupt_at_step  # tests: simulate Ctrl-C at this global step
        self.device = distributed.start(self.world, cfg.device, cfg.dist_timeout)
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
        # config.json records what was resolved (encoder, its settings, batch size, lr, augmentation),
        # so a resumed or repeated run does not depend on later changes of the defaults.
        cfg = self.cfg = self.resolved_cfg = resolve_defaults(cfg, self.data.plugin.recipe, self.data.augment_spec)
        name = self.encoder_name = cfg.encoder
        self.encoder_kwargs = {**self.data.encoder_kwargs, **cfg.encoder_kwargs}
        encoder = build_encoder(name, **self.encoder_kwargs)
        self.pretrained: dict[str, Any] | None = None  # what --pretrained loaded; model.json records it
        if cfg.pretrained and not self.resume:  # a resumed run continues from its checkpoint instead
            encoder, self.pretrained = start_from(cfg.pretrained, encoder, name, self.encoder_kwargs, self._say)
        if encoder.modality != self.data.modality:
            raise UserError(f"encoder {name!r} is for {encoder.modality} inputs, but {cfg.data} is {self.data.modality} data")
        self.embed_dim = int(encoder.embed_dim)
        train_targets = self.data.splits["train"].targets
        regression = cfg.task == "regression"
        self.targets = Targets(cfg.task, self.n_classes,
                               mean=float(train_targets.mean()) if regression else 0.0,
                               std=float(train_targets.std() + 1e-8) if regression else 1.0,
                               per_recording=self.data.plugin.grouped)
        out_dim = self.targets.out_dim
        if cfg.contrastive:
            head: nn.Module = (ProjectionHead(self.embed_dim, cfg.projection_dim) if cfg.projection_head == "mlp"
                               else nn.Identity())
        else:
            head = LinearHead(self.embed_dim, out_dim)
        # The geometry of the per-epoch kNN evaluation; a baseline's served one is chosen at the end.
        self.metric = cfg.served_metric or "cosine"
        self.knn_k = cfg.knn_k or 10  # per-epoch evaluation; chosen on validation at the end
        self.knn_temperature: float | None = None  # chosen on validation at the end, as are (values only)
        self.knn_uncertainty_scale, self.knn_residual = None, None  # the served ± scale; the residual kNN, if chosen
        model = Model(encoder, head, self.metric)
        if self.world.active and self.device.type == "cuda" and cfg.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # BatchNorm over the global batch
        self.model = model.to(self.device)
        self.forward = TrainForward(self.model)
        if self.world.active:  # gradients averaged over the ranks (see supemb.train.distributed)
            self.forward = nn.parallel.DistributedDataParallel(
                self.forward, device_ids=[self.device] if self.device.type == "cuda" else None)
        self.loss_fn = build_loss(cfg, self.n_classes).to(self.device)
        self.linear = LinearHead(self.embed_dim, out_dim).to(self.device)  # stage 2
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.ema = {k: v.detach().clone() for k, v in self.model.state_dict().items()} if cfg.ema_decay else None
        n_train = len(self.data.splits["train"])
        drop_last = cfg.contrastive and n_train > cfg.batch_size

        def batches_of(order: list[int]) -> list[list[int]]:  # this rank's slice of each global batch
            return distributed.rank_batches(order, cfg.batch_size, self.world, drop_last)

        self.sampler = EpochBatches(n_train, cfg.seed, batches_of)
        self.steps_per_epoch = len(batches_of(list(range(n_train))))
        if self.steps_per_epoch == 0:
            raise UserError(f"{cfg.data}: {n_train} training items make no full global batch of "
                            f"{cfg.batch_size}; lower --batch-size")
        self.workers = cfg.num_workers if cfg.num_workers is not None else distributed.default_workers(self.world)
        views = 2 if cfg.contrastive else 1
        self.train_loader = torch.utils.data.DataLoader(
            SeededDataset(self.data.splits["train"], self.data.augment, views, cfg.seed),
            batch_sampler=self.sampler, num_workers=self.workers, persistent_workers=self.workers > 0,
            pin_memory=self.device.type == "cuda")
        self.total_steps = max(1, self.steps_per_epoch * cfg.epochs)
        self.warmup_steps = int(cfg.warmup_epochs * self.steps_per_epoch)
        for notice in self.data.notices:  # once the setup has succeeded: an error stays one line
            self._say(notice)
        self.best_score: tuple[float, float] = (-math.inf, -math.inf)
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
            "position": [self.position.stage, self.position.epoch, self.position.step, self.position.loss_sum],
            "global_step": self.global_step,
            "best_score": list(self.best_score),
            "rng": rng_state(),
            "world_size": self.world.size, "pretrained": self.pretrained,
        }

    def _save(self, path: Path) -> Path:
        if self.world.main:  # rank 0 writes; every rank holds the same state
            save_checkpoint(self._state(), path)
        return path

    def _restore(self) -> None:
        state = load_checkpoint(self.run_dir.last, map_location="cpu") if self.world.main else None
        state = distributed.broadcast_state(state, self.world)  # rank 0 read it; every rank continues from it
        self.model.load_state_dict(state["model"])
        self.loss_fn.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.ema = ({k: v.to(self.device) for k, v in state["ema"].items()} if state["ema"] is not None
                    else None)
        self.position = Position(*state["position"])
        self.global_step = int(state["global_step"])
        self.best_score = evaluate.score_pair(state["best_score"])  # checkpoints from before ties held one float
        set_rng_state(state["rng"])
        self.pretrained = state.get("pretrained")  # checkpoints from before --pretrained have none
        was = int(state.get("world_size", 1))
        if was != self.world.size and self.world.main and self.position.stage == 1:
            print(f"note: {self.run_dir.last} was written by {was} process(es) and this run has "
                  f"{self.world.size}: the global batches and data order stay the same, but the result will "
                  "not be bit-identical to an uninterrupted run", file=sys.stderr)

    # -------------------------------------------------------------- training

    def run(self) -> dict[str, Any]:
        if self.world.main:
            self.run_dir.check_out(self.resume)  # a usable --out before any data is read
        with contextlib.ExitStack() as self._held, worker_errors():  # a DataLoader worker's bad file: one line
            return self._run()

    def _run(self) -> dict[str, Any]:
        self._setup()
        if self.world.main:  # the directory, created and locked now that the data and settings are sound
            self._held.enter_context(self.run_dir.lock())
        if self.resume:
            self._restore()
            self._say(f"resuming {self.out} at stage {self.position.stage}, epoch {self.position.epoch + 1}, "
                      f"step {self.position.step}")
        elif self.world.main:
            self.run_dir.start(self.resolved_cfg, self.data.preprocessing)
        if self.position.stage == 1:
            self._stage_one()
            self.position = Position(stage=2)
            self._save(self.run_dir.last)
        if self.world.active:  # the rest is single-process work, on rank 0 (supemb.train.distributed)
            distributed.stop()
            if not self.world.main:
                return {}
            self.world = World()
        self._load_best()
        self._frozen = {}  # the encoder no longer changes: embed each split once from here on
        if self.cfg.contrastive and self.cfg.linear_epochs > 0:
            self._stage_two()
        return finish(self)

    def _say(self, line: str) -> None:
        if self.world.main:
            print(line, file=sys.stderr)

    def _stage_one(self) -> None:
        cfg = self.cfg
        what = f"stage 1 ({cfg.loss})" if cfg.contrastive else f"baseline ({cfg.loss}, end to end)"
        for epoch in range(self.position.epoch, cfg.epochs):
            self.model.train()
            self.loss_fn.train()
            skip = self.position.step if epoch == self.position.epoch else 0
            self.sampler.set_epoch(epoch, skip)
            bar = tqdm(self.train_loader, total=self.steps_per_epoch, initial=skip,
                       desc=f"{what} epoch {epoch + 1}/{cfg.epochs}", leave=False,
                       disable=None if self.world.main else True, file=sys.stderr)
            kept = skip and self.position.loss_sum is not None  # the epoch's loss so far (older checkpoints: none)
            (running, seen), t0 = (self.position.loss_sum, skip) if kept else (0.0, 0), time.perf_counter()
            step = skip
            try:
                with StepBoundary(self.world.size == 1) as stop:  # a Ctrl-C waits for the step to end
                    for x, y, _ in bar:
                        if self.interrupt_at_step is not None and self.global_step == self.interrupt_at_step:
                            raise KeyboardInterrupt
                        stop.check()
                        loss = self._train_step(x, y, epoch, step)
                        step, running, seen = step + 1, running + loss, seen + 1
                        self.position = Position(1, epoch, step, running)
                        bar.set_postfix(loss=f"{running / seen:.4f}")
                    stop.check()  # one that came during the epoch's last step
            except KeyboardInterrupt:
                path = self._save(self.run_dir.last)
                bar.close()
                self._say(f"interrupted at epoch {epoch + 1}, step {step}: saved {path}; continue with "
                          f"supemb train --resume --out {self.out}")
                raise
            bar.close()
            seconds = time.perf_counter() - t0
            metrics = self._evaluate_epoch()  # every rank embeds a shard; rank 0 gets the figures
            self.position = Position(1, epoch + 1, 0)
            if not self.world.main:
                continue
            metrics.update(stage=1, epoch=epoch + 1, loss=running / max(seen, 1),
                           lr=self.lr_at(self.global_step - 1), seconds=seconds,
                           samples_per_s=(step - skip) * cfg.batch_size / max(seconds, 1e-9), processes=self.world.size)
            self.run_dir.log(metrics)
            score = self._score(metrics)
            if score > self.best_score:
                self.best_score = score
                self._save(self.run_dir.best)
            self._save(self.run_dir.last)
            print(summary_line(metrics), file=sys.stderr)

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, epoch: int, step: int) -> float:
        cfg = self.cfg
        lr = self.lr_at(self.global_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        distributed.sync_buffers(self.loss_fn, self.world)  # a loss's running state: rank 0's everywhere
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            if cfg.contrastive:
                b, v = x.shape[:2]
                feats = self.forward(x.flatten(0, 1)).view(b, v, -1)
                feats, y = distributed.gather(feats, y, self.world)  # the global batch, on every rank
                loss = self.loss_fn(feats, y)
            else:
                out = self.forward(x)
                if cfg.task == "classification":
                    loss = self.loss_fn(out, y.long())
                else:
                    loss = self.loss_fn(out.squeeze(1), (y.float() - self.targets.mean) / self.targets.std)
        value = distributed.mean_over_ranks(loss.detach().float(), self.world)  # the same on every rank
        if not torch.isfinite(value):
            self._save(self.run_dir.last)
            raise UserError(f"the loss became {value.item()} at epoch {epoch + 1}, step {step + 1}; "
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
        return value.item()

    # ------------------------------------------------------------ evaluation

    def _weights_for_eval(self) -> dict[str, torch.Tensor]:
        return self.ema if self.ema is not None else self.model.state_dict()

    def embed_split(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(raw encoder features [N, D], targets [N], groups [N], head outputs [N, out] or None):
        `supemb.train.embedding.embed_split` (cached once the encoder is final)."""
        if self._frozen is not None and name in self._frozen:
            return self._frozen[name]
        result = embed_split(self, name)
        if self._frozen is not None:
            self._frozen[name] = result
        return result

    def _evaluate_epoch(self, split: str = "val") -> dict[str, Any]:
        """The figures of `split` (rank 0; the other ranks only help embed and get {})."""
        train_feats, train_t, _, _ = self.embed_split("train")
        feats, t, groups, head_out = self.embed_split(split)
        if not self.world.main:
            return {}
        metrics = evaluate.embedding_metrics(
            embedding_array(train_feats, self.metric), train_t, embedding_array(feats, self.metric), t, groups,
            self.cfg.task, self.knn_k, self.data.plugin.grouped, metric=self.metric,
            temperature=self._epoch_knn_temperature())
        if head_out is not None:
            metrics.update(self.targets.metrics(self.targets.decode(head_out), t, groups, "head"))
        return {f"{split}_{k}": v for k, v in metrics.items()}

    def _epoch_knn_temperature(self) -> float | None:
        """The kNN weights' temperature: the one chosen on validation once there is one; before,
        the loss's own for an L2 geometry (the scale its softmax works at), else the cosine default."""
        if self.knn_temperature is not None:
            return self.knn_temperature
        if self.metric == "l2" and isinstance(self.loss_fn, RnCLoss):
            return float(self.loss_fn.temperature)
        return None

    def _score(self, metrics: dict[str, Any]) -> tuple[float, float]:
        return evaluate.epoch_score(metrics, self.cfg.task, self.cfg.contrastive)

    def _load_best(self) -> None:
        if self.run_dir.best.is_file():
            state = load_checkpoint(self.run_dir.best, map_location=self.device)
            self.model.load_state_dict(state["model"])
            self.ema = state["ema"]

    # --------------------------------------------------------------- stage 2

    def _stage_two(self) -> None:
        """The linear head on the frozen encoder's raw features (computed once: no augmentation)."""
        metrics = fit_stage_two(self.linear, self.frozen_split("train"), self.frozen_split("val"), self.targets,
                                self.cfg, self.device, self.run_dir.log)
        print(summary_line(metrics), file=sys.stderr)

    def frozen_split(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(raw encoder features [N, D], targets [N], groups [N]) of one split: `embed_split` less the head."""
        feats, targets, groups, _ = self.embed_split(name)
        return feats, targets, groups


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train as `cfg` says; returns the final metrics."""
    return Trainer(cfg).run()


def resume_run(out: str | Path) -> dict[str, Any]:
    """Continue the run in `out` with the settings it started with (not a finished one)."""
    if RunDir(out).model_json.is_file():
        raise UserError(f"{out}: the run is finished (it wrote model.json); nothing to resume")
    return Trainer(load_run_config(out), resume=True).run()
