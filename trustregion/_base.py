"""The shell both optimizers share: closure evaluation, the ``reduce`` hook, bit-exact restore, results."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from trustregion._validation import check_callable, check_instance
from trustregion._vectors import add_step, flatten, gradients, restore
from trustregion.curvature import Curvature, StepProblem
from trustregion.operator import LinearOperator
from trustregion.result import Reason, StepResult
from trustregion.search.base import TrialPoint

Closure = Callable[[], Tensor | tuple[Tensor, Tensor]]
Reduce = Callable[[Tensor], Tensor]


def identity(tensor: Tensor) -> Tensor:
    """The default ``reduce``: a single process has nothing to reduce."""
    return tensor


@dataclass
class StartPoint:
    """The closure at ``θ_old``, its gradient and the curvature operator: everything a step starts from.

    The autograd graphs in ``loss``, ``constraint`` and ``loss_gradient`` live as long as
    this object, which lives only inside one :meth:`~TrustRegionBase.step`.
    """

    loss: float
    gradient: Tensor
    """``g = -∇ loss``, reduced, as one flat vector."""
    gradient_norm: float
    operator: LinearOperator | None
    """``A``, reduced; ``None`` when the step was rejected before it was built."""
    constraint: float | None = None
    """The closure's constraint at ``θ_old`` (reduced), ``None`` for a loss-only closure."""
    closure_calls: int = 1
    """Closure calls this start cost: 0 when a :class:`PureClosure`'s earlier evaluation was reused."""


class PureClosure:
    """A closure declared a pure function of the parameters: equal parameters give an equal loss.

    :class:`~trustregion.TrustRegionMinimizer` then reuses evaluations across steps when it is
    stepped with the same ``PureClosure`` object and the parameters are bit for bit where it left
    them: an accepted trial point's loss (and its autograd graph) is the next step's start, and a
    refused step's start (loss and gradient) is the next step's too, so that a step costs one
    closure call, as in MINPACK's ``lmder``. :func:`~trustregion.run` wraps its closure in one
    (``pure=False`` turns that off for closures that draw a new batch or count their calls).
    """

    def __init__(self, closure: Callable[[], Tensor | tuple[Tensor, Tensor]]) -> None:
        self.closure = check_callable("closure", closure, "closure() -> loss or (loss, constraint)")

    def __call__(self) -> Tensor | tuple[Tensor, Tensor]:
        return self.closure()


@dataclass
class KeptPoint:
    """What a step leaves for the next one to reuse: the point, and its closure output or its start."""

    closure: PureClosure
    params: list[Tensor]
    """Copies of the parameters the evaluation belongs to."""
    versions: list[int]
    output: object | None = None
    """The closure's output there with its graph (an accepted trial point), else ``None``."""
    start: StartPoint | None = None
    """The start of a refused step (its graph is stale: the trial moved the parameters in place)."""

    def matches(self, closure: object, params: list[Tensor]) -> bool:
        """Whether ``closure`` is the same pure closure and ``params`` hold the same values."""
        return closure is self.closure and all(torch.equal(p, q) for p, q in zip(params, self.params, strict=True))

    def graph_intact(self, params: list[Tensor]) -> bool:
        """Whether no in-place write touched the parameters since the output was computed."""
        return all(p._version == version for p, version in zip(params, self.versions, strict=True))


