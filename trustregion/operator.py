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

    def shifted(self, shift: float | Tensor) -> LinearOperator:
        """``v -> A v + μ v`` (``μ`` a number, or a vector: a diagonal shift), sharing this operator's product count.

        Returns ``self`` when ``μ = 0``.
        """
        if not isinstance(shift, Tensor) and shift == 0.0:
            return self

        def shifted_product(vector: Tensor) -> Tensor:
            if isinstance(shift, Tensor):
                return self(vector).addcmul(shift.to(vector.dtype), vector)
            return self(vector).add(vector, alpha=shift)

        return LinearOperator(shifted_product, self.dim, positive_semidefinite=self.positive_semidefinite)

    def diagonal(self, like: Tensor, *, probes: int = 32, exact_up_to: int = 256) -> Tensor:
        """The diagonal of ``A``: exact from ``n`` products up to ``exact_up_to`` parameters, else estimated.

        The estimate is Hutchinson's ``E[z ⊙ A z]`` over ``probes`` seeded Rademacher vectors ``z``
        (Bekas, Kokiopoulou & Saad, 2007), unbiased, for scaling where a rough diagonal is enough.
        ``like`` gives the dtype and device.
        """
        if self.dim <= exact_up_to:
            eye = torch.eye(self.dim, dtype=like.dtype, device=like.device)
            return torch.stack([self(column)[index] for index, column in enumerate(eye)])
        generator = torch.Generator(device=like.device).manual_seed(0)
        total = torch.zeros(self.dim, dtype=like.dtype, device=like.device)
        for _ in range(probes):
            signs = torch.randint(0, 2, (self.dim,), generator=generator, device=like.device).to(like.dtype) * 2 - 1
            total += signs * self(signs)
        return total / probes

    def dense(self, dtype: torch.dtype, device: torch.device | str | None = None) -> Tensor:
        """The ``n × n`` matrix, one product per column (for tests and tiny problems)."""
        eye = torch.eye(self.dim, dtype=dtype, device=device)
        return torch.stack([self(column) for column in eye], dim=1)
