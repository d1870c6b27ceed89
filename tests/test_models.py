"""Encoders, heads, the registry and ONNX export parity."""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from supemb.encoders import (
    ENCODERS,
    EmbeddingModel,
    Encoder,
    HalfPrecision,
    LinearHead,
    ProjectionHead,
    build_encoder,
    eeg_signal_kwargs,
    export_onnx,
    parity,
    parity_scale,
)
from supemb.encoders.eeg import ShallowConvNet
from supemb.encoders.resnet import BasicBlock, Bottleneck
from supemb.errors import UserError
from supemb.preprocess.eeg import EEGSpec

EEG_KW = dict(n_chans=19, n_times=4 * 100, sfreq=100.0)
EXPECTED_DIM = {
    "small_cnn": 128,
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
    "resnet18_small": 512,
    "resnet34_small": 512,
    "resnet50_small": 2048,
    "shallow": 128,
    "deep4": 128,
}


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _input_for(name: str, batch: int = 2) -> torch.Tensor:
    torch.manual_seed(0)
    if ENCODERS[name].modality == "eeg":
        return torch.randn(batch, EEG_KW["n_chans"], EEG_KW["n_times"])
    # The small-stem and ResNet-50 variants are slow at 64 px on CPU; 32 px is enough.
    size = 32 if (name.endswith("_small") or name == "resnet50") else 64
    return torch.randn(batch, 3, size, size)


def _build(name: str, **kw) -> nn.Module:
    return build_encoder(name, **(EEG_KW if ENCODERS[name].modality == "eeg" else {}), **kw)


def _randomise_bn(m: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine terms, so eval-mode BN (and the
    zero-initialised residual gammas) are really exercised by a parity test."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                mod.running_mean.normal_(0.0, 0.5, generator=g)
                mod.running_var.uniform_(0.5, 2.0, generator=g)
                mod.weight.uniform_(0.5, 1.5, generator=g)
                mod.bias.normal_(0.0, 0.2, generator=g)
    return m


# ------------------------------------------------------------------ registry


def test_registry_is_explicit_and_complete() -> None:
    assert set(ENCODERS) == set(EXPECTED_DIM)
    assert {s.modality for s in ENCODERS.values()} == {"image", "eeg"}


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_every_encoder_builds_and_outputs_batch_by_embed_dim(name: str) -> None:
    model = _build(name).eval()
    assert isinstance(model, nn.Module) and isinstance(model, Encoder)
    assert model.modality == ENCODERS[name].modality
    assert model.embed_dim == EXPECTED_DIM[name]
    with torch.no_grad():
        out = model(_input_for(name))
    assert out.shape == (2, EXPECTED_DIM[name])
    assert torch.isfinite(out).all()
    # Un-normalised features: the rows are not all unit length.
    assert not torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-3)


def test_unknown_encoder_lists_the_known_ones() -> None:
    with pytest.raises(UserError) as e:
        build_encoder("resnet19")
    msg = str(e.value)
    assert "resnet19" in msg and "resnet18" in msg and "shallow" in msg and "timm:" in msg


def test_unknown_and_missing_arguments_are_user_errors() -> None:
    with pytest.raises(UserError, match="widht"):
        build_encoder("small_cnn", widht=16)
    with pytest.raises(UserError, match="n_chans"):
        build_encoder("shallow", n_times=400, sfreq=100.0)
    with pytest.raises(UserError, match="stem"):
        build_encoder("resnet18", stem="huge")


def test_registry_defaults_and_caller_kwargs() -> None:
    small = build_encoder("resnet18_small")
    assert small.stem_kind == "small"
    assert build_encoder("resnet18", stem="small").stem_kind == "small"
    assert build_encoder("resnet18").stem_kind == "imagenet"
    narrow = build_encoder("small_cnn", width=8, depth=4)
    assert narrow.embed_dim == 64
    assert narrow(torch.randn(1, 3, 64, 64)).shape == (1, 64)


