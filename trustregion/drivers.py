"""Whole-run drivers for non-RL users: stopping rules and a run result, as scipy.optimize gives them.

:func:`run` drives any optimizer of this package with a closure until a stopping rule fires;
:func:`minimize` (trust-region Newton-CG on a loss) and :func:`least_squares` (Gauss-Newton /
Levenberg-Marquardt on a residual function) build the optimizer and call it. The stopping rules
follow scipy's definitions:

* ``gtol``: ``‖∇loss‖ <= max(gtol, gtol_rel · ‖∇loss(θ₀)‖)``, checked on the gradient each step
  starts from (the relative form fires on problems whose minimum has a non-zero residual);
* ``ftol``: two accepted steps in a row whose actual and predicted reductions are both below
  ``ftol · |loss|`` (MINPACK's rule, :func:`scipy.optimize.least_squares`' ``ftol``, asked of two
  steps: after a truncated CG step along the stiff directions of an ill-conditioned problem,
  which predicts almost nothing, the next step can still gain much);
* ``xtol``: two accepted steps in a row with ``|Δθ_i| <= xtol · (xtol + |θ_i|)`` for every ``i``
  (scipy's ``xtol`` taken per coordinate, so that a step that moves only a parameter of small
  scale on a badly scaled problem such as Meyer's does not stop the run, and asked of two steps
  for the reason given for ``ftol``);
* ``max_steps``; ``patience`` consecutive refused steps, or a refused step at the control's
  limit (``Reason.STALLED``), stop the run as stalled;
* the optimizer's own convergence test (``Reason.CONVERGED``: ``‖∇loss‖ <= gtol`` of the control
  with no negative curvature) and a non-finite loss, gradient or product end it too.
"""

from __future__ import annotations

import enum
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

from torch import Tensor
from torch.utils._pytree import tree_leaves

from trustregion._base import Closure, PureClosure, TrustRegionBase
from trustregion._validation import check_callable, check_instance, check_integer, check_nonnegative
from trustregion._vectors import flatten
from trustregion.control import LevenbergMarquardt, RadiusControl, ScaledTrustRadius, TrustRadius
from trustregion.curvature import Curvature, Hessian, ResidualGaussNewton
from trustregion.minimizer import TrustRegionMinimizer
from trustregion.result import Reason, SolverReason, StepResult
from trustregion.solvers import DenseSolver, Solver, SteihaugCG
from trustregion.solvers.secular import SecularSolver

_DENSE_UP_TO = 500
""":func:`least_squares` solves with :class:`DenseSolver` up to this many parameters, else with CG.

The dense step forms ``J`` in ``min(m, n)`` passes and ``JᵀJ`` and its factorisation in
``O(n² m + n³)``; a Steihaug step on an ill-conditioned problem takes up to 250 iterations of
two passes each. Up to 500 parameters the dense step costs at most as many passes and its
factorisation is a small part of it (docs/benchmarks.md, "Physics-informed networks")."""


class RunReason(enum.Enum):
    """Why :func:`run` stopped; :attr:`success` and :attr:`message` as scipy's ``OptimizeResult`` has them."""

    GTOL = "gtol"
    FTOL = "ftol"
    XTOL = "xtol"
    CONVERGED = "converged"
    MAX_STEPS = "max_steps"
    STALLED = "stalled"
    NONFINITE = "nonfinite"
    CALLBACK = "callback"

    @property
    def success(self) -> bool:
        return self in (RunReason.GTOL, RunReason.FTOL, RunReason.XTOL, RunReason.CONVERGED)

    @property
    def message(self) -> str:
        return _RUN_MESSAGES[self]


_RUN_MESSAGES = {
    RunReason.GTOL: "the gradient norm fell below max(gtol, gtol_rel · initial gradient norm)",
    RunReason.FTOL: "two accepted steps in a row reduced the loss (actual and predicted) by less than ftol · |loss|",
    RunReason.XTOL: "two accepted steps in a row moved every parameter by less than xtol · (xtol + |θ_i|)",
    RunReason.CONVERGED: "the optimizer's second-order test passed: a small gradient and no negative curvature",
    RunReason.MAX_STEPS: "max_steps steps were taken without meeting a tolerance; raise max_steps or loosen one",
    RunReason.STALLED: (
        "steps kept being refused (patience reached, or the control at its limit): the loss is at the rounding "
        "level of its evaluation, or its gradient and curvature do not match it"
    ),
    RunReason.NONFINITE: "a loss, gradient or curvature product was NaN or infinite; the parameters are the last good",
    RunReason.CALLBACK: "the callback returned True",
}


