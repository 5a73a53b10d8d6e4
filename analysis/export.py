"""Export one trial as a deployable artifact that loads without the user's code.

``export_trial(OUT, trial, PATH, config=...)`` rebuilds the sweep's model, re-applies
the trial's recipe with :func:`optimizers.recipe.apply_recipe` (the same function the sweep
measured), and serialises the result as a *program*, not a ``state_dict``: a ``state_dict`` needs
the user's class to load, a program does not.

The formats (and the order each technique prefers) live in :mod:`optimizers.artifact`, which
every trial also uses to build and time its shipped form: what ``export`` writes is what the
sweep measured. The code a results folder names (``sweep.json``) is imported only when the user
passes their own config (``config=``, ``--config``) or ``trust=True`` (``--trust``).

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

from ._io import atomic_write
from .errors import AnalysisError

__all__ = ["ExportResult", "export_trial", "load_artifact", "FORMATS"]

FORMATS = ("torch.export", "torchscript", "torch.export-static", "pt2e")
"""Artifact formats (see :mod:`optimizers.artifact`): ``torch.export`` has a dynamic batch
dimension; ``torch.export-static`` is specialised to the example inputs' shapes; ``pt2e`` is a
PT2E int8 graph that compiles on load."""
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


def _save(model: Any, inputs: tuple[Any, ...], path: Path, fmt: str) -> None:
    from optimizers import artifact

    artifact.save(model, inputs, path, fmt)


def _load(path: Path, fmt: str) -> Any:
    from optimizers import artifact

    if fmt not in artifact.ALL_FORMATS:
        raise AnalysisError(f"unknown artifact format {fmt!r}; expected one of {', '.join(artifact.ALL_FORMATS)}")
    return artifact.load(path, fmt)


def load_artifact(path: str | Path) -> Any:
    """Load an exported artifact as a callable module; needs only torch (and this package).

    The format comes from the sidecar ``PATH.json``; without one every format is tried.

    >>> model = load_artifact("digits-trial-12.pt2")      # doctest: +SKIP
    >>> logits = model(torch.randn(4, 1, 8, 8))            # doctest: +SKIP
    """
    from optimizers.artifact import ALL_FORMATS

    path = Path(path)
    if not path.is_file():
        raise AnalysisError(f"artifact {str(path)!r} does not exist")
    sidecar = Path(f"{path}.json")
    if sidecar.is_file():
        fmt = json.loads(sidecar.read_text()).get("format")
        return _load(path, str(fmt))
    errors = []
    for fmt in ALL_FORMATS:
        try:
            return _load(path, fmt)
        except Exception as e:  # noqa: BLE001 - try the next format, report all if none loads
            errors.append(f"{fmt}: {type(e).__name__}")
    raise AnalysisError(f"cannot load {str(path)!r} as any of {', '.join(errors)}")


CODE_KEYS = ("model", "example_inputs", "evaluate", "calibration", "train_step")


def code_refs(root: Path, manifest: dict[str, Any], config: str | Path | None, trust: bool
              ) -> tuple[dict[str, Any], str]:
    """The ``module:attr`` references export may import, and the folder they resolve from.

    A results folder is data: the code it names is imported only when the user points at their
    own sweep config (``config``: its references must match the sweep's) or says ``trust``.
    """
    if config is not None:
        import yaml

        cpath = Path(config)
        try:
            data = yaml.safe_load(cpath.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise AnalysisError(f"--config {str(cpath)!r} is not a readable YAML sweep config: "
                                f"{type(e).__name__}") from None
        if not isinstance(data, dict):
            raise AnalysisError(f"--config {str(cpath)!r} is not a mapping of keys")
        refs: dict[str, Any] = {k: data.get(k) for k in CODE_KEYS}
        refs["plugins"] = data.get("plugins") or []
        for k in ("model", "example_inputs"):
            if manifest.get(k) and refs.get(k) != manifest.get(k):
                raise AnalysisError(f"--config {str(cpath)!r}: {k} {refs.get(k)!r} differs from the sweep's "
                                    f"{manifest.get(k)!r} in {root / MANIFEST}")
        return refs, str(cpath.resolve().parent)
    if not trust:
        raise AnalysisError(
            f"export would import the code {root / MANIFEST} names (model {manifest.get('model')!r} from "
            f"{manifest.get('config_dir')!r}); pass --config YOUR_SWEEP.yaml, or --trust if you trust this folder")
    return ({**{k: manifest.get(k) for k in CODE_KEYS}, "plugins": manifest.get("plugins") or []},
            str(manifest.get("config_dir") or root))


def _row(out: Path, trial: int, segment: str | None = None) -> dict[str, Any]:
    """The row of ``trial``; for the baseline, which each ``--new-settings`` segment has its own
    of, the one of ``segment`` (the out's current settings) when there are several."""
    from .dataset import load_results

    frame = load_results(out).frame
    rows = frame[frame["trial_number"] == trial]
    if len(rows) > 1 and segment is not None and "segment" in rows:
        mine = rows[rows["segment"] == segment]
        rows = mine if not mine.empty else rows
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
    formats: tuple[str, ...] | None = None,
    measure: bool = True,
    config: str | Path | None = None,
    trust: bool = False,
) -> ExportResult:
    """Rebuild trial ``trial`` of the sweep in ``out`` and write it to ``path`` (+ ``path.json``).

    The model is built with :func:`optimizers.recipe.apply_recipe` (no-op stages dropped, as in
    the trial) and saved by :func:`optimizers.artifact.roundtrip`, the path every trial timed.
    The user's code is imported only with ``config`` (their sweep YAML) or ``trust``.

    Raises :class:`AnalysisError` for a missing manifest, an unknown or failed trial, untrusted
    code, or when no format reproduces the optimized model's outputs.
    """
    import torch

    from optimizers._utils import load_callable
    from optimizers.artifact import LOAD_SNIPPETS, ArtifactError, formats_for, roundtrip
    from optimizers.recipe import Recipe, apply_recipe
    from optimizers.techniques import REGISTRY

    out = Path(out)
    if out.name == "results" and not (out / MANIFEST).exists():
        out = out.parent
    root, manifest = _manifest(out)
    row = _row(root, trial, manifest.get("segment") if isinstance(manifest.get("segment"), str) else None)
    refs, base_dir = code_refs(root, manifest, config, trust)
    if refs.get("plugins"):  # the techniques the sweep's config added: the recipe may need them
        from optimizers.techniques import PluginError, load_plugins

        try:
            load_plugins(list(refs["plugins"]), base_dir)
        except PluginError as exc:
            raise AnalysisError(f"plugins: {exc}") from None

    def resolve(key: str) -> Any:
        spec = refs.get(key)
        return None if not spec else load_callable(str(spec), base_dir=base_dir)

    if not refs.get("model") or not refs.get("example_inputs"):
        raise AnalysisError(f"{root / MANIFEST} lacks 'model' or 'example_inputs'")
    model = resolve("model")()
    inputs = _as_tuple(resolve("example_inputs")())
    calibration_fn = resolve("calibration")
    evaluate = resolve("evaluate")
    train_step = resolve("train_step")
    seg = (manifest.get("segments") or {}).get(str(row.get("segment"))) if row.get("segment") else None
    if isinstance(seg, dict):  # the settings this row was measured under (--new-settings segments)
        manifest = {**manifest, **{k: seg[k] for k in ("pruning", "quantization", "device") if k in seg}}
    device = manifest.get("device") or "cpu"
    recipe = Recipe.from_row(row)
    backend = row.get("quant_backend")
    if recipe.quantization_type != "none" and recipe.quantization_backend == "auto" and isinstance(backend, str):
        recipe = Recipe(**{**recipe.to_dict(), "quantization_backend": backend})  # what the trial ran

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
    from optimizers.techniques import isolated_state

    threads = int(row["threads"]) if _num(row.get("threads")) else None
    with isolated_state(threads=threads, seed=0):  # the trial's seed and threads
        optimized, info = apply_recipe(model, recipe, **kwargs)
        optimized = getattr(optimized, "_orig_mod", optimized).eval()
        dev_inputs = tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in inputs)
        path = Path(path)
        try:
            art = roundtrip(optimized, dev_inputs, path, formats or formats_for(info.get("export_formats", [])))
        except ArtifactError as e:
            raise AnalysisError(f"no format could export trial {trial}: {str(e).removeprefix('no format could export it: ')}") from None
        fmt, loaded, diff, attempts = art.format, art.module, art.max_abs_diff, art.attempts
        recorded = {k: _num(row.get(k)) for k in ("latency_ms", "latency_iqr_ms", "accuracy", "size_bytes", "speedup")}
        measured: dict[str, Any] = {"latency_ms": None, "latency_iqr_ms": None, "accuracy": None}
        if measure:
            measured.update(_measure(loaded, dev_inputs, evaluate, row))
    needs = sorted({t.load_requires for t in REGISTRY.plan(recipe.to_dict(), device)[0] if t.load_requires})
    sidecar = Path(f"{path}.json")
    atomic_write(sidecar, json.dumps({
        "format": fmt,
        "load": LOAD_SNIPPETS.get(fmt, ""),
        "load_requires": needs or ["torch"],
        "dynamic_batch": fmt != "torch.export-static",
        "trial_number": int(trial),
        "study_name": row.get("study_name"),
        "recipe": recipe.to_dict(),
        "effective_recipe": info.get("effective"),
        "recorded": recorded,
        "measured": measured,
        "max_abs_diff": diff,
        "device": device,
        "hardware": row.get("hardware"),
        "threads": threads,
        "quantized_engine": row.get("quantized_engine"),
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
