"""Plain PyTorch yardstick for `supemb train`: RnC (written from the paper's formula) or L1.
python experiments/plain_reference.py LABELS_CSV --target T --loss rnc|l1 [--epochs 30] [--seed 0] [--json OUT]
(--json also holds each predictor's |error| on every val and test image, in labels.csv order)"""
import argparse, csv, json, math, os
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
from PIL import Image

def load(path, target):  # {split: (images [N, 3, H, W] in 0..1, targets [N])}
    rows, root = list(csv.DictReader(open(path))), os.path.dirname(os.path.abspath(path))
    pick = lambda s: [r for r in rows if r["split"] == s]
    img = lambda r: np.asarray(Image.open(os.path.join(root, r["path"])).convert("RGB"))
    return {s: (torch.tensor(np.stack([img(r) for r in pick(s)])).permute(0, 3, 1, 2).float() / 255,
                torch.tensor([float(r[target]) for r in pick(s)])) for s in ("train", "val", "test")}

def encoder():  # 5 convs 32-32-64-64-128, BatchNorm, ReLU, global average pool
    layers, c_in = [], 3
    for c, s in [(32, 1), (32, 2), (64, 1), (64, 2), (128, 2)]:
        layers, c_in = layers + [nn.Conv2d(c_in, c, 3, s, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU()], c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())

def augment(x, g):  # crop (area 0.6-1) + flip, brightness/contrast +-0.2, per-channel shift +-0.03
    n, u = len(x), lambda *shape: torch.rand(*shape, generator=g)
    a, flip, theta = (0.6 + 0.4 * u(n)).sqrt(), torch.where(u(n) < 0.5, -1.0, 1.0), torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = a * flip, a
    theta[:, 0, 2], theta[:, 1, 2] = (1 - a) * (2 * u(n) - 1), (1 - a) * (2 * u(n) - 1)
    x = F.grid_sample(x, F.affine_grid(theta, x.shape, align_corners=False), align_corners=False)
    x = x * (0.8 + 0.4 * u(n, 1, 1, 1)); m = x.mean((1, 2, 3), keepdim=True)
    return ((x - m) * (0.8 + 0.4 * u(n, 1, 1, 1)) + m + 0.06 * (u(n, 3, 1, 1) - 0.5)).clamp(0, 1)

def rnc_loss(z, y, tau=2.0):  # mean_{i!=j} -log(e^{s_ij/t} / sum_{k!=i, |y_i-y_k| >= |y_i-y_j|} e^{s_ik/t})
    eye = torch.eye(len(z), dtype=torch.bool)
    logits = -torch.cdist(z, z) / tau  # s = negative L2 distance
    d = (y[:, None] - y[None, :]).abs().masked_fill(eye, -1.0)  # k = i is never a negative
    lcse = torch.logcumsumexp(logits.gather(1, d.argsort(1, descending=True)), 1)  # over the c farthest k
    count = len(z) - torch.searchsorted(d.sort(1).values, d)  # #{k: d_ik >= d_ij}, ties included
    return (lcse.gather(1, count - 1) - logits)[~eye].mean()

def ridge(E, Y):  # closed-form ridge on standardised features, strength chosen on val
    mu, sd, ym = E["train"].mean(0), E["train"].std(0) + 1e-8, Y["train"].double().mean()
    X = {s: ((E[s] - mu) / sd).double() for s in E}
    fits = [torch.linalg.solve(X["train"].T @ X["train"] + a * torch.eye(X["train"].shape[1], dtype=torch.float64),
                               X["train"].T @ (Y["train"].double() - ym)) for a in np.logspace(-4, 3, 8)]
    err = [{s: (X[s] @ w + ym - Y[s]).abs() for s in ("val", "test")} for w in fits]
    best = min(range(len(fits)), key=lambda i: err[i]["val"].mean().item())
    return {"ridge_alpha": float(np.logspace(-4, 3, 8)[best]), **{f"ridge_{s}_mae": e.mean().item() for s, e in
            err[best].items()}, **{f"ridge_{s}_errors": e.tolist() for s, e in err[best].items()}}

def main():
    p = argparse.ArgumentParser(); p.add_argument("labels_csv"); p.add_argument("--target", required=True)
    p.add_argument("--loss", choices=["rnc", "l1"], required=True); p.add_argument("--json")
    p.add_argument("--epochs", type=int, default=30); p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(2); torch.manual_seed(a.seed); g = torch.Generator().manual_seed(a.seed)
    data = load(a.labels_csv, a.target); X, Y = {s: v[0] for s, v in data.items()}, {s: v[1] for s, v in data.items()}
    cm, cs = X["train"].mean((0, 2, 3), keepdim=True), X["train"].std((0, 2, 3), keepdim=True)
    ym, ys = Y["train"].mean(), Y["train"].std()
    norm, enc, head = lambda x: (x - cm) / cs, encoder(), nn.Linear(128, 1)
    params = list(enc.parameters()) + (list(head.parameters()) if a.loss == "l1" else [])
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.epochs * math.ceil(len(X["train"]) / 128))
    for epoch in range(a.epochs):
        enc.train()
        for b in torch.randperm(len(X["train"]), generator=g).split(128):
            x, y = X["train"][b], Y["train"][b]
            loss = (rnc_loss(enc(norm(torch.cat([augment(x, g), augment(x, g)]))), torch.cat([y, y])) if a.loss == "rnc"
                    else F.l1_loss(head(enc(norm(augment(x, g)))).squeeze(1), (y - ym) / ys))
            opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    enc.eval()
    with torch.no_grad():
        E = {s: torch.cat([enc(norm(X[s][i:i + 512])) for i in range(0, len(X[s]), 512)]) for s in X}
        res = {"loss": a.loss, "epochs": a.epochs, "seed": a.seed,
               "mean_baseline_test_mae": (Y["test"] - ym).abs().mean().item()}
        for s in ("val", "test"):  # kNN: 10 neighbours, softmax of -distance / 2
            dist, idx = torch.cdist(E[s], E["train"]).topk(10, largest=False)
            err = {"knn": ((torch.softmax(-dist / 2.0, 1) * Y["train"][idx]).sum(1) - Y[s]).abs()}
            if a.loss == "l1":
                err["head"] = (head(E[s]).squeeze(1) * ys + ym - Y[s]).abs()
            res.update({f"{k}_{s}_mae": e.mean().item() for k, e in err.items()})
            res.update({f"{k}_{s}_errors": e.tolist() for k, e in err.items()})  # per image
    res.update(ridge(E, Y)); print(json.dumps(res))
    if a.json:
        json.dump(res, open(a.json, "w"), indent=2)

if __name__ == "__main__":
    main()
