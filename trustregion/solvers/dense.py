"""Dense reference solver: forms ``A`` column by column and factorises it."""

from __future__ import annotations

import torch
from torch import Tensor

from trustregion.operator import LinearOperator
from trustregion.result import SolverReason, SolverResult
from trustregion.solvers.base import Solver


class DenseSolver(Solver):
    """``s = A⁻¹ g`` by the pseudo-inverse (:func:`torch.linalg.pinv`), minimum-norm if singular.

    Costs ``n`` products and ``O(n³)`` time: a reference for tests and for tiny
    problems, never for networks. Negative curvature is reported when the
    solution has ``sᵀAs <= 0``.

    Args:
        equilibrate: solve ``(S A S) y = S g``, ``s = S y`` with ``S = diag(A)^(-1/2)``
            (symmetric Jacobi scaling, van der Sluis 1969) instead of ``A s = g``. For
            badly scaled problems (parameters of very different units) this keeps the
            pseudo-inverse from discarding the small but meaningful directions; a
            singular ``A`` then gives the minimum-norm solution in the scaled variables.
    """

    def __init__(self, equilibrate: bool = False) -> None:
        if not isinstance(equilibrate, bool):
            raise TypeError(f"equilibrate must be True or False (got {equilibrate!r})")
        self.equilibrate = equilibrate

    def __call__(self, operator: LinearOperator, rhs: Tensor) -> SolverResult:
        matrix = operator.dense(rhs.dtype, rhs.device)
        matrix = 0.5 * (matrix + matrix.T)
        if not torch.isfinite(matrix).all():
            zero = torch.zeros_like(rhs)
            return SolverResult(zero, SolverReason.NONFINITE, 0, float("nan"), float("nan"), 0.0)
        solution = self._solve(matrix, rhs)
        curvature = (solution @ matrix @ solution).item()
        rhs_norm = torch.linalg.vector_norm(rhs).item()
        residual = torch.linalg.vector_norm(rhs - matrix @ solution).item()
        reason = SolverReason.DIRECT if curvature > 0 or rhs_norm == 0 else SolverReason.NEGATIVE_CURVATURE
        return SolverResult(
            direction=solution,
            reason=reason,
            iterations=1,
            relative_residual=residual / rhs_norm if rhs_norm > 0 else 0.0,
            curvature=curvature,
            gradient_dot=(rhs @ solution).item(),
        )

    def _solve(self, matrix: Tensor, rhs: Tensor) -> Tensor:
        if not self.equilibrate:
            return torch.linalg.pinv(matrix, hermitian=True) @ rhs
        diagonal = matrix.diagonal().abs()
        scale = torch.where(diagonal > 0, diagonal.rsqrt(), torch.ones_like(diagonal))
        scaled = scale[:, None] * matrix * scale[None, :]
        return scale * (torch.linalg.pinv(scaled, hermitian=True) @ (scale * rhs))

    def __repr__(self) -> str:
        return f"DenseSolver(equilibrate={self.equilibrate})"
