"""Step controllers: what to do with the proposed step."""

from trustregion.search.backtracking import BacktrackingLineSearch
from trustregion.search.base import LineSearch, SearchProblem, TrialPoint
from trustregion.search.none import NoLineSearch

__all__ = ["BacktrackingLineSearch", "LineSearch", "NoLineSearch", "SearchProblem", "TrialPoint"]
