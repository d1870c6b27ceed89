"""The losses against brute-force loops, gradcheck, analytic cases,
invariances, degenerate batches, autocast and input errors."""

from __future__ import annotations

import math

import pytest
import torch
from loss_reference import rnc_reference, supcon_reference, tsc_reference

from supemb.losses import RnCLoss, SupConLoss, TargetedSupConLoss, uniform_targets


def _feats(batch: int, views: int, dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, views, dim, generator=g, dtype=torch.float64, requires_grad=True)


def _grad(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss, x)
    return g


def _assert_matches(ours: torch.Tensor, ref: torch.Tensor, x: torch.Tensor) -> None:
    assert torch.isfinite(ours)
    assert abs(ours.item() - ref.item()) < 1e-9, (ours.item(), ref.item())
    g_ours, g_ref = _grad(ours, x), _grad(ref, x)
    assert torch.allclose(g_ours, g_ref, atol=1e-9, rtol=1e-7)


# ----------------------------------------------------------------- SupCon

@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("mode", ["all", "one"])
@pytest.mark.parametrize("views", [2, 3])
def test_supcon_matches_bruteforce(variant: str, mode: str, views: int) -> None:
    x = _feats(6, views, 5, seed=views)
    labels = [0, 1, 0, 2, 1, 0]
    loss = SupConLoss(temperature=0.3, variant=variant, contrast_mode=mode)
    ours = loss(x, torch.tensor(labels))
    ref = supcon_reference(x, labels, 0.3, variant, mode)
    _assert_matches(ours, ref, x)


@pytest.mark.parametrize("variant", ["out", "in"])
def test_simclr_without_labels_matches_bruteforce(variant: str) -> None:
    x = _feats(5, 2, 4, seed=1)
    ours = SupConLoss(temperature=0.5, variant=variant)(x)
    _assert_matches(ours, supcon_reference(x, None, 0.5, variant), x)


def test_supcon_variants_differ_and_out_bounds_in() -> None:
    # Jensen: L_in <= L_out, equal only when all positives have equal logits.
    x = _feats(8, 2, 6, seed=2)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0])
    l_out = SupConLoss(variant="out")(x, y)
    l_in = SupConLoss(variant="in")(x, y)
    assert l_in.item() < l_out.item() - 1e-6


@pytest.mark.parametrize("variant", ["out", "in"])
def test_supcon_identical_features_is_log_2n_minus_1(variant: str) -> None:
    # Every logit equal -> every log-probability is -log(2N - 1).
    n = 7
    x = torch.ones(n, 2, 3, dtype=torch.float64)
    for labels in (None, torch.arange(n), torch.zeros(n, dtype=torch.long)):
        value = SupConLoss(temperature=0.05, variant=variant)(x, labels).item()
        assert value == pytest.approx(math.log(2 * n - 1), abs=1e-12)


def test_supcon_no_positive_anchors_are_excluded_not_nan() -> None:
    x = _feats(4, 1, 3, seed=3)
    labels = [0, 0, 1, 2]  # samples 2 and 3 have no positive with one view
    ours = SupConLoss()(x, torch.tensor(labels))
    _assert_matches(ours, supcon_reference(x, labels, 0.1), x)
    per_anchor = SupConLoss(reduction="none")(x, torch.tensor(labels))
    assert per_anchor.shape == (4,)
    assert per_anchor[2].item() == 0.0 and per_anchor[3].item() == 0.0
    assert per_anchor[0].item() > 0.0


@pytest.mark.parametrize("variant", ["out", "in"])
def test_supcon_batch_without_any_positive_is_zero_with_zero_grad(variant: str) -> None:
    x = _feats(2, 1, 3, seed=4)
    loss = SupConLoss(variant=variant)(x, torch.tensor([0, 1]))
    assert loss.item() == 0.0
    assert torch.equal(_grad(loss, x), torch.zeros_like(x))


@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("mode", ["all", "one"])
@pytest.mark.parametrize("labels", [torch.tensor([0]), None])
def test_supcon_one_item_batch_is_zero_not_nan(variant: str, mode: str, labels) -> None:
    """B = V = 1: nothing to contrast with (the fused path's only logit is -inf)."""
    x = _feats(1, 1, 8, seed=4)
    loss = SupConLoss(variant=variant, contrast_mode=mode)(x, labels)
    assert loss.item() == 0.0
    assert torch.equal(_grad(loss, x), torch.zeros_like(x))


