"""One trial as a plain function: ``spec + context -> record``. No Ray, no Optuna.

The record is a dict whose keys are Parquet columns (``analysis.schema``). Failures are data:
every exception becomes a FAIL (or INFEASIBLE) record; nothing escapes :func:`run_trial`.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import math
import os
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch
from torch import nn

from analysis.schema import BASELINE_TRIAL, COLUMN_NAMES, SCHEMA_VERSION
from optimizers import UnsupportedArchitectureError, UnsupportedOnDeviceError
from optimizers._utils import compressed_size_bytes, count_parameters, model_size_bytes
from optimizers.benchmarking import environment, measure_paired
from optimizers.recipe import Recipe, apply_recipe
from optimizers.techniques import isolated_state

from .config import CONSTRAINT_KEYS
from .space import to_recipe


@dataclass(frozen=True)
class TrialSpec:
    """Everything that defines one trial, as data."""

    trial_number: int
    params: Mapping[str, Any]
    study_name: str = "sweep"
    device: str = "cpu"
    threads: int = 1
    warmup: int = 5
    min_run_time_s: float = 0.3
    pruning_options: Mapping[str, Any] = field(default_factory=dict)
    quantization_options: Mapping[str, Any] = field(default_factory=dict)
    constraints: Mapping[str, float] = field(default_factory=dict)
    latency_shared: bool = False
    node_id: str | None = None
    attempts: int = 1
    exclusive_latency: bool = False
    rounds: int = 5
    measure_artifact: bool = True
    known_effective: Mapping[str, int] = field(default_factory=dict)


@dataclass
class TrialContext:
    """The user's model and data, built once per worker and reused across trials."""

    model: nn.Module
    example_inputs: tuple[Any, ...]
    calibration: list[tuple[Any, ...]] | None = None
    evaluate: Callable[[nn.Module], float] | None = None
    train_step: Callable[..., Any] | None = None
    _reference: Any = None
    _reference_models: dict[str, nn.Module] = field(default_factory=dict)

    def reference_model(self, device: torch.device) -> nn.Module:
        """The untouched model on ``device``: the other half of every paired timing."""
        key = str(device)
        if key not in self._reference_models:
            import copy

            self._reference_models[key] = self.model if device.type == "cpu" else copy.deepcopy(self.model).to(device)
        return self._reference_models[key].eval()

    def reference_outputs(self) -> torch.Tensor:
        """fp32 outputs of the untouched model on ``example_inputs`` (for fidelity)."""
        if self._reference is None:
            with torch.inference_mode():
                self._reference = _first_tensor(self.model.eval()(*self.example_inputs)).float().cpu()
        return self._reference  # type: ignore[no-any-return]


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (tuple, list)) and out:
        return _first_tensor(out[0])
    raise TypeError(f"model output has no tensor: {type(out).__name__}")


def fidelity(model: nn.Module, ctx: TrialContext, device: torch.device) -> float:
    """Mean per-sample cosine similarity of outputs to the original's (1.0 = identical)."""
    ref = ctx.reference_outputs()
    inputs = tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in ctx.example_inputs)
    with torch.inference_mode():
        out = _first_tensor(model(*inputs)).float().cpu()
    return float(torch.nn.functional.cosine_similarity(
        out.reshape(out.shape[0], -1), ref.reshape(ref.shape[0], -1), dim=1).mean())


def constraint_values(row: Mapping[str, Any], constraints: Mapping[str, float]) -> list[float]:
    """Optuna's convention: one value per constraint, <= 0 means satisfied. NaN counts as violated."""
    out = []
    for key, limit in constraints.items():
        column, kind = CONSTRAINT_KEYS[key]
        v = row.get(column)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out.append(1.0)
            continue
        out.append(float(v) - limit if kind == "max" else limit - float(v))
    return out


