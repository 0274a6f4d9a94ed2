"""The lowest layer: a symmetric linear map ``v -> A v`` on flat vectors that counts its products.

Besides the product, an operator may know some of its own structure, which preconditioners read:
its exact diagonal, and Kronecker factors of its blocks (K-FAC). Both are supplied by the
curvature that builds the operator (the layer-wise Gauss-Newton knows them cheaply) and follow
the operator through :meth:`LinearOperator.shifted` and :meth:`LinearOperator.map`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

Shift = float | Tensor


@dataclass(frozen=True)
class KroneckerLayer:
    """One linear layer's block ``≈ G ⊗ Ā`` of a Gauss-Newton matrix (K-FAC; Martens & Grosse, 2015).

    ``Ā = (1/N) Σ x̄ x̄ᵀ`` over the layer's ``N`` input rows (``x̄ = [x, 1]`` when the layer has a
    bias) and ``G = Σ g gᵀ`` over the output-Fisher-weighted vectors ``g`` backpropagated to the
    layer's output. The weight's entries ``W[o, i]`` sit at ``weight`` in the flat vector
    (row-major), the bias's at ``bias``.
    """

    weight: slice
    bias: slice | None
    input_factor: Tensor
    output_factor: Tensor


@dataclass(frozen=True)
class KroneckerFactors:
    """The K-FAC blocks of an operator's linear layers and its exact diagonal elsewhere (0 on the layers)."""

    layers: tuple[KroneckerLayer, ...]
    diagonal: Tensor

    def transformed(self, transform: Callable[[Tensor], Tensor]) -> KroneckerFactors:
        """Every factor and the diagonal passed through ``transform`` at once (one all-reduce)."""
        parts = [self.diagonal] + [f for layer in self.layers for f in (layer.input_factor, layer.output_factor)]
        flat = transform(torch.cat([p.reshape(-1) for p in parts]))
        pieces = iter(torch.split(flat, [p.numel() for p in parts]))
        diagonal = next(pieces).view_as(self.diagonal)
        layers = tuple(
            replace(
                layer,
                input_factor=next(pieces).view_as(layer.input_factor),
                output_factor=next(pieces).view_as(layer.output_factor),
            )
            for layer in self.layers
        )
        return KroneckerFactors(layers, diagonal)


class LinearOperator:
    """A symmetric linear map ``v -> A v`` on flat vectors, counting its products.

    Args:
        matvec: the product; takes and returns a flat vector of length ``dim``.
        dim: the number of parameters ``n``.
        positive_semidefinite: whether ``A`` is PSD by construction (Fisher,
            Gauss-Newton) or may be indefinite (exact Hessian).
        exact_diagonal: ``() -> diag(A)`` when the builder knows it without ``n`` products.
        kronecker_factors: ``() -> KroneckerFactors`` of ``A`` when the builder knows them.
    """

    def __init__(
        self,
        matvec: Callable[[Tensor], Tensor],
        dim: int,
        *,
        positive_semidefinite: bool,
        exact_diagonal: Callable[[], Tensor | None] | None = None,
        kronecker_factors: Callable[[], KroneckerFactors | None] | None = None,
    ) -> None:
        self._matvec = matvec
        self.dim = dim
        self.positive_semidefinite = positive_semidefinite
        self.products = 0
        self._exact_diagonal = exact_diagonal
        self._kronecker_factors = kronecker_factors
        self.shift: Shift = 0.0
        """The diagonal shift ``μ`` this operator adds to the structured part (see :meth:`shifted`)."""

    def __call__(self, vector: Tensor) -> Tensor:
        self.products += 1
        return self._matvec(vector)

    def _with_product(self, matvec: Callable[[Tensor], Tensor], transform=None) -> LinearOperator:
        """A new operator with ``matvec`` and this one's structure (passed through ``transform``)."""
        diagonal, factors = self._exact_diagonal, self._kronecker_factors
        if transform is not None:
            diagonal = _mapped(diagonal, transform)
            factors = _mapped(factors, lambda f: f.transformed(transform))
        operator = LinearOperator(
            matvec,
            self.dim,
            positive_semidefinite=self.positive_semidefinite,
            exact_diagonal=diagonal,
            kronecker_factors=factors,
        )
        operator.shift = self.shift
        return operator

    def map(self, transform: Callable[[Tensor], Tensor]) -> LinearOperator:
        """A new operator ``v -> transform(A v)`` (e.g. an all-reduce), counting its own products.

        ``transform`` must be linear (a sum or mean over processes): the exact diagonal and the
        Kronecker factors are passed through it too.
        """
        return self._with_product(lambda v: transform(self._matvec(v)), transform)

    def in_dtype(self, matvec: Callable[[Tensor], Tensor]) -> LinearOperator:
        """The same operator computed by ``matvec`` (another precision of the same products)."""
        return self._with_product(matvec)

    def shifted(self, shift: Shift) -> LinearOperator:
        """``v -> A v + μ v`` (``μ`` a number, or a vector: a diagonal shift), sharing this operator's product count.

        Returns ``self`` when ``μ = 0``. The exact diagonal (if known) includes ``μ``; the Kronecker
        factors stay those of ``A`` and :attr:`shift` holds the total ``μ``.
        """
        if not isinstance(shift, Tensor) and shift == 0.0:
            return self

        def shifted_product(vector: Tensor) -> Tensor:
            if isinstance(shift, Tensor):
                return self(vector).addcmul(shift.to(vector.dtype), vector)
            return self(vector).add(vector, alpha=shift)

        operator = self._with_product(shifted_product)
        operator._exact_diagonal = _mapped(
            self._exact_diagonal, lambda d: d + (shift.to(d) if isinstance(shift, Tensor) else shift)
        )
        operator.shift = self.shift + shift
        return operator

    def exact_diagonal(self) -> Tensor | None:
        """``diag(A)`` when the operator's builder knows it without products, else ``None``."""
        return None if self._exact_diagonal is None else self._exact_diagonal()

    def kronecker_factors(self) -> KroneckerFactors | None:
        """The K-FAC factors of ``A`` (without :attr:`shift`) when the builder knows them, else ``None``."""
        return None if self._kronecker_factors is None else self._kronecker_factors()

    def diagonal(self, like: Tensor, *, probes: int = 32, exact_up_to: int = 256) -> Tensor:
        """The diagonal of ``A``: known, or from ``n`` products up to ``exact_up_to`` parameters, else estimated.

        The estimate is Hutchinson's ``E[z ⊙ A z]`` over ``probes`` seeded Rademacher vectors ``z``
        (Bekas, Kokiopoulou & Saad, 2007), unbiased, for scaling where a rough diagonal is enough.
        ``like`` gives the dtype and device.
        """
        known = self.exact_diagonal()
        if known is not None:
            return known.to(like)
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


def _mapped(compute: Callable[[], object] | None, transform: Callable[[object], object]):
    """``compute`` followed by ``transform`` (``None`` stays ``None``, as does a ``None`` result)."""
    if compute is None:
        return None

    def mapped():
        value = compute()
        return None if value is None else transform(value)

    return mapped


def _like(shift: Shift, like: Tensor) -> Shift:
    return shift.to(like) if isinstance(shift, Tensor) else shift
