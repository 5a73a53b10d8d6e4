"""Registered techniques: the one place that knows which techniques exist.

Importing this package registers the built-in techniques (pruning, low-rank factorization,
quantization on torch.ao / torchao / PT2E, precision, compile). A new technique is a module that
subclasses :class:`Technique` and decorates it with :func:`register`; see
:mod:`optimizers.techniques.lowrank`. A technique outside this package is a module of its own that
does the same; a sweep config names it under ``plugins`` and :func:`load_plugins` imports it in
the driver, in every worker and in ``optsweep export``.

>>> from optimizers.techniques import REGISTRY
>>> REGISTRY.backends_for("static")
['torch_ao', 'pt2e']
>>> REGISTRY.check({"quantization_type": "weight_only", "quantization_bits": 4}, "cpu")
'int4 weight-only quantization has no kernel on cpu; it needs CUDA'
"""

from __future__ import annotations

import contextlib
import importlib
import random
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from . import lowrank, pruning, pt2e, quantize  # noqa: F401 - registration
from . import precision as _precision  # noqa: F401 - registration
from ._base import (
    AUTO_BACKEND,
    DIMENSIONS,
    REGISTRY,
    SELECTORS,
    STAGES,
    ApplyContext,
    Dimension,
    Registry,
    StageInfo,
    Technique,
    register,
)
from .precision import PRECISION_MODES, same_outputs

__all__ = [
    "AUTO_BACKEND", "DIMENSIONS", "PRECISION_MODES", "REGISTRY", "SELECTORS", "STAGES", "ApplyContext",
    "Dimension", "PluginError", "Registry", "StageInfo", "Technique", "isolated_state", "load_plugins", "register",
    "same_outputs",
]

_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class PluginError(ValueError):
    """A plug-in module that cannot be imported or registers a bad technique (one line)."""


def load_plugins(modules: Sequence[str], base_dir: str | Path | None = None) -> list[str]:
    """Import the technique modules ``modules`` (dotted names, looked up in ``base_dir`` first,
    then ``sys.path``); each registers its techniques with :func:`register` when imported.
    Importing twice is a no-op. Returns the techniques that are new, as ``stage:name``.

    >>> load_plugins(["optimizers.techniques.lowrank"])   # built in: registered already
    []
    """
    if isinstance(modules, (str, bytes)) or not isinstance(modules, Sequence):
        raise PluginError(f"must be a list of module names; got {type(modules).__name__}")
    before = {id(t) for t in REGISTRY.techniques()}
    for name in modules:
        if not isinstance(name, str) or not _MODULE.fullmatch(name):
            raise PluginError(f"{name!r} is not a module name (like my_techniques or pkg.techniques)")
        if base_dir is not None and str(base_dir) not in sys.path:
            sys.path.insert(0, str(base_dir))
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - user code: any failure is one line naming the module
            text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise PluginError(f"cannot import {name!r}: {type(exc).__name__}: {text}".rstrip(": ")) from None
    return [f"{t.stage}:{t.name}" for t in REGISTRY.techniques() if id(t) not in before]


@contextlib.contextmanager
def isolated_state(threads: int | None = None, seed: int | None = None) -> Iterator[None]:
    """Set, then restore, the process-global torch state a trial touches.

    Saved and restored: the quantized engine (torch.ao techniques set it while they build and
    run), intra-op threads, the CPU (and CUDA) RNG states, Python's ``random`` and numpy's
    global RNG (user ``evaluate``/``calibration`` code often draws from it); dynamo's
    caches are reset on exit so no compiled graph of one trial guards the next.

    >>> before = torch.backends.quantized.engine
    >>> with isolated_state(threads=1):
    ...     torch.backends.quantized.engine = torch.backends.quantized.supported_engines[-1]
    >>> torch.backends.quantized.engine == before
    True
    """
    engine = torch.backends.quantized.engine
    n_threads = torch.get_num_threads()
    cpu_rng = torch.random.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    py_rng = random.getstate()
    np_rng = np.random.get_state()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        if seed is not None:
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
        yield
    finally:
        with contextlib.suppress(RuntimeError):
            torch.backends.quantized.engine = engine
        torch.set_num_threads(n_threads)
        torch.random.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        random.setstate(py_rng)
        np.random.set_state(np_rng)
        torch._dynamo.reset()
