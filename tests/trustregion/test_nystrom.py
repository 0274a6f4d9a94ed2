"""The randomized Nyström preconditioner against dense float64 references.

``P = U (Λ + μ) Uᵀ + (λ_ℓ + μ)(I - U Uᵀ)`` equals ``A + μI`` when the sketch captures the range of
``A`` with a column to spare (``ℓ > rank(A)``, so ``λ_ℓ = 0``), so ``P⁻¹ r`` is then the dense solve;
with fewer columns it must still be positive definite and cut the iterations of CG on a decaying
spectrum.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from trustregion_helpers import DTYPE, matrix_operator, random_vector, symmetric_matrix

from trustregion import ConjugateGradient, LinearOperator, Nystrom

seeds = st.integers(0, 2**31 - 1)


def low_rank_psd(n: int, rank: int, generator: torch.Generator) -> torch.Tensor:
    """A PSD matrix of rank ``rank`` with eigenvalues spread over six decades."""
    eigenvalues = torch.zeros(n, dtype=DTYPE)
    eigenvalues[:rank] = torch.logspace(3, -3, rank, dtype=DTYPE)
    return symmetric_matrix(eigenvalues, generator)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, n=st.integers(2, 14), data=st.data())
def test_a_sketch_that_spans_the_range_inverts_the_damped_matrix(seed: int, n: int, data) -> None:
    generator = torch.Generator().manual_seed(seed)
    rank = data.draw(st.integers(1, n), label="rank of A")
    # one column more than rank(A), so that λ_ℓ = 0 and the rest of P is μ (or every column: no rest)
    sketch = data.draw(st.integers(min(rank + 1, n), n + 3), label="sketch columns")
    damping = data.draw(st.sampled_from([1e-3, 0.1, 10.0]), label="damping")
    matrix = low_rank_psd(n, rank, generator)
    operator = matrix_operator(matrix).shifted(damping)
    apply = Nystrom(rank=sketch, seed=seed % 1000).build(operator, torch.zeros(n, dtype=DTYPE))
    residual = random_vector(n, generator)
    expected = torch.linalg.solve(matrix + damping * torch.eye(n, dtype=DTYPE), residual)
    torch.testing.assert_close(apply(residual), expected, rtol=1e-7, atol=1e-9 * expected.abs().max().item())


def test_a_vector_damping_is_sketched_with_the_matrix() -> None:
    generator = torch.Generator().manual_seed(3)
    matrix = low_rank_psd(9, 4, generator)
    damping = torch.linspace(0.1, 2.0, 9, dtype=DTYPE)
    operator = matrix_operator(matrix).shifted(damping)
    apply = Nystrom(rank=9).build(operator, torch.zeros(9, dtype=DTYPE))
    residual = random_vector(9, generator)
    expected = torch.linalg.solve(matrix + torch.diag(damping), residual)
    torch.testing.assert_close(apply(residual), expected, rtol=1e-7, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(seed=seeds, sketch=st.integers(1, 20))
def test_a_partial_sketch_is_positive_definite_within_the_nystrom_bounds(seed: int, sketch: int) -> None:
    """``Â ≼ A`` for every sketch, so ``A + μ ≽ μ / (λ̂_ℓ + μ) · P`` and ``A + μ ≼ P + ‖A - Â‖``: the spectrum
    of ``P⁻¹(A + μ)`` lies in ``[μ / (λ₁ + μ), 1 + λ₁ / μ]`` and its condition number is at most
    ``(2 λ₁ + μ) / μ`` (Frangella, Tropp & Udell, Proposition 5.3, with ``λ̂_ℓ, ‖A - Â‖ ≤ λ₁``)."""
    generator = torch.Generator().manual_seed(seed)
    n, damping, largest = 20, 1e-2, 1e2
    matrix = symmetric_matrix(torch.logspace(2, -4, n, dtype=DTYPE), generator)
    apply = Nystrom(rank=sketch, seed=seed % 1000).build(
        matrix_operator(matrix).shifted(damping), torch.zeros(n, dtype=DTYPE)
    )
    inverse = torch.stack([apply(column) for column in torch.eye(n, dtype=DTYPE)], dim=1)
    torch.testing.assert_close(inverse, inverse.T, rtol=1e-10, atol=1e-12 * inverse.abs().max().item())
    root = torch.linalg.cholesky(0.5 * (inverse + inverse.T))  # fails unless P is positive definite
    spectrum = torch.linalg.eigvalsh(root.T @ (matrix + damping * torch.eye(n, dtype=DTYPE)) @ root)
    assert spectrum.min() >= damping / (largest + damping) * (1 - 1e-8)
    assert spectrum.max() / spectrum.min() <= (2 * largest + damping) / damping * (1 + 1e-8)


def test_preconditioning_cuts_the_iterations_on_a_decaying_spectrum() -> None:
    """Ten decades of curvature, damping 1e-4: plain CG is far from converged after 200 iterations."""
    generator = torch.Generator().manual_seed(0)
    n = 60
    matrix = symmetric_matrix(torch.logspace(4, -6, n, dtype=DTYPE), generator)
    rhs = random_vector(n, generator)
    plain = ConjugateGradient(max_iter=200, tol=1e-10)(matrix_operator(matrix).shifted(1e-4), rhs)
    solver = ConjugateGradient(max_iter=200, tol=1e-10, preconditioner=Nystrom(rank=30))
    preconditioned = solver(matrix_operator(matrix).shifted(1e-4), rhs)
    assert plain.relative_residual > 1e-3
    assert preconditioned.relative_residual <= 1e-10 and preconditioned.iterations < 200


@pytest.mark.parametrize("vector", [False, True], ids=["number", "vector"])
def test_a_sketch_is_reused_for_every_builds_with_the_current_damping(vector: bool) -> None:
    generator = torch.Generator().manual_seed(5)
    matrix = low_rank_psd(8, 3, generator)
    base = matrix_operator(matrix)
    preconditioner = Nystrom(rank=4, every=3)
    like, residual = torch.zeros(8, dtype=DTYPE), random_vector(8, generator)
    scales = torch.linspace(0.5, 2.0, 8, dtype=DTYPE) if vector else torch.ones(8, dtype=DTYPE)
    for level in (0.5, 0.25, 0.125):
        damping = level * scales if vector else level
        apply = preconditioner.build(base.shifted(damping), like)
        expected = torch.linalg.solve(matrix + torch.diag(level * scales), residual)
        torch.testing.assert_close(apply(residual), expected, rtol=1e-7, atol=1e-10)
    assert base.products == 4  # one sketch for three builds
    preconditioner.build(base.shifted(1.0), like)
    assert base.products == 8


def test_bad_settings_and_an_indefinite_curvature_are_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match="rank"):
        Nystrom(rank=0)
    with pytest.raises(ValueError, match="every"):
        Nystrom(every=0)
    indefinite = LinearOperator(lambda v: -v, 3, positive_semidefinite=False)
    with pytest.raises(ValueError, match=r"positive semi-definite curvature; use Jacobi\(\)"):
        Nystrom().build(indefinite, torch.zeros(3, dtype=DTYPE))
    claimed = LinearOperator(lambda v: -v, 3, positive_semidefinite=True)
    with pytest.raises(ValueError, match="found the curvature indefinite"):
        Nystrom().build(claimed, torch.zeros(3, dtype=DTYPE))
