"""ResidualGaussNewton and SquaredError against dense Jacobians, and least-squares fits against scipy."""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import least_squares
from trustregion_helpers import DTYPE, step_problem

from trustregion import (
    GaussNewton,
    LevenbergMarquardt,
    Reason,
    ResidualGaussNewton,
    SquaredError,
    TrustRadius,
    TrustRegionMinimizer,
)
from trustregion.control import DampingState

seeds = st.integers(0, 2**31 - 1)


def exponential_residuals(t: torch.Tensor, y: torch.Tensor):
    """``r(a, b, c) = a exp(-b t) + c - y`` (three scalar parameters)."""
    return lambda a, b, c: a * torch.exp(-b * t) + c - y


def dense_gauss_newton(residuals, params, scale: float) -> torch.Tensor:
    """``c JᵀJ`` with ``J`` from :func:`torch.autograd.functional.jacobian` (the second implementation)."""
    primals = tuple(p.detach() for p in params)
    outputs = residuals(*primals).numel()
    jacobians = torch.autograd.functional.jacobian(residuals, primals)
    jacobian = torch.cat([j.reshape(outputs, -1) for j in jacobians], dim=1)
    return scale * jacobian.T @ jacobian


@given(seeds, st.integers(1, 30), st.sampled_from([1.0, 0.1]))
def test_operator_is_scaled_jacobian_gram(seed: int, samples: int, scale: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 3, samples, dtype=DTYPE)
    y = torch.randn(samples, generator=generator, dtype=DTYPE)
    params = [torch.randn((), generator=generator, dtype=DTYPE).requires_grad_() for _ in range(3)]
    residuals = exponential_residuals(t, y)
    curvature = ResidualGaussNewton(residuals, scale)
    operator = curvature.build(step_problem(params, curvature.loss(*params)))
    assert operator.positive_semidefinite
    torch.testing.assert_close(
        operator.dense(DTYPE), dense_gauss_newton(residuals, params, scale), rtol=1e-10, atol=1e-12
    )


def test_matrix_valued_residuals_and_parameters() -> None:
    """``r(W, b) = tanh(X W + b) - Y``: matrix parameters, a matrix of residuals, scale 1/N."""
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(7, 3, generator=generator, dtype=DTYPE)
    targets = torch.randn(7, 2, generator=generator, dtype=DTYPE)
    weight = torch.randn(3, 2, generator=generator, dtype=DTYPE).requires_grad_()
    bias = torch.randn(2, generator=generator, dtype=DTYPE).requires_grad_()

    def residuals(w, b):
        return torch.tanh(inputs @ w + b) - targets

    curvature = ResidualGaussNewton(residuals, scale=1 / 14)
    loss = curvature.loss(weight, bias)
    assert loss.item() == pytest.approx(0.5 * ((torch.tanh(inputs @ weight + bias) - targets) ** 2).mean().item())
    operator = curvature.build(step_problem([weight, bias], loss))
    torch.testing.assert_close(
        operator.dense(DTYPE), dense_gauss_newton(residuals, [weight, bias], 1 / 14), rtol=1e-10, atol=1e-12
    )


def test_for_module_with_squared_error_is_the_regression_gauss_newton() -> None:
    """``GaussNewton.for_module(model, x, SquaredError(1/N))`` is the GN of ``(1/2N) Σ ‖f(x) - y‖²``."""
    generator = torch.Generator().manual_seed(2)
    inputs = torch.randn(9, 2, generator=generator, dtype=DTYPE)
    targets = torch.randn(9, 1, generator=generator, dtype=DTYPE)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).to(DTYPE)
    params = list(model.parameters())
    curvature = GaussNewton.for_module(model, inputs, SquaredError(1 / 9))
    loss = 0.5 * ((model(inputs) - targets) ** 2).mean()
    operator = curvature.build(step_problem(params, loss))
    names = [name for name, _ in model.named_parameters()]

    def residuals(*tensors):
        return torch.func.functional_call(model, dict(zip(names, tensors, strict=True)), (inputs,)) - targets

    torch.testing.assert_close(
        operator.dense(DTYPE), dense_gauss_newton(residuals, params, 1 / 9), rtol=1e-9, atol=1e-12
    )


def test_gauss_newton_is_the_hessian_for_linear_residuals() -> None:
    """Linear ``r = Xθ - y``: ``∇²(½‖r‖²) = XᵀX`` exactly."""
    generator = torch.Generator().manual_seed(3)
    design = torch.randn(12, 4, generator=generator, dtype=DTYPE)
    y = torch.randn(12, generator=generator, dtype=DTYPE)
    theta = torch.zeros(4, dtype=DTYPE, requires_grad=True)
    curvature = ResidualGaussNewton(lambda p: design @ p - y)
    operator = curvature.build(step_problem([theta], curvature.loss(theta)))
    hessian = torch.autograd.functional.hessian(lambda p: curvature.loss(p), theta.detach())
    torch.testing.assert_close(operator.dense(DTYPE), hessian, rtol=1e-12, atol=1e-12)


