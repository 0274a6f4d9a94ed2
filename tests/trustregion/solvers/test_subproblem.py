"""pull_back and escape_saddle (trustregion/solvers/subproblem.py) against dense linear algebra (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from trustregion_helpers import DTYPE, matrix_operator, random_orthogonal, random_vector, symmetric_matrix

from trustregion.result import SolverReason, SolverResult
from trustregion.solvers import Ball
from trustregion.solvers.subproblem import escape_saddle, pull_back

seeds = st.integers(0, 2**31 - 1)
EPS = torch.finfo(DTYPE).eps
EXAMPLES = settings().max_examples  # follows the hypothesis profile (tests/conftest.py)


def spd_matrix(n: int, generator: torch.Generator) -> torch.Tensor:
    return symmetric_matrix(0.1 + 9.9 * torch.rand(n, generator=generator, dtype=DTYPE), generator)


def result_of(matrix: torch.Tensor, rhs: torch.Tensor, direction: torch.Tensor) -> SolverResult:
    """A :class:`SolverResult` for ``direction`` with its exact scalars ``sᵀAs`` and ``gᵀs``."""
    curvature = (direction @ matrix @ direction).item()
    return SolverResult(direction, SolverReason.CONVERGED, 3, 1e-12, curvature, (rhs @ direction).item())


def metric_norm(matrix: torch.Tensor, step: torch.Tensor, metric: str) -> float:
    return math.sqrt((step @ matrix @ step).item()) if metric == "operator" else step.norm().item()


# ----------------------------------------------------------------------------- pull_back


@settings(deadline=None, max_examples=2 * EXAMPLES)
@given(
    seed=seeds,
    n=st.integers(1, 8),
    metric=st.sampled_from(["euclidean", "operator"]),
    shrink=st.floats(0.01, 0.99),
)
def test_pull_back_scales_direction_curvature_and_gradient_dot_exactly(
    seed: int, n: int, metric: str, shrink: float
) -> None:
    generator = torch.Generator().manual_seed(seed)
    matrix, rhs = spd_matrix(n, generator), random_vector(n, generator)
    solve = result_of(matrix, rhs, torch.linalg.solve(matrix, rhs))
    norm = Ball(1.0, metric).norm(solve.direction, solve.curvature)
    region = Ball(shrink * norm, metric)

    scaled, step_norm = pull_back(solve, region)

    factor = region.radius / norm
    assert step_norm == region.radius
    # The documented algebra, exactly: s -> c s, sᵀAs -> c² sᵀAs, gᵀs -> c gᵀs (no product).
    assert torch.equal(scaled.direction, factor * solve.direction)
    assert scaled.curvature == factor * factor * solve.curvature
    assert scaled.gradient_dot == factor * solve.gradient_dot
    assert (scaled.reason, scaled.iterations, scaled.relative_residual) == (
        solve.reason,
        solve.iterations,
        solve.relative_residual,
    )
    # ... and the scalars are those of the scaled vector (dense reference).
    assert scaled.curvature == pytest.approx((scaled.direction @ matrix @ scaled.direction).item(), rel=1e-12)
    assert scaled.gradient_dot == pytest.approx((rhs @ scaled.direction).item(), rel=1e-12, abs=1e-14)
    assert metric_norm(matrix, scaled.direction, metric) == pytest.approx(region.radius, rel=1e-12)


@pytest.mark.parametrize("metric", ["euclidean", "operator"])
@pytest.mark.parametrize("slack", [1.0, 1.5, math.inf])
def test_pull_back_leaves_a_step_inside_the_region_untouched(metric: str, slack: float) -> None:
    generator = torch.Generator().manual_seed(3)
    matrix, rhs = spd_matrix(5, generator), random_vector(5, generator)
    solve = result_of(matrix, rhs, torch.linalg.solve(matrix, rhs))
    norm = Ball(1.0, metric).norm(solve.direction, solve.curvature)
    saved = solve.direction.clone()

    result, step_norm = pull_back(solve, Ball(slack * norm, metric))

    assert result is solve
    assert torch.equal(result.direction, saved)
    assert step_norm == norm


def test_pull_back_of_a_step_with_negative_curvature_uses_the_euclidean_length() -> None:
    matrix = torch.diag(torch.tensor([-2.0, 1.0], dtype=DTYPE))
    rhs = torch.tensor([1.0, 0.0], dtype=DTYPE)
    solve = result_of(matrix, rhs, torch.tensor([3.0, 4.0], dtype=DTYPE))  # ‖s‖ = 5, sᵀAs = -2
    scaled, step_norm = pull_back(solve, Ball(1.0))
    assert step_norm == 1.0
    assert torch.equal(scaled.direction, 0.2 * solve.direction)
    assert scaled.curvature == 0.2 * 0.2 * -2.0
    assert scaled.gradient_dot == 0.2 * 3.0


# ----------------------------------------------------------------------------- escape_saddle


def indefinite(n: int, seed: int, smallest: float = -1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(A, v, Q)``: ``A = Q diag(smallest, 1, 2, ..., n-1) Qᵀ`` and ``v`` its eigenvector of ``smallest``."""
    generator = torch.Generator().manual_seed(seed)
    eigenvalues = torch.cat([torch.tensor([smallest], dtype=DTYPE), torch.arange(1, n, dtype=DTYPE)])
    q = random_orthogonal(n, generator)
    matrix = (q * eigenvalues) @ q.T
    return 0.5 * (matrix + matrix.T), q[:, 0], q