class TrustRegionBase(torch.optim.Optimizer):
    """Closure evaluation, the ``reduce`` hook, bit-exact restore and result recording.

    Subclasses give :meth:`_step` (the algorithm), :attr:`result_type` and the names of
    their components (:attr:`components`), which ``copy.deepcopy`` and ``pickle`` keep.
    """

    result_type: ClassVar[type[StepResult]] = StepResult
    components: ClassVar[tuple[str, ...]] = ("curvature", "solver", "reduce")

    def __init__(
        self, params: Iterable[Tensor] | Iterable[dict[str, Any]], defaults: dict[str, Any], reduce: Reduce | None
    ) -> None:
        super().__init__(params, defaults)
        if reduce is not None:
            check_callable("reduce", reduce, "tensor -> reduced tensor (e.g. an all-reduce mean)")
        self.reduce: Reduce = reduce or identity
        self.last_result: StepResult | None = None
        _check_params(self._params())

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self.param_groups:
            raise ValueError(
                f"{type(self).__name__} has one parameter group: the trust region couples all parameters; "
                "create a new optimizer instead"
            )
        self._check_group(param_group)
        super().add_param_group(param_group)

    def _check_group(self, param_group: dict[str, Any]) -> None:
        """Validate per-group options (none by default)."""

    def _params(self) -> list[Tensor]:
        return list(self.param_groups[0]["params"])

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update({name: getattr(self, name) for name in (*self.components, "last_result")})
        return state

    @torch.no_grad()
    def step(self, closure: Closure, curvature: Curvature | None = None) -> Tensor:  # type: ignore[override]
        """Take one step and return the loss at the old parameters.

        Whatever happens (a rejected step, or an exception raised by the closure, a
        curvature product or a ``KeyboardInterrupt``), parameters that do not end in an
        accepted step are restored bit for bit.

        Args:
            closure: re-evaluates the model; returns ``loss`` or ``(loss, constraint)``.
            curvature: this step's curvature, in place of the one given at construction
                (e.g. a Gauss-Newton operator on this step's batch).
        """
        if closure is None or not callable(closure):
            raise TypeError("step() needs a closure: closure() -> loss or (loss, constraint)")
        curvature = component("curvature", curvature, Curvature, lambda: self.curvature, "KLHessian()")
        params = self._params()
        saved = [p.detach().clone() for p in params]
        try:
            result = self._step(params, saved, closure, curvature)
        except BaseException:
            restore(params, saved)
            raise
        if not result.accepted:
            restore(params, saved)
            if result.reason.nonfinite:
                message = f"step rejected ({result.reason.value}): {result.reason.message}"
                warnings.warn(message, RuntimeWarning, stacklevel=2)
        self._record(result)
        return torch.tensor(result.loss_before, dtype=params[0].dtype, device=params[0].device)

    def _step(self, params: list[Tensor], saved: list[Tensor], closure: Closure, curvature: Curvature) -> StepResult:
        raise NotImplementedError

    def _start(self, params: list[Tensor], closure: Closure, curvature: Curvature) -> StartPoint | StepResult:
        """Phase 1 at ``θ_old``: loss, gradient and operator, or the rejection that stops the step there.

        Every autograd graph lives inside this call (and the operator's closures) only, except
        for what a :class:`PureClosure` step keeps for the next (:class:`KeptPoint`).
        """
        kept, self.kept_point = getattr(self, "kept_point", None), None
        self.start_calls = 1
        if kept is not None and kept.matches(closure, params):
            if kept.start is not None:
                return self._restart(params, closure, curvature, kept.start)
            if kept.graph_intact(params):
                self.start_calls = 0
        with torch.enable_grad():
            output = closure() if self.start_calls else kept.output
            loss, constraint = unpack(output, first_call=True)
        loss_value, constraint_value = self._scalars(loss, constraint)
        self._check_start(constraint, constraint_value)
        if not math.isfinite(loss_value):
            return self._rejected(Reason.NONFINITE_LOSS, loss_value)
        if constraint_value is not None and not math.isfinite(constraint_value):
            return self._rejected(Reason.NONFINITE_CONSTRAINT, loss_value)
        loss_gradient = _loss_gradient(loss, params, curvature.needs_loss_graph)
        gradient = -self.reduce(flatten(loss_gradient).detach()).to(working_dtype(params[0].dtype))
        gradient_norm = torch.linalg.vector_norm(gradient).item()
        if not math.isfinite(gradient_norm):
            return self._rejected(Reason.NONFINITE_GRADIENT, loss_value)
        start = StartPoint(loss_value, gradient, gradient_norm, None, constraint_value, self.start_calls)
        if gradient_norm == 0.0 and not self._steps_at_zero_gradient():
            return self._rejected(Reason.ZERO_GRADIENT, loss_value, gradient_norm=0.0)
        with torch.enable_grad():
            operator = curvature.build(StepProblem(params, loss, constraint, loss_gradient, closure))
        start.operator = in_working_precision(operator.map(self.reduce), params[0].dtype)
        return start

    def _restart(self, params: list[Tensor], closure: Closure, curvature: Curvature, kept: StartPoint) -> StartPoint:
        """The start of a refused step again: its loss and gradient, and the operator built anew.

        The closure runs again only if the curvature asks for the loss's graph (:class:`Recalled`).
        """
        problem = Recalled(params, closure, curvature.needs_loss_graph)
        with torch.enable_grad():
            operator = curvature.build(problem)
        self.start_calls = problem.calls
        start = StartPoint(kept.loss, kept.gradient, kept.gradient_norm, None, kept.constraint, problem.calls)
        start.operator = in_working_precision(operator.map(self.reduce), params[0].dtype)
        return start

    def _check_start(self, constraint: Tensor | None, value: float | None) -> None:
        """Refuse a constraint the algorithm cannot work with, before any work (nothing by default)."""

    def _steps_at_zero_gradient(self) -> bool:
        """Whether a zero gradient still needs the operator (a saddle check); else the step is rejected."""
        return False

    def _trial(
        self,
        params: list[Tensor],
        saved: list[Tensor],
        step: Tensor,
        closure: Closure,
        calls: list[int],
        *,
        constrained: bool,
    ):
        """``fraction -> TrialPoint``: move to ``θ_old + fraction · step`` and evaluate the closure there.

        ``calls`` counts closure calls and starts at ``[1]`` (the call at ``θ_old``); ``constrained``
        says whether that first call returned a constraint, which every later call must return too.
        """

        def trial(fraction: float) -> TrialPoint:
            add_step(params, saved, step, fraction)
            calls[0] += 1
            point = TrialPoint(*self._scalars(*unpack(closure(), first_call=False)))
            if constrained != (point.constraint is not None):
                first = "(loss, constraint)" if constrained else "only a loss"
                raise TypeError(f"closure returned {first} on its first call and not now: return the same every call")
            self._check_trial(point)
            return point

        return trial

    def _check_trial(self, point: TrialPoint) -> None:
        """Refuse a trial point's values the algorithm cannot work with (nothing by default)."""

    def _scalars(self, loss: Tensor, constraint: Tensor | None) -> tuple[float, float | None]:
        """Reduce the closure's scalars with one call of the reduction hook."""
        values = [loss.detach().reshape(())]
        if constraint is not None:
            values.append(constraint.detach().to(loss.dtype).reshape(()))
        reduced = self.reduce(torch.stack(values)).tolist()
        return reduced[0], (reduced[1] if constraint is not None else None)

    def _rejected(self, reason: Reason, loss_value: float, **details: Any) -> StepResult:
        calls = getattr(self, "start_calls", 1)
        return self.result_type(
            accepted=False, reason=reason, loss_before=loss_value, loss_after=loss_value, closure_calls=calls, **details
        )

    def _record(self, result: StepResult) -> None:
        state = self.state[self._params()[0]]
        state["step"] = state.get("step", 0) + 1
        state["rejected_steps"] = state.get("rejected_steps", 0) + (not result.accepted)
        self.last_result = result


