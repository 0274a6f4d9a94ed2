"""The lowest layer: a symmetric linear map ``v -> A v`` on flat vectors that counts its products."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


class LinearOperator:
    """A symmetric linear map ``v -> A v`` on flat vectors, counting its products.

    Args:
        matvec: the product; takes and returns a flat vector of length ``dim``.
        dim: the number of parameters ``n``.
        positive_semidefinite: whether ``A`` is PSD by construction (Fisher,
            Gauss-Newton) or may be indefinite (exact Hessian).
    """

    def __init__(self, matvec: Callable[[Tensor], Tensor], dim: int, *, positive_semidefinite: bool) -> None:
        self._matvec = matvec
        self.dim = dim
        self.positive_semidefinite = positive_semidefinite
        self.products = 0

    def __call__(self, vector: Tensor) -> Tensor:
        self.products += 1
        return self._matvec(vector)

    def map(self, transform: Callable[[Tensor], Tensor]) -> LinearOperator:
        """A new operator ``v -> transform(A v)`` (e.g. an all-reduce), counting its own products."""
        return LinearOperator(
            lambda v: transform(self._matvec(v)),
            self.dim,
            positive_semidefinite=self.positive_semidefinite,
        )

    def shifted(self, shift: float) -> LinearOperator:
        """``v -> A v + μ v``, sharing this operator's product count (``self`` when ``μ = 0``)."""
        if shift == 0.0:
            return self
        return LinearOperator(
            lambda vector: self(vector).add(vector, alpha=shift),
            self.dim,
            positive_semidefinite=self.positive_semidefinite,
        )

    def dense(self, dtype: torch.dtype, device: torch.device | str | None = None) -> Tensor:
        """The ``n × n`` matrix, one product per column (for tests and tiny problems)."""
        eye = torch.eye(self.dim, dtype=dtype, device=device)
        return torch.stack([self(column) for column in eye], dim=1)