@dataclass
class RunResult:
    """What a whole run did (compare :class:`scipy.optimize.OptimizeResult`).

    Attributes:
        success: whether a convergence rule (gtol, ftol, xtol, the optimizer's own) stopped the run.
        reason: the rule that stopped it; ``message`` says it in words.
        loss: the loss at the final parameters (the parameters are updated in place).
        steps: optimizer steps taken, accepted or not; ``accepted_steps`` those that moved.
        closure_calls, curvature_products: the work, summed over the steps.
        gradient_norm: ``‖∇loss‖`` at the start of the last step.
        history: the loss after every step.
        last_step: the last step's own result.
    """

    success: bool
    reason: RunReason
    message: str
    loss: float
    steps: int
    accepted_steps: int
    closure_calls: int
    curvature_products: int
    gradient_norm: float
    history: list[float] = field(default_factory=list)
    last_step: StepResult | None = None


@dataclass(frozen=True)
class Stopping:
    """The tolerances of :func:`run`, checked once (see the module docstring for each rule)."""

    max_steps: int = 1000
    gtol: float = 1e-8
    gtol_rel: float = 0.0
    ftol: float = 1e-12
    xtol: float = 1e-12
    patience: int = 20

    def __post_init__(self) -> None:
        check_integer("max_steps", self.max_steps, 1)
        check_integer("patience", self.patience, 1, "consecutive refused steps before the run counts as stalled")
        for name in ("gtol", "gtol_rel", "ftol", "xtol"):
            check_nonnegative(name, getattr(self, name), "0 turns this rule off")
        if self.gtol_rel >= 1.0:
            raise ValueError(f"gtol_rel must be < 1 (got {self.gtol_rel}): it is a fraction of the initial gradient")


def run(
    optimizer: TrustRegionBase,
    closure: Closure,
    *,
    callback: Callable[[StepResult], bool | None] | None = None,
    pure: bool = True,
    **tolerances: float,
) -> RunResult:
    """Step ``optimizer`` with ``closure`` until a stopping rule fires; return a :class:`RunResult`.

    Args:
        optimizer: a :class:`~trustregion.TrustRegionMinimizer` or
            :class:`~trustregion.TrustRegionOptimizer`.
        closure: as the optimizer's ``step`` takes it.
        callback: called with each step's result; returning ``True`` stops the run.
        pure: the closure is a pure function of the parameters, so evaluations are reused across
            steps (:class:`~trustregion.PureClosure`); ``False`` for one that draws a new batch.
        **tolerances: ``max_steps`` (1000), ``gtol`` (1e-8), ``gtol_rel`` (0), ``ftol`` (1e-12),
            ``xtol`` (1e-12), ``patience`` (20); see the module docstring.
    """
    check_instance("optimizer", optimizer, TrustRegionBase, "TrustRegionMinimizer(params)")
    if callback is not None:
        check_callable("callback", callback, "StepResult -> True to stop")
    stopping = _stopping(tolerances)
    closure = _prepared(optimizer, closure, pure, tolerances)
    params = optimizer.param_groups[0]["params"]
    tally = _Tally()
    for _ in range(stopping.max_steps):
        before = flatten([p.detach() for p in params])
        optimizer.step(closure)
        step = optimizer.last_result
        moved = flatten([p.detach() for p in params]) - before
        still = bool((moved.abs() <= stopping.xtol * (stopping.xtol + before.abs())).all())
        reason = tally.add(step, still, stopping)
        if reason is None and callback is not None and callback(step) is True:
            reason = RunReason.CALLBACK
        if reason is not None:
            return tally.result(reason)
    return tally.result(RunReason.MAX_STEPS)


def _stopping(tolerances: dict[str, float]) -> Stopping:
    """:class:`Stopping` of ``tolerances``; a name that is no tolerance is refused in one line."""
    known = [item.name for item in fields(Stopping)]
    unknown = sorted(set(tolerances) - set(known))
    if unknown:
        raise TypeError(f"unknown tolerance {unknown[0]!r}: the tolerances are {', '.join(known)}")
    return Stopping(**tolerances)


def _no_argument_loss(loss: Callable[..., Tensor], params: list[Tensor]) -> Callable[[], Tensor]:
    """``loss`` itself when it takes no argument, else ``lambda: loss(*params)`` (scipy's ``fun(x)``)."""
    try:
        parameters = inspect.signature(loss).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): call it as a closure
        return loss
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = sum(1 for item in parameters if item.kind in positional and item.default is item.empty)
    if required == 0:
        return loss
    if required != len(params):
        raise TypeError(
            f"loss takes {required} positional argument(s) but there are {len(params)} parameter tensors: "
            "give loss() of no arguments, or loss(*params) with one argument per tensor"
        )
    return lambda: loss(*params)


