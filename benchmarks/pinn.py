"""A physics-informed network for 2-D Poisson: ours against Adam, L-BFGS and energy natural gradient, in one run.

The problem is ``examples/pinn_poisson.py``'s: ``-Δu = 2π² sin(πx) sin(πy)`` on the unit
square, ``u = 0`` on its boundary, a tanh network in float64, the loss
``½ ‖r(θ)‖²`` of the PDE residuals on a 30 × 30 interior grid and the boundary values
(each part scaled by one over the square root of its number of points). Every method starts
from the same initialisation of each seed and is scored by the relative L2 error
``‖u_θ - u*‖ / ‖u*‖`` on a 100 × 100 grid, computed outside the timed work.

Methods:

* ``ours``: ``trustregion.least_squares(residuals, params)`` with its defaults;
* ``ours (steihaug)`` on the larger network: the same call with a matrix-free
  :class:`~trustregion.SteihaugCG` solver (``--solver``);
* ``engd``: the reference, energy natural gradient descent (Müller & Zeinhofer, "Achieving
  high accuracy with PINNs via energy natural gradient descent", ICML 2023), written here:
  the Jacobian ``J`` of the residuals (by the same residual function and autograd), the Gram
  matrix ``G = JᵀJ``, the step ``G⁺ ∇L`` by a least-squares solve, and a grid line search over
  ``η ∈ {2⁻ᵏ : k = 0, …, 30}`` keeping the lowest loss;
* ``adam``: :class:`torch.optim.Adam`, learning rate 1e-3;
* ``lbfgs``: :class:`torch.optim.LBFGS` with the strong Wolfe line search, history 50, 20 iterations
  per ``step()`` call (a step counted is an iteration; one iteration per call stalls at the start).

Adam and L-BFGS run for ``--baseline-seconds`` each (they take many cheap steps). Printed: the
error after chosen steps and seconds, the steps and seconds to reach 1e-5, and the ratio of ours
to the reference's time to 1e-5. A plot of error against steps and seconds goes to ``--plot``.

Run: ``python benchmarks/pinn.py`` (3 seeds of [2, 32, 1]); ``--widths 2 64 64 1 --solver steihaug``
for the larger case (``--control unscaled-lm --solver steihaug-nystrom-50-2`` is the best
matrix-free setting measured there); ``--smoke`` for a seconds-long check of the script.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import trustregion

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PLOT = ROOT / "benchmarks" / "results" / "pinn" / "pinn_poisson.png"
LEVEL = 1e-5


def load_example():
    """``examples/pinn_poisson.py``: the problem is defined once, there."""
    spec = importlib.util.spec_from_file_location("pinn_poisson", ROOT / "examples" / "pinn_poisson.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("pinn_poisson", module)
    spec.loader.exec_module(module)
    return module


example = load_example()


@dataclass
class Trace:
    """The relative L2 error after recorded steps, with the step number and the seconds spent up to it."""

    method: str
    seed: int
    steps: list[int] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def first(self, level: float) -> tuple[int, float] | tuple[None, None]:
        for step, error, seconds in zip(self.steps, self.errors, self.seconds, strict=True):
            if error <= level:
                return step, seconds
        return None, None

    def at_step(self, step: int) -> float:
        return min((e for s, e in zip(self.steps, self.errors, strict=True) if s <= step), default=math.nan)


class Recorder:
    """Times the work between calls and records the error every ``every`` steps (untimed).

    The clock is the process's CPU time: with one torch thread it is the work itself, and a
    machine shared with other jobs does not inflate it.
    """

    def __init__(self, trace: Trace, network: torch.nn.Module, every: int = 1) -> None:
        self.trace, self.network, self.every = trace, network, every
        self.step, self.spent, self.since = 0, 0.0, time.process_time()

    def __call__(self, *_: object, steps: int | None = None) -> None:
        """Count one step (or set the count to ``steps``), and record when it is due."""
        self.spent += time.process_time() - self.since
        self.step = self.step + 1 if steps is None else steps
        if self.step % self.every == 0:
            self.trace.steps.append(self.step)
            self.trace.errors.append(example.relative_error(self.network))
            self.trace.seconds.append(self.spent)
        self.since = time.process_time()

    def finish(self) -> None:
        """Record the last step if ``every`` skipped it."""
        if self.step and (not self.trace.steps or self.trace.steps[-1] != self.step):
            self.trace.steps.append(self.step)
            self.trace.errors.append(example.relative_error(self.network))
            self.trace.seconds.append(self.spent)


def run_ours(problem, args: argparse.Namespace, seed: int) -> Trace:
    """``least_squares`` with its defaults, or with the ``--solver`` / ``--control`` asked for."""
    changed = [name for name in (args.solver, args.control) if name != "default"]
    trace = Trace(f"ours ({', '.join(changed)})" if changed else "ours", seed)
    record = Recorder(trace, problem.network)
    options = {}
    if args.solver != "default":
        options["solver"] = make_solver(args.solver, problem)
    if args.control == "trust-radius":
        options["control"] = trustregion.TrustRadius(gtol=1e-10)
        options.setdefault("solver", trustregion.DenseSolver())
    elif args.control == "scaled-trust-radius":  # Levenberg-Marquardt's trust-region formulation (SecularSolver)
        options["control"] = trustregion.ScaledTrustRadius(params=problem.params, gtol=1e-8)
    elif args.control == "unscaled-lm":  # no diagonal to estimate: a matrix-free step costs its products only
        options["control"] = trustregion.LevenbergMarquardt(1e-6, scaled=False, curvature_floor=True)

    def callback(_step: trustregion.StepResult) -> bool:
        record()
        return record.spent >= args.seconds

    trustregion.least_squares(problem.residuals, problem.params, callback=callback, max_steps=args.steps, **options)
    return trace


def make_solver(name: str, problem) -> trustregion.Solver:
    size = sum(p.numel() for p in problem.params)
    if name == "dense":
        return trustregion.DenseSolver()
    if name.startswith("secular-max-damping"):  # secular-max-damping[-VALUE]: SecularSolver(max_damping=VALUE)
        value = name.removeprefix("secular-max-damping").removeprefix("-") or "1e-10"
        return trustregion.SecularSolver(max_damping=float(value))
    if name == "steihaug":
        return trustregion.SteihaugCG(max_iter=min(size, 250))
    if name == "steihaug-jacobi":
        return trustregion.SteihaugCG(max_iter=min(size, 250), preconditioner=trustregion.Jacobi())
    if name.startswith("steihaug-nystrom"):  # steihaug-nystrom[-RANK[-EVERY]]
        rank, every = (int(part) for part in [*name.split("-")[2:], "100", "5"][:2])
        preconditioner = trustregion.Nystrom(rank=rank, every=every)
        return trustregion.SteihaugCG(max_iter=min(size, 250), preconditioner=preconditioner)
    raise ValueError(
        "--solver must be default, dense, secular-max-damping[-VALUE], steihaug, steihaug-jacobi or "
        f"steihaug-nystrom[-RANK[-EVERY]] (got {name!r})"
    )


def jacobian(residuals: Callable[..., torch.Tensor], params: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The residuals ``r`` and ``J = ∂r/∂θ`` column by column, ``J e_j`` by a backward through ``u -> Jᵀu``."""
    leaves = [p.detach().requires_grad_() for p in params]
    with torch.enable_grad():
        r = residuals(*leaves)
        u = torch.zeros_like(r, requires_grad=True)
        transposed = torch.autograd.grad(r, leaves, u, create_graph=True)
        eye = torch.eye(sum(p.numel() for p in params), dtype=r.dtype)
        columns = []
        for e in eye:
            parts = [part.view_as(p) for part, p in zip(e.split([p.numel() for p in params]), params, strict=True)]
            columns.append(torch.autograd.grad(transposed, u, parts, retain_graph=True)[0])
    return r.detach(), torch.stack(columns, dim=1)


