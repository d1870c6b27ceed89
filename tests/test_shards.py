"""Embedding a gallery with several processes gives the bundle one process gives, byte for byte.

A tiny image regression run and a tiny EEG run are trained once per module;
the gallery batch is cut to 4 inputs so that 2 processes really take 2 shards
of these small galleries.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from supemb.cli import main as cli
from supemb.embed import shards
from supemb.errors import UserError
from supemb.export import gallery as gallery_mod
from supemb.train.config import TrainConfig
from supemb.train.trainer import train

GALLERY_FILES = ("targets.npy", "gallery.json", "index.faiss", "thumbnails.npy")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shards")


@pytest.fixture(scope="module")
def webcam(work: Path) -> Path:
    from supemb.data.synthetic_webcam import make_webcam_dataset

    return make_webcam_dataset(work / "webcam", 60, n_cameras=3, size=24, seed=0)


@pytest.fixture(scope="module")
def runs(work: Path, webcam: Path) -> dict[str, Path]:
    from supemb.data.synthetic_eeg import make_eeg_dataset

    common = dict(epochs=1, linear_epochs=1, image_size=16, viz=False, knn_k=5, loss="rnc", metric="l2")
    train(TrainConfig(data=str(webcam), out=str(work / "run_img"), target="temperature", batch_size=16, **common))
    eeg = make_eeg_dataset(work / "eeg", 12, duration_s=12.0, sfreq=100.0, seed=0)
    train(TrainConfig(data=str(eeg), out=str(work / "run_eeg"), target="age", batch_size=8,
                      eeg={"window_s": 4.0, "stride_s": 4.0}, **common))
    return {"image": work / "run_img", "eeg": work / "run_eeg"}


@pytest.fixture()
def small_batches(monkeypatch) -> list[list[tuple[int, int]]]:
    """Gallery batches of 4 inputs; returns the shard bounds each sharded call used."""
    monkeypatch.setattr(gallery_mod, "GALLERY_BATCH", 4)
    used: list[list[tuple[int, int]]] = []
    real = shards.shard_bounds

    def spy(*args, **kw):
        used.append(real(*args, **kw))
        return used[-1]

    monkeypatch.setattr(shards, "shard_bounds", spy)
    return used


def _same_files(a: Path, b: Path, names=GALLERY_FILES) -> None:
    for name in names:
        assert (a / name).exists() == (b / name).exists(), name
        if (a / name).exists():
            assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs"


# ------------------------------------------------------------ identical results


def test_shard_bounds_are_contiguous_batch_multiples() -> None:
    assert shards.shard_bounds(60, 2, 4) == [(0, 28), (28, 60)]  # 15 batches: 7 + 8
    assert shards.shard_bounds(10, 4, 4) == [(0, 4), (4, 8), (8, 10)]  # fewer batches than processes
    assert shards.shard_bounds(3, 2, 64) == [(0, 3)]
    assert shards.shard_bounds(0, 2, 64) == []
    assert len(shards.shard_bounds(1000, 2, 10, max_batches=16)) == 7  # 100 batches, at most 16 a shard
    for n, p, b in [(1000, 2, 10), (999, 3, 7), (65, 2, 64), (130, 8, 1)]:
        bounds = shards.shard_bounds(n, p, b)
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(stop == start for (_, stop), (start, _) in zip(bounds, bounds[1:]))
        assert all(a % b == 0 and a < z for a, z in bounds)
        assert max(z - a for a, z in bounds) <= shards.MAX_SHARD_BATCHES * b
        assert len(bounds) >= min(p, -(-n // b))


@pytest.mark.parametrize("modality", ["image", "eeg"])
def test_export_with_two_processes_is_byte_identical(modality: str, runs: dict[str, Path], tmp_path: Path,
                                                      small_batches: list) -> None:
    from supemb.export.writer import export_run

    thumbs = 8 if modality == "image" else 0
    m1 = export_run(runs[modality], tmp_path / "one", thumbnails=thumbs)
    assert small_batches == []  # one process: the in-process path
    m2 = export_run(runs[modality], tmp_path / "two", thumbnails=thumbs, processes=2)
    assert len(small_batches) == 1 and len(small_batches[0]) == 2  # two shards
    _same_files(tmp_path / "one", tmp_path / "two")
    assert m1["gallery"] == m2["gallery"] and (tmp_path / "two" / "thumbnails.npy").exists() == bool(thumbs)


@pytest.fixture(scope="module")
def img_bundle(runs: dict[str, Path], work: Path) -> Path:
    from supemb.export.writer import export_run

    export_run(runs["image"], work / "b_img", thumbnails=8)
    return work / "b_img"


@pytest.fixture()
def damaged(webcam: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    """A copy of the webcam data with two unreadable images: one in each of the two shards."""
    shutil.copytree(webcam.parent, tmp_path / "webcam")  # webcam: its labels.csv
    data = tmp_path / "webcam" / webcam.name
    items = [Path(p) for p in gallery_mod.data_gallery(data, _image_plugin(), "regression", "temperature").items]
    bad = [items[25], items[30]]  # shards are [0, 28) and [28, 60)
    for p in bad:
        p.write_text("hello, not an image\n")
    return data, bad


def _image_plugin():
    from supemb import modalities

    return modalities.get("image")


def test_index_with_two_processes_skips_and_matches(img_bundle: Path, damaged: tuple[Path, list[Path]],
                                                    tmp_path: Path, small_batches: list) -> None:
    """`supemb index --processes 2 --on-error skip`: skipped inputs are named and the rows' owners shifted."""
    data, bad = damaged
    for name, extra in [("one", []), ("two", ["--processes", "2"])]:
        shutil.copytree(img_bundle, tmp_path / name)
        assert cli(["index", str(tmp_path / name), "--data", str(data), "--on-error", "skip", *extra]) == 1  # skipped 2
    assert len(small_batches) == 1 and small_batches[0] == [(0, 28), (28, 60)]
    _same_files(tmp_path / "one", tmp_path / "two", (*GALLERY_FILES, "manifest.json"))
    g = (tmp_path / "two" / "gallery.json").read_text()
    assert str(bad[0]) in g and str(bad[1]) in g


