"""ConjugateGradient and DenseSolver against dense linear algebra (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from trustregion_helpers import (
    DTYPE,
    log_spaced_eigenvalues,
    matrix_operator,
    quadratic_model,
    random_vector,
    symmetric_matrix,
)

from trustregion import ConjugateGradient, DenseSolver, LinearOperator
from trustregion.result import SolverReason

seeds = st.integers(0, 2**31 - 1)
log_conditions = st.floats(0.0, 6.0)


def spd_system(n: int, condition_number: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    matrix = symmetric_matrix(log_spaced_eigenvalues(n, condition_number), generator)
    return matrix, random_vector(n, generator)


def krylov_minimiser(matrix: torch.Tensor, rhs: torch.Tensor, k: int) -> torch.Tensor:
    """``argmin q(s)`` over ``span{g, Ag, ..., A^{k-1} g}`` (orthonormal basis, reorthogonalised)."""
    basis = [rhs / rhs.norm()]
    for _ in range(k - 1):
        w = matrix @ basis[-1]
        for _ in range(2):
            for v in basis:
                w = w - (v @ w) * v
        basis.append(w / w.norm())
    v = torch.stack(basis, dim=1)
    return v @ torch.linalg.solve(v.T @ matrix @ v, v.T @ rhs)


class FaultyOperator(LinearOperator):
    """``v -> A v`` whose ``fault_at``-th product (1-based) is replaced by ``value`` in one entry."""

    def __init__(self, matrix: torch.Tensor, fault_at: int, value: float, entry: int) -> None:
        super().__init__(self._product, matrix.shape[0], positive_semidefinite=True)
        self.matrix, self.fault_at, self.value, self.entry = matrix, fault_at, value, entry

    def _product(self, vector: torch.Tensor) -> torch.Tensor:
        product = self.matrix @ vector
        if self.products == self.fault_at:
            product = product.clone()
            product[self.entry % product.numel()] = self.value
        return product


# ----------------------------------------------------------------------------- SPD systems


@given(n=st.integers(1, 50), log_condition=log_conditions, seed=seeds)
def test_cg_solves_spd_systems_like_torch_linalg_solve(n: int, log_condition: float, seed: int) -> None:
    condition_number = 10.0**log_condition
    matrix, rhs = spd_system(n, condition_number, seed)
    tol = 1e-10
    operator = matrix_operator(matrix)
    result = ConjugateGradient(max_iter=20 * n, tol=tol)(operator, rhs)

    assert result.reason is SolverReason.CONVERGED
    assert result.relative_residual <= tol
    true_residual = ((rhs - matrix @ result.direction).norm() / rhs.norm()).item()
    assert true_residual <= 1e-8
    reference = torch.linalg.solve(matrix, rhs)
    relative_error = ((result.direction - reference).norm() / reference.norm()).item()
    # ‖s - s*‖/‖s*‖ <= κ ‖r‖/‖g‖ in exact arithmetic; in practice far below that bound.
    assert relative_error <= min(condition_number * true_residual * 10 + 1e-12, 1e-7)
    assert result.direction.dtype == DTYPE


@given(n=st.integers(1, 50), log_condition=log_conditions, seed=seeds, max_iter=st.integers(1, 60))
def test_cg_reports_curvature_and_gradient_dot_without_extra_products(
    n: int, log_condition: float, seed: int, max_iter: int
) -> None:
    matrix, rhs = spd_system(n, 10.0**log_condition, seed)
    operator = matrix_operator(matrix)
    result = ConjugateGradient(max_iter=max_iter, tol=1e-10)(operator, rhs)

    s = result.direction
    dense_curvature = (s @ matrix @ s).item()
    assert result.curvature == pytest.approx(dense_curvature, rel=1e-8)
    assert result.gradient_dot == pytest.approx((rhs @ s).item(), rel=1e-12)
    assert result.iterations == operator.products <= max_iter
    assert result.reason in (SolverReason.CONVERGED, SolverReason.MAX_ITERATIONS)
    if result.reason is SolverReason.MAX_ITERATIONS:
        assert result.iterations == max_iter


@given(n=st.integers(2, 40), log_condition=st.floats(0.5, 3.0), seed=seeds)
def test_cg_iterates_minimise_the_model_over_krylov_subspaces(n: int, log_condition: float, seed: int) -> None:
    matrix, rhs = spd_system(n, 10.0**log_condition, seed)  # n distinct eigenvalues: no early convergence
    previous = 0.0
    for k in range(1, min(n, 6) + 1):
        result = ConjugateGradient(max_iter=k, tol=0.0)(matrix_operator(matrix), rhs)
        assert result.iterations == k
        expected = krylov_minimiser(matrix, rhs, k)
        assert torch.allclose(result.direction, expected, rtol=1e-7, atol=1e-9 * expected.norm().item())
        model = quadratic_model(matrix, rhs, result.direction)
        assert model <= previous + 1e-12 * abs(previous)
        previous = model


@given(
    n=st.integers(2, 50),
    multiplicity=st.floats(0.05, 0.95),
    log_ratio=st.floats(-4.0, 4.0).filter(lambda x: abs(x) > 0.01),
    seed=seeds,
)
def test_cg_converges_in_two_iterations_with_two_distinct_eigenvalues(
    n: int, multiplicity: float, log_ratio: float, seed: int
) -> None:
    low = max(1, min(n - 1, round(multiplicity * n)))
    eigenvalues = torch.cat([torch.ones(low, dtype=DTYPE), torch.full((n - low,), 10.0**log_ratio, dtype=DTYPE)])
    generator = torch.Generator().manual_seed(seed)
    matrix = symmetric_matrix(eigenvalues, generator)
    rhs = random_vector(n, generator)
    operator = matrix_operator(matrix)
    result = ConjugateGradient(max_iter=10 * n, tol=1e-10)(operator, rhs)

    assert result.reason is SolverReason.CONVERGED
    assert result.iterations == operator.products == 2
    assert torch.allclose(result.direction, torch.linalg.solve(matrix, rhs), rtol=1e-8, atol=1e-10)


@given(n=st.integers(1, 50), scale=st.floats(0.01, 100.0), seed=seeds)
def test_cg_converges_in_one_iteration_on_a_multiple_of_the_identity(n: int, scale: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    rhs = random_vector(n, generator)
    matrix = scale * torch.eye(n, dtype=DTYPE)
    result = ConjugateGradient(max_iter=10, tol=1e-12)(matrix_operator(matrix), rhs)
    assert result.reason is SolverReason.CONVERGED
    assert result.iterations == 1
    assert torch.allclose(result.direction, rhs / scale, rtol=1e-14, atol=0.0)


# ----------------------------------------------------------------------------- preconditioning


def badly_scaled_system(n: int, log_scale: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``A = D B D`` with ``B`` well conditioned and ``D`` spread over ``log_scale`` decades; also ``B``."""
    generator = torch.Generator().manual_seed(seed)
    inner = symmetric_matrix(log_spaced_eigenvalues(n, 10.0), generator)
    scales = 10.0 ** (log_scale * torch.rand(n, generator=generator, dtype=DTYPE))
    matrix = scales[:, None] * inner * scales[None, :]
    return 0.5 * (matrix + matrix.T), random_vector(n, generator), inner