def _hvp(loss_fn, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss_fn(x), x, create_graph=True)
    (h,) = torch.autograd.grad((g * v).sum(), x)
    return h


@pytest.mark.parametrize("case", ["supcon", "rnc-l2", "rnc-cosine"])
def test_second_derivatives_through_the_analytic_gradients_are_exact(case: str) -> None:
    """create_graph=True (Hessian-vector products, gradient penalties): the custom backward gives a
    gradient that can be differentiated again, equal to autograd through the brute-force loops."""
    x = _feats(5, 2, 3, seed=21)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    if case == "supcon":
        y = torch.tensor([0, 1, 0, 1, 2])
        ours, ref = SupConLoss(temperature=0.5), lambda t: supcon_reference(t, y.tolist(), 0.5, "out", "all")
        ours_fn = lambda t: ours(t, y)  # noqa: E731
    else:
        sim = case.split("-")[1]
        targets = [0.0, 2.0, 2.0, 1.0, 4.0]
        loss = RnCLoss(temperature=1.5, similarity=sim)
        ours_fn, ref = (lambda t: loss(t, torch.tensor(targets))), lambda t: rnc_reference(t, targets, 1.5, "l1", sim)
    assert torch.allclose(_hvp(ours_fn, x, v), _hvp(ref, x, v), atol=1e-10, rtol=1e-8)


def test_supcon_base_temperature_is_an_explicit_scale() -> None:
    x = _feats(6, 2, 4, seed=5)
    y = torch.tensor([0, 1, 0, 1, 2, 2])
    plain = SupConLoss(temperature=0.1)(x, y)
    scaled = SupConLoss(temperature=0.1, base_temperature=0.07)(x, y)
    assert scaled.item() == pytest.approx(plain.item() * 0.1 / 0.07, rel=1e-12)


def test_supcon_permutation_invariant() -> None:
    x = _feats(9, 2, 5, seed=6)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 3])
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    a = SupConLoss()(x, y)
    b = SupConLoss()(x[perm], y[perm])
    assert a.item() == pytest.approx(b.item(), abs=1e-12)


def test_supcon_gradcheck() -> None:
    x = _feats(5, 2, 3, seed=7)
    y = torch.tensor([0, 1, 0, 1, 2])
    for variant in ("out", "in"):
        loss = SupConLoss(temperature=0.5, variant=variant)
        assert torch.autograd.gradcheck(lambda t: loss(t, y), (x,))


# ------------------------------------------------------------------- RnC

@pytest.mark.parametrize("label_distance", ["l1", "l2"])
@pytest.mark.parametrize("similarity", ["l2", "cosine"])
def test_rnc_matches_bruteforce_with_ties(label_distance: str, similarity: str) -> None:
    x = _feats(7, 2, 4, seed=8)
    targets = [3.0, 1.0, 3.0, 5.0, 2.0, 1.0, 4.0]  # repeated values and equal distances
    loss = RnCLoss(temperature=2.0, label_distance=label_distance, similarity=similarity)
    ours = loss(x, torch.tensor(targets, dtype=torch.float64))
    _assert_matches(ours, rnc_reference(x, targets, 2.0, label_distance, similarity), x)


@pytest.mark.parametrize("label_distance", ["l1", "l2"])
def test_rnc_multidimensional_targets_match_bruteforce(label_distance: str) -> None:
    x = _feats(6, 2, 3, seed=9)
    targets = [(0.0, 1.0), (1.0, 0.0), (2.0, 2.0), (0.0, 1.0), (-1.0, 3.0), (1.0, 2.0)]
    ours = RnCLoss(temperature=0.7, label_distance=label_distance)(x, torch.tensor(targets))
    _assert_matches(ours, rnc_reference(x, targets, 0.7, label_distance), x)


def test_rnc_single_view_and_three_views_match_bruteforce() -> None:
    for views in (1, 3):
        x = _feats(5, views, 3, seed=10 + views)
        targets = [1.0, 4.0, 4.0, 0.0, 2.0]
        ours = RnCLoss()(x, torch.tensor(targets))
        _assert_matches(ours, rnc_reference(x, targets, 2.0), x)


