"""The benchmark's baseline formulations compute the same losses as ours,
so benchmarks/losses.py compares like with like."""

from __future__ import annotations

import pytest
from benchmark_module import load_benchmark

bench = load_benchmark("losses")


@pytest.mark.parametrize("loss_name", ["rnc", "supcon"])
def test_baselines_agree_with_ours(loss_name: str) -> None:
    assert bench.check_values(loss_name, 16, "cpu") < 1e-9


def test_peak_memory_grows_cubically_for_the_loop_only() -> None:
    ours = [bench.peak_memory_mb("rnc", "ours", n, "cpu") for n in (64, 128)]
    loop = [bench.peak_memory_mb("rnc", "loop_gram", n, "cpu") for n in (64, 128)]
    assert loop[1] / loop[0] > 6.0  # ~8x per doubling: O(N^3)
    assert ours[1] / ours[0] < 5.0  # ~4x per doubling: O(N^2)
