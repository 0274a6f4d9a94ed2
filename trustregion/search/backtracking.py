"""The TRPO backtracking line search."""

from __future__ import annotations

import math

from trustregion._validation import check_integer, check_interval
from trustregion.search.base import LineSearch, SearchProblem, SearchResult, TrialPoint


class BacktrackingLineSearch(LineSearch):
    """Try ``Δθ, ρΔθ, ρ²Δθ, ...`` and take the first point that is within the trust region and improves.

    A trial at fraction ``t = ρᵏ`` is accepted when all of these hold:

    * the loss and the constraint are finite;
    * the measured constraint satisfies ``D̄_KL <= δ (1 + kl_rtol)`` (the quadratic
      model of the KL is only an approximation, so the real KL is checked, as in
      Schulman et al., 2015, Appendix C; ``kl_rtol = 1e-6`` only absorbs rounding,
      e.g. when the KL is exactly quadratic and the full step lands on ``δ``);
    * the loss improves: ``L_before - L(t) > 0``;
    * the improvement is at least ``min_improvement_ratio · t · β gᵀs``, a fraction
      of what the linear model expects (``accept_ratio = 0.1`` in OpenAI baselines'
      TRPO; the default ``0`` is the rule of Spinning Up and sb3-contrib).

    Defaults: ``ratio = 0.8`` and ``max_backtracks = 10`` as in Spinning Up
    (``backtrack_coeff``, ``backtrack_iters``). Here ``max_backtracks`` counts the
    shrinks, so up to ``max_backtracks + 1`` points are tried (fractions ``ρ⁰ ... ρ¹⁰``,
    11 closure calls); sb3-contrib's ``line_search_max_iter = 10`` counts the points
    (``ρ⁰ ... ρ⁹``, 10 calls), which is ``max_backtracks = 9`` here.

    Args:
        max_backtracks: how many times the step may be shrunk (>= 0).
        ratio: the shrink factor ``ρ``, in (0, 1).
        min_improvement_ratio: the required fraction of the expected improvement, in [0, 1).
        kl_rtol: relative slack on the constraint bound for rounding, in [0, 1e-3].
    """

    def __init__(
        self,
        max_backtracks: int = 10,
        ratio: float = 0.8,
        min_improvement_ratio: float = 0.0,
        kl_rtol: float = 1e-6,
    ) -> None:
        self.max_backtracks = check_integer("max_backtracks", max_backtracks, 0, "TRPO uses 10")
        self.ratio = check_interval("ratio", ratio, 0.0, 1.0, "TRPO uses 0.5-0.8", closed="neither")
        self.min_improvement_ratio = check_interval(
            "min_improvement_ratio", min_improvement_ratio, 0.0, 1.0, "baselines uses 0.1", closed="left"
        )
        self.kl_rtol = check_interval("kl_rtol", kl_rtol, 0.0, 1e-3, "it only absorbs rounding")

    def __call__(self, problem: SearchProblem) -> SearchResult:
        point = TrialPoint(math.nan, None)
        for backtracks in range(self.max_backtracks + 1):
            fraction = self.ratio**backtracks
            point = problem.trial(fraction)
            if self._acceptable(point, fraction, problem):
                return SearchResult(True, fraction, point.loss, point.constraint, backtracks)
        return SearchResult(False, 0.0, point.loss, point.constraint, self.max_backtracks)

    def _acceptable(self, point: TrialPoint, fraction: float, problem: SearchProblem) -> bool:
        if not math.isfinite(point.loss):
            return False
        bound = problem.max_kl * (1.0 + self.kl_rtol)
        if point.constraint is not None and not (math.isfinite(point.constraint) and point.constraint <= bound):
            return False
        improvement = problem.loss_before - point.loss
        required = self.min_improvement_ratio * fraction * problem.expected_improvement
        return improvement > 0.0 and improvement >= required

    def __repr__(self) -> str:
        return (
            f"BacktrackingLineSearch(max_backtracks={self.max_backtracks}, ratio={self.ratio}, "
            f"min_improvement_ratio={self.min_improvement_ratio}, kl_rtol={self.kl_rtol})"
        )