@given(n=st.integers(8, 40), log_scale=st.floats(2.0, 3.0), seed=seeds)
def test_jacobi_preconditioner_gives_the_same_solution_in_fewer_iterations(n: int, log_scale: float, seed: int) -> None:
    """Jacobi undoes the scaling ``D``: never more iterations than plain CG on ``D B D``, and strictly fewer
    whenever the scaling has made plain CG struggle (more than ``2n`` iterations, a rounding effect)."""
    matrix, rhs, _ = badly_scaled_system(n, log_scale, seed)
    diagonal = torch.diagonal(matrix).clone()
    plain = ConjugateGradient(max_iter=40 * n, tol=1e-10)(matrix_operator(matrix), rhs)
    jacobi = ConjugateGradient(max_iter=40 * n, tol=1e-10, preconditioner=lambda r: r / diagonal)
    preconditioned = jacobi(matrix_operator(matrix), rhs)

    assert preconditioned.reason is SolverReason.CONVERGED
    assert preconditioned.relative_residual <= 1e-10
    reference = torch.linalg.solve(matrix, rhs)
    assert ((preconditioned.direction - reference).norm() / reference.norm()).item() <= 1e-6
    assert preconditioned.iterations <= plain.iterations
    if plain.iterations > 2 * n:  # rounding has made plain CG struggle: Jacobi must do strictly better
        assert preconditioned.iterations < plain.iterations
    s = preconditioned.direction
    assert preconditioned.curvature == pytest.approx((s @ matrix @ s).item(), rel=1e-8)


@given(n=st.integers(1, 50), log_condition=log_conditions, seed=seeds)
def test_exact_inverse_preconditioner_converges_in_one_iteration(n: int, log_condition: float, seed: int) -> None:
    matrix, rhs = spd_system(n, 10.0**log_condition, seed)
    inverse = torch.linalg.inv(matrix)
    solver = ConjugateGradient(max_iter=10, tol=1e-6, preconditioner=lambda r: inverse @ r)
    operator = matrix_operator(matrix)
    result = solver(operator, rhs)

    assert result.reason is SolverReason.CONVERGED
    assert result.iterations == operator.products == 1
    reference = torch.linalg.solve(matrix, rhs)
    assert ((result.direction - reference).norm() / reference.norm()).item() <= 1e-6


