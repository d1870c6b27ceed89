"""Training with several processes (torch.distributed, gloo on CPU): sharding of the global
batch, gathered features whose gradients reach their owner (SupCon, RnC, targeted SupCon
equal a single process on the whole batch), and `torchrun ... supemb train` end to end:
a working bundle, the same weights as one process, resume, and faults that end the run."""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from supemb.errors import UsageError
from supemb.train import distributed
from supemb.train.world import World

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------- batches


def test_rank_batches_split_each_global_batch() -> None:
    order = list(np.random.default_rng(0).permutation(23))
    single = distributed.rank_batches(order, 8, World(), drop_last=False)
    assert [len(b) for b in single] == [8, 8, 7]
    ranks = [distributed.rank_batches(order, 8, World(rank=r, size=4), drop_last=False) for r in range(4)]
    assert all(len(batches) == 2 for batches in ranks)  # the incomplete global batch is dropped
    for step in range(2):
        assert sum((ranks[r][step] for r in range(4)), []) == single[step]  # rank order = batch order
        assert {len(ranks[r][step]) for r in range(4)} == {2}
    with pytest.raises(UsageError, match="divide evenly over 3"):
        distributed.rank_batches(order, 8, World(rank=0, size=3), drop_last=True)


@pytest.mark.parametrize("n, size", [(10, 3), (2, 4), (0, 2), (7, 1)])
def test_shards_cover_the_split_once(n: int, size: int) -> None:
    parts = [list(distributed.shard(n, World(rank=r, size=size))) for r in range(size)]
    assert sum(parts, []) == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_world_from_torchrun_environment(monkeypatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert World.from_env() == World() and not World().active
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert World.from_env() == World(rank=3, size=4, local_rank=1, local_size=2)


# ------------------------------------------------- losses over two processes


def _losses() -> dict:
    from supemb.losses import RnCLoss, SupConLoss, TargetedSupConLoss

    return {
        "supcon": (lambda: SupConLoss(temperature=0.5), "classes"),
        "rnc": (lambda: RnCLoss(temperature=1.0), "values"),
        "rnc_2d": (lambda: RnCLoss(temperature=1.0), "values_2d"),
        "tsc": (lambda: TargetedSupConLoss(3, 5, temperature=0.1, seed=0, reassign_every=1), "classes"),
    }


def _labels(kind: str, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if kind == "classes":
        return torch.randint(0, 3, (n,), generator=g)
    if kind == "values":
        return torch.rand(n, generator=g, dtype=torch.float64) * 10
    return torch.rand(n, 2, generator=g, dtype=torch.float64) * 10


def _loss_worker(rank: int, rendezvous: str, name: str, out: str) -> None:
    # a file rendezvous: no TCP port to race for with other tests
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        world = World(rank=rank, size=2)
        make, kind = _losses()[name]
        torch.manual_seed(0)
        model = torch.nn.Linear(6, 5).double()
        reference = copy.deepcopy(model)
        x = torch.randn(8, 2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        y = _labels(kind, 8)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        loss_fn, ref_fn = make().double(), make().double()
        results = []
        for _step in range(2):  # twice: TSC's centroids and assignment carry over between steps
            part = slice(rank * 4, rank * 4 + 4)
            distributed.sync_buffers(loss_fn, world)
            feats = ddp(x[part].flatten(0, 1)).view(4, 2, -1)
            feats, labels = distributed.gather(feats, y[part], world)
            loss = loss_fn(feats, labels)
            ddp.zero_grad()
            loss.backward()
            want = ref_fn(reference(x.flatten(0, 1)).view(8, 2, -1), y)
            reference.zero_grad()
            want.backward()
            results.append({
                "loss": [loss.item(), want.item()],
                "grads": [[p.grad.tolist() for p in model.parameters()],
                          [p.grad.tolist() for p in reference.parameters()]],
                "buffers": [[b.tolist() for b in loss_fn.buffers()], [b.tolist() for b in ref_fn.buffers()]],
            })
            with torch.no_grad():  # the same small update on both, so step 2 starts from new weights
                for p, q in zip(model.parameters(), reference.parameters()):
                    p -= 0.1 * p.grad
                    q -= 0.1 * q.grad
        Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    except BaseException:
        dist.destroy_process_group()
        raise
    distributed.stop()  # together: a rank that left at once could cut its peer's last allreduce


@pytest.mark.parametrize("name", ["supcon", "rnc", "rnc_2d", "tsc"])
def test_two_processes_give_the_single_process_loss_and_gradients(name: str, tmp_path: Path) -> None:
    mp.spawn(_loss_worker, args=(str(tmp_path / "rendezvous"), name, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        for step in json.loads((tmp_path / f"rank{rank}.json").read_text()):
            got, want = step["loss"]
            assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
            for g, w in zip(*step["grads"]):
                np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
            for g, w in zip(*step["buffers"]):  # TSC: the same centroids and target assignment
                np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------- torchrun, end to end


def _torchrun(args: list[str], nproc: int, env: dict | None = None, timeout: float = 300) -> tuple[int, str, float]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={nproc}",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}",
           str(ROOT / "tests" / "dist_worker.py"), *args]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - t0


@pytest.fixture(scope="module")
def webcam(tmp_path_factory) -> Path:
    from supemb.data.synthetic_webcam import make_webcam_dataset

    return make_webcam_dataset(tmp_path_factory.mktemp("dist") / "webcam", 96, n_cameras=3, size=16, seed=0)


def _train_args(data: Path, out: Path, config: Path | None = None, epochs: int = 2) -> list[str]:
    args = ["train", "--data", str(data), "--target", "temperature", "--loss", "rnc", "--image-size", "16",
            "--epochs", str(epochs), "--batch-size", "16", "--num-workers", "0", "--no-viz", "--out", str(out)]
    return args + (["--config", str(config)] if config else [])


@pytest.fixture(scope="module")
def group_norm(tmp_path_factory) -> Path:
    """An encoder without BatchNorm: the 2-process run must then equal the 1-process run."""
    path = tmp_path_factory.mktemp("cfg") / "group.yaml"
    path.write_text("encoder: small_cnn\nencoder_kwargs: {width: 8, depth: 2, norm: group}\n")
    return path


@pytest.mark.slow
def test_torchrun_trains_like_one_process_and_exports(webcam: Path, group_norm: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    from supemb.cli import main as cli

    rc, log, _ = _torchrun(_train_args(webcam, tmp_path / "two", group_norm), nproc=2)
    assert rc == 0, log[-3000:]
    assert log.count("wrote ") == 1  # rank 0 reports; rank 1 stays quiet
    assert cli(_train_args(webcam, tmp_path / "one", group_norm)) == 0
    lines = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    stage1 = [m for m in lines if m.get("stage") == 1]
    assert [m["epoch"] for m in stage1] == [1, 2] and {m["processes"] for m in stage1} == {2}
    two, one = load_file(str(tmp_path / "two" / "model.safetensors")), load_file(str(tmp_path / "one" / "model.safetensors"))
    assert two.keys() == one.keys()
    for key in one:  # the same global batches and gradients: the same model, up to float32 summation order
        np.testing.assert_allclose(two[key], one[key], rtol=1e-3, atol=1e-4, err_msg=key)
    # rank 0 wrote the run's choices, the served ± 's calibration among them, as one process does
    meta_two, meta_one = (json.loads((tmp_path / d / "model.json").read_text()) for d in ("two", "one"))
    assert meta_two["knn_uncertainty_scale"] > 0 and meta_one["knn_uncertainty_scale"] > 0
    assert cli(["export", str(tmp_path / "two"), "--out", str(tmp_path / "bundle")]) == 0
    image = next((webcam.parent / "images").iterdir())
    assert cli(["predict", str(tmp_path / "bundle"), str(image)]) == 0


@pytest.mark.slow
def test_resume_under_two_processes_equals_an_uninterrupted_run(webcam: Path, tmp_path: Path) -> None:
    rc, log, _ = _torchrun(_train_args(webcam, tmp_path / "straight", epochs=3), nproc=2)
    assert rc == 0, log[-3000:]
    # Ctrl-C on every rank at global step 7 (in epoch 2: 4 steps per epoch), then --resume
    rc, log, _ = _torchrun(_train_args(webcam, tmp_path / "resumed", epochs=3), nproc=2,
                           env={"SUPEMB_TEST_FAULT": "0:7:interrupt"})
    assert rc != 0 and "interrupted at epoch 2, step 3" in log, log[-3000:]
    shutil.copytree(tmp_path / "resumed", tmp_path / "one_process")
    rc, log, _ = _torchrun(["train", "--resume", "--out", str(tmp_path / "resumed")], nproc=2)
    assert rc == 0, log[-3000:]
    assert "resuming" in log
    straight = (tmp_path / "straight" / "model.safetensors").read_bytes()
    assert (tmp_path / "resumed" / "model.safetensors").read_bytes() == straight
    # the same checkpoint continued by one process: it says so, and finishes
    proc = subprocess.run([sys.executable, "-m", "supemb", "train", "--resume", "--out", str(tmp_path / "one_process")],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "was written by 2 process(es) and this run has 1" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("kind, cause", [("kill", "SIGKILL"), ("raise", "rank 1: data/broken.png: corrupt image")])
def test_a_failing_rank_ends_the_run_promptly(kind: str, cause: str, webcam: Path, tmp_path: Path) -> None:
    """One rank dies (killed, or a bad file): torchrun stops the other, exits non-zero with the
    cause in its log, nothing hangs, and the last epoch's checkpoint survives."""
    from supemb.train.checkpoint import load_checkpoint

    out = tmp_path / "run"
    rc, log, seconds = _torchrun(_train_args(webcam, out, epochs=3), nproc=2,
                                 env={"SUPEMB_TEST_FAULT": f"1:7:{kind}"}, timeout=120)
    assert rc != 0 and seconds < 90, log[-3000:]
    assert cause in log and "rank: 1" in log, log[-3000:]  # torchrun names the failed rank
    if kind == "kill":  # the rank left behind says so in one line, not with gloo's traceback
        assert "supemb train: error: rank 0: lost contact with the other processes" in log, log[-3000:]
        assert "[rank0]: Traceback" not in log, log[-3000:]
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["position"][:2] == [1, 1] and state["world_size"] == 2  # after epoch 1, intact
