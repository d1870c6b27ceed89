"""Augmentation presets: the tables, their resolution from settings, and that
each preset keeps what it promises (colour, orientation, identity)."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from supemb import modalities
from supemb.cli import build_parser, main
from supemb.errors import UsageError, UserError
from supemb.preprocess.eeg_augment import EEG_AUGMENTS, EEGAugment, eeg_augment
from supemb.preprocess.image import PreprocessSpec
from supemb.preprocess.image_augment import (
    IMAGE_AUGMENTS,
    AugmentSpec,
    ContrastiveAugment,
    eval_preprocess,
    image_augment,
)
from supemb.train import trainer as trainer_mod
from supemb.train.config import AUGMENT_HELP, TrainConfig, load_config
from supemb.train.data import prepare_data, resolve_augment

# Identity normalisation, so a view's values are the pixel values / 255.
RAW = PreprocessSpec.square(24, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _saturated(seed: int = 0) -> Image.Image:
    """Orange-red with texture and a vertical gradient: crops differ, the hue does not."""
    rng = np.random.default_rng(seed)
    base = np.array([210.0, 80.0, 40.0])
    shade = np.linspace(0.7, 1.0, 40)[:, None, None]
    px = base * shade * rng.uniform(0.9, 1.0, (40, 40, 1))
    return Image.fromarray(np.clip(px, 0, 255).astype(np.uint8))


def _hsv_of_mean(chw: np.ndarray) -> tuple[float, float, float]:
    return colorsys.rgb_to_hsv(*chw.reshape(3, -1).mean(axis=1))


def _views(preset: str, image: Image.Image, n: int = 40) -> list[np.ndarray]:
    aug = ContrastiveAugment(RAW, IMAGE_AUGMENTS[preset])
    return [aug(image, torch.Generator().manual_seed(s)).numpy() for s in range(n)]


# ------------------------------------------------------------------ tables


def test_every_preset_resolves_by_name_and_from_its_record() -> None:
    assert set(IMAGE_AUGMENTS) == {"simclr", "colour", "light", "none"}
    assert set(EEG_AUGMENTS) == {"eeg", "eeg-light", "eeg-context", "eeg-light-context", "none"}
    assert IMAGE_AUGMENTS["simclr"] == AugmentSpec() and EEG_AUGMENTS["eeg"] == EEGAugment()
    for table, modality in ((IMAGE_AUGMENTS, "image"), (EEG_AUGMENTS, "eeg")):
        for name, spec in table.items():
            got, record = resolve_augment(name, modality, "regression")
            assert got == spec and record["preset"] == name
            again, record2 = resolve_augment(record, modality, "regression")  # the record resolves back
            assert again == spec and record2 == record
    colour, light = IMAGE_AUGMENTS["colour"], IMAGE_AUGMENTS["light"]
    assert (colour.hue, colour.saturation, colour.grey_p, colour.flip_p, colour.scale) == (0, 0, 0, 0.5, (0.6, 1.0))
    assert light == AugmentSpec(**{**colour.to_dict(), "flip_p": 0.0})
    assert EEG_AUGMENTS["eeg-light"] == EEGAugment(0.5, 0.9, 1.1, 0.05, 0.0)
    for name in ("eeg", "eeg-light"):  # the context presets: the same, with views cut from around the window
        assert EEG_AUGMENTS[f"{name}-context"] == EEGAugment(**{**EEG_AUGMENTS[name].to_dict(), "context_frac": 1.0})


def test_defaults_by_task() -> None:
    # the defaults chosen on validation (docs/recipe.md): no flips for classes, colour kept for values
    assert resolve_augment(None, "image", "classification")[1]["preset"] == "light"
    assert resolve_augment(None, "image", "regression")[1]["preset"] == "colour"
    assert resolve_augment(None, "eeg", "regression")[0] == EEG_AUGMENTS["eeg-light-context"]
    # chosen on validation for each side (docs/recipe.md): contrastive EEG takes the milder preset
    assert resolve_augment(None, "eeg", "regression", contrastive=True)[1]["preset"] == "eeg-light"
    assert resolve_augment(None, "image", "regression", contrastive=True)[1]["preset"] == "colour"
    assert resolve_augment("eeg", "eeg", "regression", contrastive=True)[1]["preset"] == "eeg"  # a given one stands


def test_mapping_overrides() -> None:
    spec, record = resolve_augment({"preset": "colour", "brightness": 0.3, "scale": [0.5, 1]}, "image", "regression")
    assert spec == AugmentSpec(**{**IMAGE_AUGMENTS["colour"].to_dict(), "brightness": 0.3, "scale": (0.5, 1.0)})
    assert record["preset"] == "custom" and record["brightness"] == 0.3 and record["scale"] == [0.5, 1.0]
    # An override that changes nothing keeps the name; YAML-style dashed keys work.
    assert image_augment({"preset": "light", "flip_p": 0})[0] == "light"
    name, eeg = eeg_augment({"preset": "eeg", "channel-drop-p": 0.0})
    assert name == "custom" and eeg == EEGAugment(channel_drop_p=0.0)
    # "custom" starts from the class defaults.
    assert image_augment({"preset": "custom", "grey_p": 0.0})[1] == AugmentSpec(grey_p=0.0)
    assert image_augment("Color")[0] == "colour"


@pytest.mark.parametrize(
    ("value", "modality", "match"),
    [
        ("bogus", "image", "presets: simclr, colour, light, none"),
        ("eeg-light", "image", "EEG preset.*image presets: simclr, colour, light, none"),
        ("colour", "eeg", "image preset.*EEG presets: eeg, eeg-light, eeg-context, eeg-light-context, none"),
        ({"preset": "colour", "blur": 1}, "image", "unknown field.*blur"),
        ({"preset": "nope"}, "eeg", "presets: eeg, eeg-light, eeg-context, eeg-light-context, none"),
        ({"brightness": 0.3}, "image", "needs 'preset'"),
        ({"preset": "colour", "hue": 0.7}, "image", "hue must be in"),
        ({"preset": "colour", "hue": "x"}, "image", "hue must be a number"),
        ({"preset": "colour", "scale": [0.5]}, "image", "scale must be 2 numbers"),
        ({"preset": "eeg", "scale_low": 2.0}, "eeg", "scale_low <= scale_high"),
        (3, "image", "preset name"),
    ],
)
def test_bad_settings_give_one_line(value, modality, match) -> None:
    with pytest.raises(UsageError, match=match) as err:
        resolve_augment(value, modality, "regression")
    assert "\n" not in str(err.value)


def test_eeg_augment_dict_roundtrip_and_validation() -> None:
    a = EEGAugment(max_shift_frac=0.25, noise_rel_std=0.0)
    assert EEGAugment.from_dict(a.to_dict()) == a
    with pytest.raises(UserError, match="unknown keys"):
        EEGAugment.from_dict({"jitter": 1})
    with pytest.raises(UserError, match="channel_drop_p"):
        EEGAugment(channel_drop_p=1.5)


# ------------------------------------------------------------- behaviour


@pytest.mark.parametrize("preset", ["colour", "light"])
def test_colour_presets_keep_hue_and_never_grey(preset: str) -> None:
    image = _saturated()
    h0, s0, _ = _hsv_of_mean(np.asarray(image, np.float64).transpose(2, 0, 1) / 255.0)
    for view in _views(preset, image):
        h, s, _ = _hsv_of_mean(view)
        assert abs(h - h0) < 0.01, (h, h0)
        assert s > 0.5 * s0
        assert not (np.array_equal(view[0], view[1]) and np.array_equal(view[1], view[2]))
    # The check has teeth: the SimCLR recipe shifts hue or drops colour in some views.
    moved = [abs(_hsv_of_mean(v)[0] - h0) > 0.01 or _hsv_of_mean(v)[1] < 0.5 * s0 for v in _views("simclr", image)]
    assert any(moved)


def test_light_never_flips() -> None:
    ramp = np.repeat(np.linspace(250, 10, 40)[None, :, None], 40, axis=0).repeat(3, axis=2)
    image = Image.fromarray(ramp.astype(np.uint8))

    def left_brighter(view: np.ndarray) -> bool:
        return view[:, :, :12].mean() > view[:, :, 12:].mean()

    assert all(left_brighter(v) for v in _views("light", image))
    assert not all(left_brighter(v) for v in _views("colour", image))  # the check has teeth


def test_flip_p_does_not_change_the_draws() -> None:
    """colour and light differ in flip_p only: same generator -> same numbers drawn,
    so each colour view is the light view or its mirror image."""
    image = _saturated()
    for seed in range(10):
        g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        a = ContrastiveAugment(RAW, IMAGE_AUGMENTS["colour"])(image, g1)
        b = ContrastiveAugment(RAW, IMAGE_AUGMENTS["light"])(image, g2)
        assert torch.equal(a, b) or torch.equal(a, b.flip(-1))
        assert torch.equal(g1.get_state(), g2.get_state())


@pytest.mark.parametrize("spec", [PreprocessSpec(image_size=32, resize_size=40), PreprocessSpec.square(24)])
def test_none_equals_eval_preprocessing(spec: PreprocessSpec) -> None:
    arr = np.random.default_rng(3).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    image = Image.fromarray(arr)
    aug = ContrastiveAugment(spec, IMAGE_AUGMENTS["none"])
    for seed in range(3):
        assert torch.equal(aug(image, torch.Generator().manual_seed(seed)), eval_preprocess(image, spec))


def test_eeg_presets() -> None:
    x = torch.randn(3, 8, 100, generator=torch.Generator().manual_seed(0))
    states = []
    for name, augment in EEG_AUGMENTS.items():
        g = torch.Generator().manual_seed(1)
        y = augment(x, g)
        states.append(g.get_state())
        if name == "none":
            assert torch.equal(y, x)
        else:
            assert not torch.equal(y, x)
        if name == "eeg-light":
            assert (y.abs().amax(dim=-1) > 0).all()  # no channel dropped
    assert all(torch.equal(s, states[0]) for s in states)  # the same numbers drawn by every preset


# ------------------------------------------------------ config, CLI, data


def test_config_and_yaml(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("data: d\ntarget: t\nout: o\naugment: {preset: colour, brightness: 0.3}\n")
    assert load_config(path, {}).augment == {"preset": "colour", "brightness": 0.3}
    assert load_config(path, {"augment": "none"}).augment == "none"  # the flag wins
    assert TrainConfig(data="d", target="t", out="o").augment is None
    with pytest.raises(UsageError, match="augment"):
        TrainConfig(data="d", target="t", out="o", augment=3)
    with pytest.raises(UsageError, match="preset"):
        TrainConfig(data="d", target="t", out="o", augment={"brightness": 0.3})


def test_cli_flag_reaches_the_config(monkeypatch, capsys) -> None:
    seen = []
    monkeypatch.setattr(trainer_mod, "train", lambda cfg: seen.append(cfg) or {})
    assert main(["train", "--data", "d", "--target", "t", "--out", "o", "--augment", "light"]) == 0
    assert seen[0].augment == "light"
    assert main(["train", "--data", "d", "--target", "t", "--out", "o"]) == 0
    assert seen[1].augment is None
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "--augment NAME" in help_text
    for name in [*IMAGE_AUGMENTS, *EEG_AUGMENTS]:  # the help spells out every preset and the defaults
        assert f" {name}" in AUGMENT_HELP, name
    defaults = [(m, task, name) for m in ("image", "eeg") for task, name in modalities.get(m).default_augment.items()]
    defaults += [(m, "contrastive " + task, name) for m in ("image", "eeg")
                 for task, name in modalities.get(m).contrastive_augment.items()]
    assert len(defaults) == 4
    for modality, task, name in defaults:
        said = {("image", "classification"): "image classes", ("image", "regression"): "image values",
                ("eeg", "regression"): "EEG", ("eeg", "contrastive regression"): "EEG with a contrastive loss"}[
            (modality, task)]
        assert f"{said}: {name}" in AUGMENT_HELP, (modality, task)


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    for name, colour in (("red", (200, 40, 40)), ("blue", (40, 40, 200))):
        (root / name).mkdir()
        for i in range(6):
            Image.new("RGB", (12, 12), colour).save(root / name / f"{i}.png")
    return root


def test_prepared_data_records_the_augmentation(tiny_images: Path, tmp_path: Path, capsys) -> None:
    cfg = TrainConfig(data=str(tiny_images), target="class", out=str(tmp_path / "r"), loss="supcon",
                      image_size=12, augment={"preset": "light", "contrast": 0.1})
    data = prepare_data(cfg)
    assert data.augment_spec["preset"] == "custom" and data.augment_spec["contrast"] == 0.1
    assert data.summary["augment"] == data.augment_spec
    view = data.augment(Image.new("RGB", (12, 12), (200, 40, 40)), torch.Generator().manual_seed(0))
    assert view.shape == (3, 12, 12)
    default = prepare_data(TrainConfig(data=str(tiny_images), target="class", out="o", loss="ce", image_size=12))
    assert default.augment_spec == {"preset": "light", **IMAGE_AUGMENTS["light"].to_dict()}
    # A preset of the other modality: exit 2 with one line, before any training.
    rc = main(["train", "--data", str(tiny_images), "--target", "class", "--out", str(tmp_path / "x"),
               "--loss", "ce", "--augment", "eeg"])
    err = capsys.readouterr().err
    assert rc == 2 and "EEG preset" in err and "simclr, colour, light, none" in err
    assert not (tmp_path / "x").exists()
