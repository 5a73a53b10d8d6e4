"""Honest measurement: latency with robust statistics, serialized size, accuracy, environment.

Latency uses ``torch.utils.benchmark.Timer.blocked_autorange`` (it synchronizes CUDA, fixes the
thread count and picks the number of calls per block), after an explicit warm-up. We report the
median, p90 and IQR of the block times and flag a measurement as noisy when IQR/median > 10%.

>>> import torch
>>> bench = OptimizationBenchmark(torch.nn.Linear(8, 8), lambda: (torch.randn(4, 8),),
...                               min_run_time=0.05)
>>> base = bench.benchmark_original_model()
"""

from __future__ import annotations

import functools
import os
import platform
import socket
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._utils import compressed_size_bytes, count_parameters, model_device, model_size_bytes

NOISY_IQR_RATIO = 0.10
MIN_SAMPLES = 5
"""Fewest timed blocks a latency figure is made of: fewer have no spread to report."""
PAIRED_MIN_SAMPLES = 3
"""Fewest timed blocks per model per round of a paired measurement."""


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one forward pass, in milliseconds."""

    median_ms: float
    p90_ms: float
    iqr_ms: float
    mean_ms: float
    n_samples: int
    calls_per_sample: int
    threads: int
    noisy: bool

    @property
    def cv(self) -> float:
        """IQR / median."""
        return self.iqr_ms / self.median_ms if self.median_ms else float("nan")

    @classmethod
    def from_times_ms(
        cls, times_ms: Sequence[float] | np.ndarray, *, calls_per_sample: int = 1, threads: int = 1
    ) -> LatencyStats:
        """Robust statistics of per-call times in milliseconds (one entry per timed block).

        >>> LatencyStats.from_times_ms([1.0, 1.0, 1.0, 1.0]).noisy
        False
        """
        times = np.asarray(times_ms, dtype=float)
        if times.size == 0:
            raise ValueError("LatencyStats.from_times_ms needs at least one time; got none")
        q1, med, q3, p90 = np.percentile(times, [25, 50, 75, 90])
        iqr = float(q3 - q1)
        return cls(
            median_ms=float(med), p90_ms=float(p90), iqr_ms=iqr, mean_ms=float(times.mean()),
            n_samples=int(times.size), calls_per_sample=calls_per_sample, threads=threads,
            noisy=is_noisy(float(med), iqr),
        )


def is_noisy(median_ms: float, iqr_ms: float, threshold: float = NOISY_IQR_RATIO) -> bool:
    """A measurement is noisy when its IQR exceeds ``threshold`` (10%) of its median.

    >>> is_noisy(10.0, 1.0), is_noisy(10.0, 1.5)
    (False, True)
    """
    return bool(median_ms > 0 and iqr_ms / median_ms > threshold)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(
    model: nn.Module,
    inputs: Sequence[Any],
    *,
    threads: int | None = None,
    warmup: int = 5,
    min_run_time: float = 0.5,
) -> LatencyStats:
    """Median/p90/IQR latency of ``model(*inputs)`` under ``torch.no_grad()``.

    >>> import torch
    >>> s = measure_latency(torch.nn.Linear(4, 4), (torch.randn(2, 4),), min_run_time=0.02)
    >>> s.median_ms > 0
    True
    """
    threads = threads or torch.get_num_threads()
    device = model_device(model)
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(*inputs)
            _sync(device)
            times_ms, number = _block_times_ms(model, tuple(inputs), threads, min_run_time, MIN_SAMPLES)
    finally:
        torch.set_num_threads(prev)
    return LatencyStats.from_times_ms(times_ms, calls_per_sample=number, threads=threads)


@dataclass(frozen=True)
class PairedStats:
    """A candidate timed against a reference in interleaved rounds, in one process.

    ``speedup`` is the median over rounds of reference/candidate medians, so drift in machine
    load that hits both alike cancels; ``speedup_iqr`` is the spread of those per-round ratios.
    """

    candidate: LatencyStats
    reference: LatencyStats
    speedup: float
    speedup_iqr: float
    speedup_min: float
    speedup_max: float
    rounds: int


def _block_times_ms(
    model: nn.Module, inputs: tuple[Any, ...], threads: int, min_run_time: float, min_samples: int
) -> tuple[np.ndarray, int]:
    """Per-call times (ms) of ``min_samples`` or more timed blocks, and the calls per block.

    ``blocked_autorange`` sizes its blocks so timer overhead is <0.01% of a block; for a fast
    model and a short budget that can be one block holding the whole budget, which has no
    spread. Then the budget is timed again in ``min_samples`` smaller blocks (still many calls
    each unless one call is itself long), so every figure comes with its noise.
    """
    from torch.utils.benchmark import Timer

    # The caller holds inference mode; the stmt runs in this thread, so grad is off there too.
    timer = Timer(stmt="model(*inputs)", globals={"model": model, "inputs": inputs}, num_threads=threads)
    m = timer.blocked_autorange(min_run_time=min_run_time)
    if len(m.times) >= min_samples:
        return np.asarray(m.times) * 1e3, int(m.number_per_run)
    per_call_s = float(np.median(m.times))
    number = max(1, int(min_run_time / min_samples / per_call_s)) if per_call_s > 0 else 1
    times = [timer.timeit(number).median for _ in range(min_samples)]
    return np.asarray(times) * 1e3, number


def measure_paired(
    candidate: nn.Module,
    reference: nn.Module,
    inputs: Sequence[Any],
    *,
    threads: int | None = None,
    warmup: int = 5,
    min_run_time: float = 0.5,
    rounds: int = 5,
    device: torch.device | None = None,
) -> PairedStats:
    """Time ``candidate`` and ``reference`` alternately (ABBA order) for ``rounds`` rounds.

    Each model gets ``min_run_time`` seconds of timing in total, split across rounds; warm-up
    (and any compile it triggers) is never timed.

    >>> import torch
    >>> lin = torch.nn.Linear(8, 8)
    >>> p = measure_paired(lin, lin, (torch.randn(2, 8),), min_run_time=0.04, rounds=2)
    >>> p.rounds, p.speedup > 0
    (2, True)
    """
    threads = threads or torch.get_num_threads()
    rounds = max(1, int(rounds))
    device = device or model_device(reference)
    inputs = tuple(inputs)
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    cand_t: list[np.ndarray] = []
    ref_t: list[np.ndarray] = []
    ratios: list[float] = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                reference(*inputs)
                candidate(*inputs)
            _sync(device)
            per = min_run_time / rounds
            for r in range(rounds):
                order = ((reference, ref_t), (candidate, cand_t)) if r % 2 == 0 else \
                    ((candidate, cand_t), (reference, ref_t))
                for model, sink in order:
                    sink.append(_block_times_ms(model, inputs, threads, per, PAIRED_MIN_SAMPLES)[0])
                ratios.append(float(np.median(ref_t[-1]) / np.median(cand_t[-1])))
    finally:
        torch.set_num_threads(prev)
    q1, q3 = np.percentile(ratios, [25, 75])
    return PairedStats(
        candidate=LatencyStats.from_times_ms(np.concatenate(cand_t), threads=threads),
        reference=LatencyStats.from_times_ms(np.concatenate(ref_t), threads=threads),
        speedup=float(np.median(ratios)), speedup_iqr=float(q3 - q1),
        speedup_min=float(min(ratios)), speedup_max=float(max(ratios)), rounds=rounds,
    )


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_name(device: torch.device | str) -> str:
    """GPU name for CUDA devices, CPU model otherwise."""
    device = torch.device(device)
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return cpu_model()


def environment(device: torch.device | str = "cpu", threads: int | None = None) -> dict[str, Any]:
    """Fingerprint recorded with every result."""
    device = torch.device(device)
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return {
        "device": str(device),
        "hardware": hardware_name(device),
        "threads": threads or torch.get_num_threads(),
        "torch_version": torch.__version__,
        "quantized_engine": torch.backends.quantized.engine,
        "hostname": socket.gethostname(),
        "cpu_affinity": core_ranges(affinity),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def core_ranges(cores: list[int]) -> str:
    """Sorted core ids as ranges.

    >>> core_ranges([0, 1, 2, 5, 7, 8])
    '0-2,5,7-8'
    """
    runs: list[list[int]] = []
    for c in sorted(cores):
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


@dataclass
class BenchmarkResult:
    """One model's measurements."""

    name: str
    latency: LatencyStats
    size_bytes: int
    compressed_size_bytes: int
    total_params: int
    nonzero_params: int
    accuracy: float | None
    peak_memory_bytes: int | None
    env: dict[str, Any] = field(default_factory=dict)

    def as_row(self) -> dict[str, Any]:
        row = {k: v for k, v in asdict(self).items() if k not in ("latency", "env")}
        row.update({f"latency_{k}": v for k, v in asdict(self.latency).items()})
        return row