def _base_row(spec: TrialSpec, recipe: Recipe) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "study_name": spec.study_name,
        "trial_number": spec.trial_number,
        **{k: v for k, v in recipe.to_dict().items() if k != "precision_mode"},  # not a column
        "params_json": json.dumps(dict(spec.params), sort_keys=True),
        "latency_shared": spec.latency_shared,
        "node_id": spec.node_id,
        "attempts": spec.attempts,
        "started_at": datetime.now(timezone.utc),
    }


def _error_type(exc: BaseException) -> str:
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in str(exc).lower():
        return "OOM"
    return type(exc).__name__


def one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}"[:500]


def run_trial(spec: TrialSpec, ctx: TrialContext, baseline: Mapping[str, Any] | None) -> dict[str, Any]:
    """Build, optimize and measure one configuration. Never raises for a trial's own failure."""
    t0 = time.perf_counter()
    device = torch.device(spec.device)
    recipe = _recipe_or_none(spec)
    row = _base_row(spec, recipe or Recipe())
    if recipe is None:
        return {**row, "state": "INFEASIBLE", "error_type": "InvalidParams",
                "error": f"invalid parameters {dict(spec.params)}", "duration_s": time.perf_counter() - t0}
    engine: str | None = None
    try:
        # Process-global torch state (engine, threads, RNG, dynamo caches) is this trial's alone.
        with isolated_state(threads=spec.threads, seed=0):
            model, info = apply_recipe(
                ctx.model, recipe, example_inputs=ctx.example_inputs, calibration=ctx.calibration,
                device=device, pruning_options=spec.pruning_options,
                quantization_options=spec.quantization_options, evaluate=ctx.evaluate,
                train_step=ctx.train_step,
            )
            row.update(stage_columns(info))
            engine = row.get("quantized_engine")
            eff_key = Recipe.from_params(info["effective"]).key()
            if spec.trial_number >= 0 and eff_key in spec.known_effective:
                # A no-op stage made this the very model of an earlier trial: not measured again.
                row.update(state="COMPLETE", duplicate_of=int(spec.known_effective[eff_key]))
                return _finish_row(row, device, spec, engine, t0)
            shipped = model
            if spec.measure_artifact and spec.trial_number >= 0:
                shipped = _ship(model, info, ctx, spec, device, row)
            row.update(measure(shipped, ctx, spec, device, accuracy_model=model))
        row["state"] = "COMPLETE"
    except (UnsupportedOnDeviceError, UnsupportedArchitectureError) as exc:
        # No kernel on this device, or the model can't take this technique: the combination is
        # impossible here, not a crash.
        row.update(state="INFEASIBLE", error_type=type(exc).__name__, error=one_line(exc))
    except Exception as exc:  # noqa: BLE001 - the trial boundary: every failure becomes a row
        row.update(state="FAIL", error_type=_error_type(exc), error=one_line(exc),
                   traceback=traceback.format_exc(limit=8))
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    _finish_row(row, device, spec, engine, t0)
    if baseline is not None and row["state"] == "COMPLETE":
        row.update(derived(row, baseline))
        violations = constraint_values(row, spec.constraints)
        row["feasible"] = all(v <= 0 for v in violations)
        row["constraint_violation"] = float(sum(max(v, 0.0) for v in violations))
    row["duration_s"] = time.perf_counter() - t0
    return row


def _finish_row(row: dict[str, Any], device: torch.device, spec: TrialSpec, engine: str | None,
                t0: float) -> dict[str, Any]:
    row.update(environment(device, spec.threads))
    row["quantized_engine"] = engine  # the engine this row's model used, not the process default
    row["device"] = str(device)
    row["duration_s"] = time.perf_counter() - t0
    return row


