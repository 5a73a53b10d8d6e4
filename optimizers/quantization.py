"""Post-training quantization on real kernels.

- :class:`DynamicQuantizer`: int8 weights, activations quantized on the fly (bits=8), or fp16
  weights (bits=16).
- :class:`StaticQuantizer`: int8 weights *and* activations, calibrated, per-channel weights.
- :class:`WeightOnlyQuantizer`: int8 weight-only, or int4 where a kernel exists (CUDA).

Which library backs each path is decided in :mod:`optimizers._backends`; the chosen backend is
reported by ``get_size_info()['backend']``.

>>> import torch
>>> m = torch.nn.Sequential(torch.nn.Linear(16, 16))
>>> q = DynamicQuantizer(m, QuantizationConfig(quantization_type="dynamic")).optimize()
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._utils import clone_model, model_device, model_size_bytes
from .errors import ConfigError, UnsupportedOnDeviceError, check_choice


def quantization_types() -> tuple[str, ...]:
    """Registered quantization types (the registry is the source of truth)."""
    from .techniques import REGISTRY

    return tuple(c for c in REGISTRY.choices("quantization_type") if c != "none")


def allowed_bits(quantization_type: str) -> tuple[int, ...]:
    """Bits some registered backend accepts for ``quantization_type``."""
    from .techniques import REGISTRY

    return tuple(sorted({b for t in REGISTRY.selected_by("quantization_type", quantization_type)
                         for b in t.accepts.get("quantization_bits", ())}))


BACKENDS = ("auto", "torch_ao", "torchao", "pt2e")
_BACKEND_ALIASES = {"torch.ao": "torch_ao"}
ENGINES = ("auto", "x86", "fbgemm", "qnnpack", "onednn")
_DTYPES = (torch.qint8, torch.quint8, torch.float16)


@dataclass(frozen=True)
class QuantizationConfig:
    """How to quantize.

    Attributes:
        quantization_type: ``dynamic``, ``static`` or ``weight_only``.
        dtype: ``torch.qint8`` (default); ``torch.float16`` is the same as ``bits=16``.
        bits: 8, or 16 (fp16 weights, dynamic) or 4 (weight-only, CUDA only).
        quantize_weights / quantize_activations: informational for dynamic/weight-only;
            ``static`` quantizes both.
        per_channel: per-output-channel weight scales (more accurate, same speed).
        backend: ``auto`` (the registry's order, see :mod:`optimizers.techniques.quantize`),
            ``torch_ao``, ``torchao`` or ``pt2e``; a pair no backend implements raises
            ``UnsupportedOnDeviceError`` with the registry's reason.
        engine: torch.ao quantized engine: ``auto`` (x86 when present), ``qnnpack``, ...
        reduce_range: torch.ao dynamic int8 quantizes activations to 7 bits (True, torch.ao's
            default, safe on every x86 CPU). False uses all 8 bits: more accurate, and safe only
            on CPUs with VNNI (AVX512-VNNI/AVX-VNNI), where int8 products cannot saturate.
            None: False when this CPU has VNNI and the engine is x86/fbgemm, else True. Measured
            on a VNNI CPU, full range was both more accurate and faster on MiniLM (2.4x vs 1.7x,
            cosine 0.993 vs 0.976) but slower on the 1024-wide digits MLP (2.2x vs 3.1x), so it is
            a choice to measure (sweep config ``quantization: {reduce_range: ...}``), not a default.

    >>> QuantizationConfig(quantization_type="static", bits=8).per_channel
    True
    """

    quantization_type: str = "dynamic"
    dtype: torch.dtype = torch.qint8
    bits: int = 8
    quantize_weights: bool = True
    quantize_activations: bool = False
    per_channel: bool = True
    backend: str = "auto"
    engine: str = "auto"
    reduce_range: bool | None = True

    def __post_init__(self) -> None:
        owner = "QuantizationConfig"
        check_choice(owner, "quantization_type", self.quantization_type, quantization_types())
        check_choice(owner, "bits", self.bits, allowed_bits(self.quantization_type))
        check_choice(owner, "dtype", self.dtype, _DTYPES)
        if self.dtype == torch.float16 and self.bits != 16:
            object.__setattr__(self, "bits", 16)
            check_choice(owner, "bits", 16, allowed_bits(self.quantization_type))
        object.__setattr__(self, "backend", _BACKEND_ALIASES.get(self.backend, self.backend))
        check_choice(owner, "backend", self.backend, BACKENDS)
        check_choice(owner, "engine", self.engine, ENGINES)
        if self.backend != "auto":
            from .techniques import REGISTRY

            have = REGISTRY.backends_for(self.quantization_type)
            if self.backend not in have:
                raise ConfigError(f"{owner}.backend {self.backend!r} does not implement {self.quantization_type}; "
                                  f"backends that do: {', '.join(have)}")
        if self.reduce_range is not None and not isinstance(self.reduce_range, bool):
            raise ConfigError(f"{owner}.reduce_range must be a bool or None (auto); got {self.reduce_range!r}")
        if not self.quantize_weights:
            raise ConfigError(f"{owner}.quantize_weights must be True: every path quantizes weights")
        if self.quantization_type == "static":
            object.__setattr__(self, "quantize_activations", True)


class _Quantizer:
    """Shared verb: copy, quantize (through the technique registry), measure."""

    kind = ""

    def __init__(self, model: nn.Module, config: QuantizationConfig | None = None) -> None:
        self.model = model
        self.config = config or QuantizationConfig(quantization_type=self.kind)
        if self.config.quantization_type != self.kind:
            raise ConfigError(
                f"{type(self).__name__} needs quantization_type={self.kind!r}; "
                f"got {self.config.quantization_type!r}"
            )
        self.optimized_model: nn.Module | None = None
        self.backend = ""
        self.engine = ""
        self.stage_info: Any = None

    def optimize(self) -> nn.Module:
        """Return a quantized copy of the model; the input model is untouched.

        The registry picks the technique for (type, bits, backend) on the model's device and is
        the only judge of feasibility: a refusal raises ``UnsupportedOnDeviceError`` with its reason.
        """
        from .techniques import REGISTRY, ApplyContext

        model = clone_model(self.model).eval()
        device = model_device(model)
        params = {"quantization_type": self.kind, "quantization_bits": self.config.bits,
                  "quantization_backend": self.config.backend}
        plan, reason = REGISTRY.plan(params, device)
        if reason:
            raise UnsupportedOnDeviceError(reason)
        tech = next(t for t in plan if t.stage == "quantize")
        opts = {"per_channel": self.config.per_channel, "engine": self.config.engine,
                "reduce_range": self.config.reduce_range}
        ctx = ApplyContext(example_inputs=self._example_inputs(), device=device,
                           calibration=self._calibration(), options={"quantization": opts})
        self.optimized_model, self.stage_info = tech.apply(model, params, ctx)
        self.backend = tech.backend or ""
        self.engine = self.stage_info.details.get("engine", "") or ""
        return self.optimized_model

    def _example_inputs(self) -> tuple[Any, ...]:
        return ()

    def _calibration(self) -> list[tuple[Any, ...]] | None:
        return None

    def get_size_info(self) -> dict[str, Any]:
        """``original_size_bytes``, ``optimized_size_bytes``, ``compression_ratio``, ``backend``."""
        if self.optimized_model is None:
            raise RuntimeError("call optimize() before get_size_info()")
        original = model_size_bytes(self.model)
        optimized = model_size_bytes(self.optimized_model)
        return {
            "original_size_bytes": original,
            "optimized_size_bytes": optimized,
            "compression_ratio": original / optimized if optimized else float("nan"),
            "backend": self.backend,
            "engine": self.engine,
        }


class DynamicQuantizer(_Quantizer):
    """Int8 weights with activations quantized on the fly (or fp16 weights with ``bits=16``).

    >>> import torch
    >>> q = DynamicQuantizer(torch.nn.Sequential(torch.nn.Linear(8, 8))).optimize()
    """

    kind = "dynamic"


class StaticQuantizer(_Quantizer):
    """Int8 weights and activations, calibrated on ``calibration_loader``; per-channel weights.

    Args:
        calibration_loader: iterable of input tuples (or single tensors). Required.
        example_inputs: used to trace the model; defaults to the first calibration batch.

    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU())
    >>> data = [(torch.randn(4, 8),) for _ in range(3)]
    >>> q = StaticQuantizer(m, calibration_loader=data).optimize()
    """

    kind = "static"

    def __init__(
        self,
        model: nn.Module,
        calibration_loader: Iterable[Any] | None = None,
        config: QuantizationConfig | None = None,
        example_inputs: tuple[torch.Tensor, ...] | None = None,
    ) -> None:
        super().__init__(model, config)
        if calibration_loader is None:
            raise ConfigError("StaticQuantizer.calibration_loader is required: static quantization "
                              "calibrates activation ranges on real inputs")
        self.calibration = [b if isinstance(b, (tuple, list)) else (b,) for b in calibration_loader]
        if not self.calibration:
            raise ConfigError("StaticQuantizer.calibration_loader is empty: give at least one batch")
        self.example_inputs = example_inputs or tuple(self.calibration[0])

    def _example_inputs(self) -> tuple[Any, ...]:
        return tuple(self.example_inputs)

    def _calibration(self) -> list[tuple[Any, ...]] | None:
        return [tuple(b) for b in self.calibration]


class WeightOnlyQuantizer(_Quantizer):
    """Int8 (or int4 on CUDA) weights, float activations, via torchao.

    >>> import torch
    >>> q = WeightOnlyQuantizer(torch.nn.Sequential(torch.nn.Linear(8, 8)),
    ...                         QuantizationConfig(quantization_type="weight_only")).optimize()
    """

    kind = "weight_only"


_QUANTIZERS: dict[str, type[_Quantizer]] = {
    "dynamic": DynamicQuantizer,
    "static": StaticQuantizer,
    "weight_only": WeightOnlyQuantizer,
}


def make_quantizer(
    model: nn.Module,
    config: QuantizationConfig,
    *,
    calibration: Iterable[Any] | None = None,
    example_inputs: tuple[torch.Tensor, ...] | None = None,
) -> _Quantizer:
    """The quantizer for ``config.quantization_type`` (the registry; one entry per type)."""
    if config.quantization_type == "static":
        return StaticQuantizer(model, calibration_loader=calibration, config=config, example_inputs=example_inputs)
    return _QUANTIZERS[config.quantization_type](model, config)