InputGenerator = Callable[[], Sequence[Any]] | Sequence[Any]


class OptimizationBenchmark:
    """Measure an original model and its optimized variants side by side, in one process.

    Args:
        model: the original model.
        input_generator: a callable returning the input tuple, or the tuple itself.
        evaluate_fn: ``(model) -> float``, higher is better (accuracy or fidelity).
        threads: torch intra-op threads for timing (default: current setting).
        min_run_time: seconds of timing per model.

    >>> import torch
    >>> b = OptimizationBenchmark(torch.nn.Linear(4, 4), (torch.randn(2, 4),), min_run_time=0.02)
    >>> _ = b.benchmark_original_model(); _ = b.benchmark_optimized_model(torch.nn.Linear(4, 4), "x")
    >>> [r["name"] for r in b.compare_optimizations()]
    ['original', 'x']
    """

    def __init__(
        self,
        model: nn.Module,
        input_generator: InputGenerator,
        evaluate_fn: Callable[[nn.Module], float] | None = None,
        *,
        threads: int | None = None,
        warmup: int = 5,
        min_run_time: float = 0.5,
    ) -> None:
        self.model = model
        self.input_generator = input_generator
        self.evaluate_fn = evaluate_fn
        self.threads = threads or torch.get_num_threads()
        self.warmup = warmup
        self.min_run_time = min_run_time
        self.results: dict[str, BenchmarkResult] = {}

    def _inputs(self, model: nn.Module) -> tuple[Any, ...]:
        raw = self.input_generator() if callable(self.input_generator) else self.input_generator
        device = model_device(model)
        return tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in raw)

    def benchmark(self, model: nn.Module, name: str) -> BenchmarkResult:
        """Measure ``model`` and store the result under ``name``."""
        model.eval()
        device = model_device(model)
        inputs = self._inputs(model)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        lat = measure_latency(model, inputs, threads=self.threads, warmup=self.warmup,
                              min_run_time=self.min_run_time)
        peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
        nonzero, total = count_parameters(model)
        acc = float(self.evaluate_fn(model)) if self.evaluate_fn else None
        result = BenchmarkResult(
            name=name, latency=lat, size_bytes=model_size_bytes(model),
            compressed_size_bytes=compressed_size_bytes(model), total_params=total,
            nonzero_params=nonzero, accuracy=acc, peak_memory_bytes=peak,
            env=environment(device, self.threads),
        )
        self.results[name] = result
        return result

    def benchmark_original_model(self) -> BenchmarkResult:
        """Measure the original model (the reference for every ratio)."""
        return self.benchmark(self.model, "original")

    def benchmark_optimized_model(self, model: nn.Module, name: str) -> BenchmarkResult:
        """Measure an optimized variant."""
        return self.benchmark(model, name)

    def compare_optimizations(self) -> list[dict[str, Any]]:
        """Rows with speedup, compression and accuracy delta against the original."""
        if "original" not in self.results:
            self.benchmark_original_model()
        base = self.results["original"]
        rows = []
        for r in self.results.values():
            row = r.as_row()
            row["speedup"] = base.latency.median_ms / r.latency.median_ms
            row["compression_ratio"] = base.size_bytes / r.size_bytes
            row["accuracy_drop"] = (
                base.accuracy - r.accuracy if base.accuracy is not None and r.accuracy is not None else None
            )
            rows.append(row)
        return rows

    def generate_report(self) -> str:
        """A Markdown table of every measured model, plus the environment."""
        rows = self.compare_optimizations()
        env = self.results["original"].env
        lines = [
            f"Environment: {env['hardware']} | device {env['device']} | threads {env['threads']} | "
            f"torch {env['torch_version']} | engine {env['quantized_engine']}",
            "",
            "| model | latency ms (median) | IQR ms | size bytes | accuracy | speedup | compression |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            acc = "n/a" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
            noisy = " (noisy)" if r["latency_noisy"] else ""
            lines.append(
                f"| {r['name']} | {r['latency_median_ms']:.3f}{noisy} | {r['latency_iqr_ms']:.3f} | "
                f"{r['size_bytes']} | {acc} | {r['speedup']:.2f}x | {r['compression_ratio']:.2f}x |"
            )
        return "\n".join(lines)

    def plot_comparison(self, path: str | Path) -> Path:
        """Save a PNG with latency (with IQR bars) and size per model."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.compare_optimizations()
        names = [r["name"] for r in rows]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        ax1.bar(names, [r["latency_median_ms"] for r in rows],
                yerr=[r["latency_iqr_ms"] / 2 for r in rows], color="tab:blue")
        ax1.set_ylabel("latency (ms, median ± IQR/2)")
        ax2.bar(names, [r["size_bytes"] / 1e6 for r in rows], color="tab:orange")
        ax2.set_ylabel("size (MB)")
        for ax in (ax1, ax2):
            ax.tick_params(axis="x", rotation=30)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