def _ship(model: nn.Module, info: Mapping[str, Any], ctx: TrialContext, spec: TrialSpec,
          device: torch.device, row: dict[str, Any]) -> nn.Module:
    """The deployable form of ``model`` (the export path ``optsweep export`` uses), reloaded and
    checked against the eager model's outputs. A model that cannot be exported is recorded as
    ``exportable = false`` with the reason and its eager form is measured."""
    import tempfile

    from optimizers.artifact import ArtifactError, formats_for, roundtrip

    inputs = tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in ctx.example_inputs)
    with tempfile.TemporaryDirectory(prefix="optsweep-artifact-") as tmp:
        try:
            art = roundtrip(getattr(model, "_orig_mod", model), inputs, os.path.join(tmp, "model.pt2"),
                            formats_for(info.get("export_formats", [])))
        except ArtifactError as exc:
            row.update(exportable=False, export_format=None, export_error=str(exc)[:500])
            return model
    row.update(exportable=True, export_format=art.format, export_error=None,
               export_max_abs_diff=art.max_abs_diff)
    return art.module


_SCHEMA_COLUMNS = frozenset(COLUMN_NAMES)


def _scalar_details(details: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON scalars of a stage's details (lists of layer names and the like are left out)."""
    out: dict[str, Any] = {}
    for k, v in details.items():
        if isinstance(v, bool) or v is None or isinstance(v, int):
            out[str(k)] = v
        elif isinstance(v, float):
            out[str(k)] = v if math.isfinite(v) else None
        elif isinstance(v, str):
            out[str(k)] = v[:200]
    return out


def stage_columns(info: Mapping[str, Any]) -> dict[str, Any]:
    """Row columns from :func:`apply_recipe`'s info: what each stage did, and the effective recipe.

    The columns the built-in stages share are mapped here; a column a technique declares
    (``Technique.columns``) that the schema has and that is still empty is taken from its stage's
    details as is (never a measured column it did not declare), and every
    stage's scalar details are kept in ``stages_json``, so a plug-in's figures reach the row
    without an edit here.
    """
    pinfo = info.get("pruning", {})
    qinfo = info.get("quantization", {})
    stages = list(info.get("stages", []))
    compile_s = sum(float(s.details.get("compile_s") or 0.0) for s in stages)
    cols = _builtin_columns(info, pinfo, qinfo, compile_s)
    for st in stages:
        if not st.changed:
            continue
        declared = _declared_columns(st.stage, st.technique)
        for k, v in _scalar_details(st.details).items():
            if k in declared and k in _SCHEMA_COLUMNS and cols.get(k) is None:
                cols[k] = v
    cols["stages_json"] = json.dumps([{"stage": st.stage, "technique": st.technique, "changed": st.changed,
                                       "note": st.note, "details": _scalar_details(st.details)}
                                      for st in stages], default=str)
    return cols


def _declared_columns(stage: str, technique: str) -> set[str]:
    """The row columns the registered techniques of that stage and name declare they fill."""
    from optimizers.techniques import REGISTRY

    return {c for t in REGISTRY.techniques() if t.stage == stage and t.name == technique for c in t.columns}


def _builtin_columns(info: Mapping[str, Any], pinfo: Mapping[str, Any], qinfo: Mapping[str, Any],
                     compile_s: float) -> dict[str, Any]:
    return {
        "sparsity": pinfo.get("final_sparsity", pinfo.get("sparsity")),
        "dense_speedup_expected": bool(pinfo.get("speedup_expected", True)) if pinfo else True,
        "recovery_s": pinfo.get("recovery_s"),
        "quant_backend": qinfo.get("quant_backend") if qinfo.get("changed") else None,
        "quantized_engine": (qinfo.get("quantized_engine") or None) if qinfo.get("changed") else None,
        "compile_s": compile_s or None,
        "effective_recipe": json.dumps(info.get("effective", {}), sort_keys=True),
    }


def _recipe_or_none(spec: TrialSpec) -> Recipe | None:
    try:
        return to_recipe(dict(spec.params))
    except (KeyError, ValueError):
        return None


def measure(model: nn.Module, ctx: TrialContext, spec: TrialSpec, device: torch.device,
            accuracy_model: nn.Module | None = None) -> dict[str, Any]:
    """Latency paired with the untouched model (interleaved rounds, same process, same cores),
    size, parameter counts, accuracy, peak memory.

    ``speedup`` is the median of per-round ratios and ``speedup_iqr`` their spread, so the ratio
    no longer depends on what else ran when. Accuracy is measured on ``accuracy_model`` (the
    eager model whose outputs the shipped artifact was checked against) when given.
    """
    inputs = tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in ctx.example_inputs)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    reference = ctx.reference_model(device)
    with latency_lock(device) if spec.exclusive_latency else contextlib.nullcontext():
        paired = measure_paired(model, reference, inputs, threads=spec.threads, warmup=spec.warmup,
                                min_run_time=spec.min_run_time_s, rounds=spec.rounds, device=device)
    lat = paired.candidate
    eager = accuracy_model if accuracy_model is not None else model  # sized and scored
    nonzero, total = count_parameters(eager)
    accuracy = float(ctx.evaluate(eager)) if ctx.evaluate else fidelity(eager, ctx, device)
    return {
        "latency_ms": lat.median_ms, "latency_iqr_ms": lat.iqr_ms, "latency_p90_ms": lat.p90_ms,
        "latency_noisy": lat.noisy, "speedup": paired.speedup, "speedup_iqr": paired.speedup_iqr,
        "paired_baseline_latency_ms": paired.reference.median_ms,
        "size_bytes": model_size_bytes(eager), "compressed_size_bytes": compressed_size_bytes(eager),
        "total_params": total, "nonzero_params": nonzero, "accuracy": accuracy,
        "peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None,
    }


