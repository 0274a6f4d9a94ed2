"""Steihaug-Toint truncated conjugate gradient: CG that stops at the trust-region boundary."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from trustregion._validation import check_integer, check_nonnegative
from trustregion.operator import LinearOperator
from trustregion.preconditioners import PreconditionerLike, preconditioning
from trustregion.result import SolverReason, SolverResult
from trustregion.solvers.base import Ball, Solver, check_preconditioner, preconditioned_reason, solver_result

_UNBOUNDED = Ball(math.inf)


class SteihaugCG(Solver):
    r"""Truncated CG for ``min q(s) = ½ sᵀAs - gᵀs  s.t.  ‖s‖ <= Δ`` (Steihaug, 1983; Toint, 1981).

    CG from ``s_0 = 0`` on ``A s = g``; the model ``q`` decreases and ``‖s_k‖``
    grows with every iterate, both in the Euclidean norm and in the ``A``-norm
    (Nocedal & Wright, *Numerical Optimization*, 2nd ed., 2006, Algorithm 7.2
    and Theorem 7.3). After each product ``A p``:

    1. non-finite ``A p`` or ``pᵀAp``: stop with the last iterate (``NONFINITE``).
    2. ``pᵀAp <= 0`` (negative curvature): move from ``s_k`` along ``±p`` to the
       boundary, to whichever of the two crossings has the lower model value
       (``NEGATIVE_CURVATURE``). Without a bounded ball along ``p`` (the
       ``operator`` metric, or ``Δ = ∞``) return ``s_k`` as plain CG does.
    3. ``‖s_k + α p‖ >= Δ``: stop where the segment crosses the boundary
       (``BOUNDARY``).
    4. ``‖g - A s_{k+1}‖ <= η ‖g‖`` (``CONVERGED``); ``k + 1 = max_iter``
       (``MAX_ITERATIONS``).

    In the ``operator`` metric the boundary is ``sᵀAs = Δ²``; with ``A`` the
    Fisher and ``Δ = sqrt(2δ)`` it is the KL boundary ``½ sᵀAs = δ`` of TRPO.
    There the exact minimiser of ``q`` on the ball is TRPO's step ``β A⁻¹g``
    (``q(s) = ½‖s - A⁻¹g‖²_A - const``, and the closest point of an ``A``-ball
    to ``A⁻¹g`` lies on the ray through it); Steihaug's boundary point is its
    Krylov approximation, reached in fewer products when the natural-gradient
    step is long compared with ``δ``. Used as the solver of a
    :class:`~trustregion.TrustRegionOptimizer` with a line search, it receives
    ``Ball.kl(max_kl)``.

    ``sᵀAs`` and ``gᵀs`` come from vectors already formed (``A s = g - r``,
    plus ``τ A p`` for a boundary point), so the predicted reduction
    ``gᵀs - ½ sᵀAs`` of a trust-region method costs no extra product (scipy's
    ``trust-ncg`` spends one per iteration on it).

    Args:
        max_iter: cap on products (>= 1); ``None`` uses ``10 n``: exact
            arithmetic terminates within ``n`` iterations, but rounding delays
            convergence on ill-conditioned ``A``, so the default cap only stops
            a runaway loop. Networks should pass a small cap (TRPO: 10).
        tol: relative residual tolerance ``η``; ``None`` uses the forcing sequence
            ``η = min(0.5, sqrt(‖g‖))`` of inexact Newton methods, which gives
            superlinear convergence of the outer iteration (Nocedal & Wright,
            eq. 7.3 and Algorithm 7.1; the rule of scipy's ``trust-ncg``).
        preconditioner: a :class:`~trustregion.Preconditioner` built once per solve
            (:class:`~trustregion.Jacobi`, :class:`~trustregion.KFAC`) or a fixed map
            ``r -> P⁻¹ r``. Preconditioned CG (Nocedal & Wright, sec. 7.2)
            keeps its iterates monotone in ``‖s‖_P = sqrt(sᵀPs)``, so a Euclidean
            region becomes the ball ``‖s‖_P <= Δ`` (a scaled trust region; the
            result's ``region_norm`` is that norm); an operator-metric region (the
            KL ball) is unchanged. A non-positive ``rᵀP⁻¹r`` stops the solve with
            ``INDEFINITE_PRECONDITIONER``.
    """

    def __init__(
        self, max_iter: int | None = None, tol: float | None = None, preconditioner: PreconditionerLike | None = None
    ) -> None:
        if max_iter is not None:
            check_integer("max_iter", max_iter, 1, "or None for 10 × the dimension")
        if tol is not None:
            tol = check_nonnegative("tol", tol, "or None for min(0.5, sqrt(‖g‖))")
        self.max_iter = max_iter
        self.tol = tol
        self.preconditioner = check_preconditioner(preconditioner)

    def __call__(self, operator: LinearOperator, rhs: Tensor) -> SolverResult:
        """Truncated CG without a boundary (``Δ = ∞``): CG that reports negative curvature."""
        return self.solve_in_region(operator, rhs, _UNBOUNDED)

    def solve_in_region(self, operator: LinearOperator, rhs: Tensor, region: Ball) -> SolverResult:
        rhs_norm = torch.linalg.vector_norm(rhs).item()
        solution = torch.zeros_like(rhs)
        if rhs_norm == 0.0 or not math.isfinite(rhs_norm):
            reason = SolverReason.ZERO_RHS if rhs_norm == 0.0 else SolverReason.NONFINITE
            return solver_result(solution, rhs, rhs.clone(), reason, 0, rhs_norm)
        tolerance = (min(0.5, math.sqrt(rhs_norm)) if self.tol is None else self.tol) * rhs_norm
        precondition = preconditioning(self.preconditioner, operator, rhs)
        residual = rhs.clone()
        direction, residual_dot, refused = _precondition(precondition, rhs, (rhs @ rhs).item())  # not ‖g‖²
        if refused is not None:
            return solver_result(solution, rhs, residual, refused, 0, rhs_norm)
        boundary = _Boundary(region, preconditioned=precondition is not None, residual_dot=residual_dot)
        iterations = 0
        for _ in range(self.max_iter or 10 * operator.dim):
            product = operator(direction)
            curvature, residual_direction, solution_product = torch.stack(
                [direction @ product, residual @ direction, solution @ product]
            ).tolist()
            move = (solution, direction, product, residual)
            if not (math.isfinite(curvature) and torch.isfinite(product).all()):
                return boundary.result(move, rhs, SolverReason.NONFINITE, iterations, rhs_norm)
            if curvature <= 0.0:
                crossing = (solution, direction, solution_product, curvature, residual_direction)
                tau = boundary.negative_curvature_crossing(*crossing)  # None: no bounded ball along p, keep s_k
                reason = SolverReason.NEGATIVE_CURVATURE
                return boundary.result(move, rhs, reason, iterations + (tau is not None), rhs_norm, tau)
            step = residual_dot / curvature
            tau = boundary.crossing(solution, direction, solution_product, curvature, step)
            if tau is not None:
                return boundary.result(move, rhs, SolverReason.BOUNDARY, iterations + 1, rhs_norm, tau)
            boundary.advance(solution_product, curvature, step)
            solution.add_(direction, alpha=step)
            residual.sub_(product, alpha=step)
            iterations += 1
            residual_square = (residual @ residual).item()
            if math.sqrt(residual_square) <= tolerance:  # <=: tol=0 stops at an exact solution
                return boundary.result(move, rhs, SolverReason.CONVERGED, iterations, rhs_norm)
            preconditioned, new_residual_dot, refused = _precondition(precondition, residual, residual_square)
            if refused is not None:
                return boundary.result(move, rhs, refused, iterations, rhs_norm)
            boundary.turn(new_residual_dot / residual_dot, new_residual_dot)
            direction = preconditioned + (new_residual_dot / residual_dot) * direction
            residual_dot = new_residual_dot
        return boundary.result(move, rhs, SolverReason.MAX_ITERATIONS, iterations, rhs_norm)

    def __repr__(self) -> str:
        return f"SteihaugCG(max_iter={self.max_iter}, tol={self.tol}, preconditioner={self.preconditioner!r})"


class _Boundary:
    """Where ``s + τ p`` meets ``‖·‖ = Δ`` in the region's metric, from scalars only.

    Euclidean: ``‖s + τp‖² = sᵀs + 2τ sᵀp + τ² pᵀp``. Operator metric:
    ``‖s + τp‖²_A = sᵀAs + 2τ sᵀAp + τ² pᵀAp`` with ``sᵀAs`` kept by recurrence
    (``‖s_{k+1}‖²_A = ‖s_k‖²_A + 2α sᵀAp + α² pᵀAp``) and ``sᵀAp`` a dot product
    with the product just formed. Euclidean with a preconditioner: the ball is
    ``‖s‖_P <= Δ`` and ``sᵀPs``, ``sᵀPp``, ``pᵀPp`` follow the recurrences of
    Nocedal & Wright (2006, sec. 7.2), which need no product with ``P``.
    """

    def __init__(self, region: Ball, *, preconditioned: bool, residual_dot: float) -> None:
        self.region = region
        self.scaled = preconditioned and region.metric == "euclidean"
        self.solution_curvature = 0.0  # sᵀAs, operator metric only
        # sᵀPs, sᵀPp, pᵀPp in the scaled (preconditioned) case; p_0 = P⁻¹r_0 gives p_0ᵀ P p_0 = r_0ᵀ P⁻¹ r_0
        self.scaled_terms = [0.0, 0.0, residual_dot]

    def _quadratic(self, solution: Tensor, direction: Tensor, solution_product: float, curvature: float):
        """``(c, b, a)`` with ``‖s + τp‖² = c + 2bτ + aτ²``."""
        if self.region.metric == "operator":
            return self.solution_curvature, solution_product, curvature
        if self.scaled:
            return tuple(self.scaled_terms)
        c, b, a = torch.stack([solution @ solution, solution @ direction, direction @ direction]).tolist()
        return c, b, a

    def crossing(self, solution, direction, solution_product: float, curvature: float, step: float) -> float | None:
        """``τ ∈ [0, step]`` where the CG segment leaves the ball, or ``None`` if ``s + step·p`` stays inside."""
        radius = self.region.radius
        if math.isinf(radius):
            return None
        c, b, a = self._quadratic(solution, direction, solution_product, curvature)
        if c + 2 * b * step + a * step * step < radius * radius:
            return None
        return _positive_root(a, b, c - radius * radius)

    def negative_curvature_crossing(
        self, solution, direction, solution_product: float, curvature: float, residual_direction: float
    ) -> float | None:
        """The boundary crossing along ``±p`` with the lower model value, or ``None`` if the ball is unbounded."""
        if self.region.metric == "operator" or math.isinf(self.region.radius):
            return None
        c, b, a = self._quadratic(solution, direction, solution_product, curvature)
        offset = c - self.region.radius**2
        forward, backward = _positive_root(a, b, offset), _negative_root(a, b, offset)

        def change(tau: float) -> float:  # q(s + τp) - q(s) = -τ rᵀp + ½ τ² pᵀAp
            return -tau * residual_direction + 0.5 * tau * tau * curvature

        return forward if change(forward) <= change(backward) else backward

    def advance(self, solution_product: float, curvature: float, step: float) -> None:
        """``s <- s + α p``."""
        if self.region.metric == "operator":
            self.solution_curvature += 2 * step * solution_product + step * step * curvature
        elif self.scaled:
            terms = self.scaled_terms
            terms[0] += 2 * step * terms[1] + step * step * terms[2]
            terms[1] += step * terms[2]  # s_{k+1}ᵀ P p_k

    def turn(self, beta: float, residual_dot: float) -> None:
        """``p <- P⁻¹ r + β p``, using ``sᵀr = 0`` and ``pᵀr = 0`` of the new residual."""
        if self.scaled:
            terms = self.scaled_terms
            terms[1] *= beta
            terms[2] = residual_dot + beta * beta * terms[2]

    def result(self, move, rhs: Tensor, reason: SolverReason, iterations: int, rhs_norm: float, tau=None):
        """The iterate ``s`` (or the crossing ``s + τp``, residual ``r - τ Ap``, no further product)."""
        solution, direction, product, residual = move
        if tau is None:
            norm = math.sqrt(max(self.scaled_terms[0], 0.0)) if self.scaled else math.nan
            return solver_result(solution, rhs, residual, reason, iterations, rhs_norm, region_norm=norm)
        norm = self.region.radius if self.scaled else math.nan
        step = solution + tau * direction
        return solver_result(step, rhs, residual - tau * product, reason, iterations, rhs_norm, region_norm=norm)


def _precondition(precondition, residual: Tensor, residual_square: float) -> tuple[Tensor, float, SolverReason | None]:
    """``(z, rᵀz, reason)`` with ``z = P⁻¹ r``; ``reason`` when ``rᵀz`` is not finite or not positive."""
    if precondition is None:
        return residual, residual_square, None
    preconditioned = precondition(residual)
    residual_dot = (residual @ preconditioned).item()
    return preconditioned, residual_dot, preconditioned_reason(residual_dot)


def _positive_root(a: float, b: float, offset: float) -> float:
    """The root ``τ >= 0`` of ``aτ² + 2bτ + offset = 0`` for ``a > 0``, ``offset <= 0`` (cancellation-free)."""
    discriminant = math.sqrt(max(b * b - a * offset, 0.0))
    if b >= 0:
        return max(-offset / (b + discriminant), 0.0) if b + discriminant > 0 else 0.0
    return (discriminant - b) / a


def _negative_root(a: float, b: float, offset: float) -> float:
    """The root ``τ <= 0`` of ``aτ² + 2bτ + offset = 0`` for ``a > 0``, ``offset <= 0``."""
    return -_positive_root(a, -b, offset)
