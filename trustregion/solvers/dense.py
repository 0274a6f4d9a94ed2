"""Dense solver: the operator's matrix ``A``, factorised: for small problems and as a reference."""

from __future__ import annotations

import torch
from torch import Tensor

from trustregion.operator import LinearOperator
from trustregion.result import SolverReason, SolverResult
from trustregion.solvers.base import Solver


class DenseSolver(Solver):
    """``s = A⁻¹ g`` by the pseudo-inverse (:func:`torch.linalg.pinv`), minimum-norm if singular.

    The matrix is the operator's own (:meth:`~trustregion.LinearOperator.dense`): ``n``
    products in general; an operator that knows a cheaper way forms it that way, as
    :class:`~trustregion.ResidualGaussNewton`'s does from the Jacobian (``min(m, n)``
    passes and one matrix product ``c JᵀJ``, kept for the next step when a refused
    step leaves the parameters where they were). Then ``O(n³)`` time: for problems of
    up to a few hundred parameters (:func:`~trustregion.least_squares` uses it up to
    500), never for large networks. Negative curvature is reported when the
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
