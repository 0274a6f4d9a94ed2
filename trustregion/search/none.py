"""No line search: take the KL-scaled natural-gradient step as it is."""

from __future__ import annotations

import math

from trustregion.search.base import LineSearch, SearchProblem, SearchResult


class NoLineSearch(LineSearch):
    """Natural policy gradient (Kakade, 2001): accept ``Δθ = β s`` without checks.

    The step is only refused when the closure is non-finite there (the
    parameters are then restored), so a NaN can never be kept. The constraint is
    measured and reported, not enforced: NPG trusts the quadratic model.
    """

    def __call__(self, problem: SearchProblem) -> SearchResult:
        point = problem.trial(1.0)
        finite = math.isfinite(point.loss) and (point.constraint is None or math.isfinite(point.constraint))
        return SearchResult(finite, 1.0 if finite else 0.0, point.loss, point.constraint, 0)

    def __repr__(self) -> str:
        return "NoLineSearch()"
