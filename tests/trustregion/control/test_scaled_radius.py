"""ScaledTrustRadius: MINPACK's lmder radius on ‖D s‖, its state, and whole runs with SecularSolver."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from project_files import load_script
from scipy.optimize import least_squares as scipy_least_squares
from trustregion_helpers import bitwise_equal, snapshot

from trustregion import (
    PureClosure,
    Reason,
    ResidualGaussNewton,
    ScaledTrustRadius,
    SecularSolver,
    TrustRegionMinimizer,
    least_squares,
)
from trustregion.control import ScaledRadiusState
from trustregion.solvers.secular import ScaledBall

mgh = load_script("benchmarks/mgh.py")
DTYPE = torch.float64


def after_solve(control: ScaledTrustRadius, state: ScaledRadiusState, damping: float, gradient_dot: float, length):
    """The region ``control`` issues for ``state``, with a secular solve's report filled in."""
    region = control.region(state)
    region.report.damping, region.report.gradient_dot, region.report.scaled_norm = damping, gradient_dot, length
    return region


def test_the_first_radius_is_factor_times_the_scaled_norm_of_the_start() -> None:
    x = torch.tensor([3.0, -4.0], dtype=DTYPE, requires_grad=True)
    control = ScaledTrustRadius(factor=100.0, params=[x])
    state = control.observe(control.init(), lambda: torch.tensor([4.0, 0.0], dtype=DTYPE))
    assert state.scale == (2.0, 1.0)  # sqrt of the diagonal; a zero column starts at 1
    assert state.radius == pytest.approx(100.0 * math.hypot(6.0, 4.0))
    later = control.observe(state, lambda: torch.tensor([1.0, 9.0], dtype=DTYPE))
    assert later.scale == (2.0, 3.0) and later.radius == state.radius  # the running maximum, the radius kept
    assert ScaledTrustRadius().observe(ScaledTrustRadius().init(), lambda: torch.ones(2)).radius == math.inf


def test_lmder_update_rules() -> None:
    control = ScaledTrustRadius()
    state = ScaledRadiusState(radius=2.0, damping=0.3, scale=(1.0, 1.0), moved=True)
    after_solve(control, state, 0.3, 4.0, 2.0)
    grown = control.after_step(state, 0.9, 2.0, torch.zeros(2), 3.0)
    assert (grown.radius, grown.damping) == (4.0, 0.15)  # ρ >= 3/4: Δ = 2‖Ds‖, λ / 2
    after_solve(control, state, 0.3, 4.0, 2.0)
    kept = control.after_step(state, 0.5, 2.0, torch.zeros(2), 3.0)
    assert (kept.radius, kept.damping) == (2.0, 0.3)  # λ > 0, 1/4 < ρ < 3/4: unchanged
    after_solve(control, state, 0.0, 4.0, 0.5)
    inside = control.after_step(state, 0.5, 0.5, torch.zeros(2), 3.0)
    assert inside.radius == 1.0  # the Gauss-Newton step (λ = 0): Δ = 2‖Ds‖ even at ρ = 1/2
    after_solve(control, state, 0.3, 4.0, 2.0)
    halved = control.after_step(state, 0.1, 2.0, torch.zeros(2), 3.0)
    assert (halved.radius, halved.damping) == (1.0, 0.6)  # the loss fell, too little: t = 1/2
    after_solve(control, state, 0.3, 4.0, 2.0)
    rose = control.after_step(state, -1.0, 2.0, torch.zeros(2), 3.0)  # actual = -3: t = ½ · 4 / (4 + 3)
    assert rose.radius == pytest.approx(2.0 * 2.0 / 7.0) and rose.damping == pytest.approx(0.3 * 7.0 / 2.0)
    after_solve(control, state, 0.3, 4.0, 2.0)
    assert control.after_step(state, -math.inf, 2.0, torch.zeros(2), 3.0).radius == pytest.approx(0.2)  # t = 1/10
    first = ScaledRadiusState(radius=50.0, damping=0.0, scale=(1.0, 1.0))
    after_solve(control, first, 0.0, 4.0, 3.0)
    assert control.after_step(first, 0.5, 3.0, torch.zeros(2), 3.0).radius == 6.0  # until a step is taken: min(Δ, ‖Ds‖)
    assert control.after_step(first, 0.5, 3.0, torch.zeros(2), 3.0).moved