def _prepared(optimizer: TrustRegionBase, closure: Closure, pure: bool, tolerances: dict[str, float]) -> Closure:
    """The closure :func:`run` steps with (a :class:`PureClosure` when ``pure``), after checking the options."""
    if not isinstance(pure, bool):
        raise TypeError(f"pure must be True or False (got {pure!r})")
    control = getattr(optimizer, "control", None)
    if "gtol" in tolerances and control is not None and tolerances["gtol"] < control.gtol:
        raise ValueError(
            f"gtol={tolerances['gtol']:g} is below the control's gtol={control.gtol:g}, whose convergence test "
            f"stops the run first: give the control the same gtol ({type(control).__name__}(gtol=...)) or leave "
            "gtol out"
        )
    return PureClosure(closure) if pure and not isinstance(closure, PureClosure) else closure


class _Tally:
    """The running sums of a run and the stopping rules applied to each step."""

    def __init__(self) -> None:
        self.result_so_far = RunResult(False, RunReason.MAX_STEPS, "", math.nan, 0, 0, 0, 0, math.nan)
        self.initial_gradient_norm = math.nan
        self.refused_in_a_row = 0
        self.flat_in_a_row = 0
        self.still_in_a_row = 0

    def add(self, step: StepResult, still: bool, stopping: Stopping) -> RunReason | None:
        total = self.result_so_far
        if total.steps == 0:
            self.initial_gradient_norm = step.gradient_norm
        total.steps += 1
        total.accepted_steps += step.accepted
        total.closure_calls += step.closure_calls
        total.curvature_products += step.curvature_products
        total.gradient_norm, total.loss, total.last_step = step.gradient_norm, step.loss_after, step
        total.history.append(step.loss_after)
        self.refused_in_a_row = 0 if step.accepted else self.refused_in_a_row + 1
        return self._reason(step, still, stopping)

    def _reason(self, step: StepResult, still: bool, stopping: Stopping) -> RunReason | None:
        if step.reason.nonfinite and not math.isfinite(step.expected_improvement):
            return RunReason.NONFINITE  # at the point itself; a non-finite trial point is only a refused step
        if step.reason is Reason.CONVERGED:
            return RunReason.CONVERGED
        small = step.gradient_norm <= max(stopping.gtol, stopping.gtol_rel * self.initial_gradient_norm)
        if small and step.solver_reason is not SolverReason.NEGATIVE_CURVATURE:  # not a saddle just escaped
            return RunReason.GTOL
        if step.accepted:
            level = stopping.ftol * abs(step.loss_before)
            flat = step.actual_improvement <= level and step.expected_improvement <= level
            self.flat_in_a_row = self.flat_in_a_row + 1 if flat else 0
            self.still_in_a_row = self.still_in_a_row + 1 if still else 0
            if self.flat_in_a_row >= 2:
                return RunReason.FTOL
            if self.still_in_a_row >= 2:
                return RunReason.XTOL
        if step.reason is Reason.STALLED or self.refused_in_a_row >= stopping.patience:
            return RunReason.STALLED
        return None

    def result(self, reason: RunReason) -> RunResult:
        total = self.result_so_far
        total.reason, total.success, total.message = reason, reason.success, reason.message
        return total


def minimize(
    loss: Callable[[], Tensor],
    params: Sequence[Tensor],
    *,
    curvature: Curvature | None = None,
    solver: Solver | None = None,
    control: RadiusControl | None = None,
    callback: Callable[[StepResult], bool | None] | None = None,
    **tolerances: float,
) -> RunResult:
    """Minimise ``loss()`` over ``params`` by trust-region Newton-CG (``scipy.optimize.minimize(method="trust-ncg")``).

    ``loss`` is a closure of no arguments computing the loss from ``params`` (updated in place),
    or a function of the parameter tensors, ``loss(*params)``, as scipy's ``fun(x)``.
    Defaults: the exact :class:`~trustregion.Hessian`, :class:`~trustregion.SteihaugCG` and
    :class:`~trustregion.TrustRadius`; ``tolerances`` as in :func:`run`.
    """
    check_callable("loss", loss, "() -> scalar loss tensor computed from params, or loss(*params)")
    params, stopping = list(params), _stopping(tolerances)
    control = control or TrustRadius(gtol=stopping.gtol)
    optimizer = TrustRegionMinimizer(params, curvature=curvature or Hessian(), solver=solver, control=control)
    return run(optimizer, _no_argument_loss(loss, params), callback=callback, **tolerances)


