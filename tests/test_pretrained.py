"""Starting from published weights: torchvision ResNet files, timm's own, and what a run records."""

from __future__ import annotations

import hashlib
import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from supemb.cli import main
from supemb.encoders import build_encoder
from supemb.encoders.pretrained import read_state_dict, start_from
from supemb.errors import UsageError, UserError
from supemb.modalities.image import IMAGE, TRAIN_MEAN, TRAIN_STD
from supemb.preprocess.image import IMAGENET_MEAN, IMAGENET_STD
from supemb.train import trainer as trainer_mod
from supemb.train.config import TrainConfig
from supemb.train.trainer import Trainer, resume_run

# ----------------------------------------------------------- torchvision's layout, written here


def _bn(shapes: dict[str, tuple[int, ...]], prefix: str, c: int) -> None:
    for p in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{prefix}.{p}"] = (c,)
    shapes[f"{prefix}.num_batches_tracked"] = ()


def _torchvision_resnet18_shapes() -> dict[str, tuple[int, ...]]:
    """The state dict of torchvision.models.resnet18(): its names and shapes, from its architecture."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}
    _bn(shapes, "bn1", 64)
    c_in = 64
    for i, w in enumerate((64, 128, 256, 512), start=1):
        for j in range(2):
            b = f"layer{i}.{j}"
            shapes[f"{b}.conv1.weight"] = (w, c_in, 3, 3)
            _bn(shapes, f"{b}.bn1", w)
            shapes[f"{b}.conv2.weight"] = (w, w, 3, 3)
            _bn(shapes, f"{b}.bn2", w)
            if i > 1 and j == 0:
                shapes[f"{b}.downsample.0.weight"] = (w, c_in, 1, 1)
                _bn(shapes, f"{b}.downsample.1", w)
            c_in = w
    shapes["fc.weight"], shapes["fc.bias"] = (1000, 512), (1000,)
    return shapes


def _random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, s in shapes.items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(7, dtype=torch.long)
        elif k.endswith("running_var"):
            state[k] = torch.rand(s, generator=g) + 0.5
        else:
            state[k] = torch.randn(s, generator=g) * 0.1
    return state


def _tv_bn(x: torch.Tensor, s: dict[str, torch.Tensor], p: str) -> torch.Tensor:
    return F.batch_norm(x, s[f"{p}.running_mean"], s[f"{p}.running_var"], s[f"{p}.weight"], s[f"{p}.bias"],
                        training=False, eps=1e-5)


def _tv_resnet18_features(x: torch.Tensor, s: dict[str, torch.Tensor]) -> torch.Tensor:
    """torchvision's ResNet-18 forward up to the average pool, from its state dict: [B, 3, H, W] -> [B, 512]."""
    x = F.relu(_tv_bn(F.conv2d(x, s["conv1.weight"], stride=2, padding=3), s, "bn1"))
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    for i in range(1, 5):
        for j in range(2):
            b, stride = f"layer{i}.{j}", 2 if i > 1 and j == 0 else 1
            out = F.relu(_tv_bn(F.conv2d(x, s[f"{b}.conv1.weight"], stride=stride, padding=1), s, f"{b}.bn1"))
            out = _tv_bn(F.conv2d(out, s[f"{b}.conv2.weight"], padding=1), s, f"{b}.bn2")
            short = x
            if f"{b}.downsample.0.weight" in s:
                short = _tv_bn(F.conv2d(x, s[f"{b}.downsample.0.weight"], stride=stride), s, f"{b}.downsample.1")
            x = F.relu(out + short)
    return x.mean(dim=(2, 3))


def _renamed_the_torchvision_way(model: nn.Module, classes: int = 1000) -> dict[str, torch.Tensor]:
    """Our ResNet's state dict under torchvision's names, plus a classifier fc.*."""
    body = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2", "6": "conv3", "7": "bn3"}
    out = {}
    for key, t in model.state_dict().items():
        k = re.sub(r"^stem\.0\.", "conv1.", re.sub(r"^stem\.1\.", "bn1.", key))
        m = re.fullmatch(r"stages\.(\d)\.(\d+)\.(body|shortcut)\.(\d)\.(\w+)", k)
        if m:
            stage, block, part, idx, param = m.groups()
            module = body[idx] if part == "body" else f"downsample.{idx}"
            k = f"layer{int(stage) + 1}.{block}.{module}.{param}"
        out[k] = t.clone()
    out["fc.weight"], out["fc.bias"] = torch.randn(classes, model.embed_dim), torch.randn(classes)
    return out


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def _randomised(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if name.endswith("running_var")
                        else torch.randn(t.shape, generator=g) * 0.1)
    return model