# ------------------------------------------------------------------ images


def test_param_counts_are_the_papers() -> None:
    # Without the 1000-class fc: ResNet-18 11.18M, -34 21.28M, -50 23.51M.
    assert 11.0e6 < _n_params(build_encoder("resnet18")) < 11.4e6
    assert 21.0e6 < _n_params(build_encoder("resnet34")) < 21.5e6
    assert 23.3e6 < _n_params(build_encoder("resnet50")) < 23.7e6
    assert 60e3 < _n_params(build_encoder("small_cnn")) < 150e3


def test_stems_set_the_feature_map_size() -> None:
    x = torch.randn(1, 3, 32, 32)
    # /32 overall with the ImageNet stem, /8 with the small one.
    assert build_encoder("resnet18").eval().forward_features(x).shape[-2:] == (1, 1)
    assert build_encoder("resnet18_small").eval().forward_features(x).shape[-2:] == (4, 4)


def test_width_scales_embed_dim() -> None:
    m = build_encoder("resnet50", width=16)
    assert m.embed_dim == 16 * 8 * 4
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    assert build_encoder("resnet18", in_chans=1)(torch.randn(2, 1, 32, 32)).shape == (2, 512)


@pytest.mark.parametrize("name, block", [("resnet18", BasicBlock), ("resnet50", Bottleneck)])
def test_zero_init_residual_and_kaiming(name: str, block: type) -> None:
    zeroed = build_encoder(name)
    blocks = [m for m in zeroed.modules() if isinstance(m, block)]
    assert blocks and all(torch.count_nonzero(b.last_bn.weight) == 0 for b in blocks)
    plain = build_encoder(name, zero_init_residual=False)
    assert all(torch.all(b.last_bn.weight == 1) for b in plain.modules() if isinstance(b, block))
    # Kaiming normal, fan_out: std = sqrt(2 / (out_channels * k * k)).
    conv = zeroed.stem[0]
    expected = math.sqrt(2.0 / (conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.1)


def test_zero_init_makes_blocks_start_as_identity_plus_relu() -> None:
    block = [m for m in build_encoder("resnet18").modules() if isinstance(m, BasicBlock)][0].eval()
    x = torch.randn(2, 64, 8, 8)
    assert torch.allclose(block(x), torch.relu(x))


# ------------------------------------------------------------------ EEG


@pytest.mark.parametrize("name", ["shallow", "deep4"])
@pytest.mark.parametrize("sfreq, seconds", [(100.0, 2), (100.0, 10), (128.0, 4), (250.0, 4), (256.0, 2), (256.0, 10)])
def test_eeg_encoders_handle_our_window_lengths(name: str, sfreq: float, seconds: int) -> None:
    n_times = int(seconds * sfreq)
    model = build_encoder(name, n_chans=21, n_times=n_times, sfreq=sfreq, embed_dim=32).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 21, n_times))
    assert out.shape == (3, 32) and torch.isfinite(out).all()


def test_eeg_kernels_follow_the_sampling_rate() -> None:
    # 100 ms temporal filter in ShallowConvNet: 25 samples at 250 Hz, 10 at 100 Hz.
    assert build_encoder("shallow", n_chans=2, n_times=1000, sfreq=250.0).conv_time.kernel_size == (1, 25)
    assert build_encoder("shallow", n_chans=2, n_times=400, sfreq=100.0).conv_time.kernel_size == (1, 10)
    # Deep4: ~40 ms, odd so that "same" padding keeps the length.
    k250 = build_encoder("deep4", n_chans=2, n_times=1000, sfreq=250.0).features[0].kernel_size[1]
    k100 = build_encoder("deep4", n_chans=2, n_times=400, sfreq=100.0).features[0].kernel_size[1]
    assert (k250, k100) == (11, 5)