def test_linear_least_squares_in_one_step() -> None:
    """Tiny damping, exact solve: one Levenberg-Marquardt step lands on the normal-equations solution."""
    generator = torch.Generator().manual_seed(4)
    design = torch.randn(20, 5, generator=generator, dtype=DTYPE)
    y = torch.randn(20, generator=generator, dtype=DTYPE)
    theta = torch.zeros(5, dtype=DTYPE, requires_grad=True)
    curvature = ResidualGaussNewton(lambda p: design @ p - y)
    opt = TrustRegionMinimizer([theta], curvature=curvature, control=LevenbergMarquardt(1e-12))
    opt.solver.tol = 1e-13
    opt.step(curvature.closure([theta]))
    solution = torch.linalg.lstsq(design, y.unsqueeze(1)).solution.squeeze(1)
    torch.testing.assert_close(theta.detach(), solution, rtol=1e-8, atol=1e-10)


# ----------------------------------------------------------------------------- nonlinear fits vs scipy


def decay_data(seed: int, samples: int = 40):
    generator = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 4, samples, dtype=DTYPE)
    y = 2.0 * torch.exp(-1.3 * t) + 0.5 + 0.02 * torch.randn(samples, generator=generator, dtype=DTYPE)
    return t, y


def scipy_fit(t: torch.Tensor, y: torch.Tensor, start) -> np.ndarray:
    tn, yn = t.numpy(), y.numpy()
    result = least_squares(
        lambda p: p[0] * np.exp(-p[1] * tn) + p[2] - yn, start, method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15
    )
    return result.x


def run_fit(t, y, start, controller, steps: int = 100):
    params = [torch.tensor(v, dtype=DTYPE, requires_grad=True) for v in start]
    curvature = ResidualGaussNewton(exponential_residuals(t, y))
    opt = TrustRegionMinimizer(params, curvature=curvature, control=controller)
    closure = curvature.closure(params)
    losses = []
    for _ in range(steps):
        opt.step(closure)
        result = opt.last_result
        if result.accepted:
            losses.append(result.loss_after)
        if result.reason is Reason.CONVERGED:
            break
    return params, opt, losses


@pytest.mark.parametrize("controller", [LevenbergMarquardt(gtol=1e-10), TrustRadius(gtol=1e-10)], ids=repr)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nonlinear_fit_matches_scipy_levenberg_marquardt(controller, seed: int) -> None:
    t, y = decay_data(seed)
    start = (1.0, 0.5, 0.0)
    params, opt, losses = run_fit(t, y, start, controller)
    assert opt.last_result.reason is Reason.CONVERGED
    fitted = torch.stack([p.detach() for p in params])
    torch.testing.assert_close(fitted, torch.from_numpy(scipy_fit(t, y, start)), rtol=1e-7, atol=1e-8)
    rounding = 10 * torch.finfo(DTYPE).eps  # accepted steps are monotone up to the loss's rounding level
    assert all(b <= a + rounding * max(1, abs(a)) for a, b in itertools.pairwise(losses))


def test_damping_adapts_and_survives_state_dict() -> None:
    t, y = decay_data(0)
    params, opt, _ = run_fit(t, y, (1.0, 0.5, 0.0), LevenbergMarquardt(1.0), steps=4)
    state = opt.control_state
    assert isinstance(state, DampingState) and opt.state[params[0]]["control"] == state
    assert state.damping < 1.0  # good steps shrank μ (ρ > 3/4 divides it by 3)
    assert opt.last_result.damping > 0
    saved = copy.deepcopy(opt.state_dict())
    assert saved["state"][0]["control"] == {"damping": state.damping, "growth": state.growth, "scale": None}
    restored = TrustRegionMinimizer(
        [p.detach().clone().requires_grad_() for p in params],
        curvature=ResidualGaussNewton(exponential_residuals(t, y)),
        control=LevenbergMarquardt(1.0),
    )
    restored.load_state_dict(saved)
    assert restored.state[restored.param_groups[0]["params"][0]]["control"] == state == restored.control_state


def test_predicted_reduction_uses_the_undamped_model() -> None:
    """With ``μ`` large, the step solves ``(A + μI)s = g`` yet ``ρ`` compares with ``gᵀs - ½ sᵀAs``."""
    t, y = decay_data(0)
    params = [torch.tensor(v, dtype=DTYPE, requires_grad=True) for v in (1.0, 0.5, 0.0)]
    curvature = ResidualGaussNewton(exponential_residuals(t, y))
    loss = curvature.loss(*params)
    gradient = -torch.stack(torch.autograd.grad(loss, params))
    matrix = dense_gauss_newton(curvature.residuals, params, 1.0)
    damping = 5.0
    step = torch.linalg.solve(matrix + damping * torch.eye(3, dtype=DTYPE), gradient)
    expected = (gradient @ step - 0.5 * step @ matrix @ step).item()
    opt = TrustRegionMinimizer(params, curvature=curvature, control=LevenbergMarquardt(damping))
    opt.solver.tol = 1e-14
    opt.step(curvature.closure(params))
    assert opt.last_result.expected_improvement == pytest.approx(expected, rel=1e-9)
    assert opt.last_result.damping == damping


@pytest.mark.parametrize("scale", [0.0, -1.0, math.inf, True])
def test_bad_scale_is_refused(scale) -> None:
    with pytest.raises(ValueError, match="scale"):
        SquaredError(scale)
