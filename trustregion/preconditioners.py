"""Preconditioners for the CG solvers: ``r -> P⁻¹ r`` with ``P ≈ A``, built once per solve from the operator.

A preconditioner is a component like the curvature: :meth:`Preconditioner.build` reads what the
step's operator knows about itself (:meth:`~trustregion.LinearOperator.exact_diagonal`,
:meth:`~trustregion.LinearOperator.kronecker_factors`, its diagonal shift) and returns the map
``r -> P⁻¹ r`` the solver applies once per iteration. Pass one to
:class:`~trustregion.ConjugateGradient` or :class:`~trustregion.SteihaugCG`::

    solver = SteihaugCG(max_iter=50, preconditioner=Jacobi())

* :class:`Jacobi`: ``P = diag(A)`` — exact on the layer-wise Gauss-Newton path (per-input squares
  of the backpropagated Fisher square root, no products), otherwise a Hutchinson estimate.
* :class:`KFAC`: ``P = G ⊗ Ā + μI`` per linear layer (Martens & Grosse, 2015), inverted exactly in
  the factors' eigenbases, and ``diag(A) + μ`` for every other parameter (a log-std, say).
* :class:`Nystrom`: a randomized low-rank approximation of ``A`` from ``rank`` products (Frangella,
  Tropp & Udell, 2023); needs nothing from the operator but its products, so it serves any
  positive semi-definite curvature, a residual that differentiates the network included.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable

import torch
from torch import Tensor

from trustregion._validation import check_integer, check_nonnegative
from trustregion.operator import KroneckerFactors, KroneckerLayer, LinearOperator

Apply = Callable[[Tensor], Tensor]


class Preconditioner(abc.ABC):
    """Builds ``r -> P⁻¹ r`` for one solve; ``P`` must be symmetric positive definite."""

    @abc.abstractmethod
    def build(self, operator: LinearOperator, like: Tensor) -> Apply:
        """Return ``r -> P⁻¹ r`` for ``operator`` (``like`` gives the vectors' dtype and device)."""


class Jacobi(Preconditioner):
    """``P = diag(A)``, floored at ``floor · max diag(A)`` so that it stays positive definite.

    The diagonal is the operator's own when it knows it (:class:`~trustregion.GaussNewton` on the
    layer-wise path: exact, at the cost of one backward pass per output-Fisher column); else
    exact from ``n`` products up to ``probes`` parameters, else Hutchinson's estimate from
    ``probes`` products (see :meth:`~trustregion.LinearOperator.diagonal`).

    Args:
        probes: products spent on a diagonal the operator does not know.
        floor: relative lower bound of the diagonal (``> 0``).
    """

    def __init__(self, probes: int = 32, floor: float = 1e-12) -> None:
        self.probes = check_integer("probes", probes, 1, "e.g. 32")
        self.floor = check_nonnegative("floor", floor, "e.g. 1e-12")
        if self.floor == 0.0:
            raise ValueError("floor must be > 0 so that P is positive definite (e.g. 1e-12)")

    def build(self, operator: LinearOperator, like: Tensor) -> Apply:
        diagonal = operator.diagonal(like, probes=self.probes, exact_up_to=self.probes)
        largest = diagonal.abs().max().item()
        if not math.isfinite(largest):
            return lambda residual: torch.full_like(residual, math.nan)  # CG stops with NONFINITE
        inverse = 1.0 / diagonal.clamp(min=max(self.floor * largest, torch.finfo(like.dtype).tiny))
        return lambda residual: residual * inverse

    def __repr__(self) -> str:
        return f"Jacobi(probes={self.probes}, floor={self.floor:g})"


class KFAC(Preconditioner):
    r"""Kronecker-factored ``P`` (K-FAC; Martens & Grosse, 2015) for networks of linear layers.

    Each linear layer's block of ``A`` is approximated by ``G ⊗ Ā`` (its input rows' second moment
    ``Ā`` with a column of ones for the bias, and ``G`` the second moment of the output-Fisher
    columns backpropagated to the layer's output); with the operator's shift ``μ`` (TRPO's
    ``cg_damping``, the Levenberg-Marquardt damping) the block ``G ⊗ Ā + μI`` is inverted exactly
    through the eigendecompositions ``G = Q_G Λ_G Q_Gᵀ``, ``Ā = Q_A Λ_A Q_Aᵀ``:

    .. math:: P^{-1} \operatorname{vec}(V) = \operatorname{vec}\big(Q_G [(Q_G^\top V Q_A) \oslash
              (\lambda_G \lambda_A^\top + \mu)] Q_A^\top\big),

    two ``(out × out)`` and ``(in × in)`` eigendecompositions per layer and step. Every other
    parameter gets ``diag(A) + μ``. ``μ`` is at least ``floor`` times the largest ``λ_G λ_A``.
    Needs an operator that knows its factors: :meth:`GaussNewton.for_module
    <trustregion.GaussNewton.for_module>` on the layer-wise path with an output Fisher that has a
    :meth:`~trustregion.OutputFisher.square_root`.

    Args:
        floor: relative lower bound of the damping (``> 0``).
    """

    def __init__(self, floor: float = 1e-12) -> None:
        self.floor = check_nonnegative("floor", floor, "e.g. 1e-12")
        if self.floor == 0.0:
            raise ValueError("floor must be > 0 so that P is positive definite (e.g. 1e-12)")

    def build(self, operator: LinearOperator, like: Tensor) -> Apply:
        factors = operator.kronecker_factors()
        if factors is None:
            raise ValueError(
                "preconditioner=KFAC() needs a curvature that knows its Kronecker factors: GaussNewton.for_module on "
                "a network of nn.Linear layers and tanh/relu with an output Fisher that has square_root(); "
                "use Jacobi() for any other curvature"
            )
        if not factors.layers:
            raise ValueError("preconditioner=KFAC() found no linear layer in the model; use Jacobi() instead")
        return _KroneckerInverse(factors, operator.shift, self.floor, like)

    def __repr__(self) -> str:
        return f"KFAC(floor={self.floor:g})"


class _KroneckerInverse:
    """``r -> P⁻¹ r`` for the K-FAC ``P``: eigenbases per layer, a diagonal for the rest."""

    def __init__(self, factors: KroneckerFactors, shift: float | Tensor, floor: float, like: Tensor) -> None:
        shift_vector = _shift_vector(shift, like)
        diagonal = factors.diagonal.to(like) + shift_vector
        self.inverse_diagonal = 1.0 / diagonal.clamp(min=max(floor * diagonal.abs().max().item(), 1e-300))
        self.layers = [_eigen_layer(layer, shift_vector, floor, like) for layer in factors.layers]

    def __call__(self, residual: Tensor) -> Tensor:
        result = residual * self.inverse_diagonal
        for layer, (output_basis, input_basis, denominator) in self.layers:
            out_size, in_size = output_basis.shape[0], input_basis.shape[0]
            block = _gather(residual, layer, out_size, in_size)
            solved = output_basis @ ((output_basis.t() @ block @ input_basis) / denominator) @ input_basis.t()
            _scatter(result, solved, layer, in_size)
        return result


def _shift_vector(shift: float | Tensor, like: Tensor) -> Tensor:
    """The operator's damping ``μ`` (a number or a diagonal) as a vector like ``like``."""
    return torch.as_tensor(shift, dtype=like.dtype, device=like.device).expand(like.shape)


PreconditionerLike = Preconditioner | Apply
"""What a solver's ``preconditioner=`` takes: a :class:`Preconditioner`, or a fixed ``r -> P⁻¹ r``."""


def _eigen_layer(layer: KroneckerLayer, shift: Tensor, floor: float, like: Tensor):
    input_values, input_basis = torch.linalg.eigh(layer.input_factor.to(like))
    output_values, output_basis = torch.linalg.eigh(layer.output_factor.to(like))
    products = output_values.clamp(min=0).unsqueeze(1) * input_values.clamp(min=0).unsqueeze(0)
    entries = [shift[layer.weight]] + ([] if layer.bias is None else [shift[layer.bias]])
    damping = max(torch.cat(entries).mean().item(), floor * products.max().item(), 1e-300)
    return layer, (output_basis, input_basis, products + damping)


def _gather(vector: Tensor, layer: KroneckerLayer, out_size: int, in_size: int) -> Tensor:
    """The layer's ``[V_W, v_b]`` as an ``out × in`` matrix (``in`` counts the bias column)."""
    weight = vector[layer.weight].view(out_size, -1)
    if layer.bias is None:
        return weight
    return torch.cat([weight, vector[layer.bias].unsqueeze(1)], dim=1)


def _scatter(vector: Tensor, block: Tensor, layer: KroneckerLayer, in_size: int) -> None:
    if layer.bias is None:
        vector[layer.weight] = block.reshape(-1)
        return
    vector[layer.weight] = block[:, :-1].reshape(-1)
    vector[layer.bias] = block[:, -1]


class Nystrom(Preconditioner):
    """``P = U Λ Uᵀ + λ_ℓ (I - U Uᵀ) + μ`` from a rank-``ℓ`` randomized Nyström approximation ``U Λ Uᵀ ≈ A``.

    The sketch (Frangella, Tropp & Udell, "Randomized Nyström preconditioning", SIAM J. Matrix
    Anal. Appl. 2023, Algorithms 2.1 and 5.3): ``Y = A Ω`` for an orthonormal Gaussian ``Ω`` of
    ``ℓ = rank`` columns (``ℓ`` products, the damping taken off), shifted by ``ν = √n ε ‖Y‖`` for
    stability, then ``Â = Y (Ωᵀ Y)⁻¹ Yᵀ`` through a Cholesky factor and a thin SVD. ``P`` matches
    ``A + μ`` on the ``ℓ`` directions of largest curvature and is ``λ_ℓ + μ`` on the rest (``λ_ℓ``
    bounds what the sketch missed), so for a number ``μ`` the spectrum of ``P⁻¹(A + μ)`` lies in
    ``[μ / (λ_ℓ + μ), 1]`` up to the sketch's error. ``μ`` is the operator's damping
    (:attr:`~trustregion.LinearOperator.shift`), a number or a vector (Moré's scaled
    Levenberg-Marquardt); ``P⁻¹`` is applied exactly by the Woodbury identity (an ``ℓ × ℓ`` solve
    per build).

    An instance keeps its last sketch and its random draws, so give each optimizer its own. Neither
    is part of an optimizer's ``state_dict``: a resumed run sketches anew at its first step.

    Args:
        rank: ``ℓ``, the products one sketch costs (at most the number of parameters is used).
        every: sketch anew at every ``every``-th build and reuse the last sketch in between,
            with the current damping: products saved, ``P`` still positive definite.
        seed: seed of the sketches' Gaussian draws.
    """

    def __init__(self, rank: int = 64, every: int = 1, seed: int = 0) -> None:
        self.rank = check_integer("rank", rank, 1, "e.g. 64")
        self.every = check_integer("every", every, 1, "1 sketches at every build")
        self.seed = check_integer("seed", seed, 0, "e.g. 0")
        self._generator = torch.Generator().manual_seed(self.seed)
        self._builds = 0
        self._sketch: tuple[Tensor, Tensor] | None = None

    def build(self, operator: LinearOperator, like: Tensor) -> Apply:
        if not operator.positive_semidefinite:
            raise ValueError("preconditioner=Nystrom() needs a positive semi-definite curvature; use Jacobi() instead")
        shift = _shift_vector(operator.shift, like)
        sketch = self._sketch
        if sketch is None or sketch[0].shape[0] != operator.dim or sketch[0].dtype != like.dtype:
            self._builds = 0
        if self._builds % self.every == 0:
            self._sketch = sketch = _nystrom_sketch(operator, shift, self.rank, self._generator, like)
        self._builds += 1
        return _woodbury_inverse(*sketch, shift)

    def __repr__(self) -> str:
        return f"Nystrom(rank={self.rank}, every={self.every}, seed={self.seed})"


def _nystrom_sketch(
    operator: LinearOperator, shift: Tensor, rank: int, generator: torch.Generator, like: Tensor
) -> tuple[Tensor, Tensor]:
    """``(U, Λ)`` of the rank-``ℓ`` Nyström approximation of ``A = operator - diag(shift)``; ``Λ`` descending."""
    size = min(rank, operator.dim)
    draws = torch.randn(operator.dim, size, generator=generator, dtype=torch.float64).to(like)
    sketch_basis = torch.linalg.qr(draws).Q
    products = torch.stack([operator(column) for column in sketch_basis.t()], dim=1) - shift[:, None] * sketch_basis
    nu = math.sqrt(operator.dim) * torch.finfo(like.dtype).eps * torch.linalg.matrix_norm(products, 2).item()
    for _ in range(8):  # a curvature PSD only up to rounding may need a larger ν
        shifted = products + nu * sketch_basis
        factor, info = torch.linalg.cholesky_ex(sketch_basis.t() @ shifted)
        if info.item() == 0:
            break
        nu = max(10 * nu, torch.finfo(like.dtype).tiny)
    else:
        raise ValueError("preconditioner=Nystrom() found the curvature indefinite; use Jacobi() instead")
    factored = torch.linalg.solve_triangular(factor, shifted.t(), upper=False).t()
    basis, singular, _ = torch.linalg.svd(factored, full_matrices=False)
    return basis, (singular.square() - nu).clamp(min=0)


def _woodbury_inverse(basis: Tensor, values: Tensor, shift: Tensor) -> Apply:
    """``r -> P⁻¹ r`` for ``P = B + U C Uᵀ`` with ``B = diag(shift) + λ_ℓ`` and ``C = Λ - λ_ℓ ≥ 0``.

    ``P⁻¹ = B⁻¹ - B⁻¹ U C (I + Uᵀ B⁻¹ U C)⁻¹ Uᵀ B⁻¹``; ``B`` is floored at ``ε λ₁`` so that it stays invertible.
    """
    rest = values[-1]
    floor = max(values[0].item() * torch.finfo(values.dtype).eps, torch.finfo(values.dtype).tiny)
    inverse_base = 1.0 / (shift + rest).clamp(min=floor)
    excess = values - rest
    inner = torch.eye(len(values), dtype=values.dtype, device=values.device)
    inner = inner + (basis.t() @ (inverse_base[:, None] * basis)) * excess[None, :]
    factors = torch.linalg.lu_factor(inner)

    def apply(residual: Tensor) -> Tensor:
        scaled = inverse_base * residual
        solved = torch.linalg.lu_solve(*factors, (basis.t() @ scaled)[:, None])[:, 0]
        return scaled - inverse_base * (basis @ (excess * solved))

    return apply


def preconditioning(preconditioner: PreconditionerLike | None, operator: LinearOperator, like: Tensor) -> Apply | None:
    """The map ``r -> P⁻¹ r`` a solver applies: built from a :class:`Preconditioner`, a fixed callable, or ``None``."""
    if preconditioner is None:
        return None
    apply = preconditioner.build(operator, like) if isinstance(preconditioner, Preconditioner) else preconditioner
    checked: list[bool] = []

    def checked_apply(residual: Tensor) -> Tensor:
        result = apply(residual)
        if not checked:
            if not isinstance(result, Tensor) or result.shape != residual.shape:
                shape = tuple(result.shape) if isinstance(result, Tensor) else type(result).__name__
                raise ValueError(
                    f"preconditioner returned {shape} for a residual of shape {tuple(residual.shape)}: it must map "
                    "r -> P⁻¹ r on flat vectors of the parameters' total size"
                )
            checked.append(True)
        return result

    return checked_apply