def run_engd(problem, steps: int, seconds: float, seed: int) -> Trace:
    """Energy natural gradient: ``θ ← θ - η G⁺ Jᵀr``, ``η`` the best of a grid of 31 powers of 2."""
    trace = Trace("engd", seed)
    record = Recorder(trace, problem.network)
    params, grid = problem.params, [2.0**-k for k in range(31)]

    def loss() -> float:
        with torch.enable_grad():
            return 0.5 * problem.residuals(*params).square().sum().item()

    for _ in range(steps):
        if record.spent >= seconds:
            break
        r, jac = jacobian(problem.residuals, params)
        gram, gradient = jac.T @ jac, jac.T @ r
        direction = torch.linalg.lstsq(gram, gradient[:, None], driver="gelsd").solution[:, 0]
        start = [p.detach().clone() for p in params]
        losses = []
        for eta in grid:
            move(params, start, direction, eta)
            losses.append(loss())
        move(params, start, direction, grid[min(range(len(grid)), key=losses.__getitem__)])
        record()
    return trace


def move(params: list[torch.Tensor], start: list[torch.Tensor], direction: torch.Tensor, eta: float) -> None:
    with torch.no_grad():
        offset = 0
        for p, s in zip(params, start, strict=True):
            p.copy_(s - eta * direction[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


_LBFGS_ITERATIONS = 20
"""Iterations per ``LBFGS.step`` call (its default); the steps counted are its iterations."""


def run_baseline(problem, name: str, seconds: float, seed: int) -> Trace:
    """Adam or L-BFGS for ``seconds`` of their own work."""
    trace = Trace(name, seed)
    record = Recorder(trace, problem.network, every=10 if name == "adam" else 1)
    if name == "adam":
        optimizer = torch.optim.Adam(problem.params, lr=1e-3)
    else:
        optimizer = torch.optim.LBFGS(
            problem.params,
            max_iter=_LBFGS_ITERATIONS,
            history_size=50,
            tolerance_grad=0.0,
            tolerance_change=0.0,
            line_search_fn="strong_wolfe",
        )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = 0.5 * problem.residuals(*problem.params).square().sum()
        loss.backward()
        return loss

    while record.spent < seconds:
        optimizer.step(closure)
        record(steps=optimizer.state[problem.params[0]]["n_iter"] if name == "lbfgs" else None)
    record.finish()
    return trace


def run_seed(args: argparse.Namespace, seed: int) -> list[Trace]:
    make = lambda: example.make_problem(seed, args.widths, args.grid)  # noqa: E731  (a fresh, identical start)
    traces = [run_ours(make(), args, seed)]
    if not args.no_engd:
        traces.append(run_engd(make(), args.steps, args.seconds, seed))
    for name in ("adam", "lbfgs") if args.baseline_seconds > 0 else ():
        traces.append(run_baseline(make(), name, args.baseline_seconds, seed))
    return traces


def report(traces: list[Trace], args: argparse.Namespace) -> None:
    checkpoints = [s for s in (10, 25, 50, 100, 200, 500) if s <= args.steps]
    header = " ".join(f"{'@' + str(s):>9}" for s in checkpoints)
    print(f"\n{'method':>16} {'seed':>4} {header} {'final':>9} {'steps':>6} {'seconds':>8} {'to 1e-5':>14}")
    for trace in traces:
        at = " ".join(f"{trace.at_step(s):9.2e}" for s in checkpoints)
        step, seconds = trace.first(LEVEL)
        reached = f"{step:6d} {seconds:6.1f}s" if step else f"{'never':>14}"
        final = f"{trace.errors[-1]:9.2e} {trace.steps[-1]:6d} {trace.seconds[-1]:8.1f}"
        print(f"{trace.method:>16} {trace.seed:4d} {at} {final} {reached:>14}")
    print()
    for seed in sorted({t.seed for t in traces}):
        ours = next(t for t in traces if t.seed == seed and t.method.startswith("ours"))
        engd = next((t for t in traces if t.seed == seed and t.method == "engd"), None)
        if engd is None:
            continue
        mine, theirs = ours.first(LEVEL)[1], engd.first(LEVEL)[1]
        ratio = f"{mine / theirs:.2f}" if mine and theirs else "n/a (not reached)"
        print(f"seed {seed}: time to {LEVEL:g}, ours / engd = {ratio}")


def plot(traces: list[Trace], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {
        "engd": "tab:gray",
        "adam": "tab:orange",
        "lbfgs": "tab:green",
        "ours (trust-radius)": "tab:purple",
        "ours (scaled-trust-radius)": "tab:red",
    }
    figure, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for trace in traces:
        color = colors.get(trace.method, "tab:blue")
        label = trace.method if trace.seed == min(t.seed for t in traces) else None
        by_step.loglog(trace.steps, trace.errors, color=color, alpha=0.8, label=label)
        by_time.loglog(trace.seconds, trace.errors, color=color, alpha=0.8)
    by_step.set(xlabel="steps", ylabel="relative L2 error", title=title)
    by_time.set(xlabel="CPU seconds", title="the same against time")
    for axis in (by_step, by_time):
        axis.axhline(LEVEL, color="black", linewidth=0.5, linestyle=":")
        axis.grid(True, which="major", alpha=0.3)
    by_step.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    print(f"plot: {path}")


def main(argv: list[str] | None = None) -> list[Trace]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--widths", type=int, nargs="+", default=[2, 32, 1], help="layer widths (default 2 32 1)")
    parser.add_argument("--grid", type=int, default=30, help="interior grid size and points per side (default 30)")
    parser.add_argument("--steps", type=int, default=200, help="steps of ours and of the reference (default 200)")
    parser.add_argument(
        "--solver",
        default="default",
        help="ours: default, dense, secular-max-damping[-VALUE] (1e-10), steihaug, steihaug-jacobi, "
        "steihaug-nystrom[-RANK[-EVERY]] (rank 100, every 5)",
    )
    parser.add_argument(
        "--control",
        default="default",
        help="ours: default, trust-radius (with the dense solver), scaled-trust-radius (with SecularSolver) "
        "or unscaled-lm (Levenberg-Marquardt without Moré's scaling)",
    )
    parser.add_argument("--seconds", type=float, default=math.inf, help="CPU seconds of ours and engd")
    parser.add_argument("--baseline-seconds", type=float, default=60.0, help="Adam's, L-BFGS's CPU seconds (0: none)")
    parser.add_argument("--no-engd", action="store_true", help="leave out the reference (the larger network)")
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT, help=f"where the plot goes ({DEFAULT_PLOT})")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--smoke", "--quick", action="store_true", help="tiny grid and few steps: a check only")
    parser.add_argument("--save", type=Path, help="also write the traces to this JSON file")
    parser.add_argument("--load", type=Path, nargs="+", help="report and plot traces saved by --save; run nothing")
    args = parser.parse_args(argv)
    if args.load:
        traces = [Trace(**row) for path in args.load for row in json.loads(path.read_text())]
        report(traces, args)
        plot(traces, args.plot, f"PINN Poisson, {args.widths}")
        return traces
    if args.smoke:
        args.seeds, args.grid, args.steps, args.baseline_seconds = [0], 6, 5, 0.5
    torch.set_num_threads(args.threads)
    size = sum(p.numel() for p in example.make_problem(0, args.widths, args.grid).params)
    print(f"PINN Poisson 2-D, network {args.widths} ({size} parameters), {args.grid}×{args.grid} interior grid")
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)")
    traces = [trace for seed in args.seeds for trace in run_seed(args, seed)]
    report(traces, args)
    plot(traces, args.plot, f"PINN Poisson, {args.widths}")
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps([asdict(trace) for trace in traces]))
    return traces


if __name__ == "__main__":
    main()
