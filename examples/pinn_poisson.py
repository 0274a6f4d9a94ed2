"""A physics-informed network for the 2-D Poisson equation, solved by Gauss-Newton least squares.

The problem is ``-Δu = f`` on the unit square with ``u = 0`` on its boundary and
``f = 2π² sin(πx) sin(πy)``, whose solution is ``u*(x, y) = sin(πx) sin(πy)``. A tanh
network ``u_θ`` ([2, 32, 1] by default, float64) is fitted to it by minimising

    L(θ) = 1/(2 N_Ω) Σ (Δu_θ(x_i) + f(x_i))² + 1/(2 N_∂) Σ u_θ(x_b)²

over a 30 × 30 interior grid ``x_i`` and points ``x_b`` on the boundary (Müller & Zeinhofer,
"Achieving high accuracy with PINNs via energy natural gradient descent", ICML 2023). The
Laplacian comes from ``torch.autograd.grad`` with ``create_graph=True`` inside the residual
function, so the residuals depend on the parameters through a derivative of the network.

``trustregion.least_squares(residuals, params)`` minimises ``½ ‖r(θ)‖²`` with its defaults:
Levenberg-Marquardt on the Gauss-Newton matrix ``JᵀJ`` (MINPACK's formulation, solved densely for
a network this small). For this problem ``control=TrustRadius(gtol=1e-10), solver=DenseSolver()``
goes further (1.6e-7 to 6.7e-7 in 200 steps against about 2e-5; ``benchmarks/pinn.py --control
trust-radius``), and so does ``solver=SecularSolver(max_damping=1e-10)`` (4.2e-8 to 1.1e-6;
``--solver secular-max-damping-1e-10``). The error reported is ``‖u_θ - u*‖ / ‖u*‖`` on a 100 × 100 grid of the square.

Run: ``python examples/pinn_poisson.py`` (``--seed``, ``--steps``, ``--width``, ``--grid``).
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

import trustregion

DTYPE = torch.float64


def source(points: Tensor) -> Tensor:
    """``f = -Δu* = 2π² sin(πx) sin(πy)``."""
    return 2 * math.pi**2 * exact_solution(points)


def exact_solution(points: Tensor) -> Tensor:
    """``u*(x, y) = sin(πx) sin(πy)``."""
    return torch.sin(math.pi * points[:, 0]) * torch.sin(math.pi * points[:, 1])


def interior_grid(size: int) -> Tensor:
    """The ``size × size`` grid of interior points (the square's edges left out)."""
    ticks = torch.linspace(0.0, 1.0, size + 2, dtype=DTYPE)[1:-1]
    return torch.cartesian_prod(ticks, ticks)


def boundary_points(per_side: int) -> Tensor:
    """``per_side`` evenly spaced points on each of the four sides (the corners once each)."""
    ticks = torch.linspace(0.0, 1.0, per_side + 1, dtype=DTYPE)[:-1]
    zeros, ones = torch.zeros_like(ticks), torch.ones_like(ticks)
    sides = [(ticks, zeros), (ones, ticks), (1 - ticks, ones), (zeros, 1 - ticks)]
    return torch.cat([torch.stack(side, dim=1) for side in sides])


def make_network(widths: list[int], seed: int) -> nn.Sequential:
    """A tanh network with PyTorch's default initialisation, seeded, in float64."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(widths[:-1]):
        layers += [nn.Linear(fan_in, fan_out, dtype=DTYPE), nn.Tanh()]
    layers.append(nn.Linear(widths[-2], widths[-1], dtype=DTYPE))
    return nn.Sequential(*layers)


def laplacian(network: Callable[[Tensor], Tensor], points: Tensor) -> Tensor:
    """``Δu`` at ``points`` by two rounds of ``torch.autograd.grad``, keeping the graph to θ."""
    points = points.detach().requires_grad_(True)
    gradient = torch.autograd.grad(network(points).sum(), points, create_graph=True)[0]
    second = [torch.autograd.grad(gradient[:, d].sum(), points, create_graph=True)[0][:, d] for d in range(2)]
    return second[0] + second[1]


def poisson_residuals(network: nn.Module, interior: Tensor, boundary: Tensor) -> Callable[..., Tensor]:
    """``residuals(*params)``: the scaled PDE residuals at ``interior``, then the boundary values."""
    names = [name for name, _ in network.named_parameters()]
    forcing = source(interior)
    interior_weight, boundary_weight = len(interior) ** -0.5, len(boundary) ** -0.5

    def residuals(*params: Tensor) -> Tensor:
        values = dict(zip(names, params, strict=True))

        def u(points: Tensor) -> Tensor:
            return torch.func.functional_call(network, values, (points,)).squeeze(-1)

        pde = interior_weight * (laplacian(u, interior) + forcing)
        return torch.cat([pde, boundary_weight * u(boundary)])

    return residuals


def relative_error(network: nn.Module, size: int = 100) -> float:
    """``‖u_θ - u*‖ / ‖u*‖`` on a ``size × size`` grid of the closed square."""
    ticks = torch.linspace(0.0, 1.0, size, dtype=DTYPE)
    points = torch.cartesian_prod(ticks, ticks)
    with torch.no_grad():
        exact = exact_solution(points)
        return (torch.linalg.vector_norm(network(points).squeeze(-1) - exact) / torch.linalg.vector_norm(exact)).item()


@dataclass
class Problem:
    """A network, its parameters and the residual function of the Poisson problem."""

    network: nn.Module
    params: list[Tensor]
    residuals: Callable[..., Tensor]


def make_problem(seed: int = 0, widths: list[int] | None = None, grid: int = 30) -> Problem:
    """The Poisson problem on a ``grid × grid`` interior grid and ``grid`` points per side."""
    network = make_network(widths or [2, 32, 1], seed)
    residuals = poisson_residuals(network, interior_grid(grid), boundary_points(grid))
    return Problem(network, list(network.parameters()), residuals)


@dataclass
class Trace:
    """The relative L2 error after every step, and the seconds spent up to it."""

    errors: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def steps_to(self, level: float) -> int | None:
        return next((step + 1 for step, error in enumerate(self.errors) if error <= level), None)

    def seconds_to(self, level: float) -> float | None:
        step = self.steps_to(level)
        return None if step is None else self.seconds[step - 1]


def solve(problem: Problem, steps: int) -> tuple[trustregion.RunResult, Trace]:
    """``trustregion.least_squares`` with its defaults, tracing the error (outside the timed work)."""
    trace, clock = Trace(), [0.0, time.perf_counter()]

    def record(_step: trustregion.StepResult) -> None:
        clock[0] += time.perf_counter() - clock[1]
        trace.errors.append(relative_error(problem.network))
        trace.seconds.append(clock[0])
        clock[1] = time.perf_counter()

    result = trustregion.least_squares(problem.residuals, problem.params, callback=record, max_steps=steps)
    return result, trace


def main(argv: list[str] | None = None) -> Trace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="network initialisation seed (default 0)")
    parser.add_argument("--steps", type=int, default=200, help="at most this many steps (default 200)")
    parser.add_argument("--width", type=int, default=32, help="hidden units of the one hidden layer (default 32)")
    parser.add_argument("--grid", type=int, default=30, help="interior grid size and points per side (default 30)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    problem = make_problem(args.seed, [2, args.width, 1], args.grid)
    size = sum(p.numel() for p in problem.params)
    print(f"-Δu = f on the unit square, [2, {args.width}, 1] tanh network ({size} parameters), seed {args.seed}")
    print(f"initial relative L2 error {relative_error(problem.network):.2e}")
    result, trace = solve(problem, args.steps)
    for step in sorted({1, *range(10, len(trace.errors), 20), len(trace.errors)}):
        print(f"step {step:4d}  {trace.seconds[step - 1]:7.2f} s  relative L2 error {trace.errors[step - 1]:.2e}")
    print(f"stopped: {result.reason.value} ({result.message}); loss {result.loss:.3e}")
    return trace


if __name__ == "__main__":
    main()
