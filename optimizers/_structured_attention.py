"""Whole-head pruning for attention layers, kept apart from the channel dependency graph.

A head is a unit that spans four layers (rows of the query, key and value projections and the
matching columns of the output projection). Torch-Pruning's graph does not model
``nn.MultiheadAttention`` heads (it can only shrink ``embed_dim``, which is the residual stream),
so heads are removed here, before the graph prunes everything else, and the query/key/value
projections are then kept out of the graph's reach.

Two layouts are recognised:

* ``nn.MultiheadAttention`` (plain, no ``bias_k``/``add_zero_attn``): replaced by
  :class:`HeadPrunedMultiheadAttention`, a drop-in with the same call signature whose inner
  width (``num_heads * head_dim``) may differ from ``embed_dim``.
* Hugging Face BERT-style self-attention: a module with ``query``/``key``/``value`` linears and
  ``num_attention_heads``/``attention_head_size``/``all_head_size``, whose parent holds the output
  projection at ``output.dense``. transformers 5.x reshapes with ``view(..., -1, head_size)``, so
  keeping ``attention_head_size`` and updating the head count and ``all_head_size`` is enough.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


class HeadPrunedMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with separate projections, so heads can be removed.

    Same forward signature and return value as ``nn.MultiheadAttention``. ``kept_heads`` lists the
    original head indices still present (a 3-D ``attn_mask`` is given per original head).

    >>> mha = nn.MultiheadAttention(16, 4, batch_first=True)
    >>> pruned = HeadPrunedMultiheadAttention.from_mha(mha)
    >>> x = torch.randn(2, 3, 16)
    >>> torch.allclose(pruned(x, x, x)[0], mha(x, x, x)[0], atol=1e-5)
    True
    """

    # Read by nn.TransformerEncoderLayer: False keeps it off its fused fast path, which assumes a
    # packed in_proj_weight.
    _qkv_same_embed_dim = False
    in_proj_weight = None
    in_proj_bias = None

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, *, kdim: int, vdim: int,
                 bias: bool, dropout: float, batch_first: bool) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.dropout = dropout
        self.batch_first = batch_first
        self.original_num_heads = num_heads
        self.kept_heads: list[int] = list(range(num_heads))
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(kdim, inner, bias=bias)
        self.v_proj = nn.Linear(vdim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> HeadPrunedMultiheadAttention:
        """Copy the weights of ``mha``; the result computes the same function."""
        bias = mha.in_proj_bias is not None
        new = cls(mha.embed_dim, mha.num_heads, mha.head_dim, kdim=mha.kdim, vdim=mha.vdim,
                  bias=bias, dropout=mha.dropout, batch_first=mha.batch_first)
        e = mha.embed_dim
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                assert mha.in_proj_weight is not None
                wq, wk, wv = mha.in_proj_weight.split(e, dim=0)
            else:
                wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
            for lin, w in ((new.q_proj, wq), (new.k_proj, wk), (new.v_proj, wv)):
                lin.weight.copy_(w)
            if bias:
                assert mha.in_proj_bias is not None
                for lin, b in zip((new.q_proj, new.k_proj, new.v_proj),
                                  mha.in_proj_bias.split(e), strict=True):
                    lin.bias.copy_(b)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None and new.out_proj.bias is not None:
                new.out_proj.bias.copy_(mha.out_proj.bias)
        return new.to(mha.out_proj.weight.device, mha.out_proj.weight.dtype).train(mha.training)

    def _mask(self, attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None,
              bsz: int, tgt: int, src: int, dtype: torch.dtype,
              is_causal: bool) -> torch.Tensor | None:
        mask: torch.Tensor | None = None
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(tgt, src, dtype=torch.bool).triu(1)
        if attn_mask is not None:
            m = _additive(attn_mask, dtype)
            if m.dim() == 3:  # (bsz * original_heads, tgt, src)
                m = m.view(bsz, self.original_num_heads, tgt, src)[:, self.kept_heads]
            mask = m
        if key_padding_mask is not None:
            kp = _additive(key_padding_mask, dtype).view(bsz, 1, 1, src)
            mask = kp if mask is None else mask + kp
        return mask

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Same contract as :meth:`torch.nn.MultiheadAttention.forward`."""
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first or unbatched:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        bsz, tgt, _ = query.shape
        src = key.shape[1]
        h, d = self.num_heads, self.head_dim
        q = self.q_proj(query).view(bsz, tgt, h, d).transpose(1, 2)
        k = self.k_proj(key).view(bsz, src, h, d).transpose(1, 2)
        v = self.v_proj(value).view(bsz, src, h, d).transpose(1, 2)
        mask = self._mask(attn_mask, key_padding_mask, bsz, tgt, src, q.dtype, is_causal)
        dropout = self.dropout if self.training else 0.0
        weights: torch.Tensor | None = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(d)
            if mask is not None:
                scores = scores + mask
            weights = scores.softmax(dim=-1)
            out = F.dropout(weights, dropout, self.training) @ v
            if average_attn_weights:
                weights = weights.mean(dim=1)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        out = self.out_proj(out.transpose(1, 2).reshape(bsz, tgt, h * d))
        if not self.batch_first or unbatched:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1)
            if weights is not None:
                weights = weights.squeeze(0)
        return out, weights


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            mask, float("-inf"))
    return mask.to(dtype)


@dataclass
class AttentionSite:
    """One attention layer whose heads can be removed as units."""

    name: str
    num_heads: int
    head_dim: int
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    set_heads: Callable[[list[int]], None]


def _bert_site(name: str, module: nn.Module, modules: dict[str, nn.Module]) -> AttentionSite | None:
    parent = modules.get(name.rpartition(".")[0]) if "." in name else None
    out = getattr(getattr(parent, "output", None), "dense", None)
    q, k, v = (getattr(module, a, None) for a in ("query", "key", "value"))
    n, d = int(getattr(module, "num_attention_heads")), int(getattr(module, "attention_head_size"))  # noqa: B009
    if not (isinstance(out, nn.Linear) and all(isinstance(t, nn.Linear) for t in (q, k, v))):
        return None
    assert isinstance(q, nn.Linear) and isinstance(k, nn.Linear) and isinstance(v, nn.Linear)
    if q.out_features != n * d or out.in_features != n * d:
        return None

    def set_heads(kept: list[int]) -> None:
        setattr(module, "num_attention_heads", len(kept))  # noqa: B010
        setattr(module, "all_head_size", len(kept) * d)  # noqa: B010
        pruned = getattr(module, "pruned_heads", None)
        if isinstance(pruned, set):
            pruned.update(set(range(n)) - set(kept))

    return AttentionSite(name, n, d, q, k, v, out, set_heads)


def find_attention_sites(model: nn.Module, skip: set[str]) -> tuple[list[AttentionSite], list[str]]:
    """Attention layers in ``model`` whose heads can be pruned; MHA modules are converted in place.

    Returns the sites and the names of attention layers recognised but left alone (unsupported
    options such as ``bias_k``); the caller keeps those out of the graph.
    """
    modules = dict(model.named_modules())
    sites: list[AttentionSite] = []
    left_alone: list[str] = []
    for name, module in list(modules.items()):
        if name in skip:
            continue
        if isinstance(module, nn.MultiheadAttention):
            if module.bias_k is not None or module.add_zero_attn:
                left_alone.append(name)
                continue
            new = HeadPrunedMultiheadAttention.from_mha(module)
            parent_name, _, attr = name.rpartition(".")
            setattr(modules[parent_name] if parent_name else model, attr, new)
            sites.append(_mha_site(name, new))
        elif hasattr(module, "num_attention_heads") and hasattr(module, "attention_head_size"):
            site = _bert_site(name, module, modules)
            if site is None:
                left_alone.append(name)
            else:
                sites.append(site)
    return sites, left_alone


def _mha_site(name: str, m: HeadPrunedMultiheadAttention) -> AttentionSite:
    def set_heads(kept: list[int]) -> None:
        m.kept_heads = [m.kept_heads[i] for i in kept]
        m.num_heads = len(kept)

    return AttentionSite(name, m.num_heads, m.head_dim, m.q_proj, m.k_proj, m.v_proj,
                         m.out_proj, set_heads)


def head_scores(site: AttentionSite, importance: str, p: int,
                generator: torch.Generator) -> torch.Tensor:
    """One score per head: mean over q, k, v, o of the head's normalized ``|w|^p`` mass."""
    n, d = site.num_heads, site.head_dim
    if importance == "random":
        return torch.rand(n, generator=generator)
    with torch.no_grad():
        parts = [lin.weight.detach().float().abs().pow(p).reshape(n, d, -1).sum(dim=(1, 2))
                 for lin in (site.q, site.k, site.v)]
        parts.append(site.o.weight.detach().float().abs().pow(p)
                     .reshape(-1, n, d).sum(dim=(0, 2)))
        # Normalise per layer so no projection dominates the ranking by its scale alone.
        return torch.stack([s / s.mean().clamp_min(1e-12) for s in parts]).mean(dim=0)


def prune_heads(site: AttentionSite, remove: list[int]) -> list[int]:
    """Remove heads ``remove`` (indices into the current heads); return the kept ones."""
    kept = [h for h in range(site.num_heads) if h not in set(remove)]
    d = site.head_dim
    rows = torch.tensor([h * d + j for h in kept for j in range(d)], dtype=torch.long)
    with torch.no_grad():
        for lin in (site.q, site.k, site.v):
            lin.weight = nn.Parameter(lin.weight.detach()[rows].clone())
            if lin.bias is not None:
                lin.bias = nn.Parameter(lin.bias.detach()[rows].clone())
            lin.out_features = len(rows)
        site.o.weight = nn.Parameter(site.o.weight.detach()[:, rows].clone())
        site.o.in_features = len(rows)
    site.set_heads(kept)
    site.num_heads = len(kept)
    return kept