# ----------------------------------------------------------------------------- indefinite and capped


@given(
    n=st.integers(2, 30),
    negative=st.floats(0.1, 10.0),
    log_condition=st.floats(0.0, 3.0),
    seed=seeds,
)
def test_cg_stops_at_negative_curvature_with_a_decreasing_iterate(
    n: int, negative: float, log_condition: float, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    positive = 0.1 * log_spaced_eigenvalues(n - 1, 10.0**log_condition)
    eigenvalues = torch.cat([torch.tensor([-negative], dtype=DTYPE), positive])
    q = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=DTYPE))[0]
    matrix = (q * eigenvalues) @ q.T
    matrix = 0.5 * (matrix + matrix.T)
    coefficients = torch.randn(n, generator=generator, dtype=DTYPE)
    coefficients[0] = 1.0 + coefficients[0].abs()  # a real component on the negative eigenvector
    rhs = q @ coefficients
    operator = matrix_operator(matrix, positive_semidefinite=False)
    result = ConjugateGradient(max_iter=10 * n, tol=1e-12)(operator, rhs)

    assert result.reason is SolverReason.NEGATIVE_CURVATURE
    assert operator.products == result.iterations + 1
    s = result.direction
    assert torch.isfinite(s).all()
    assert quadratic_model(matrix, rhs, s) <= 0.0
    assert result.curvature == pytest.approx((s @ matrix @ s).item(), rel=1e-8, abs=1e-12)
    assert result.gradient_dot == pytest.approx((rhs @ s).item(), rel=1e-12, abs=1e-15)
    if result.iterations:
        assert result.curvature > 0.0 and result.gradient_dot > 0.0


def test_cg_on_a_negative_definite_matrix_stops_before_moving() -> None:
    matrix = -torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=DTYPE))
    rhs = torch.tensor([1.0, -1.0, 0.5], dtype=DTYPE)
    operator = matrix_operator(matrix, positive_semidefinite=False)
    result = ConjugateGradient()(operator, rhs)
    assert result.reason is SolverReason.NEGATIVE_CURVATURE
    assert (result.iterations, operator.products) == (0, 1)
    assert torch.equal(result.direction, torch.zeros_like(rhs))
    assert not result.usable


@given(n=st.integers(2, 50), max_iter=st.integers(1, 8), seed=seeds)
def test_cg_respects_max_iter(n: int, max_iter: int, seed: int) -> None:
    matrix, rhs = spd_system(n, 1e6, seed)
    operator = matrix_operator(matrix)
    result = ConjugateGradient(max_iter=max_iter, tol=0.0)(operator, rhs)
    assert operator.products <= max_iter
    assert operator.products == result.iterations
    if result.reason is SolverReason.MAX_ITERATIONS:
        assert result.iterations == max_iter
    else:  # only an exactly zero residual stops earlier with tol=0
        assert result.reason is SolverReason.CONVERGED and result.relative_residual == 0.0


# ----------------------------------------------------------------------------- non-finite and zero input


@given(
    n=st.integers(3, 30),
    fault_at=st.integers(1, 3),
    value=st.sampled_from([math.nan, math.inf, -math.inf]),
    entry=st.integers(0, 100),
    seed=seeds,
)
def test_cg_reports_nonfinite_products_and_keeps_the_last_iterate(
    n: int, fault_at: int, value: float, entry: int, seed: int
) -> None:
    matrix, rhs = spd_system(n, 100.0, seed)
    operator = FaultyOperator(matrix, fault_at, value, entry)
    result = ConjugateGradient(max_iter=10, tol=0.0)(operator, rhs)

    assert result.reason is SolverReason.NONFINITE
    assert operator.products == fault_at
    assert result.iterations == fault_at - 1
    assert torch.isfinite(result.direction).all()
    assert not result.usable
    if fault_at == 1:
        assert torch.equal(result.direction, torch.zeros_like(rhs))
    else:
        clean = ConjugateGradient(max_iter=fault_at - 1, tol=0.0)(matrix_operator(matrix), rhs)
        assert torch.equal(result.direction, clean.direction)


def test_cg_reports_a_nonfinite_preconditioner() -> None:
    matrix = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=DTYPE))
    rhs = torch.ones(3, dtype=DTYPE)
    solver = ConjugateGradient(max_iter=10, tol=0.0, preconditioner=lambda r: r * math.nan)
    operator = matrix_operator(matrix)
    result = solver(operator, rhs)
    assert result.reason is SolverReason.NONFINITE
    assert operator.products == 0 and result.iterations == 0  # detected before any product is spent