def test_without_a_report_a_step_shorter_than_the_radius_counts_as_gauss_newton() -> None:
    control = ScaledTrustRadius()
    state = ScaledRadiusState(radius=2.0, damping=0.3, scale=None, moved=True)
    assert control.update(state, 0.5, 0.5).radius == 1.0
    assert control.update(state, 0.5, 2.0).radius == 2.0


def test_powell_badly_scaled_within_three_times_scipy_lm_evaluations() -> None:
    problem = mgh.problem("Powell badly scaled")
    calls = [0]

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return problem.residuals(x)

    x = problem.start_tensor()
    result = least_squares(counted, [x], control=ScaledTrustRadius(params=[x], gtol=1e-8), solver=SecularSolver())
    reference = scipy_least_squares(
        lambda z: problem.residuals(torch.from_numpy(z)).numpy(),
        np.array(problem.start),
        jac=lambda z: torch.autograd.functional.jacobian(problem.residuals, torch.from_numpy(z)).numpy(),
        method="lm",
    )
    assert result.success and problem.reached(problem.sum_of_squares(x)) is not None
    assert calls[0] <= 3 * reference.nfev, (calls[0], reference.nfev)


@pytest.mark.parametrize("name", ["Brown badly scaled", "Meyer", "Freudenstein-Roth", "Box 3-D"])
def test_the_trust_region_formulation_reaches_the_published_minimum(name: str) -> None:
    problem = mgh.problem(name)
    x = problem.start_tensor()
    control = ScaledTrustRadius(params=[x], gtol=1e-8)
    result = least_squares(problem.residuals, [x], control=control)  # SecularSolver goes with this control
    assert result.success, result.message
    assert problem.reached(problem.sum_of_squares(x)) is not None, problem.sum_of_squares(x)


class Interrupted(Exception):
    """Raised by a residual function at its ``at``-th call."""


@pytest.mark.parametrize("offset", [1, 2], ids=["in the linearisation", "at the trial point"])
def test_an_interrupted_or_non_finite_step_leaves_the_parameters_and_the_state(offset: int) -> None:
    problem = mgh.problem("Powell badly scaled")
    x = problem.start_tensor()
    calls, raise_at = [0], [math.inf]

    def residuals(z: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == raise_at[0]:
            raise Interrupted
        return problem.residuals(z)

    fit = ResidualGaussNewton(residuals)
    opt = TrustRegionMinimizer([x], curvature=fit, solver=SecularSolver(), control=ScaledTrustRadius(params=[x]))
    closure = PureClosure(fit.closure([x]))
    opt.step(closure)
    assert opt.last_result.accepted
    saved, state, raise_at[0] = snapshot([x]), opt.control_state, calls[0] + offset
    with pytest.raises(Interrupted):
        opt.step(closure)
    assert bitwise_equal([x], saved)
    after = opt.control_state  # the scale may have seen the new point's Jacobian; the region is untouched
    assert (after.radius, after.damping, after.moved) == (state.radius, state.damping, state.moved)
    nonfinite = ResidualGaussNewton(lambda z: torch.log(z - 1.0) + 3.0)  # the Gauss-Newton step leaves the domain
    y = torch.tensor([3.0], dtype=DTYPE, requires_grad=True)
    opt = TrustRegionMinimizer([y], curvature=nonfinite, solver=SecularSolver(), control=ScaledTrustRadius())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        opt.step(nonfinite.closure([y]))
    assert opt.last_result.reason is Reason.NONFINITE_LOSS and y.item() == 3.0
    assert opt.control_state.radius == pytest.approx(0.1 * opt.last_result.step_norm)  # t = 1/10


def test_the_state_saves_and_resumes_exactly() -> None:
    problem = mgh.problem("Box 3-D")
    runs = []
    for resume in (False, True):
        x = problem.start_tensor()
        fit = ResidualGaussNewton(problem.residuals)
        make = lambda x=x, fit=fit: TrustRegionMinimizer(  # noqa: E731
            [x], curvature=fit, solver=SecularSolver(), control=ScaledTrustRadius(params=[x])
        )
        opt, closure = make(), fit.closure([x])
        for step in range(8):
            if resume and step == 4:
                saved = opt.state_dict()
                opt = make()
                opt.load_state_dict(saved)
            opt.step(closure)
        runs.append((x.detach().clone(), opt.control_state))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    assert isinstance(ScaledTrustRadius().region(runs[0][1]), ScaledBall)