# ------------------------------------------------------------------ loading files


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_torchvision_resnet18_file_lands_where_torchvision_uses_it(tmp_path: Path, suffix: str) -> None:
    shapes = _torchvision_resnet18_shapes()
    assert len(shapes) == 122  # torchvision's resnet18 state dict
    state = _random_state(shapes)
    path = _save(state, tmp_path / f"resnet18{suffix}")
    encoder = build_encoder("resnet18")
    model, record = start_from(str(path), encoder, "resnet18", {})
    assert model is encoder
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), _tv_resnet18_features(x, state), atol=1e-5)
    assert record["source"] == "torchvision" and record["file"] == str(path)
    assert record["format"] == ("safetensors" if suffix == ".safetensors" else "torch")
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (record["loaded"], record["skipped"], record["dropped"]) == (120, [], ["fc.bias", "fc.weight"])
    assert (record["mean"], record["std"]) == (list(IMAGENET_MEAN), list(IMAGENET_STD))


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_every_tensor_arrives_at_its_place(tmp_path: Path, name: str) -> None:
    source = _randomised(build_encoder(name), seed=1)
    state = _renamed_the_torchvision_way(source)
    path = _save(state, tmp_path / f"{name}.safetensors")
    target = build_encoder(name)
    start_from(str(path), target, name, {})
    for (ours, t), (theirs, s) in zip(target.state_dict().items(), source.state_dict().items()):
        assert ours == theirs and torch.equal(t, s), ours
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(target.eval()(x), source.eval()(x))


def test_small_stem_skips_the_stem_by_its_rule_and_loads_the_rest(tmp_path: Path) -> None:
    source = _randomised(build_encoder("resnet18"), seed=2)
    path = _save(_renamed_the_torchvision_way(source), tmp_path / "r18.pth")
    target = build_encoder("resnet18_small")
    stem_before = {k: v.clone() for k, v in target.stem.state_dict().items()}
    _, record = start_from(str(path), target, "resnet18_small", {})
    assert record["skipped"] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean",
                                 "bn1.running_var", "bn1.num_batches_tracked"]
    assert "small stem" in record["skip_rule"] and record["loaded"] == 120 - 6
    for k, v in target.stem.state_dict().items():
        assert torch.equal(v, stem_before[k]), k  # the stem starts fresh
    for k, v in target.stages.state_dict().items():
        assert torch.equal(v, source.stages.state_dict()[k]), k  # everything after it is loaded


def test_older_files_without_batch_counters_load(tmp_path: Path) -> None:
    state = {k: v for k, v in _random_state(_torchvision_resnet18_shapes()).items()
             if not k.endswith("num_batches_tracked")}
    _, record = start_from(str(_save(state, tmp_path / "old.pth")), build_encoder("resnet18"), "resnet18", {})
    assert record["loaded"] == 100


def _error(path: Path, name: str = "resnet18") -> str:
    with pytest.raises(UserError) as exc:
        start_from(str(path), build_encoder(name), name, {})
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    return msg


def test_resnet50_weights_into_resnet18_name_the_first_misfit(tmp_path: Path) -> None:
    path = _save(_renamed_the_torchvision_way(build_encoder("resnet50")), tmp_path / "r50.safetensors")
    msg = _error(path)
    assert "layer1.0.conv1.weight has shape [64, 64, 1, 1], resnet18 expects [64, 64, 3, 3]" in msg
    assert "looks like resnet50" in msg
    r18 = _save(_renamed_the_torchvision_way(build_encoder("resnet18")), tmp_path / "r18.pth")
    assert "layer1.2.conv1.weight is missing" in _error(r18, "resnet34") and "looks like resnet18" in _error(r18, "resnet34")