@settings(deadline=None, max_examples=EXAMPLES)
@given(seed=seeds, n=st.integers(2, 7), along=st.floats(0.05, 2.0), radius=st.floats(0.1, 10.0))
def test_escape_saddle_steps_to_the_boundary_along_negative_curvature_downhill(
    seed: int, n: int, along: float, radius: float
) -> None:
    matrix, eigenvector, q = indefinite(n, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    # A gradient with a component of either sign along the negative-curvature eigenvector.
    other = q[:, 1:] @ random_vector(n - 1, generator)
    for sign in (1.0, -1.0):
        gradient = sign * along * eigenvector + 0.1 * other
        operator = matrix_operator(matrix, positive_semidefinite=False)
        solve, ritz = escape_saddle(operator, gradient, Ball(radius), 0.0, n + 2, seed=7)

        assert solve is not None
        assert solve.reason is SolverReason.NEGATIVE_CURVATURE
        assert ritz == pytest.approx(-1.0, abs=1e-10)  # n Lanczos products: the exact λ_min
        assert solve.direction.norm().item() == pytest.approx(radius, rel=1e-12)
        assert solve.gradient_dot == pytest.approx((gradient @ solve.direction).item(), rel=1e-12)
        assert solve.gradient_dot > 0.0  # the model decreases along the step: gᵀs >= 0 with gᵀv != 0
        dense_curvature = (solve.direction @ matrix @ solve.direction).item()
        assert solve.curvature == pytest.approx(dense_curvature, rel=1e-9)
        assert solve.curvature == pytest.approx(-(radius**2), rel=1e-9)
        assert abs(solve.direction @ eigenvector).item() == pytest.approx(radius, rel=1e-9)


def test_escape_saddle_signs_the_step_by_the_gradient_not_by_the_probe() -> None:
    """The probe does not see the gradient, so g and -g get opposite steps, both downhill."""
    matrix, eigenvector, _ = indefinite(5, seed=11)
    steps = []
    for sign in (1.0, -1.0):
        gradient = sign * eigenvector
        solve, _ = escape_saddle(matrix_operator(matrix, positive_semidefinite=False), gradient, Ball(2.0), 0.0, 8, 3)
        assert solve is not None
        assert solve.gradient_dot == pytest.approx(2.0, rel=1e-9)
        steps.append(solve.direction)
    torch.testing.assert_close(steps[0], -steps[1], rtol=0, atol=0)


def test_escape_saddle_reports_the_damped_curvature_without_a_product() -> None:
    matrix, eigenvector, _ = indefinite(4, seed=2)
    operator = matrix_operator(matrix, positive_semidefinite=False)
    solve, ritz = escape_saddle(operator, eigenvector, Ball(3.0), 0.25, 10, seed=0)
    assert solve is not None
    assert operator.products == solve.iterations == 4  # the probe's products only (n = 4 exhausts the space)
    damped = (solve.direction @ (matrix + 0.25 * torch.eye(4, dtype=DTYPE)) @ solve.direction).item()
    assert solve.curvature == pytest.approx(damped, rel=1e-9)
    assert solve.curvature == pytest.approx(9.0 * (ritz + 0.25), rel=1e-12)


@pytest.mark.parametrize(("multiple", "escapes"), [(0.5, False), (0.9, False), (1.2, True), (2.0, True)])
def test_ritz_value_counts_as_negative_below_minus_sqrt_eps_times_the_scale(multiple: float, escapes: bool) -> None:
    """λ_min = -multiple · sqrt(ε) · λ_max: rounding-level negative curvature is no saddle, beyond it is one."""
    n, largest = 6, 4.0
    threshold = math.sqrt(EPS) * largest
    generator = torch.Generator().manual_seed(5)
    eigenvalues = torch.tensor([-multiple * threshold, 0.5, 1.0, 2.0, 3.0, largest], dtype=DTYPE)
    matrix = symmetric_matrix(eigenvalues, generator)
    gradient = random_vector(n, generator)
    operator = matrix_operator(matrix, positive_semidefinite=False)

    solve, ritz = escape_saddle(operator, gradient, Ball(1.0), 0.0, 10, seed=1)

    assert ritz == pytest.approx(-multiple * threshold, rel=1e-4)  # Lanczos found the eigenvalue ...
    assert ritz < 0.0
    assert (solve is not None) is escapes  # ... and only the clearly negative one counts
    if escapes:
        assert solve.gradient_dot >= 0.0
        assert solve.direction.norm().item() == pytest.approx(1.0, rel=1e-12)


def test_ritz_threshold_is_relative_to_the_scale_of_the_operator() -> None:
    """The same spectrum scaled by 1e6: the verdict does not change with the units of the loss."""
    generator = torch.Generator().manual_seed(9)
    base = torch.tensor([-0.5 * math.sqrt(EPS) * 4.0, 0.5, 1.0, 4.0], dtype=DTYPE)
    q = random_orthogonal(4, generator)
    gradient = random_vector(4, generator)
    verdicts = []
    for scale in (1e-6, 1.0, 1e6):
        matrix = (q * (scale * base)) @ q.T
        operator = matrix_operator(0.5 * (matrix + matrix.T), positive_semidefinite=False)
        solve, _ = escape_saddle(operator, gradient, Ball(1.0), 0.0, 6, seed=0)
        verdicts.append(solve is None)
    assert verdicts == [True, True, True]


@pytest.mark.parametrize("matrix_kind", ["definite", "indefinite"])
def test_a_positive_semidefinite_operator_is_not_probed(matrix_kind: str) -> None:
    """The flag is the contract: a PSD operator returns (None, nan) without spending a product."""
    matrix = indefinite(4, 0)[0] if matrix_kind == "indefinite" else torch.eye(4, dtype=DTYPE)
    operator = matrix_operator(matrix, positive_semidefinite=True)
    solve, ritz = escape_saddle(operator, torch.ones(4, dtype=DTYPE), Ball(1.0), 0.0, 10, seed=0)
    assert solve is None
    assert math.isnan(ritz)
    assert operator.products == 0


def test_a_positive_definite_but_unflagged_operator_is_probed_and_found_stationary() -> None:
    generator = torch.Generator().manual_seed(4)
    matrix = spd_matrix(5, generator)
    operator = matrix_operator(matrix, positive_semidefinite=False)
    solve, ritz = escape_saddle(operator, torch.zeros(5, dtype=DTYPE), Ball(1.0), 0.0, 10, seed=0)
    assert solve is None
    assert ritz == pytest.approx(torch.linalg.eigvalsh(matrix)[0].item(), rel=1e-9)


def test_a_nonfinite_probe_is_reported_not_raised() -> None:
    operator = matrix_operator(torch.full((3, 3), math.nan, dtype=DTYPE), positive_semidefinite=False)
    solve, ritz = escape_saddle(operator, torch.ones(3, dtype=DTYPE), Ball(1.0), 0.0, 5, seed=0)
    assert solve is not None
    assert solve.reason is SolverReason.NONFINITE
    assert not solve.usable
    assert math.isnan(ritz)
    assert torch.equal(solve.direction, torch.zeros(3, dtype=DTYPE))
