"""TrustRegionMinimizer: radius-controlled trust-region minimisation (Newton-CG, Gauss-Newton, Levenberg-Marquardt)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from trustregion._base import (
    Closure,
    KeptPoint,
    PureClosure,
    Reduce,
    StartPoint,
    TrustRegionBase,
    component,
    trial_rejection,
)
from trustregion.control import RadiusControl, TrustRadius
from trustregion.control.base import improvement_ratio
from trustregion.curvature import Curvature, Hessian
from trustregion.result import RadiusStepResult, Reason, SolverReason, SolverResult
from trustregion.solvers import Ball, Solver, SteihaugCG
from trustregion.solvers.subproblem import escape_saddle, pull_back

_NOISE_CAP = 1e4
"""The relative evaluation noise the acceptance test learns is at most ``10⁴ ε`` (2·10⁻¹² in float64)."""


class TrustRegionMinimizer(TrustRegionBase):
    r"""Trust-region minimisation of a loss: ``scipy.optimize.minimize(method="trust-ncg")`` as a torch optimizer.

    Each :meth:`step` minimises the quadratic model

    .. math:: q(s) = \tfrac12 s^\top (A + \mu I) s - g^\top s, \qquad \|s\| \le \Delta,

    with the solver (default :class:`~trustregion.SteihaugCG`), evaluates the
    closure once at ``θ + s`` and lets the radius control (default
    :class:`~trustregion.TrustRadius`) take or refuse the step on the ratio ``ρ``
    of actual to predicted reduction and choose the next radius ``Δ`` or damping
    ``μ``. Some pairs and what they are:

    * ``curvature=Hessian()``, ``control=TrustRadius()``: trust-region Newton-CG
      (Nocedal & Wright, Algorithms 4.1 and 7.2; scipy's ``trust-ncg``);
    * ``curvature=ResidualGaussNewton(r)`` or ``GaussNewton``, ``control=TrustRadius()``:
      a trust-region Gauss-Newton method;
    * the same curvature with ``control=LevenbergMarquardt()``: Levenberg-Marquardt.

    The control's state (radius or damping, a frozen dataclass) lives in
    :attr:`state` and is saved by ``state_dict()``. When ``‖∇loss‖ <= gtol``
    (the control's) the step checks the second-order condition: a positive
    semidefinite ``A`` gives ``Reason.CONVERGED`` at once; otherwise a Lanczos
    probe (:func:`~trustregion.solvers.subproblem.escape_saddle`) either finds
    negative curvature and steps to the boundary along it, or finds none and
    reports ``Reason.CONVERGED`` with :attr:`~trustregion.RadiusStepResult.min_curvature`.

    ::

        opt = TrustRegionMinimizer(model.parameters(), curvature=Hessian())
        for _ in range(200):
            opt.step(lambda: loss_fn(model))              # loss-only closure
            if opt.last_result.reason is Reason.CONVERGED:
                break

    Args:
        params: the parameters (one group).
        curvature: ``A``; default :class:`~trustregion.Hessian` (double backward).
        solver: default :class:`~trustregion.SteihaugCG`.
        control: the radius control; default :class:`~trustregion.TrustRadius`.
        reduce: as in :class:`~trustregion.TrustRegionOptimizer`.

    The closure returns the loss, or ``(loss, constraint)`` when the curvature
    needs a constraint (``KLHessian``); the constraint is then reported, not bounded.
    Both closure calls of a step (at ``θ`` and at ``θ + s``) run with gradients
    enabled, so a loss that differentiates inside (a PDE residual's Laplacian, a
    gradient penalty) needs no ``torch.enable_grad()`` of its own.
    """

    result_type = RadiusStepResult
    components = ("curvature", "solver", "control", "reduce")

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        *,
        curvature: Curvature | None = None,
        solver: Solver | None = None,
        control: RadiusControl | None = None,
        reduce: Reduce | None = None,
    ) -> None:
        self.curvature = component("curvature", curvature, Curvature, Hessian, "Hessian()")
        self.solver = component("solver", solver, Solver, SteihaugCG, "SteihaugCG()")
        self.control = component("control", control, RadiusControl, TrustRadius, "TrustRadius()")
        super().__init__(params, {}, reduce)

    @property
    def control_state(self) -> Any:
        """The control's current state (e.g. ``TrustRadiusState(radius=1.0)``)."""
        return self.state[self._params()[0]].get("control") or self.control.init()

    def _steps_at_zero_gradient(self) -> bool:
        return True

    def _step(
        self, params: list[Tensor], saved: list[Tensor], closure: Closure, curvature: Curvature
    ) -> RadiusStepResult:
        start = self._start(params, closure, curvature)
        if not isinstance(start, StartPoint):
            return start
        state = self._observe(start)
        region, damping = self.control.region(state), self.control.damping(state)
        if region.bounded_by_operator and not start.operator.positive_semidefinite:
            raise ValueError(
                f"{self.control!r} needs a positive semidefinite curvature (GaussNewton, KLHessian, ...) because its "
                "region is measured by the operator or unbounded; with Hessian() use TrustRadius(metric='euclidean')"
            )
        details = {"gradient_norm": start.gradient_norm, "radius": region.radius, "damping": damping}
        solve, min_curvature = self._solve(start, region, state)
        details.update(min_curvature=min_curvature, curvature_products=start.operator.products)
        if solve is None:
            return self._rejected(Reason.CONVERGED, start.loss, **details)
        details.update(
            solver_iterations=solve.iterations, solver_residual=solve.relative_residual, solver_reason=solve.reason
        )
        if solve.reason is SolverReason.NONFINITE or not math.isfinite(solve.gradient_dot):
            return self._rejected(Reason.NONFINITE_PRODUCT, start.loss, **details)
        solve, step_norm = pull_back(solve, region)
        details["step_norm"] = step_norm
        predicted = _predicted_reduction(solve, self._shift(state, start))
        if not (math.isfinite(predicted) and predicted > 0.0):
            self._set_control_state(self.control.update(state, -math.inf, step_norm))
            return self._rejected(Reason.NON_POSITIVE_CURVATURE, start.loss, **details)
        return self._try(params, saved, closure, start, solve.direction, predicted, details)

    def _observe(self, start: StartPoint) -> Any:
        """The control's state, updated with ``diag(A)`` when the step starts from a new point."""
        state, saved = self.control_state, self.state[self._params()[0]]
        if not saved.get("observed", False):  # kept in state_dict(), so a resumed run does not look again
            state = self.control.observe(state, lambda: start.operator.diagonal(start.gradient))
            self._set_control_state(state)
            saved["observed"] = True
        return state

    def _shift(self, state: Any, start: StartPoint) -> float | Tensor:
        shift = self.control.shift(state)
        return shift.to(start.gradient) if isinstance(shift, Tensor) else shift

    def _solve(self, start: StartPoint, region: Ball, state: Any) -> tuple[SolverResult | None, float]:
        """The step of the model in ``region``; at ``‖g‖ <= gtol`` a saddle escape or ``None`` (converged)."""
        if start.gradient_norm <= self.control.gtol:
            seed = self.state[self._params()[0]].get("step", 0)
            iterations, damping = self.control.probe_iterations, self.control.damping(state)
            return escape_saddle(start.operator, start.gradient, region, damping, iterations, seed)
        operator = start.operator.shifted(self._shift(state, start))
        return self.solver.solve_in_region(operator, start.gradient, region), math.nan

    def _try(
        self,
        params: list[Tensor],
        saved: list[Tensor],
        closure: Closure,
        start: StartPoint,
        step: Tensor,
        predicted: float,
        details: dict[str, Any],
    ) -> RadiusStepResult:
        """Evaluate ``θ + s`` once; the control takes or refuses it on ``ρ`` and sets its next state."""
        calls, loss, constrained = [start.closure_calls], start.loss, start.constraint is not None
        recorded, outputs = _recording(closure)
        with torch.enable_grad():  # one trial per step: closures that differentiate inside (PINNs) just work
            point = self._trial(params, saved, step, recorded, calls, constrained=constrained)(1.0)
        rounding = self._rounding(loss, params[0].dtype)
        ratio = improvement_ratio(loss, point.loss, predicted, rounding)
        accepted = self.control.accept(ratio)
        if not accepted:
            self._learn_noise(loss, point.loss, predicted, params[0].dtype)
        state = self.control_state
        self._set_control_state(self.control.after_step(state, ratio, details["step_norm"], step, predicted))
        if accepted:  # the parameters are at θ + s since the trial
            self.state[params[0]]["observed"] = False  # a new point for the control to observe
        if outputs:  # a pure closure: the next step starts from this trial point, or from this start again
            self._keep(closure, params, saved, outputs[0] if accepted else start)
        too_little = Reason.STALLED if self.control.stalled(state) else Reason.INSUFFICIENT_DECREASE
        refused = trial_rejection(point.loss, point.constraint, too_little)
        return RadiusStepResult(
            accepted=accepted,
            reason=Reason.ACCEPTED if accepted else refused,
            loss_before=loss,
            loss_after=point.loss if accepted else loss,
            expected_improvement=predicted,
            actual_improvement=loss - point.loss,
            constraint_after=point.constraint,
            closure_calls=calls[0],
            rounding=rounding,
            **details,
        )

    def _rounding(self, loss: float, dtype: torch.dtype) -> float:
        """``r = max(10 ε max(1, |loss|), ν |loss|)``, ``ν`` the relative evaluation noise seen so far (0 at first).

        The first term is Conn, Gould & Toint's allowance (*Trust-Region Methods*, 2000, sec. 17.4.2);
        the learned one is relative to the loss alone, so a loss far below 1 is not given an absolute one.
        """
        noise = self.state[self._params()[0]].get("noise", 0.0)
        return max(10 * torch.finfo(dtype).eps * max(1.0, abs(loss)), noise * abs(loss))

    def _learn_noise(self, loss: float, trial_loss: float, predicted: float, dtype: torch.dtype) -> None:
        """Raise ``ν`` to what a refused step too small for the loss to resolve showed.

        A step predicted to gain at most ``10⁴ ε |loss|`` is far inside the region where the
        quadratic model is exact to many digits, so ``|actual - predicted|`` there is the noise of the
        loss's evaluation, not model error (Meyer's ``Σ r²`` is 88 but sums differences of numbers near
        3·10⁴, and shows noise near 10⁻¹⁰). ``ν`` becomes twice that relative deviation, so the same
        step tried again has ``ρ`` near ½ and is taken; it is capped at ``10⁴ ε``.
        """
        level, cap = abs(loss), _NOISE_CAP * torch.finfo(dtype).eps
        if not (math.isfinite(trial_loss) and 0.0 < predicted <= cap * level):
            return
        state = self.state[self._params()[0]]
        seen = min(2.0 * abs(loss - trial_loss - predicted) / level, cap)
        state["noise"] = max(state.get("noise", 0.0), seen)

    def _keep(self, closure: PureClosure, params: list[Tensor], saved: list[Tensor], kept: object) -> None:
        """Leave the accepted trial point's output, or the refused step's start, for the next step."""
        versions = [p._version for p in params]
        if isinstance(kept, StartPoint):
            kept.operator = None  # its graphs are stale and the next step builds its own
            self.kept_point = KeptPoint(closure, saved, versions, start=kept)
        else:
            self.kept_point = KeptPoint(closure, [p.detach().clone() for p in params], versions, output=kept)

    def _set_control_state(self, state: Any) -> None:
        self.state[self._params()[0]]["control"] = state

    def state_dict(self) -> dict[str, Any]:
        """As :meth:`torch.optim.Optimizer.state_dict`, with the control's state as a plain dict."""
        packed = super().state_dict()
        packed["state"] = {key: _plain(value) for key, value in packed["state"].items()}
        return packed

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`; a state saved under another kind of control is refused."""
        state = {key: self._typed(value) for key, value in state_dict["state"].items()}
        super().load_state_dict({**state_dict, "state": state})

    def _typed(self, values: dict[str, Any]) -> dict[str, Any]:
        if "control" not in values:
            return values
        state_type = self.control.state_type
        fields = {field.name for field in dataclasses.fields(state_type)}
        if set(values["control"]) != fields:
            raise ValueError(
                f"the saved control state {sorted(values['control'])} is not a {state_type.__name__} "
                f"({sorted(fields)}); load it into a minimizer with the same kind of control as the one that saved it"
            )
        return {**values, "control": state_type(**values["control"])}


def _recording(closure: Closure) -> tuple[Closure, list[object]]:
    """``closure``, recording its outputs when it is a :class:`PureClosure` (whose trial point may be kept)."""
    outputs: list[object] = []
    if not isinstance(closure, PureClosure):
        return closure, outputs
    return (lambda: outputs.append(closure()) or outputs[-1]), outputs


def _predicted_reduction(solve: SolverResult, shift: float | Tensor) -> float:
    """``gᵀs - ½ sᵀAs`` of the undamped model; the solver knows ``sᵀ(A + M)s``, so ``sᵀMs`` is taken off."""
    s = solve.direction
    if isinstance(shift, Tensor):
        shift_curvature = (s * shift * s).sum().item()
    else:
        shift_curvature = shift * torch.linalg.vector_norm(s).item() ** 2 if shift else 0.0
    return solve.gradient_dot - 0.5 * (solve.curvature - shift_curvature)


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    if "control" not in values:
        return values
    return {**values, "control": dataclasses.asdict(values["control"])}
