"""Step controllers: what to do with the proposed step."""

from trustregion.search.backtracking import BacktrackingLineSearch
from trustregion.search.base import LineSearch, RadiusController, SearchProblem, TrialPoint
from trustregion.search.none import NoLineSearch
from trustregion.search.radius import LevenbergMarquardt, TrustRadius

__all__ = [
    "BacktrackingLineSearch",
    "LevenbergMarquardt",
    "LineSearch",
    "NoLineSearch",
    "RadiusController",
    "SearchProblem",
    "TrialPoint",
    "TrustRadius",
]
