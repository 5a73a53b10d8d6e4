"""Pruning: unstructured masks made permanent, and structured pruning that removes channels.

Unstructured pruning (``magnitude``, ``random``, ``global_magnitude``) zeroes weights but keeps
dense shapes: it shrinks the *compressed* size and gives **no speedup** on dense kernels, and
``get_pruning_info()['dense_shapes_unchanged']`` says so. ``structured`` removes whole output
channels, neurons and attention heads, so the model is really smaller and faster.

>>> import torch
>>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
>>> pruned = ModelPruner(model, PruningConfig(method="magnitude", amount=0.5)).prune_model()
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from ._utils import clone_model, count_parameters
from .errors import ConfigError, check_choice, check_range

PRUNING_METHODS = ("magnitude", "random", "global_magnitude", "structured")  # built into ModelPruner


def pruning_methods() -> tuple[str, ...]:
    """Every registered pruning/factorization method (the registry is the source of truth)."""
    from .techniques import REGISTRY

    return tuple(c for c in REGISTRY.choices("pruning_method") if c != "none")
IMPORTANCE = ("l1", "l2", "random")
RECOVERY_LOSSES = ("mse", "cosine")
_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_MHA_ALIASES = {"weight": ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")}


@dataclass(frozen=True)
class PruningConfig:
    """What to prune and how much.

    Attributes:
        method: ``magnitude`` (per-layer L1), ``random``, ``global_magnitude`` (one threshold
            across layers) or ``structured`` (removes channels/neurons/heads).
        amount: fraction in [0, 1) of weights (unstructured) or channels (structured) to remove.
        pruning_dims: parameter names to prune on each layer (unstructured).
        n_iterations: steps of the iterative schedule that together reach ``amount``.
        importance: channel score for ``structured``: ``l1``, ``l2`` or ``random``.
        global_pruning: structured: rank channels across layers instead of per layer.
        layer_amounts: structured: per-layer overrides, ``{"module.name": amount}``.
        ignored_layers: module names never pruned (the classifier head is always kept).
        round_to: structured: keep channel counts a multiple of this, for efficient kernels.
        recovery_steps / recovery_seconds: bound on recovery fine-tuning (0 / None: none).
        recovery_loss: ``mse`` or ``cosine`` for label-free distillation from the original.
        recovery_lr: learning rate of the recovery optimizer (Adam).
        seed: seed for ``random`` importance and ``random`` pruning.

    >>> PruningConfig(method="structured", amount=0.5, round_to=8)  # doctest: +ELLIPSIS
    PruningConfig(method='structured', amount=0.5, ...)
    """

    method: str = "magnitude"
    amount: float = 0.3
    pruning_dims: tuple[str, ...] = ("weight",)
    n_iterations: int = 3
    importance: str = "l1"
    global_pruning: bool = False
    layer_amounts: Mapping[str, float] | None = None
    ignored_layers: tuple[str, ...] = ()
    round_to: int | None = None
    recovery_steps: int = 0
    recovery_seconds: float | None = None
    recovery_loss: str = "mse"
    recovery_lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        owner = "PruningConfig"
        check_choice(owner, "method", self.method, pruning_methods())
        check_range(owner, "amount", self.amount, 0.0, 1.0)
        if isinstance(self.pruning_dims, str) or not all(isinstance(d, str) for d in self.pruning_dims):
            raise ConfigError(f"{owner}.pruning_dims must be a list of parameter names; got {self.pruning_dims!r}")
        object.__setattr__(self, "pruning_dims", tuple(self.pruning_dims))
        object.__setattr__(self, "ignored_layers", tuple(self.ignored_layers))
        if not isinstance(self.n_iterations, int) or isinstance(self.n_iterations, bool) or self.n_iterations < 1:
            raise ConfigError(f"{owner}.n_iterations must be an integer >= 1; got {self.n_iterations!r}")
        check_choice(owner, "importance", self.importance, IMPORTANCE)
        check_choice(owner, "recovery_loss", self.recovery_loss, RECOVERY_LOSSES)
        for name, amt in (self.layer_amounts or {}).items():
            check_range(owner, f"layer_amounts[{name!r}]", amt, 0.0, 1.0)
        if self.round_to is not None and (not isinstance(self.round_to, int) or self.round_to < 1):
            raise ConfigError(f"{owner}.round_to must be a positive integer or None; got {self.round_to!r}")
        if not isinstance(self.recovery_steps, int) or self.recovery_steps < 0:
            raise ConfigError(f"{owner}.recovery_steps must be an integer >= 0; got {self.recovery_steps!r}")
        if self.recovery_seconds is not None and not (
            isinstance(self.recovery_seconds, (int, float)) and self.recovery_seconds >= 0
        ):
            raise ConfigError(f"{owner}.recovery_seconds must be >= 0 or None; got {self.recovery_seconds!r}")
        if not (isinstance(self.recovery_lr, (int, float)) and self.recovery_lr > 0):
            raise ConfigError(f"{owner}.recovery_lr must be > 0; got {self.recovery_lr!r}")


TrainStep = Callable[[nn.Module, torch.optim.Optimizer, int], Any]


class ModelPruner:
    """Apply a :class:`PruningConfig` to a copy of ``model``.

    Args:
        model: the trained model; never modified.
        config: the pruning config.
        example_inputs: a tuple of tensors; ``structured`` traces the dependency graph on it.
        calibration_data: iterable of input tuples for label-free recovery (distillation).
        train_step: ``(model, optimizer, step) -> loss`` used for recovery instead of distillation.
        evaluate: ``(model) -> float``; when given, accuracy before/after recovery is recorded.

    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 4))
    >>> pruner = ModelPruner(m, PruningConfig(amount=0.5))
    >>> pruner.prune_model() is not m
    True
    """

    def __init__(
        self,
        model: nn.Module,
        config: PruningConfig | None = None,
        *,
        example_inputs: tuple[torch.Tensor, ...] | None = None,
        calibration_data: Iterable[tuple[torch.Tensor, ...]] | None = None,
        train_step: TrainStep | None = None,
        evaluate: Callable[[nn.Module], float] | None = None,
    ) -> None:
        self.model = model
        self.config = config or PruningConfig()
        self.example_inputs = example_inputs
        self.calibration_data = calibration_data
        self.train_step = train_step
        self.evaluate = evaluate
        self.pruned_model: nn.Module | None = None
        self._info: dict[str, Any] = {}

    def prune_model(self) -> nn.Module:
        """Return a pruned copy of the model. The input model is left untouched."""
        cfg = self.config
        if cfg.method not in PRUNING_METHODS:  # a registered plug-in (e.g. lowrank): delegate
            return self._prune_registered()
        if cfg.method == "structured":
            from .structured import structured_prune

            pruned, info = structured_prune(
                self.model,
                cfg,
                example_inputs=self.example_inputs,
                calibration_data=self.calibration_data,
                train_step=self.train_step,
                evaluate=self.evaluate,
            )
        else:
            pruned = clone_model(self.model)
            targets = self._targets(pruned)
            if cfg.amount > 0 and targets:
                self._apply_unstructured(targets)
            info = {"method": cfg.method, "requested_amount": cfg.amount,
                    "dense_shapes_unchanged": True,
                    "speedup_expected": False,
                    "note": "masked pruning keeps dense shapes: no speedup on dense kernels"}
        self.pruned_model = pruned
        self._info = {**info, **self._measure(pruned)}
        return pruned

    def _prune_registered(self) -> nn.Module:
        from dataclasses import asdict

        from .techniques import REGISTRY, ApplyContext

        tech = REGISTRY.selected_by("pruning_method", self.config.method)[0]
        opts = {k: v for k, v in asdict(self.config).items() if k not in ("method", "amount")}
        ctx = ApplyContext(example_inputs=tuple(self.example_inputs or ()),
                           calibration=[tuple(b) for b in self.calibration_data] if self.calibration_data else None,
                           options={"pruning": opts}, evaluate=self.evaluate, train_step=self.train_step)
        pruned, stage = tech.apply(self.model, {"pruning_method": self.config.method,
                                                "pruning_amount": self.config.amount}, ctx)
        self.pruned_model = pruned
        self._info = {**stage.details, **self._measure(pruned)}
        return pruned

    def _targets(self, model: nn.Module) -> list[tuple[nn.Module, str, str]]:
        ignored = set(self.config.ignored_layers)
        out = []
        for name, module in model.named_modules():
            if name in ignored:
                continue
            if isinstance(module, _PRUNABLE):
                dims: tuple[str, ...] = self.config.pruning_dims
            elif isinstance(module, nn.MultiheadAttention):
                # MHA keeps its q/k/v projection as a raw parameter, not an nn.Linear: map
                # "weight" onto it so attention is pruned like every other projection.
                dims = tuple(d for p in self.config.pruning_dims for d in _MHA_ALIASES.get(p, (p,)))
            else:
                continue
            for dim in dims:
                if isinstance(getattr(module, dim, None), nn.Parameter):
                    out.append((module, dim, name))
        return out

    def _apply_unstructured(self, targets: list[tuple[nn.Module, str, str]]) -> None:
        cfg = self.config
        # Each step prunes a fraction of what remains; n steps compose to exactly `amount`.
        step_amount = 1.0 - (1.0 - cfg.amount) ** (1.0 / cfg.n_iterations)
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(cfg.seed)
        try:
            for _ in range(cfg.n_iterations):
                if cfg.method == "global_magnitude":
                    prune.global_unstructured(
                        [(m, d) for m, d, _ in targets],
                        pruning_method=prune.L1Unstructured,
                        amount=step_amount,
                    )
                else:
                    fn = prune.l1_unstructured if cfg.method == "magnitude" else prune.random_unstructured
                    for module, dim, _ in targets:
                        fn(module, name=dim, amount=step_amount)
        finally:
            torch.random.set_rng_state(gen_state)
        for module, dim, _ in targets:
            prune.remove(module, dim)  # bake the mask in: a plain module that serializes

    def _measure(self, model: nn.Module) -> dict[str, Any]:
        per_layer: dict[str, float] = {}
        zeros = total = 0
        for module, dim, name in self._targets(model):
            w = getattr(module, dim).detach()
            z = int((w == 0).sum())
            per_layer[f"{name}.{dim}" if name else dim] = z / max(w.numel(), 1)
            zeros += z
            total += w.numel()
        nonzero, all_params = count_parameters(model)
        _, original_params = count_parameters(self.model)
        return {
            "final_sparsity": zeros / total if total else 0.0,
            "layer_sparsity": per_layer,
            "nonzero_params": nonzero,
            "total_params": all_params,
            "original_params": original_params,
            "model_sparsity": 1.0 - nonzero / all_params if all_params else 0.0,
        }

    def get_pruning_info(self) -> dict[str, Any]:
        """Sparsity measured from the weights, per layer, and parameter counts.

        Keys: ``final_sparsity``, ``layer_sparsity``, ``nonzero_params``, ``total_params``,
        ``original_params``, ``model_sparsity``, plus method-specific entries (structured:
        ``recovery_s``, ``accuracy_before_recovery``, ``accuracy_after_recovery``...).
        """
        if self.pruned_model is None:
            raise RuntimeError("call prune_model() before get_pruning_info()")
        return dict(self._info)