@pytest.mark.parametrize("n", [1, 7])
def test_cg_returns_zero_for_a_zero_rhs(n: int) -> None:
    operator = matrix_operator(torch.eye(n, dtype=DTYPE))
    result = ConjugateGradient()(operator, torch.zeros(n, dtype=DTYPE))
    assert result.reason is SolverReason.ZERO_RHS
    assert torch.equal(result.direction, torch.zeros(n, dtype=DTYPE))
    assert (result.iterations, operator.products) == (0, 0)
    assert (result.curvature, result.gradient_dot, result.relative_residual) == (0.0, 0.0, 0.0)
    assert not result.usable


def test_cg_follows_the_rhs_dtype_in_float32() -> None:
    matrix, rhs = spd_system(12, 100.0, 3)
    matrix, rhs = matrix.float(), rhs.float()
    result = ConjugateGradient(max_iter=100, tol=1e-5)(matrix_operator(matrix), rhs)
    assert result.direction.dtype == torch.float32
    assert result.reason is SolverReason.CONVERGED
    reference = torch.linalg.solve(matrix.double(), rhs.double())
    assert ((result.direction.double() - reference).norm() / reference.norm()).item() <= 1e-3


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("max_iter", [0, -1, 1.5, True, "10", None])
def test_cg_rejects_bad_max_iter(max_iter: object) -> None:
    with pytest.raises(ValueError, match="max_iter"):
        ConjugateGradient(max_iter=max_iter)  # type: ignore[arg-type]


@pytest.mark.parametrize("tol", [-1e-3, math.nan, math.inf, "1e-10"])
def test_cg_rejects_bad_tol(tol: object) -> None:
    with pytest.raises(ValueError, match="tol"):
        ConjugateGradient(tol=tol)  # type: ignore[arg-type]


def test_cg_rejects_a_non_callable_preconditioner() -> None:
    with pytest.raises(TypeError, match="preconditioner"):
        ConjugateGradient(preconditioner=torch.ones(3))  # type: ignore[arg-type]


def test_cg_defaults_are_the_trpo_ones() -> None:
    solver = ConjugateGradient()
    assert (solver.max_iter, solver.tol, solver.preconditioner) == (10, 1e-10, None)


# ----------------------------------------------------------------------------- dense solver


@settings(max_examples=15)
@given(n=st.integers(1, 40), log_condition=log_conditions, seed=seeds)
def test_dense_solver_agrees_with_torch_linalg_solve(n: int, log_condition: float, seed: int) -> None:
    matrix, rhs = spd_system(n, 10.0**log_condition, seed)
    operator = matrix_operator(matrix)
    result = DenseSolver()(operator, rhs)

    reference = torch.linalg.solve(matrix, rhs)
    assert ((result.direction - reference).norm() / reference.norm()).item() <= 1e-6
    assert result.reason is SolverReason.DIRECT
    assert operator.products == n
    s = result.direction
    assert result.curvature == pytest.approx((s @ matrix @ s).item(), rel=1e-10)
    assert result.gradient_dot == pytest.approx((rhs @ s).item(), rel=1e-10)
    assert result.usable


def test_dense_solver_returns_the_minimum_norm_solution_of_a_singular_system() -> None:
    matrix = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=DTYPE)  # null space (1, -1)
    rhs = torch.tensor([2.0, 2.0], dtype=DTYPE)
    result = DenseSolver()(matrix_operator(matrix), rhs)
    assert torch.allclose(result.direction, torch.tensor([1.0, 1.0], dtype=DTYPE), atol=1e-12)
    assert result.relative_residual <= 1e-12


def test_dense_solver_reports_negative_curvature() -> None:
    matrix = torch.diag(torch.tensor([1.0, -1.0], dtype=DTYPE))
    rhs = torch.tensor([1.0, 2.0], dtype=DTYPE)  # s = (1, -2), sᵀAs = -3
    result = DenseSolver()(matrix_operator(matrix, positive_semidefinite=False), rhs)
    assert result.reason is SolverReason.NEGATIVE_CURVATURE
    assert result.curvature == pytest.approx(-3.0)
    assert not result.usable


def test_dense_solver_reports_nonfinite_products() -> None:
    operator = FaultyOperator(torch.eye(4, dtype=DTYPE), fault_at=3, value=math.nan, entry=0)
    result = DenseSolver()(operator, torch.ones(4, dtype=DTYPE))
    assert result.reason is SolverReason.NONFINITE
    assert torch.isfinite(result.direction).all()
    assert not result.usable
