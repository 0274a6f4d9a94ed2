"""(Preconditioned) conjugate gradient for ``A s = g``, capped and curvature-aware."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from trustregion._validation import check_integer, check_nonnegative
from trustregion.operator import LinearOperator
from trustregion.preconditioners import PreconditionerLike, preconditioning
from trustregion.result import SolverReason, SolverResult
from trustregion.solvers.base import Solver, check_preconditioner, preconditioned_reason, solver_result


class ConjugateGradient(Solver):
    """Conjugate gradient (Hestenes & Stiefel, 1952), optionally preconditioned.

    Minimises the model ``q(s) = ½ sᵀAs - gᵀs`` over growing Krylov subspaces;
    ``s_k`` after ``k`` products. Stopping rules, checked in this order after each
    product ``A p``:

    1. ``A p`` or ``pᵀAp`` non-finite: stop, keep the last iterate (``NONFINITE``).
    2. ``pᵀAp <= 0``: ``A`` is not positive definite along ``p``; stop and return
       the last iterate, which still decreases ``q`` (``NEGATIVE_CURVATURE``).
    3. ``‖g - A s_k‖ <= tol · ‖g‖`` (``CONVERGED``).
    4. ``k = max_iter`` (``MAX_ITERATIONS``), the usual exit in TRPO.

    Defaults: ``max_iter=10`` is the TRPO paper's and OpenAI baselines'
    ``cg_iters``. ``tol=1e-10`` is relative, ``‖r‖ <= 1e-10 ‖g‖``, so that it does
    not depend on the loss scale; it is much stricter than the rule of OpenAI
    baselines and sb3-contrib, which stop when the *squared* residual falls below an
    absolute ``residual_tol = 1e-10`` (``‖r‖ < 1e-5``). With TRPO's cap of 10
    iterations the cap, not the tolerance, usually ends the solve here, while those
    implementations often stop earlier; ``ConjugateGradient(tol=1e-5 / ‖g‖)`` has no
    fixed equivalent, so compare iteration counts, not tolerances.

    ``sᵀAs`` is returned without another product: ``sᵀAs = sᵀ(g - r) = gᵀs - rᵀs``
    with ``r`` the recurrence residual.

    Args:
        max_iter: the cap on products (>= 1).
        tol: relative residual tolerance (>= 0).
        preconditioner: a :class:`~trustregion.Preconditioner` built once per solve
            (:class:`~trustregion.Jacobi`, :class:`~trustregion.KFAC`), or a fixed map
            ``r -> P⁻¹ r`` for an SPD ``P ≈ A``. A non-positive ``rᵀP⁻¹r`` stops the solve
            with ``INDEFINITE_PRECONDITIONER``.
    """

    def __init__(
        self, max_iter: int = 10, tol: float = 1e-10, preconditioner: PreconditionerLike | None = None
    ) -> None:
        self.max_iter = check_integer("max_iter", max_iter, 1, "TRPO uses 10")
        self.tol = check_nonnegative("tol", tol)
        self.preconditioner = check_preconditioner(preconditioner)

    def __call__(self, operator: LinearOperator, rhs: Tensor) -> SolverResult:
        solution = torch.zeros_like(rhs)
        residual = rhs.clone()
        rhs_norm = torch.linalg.vector_norm(rhs).item()
        if rhs_norm == 0.0:
            return solver_result(solution, rhs, residual, SolverReason.ZERO_RHS, 0, rhs_norm)
        precondition = preconditioning(self.preconditioner, operator, rhs) or (lambda r: r)
        preconditioned = precondition(residual)
        direction = preconditioned.clone()
        residual_dot = residual @ preconditioned
        reason = preconditioned_reason(residual_dot.item()) if self.preconditioner is not None else None
        iterations = 0
        while reason is None and iterations < self.max_iter:
            product = operator(direction)
            curvature = direction @ product
            curvature_value, residual_dot_value = torch.stack([curvature, residual_dot]).tolist()
            if not math.isfinite(curvature_value) or not math.isfinite(residual_dot_value):
                reason = SolverReason.NONFINITE
                break
            if self.preconditioner is not None and (reason := preconditioned_reason(residual_dot_value)):
                break  # rᵀP⁻¹r read with pᵀAp above: no synchronisation of its own
            if curvature_value <= 0.0:
                reason = SolverReason.NEGATIVE_CURVATURE
                break
            step = residual_dot / curvature
            solution.add_(step * direction)
            residual.sub_(step * product)
            iterations += 1
            if torch.linalg.vector_norm(residual).item() <= self.tol * rhs_norm:
                reason = SolverReason.CONVERGED
                break
            preconditioned = precondition(residual)
            new_residual_dot = residual @ preconditioned
            direction = preconditioned + (new_residual_dot / residual_dot) * direction
            residual_dot = new_residual_dot
        return solver_result(solution, rhs, residual, reason or SolverReason.MAX_ITERATIONS, iterations, rhs_norm)

    def __repr__(self) -> str:
        return f"ConjugateGradient(max_iter={self.max_iter}, tol={self.tol:g}, preconditioner={self.preconditioner!r})"