@contextlib.contextmanager
def latency_lock(device: torch.device) -> Iterator[None]:
    """Serialize the timed phase of trials on one node (per GPU for CUDA) with an ``flock``.

    Pinning gives each worker its own cores, but caches, memory bandwidth and the node's other
    processes are shared; on a small node that still moves latency by 10-20%. Holding this lock
    while timing means no two trials on the node measure at once, while pruning, calibration and
    evaluation keep running in parallel. Released by the OS if the worker dies.

    The lock lives in this user's :func:`sweep.guard.core_lock_dir` (``/tmp/optsweep-<uid>/cores``,
    0700; an unsafe folder fails the trial with one line), so another user's processes can
    neither hold it to stall every trial nor replace it.
    """
    from .guard import core_lock_dir, open_lock_file

    name = f"latency-{device.type}{device.index if device.index is not None else ''}.lock"
    fd = open_lock_file(os.path.join(core_lock_dir(), name))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the fd releases the lock


def derived(row: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, Any]:
    """Baseline columns and the ratios against it."""
    def ratio(a: Any, b: Any) -> float | None:
        return float(a) / float(b) if a is not None and b not in (None, 0) else None

    acc, bacc = row.get("accuracy"), baseline.get("accuracy")
    return {
        "baseline_latency_ms": baseline.get("latency_ms"),
        "baseline_size_bytes": baseline.get("size_bytes"),
        "baseline_accuracy": bacc,
        # The paired ratio measured beside the candidate when there is one; else the sweep's.
        "speedup": row.get("speedup") if row.get("speedup") is not None else ratio(
            baseline.get("latency_ms"), row.get("latency_ms")),
        "compression_ratio": ratio(baseline.get("size_bytes"), row.get("size_bytes")),
        "accuracy_drop": None if acc is None or bacc is None else float(bacc) - float(acc),
    }


def run_baseline(spec: TrialSpec, ctx: TrialContext) -> dict[str, Any]:
    """The untouched model, measured once per sweep (``trial_number == -1``)."""
    base_spec = TrialSpec(**{**spec.__dict__, "trial_number": BASELINE_TRIAL,
                             "params": {"pruning_method": "none", "quantization_type": "none",
                                        "precision": "fp32", "compile": False}})
    row = run_trial(base_spec, ctx, baseline=None)
    if row["state"] == "COMPLETE":
        row.update(derived(row, row))
        row["speedup"] = 1.0  # by definition; speedup_iqr keeps the timer's noise on itself
        violations = constraint_values(row, spec.constraints)  # e.g. min_accuracy can exclude it
        row["feasible"] = all(v <= 0 for v in violations)
        row["constraint_violation"] = float(sum(max(v, 0.0) for v in violations))
    return row
