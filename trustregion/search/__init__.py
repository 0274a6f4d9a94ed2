"""Line searches: which multiple of the KL-scaled step to take."""

from trustregion.search.backtracking import BacktrackingLineSearch
from trustregion.search.base import LineSearch, SearchProblem, SearchResult, TrialPoint
from trustregion.search.none import NoLineSearch

__all__ = ["BacktrackingLineSearch", "LineSearch", "NoLineSearch", "SearchProblem", "SearchResult", "TrialPoint"]
