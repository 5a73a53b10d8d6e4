"""Low-rank factorization: each eligible ``nn.Linear`` (and 1×1 ``nn.Conv2d``) becomes two thin
layers by truncated SVD; ``pruning_method: lowrank``, ``pruning_amount`` = fraction of rank removed.

``W ≈ (U_r √S_r)(√S_r Vᵀ_r)`` with ``r = round((1 - amount) · min(in, out))``: ``Linear(in, out)``
becomes ``Sequential(Linear(in, r, bias=False), Linear(r, out))``. A layer is factorized only when
the two thin layers hold fewer parameters than the dense one (``r·(in+out) < in·out``); the others
stay dense and are listed under ``skipped`` with the reason, so the stage never claims a change it
did not make. The result is plain ``nn.Linear``/``nn.Conv2d`` modules: smaller, faster on dense
kernels, exportable, and quantizable like any other layer. Recovery is the same label-free
distillation as structured pruning, bounded by ``recovery_steps`` / ``recovery_seconds``.

This module is the worked example of a technique plug-in: it registers itself and nothing in
``sweep/`` or ``analysis/`` names it.

>>> import torch
>>> m = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
>>> f, info = factorize(m, 0.5)
>>> info["factorized"]["0"], sum(p.numel() for p in f.parameters()) < sum(p.numel() for p in m.parameters())
(32, True)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from .._utils import count_parameters
from ..errors import ConfigError
from ._base import ApplyContext, StageInfo, Technique, register

__all__ = ["LowRank", "factorize"]


def _rank(in_f: int, out_f: int, amount: float) -> int:
    return max(1, int(round((1.0 - amount) * min(in_f, out_f))))


@torch.no_grad()
def _split(weight: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` (out × in) ≈ ``second @ first`` with first r × in, second out × r."""
    u, s, vh = torch.linalg.svd(weight.detach().float(), full_matrices=False)
    root = s[:r].sqrt()
    return (root[:, None] * vh[:r]).to(weight.dtype), (u[:, :r] * root[None, :]).to(weight.dtype)


def _factor_linear(m: nn.Linear, r: int) -> nn.Sequential:
    first, second = _split(m.weight, r)
    a = nn.Linear(m.in_features, r, bias=False, device=m.weight.device, dtype=m.weight.dtype)
    b = nn.Linear(r, m.out_features, bias=m.bias is not None, device=m.weight.device, dtype=m.weight.dtype)
    with torch.no_grad():
        a.weight.copy_(first)
        b.weight.copy_(second)
        if m.bias is not None and b.bias is not None:
            b.bias.copy_(m.bias)
    return nn.Sequential(a, b)


def _factor_conv1x1(m: nn.Conv2d, r: int) -> nn.Sequential:
    first, second = _split(m.weight.flatten(1), r)
    a = nn.Conv2d(m.in_channels, r, 1, stride=m.stride, padding=m.padding, bias=False,  # type: ignore[arg-type]
                  device=m.weight.device, dtype=m.weight.dtype)
    b = nn.Conv2d(r, m.out_channels, 1, bias=m.bias is not None, device=m.weight.device, dtype=m.weight.dtype)
    with torch.no_grad():
        a.weight.copy_(first[:, :, None, None])
        b.weight.copy_(second[:, :, None, None])
        if m.bias is not None and b.bias is not None:
            b.bias.copy_(m.bias)
    return nn.Sequential(a, b)


def _eligible(m: nn.Module) -> tuple[int, int] | None:
    if type(m) is nn.Linear:
        return m.in_features, m.out_features
    if type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.groups == 1 and m.dilation == (1, 1) \
            and m.padding_mode == "zeros":
        return m.in_channels, m.out_channels
    return None


