"""The radius-control interface: a control owns the region (radius or damping) and its typed state."""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any, ClassVar

from torch import Tensor

from trustregion._validation import check_choice, check_integer, check_nonnegative
from trustregion.result import adjusted_ratio
from trustregion.solvers.base import METRICS, Ball


class RadiusControl(abc.ABC):
    r"""Sets the trust region *before* the solve and judges the step *after* it (the classic trust-region loop).

    :class:`~trustregion.TrustRegionMinimizer` asks the control for the region
    (:meth:`region`) and the damping ``μ`` (:meth:`damping`) of the current state,
    lets the solver minimise the model ``q(s) = ½ sᵀ(A + μI)s - gᵀs`` inside it,
    evaluates the closure once at ``θ + s`` and hands the control the ratio

    .. math:: \rho = \frac{\text{loss}(\theta) - \text{loss}(\theta + s) + r}{g^\top s - \tfrac12 s^\top A s + r}

    where ``r = 10 ε max(1, |loss(θ)|)`` is the rounding level of the loss: once
    both reductions are at that level their ratio is noise, and ``r`` pulls it to
    ``1`` (Conn, Gould & Toint, *Trust-Region Methods*, 2000, chapter 17) instead
    of letting the radius collapse. The control accepts or rejects on ``ρ``
    (:meth:`accept`) and returns its next state (:meth:`update`). The state is a
    frozen dataclass of floats (:attr:`state_type`) that the minimizer keeps and
    ``state_dict()`` saves.

    Attributes:
        metric: the norm of the region, ``"euclidean"`` or ``"operator"``
            (``‖s‖_A``; see :class:`~trustregion.solvers.Ball`).
        gtol: at ``‖∇loss‖ <= gtol`` the minimizer checks the second-order
            condition instead of solving, and reports ``Reason.CONVERGED`` when
            it holds.
        probe_iterations: Lanczos products spent on that check.
    """

    state_type: ClassVar[type]

    def __init__(self, *, metric: str = "euclidean", gtol: float = 1e-5, probe_iterations: int = 10) -> None:
        self.metric = check_choice("metric", metric, METRICS)
        self.gtol = check_nonnegative("gtol", gtol, "it bounds ‖∇loss‖ at convergence")
        self.probe_iterations = check_integer("probe_iterations", probe_iterations, 1)

    @abc.abstractmethod
    def init(self) -> Any:
        """The state before the first step."""

    def region(self, state: Any) -> Ball:
        """The ball the solver must stay in; unbounded by default."""
        return Ball(math.inf, self.metric)

    def damping(self, state: Any) -> float:
        """The damping ``μ`` of the solver's operator ``A + μI`` (or ``A + μD²``); 0 by default."""
        return 0.0

    def shift(self, state: Any) -> float | Tensor:
        """What the solver's operator adds to ``A``: the number ``μ``, or the diagonal ``μD²`` of a scaled control."""
        return self.damping(state)

    def observe(self, state: Any, diagonal: Callable[[], Tensor]) -> Any:
        """The state after seeing a new point, given ``diagonal() = diag(A)`` there (computed only if called).

        Unchanged by default; a scaled control keeps its running scale here.
        """
        return state

    def stalled(self, state: Any) -> bool:
        """Whether ``state`` is at the control's limit, so that a refused step cannot be retried smaller."""
        return False

    @abc.abstractmethod
    def accept(self, ratio: float) -> bool:
        """Whether a step with ratio ``ρ`` (``-inf`` when not finite) is taken."""

    @abc.abstractmethod
    def update(self, state: Any, ratio: float, step_norm: float) -> Any:
        """The next state after a step with ratio ``ρ`` and length ``step_norm`` (in the region's metric)."""

    def after_step(self, state: Any, ratio: float, step_norm: float, step: Tensor, predicted: float) -> Any:
        """The next state after a tried step, given the step ``s`` and its predicted reduction as well.

        :class:`~trustregion.TrustRegionMinimizer` calls this after every trial point;
        the default is :meth:`update`. A control that needs the step's direction (the
        ``"minpack"`` rule of :class:`~trustregion.LevenbergMarquardt`) overrides it.
        """
        return self.update(state, ratio, step_norm)


def improvement_ratio(loss_before: float, loss_after: float, predicted_reduction: float, rounding: float) -> float:
    """``ρ = (actual + r) / (predicted + r)`` with ``actual = before - after`` (:func:`.adjusted_ratio`)."""
    return adjusted_ratio(loss_before - loss_after, predicted_reduction, rounding)
