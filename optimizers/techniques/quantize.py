"""Quantization techniques, one per (type, backend) pair that has a real kernel.

| type          | torch_ao (CPU)                  | torchao (CPU, CUDA)                | pt2e (CPU)              |
|---------------|---------------------------------|------------------------------------|-------------------------|
| dynamic       | int8 (x86/fbgemm), fp16 weights | Int8DynamicActivationInt8Weight    | -                       |
| static        | int8, FX graph mode, calibrated | -                                  | see :mod:`.pt2e`        |
| weight_only   | -                               | int8; int4 on CUDA                 | -                       |

``quantization_backend: auto`` takes the first backend of a row that runs here: torch.ao is
still the fastest int8 path on x86 CPUs in torch 2.13, torchao is the maintained library and
the one with GPU kernels. The engine a torch.ao model was built for is recorded in its
:class:`StageInfo` and restored around every use by :func:`optimizers.techniques.isolated_state`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from .._utils import clone_model, model_size_bytes
from ._base import ApplyContext, StageInfo, Technique, register


def quantized_module_count(model: nn.Module) -> int:
    """Modules whose class is a torch.ao quantized module, or whose weights are torchao tensors."""
    n = 0
    for m in model.modules():
        if any(c.__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized")) for c in type(m).__mro__):
            n += 1
            continue
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and type(w) not in (torch.Tensor, nn.Parameter) \
                and type(w).__module__.startswith("torchao"):
            n += 1
    return n


class _Quant(Technique):
    stage: ClassVar[str] = "quantize"
    uses: ClassVar[tuple[str, ...]] = ("quantization_bits", "quantization_backend")
    options: ClassVar[str | None] = "quantization"
    columns: ClassVar[tuple[str, ...]] = ("quant_backend", "quantized_engine")

    def _finish(self, original: nn.Module, q: nn.Module, params: Mapping[str, Any], engine: str | None,
                extra: Mapping[str, Any] | None = None) -> tuple[nn.Module, StageInfo]:
        n = quantized_module_count(q)
        orig, opt = model_size_bytes(original), model_size_bytes(q)
        details = {"quant_backend": self.backend, "quantized_engine": engine, "backend": self.backend,
                   "engine": engine or "", "quantized_modules": n, "original_size_bytes": orig,
                   "optimized_size_bytes": opt, "compression_ratio": orig / opt if opt else float("nan"),
                   **dict(extra or {})}
        changed = n > 0
        effective = {"quantization_type": self.name, "quantization_bits": int(params.get("quantization_bits") or 8),
                     "quantization_backend": self.backend} if changed else {}
        return q, StageInfo(self.stage, self.name, changed, effective, details,
                            "" if changed else "found no layer it can quantize")


class _TorchAO(_Quant):
    backend: ClassVar[str | None] = "torch_ao"
    priority: ClassVar[int] = 0
    traits: ClassVar[frozenset[str]] = frozenset({"fp32_activations", "no_compile"})
    export: ClassVar[tuple[str, ...]] = ("torchscript", "torch.export")
    requires: ClassVar[str | None] = "torch.ao.quantization"

    def check(self, params: Mapping[str, Any], device: torch.device,
              upstream: Sequence[Technique] = ()) -> str | None:
        if device.type != "cpu":
            return f"torch_ao {self.name} quantization has no kernel on {device.type}; it runs on CPU"
        return None

    def available(self) -> str | None:
        try:
            import torch.ao.quantization  # noqa: F401
        except ImportError:
            return "torch.ao.quantization is not in this torch build"
        return None


@register
class TorchAODynamic(_TorchAO):
    """int8 weights, activations quantized per call (or fp16 weights with bits=16); CPU."""

    name = "dynamic"
    selector = {"quantization_type": "dynamic"}
    accepts = {"quantization_bits": (8, 16)}

    def _apply(self, model: nn.Module, params: Mapping[str, Any], ctx: ApplyContext
               ) -> tuple[nn.Module, StageInfo]:
        from .._backends import _torch_ao

        opts = ctx.options_for(self)
        q, engine = _torch_ao.quantize_dynamic(
            clone_model(model).eval(), bits=int(params.get("quantization_bits") or 8),
            per_channel=bool(opts.get("per_channel", True)), engine=str(opts.get("engine", "auto")),
            reduce_range=opts.get("reduce_range", True))
        return self._finish(model, q, params, engine)


@register
class TorchAOStatic(_TorchAO):
    """int8 weights and activations, calibrated, FX graph mode; CPU."""

    name = "static"
    selector = {"quantization_type": "static"}
    accepts = {"quantization_bits": (8,)}

    def _apply(self, model: nn.Module, params: Mapping[str, Any], ctx: ApplyContext
               ) -> tuple[nn.Module, StageInfo]:
        from .._backends import _torch_ao
        from ..errors import ConfigError

        calib = ctx.calibration
        if not calib:
            raise ConfigError("StaticQuantizer.calibration_loader is required: static quantization "
                              "calibrates activation ranges on real inputs (config key 'calibration')")
        opts = ctx.options_for(self)
        q, engine = _torch_ao.quantize_static(
            clone_model(model).eval(), example_inputs=tuple(ctx.example_inputs),
            calibration=[tuple(b) for b in calib], per_channel=bool(opts.get("per_channel", True)),
            engine=str(opts.get("engine", "auto")))
        return self._finish(model, q, params, engine)


class _TorchAOLib(_Quant):
    backend: ClassVar[str | None] = "torchao"
    priority: ClassVar[int] = 1
    requires: ClassVar[str | None] = "torchao"
    load_requires: ClassVar[str | None] = "torchao"
    columns: ClassVar[tuple[str, ...]] = ("quant_backend",)
    export: ClassVar[tuple[str, ...]] = ("torch.export", "torchscript")
    kind: ClassVar[str] = ""

    def _apply(self, model: nn.Module, params: Mapping[str, Any], ctx: ApplyContext
               ) -> tuple[nn.Module, StageInfo]:
        from .._backends import _torchao

        q = _torchao.quantize(clone_model(model).eval(), kind=self.kind,
                              bits=int(params.get("quantization_bits") or 8), device=ctx.device)
        return self._finish(model, q, params, None)


@register
class TorchAODynamicLib(_TorchAOLib):
    """torchao Int8DynamicActivationInt8Weight: CPU and CUDA."""

    name = "dynamic"
    kind = "dynamic"
    selector = {"quantization_type": "dynamic"}
    accepts = {"quantization_bits": (8,)}


@register
class TorchAOWeightOnly(_TorchAOLib):
    """torchao weight-only int8 (CPU, CUDA) or int4 (CUDA: no CPU kernel)."""

    name = "weight_only"
    kind = "weight_only"
    selector = {"quantization_type": "weight_only"}
    accepts = {"quantization_bits": (4, 8)}

    def check(self, params: Mapping[str, Any], device: torch.device,
              upstream: Sequence[Technique] = ()) -> str | None:
        if params.get("quantization_bits") == 4 and device.type != "cuda":
            return f"int4 weight-only quantization has no kernel on {device.type}; it needs CUDA"
        return None