@pytest.mark.parametrize("name", ["shallow", "deep4"])
def test_eeg_wrong_channel_count_is_a_clear_error(name: str) -> None:
    model = _build(name)
    with pytest.raises(UserError, match=r"19 channels.*\[2, 18, 400\]"):
        model(torch.randn(2, 18, 400))
    with pytest.raises(UserError, match="400 samples"):
        model(torch.randn(2, 19, 300))
    with pytest.raises(UserError):
        model(torch.randn(19, 400))


@pytest.mark.parametrize("name, n_times", [("shallow", 30), ("deep4", 80)])
def test_eeg_too_short_window_is_refused(name: str, n_times: int) -> None:
    with pytest.raises(UserError, match="too short"):
        build_encoder(name, n_chans=19, n_times=n_times, sfreq=100.0)


def test_shallow_log_is_safe_on_a_flat_window() -> None:
    model = _build("shallow").eval()
    with torch.no_grad():
        model.bn.running_mean.zero_()
        model.bn.bias.zero_()
        out = model(torch.zeros(2, 19, 400))  # power 0 -> log would be -inf
    assert torch.isfinite(out).all()


def _factorised_reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The EEG encoders' eval forward written layer by layer, without folding."""
    if isinstance(model, ShallowConvNet):
        h = model.bn(model.conv_spat(model.conv_time(x.unsqueeze(1))))
        h = torch.log(torch.clamp(model.pool(h * h), min=1e-6))
        return model.fc(h.flatten(1))
    return model.fc(model.features(x.unsqueeze(1)).flatten(1))


@pytest.mark.parametrize("name", ["shallow", "deep4"])
@pytest.mark.parametrize("sfreq, seconds", [(100.0, 10), (250.0, 4), (256.0, 2), (128.0, 4)])
def test_eeg_eval_folds_the_time_and_space_convs_into_one(name: str, sfreq: float, seconds: int) -> None:
    """Eval mode runs temporal conv + spatial conv + BN as one Conv1d (and
    ShallowNet's mean-pool in blocks where the stride divides the window):
    the same function as the layers one by one. 256 Hz: the pool (77) is not
    a multiple of the stride (15), the plain pool is used."""
    n_times = int(seconds * sfreq)
    model = _randomise_bn(build_encoder(name, n_chans=7, n_times=n_times, sfreq=sfreq, embed_dim=16)).eval()
    spatial = model.conv_spat if name == "shallow" else model.features[1]
    calls = []
    spatial.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(3, 7, n_times, generator=torch.Generator().manual_seed(1)) * 2.0
    with torch.no_grad():
        got = model(x)
        assert calls == []  # the folded path ran
        want = _factorised_reference(model, x)
        assert calls == [1]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5)
        model64 = model.double()
        torch.testing.assert_close(model64(x.double()), _factorised_reference(model64, x.double()),
                                   rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["shallow", "deep4"])
def test_eeg_training_mode_keeps_the_factorised_layers(name: str) -> None:
    model = _build(name).train()
    bn = model.bn if name == "shallow" else model.features[2]
    before = bn.running_mean.clone()
    out = model(torch.randn(4, 19, 400))
    out.sum().backward()
    assert not torch.equal(bn.running_mean, before)  # BN saw the batch: not folded
    conv_spat = model.conv_spat if name == "shallow" else model.features[1]
    assert conv_spat.weight.grad is not None and conv_spat.weight.grad.abs().sum() > 0


def test_eeg_signal_kwargs_from_an_eeg_spec() -> None:
    spec = EEGSpec(sfreq=128.0, window_s=4.0, stride_s=4.0)
    kw = eeg_signal_kwargs(spec)
    assert kw == {"n_chans": spec.n_channels, "n_times": 512, "sfreq": 128.0}
    model = build_encoder("deep4", **kw).eval()
    assert model(torch.randn(2, spec.n_channels, 512)).shape == (2, 128)


# ------------------------------------------------------------------ heads


