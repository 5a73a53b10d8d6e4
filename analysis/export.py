"""Export one trial as a deployable artifact that loads without the user's code.

``export_trial(OUT, trial, PATH)`` rebuilds the sweep's model from ``OUT/sweep.json``, re-applies
the trial's recipe with :func:`optimizers.recipe.apply_recipe` (the same function the sweep
measured), and serialises the result as a *program*, not a ``state_dict``: a ``state_dict`` needs
the user's class to load, a program does not.

Formats, tried in order; the first whose reloaded outputs match the optimized model wins:

1. ``torch.export`` (``.pt2`` archive, loaded with ``torch.export.load(...).module()``): the
   maintained path, keeps structured-pruning shapes since they are plain smaller tensors.
2. TorchScript via ``torch.jit.trace`` (loaded with ``torch.jit.load``): torch.ao eager
   quantized modules (dynamic/static int8) hold packed params that ``torch.export`` cannot
   always serialise, while tracing records the quantized ops and their packed weights.

The sidecar ``PATH.json`` records the format, the recipe, the recorded metrics, what the artifact
re-measured, the output difference and the torch version. :func:`load_artifact` reads it.

This module imports torch and ``optimizers`` lazily; ``import analysis`` stays light.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import AnalysisError

__all__ = ["ExportResult", "export_trial", "load_artifact", "FORMATS"]

FORMATS = ("torch.export", "torchscript", "torch.export-static")
"""Tried in this order. ``torch.export`` has a dynamic batch dimension; ``torch.export-static`` is
the same archive specialised to the example inputs' shapes (last resort: fixed batch size)."""
MANIFEST = "sweep.json"


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_trial` wrote and measured."""

    path: Path
    sidecar: Path
    format: str
    recorded: dict[str, Any]
    measured: dict[str, Any]
    max_abs_diff: float
    attempts: list[dict[str, str]] = field(default_factory=list)


def _manifest(out: Path) -> tuple[Path, dict[str, Any]]:
    for cand in (out, out.parent):
        p = cand / MANIFEST
        if p.is_file():
            try:
                return cand, json.loads(p.read_text())
            except json.JSONDecodeError as e:
                raise AnalysisError(f"{p} is not valid JSON ({e.msg})") from e
    raise AnalysisError(f"no {MANIFEST} in {str(out)!r}: export needs the sweep's OUT directory")


def _as_tuple(x: Any) -> tuple[Any, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _flat_tensors(x: Any) -> list[Any]:
    import torch

    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _flat_tensors(v)]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in _flat_tensors(v)]
    if hasattr(x, "to_tuple"):  # HF ModelOutput
        return _flat_tensors(x.to_tuple())
    return []


def _max_abs_diff(a: Any, b: Any) -> float:
    ta, tb = _flat_tensors(a), _flat_tensors(b)
    if len(ta) != len(tb) or not ta:
        return math.inf
    worst = 0.0
    for x, y in zip(ta, tb, strict=True):
        if x.shape != y.shape:
            return math.inf
        x = x.dequantize() if x.is_quantized else x
        y = y.dequantize() if y.is_quantized else y
        worst = max(worst, float((x.float() - y.float()).abs().max()) if x.numel() else 0.0)
    return worst


def _tolerance(ref: Any) -> float:
    ts = _flat_tensors(ref)
    scale = max((float(t.float().abs().max()) for t in ts if t.numel()), default=1.0)
    # Low-precision models round differently between eager and a re-traced graph.
    low = any(t.dtype in (_dtype("float16"), _dtype("bfloat16")) for t in ts)
    return (1e-2 if low else 1e-4) * max(scale, 1.0)


def _dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)


def _save(model: Any, inputs: tuple[Any, ...], path: Path, fmt: str) -> None:
    import torch

    if fmt == "torch.export":
        # Batch size is rarely fixed in deployment (and evaluate() often uses another one).
        dims = tuple({0: torch.export.Dim.AUTO} if isinstance(x, torch.Tensor) and x.dim() else None
                     for x in inputs)
        try:
            ep = torch.export.export(model, inputs, dynamic_shapes=dims)
        except torch._dynamo.exc.UserError:
            # forward(self, *args) (wrappers such as MixedPrecisionWrapper) wants the specs nested.
            ep = torch.export.export(model, inputs, dynamic_shapes=(dims,))
        torch.export.save(ep, str(path))
    elif fmt == "torch.export-static":
        ep = torch.export.export(model, inputs)
        torch.export.save(ep, str(path))
    elif fmt == "torchscript":
        with torch.inference_mode(False), torch.no_grad():
            traced = torch.jit.trace(model, inputs, check_trace=False, strict=False)
        torch.jit.save(traced, str(path))
    else:  # pragma: no cover - FORMATS is closed
        raise AnalysisError(f"unknown artifact format {fmt!r}; expected one of {', '.join(FORMATS)}")


def _load(path: Path, fmt: str) -> Any:
    import torch

    if fmt in ("torch.export", "torch.export-static"):
        return _exported_module(torch.export.load(str(path)).module())
    if fmt == "torchscript":
        return torch.jit.load(str(path), map_location="cpu").eval()
    raise AnalysisError(f"unknown artifact format {fmt!r}; expected one of {', '.join(FORMATS)}")


def _exported_module(graph_module: Any) -> Any:
    """Wrap a ``torch.export`` module so that ``.eval()`` works (it raises NotImplementedError).

    User code such as ``evaluate(model)`` commonly calls ``model.eval()``; an exported graph is
    already frozen in the mode it was exported in, so train/eval are no-ops here.
    """
    from torch import nn

    class ExportedModule(nn.Module):
        def __init__(self, module: Any) -> None:
            super().__init__()
            self.module = module

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return self.module(*args, **kwargs)

        def train(self, mode: bool = True) -> ExportedModule:
            self.training = mode
            return self

    return ExportedModule(graph_module)


def load_artifact(path: str | Path) -> Any:
    """Load an exported artifact as a callable module; needs only torch (and this package).

    The format comes from the sidecar ``PATH.json``; without one both formats are tried.

    >>> model = load_artifact("digits-trial-12.pt2")      # doctest: +SKIP
    >>> logits = model(torch.randn(4, 1, 8, 8))            # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise AnalysisError(f"artifact {str(path)!r} does not exist")
    sidecar = Path(f"{path}.json")
    if sidecar.is_file():
        fmt = json.loads(sidecar.read_text()).get("format")
        return _load(path, str(fmt))
    errors = []
    for fmt in FORMATS:
        try:
            return _load(path, fmt)
        except Exception as e:  # noqa: BLE001 - try the next format, report all if none loads
            errors.append(f"{fmt}: {type(e).__name__}")
    raise AnalysisError(f"cannot load {str(path)!r} as any of {', '.join(errors)}")


def _row(out: Path, trial: int) -> dict[str, Any]:
    from .dataset import load_results

    frame = load_results(out).frame
    rows = frame[frame["trial_number"] == trial]
    if rows.empty:
        have = frame["trial_number"].dropna().astype(int)
        raise AnalysisError(
            f"trial {trial} is not in {str(out)!r} (trial numbers {have.min()}..{have.max()})")
    row = {str(k): v for k, v in rows.iloc[0].to_dict().items()}
    if row.get("state") != "COMPLETE":
        raise AnalysisError(f"trial {trial} did not complete (state={row.get('state')}); "
                            "only COMPLETE trials can be exported")
    return row


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def export_trial(
    out: str | Path,
    trial: int,
    path: str | Path,
    *,
    formats: tuple[str, ...] = FORMATS,
    measure: bool = True,
) -> ExportResult:
    """Rebuild trial ``trial`` of the sweep in ``out`` and write it to ``path`` (+ ``path.json``).

    Raises :class:`AnalysisError` for a missing manifest, an unknown or failed trial, or when no
    format reproduces the optimized model's outputs.
    """
    import torch

    from optimizers._utils import load_callable
    from optimizers.recipe import Recipe, apply_recipe

    out = Path(out)
    if out.name == "results" and not (out / MANIFEST).exists():
        out = out.parent
    root, manifest = _manifest(out)
    row = _row(root, trial)
    base_dir = manifest.get("config_dir") or str(root)

    def resolve(key: str) -> Any:
        spec = manifest.get(key)
        return None if not spec else load_callable(spec, base_dir=base_dir)

    if not manifest.get("model") or not manifest.get("example_inputs"):
        raise AnalysisError(f"{root / MANIFEST} lacks 'model' or 'example_inputs'")
    model = resolve("model")()
    inputs = _as_tuple(resolve("example_inputs")())
    calibration_fn = resolve("calibration")
    evaluate = resolve("evaluate")
    train_step = resolve("train_step")
    device = manifest.get("device") or "cpu"
    recipe = Recipe.from_row(row)

    torch.manual_seed(0)
    kwargs: dict[str, Any] = {
        "example_inputs": inputs,
        "calibration": list(calibration_fn()) if calibration_fn else None,
        "device": device,
        "pruning_options": manifest.get("pruning") or None,
        "quantization_options": manifest.get("quantization") or None,
        "evaluate": evaluate,
    }
    if train_step is not None:
        kwargs["train_step"] = train_step
    optimized, _info = apply_recipe(model, recipe, **kwargs)
    # torch.compile only changes how it runs, not what it computes: export the eager module.
    optimized = getattr(optimized, "_orig_mod", optimized).eval()
    dev_inputs = tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in inputs)
    with torch.no_grad():
        reference = optimized(*dev_inputs)
    tol = _tolerance(reference)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    attempts: list[dict[str, str]] = []
    chosen: tuple[str, Any, float] | None = None
    for fmt in formats:
        try:
            _save(optimized, dev_inputs, path, fmt)
            loaded = _load(path, fmt)
            with torch.no_grad():
                diff = _max_abs_diff(reference, loaded(*dev_inputs))
        except Exception as e:  # noqa: BLE001 - a format that cannot express the model: try the next
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            attempts.append({"format": fmt, "error": f"{type(e).__name__}: {msg}"})
            continue
        if diff <= tol:
            chosen = (fmt, loaded, diff)
            attempts.append({"format": fmt, "error": ""})
            break
        attempts.append({"format": fmt, "error": f"outputs differ by {diff:.3g} (tolerance {tol:.3g})"})
    if chosen is None:
        path.unlink(missing_ok=True)
        raise AnalysisError(
            f"no format could export trial {trial}: "
            + "; ".join(f"{a['format']}: {a['error']}" for a in attempts))
    fmt, loaded, diff = chosen

    recorded = {k: _num(row.get(k)) for k in ("latency_ms", "latency_iqr_ms", "accuracy", "size_bytes")}
    measured: dict[str, Any] = {"latency_ms": None, "latency_iqr_ms": None, "accuracy": None}
    if measure:
        measured.update(_measure(loaded, dev_inputs, evaluate, row))
    sidecar = Path(f"{path}.json")
    sidecar.write_text(json.dumps({
        "format": fmt,
        "load": ("torch.jit.load(path)" if fmt == "torchscript"
                 else "torch.export.load(path).module()"),
        "dynamic_batch": fmt != "torch.export-static",
        "trial_number": int(trial),
        "study_name": row.get("study_name"),
        "recipe": recipe.to_dict(),
        "recorded": recorded,
        "measured": measured,
        "max_abs_diff": diff,
        "device": device,
        "hardware": row.get("hardware"),
        "torch_version": torch.__version__,
        "recorded_torch_version": row.get("torch_version"),
        "input_shapes": [list(x.shape) for x in inputs if isinstance(x, torch.Tensor)],
        "attempts": attempts,
    }, indent=2, default=str))
    return ExportResult(path=path, sidecar=sidecar, format=fmt, recorded=recorded,
                        measured=measured, max_abs_diff=diff, attempts=attempts)


def _measure(model: Any, inputs: tuple[Any, ...], evaluate: Any, row: dict[str, Any]) -> dict[str, Any]:
    import torch

    threads = int(row["threads"]) if _num(row.get("threads")) else None
    try:
        from optimizers.benchmarking import measure_latency

        stats = measure_latency(model, inputs, threads=threads, min_run_time=0.2)
        lat, iqr = stats.median_ms, stats.iqr_ms
    except ImportError:  # pragma: no cover - optimizers ships it; keep a plain fallback
        from torch.utils.benchmark import Timer

        with torch.no_grad():
            m = Timer("model(*inputs)", globals={"model": model, "inputs": inputs}).blocked_autorange(
                min_run_time=0.2)
        lat, iqr = m.median * 1e3, m.iqr * 1e3
    out: dict[str, Any] = {"latency_ms": lat, "latency_iqr_ms": iqr, "accuracy": None}
    if evaluate is not None:
        try:
            with torch.no_grad():
                out["accuracy"] = float(evaluate(model))
        except Exception as e:  # noqa: BLE001 - the artifact is written; report why accuracy is absent
            out["accuracy_error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
    return out
