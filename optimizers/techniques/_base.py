"""The technique registry: one class per technique, registered once, looped over everywhere.

A technique declares, as class attributes, its ``stage`` and ``name``, the search dimensions it
uses (and which values of them it accepts), the row columns it fills and how its result is
exported; it implements ``check`` (the single source of truth for "this cannot run here") and
``_apply``. Config validation, the Optuna space, grid enumeration, feasibility and
:func:`optimizers.recipe.apply_recipe`'s stage loop all iterate over :data:`REGISTRY`, so adding a
technique is one module plus its tests (see :mod:`optimizers.techniques.lowrank`).

Contract for implementations (checked for every registered technique by
``tests/test_techniques_contract.py``):

- ``apply`` never modifies its input model; it returns a new model and a :class:`StageInfo`.
- ``check(params, device, upstream)`` returns a reason (str) or None; it must not touch a model.
  ``apply`` raises :class:`~optimizers.errors.UnsupportedOnDeviceError` with exactly that reason
  when ``check`` refuses, and succeeds (or fails for a model-specific reason such as an
  untraceable architecture) when ``check`` accepts.
- ``StageInfo.changed`` is False when the stage left the model's computation as it was, so the
  row's effective recipe can leave it out.

>>> from optimizers.techniques import REGISTRY
>>> REGISTRY.choices("pruning_method")[:2]
['none', 'magnitude']
>>> "lowrank" in REGISTRY.choices("pruning_method")
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError, UnsupportedOnDeviceError

STAGES = ("prune", "factorize", "quantize", "precision", "compile")
"""Stage order: what :func:`optimizers.recipe.apply_recipe` runs, first to last."""


@dataclass(frozen=True)
class Dimension:
    """One search dimension; its name is also the Parquet column and the recipe field.

    ``off`` is the value that turns its stages off (selector dimensions only); ``selects`` names
    the stages whose technique this dimension chooses.
    """

    name: str
    type: type
    doc: str
    off: Any = None
    selects: tuple[str, ...] = ()
    default: Any = None
    range: tuple[float, float] | None = None  # [low, high) for numeric dimensions


DIMENSIONS: dict[str, Dimension] = {d.name: d for d in (
    Dimension("pruning_method", str, "pruning or factorization technique; `none` is off",
              off="none", selects=("prune", "factorize"), default="none"),
    Dimension("pruning_amount", float, "fraction removed (weights, channels or rank), in [0, 1)",
              range=(0.0, 1.0)),
    Dimension("quantization_type", str, "quantization technique; `none` is off",
              off="none", selects=("quantize",), default="none"),
    Dimension("quantization_bits", int, "bits of the quantized weights", default=8),
    Dimension("quantization_backend", str, "library/kernel family; `auto` picks the first that "
              "implements the type here (torch_ao, then torchao, then pt2e)", default="auto"),
    Dimension("precision", str, "float precision of what stays in float; `fp32` is off",
              off="fp32", selects=("precision",), default="fp32"),
    Dimension("compile", bool, "torch.compile (inductor) around the model", off=False,
              selects=("compile",), default=False),
)}
SELECTORS = tuple(d.name for d in DIMENSIONS.values() if d.selects)
AUTO_BACKEND = "auto"


@dataclass
class ApplyContext:
    """What a technique may use besides the model: data, device, user options and callbacks.

    ``options`` holds the sweep config's option groups by name (``pruning``, ``quantization``);
    a technique reads the group named by its ``options`` attribute. ``upstream`` lists the
    techniques that already ran, in stage order.
    """

    example_inputs: tuple[Any, ...]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    calibration: list[tuple[Any, ...]] | None = None
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    evaluate: Callable[[nn.Module], float] | None = None
    train_step: Callable[..., Any] | None = None
    upstream: list[Technique] = field(default_factory=list)

    def options_for(self, tech: Technique) -> dict[str, Any]:
        return dict(self.options.get(tech.options, {}) or {}) if tech.options else {}


@dataclass
class StageInfo:
    """What one stage did. ``effective`` are the recipe fields it really applied (empty when
    ``changed`` is False); ``details`` is the technique's own report (sparsity, backend, ...)."""

    stage: str
    technique: str
    changed: bool
    effective: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    note: str = ""


