"""Flat-vector helpers: the solver sees one vector, the model sees its parameters."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate tensors into one flat vector (a copy)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def split_like(vector: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Split a flat vector into views shaped like ``like`` (no copy)."""
    sizes = [t.numel() for t in like]
    return [v.view_as(t) for v, t in zip(torch.split(vector, sizes), like, strict=True)]


def gradients(
    output: Tensor,
    params: Sequence[Tensor],
    *,
    retain_graph: bool | None = None,
    create_graph: bool = False,
) -> list[Tensor]:
    """``∂ output / ∂ params`` per parameter; parameters ``output`` ignores get zeros."""
    grads = torch.autograd.grad(output, params, retain_graph=retain_graph, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]


def flat_gradient(
    output: Tensor,
    params: Sequence[Tensor],
    *,
    retain_graph: bool | None = None,
    create_graph: bool = False,
) -> Tensor:
    """:func:`gradients` as one flat vector."""
    return flatten(gradients(output, params, retain_graph=retain_graph, create_graph=create_graph))


def add_step(params: Sequence[Tensor], base: Sequence[Tensor], step: Tensor, fraction: float) -> None:
    """Set ``params = base + fraction * step`` in place (``base`` are saved copies; ``step`` may be float64)."""
    with torch.no_grad():
        for p, b, d in zip(params, base, split_like(step, params), strict=True):
            torch.add(b, d.to(p.dtype), alpha=fraction, out=p.data)


def restore(params: Sequence[Tensor], saved: Sequence[Tensor]) -> None:
    """Copy ``saved`` back into ``params`` bit for bit."""
    with torch.no_grad():
        for p, s in zip(params, saved, strict=True):
            p.copy_(s)
