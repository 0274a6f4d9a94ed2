"""TrustRegionOptimizer: the KL-constrained natural step of TRPO and NPG, and nothing else."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from torch import Tensor

from trustregion._base import Closure, Reduce, StartPoint, TrustRegionBase, component, trial_rejection
from trustregion._validation import check_positive
from trustregion._vectors import add_step
from trustregion.curvature import Curvature, Damped, KLHessian
from trustregion.result import KLStepResult, Reason, SolverReason, SolverResult
from trustregion.search import BacktrackingLineSearch, LineSearch, SearchProblem, TrialPoint
from trustregion.solvers import Ball, ConjugateGradient, Solver

_MAX_KL_HINT = "it is the trust-region radius δ; TRPO uses 0.01"
_KL_ROUNDING = 1e-3
"""The constraint may differ from 0 at ``θ_old``, and fall below 0 anywhere, by this fraction of ``δ`` (rounding)."""


class TrustRegionOptimizer(TrustRegionBase):
    r"""Minimise a loss under a KL trust region measured by a curvature operator ``A`` (TRPO, NPG).

    Each :meth:`step` solves the local problem (docs/math.md)

    .. math:: \max_s\; g^\top s \quad\text{s.t.}\quad \tfrac12 s^\top A s \le \delta,
              \qquad g = -\nabla_\theta \text{loss}(\theta_\text{old}),

    whose solution is ``Δθ = β s`` with ``s = A⁻¹g`` and ``β = sqrt(2δ / sᵀAs)``,
    then lets the line search pick a multiple of ``Δθ``. With ``A`` the Fisher
    (the KL Hessian) this is TRPO's natural-gradient step
    ``sqrt(2δ / gᵀF⁻¹g) F⁻¹g``.

    Used like :class:`torch.optim.LBFGS`, with a closure::

        opt = TrustRegionOptimizer(policy.parameters(), max_kl=0.01)
        def closure():
            return surrogate_loss(), mean_kl()   # loss to minimise, constraint
        opt.step(closure)

    The closure re-evaluates at the current parameters and returns the loss, or
    a ``(loss, constraint)`` pair where the constraint is ``D̄_KL(θ_old, θ)``,
    zero at the old parameters. It must **not** call ``backward()``: the
    optimizer differentiates what it returns. The first call runs with gradients
    enabled; the line-search calls run under :func:`torch.no_grad`.

    Args:
        params: the parameters (one group: the trust region couples them all).
        max_kl: the radius ``δ > 0`` of the trust region (TRPO: 0.01).
        curvature: ``A``; default ``Damped(KLHessian(), 0.1)``, the TRPO reference.
            :meth:`step` takes a per-step curvature too (e.g. a Gauss-Newton
            operator on the step's batch).
        solver: default ``ConjugateGradient(max_iter=10)``.
        line_search: default ``BacktrackingLineSearch()``; ``NoLineSearch()`` gives NPG.
        reduce: applied to the gradient, to every curvature product and to the
            closure's scalars before anything uses them; a data-parallel run
            passes an all-reduce mean here and nothing else changes. Identity by
            default.

    After every step, :attr:`last_result` holds a :class:`~trustregion.KLStepResult`.
    A rejected step leaves the parameters bit-for-bit as they were and, when
    caused by a NaN or an infinity, warns. For radius-controlled minimisation
    (Newton-CG, Gauss-Newton, Levenberg-Marquardt) see
    :class:`~trustregion.TrustRegionMinimizer`.
    """

    result_type = KLStepResult
    components = ("curvature", "solver", "line_search", "reduce")

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        max_kl: float = 0.01,
        *,
        curvature: Curvature | None = None,
        solver: Solver | None = None,
        line_search: LineSearch | None = None,
        reduce: Reduce | None = None,
    ) -> None:
        max_kl = check_positive("max_kl", max_kl, _MAX_KL_HINT)
        self.curvature = component("curvature", curvature, Curvature, _default_curvature, "Damped(KLHessian(), 0.1)")
        self.solver = component("solver", solver, Solver, ConjugateGradient, "ConjugateGradient(max_iter=10)")
        self.line_search = component(
            "line_search", line_search, LineSearch, BacktrackingLineSearch, "BacktrackingLineSearch()"
        )
        super().__init__(params, {"max_kl": max_kl}, reduce)

    def _check_group(self, param_group: dict[str, Any]) -> None:
        check_positive("max_kl", param_group.get("max_kl", self.defaults["max_kl"]), _MAX_KL_HINT)

    def _check_start(self, constraint: Tensor | None, value: float | None) -> None:
        """The constraint must be ``D̄_KL(θ_old, θ)``: depend on the parameters, and be ~0 at ``θ_old``."""
        if constraint is None:
            return
        if not constraint.requires_grad:
            raise ValueError(
                "closure's constraint does not depend on the parameters (no autograd graph), so it cannot bound the "
                "step: compute the mean KL from the parameters without torch.no_grad() or .detach()"
            )
        max_kl = self.param_groups[0]["max_kl"]
        if value is not None and math.isfinite(value) and abs(value) > _KL_ROUNDING * max_kl:
            raise ValueError(
                f"closure's constraint is {value:.3g} at the old parameters, not ~0: it must be D̄_KL(θ_old, θ), "
                "measured against a frozen copy of the old distribution (old = policy(obs).detach() before the step)"
            )

    def _check_trial(self, point: TrialPoint) -> None:
        """A KL is never negative: a value below ``-1e-3 δ`` (rounding) means a sign error or a noisy estimator."""
        max_kl = self.param_groups[0]["max_kl"]
        if point.constraint is not None and -math.inf < point.constraint < -_KL_ROUNDING * max_kl:
            raise ValueError(
                f"closure's constraint is {point.constraint:.3g} at a trial point: a KL is never negative; check its "
                "sign, and estimate it from samples with the non-negative (r - 1) - log r, r = π(a|s) / π_old(a|s)"
            )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As :meth:`torch.optim.Optimizer.load_state_dict`; a saved ``max_kl`` that is not > 0 is refused."""
        for group in state_dict["param_groups"]:
            self._check_group(group)
        super().load_state_dict(state_dict)

    def _step(self, params: list[Tensor], saved: list[Tensor], closure: Closure, curvature: Curvature) -> KLStepResult:
        max_kl = check_positive("max_kl", self.param_groups[0]["max_kl"], _MAX_KL_HINT)  # may be set between steps
        start = self._start(params, closure, curvature)
        if not isinstance(start, StartPoint):
            return start
        solve = self.solver.solve_in_region(start.operator, start.gradient, Ball.kl(max_kl))
        details = {
            "gradient_norm": start.gradient_norm,
            "solver_iterations": solve.iterations,
            "solver_residual": solve.relative_residual,
            "solver_reason": solve.reason,
            "curvature_products": start.operator.products,
        }
        if solve.reason is SolverReason.NONFINITE or not math.isfinite(solve.gradient_dot):
            return self._rejected(Reason.NONFINITE_PRODUCT, start.loss, **details)
        if not solve.usable:
            return self._rejected(Reason.NON_POSITIVE_CURVATURE, start.loss, **details)
        return self._search(params, saved, closure, start, max_kl, solve, details)

    def _search(
        self,
        params: list[Tensor],
        saved: list[Tensor],
        closure: Closure,
        start: StartPoint,
        max_kl: float,
        solve: SolverResult,
        details: dict[str, Any],
    ) -> KLStepResult:
        """Phase 2: scale ``s`` to the KL boundary, ``Δθ = β s``, and let the line search take a multiple."""
        step_scale = math.sqrt(2.0 * max_kl / solve.curvature)
        full_step = step_scale * solve.direction
        expected = step_scale * solve.gradient_dot  # the linear model's gain, β gᵀs: no product needed
        calls, loss = [1], start.loss
        trial = self._trial(params, saved, full_step, closure, calls, constrained=start.constraint is not None)
        search = self.line_search(SearchProblem(trial, loss, expected, max_kl))
        if search.accepted:
            add_step(params, saved, full_step, search.fraction)
        refused = trial_rejection(search.loss, search.constraint, Reason.LINE_SEARCH_EXHAUSTED)
        return KLStepResult(
            accepted=search.accepted,
            reason=Reason.ACCEPTED if search.accepted else refused,
            loss_before=loss,
            loss_after=search.loss if search.accepted else loss,
            expected_improvement=expected,
            actual_improvement=loss - search.loss,
            constraint_after=search.constraint,
            step_scale=step_scale,
            step_fraction=search.fraction,
            backtracks=search.backtracks,
            closure_calls=calls[0],
            **details,
        )


def _default_curvature() -> Curvature:
    return Damped(KLHessian(), 0.1)
