"""Evaluation preprocessing (PIL and numpy paths agree) and contrastive augmentation."""

from __future__ import annotations

import colorsys
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from supemb.errors import UserError
from supemb.preprocess.image import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PreprocessSpec,
    as_rgb_image,
    crop_box,
    eval_preprocess_array,
    eval_preprocess_batch,
)
from supemb.preprocess.image_augment import (
    AugmentSpec,
    ContrastiveAugment,
    EvalTransform,
    _shift_hue,
    color_jitter,
    eval_preprocess,
    random_crop_box,
)

SPEC = PreprocessSpec(image_size=32, resize_size=40)


def _random_image(h: int = 50, w: int = 70, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------- spec


def test_spec_json_roundtrip() -> None:
    spec = PreprocessSpec(image_size=64, resize_size=72, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    d = json.loads(json.dumps(spec.to_dict()))
    assert d["resample"] == "bilinear" and d["mean"] == [0.5, 0.5, 0.5]
    back = PreprocessSpec.from_dict(d)
    assert back == spec and isinstance(back.mean, tuple)
    assert PreprocessSpec() == PreprocessSpec(224, 256, IMAGENET_MEAN, IMAGENET_STD)
    assert PreprocessSpec.square(64).resize_size == 64


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image_size": 64, "resize_size": 32},
        {"image_size": 0, "resize_size": 32},
        {"std": (0.2, 0.0, 0.2)},
        {"mean": (0.5, 0.5)},
        {"image_size": 2.5, "resize_size": 3},
    ],
)
def test_spec_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(UserError, match="preprocessing"):
        PreprocessSpec(**kwargs)


def test_spec_from_dict_rejects_unknown_keys_and_resample() -> None:
    d = SPEC.to_dict()
    with pytest.raises(UserError, match="unknown keys"):
        PreprocessSpec.from_dict({**d, "colour": "yes"})
    with pytest.raises(UserError, match="resample 'nearest'"):
        PreprocessSpec.from_dict({**d, "resample": "nearest"})


# ------------------------------------------------------------ eval preprocess


def test_eval_preprocess_shape_dtype_and_constant_value() -> None:
    img = Image.new("RGB", (90, 60), (255, 128, 0))
    x = eval_preprocess(img, SPEC)
    assert isinstance(x, torch.Tensor) and x.shape == (3, 32, 32) and x.dtype == torch.float32
    expected = [(v / 255.0 - m) / s for v, m, s in zip((255, 128, 0), IMAGENET_MEAN, IMAGENET_STD)]
    for c in range(3):
        assert torch.allclose(x[c], torch.full((32, 32), expected[c]), atol=1e-5)


def test_pil_and_numpy_paths_agree_exactly() -> None:
    for h, w in ((50, 70), (70, 50), (32, 32), (17, 200), (400, 300)):
        arr = _random_image(h, w, seed=h + w)
        a = eval_preprocess_array(arr, SPEC)
        t = eval_preprocess(Image.fromarray(arr), SPEC)
        assert a.dtype == np.float32 and a.shape == (3, 32, 32) and a.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(a, t.numpy())


def test_batch_matches_single_and_accepts_paths(tmp_path: Path) -> None:
    arrs = [_random_image(40 + 10 * i, 60, seed=i) for i in range(3)]
    Image.fromarray(arrs[2]).save(tmp_path / "x.png")
    batch = eval_preprocess_batch([arrs[0], Image.fromarray(arrs[1]), tmp_path / "x.png"], SPEC)
    assert batch.shape == (3, 3, 32, 32) and batch.dtype == np.float32
    for i, a in enumerate(arrs):
        np.testing.assert_array_equal(batch[i], eval_preprocess_array(a, SPEC))


def test_centre_crop_keeps_the_centre() -> None:
    # A wide image: left and right thirds black, centre white. After resizing
    # the shorter side and centre cropping only the white band is left (the
    # antialiasing filter lets the outermost columns see a little black).
    arr = np.zeros((40, 120, 3), np.uint8)
    arr[:, 40:80] = 255
    spec = PreprocessSpec(image_size=16, resize_size=16, mean=(0, 0, 0), std=(1, 1, 1))
    x = eval_preprocess_array(arr, spec)
    assert x[:, :, 1:-1].min() > 0.99 and x.min() > 0.8
    assert crop_box(120, 40, spec) == (40.0, 0.0, 80.0, 40.0)
    assert crop_box(100, 100, PreprocessSpec(224, 256)) == pytest.approx((6.25, 6.25, 93.75, 93.75))