def test_a_non_resnet_file_missing_and_extra_keys_are_refused(tmp_path: Path) -> None:
    other = {"encoder.0.weight": torch.randn(8, 3, 3, 3), "head.weight": torch.randn(2, 8)}
    msg = _error(_save(other, tmp_path / "other.safetensors"))
    assert "conv1.weight is missing" in msg and "no torchvision ResNet" in msg
    state = _random_state(_torchvision_resnet18_shapes())
    missing = {k: v for k, v in state.items() if k != "layer3.1.bn2.bias"}
    assert "layer3.1.bn2.bias is missing" in _error(_save(missing, tmp_path / "missing.pth"))
    extra = {**state, "layer4.1.conv3.weight": torch.randn(3)}
    assert "unexpected key layer4.1.conv3.weight" in _error(_save(extra, tmp_path / "extra.pth"))
    narrow = _random_state(_torchvision_resnet18_shapes())
    narrow["conv1.weight"] = torch.randn(64, 1, 7, 7)
    assert "conv1.weight has shape [64, 1, 7, 7], resnet18 expects [64, 3, 7, 7]" in _error(
        _save(narrow, tmp_path / "grey.pth"))
    for bad, content in (("broken.safetensors", b"not safetensors"), ("broken.pth", b"not a torch file")):
        (tmp_path / bad).write_bytes(content)
        assert _error(tmp_path / bad)
    assert "not found" in _error(tmp_path / "absent.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    assert "expected a state dict" in _error(tmp_path / "list.pth")
    with pytest.raises(UserError, match="not into encoder 'small_cnn'"):
        start_from(str(tmp_path / "list.pth"), build_encoder("small_cnn"), "small_cnn", {})


RAN: list[str] = []


def _ran() -> dict:
    RAN.append("unpickled")
    return {}


class _Payload:
    def __reduce__(self):  # what unpickling would call
        return (_ran, ())


def test_torch_files_are_read_with_weights_only_and_pickles_are_refused(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": _Payload()}, path)
    assert "pickled Python objects" in _error(path) and RAN == []
    calls: list[dict] = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    good = _save(_random_state(_torchvision_resnet18_shapes()), tmp_path / "good.pth")
    read_state_dict(good)
    assert calls and all(kw.get("weights_only") is True for kw in calls)


class _Custom:  # a class a training script might pickle along with its weights
    pass


@pytest.mark.parametrize("content, expected", [
    ({"model": _Custom()}, ": not a plain state dict (it holds pickled Python objects, e.g. "
     f"{_Custom.__module__}._Custom, which supemb does not load; save model.state_dict() instead)"),
    ({"conv1.weight": torch.zeros(1), "fc": "oops"},
     ": expected a state dict (names -> tensors); key 'fc' holds str"),
    ({"conv1.weight": torch.zeros(1), "model": {"conv1.weight": torch.zeros(1)}},
     ": expected a state dict (names -> tensors); key 'model' holds dict"),
    ({"conv1.weight": torch.zeros(1), 3: torch.zeros(1)},
     ": expected a state dict (names -> tensors); key 3 is not a name (int)"),
], ids=["pickled-object", "str-value", "nested-dict", "int-key"])
def test_a_file_that_is_not_a_state_dict_says_why_on_one_plain_line(tmp_path: Path, content: dict,
                                                                      expected: str) -> None:
    path = tmp_path / "weights.pth"
    torch.save(content, path)
    msg = _error(path)
    assert msg == f"{path}{expected}" and "\x1b" not in msg


# ------------------------------------------------------------------ timm


def _fake_timm(monkeypatch: pytest.MonkeyPatch, cfg: dict | None) -> list[dict]:
    calls: list[dict] = []

    class Pooled(nn.Module):
        num_features = 24

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, self.num_features, 3)
            self.pretrained_cfg = cfg or {}

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).mean(dim=(2, 3))

    def create_model(name: str, **kw) -> nn.Module:
        calls.append({"name": name, **kw})
        return Pooled()

    fake = types.SimpleNamespace(create_model=create_model, get_pretrained_cfg=lambda name: cfg)
    monkeypatch.setitem(sys.modules, "timm", fake)
    return calls


def test_timm_builds_with_its_own_pretrained_weights_and_normalisation(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = {"mean": (0.5, 0.4, 0.3), "std": (0.2, 0.2, 0.1), "input_size": (3, 160, 160)}
    calls = _fake_timm(monkeypatch, cfg)
    plain = build_encoder("timm:tiny_net")
    model, record = start_from("timm", plain, "timm:tiny_net", {})
    assert calls == [{"name": "tiny_net", "pretrained": False, "num_classes": 0},
                     {"name": "tiny_net", "pretrained": True, "num_classes": 0}]
    assert model is not plain and model.embed_dim == 24
    assert record == {"source": "timm", "model": "tiny_net", "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.1],
                      "pretrained_input_size": [3, 160, 160]}
    run = TrainConfig(data="d", target="t", out="o", encoder="timm:tiny_net", pretrained="timm", image_size=48)
    norm = IMAGE.training_pipeline(run).params("normalize")
    assert (norm["mean"], norm["std"]) == ([0.5, 0.4, 0.3], [0.2, 0.2, 0.1])
    assert IMAGE.training_pipeline(run).params("resize_crop")["image_size"] == 48  # the run's --image-size
    _fake_timm(monkeypatch, None)  # a model without a pretrained_cfg: ImageNet's
    assert IMAGE.training_pipeline(run).params("normalize")["mean"] == list(IMAGENET_MEAN)
    with pytest.raises(UserError, match="use --pretrained timm"):
        start_from("weights.pth", plain, "timm:tiny_net", {})


def test_timm_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)
    run = TrainConfig(data="d", target="t", out="o", encoder="timm:tiny_net", pretrained="timm")
    with pytest.raises(UserError, match=r"pip install supemb\[timm\]"):
        IMAGE.training_pipeline(run)


