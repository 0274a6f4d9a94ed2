"""The solver interface: ``(A, g) -> SolverResult`` with ``s ≈ A⁻¹ g``."""

from __future__ import annotations

import abc

from torch import Tensor

from trustregion.curvature.base import LinearOperator
from trustregion.result import SolverResult


class Solver(abc.ABC):
    """Computes the search direction ``s ≈ A⁻¹ g`` and the scalars ``sᵀAs``, ``gᵀs``."""

    @abc.abstractmethod
    def __call__(self, operator: LinearOperator, rhs: Tensor) -> SolverResult:
        """Solve ``A s = rhs``; never raise on non-finite products, report them."""
