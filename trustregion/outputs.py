"""Output-space Fisher matrices ``M`` of common distributions, for Gauss-Newton.

A model maps parameters ``θ`` to distribution parameters ``z = f(θ)`` (logits,
a mean and a log-std, ...). The Fisher of the mean KL over a batch of ``N``
inputs factors as ``F = (1/N) Σ_i J_iᵀ M(z_i) J_i`` with ``J_i = ∂z_i/∂θ`` and
``M(z)`` the Fisher of the distribution in its own parameters (docs/math.md,
"Gauss-Newton form of the Fisher"). Each class here gives ``u -> (1/N) M(z) u``
in closed form; nothing here knows about RL. :class:`SquaredError` is the output curvature of a
least-squares loss (the Fisher of a unit-variance Gaussian).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.utils._pytree import tree_map

from trustregion._validation import check_positive

OutputProduct = Callable[[object], object]


class OutputFisher(abc.ABC):
    """The Fisher ``M(z)`` of a distribution in its parameters ``z``, batch-averaged."""

    @abc.abstractmethod
    def bind(self, outputs: object) -> OutputProduct:
        """Return ``u -> (1/N) M(z) u`` for the (detached) model outputs ``z``.

        ``u`` and the result have the structure and shapes of ``outputs``; the
        first dimension is the batch of ``N`` inputs.
        """

    def square_root(self, outputs: object) -> object:
        """Columns ``C_1 … C_K`` with ``(1/N) M(z) = Σ_k C_k C_kᵀ``, one factor per input.

        Returned in the structure of ``outputs`` with a leading dimension ``K`` on every tensor:
        backpropagating them gives the exact diagonal of ``Jᵀ M J`` and its Kronecker factors
        (:class:`~trustregion.Jacobi`, :class:`~trustregion.KFAC`). A Fisher without a square root
        raises ``NotImplementedError``, and those preconditioners fall back or say so.
        """
        raise NotImplementedError(f"{type(self).__name__} has no square_root(outputs)")


class CategoricalFisher(OutputFisher):
    """Softmax over logits ``z``: ``M = diag(p) - p pᵀ`` with ``p = softmax(z)``.

    Singular along ``(1, ..., 1)`` (adding a constant to every logit changes
    nothing), so pair it with damping or a minimum-norm solve.

    Args:
        mask: for a masked categorical (e.g. action masking), a bool tensor of the
            logits' shape ``(N, K)``, ``True`` where a category is allowed; every row
            needs one. ``p`` is then the softmax over the allowed logits, exactly 0
            elsewhere, and ``M`` (in the raw logits) is zero in the forbidden rows and
            columns, so ``Jᵀ M J`` is the Hessian of the mean KL of the masked
            distributions. ``None`` (the default): every category is allowed.
    """

    def __init__(self, mask: Tensor | None = None) -> None:
        self.mask = _checked_mask(mask, None)

    def bind(self, outputs: object) -> OutputProduct:
        logits = _single_tensor(outputs, "CategoricalFisher")
        return _categorical_product(logits, _mask_like(self.mask, logits))

    def square_root(self, outputs: object) -> Tensor:
        logits = _single_tensor(outputs, "CategoricalFisher")
        return _categorical_columns(logits, _mask_like(self.mask, logits))

    def __repr__(self) -> str:
        return f"CategoricalFisher({_mask_repr(self.mask)})"


class MultiCategoricalFisher(OutputFisher):
    """Independent softmaxes over consecutive slices of the logits (MultiDiscrete).

    Args:
        sizes: the number of categories of each factor, e.g. ``[3, 2, 4]``.
        mask: for masked factors, a bool tensor of the logits' shape ``(N, sum(sizes))``,
            ``True`` where a category is allowed; every factor's slice of every row
            needs one. Each factor is then a masked categorical (:class:`CategoricalFisher`).
    """

    def __init__(self, sizes: Sequence[int], mask: Tensor | None = None) -> None:
        sizes = [int(n) for n in sizes]
        if not sizes or min(sizes) < 1:
            raise ValueError(f"sizes must be a non-empty list of positive category counts (got {sizes!r})")
        self.sizes = sizes
        self.mask = _checked_mask(mask, sizes)

    def bind(self, outputs: object) -> OutputProduct:
        logits = self._logits(outputs)
        masks = self._factor_masks(logits)
        chunks = torch.split(logits, self.sizes, dim=-1)
        factors = [_categorical_product(chunk, mask) for chunk, mask in zip(chunks, masks, strict=True)]

        def product(tangent: Tensor) -> Tensor:
            chunks = torch.split(tangent, self.sizes, dim=-1)
            return torch.cat([f(chunk) for f, chunk in zip(factors, chunks, strict=True)], dim=-1)

        return product

    def square_root(self, outputs: object) -> Tensor:
        logits = self._logits(outputs)
        masks = self._factor_masks(logits)
        columns = logits.new_zeros((logits.shape[-1], *logits.shape))
        start = 0
        for size, chunk, mask in zip(self.sizes, torch.split(logits, self.sizes, dim=-1), masks, strict=True):
            block = slice(start, start + size)
            columns[block, ..., block] = _categorical_columns(chunk, mask)
            start += size
        return columns

    def _logits(self, outputs: object) -> Tensor:
        logits = _single_tensor(outputs, "MultiCategoricalFisher")
        if logits.shape[-1] != sum(self.sizes):
            raise ValueError(f"logits have {logits.shape[-1]} columns but sizes {self.sizes} sum to {sum(self.sizes)}")
        return logits

    def _factor_masks(self, logits: Tensor) -> Sequence[Tensor | None]:
        mask = _mask_like(self.mask, logits)
        return [None] * len(self.sizes) if mask is None else torch.split(mask, self.sizes, dim=-1)

    def __repr__(self) -> str:
        mask = "" if self.mask is None else f", {_mask_repr(self.mask)}"
        return f"MultiCategoricalFisher({self.sizes}{mask})"


class BernoulliFisher(OutputFisher):
    """Independent Bernoulli variables with logits ``z``: ``M = diag(p (1 - p))``."""

    def bind(self, outputs: object) -> OutputProduct:
        logits = _single_tensor(outputs, "BernoulliFisher")
        probs = torch.sigmoid(logits.detach())
        weight = probs * (1 - probs) / logits.shape[0]
        return lambda tangent: weight * tangent

    def square_root(self, outputs: object) -> Tensor:
        logits = _single_tensor(outputs, "BernoulliFisher").detach()
        probs = torch.sigmoid(logits)
        return _diagonal_columns((probs * (1 - probs) / logits.shape[0]).sqrt())


class DiagonalGaussianFisher(OutputFisher):
    """Diagonal Gaussian in ``(μ, log σ)``: ``M = diag(1/σ², 2)``, no cross terms.

    ``outputs`` is the pair ``(mean, log_std)``. ``log_std`` may have the batch
    dimension (state-dependent), a leading dimension of 1, or none (a
    state-independent parameter vector, as in TRPO's Gaussian policies); a shared
    row stands for every input and its block is ``2`` for the batch mean.
    """

    def bind(self, outputs: object) -> OutputProduct:
        if not (isinstance(outputs, (tuple, list)) and len(outputs) == 2):
            raise TypeError("DiagonalGaussianFisher needs outputs (mean, log_std)")
        mean, log_std = (t.detach() for t in outputs)
        batch = mean.shape[0]
        mean_weight = torch.exp(-2 * log_std).expand_as(mean) / batch
        # Each row of log_std stands for batch / rows inputs of the batch mean, so its block is 2 / rows.
        rows = log_std.shape[0] if log_std.dim() == mean.dim() else 1
        log_std_weight = 2.0 / rows

        def product(tangent: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
            tangent_mean, tangent_log_std = tangent
            return mean_weight * tangent_mean, log_std_weight * tangent_log_std

        return product

    def square_root(self, outputs: object) -> tuple[Tensor, Tensor]:
        self.bind(outputs)  # the same checks
        mean, log_std = (t.detach() for t in outputs)
        rows = log_std.shape[0] if log_std.dim() == mean.dim() else 1
        mean_columns = _diagonal_columns(torch.exp(-log_std).expand_as(mean) / mean.shape[0] ** 0.5)
        log_std_columns = _diagonal_columns(torch.full_like(log_std, (2.0 / rows) ** 0.5))
        # the factor is block-diagonal: mean columns first, then log-std columns, zeros elsewhere
        return (
            torch.cat([mean_columns, mean.new_zeros((log_std_columns.shape[0], *mean.shape))]),
            torch.cat([log_std.new_zeros((mean_columns.shape[0], *log_std.shape)), log_std_columns]),
        )


class SquaredError(OutputFisher):
    """``M = c I``: the output-space curvature of the squared error ``½ c ‖z - y‖²``.

    With it, ``GaussNewton.for_module(model, inputs, SquaredError(1 / N))`` is the
    Gauss-Newton matrix ``(1/N) JᵀJ`` of a regression loss ``(1/2N) Σ ‖f(x) - y‖²``
    (the targets drop out: ``J`` is the Jacobian of the model outputs). It is
    also the Fisher of a unit-variance Gaussian with mean ``z``.

    Args:
        scale: ``c > 0``; 1 for ``½ Σ r²``, ``1/N`` for ``½ mean(r²)`` over ``N``
            residuals.
    """

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = check_positive("scale", scale, "1 for ½Σr², 1/N for ½ mean(r²)")

    def bind(self, outputs: object) -> OutputProduct:
        scale = self.scale
        return lambda tangent: tree_map(lambda t: scale * t, tangent)

    def square_root(self, outputs: object) -> Tensor:
        if not isinstance(outputs, Tensor):
            raise NotImplementedError("SquaredError.square_root needs the model to output one tensor")
        rows = outputs.reshape(outputs.shape[0], -1) if outputs.dim() > 1 else outputs.reshape(-1, 1)
        columns = _diagonal_columns(torch.full_like(rows.detach(), self.scale**0.5))
        return columns.reshape(columns.shape[0], *outputs.shape)

    def __repr__(self) -> str:
        return f"SquaredError(scale={self.scale})"


def _single_tensor(outputs: object, name: str) -> Tensor:
    if not isinstance(outputs, Tensor):
        raise TypeError(f"{name} needs the model to output one logits tensor of shape (N, K)")
    if outputs.dim() < 2:
        raise ValueError(f"{name} needs logits of shape (N, K) with a batch dimension; got {tuple(outputs.shape)}")
    return outputs


def _categorical_product(logits: Tensor, mask: Tensor | None) -> OutputProduct:
    """``u -> (1/N) (diag(p) - p pᵀ) u`` per row, ``p`` the (masked) softmax of ``logits``."""
    probs = _softmax(logits.detach(), mask) / logits.shape[0]
    probs_unscaled = probs * logits.shape[0]

    def product(tangent: Tensor) -> Tensor:
        return probs * (tangent - (probs_unscaled * tangent).sum(-1, keepdim=True))

    return product


def _categorical_columns(logits: Tensor, mask: Tensor | None) -> Tensor:
    """The square root of ``(1/N) (diag(p) - p pᵀ)`` per row, shape ``(K, *logits.shape)``."""
    # diag(p) - ppᵀ = B Bᵀ with column k of B equal to sqrt(p_k) (e_k - p); a forbidden k has p_k = 0
    logits = logits.detach()
    probs = _softmax(logits, mask)
    eye = torch.eye(logits.shape[-1], dtype=logits.dtype, device=logits.device)
    columns = eye.unsqueeze(1) - probs.unsqueeze(0)  # (K, N, K)
    return columns * (probs / logits.shape[0]).sqrt().movedim(-1, 0).unsqueeze(-1)


def _softmax(logits: Tensor, mask: Tensor | None) -> Tensor:
    """Softmax over the last dimension; with a mask, over the allowed entries only (exact zeros elsewhere)."""
    if mask is None:
        return torch.softmax(logits, dim=-1)
    return torch.softmax(logits.masked_fill(~mask, -torch.inf), dim=-1)  # every row has an allowed entry


def _checked_mask(mask: Tensor | None, sizes: Sequence[int] | None) -> Tensor | None:
    """A bool mask with an allowed entry in every row (in every factor's slice of it, with ``sizes``)."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.dim() == 0:
        got = f"{mask.dtype} of shape {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
        hint = "True = allowed; use mask.bool()"
        raise ValueError(f"mask must be a bool tensor of the logits' shape (got {got}); {hint}")
    if sizes is not None and mask.shape[-1] != sum(sizes):
        raise ValueError(f"mask has {mask.shape[-1]} columns but sizes {list(sizes)} sum to {sum(sizes)}")
    slices = torch.split(mask, list(sizes), dim=-1) if sizes is not None else (mask,)
    if not all(bool(part.any(-1).all()) for part in slices):
        where = "every factor's slice of every row" if sizes is not None else "every row"
        raise ValueError(f"mask forbids every category of some row; {where} needs at least one True")
    return mask.detach().clone()  # checked once: later in-place changes to the caller's tensor do not reach it


def _mask_like(mask: Tensor | None, logits: Tensor) -> Tensor | None:
    """``mask`` on the logits' device, after checking it has their shape."""
    if mask is None:
        return None
    if mask.shape != logits.shape:
        raise ValueError(
            f"mask has shape {tuple(mask.shape)} but the logits have {tuple(logits.shape)}; "
            "give one mask row per input of the batch (with_inputs(batch, fisher) for another batch)"
        )
    return mask.to(logits.device)


def _mask_repr(mask: Tensor | None) -> str:
    return "" if mask is None else f"mask=<bool tensor of shape {tuple(mask.shape)}>"


def _diagonal_columns(weights: Tensor) -> Tensor:
    """The columns of ``diag(w)`` per input: ``C_k = w_k e_k`` for every row, shape ``(K, *w.shape)``."""
    size = weights.shape[-1]
    eye = torch.eye(size, dtype=weights.dtype, device=weights.device)
    return eye.view(size, *([1] * (weights.dim() - 1)), size) * weights.unsqueeze(0)
