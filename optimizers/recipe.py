"""A recipe: one point of the search space, applied stage by stage in the registry's order
(prune → factorize → quantize → precision → compile).

The sweep's trial and the analysis export both call :func:`apply_recipe`, so an exported model is
built exactly the way it was measured. Every stage reports whether it changed the model; the
stages that did make up the *effective* recipe (:func:`effective_recipe`), which is what a row is
labelled and deduplicated by.

>>> import torch
>>> r = Recipe(quantization_type="dynamic", quantization_bits=8)
>>> m, info = apply_recipe(torch.nn.Sequential(torch.nn.Linear(8, 8)), r,
...                        example_inputs=(torch.randn(2, 8),))
>>> info["effective"]["quantization_backend"]
'torch_ao'
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from ._utils import clone_model
from .errors import ConfigError, UnsupportedOnDeviceError, check_choice
from .techniques import AUTO_BACKEND, DIMENSIONS, PRECISION_MODES, REGISTRY, ApplyContext, StageInfo

__all__ = ["Recipe", "apply_recipe", "check_feasible", "effective_recipe", "UnsupportedOnDeviceError",
           "PRECISION_MODES"]


@dataclass(frozen=True)
class Recipe:
    """One combination of techniques. ``none`` (``fp32``, ``False``) turns a stage off.

    Field names are the search dimensions (:data:`optimizers.techniques.DIMENSIONS`) and the
    Parquet columns; allowed values come from the registry.

    >>> Recipe.from_row({"pruning_method": "none", "precision": "bf16"}).precision
    'bf16'
    """

    pruning_method: str = "none"
    pruning_amount: float | None = None
    quantization_type: str = "none"
    quantization_bits: int | None = None
    precision: str = "fp32"
    compile: bool = False
    quantization_backend: str = AUTO_BACKEND
    precision_mode: str = "auto"

    def __post_init__(self) -> None:
        for name in ("pruning_method", "quantization_type", "quantization_backend", "precision"):
            check_choice("Recipe", name, getattr(self, name), REGISTRY.choices(name))
        if not isinstance(self.compile, bool):
            raise ConfigError(f"Recipe.compile must be a bool; got {self.compile!r}")
        check_choice("Recipe", "precision_mode", self.precision_mode, PRECISION_MODES)
        # Normalise: a dimension exists only when the technique that uses it is chosen.
        if not REGISTRY.uses("pruning_method", self.pruning_method):
            object.__setattr__(self, "pruning_amount", None)
        elif self.pruning_amount is None:
            raise ConfigError("Recipe.pruning_amount is required when pruning_method is not 'none'")
        if self.quantization_type == "none":
            object.__setattr__(self, "quantization_bits", None)
            object.__setattr__(self, "quantization_backend", AUTO_BACKEND)
        elif self.quantization_bits is None:
            object.__setattr__(self, "quantization_bits", 8)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Recipe:
        """Build from a results row (or any mapping with the column names); NaN reads as None."""

        def val(key: str, default: Any = None) -> Any:
            v = row.get(key, default)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return default
            return v

        bits = val("quantization_bits")
        amount = val("pruning_amount")
        return cls(
            pruning_method=str(val("pruning_method", "none")),
            pruning_amount=None if amount is None else float(amount),
            quantization_type=str(val("quantization_type", "none")),
            quantization_bits=None if bits is None else int(bits),
            precision=str(val("precision", "fp32")),
            compile=bool(val("compile", False)),
            quantization_backend=str(val("quantization_backend", AUTO_BACKEND)),
            precision_mode=str(val("precision_mode", "auto")),
        )

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Recipe:
        """From sampled parameters (unknown keys ignored; amounts rounded to 6 digits)."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in params.items() if k in names}
        if kw.get("pruning_amount") is not None:
            kw["pruning_amount"] = round(float(kw["pruning_amount"]), 6)
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key(self) -> str:
        """Canonical JSON: equal recipes have equal keys (used to never measure twice)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def resolved(self, device: torch.device | str) -> Recipe:
        """This recipe with ``quantization_backend: auto`` replaced by the backend that runs it."""
        if self.quantization_type == "none" or self.quantization_backend != AUTO_BACKEND:
            return self
        plan, reason = REGISTRY.plan(self.to_dict(), device)
        backend = next((t.backend for t in plan if t.stage == "quantize" and t.backend), None)
        if reason or backend is None:
            return self
        return Recipe(**{**self.to_dict(), "quantization_backend": backend})


def check_feasible(recipe: Recipe, device: torch.device | str) -> str | None:
    """Why ``recipe`` cannot run on ``device`` (the registry's verdict), or None."""
    return REGISTRY.check(recipe.to_dict(), device)


def effective_recipe(stages: Iterable[StageInfo]) -> Recipe:
    """The recipe made of the stages that changed the model (``none`` for the others)."""
    kw: dict[str, Any] = {}
    for s in stages:
        if s.changed:
            kw.update(s.effective)
    return Recipe.from_params(kw)


def apply_recipe(
    model: nn.Module,
    recipe: Recipe,
    *,
    example_inputs: tuple[torch.Tensor, ...],
    calibration: Iterable[tuple[torch.Tensor, ...]] | None = None,
    device: torch.device | str = "cpu",
    pruning_options: Mapping[str, Any] | None = None,
    quantization_options: Mapping[str, Any] | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    train_step: Callable[..., Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Apply ``recipe`` to a copy of ``model``, one registered stage after another.

    Returns the optimized model and an info dict: ``stages`` (one :class:`StageInfo` per active
    stage), ``effective`` (the effective recipe as a dict), ``techniques`` (labels), plus the
    legacy per-stage sub-dicts ``pruning``, ``quantization``, ``precision``. Raises
    :class:`UnsupportedOnDeviceError` for known-impossible combinations (the registry's reason).
    """
    device = torch.device(device)
    params = recipe.to_dict()
    plan, reason = REGISTRY.plan(params, device)
    if reason:
        raise UnsupportedOnDeviceError(reason)
    calib = [tuple(b) if isinstance(b, (tuple, list)) else (b,) for b in calibration] if calibration else None
    inputs = tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in example_inputs)
    ctx = ApplyContext(
        example_inputs=inputs, device=device,
        calibration=[tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in b) for b in calib]
        if calib else None,
        options={"pruning": dict(pruning_options or {}), "quantization": dict(quantization_options or {})},
        evaluate=evaluate, train_step=train_step,
    )
    out = clone_model(model).to(device).eval()
    stages: list[StageInfo] = []
    info: dict[str, Any] = {"recipe": params}
    for tech in plan:
        new, stage = tech.apply(out, params, ctx)
        stages.append(stage)
        if stage.changed:  # a stage that changed nothing is dropped: the model is its effective recipe
            out = new
            ctx.upstream.append(tech)
        legacy = {"prune": "pruning", "factorize": "pruning", "quantize": "quantization",
                  "precision": "precision", "compile": "compile"}[tech.stage]
        info[legacy] = {**stage.details, "changed": stage.changed, "note": stage.note}
    if recipe.compile and "compile" in info:
        info["compiled"] = True
    info["stages"] = stages
    info["techniques"] = [t.label for t in plan]
    info["export_formats"] = [t.export for t in ctx.upstream]
    info["effective"] = effective_recipe(stages).to_dict()
    return out, info


# Every recipe field is a registered dimension (or the non-searched precision_mode).
assert {f.name for f in fields(Recipe)} - {"precision_mode"} == set(DIMENSIONS)
