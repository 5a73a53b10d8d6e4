"""Quantization, reduced precision and unstructured pruning, measured side by side in one run.

Run from the repository root::

    .venv/bin/python bench/optimizers.py                        # digits MLP + CNN, MiniLM
    .venv/bin/python bench/optimizers.py --models mlp cnn --threads 1 --rounds 5
    .venv/bin/python bench/optimizers.py --models mlp --batch 2048

Every table row is built with the public optimizers API and measured by
:class:`optimizers.OptimizationBenchmark` (``blocked_autorange`` under ``inference_mode``, fixed
thread count). To keep load from other processes on a shared machine from favouring one row,
the fp32 model and all variants are measured once per *round*, in the same order, for
``--rounds`` rounds: latency is the median over rounds of each round's median, IQR the median of
the per-round IQRs, and speedup the median of the per-round paired ratios fp32/variant. Size is
the serialized ``state_dict``; accuracy is digits test accuracy, or for MiniLM the fidelity
(mean cosine similarity to the fp32 embeddings).

PT2E static int8 is compiled by inductor (freezing) while it is built; compile time is not
latency. ``lowrank A`` removes the fraction A of each layer's rank by truncated SVD (layers that
would not shrink stay dense), then recovers by label-free distillation for 2 s.

Unstructured (masked) pruning keeps dense shapes: its row shows no speedup and no size saving,
by design; only its zlib-compressed size shrinks (``zlib`` column).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

from optimizers import (  # noqa: E402
    DynamicQuantizer,
    MixedPrecisionConverter,
    ModelPruner,
    OptimizationBenchmark,
    OptsweepError,
    PruningConfig,
    QuantizationConfig,
    StaticQuantizer,
    WeightOnlyQuantizer,
)

Build = Callable[[nn.Module, list[tuple[torch.Tensor, ...]]], nn.Module]


def _dynamic(**kw: Any) -> Build:
    return lambda m, _c: DynamicQuantizer(m, QuantizationConfig(quantization_type="dynamic", **kw)).optimize()


def _precision(dtype: torch.dtype, autocast: bool) -> Build:
    return lambda m, _c: MixedPrecisionConverter(m, dtype=dtype, use_auto_cast=autocast).convert_to_mixed_precision()


TECHNIQUES: dict[str, Build] = {
    "dynamic int8 per-channel, 7-bit act. (torch.ao x86)": _dynamic(reduce_range=True),
    "dynamic int8 per-channel, 8-bit act. (torch.ao x86)": _dynamic(reduce_range=False),
    "dynamic int8 per-tensor (torch.ao x86)": _dynamic(per_channel=False),
    "dynamic int8 per-tensor (torch.ao onednn)": _dynamic(per_channel=False, engine="onednn"),
    "dynamic int8 per-channel (torch.ao qnnpack)": _dynamic(engine="qnnpack"),
    "dynamic fp16 weights (torch.ao)": _dynamic(bits=16),
    "static int8 (torch.ao FX)": lambda m, c: StaticQuantizer(m, calibration_loader=c).optimize(),
    "static int8 (PT2E X86Inductor, compiled)": lambda m, c: StaticQuantizer(
        m, calibration_loader=c, config=QuantizationConfig(quantization_type="static", backend="pt2e")).optimize(),
    "weight-only int8 (torchao)": lambda m, _c: WeightOnlyQuantizer(
        m, QuantizationConfig(quantization_type="weight_only")).optimize(),
    "dynamic int8 (torchao)": _dynamic(backend="torchao"),
    "bf16 cast": _precision(torch.bfloat16, autocast=False),
    "bf16 autocast": _precision(torch.bfloat16, autocast=True),
    "fp16 cast": _precision(torch.float16, autocast=False),
    "magnitude pruning 0.5": lambda m, _c: ModelPruner(
        m, PruningConfig(method="magnitude", amount=0.5)).prune_model(),
    "lowrank 0.5 (SVD, 2 s distillation)": lambda m, c: _lowrank(m, c, 0.5),
    "lowrank 0.75 (SVD, 2 s distillation)": lambda m, c: _lowrank(m, c, 0.75),
}


def _lowrank(m: nn.Module, calib: list[tuple[torch.Tensor, ...]], amount: float) -> nn.Module:
    cfg = PruningConfig(method="lowrank", amount=amount, recovery_steps=10_000, recovery_seconds=2.0)
    return ModelPruner(m, cfg, example_inputs=calib[0], calibration_data=calib).prune_model()


@dataclass
class Case:
    name: str
    model: nn.Module
    inputs: tuple[torch.Tensor, ...]
    evaluate: Callable[[nn.Module], float]
    calibration: list[tuple[torch.Tensor, ...]]
    metric: str


def _cases(names: list[str], batch: int | None) -> list[Case]:
    out = []
    if {"mlp", "cnn"} & set(names):
        import digits

        x = digits.example_inputs()[0]
        if batch is not None:  # repeat the test images to the requested batch
            x = x.repeat((batch + len(x) - 1) // len(x), 1, 1, 1)[:batch].clone()
        for name, factory in (("mlp", digits.mlp), ("cnn", digits.cnn)):
            if name in names:
                out.append(Case(f"digits {name.upper()} (batch {len(x)})", factory(), (x,),
                                digits.evaluate, list(digits.calibration()), "accuracy"))
    if "minilm" in names:
        import minilm

        ids, mask = minilm.example_inputs()
        out.append(Case(f"MiniLM-L6 (batch {ids.shape[0]} x {ids.shape[1]} tokens)", minilm.model(),
                        (ids, mask), minilm.evaluate, list(minilm.calibration()), "cosine"))
    return out


def _build_all(case: Case) -> tuple[dict[str, nn.Module], dict[str, str]]:
    built, skipped = {}, {}
    for tech, build in TECHNIQUES.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                built[tech] = build(case.model, case.calibration)
        except OptsweepError as exc:  # e.g. static int8 on a model FX cannot trace, a graph inductor can't lower
            skipped[tech] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:90]}"
    torch.backends.quantized.engine = "x86"  # qnnpack/onednn rows switch the global engine
    return built, skipped


def _run(case: Case, threads: int, rounds: int, min_run_time: float) -> None:
    built, skipped = _build_all(case)
    per_round: list[dict[str, dict[str, Any]]] = []
    for r in range(rounds):
        bench = OptimizationBenchmark(case.model, case.inputs, case.evaluate if r == 0 else None,
                                      threads=threads, min_run_time=min_run_time)
        bench.benchmark_original_model()
        for tech, model in built.items():
            # The engine is global state in torch.ao; time each model under its own engine.
            engine = "qnnpack" if "qnnpack" in tech else "onednn" if "onednn" in tech else "x86"
            torch.backends.quantized.engine = engine
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                bench.benchmark_optimized_model(model, tech)
        torch.backends.quantized.engine = "x86"
        per_round.append({row["name"]: row for row in bench.compare_optimizations()})

    first = per_round[0]
    env = bench.results["original"].env
    print(f"\n## {case.name}: {env['hardware']}, threads {threads}, {rounds} rounds, "
          f"torch {env['torch_version']}")
    print(f"| technique | latency ms (median) | IQR ms | size bytes | zlib bytes | {case.metric} "
          f"| speedup | compression |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in first:
        med = statistics.median(rd[name]["latency_median_ms"] for rd in per_round)
        iqr = statistics.median(rd[name]["latency_iqr_ms"] for rd in per_round)
        speedup = statistics.median(rd[name]["speedup"] for rd in per_round)
        noisy = sum(rd[name]["latency_noisy"] for rd in per_round)
        row = first[name]
        label = "fp32" if name == "original" else name
        flag = f" ({noisy}/{rounds} noisy)" if noisy else ""
        print(f"| {label} | {med:.3f}{flag} | {iqr:.3f} | {row['size_bytes']} | "
              f"{row['compressed_size_bytes']} | {row['accuracy']:.4f} | {speedup:.2f}x | "
              f"{row['compression_ratio']:.2f}x |")
    for tech, why in skipped.items():
        print(f"| {tech} | skipped: {why} | | | | | | |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["mlp", "cnn", "minilm"],
                    choices=["mlp", "cnn", "minilm"])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-run-time", type=float, default=0.5, help="seconds of timing per model per round")
    ap.add_argument("--batch", type=int, default=None, help="digits batch size (default: 256)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if load + args.threads > cpus + 0.5:
        print(f"WARNING: load average {load:.2f} + {args.threads} timing threads exceeds {cpus} CPUs; "
              "timings are noisy, and multi-threaded ones dominated by preemption: prefer --threads 1")
    print(f"torch {torch.__version__}, threads={args.threads}, "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    for case in _cases(args.models, args.batch):
        _run(case, args.threads, args.rounds, args.min_run_time)
    print(f"\nload average at end {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
