"""The least-squares problems 1-19 of Moré, Garbow & Hillstrom as torch residual functions.

J. J. Moré, B. S. Garbow and K. E. Hillstrom, "Testing unconstrained optimization software",
ACM Transactions on Mathematical Software 7 (1981), pp. 17-41. Each problem is a residual function
``r(x) -> tensor`` of one float64 parameter vector, the paper's standard start ``x₀`` and the minima
it publishes as ``f = Σ rᵢ²`` (the sum of squares, twice scipy's ``cost``). The paper gives six
significant digits; :attr:`Problem.minima` holds each to more digits, from converged runs that agree
with the published value in all of its digits (the published value is in the comment beside it),
so that "reached to a relative 1e-6" can be judged.

Where a problem has more than one published minimum (Freudenstein-Roth, Biggs EXP6) all are
listed; minima the paper places at infinity (Bard, Kowalik-Osborne) are not, since no finite run
reaches them. Problems with a free number of residuals use the sizes MINPACK's tests use: Jennrich-
Sampson ``m = 10``, Gulf research ``m = 10``, Box 3-D ``m = 10``, Brown-Dennis ``m = 20``,
Biggs EXP6 ``m = 13``.

Used by ``benchmarks/scipy_parity.py`` and the tests; never imported by the package.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

DTYPE = torch.float64
Residuals = Callable[[Tensor], Tensor]


def _index(m: int) -> Tensor:
    """``i = 1, …, m`` as float64."""
    return torch.arange(1, m + 1, dtype=DTYPE)


def rosenbrock(x: Tensor) -> Tensor:
    return torch.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]])


def freudenstein_roth(x: Tensor) -> Tensor:
    return torch.stack([-13 + x[0] + ((5 - x[1]) * x[1] - 2) * x[1], -29 + x[0] + ((x[1] + 1) * x[1] - 14) * x[1]])


def powell_badly_scaled(x: Tensor) -> Tensor:
    return torch.stack([1e4 * x[0] * x[1] - 1, torch.exp(-x[0]) + torch.exp(-x[1]) - 1.0001])


def brown_badly_scaled(x: Tensor) -> Tensor:
    return torch.stack([x[0] - 1e6, x[1] - 2e-6, x[0] * x[1] - 2])


_BEALE_Y = torch.tensor([1.5, 2.25, 2.625], dtype=DTYPE)


def beale(x: Tensor) -> Tensor:
    return _BEALE_Y - x[0] * (1 - x[1] ** _index(3))


def jennrich_sampson(x: Tensor) -> Tensor:
    i = _index(10)
    return 2 + 2 * i - (torch.exp(i * x[0]) + torch.exp(i * x[1]))


def helical_valley(x: Tensor) -> Tensor:
    """``θ = atan(x₂/x₁) / 2π`` (``+ ½`` for ``x₁ < 0``), as the paper defines it (a jump at ``x₁ = 0``)."""
    theta = torch.atan(x[1] / x[0]) / (2 * math.pi) + torch.where(x[0] < 0, 0.5, 0.0)
    return torch.stack([10 * (x[2] - 10 * theta), 10 * (torch.sqrt(x[0] ** 2 + x[1] ** 2) - 1), x[2]])


_BARD_Y = torch.tensor(
    [0.14, 0.18, 0.22, 0.25, 0.29, 0.32, 0.35, 0.39, 0.37, 0.58, 0.73, 0.96, 1.34, 2.10, 4.39], dtype=DTYPE
)


def bard(x: Tensor) -> Tensor:
    u = _index(15)
    v = 16 - u
    w = torch.minimum(u, v)
    return _BARD_Y - (x[0] + u / (v * x[1] + w * x[2]))


_GAUSSIAN_HALF = [0.0009, 0.0044, 0.0175, 0.0540, 0.1295, 0.2420, 0.3521]
_GAUSSIAN_Y = torch.tensor([*_GAUSSIAN_HALF, 0.3989, *reversed(_GAUSSIAN_HALF)], dtype=DTYPE)


def gaussian(x: Tensor) -> Tensor:
    t = (8 - _index(15)) / 2
    return x[0] * torch.exp(-x[1] * (t - x[2]) ** 2 / 2) - _GAUSSIAN_Y


_MEYER_Y = torch.tensor(
    [34780, 28610, 23650, 19630, 16370, 13720, 11540, 9744, 8261, 7030, 6005, 5147, 4427, 3820, 3307, 2872],
    dtype=DTYPE,
)


def meyer(x: Tensor) -> Tensor:
    t = 45 + 5 * _index(16)
    return x[0] * torch.exp(x[1] / (t + x[2])) - _MEYER_Y


def gulf_research(x: Tensor) -> Tensor:
    t = _index(10) / 100
    y = 25 + (-50 * torch.log(t)) ** (2 / 3)
    return torch.exp(-((y - x[1]).abs() ** x[2]) / x[0]) - t


def box_3d(x: Tensor) -> Tensor:
    t = 0.1 * _index(10)
    return torch.exp(-t * x[0]) - torch.exp(-t * x[1]) - x[2] * (torch.exp(-t) - torch.exp(-10 * t))


def powell_singular(x: Tensor) -> Tensor:
    return torch.stack(
        [x[0] + 10 * x[1], math.sqrt(5) * (x[2] - x[3]), (x[1] - 2 * x[2]) ** 2, math.sqrt(10) * (x[0] - x[3]) ** 2]
    )


def wood(x: Tensor) -> Tensor:
    return torch.stack(
        [
            10 * (x[1] - x[0] ** 2),
            1 - x[0],
            math.sqrt(90) * (x[3] - x[2] ** 2),
            1 - x[2],
            math.sqrt(10) * (x[1] + x[3] - 2),
            (x[1] - x[3]) / math.sqrt(10),
        ]
    )


_KOWALIK_Y = torch.tensor(
    [0.1957, 0.1947, 0.1735, 0.1600, 0.0844, 0.0627, 0.0456, 0.0342, 0.0323, 0.0235, 0.0246], dtype=DTYPE
)
_KOWALIK_U = torch.tensor([4, 2, 1, 0.5, 0.25, 0.167, 0.125, 0.1, 0.0833, 0.0714, 0.0625], dtype=DTYPE)


def kowalik_osborne(x: Tensor) -> Tensor:
    u = _KOWALIK_U
    return _KOWALIK_Y - x[0] * (u**2 + u * x[1]) / (u**2 + u * x[2] + x[3])


def brown_dennis(x: Tensor) -> Tensor:
    t = _index(20) / 5
    return (x[0] + t * x[1] - torch.exp(t)) ** 2 + (x[2] + x[3] * torch.sin(t) - torch.cos(t)) ** 2


_OSBORNE1_Y = torch.tensor(
    [0.844, 0.908, 0.932, 0.936, 0.925, 0.908, 0.881, 0.850, 0.818, 0.784, 0.751, 0.718, 0.685, 0.658, 0.628, 0.603,
     0.580, 0.558, 0.538, 0.522, 0.506, 0.490, 0.478, 0.467, 0.457, 0.448, 0.438, 0.431, 0.424, 0.420, 0.414, 0.411,
     0.406],
    dtype=DTYPE,
)  # fmt: skip


def osborne_1(x: Tensor) -> Tensor:
    t = 10 * (_index(33) - 1)
    return _OSBORNE1_Y - (x[0] + x[1] * torch.exp(-t * x[3]) + x[2] * torch.exp(-t * x[4]))


def biggs_exp6(x: Tensor) -> Tensor:
    t = 0.1 * _index(13)
    y = torch.exp(-t) - 5 * torch.exp(-10 * t) + 3 * torch.exp(-4 * t)
    return x[2] * torch.exp(-t * x[0]) - x[3] * torch.exp(-t * x[1]) + x[5] * torch.exp(-t * x[4]) - y


_OSBORNE2_Y = torch.tensor(
    [1.366, 1.191, 1.112, 1.013, 0.991, 0.885, 0.831, 0.847, 0.786, 0.725, 0.746, 0.679, 0.608, 0.655, 0.616, 0.606,
     0.602, 0.626, 0.651, 0.724, 0.649, 0.649, 0.694, 0.644, 0.624, 0.661, 0.612, 0.558, 0.533, 0.495, 0.500, 0.423,
     0.395, 0.375, 0.372, 0.391, 0.396, 0.405, 0.428, 0.429, 0.523, 0.562, 0.607, 0.653, 0.672, 0.708, 0.633, 0.668,
     0.645, 0.632, 0.591, 0.559, 0.597, 0.625, 0.739, 0.710, 0.729, 0.720, 0.636, 0.581, 0.428, 0.292, 0.162, 0.098,
     0.054],
    dtype=DTYPE,
)  # fmt: skip


def osborne_2(x: Tensor) -> Tensor:
    t = (_index(65) - 1) / 10
    model = x[0] * torch.exp(-t * x[4])
    for amplitude, width, centre in ((1, 5, 8), (2, 6, 9), (3, 7, 10)):
        model = model + x[amplitude] * torch.exp(-((t - x[centre]) ** 2) * x[width])
    return _OSBORNE2_Y - model


@dataclass(frozen=True)
class Problem:
    """One MGH problem: its number in the paper, residuals, standard start and the published minima ``Σ r²``."""

    number: int
    name: str
    residuals: Residuals
    start: tuple[float, ...]
    minima: tuple[float, ...]

    def start_tensor(self) -> Tensor:
        """A fresh leaf at the standard start, ready for an optimizer."""
        return torch.tensor(self.start, dtype=DTYPE, requires_grad=True)

    def sum_of_squares(self, x: Tensor) -> float:
        """``f(x) = Σ rᵢ(x)²``."""
        with torch.no_grad():
            return self.residuals(x.detach().to(DTYPE)).square().sum().item()

    def reached(self, value: float, rtol: float = 1e-6, atol: float = 1e-10) -> float | None:
        """The published minimum ``f*`` with ``|f - f*| <= max(rtol · f*, atol)``, or ``None``."""
        for minimum in self.minima:
            if abs(value - minimum) <= max(rtol * minimum, atol):
                return minimum
        return None


PROBLEMS = (
    Problem(1, "Rosenbrock", rosenbrock, (-1.2, 1.0), (0.0,)),
    Problem(2, "Freudenstein-Roth", freudenstein_roth, (0.5, -2.0), (0.0, 48.98425367924)),  # 48.9842
    Problem(3, "Powell badly scaled", powell_badly_scaled, (0.0, 1.0), (0.0,)),
    Problem(4, "Brown badly scaled", brown_badly_scaled, (1.0, 1.0), (0.0,)),
    Problem(5, "Beale", beale, (1.0, 1.0), (0.0,)),
    Problem(6, "Jennrich-Sampson", jennrich_sampson, (0.3, 0.4), (124.3621823556,)),  # 124.362
    Problem(7, "Helical valley", helical_valley, (-1.0, 0.0, 0.0), (0.0,)),
    Problem(8, "Bard", bard, (1.0, 1.0, 1.0), (8.214877306579e-3,)),  # 8.21487e-3
    Problem(9, "Gaussian", gaussian, (0.4, 1.0, 0.0), (1.127932769618e-8,)),  # 1.12793e-8
    Problem(10, "Meyer", meyer, (0.02, 4000.0, 250.0), (87.94585517018,)),  # 87.9458
    Problem(11, "Gulf research", gulf_research, (5.0, 2.5, 0.15), (0.0,)),
    Problem(12, "Box 3-D", box_3d, (0.0, 10.0, 20.0), (0.0,)),
    Problem(13, "Powell singular", powell_singular, (3.0, -1.0, 0.0, 1.0), (0.0,)),
    Problem(14, "Wood", wood, (-3.0, -1.0, -3.0, -1.0), (0.0,)),
    Problem(15, "Kowalik-Osborne", kowalik_osborne, (0.25, 0.39, 0.415, 0.39), (3.075056038492e-4,)),  # 3.07505e-4
    Problem(16, "Brown-Dennis", brown_dennis, (25.0, 5.0, -5.0, -1.0), (85822.20162635,)),  # 85822.2
    Problem(17, "Osborne 1", osborne_1, (0.5, 1.5, -1.0, 0.01, 0.02), (5.464894697483e-5,)),  # 5.46489e-5
    Problem(18, "Biggs EXP6", biggs_exp6, (1.0, 2.0, 1.0, 1.0, 1.0, 1.0), (0.0, 5.655649925500e-3)),  # 5.65565e-3
    Problem(
        19,
        "Osborne 2",
        osborne_2,
        (1.3, 0.65, 0.65, 0.7, 0.6, 3.0, 5.0, 7.0, 2.0, 4.5, 5.5),
        (4.013773629354e-2,),  # 4.01377e-2
    ),
)
"""MGH 1-19 in the paper's order."""


def problem(name_or_number: str | int) -> Problem:
    """The problem with this number or (case-insensitive) name."""
    for candidate in PROBLEMS:
        if name_or_number == candidate.number or str(name_or_number).lower() == candidate.name.lower():
            return candidate
    raise KeyError(f"no MGH problem {name_or_number!r}; numbers 1-19 or names like 'Meyer'")