def test_projection_head_shapes_and_layers() -> None:
    head = ProjectionHead(512)
    assert head(torch.randn(4, 512)).shape == (4, 128)
    assert any(isinstance(m, nn.BatchNorm1d) for m in head.modules())
    plain = ProjectionHead(64, out_dim=32, hidden_dim=256, batch_norm=False)
    assert plain(torch.randn(3, 64)).shape == (3, 32)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in plain.modules())
    assert plain.net[0].out_features == 256


def test_linear_head_shapes() -> None:
    assert LinearHead(128, 10)(torch.randn(5, 128)).shape == (5, 10)
    assert LinearHead(128, 1)(torch.randn(5, 128)).shape == (5, 1)  # keeps the target axis
    with pytest.raises(UserError):
        LinearHead(128, 0)
    with pytest.raises(UserError):
        ProjectionHead(0)


def test_embedding_model_is_unit_vectors_for_cosine_and_the_raw_output_for_l2() -> None:
    encoder = build_encoder("small_cnn").eval()
    wrapped = EmbeddingModel(encoder).eval()
    assert wrapped.embed_dim == 128 and wrapped.modality == "image" and wrapped.metric == "cosine"
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        raw, out = encoder(x), wrapped(x)
        assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
        assert torch.allclose(out, raw / raw.norm(dim=1, keepdim=True), atol=1e-6)
        assert torch.equal(EmbeddingModel(encoder, "l2")(x), raw)  # l2: what the distance loss shaped
    assert list(EmbeddingModel(encoder, "l2").state_dict()) == [f"encoder.{k}" for k in encoder.state_dict()]
    with pytest.raises(UserError, match="metric must be one of cosine, l2"):
        EmbeddingModel(encoder, "dot")


# ------------------------------------------------------------------ timm


def test_timm_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    with pytest.raises(UserError, match=r"pip install supemb\[timm\]"):
        build_encoder("timm:resnet18")


def test_timm_model_is_built_without_weights_and_reads_num_features(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, dict]] = []

    class Pooled(nn.Module):
        num_features = 24

        def __init__(self, in_chans: int = 3) -> None:
            super().__init__()
            self.conv = nn.Conv2d(in_chans, self.num_features, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).mean(dim=(2, 3))

    def create_model(name: str, **kw) -> nn.Module:
        calls.append((name, kw))
        return Pooled(in_chans=kw.get("in_chans", 3))

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    model = build_encoder("timm:convnext_atto", in_chans=1)
    assert calls == [("convnext_atto", {"pretrained": False, "num_classes": 0, "in_chans": 1})]
    assert isinstance(model, Encoder) and model.embed_dim == 24 and model.modality == "image"
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 24)
    with pytest.raises(UserError, match="pretrained"):
        build_encoder("timm:convnext_atto", pretrained=True)


# ------------------------------------------------------------------ ONNX


@pytest.mark.parametrize(
    "name, wrap",
    [("small_cnn", False), ("resnet18_small", False), ("shallow", False), ("deep4", False), ("small_cnn", True)],
)
def test_onnx_export_matches_torch_at_batch_1_and_4(tmp_path: Path, name: str, wrap: bool) -> None:
    model: nn.Module = _randomise_bn(_build(name))
    if wrap:
        model = EmbeddingModel(model)
    model.train()
    path = export_onnx(model, _input_for(name, batch=1), tmp_path / "enc.onnx")
    assert model.training  # mode restored
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc.onnx"]  # one file, no external data
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
    assert graph.output[0].type.tensor_type.shape.dim[0].dim_param
    diffs = parity(model, path, _input_for(name, batch=4) * 3.0)
    assert model.training  # mode restored
    assert set(diffs) == {"batch_1", "batch_4"} and max(diffs.values()) < 1e-4