def test_gradient_is_resized_not_cropped_when_sizes_match() -> None:
    ramp = np.tile(np.linspace(0, 255, 64).astype(np.uint8)[None, :, None], (64, 1, 3))
    spec = PreprocessSpec(image_size=16, resize_size=16, mean=(0, 0, 0), std=(1, 1, 1))
    x = eval_preprocess_array(ramp, spec)
    assert x[0, 0, 0] < 0.05 and x[0, 0, -1] > 0.95  # the full ramp survives
    assert np.all(np.diff(x[0, 0]) > 0)


def test_other_inputs_are_converted() -> None:
    grey = np.full((20, 20), 100, np.uint8)
    rgba = np.zeros((20, 20, 4), np.uint8)  # fully transparent -> white
    assert np.asarray(as_rgb_image(grey))[0, 0].tolist() == [100, 100, 100]
    assert np.asarray(as_rgb_image(rgba))[0, 0].tolist() == [255, 255, 255]
    la = Image.new("LA", (20, 20), (0, 255))
    black = eval_preprocess_array(np.zeros((20, 20, 3), np.uint8), SPEC)
    np.testing.assert_array_equal(eval_preprocess(la, SPEC).numpy(), black)
    with pytest.raises(UserError, match="uint8"):
        eval_preprocess_array(np.zeros((8, 8, 3), np.float32), SPEC)
    with pytest.raises(UserError, match=r"shape \[8, 8, 2\]"):
        eval_preprocess_array(np.zeros((8, 8, 2), np.uint8), SPEC)


@pytest.mark.parametrize("empty", [np.zeros((0, 0), np.uint8), np.zeros((0, 5), np.uint8),
                                   np.zeros((4, 0, 3), np.uint8), Image.new("RGB", (0, 0)), Image.new("L", (5, 0))],
                         ids=["grey 0x0", "grey 0x5", "rgb 4x0", "pil 0x0", "pil 5x0"])
def test_an_empty_image_is_refused_not_read_as_black(empty) -> None:
    with pytest.raises(UserError, match=r"empty|shape \[(0|4), (0|5)"):
        as_rgb_image(empty)


def test_eval_transform_for_datasets() -> None:
    arr = _random_image()
    t = EvalTransform(SPEC)
    np.testing.assert_array_equal(t(Image.fromarray(arr)).numpy(), eval_preprocess_array(arr, SPEC))


# -------------------------------------------------------------- augmentation


def test_random_crop_box_respects_scale_and_ratio() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        x0, y0, x1, y1 = random_crop_box(80, 60, (0.2, 1.0), (3 / 4, 4 / 3), lambda k: rng.random(k).tolist())
        w, h = x1 - x0, y1 - y0
        assert 0 <= x0 and 0 <= y0 and x1 <= 80 + 1e-9 and y1 <= 60 + 1e-9
        assert 0.2 * 4800 - 1e-6 <= w * h <= 4800 + 1e-6
        assert 3 / 4 - 1e-9 <= w / h <= 4 / 3 + 1e-9


def test_random_crop_box_fallback_for_extreme_aspect() -> None:
    # A 1000x10 strip never fits a 3/4..4/3 box with >= 20% of its area.
    box = random_crop_box(1000, 10, (0.2, 1.0), (3 / 4, 4 / 3), lambda k: [0.5] * k)
    assert box == pytest.approx((500 - 10 * 4 / 6, 0.0, 500 + 10 * 4 / 6, 10.0))


def test_augment_shapes_dtypes_and_determinism() -> None:
    img = Image.fromarray(_random_image())
    aug = ContrastiveAugment(SPEC)
    a = aug(img, torch.Generator().manual_seed(5))
    b = aug(img, torch.Generator().manual_seed(5))
    c = aug(img, torch.Generator().manual_seed(6))
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    seeded1, seeded2 = ContrastiveAugment(SPEC, seed=11), ContrastiveAugment(SPEC, seed=11)
    s1 = [seeded1(img) for _ in range(3)]
    s2 = [seeded2(img) for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(s1, s2))
    assert not torch.equal(s1[0], s1[1])  # the stream moves on between calls


def test_global_rng_is_used_without_seed() -> None:
    img = Image.fromarray(_random_image())
    aug = ContrastiveAugment(SPEC)
    torch.manual_seed(3)
    a = aug(img)
    torch.manual_seed(3)
    assert torch.equal(a, aug(img))