class Technique:
    """Base class of every registered technique (see the module docstring for the contract).

    Class attributes:
        name: the value of its selector dimension (``lowrank``, ``dynamic``, ``bf16``, ...).
        stage: one of :data:`STAGES`.
        selector: ``{dimension: value}`` that chooses it, e.g. ``{"pruning_method": "lowrank"}``.
        backend: for quantization: the ``quantization_backend`` value it implements.
        priority: order among techniques with the same selector when the backend is ``auto``.
        uses: the other dimensions it reads (so they exist only when it is chosen).
        accepts: allowed values of the dimensions it uses, e.g. ``{"quantization_bits": (8,)}``.
        options: the sweep config option group it reads (``pruning``, ``quantization``) or None.
        columns: the row columns it fills (from :attr:`StageInfo.details`).
        export: artifact formats that can hold its result, best first (see ``analysis.export``).
        load_requires: a library needed at load time besides torch (e.g. ``torchao``), or None.
        traits: facts later stages check: ``fp32_activations`` (torch.ao quantized modules take
            only fp32 inputs), ``no_compile`` (dynamo cannot trace it), ``compiled`` (already ran
            through inductor).
    """

    name: ClassVar[str] = ""
    stage: ClassVar[str] = ""
    selector: ClassVar[Mapping[str, Any]] = {}
    backend: ClassVar[str | None] = None
    priority: ClassVar[int] = 0
    uses: ClassVar[tuple[str, ...]] = ()
    accepts: ClassVar[Mapping[str, tuple[Any, ...]]] = {}
    options: ClassVar[str | None] = None
    columns: ClassVar[tuple[str, ...]] = ()
    export: ClassVar[tuple[str, ...]] = ("torch.export", "torchscript")
    load_requires: ClassVar[str | None] = None
    traits: ClassVar[frozenset[str]] = frozenset()
    requires: ClassVar[str | None] = None  # importable module this technique needs

    # -- what subclasses implement ------------------------------------------------------------
    def check(self, params: Mapping[str, Any], device: torch.device,
              upstream: Sequence[Technique] = ()) -> str | None:
        """Why these params cannot run on ``device`` after ``upstream``; None when they can."""
        return None

    def _apply(self, model: nn.Module, params: Mapping[str, Any], ctx: ApplyContext
               ) -> tuple[nn.Module, StageInfo]:
        raise NotImplementedError

    # -- shared verbs ---------------------------------------------------------------------------
    def available(self) -> str | None:
        """Why this technique's library is missing (with what to install), or None."""
        if self.requires is None:
            return None
        import importlib.util

        if importlib.util.find_spec(self.requires) is None:
            return f"{self.label} needs {self.requires}: pip install {self.requires}"
        return None

    @property
    def label(self) -> str:
        return f"{self.name} ({self.backend})" if self.backend else self.name

    def full_check(self, params: Mapping[str, Any], device: torch.device | str,
                   upstream: Sequence[Technique] = ()) -> str | None:
        """``available``, the declared ``accepts`` and then ``check``: the one verdict."""
        device = torch.device(device)
        reason = self.available()
        if reason:
            return reason
        for dim in self.uses:
            rng = DIMENSIONS[dim].range
            v = params.get(dim)
            if rng is not None and (v is None or not rng[0] <= float(v) < rng[1]):
                return f"{self.label} needs {dim} in [{rng[0]:g}, {rng[1]:g}); got {v!r}"
        for dim, allowed in self.accepts.items():
            v = params.get(dim)
            if v is not None and v not in allowed:
                return f"{self.label} supports {dim} {list(allowed)}; got {v!r}"
        return self.check(params, device, upstream)

    def apply(self, model: nn.Module, params: Mapping[str, Any], ctx: ApplyContext
              ) -> tuple[nn.Module, StageInfo]:
        """Check, then apply to a copy of ``model``. Raises ``UnsupportedOnDeviceError(reason)``."""
        reason = self.full_check(params, ctx.device, ctx.upstream)
        if reason:
            raise UnsupportedOnDeviceError(reason)
        return self._apply(model, params, ctx)

    def matches(self, params: Mapping[str, Any]) -> bool:
        return all(params.get(k) == v for k, v in self.selector.items())

    def __repr__(self) -> str:
        return f"<technique {self.stage}:{self.label}>"


