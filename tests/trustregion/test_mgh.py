"""The Moré-Garbow-Hillstrom least-squares problems 1-19 (``benchmarks/mgh.py``) through the public API.

Each problem runs :func:`trustregion.least_squares` with its defaults from the paper's start and must
reach a published minimum ``f* = Σ r²`` (relative 1e-6 or absolute 1e-10) wherever scipy's MINPACK
``lm`` does. Meyer (MGH 10, ``f* = 87.9459``) also runs on the trust-radius Gauss-Newton path with
Steihaug-CG, whose steps sit at the rounding level of its ``Σ r²``. The counts of work are benchmark
numbers (``benchmarks/scipy_parity.py``), not test thresholds; the tests check what must hold.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from project_files import load_script
from scipy.optimize import least_squares as scipy_least_squares

from trustregion import (
    LevenbergMarquardt,
    PureClosure,
    Reason,
    ResidualGaussNewton,
    RunReason,
    SteihaugCG,
    TrustRadius,
    TrustRegionMinimizer,
    least_squares,
    run,
)

mgh = load_script("benchmarks/mgh.py")
SLOW = {"Gulf research", "Meyer"}  # hundreds of steps each; Meyer has its own tests below


def scipy_lm(problem) -> float:
    result = scipy_least_squares(
        lambda z: problem.residuals(torch.from_numpy(z)).numpy(),
        np.array(problem.start),
        jac=lambda z: torch.autograd.functional.jacobian(problem.residuals, torch.from_numpy(z)).numpy(),
        method="lm",
    )
    return 2.0 * float(result.cost)


@pytest.mark.parametrize("problem", [p for p in mgh.PROBLEMS if p.name not in SLOW], ids=lambda p: p.name)
def test_least_squares_reaches_a_published_minimum_wherever_scipy_lm_does(problem) -> None:
    x = problem.start_tensor()
    result = least_squares(problem.residuals, [x])
    value = problem.sum_of_squares(x)
    if problem.reached(scipy_lm(problem)) is not None:
        assert problem.reached(value) is not None, (value, problem.minima, result.message)
        assert result.success, result.message
    assert result.loss == pytest.approx(0.5 * value, rel=1e-12, abs=1e-300)


def test_the_published_minima_are_the_values_of_the_residuals_at_the_published_minimisers() -> None:
    minimisers = {  # the paper's x* where it gives one
        "Rosenbrock": [1.0, 1.0],
        "Freudenstein-Roth": [5.0, 4.0],
        "Brown badly scaled": [1e6, 2e-6],
        "Beale": [3.0, 0.5],
        "Helical valley": [1.0, 0.0, 0.0],
        "Gulf research": [50.0, 25.0, 1.5],
        "Box 3-D": [1.0, 10.0, 1.0],
        "Wood": [1.0, 1.0, 1.0, 1.0],
        "Biggs EXP6": [1.0, 10.0, 1.0, 5.0, 4.0, 3.0],
    }
    for name, point in minimisers.items():
        assert mgh.problem(name).sum_of_squares(torch.tensor(point, dtype=torch.float64)) < 1e-20, name


def test_meyer_on_the_default_least_squares_path() -> None:
    problem = mgh.problem("Meyer")
    x = problem.start_tensor()
    result = least_squares(problem.residuals, [x])
    assert result.success and problem.reached(problem.sum_of_squares(x)) == pytest.approx(87.9458551702)


def test_meyer_on_trust_radius_gauss_newton_with_steihaug_cg() -> None:
    """Its ``Σ r²`` is 88 but sums differences of numbers near 3·10⁴: steps end at the noise of the loss."""
    problem = mgh.problem("Meyer")
    x = problem.start_tensor()
    fit = ResidualGaussNewton(problem.residuals)
    opt = TrustRegionMinimizer([x], curvature=fit, solver=SteihaugCG(), control=TrustRadius())
    result = run(opt, fit.closure([x]), max_steps=3000)
    assert result.success, result.message
    assert problem.reached(problem.sum_of_squares(x)) is not None, problem.sum_of_squares(x)
    assert opt.state[x]["noise"] > 100 * torch.finfo(torch.float64).eps  # the allowance learnt the noise


class RecordingRadius(TrustRadius):
    """A trust radius that records every ratio it judges."""

    def __init__(self) -> None:
        super().__init__()
        self.judged: list[float] = []

    def accept(self, ratio: float) -> bool:
        self.judged.append(ratio)
        return super().accept(ratio)


def test_improvement_ratio_is_the_rounding_adjusted_ratio_the_control_judged() -> None:
    problem = mgh.problem("Meyer")
    x = problem.start_tensor()
    fit = ResidualGaussNewton(problem.residuals)
    control = RecordingRadius()
    opt = TrustRegionMinimizer([x], curvature=fit, solver=SteihaugCG(), control=control)
    closure, results = PureClosure(fit.closure([x])), []
    for _ in range(300):
        opt.step(closure)
        results.append(opt.last_result)
    tried = [result.improvement_ratio for result in results if not math.isnan(result.expected_improvement)]
    assert tried == control.judged  # bit for bit, one per trial point
    for result in results:
        actual, expected, rounding = result.actual_improvement, result.expected_improvement, result.rounding
        assert result.improvement_ratio == (actual + rounding) / (expected + rounding)
    accepted_with_a_rise = [r for r in results if r.accepted and r.actual_improvement < 0]
    assert all(-r.actual_improvement <= r.rounding for r in accepted_with_a_rise)  # only ever by the noise


def test_a_pure_closure_costs_one_call_per_step_and_changes_no_iterate() -> None:
    problem = mgh.problem("Osborne 1")
    runs = {}
    for pure in (True, False):
        x = problem.start_tensor()
        calls = [0]

        def counted(z: torch.Tensor, calls=calls) -> torch.Tensor:
            calls[0] += 1
            return problem.residuals(z)

        fit = ResidualGaussNewton(counted)
        opt = TrustRegionMinimizer([x], curvature=fit, control=LevenbergMarquardt(scaled=True, curvature_floor=True))
        result = run(opt, fit.closure([x]), pure=pure, max_steps=200)
        runs[pure] = (x.detach().clone(), result, calls[0])
    (x_pure, pure, pure_calls), (x_plain, plain, plain_calls) = runs[True], runs[False]
    assert torch.equal(x_pure, x_plain) and pure.history == plain.history  # the same iterates, bit for bit
    assert pure.closure_calls == pure.steps + 1 - (pure.last_step.reason.value == "converged")
    assert plain.closure_calls == 2 * plain.steps - (plain.last_step.reason.value == "converged")
    assert pure_calls == plain_calls - (plain.closure_calls - pure.closure_calls)


def test_a_refused_step_of_a_pure_closure_restores_the_parameters_and_is_retried_from_its_start() -> None:
    x = torch.tensor([-1.2, 1.0], dtype=torch.float64, requires_grad=True)
    fit = ResidualGaussNewton(mgh.rosenbrock)  # from a radius of 100, Gauss-Newton steps overshoot
    opt = TrustRegionMinimizer([x], curvature=fit, control=TrustRadius(initial_radius=100.0))
    closure, refused = PureClosure(fit.closure([x])), 0
    for step in range(12):
        before = x.detach().clone()
        opt.step(closure)
        result = opt.last_result
        if result.reason is Reason.CONVERGED:
            break
        if not result.accepted:
            refused += 1
            assert torch.equal(x.detach(), before)
        assert result.closure_calls == (2 if step == 0 else 1)  # after the first: the trial point only
    assert refused


@pytest.mark.parametrize("write", ["copy_", "data"])
def test_a_kept_point_is_not_used_once_the_parameters_were_changed_between_steps(write: str) -> None:
    x = torch.tensor([-1.2, 1.0], dtype=torch.float64, requires_grad=True)
    fit = ResidualGaussNewton(mgh.rosenbrock)
    opt = TrustRegionMinimizer([x], curvature=fit, control=TrustRadius(initial_radius=100.0))
    closure = PureClosure(fit.closure([x]))
    for step in range(6):  # accepted and refused steps both leave a kept point
        opt.step(closure)
        moved = torch.tensor([0.5 + 0.1 * step, -0.3], dtype=torch.float64)
        with torch.no_grad():
            x.copy_(moved) if write == "copy_" else x.data.copy_(moved)
        opt.step(closure)
        assert opt.last_result.loss_before == fit.loss(moved).item()


@pytest.mark.parametrize(
    ("residuals", "error", "match"),
    [
        (lambda x: (x[0] - 1.0).item(), TypeError, "floating-point tensor"),
        (lambda x: (x[0] > 0).to(torch.int64).reshape(1), TypeError, "floating-point tensor"),
        (lambda x: x[:0], ValueError, "no residuals"),
        (lambda x: x[x > 1.5] - 1.0, ValueError, "same residuals at every point"),
    ],
    ids=["a float", "integers", "empty", "changing shape"],
)
def test_bad_residuals_raise_one_clear_error_and_leave_the_parameters(residuals, error, match) -> None:
    x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    saved = x.detach().clone()
    with pytest.raises(error, match=match):
        least_squares(residuals, [x])
    assert torch.equal(x.detach(), saved)


def test_residuals_that_read_the_module_fit_it_as_residuals_taking_the_parameters_do() -> None:
    torch.manual_seed(0)
    inputs = torch.randn(30, 3, dtype=torch.float64)
    targets = torch.tanh(inputs @ torch.tensor([[0.5], [-1.0], [2.0]], dtype=torch.float64) + 0.1)

    def fit(reads_the_module: bool) -> tuple[int, list[torch.Tensor]]:
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Tanh()).double()
        names = [name for name, _ in model.named_parameters()]

        def residuals(*params: torch.Tensor) -> torch.Tensor:
            if reads_the_module:
                return (model(inputs) - targets).squeeze(-1)
            values = dict(zip(names, params, strict=True))
            return (torch.func.functional_call(model, values, (inputs,)) - targets).squeeze(-1)

        result = least_squares(residuals, model.parameters())
        assert result.success and result.loss < 1e-12
        return result.steps, [p.detach().clone() for p in model.parameters()]

    (steps, fitted), (reference_steps, reference) = fit(reads_the_module=True), fit(reads_the_module=False)
    assert steps == reference_steps
    for a, b in zip(fitted, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_residuals_of_a_copy_of_the_parameters_raise_one_clear_error() -> None:
    x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    copy = x.detach().clone().requires_grad_()
    with pytest.raises(ValueError, match="does not depend on the optimized parameters"):
        least_squares(lambda *_: copy - 3.0, [x])
    assert torch.equal(x.detach(), torch.tensor([1.0, 2.0], dtype=torch.float64))


def test_non_finite_residuals_at_the_start_end_the_run_with_a_reason() -> None:
    x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = least_squares(lambda z: torch.log(z - 5.0), [x])
    assert result.reason is RunReason.NONFINITE and not result.success and "NaN" in result.message
    assert torch.equal(x.detach(), torch.tensor([1.0, 2.0], dtype=torch.float64))


def test_a_non_finite_trial_point_is_a_refused_step_not_the_end_of_the_run() -> None:
    x = torch.tensor([0.0], dtype=torch.float64, requires_grad=True)  # the Gauss-Newton step goes to -3: log(-2)
    reasons = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = least_squares(lambda z: torch.log(1.0 + z) + 3.0, [x], callback=lambda s: reasons.append(s.reason))
    assert reasons[0].nonfinite and result.success
    assert x.item() == pytest.approx(math.exp(-3.0) - 1.0, rel=1e-9)


def test_xtol_does_not_stop_a_run_that_still_moves_a_parameter_of_small_scale() -> None:
    """Steps near 10⁻⁸ are nothing next to ‖θ‖ = 10⁶ but all of x₂ = 10⁻⁷: xtol is judged per coordinate."""
    x = torch.tensor([1e6, 0.0], dtype=torch.float64, requires_grad=True)
    result = least_squares(lambda z: torch.stack([z[0] - 1e6, torch.exp(1e7 * z[1]) - math.e]), [x])
    assert result.success and result.reason is not RunReason.XTOL
    assert x[1].item() == pytest.approx(1e-7, rel=1e-12)


def test_a_gtol_the_control_cannot_reach_is_refused() -> None:
    x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="below the control's gtol"):
        least_squares(lambda z: z - 3.0, [x], control=LevenbergMarquardt(gtol=1e-3), gtol=1e-10)
    assert torch.equal(x.detach(), torch.tensor([1.0, 2.0], dtype=torch.float64))


def test_the_curvature_floor_lifts_the_damping_to_the_curvature_along_a_refused_step() -> None:
    control = LevenbergMarquardt(1e-6, curvature_floor=True)
    state = control.init()
    step = torch.tensor([3.0, 4.0], dtype=torch.float64)  # ‖s‖ = 5
    curvature = 2.0  # sᵀAs / ‖s‖²; the damped solve predicts ½ sᵀAs + μ ‖s‖²
    predicted = 0.5 * curvature * 25.0 + state.damping * 25.0
    refused = control.after_step(state, -1.0, 5.0, step, predicted)
    assert refused.damping == pytest.approx(curvature, rel=1e-12)
    assert LevenbergMarquardt(1e-6).after_step(state, -1.0, 5.0, step, predicted).damping == 2e-6  # Nielsen: × ν
    taken = control.after_step(state, 0.9, 5.0, step, predicted)
    assert taken == control.update(state, 0.9, 5.0)