def factorize(model: nn.Module, amount: float, *, ignored_layers: Sequence[str] = ()
              ) -> tuple[nn.Module, dict[str, Any]]:
    """A factorized copy of ``model`` and ``{"factorized": {name: rank}, "skipped": {name: why}}``.

    ``model`` is left untouched. Raises :class:`ConfigError` for an amount outside [0, 1) or an
    ``ignored_layers`` name that is not a module of the model.
    """
    if not 0.0 <= amount < 1.0:
        raise ConfigError(f"lowrank pruning_amount must be in [0, 1); got {amount!r}")
    names = dict(model.named_modules())
    missing = [n for n in ignored_layers if n not in names]
    if missing:
        raise ConfigError(f"PruningConfig.ignored_layers must name modules of the model; {missing!r} not found")
    out = copy.deepcopy(model)
    factorized: dict[str, int] = {}
    skipped: dict[str, str] = {}
    for name, module in list(out.named_modules()):
        dims = _eligible(module)
        if dims is None or not name:
            continue
        if name in ignored_layers:
            skipped[name] = "in ignored_layers"
            continue
        in_f, out_f = dims
        r = _rank(in_f, out_f, amount)
        if r * (in_f + out_f) >= in_f * out_f:
            skipped[name] = f"rank {r} of {min(in_f, out_f)} is not smaller than dense ({in_f}x{out_f})"
            continue
        new = _factor_linear(module, r) if isinstance(module, nn.Linear) else _factor_conv1x1(module, r)  # type: ignore[arg-type]
        parent_name, _, attr = name.rpartition(".")
        setattr(out.get_submodule(parent_name) if parent_name else out, attr, new)
        factorized[name] = r
    return out, {"factorized": factorized, "skipped": skipped}


@register
class LowRank(Technique):
    """Truncated-SVD factorization of Linear and 1×1 conv layers, with bounded recovery."""

    name = "lowrank"
    stage = "factorize"
    selector = {"pruning_method": "lowrank"}
    uses = ("pruning_amount",)
    options = "pruning"
    columns = ("dense_speedup_expected", "recovery_s")
    export = ("torch.export", "torchscript")
    _USED_OPTIONS: ClassVar[tuple[str, ...]] = (
        "ignored_layers", "recovery_steps", "recovery_seconds", "recovery_loss", "recovery_lr")

    def _apply(self, model: nn.Module, params: Mapping[str, Any], ctx: ApplyContext
               ) -> tuple[nn.Module, StageInfo]:
        from ..pruning import PruningConfig
        from ..structured import _batches, _fidelity, _recover

        amount = float(params["pruning_amount"])
        opts = {k: v for k, v in ctx.options_for(self).items() if k in self._USED_OPTIONS}
        cfg = PruningConfig(method="magnitude", amount=amount, **opts)  # validates the shared options
        teacher = model
        out, info = factorize(model, amount, ignored_layers=cfg.ignored_layers)
        before, after = count_parameters(model)[1], count_parameters(out)[1]
        batches = _batches(ctx.calibration, tuple(ctx.example_inputs))
        with torch.no_grad():
            targets = [teacher(*b) for b in batches]
        score = ctx.evaluate if ctx.evaluate is not None else (lambda m: _fidelity(m, batches, targets))
        acc_before = float(score(out.eval())) if info["factorized"] else None
        steps, seconds = (0, 0.0)
        if info["factorized"]:
            steps, seconds = _recover(out, cfg, batches, targets, ctx.train_step)
        out.eval()
        for p in out.parameters():
            p.requires_grad_(False)
        acc_after = float(score(out)) if steps else acc_before
        changed = bool(info["factorized"])
        details = {
            **info, "method": "lowrank", "requested_amount": amount, "params_before": before,
            "params_after": after, "param_reduction": 1.0 - after / before if before else 0.0,
            "sparsity": None, "dense_speedup_expected": changed, "speedup_expected": changed,
            "recovery_s": seconds, "recovery_steps_done": steps,
            "accuracy_before_recovery": acc_before, "accuracy_after_recovery": acc_after,
        }
        effective = {"pruning_method": "lowrank", "pruning_amount": round(amount, 6)} if changed else {}
        note = "" if changed else "no layer became smaller at this rank"
        return out, StageInfo(self.stage, self.name, changed, effective, details, note)