def test_rnc_invariances() -> None:
    x = _feats(10, 2, 4, seed=12)
    y = torch.tensor([5.0, 1.0, 3.0, 3.0, 8.0, 0.0, 2.0, 7.0, 7.0, 4.0], dtype=torch.float64)
    loss = RnCLoss()
    base = loss(x, y).item()
    assert loss(x, y + 100.0).item() == pytest.approx(base, abs=1e-12)  # shift of targets
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(1))
    assert loss(x[perm], y[perm]).item() == pytest.approx(base, abs=1e-12)  # batch order
    assert loss(x + 3.0, y).item() == pytest.approx(base, abs=1e-9)  # translation of features


def test_rnc_all_targets_equal_identical_features_is_log_n_minus_1() -> None:
    n_samples = 6
    x = torch.ones(n_samples, 2, 3, dtype=torch.float64, requires_grad=True)
    loss = RnCLoss()(x, torch.zeros(n_samples, dtype=torch.float64))
    assert loss.item() == pytest.approx(math.log(2 * n_samples - 1), abs=1e-12)
    assert torch.isfinite(_grad(loss, x)).all()  # zero distances: no NaN from sqrt


def test_rnc_ordered_embedding_scores_lower_than_shuffled() -> None:
    y = torch.arange(12, dtype=torch.float64)
    ordered = y[:, None, None].expand(12, 2, 1).clone()
    shuffled = ordered[torch.randperm(12, generator=torch.Generator().manual_seed(2))]
    loss = RnCLoss(temperature=1.0)
    assert loss(ordered, y).item() < loss(shuffled, y).item() - 0.1


def test_rnc_batch_of_two_and_far_apart_features_stay_finite() -> None:
    x = torch.tensor([[[0.0, 0.0]], [[1.0, 0.0]]], requires_grad=True)
    assert torch.isfinite(RnCLoss()(x, torch.tensor([0.0, 1.0])))
    far = (torch.randn(16, 2, 8, generator=torch.Generator().manual_seed(3)) * 1e4).requires_grad_(True)
    loss = RnCLoss(temperature=0.05)(far, torch.randn(16))
    assert torch.isfinite(loss) and loss.item() > 0
    assert torch.isfinite(_grad(loss, far)).all()


def test_rnc_gradcheck() -> None:
    x = _feats(4, 2, 3, seed=13)
    y = torch.tensor([0.0, 2.0, 2.0, 1.0], dtype=torch.float64)
    for sim in ("l2", "cosine"):
        loss = RnCLoss(temperature=1.5, similarity=sim)
        assert torch.autograd.gradcheck(lambda t: loss(t, y), (x,))


# ------------------------------------------------------------ Targeted SupCon

