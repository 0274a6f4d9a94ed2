"""The line-search interface: which multiple of the proposed step ``Δθ = β s`` to take."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class TrialPoint:
    """The closure's values at ``θ_old + fraction · Δθ`` (already reduced)."""

    loss: float
    constraint: float | None


@dataclass(frozen=True)
class SearchProblem:
    """What a line search needs to decide.

    Attributes:
        trial: ``fraction -> TrialPoint``; moves the parameters to
            ``θ_old + fraction · Δθ`` and evaluates the closure there (one call).
        loss_before: the loss at ``θ_old``.
        expected_improvement: ``β gᵀs``, the decrease of the loss the linear model
            predicts for the full step.
        max_kl: ``δ``, the bound on the constraint (mean KL).
    """

    trial: Callable[[float], TrialPoint]
    loss_before: float
    expected_improvement: float
    max_kl: float


@dataclass
class SearchResult:
    """The outcome of a line search: the accepted fraction of ``Δθ`` (0 when rejected) and its values."""

    accepted: bool
    fraction: float
    loss: float
    constraint: float | None
    backtracks: int


class LineSearch(abc.ABC):
    """Decides which multiple of the proposed step to take, if any.

    It only calls ``problem.trial``; the optimizer owns the parameters and puts
    them back bit for bit when the result is not accepted.
    """

    @abc.abstractmethod
    def __call__(self, problem: SearchProblem) -> SearchResult:
        """Return the accepted fraction, or ``accepted=False``."""