def test_successive_views_differ_and_a_generator_replays_them() -> None:
    img = Image.fromarray(_random_image())
    aug = ContrastiveAugment(SPEC)
    g = torch.Generator().manual_seed(0)
    v1, v2 = aug(img, g), aug(img, g)
    assert v1.shape == (3, 32, 32) and v1.dtype == torch.float32
    assert not torch.equal(v1, v2)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(v1, aug(img, g)) and torch.equal(v2, aug(img, g))
    assert torch.equal(EvalTransform(SPEC)(img), eval_preprocess(img, SPEC))


def test_identity_augmentation_equals_eval() -> None:
    # Scale (1, 1) is no random crop but the evaluation crop: with no flip and
    # no jitter the view is exactly the evaluation input, any image shape.
    aug = AugmentSpec(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grey_p=0.0)
    for arr, spec in ((_random_image(48, 48), PreprocessSpec.square(24)), (_random_image(50, 70), SPEC)):
        view = ContrastiveAugment(spec, aug)(Image.fromarray(arr), torch.Generator().manual_seed(0))
        np.testing.assert_array_equal(view.numpy(), eval_preprocess_array(arr, spec))


def test_flip_and_greyscale_always() -> None:
    arr = _random_image(32, 32)
    spec = PreprocessSpec(32, 32, mean=(0, 0, 0), std=(1, 1, 1))
    base = AugmentSpec(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grey_p=0.0)
    g = torch.Generator().manual_seed(0)
    flipped = ContrastiveAugment(spec, AugmentSpec(**{**base.to_dict(), "flip_p": 1.0}))(Image.fromarray(arr), g)
    np.testing.assert_allclose(flipped.numpy(), arr[:, ::-1].transpose(2, 0, 1) / 255.0, atol=1e-6)
    grey = ContrastiveAugment(spec, AugmentSpec(**{**base.to_dict(), "grey_p": 1.0}))(Image.fromarray(arr), g)
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


def test_colour_jitter_ops() -> None:
    img = Image.new("RGB", (4, 4), (200, 60, 60))
    same = color_jitter(img, (1.0, 1.0, 1.0, 0.0), (0, 1, 2, 3))
    assert np.asarray(same).tolist() == np.asarray(img).tolist()
    dark = color_jitter(img, (0.5, 1.0, 1.0, 0.0), (0, 1, 2, 3))
    assert np.asarray(dark)[0, 0].tolist() == [100, 30, 30]
    desat = np.asarray(color_jitter(img, (1.0, 1.0, 0.0, 0.0), (0, 1, 2, 3)))[0, 0]
    assert desat[0] == desat[1] == desat[2]
    h0 = colorsys.rgb_to_hsv(*(np.array([200, 60, 60]) / 255))[0]
    shifted = np.asarray(_shift_hue(img, 0.1))[0, 0] / 255
    assert colorsys.rgb_to_hsv(*shifted)[0] == pytest.approx(h0 + 0.1, abs=0.02)
    grey = Image.new("RGB", (2, 2), (90, 90, 90))
    assert np.asarray(_shift_hue(grey, 0.3))[0, 0].tolist() == [90, 90, 90]


def test_augment_spec_roundtrip_and_validation() -> None:
    a = AugmentSpec(scale=(0.5, 1.0), hue=0.2)
    assert AugmentSpec.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    with pytest.raises(UserError):
        AugmentSpec(scale=(0.5, 1.5))
    with pytest.raises(UserError):
        AugmentSpec(hue=0.7)
    with pytest.raises(UserError, match="unknown keys"):
        AugmentSpec.from_dict({"blur": 1})


def test_seeded_augment_crosses_processes_and_reseeds_per_worker() -> None:
    aug = ContrastiveAugment(SPEC, seed=1)
    aug(Image.fromarray(_random_image()))  # builds the private generator
    state = aug.__getstate__()  # what a spawned worker receives: no generator
    assert state["_gen"] is None and state["seed"] == 1

    class _Images(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int) -> torch.Tensor:
            return aug(Image.fromarray(_random_image(seed=0)))

    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(_Images(), batch_size=1, num_workers=2)
    views = [b[0] for b in loader]
    # Items 0 and 1 are each the first draw of a different worker: they must differ.
    assert not torch.equal(views[0], views[1])
