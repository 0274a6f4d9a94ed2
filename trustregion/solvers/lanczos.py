"""Lanczos estimate of the smallest eigenvalue of ``A``: the second-order check at stationary points."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from trustregion._validation import check_integer
from trustregion.operator import LinearOperator


@dataclass
class Eigenpair:
    """A Ritz pair ``(θ, v)`` of ``A``: ``‖v‖ = 1`` and ``θ = vᵀAv``.

    ``θ`` is an upper bound on the smallest eigenvalue ``λ_min(A)`` (Cauchy
    interlacing), so ``θ < 0`` proves that ``A`` has negative curvature, while
    ``θ >= 0`` only says that the explored Krylov space found none (exact once
    ``iterations >= n`` or the space became invariant, ``exhausted``).
    """

    value: float
    vector: Tensor
    products: int
    exhausted: bool
    scale: float = 0.0
    """``max |θ_i|`` over the Ritz values: a lower bound on ``‖A‖₂``, for relative tolerances."""


def smallest_eigenpair(operator: LinearOperator, like: Tensor, iterations: int, seed: int = 0) -> Eigenpair:
    """``iterations`` Lanczos steps (full reorthogonalisation) from a seeded random start vector.

    A random start has a component along every eigenvector with probability one,
    unlike the gradient, which can be orthogonal to the negative-curvature
    directions (a symmetric saddle). Costs ``min(iterations, n)`` products and
    ``O(iterations · n)`` memory. A non-finite product gives ``value = nan``.

    Args:
        operator: the symmetric ``A``.
        like: a vector with the dtype, device and length ``n`` of the products.
        iterations: the cap on products (>= 1).
        seed: the start vector's seed (deterministic).
    """
    check_integer("iterations", iterations, 1)
    generator = torch.Generator(device=like.device).manual_seed(seed)
    start = torch.randn(like.numel(), generator=generator, dtype=like.dtype, device=like.device)
    basis = [start / torch.linalg.vector_norm(start)]
    diagonal: list[float] = []
    off_diagonal: list[float] = []
    exhausted = False
    for _ in range(min(iterations, like.numel())):
        product = operator(basis[-1])
        alpha = (basis[-1] @ product).item()
        if not math.isfinite(alpha) or not torch.isfinite(product).all():
            return Eigenpair(math.nan, basis[0], len(diagonal) + 1, False)
        diagonal.append(alpha)
        stacked = torch.stack(basis)
        for _ in range(2):  # twice is enough (Parlett's "twice is enough")
            product = product - stacked.T @ (stacked @ product)
        beta = torch.linalg.vector_norm(product).item()
        scale = max(abs(a) for a in diagonal) + (max(off_diagonal) if off_diagonal else 0.0)
        if beta <= 1e3 * torch.finfo(like.dtype).eps * max(scale, 1e-300):
            exhausted = True
            break
        if len(diagonal) < min(iterations, like.numel()):
            off_diagonal.append(beta)
            basis.append(product / beta)
    return _smallest_ritz_pair(basis, diagonal, off_diagonal, exhausted or len(diagonal) == like.numel())


def _smallest_ritz_pair(
    basis: list[Tensor], diagonal: list[float], off_diagonal: list[float], exhausted: bool
) -> Eigenpair:
    """The smallest eigenpair of the Lanczos tridiagonal ``T``, its vector mapped back through the basis."""
    like = basis[0]
    tridiagonal = torch.diag(torch.tensor(diagonal, dtype=like.dtype, device=like.device))
    if off_diagonal:
        betas = torch.tensor(off_diagonal[: len(diagonal) - 1], dtype=like.dtype, device=like.device)
        tridiagonal = tridiagonal + torch.diag(betas, 1) + torch.diag(betas, -1)
    values, vectors = torch.linalg.eigh(tridiagonal)
    ritz_vector = torch.stack(basis[: len(diagonal)]).T @ vectors[:, 0]
    ritz_vector = ritz_vector / torch.linalg.vector_norm(ritz_vector)
    smallest, scale = torch.stack([values[0], values.abs().max()]).tolist()
    return Eigenpair(smallest, ritz_vector, len(diagonal), exhausted, scale)
