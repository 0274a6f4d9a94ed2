"""SecularSolver: the Levenberg-Marquardt step of a scaled trust region, against dense float64 references."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trustregion import LinearOperator, SecularSolver
from trustregion.solvers import Ball
from trustregion.solvers.secular import ScaledBall, secular_solve

DTYPE = torch.float64
seeds = st.integers(0, 2**31 - 1)


def problem(seed: int, rows: int = 8, columns: int = 5, spread: float = 3.0):
    """``A = JᵀJ`` of a random ``J`` with columns of very different scales, ``g``, and Moré's ``D`` (column norms)."""
    generator = torch.Generator().manual_seed(seed)
    jacobian = torch.randn(rows, columns, generator=generator, dtype=DTYPE)
    jacobian = jacobian * 10.0 ** (spread * (torch.rand(columns, generator=generator, dtype=DTYPE) - 0.5))
    gradient = jacobian.T @ torch.randn(rows, generator=generator, dtype=DTYPE)
    scale = torch.linalg.vector_norm(jacobian, dim=0)
    return jacobian.T @ jacobian, gradient, scale


def operator_of(matrix: torch.Tensor) -> LinearOperator:
    return LinearOperator(lambda v: matrix @ v, len(matrix), positive_semidefinite=True)


def gauss_newton_step(matrix: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    return torch.linalg.solve(matrix, gradient)


@settings(max_examples=25, deadline=None)
@given(seed=seeds, fraction=st.floats(0.001, 0.8))
def test_a_step_longer_than_the_region_is_cut_to_within_the_tolerance_of_it(seed: int, fraction: float) -> None:
    matrix, gradient, scale = problem(seed)
    radius = fraction * torch.linalg.vector_norm(scale * gauss_newton_step(matrix, gradient)).item()
    region = ScaledBall(radius, scale=scale)
    result = SecularSolver().solve_in_region(operator_of(matrix), gradient, region)
    step, damping = result.direction, region.report.damping
    assert abs(torch.linalg.vector_norm(scale * step).item() - radius) <= 0.1 * radius * (1 + 1e-9)
    assert damping > 0 and result.region_norm == pytest.approx(torch.linalg.vector_norm(scale * step).item())
    residual = (matrix + damping * torch.diag(scale.square())) @ step - gradient  # (JᵀJ + λDᵀD) s = -∇L
    assert torch.linalg.vector_norm(residual).item() <= 1e-10 * torch.linalg.vector_norm(gradient).item()
    assert result.curvature == pytest.approx((step @ matrix @ step).item(), rel=1e-10)  # sᵀAs without λD²
    assert result.gradient_dot == pytest.approx((gradient @ step).item(), rel=1e-12)
    assert region.report.gradient_dot == result.gradient_dot


@settings(max_examples=25, deadline=None)
@given(seed=seeds, margin=st.floats(1.0, 100.0))
def test_a_gauss_newton_step_inside_the_region_is_the_step(seed: int, margin: float) -> None:
    matrix, gradient, scale = problem(seed)
    newton = gauss_newton_step(matrix, gradient)
    region = ScaledBall(margin * torch.linalg.vector_norm(scale * newton).item(), scale=scale)
    result = SecularSolver().solve_in_region(operator_of(matrix), gradient, region)
    assert region.report.damping == 0.0 and result.iterations == 0
    assert torch.allclose(result.direction, newton, rtol=1e-9, atol=1e-12 * newton.abs().max().item())


@settings(max_examples=20, deadline=None)
@given(seed=seeds, fractions=st.lists(st.floats(0.001, 0.9), min_size=2, max_size=5, unique=True))
def test_a_smaller_region_takes_a_larger_damping_and_a_larger_damping_a_shorter_step(seed, fractions) -> None:
    matrix, gradient, scale = problem(seed)
    scaled_matrix, scaled_gradient = matrix / scale[:, None] / scale[None, :], gradient / scale
    newton_length = torch.linalg.vector_norm(scale * gauss_newton_step(matrix, gradient)).item()
    solutions = [
        secular_solve(scaled_matrix, scaled_gradient, f * newton_length, 0.0, 1e-9, 100) for f in sorted(fractions)
    ]
    dampings = [solution.damping for solution in solutions]
    lengths = [torch.linalg.vector_norm(solution.scaled_step).item() for solution in solutions]
    assert all(a > b for a, b in itertools.pairwise(dampings))  # Δ up, λ down
    assert all(a < b for a, b in itertools.pairwise(lengths))  # λ down, ‖D s(λ)‖ up
    upper = torch.linalg.vector_norm(scaled_gradient).item()  # λ <= ‖D⁻¹g‖ / Δ (lmpar's upper bound)
    assert all(d <= upper / (f * newton_length) for d, f in zip(dampings, sorted(fractions), strict=True))


@pytest.mark.parametrize("start", [0.0, 1e-8, 1e3])
def test_where_the_newton_iteration_starts_does_not_change_the_step_beyond_the_tolerance(start: float) -> None:
    matrix, gradient, scale = problem(3)
    scaled_matrix, scaled_gradient = matrix / scale[:, None] / scale[None, :], gradient / scale
    solution = secular_solve(scaled_matrix, scaled_gradient, 0.05, start, 0.1, 10)
    assert abs(torch.linalg.vector_norm(solution.scaled_step).item() - 0.05) <= 0.005 * (1 + 1e-9)


def test_a_singular_matrix_gives_a_finite_step_in_the_region() -> None:
    matrix, gradient, scale = problem(1, rows=3, columns=5)  # rank 3 of 5
    for radius in (1e-3, 1e3):
        region = ScaledBall(radius, scale=scale)
        result = SecularSolver().solve_in_region(operator_of(matrix), gradient, region)
        assert torch.isfinite(result.direction).all()
        assert torch.linalg.vector_norm(scale * result.direction).item() <= 1.1 * radius
        assert result.gradient_dot > 0


def test_a_plain_ball_is_the_unscaled_region_and_no_bound_is_the_gauss_newton_step() -> None:
    matrix, gradient, _ = problem(2)
    bounded = SecularSolver().solve_in_region(operator_of(matrix), gradient, Ball(1e-2))
    assert abs(torch.linalg.vector_norm(bounded.direction).item() - 1e-2) <= 1e-3 * (1 + 1e-9)
    free = SecularSolver()(operator_of(matrix), gradient)
    assert torch.allclose(free.direction, gauss_newton_step(matrix, gradient), rtol=1e-9)


@settings(max_examples=25, deadline=None)
@given(seed=seeds, fraction=st.floats(0.001, 0.9), cap=st.floats(1e-10, 1e2))
def test_with_max_damping_the_step_is_that_dampings_step_shortened_onto_the_region_or_the_lm_step(
    seed: int, fraction: float, cap: float
) -> None:
    matrix, gradient, scale = problem(seed)
    radius = fraction * torch.linalg.vector_norm(scale * gauss_newton_step(matrix, gradient)).item()
    free = ScaledBall(radius, scale=scale)
    plain = SecularSolver().solve_in_region(operator_of(matrix), gradient, free)
    capped_region = ScaledBall(radius, scale=scale)
    capped = SecularSolver(max_damping=cap).solve_in_region(operator_of(matrix), gradient, capped_region)
    damped = torch.linalg.solve(matrix + cap * torch.diag(scale.square()), gradient)  # (A + λ̄D²)⁻¹ g, dense
    if torch.linalg.vector_norm(scale * damped).item() > radius:  # the region needs λ > λ̄
        shortened = damped * (radius / torch.linalg.vector_norm(scale * damped).item())
        assert torch.allclose(capped.direction, shortened, rtol=1e-8, atol=1e-12 * shortened.abs().max().item())
        assert capped_region.report.damping == cap and capped.region_norm == pytest.approx(radius, rel=1e-12)
        assert capped.gradient_dot == pytest.approx((gradient @ shortened).item(), rel=1e-8)
    else:  # λ <= λ̄ (up to the secular tolerance): MINPACK's step
        assert free.report.damping <= cap * (1 + 1e-6) or free.report.damping == pytest.approx(cap, rel=0.5)
        assert torch.equal(capped.direction, plain.direction)


def test_max_damping_keeps_the_gauss_newton_direction_where_lm_turns_to_the_gradient() -> None:
    matrix = torch.diag(torch.tensor([1.0, 1e-6], dtype=DTYPE))  # one direction of tiny curvature
    gradient = torch.tensor([1.0, 1e-6], dtype=DTYPE)  # Gauss-Newton step (1, 1), cut to a tenth of its length
    region = ScaledBall(0.1 * math.sqrt(2.0), scale=torch.ones(2, dtype=DTYPE))
    lm = SecularSolver().solve_in_region(operator_of(matrix), gradient, region).direction
    capped = SecularSolver(max_damping=1e-9).solve_in_region(operator_of(matrix), gradient, region).direction
    assert lm[1].abs() < 1e-4 * lm[0].abs()  # λ ≈ 10 leaves the small-curvature direction behind
    assert torch.allclose(capped, torch.tensor([0.1, 0.1], dtype=DTYPE), rtol=1e-3)


def test_what_the_solver_refuses() -> None:
    matrix, gradient, scale = problem(0)
    indefinite = LinearOperator(lambda v: -v, 5, positive_semidefinite=False)
    with pytest.raises(ValueError, match="positive semidefinite"):
        SecularSolver().solve_in_region(indefinite, gradient, Ball(1.0))
    with pytest.raises(ValueError, match="euclidean"):
        SecularSolver().solve_in_region(operator_of(matrix), gradient, Ball(1.0, "operator"))
    with pytest.raises(ValueError, match="positive numbers"):
        ScaledBall(1.0, scale=-scale)
    with pytest.raises(ValueError, match="tolerance"):
        SecularSolver(tolerance=1.5)
    for bad in (0.0, -1.0, math.nan, True, "1e-8"):
        with pytest.raises(ValueError, match="max_damping must be a number > 0"):
            SecularSolver(max_damping=bad)
    nonfinite = SecularSolver().solve_in_region(operator_of(matrix * math.nan), gradient, ScaledBall(1.0, scale=scale))
    assert nonfinite.reason.value == "nonfinite"
