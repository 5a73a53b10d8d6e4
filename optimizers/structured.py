"""Structured pruning: physically remove channels, neurons and attention heads.

The returned model is a smaller *dense* model, so every kernel does less work. Three questions are
kept apart, as in Torch-Pruning:

* **what to prune**: a score per channel (``l1``, ``l2`` or ``random``), per head for attention;
* **what is coupled**: Torch-Pruning's ``DependencyGraph`` (Linear->Linear, Conv->BN->Conv,
  residual additions, concatenations, LayerNorm, embeddings), so coupled channels go together;
* **what must not change**: the model's output and input widths. Every layer whose output
  channels reach the model output without passing through another Linear/Conv (the classifier
  head; in a transformer, every writer to the residual stream), or are added to a raw model
  input (``x + f(x)``), keeps its output channels, as do ``config.ignored_layers`` (an ignored
  layer keeps its *outputs*; its inputs still shrink when the layer feeding it is pruned; an
  ignored attention module keeps all its heads).

What "about the requested amount" means: ``amount`` is the fraction of *channels* (or heads)
removed in each prunable group. A weight matrix between two pruned groups loses
``1 - (1 - amount)**2`` of its entries, one next to a kept dimension loses ``amount``, and layers
that are never pruned (embeddings, the head, a protected residual stream) keep theirs. So the
parameter reduction of the pruned layers lies between ``amount`` and ``1 - (1 - amount)**2``;
``info['param_reduction']`` reports the whole-model figure, which can be much lower for a
transformer whose embedding table is large.

Serialising: shapes no longer match the original class's constructor, so ship the whole module
(:func:`save_pruned` / :func:`load_pruned`, which use pickle: only load files you trust) or a
``torch.jit.trace`` of it.

>>> import torch
>>> from optimizers.pruning import PruningConfig
>>> m = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
>>> small, info = structured_prune(m, PruningConfig(method="structured", amount=0.5),
...                                example_inputs=(torch.randn(4, 8),))
>>> small[0].out_features, info["layer_shapes"]
(16, {'0': 16})
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from ._structured_attention import (
    AttentionSite,
    HeadPrunedMultiheadAttention,
    find_attention_sites,
    head_scores,
    prune_heads,
)
from ._utils import count_parameters
from .artifact import flat_tensors
from .errors import ConfigError, UnsupportedArchitectureError

if TYPE_CHECKING:
    from .pruning import PruningConfig, TrainStep

__all__ = ["HeadPrunedMultiheadAttention", "load_pruned", "save_pruned", "structured_prune"]

Inputs = tuple[torch.Tensor, ...]


def structured_prune(
    model: nn.Module,
    config: PruningConfig,
    *,
    example_inputs: Inputs | None,
    calibration_data: Iterable[Inputs] | None = None,
    train_step: TrainStep | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Return ``(smaller_model, info)``; ``model`` is left untouched.

    Args:
        model: the trained model.
        config: ``amount``, ``importance``, ``global_pruning``, ``layer_amounts`` (module name ->
            amount; an attention module name sets its head amount), ``ignored_layers``,
            ``round_to``, ``seed`` and the ``recovery_*`` fields are used.
        example_inputs: tuple of tensors, traced to build the dependency graph and used to check
            that the pruned model's outputs keep their shapes.
        calibration_data: input tuples for label-free recovery (distillation from the original)
            and for the fidelity score; ``example_inputs`` is used when absent.
        train_step: ``(model, optimizer, step)``: supervised recovery instead of distillation.
        evaluate: ``(model) -> float``; recorded before and after recovery. Without it the
            score is fidelity: mean cosine similarity of outputs to the original's.

    Raises:
        ConfigError: missing ``example_inputs`` or a module name in the config that does not exist.
        UnsupportedArchitectureError: a layer the graph cannot prune consistently (named), or a
            pruned model whose forward fails or whose output shapes changed.
    """
    inputs = _check_inputs(example_inputs)
    modules = dict(model.named_modules())
    for field, names in (("ignored_layers", config.ignored_layers),
                         ("layer_amounts", tuple(config.layer_amounts or {}))):
        missing = [n for n in names if n not in modules or n == ""]
        if missing:
            raise ConfigError(f"PruningConfig.{field} must name modules of the model; "
                              f"{missing!r} not found (e.g. {list(modules)[1:6]!r})")

    teacher = copy.deepcopy(model).eval()
    with torch.no_grad():
        ref_out = teacher(*inputs)
    ref_shapes = _shapes(ref_out)
    pruned = copy.deepcopy(model).eval()
    for p in pruned.parameters():  # the graph is traced through autograd
        if p.is_floating_point():
            p.requires_grad_(True)
    before = count_parameters(pruned)[1]
    original_dims = _out_dims(pruned)

    pruned_heads, sites = _prune_all_heads(pruned, config)
    _prune_channels(pruned, config, inputs, sites)
    pruned.eval()
    _verify(pruned, inputs, ref_shapes)

    batches = _batches(calibration_data, inputs)
    with torch.no_grad():
        targets = [teacher(*b) for b in batches]
    score = evaluate if evaluate is not None else (lambda m: _fidelity(m, batches, targets))
    acc_before = float(score(pruned))
    steps, seconds = _recover(pruned, config, batches, targets, train_step)
    pruned.eval()
    acc_after = float(score(pruned)) if steps else acc_before
    _verify(pruned, inputs, ref_shapes)

    after = count_parameters(pruned)[1]
    new_dims = _out_dims(pruned)
    info: dict[str, Any] = {
        "method": "structured",
        "requested_amount": config.amount,
        "params_before": before,
        "params_after": after,
        "param_reduction": 1.0 - after / before if before else 0.0,
        "layer_shapes": {n: d for n, d in new_dims.items() if original_dims.get(n) != d},
        "dense_shapes_unchanged": False,
        "speedup_expected": True,
        "recovery_s": seconds,
        "recovery_steps_done": steps,
        "accuracy_before_recovery": acc_before,
        "accuracy_after_recovery": acc_after,
        "accuracy_metric": "evaluate" if evaluate is not None else "fidelity_cosine",
    }
    if pruned_heads:
        info["pruned_heads"] = pruned_heads
    return pruned, info


