"""optsweep's optimizers: pruning, quantization and reduced precision on real kernels, and
honest benchmarking. Imports neither ``sweep`` nor ``analysis``.

>>> import torch, optimizers
>>> m = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU())
>>> q = optimizers.quantize_model(m, quantization_type="dynamic")
>>> p = optimizers.prune_model(m, method="magnitude", amount=0.5)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .benchmarking import (
    BenchmarkResult,
    LatencyStats,
    OptimizationBenchmark,
    environment,
    measure_latency,
)
from .errors import (
    ConfigError,
    OptsweepError,
    UnsupportedArchitectureError,
    UnsupportedOnDeviceError,
)
from .mixed_precision import MixedPrecisionConverter, MixedPrecisionWrapper
from .pruning import ModelPruner, PruningConfig
from .quantization import (
    DynamicQuantizer,
    QuantizationConfig,
    StaticQuantizer,
    WeightOnlyQuantizer,
    make_quantizer,
)
from .recipe import Recipe, apply_recipe, check_feasible

__all__ = [
    "BenchmarkResult", "ConfigError", "DynamicQuantizer", "LatencyStats", "MixedPrecisionConverter",
    "MixedPrecisionWrapper", "ModelPruner", "OptimizationBenchmark", "OptsweepError", "PruningConfig",
    "QuantizationConfig", "Recipe", "StaticQuantizer", "UnsupportedArchitectureError",
    "UnsupportedOnDeviceError", "WeightOnlyQuantizer", "apply_recipe", "benchmark_optimizations",
    "check_feasible", "convert_to_mixed_precision", "environment", "measure_latency", "prune_model",
    "quantize_model",
]


def quantize_model(
    model: nn.Module,
    calibration_data: Iterable[Any] | None = None,
    **config: Any,
) -> nn.Module:
    """Quantize a copy of ``model``; ``config`` are :class:`QuantizationConfig` fields."""
    return make_quantizer(model, QuantizationConfig(**config), calibration=calibration_data).optimize()


def prune_model(model: nn.Module, example_inputs: tuple[torch.Tensor, ...] | None = None,
                **config: Any) -> nn.Module:
    """Prune a copy of ``model``; ``config`` are :class:`PruningConfig` fields."""
    return ModelPruner(model, PruningConfig(**config), example_inputs=example_inputs).prune_model()


def convert_to_mixed_precision(model: nn.Module, dtype: torch.dtype = torch.bfloat16,
                               use_auto_cast: bool = True) -> nn.Module:
    """Wrap a copy of ``model`` to run in ``dtype`` (falls back, with a warning, if unsupported)."""
    return MixedPrecisionConverter(model, dtype=dtype, use_auto_cast=use_auto_cast).convert_to_mixed_precision()


def benchmark_optimizations(
    model: nn.Module,
    optimized: dict[str, nn.Module],
    inputs: Sequence[Any] | Callable[[], Sequence[Any]],
    evaluate_fn: Callable[[nn.Module], float] | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Measure ``model`` and every entry of ``optimized`` in one run; rows with ratios."""
    bench = OptimizationBenchmark(model, inputs, evaluate_fn, **kwargs)
    bench.benchmark_original_model()
    for name, m in optimized.items():
        bench.benchmark_optimized_model(m, name)
    return bench.compare_optimizations()
