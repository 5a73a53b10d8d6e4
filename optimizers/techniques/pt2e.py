"""PT2E static int8 for x86 CPUs: ``torch.export`` → ``prepare_pt2e`` with torchao's
``X86InductorQuantizer`` → calibrate → ``convert_pt2e`` → ``torch.compile`` (inductor, freezing).

PT2E is the replacement of torch.ao's deprecated eager/FX quantization. Run eagerly its graph of
quantize/dequantize ops is slower than fp32; inductor with ``freezing`` fuses them into oneDNN
int8 kernels, so this technique always compiles (trait ``compiled``), records the compile time
(``compile_s``, never latency) and makes a separate ``compile`` stage a no-op.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .._utils import clone_model
from ..errors import UnsupportedArchitectureError
from ._base import ApplyContext, StageInfo, Technique, register
from .quantize import _Quant


class FrozenCompiled(nn.Module):
    """An inductor-compiled module whose every call (and recompile) runs with ``freezing=True``.

    Freezing is what turns PT2E's q/dq pattern into fused int8 kernels; patching it per call
    keeps the process-global inductor config untouched outside this module.
    """

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph
        # Not a submodule: its state_dict would count the graph's weights twice.
        # Static shapes: inductor's dynamic-shape qconv lowering fails on convs (torch 2.13); a new
        # batch size recompiles, inside the freezing patch, so it fuses too.
        object.__setattr__(self, "_compiled", torch.compile(graph, dynamic=False))

    def forward(self, *args: Any) -> Any:
        with torch._inductor.config.patch(freezing=True):
            return self._compiled(*args)  # type: ignore[operator]


def drop_unused_state(graph: torch.fx.GraphModule) -> int:
    """Delete the parameters and buffers no node of ``graph`` reads; returns how many.

    ``convert_pt2e`` folds each weight into an int8 constant (``_frozen_paramN``) but leaves the
    original fp32 weight registered on the graph, unread: it would be counted in ``size_bytes``
    and shipped in the ``.pt2`` artifact (a converted MLP's state was 1.3x its fp32 model's).
    """
    used = {str(n.target) for n in graph.graph.nodes if n.op == "get_attr"}
    names = [n for n, _ in graph.named_parameters(remove_duplicate=False)]
    names += [n for n, _ in graph.named_buffers(remove_duplicate=False)]
    dropped = 0
    for name in dict.fromkeys(names):
        if name in used:
            continue
        owner_path, _, attr = name.rpartition(".")
        owner = graph.get_submodule(owner_path) if owner_path else graph
        delattr(owner, attr)
        dropped += 1
    graph.delete_all_unused_submodules()
    graph.recompile()
    return dropped


def _cxx_reason() -> str | None:
    import shutil

    from torch._inductor import config

    cxx = config.cpp.cxx
    names = [c for c in (cxx if isinstance(cxx, (tuple, list)) else (cxx,)) if c]
    if not any(shutil.which(str(c)) for c in names or ("g++",)):
        return "pt2e compiles with inductor and needs a C++ compiler: apt-get install g++"
    return None


@register
class PT2EStatic(_Quant):
    """Static int8 via PT2E + X86InductorQuantizer, compiled; CPU."""

    name = "static"
    backend = "pt2e"
    priority = 2
    selector = {"quantization_type": "static"}
    accepts = {"quantization_bits": (8,)}
    requires = "torchao"
    traits = frozenset({"compiled"})
    columns = ("quant_backend", "compile_s")
    export = ("pt2e",)

    def check(self, params: Mapping[str, Any], device: torch.device,
              upstream: Sequence[Technique] = ()) -> str | None:
        if device.type != "cpu":
            return f"pt2e static int8 (X86InductorQuantizer) has no kernel on {device.type}; it runs on x86 CPUs"
        return _cxx_reason()

    def _apply(self, model: nn.Module, params: Mapping[str, Any], ctx: ApplyContext
               ) -> tuple[nn.Module, StageInfo]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

            inputs = tuple(ctx.example_inputs)
            try:
                # Batch size is free: calibration and evaluate() use other batch sizes.
                dims = tuple({0: torch.export.Dim.AUTO} if isinstance(x, torch.Tensor) and x.dim() else None
                             for x in inputs)
                graph = torch.export.export(clone_model(model).eval(), inputs, dynamic_shapes=dims).module()
            except Exception as exc:  # noqa: BLE001 - the architecture cannot be exported
                raise UnsupportedArchitectureError(
                    f"pt2e needs a torch.export-able model: {type(exc).__name__}: "
                    f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
            quantizer = xiq.X86InductorQuantizer()
            quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
            try:
                prepared = prepare_pt2e(graph, quantizer)  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001 - e.g. HF MiniLM: the quantizer's pattern matcher fails
                raise UnsupportedArchitectureError(
                    f"X86InductorQuantizer could not annotate this graph: {type(exc).__name__}: "
                    f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}") from exc
            with torch.no_grad():
                for batch in ctx.calibration or [inputs]:
                    prepared(*batch)
            converted = convert_pt2e(prepared)
            dropped = drop_unused_state(converted)
            # User code (evaluate) calls .eval(); an exported graph refuses it unless allowed.
            from torchao.quantization.pt2e import allow_exported_model_train_eval

            allow_exported_model_train_eval(converted)
            torch._dynamo.reset()
            compiled = FrozenCompiled(converted)
            t0 = time.perf_counter()
            try:
                with torch.no_grad():
                    compiled(*inputs)  # compile now: compile time is never latency
            except Exception as exc:  # noqa: BLE001 - inductor cannot lower this graph: a model limit
                raise UnsupportedArchitectureError(
                    f"inductor could not compile the pt2e int8 graph: {type(exc).__name__}: "
                    f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}") from exc
            compile_s = time.perf_counter() - t0
        return self._finish(model, compiled, params, None, {"compile_s": compile_s, "dropped_fp32_tensors": dropped})

    def _finish(self, original: nn.Module, q: nn.Module, params: Mapping[str, Any], engine: str | None,
                extra: Mapping[str, Any] | None = None) -> tuple[nn.Module, StageInfo]:
        q_out, info = super()._finish(original, q, params, engine, extra)
        # quantized_module_count cannot see inside an FX graph: count its int8 quantize ops.
        graph = q.graph if isinstance(q, FrozenCompiled) else q
        nodes = list(getattr(graph, "graph").nodes) if hasattr(graph, "graph") else []  # noqa: B009
        n = sum(1 for node in nodes if "quantize_per" in str(getattr(node, "target", "")))
        info.details["quantized_ops"] = n
        info.changed = n > 0
        if info.changed:
            info.effective = {"quantization_type": self.name, "quantization_bits": 8, "quantization_backend": "pt2e"}
        return q_out, info
