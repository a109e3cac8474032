"""Attention-head and FFN-neuron pruning for Hugging Face BERT / GPT-2 / ViT style transformers.

Both functions physically slice the Linear (or GPT-2 ``Conv1D``) modules in place, so the model gets
smaller and faster, and update the attention modules' head-count attributes so ``forward`` still works:

* :func:`prune_heads_` removes whole heads: the head's rows of Q, K and V (for GPT-2 the three slices of
  the fused ``c_attn``) and its columns of the output projection go together.
* :func:`prune_ffn_` removes intermediate neurons: a row of the first FFN Linear (and its bias) with the
  matching column of the second.

Layouts recognised (found by module structure, not by class name, so derived models work too):

* BERT / RoBERTa / MiniLM / old ViT: ``attention.self.{query,key,value}`` + ``attention.output.dense``;
  FFN ``intermediate.dense`` + ``output.dense``.
* ViT (transformers >= 5): ``attention.{q,k,v,o}_proj``; FFN ``mlp.fc1`` + ``mlp.fc2``.
* GPT-2: ``attn.c_attn`` (fused QKV ``Conv1D``) + ``attn.c_proj``; FFN ``mlp.c_fc`` + ``mlp.c_proj``.

Example::

    >>> import torch, transformers
    >>> from torchslim.pruning.structured.transformer import prune_ffn_, prune_heads_
    >>> cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    ...                               intermediate_size=64, vocab_size=50)
    >>> m = transformers.BertModel(cfg).eval()
    >>> r = prune_heads_(m, 0.5)
    >>> m.encoder.layer[0].attention.self.num_attention_heads
    2
    >>> r = prune_ffn_(m, 0.5, round_to=8)
    >>> m.encoder.layer[0].intermediate.dense.out_features
    32
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from torchslim.core.config import Config
from torchslim.core.errors import ConfigError
from torchslim.pruning.api import PruneError, count_params
from torchslim.pruning.importance import n_keep
from torchslim.pruning.structured.handlers import LINEAR

Importance = Literal["l1", "l2", "random"]


class HeadPrune(Config):
    """Remove attention heads.

    Attributes:
        ratio: fraction of heads removed in every attention layer (``n_keep`` rounding: at least
            ``min_heads`` kept). Ignored for layers listed in ``heads``.
        heads: explicit heads to remove, ``{layer index: [head, ...]}`` (layer index = order of the
            attention modules in ``model.named_modules()``; head indices of the unpruned layer).
        importance: ``"l1"`` / ``"l2"`` norm of all the head's weights (Q, K, V rows and biases, output
            projection columns), or ``"random"``.
        min_heads: never keep fewer heads than this in a layer.
        seed: seed for ``importance="random"``.
    """

    type_name = "head_prune"

    ratio: float = Field(default=0.0, ge=0.0, lt=1.0)
    heads: dict[int, list[int]] = Field(default_factory=dict)
    importance: Importance = "l1"
    min_heads: int = Field(default=1, ge=1)
    seed: int = 0


class FFNPrune(Config):
    """Remove FFN intermediate neurons.

    Attributes:
        ratio: fraction of neurons removed in every FFN block.
        round_to: kept counts are rounded UP to a multiple of this (8 or 16 suit GEMM kernels).
        importance: ``"l1"`` / ``"l2"`` norm of the neuron's input row (+ bias) and output column, or
            ``"random"``.
        min_neurons: never keep fewer neurons than this.
        seed: seed for ``importance="random"``.
    """

    type_name = "ffn_prune"

    ratio: float = Field(ge=0.0, lt=1.0)
    round_to: int = Field(default=1, ge=1)
    importance: Importance = "l1"
    min_neurons: int = Field(default=1, ge=1)
    seed: int = 0


@dataclass
class TransformerPruneResult:
    """What :func:`prune_heads_` / :func:`prune_ffn_` did: per layer path, units before and after, and
    for heads the ORIGINAL indices removed."""

    model: nn.Module
    layers: list[tuple[str, int, int]] = field(default_factory=list)
    removed: dict[str, list[int]] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0

    def summary(self) -> str:
        lines = [f"params {self.params_before:,} -> {self.params_after:,} "
                 f"({1 - self.params_after / max(self.params_before, 1):.1%} removed)"]
        lines += [f"  {p}: {a} -> {b}" for p, a, b in self.layers]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# discovery
@dataclass(frozen=True)
class AttentionSite:
    """One attention layer. ``kind``: ``"split"`` (separate Q/K/V Linear) or ``"fused"`` (GPT-2 c_attn).
    ``owner`` is the module holding the head-count attributes."""

    path: str
    kind: Literal["split", "fused"]
    q: str
    k: str
    v: str
    o: str
    owner: str
    num_heads: int
    head_dim: int


@dataclass(frozen=True)
class FFNSite:
    """One FFN block: ``fc_in`` (hidden -> intermediate) and ``fc_out`` (intermediate -> hidden)."""

    path: str
    fc_in: str
    fc_out: str
    width: int


def _is_conv1d(m: Any) -> bool:
    """HF ``Conv1D`` (GPT-2): ``y = x @ weight + bias`` with ``weight`` of shape ``[in, out]``."""
    return m is not None and type(m).__name__ == "Conv1D" and hasattr(m, "nf") and hasattr(m, "nx")


def _child(m: nn.Module, dotted: str) -> Any:
    try:
        return m.get_submodule(dotted)
    except AttributeError:
        return None


def _join(a: str, b: str) -> str:
    return f"{a}.{b}" if a else b


def _heads_attr(m: nn.Module) -> int | None:
    for name in ("num_attention_heads", "num_heads", "n_head"):
        v = getattr(m, name, None)
        if isinstance(v, int):
            return v
    return None


def find_attention(model: nn.Module) -> list[AttentionSite]:
    """Attention layers of ``model`` whose heads can be pruned, in module order."""
    out: list[AttentionSite] = []
    for path, m in model.named_modules():
        sa, so = _child(m, "self"), _child(m, "output.dense")
        if sa is not None and all(isinstance(_child(sa, n), nn.Linear) for n in ("query", "key", "value")) \
                and isinstance(so, nn.Linear):
            h = _heads_attr(sa)
            if h:
                d = _child(sa, "query").out_features // h
                out.append(AttentionSite(path, "split", _join(path, "self.query"), _join(path, "self.key"),
                                         _join(path, "self.value"), _join(path, "output.dense"),
                                         _join(path, "self"), h, d))
            continue
        if all(isinstance(_child(m, n), nn.Linear) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
            h = _heads_attr(m)
            if h:
                d = _child(m, "q_proj").out_features // h
                out.append(AttentionSite(path, "split", _join(path, "q_proj"), _join(path, "k_proj"),
                                         _join(path, "v_proj"), _join(path, "o_proj"), path, h, d))
            continue
        ca, cp = _child(m, "c_attn"), _child(m, "c_proj")
        if _is_conv1d(ca) and _is_conv1d(cp) and not getattr(m, "is_cross_attention", False):
            h = _heads_attr(m)
            if h:
                d = int(ca.nf) // 3 // h
                out.append(AttentionSite(path, "fused", _join(path, "c_attn"), "", "", _join(path, "c_proj"),
                                         path, h, d))
    return out


def find_ffn(model: nn.Module) -> list[FFNSite]:
    """FFN blocks of ``model`` whose intermediate neurons can be pruned, in module order."""
    out: list[FFNSite] = []
    for path, m in model.named_modules():
        for a, b in (("intermediate.dense", "output.dense"), ("fc1", "fc2"), ("c_fc", "c_proj")):
            fa, fb = _child(m, a), _child(m, b)
            if isinstance(fa, nn.Linear) and isinstance(fb, nn.Linear) and fa.out_features == fb.in_features:
                out.append(FFNSite(path, _join(path, a), _join(path, b), fa.out_features))
                break
            if _is_conv1d(fa) and _is_conv1d(fb) and int(fa.nf) == int(fb.nx):
                out.append(FFNSite(path, _join(path, a), _join(path, b), int(fa.nf)))
                break
    return out


# ---------------------------------------------------------------------------------------------------
# slicing
def _mod(model: nn.Module, path: str) -> Any:
    """``model.get_submodule(path)`` typed loosely (HF Conv1D and Linear share the code paths)."""
    return model.get_submodule(path)


def _set(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, new)


def _conv1d_slice(m: Any, in_idx: torch.Tensor | None, out_idx: torch.Tensor | None) -> nn.Module:
    """A new HF Conv1D keeping input rows ``in_idx`` and output columns ``out_idx`` of its weight."""
    w = m.weight.detach()
    b = m.bias.detach() if getattr(m, "bias", None) is not None else None
    if in_idx is not None:
        w = w.index_select(0, in_idx.to(w.device))
    if out_idx is not None:
        w = w.index_select(1, out_idx.to(w.device))
        b = b.index_select(0, out_idx.to(w.device)) if b is not None else None
    new = type(m)(w.shape[1], w.shape[0])  # Conv1D(nf, nx)
    new.weight = nn.Parameter(w.clone(), requires_grad=m.weight.requires_grad)
    if b is not None:
        new.bias = nn.Parameter(b.clone(), requires_grad=m.bias.requires_grad)
    new.to(device=w.device, dtype=w.dtype)
    new.train(m.training)
    return new


def _rows(heads: torch.Tensor, d: int) -> torch.Tensor:
    return (heads[:, None] * d + torch.arange(d)[None, :]).reshape(-1)


def _head_weights(model: nn.Module, s: AttentionSite) -> list[torch.Tensor]:
    """Per-head weight blocks ``[heads, ...]`` (Q, K, V rows with bias, O columns)."""
    h, d = s.num_heads, s.head_dim
    o = _mod(model, s.o)
    if s.kind == "fused":
        ca = _mod(model, s.q)
        w, b = ca.weight.detach(), ca.bias.detach()
        e = h * d
        blocks = []
        for j in range(3):
            wj = w[:, j * e:(j + 1) * e].t().reshape(h, d, -1)
            bj = b[j * e:(j + 1) * e].reshape(h, d, 1)
            blocks.append(torch.cat([wj, bj], dim=2).reshape(h, -1))
        blocks.append(o.weight.detach().reshape(h, d, -1).reshape(h, -1))  # Conv1D weight [in, out]
        return blocks
    blocks = []
    for p in (s.q, s.k, s.v):
        lin = _mod(model, p)
        wb = lin.weight.detach().reshape(h, d, -1)
        if lin.bias is not None:
            wb = torch.cat([wb, lin.bias.detach().reshape(h, d, 1)], dim=2)
        blocks.append(wb.reshape(h, -1))
    blocks.append(o.weight.detach().reshape(o.out_features, h, d).transpose(0, 1).reshape(h, -1))
    return blocks


def _score(blocks: list[torch.Tensor], importance: str, gen: torch.Generator) -> torch.Tensor:
    n = blocks[0].shape[0]
    if importance == "random":
        return torch.rand(n, generator=gen, dtype=torch.float64)
    if importance == "l1":
        return sum((b.abs().to(torch.float64).sum(1) for b in blocks), torch.zeros(n, dtype=torch.float64))
    if importance == "l2":
        sq = sum((b.to(torch.float64).pow(2).sum(1) for b in blocks), torch.zeros(n, dtype=torch.float64))
        return sq.sqrt()
    raise ConfigError(f"importance={importance!r} is unknown: use 'l1', 'l2' or 'random'")


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest scores (ties: lower index first), ascending."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return torch.tensor(sorted(order[:k]), dtype=torch.long)


def _slice_heads(model: nn.Module, s: AttentionSite, keep: torch.Tensor) -> None:
    rows = _rows(keep, s.head_dim)
    if s.kind == "fused":
        e = s.num_heads * s.head_dim
        cols = torch.cat([rows, rows + e, rows + 2 * e])
        _set(model, s.q, _conv1d_slice(_mod(model, s.q), None, cols))
        _set(model, s.o, _conv1d_slice(_mod(model, s.o), rows, None))
    else:
        for p in (s.q, s.k, s.v):
            _set(model, p, LINEAR.prune_out(_mod(model, p), rows))
        _set(model, s.o, LINEAR.prune_in(_mod(model, s.o), rows))
    owner = _mod(model, s.owner)
    n = len(keep)
    for name in ("num_attention_heads", "num_heads", "n_head"):
        if isinstance(getattr(owner, name, None), int):
            setattr(owner, name, n)
    if isinstance(getattr(owner, "all_head_size", None), int):
        owner.all_head_size = n * s.head_dim
    if s.kind == "fused":
        owner.split_size = n * s.head_dim


def prune_heads_(
    model: nn.Module,
    ratio: float | HeadPrune | None = None,
    *,
    heads_per_layer: dict[int, list[int]] | int | None = None,
    importance: Importance = "l1",
    min_heads: int = 1,
    seed: int = 0,
) -> TransformerPruneResult:
    """Remove attention heads from every attention layer of ``model``, in place.

    Args:
        model: a BERT / GPT-2 / ViT style model (see the module docstring for the layouts).
        ratio: fraction of each layer's heads to remove, or a :class:`HeadPrune` config (then the other
            keyword arguments must be left at their defaults).
        heads_per_layer: ``{layer index: [head, ...]}`` removes exactly those heads; an ``int`` removes
            that many heads (lowest ``importance``) from every layer.
        importance: ``"l1"``, ``"l2"`` (norm of the head's weights) or ``"random"``.
        min_heads: keep at least this many heads per layer.
        seed: seed for ``"random"``.

    Returns:
        A :class:`TransformerPruneResult` (``removed`` maps layer path -> original head indices).

    Raises:
        PruneError: no attention layer found, a head index or layer index out of range, or the request
            would leave fewer than ``min_heads`` heads (nothing is modified then).
    """
    if isinstance(ratio, HeadPrune):
        cfg = ratio
    else:
        per = heads_per_layer if isinstance(heads_per_layer, dict) else {}
        cfg = HeadPrune(ratio=ratio or 0.0, heads=per, importance=importance, min_heads=min_heads, seed=seed)
    count = heads_per_layer if isinstance(heads_per_layer, int) else None
    sites = find_attention(model)
    if not sites:
        raise PruneError("prune_heads_: no attention layer found; supported layouts are BERT-style "
                         "(self.query/key/value + output.dense), ViT q/k/v/o_proj and GPT-2 c_attn/c_proj")
    for li in cfg.heads:
        if not 0 <= li < len(sites):
            raise PruneError(f"prune_heads_: layer index {li} out of range; the model has {len(sites)} "
                             f"attention layers ({sites[0].path}, ...)")
    gen = torch.Generator().manual_seed(cfg.seed)
    plan: list[tuple[AttentionSite, torch.Tensor]] = []
    for i, s in enumerate(sites):
        if i in cfg.heads:
            bad = [h for h in cfg.heads[i] if not 0 <= h < s.num_heads]
            if bad:
                raise PruneError(f"prune_heads_: {s.path} has {s.num_heads} heads; invalid head indices {bad}")
            keep = torch.tensor([h for h in range(s.num_heads) if h not in set(cfg.heads[i])], dtype=torch.long)
        else:
            k = s.num_heads - count if count is not None else n_keep(s.num_heads, cfg.ratio)
            scores = _score(_head_weights(model, s), cfg.importance, gen)
            keep = _top(scores, max(k, 0)) if k < s.num_heads else torch.arange(s.num_heads)
        if len(keep) < cfg.min_heads:
            raise PruneError(f"prune_heads_: {s.path} would keep {len(keep)} of {s.num_heads} heads, fewer than "
                             f"min_heads={cfg.min_heads}; lower the ratio or remove fewer heads")
        plan.append((s, keep))
    result = TransformerPruneResult(model=model, params_before=count_params(model))
    with torch.no_grad():
        for s, keep in plan:
            if len(keep) < s.num_heads:
                _slice_heads(model, s, keep)
            result.layers.append((s.path, s.num_heads, len(keep)))
            result.removed[s.path] = [h for h in range(s.num_heads) if h not in set(keep.tolist())]
    result.params_after = count_params(model)
    return result


def _ffn_weights(model: nn.Module, s: FFNSite) -> list[torch.Tensor]:
    a, b = _mod(model, s.fc_in), _mod(model, s.fc_out)
    if _is_conv1d(a):
        wa = torch.cat([a.weight.detach().t(), a.bias.detach()[:, None]], dim=1)
        wb = b.weight.detach()  # [in=width, out]
    else:
        wa = a.weight.detach()
        if a.bias is not None:
            wa = torch.cat([wa, a.bias.detach()[:, None]], dim=1)
        wb = b.weight.detach().t()
    return [wa, wb]


def prune_ffn_(
    model: nn.Module,
    ratio: float | FFNPrune,
    round_to: int = 1,
    *,
    importance: Importance = "l1",
    min_neurons: int = 1,
    seed: int = 0,
) -> TransformerPruneResult:
    """Remove a fraction of the intermediate neurons of every FFN block of ``model``, in place.

    Args:
        model: a BERT / GPT-2 / ViT style model.
        ratio: fraction of neurons removed per block, or an :class:`FFNPrune` config.
        round_to: kept counts rounded UP to a multiple of this.
        importance: ``"l1"``, ``"l2"`` (norm of the neuron's in-row + bias and out-column) or ``"random"``.
        min_neurons: keep at least this many neurons per block.
        seed: seed for ``"random"``.

    Raises:
        PruneError: no FFN block found, or fewer than ``min_neurons`` would be kept.
    """
    cfg = ratio if isinstance(ratio, FFNPrune) else FFNPrune(
        ratio=ratio, round_to=round_to, importance=importance, min_neurons=min_neurons, seed=seed)
    sites = find_ffn(model)
    if not sites:
        raise PruneError("prune_ffn_: no FFN block found; supported layouts are intermediate.dense + "
                         "output.dense, mlp.fc1 + mlp.fc2 and GPT-2 mlp.c_fc + mlp.c_proj")
    gen = torch.Generator().manual_seed(cfg.seed)
    plan = []
    for s in sites:
        k = n_keep(s.width, cfg.ratio, cfg.round_to)
        if k < cfg.min_neurons and k < s.width:
            raise PruneError(f"prune_ffn_: {s.path} would keep {k} of {s.width} neurons, fewer than "
                             f"min_neurons={cfg.min_neurons}; lower the ratio")
        keep = torch.arange(s.width) if k >= s.width else _top(_score(_ffn_weights(model, s), cfg.importance, gen), k)
        plan.append((s, keep))
    result = TransformerPruneResult(model=model, params_before=count_params(model))
    with torch.no_grad():
        for s, keep in plan:
            if len(keep) < s.width:
                a, b = _mod(model, s.fc_in), _mod(model, s.fc_out)
                if _is_conv1d(a):
                    _set(model, s.fc_in, _conv1d_slice(a, None, keep))
                    _set(model, s.fc_out, _conv1d_slice(b, keep, None))
                else:
                    _set(model, s.fc_in, LINEAR.prune_out(a, keep))
                    _set(model, s.fc_out, LINEAR.prune_in(b, keep))
            result.layers.append((s.path, s.width, len(keep)))
    result.params_after = count_params(model)
    return result
