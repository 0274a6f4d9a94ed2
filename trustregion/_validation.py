"""Argument checks shared by every component: each raises one line naming the argument and the fix."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any


def _is_number(value: Any) -> bool:
    """A real number, numpy scalars included; booleans (Python's or numpy's) are not numbers here."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def check_positive(name: str, value: Any, hint: str = "") -> float:
    """A finite number ``> 0``; returns it as a float."""
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0 (got {value!r}){_suffix(hint)}")
    return float(value)


def check_nonnegative(name: str, value: Any, hint: str = "") -> float:
    """A finite number ``>= 0``; returns it as a float."""
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (got {value!r}){_suffix(hint)}")
    return float(value)


def check_interval(name: str, value: Any, low: float, high: float, hint: str = "", *, closed: str = "both") -> float:
    """A number in ``[low, high]``; ``closed`` is ``"both"``, ``"left"``, ``"right"`` or ``"neither"``."""
    left = closed in ("both", "left")
    right = closed in ("both", "right")
    inside = (
        _is_number(value)
        and not math.isnan(value)
        and (low <= value if left else low < value)
        and (value <= high if right else value < high)
    )
    if not inside:
        bounds = f"{'[' if left else '('}{low}, {high}{']' if right else ')'}"
        raise ValueError(f"{name} must be in {bounds} (got {value!r}){_suffix(hint)}")
    return float(value)


def check_integer(name: str, value: Any, minimum: int, hint: str = "") -> int:
    """An ``int`` (not a bool) ``>= minimum``."""
    if (
        not isinstance(value, numbers.Integral)
        or isinstance(value, bool)
        or type(value).__name__ == "bool_"
        or value < minimum
    ):
        raise ValueError(f"{name} must be an integer >= {minimum} (got {value!r}){_suffix(hint)}")
    return int(value)


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """One of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)} (got {value!r})")
    return value


def check_callable(name: str, value: Any, signature: str) -> Any:
    """A callable; ``signature`` says what it maps, e.g. ``"r -> P⁻¹ r"``."""
    if not callable(value):
        raise TypeError(f"{name} must be callable: {signature} (got {type(value).__name__})")
    return value


def check_instance(name: str, value: Any, kind: type, example: str) -> Any:
    """An instance of ``kind``; ``example`` is a valid value, e.g. ``"KLHessian()"``."""
    if not isinstance(value, kind):
        article = "an" if kind.__name__[0] in "AEIOU" else "a"
        raise TypeError(f"{name} must be {article} {kind.__name__} such as {example} (got {type(value).__name__})")
    return value


def _suffix(hint: str) -> str:
    return f"; {hint}" if hint else ""
