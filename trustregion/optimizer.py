"""TrustRegionOptimizer: the outer loop of one trust-region step, nothing else."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from trustregion._vectors import add_step, flatten, gradients, restore
from trustregion.curvature import Curvature, Damped, KLHessian, LinearOperator, StepProblem
from trustregion.result import Reason, SolverReason, SolverResult, StepResult
from trustregion.search import (
    BacktrackingLineSearch,
    LineSearch,
    RadiusController,
    SearchProblem,
    TrialPoint,
)
from trustregion.solvers import ConjugateGradient, Solver, SteihaugCG, TrustRegion, smallest_eigenpair


@dataclass
class _LocalModel:
    """The quadratic model at ``θ_old`` that phase 2 needs (no autograd graphs)."""

    loss: float
    solve: SolverResult
    details: dict[str, Any]
    controller_state: dict[str, float] | None = None
    """A radius controller's state for this step; ``None`` under a line search."""
    predicted_reduction: float = math.nan
    step_norm: float = math.nan


Closure = Callable[[], Tensor | tuple[Tensor, Tensor]]
Reduce = Callable[[Tensor], Tensor]


class TrustRegionOptimizer(torch.optim.Optimizer):
    r"""Minimise a loss under a trust region measured by a curvature operator ``A``.

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
        solver: default ``ConjugateGradient(max_iter=10)``.
        line_search: default ``BacktrackingLineSearch()``.
        reduce: applied to the gradient, to every curvature product and to the
            closure's scalars before anything uses them; a data-parallel run
            passes an all-reduce mean here and nothing else changes. Identity by
            default.

    After every step, :attr:`last_result` holds a :class:`~trustregion.StepResult`.
    A rejected step leaves the parameters bit-for-bit as they were and, when
    caused by a NaN or an infinity, warns.

    **Radius controllers.** With ``line_search`` a
    :class:`~trustregion.RadiusController` (:class:`~trustregion.TrustRadius`,
    :class:`~trustregion.LevenbergMarquardt`) the step is the classic trust-region
    one instead: the solver (default :class:`~trustregion.SteihaugCG`) minimises
    ``q(s) = ½ sᵀAs - gᵀs`` within the controller's radius, there is no ``β``
    (``max_kl`` is not used), and the controller accepts ``Δθ = s`` on the ratio
    ``ρ`` of actual to predicted reduction and resizes the radius, which is kept
    in :attr:`state` and saved by ``state_dict()``. ``A`` is only built at
    accepted points. When ``‖∇loss‖ <= gtol`` (the controller's) the step checks
    the second-order condition: a positive semidefinite ``A`` gives
    ``Reason.CONVERGED`` at once; otherwise a Lanczos probe from a random vector
    (:func:`~trustregion.solvers.smallest_eigenpair`) either finds a Ritz value
    ``θ < 0`` and the step goes to the boundary along its Ritz vector (escaping
    the saddle), or finds none and the step reports ``Reason.CONVERGED`` with
    ``extra["min_curvature"] = θ``.
    """

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
        _check_positive("max_kl", max_kl, "it is the trust-region radius δ; TRPO uses 0.01")
        super().__init__(params, {"max_kl": float(max_kl)})
        if len(self.param_groups) != 1:
            raise ValueError(
                "params must form a single group: the trust region couples all parameters; "
                "pass one list of tensors (per-group options are not supported)"
            )
        self.curvature = _component("curvature", curvature, Curvature, lambda: Damped(KLHessian(), 0.1))
        self.line_search = _component("line_search", line_search, LineSearch, BacktrackingLineSearch)
        radius_mode = isinstance(self.line_search, RadiusController)
        self.solver = _component("solver", solver, Solver, SteihaugCG if radius_mode else ConjugateGradient)
        if reduce is not None and not callable(reduce):
            raise TypeError("reduce must be callable: tensor -> reduced tensor (e.g. an all-reduce mean)")
        self.reduce: Reduce = reduce or (lambda tensor: tensor)
        self.last_result: StepResult | None = None
        self._check_params(self._params())

    def _params(self) -> list[Tensor]:
        return list(self.param_groups[0]["params"])

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self.param_groups:
            raise ValueError("TrustRegionOptimizer has one parameter group; create a new optimizer instead")
        _check_positive("max_kl", param_group.get("max_kl", self.defaults["max_kl"]), "the trust-region radius δ")
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Closure) -> Tensor:  # type: ignore[override]
        """Take one trust-region step and return the loss at the old parameters.

        Args:
            closure: re-evaluates the model; returns ``loss`` or ``(loss, constraint)``.
        """
        if closure is None or not callable(closure):
            raise TypeError("step() needs a closure: closure() -> loss or (loss, constraint)")
        params = self._params()
        saved = [p.detach().clone() for p in params]
        model = self._local_model(params, closure)
        result = model if isinstance(model, StepResult) else self._search(params, saved, closure, model)
        if not result.accepted:
            restore(params, saved)
            if result.reason.value.startswith("nonfinite"):
                warnings.warn(f"trust-region step rejected: {result.reason.value}", RuntimeWarning, stacklevel=2)
        self._record(result)
        return torch.tensor(result.loss_before, dtype=params[0].dtype, device=params[0].device)

    def _local_model(self, params: list[Tensor], closure: Closure) -> _LocalModel | StepResult:
        """Phase 1 at ``θ_old``: loss, gradient ``g``, operator ``A``, direction ``s``.

        Every autograd graph lives in this frame only and is freed on return.
        """
        with torch.enable_grad():
            loss, constraint = _unpack(closure(), first_call=True)
        loss_value, constraint_value = self._scalars(loss, constraint)
        rejected = _rejection(loss_value)
        if not math.isfinite(loss_value):
            return rejected(Reason.NONFINITE_LOSS)
        if constraint_value is not None and not math.isfinite(constraint_value):
            return rejected(Reason.NONFINITE_CONSTRAINT)
        with torch.enable_grad():
            loss_gradient = gradients(loss, params, retain_graph=True, create_graph=self.curvature.needs_loss_graph)
        gradient = -self.reduce(flatten(loss_gradient).detach())
        gradient_norm = torch.linalg.vector_norm(gradient).item()
        if not math.isfinite(gradient_norm):
            return rejected(Reason.NONFINITE_GRADIENT)
        radius_mode = isinstance(self.line_search, RadiusController)
        if gradient_norm == 0.0 and not radius_mode:
            return rejected(Reason.ZERO_GRADIENT, gradient_norm=0.0)
        with torch.enable_grad():
            operator = self.curvature.build(StepProblem(params, loss, constraint, loss_gradient, closure))
            operator = operator.map(self.reduce)
        if radius_mode:
            return self._region_model(loss_value, operator, gradient, gradient_norm)
        solve = self.solver.solve_in_region(operator, gradient, TrustRegion.kl(self.param_groups[0]["max_kl"]))
        details = {
            "gradient_norm": gradient_norm,
            "solver_iterations": solve.iterations,
            "solver_residual": solve.relative_residual,
            "solver_reason": solve.reason,
            "curvature_products": operator.products,
        }
        if solve.reason is SolverReason.NONFINITE or not math.isfinite(solve.gradient_dot):
            return rejected(Reason.NONFINITE_PRODUCT, **details)
        if not solve.usable:
            return rejected(Reason.NON_POSITIVE_CURVATURE, **details)
        return _LocalModel(loss_value, solve, details)

    def _region_model(
        self, loss_value: float, operator: LinearOperator, gradient: Tensor, gradient_norm: float
    ) -> _LocalModel | StepResult:
        """Phase 1 under a radius controller: ``s`` minimises ``q`` within the controller's region."""
        controller: RadiusController = self.line_search
        state = self._controller_state()
        region = TrustRegion(state.get("trust_radius", math.inf), controller.metric)
        damping = state.get("damping", 0.0)
        if region.bounded_by_operator and not operator.positive_semidefinite:
            raise ValueError(
                f"{controller!r} needs a positive semidefinite curvature (GaussNewton, KLHessian, ...) because its "
                "region is measured by the operator or unbounded; with Hessian() use TrustRadius(metric='euclidean')"
            )
        solver_operator = operator.shifted(damping)
        extra = {"damping": damping} if damping else {}
        rejected = _rejection(loss_value)
        if gradient_norm <= controller.gtol:
            solve = self._second_order_step(operator, gradient, region, damping, extra)
        else:
            solve = self.solver.solve_in_region(solver_operator, gradient, region)
        details = {"gradient_norm": gradient_norm, "curvature_products": operator.products, "radius": region.radius}
        if solve is None:
            return rejected(Reason.CONVERGED, **details, extra=extra)
        details.update(
            solver_iterations=solve.iterations, solver_residual=solve.relative_residual, solver_reason=solve.reason
        )
        if solve.reason is SolverReason.NONFINITE or not math.isfinite(solve.gradient_dot):
            return rejected(Reason.NONFINITE_PRODUCT, **details, extra=extra)
        solve, step_norm = _pull_back(solve, region)
        squared_norm = torch.linalg.vector_norm(solve.direction).item() ** 2 if damping else 0.0
        predicted = solve.gradient_dot - 0.5 * (solve.curvature - damping * squared_norm)
        extra["step_norm"] = step_norm
        if not (math.isfinite(predicted) and predicted > 0.0):
            self._store_controller_state(controller.update(state, -math.inf, step_norm))
            return rejected(Reason.NON_POSITIVE_CURVATURE, **details, extra=extra)
        details["extra"] = extra
        return _LocalModel(loss_value, solve, details, state, predicted, step_norm)

    def _second_order_step(
        self, operator: LinearOperator, gradient: Tensor, region: TrustRegion, damping: float, extra: dict[str, float]
    ) -> SolverResult | None:
        """At ``‖g‖ <= gtol``: a step to the boundary along negative curvature, or ``None`` (converged)."""
        if operator.positive_semidefinite:
            return None
        step_count = self.state[self._params()[0]].get("step", 0)
        probe = smallest_eigenpair(operator, gradient, self.line_search.probe_iterations, seed=step_count)
        extra["min_curvature"] = probe.value
        if math.isnan(probe.value):
            zero = torch.zeros_like(gradient)
            return SolverResult(zero, SolverReason.NONFINITE, 0, probe.products, math.nan, math.nan, math.nan)
        if probe.value >= -math.sqrt(torch.finfo(gradient.dtype).eps) * probe.scale:
            return None
        direction = probe.vector if (gradient @ probe.vector).item() >= 0 else -probe.vector
        step = region.radius * direction  # ‖v‖ = 1 and vᵀAv = θ: sᵀ(A + μI)s = Δ²(θ + μ), no product needed
        curvature = region.radius**2 * (probe.value + damping)
        reason = SolverReason.NEGATIVE_CURVATURE
        return SolverResult(step, reason, probe.products, probe.products, math.nan, curvature, (gradient @ step).item())

    def _controller_state(self) -> dict[str, float]:
        state = self.state[self._params()[0]]
        return {key: state.get(key, value) for key, value in self.line_search.initial_state().items()}

    def _store_controller_state(self, controller_state: dict[str, float]) -> None:
        self.state[self._params()[0]].update(controller_state)

    def _search(self, params: list[Tensor], saved: list[Tensor], closure: Closure, model: _LocalModel) -> StepResult:
        """Phase 2: scale ``s`` to the trust-region boundary and hand it to the line search.

        Under a radius controller ``s`` already lies in the region: the controller
        evaluates it once and returns its next state.
        """
        max_kl = self.param_groups[0]["max_kl"]
        radius_mode = model.controller_state is not None
        if radius_mode:
            step_scale, full_step, expected = 1.0, model.solve.direction, model.predicted_reduction
        else:
            step_scale = math.sqrt(2.0 * max_kl / model.solve.curvature)
            full_step = step_scale * model.solve.direction
            expected = step_scale * model.solve.gradient_dot
        calls = [1]

        def trial(fraction: float) -> TrialPoint:
            add_step(params, saved, full_step, fraction)
            calls[0] += 1
            trial_loss, trial_constraint = _unpack(closure(), first_call=False)
            return TrialPoint(*self._scalars(trial_loss, trial_constraint))

        if radius_mode:
            rounding = 10 * torch.finfo(params[0].dtype).eps * max(1.0, abs(model.loss))
            problem = SearchProblem(
                trial, model.loss, expected, max_kl, model.controller_state, model.step_norm, rounding
            )
        else:
            problem = SearchProblem(trial, model.loss, expected, max_kl)
        search = self.line_search(problem)
        if search.accepted:
            add_step(params, saved, full_step, search.fraction)
        if search.controller_state is not None:
            self._store_controller_state(search.controller_state)
        rejection = Reason.INSUFFICIENT_DECREASE if radius_mode else Reason.LINE_SEARCH_EXHAUSTED
        if not math.isfinite(search.loss):
            rejection = Reason.NONFINITE_LOSS
        elif search.constraint is not None and not math.isfinite(search.constraint):
            rejection = Reason.NONFINITE_CONSTRAINT
        return StepResult(
            accepted=search.accepted,
            reason=Reason.ACCEPTED if search.accepted else rejection,
            loss_before=model.loss,
            loss_after=search.loss if search.accepted else model.loss,
            expected_improvement=expected,
            actual_improvement=model.loss - search.loss,
            constraint_after=search.constraint,
            step_scale=step_scale,
            step_fraction=search.fraction,
            backtracks=search.backtracks,
            closure_calls=calls[0],
            **model.details,
        )

    def _scalars(self, loss: Tensor, constraint: Tensor | None) -> tuple[float, float | None]:
        """Reduce the closure's scalars with one call of the reduction hook."""
        values = [loss.detach().reshape(())]
        if constraint is not None:
            values.append(constraint.detach().to(loss.dtype).reshape(()))
        reduced = self.reduce(torch.stack(values)).tolist()
        return reduced[0], (reduced[1] if constraint is not None else None)

    def _record(self, result: StepResult) -> None:
        state = self.state[self._params()[0]]
        state["step"] = state.get("step", 0) + 1
        state["rejected_steps"] = state.get("rejected_steps", 0) + (not result.accepted)
        self.last_result = result

    @staticmethod
    def _check_params(params: list[Tensor]) -> None:
        if not params:
            raise ValueError("params is empty: pass the model's parameters")
        first = params[0]
        for p in params:
            if not p.is_floating_point():
                raise TypeError(f"params must be floating point tensors; got dtype {p.dtype}")
            if p.dtype != first.dtype or p.device != first.device:
                raise ValueError(
                    "params must share one dtype and device (the step is one flat vector); "
                    f"got {first.dtype} on {first.device} and {p.dtype} on {p.device}"
                )