def test_rows_owners_and_failures_equal_one_process(img_bundle: Path, damaged: tuple[Path, list[Path]]) -> None:
    from supemb.predict.bundle import load_bundle

    b = load_bundle(img_bundle, device="cpu")
    items = gallery_mod.data_gallery(damaged[0], b.plugin, "regression", "temperature").items
    one = b.encoder.embed_rows(items, batch_size=4, on_error="skip")
    two = shards.embed_rows_sharded(b.encoder.onnx_path, b.pipeline.to_record(), items, processes=2,
                                    batch_size=4, on_error="skip")
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1]) and two[1].dtype == np.int64
    assert one[2] == two[2] and [f.position for f in two[2]] == [25, 30]


def test_first_bad_input_stops_it_with_the_one_process_message(img_bundle: Path, damaged: tuple[Path, list[Path]],
                                                               small_batches: list) -> None:
    """Both shards hold a bad image; the message names the first, as one process does."""
    from supemb.export.writer import reindex

    data, bad = damaged
    messages = []
    for processes in (1, 2):
        with pytest.raises(UserError) as err:
            reindex(img_bundle, data, processes=processes)  # fails before writing anything
        messages.append(str(err.value))
    assert len(small_batches) == 1 and len(small_batches[0]) == 2
    assert messages[0] == messages[1] and str(bad[0]) in messages[1] and "\n" not in messages[1]


def test_processes_flag(tmp_path: Path, capsys) -> None:
    assert cli(["index", str(tmp_path), "--data", str(tmp_path), "--processes", "0"]) == 2
    assert "--processes must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["export", "--help"])
    assert "identical" in " ".join(capsys.readouterr().out.split())


# ------------------------------------------------------------ failing workers


def _die(spec, items):  # a worker killed mid-shard (run in the worker process)
    os._exit(3)


def _fail(spec, items):  # a worker hitting a bug
    raise RuntimeError("boom\nsecond line")


@pytest.mark.parametrize("worker, cause", [(_die, "stopped abruptly"), (_fail, "RuntimeError: boom second line")])
def test_a_failing_worker_is_one_line_naming_its_inputs(tmp_path: Path, monkeypatch, worker, cause) -> None:
    monkeypatch.setattr(shards, "_embed_shard", worker)
    items = [f"in{i}.png" for i in range(8)]
    with pytest.raises(UserError) as err:
        shards.embed_rows_sharded(tmp_path / "encoder.onnx", {"modality": "image"}, items, processes=2,
                                  batch_size=4)
    msg = str(err.value)
    assert "inputs 0-3 of 8 (in0.png to in3.png)" in msg and cause in msg and "\n" not in msg


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(UserError, match="give paths"):
        shards.embed_rows_sharded("m.onnx", {}, [np.zeros(3)], processes=2)
    with pytest.raises(UserError, match="on_error"):
        shards.embed_rows_sharded("m.onnx", {}, ["a.png"], processes=2, on_error="ignore")
    with pytest.raises(UserError, match=">= 1"):
        shards.embed_rows_sharded("m.onnx", {}, ["a.png"], processes=0)


# ------------------------------------------------------------ devices and threads


def test_cuda_device_ids_and_worker_gpus(monkeypatch) -> None:
    """Without a GPU: the provider options a worker asks for, and which GPU each worker takes."""
    import multiprocessing

    import onnxruntime as ort

    from supemb.embed.onnx import _providers

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert _providers("cuda", 1) == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert _providers("auto") == ["CUDAExecutionProvider", "CPUExecutionProvider"]  # unchanged without an id
    assert _providers("cpu", 1) == ["CPUExecutionProvider"]
    counter = multiprocessing.get_context("spawn").Value("i", 0)
    ids = []
    for _ in range(5):
        shards._start_worker(counter, 2)
        ids.append(shards._WORKER["device_id"])
    shards._WORKER.clear()
    assert ids == [0, 1, 0, 1, 0]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,3")
    assert shards.cuda_device_count() == 2


def test_encoder_threads(img_bundle: Path) -> None:
    from supemb.embed.onnx import Encoder
    from supemb.predict.bundle import load_bundle

    b = load_bundle(img_bundle, device="cpu")
    enc = Encoder(b.encoder.onnx_path, b.plugin, b.pipeline, device="cpu", threads=1)
    assert enc.session.get_session_options().intra_op_num_threads == 1


@pytest.mark.cuda
def test_sharded_on_gpus_equals_one_process(img_bundle: Path, webcam: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu and a GPU")
    from supemb.embed.onnx import Encoder
    from supemb.predict.bundle import load_bundle

    b = load_bundle(img_bundle, device="cuda")
    items = gallery_mod.data_gallery(webcam, b.plugin, "regression", "temperature").items
    one = Encoder(b.encoder.onnx_path, b.plugin, b.pipeline, device="cuda").embed_rows(items, batch_size=8)
    two = shards.embed_rows_sharded(b.encoder.onnx_path, b.pipeline.to_record(), items, processes=2,
                                    device="cuda", batch_size=8)
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])
