"""Curvature operators ``v -> A v``, built once per step at the old parameters."""

from trustregion.curvature.base import Curvature, StepProblem
from trustregion.curvature.damping import Damped
from trustregion.curvature.gauss_newton import GaussNewton
from trustregion.curvature.hessian import Hessian
from trustregion.curvature.kl_hessian import KLHessian
from trustregion.curvature.least_squares import ResidualGaussNewton

__all__ = ["Curvature", "Damped", "GaussNewton", "Hessian", "KLHessian", "ResidualGaussNewton", "StepProblem"]
