"""Bad input is refused in one line before any work, and scale alone never decides a step.

Each case here was once accepted and then failed late, obscurely or silently.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trustregion import (
    CategoricalFisher,
    ConjugateGradient,
    Damped,
    GaussNewton,
    Hessian,
    KLHessian,
    Reason,
    SteihaugCG,
    TrustRadius,
    TrustRegionMinimizer,
    TrustRegionOptimizer,
)
from trustregion.operator import LinearOperator
from trustregion.result import SolverReason
from trustregion.solvers import Ball


def softmax_problem(dtype: torch.dtype = torch.float64, seed: int = 0):
    """A softmax policy, its surrogate and its KL against a frozen copy of the old policy."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(3, 4, generator=generator, dtype=dtype).requires_grad_()
    obs = torch.randn(64, 4, generator=generator, dtype=dtype)
    actions = torch.randint(0, 3, (64,), generator=generator)
    advantages = torch.randn(64, generator=generator, dtype=dtype)
    old = torch.log_softmax(obs @ weight.detach().T, -1)

    def surrogate() -> torch.Tensor:
        log_probs = torch.log_softmax(obs @ weight.T, -1)
        ratio = torch.exp((log_probs - old).gather(1, actions[:, None]).squeeze(1))
        return -(ratio * advantages).mean()

    def mean_kl() -> torch.Tensor:
        return (old.exp() * (old - torch.log_softmax(obs @ weight.T, -1))).sum(-1).mean()

    return weight, obs, surrogate, mean_kl


@pytest.mark.parametrize(
    ("make_params", "match"),
    [
        (lambda: [torch.zeros(3)], r"params\[0\] does not require grad"),
        (lambda: [torch.zeros(1).expand(3).requires_grad_()], r"params\[0\] is an expanded view"),
        (lambda: [q := torch.zeros(3, requires_grad=True), q], "same tensor more than once"),
        (lambda: [torch.zeros(3, dtype=torch.int64)], "floating point"),
    ],
)
def test_parameters_that_cannot_be_stepped_are_refused_at_construction(make_params, match: str) -> None:
    for build in (lambda p: TrustRegionOptimizer(p), lambda p: TrustRegionMinimizer(p)):
        with pytest.raises((ValueError, TypeError), match=match):
            build(make_params())


def test_max_kl_is_checked_on_every_step_and_on_load() -> None:
    weight, _, surrogate, mean_kl = softmax_problem()
    opt = TrustRegionOptimizer([weight], max_kl=0.01)
    saved = weight.detach().clone()
    for bad in (-1.0, math.nan, 0.0):
        opt.param_groups[0]["max_kl"] = bad
        with pytest.raises(ValueError, match="max_kl must be a finite number > 0"):
            opt.step(lambda: (surrogate(), mean_kl()))
        assert torch.equal(weight.detach(), saved)
    opt.param_groups[0]["max_kl"] = 0.01
    state = opt.state_dict()
    state["param_groups"][0]["max_kl"] = -5.0
    with pytest.raises(ValueError, match="max_kl"):
        opt.load_state_dict(state)
    assert opt.param_groups[0]["max_kl"] == 0.01


def test_numpy_scalars_are_numbers_and_booleans_are_not() -> None:
    weight, *_ = softmax_problem()
    assert TrustRegionOptimizer([weight], max_kl=np.float32(0.02)).defaults["max_kl"] == pytest.approx(0.02)
    assert ConjugateGradient(max_iter=np.int64(5)).max_iter == 5
    for bad in (True, np.bool_(True)):
        with pytest.raises(ValueError, match="tol"):
            ConjugateGradient(tol=bad)
        with pytest.raises(ValueError, match="damping"):
            Damped(KLHessian(), bad)


def test_a_closure_that_calls_backward_is_named() -> None:
    weight, _, surrogate, mean_kl = softmax_problem()

    def lbfgs_style() -> tuple[torch.Tensor, torch.Tensor]:
        loss = surrogate()
        loss.backward()
        return loss, mean_kl()

    with pytest.raises(TypeError, match="closure called backward"):
        TrustRegionOptimizer([weight]).step(lbfgs_style)


@pytest.mark.parametrize(
    ("constraint", "match"),
    [
        (lambda kl: kl() - 1.0, "not ~0"),  # not a divergence from θ_old
        (lambda kl: kl().detach(), "does not depend on the parameters"),
        (lambda kl: -100.0 * kl(), "never negative"),  # a sign error: 0 at θ_old, negative after
    ],
)
def test_a_constraint_that_cannot_bound_the_step_is_refused(constraint, match: str) -> None:
    weight, obs, surrogate, mean_kl = softmax_problem()
    curvature = Damped(GaussNewton(lambda w: obs @ w.T, CategoricalFisher()), 0.1)  # so the sign error gets a step
    saved = weight.detach().clone()
    with pytest.raises(ValueError, match=match):
        TrustRegionOptimizer([weight], curvature=curvature).step(lambda: (surrogate(), constraint(mean_kl)))
    assert torch.equal(weight.detach(), saved)


def test_a_constraint_must_come_back_on_every_call() -> None:
    weight, _, surrogate, mean_kl = softmax_problem()
    calls = [0]

    def forgetful() -> object:
        calls[0] += 1
        return (surrogate(), mean_kl()) if calls[0] == 1 else surrogate()

    saved = weight.detach().clone()
    with pytest.raises(TypeError, match="on its first call and not now"):
        TrustRegionOptimizer([weight]).step(forgetful)
    assert torch.equal(weight.detach(), saved)


def test_the_radius_stops_at_min_radius_and_says_stalled() -> None:
    x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    calls = [0]

    def deceptive() -> torch.Tensor:
        calls[0] += 1
        return -(x**2).sum() + (0.0 if calls[0] % 2 else 1e9)

    opt = TrustRegionMinimizer([x], curvature=Hessian(), control=TrustRadius(min_radius=1e-6))
    reasons = []
    for _ in range(40):
        opt.step(deceptive)
        reasons.append(opt.last_result.reason)
    assert opt.control_state.radius == 1e-6
    assert reasons[-1] is Reason.STALLED and Reason.INSUFFICIENT_DECREASE in reasons[:12]
    assert Reason.STALLED.message


def test_steihaug_with_zero_tolerance_stops_at_an_exact_solution_inside_the_ball() -> None:
    operator = LinearOperator(lambda v: 2.0 * v, 3, positive_semidefinite=True)  # one CG step, residual exactly 0
    rhs = torch.ones(3, dtype=torch.float64)
    result = SteihaugCG(tol=0.0).solve_in_region(operator, rhs, Ball(10.0))
    assert result.reason is SolverReason.CONVERGED and result.iterations == 1
    assert torch.equal(result.direction, torch.full((3,), 0.5, dtype=torch.float64))


@pytest.mark.parametrize("scale", [1e20, 1e-30])
def test_a_float32_loss_of_extreme_scale_takes_the_same_step(scale: float) -> None:
    """Norms and dot products in float64: only the data's own range limits a float32 step."""
    steps = {}
    for factor in (1.0, scale):
        weight, _, surrogate, mean_kl = softmax_problem(torch.float32)
        start = weight.detach().clone()
        closure = _scaled_closure(surrogate, mean_kl, factor)
        TrustRegionOptimizer([weight], max_kl=0.01).step(closure)
        steps[factor] = weight.detach() - start
    assert steps[1.0].abs().max() > 0
    torch.testing.assert_close(steps[scale], steps[1.0], rtol=1e-4, atol=1e-6)


def _scaled_closure(surrogate, mean_kl, factor: float):
    return lambda: (factor * surrogate(), mean_kl())
