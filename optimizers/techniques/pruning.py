"""Pruning techniques: masked (``magnitude``, ``random``, ``global_magnitude``) and ``structured``.

The implementations are :class:`optimizers.pruning.ModelPruner` (masks) and
:func:`optimizers.structured.structured_prune` (channels and heads, via Torch-Pruning); this
module registers them and says what each one changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from ._base import ApplyContext, StageInfo, Technique, register


class _Pruning(Technique):
    stage: ClassVar[str] = "prune"
    uses: ClassVar[tuple[str, ...]] = ("pruning_amount",)
    options: ClassVar[str | None] = "pruning"
    columns: ClassVar[tuple[str, ...]] = ("sparsity", "dense_speedup_expected")

    def _apply(self, model: nn.Module, params: Mapping[str, Any], ctx: ApplyContext
               ) -> tuple[nn.Module, StageInfo]:
        from ..pruning import ModelPruner, PruningConfig

        amount = float(params["pruning_amount"])
        cfg = PruningConfig(method=self.name, amount=amount, **ctx.options_for(self))
        calib = [tuple(t.to(ctx.device) if isinstance(t, torch.Tensor) else t for t in b)
                 for b in ctx.calibration] if ctx.calibration else None
        pruner = ModelPruner(model, cfg, example_inputs=ctx.example_inputs, calibration_data=calib,
                             train_step=ctx.train_step, evaluate=ctx.evaluate)
        out = pruner.prune_model()
        info = pruner.get_pruning_info()
        changed = self._changed(info)
        details = {
            "sparsity": info.get("final_sparsity"),
            "dense_speedup_expected": bool(info.get("speedup_expected", False)),
            "recovery_s": info.get("recovery_s"),
            **info,
        }
        effective = {"pruning_method": self.name, "pruning_amount": round(amount, 6)} if changed else {}
        note = "" if changed else "removed nothing"
        return out, StageInfo(self.stage, self.name, changed, effective, details, note)

    @staticmethod
    def _changed(info: Mapping[str, Any]) -> bool:
        return bool(info.get("final_sparsity"))


@register
class Magnitude(_Pruning):
    """Per-layer L1 masks; dense shapes stay, so no speedup on dense kernels."""

    name = "magnitude"
    selector = {"pruning_method": "magnitude"}


@register
class RandomPruning(_Pruning):
    """Random masks: the control that tells whether magnitude ranking matters."""

    name = "random"
    selector = {"pruning_method": "random"}


@register
class GlobalMagnitude(_Pruning):
    """One L1 threshold across layers."""

    name = "global_magnitude"
    selector = {"pruning_method": "global_magnitude"}


@register
class Structured(_Pruning):
    """Removes channels, neurons and attention heads: a smaller, faster dense model."""

    name = "structured"
    selector = {"pruning_method": "structured"}
    columns = ("sparsity", "dense_speedup_expected", "recovery_s")
    export = ("torch.export", "torchscript")

    @staticmethod
    def _changed(info: Mapping[str, Any]) -> bool:
        return int(info.get("params_after", 0)) < int(info.get("params_before", 0))
