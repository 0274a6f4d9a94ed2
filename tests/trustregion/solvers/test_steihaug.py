"""SteihaugCG and the Lanczos probe against dense linear algebra (float64)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from trustregion_helpers import DTYPE, matrix_operator, quadratic_model, random_vector, symmetric_matrix

from trustregion import ConjugateGradient, LinearOperator, SteihaugCG
from trustregion.result import SolverReason
from trustregion.solvers import Ball, smallest_eigenpair

seeds = st.integers(0, 2**31 - 1)
metrics = st.sampled_from(["euclidean", "operator"])
log_radii = st.floats(-3.0, 2.0)
spectra = st.sampled_from(["positive", "singular", "indefinite", "negative"])


def spectrum(kind: str, n: int, generator: torch.Generator) -> torch.Tensor:
    """Eigenvalues of the requested sign pattern, magnitudes in [0.1, 10]."""
    magnitudes = 0.1 + 9.9 * torch.rand(n, generator=generator, dtype=DTYPE)
    if kind == "singular":
        magnitudes[: max(1, n // 3)] = 0.0
    if kind == "indefinite":
        magnitudes[: max(1, n // 2)] *= -1
    if kind == "negative":
        magnitudes = -magnitudes
    return magnitudes


def problem(kind: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    matrix = symmetric_matrix(spectrum(kind, n, generator), generator)
    return matrix, random_vector(n, generator)


def metric_norm(matrix: torch.Tensor, step: torch.Tensor, metric: str) -> float:
    if metric == "operator":
        return math.sqrt(max((step @ matrix @ step).item(), 0.0))
    return step.norm().item()


def solve(matrix, rhs, radius, metric="euclidean", *, max_iter=None, tol=None, psd=True):
    operator = matrix_operator(matrix, positive_semidefinite=psd)
    result = SteihaugCG(max_iter=max_iter, tol=tol).solve_in_region(operator, rhs, Ball(radius, metric))
    return result, operator


# ----------------------------------------------------------------------------- the region


@given(seeds, st.integers(1, 12), spectra, metrics, log_radii)
def test_every_step_lies_in_the_region(seed: int, n: int, kind: str, metric: str, log_radius: float) -> None:
    matrix, rhs = problem(kind, n, seed)
    if metric == "operator" and kind in ("indefinite", "negative"):
        matrix = matrix @ matrix  # the operator metric is defined for PSD operators only
    radius = 10.0**log_radius
    result, _ = solve(matrix, rhs, radius, metric)
    assert metric_norm(matrix, result.direction, metric) <= radius * (1 + 1e-9)


@given(seeds, st.integers(1, 12), spectra, log_radii)
def test_model_decreases_along_the_iterates(seed: int, n: int, kind: str, log_radius: float) -> None:
    """Truncating after ``k`` products gives the ``k``-th iterate; ``q`` never increases with ``k``."""
    matrix, rhs = problem(kind, n, seed)
    values = [0.0]
    for k in range(1, n + 1):
        result, _ = solve(matrix, rhs, 10.0**log_radius, max_iter=k, tol=0.0)
        values.append(quadratic_model(matrix, rhs, result.direction))
    scale = 1e-10 * (1 + max(abs(v) for v in values))
    assert all(later <= earlier + scale for earlier, later in itertools.pairwise(values))
    assert values[1] < 0.0  # the first iterate already decreases q (g ≠ 0)


@given(seeds, st.integers(1, 12), spectra, metrics, log_radii)
def test_at_least_the_cauchy_decrease(seed: int, n: int, kind: str, metric: str, log_radius: float) -> None:
    """``q(s) <= q(s_C)``, the minimiser of ``q`` along ``g`` within the ball (Steihaug's first iterate)."""
    matrix, rhs = problem(kind, n, seed)
    if metric == "operator":
        matrix = matrix @ matrix
    radius = 10.0**log_radius
    result, _ = solve(matrix, rhs, radius, metric)
    curvature = (rhs @ matrix @ rhs).item()
    length = radius / metric_norm(matrix, rhs, metric) if metric_norm(matrix, rhs, metric) > 0 else math.inf
    best = length if curvature <= 0 else min(length, (rhs @ rhs).item() / curvature)
    if math.isinf(best):
        return  # g in the null space of A in the operator metric: no bounded Cauchy point
    cauchy = best * rhs
    assert quadratic_model(matrix, rhs, result.direction) <= quadratic_model(matrix, rhs, cauchy) + 1e-10


@given(seeds, st.integers(1, 12), spectra, metrics)
def test_loops_are_capped_and_never_raise(seed: int, n: int, kind: str, metric: str) -> None:
    matrix, rhs = problem(kind, n, seed)
    for max_iter in (1, 3, None):
        result, operator = solve(matrix, rhs, 1.0, metric, max_iter=max_iter, tol=0.0, psd=kind != "indefinite")
        assert result.iterations <= operator.products <= min(result.iterations + 1, max_iter or 10 * n)
        assert torch.isfinite(result.direction).all()


@given(seeds, st.integers(1, 12), spectra, metrics, log_radii)
def test_reported_scalars_match_the_dense_products(seed, n, kind, metric, log_radius) -> None:
    matrix, rhs = problem(kind, n, seed)
    if metric == "operator":
        matrix = matrix @ matrix
    result, _ = solve(matrix, rhs, 10.0**log_radius, metric)
    step = result.direction
    scale = 1e-9 * (1 + step.norm().item() ** 2 * matrix.norm().item() + rhs.norm().item() * step.norm().item())
    assert result.curvature == pytest.approx((step @ matrix @ step).item(), abs=scale)
    assert result.gradient_dot == pytest.approx((rhs @ step).item(), abs=scale)
    residual = (rhs - matrix @ step).norm().item() / rhs.norm().item()
    assert result.relative_residual == pytest.approx(residual, abs=1e-8)


# ----------------------------------------------------------------------------- exits


@given(seeds, st.integers(1, 12))
def test_interior_newton_point_is_the_cg_solution(seed: int, n: int) -> None:
    matrix, rhs = problem("positive", n, seed)
    newton = torch.linalg.solve(matrix, rhs)
    result, _ = solve(matrix, rhs, 2 * newton.norm().item(), tol=1e-12)
    assert result.reason is SolverReason.CONVERGED
    torch.testing.assert_close(result.direction, newton, rtol=1e-8, atol=1e-10)
    reference = ConjugateGradient(max_iter=n, tol=1e-12)(matrix_operator(matrix), rhs)
    torch.testing.assert_close(result.direction, reference.direction, rtol=1e-8, atol=1e-10)


@given(seeds, st.integers(1, 12), metrics)
def test_outside_newton_point_stops_on_the_boundary(seed: int, n: int, metric: str) -> None:
    matrix, rhs = problem("positive", n, seed)
    newton = torch.linalg.solve(matrix, rhs)
    radius = 0.5 * metric_norm(matrix, newton, metric)
    result, _ = solve(matrix, rhs, radius, metric, tol=1e-12)
    assert result.reason is SolverReason.BOUNDARY
    assert metric_norm(matrix, result.direction, metric) == pytest.approx(radius, rel=1e-9)


def test_negative_curvature_goes_to_the_boundary_on_the_lower_side() -> None:
    """``A = diag(1, -1)``, ``g = (1, 0.1)``: the second CG direction has negative curvature.

    Reference: the two crossings of ``‖s₁ + τp₁‖ = Δ`` computed by hand, and the one with the lower ``q``.
    """
    matrix = torch.diag(torch.tensor([1.0, -1.0], dtype=DTYPE))
    rhs = torch.tensor([1.0, 0.1], dtype=DTYPE)
    radius = 3.0
    result, _ = solve(matrix, rhs, radius, tol=0.0, psd=False)
    assert result.reason is SolverReason.NEGATIVE_CURVATURE
    first = (rhs @ rhs) / (rhs @ matrix @ rhs) * rhs
    residual = rhs - matrix @ first
    direction = residual + (residual @ residual) / (rhs @ rhs) * rhs
    assert (direction @ matrix @ direction).item() < 0
    a, b, c = direction @ direction, first @ direction, first @ first - radius**2
    roots = [((-b + sign * torch.sqrt(b * b - a * c)) / a).item() for sign in (1, -1)]
    crossings = [first + tau * direction for tau in roots]
    best = min(crossings, key=lambda point: quadratic_model(matrix, rhs, point))
    torch.testing.assert_close(result.direction, best, rtol=1e-10, atol=1e-12)
    assert result.direction.norm().item() == pytest.approx(radius, rel=1e-12)
    assert quadratic_model(matrix, rhs, result.direction) < quadratic_model(matrix, rhs, first)


def test_first_direction_of_negative_curvature_moves_along_the_gradient() -> None:
    matrix = -torch.eye(3, dtype=DTYPE)
    rhs = torch.tensor([1.0, 2.0, 2.0], dtype=DTYPE)
    result, operator = solve(matrix, rhs, 6.0, psd=False)
    torch.testing.assert_close(result.direction, 2.0 * rhs)
    assert operator.products == 1


def test_without_a_bounded_ball_negative_curvature_keeps_the_last_iterate() -> None:
    """Operator metric (or Δ = ∞) and ``pᵀAp <= 0``: nothing bounds the step; return ``s_k`` like CG."""
    matrix = torch.diag(torch.tensor([2.0, 0.0], dtype=DTYPE))
    rhs = torch.tensor([0.0, 1.0], dtype=DTYPE)
    for region in (Ball(1.0, "operator"), Ball(math.inf)):
        result = SteihaugCG().solve_in_region(matrix_operator(matrix), rhs, region)
        assert result.reason is SolverReason.NEGATIVE_CURVATURE
        assert result.direction.abs().max().item() == 0.0


def test_operator_metric_is_the_kl_boundary() -> None:
    """``Ball.kl(δ)``: a boundary step has ``½ sᵀAs = δ``."""
    generator = torch.Generator().manual_seed(3)
    matrix = symmetric_matrix(torch.linspace(0.5, 4.0, 6, dtype=DTYPE), generator)
    rhs = random_vector(6, generator)
    result = SteihaugCG().solve_in_region(matrix_operator(matrix), rhs, Ball.kl(0.01))
    assert result.reason is SolverReason.BOUNDARY
    assert 0.5 * (result.direction @ matrix @ result.direction).item() == pytest.approx(0.01, rel=1e-10)


def test_unbounded_call_is_cg_with_a_negative_curvature_report() -> None:
    generator = torch.Generator().manual_seed(4)
    matrix = symmetric_matrix(torch.linspace(1.0, 100.0, 8, dtype=DTYPE), generator)
    rhs = random_vector(8, generator)
    ours = SteihaugCG(max_iter=5, tol=0.0)(matrix_operator(matrix), rhs)
    reference = ConjugateGradient(max_iter=5, tol=0.0)(matrix_operator(matrix), rhs)
    torch.testing.assert_close(ours.direction, reference.direction, rtol=1e-10, atol=1e-12)
    assert ours.reason is SolverReason.MAX_ITERATIONS


def test_forcing_tolerance_is_min_half_sqrt_gradient_norm() -> None:
    """``tol=None``: stop once ``‖r‖ < min(0.5, sqrt(‖g‖)) ‖g‖``, and not before."""
    generator = torch.Generator().manual_seed(5)
    matrix = symmetric_matrix(torch.logspace(0, 3, 30, dtype=DTYPE), generator)
    for scale in (1e-4, 1.0, 100.0):
        rhs = scale * random_vector(30, generator)
        forcing = min(0.5, math.sqrt(rhs.norm().item()))
        result, _ = solve(matrix, rhs, math.inf)
        assert result.reason is SolverReason.CONVERGED
        assert result.relative_residual < forcing
        earlier, _ = (
            solve(matrix, rhs, math.inf, max_iter=result.iterations - 1, tol=0.0)
            if result.iterations > 1
            else (None, None)
        )
        if earlier is not None:
            assert earlier.relative_residual >= forcing


def test_zero_and_nonfinite_inputs_are_reported_not_raised() -> None:
    matrix = torch.eye(3, dtype=DTYPE)
    zero, operator = solve(matrix, torch.zeros(3, dtype=DTYPE), 1.0)
    assert zero.reason is SolverReason.ZERO_RHS and operator.products == 0
    nan_operator = LinearOperator(lambda v: torch.full_like(v, math.nan), 3, positive_semidefinite=True)
    broken = SteihaugCG().solve_in_region(nan_operator, torch.ones(3, dtype=DTYPE), Ball(1.0))
    assert broken.reason is SolverReason.NONFINITE
    assert torch.isfinite(broken.direction).all()


def test_float32_follows_the_input_dtype() -> None:
    matrix = torch.diag(torch.tensor([1.0, 2.0, 3.0]))
    result = SteihaugCG().solve_in_region(matrix_operator(matrix), torch.ones(3), Ball(0.5))
    assert result.direction.dtype == torch.float32
    assert result.direction.norm().item() == pytest.approx(0.5, rel=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_iter": 0}, "max_iter"),
        ({"max_iter": 2.5}, "max_iter"),
        ({"tol": -1.0}, "tol"),
        ({"tol": math.nan}, "tol"),
    ],
)
def test_bad_arguments_name_themselves(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SteihaugCG(**kwargs)


@pytest.mark.parametrize(("radius", "metric"), [(-1.0, "euclidean"), (math.nan, "euclidean"), (1.0, "kl")])
def test_bad_regions_are_refused(radius: float, metric: str) -> None:
    with pytest.raises(ValueError, match=r"radius|metric"):
        Ball(radius, metric)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- Lanczos probe


@given(seeds, st.integers(1, 12), spectra)
def test_probe_with_n_iterations_finds_the_smallest_eigenvalue(seed: int, n: int, kind: str) -> None:
    matrix, _ = problem(kind, n, seed)
    pair = smallest_eigenpair(matrix_operator(matrix), torch.zeros(n, dtype=DTYPE), iterations=n)
    smallest = torch.linalg.eigvalsh(matrix)[0].item()
    assert pair.value == pytest.approx(smallest, abs=1e-8 * (1 + matrix.norm().item()))
    assert pair.vector.norm().item() == pytest.approx(1.0, rel=1e-12)
    assert (pair.vector @ matrix @ pair.vector).item() == pytest.approx(pair.value, abs=1e-8)
    assert pair.products <= n


@given(seeds, st.integers(2, 40), st.integers(1, 6))
def test_truncated_probe_is_an_upper_bound(seed: int, n: int, iterations: int) -> None:
    """Cauchy interlacing: every Ritz value lies above ``λ_min``, so ``θ < 0`` proves negative curvature."""
    matrix, _ = problem("indefinite", n, seed)
    pair = smallest_eigenpair(
        matrix_operator(matrix, positive_semidefinite=False), torch.zeros(n, dtype=DTYPE), iterations
    )
    assert pair.value >= torch.linalg.eigvalsh(matrix)[0].item() - 1e-10
    assert pair.products == min(iterations, n)


def test_probe_sees_negative_curvature_orthogonal_to_the_gradient() -> None:
    """The symmetric saddle: ``A = diag(2, -2)``, ``g ∝ e₁``; CG from ``g`` never meets ``e₂``, the probe does."""
    matrix = torch.diag(torch.tensor([2.0, -2.0], dtype=DTYPE))
    operator = matrix_operator(matrix, positive_semidefinite=False)
    cg = SteihaugCG().solve_in_region(operator, torch.tensor([1.0, 0.0], dtype=DTYPE), Ball(10.0))
    assert cg.reason is SolverReason.CONVERGED
    pair = smallest_eigenpair(operator, torch.zeros(2, dtype=DTYPE), iterations=2)
    assert pair.value == pytest.approx(-2.0)
    assert abs(pair.vector[1].item()) == pytest.approx(1.0)


def test_probe_stops_on_an_invariant_subspace() -> None:
    pair = smallest_eigenpair(matrix_operator(3.0 * torch.eye(50, dtype=DTYPE)), torch.zeros(50, dtype=DTYPE), 10)
    assert pair.exhausted and pair.products == 1 and pair.value == pytest.approx(3.0)