def _unpack(output: object, *, first_call: bool) -> tuple[Tensor, Tensor | None]:
    if isinstance(output, Tensor):
        loss, constraint = output, None
    elif isinstance(output, (tuple, list)) and len(output) == 2 and all(isinstance(t, Tensor) for t in output):
        loss, constraint = output
    else:
        raise TypeError(
            "closure must return the loss as a scalar tensor, or a (loss, constraint) pair of scalar "
            f"tensors with the constraint the mean KL; it returned {type(output).__name__}"
        )
    for name, value in (("loss", loss), ("constraint", constraint)):
        if value is not None and value.numel() != 1:
            raise TypeError(f"closure's {name} must be a scalar tensor; got shape {tuple(value.shape)}")
    if first_call and not loss.requires_grad:
        raise TypeError(
            "closure's loss does not depend on the parameters (no autograd graph): "
            "compute it from the parameters without torch.no_grad() or .detach()"
        )
    return loss, constraint


def _rejection(loss_value: float) -> Callable[..., StepResult]:
    def rejected(reason: Reason, **details: Any) -> StepResult:
        return StepResult(
            accepted=False,
            reason=reason,
            loss_before=loss_value,
            loss_after=loss_value,
            closure_calls=1,
            **details,
        )

    return rejected


def _pull_back(solve: SolverResult, region: TrustRegion) -> tuple[SolverResult, float]:
    """Scale a step that left the region back onto its boundary; return it and its norm in the metric."""
    norm = region.norm(solve.direction, solve.curvature)
    if norm <= region.radius:
        return solve, norm
    factor = region.radius / norm
    scaled = replace(
        solve,
        direction=factor * solve.direction,
        curvature=factor * factor * solve.curvature,
        gradient_dot=factor * solve.gradient_dot,
    )
    return scaled, region.radius


def _component(name: str, value: Any, kind: type, default: Callable[[], Any]) -> Any:
    if value is None:
        return default()
    if not isinstance(value, kind):
        raise TypeError(f"{name} must be a {kind.__name__} instance; got {type(value).__name__}")
    return value


def _check_positive(name: str, value: Any, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0 (got {value!r}); {hint}")
