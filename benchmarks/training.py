"""Training throughput: one process against several (torchrun), and which side limits it.

    python benchmarks/training.py                      # CPU: 1 and 2 processes (gloo)
    python benchmarks/training.py --device cuda        # 1 GPU (NCCL), ResNet-18 at 64 px and ShallowNet

Three rates in samples per second, measured side by side in one run:
- input: the training DataLoader alone (decode, two augmented views per sample,
  collate), with 0 and with the default number of worker processes;
- model: one optimisation step of the encoder + RnC loss on ready tensors of a
  batch's shape (forward, backward, AdamW), no data loading;
- training: `supemb train` end to end (the stage-1 loop's own `samples_per_s`,
  epochs after the first), at 1 process and under `torchrun --nproc-per-node=N`.
The training rate cannot exceed the smaller of the other two; whichever is
closer to it limits. Figures are appended to benchmarks/results/training-<device>.json
with the machine they ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine_info  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_data(root: Path, kind: str, n: int, size: int) -> Path:
    if kind == "eeg":
        from supemb.data.synthetic_eeg import make_eeg_dataset

        return make_eeg_dataset(root / "eeg", n, duration_s=60.0, seed=0)
    from supemb.data.synthetic_webcam import make_webcam_dataset

    return make_webcam_dataset(root / "webcam", n, n_cameras=6, size=size, seed=0)


def train_args(data: Path, out: Path, a: argparse.Namespace, encoder: str | None) -> list[str]:
    args = ["train", "--data", str(data), "--target", "temperature" if a.kind == "image" else "age", "--loss", "rnc",
            "--epochs", str(a.epochs), "--linear-epochs", "0", "--batch-size", str(a.batch_size), "--no-viz",
            "--device", a.device, "--knn-k", "5", "--out", str(out)]
    if a.kind == "image":
        args += ["--image-size", str(a.size)]
    if encoder:
        args += ["--encoder", encoder]
    return args


def input_rate(data: Path, a: argparse.Namespace, workers: int, batches: int) -> float:
    """Samples/s of the training DataLoader alone (what feeds one process)."""
    import torch

    from supemb.train.config import TrainConfig
    from supemb.train.data import EpochBatches, SeededDataset, prepare_data

    cfg = TrainConfig(data=str(data), target="temperature" if a.kind == "image" else "age", out="x", loss="rnc",
                      image_size=a.size, batch_size=a.batch_size)
    prepared = prepare_data(cfg)
    split = prepared.splits["train"]
    sampler = EpochBatches(len(split), 0, lambda order: [order[i:i + a.batch_size]
                                                          for i in range(0, len(order) - a.batch_size + 1, a.batch_size)])
    loader = torch.utils.data.DataLoader(SeededDataset(split, prepared.augment, 2, 0), batch_sampler=sampler,
                                         num_workers=workers)
    seen, t0, epoch = 0, None, 0
    while seen < batches * a.batch_size:
        sampler.set_epoch(epoch)
        for i, (x, _, _) in enumerate(loader):
            if t0 is None and i == 1:  # after the first batch: workers started
                t0, seen = time.perf_counter(), 0
            seen += len(x)
            if t0 is not None and seen >= batches * a.batch_size:
                break
        epoch += 1
    return seen / (time.perf_counter() - t0)


def model_rate(a: argparse.Namespace, encoder: str | None, steps: int) -> float:
    """Samples/s of optimisation steps on ready tensors: the model's own ceiling."""
    import torch

    from supemb import modalities
    from supemb.encoders.registry import build_encoder
    from supemb.losses import RnCLoss
    from supemb.preprocess.eeg import EEGSpec

    plugin = modalities.get(a.kind)
    recipe = plugin.recipe
    name = encoder or recipe["encoder"]
    kwargs = dict(recipe["encoder_kwargs"]) if encoder is None else {}
    if a.kind == "eeg":
        spec = EEGSpec()
        kwargs.update(n_chans=spec.n_channels, n_times=spec.window_samples, sfreq=spec.sfreq)
        shape = (spec.n_channels, spec.window_samples)
    else:
        shape = (3, a.size, a.size)
    device = torch.device("cuda" if a.device == "cuda" else "cpu")
    enc = build_encoder(name, **kwargs).to(device)
    loss_fn = RnCLoss(temperature=1.0)
    opt = torch.optim.AdamW(enc.parameters(), lr=1e-3)
    x = torch.randn(a.batch_size * 2, *shape, device=device)
    y = torch.rand(a.batch_size, device=device)

    def step() -> None:
        feats = enc(x).view(a.batch_size, 2, -1)
        loss = loss_fn(feats, y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * a.batch_size / (time.perf_counter() - t0)


def training_rate(data: Path, work: Path, a: argparse.Namespace, nproc: int, encoder: str | None,
                  workers: str | None) -> float:
    """Samples/s of `supemb train`'s stage-1 loop (mean over epochs after the first); workers None:
    the default for this machine and process count."""
    out = work / f"run-{nproc}-{workers}-{encoder or 'default'}"
    args = train_args(data, out, a, encoder) + (["--num-workers", workers] if workers is not None else [])
    if nproc == 1:
        cmd = [sys.executable, "-m", "supemb", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={nproc}",
               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}", "-m", "supemb", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        # every rank's output, whole, outside the work folder (removed on exit)
        log = Path(tempfile.gettempdir()) / f"supemb-training-failed-{os.getpid()}-{nproc}-{workers}.log"
        log.write_text(proc.stdout + proc.stderr)
        keep = "\n".join(line for line in proc.stderr.splitlines() if " torch/distributed/" not in line)
        raise SystemExit(f"training failed ({' '.join(cmd[:6])} ...); whole log: {log}\n{keep[-6000:]}")
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [m["samples_per_s"] for m in lines if m.get("stage") == 1 and m["epoch"] > 1]
    return sum(rates) / len(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--kind", default="image", choices=["image", "eeg"])
    p.add_argument("--encoder", action="append", help="encoders to time (default: the recipe's)")
    p.add_argument("--n", type=int, default=1536, help="training set size (image frames or EEG recordings)")
    p.add_argument("--size", type=int, default=32, help="image side in pixels")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--workers", type=int, nargs="+", default=None,
                   help="DataLoader workers to time at 1 process (default: 0 and 1, and the machine's default)")
    p.add_argument("--out", default=None, help="results JSON (default benchmarks/results/training-DEVICE.json)")
    a = p.parse_args()
    from supemb.train.distributed import default_workers
    from supemb.train.world import World

    auto = default_workers(World())
    a.workers = a.workers or sorted({0, 1, auto})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = make_data(work, a.kind, a.n, a.size)
        for encoder in a.encoder or [None]:
            row: dict = {"kind": a.kind, "encoder": encoder or "recipe default", "batch": a.batch_size}
            for w in a.workers:
                row[f"input_{w}_workers"] = input_rate(data, a, w, 6)
            row["model"] = model_rate(a, encoder, 5)
            for w in a.workers:
                row[f"train_1_process_{w}_workers"] = training_rate(data, work, a, 1, encoder, str(w))
            for n in a.processes:
                if n > 1:
                    row[f"train_{n}_processes"] = training_rate(data, work, a, n, encoder, None)
            rows.append(row)
    for row in rows:
        print("  ".join(f"{k}={v:.0f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    out = Path(a.out or ROOT / "benchmarks" / "results" / f"training-{a.device}.json")
    import torch

    extra = {"torch": torch.__version__, "default_workers": auto, "threads_per_process": torch.get_num_threads()}
    if a.device == "cuda":
        extra["gpu"] = torch.cuda.get_device_name(0)
    record = {"machine": machine_info(**extra), "rows": rows,
              "note": "samples/s; training = stage-1 loop of `supemb train`, epochs after the first"}
    runs = json.loads(out.read_text())["runs"] if out.is_file() else []
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": [*runs, record]}, indent=2) + "\n")
    print(f"appended to {out}")


if __name__ == "__main__":
    main()
