"""The trainer: a tiny run per modality, exact resume, config, NaN stop, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from supemb import modalities
from supemb.cli import main
from supemb.errors import UsageError, UserError
from supemb.preprocess.eeg_augment import EEG_AUGMENTS
from supemb.train import trainer as trainer_mod
from supemb.train.config import TrainConfig, load_config
from supemb.train.data import EvalDataset
from supemb.train.embedding import embed_run
from supemb.train.rundir import (
    EMBEDDINGS,
    MODEL_FORMAT_VERSION,
    PLAIN_KNN_MODEL_FORMAT_VERSION,
    RunDir,
    load_run_config,
    summary_line,
)
from supemb.train.selection import KNN_KS
from supemb.train.trainer import Trainer, resume_run, train


@pytest.fixture(scope="module")
def image_classes(tmp_path_factory) -> Path:
    """Class folders of 16x16 images: reddish vs bluish, with noise."""
    root = tmp_path_factory.mktemp("classes")
    rng = np.random.default_rng(0)
    for name, colour in (("red", (200, 40, 40)), ("blue", (40, 40, 200))):
        (root / name).mkdir()
        for i in range(24):
            px = np.clip(np.array(colour) + rng.normal(0, 40, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def image_values(tmp_path_factory) -> Path:
    """labels.csv of 16x16 images whose brightness is the target."""
    root = tmp_path_factory.mktemp("values")
    rng = np.random.default_rng(1)
    rows = ["path,value"]
    for i in range(48):
        value = float(rng.uniform(0, 100))
        px = np.clip(value * 2 + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(px).save(root / f"{i}.png")
        rows.append(f"{i}.png,{value:.3f}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def eeg_folder(tmp_path_factory) -> Path:
    from supemb.data.synthetic_eeg import make_eeg_dataset

    return make_eeg_dataset(tmp_path_factory.mktemp("eeg"), 12, duration_s=12.0, sfreq=100.0, seed=0)


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), epochs=1, linear_epochs=1, batch_size=8, image_size=16,
                viz=False, knn_k=3)
    base.update(kw)
    return TrainConfig(**base)


def _read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_image_classification_supcon_run(image_classes: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    final = train(_cfg(image_classes, out, target="class", loss="supcon", epochs=2, viz=True))
    for name in ("config.json", "preprocessing.json", "model.json", "model.safetensors",
                 "checkpoints/last.pt", "checkpoints/best.pt", "embeddings.png"):
        assert (out / name).is_file(), name
    lines = _read_metrics(out)
    assert [m["stage"] for m in lines] == [1, 1, 2, "final"]
    assert 0.0 <= final["val_knn_acc"] <= 1.0 and "test_linear_acc" in final
    meta = json.loads((out / "model.json").read_text())
    assert meta["classes"] == ["blue", "red"] and meta["task"] == "classification"
    weights = load_file(str(out / "model.safetensors"))
    assert any(k.startswith("encoder.") for k in weights)
    assert weights["linear.fc.weight"].shape == (2, meta["embed_dim"])
    assert meta["projection"] == "mlp" and any(k.startswith("head.") for k in weights)
    assert meta["embedding"] == EMBEDDINGS["cosine"] == "l2-normalised encoder output"
    assert meta["format_version"] == PLAIN_KNN_MODEL_FORMAT_VERSION == 1  # classes: no residual kNN
    prep = json.loads((out / "preprocessing.json").read_text())
    assert prep["modality"] == "image" and [s["op"] for s in prep["steps"]] == ["decode", "resize_crop", "normalize"]
    assert prep["steps"][1]["image_size"] == 16


def test_image_regression_l1_baseline_run(image_values: Path, tmp_path: Path) -> None:
    final = train(_cfg(image_values, tmp_path / "run", target="value", loss="l1"))
    assert {"val_head_mae", "val_knn_mae", "val_ordinality", "test_head_mae"} <= set(final)
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["has_linear_head"] and 20 < meta["target_mean"] < 80
    # what a bundle will serve, chosen on validation, recorded and reported
    assert final["served"] == ("residual kNN" if meta["knn_residual"] else "kNN")
    assert {"val_served_mae", "test_served_mae"} <= set(final) and final["val_served_mae"] > 0
    if not meta["knn_residual"]:  # plain kNN is served: the two figures are the same predictions
        assert final["val_served_mae"] == pytest.approx(final["val_knn_mae"], rel=1e-6)
    assert summary_line(final).endswith(f"served: {final['served']}")
    assert summary_line({"stage": 2, "val_linear_mae": 2.5}) == "stage 2  val_linear_mae=2.5"  # no empty "epoch"
    assert summary_line({"stage": 1, "epoch": 3, "loss": 0.5}).startswith("stage 1 epoch 3  loss=0.5000")
    assert meta["data"]["augment"]["preset"] == "colour"  # the baseline's augmentation is recorded
    # supemb viz redraws the map from the finished run
    png = tmp_path / "map.png"
    assert main(["viz", str(tmp_path / "run"), "--split", "test", "--method", "pca", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["viz", str(tmp_path / "missing")]) == 1


def test_eeg_rnc_run_reports_recording_level(eeg_folder: Path, tmp_path: Path) -> None:
    final = train(_cfg(eeg_folder, tmp_path / "run", target="age", loss="rnc", eeg={"window_s": 4.0, "stride_s": 4.0}))
    assert "val_rec_knn_mae" in final and "test_rec_linear_mae" in final
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["modality"] == "eeg" and meta["encoder"] == "shallow"
    # the contrastive EEG default (docs/recipe.md)
    assert meta["data"]["augment"] == {"preset": "eeg-light", **EEG_AUGMENTS["eeg-light"].to_dict()}
    # RnC orders the encoder output itself (no projection head, as in its paper)
    assert meta["projection"] == "none"
    assert not any(k.startswith("head.") for k in load_file(str(tmp_path / "run" / "model.safetensors")))
    assert meta["encoder_kwargs"] == {"n_chans": 19, "n_times": 400, "sfreq": 100.0}


def test_resume_after_interrupt_gives_the_same_weights(image_values: Path, tmp_path: Path) -> None:
    kw = dict(target="value", loss="rnc", epochs=2, ema_decay=0.9)
    train(_cfg(image_values, tmp_path / "straight", **kw))
    cfg = _cfg(image_values, tmp_path / "resumed", **kw)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, interrupt_at_step=5).run()  # mid-way through epoch 2 (4 steps per epoch)
    assert (tmp_path / "resumed" / "checkpoints" / "last.pt").is_file()
    with pytest.raises(UserError, match="--resume"):
        train(cfg)  # refuses to overwrite the interrupted run
    resume_run(tmp_path / "resumed")
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    stages = [m["stage"] for m in _read_metrics(tmp_path / "resumed")]
    assert stages == [1, 1, 2, "final"]
    # the resumed epoch's loss is the mean over all its steps, those before the interrupt too
    losses = [[m["loss"] for m in _read_metrics(tmp_path / run) if m["stage"] == 1] for run in ("straight", "resumed")]
    assert losses[1] == pytest.approx(losses[0], rel=1e-6, abs=0) and len(losses[0]) == 2
    # embed_run and export's loader rebuild the same final (EMA) encoder, in the run's metric
    emb, _, cfg, metric = embed_run(tmp_path / "straight", "val")
    module, meta, _ = RunDir(tmp_path / "straight").embedding_model()
    assert metric == meta["metric"] == module.metric == "l2"
    t = Trainer(cfg, resume=True)
    t._setup()
    x = torch.stack([item[0] for item in EvalDataset(t.data.splits["val"], t.data.eval_transform)])
    with torch.no_grad():
        np.testing.assert_allclose(emb, module(x).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("at_step", [5, 3], ids=["mid-epoch", "an epoch's last step"])
def test_a_ctrl_c_inside_a_step_resumes_to_the_same_weights(image_values: Path, tmp_path: Path, monkeypatch,
                                                            at_step: int) -> None:
    """A real SIGINT lands mid-step (here: right after the forward pass has updated BatchNorm's running
    statistics): the step finishes, the run stops at the boundary, and --resume does not redo it."""
    import os
    import signal

    kw = dict(target="value", loss="rnc", epochs=2)
    train(_cfg(image_values, tmp_path / "straight", **kw))
    original = Trainer._train_step

    def step_with_a_ctrl_c(self, x, y, epoch, step):  # noqa: ANN001, ANN202
        if self.global_step != at_step:
            return original(self, x, y, epoch, step)
        hook = self.forward.register_forward_hook(lambda *a: os.kill(os.getpid(), signal.SIGINT))
        try:
            return original(self, x, y, epoch, step)
        finally:
            hook.remove()

    monkeypatch.setattr(Trainer, "_train_step", step_with_a_ctrl_c)
    cfg = _cfg(image_values, tmp_path / "resumed", **kw)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg).run()
    monkeypatch.setattr(Trainer, "_train_step", original)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    resume_run(tmp_path / "resumed")
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_nan_loss_stops_with_a_clear_message(image_values: Path, tmp_path: Path, monkeypatch) -> None:
    class NaNLoss(torch.nn.Module):
        def forward(self, feats, y):
            return feats.sum() * float("nan")

    monkeypatch.setattr(trainer_mod, "build_loss", lambda cfg, n: NaNLoss())
    with pytest.raises(UserError, match="loss became nan.*--lr"):
        train(_cfg(image_values, tmp_path / "run", target="value", loss="rnc"))
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_config_yaml_with_flag_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("data: d\ntarget: age\nout: o\nloss: rnc\nepochs: 7\nbatch-size: 16\n")
    cfg = load_config(path, {"epochs": 3, "lr": None})
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.task) == (3, 16, None, "regression")  # lr: the recipe's
    path.write_text("data: d\ntarget: age\nout: o\nepochz: 7\n")
    with pytest.raises(UsageError, match="unknown setting.*epochz"):
        load_config(path, {})
    with pytest.raises(UsageError, match="projection"):
        TrainConfig(data="d", target="t", out="o", loss="rnc", projection="linear")
    with pytest.raises(UsageError, match="projection head"):
        TrainConfig(data="d", target="t", out="o", loss="tsc", projection="none")
    assert TrainConfig(data="d", target="t", out="o", loss="rnc", projection="mlp").projection_head == "mlp"
    assert TrainConfig(data="d", target="t", out="o", loss="l1").projection_head == "none"
    with pytest.raises(UsageError, match="for regression"):
        TrainConfig(data="d", target="t", out="o", loss="rnc", task="classification")
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.yaml", {})
    with pytest.raises(UserError, match="config.json"):
        load_run_config(tmp_path)


def test_cli_train_exit_codes(image_classes: Path, tmp_path: Path, capsys) -> None:
    assert main(["train", "--target", "class"]) == 2  # missing --data/--out
    assert main(["train", "--data", str(tmp_path / "none"), "--target", "class", "--out", str(tmp_path / "r"),
                 "--loss", "supcon"]) == 1
    assert "no such file" in capsys.readouterr().err
    out = tmp_path / "cli"
    rc = main(["train", "--data", str(image_classes), "--target", "class", "--loss", "ce", "--out", str(out),
               "--epochs", "1", "--batch-size", "8", "--image-size", "16", "--no-viz"])
    assert rc == 0 and (out / "model.safetensors").is_file()
    assert main(["train", "--resume", "--out", str(tmp_path / "nothing")]) == 1


def test_rnc_serves_the_raw_encoder_output_it_ordered(image_values: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    final = train(_cfg(image_values, out, target="value", loss="rnc", knn_k=None))
    meta = json.loads((out / "model.json").read_text())
    # RnC's default similarity is the negative L2 distance of raw features: serve that space
    assert meta["metric"] == final["metric"] == "l2"
    assert meta["embedding"] == EMBEDDINGS["l2"] == "encoder output"
    n_train = len(embed_run(out, "train")[1])
    assert meta["knn_k"] in {min(k, n_train) for k in KNN_KS} and meta["knn_temperature"] > 0
    emb, _, _, metric = embed_run(out, "val")
    assert metric == "l2" and not np.allclose(np.linalg.norm(emb, axis=1), 1.0)
    # the recorded kNN settings reproduce the final validation figure
    train_emb, train_t, _, _ = embed_run(out, "train")
    from supemb.predict import neighbours as m

    val_t = Trainer(load_run_config(out), resume=True)
    val_t._setup()
    pred, _ = m.knn_regress(emb, train_emb, train_t, meta["knn_k"], temperature=meta["knn_temperature"],
                            metric="l2")
    assert np.abs(pred - val_t.data.splits["val"].targets).mean() == pytest.approx(final["val_knn_mae"], rel=1e-5)


def test_cosine_rnc_and_supcon_serve_normalised_embeddings(image_values: Path, image_classes: Path,
                                                            tmp_path: Path) -> None:
    train(_cfg(image_values, tmp_path / "rnc", target="value", loss="rnc", similarity="cosine"))
    assert json.loads((tmp_path / "rnc" / "model.json").read_text())["metric"] == "cosine"
    emb, _, _, metric = embed_run(tmp_path / "rnc", "val")
    assert metric == "cosine" and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    with pytest.raises(UsageError, match="similarity"):
        _cfg(image_classes, tmp_path / "x", target="class", loss="supcon", similarity="l2")


def test_stage_two_head_is_the_converged_ridge_fit(image_values: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    final = train(_cfg(image_values, out, target="value", loss="rnc", epochs=2))
    stage2 = [m for m in _read_metrics(out) if m["stage"] == 2]
    assert len(stage2) == 1 and stage2[0]["probe"] == "ridge" and stage2[0]["probe_grad_norm"] < 1e-6
    # the saved head equals a direct ridge fit on the frozen features at the chosen alpha
    t = Trainer(load_run_config(out), resume=True)
    t._setup()
    w = load_file(str(out / "model.safetensors"))
    RunDir(out).load_encoder(t.model.encoder)
    ftr, ytr, _, _ = t.embed_split("train")
    fte, yte, _, _ = t.embed_split("test")
    # the normal equations on standardised features and targets, penalty alpha * N (supemb.train.probe)
    x, xt = ftr.astype(np.float64), fte.astype(np.float64)
    mu, sd = x.mean(0), np.where(x.std(0) > 1e-12, x.std(0), 1.0)
    z, t = (x - mu) / sd, (ytr - ytr.mean()) / (ytr.std() + 1e-12)
    coef = np.linalg.solve(z.T @ z + stage2[0]["probe_alpha"] * len(z) * np.eye(z.shape[1]), z.T @ t)
    direct = ((xt - mu) / sd) @ coef * (ytr.std() + 1e-12) + ytr.mean()
    meta = json.loads((out / "model.json").read_text())
    head = (fte @ w["linear.fc.weight"].numpy().T + w["linear.fc.bias"].numpy())[:, 0]
    np.testing.assert_allclose(head * meta["target_std"] + meta["target_mean"], direct, rtol=1e-4, atol=1e-3)
    assert np.abs(direct - yte).mean() == pytest.approx(final["test_linear_mae"], rel=1e-3)


def test_baseline_gets_a_converged_probe_and_a_geometry_chosen_on_validation(image_classes: Path,
                                                                             tmp_path: Path) -> None:
    out = tmp_path / "run"
    final = train(_cfg(image_classes, out, target="class", loss="ce", epochs=2))
    assert {"val_head_acc", "val_linear_acc", "test_linear_acc", "val_knn_acc"} <= set(final)
    assert final["probe"] == "logistic" and final["probe_converged"] is True
    # the recorded geometry is the one choose_knn (tests/test_selection.py) picks on validation
    from supemb.train.selection import choose_knn

    t = Trainer(load_run_config(out), resume=True)
    t._setup()
    RunDir(out).load_encoder(t.model.encoder)
    ftr, ytr, _, _ = t.embed_split("train")
    fva, yva, gva, _ = t.embed_split("val")
    want = choose_knn(ftr, ytr, fva, lambda pred: t.targets.item_scores(pred, yva, gva), task="classification",
                      n_classes=2, metrics_tried=("cosine", "l2"), ks=[t.cfg.knn_k])
    meta = json.loads((out / "model.json").read_text())
    assert (meta["metric"], meta["knn_k"], meta["knn_temperature"]) == want
    # config.json records what the defaults resolved to, so a resumed run does not depend on them
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["encoder"] == "small_cnn" and cfg["augment"]["preset"] == "light"
    recipe = modalities.get("image").recipe
    assert cfg["encoder_kwargs"] == recipe["encoder_kwargs"] and cfg["lr"] == recipe["lr"]
    assert cfg["batch_size"] == 8  # given, so not the recipe's


def test_runs_from_before_the_presets_resume_with_their_old_settings(image_values: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(_cfg(image_values, out, target="value", loss="rnc"))
    cfg = json.loads((out / "config.json").read_text())
    for key in ("augment", "head_fit", "metric"):
        cfg.pop(key)
    (out / "config.json").write_text(json.dumps(cfg))
    old = load_run_config(out)
    assert (old.augment, old.head_fit, old.metric) == ("simclr", "sgd", "cosine")


def test_run_dir_reads_old_runs_and_refuses_newer_or_broken_ones(image_values: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(_cfg(image_values, out, target="value", loss="l1", metric="l2"))
    run = RunDir(out)
    meta = run.model()
    # 2 where the run serves a residual kNN (an older supemb must refuse it), else 1 as before
    assert meta["format_version"] == (MODEL_FORMAT_VERSION if meta["knn_residual"] else PLAIN_KNN_MODEL_FORMAT_VERSION)
    assert run.metric() == "l2"
    assert run.final_metrics() == {k: v for k, v in _read_metrics(out)[-1].items()
                                   if k.startswith("test_") and isinstance(v, (int, float))}
    assert run.final_metrics()  # the baseline's test figures are there
    # a model.json from before format_version and metric: today's layout, cosine
    old = {k: v for k, v in meta.items() if k not in ("format_version", "metric", "embedding")}
    run.model_json.write_text(json.dumps(old))
    module, _, _ = run.embedding_model()
    assert module.metric == run.metric() == "cosine"
    run.model_json.write_text(json.dumps({**meta, "format_version": MODEL_FORMAT_VERSION + 1}))
    with pytest.raises(UserError, match=f"model.json: format_version {MODEL_FORMAT_VERSION + 1} is newer"):
        run.embedding_model()
    run.model_json.write_text("{not json")
    with pytest.raises(UserError, match="model.json: not valid JSON"):
        run.model()
    run.model_json.write_text(json.dumps(meta))
    run.weights.write_bytes(b"garbage")
    with pytest.raises(UserError, match="model.safetensors: cannot read the weights"):
        run.embedding_model()
    run.weights.unlink()
    with pytest.raises(UserError, match="model.safetensors: not found; has the run .* finished"):
        embed_run(out)
    run.preprocessing_json.unlink()
    with pytest.raises(UserError, match=r"preprocessing.json: not found; is .* a supemb training run\?"):
        run.preprocessing()


def test_served_metric_follows_the_loss_registry() -> None:
    def served(**kw) -> str | None:
        return TrainConfig(data="d", target="t", out="o", **kw).served_metric

    assert (served(loss="supcon"), served(loss="tsc"), served(loss="rnc")) == ("cosine", "cosine", "l2")
    assert served(loss="rnc", similarity="cosine") == "cosine" and served(loss="ce") is None
    assert served(loss="l1", metric="l2") == "l2" and served(loss="rnc", metric="cosine") == "cosine"


def test_a_moved_run_directory_is_where_it_is_now(tmp_path: Path) -> None:
    """config.json records where the run was started; a run copied elsewhere resumes there, not back home."""
    from supemb.train.rundir import RunDir

    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "config.json").write_text(json.dumps({"data": "d", "target": "t", "out": str(tmp_path / "original")}))
    assert RunDir(moved).config().out == str(moved)


def test_images_smaller_than_the_input_size_get_one_notice(tmp_path: Path, capsys) -> None:
    from supemb.data.synthetic_webcam import make_webcam_dataset

    webcam = make_webcam_dataset(tmp_path / "w", 20, n_cameras=2, size=20, seed=0)
    for size, noticed in ((32, True), (20, False)):
        t = Trainer(TrainConfig(data=str(webcam), out=str(tmp_path / f"run{size}"), target="temperature",
                                loss="l1", image_size=size, viz=False))
        t._setup()
        err = capsys.readouterr().err
        assert ("at most 20x20 px and --image-size 32 upsamples" in err) is noticed
        assert t.data.notices == ([err.strip()] if noticed else [])


def test_epoch_score_breaks_accuracy_ties_by_map_at_r() -> None:
    from supemb.train.evaluate import epoch_score, score_pair

    early = {"val_knn_acc": 1.0, "val_map_at_r": 0.91, "val_head_acc": 0.5}
    late = {"val_knn_acc": 1.0, "val_map_at_r": 0.99, "val_head_acc": 0.4}
    assert epoch_score(late, "classification", True) > epoch_score(early, "classification", True)
    # accuracy first: a tighter embedding does not buy back a lost item
    assert epoch_score({**late, "val_knn_acc": 0.99}, "classification", True) < epoch_score(
        early, "classification", True)
    # a baseline is picked by its head, ties by the same MAP@R
    assert epoch_score(early, "classification", False) > epoch_score(late, "classification", False)
    assert epoch_score({**late, "val_head_acc": 0.5}, "classification", False) > epoch_score(
        early, "classification", False)
    # no MAP@R (NaN: no query has a relevant item) ranks below any
    nan = epoch_score({**late, "val_map_at_r": float("nan")}, "classification", True)
    assert nan == (1.0, float("-inf")) and nan < epoch_score(early, "classification", True)
    # regression: EEG per recording over per window
    assert epoch_score({"val_knn_mae": 2.0, "val_rec_knn_mae": 3.0}, "regression", True) == (-3.0, 0.0)
    assert epoch_score({"val_head_mae": 2.0, "val_knn_mae": 1.0}, "regression", False) == (-2.0, 0.0)
    # checkpoints: a saved pair, and one float from before the tie-break
    assert score_pair([1.0, 0.5]) == (1.0, 0.5)
    assert score_pair(0.75) == (0.75, float("-inf"))


def test_saturated_accuracy_keeps_the_epoch_with_the_best_map_at_r(image_classes: Path, tmp_path: Path,
                                                                  monkeypatch) -> None:
    # scripted validation figures for the 4 epochs: accuracy saturated from epoch 2, MAP@R best at epoch 3
    scripted = [(0.9, 0.95), (1.0, 0.6), (1.0, 0.8), (1.0, 0.7)]
    real = Trainer._evaluate_epoch
    calls = []

    def evaluate(self, split="val"):
        metrics = real(self, split)
        if len(calls) < len(scripted):
            acc, map_r = scripted[len(calls)]
            calls.append(split)
            metrics.update(val_knn_acc=acc, val_map_at_r=map_r)
        return metrics

    monkeypatch.setattr(Trainer, "_evaluate_epoch", evaluate)
    out = tmp_path / "run"
    train(_cfg(image_classes, out, target="class", loss="supcon", epochs=4))
    assert calls == ["val"] * 4
    state = torch.load(out / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    assert state["position"][:2] == [1, 3]  # saved after epoch 3, not epoch 2 (the first at accuracy 1)
    assert state["best_score"] == [1.0, 0.8]


def test_a_resumed_run_keeps_the_tie_break_of_its_best_epoch(image_classes: Path, tmp_path: Path,
                                                              monkeypatch) -> None:
    # epoch 3 holds the best pair (1.0, 0.8); epoch 4 ties on accuracy with a worse MAP@R and runs after a resume
    scripted = {1: (0.9, 0.95), 2: (1.0, 0.6), 3: (1.0, 0.8), 4: (1.0, 0.7)}
    real = Trainer._evaluate_epoch

    def evaluate(self, split="val"):
        metrics = real(self, split)
        if self.position.stage == 1 and self.position.epoch < 4:  # stage 1's per-epoch call (position not yet moved)
            metrics.update(zip(("val_knn_acc", "val_map_at_r"), scripted[self.position.epoch + 1]))
        return metrics

    monkeypatch.setattr(Trainer, "_evaluate_epoch", evaluate)
    cfg = _cfg(image_classes, tmp_path / "run", target="class", loss="supcon", epochs=4)
    probe = Trainer(_cfg(image_classes, tmp_path / "probe", target="class", loss="supcon", epochs=4))
    probe._setup()
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, interrupt_at_step=3 * probe.steps_per_epoch + 1).run()  # inside epoch 4
    resume_run(tmp_path / "run")
    state = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    assert state["position"][:2] == [1, 3] and state["best_score"] == [1.0, 0.8]
    assert [m["val_knn_acc"] for m in _read_metrics(tmp_path / "run") if m["stage"] == 1] == [0.9, 1.0, 1.0, 1.0]


def test_a_relative_data_path_is_recorded_absolute_so_export_works_from_elsewhere(image_values: Path, tmp_path: Path,
                                                                                  monkeypatch) -> None:
    from supemb.export.writer import export_run

    monkeypatch.chdir(image_values.parent)
    train(_cfg(Path(image_values.name), tmp_path / "run", target="value", loss="rnc"))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"] == str(image_values)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    m = export_run(tmp_path / "run", tmp_path / "bundle")  # the run's own gallery: its training split
    assert m["gallery"]["items"] > 0


def test_a_bundle_exported_from_the_runs_folder_names_its_data_from_there(image_values: Path, tmp_path: Path,
                                                                         monkeypatch) -> None:
    """build_defaults.py trains and exports in a scratch folder: the manifest must not hold that machine's path."""
    from supemb.export.writer import export_run

    import shutil

    shutil.copytree(image_values, tmp_path / "values")
    monkeypatch.chdir(tmp_path)
    train(_cfg(Path("values"), Path("run"), target="value", loss="rnc"))
    m = export_run(Path("run"), Path("bundle"))
    assert m["gallery"]["source"] == "values (training split)"


def test_a_runs_missing_data_is_named_by_its_absolute_path(image_values: Path, tmp_path: Path, monkeypatch) -> None:
    import shutil

    from supemb.errors import UserError
    from supemb.export.writer import export_run

    shutil.copytree(image_values, tmp_path / "values")
    monkeypatch.chdir(tmp_path)
    train(_cfg(Path("values"), Path("run"), target="value", loss="rnc"))
    shutil.rmtree(tmp_path / "values")
    with pytest.raises(UserError) as err:
        export_run(Path("run"), Path("bundle"))
    assert str(err.value).startswith(f"{tmp_path / 'values'}: the run's training data is not there any more; ")