class Registry:
    """Techniques by stage, in registration order. One instance: :data:`REGISTRY`."""

    def __init__(self) -> None:
        self._techniques: list[Technique] = []

    def register(self, cls: type[Technique]) -> type[Technique]:
        """Class decorator: instantiate and register ``cls``; returns it unchanged."""
        if cls.stage not in STAGES:
            raise ConfigError(f"{cls.__name__}.stage must be one of {', '.join(STAGES)}; got {cls.stage!r}")
        unknown = [d for d in (*cls.selector, *cls.uses, *cls.accepts) if d not in DIMENSIONS]
        if unknown:
            raise ConfigError(f"{cls.__name__} names unknown dimensions {unknown}; "
                              f"known: {', '.join(DIMENSIONS)}")
        if any(type(t) is cls for t in self._techniques):
            return cls
        clash = [t for t in self._techniques
                 if dict(t.selector) == dict(cls.selector) and t.backend == cls.backend]
        if clash:
            raise ConfigError(f"{cls.__name__} duplicates the selector of {type(clash[0]).__name__}: "
                              f"{dict(cls.selector)} backend {cls.backend!r}")
        self._techniques.append(cls())
        return cls

    def techniques(self, stage: str | None = None) -> list[Technique]:
        ts = self._techniques if stage is None else [t for t in self._techniques if t.stage == stage]
        return sorted(ts, key=lambda t: (STAGES.index(t.stage), t.priority))

    def selected_by(self, dim: str, value: Any) -> list[Technique]:
        return [t for t in self.techniques() if t.selector.get(dim) == value]

    def choices(self, dim: str) -> list[Any]:
        """Every value a dimension may take, derived from what is registered."""
        d = DIMENSIONS[dim]
        out: list[Any] = []
        if d.selects:
            out.append(d.off)
            for t in self.techniques():
                v = t.selector.get(dim)
                if v is not None and v not in out:
                    out.append(v)
            return out
        if dim == "quantization_backend":
            return [AUTO_BACKEND, *dict.fromkeys(t.backend for t in self._techniques if t.backend)]
        values = {v for t in self._techniques for v in t.accepts.get(dim, ())}
        return sorted(values)

    def uses(self, dim: str, value: Any) -> list[str]:
        """Dimensions that exist when selector ``dim`` has ``value`` (in DIMENSIONS order)."""
        used = {u for t in self.selected_by(dim, value) for u in t.uses}
        return [name for name in DIMENSIONS if name in used]

    def get(self, name: str, stage: str | None = None, backend: str | None = None) -> Technique:
        for t in self.techniques(stage):
            if t.name == name and (backend is None or t.backend == backend):
                return t
        raise ConfigError(f"no technique {name!r}" + (f" with backend {backend!r}" if backend else "")
                          + f"; registered: {', '.join(sorted({t.label for t in self._techniques}))}")

    def backends_for(self, quantization_type: str) -> list[str]:
        return [t.backend for t in self.selected_by("quantization_type", quantization_type) if t.backend]

    def plan(self, params: Mapping[str, Any], device: torch.device | str
             ) -> tuple[list[Technique], str | None]:
        """The technique of each active stage, in order, or the reason the recipe cannot run.

        With ``quantization_backend: auto`` the first backend (by priority) that accepts the
        params on ``device`` is chosen; with an explicit backend only that one is considered.
        """
        device = torch.device(device)
        chosen: list[Technique] = []
        for dim in SELECTORS:
            value = params.get(dim, DIMENSIONS[dim].off)
            if value == DIMENSIONS[dim].off or value is None:
                continue
            cands = self.selected_by(dim, value)
            if not cands:
                return chosen, f"{dim} {value!r} is not a registered technique; allowed: " \
                               f"{', '.join(map(str, self.choices(dim)))}"
            backend = params.get("quantization_backend", AUTO_BACKEND) if any(t.backend for t in cands) else None
            if backend not in (None, AUTO_BACKEND):
                picked = [t for t in cands if t.backend == backend]
                if not picked:
                    return chosen, (f"quantization_backend {backend!r} does not implement {dim} {value!r}; "
                                    f"backends that do: {', '.join(t.backend or '' for t in cands)}")
                cands = picked
            reasons = []
            for t in cands:
                reason = t.full_check(params, device, chosen)
                if reason is None:
                    chosen.append(t)
                    break
                reasons.append(reason)
            else:
                if len(reasons) == 1:
                    return chosen, reasons[0]
                return chosen, f"no backend runs {dim} {value!r} here: " + "; ".join(reasons)
        return chosen, None

    def check(self, params: Mapping[str, Any], device: torch.device | str) -> str | None:
        """Why ``params`` cannot run on ``device``, or None (the single feasibility verdict)."""
        return self.plan(params, device)[1]

    def validate_choice(self, dim: str, values: Iterable[Any]) -> None:
        """Raise ConfigError naming the dimension and the allowed values."""
        allowed = self.choices(dim)
        for v in values:
            if v not in allowed or (isinstance(v, bool) != (DIMENSIONS[dim].type is bool)):
                raise ConfigError(f"{dim} must be one of {', '.join(map(repr, allowed))}; got {v!r}")


REGISTRY = Registry()
register = REGISTRY.register
