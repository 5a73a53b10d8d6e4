"""Structured pruning benchmark: parameters, latency and accuracy, dense vs pruned, same run.

Run from the repository root::

    .venv/bin/python bench/pruning.py                    # digits MLP, digits CNN, MiniLM
    .venv/bin/python bench/pruning.py --models mlp --amounts 0.5 --threads 2

Latency is ``torch.utils.benchmark.Timer(...).blocked_autorange`` under ``inference_mode``
(median and IQR over blocks), with the thread count fixed and printed. The dense model and its
pruned variants are timed in the same process, interleaved over several rounds, and the speedup
is the median of the paired per-round ratios, so load from other processes on a shared machine
affects both sides alike.
Digits accuracy is test-set accuracy (recovery: supervised ``digits.train_step``); MiniLM
accuracy is fidelity, the mean cosine similarity to the fp32 embeddings (recovery:
label-free cosine distillation from the dense model on calibration sentences).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils import benchmark

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

from optimizers.pruning import PruningConfig  # noqa: E402
from optimizers.structured import structured_prune  # noqa: E402


@dataclass
class Case:
    """A model with its inputs, metric and recovery recipe."""

    name: str
    model: nn.Module
    inputs: tuple[torch.Tensor, ...]
    evaluate: Callable[[nn.Module], float]
    prune_kwargs: dict[str, Any]
    recovery: dict[str, Any]


def _cases(names: list[str], recovery_scale: float) -> list[Case]:
    out = []
    if {"mlp", "cnn"} & set(names):
        import digits

        for name, factory in (("mlp", digits.mlp), ("cnn", digits.cnn)):
            if name in names:
                out.append(Case(f"digits-{name}", factory(), digits.example_inputs(),
                                digits.evaluate, {"train_step": digits.train_step},
                                {"recovery_steps": int(300 * recovery_scale),
                                 "recovery_seconds": 30.0 * recovery_scale, "recovery_lr": 1e-3}))
    if "minilm" in names:
        import minilm

        out.append(Case("minilm", minilm.model(), minilm.example_inputs(), minilm.evaluate,
                        {"calibration_data": list(minilm.calibration(n_batches=8))},
                        {"recovery_steps": int(60 * recovery_scale),
                         "recovery_seconds": 60.0 * recovery_scale, "recovery_loss": "cosine",
                         "recovery_lr": 5e-4}))
    return out


def _timed_rounds(models: list[nn.Module], inputs: tuple[torch.Tensor, ...],
                  min_run_time: float, rounds: int) -> list[list[list[float]]]:
    """Per model, per round, the block times (s). Models alternate within every round, so
    load from other processes on a shared machine hits dense and pruned alike."""
    out: list[list[list[float]]] = [[] for _ in models]
    with torch.inference_mode():
        for model in models:
            model.eval()
            for _ in range(3):
                model(*inputs)
        for _ in range(rounds):
            for i, model in enumerate(models):
                m = benchmark.Timer(stmt="model(*inputs)",
                                    globals={"model": model, "inputs": inputs},
                                    num_threads=torch.get_num_threads(),
                                    ).blocked_autorange(min_run_time=min_run_time / rounds)
                out[i].append(list(m.times))
    return out


def _median_iqr_ms(rounds: list[list[float]]) -> tuple[float, float]:
    t = torch.tensor([x for r in rounds for x in r], dtype=torch.float64) * 1e3
    q = torch.quantile(t, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    return float(q[1]), float(q[2] - q[0])


def _speedup(dense: list[list[float]], pruned: list[list[float]]) -> float:
    """Median over rounds of the per-round ratio of medians (paired, so drift cancels)."""
    ratios = [statistics.median(d) / statistics.median(p) for d, p in zip(dense, pruned, strict=True)]
    return statistics.median(ratios)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["mlp", "cnn", "minilm"],
                    choices=["mlp", "cnn", "minilm"])
    ap.add_argument("--amounts", nargs="+", type=float, default=[0.3, 0.5])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-run-time", type=float, default=2.0,
                    help="seconds of timing per model variant, split over --rounds")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--recovery-scale", type=float, default=1.0,
                    help="multiply the recovery step budget (0: no recovery)")
    ap.add_argument("--round-to", type=int, default=None)
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, "
          f"min_run_time={args.min_run_time}s x{args.rounds} interleaved rounds, "
          f"round_to={args.round_to}; speedup = median of paired per-round ratios; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    header = (f"{'model':<12} {'amount':>6} {'params':>10} {'lat_ms med':>10} {'iqr':>7} "
              f"{'speedup':>7} {'acc_before':>10} {'acc_after':>9} {'rec_steps':>9} {'rec_s':>6}")
    print(header)
    print("-" * len(header))
    for case in _cases(args.models, args.recovery_scale):
        dense_acc = case.evaluate(case.model)
        variants: list[tuple[float, nn.Module, dict[str, Any]]] = []
        for amount in args.amounts:
            cfg = PruningConfig(method="structured", amount=amount, round_to=args.round_to,
                                **case.recovery)
            pruned, info = structured_prune(case.model, cfg, example_inputs=case.inputs,
                                            evaluate=case.evaluate, **case.prune_kwargs)
            variants.append((amount, pruned, info))
        times = _timed_rounds([case.model] + [v[1] for v in variants], case.inputs,
                              args.min_run_time * (1 + len(variants)), args.rounds)
        ms, iqr = _median_iqr_ms(times[0])
        print(f"{case.name:<12} {'dense':>6} {_params(case.model):>10,} {ms:>10.3f} "
              f"{iqr:>7.3f} {1.0:>7.2f} {dense_acc:>10.4f} {dense_acc:>9.4f} "
              f"{'-':>9} {'-':>6}", flush=True)
        for (amount, _, info), t in zip(variants, times[1:], strict=True):
            ms, iqr = _median_iqr_ms(t)
            print(f"{case.name:<12} {amount:>6.2f} {info['params_after']:>10,} {ms:>10.3f} "
                  f"{iqr:>7.3f} {_speedup(times[0], t):>7.2f} "
                  f"{info['accuracy_before_recovery']:>10.4f} "
                  f"{info['accuracy_after_recovery']:>9.4f} {info['recovery_steps_done']:>9} "
                  f"{info['recovery_s']:>6.1f}", flush=True)
    # Another process competing for the cores makes every latency above noisy: say so.
    print(f"load average at end {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")

if __name__ == "__main__":
    main()
