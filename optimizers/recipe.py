"""A recipe: one point of the search space, applied in the order prune → recover → quantize →
cast → compile.

The sweep's trial and the analysis export both call :func:`apply_recipe`, so an exported model is
built exactly the way it was measured.

>>> import torch
>>> r = Recipe(quantization_type="dynamic", quantization_bits=8)
>>> m, info = apply_recipe(torch.nn.Sequential(torch.nn.Linear(8, 8)), r,
...                        example_inputs=(torch.randn(2, 8),))
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ._utils import clone_model
from .errors import ConfigError, UnsupportedOnDeviceError, check_choice
from .mixed_precision import PRECISIONS, MixedPrecisionWrapper, device_supports
from .pruning import PRUNING_METHODS, ModelPruner, PruningConfig
from .quantization import ALLOWED_BITS, QUANTIZATION_TYPES, QuantizationConfig, make_quantizer

PRECISION_MODES = ("auto", "autocast", "cast")


@dataclass(frozen=True)
class Recipe:
    """One combination of techniques. ``none`` disables a technique.

    >>> Recipe.from_row({"pruning_method": "none", "precision": "bf16"}).precision
    'bf16'
    """

    pruning_method: str = "none"
    pruning_amount: float | None = None
    quantization_type: str = "none"
    quantization_bits: int | None = None
    precision: str = "fp32"
    compile: bool = False
    precision_mode: str = "auto"

    def __post_init__(self) -> None:
        check_choice("Recipe", "pruning_method", self.pruning_method, ("none", *PRUNING_METHODS))
        check_choice("Recipe", "quantization_type", self.quantization_type, ("none", *QUANTIZATION_TYPES))
        check_choice("Recipe", "precision", self.precision, tuple(PRECISIONS))
        check_choice("Recipe", "precision_mode", self.precision_mode, PRECISION_MODES)
        # Normalise: no amount without pruning, no bits without quantization.
        if self.pruning_method == "none":
            object.__setattr__(self, "pruning_amount", None)
        elif self.pruning_amount is None:
            raise ConfigError("Recipe.pruning_amount is required when pruning_method is not 'none'")
        if self.quantization_type == "none":
            object.__setattr__(self, "quantization_bits", None)
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
            precision_mode=str(val("precision_mode", "auto")),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key(self) -> str:
        """Canonical JSON: equal recipes have equal keys (used to never measure twice)."""
        return json.dumps(self.to_dict(), sort_keys=True)


def check_feasible(recipe: Recipe, device: torch.device | str) -> str | None:
    """Why ``recipe`` cannot run on ``device`` (a known-impossible combination), or None."""
    device = torch.device(device)
    qt, bits = recipe.quantization_type, recipe.quantization_bits
    if qt != "none" and bits not in ALLOWED_BITS[qt]:
        return f"{qt} quantization supports bits {list(ALLOWED_BITS[qt])}; got {bits}"
    if qt == "weight_only" and bits == 4 and device.type != "cuda":
        return f"int4 weight-only quantization has no kernel on {device.type}"
    if qt == "static" and device.type != "cpu":
        return f"static int8 quantization has no kernel on {device.type}"
    if qt == "dynamic" and bits == 16 and device.type != "cpu":
        return "fp16-weight dynamic quantization is a CPU path; use precision fp16 on GPU"
    # bf16 without native support would silently fall back to fp32 and be labelled bf16;
    # fp16 on a CPU is allowed: it runs (emulated, slowly) and the data shows it.
    if recipe.precision == "bf16" or (recipe.precision != "fp32" and device.type == "cuda"):
        ok, reason = device_supports(PRECISIONS[recipe.precision], device)
        if not ok:
            return reason
    if (recipe.precision != "fp32" and recipe.precision_mode == "cast" and qt in ("static", "dynamic")
            and device.type == "cpu"):
        return "precision_mode 'cast' cannot cast torch.ao quantized modules (fp32 activations only)"
    if recipe.compile and qt in ("static", "dynamic") and device.type == "cpu":
        return "torch.compile cannot trace torch.ao quantized modules (packed params)"
    return None


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
    """Apply ``recipe`` to a copy of ``model``: prune → recover → quantize → cast → compile.

    Returns the optimized model and an info dict (``pruning``, ``quantization``, ``precision``
    sub-dicts). Raises :class:`UnsupportedOnDeviceError` for known-impossible combinations.
    """
    device = torch.device(device)
    reason = check_feasible(recipe, device)
    if reason:
        raise UnsupportedOnDeviceError(reason)
    calib = [tuple(b) if isinstance(b, (tuple, list)) else (b,) for b in calibration] if calibration else None
    inputs = tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in example_inputs)
    out = clone_model(model).to(device).eval()
    info: dict[str, Any] = {"recipe": recipe.to_dict()}

    if recipe.pruning_method != "none" and recipe.pruning_amount:
        cfg = PruningConfig(method=recipe.pruning_method, amount=float(recipe.pruning_amount),
                            **dict(pruning_options or {}))
        pruner = ModelPruner(
            out, cfg, example_inputs=inputs,
            calibration_data=[tuple(t.to(device) for t in b) for b in calib] if calib else None,
            train_step=train_step, evaluate=evaluate,
        )
        out = pruner.prune_model()
        info["pruning"] = pruner.get_pruning_info()

    if recipe.quantization_type != "none":
        qcfg = QuantizationConfig(quantization_type=recipe.quantization_type,
                                  bits=int(recipe.quantization_bits or 8), **dict(quantization_options or {}))
        quantizer = make_quantizer(out, qcfg, calibration=calib, example_inputs=inputs)
        out = quantizer.optimize()
        info["quantization"] = quantizer.get_size_info()

    if recipe.precision != "fp32":
        mode = recipe.precision_mode
        if mode == "auto":  # quantized modules expect fp32 activations: autocast around them
            mode = "autocast" if recipe.quantization_type != "none" else "cast"
        wrapper = MixedPrecisionWrapper(out, PRECISIONS[recipe.precision], use_auto_cast=(mode == "autocast"))
        info["precision"] = {"mode": mode, "effective_dtype": str(wrapper.dtype), "fallback": wrapper.fallback}
        out = wrapper

    if recipe.compile:
        torch._dynamo.reset()  # a fresh cache per trial: avoids hitting the recompile limit
        out = torch.compile(out)  # type: ignore[assignment]
        with torch.inference_mode():
            out(*inputs)  # compile now, so compile time is not mistaken for latency
        info["compiled"] = True
    return out, info


__all__ = ["Recipe", "apply_recipe", "check_feasible", "UnsupportedOnDeviceError"]