def test_onnx_export_static_batch(tmp_path: Path) -> None:
    model = build_encoder("small_cnn")
    path = export_onnx(model, torch.randn(2, 3, 32, 32), tmp_path / "s.onnx", dynamic_batch=False)
    dim0 = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_value == 2 and not dim0.dim_param


def test_onnx_exporter_choice(tmp_path: Path) -> None:
    model = build_encoder("small_cnn")
    path = export_onnx(model, torch.randn(1, 3, 32, 32), tmp_path / "t.onnx", exporter="torchscript")
    assert max(parity(model, path, torch.randn(4, 3, 32, 32)).values()) < 1e-4
    with pytest.raises(UserError, match="exporter"):
        export_onnx(model, torch.randn(1, 3, 32, 32), tmp_path / "x.onnx", exporter="tflite")  # type: ignore[arg-type]


def test_parity_refuses_a_graph_that_differs_and_scales_for_raw_embeddings(tmp_path: Path) -> None:
    model = EmbeddingModel(build_encoder("small_cnn"), "l2").eval()
    x = torch.randn(3, 3, 32, 32).numpy()
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    off = lambda batch: model(torch.from_numpy(batch)).detach().numpy() + 1e-3  # noqa: E731
    assert parity(model, off, x) == pytest.approx({"batch_1": 1e-3, "batch_3": 1e-3}, rel=1e-2)
    with pytest.raises(UserError, match=r"parity check failed: .* = 0.001 at batch 1 \(allowed 0.0001\)"):
        parity(model, off, x, tol=1e-4)
    wrong_shape = lambda batch: np.zeros((len(batch), 2), np.float32)  # noqa: E731
    assert parity(model, wrong_shape, x) == {"batch_1": math.inf, "batch_3": math.inf}
    # the tolerance is relative to the largest raw norm (at least 1); unit vectors: 1
    assert parity_scale(model, x, "l2") == pytest.approx(max(1.0, float(np.linalg.norm(want, axis=1).max())))
    assert parity_scale(model, x, "cosine") == 1.0


def test_head_parity_is_the_largest_change_of_a_linear_heads_value(tmp_path: Path) -> None:
    """A residual head multiplies the graph's embedding error by its weights: head_parity
    measures the change of w . e (target units) and refuses one above the tolerance."""
    from supemb.encoders.onnx_util import head_parity

    model = EmbeddingModel(build_encoder("small_cnn"), "l2").eval()
    x = torch.randn(3, 3, 32, 32).numpy()
    with torch.no_grad():
        dim = model(torch.from_numpy(x)).shape[1]
    shift = np.zeros(dim, np.float32)
    shift[[1, 4]] = (1e-3, -2e-3)  # the graph's error on two coordinates of every embedding
    off = lambda batch: model(torch.from_numpy(batch)).detach().numpy() + shift  # noqa: E731
    w = np.zeros(dim)
    w[[1, 4, 7]] = (100.0, 30.0, -5.0)
    assert head_parity(model, off, x, w) == pytest.approx(100 * 1e-3 - 30 * 2e-3, rel=1e-3)  # 0.04
    assert head_parity(model, off, x, np.where(np.arange(dim) == 7, 5.0, 0.0)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(UserError, match=r"moves the linear head's values by up to 0.04 \(allowed 0.01\)"):
        head_parity(model, off, x, w, tol=0.01)
    wrong_shape = lambda batch: np.zeros((len(batch), 2), np.float32)  # noqa: E731
    with pytest.raises(UserError, match="inf"):
        head_parity(model, wrong_shape, x, w, tol=1.0)


def test_half_precision_computes_in_float16_between_float32_ends() -> None:
    model = EmbeddingModel(build_encoder("small_cnn")).eval()
    half = HalfPrecision(model)
    assert next(model.parameters()).dtype == torch.float32  # the original is left as it was
    assert next(half.parameters()).dtype == torch.float16
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = half(x)
        assert out.dtype == torch.float32
        assert 0 < (out - model(x)).abs().max() < 1e-2