class Recalled(StepProblem):
    """The :class:`StepProblem` of a refused step's point, its closure evaluated only when asked for.

    ``params`` and ``closure`` are at hand; reading ``loss``, ``constraint`` or ``loss_gradient``
    runs the closure once (``calls`` counts it). A Gauss-Newton curvature reads none of them.
    """

    def __init__(self, params: list[Tensor], closure: Closure, create_graph: bool) -> None:
        self.params, self.closure = params, closure
        self.calls, self._create_graph, self._values = 0, create_graph, None

    def _evaluated(self) -> tuple[Tensor, Tensor | None, list[Tensor]]:
        if self._values is None:
            with torch.enable_grad():
                loss, constraint = unpack(self.closure(), first_call=True)
                self._values = (loss, constraint, _loss_gradient(loss, self.params, self._create_graph))
            self.calls += 1
        return self._values

    loss = property(lambda self: self._evaluated()[0])
    constraint = property(lambda self: self._evaluated()[1])
    loss_gradient = property(lambda self: self._evaluated()[2])


def unpack(output: object, *, first_call: bool) -> tuple[Tensor, Tensor | None]:
    """``(loss, constraint)`` from what a closure returned, with one-line errors for anything else."""
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


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the step's vector work: float64 for parameters of lower precision, else theirs.

    The model runs in its own precision; the gradient, the solver's vectors and scalars and the
    step are accumulated in float64, so that neither rounding in a long CG recurrence nor the
    scale of the loss (a norm overflowing or underflowing in float32) decides the step.
    """
    return torch.float64 if dtype in (torch.float32, torch.float16, torch.bfloat16) else dtype


def in_working_precision(operator: LinearOperator, dtype: torch.dtype) -> LinearOperator:
    """``operator`` on vectors of :func:`working_dtype`, each product run in the parameters' ``dtype``.

    The vector is scaled to unit norm before it is rounded to ``dtype`` and the product scaled
    back after (``A v = ‖v‖ A (v / ‖v‖)``), so that a product never underflows or overflows in
    the low precision where the result itself is representable.
    """
    if working_dtype(dtype) == dtype:
        return operator

    def product(vector: Tensor) -> Tensor:
        norm = torch.linalg.vector_norm(vector)
        if norm == 0:
            return torch.zeros_like(vector)
        return operator((vector / norm).to(dtype)).to(vector.dtype) * norm

    return operator.in_dtype(product)


def _loss_gradient(loss: Tensor, params: list[Tensor], create_graph: bool) -> list[Tensor]:
    """``∇ loss`` per parameter, keeping the graph for the curvature; explains a closure that ran backward()."""
    try:
        with torch.enable_grad():
            return gradients(loss, params, retain_graph=True, create_graph=create_graph)
    except RuntimeError as error:
        if "second time" not in str(error):
            raise
        raise TypeError(
            "the closure called backward(): return the loss (and constraint) without calling backward(); "
            "the optimizer differentiates what the closure returns"
        ) from None


def trial_rejection(loss: float, constraint: float | None, otherwise: Reason) -> Reason:
    """Why a refused trial point was refused: a non-finite value there, or ``otherwise``."""
    if not math.isfinite(loss):
        return Reason.NONFINITE_LOSS
    if constraint is not None and not math.isfinite(constraint):
        return Reason.NONFINITE_CONSTRAINT
    return otherwise


def component(name: str, value: Any, kind: type, default: Callable[[], Any], example: str) -> Any:
    """``value`` checked to be a ``kind``, or ``default()`` when it is ``None``."""
    return default() if value is None else check_instance(name, value, kind, example)


def _check_params(params: list[Tensor]) -> None:
    if not params:
        raise ValueError("params is empty: pass the model's parameters")
    if len({id(p) for p in params}) != len(params):
        raise ValueError("params holds the same tensor more than once: pass each parameter once (e.g. list(set(...)))")
    first = params[0]
    for index, p in enumerate(params):
        if not p.is_floating_point():
            raise TypeError(f"params[{index}] must be a floating point tensor; got dtype {p.dtype}")
        if not p.requires_grad:
            raise ValueError(
                f"params[{index}] does not require grad, so the step cannot move it: "
                "leave it out of params, or call requires_grad_() on it"
            )
        if p.numel() > 1 and 0 in p.stride():
            raise ValueError(
                f"params[{index}] is an expanded view (a stride of 0), so an in-place step would write one "
                "element many times: pass a tensor with its own storage (e.g. nn.Parameter(t.clone()))"
            )
        if p.dtype != first.dtype or p.device != first.device:
            raise ValueError(
                "params must share one dtype and device (the step is one flat vector); "
                f"got {first.dtype} on {first.device} and {p.dtype} on {p.device}"
            )
