"""The search space: sweep config dimensions -> Optuna ``suggest_*`` calls -> a :class:`Recipe`.

The space is conditional: ``pruning_amount`` exists only when a pruning method is chosen, and
``quantization_bits`` only when a quantization type is. Parameters are named after the Parquet
columns, so a trial's params map 1:1 onto its row.
"""

from __future__ import annotations

import itertools
from typing import Any, Protocol

import numpy as np

from optimizers.recipe import Recipe

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


def _choose(trial: _Suggester, name: str, choices: list[Any]) -> Any:
    # A one-choice dimension is a constant: asking the sampler would only cost a storage write.
    return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, choices)


def suggest(trial: _Suggester, space: SearchSpace) -> dict[str, Any]:
    """Ask ``trial`` for one point; returns the params (conditional keys only when active)."""
    params: dict[str, Any] = {}
    method = _choose(trial, "pruning_method", space.pruning_method)
    params["pruning_method"] = method
    if method != "none":
        amt = space.pruning_amount
        if isinstance(amt, Range):
            if amt.low == amt.high:
                params["pruning_amount"] = amt.low
            else:
                params["pruning_amount"] = trial.suggest_float("pruning_amount", amt.low, amt.high, step=amt.step)
        else:
            params["pruning_amount"] = trial.suggest_categorical("pruning_amount", sorted(amt))
    qtype = _choose(trial, "quantization_type", space.quantization_type)
    params["quantization_type"] = qtype
    if qtype != "none":
        params["quantization_bits"] = _choose(trial, "quantization_bits", space.quantization_bits)
    params["precision"] = _choose(trial, "precision", space.precision)
    params["compile"] = _choose(trial, "compile", space.compile)
    return params


def complete(params: dict[str, Any], space: SearchSpace) -> dict[str, Any]:
    """Fill in the one-choice dimensions that :func:`suggest` does not store in the study."""
    out = dict(params)
    for name in ("pruning_method", "quantization_type", "precision", "compile"):
        choices = getattr(space, name)
        if name not in out and len(choices) == 1:
            out[name] = choices[0]
    if out.get("quantization_type", "none") != "none" and "quantization_bits" not in out \
            and len(space.quantization_bits) == 1:
        out["quantization_bits"] = space.quantization_bits[0]
    return out


def to_recipe(params: dict[str, Any]) -> Recipe:
    amount = params.get("pruning_amount")
    return Recipe(
        pruning_method=params["pruning_method"],
        pruning_amount=None if amount is None else round(float(amount), 6),
        quantization_type=params["quantization_type"],
        quantization_bits=params.get("quantization_bits"),
        precision=params["precision"],
        compile=bool(params.get("compile", False)),
    )


def grid(space: SearchSpace) -> list[dict[str, Any]]:
    """Every distinct valid point of a discrete space (conditional keys collapsed)."""
    amounts = amount_choices(space)
    if not amounts:
        amt = space.pruning_amount
        assert isinstance(amt, Range)
        amounts = sorted({round(float(x), 6) for x in np.linspace(amt.low, amt.high, 5)})
    points: list[dict[str, Any]] = []
    pruning = [{"pruning_method": "none"}] + [
        {"pruning_method": m, "pruning_amount": a} for m in space.pruning_method if m != "none" for a in amounts
    ]
    if "none" not in space.pruning_method:
        pruning = pruning[1:]
    quant = [{"quantization_type": "none"}] + [
        {"quantization_type": q, "quantization_bits": b}
        for q in space.quantization_type if q != "none" for b in space.quantization_bits
    ]
    if "none" not in space.quantization_type:
        quant = quant[1:]
    for p, q, prec, comp in itertools.product(pruning, quant, space.precision, space.compile):
        points.append({**p, **q, "precision": prec, "compile": comp})
    return points
