"""The solver interface: ``(A, g) -> SolverResult`` with ``s ≈ A⁻¹ g``, optionally within a trust region."""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from trustregion.operator import LinearOperator
from trustregion.preconditioners import Preconditioner, PreconditionerLike
from trustregion.result import SolverReason, SolverResult

Metric = Literal["euclidean", "operator"]
METRICS: tuple[str, ...] = ("euclidean", "operator")


@dataclass(frozen=True)
class Ball:
    r"""The ball ``‖s‖ <= radius`` a trust-region solve must keep its step in.

    ``metric="euclidean"`` measures ``‖s‖₂``; ``metric="operator"`` measures the
    curvature operator's own norm ``‖s‖_A = sqrt(sᵀAs)``, so that with ``A`` the
    Fisher the ball is the quadratic KL region ``½ sᵀAs <= δ`` for
    ``radius = sqrt(2δ)`` (:meth:`kl`). The operator metric needs a positive
    semidefinite ``A`` (Fisher, Gauss-Newton, damped operators): along a
    direction of zero or negative curvature its "ball" is unbounded.

    Args:
        radius: ``Δ > 0``; ``math.inf`` for no bound.
        metric: ``"euclidean"`` or ``"operator"``.
    """

    radius: float
    metric: Metric = "euclidean"

    def __post_init__(self) -> None:
        radius = self.radius
        if isinstance(radius, bool) or not isinstance(radius, (int, float)) or math.isnan(radius) or radius < 0:
            raise ValueError(f"radius must be a number >= 0 or math.inf (got {radius!r})")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS} (got {self.metric!r})")

    @classmethod
    def kl(cls, max_kl: float) -> Ball:
        """The region ``½ sᵀAs <= max_kl`` (TRPO's quadratic KL bound): ``‖s‖_A <= sqrt(2 max_kl)``."""
        return cls(math.sqrt(2.0 * max_kl), "operator")

    def norm(self, step: Tensor, curvature: float) -> float:
        """``‖step‖`` in this metric; ``curvature = stepᵀ A step`` is known to every solver."""
        if self.metric == "operator":
            return math.sqrt(max(curvature, 0.0))
        return torch.linalg.vector_norm(step).item()

    @property
    def bounded_by_operator(self) -> bool:
        """True when only a positive semidefinite ``A`` keeps the step bounded (operator metric, or no radius)."""
        return self.metric == "operator" or math.isinf(self.radius)


class Solver(abc.ABC):
    """Computes the search direction ``s ≈ A⁻¹ g`` and the scalars ``sᵀAs``, ``gᵀs``."""

    @abc.abstractmethod
    def __call__(self, operator: LinearOperator, rhs: Tensor) -> SolverResult:
        """Solve ``A s = rhs``; never raise on non-finite products, report them."""

    def solve_in_region(self, operator: LinearOperator, rhs: Tensor, region: Ball) -> SolverResult:
        """Approximately minimise ``q(s) = ½ sᵀAs - rhsᵀs`` subject to ``‖s‖ <= region.radius``.

        The default ignores the region and returns ``self(operator, rhs)``: the
        optimizer then scales the step itself (by ``β`` to the KL boundary in
        :class:`~trustregion.TrustRegionOptimizer`, or back onto the ball in
        :class:`~trustregion.TrustRegionMinimizer`). Truncated
        solvers such as :class:`~trustregion.SteihaugCG` override this and stop at
        the boundary.
        """
        return self(operator, rhs)


def check_preconditioner(preconditioner: object) -> PreconditionerLike | None:
    """A solver's ``preconditioner=`` argument, refused in one line unless it is one."""
    if preconditioner is None or isinstance(preconditioner, Preconditioner) or callable(preconditioner):
        return preconditioner
    raise TypeError(
        f"preconditioner must be a Preconditioner (Jacobi(), KFAC()) or a callable r -> P⁻¹ r "
        f"(got {type(preconditioner).__name__})"
    )


def preconditioned_reason(residual_dot: float) -> SolverReason | None:
    """Why a preconditioned solve must stop at ``rᵀP⁻¹r``: non-finite, or not positive (``P`` indefinite)."""
    if not math.isfinite(residual_dot):
        return SolverReason.NONFINITE
    return SolverReason.INDEFINITE_PRECONDITIONER if residual_dot <= 0.0 else None


def solver_result(
    solution: Tensor,
    rhs: Tensor,
    residual: Tensor,
    reason: SolverReason,
    iterations: int,
    rhs_norm: float,
    region_norm: float = math.nan,
) -> SolverResult:
    """The :class:`SolverResult` of ``solution`` from its residual ``r = rhs - A·solution``.

    ``sᵀAs = sᵀ(rhs - r)`` and ``rhsᵀs`` cost two dot products, no curvature product;
    the three scalars are read back in one device synchronisation.
    """
    gradient_dot = rhs @ solution
    curvature = gradient_dot - residual @ solution
    residual_norm, gradient_dot_value, curvature_value = torch.stack(
        [torch.linalg.vector_norm(residual), gradient_dot, curvature]
    ).tolist()
    return SolverResult(
        direction=solution,
        reason=reason,
        iterations=iterations,
        relative_residual=residual_norm / rhs_norm if rhs_norm > 0 else 0.0,
        curvature=curvature_value,
        gradient_dot=gradient_dot_value,
        region_norm=region_norm,
    )
