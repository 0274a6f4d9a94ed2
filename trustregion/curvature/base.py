"""The curvature interface: built once per step, then ``v -> A v`` on flat vectors."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class StepProblem:
    """What the optimizer knows at the old parameters ``θ_old`` when a step begins.

    Attributes:
        params: the optimized tensors, in the optimizer's order (the flat vector
            order of every product).
        loss: the closure's loss at ``θ_old``, with its autograd graph.
        constraint: the closure's constraint (mean KL) at ``θ_old`` with its graph,
            or ``None`` for a loss-only closure.
        loss_gradient: ``∇ loss`` per parameter; built with ``create_graph=True``
            when the curvature asked for it (:attr:`Curvature.needs_loss_graph`).
        closure: the user's closure, for operators that must re-evaluate.
    """

    params: Sequence[Tensor]
    loss: Tensor
    constraint: Tensor | None
    loss_gradient: Sequence[Tensor]
    closure: Callable[[], object]


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
        """A new operator ``v -> transform(A v)`` (e.g. damping, an all-reduce)."""
        return LinearOperator(
            lambda v: transform(self._matvec(v)),
            self.dim,
            positive_semidefinite=self.positive_semidefinite,
        )

    def shifted(self, damping: float) -> LinearOperator:
        """``v -> A v + λ v``, sharing this operator's product count (``self`` when ``λ = 0``)."""
        if damping == 0.0:
            return self
        return LinearOperator(
            lambda vector: self(vector).add(vector, alpha=damping),
            self.dim,
            positive_semidefinite=self.positive_semidefinite,
        )

    def dense(self, dtype: torch.dtype, device: torch.device | str | None = None) -> Tensor:
        """The ``n × n`` matrix, one product per column (for tests and tiny problems)."""
        eye = torch.eye(self.dim, dtype=dtype, device=device)
        return torch.stack([self(column) for column in eye], dim=1)


class Curvature(abc.ABC):
    """Builds the curvature operator ``A`` of one step at ``θ_old``.

    Subclasses do the expensive work (a forward pass, a linearisation, a first
    backward with ``create_graph``) once in :meth:`build`; each product of the
    returned operator then reuses it.
    """

    needs_loss_graph: bool = False
    """Set by operators that differentiate ``∇ loss`` again (the exact Hessian)."""

    @abc.abstractmethod
    def build(self, problem: StepProblem) -> LinearOperator:
        """Return the operator ``v -> A v`` at the old parameters."""
