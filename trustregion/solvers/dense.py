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
    """

    def __call__(self, operator: LinearOperator, rhs: Tensor) -> SolverResult:
        matrix = operator.dense(rhs.dtype, rhs.device)
        matrix = 0.5 * (matrix + matrix.T)
        if not torch.isfinite(matrix).all():
            zero = torch.zeros_like(rhs)
            return SolverResult(zero, SolverReason.NONFINITE, 0, float("nan"), float("nan"), 0.0)
        solution = torch.linalg.pinv(matrix, hermitian=True) @ rhs
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
