"""The search space: sweep config dimensions -> Optuna ``suggest_*`` calls -> a :class:`Recipe`.

The space is conditional and comes from the technique registry: each selector dimension
(``pruning_method``, ``quantization_type``, ``precision``, ``compile``) is asked first, then the
dimensions its chosen technique uses (``pruning_amount`` for a pruning method,
``quantization_bits`` and ``quantization_backend`` for a quantization type). A dimension with one
choice is a constant and is not stored in the study. Parameters are named after the Parquet
columns, so a trial's params map 1:1 onto its row.
"""

from __future__ import annotations

import itertools
from typing import Any, Protocol

import numpy as np

from optimizers.recipe import Recipe
from optimizers.techniques import DIMENSIONS, REGISTRY, SELECTORS

from .config import Range, SearchSpace


class _Suggester(Protocol):  # the subset of optuna.Trial we use (keeps this module testable)
    def suggest_categorical(self, name: str, choices: Any) -> Any: ...
    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None) -> float: ...


def amount_choices(space: SearchSpace) -> list[float]:
    """Discrete amounts (a list, or a stepped range); empty for a continuous range."""
    amt = space.pruning_amount
    if isinstance(amt, list):
        return sorted(amt)
    if amt.step is None:
        return []
    n = int(round((amt.high - amt.low) / amt.step))
    return [round(amt.low + i * amt.step, 10) for i in range(n + 1)]


def _choices(space: SearchSpace, dim: str, *, grid_points: int = 5) -> list[Any]:
    if dim == "pruning_amount":
        amounts = amount_choices(space)
        if amounts:
            return amounts
        amt = space.pruning_amount
        assert isinstance(amt, Range)
        return sorted({round(float(x), 6) for x in np.linspace(amt.low, amt.high, grid_points)})
    return list(getattr(space, dim))


def _suggest_dim(trial: _Suggester, space: SearchSpace, dim: str) -> Any:
    if dim == "pruning_amount" and isinstance(space.pruning_amount, Range):
        amt = space.pruning_amount
        if amt.low == amt.high:
            return amt.low
        return trial.suggest_float("pruning_amount", amt.low, amt.high, step=amt.step)
    choices = _choices(space, dim)
    # A one-choice dimension is a constant: asking the sampler would only cost a storage write.
    return choices[0] if len(choices) == 1 else trial.suggest_categorical(dim, choices)


def _active(dim_value: tuple[str, Any]) -> list[str]:
    return REGISTRY.uses(*dim_value)


def suggest(trial: _Suggester, space: SearchSpace) -> dict[str, Any]:
    """Ask ``trial`` for one point; returns the params (conditional keys only when active)."""
    params: dict[str, Any] = {}
    for sel in SELECTORS:
        value = _suggest_dim(trial, space, sel)
        params[sel] = value
        for dim in _active((sel, value)):
            params[dim] = _suggest_dim(trial, space, dim)
    return params


def complete(params: dict[str, Any], space: SearchSpace) -> dict[str, Any]:
    """Fill in the one-choice dimensions that :func:`suggest` does not store in the study."""
    out = dict(params)
    for sel in SELECTORS:
        if sel not in out:
            choices = _choices(space, sel)
            if len(choices) != 1:
                continue
            out[sel] = choices[0]
        for dim in _active((sel, out[sel])):
            if dim not in out:
                if dim == "pruning_amount" and isinstance(space.pruning_amount, Range) \
                        and space.pruning_amount.low == space.pruning_amount.high:
                    out[dim] = space.pruning_amount.low
                    continue
                choices = _choices(space, dim)
                if len(choices) == 1:
                    out[dim] = choices[0]
    return out


def to_recipe(params: dict[str, Any]) -> Recipe:
    """The :class:`Recipe` of a point; raises KeyError/ValueError for an incomplete or bad point."""
    for sel in SELECTORS:
        if sel not in params and sel != "compile":
            raise KeyError(sel)
    return Recipe.from_params(params)


def grid(space: SearchSpace) -> list[dict[str, Any]]:
    """Every distinct valid point of a discrete space (conditional keys collapsed)."""
    per_selector: list[list[dict[str, Any]]] = []
    for sel in SELECTORS:
        options: list[dict[str, Any]] = []
        for value in _choices(space, sel):
            dims = _active((sel, value))
            for combo in itertools.product(*(_choices(space, d) for d in dims)):
                options.append({sel: value, **dict(zip(dims, combo, strict=True))})
        per_selector.append(options)
    points = []
    for parts in itertools.product(*per_selector):
        point: dict[str, Any] = {}
        for p in parts:
            point.update(p)
        points.append({k: point[k] for k in DIMENSIONS if k in point})
    return points