def least_squares(
    residuals: Callable[..., Tensor],
    params: Sequence[Tensor],
    *,
    scale: float = 1.0,
    solver: Solver | None = None,
    control: RadiusControl | None = None,
    callback: Callable[[StepResult], bool | None] | None = None,
    **tolerances: float,
) -> RunResult:
    """Minimise ``½ scale ‖residuals(*params)‖²`` by Levenberg-Marquardt (``scipy.optimize.least_squares``).

    ``residuals(*params)`` is a pure function of the parameter tensors (as
    :class:`~trustregion.ResidualGaussNewton` takes it), or a closure that reads them
    itself (``lambda *_: model(x) - y`` with ``params = model.parameters()``). Defaults: the Gauss-Newton matrix
    ``JᵀJ``; up to 500 parameters MINPACK's ``lmder`` (what ``method="lm"`` runs),
    :class:`~trustregion.ScaledTrustRadius` on Moré's scaled step length with
    :class:`~trustregion.SecularSolver`; above, :class:`~trustregion.LevenbergMarquardt` from
    ``μ₀ = 10⁻⁶`` with Moré's scaling and the curvature floor, and :class:`~trustregion.SteihaugCG`.
    A ``solver`` other than :class:`~trustregion.SecularSolver` goes with the damping control;
    ``control=TrustRadius(gtol=1e-10), solver=DenseSolver()`` or ``solver=SecularSolver(max_damping=1e-10)``
    suit physics-informed networks (docs/non_rl.md). ``tolerances`` as in :func:`run`.
    Residuals that are not floating-point tensors, or change shape between points, raise a
    one-line error (the parameters are left where they were); non-finite residuals at the start
    end the run with ``RunReason.NONFINITE``. A step costs one residual evaluation at the trial
    point and one in the curvature's linearisation (:class:`~trustregion.PureClosure`).
    """
    check_callable("residuals", residuals, "residuals(*params) -> tensor of residuals")
    params, stopping = list(params), _stopping(tolerances)
    fit = ResidualGaussNewton(residuals, scale)
    size = sum(p.numel() for p in params)
    gtol, dense = stopping.gtol, size <= _DENSE_UP_TO
    if control is None and dense and (solver is None or isinstance(solver, SecularSolver)):
        control = ScaledTrustRadius(params=params, gtol=gtol)  # MINPACK's lmder, as scipy's method="lm"
    control = control or LevenbergMarquardt(1e-6, gtol=gtol, scaled=True, curvature_floor=True)
    if solver is None and isinstance(control, ScaledTrustRadius):
        solver = SecularSolver()
    solver = solver or (DenseSolver(equilibrate=True) if dense else SteihaugCG(max_iter=min(size, 250)))
    optimizer = TrustRegionMinimizer(params, curvature=fit, solver=solver, control=control)
    return run(optimizer, _checked_loss(residuals, scale, params), callback=callback, **tolerances)


def _checked_loss(residuals: Callable[..., Tensor], scale: float, params: list[Tensor]) -> Callable[[], Tensor]:
    """``½ scale ‖residuals(*params)‖²`` as a closure, refusing residuals that are not tensors or change shape.

    The same value as :meth:`~trustregion.ResidualGaussNewton.loss`; a refusal is raised inside the
    optimizer's step, which restores the parameters.
    """
    shapes: list[list[tuple[int, ...]]] = []

    def loss() -> Tensor:
        output = residuals(*params)
        parts = tree_leaves(output)
        if not parts or not all(isinstance(part, Tensor) and part.is_floating_point() for part in parts):
            raise TypeError(
                "residuals(*params) must return a floating-point tensor (or a tuple of them) computed from params; "
                f"it returned {type(output).__name__}"
            )
        shape = [tuple(part.shape) for part in parts]
        if not shapes:
            if sum(part.numel() for part in parts) == 0:
                raise ValueError("residuals(*params) returned no residuals (an empty tensor): return at least one")
            shapes.append(shape)
        elif shape != shapes[0]:
            raise ValueError(
                f"residuals(*params) returned shape {shape} after {shapes[0]}: return the same residuals at every "
                "point (give a residual that does not count the value 0 rather than dropping it)"
            )
        return 0.5 * scale * sum(part.square().sum() for part in parts)

    return loss
