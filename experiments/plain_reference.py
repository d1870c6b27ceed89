"""Plain PyTorch reference trainer (Rank-N-Contrast or L1) used as a yardstick for `supemb train`.

python experiments/plain_reference.py LABELS_CSV --target temperature --loss rnc|l1 [--epochs 30] [--seed 0] [--json OUT.json]
"""
import argparse
import csv
import json
import math
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image


def load(csv_path, target):
    rows = list(csv.DictReader(open(csv_path)))
    root = os.path.dirname(os.path.abspath(csv_path))
    out = {}
    for split in ("train", "val", "test"):
        rs = [r for r in rows if r["split"] == split]
        x = np.stack([np.asarray(Image.open(os.path.join(root, r["path"])).convert("RGB")) for r in rs])
        out[split] = (torch.tensor(x).permute(0, 3, 1, 2).float() / 255, torch.tensor([float(r[target]) for r in rs]))
    return out

def encoder():
    layers, c_in = [], 3
    for c, s in [(32, 1), (32, 2), (64, 1), (64, 2), (128, 2)]:
        layers += [nn.Conv2d(c_in, c, 3, s, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
        c_in = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())

def augment(x, g):
    n = len(x); u = lambda *shape: torch.rand(*shape, generator=g)
    a = (0.6 + 0.4 * u(n)).sqrt()                                    # crop side for area scale 0.6-1
    flip = torch.where(u(n) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = a * flip, a
    theta[:, 0, 2], theta[:, 1, 2] = (1 - a) * (2 * u(n) - 1), (1 - a) * (2 * u(n) - 1)
    x = F.grid_sample(x, F.affine_grid(theta, x.shape, align_corners=False), align_corners=False)
    x = x * (1 + 0.4 * (u(n, 1, 1, 1) - 0.5))                         # brightness +-0.2
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - m) * (1 + 0.4 * (u(n, 1, 1, 1) - 0.5)) + m               # contrast +-0.2
    return (x + 0.06 * (u(n, 3, 1, 1) - 0.5)).clamp(0, 1)             # per-channel shift +-0.03

def rnc_loss(z, y, tau=2.0):
    """Rank-N-Contrast: mean over i != j of -log(exp(s_ij/t) / sum_{k != i, |y_i-y_k| >= |y_i-y_j|} exp(s_ik/t))."""
    n, eye = len(z), torch.eye(len(z), dtype=torch.bool)
    logits = -torch.cdist(z, z) / tau                                 # s = negative L2 distance
    d = (y[:, None] - y[None, :]).abs().masked_fill(eye, -1.0)        # k = i never enters a denominator
    order = d.argsort(dim=1, descending=True)                         # per anchor: farthest label first
    lcse = torch.logcumsumexp(logits.gather(1, order), dim=1)         # log-sum over the c farthest k
    count = n - torch.searchsorted(d.sort(dim=1).values, d)           # #{k : d_ik >= d_ij} (ties included)
    return (lcse.gather(1, count - 1) - logits)[~eye].mean()

@torch.no_grad()
def embed(enc, x, norm):
    return torch.cat([enc(norm(x[i:i + 512])) for i in range(0, len(x), 512)])

def knn_mae(ztr, ytr, z, y, k=10, tau=2.0):
    dist, idx = torch.cdist(z, ztr).topk(k, largest=False)
    return ((torch.softmax(-dist / tau, 1) * ytr[idx]).sum(1) - y).abs().mean().item()

def ridge_probe(E, Y):
    mu, sd = E["train"].mean(0), E["train"].std(0) + 1e-8
    X = {s: ((E[s] - mu) / sd).double() for s in E}
    ym = Y["train"].double().mean()
    best = None
    for alpha in np.logspace(-4, 3, 8):
        A = X["train"].T @ X["train"] + alpha * torch.eye(X["train"].shape[1], dtype=torch.float64)
        w = torch.linalg.solve(A, X["train"].T @ (Y["train"].double() - ym))
        mae = {s: ((X[s] @ w + ym) - Y[s]).abs().mean().item() for s in ("val", "test")}
        if best is None or mae["val"] < best[1]["val"]:
            best = (alpha, mae)
    return {"ridge_alpha": float(best[0]), "ridge_val_mae": best[1]["val"], "ridge_test_mae": best[1]["test"]}

def main():
    p = argparse.ArgumentParser()
    p.add_argument("labels_csv"); p.add_argument("--target", required=True)
    p.add_argument("--loss", choices=["rnc", "l1"], required=True)
    p.add_argument("--epochs", type=int, default=30); p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json")
    a = p.parse_args()
    torch.set_num_threads(2); torch.manual_seed(a.seed); g = torch.Generator().manual_seed(a.seed)
    data = load(a.labels_csv, a.target)
    (xtr, ytr), X, Y = data["train"], {s: v[0] for s, v in data.items()}, {s: v[1] for s, v in data.items()}
    cm, cs = xtr.mean((0, 2, 3), keepdim=True), xtr.std((0, 2, 3), keepdim=True)
    norm = lambda x: (x - cm) / cs
    ym, ys = ytr.mean(), ytr.std()
    enc, head = encoder(), nn.Linear(128, 1)
    params = list(enc.parameters()) + (list(head.parameters()) if a.loss == "l1" else [])
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    steps = a.epochs * math.ceil(len(xtr) / 128)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for epoch in range(a.epochs):
        enc.train(); perm, tot = torch.randperm(len(xtr), generator=g), 0.0
        for b in perm.split(128):
            x, y = xtr[b], ytr[b]
            if a.loss == "rnc":
                loss = rnc_loss(enc(norm(torch.cat([augment(x, g), augment(x, g)]))), torch.cat([y, y]))
            else:
                loss = F.l1_loss(head(enc(norm(augment(x, g)))).squeeze(1), (y - ym) / ys)
            opt.zero_grad(); loss.backward(); opt.step(); sched.step(); tot += loss.item() * len(b)
        print(f"epoch {epoch + 1}/{a.epochs} loss {tot / len(xtr):.4f}", flush=True)
    enc.eval(); head.eval()
    E = {s: embed(enc, X[s], norm) for s in X}
    res = {"loss": a.loss, "epochs": a.epochs, "seed": a.seed,
           "mean_baseline_test_mae": (Y["test"] - ym).abs().mean().item()}
    for s in ("val", "test"):
        res[f"knn_{s}_mae"] = knn_mae(E["train"], ytr, E[s], Y[s])
        if a.loss == "l1":
            with torch.no_grad():
                res[f"head_{s}_mae"] = (head(E[s]).squeeze(1) * ys + ym - Y[s]).abs().mean().item()
    res.update(ridge_probe(E, Y))
    print(json.dumps(res))
    if a.json:
        json.dump(res, open(a.json, "w"), indent=2)

if __name__ == "__main__":
    main()
