"""Benchmarking: statistics, the noisy flag, environment, report/compare/plot.

Timing is never compared between models here: on a shared CI box ratios are noise. Only the
shape and sanity of the measurements are checked; the noisy flag is tested on constructed times.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import optimizers
from optimizers import LatencyStats, OptimizationBenchmark, environment, measure_latency
from optimizers.benchmarking import (
    MIN_SAMPLES,
    NOISY_IQR_RATIO,
    PAIRED_MIN_SAMPLES,
    is_noisy,
    measure_paired,
)


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 256), nn.ReLU(), nn.Linear(256, 4)).eval()


def test_measure_latency_sane(tiny: nn.Module) -> None:
    threads = torch.get_num_threads()
    s = measure_latency(tiny, (torch.randn(8, 16),), warmup=2, min_run_time=0.05)
    assert s.median_ms > 0 and s.mean_ms > 0
    assert s.iqr_ms >= 0
    assert s.p90_ms >= s.median_ms
    assert s.n_samples >= MIN_SAMPLES  # a figure always has a spread (CI once got one block)
    assert s.calls_per_sample >= 1
    assert s.threads == threads
    assert torch.get_num_threads() == threads  # restored


@pytest.mark.parametrize("budget", [0.002, 0.02])
def test_short_budgets_still_give_enough_blocks(tiny: nn.Module, budget: float) -> None:
    # blocked_autorange alone returns a single block when one block fills the budget.
    s = measure_latency(tiny, (torch.randn(8, 16),), warmup=1, min_run_time=budget)
    assert s.n_samples >= MIN_SAMPLES and s.calls_per_sample >= 1
    p = measure_paired(tiny, tiny, (torch.randn(8, 16),), warmup=1, min_run_time=budget, rounds=2)
    assert p.candidate.n_samples >= 2 * PAIRED_MIN_SAMPLES
    assert p.reference.n_samples >= 2 * PAIRED_MIN_SAMPLES


def test_measure_latency_sets_and_restores_threads(tiny: nn.Module) -> None:
    before = torch.get_num_threads()
    s = measure_latency(tiny, (torch.randn(8, 16),), threads=1, warmup=1, min_run_time=0.02)
    assert s.threads == 1
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    ("median", "iqr", "noisy"),
    [
        (10.0, 0.0, False),
        (10.0, 1.0, False),  # exactly 10%: not noisy (strictly greater)
        (10.0, 1.01, True),
        (10.0, 5.0, True),
        (0.0, 1.0, False),  # a zero median cannot be judged
    ],
)
def test_noisy_threshold(median: float, iqr: float, noisy: bool) -> None:
    assert NOISY_IQR_RATIO == 0.10
    assert is_noisy(median, iqr) is noisy


def test_stats_from_constructed_times() -> None:
    quiet = LatencyStats.from_times_ms([1.0, 1.01, 0.99, 1.0, 1.02], calls_per_sample=3, threads=2)
    assert quiet.median_ms == pytest.approx(1.0)
    assert not quiet.noisy
    assert quiet.n_samples == 5 and quiet.calls_per_sample == 3 and quiet.threads == 2
    noisy = LatencyStats.from_times_ms([1.0, 1.0, 2.0, 2.0])  # IQR 1.0 around median 1.5
    assert noisy.iqr_ms == pytest.approx(0.5 * 2 * 0.75, abs=0.5)
    assert noisy.noisy
    assert noisy.cv == pytest.approx(noisy.iqr_ms / noisy.median_ms)
    with pytest.raises(ValueError, match="at least one"):
        LatencyStats.from_times_ms([])


def test_environment_keys() -> None:
    env = environment("cpu", threads=2)
    assert {"device", "hardware", "threads", "torch_version", "quantized_engine", "hostname",
            "cpu_affinity", "cpu_capability"} <= env.keys()
    assert env["device"] == "cpu" and env["threads"] == 2
    assert env["torch_version"] == torch.__version__
    assert env["hardware"]


def test_ranges() -> None:
    from optimizers.benchmarking import core_ranges

    assert core_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert core_ranges([]) == ""


def test_benchmark_compare_report_plot(tiny: nn.Module, tmp_path: Path) -> None:
    x = torch.randn(8, 16)

    def fidelity(m: nn.Module) -> float:
        with torch.no_grad():
            return float(nn.functional.cosine_similarity(m(x).float(), tiny(x), dim=-1).mean())

    bench = OptimizationBenchmark(tiny, lambda: (x,), fidelity, warmup=1, min_run_time=0.02)
    base = bench.benchmark_original_model()
    assert base.accuracy == pytest.approx(1.0)
    pruned = optimizers.prune_model(tiny, method="magnitude", amount=0.5)
    bench.benchmark_optimized_model(pruned, "magnitude 0.5")
    bench.benchmark_optimized_model(optimizers.quantize_model(tiny), "dynamic int8")

    rows = bench.compare_optimizations()
    assert [r["name"] for r in rows] == ["original", "magnitude 0.5", "dynamic int8"]
    orig = rows[0]
    assert orig["speedup"] == 1.0 and orig["compression_ratio"] == 1.0 and orig["accuracy_drop"] == 0
    for r in rows:
        assert r["speedup"] == pytest.approx(orig["latency_median_ms"] / r["latency_median_ms"])
        assert r["compression_ratio"] == pytest.approx(orig["size_bytes"] / r["size_bytes"])
        assert r["latency_median_ms"] > 0 and r["latency_iqr_ms"] >= 0
    by_name = {r["name"]: r for r in rows}
    assert by_name["magnitude 0.5"]["nonzero_params"] < orig["nonzero_params"]
    assert by_name["magnitude 0.5"]["total_params"] == orig["total_params"]
    assert by_name["dynamic int8"]["size_bytes"] < orig["size_bytes"]

    report = bench.generate_report()
    assert "| model | latency ms (median) | IQR ms | size bytes |" in report
    assert "dynamic int8" in report and "Environment:" in report

    png = bench.plot_comparison(tmp_path / "cmp.png")
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_benchmark_optimizations_function(tiny: nn.Module) -> None:
    rows = optimizers.benchmark_optimizations(
        tiny, {"same": tiny}, (torch.randn(4, 16),), warmup=1, min_run_time=0.02
    )
    assert [r["name"] for r in rows] == ["original", "same"]
    assert rows[0]["accuracy"] is None and rows[0]["accuracy_drop"] is None


def test_compare_measures_original_if_missing(tiny: nn.Module) -> None:
    bench = OptimizationBenchmark(tiny, (torch.randn(4, 16),), warmup=1, min_run_time=0.02)
    bench.benchmark_optimized_model(tiny, "x")
    assert {r["name"] for r in bench.compare_optimizations()} == {"original", "x"}
