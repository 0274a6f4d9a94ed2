"""Gauss-Newton matrices of least-squares losses ``½ c ‖r(θ)‖²`` from a residual function."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_leaves, tree_unflatten

from trustregion._vectors import flatten, split_like
from trustregion.curvature.base import Curvature, StepProblem
from trustregion.curvature.gauss_newton import GaussNewton
from trustregion.operator import LinearOperator
from trustregion.outputs import SquaredError

JACOBIAN_UP_TO = 512
"""The operator forms its diagonal from ``J`` on its own when ``J`` costs at most this many passes."""

Residuals = Callable[..., Tensor]


class ResidualGaussNewton(Curvature):
    r"""``A = c JᵀJ`` for the loss ``L(θ) = ½ c ‖r(θ)‖²``, with ``J = ∂r/∂θ``.

    The Gauss-Newton matrix drops the ``Σ r_i ∇²r_i`` term of the Hessian
    ``∇²L = c (JᵀJ + Σ r_i ∇²r_i)``: it is positive semidefinite by
    construction and exact when the residuals vanish or are linear. Products
    reuse the cached linearisation of :class:`~trustregion.GaussNewton`
    (``J v`` and ``Jᵀu`` without re-running ``r``). Pair it with
    :class:`~trustregion.LevenbergMarquardt` (adaptive damping ``A + μI``) or
    :class:`~trustregion.TrustRadius` (a trust-region Gauss-Newton method) in a
    :class:`~trustregion.TrustRegionMinimizer`, or let
    :func:`~trustregion.least_squares` do both and the loop::

        fit = ResidualGaussNewton(lambda a, b: a * torch.exp(-b * t) - y)
        opt = TrustRegionMinimizer([a, b], curvature=fit, control=LevenbergMarquardt())
        result = trustregion.run(opt, fit.closure([a, b]))   # L = ½ ‖r‖², matching A

    Args:
        residuals: ``residuals(*params) -> r``, a pure function of the optimized
            tensors (in the optimizer's order) returning a tensor of any shape
            (or a tuple of tensors, concatenated in the loss). It may also ignore
            its arguments and read the parameters directly, as a closure over an
            ``nn.Module`` does; a function of neither raises a one-line error.
        scale: ``c > 0``; ``1/N`` makes ``L`` the half mean squared residual.
    """

    def __init__(self, residuals: Residuals, scale: float = 1.0) -> None:
        self._gauss_newton = GaussNewton(residuals, SquaredError(scale))
        self.residuals = residuals
        self.scale = float(scale)
        self._last = _LastJacobian()

    def build(self, problem: StepProblem) -> LinearOperator:
        """``c JᵀJ`` at ``problem.params``, reusing the last build's Jacobian at bit for bit the same parameters.

        A refused step leaves the parameters where they were, so the next step's operator takes
        the Jacobian already formed (for :meth:`~JacobianGaussNewton.dense` and the diagonal)
        instead of forming it again; the residual function is pure, so equal parameters give
        equal residuals. The linearisation behind the products is built anew (cheap: one
        forward and one backward), since the trial point moved the parameters in place.
        """
        params = list(problem.params)
        linearisation = self._gauss_newton.linearise(params)
        jacobian = _Jacobian(linearisation, params)
        last = self._last
        if last.jacobian is not None and _same_values(last.params, params):
            jacobian.matrix = last.jacobian.matrix
        last.params, last.jacobian = [p.detach().clone() for p in params], jacobian
        product = self._gauss_newton.operator(linearisation, params)
        return JacobianGaussNewton(product, jacobian, self.scale)

    def loss(self, *params: Tensor) -> Tensor:
        """``L = ½ c ‖r(params)‖²``, the loss whose Gauss-Newton matrix this is."""
        return 0.5 * self.scale * sum(r.square().sum() for r in tree_leaves(self.residuals(*params)))

    def closure(self, params: Sequence[Tensor]) -> Callable[[], Tensor]:
        """A loss-only closure evaluating :meth:`loss` at the current ``params``."""
        params = list(params)
        return lambda: self.loss(*params)

    def __repr__(self) -> str:
        return f"ResidualGaussNewton(scale={self.scale})"


class _LastJacobian:
    """The parameters of the last build and its Jacobian; a copy or a pickle starts empty (graphs do not copy)."""

    __slots__ = ("jacobian", "params")

    def __init__(self) -> None:
        self.params: list[Tensor] = []
        self.jacobian: _Jacobian | None = None

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return _LastJacobian, ()


class _Jacobian:
    """``J = ∂r/∂θ`` (``m × n``) of a linearisation, formed on first use by ``min(m, n)`` passes.

    ``n`` passes ``J e_j`` (columns) when there are fewer parameters than residuals, else ``m``
    passes ``Jᵀ e_i`` (rows); :attr:`passes` says how many the formation costs.
    """

    def __init__(self, linearisation: Any, params: list[Tensor]) -> None:
        self._linearisation, self._params = linearisation, params
        self._outputs, self._structure = tree_flatten(linearisation.outputs)
        self.rows = sum(z.numel() for z in self._outputs)
        self.columns = sum(p.numel() for p in params)
        self.passes = min(self.rows, self.columns)
        self.matrix: Tensor | None = None

    def __call__(self, counter: LinearOperator) -> Tensor:
        """``J``, formed now (its passes counted as ``counter``'s products) unless formed before."""
        if self.matrix is None:
            with torch.enable_grad():
                self.matrix = self._by_columns() if self.columns <= self.rows else self._by_rows()
            counter.products += self.passes
            self._linearisation = None  # formed: the graphs are the products' alone now
        return self.matrix

    def _by_columns(self) -> Tensor:
        like = self._params[0]
        eye = torch.eye(self.columns, dtype=like.dtype, device=like.device)
        columns = [self._linearisation.jacobian_product(split_like(e, self._params)) for e in eye]
        return torch.stack([flatten(tree_leaves(column)) for column in columns], dim=1)

    def _by_rows(self) -> Tensor:
        like = self._outputs[0]
        eye = torch.eye(self.rows, dtype=like.dtype, device=like.device)
        sizes = [z.numel() for z in self._outputs]
        rows = []
        for e in eye:
            parts = [part.view_as(z) for part, z in zip(torch.split(e, sizes), self._outputs, strict=True)]
            rows.append(self._linearisation.transpose_product(tree_unflatten(parts, self._structure)))
        return torch.stack(rows)


class JacobianGaussNewton(LinearOperator):
    """``A = c JᵀJ`` whose products run through the linearisation and whose matrix comes from ``J``.

    :meth:`dense` forms ``J`` once (``min(m, n)`` passes, counted as products) and ``c JᵀJ`` in one
    matrix product, instead of ``n`` products; :meth:`exact_diagonal` is ``c Σᵢ J²ᵢⱼ``, given
    whenever ``J`` is formed or costs at most :data:`JACOBIAN_UP_TO` passes. Both follow the
    operator through :meth:`map` (a linear ``transform``), :meth:`shifted` (``+ diag(μ)``) and
    :meth:`in_dtype`, as its products do.
    """

    def __init__(self, product: LinearOperator, jacobian: _Jacobian, scale: float) -> None:
        super().__init__(product._matvec, product.dim, positive_semidefinite=True)
        self._jacobian, self._scale = jacobian, scale
        self._transform: Callable[[Tensor], Tensor] = _identity
        self._counter: LinearOperator = self

    def exact_diagonal(self) -> Tensor | None:
        if self._jacobian.matrix is None and self._jacobian.passes > JACOBIAN_UP_TO:
            return None
        diagonal = self._transform(self._scale * self._jacobian(self._counter).square().sum(0))
        return diagonal + self.shift

    def dense(self, dtype: torch.dtype, device: torch.device | str | None = None) -> Tensor:
        jacobian = self._jacobian(self._counter)
        matrix = self._transform(self._scale * (jacobian.T @ jacobian))
        shift = self.shift if isinstance(self.shift, Tensor) else torch.full_like(matrix[0], self.shift)
        return (matrix + torch.diag(shift.to(matrix))).to(dtype=dtype, device=device)

    def map(self, transform: Callable[[Tensor], Tensor]) -> LinearOperator:
        composed = self._transform
        return self._carried(super().map(transform), lambda matrix: transform(composed(matrix)), None)

    def shifted(self, shift: float | Tensor) -> LinearOperator:
        return self._carried(super().shifted(shift), self._transform, self._counter)

    def in_dtype(self, matvec: Callable[[Tensor], Tensor]) -> LinearOperator:
        return self._carried(super().in_dtype(matvec), self._transform, None)

    def _carried(
        self, operator: LinearOperator, transform: Callable[[Tensor], Tensor], counter: LinearOperator | None
    ) -> LinearOperator:
        """``operator`` (the base class's result) with this operator's Jacobian, ``transform`` and counter."""
        if operator is self:
            return self
        carried = object.__new__(JacobianGaussNewton)
        carried.__dict__.update(operator.__dict__)
        carried._jacobian, carried._scale, carried._transform = self._jacobian, self._scale, transform
        carried._counter = carried if counter is None else counter
        return carried


def _identity(matrix: Tensor) -> Tensor:
    return matrix


def _same_values(saved: list[Tensor], params: list[Tensor]) -> bool:
    return len(saved) == len(params) and all(
        a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b.detach())
        for a, b in zip(saved, params, strict=True)
    )
