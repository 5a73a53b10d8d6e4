"""Deployable artifacts: the one export path that the sweep's trials time and ``optsweep export``
writes.

A model is saved as a *program*, not a ``state_dict`` (a ``state_dict`` needs the user's class
to load). Formats, tried in the order the model's techniques prefer; the first whose reloaded
outputs match the model within tolerance wins:

- ``torch.export``: a ``.pt2`` archive with a dynamic batch dimension, loaded with
  ``torch.export.load(path).module()``.
- ``torchscript``: ``torch.jit.trace``; torch.ao's packed int8 modules serialize this way.
- ``torch.export-static``: the same archive specialised to the example shapes (last resort).
- ``pt2e``: a PT2E int8 graph re-exported to ``.pt2``; it is fast only compiled, so loading
  compiles it with inductor ``freezing`` (torch alone:
  ``import torch.ao.quantization.fx._decomposed`` registers its ops).

>>> import torch, tempfile, os
>>> m = torch.nn.Sequential(torch.nn.Linear(4, 4))
>>> res = roundtrip(m, (torch.randn(2, 4),), os.path.join(tempfile.mkdtemp(), "m.pt2"))
>>> res.format
'torch.export'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import OptsweepError

FORMATS = ("torch.export", "torchscript", "torch.export-static")
ALL_FORMATS = (*FORMATS, "pt2e")
LOAD_SNIPPETS = {
    "torch.export": "torch.export.load(path).module()",
    "torch.export-static": "torch.export.load(path).module()  # fixed input shapes",
    "torchscript": "torch.jit.load(path)",
    "pt2e": ("import torch.ao.quantization.fx._decomposed; "
             "m = torch.compile(torch.export.load(path).module(), dynamic=False); "
             "call it first under torch.no_grad() and torch._inductor.config.patch(freezing=True)"),
}


class ArtifactError(OptsweepError, RuntimeError):
    """No format could save the model so that it reloads with the same outputs."""


@dataclass
class Artifact:
    """A saved and reloaded model: the reloaded module, its format and how close it came."""

    path: Path
    format: str
    module: nn.Module
    max_abs_diff: float
    attempts: list[dict[str, str]] = field(default_factory=list)


def flat_tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, Mapping):
        return [t for v in x.values() for t in flat_tensors(v)]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in flat_tensors(v)]
    if hasattr(x, "to_tuple"):  # HF ModelOutput
        return flat_tensors(x.to_tuple())
    return []


def max_abs_diff(a: Any, b: Any) -> float:
    ta, tb = flat_tensors(a), flat_tensors(b)
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


def tolerance(ref: Any) -> float:
    ts = flat_tensors(ref)
    scale = max((float(t.float().abs().max()) for t in ts if t.numel()), default=1.0)
    # Low-precision models round differently between eager and a re-traced graph.
    low = any(t.dtype in (torch.float16, torch.bfloat16) for t in ts)
    return (1e-2 if low else 1e-4) * max(scale, 1.0)


class ExportedModule(nn.Module):
    """A ``torch.export`` module whose ``.eval()``/``.train()`` are no-ops (an exported graph is
    frozen in the mode it was exported in; user code such as ``evaluate(model)`` calls them)."""

    def __init__(self, module: Any) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def train(self, mode: bool = True) -> ExportedModule:
        self.training = mode
        return self


class CompiledOnLoad(nn.Module):
    """A loaded PT2E graph compiled with inductor freezing on its first call (and any recompile)."""

    def __init__(self, graph: Any) -> None:
        super().__init__()
        self.graph = graph
        # not a submodule (no double state); static shapes, as the pt2e technique compiles them
        object.__setattr__(self, "_compiled", torch.compile(graph, dynamic=False))

    def forward(self, *args: Any) -> Any:
        with torch.no_grad(), torch._inductor.config.patch(freezing=True):
            return self._compiled(*args)  # type: ignore[operator]

    def train(self, mode: bool = True) -> CompiledOnLoad:
        self.training = mode
        return self


def _dims(inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple({0: torch.export.Dim.AUTO} if isinstance(x, torch.Tensor) and x.dim() else None for x in inputs)


def save(model: nn.Module, inputs: tuple[Any, ...], path: str | Path, fmt: str) -> None:
    """Write ``model`` as ``fmt`` (see the module docstring).

    The artifact is written to a fresh temp file beside ``path`` (``O_EXCL``), fsynced and renamed
    over it: a reader never sees half an artifact and a symlink planted at ``path`` is replaced,
    never written through.
    """
    import contextlib
    import os
    import tempfile

    if fmt not in ALL_FORMATS:
        raise ArtifactError(f"unknown artifact format {fmt!r}; expected one of {', '.join(ALL_FORMATS)}")
    target = Path(path)
    # The temp name keeps the target's suffix: torch.export.save warns about a name not ending in .pt2.
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}")
    os.close(fd)
    try:
        _save(model, inputs, tmp, fmt)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _save(model: nn.Module, inputs: tuple[Any, ...], path: str, fmt: str) -> None:
    if fmt == "torch.export":
        dims = _dims(inputs)
        try:
            ep = torch.export.export(model, inputs, dynamic_shapes=dims)
        except torch._dynamo.exc.UserError:
            # forward(self, *args) (wrappers such as MixedPrecisionWrapper) wants the specs nested.
            ep = torch.export.export(model, inputs, dynamic_shapes=(dims,))
        torch.export.save(ep, path)
    elif fmt == "torch.export-static":
        torch.export.save(torch.export.export(model, inputs), path)
    elif fmt == "torchscript":
        with torch.inference_mode(False), torch.no_grad():
            traced = torch.jit.trace(model, inputs, check_trace=False, strict=False)
        torch.jit.save(traced, path)
    elif fmt == "pt2e":
        graph = getattr(model, "graph", None)
        if not isinstance(graph, torch.fx.GraphModule):
            raise ArtifactError("pt2e format needs a PT2E-converted graph (the pt2e technique's output)")
        torch.export.save(torch.export.export(graph, inputs, dynamic_shapes=_dims(inputs)), path)
    else:
        raise ArtifactError(f"unknown artifact format {fmt!r}; expected one of {', '.join(ALL_FORMATS)}")


def load(path: str | Path, fmt: str) -> nn.Module:
    """Load an artifact written by :func:`save`; needs torch only."""
    path = str(path)
    if fmt in ("torch.export", "torch.export-static"):
        return ExportedModule(torch.export.load(path).module())
    if fmt == "torchscript":
        return torch.jit.load(path, map_location="cpu").eval()  # type: ignore[no-any-return]
    if fmt == "pt2e":
        import importlib

        importlib.import_module("torch.ao.quantization.fx._decomposed")  # registers quantized_decomposed ops

        return CompiledOnLoad(torch.export.load(path).module())
    raise ArtifactError(f"unknown artifact format {fmt!r}; expected one of {', '.join(ALL_FORMATS)}")


def formats_for(preferences: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """The formats to try for a model built by techniques with these ``export`` preferences:
    a format every technique can hold, in the first technique's order; the default order when
    no technique ran."""
    prefs = [tuple(p) for p in preferences if p]
    if not prefs:
        return FORMATS
    if any("pt2e" in p for p in prefs):
        return ("pt2e",)
    common = [f for f in FORMATS if all(f in p or f == "torch.export-static" for p in prefs)]
    ordered = [f for f in prefs[0] if f in common] + [f for f in common if f not in prefs[0]]
    return tuple(ordered) or FORMATS


def roundtrip(model: nn.Module, inputs: tuple[Any, ...], path: str | Path,
              formats: Sequence[str] = FORMATS) -> Artifact:
    """Save ``model`` in the first of ``formats`` that reloads with matching outputs.

    Raises :class:`ArtifactError` naming every format's failure when none does.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        reference = model(*inputs)
    tol = tolerance(reference)
    attempts: list[dict[str, str]] = []
    for fmt in formats:
        try:
            save(model, inputs, path, fmt)
            loaded = load(path, fmt)
            with torch.no_grad():
                diff = max_abs_diff(reference, loaded(*inputs))
        except Exception as e:  # noqa: BLE001 - a format that cannot express the model: try the next
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            attempts.append({"format": fmt, "error": f"{type(e).__name__}: {msg}"})
            continue
        if diff <= tol:
            attempts.append({"format": fmt, "error": ""})
            return Artifact(path, fmt, loaded, diff, attempts)
        attempts.append({"format": fmt, "error": f"outputs differ by {diff:.3g} (tolerance {tol:.3g})"})
    path.unlink(missing_ok=True)
    raise ArtifactError("no format could export it: " + "; ".join(f"{a['format']}: {a['error']}" for a in attempts))
