"""The arithmetic the serving benchmark reports is counted right."""

from __future__ import annotations

import pytest
import torch
from benchmark_module import load_benchmark
from torch import nn

from supemb.encoders.registry import build_encoder


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("runtime")


def test_flops_per_item_by_hand(bench) -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),           # 8 x 10 x 10 outputs x 27 = 21,600 multiply-adds
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=2),  # 8 x 10 x 10 x (4 x 9) = 28,800
        nn.Conv2d(8, 4, 1, stride=2),            # 4 x 5 x 5 x 8 = 800
        nn.Flatten(),
        nn.Linear(100, 5),                       # 500
    ).eval()
    assert bench.flops_per_item(model, (3, 10, 10)) == 2 * (21_600 + 28_800 + 800 + 500)


def test_flops_per_item_counts_functional_calls_but_not_per_call_work(bench) -> None:
    class Folded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Parameter(torch.randn(6, 4)), nn.Parameter(torch.randn(4, 3 * 5))

        def forward(self, x):
            w = (self.a @ self.b).view(6, 3, 5)  # once per call: 6 x 4 x 15 multiply-adds
            return torch.nn.functional.conv1d(x, w)  # per item: 6 x 16 outputs x 15

    assert bench.flops_per_item(Folded(), (3, 20)) == 2 * 6 * 16 * 15


def test_flops_per_item_resnet18_matches_the_published_figure(bench) -> None:
    """ResNet-18 on 224 px is quoted at 1.8 G multiply-adds (He et al., 2016, Table 1)."""
    gmac = bench.flops_per_item(build_encoder("resnet18").eval(), (3, 224, 224)) / 2e9
    assert 1.79 < gmac < 1.83


def test_flops_per_item_sees_the_folded_eeg_encoder(bench) -> None:
    """Eval-mode ShallowNet runs one folded Conv1d: 19 x 10 x 40 x 991 multiply-adds, then
    the Linear (40 x 161 -> 128); training mode runs the two factorised convolutions."""
    model = build_encoder("shallow", n_chans=19, n_times=1000, sfreq=100.0)
    folded = 19 * 10 * 40 * 991 + 40 * 161 * 128
    assert bench.flops_per_item(model.eval(), (19, 1000)) == 2 * folded
    factorised = 10 * 40 * 19 * 991 + 40 * 40 * 19 * 991 + 40 * 161 * 128
    assert bench.flops_per_item(model.train(), (19, 1000)) == 2 * factorised