# ------------------------------------------------------------------ config and runs


def test_pretrained_needs_a_fitting_encoder() -> None:
    with pytest.raises(UsageError, match="--pretrained needs --encoder"):
        TrainConfig(data="d", target="t", out="o", pretrained="w.pth")
    with pytest.raises(UsageError, match="does not go with --encoder resnet18"):
        TrainConfig(data="d", target="t", out="o", encoder="resnet18", pretrained="timm")
    with pytest.raises(UsageError, match="does not go with --encoder timm:vit"):
        TrainConfig(data="d", target="t", out="o", encoder="timm:vit", pretrained="w.pth")
    scratch = IMAGE.training_pipeline(TrainConfig(data="d", target="t", out="o")).params("normalize")
    assert (scratch["mean"], scratch["std"]) == (list(TRAIN_MEAN), list(TRAIN_STD))  # unchanged without weights


@pytest.fixture(scope="module")
def image_values(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("values")
    rng = np.random.default_rng(1)
    rows = ["path,value"]
    for i in range(32):
        value = float(rng.uniform(0, 100))
        Image.fromarray(np.clip(value * 2 + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)).save(
            root / f"{i}.png")
        rows.append(f"{i}.png,{value:.3f}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_a_run_from_imagenet_weights_records_them_and_resume_keeps_its_checkpoint(
        image_values: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = _save(_renamed_the_torchvision_way(_randomised(build_encoder("resnet18"), 3)),
                    tmp_path / "resnet18.safetensors")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    out = tmp_path / "run"
    args = ["train", "--data", str(image_values), "--target", "value", "--loss", "rnc", "--encoder", "resnet18",
            "--pretrained", str(weights), "--epochs", "1", "--linear-epochs", "0", "--batch-size", "8",
            "--image-size", "16", "--knn-k", "3", "--no-viz", "--num-workers", "0", "--out", str(out)]
    assert main(args) == 0
    prep = json.loads((out / "preprocessing.json").read_text())
    norm = next(s for s in prep["steps"] if s["op"] == "normalize")
    assert (norm["mean"], norm["std"]) == (list(IMAGENET_MEAN), list(IMAGENET_STD))
    assert json.loads((out / "config.json").read_text())["pretrained"] == str(weights)
    record = json.loads((out / "model.json").read_text())["pretrained"]
    assert (record["file"], record["sha256"], record["loaded"]) == (str(weights), digest, 120)

    # A resumed run continues from its checkpoint and never reads the file again.
    cfg = TrainConfig(data=str(image_values), target="value", loss="rnc", encoder="resnet18",
                      pretrained=str(weights), epochs=2, linear_epochs=0, batch_size=8, image_size=16,
                      knn_k=3, viz=False, num_workers=0, out=str(tmp_path / "resumed"))
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, interrupt_at_step=3).run()
    weights.rename(tmp_path / "moved.safetensors")
    monkeypatch.setattr(trainer_mod, "start_from", lambda *a, **kw: pytest.fail("reloaded over the checkpoint"))
    resume_run(cfg.out)
    assert json.loads((Path(cfg.out) / "model.json").read_text())["pretrained"]["sha256"] == digest


def test_a_wrong_file_stops_the_cli_with_one_line(image_values: Path, tmp_path: Path, capsys) -> None:
    bad = _save(_renamed_the_torchvision_way(build_encoder("resnet50")), tmp_path / "r50.pth")
    code = main(["train", "--data", str(image_values), "--target", "value", "--encoder", "resnet18",
                 "--pretrained", str(bad), "--epochs", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and str(bad) in err[0] and "looks like resnet50" in err[0], err