def test_uniform_targets_form_a_simplex_and_are_deterministic(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SUPEMB_CACHE", str(tmp_path))
    u = uniform_targets(5, 8, seed=3)
    assert u.shape == (5, 8) and u.dtype == torch.float32
    assert torch.allclose(u.norm(dim=1), torch.ones(5), atol=1e-6)
    cos = (u @ u.T).double()
    off = cos[~torch.eye(5, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, -1 / 4), atol=1e-4)  # regular simplex
    cached = list(tmp_path.rglob("*.npy"))
    assert len(cached) == 1
    assert torch.equal(uniform_targets(5, 8, seed=3), u)  # from the cache
    assert torch.equal(uniform_targets(5, 8, seed=3, cache=False), u)  # recomputed
    assert not torch.equal(uniform_targets(5, 8, seed=4, cache=False), u)


def test_uniform_targets_keep_the_closest_apart_beyond_a_simplex(tmp_path, monkeypatch) -> None:
    """C > D + 1: the t = 0.07 phase (the authors' target generation) lowers the largest cosine that
    t = 1 alone leaves (0.70 for C = 100 in D = 8; the authors' objective run with Adam reaches 0.51)."""
    monkeypatch.setenv("SUPEMB_CACHE", str(tmp_path))
    u = uniform_targets(100, 8).double()
    cos = (u @ u.T)[~torch.eye(100, dtype=torch.bool)]
    assert cos.max().item() < 0.55


@pytest.mark.parametrize("weight", [1.0, 0.5, 0.0])
def test_tsc_matches_bruteforce(weight: float, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SUPEMB_CACHE", str(tmp_path))
    x = _feats(6, 2, 4, seed=14)
    labels = [0, 1, 0, 2, 1, 0]
    loss = TargetedSupConLoss(3, 4, temperature=0.2, target_weight=weight).double().eval()
    ours = loss(x, torch.tensor(labels))
    ref = tsc_reference(x, labels, loss.class_targets(), 0.2, weight)
    _assert_matches(ours, ref, x)


def test_tsc_singleton_class_with_one_view_keeps_target_term(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SUPEMB_CACHE", str(tmp_path))
    x = _feats(3, 1, 4, seed=15)
    labels = [0, 1, 2]  # no positive anywhere
    loss = TargetedSupConLoss(3, 4).double().eval()
    ours = loss(x, torch.tensor(labels))
    _assert_matches(ours, tsc_reference(x, labels, loss.class_targets(), 0.1, 1.0), x)


def test_tsc_hungarian_assigns_each_class_its_nearest_target(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SUPEMB_CACHE", str(tmp_path))
    loss = TargetedSupConLoss(4, 6, reassign_every=1)
    perm = torch.tensor([2, 0, 3, 1])  # class c's features sit near target perm[c]
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat(5)
    feats = loss.targets[perm[labels]] + 0.05 * torch.randn(20, 6, generator=g)
    loss.train()
    loss(feats[:, None, :], labels)
    assert torch.equal(loss.assignment, perm)
    # The assignment travels with the state dict; eval mode changes nothing.
    restored = TargetedSupConLoss(4, 6)
    restored.load_state_dict(loss.state_dict())
    assert torch.equal(restored.assignment, perm)
    restored.eval()
    restored(torch.randn(8, 2, 6), torch.arange(4).repeat(2))
    assert torch.equal(restored.assignment, perm)


def test_tsc_gradcheck(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SUPEMB_CACHE", str(tmp_path))
    x = _feats(4, 2, 3, seed=16)
    y = torch.tensor([0, 1, 1, 2])
    loss = TargetedSupConLoss(3, 3, temperature=0.5).double().eval()
    assert torch.autograd.gradcheck(lambda t: loss(t, y), (x,))


# ------------------------------------------------------------ all three

def _all_losses(dim: int, classes: int) -> list[tuple[torch.nn.Module, str]]:
    return [
        (SupConLoss(temperature=0.05), "class"),
        (SupConLoss(temperature=0.05, variant="in"), "class"),
        (RnCLoss(temperature=0.05), "value"),
        (RnCLoss(temperature=0.05, similarity="cosine"), "value"),
        (TargetedSupConLoss(classes, dim, temperature=0.05), "class"),
    ]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_losses_under_cpu_autocast_stay_finite(dtype, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SUPEMB_CACHE", str(tmp_path))
    g = torch.Generator().manual_seed(17)
    w = torch.randn(32, 16, generator=g, requires_grad=True)
    inputs = torch.randn(64, 32, generator=g)
    classes = torch.randint(0, 4, (32,), generator=g)
    values = torch.rand(32, generator=g) * 80
    for loss, kind in _all_losses(16, 4):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats = (inputs.to(dtype) @ w.to(dtype)).view(32, 2, 16)
            out = loss(feats, classes if kind == "class" else values)
        assert out.dtype in (torch.float32, torch.float64)
        assert torch.isfinite(out), type(loss).__name__
        (grad,) = torch.autograd.grad(out, w)
        assert torch.isfinite(grad).all(), type(loss).__name__
        # The loss itself runs in float32: same value as outside autocast on
        # the same (low-precision) features.
        target = classes if kind == "class" else values
        assert out.item() == pytest.approx(loss(feats.detach().float(), target).item(), rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_losses_under_cuda_fp16_autocast_stay_finite(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SUPEMB_CACHE", str(tmp_path))
    w = torch.randn(32, 16, device="cuda", requires_grad=True)
    inputs = torch.randn(64, 32, device="cuda")
    classes = torch.randint(0, 4, (32,), device="cuda")
    values = torch.rand(32, device="cuda") * 80
    for loss, kind in _all_losses(16, 4):
        loss = loss.cuda()
        with torch.autocast("cuda", dtype=torch.float16):
            out = loss((inputs @ w).view(32, 2, 16), classes if kind == "class" else values)
        assert torch.isfinite(out)
        (grad,) = torch.autograd.grad(out, w)
        assert torch.isfinite(grad).all()


def test_losses_all_labels_equal_stay_finite(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SUPEMB_CACHE", str(tmp_path))
    x = torch.randn(8, 2, 16, requires_grad=True)
    for loss, _ in _all_losses(16, 3):
        out = loss(x, torch.zeros(8, dtype=torch.long))
        assert torch.isfinite(out)
        assert torch.isfinite(_grad(out, x)).all()


def test_losses_reject_bad_inputs(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SUPEMB_CACHE", str(tmp_path))
    x = torch.randn(4, 2, 16)
    nan = x.clone()
    nan[0, 0, 0] = float("nan")
    for loss, _ in _all_losses(16, 3):
        with pytest.raises(ValueError, match="shape"):
            loss(x, torch.zeros(5, dtype=torch.long))  # 5 labels for 4 samples
        with pytest.raises(ValueError, match="shape"):
            loss(torch.randn(4, 2, 3, 16), torch.zeros(4, dtype=torch.long))
        with pytest.raises(ValueError, match="NaN"):
            loss(nan, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        RnCLoss()(x, torch.tensor([1.0, float("nan"), 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"B = 4, got \(3,\)$"):  # the shape given, not the one made of it
        RnCLoss()(x, torch.tensor([1.0, 2.0, 3.0]))
    for loss in (SupConLoss(), TargetedSupConLoss(3, 16)):  # 1.5 is no class (TSC would truncate it to 1)
        with pytest.raises(ValueError, match="class indices .* got 1.5"):
            loss(x, torch.tensor([0.0, 1.5, 2.0, 0.0]))
    assert torch.isfinite(SupConLoss()(x, torch.tensor([0.0, 1.0, 2.0, 0.0])))  # floats holding integers
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        TargetedSupConLoss(3, 16)(x, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="dim"):
        TargetedSupConLoss(3, 8)(x, torch.tensor([0, 1, 2, 0]))
    tsc = TargetedSupConLoss(3, 16).train()
    before = {k: v.clone() for k, v in tsc.state_dict().items()}
    with pytest.raises(ValueError, match="NaN"):
        tsc(nan, torch.tensor([0, 1, 2, 0]))
    for key, value in tsc.state_dict().items():  # a rejected batch leaves no trace
        assert torch.equal(value, before[key]), key
    with pytest.raises(ValueError, match="temperature"):
        SupConLoss(temperature=0.0)


def test_rnc_cosine_keeps_no_square_logits_for_backward() -> None:
    """The cosine path's backward needs the unit features [n, D] only (plus the loss's own exp terms),
    not the [n, n] similarity logits autograd would keep for zn @ zn.T."""
    x = _feats(24, 2, 3, seed=30)
    n = x.shape[0] * x.shape[1]
    shapes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        loss = RnCLoss(temperature=0.5, similarity="cosine")(x, torch.arange(24.0))
    assert shapes and (n, n) not in shapes, shapes
    _assert_matches(loss, rnc_reference(x, list(range(24)), 0.5, "l1", "cosine"), x)


@pytest.mark.parametrize("similarity", ["l2", "cosine"])
def test_rnc_log_space_fallback_matches_bruteforce(similarity: str, monkeypatch) -> None:
    # Force the path taken when exp() sums underflow (features very far apart).
    import supemb.losses.rnc as rnc

    monkeypatch.setattr(rnc, "_tiny", lambda dtype: float("inf"))
    x = _feats(6, 2, 3, seed=18)
    targets = [2.0, 0.0, 2.0, 5.0, 1.0, 0.0]
    ours = RnCLoss(temperature=0.8, similarity=similarity)(x, torch.tensor(targets))
    _assert_matches(ours, rnc_reference(x, targets, 0.8, "l1", similarity), x)


@pytest.mark.parametrize("create_graph", [False, True], ids=["backward", "create_graph"])
@pytest.mark.parametrize("offset, spread", [(0.0, 1e-3), (100.0, 1e-2)], ids=["close views", "large common part"])
def test_rnc_float32_gradient_of_close_pairs_matches_float64(offset: float, spread: float, create_graph: bool) -> None:
    """Two views a thousandth apart in features of norm ~12, or features that share a large offset:
    the Gram form |a|^2 + |b|^2 - 2 a.b alone loses these pairs' digits in float32 (relative gradient
    error 3e-3 and 1, measured before close pairs were recomputed and the batch mean removed)."""
    g = torch.Generator().manual_seed(22)
    base = torch.randn(32, 1, 16, generator=g, dtype=torch.float64) * 3 + offset
    x = torch.cat([base, base + spread * torch.randn(32, 1, 16, generator=g, dtype=torch.float64)], 1)
    y = torch.randint(0, 10, (32,), generator=g).to(torch.float64)
    grads = []
    for dtype in (torch.float64, torch.float32):  # create_graph: the differentiable path computes it the same way
        t = x.to(dtype).requires_grad_()
        (g,) = torch.autograd.grad(RnCLoss(temperature=2.0)(t, y), t, create_graph=create_graph)
        grads.append(g.detach().double())
    assert ((grads[1] - grads[0]).norm() / grads[0].norm()).item() < 2e-4


def test_rnc_features_collapsed_into_clusters_use_float64_distances_and_stay_exact() -> None:
    """Most pairs close (two tight clusters): more than CLOSE_PER_ITEM per item switches to float64 distances
    instead of recomputing millions of pairs one by one."""
    import supemb.losses.rnc as rnc

    g = torch.Generator().manual_seed(23)
    centres = torch.randn(2, 16, generator=g, dtype=torch.float64) * 5
    x = centres[torch.randint(0, 2, (64,), generator=g)][:, None, :] + 1e-3 * torch.randn(64, 2, 16, generator=g,
                                                                                           dtype=torch.float64)
    y = torch.randint(0, 10, (64,), generator=g).to(torch.float64)
    zc = x.float().flatten(0, 1)
    zc = zc - zc.mean(0)
    sq = zc.pow(2).sum(1)
    _, pairs = rnc._refine_close_pairs(torch.addmm(sq[:, None] + sq[None, :], zc, zc.T, alpha=-2.0), zc, sq)
    assert pairs is None  # the float64 path
    grads = []
    for dtype in (torch.float64, torch.float32):
        t = x.to(dtype).requires_grad_()
        grads.append(_grad(RnCLoss(temperature=2.0)(t, y), t).double())
    assert ((grads[1] - grads[0]).norm() / grads[0].norm()).item() < 2e-4


def test_rnc_far_apart_float32_matches_float64() -> None:
    # Logit spread ~ 2e4: the float32 fast path underflows and hands over.
    g = torch.Generator().manual_seed(19)
    x = torch.randn(12, 2, 4, generator=g, dtype=torch.float64) * 1e3
    y = torch.randint(0, 5, (12,), generator=g).to(torch.float64)
    loss = RnCLoss(temperature=0.1)
    ref = loss(x, y)
    got = loss(x.float(), y)
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)


def test_supcon_general_path_agrees_with_fused_mean() -> None:
    x = _feats(7, 2, 5, seed=20)
    y = torch.tensor([0, 1, 0, 2, 1, 3, 0])
    for mode in ("all", "one"):
        fused = SupConLoss(contrast_mode=mode)(x, y)
        per_anchor = SupConLoss(contrast_mode=mode, reduction="none")(x, y)
        n_valid = (per_anchor != 0).sum()
        assert fused.item() == pytest.approx((per_anchor.sum() / n_valid).item(), abs=1e-12)


# ----------------------------------------------------------------- registry


def test_registry_has_every_loss_with_its_task_head_and_temperature() -> None:
    from torch import nn

    from supemb.losses import LOSSES, build_loss
    from supemb.train.config import TrainConfig

    # (task, contrastive, projection head, default temperature, geometry) as the papers and
    # the temperature study (docs/temperature.md) set them
    want = {"supcon": ("classification", True, "mlp", 1.0, "cosine"),
            "rnc": ("regression", True, "none", 1.0, "l2"),
            "tsc": ("classification", True, "mlp", 0.1, "cosine"),
            "ce": ("classification", False, "none", None, None),
            "l1": ("regression", False, "none", None, None)}
    assert {name: (s.task, s.contrastive, s.projection, s.temperature, s.metric)
            for name, s in LOSSES.items()} == want
    kinds = {"supcon": SupConLoss, "rnc": RnCLoss, "tsc": TargetedSupConLoss, "ce": nn.CrossEntropyLoss,
             "l1": nn.L1Loss}
    for name, kind in kinds.items():
        cfg = TrainConfig(data="d", target="t", out="o", loss=name, projection_dim=8)
        loss = build_loss(cfg, 3)
        assert type(loss) is kind, name
        if want[name][3] is not None:
            assert loss.temperature == want[name][3], name  # the default when --temperature is unset
            given = build_loss(TrainConfig(data="d", target="t", out="o", loss=name, temperature=0.25), 3)
            assert given.temperature == 0.25, name
    assert build_loss(TrainConfig(data="d", target="t", out="o", loss="ce", label_smoothing=0.2), 3).label_smoothing == 0.2
    assert build_loss(TrainConfig(data="d", target="t", out="o", loss="rnc", similarity="cosine"), 1).similarity == "cosine"
