"""Radius controls for :class:`~trustregion.TrustRegionMinimizer`: the trust radius and Levenberg-Marquardt."""

from trustregion.control.base import RadiusControl
from trustregion.control.levenberg_marquardt import DampingState, LevenbergMarquardt
from trustregion.control.scaled_radius import ScaledRadiusState, ScaledTrustRadius
from trustregion.control.trust_radius import TrustRadius, TrustRadiusState

__all__ = [
    "DampingState",
    "LevenbergMarquardt",
    "RadiusControl",
    "ScaledRadiusState",
    "ScaledTrustRadius",
    "TrustRadius",
    "TrustRadiusState",
]
