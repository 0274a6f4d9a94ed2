"""The trust-region subproblem of a positive semidefinite ``A`` solved on its secular equation (MINPACK's ``lmpar``).

For ``‖D s‖ <= Δ`` with ``D`` a positive diagonal (Moré's scaling), the minimiser of
``q(s) = ½ sᵀAs - gᵀs`` is the Levenberg-Marquardt step

.. math:: (A + \\lambda D^2)\\, s(\\lambda) = g, \\qquad \\lambda \\ge 0,

with ``λ = 0`` when the Gauss-Newton step lies inside and otherwise the ``λ`` at which
``‖D s(λ)‖ = Δ``. :class:`SecularSolver` finds that ``λ`` as Moré does in MINPACK's ``lmpar``
("The Levenberg-Marquardt algorithm: implementation and theory", 1978): a Newton iteration on
``1/‖D s(λ)‖ - 1/Δ`` safeguarded by bounds ``[λ_low, λ_high]``, one Cholesky factorisation per
``λ``, stopped once ``‖D s‖`` is within ``σ Δ`` of ``Δ`` (``σ = 0.1``) or after ten tries.
:class:`ScaledBall` is the region it solves in; it carries the ``λ`` found back to the control
that issued it (:class:`~trustregion.control.ScaledTrustRadius`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from trustregion.operator import LinearOperator
from trustregion.result import SolverReason, SolverResult
from trustregion.solvers.base import Ball, Solver


@dataclass
class SecularReport:
    """What the solve in a :class:`ScaledBall` found, for the control that issued the region (NaN until solved)."""

    damping: float = math.nan
    """``λ`` of the step (0 for the Gauss-Newton step)."""
    gradient_dot: float = math.nan
    """``gᵀs(λ)``."""
    scaled_norm: float = math.nan
    """``‖D s(λ)‖``."""


@dataclass(frozen=True)
class ScaledBall(Ball):
    """The region ``‖D s‖ <= radius`` of a positive diagonal scaling ``D`` (``None``: ``D = I``).

    Args:
        radius: ``Δ``, as for :class:`~trustregion.solvers.Ball`.
        metric: ``"euclidean"`` only (the norm is ``‖D s‖₂``).
        scale: ``D`` as a 1-D tensor of positive entries, one per parameter.
        damping: the ``λ`` a secular solve starts from (the previous step's, as MINPACK carries it).
        report: filled in by :class:`SecularSolver` with the ``λ`` it found.
    """

    scale: Tensor | None = field(default=None, compare=False)
    damping: float = 0.0
    report: SecularReport = field(default_factory=SecularReport, compare=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.metric != "euclidean":
            raise ValueError(f"a ScaledBall measures ‖D s‖₂: metric must be 'euclidean' (got {self.metric!r})")
        scale = self.scale
        if scale is not None and not (isinstance(scale, Tensor) and scale.dim() == 1 and bool((scale > 0).all())):
            raise ValueError("scale must be a 1-D tensor of positive numbers (D, one entry per parameter)")
        if not (math.isfinite(self.damping) and self.damping >= 0):
            raise ValueError(f"damping must be a finite number >= 0 (got {self.damping!r})")

    def norm(self, step: Tensor, curvature: float) -> float:
        """``‖D s‖₂``."""
        if self.scale is None:
            return torch.linalg.vector_norm(step).item()
        return torch.linalg.vector_norm(self.scale.to(step) * step).item()


@dataclass(frozen=True)
class SecularSolution:
    """The scaled step ``y = D s(λ)``, its ``λ`` and the factorisations it took."""

    scaled_step: Tensor
    damping: float
    iterations: int


class SecularSolver(Solver):
    """Dense Levenberg-Marquardt steps: ``λ`` with ``‖D s(λ)‖ ≈ Δ`` by Moré's safeguarded Newton iteration.

    For a positive semidefinite operator (the Gauss-Newton matrix ``c JᵀJ`` of
    :class:`~trustregion.ResidualGaussNewton`, whose matrix comes from the Jacobian). In a
    bounded region (a :class:`ScaledBall`, or a Euclidean :class:`~trustregion.solvers.Ball`
    with ``D = I``) the step is the Gauss-Newton step when ``‖D s(0)‖ <= (1 + σ) Δ``, else
    ``s(λ)`` with ``|‖D s(λ)‖ - Δ| <= σ Δ``: MINPACK's ``lmpar`` on ``A`` instead of the
    Jacobian's QR factors, each ``λ`` one Cholesky factorisation of ``D⁻¹AD⁻¹ + λI``, at most
    ``max_iterations`` of them. A region without a bound gives the Gauss-Newton step. A
    singular ``A`` whose factorisation fails gives the minimum-norm Gauss-Newton step in the
    scaled variables (the pseudo-inverse), and ``λ``'s lower bound 0. ``O(n³)`` per
    factorisation: for up to a few hundred parameters, as :class:`~trustregion.DenseSolver`.

    The ``λ`` found and ``gᵀs`` go to the region's :attr:`ScaledBall.report`;
    :attr:`~trustregion.result.SolverResult.curvature` is ``sᵀAs`` without ``λD²``, so that the
    minimizer's predicted reduction is the undamped model's.

    With ``max_damping = λ̄`` finite, ``λ`` is kept at or below ``λ̄``: where the region would need
    more, the step is ``s(λ̄)`` shortened onto the region (``‖D s‖ = Δ``). Its direction stays close
    to the Gauss-Newton step's, which moves the directions of small curvature as much as the others,
    where a large ``λ`` leaves them behind; ill-conditioned fits whose accuracy lives in those
    directions (physics-informed networks) converge much further with it, while problems whose
    Gauss-Newton direction is poor far from the solution need the full ``λ``. ``λ̄`` is in the
    scaled variables (``D⁻¹AD⁻¹``, whose diagonal is at most 1 under Moré's scaling).

    Args:
        tolerance: ``σ``, the relative error in ``‖D s‖`` accepted (MINPACK's 0.1).
        max_iterations: factorisations with ``λ > 0`` per step (MINPACK's 10).
        max_damping: ``λ̄``, the largest ``λ`` used (``math.inf``, the default: none, as MINPACK).
    """

    def __init__(self, tolerance: float = 0.1, max_iterations: int = 10, max_damping: float = math.inf) -> None:
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 < tolerance < 1:
            raise ValueError(f"tolerance must be a number in (0, 1) (got {tolerance!r}); MINPACK uses 0.1")
        if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or max_iterations < 1:
            raise ValueError(f"max_iterations must be an integer >= 1 (got {max_iterations!r})")
        if isinstance(max_damping, bool) or not isinstance(max_damping, (int, float)) or not max_damping > 0:
            raise ValueError(f"max_damping must be a number > 0 or math.inf (got {max_damping!r}); e.g. 1e-10")
        self.tolerance = float(tolerance)
        self.max_iterations = max_iterations
        self.max_damping = float(max_damping)

    def __call__(self, operator: LinearOperator, rhs: Tensor) -> SolverResult:
        """The Gauss-Newton step ``A⁻¹ g`` (minimum-norm in the Jacobi-scaled variables if ``A`` is singular)."""
        return self.solve_in_region(operator, rhs, Ball(math.inf))

    def solve_in_region(self, operator: LinearOperator, rhs: Tensor, region: Ball) -> SolverResult:
        """The step of ``q`` in ``region``; the ``λ`` found goes to ``region.report`` for a :class:`ScaledBall`."""
        if region.metric != "euclidean":
            raise ValueError("SecularSolver solves in ‖D s‖₂ regions: use metric='euclidean' (or DenseSolver)")
        if not operator.positive_semidefinite:
            raise ValueError(
                "SecularSolver needs a positive semidefinite curvature (ResidualGaussNewton, GaussNewton): with "
                "Hessian() use SteihaugCG()"
            )
        matrix = operator.dense(rhs.dtype, rhs.device)
        matrix = 0.5 * (matrix + matrix.T)
        if not torch.isfinite(matrix).all():
            zero = torch.zeros_like(rhs)
            return SolverResult(zero, SolverReason.NONFINITE, 0, math.nan, math.nan, 0.0)
        scale = _scale_of(region, matrix)
        scaled = matrix / scale[:, None] / scale[None, :]
        solution = capped_solve(scaled, rhs / scale, region.radius, self.max_damping)
        if solution is None:
            damping = getattr(region, "damping", 0.0)
            solution = secular_solve(scaled, rhs / scale, region.radius, damping, self.tolerance, self.max_iterations)
        return _result(matrix, rhs, scale, solution, region)

    def __repr__(self) -> str:
        return (
            f"SecularSolver(tolerance={self.tolerance}, max_iterations={self.max_iterations}, "
            f"max_damping={self.max_damping})"
        )


def _scale_of(region: Ball, matrix: Tensor) -> Tensor:
    """``D``: the region's scale; the identity for a plain ball; ``sqrt(diag A)`` (Jacobi) for no bound."""
    if isinstance(region, ScaledBall) and region.scale is not None:
        return region.scale.to(matrix)
    if math.isinf(region.radius):  # only the step matters, and the scaled system is the better conditioned
        diagonal = matrix.diagonal().clamp(min=0.0)
        return torch.where(diagonal > 0, diagonal.sqrt(), torch.ones_like(diagonal))
    return torch.ones_like(matrix[0])


def _result(matrix: Tensor, rhs: Tensor, scale: Tensor, solution: SecularSolution, region: Ball) -> SolverResult:
    """The :class:`SolverResult` of ``s = D⁻¹ y``, with the report of a :class:`ScaledBall` filled in."""
    step = solution.scaled_step / scale
    product = matrix @ step
    residual = rhs - product - solution.damping * scale.square() * step
    rhs_norm, residual_norm, curvature, gradient_dot, scaled_norm = torch.stack(
        [
            torch.linalg.vector_norm(rhs),
            torch.linalg.vector_norm(residual),
            step @ product,
            rhs @ step,
            torch.linalg.vector_norm(solution.scaled_step),
        ]
    ).tolist()
    if isinstance(region, ScaledBall):
        region.report.damping, region.report.gradient_dot = solution.damping, gradient_dot
        region.report.scaled_norm = scaled_norm
    return SolverResult(
        direction=step,
        reason=SolverReason.BOUNDARY if solution.damping > 0 else SolverReason.DIRECT,
        iterations=solution.iterations,
        relative_residual=residual_norm / rhs_norm if rhs_norm > 0 else 0.0,
        curvature=curvature,
        gradient_dot=gradient_dot,
        region_norm=scaled_norm if isinstance(region, ScaledBall) else math.nan,
    )


def capped_solve(matrix: Tensor, rhs: Tensor, radius: float, max_damping: float) -> SecularSolution | None:
    """``y(λ̄)`` shortened to ``‖y‖ = Δ`` when it is longer (the region needs ``λ > λ̄``), else ``None``.

    ``‖y(λ)‖`` falls as ``λ`` grows, so ``‖y(λ̄)‖ > Δ`` is exactly when the secular ``λ`` exceeds ``λ̄``.
    """
    if math.isinf(max_damping) or math.isinf(radius):
        return None
    eye = torch.eye(len(rhs), dtype=matrix.dtype, device=matrix.device)
    factor, info = torch.linalg.cholesky_ex(matrix + max_damping * eye)
    if info.item() != 0:
        return None
    step = torch.cholesky_solve(rhs[:, None], factor)[:, 0]
    norm = torch.linalg.vector_norm(step).item()
    if not (math.isfinite(norm) and norm > radius):
        return None
    return SecularSolution(step * (radius / norm), max_damping, 1)


def secular_solve(
    matrix: Tensor, rhs: Tensor, radius: float, damping: float, tolerance: float = 0.1, max_iterations: int = 10
) -> SecularSolution:
    """``y(λ) = (B + λI)⁻¹ h`` with ``‖y‖ <= (1 + σ) Δ`` at ``λ = 0``, else ``|‖y‖ - Δ| <= σ Δ``: MINPACK's lmpar.

    ``matrix`` is ``B = D⁻¹AD⁻¹`` (positive semidefinite), ``rhs`` is ``h = D⁻¹g``, ``radius`` is
    ``Δ`` and ``damping`` the ``λ`` to start from (clipped into the bounds, as lmpar does).
    """
    newton, factor = _gauss_newton(matrix, rhs)
    norm = torch.linalg.vector_norm(newton).item()
    excess = norm - radius
    if not math.isfinite(radius) or excess <= tolerance * radius:
        return SecularSolution(newton, 0.0, 0)
    lower = 0.0 if factor is None else (excess / radius) / _derivative_scale(factor, newton / norm)
    rhs_norm = torch.linalg.vector_norm(rhs).item()
    upper = rhs_norm / radius
    tiny = torch.finfo(matrix.dtype).tiny
    if upper == 0.0:
        upper = tiny / min(radius, 0.1)
    damping = min(max(damping, lower), upper)
    if damping == 0.0:
        damping = rhs_norm / norm
    bounds = [lower, upper]
    return _newton_on_the_secular_equation(matrix, rhs, radius, damping, bounds, excess, tolerance, max_iterations)


def _newton_on_the_secular_equation(
    matrix: Tensor,
    rhs: Tensor,
    radius: float,
    damping: float,
    bounds: list[float],
    excess: float,
    tolerance: float,
    max_iterations: int,
) -> SecularSolution:
    """lmpar's loop: Newton on ``1/‖y(λ)‖ - 1/Δ``, with ``bounds = [λ_low, λ_high]`` tightened as it goes."""
    eye, tiny = torch.eye(len(rhs), dtype=matrix.dtype, device=matrix.device), torch.finfo(matrix.dtype).tiny
    best = None
    for iteration in range(1, max_iterations + 1):
        if damping == 0.0:
            damping = max(tiny, 1e-3 * bounds[1])
        factor, info = torch.linalg.cholesky_ex(matrix + damping * eye)
        if info.item() != 0:  # indefinite by rounding: only for a λ far below the matrix's scale
            bounds[0] = max(bounds[0], damping)
            damping = max(10.0 * damping, math.sqrt(bounds[0] * bounds[1]))
            continue
        step = torch.cholesky_solve(rhs[:, None], factor)[:, 0]
        norm = torch.linalg.vector_norm(step).item()
        previous, excess = excess, norm - radius
        best = SecularSolution(step, damping, iteration)
        exhausted = bounds[0] == 0.0 and excess <= previous < 0.0
        if abs(excess) <= tolerance * radius or exhausted or iteration == max_iterations:
            return best
        correction = (excess / radius) / _derivative_scale(factor, step / norm)
        if excess > 0:
            bounds[0] = max(bounds[0], damping)
        elif excess < 0:
            bounds[1] = min(bounds[1], damping)
        damping = max(bounds[0], damping + correction)
    if best is None:  # no λ factorised: the Gauss-Newton direction, which the minimizer scales onto the region
        return SecularSolution(_gauss_newton(matrix, rhs)[0], 0.0, max_iterations)
    return best


def _derivative_scale(factor: Tensor, unit_step: Tensor) -> float:
    """``‖L⁻¹ y/‖y‖‖²`` for ``B + λI = LLᵀ``: ``-‖y‖ d‖y‖/dλ / ‖y‖²``, the slope in lmpar's Newton correction."""
    solved = torch.linalg.solve_triangular(factor, unit_step[:, None], upper=False)[:, 0]
    return torch.linalg.vector_norm(solved).item() ** 2


def _gauss_newton(matrix: Tensor, rhs: Tensor) -> tuple[Tensor, Tensor | None]:
    """``B⁻¹ h`` by Cholesky and its factor, or the pseudo-inverse's ``B⁺ h`` and ``None`` when ``B`` is singular."""
    factor, info = torch.linalg.cholesky_ex(matrix)
    if info.item() == 0:
        step = torch.cholesky_solve(rhs[:, None], factor)[:, 0]
        if bool(torch.isfinite(step).all()):
            return step, factor
    return torch.linalg.pinv(matrix, hermitian=True) @ rhs, None
