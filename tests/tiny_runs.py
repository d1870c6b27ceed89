"""One tiny training run and its bundle (40 synthetic webcam frames, 1 epoch, RnC in the l2
geometry), shared by the test modules that need a real run or bundle but not a good one."""

from __future__ import annotations

from pathlib import Path

from supemb.train.config import TrainConfig
from supemb.train.trainer import train


def tiny_webcam(work: Path, seed: int) -> Path:
    """labels.csv (path,temperature,...) of 40 frames of 20 px from 2 cameras."""
    from supemb.data.synthetic_webcam import make_webcam_dataset

    return make_webcam_dataset(work / "webcam", 40, n_cameras=2, size=20, seed=seed)


def tiny_run(webcam: Path, out: Path) -> Path:
    """A finished 1-epoch run directory `out` on `webcam`."""
    train(TrainConfig(data=str(webcam), out=str(out), epochs=1, linear_epochs=1, batch_size=16,
                      image_size=16, viz=False, knn_k=5, target="temperature", loss="rnc", metric="l2"))
    return out


def tiny_bundle(run: Path, out: Path) -> Path:
    """`run` exported to the bundle directory `out`."""
    from supemb.export.writer import export_run

    export_run(run, out, unit="°C")
    return out
