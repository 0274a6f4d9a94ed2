"""The curvature interface: built once per step, then ``v -> A v`` on flat vectors."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

from trustregion.operator import LinearOperator


@dataclass
class StepProblem:
    """What the optimizer knows at the old parameters ``θ_old`` when a step begins.

    Attributes:
        params: the optimized tensors, in the optimizer's order (the flat vector
            order of every product).
        loss: the closure's loss at ``θ_old``, with its autograd graph.
        constraint: the closure's constraint (mean KL) at ``θ_old`` with its graph,
            or ``None`` for a loss-only closure.
        loss_gradient: ``∇ loss`` per parameter; built with ``create_graph=True``
            when the curvature asked for it (:attr:`Curvature.needs_loss_graph`).
        closure: the user's closure, for operators that must re-evaluate.
    """

    params: Sequence[Tensor]
    loss: Tensor
    constraint: Tensor | None
    loss_gradient: Sequence[Tensor]
    closure: Callable[[], object]


class Curvature(abc.ABC):
    """Builds the curvature operator ``A`` of one step at ``θ_old``.

    Subclasses do the expensive work (a forward pass, a linearisation, a first
    backward with ``create_graph``) once in :meth:`build`; each product of the
    returned operator then reuses it.
    """

    needs_loss_graph: bool = False
    """Set by operators that differentiate ``∇ loss`` again (the exact Hessian)."""

    @abc.abstractmethod
    def build(self, problem: StepProblem) -> LinearOperator:
        """Return the operator ``v -> A v`` at the old parameters."""
