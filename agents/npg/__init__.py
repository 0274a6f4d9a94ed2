"""Natural policy gradient (Kakade, 2001): TRPO's agent with the KL-normalised step taken as it is.

The step is ``Δθ = sqrt(2δ / sᵀAs) s`` with ``s ≈ A⁻¹g`` (docs/math.md, "Natural gradient step"),
with no line search: :class:`trustregion.NoLineSearch` only refuses non-finite points.
"""

from typing import Any, ClassVar

from agents.trpo.agent import TRPO


class NPG(TRPO):
    """:class:`~agents.trpo.TRPO` with ``line_search=False`` (``NoLineSearch``); same API.

    ``NPG(line_search=True)`` is a ``ValueError`` (that is TRPO), and ``python -m agents.npg`` has
    no line-search flags, so a run labelled npg is always NPG. A loaded run keeps the algorithm it
    was trained with (``NPG.load`` of a TRPO checkpoint reports ``algorithm == "trpo"``).
    """

    algorithm: ClassVar[str] = "npg"
    overrides: ClassVar[dict[str, Any]] = {"line_search": False}


__all__ = ["NPG"]
