"""Whole runs: the stopping rules of ``run`` and the ``minimize`` / ``least_squares`` entry points.

The least-squares problems are from Moré, Garbow & Hillstrom, "Testing unconstrained optimization
software" (ACM TOMS 7, 1981), with their published minima ``f* = Σ r²``.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.optimize import least_squares as scipy_least_squares

from trustregion import (
    Hessian,
    LevenbergMarquardt,
    RunReason,
    TrustRadius,
    TrustRegionMinimizer,
    least_squares,
    minimize,
    run,
)
from trustregion.operator import LinearOperator
from trustregion.solvers import DenseSolver

DTYPE = torch.float64
MEYER_T = 45.0 + 5.0 * torch.arange(1, 17, dtype=DTYPE)
MEYER_Y = torch.tensor(
    [34780, 28610, 23650, 19630, 16370, 13720, 11540, 9744, 8261, 7030, 6005, 5147, 4427, 3820, 3307, 2872],
    dtype=DTYPE,
)


def meyer(x: torch.Tensor) -> torch.Tensor:
    return x[0] * torch.exp(x[1] / (MEYER_T + x[2])) - MEYER_Y


def powell_badly_scaled(x: torch.Tensor) -> torch.Tensor:
    return torch.stack([1e4 * x[0] * x[1] - 1, torch.exp(-x[0]) + torch.exp(-x[1]) - 1.0001])


def brown_badly_scaled(x: torch.Tensor) -> torch.Tensor:
    return torch.stack([x[0] - 1e6, x[1] - 2e-6, x[0] * x[1] - 2])


def freudenstein_roth(x: torch.Tensor) -> torch.Tensor:
    return torch.stack([-13 + x[0] + ((5 - x[1]) * x[1] - 2) * x[1], -29 + x[0] + ((x[1] + 1) * x[1] - 14) * x[1]])


MGH = {  # residuals, standard start, f* = Σ r² at the minimum the start leads to
    "meyer": (meyer, (0.02, 4000.0, 250.0), 87.9458),
    "powell badly scaled": (powell_badly_scaled, (0.0, 1.0), 0.0),
    "brown badly scaled": (brown_badly_scaled, (1.0, 1.0), 0.0),
    "freudenstein-roth": (freudenstein_roth, (0.5, -2.0), 48.9842),
}


@pytest.mark.parametrize("name", list(MGH))
def test_least_squares_reaches_the_published_minimum_where_scipy_lm_does(name: str) -> None:
    residuals, start, f_star = MGH[name]
    x = torch.tensor(start, dtype=DTYPE, requires_grad=True)
    result = least_squares(residuals, [x], max_steps=2000)
    reference = scipy_least_squares(lambda z: residuals(torch.tensor(z)).numpy(), start, method="lm")
    assert result.success, result.message
    assert 2 * reference.cost == pytest.approx(f_star, rel=1e-5, abs=1e-10)
    assert 2 * result.loss == pytest.approx(f_star, rel=1e-5, abs=1e-10)
    assert result.loss == pytest.approx(0.5 * residuals(x.detach()).square().sum().item(), rel=1e-12)
    assert result.history[-1] == result.loss and len(result.history) == result.steps


@pytest.mark.parametrize("scale", [1e-2, 1.0])
def test_the_learned_noise_allowance_is_relative_to_the_loss(scale: float) -> None:
    """Meyer shows evaluation noise near 1e-10 of its loss; scaled to a loss below 1 it stays relative.

    ``r`` is at most Conn, Gould & Toint's ``10 ε max(1, |L|)`` or the learned ``ν |L|`` (``ν <= 10⁴ ε``):
    an allowance learned at ``|L| < 1`` must not act as an absolute one, which would accept rises.
    """
    x, steps = torch.tensor(MGH["meyer"][1], dtype=DTYPE, requires_grad=True), []
    result = least_squares(lambda z: scale * meyer(z), [x], max_steps=2000, callback=steps.append)
    assert 2 * result.loss == pytest.approx(87.9459 * scale**2, rel=1e-5, abs=0.0)
    eps = torch.finfo(DTYPE).eps
    assert all(
        step.rounding <= max(10 * eps * max(1.0, step.loss_before), 1e4 * eps * step.loss_before) for step in steps
    )
    assert max(step.rounding for step in steps) > 10 * eps * max(1.0, result.loss)  # noise was learned
    assert all(step.loss_after <= step.loss_before + step.rounding for step in steps if step.accepted)


@pytest.mark.parametrize("name", ["powell badly scaled", "brown badly scaled", "meyer"])
def test_the_dense_default_takes_at_most_3x_scipy_lm_evaluations_on_the_badly_scaled_problems(name: str) -> None:
    """MINPACK's formulation, the default up to 500 parameters: 1.8×, 2.1×, 2.1× measured (damping: 7.2× on Powell)."""
    residuals, start, f_star = MGH[name]
    calls = [0]

    def counted(z: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return residuals(z)

    x = torch.tensor(start, dtype=DTYPE, requires_grad=True)
    result = least_squares(counted, [x], max_steps=2000)
    reference = scipy_least_squares(
        lambda z: residuals(torch.tensor(z)).numpy(),
        start,
        jac=lambda z: torch.autograd.functional.jacobian(residuals, torch.tensor(z)).numpy(),
        method="lm",
    )
    assert 2 * result.loss == pytest.approx(f_star, rel=1e-5, abs=1e-10)
    assert calls[0] <= 3 * reference.nfev


def test_moré_scaling_is_what_solves_meyer() -> None:
    x = torch.tensor(MGH["meyer"][1], dtype=DTYPE, requires_grad=True)
    unscaled = least_squares(meyer, [x], control=LevenbergMarquardt(), solver=DenseSolver(), max_steps=2000)
    assert 2 * unscaled.loss > 88.5  # stuck well above f* = 87.9459 without the scaling


def test_minimize_is_newton_cg_and_stops_on_the_second_order_test() -> None:
    x = torch.tensor([-1.2, 1.0], dtype=DTYPE, requires_grad=True)
    result = minimize(lambda: (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2, [x])
    assert result.success and result.reason in (RunReason.CONVERGED, RunReason.GTOL)
    torch.testing.assert_close(x.detach(), torch.ones(2, dtype=DTYPE), rtol=0, atol=1e-7)
    assert result.closure_calls >= result.steps and result.curvature_products > 0


def test_a_saddle_start_is_escaped_not_reported_converged() -> None:
    y = torch.zeros(2, dtype=DTYPE, requires_grad=True)
    result = minimize(lambda: y[0] ** 2 - y[1] ** 2 + y[1] ** 4, [y])
    assert result.success and result.loss == pytest.approx(-0.25, abs=1e-12)


def test_relative_gtol_fires_on_a_nonzero_residual_minimum() -> None:
    x = torch.tensor((0.5, -2.0), dtype=DTYPE, requires_grad=True)
    absolute_only = least_squares(freudenstein_roth, [x], gtol=1e-300, ftol=0.0, xtol=0.0, max_steps=40)
    assert absolute_only.reason is not RunReason.GTOL
    x = torch.tensor((0.5, -2.0), dtype=DTYPE, requires_grad=True)
    first = []
    relative = least_squares(
        freudenstein_roth, [x], gtol=0.0, gtol_rel=1e-6, ftol=0.0, xtol=0.0, callback=lambda s: first.append(s) and None
    )
    assert relative.reason is RunReason.GTOL
    assert relative.gradient_norm <= 1e-6 * first[0].gradient_norm


def test_max_steps_and_callback_stop_the_run() -> None:
    x = torch.tensor([-1.2, 1.0], dtype=DTYPE, requires_grad=True)
    result = minimize(lambda: (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2, [x], max_steps=3)
    assert (result.reason, result.steps, result.success) == (RunReason.MAX_STEPS, 3, False)
    seen = []
    result = minimize(lambda: (x**2).sum(), [x], callback=lambda step: seen.append(step) or len(seen) == 2)
    assert result.reason is RunReason.CALLBACK and result.steps == 2 == len(seen)


def test_a_loss_its_gradient_does_not_describe_stalls() -> None:
    x = torch.tensor([1.0, 2.0], dtype=DTYPE, requires_grad=True)
    calls = [0]

    def deceptive() -> torch.Tensor:  # every trial point looks much worse than the model predicts
        calls[0] += 1
        return (x**2).sum() + (0.0 if calls[0] % 2 else 1e6)

    result = run(TrustRegionMinimizer([x], curvature=Hessian(), control=TrustRadius()), deceptive, patience=5)
    assert result.reason is RunReason.STALLED and not result.success and result.accepted_steps == 0
    assert result.steps == 5


@pytest.mark.parametrize(
    ("tolerances", "match"),
    [
        ({"max_steps": 0}, "max_steps"),
        ({"ftol": -1.0}, "ftol"),
        ({"gtol_rel": 1.5}, "gtol_rel"),
        ({"xtol": True}, "xtol"),
    ],
)
def test_bad_tolerances_are_refused_before_any_step(tolerances: dict, match: str) -> None:
    x = torch.tensor([1.0], dtype=DTYPE, requires_grad=True)
    with pytest.raises(ValueError, match=match):
        minimize(lambda: (x**2).sum(), [x], **tolerances)
    assert x.item() == 1.0


@pytest.mark.parametrize("entry", ["minimize", "least_squares"])
def test_an_unknown_tolerance_is_refused_by_name_before_any_step(entry: str) -> None:
    x = torch.tensor([1.0], dtype=DTYPE, requires_grad=True)
    with pytest.raises(TypeError, match="unknown tolerance 'ftoll': the tolerances are max_steps, gtol"):
        if entry == "minimize":
            minimize(lambda: (x**2).sum(), [x], ftoll=1e-9)
        else:
            least_squares(lambda x: x - 2.0, [x], ftoll=1e-9)
    assert x.item() == 1.0


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def test_minimize_takes_a_function_of_the_parameters_as_scipy_takes_fun_x() -> None:
    closure_x = torch.tensor([-1.2, 1.0], dtype=DTYPE, requires_grad=True)
    function_x = closure_x.detach().clone().requires_grad_()
    by_closure = minimize(lambda: rosenbrock(closure_x), [closure_x])
    by_function = minimize(rosenbrock, [function_x])
    assert by_function.success and by_function.steps == by_closure.steps
    torch.testing.assert_close(function_x, closure_x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(function_x.detach(), torch.ones(2, dtype=DTYPE), rtol=0, atol=1e-8)


def test_a_loss_taking_as_many_arguments_as_there_are_no_parameter_tensors_is_refused() -> None:
    x, y = (torch.tensor([1.0], dtype=DTYPE, requires_grad=True) for _ in range(2))
    with pytest.raises(TypeError, match=r"loss takes 1 positional argument\(s\) but there are 2 parameter tensors"):
        minimize(lambda x: (x**2).sum(), [x, y])
    assert x.item() == 1.0 and y.item() == 1.0


def test_equilibrated_dense_solve_agrees_with_the_plain_one_when_both_are_well_posed() -> None:
    generator = torch.Generator().manual_seed(0)
    basis = torch.randn(6, 6, generator=generator, dtype=DTYPE)
    matrix = basis @ basis.T + 6 * torch.eye(6, dtype=DTYPE)
    scales = torch.tensor([1e-3, 1.0, 1e3, 1.0, 10.0, 1e-1], dtype=DTYPE)
    matrix = scales[:, None] * matrix * scales[None, :]
    rhs = torch.randn(6, generator=generator, dtype=DTYPE)
    operator = LinearOperator(lambda v: matrix @ v, 6, positive_semidefinite=True)
    exact = torch.linalg.solve(matrix, rhs)
    for solver in (DenseSolver(), DenseSolver(equilibrate=True)):
        torch.testing.assert_close(solver(operator, rhs).direction, exact, rtol=1e-8, atol=0)


def test_operator_diagonal_is_exact_for_small_and_unbiased_for_large_operators() -> None:
    generator = torch.Generator().manual_seed(1)
    for n in (5, 300):
        basis = torch.randn(n, n, generator=generator, dtype=DTYPE) / math.sqrt(n)
        matrix = basis @ basis.T + torch.diag(torch.linspace(1.0, 3.0, n, dtype=DTYPE))
        operator = LinearOperator(lambda v, m=matrix: m @ v, n, positive_semidefinite=True)
        estimate = operator.diagonal(torch.zeros(n, dtype=DTYPE), probes=400)
        if n <= 256:
            torch.testing.assert_close(estimate, matrix.diagonal(), rtol=1e-12, atol=0)
        else:  # Hutchinson: the error of the mean over 400 probes is ~ ‖off-diagonal row‖ / 20
            assert (estimate - matrix.diagonal()).abs().mean() < 0.1 * matrix.diagonal().mean()
