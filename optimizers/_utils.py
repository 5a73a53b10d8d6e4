"""Small helpers shared by the optimizers: copying, sizes, parameter counts, devices."""

from __future__ import annotations

import copy
import importlib
import io
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ConfigError


def clone_model(model: nn.Module) -> nn.Module:
    """A deep copy, so every optimizer leaves the caller's model untouched."""
    return copy.deepcopy(model)


def serialized_bytes(model: nn.Module) -> bytes:
    """The model's ``state_dict`` as ``torch.save`` writes it (what ships to disk)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def model_size_bytes(model: nn.Module) -> int:
    """Bytes of the serialized ``state_dict``: real storage, including quantized packed params."""
    return len(serialized_bytes(model))


def compressed_size_bytes(model: nn.Module) -> int:
    """Bytes after zlib level 6: the only size that unstructured (masked) sparsity reduces."""
    return len(zlib.compress(serialized_bytes(model), 6))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(nonzero, total)`` over every floating-point parameter and packed weight."""
    nonzero = total = 0
    for t in _weight_tensors(model):
        total += t.numel()
        nonzero += _nonzero(t)
    return nonzero, total


def _nonzero(t: torch.Tensor) -> int:
    try:
        return int(torch.count_nonzero(t))
    except (NotImplementedError, RuntimeError):
        # torchao tensor subclasses (Int8Tensor, ...) implement dequantize, not count_nonzero.
        deq = getattr(t, "dequantize", None)
        return int(torch.count_nonzero(deq())) if callable(deq) else t.numel()


def _weight_tensors(model: nn.Module) -> list[torch.Tensor]:
    tensors = [p.detach() for p in model.parameters()]
    # torch.ao quantized modules keep weights in packed params, not in .parameters().
    for m in model.modules():
        w = getattr(m, "weight", None)
        if callable(w) and not isinstance(w, (torch.Tensor, nn.Module)):
            try:
                out = w()
            except Exception:  # noqa: BLE001 - not a quantized module; nothing to count
                continue
            if isinstance(out, torch.Tensor):
                tensors.append(out.dequantize() if out.is_quantized else out)
    return tensors


def model_device(model: nn.Module) -> torch.device:
    """Device of the first floating-point parameter or buffer (CPU for an empty model)."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.device
    return torch.device("cpu")


def load_callable(spec: str, base_dir: str | Path | None = None) -> Callable[..., Any]:
    """Resolve ``"module:attr"`` to a callable, looking in ``base_dir`` first, then ``sys.path``.

    >>> load_callable("math:sqrt")(4.0)
    2.0
    """
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ConfigError(f"callable reference must look like 'module:attr'; got {spec!r}")
    mod_name, attr = spec.split(":")
    if base_dir is not None and str(base_dir) not in sys.path:
        sys.path.insert(0, str(base_dir))
    try:
        module = importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"cannot import module {mod_name!r} for {spec!r}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"module {mod_name!r} has no attribute {attr!r} (from {spec!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{spec!r} is not callable")
    return obj  # type: ignore[no-any-return]