def save_pruned(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Write the whole pruned module (structure and weights) atomically.

    >>> import torch, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "m.pt")
    >>> save_pruned(torch.nn.Linear(2, 3), p)
    >>> load_pruned(p, trusted=True).out_features
    3
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(model, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_pruned(path: str | os.PathLike[str], map_location: str | torch.device | None = None, *,
                trusted: bool = False) -> nn.Module:
    """Load a module written by :func:`save_pruned`.

    A pruned model has shapes no class in your code describes, so it is stored as a pickled
    module, and unpickling runs code. The secure default is ``torch.load(weights_only=True)``,
    which cannot load it: pass ``trusted=True`` for files you wrote yourself, or ship a
    ``torch.export``/TorchScript artifact (``optsweep export``), which needs no pickle.
    """
    if not trusted:
        raise ConfigError(
            "load_pruned.trusted must be True: the file is a pickled module and loading it runs code; "
            "only load files you trust, or use an `optsweep export` artifact"
        )
    model = torch.load(path, map_location=map_location, weights_only=False)  # trusted=True: caller vouches
    if not isinstance(model, nn.Module):
        raise TypeError(f"{os.fspath(path)!r} does not hold an nn.Module; got {type(model).__name__}")
    return model.eval()


# --------------------------------------------------------------------------- validation


def _check_inputs(example_inputs: Any) -> Inputs:
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if (not isinstance(example_inputs, (tuple, list)) or not example_inputs
            or not all(isinstance(t, torch.Tensor) for t in example_inputs)):
        raise ConfigError("structured pruning requires example_inputs: a non-empty tuple of "
                          f"tensors to trace the model with; got {type(example_inputs).__name__}")
    return tuple(example_inputs)


# --------------------------------------------------------------------------- heads


def _amount_for(name: str, config: PruningConfig) -> float:
    return float((config.layer_amounts or {}).get(name, config.amount))


def _heads_to_keep(n: int, head_dim: int, amount: float, round_to: int | None) -> int:
    keep = max(1, n - int(round(amount * n)))
    # round_to counts channels: grow the kept heads until their width is a multiple, if possible.
    while round_to and (keep * head_dim) % round_to and keep < n:
        keep += 1
    return keep


def _prune_all_heads(model: nn.Module, config: PruningConfig
                     ) -> tuple[dict[str, list[int]], list[AttentionSite]]:
    sites, _ = find_attention_sites(model, skip=set(config.ignored_layers))
    gen = torch.Generator().manual_seed(config.seed)
    p = 2 if config.importance == "l2" else 1
    scores = {s.name: head_scores(s, config.importance, p, gen) for s in sites}
    removal: dict[str, list[int]] = {}
    if config.global_pruning:
        local = {s.name for s in sites if s.name in (config.layer_amounts or {})}
        pool = [(float(v), s.name, h) for s in sites if s.name not in local
                for h, v in enumerate(scores[s.name])]
        n_remove = int(round(config.amount * len(pool)))
        left = {s.name: s.num_heads for s in sites}
        for _, name, h in sorted(pool):
            if n_remove == 0:
                break
            if left[name] > 1:  # never remove a layer's last head
                removal.setdefault(name, []).append(h)
                left[name] -= 1
                n_remove -= 1
        global_sites = [s for s in sites if s.name not in local]
    else:
        global_sites = []
    for s in sites:
        if s in global_sites:
            keep = s.num_heads - len(removal.get(s.name, []))
            keep = _heads_to_keep(s.num_heads, s.head_dim, 1 - keep / s.num_heads, config.round_to)
        else:
            keep = _heads_to_keep(s.num_heads, s.head_dim, _amount_for(s.name, config),
                                  config.round_to)
        order = torch.argsort(scores[s.name]).tolist()
        removal[s.name] = sorted(order[: s.num_heads - keep])
    done: dict[str, list[int]] = {}
    for s in sites:
        if removal.get(s.name):
            prune_heads(s, removal[s.name])
            done[s.name] = removal[s.name]
    return done, sites


# --------------------------------------------------------------------------- channels


def _protected_modules(dg: Any, leaves: Inputs) -> list[nn.Module]:
    """Layers whose output channels are tied to the model's outputs or inputs.

    Output side: walk back from the graph's terminal nodes through channel-preserving ops (add,
    activation, flatten, norm...) to the first Linear/Conv/Embedding: the classifier head, or
    every writer to a transformer's residual stream. Input side: an op that mixes a raw model
    input with a layer's output (``x + f(x)``) ties that layer's channels to the input width,
    which the graph does not see, since the input is not a module.
    """
    from torch_pruning import ops

    stop = {ops.OPTYPE.CONV, ops.OPTYPE.LINEAR, ops.OPTYPE.EMBED, ops.OPTYPE.MHA,
            ops.OPTYPE.LSTM, ops.OPTYPE.DEPTHWISE_CONV, ops.OPTYPE.PARAMETER}
    nodes = list(dg.module2node.values())
    leaf_ids = {id(t) for t in leaves}

    def reads_input(node: Any) -> bool:
        nexts = getattr(node.grad_fn, "next_functions", ()) or ()
        return any(f is not None and id(getattr(f, "variable", None)) in leaf_ids
                   for f, _ in nexts)

    # Nodes whose channels are those of a model input: its direct consumers and what follows
    # them through channel-preserving ops.
    seeds = [n for n in nodes if n.type not in stop and reads_input(n)]
    tied: dict[int, Any] = {}
    while seeds:
        node = seeds.pop()
        if id(node) in tied or node.type in stop:
            continue
        tied[id(node)] = node
        seeds.extend(node.outputs)
    stack = [n for n in nodes if not n.outputs] + list(tied.values())
    seen: set[int] = set()
    found: list[nn.Module] = []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.type in stop:
            if isinstance(node.module, nn.Module):
                found.append(node.module)
            continue
        stack.extend(node.inputs)
    return found


def _prune_channels(model: nn.Module, config: PruningConfig, inputs: Inputs,
                    sites: list[AttentionSite]) -> None:
    import torch_pruning as tp

    modules = dict(model.named_modules())
    names = {id(m): n for n, m in modules.items()}
    # The head dimension belongs to the head pass: keep the graph off q/k/v output channels.
    ignored: list[nn.Module] = [modules[n] for n in config.ignored_layers]
    for s in sites:
        ignored += [s.q, s.k, s.v]
    owner_ignored = {id(p) for m in ignored for p in m.parameters()}

    # Float inputs require grad so the trace shows where they meet layer outputs.
    leaves = tuple(t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs)
    try:
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=leaves)
    except Exception as exc:  # noqa: BLE001 - whatever the tracer trips on is unsupported
        raise UnsupportedArchitectureError(
            f"structured pruning could not trace the model: {type(exc).__name__}: {exc}"
        ) from exc
    param_names = {id(p): n for n, p in model.named_parameters()}
    for up in dg.unwrapped_parameters:
        if id(up.parameters) not in owner_ignored:
            pname = param_names.get(id(up.parameters), "?")
            layer = pname.rpartition(".")[0] or "<root>"
            raise UnsupportedArchitectureError(
                f"structured pruning cannot handle layer {layer!r}: raw nn.Parameter {pname!r} "
                f"(shape {tuple(up.parameters.shape)}) is used outside a standard layer, so its "
                f"coupling to other channels is unknown; add {layer!r} to "
                "PruningConfig.ignored_layers only if it does not touch pruned channels")
    ignored += _protected_modules(dg, leaves)
    if config.amount == 0 and not any((config.layer_amounts or {}).values()):
        return

    if config.importance == "random":
        importance: Any = tp.importance.RandomImportance()
    else:
        importance = tp.importance.MagnitudeImportance(p=1 if config.importance == "l1" else 2)
    ratio_dict = {modules[n]: a for n, a in (config.layer_amounts or {}).items()
                  if isinstance(modules[n], (nn.Linear, nn.modules.conv._ConvNd))}
    ignored_params = [p for m in ignored for p in m.parameters()
                      if any(p is up.parameters for up in dg.unwrapped_parameters)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        try:
            pruner = tp.pruner.BasePruner(
                model, inputs, importance=importance, global_pruning=config.global_pruning,
                pruning_ratio=config.amount, pruning_ratio_dict=ratio_dict or None,
                ignored_layers=ignored + ignored_params, round_to=config.round_to,
            )
            groups = pruner.step(interactive=True)
            assert groups is not None
            for group in groups:
                root = group[0][0].target.module
                try:
                    group.prune()
                except Exception as exc:  # noqa: BLE001
                    raise UnsupportedArchitectureError(
                        f"structured pruning failed on layer {names.get(id(root), root)!r}: "
                        f"{type(exc).__name__}: {exc}") from exc
        except UnsupportedArchitectureError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise UnsupportedArchitectureError(
                f"structured pruning failed: {type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------- verification


def _tensors(out: Any) -> list[torch.Tensor]:
    return flat_tensors(out)


def _shapes(out: Any) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in _tensors(out)]


def _failing_module(model: nn.Module, inputs: Inputs) -> tuple[str, BaseException | None]:
    """Run forward with hooks; return the innermost module that raised, and the error."""
    stack: list[str] = []
    handles = []

    def enter(name: str) -> Callable[..., None]:
        return lambda *_: stack.append(name)

    def leave(*_: Any) -> None:
        stack.pop()  # hooks must return None, or they would replace the module's output

    for name, m in model.named_modules():
        handles.append(m.register_forward_pre_hook(enter(name)))
        handles.append(m.register_forward_hook(leave))
    try:
        with torch.no_grad():
            model(*inputs)
        return "", None
    except Exception as exc:  # noqa: BLE001
        return (stack[-1] if stack else "") or "<root>", exc
    finally:
        for h in handles:
            h.remove()


def _verify(model: nn.Module, inputs: Inputs, ref_shapes: list[tuple[int, ...]]) -> None:
    layer, exc = _failing_module(model, inputs)
    if exc is not None:
        raise UnsupportedArchitectureError(
            f"the pruned model fails in layer {layer!r}: {type(exc).__name__}: {exc}") from exc
    with torch.no_grad():
        shapes = _shapes(model(*inputs))
    if shapes != ref_shapes:
        raise UnsupportedArchitectureError(
            f"pruning changed the output shapes from {ref_shapes} to {shapes}; a layer feeding "
            "the output was pruned: add it to PruningConfig.ignored_layers")


# --------------------------------------------------------------------------- recovery


def _batches(data: Iterable[Any] | None, inputs: Inputs) -> list[Inputs]:
    if data is None:
        return [inputs]
    out = [(b,) if isinstance(b, torch.Tensor) else tuple(b) for b in data]
    return out or [inputs]


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.float(), b.float()
    if a.dim() == 0:
        return 1 - (a - b).abs() / (a.abs() + b.abs()).clamp_min(1e-12)
    n = a.shape[0] if a.dim() > 1 else 1
    return F.cosine_similarity(a.reshape(n, -1), b.reshape(n, -1), dim=-1, eps=1e-8)


@torch.no_grad()
def _fidelity(model: nn.Module, batches: list[Inputs], targets: list[Any]) -> float:
    model.eval()
    sims = [_cosine(o, t).mean() for b, tgt in zip(batches, targets, strict=True)
            for o, t in zip(_tensors(model(*b)), _tensors(tgt), strict=True)
            if o.is_floating_point()]
    return float(torch.stack(sims).mean()) if sims else float("nan")


def _distill_loss(out: Any, target: Any, kind: str) -> torch.Tensor:
    losses = []
    for o, t in zip(_tensors(out), _tensors(target), strict=True):
        if not o.is_floating_point():
            continue
        losses.append(F.mse_loss(o.float(), t.float()) if kind == "mse"
                      else (1 - _cosine(o, t)).mean())
    if not losses:
        raise UnsupportedArchitectureError(
            "distillation needs floating-point outputs; pass train_step for recovery")
    return torch.stack(losses).mean()


def _recover(model: nn.Module, config: PruningConfig, batches: list[Inputs],
             targets: list[Any], train_step: TrainStep | None) -> tuple[int, float]:
    max_steps = config.recovery_steps or math.inf  # 0 with a time bound: unlimited steps
    max_s = config.recovery_seconds if config.recovery_seconds is not None else math.inf
    if config.recovery_steps == 0 and config.recovery_seconds is None:
        return 0, 0.0
    for p in model.parameters():
        if p.is_floating_point():
            p.requires_grad_(True)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                           lr=config.recovery_lr)
    model.train()
    steps = 0
    start = time.perf_counter()
    while steps < max_steps and time.perf_counter() - start < max_s:
        if train_step is not None:
            train_step(model, opt, steps)
        else:
            i = steps % len(batches)
            opt.zero_grad()
            _distill_loss(model(*batches[i]), targets[i], config.recovery_loss).backward()
            opt.step()
        steps += 1
    return steps, time.perf_counter() - start


def _out_dims(model: nn.Module) -> dict[str, int]:
    dims: dict[str, int] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            dims[name] = m.out_features
        elif isinstance(m, nn.modules.conv._ConvNd):
            dims[name] = m.out_channels
        elif isinstance(m, nn.Embedding):
            dims[name] = m.embedding_dim
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            dims[name] = m.num_features
        elif isinstance(m, nn.LayerNorm):
            dims[name] = int(m.normalized_shape[-1])
    return dims
