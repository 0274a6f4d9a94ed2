"""Cost of the curvature operators of a TRPO step, in units of one gradient.

Policies: a 64-64 tanh MLP with

* a diagonal Gaussian head with a state-independent log-std (HalfCheetah sizes:
  17 observations, 6 actions), and
* a categorical head (CartPole sizes: 4 observations, 2 actions).

The unit ("gradient") is one forward and one backward pass of the TRPO surrogate
loss ``-mean(exp(log π(a|s) - log π_old(a|s)) · Â)`` on the same batch. For each
curvature operator the script measures, in ONE run and interleaved with the unit:

* ``product``: one ``v -> A v`` of a built operator;
* ``build``: :meth:`Curvature.build` once per step (the problem at ``θ_old`` is
  prepared as the optimizer prepares it, untimed);
* ``build + 10 products``: the curvature work of a step with 10 CG iterations;
* ``optimizer step``: one whole ``TrustRegionOptimizer.step`` with
  ``ConjugateGradient(max_iter=10, tol=0)`` and ``NoLineSearch()``: closure,
  gradient, build, CG, one trial evaluation;
* ``peak MiB``: the peak of tensor bytes held by PyTorch's CPU allocator during
  that optimizer step, above what was allocated when it started (from the
  allocation events of :mod:`torch.profiler` with ``profile_memory=True``);
  allocator caching and Python objects are not counted.

Every ratio is the median over rounds of (operator time / gradient time), the two
timed back to back in each round, so that load changes on the machine cancel; the
product column also gives the quartiles. float32, ``torch.set_num_threads(--threads)``.

Besides the library's operators, three other general ways to form the same
Gauss-Newton product ``Jᵀ M J v`` are defined here so that the choice made in
:class:`trustregion.GaussNewton` stays visible (its docstring gives the reasons),
and the product written out by hand for this MLP, as a floor for all of them.

Usage::

    python benchmarks/curvature.py                      # batches 2048 and 20000
    python benchmarks/curvature.py --batches 4096 --repeats 30
    python benchmarks/curvature.py --smoke              # tiny batch, a few seconds (CI)
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from trustregion import (
    CategoricalFisher,
    ConjugateGradient,
    Damped,
    DiagonalGaussianFisher,
    GaussNewton,
    Hessian,
    KLHessian,
    LinearOperator,
    NoLineSearch,
    OutputFisher,
    TrustRegionOptimizer,
)
from trustregion.curvature import Curvature, StepProblem

HIDDEN = 64
CG_ITERATIONS = 10
MIB = 2.0**20


# --------------------------------------------------------------------------------------------------------------
# Policies, batch, surrogate loss and analytic mean KL


def mlp(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, outputs)
    )


class GaussianPolicy(nn.Module):
    """Outputs ``(mean, log_std)``; ``log_std`` is one vector shared by every state."""

    def __init__(self, obs_dim: int, act_dim: int) -> None:
        super().__init__()
        self.mean = mlp(obs_dim, act_dim)
        self.log_std = nn.Parameter(torch.full((act_dim,), -0.5))

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        return self.mean(obs), self.log_std


@dataclass
class Head:
    """One policy head: sizes, its output Fisher, log-likelihood and analytic KL(old || new)."""

    name: str
    obs_dim: int
    act_dim: int
    make_policy: Callable[[int, int], nn.Module]
    fisher: Callable[[], OutputFisher]
    sample: Callable[[object], Tensor]
    log_prob: Callable[[object, Tensor], Tensor]
    kl: Callable[[object, object], Tensor]


def gaussian_sample(outputs: tuple[Tensor, Tensor]) -> Tensor:
    mean, log_std = outputs
    return mean + log_std.exp() * torch.randn_like(mean)


def gaussian_log_prob(outputs: tuple[Tensor, Tensor], actions: Tensor) -> Tensor:
    mean, log_std = outputs
    return (-0.5 * ((actions - mean) * torch.exp(-log_std)) ** 2 - log_std).sum(-1) - 0.5 * math.log(2 * math.pi)


def gaussian_kl(old: tuple[Tensor, Tensor], new: tuple[Tensor, Tensor]) -> Tensor:
    (old_mean, old_log_std), (new_mean, new_log_std) = old, new
    variance_ratio = torch.exp(2 * (old_log_std - new_log_std))
    mahalanobis = ((new_mean - old_mean) * torch.exp(-new_log_std)) ** 2
    return 0.5 * (variance_ratio + mahalanobis - 1 - 2 * (old_log_std - new_log_std)).sum(-1).mean()


def categorical_sample(logits: Tensor) -> Tensor:
    return torch.multinomial(torch.softmax(logits, -1), 1).squeeze(-1)


def categorical_log_prob(logits: Tensor, actions: Tensor) -> Tensor:
    return torch.log_softmax(logits, -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)


def categorical_kl(old_logits: Tensor, new_logits: Tensor) -> Tensor:
    old_log_probs = torch.log_softmax(old_logits, -1)
    return (old_log_probs.exp() * (old_log_probs - torch.log_softmax(new_logits, -1))).sum(-1).mean()


HEADS = [
    Head(
        "gaussian 17->6", 17, 6, GaussianPolicy, DiagonalGaussianFisher, gaussian_sample, gaussian_log_prob, gaussian_kl
    ),
    Head("categorical 4->2", 4, 2, mlp, CategoricalFisher, categorical_sample, categorical_log_prob, categorical_kl),
]


class Workload:
    """A policy at ``θ_old`` with one batch: the surrogate gradient (the unit) and the TRPO closure."""

    def __init__(self, head: Head, batch: int, seed: int) -> None:
        torch.manual_seed(seed)
        self.head = head
        self.policy = head.make_policy(head.obs_dim, head.act_dim)
        self.params = list(self.policy.parameters())
        self.obs = torch.randn(batch, head.obs_dim)
        with torch.no_grad():
            old_outputs = tree_map(lambda t: t.detach().clone(), self.policy(self.obs))
            self.actions = head.sample(old_outputs)
            self.old_log_prob = head.log_prob(old_outputs, self.actions)
        self.old_outputs = old_outputs
        advantages = torch.randn(batch)
        self.advantages = (advantages - advantages.mean()) / advantages.std()

    def surrogate(self, outputs: object) -> Tensor:
        ratio = torch.exp(self.head.log_prob(outputs, self.actions) - self.old_log_prob)
        return -(ratio * self.advantages).mean()

    def gradient(self) -> None:
        """The unit: forward and backward of the surrogate loss."""
        torch.autograd.grad(self.surrogate(self.policy(self.obs)), self.params)

    def closure(self) -> tuple[Tensor, Tensor]:
        outputs = self.policy(self.obs)
        return self.surrogate(outputs), self.head.kl(self.old_outputs, outputs)

    def problem(self, curvature: Curvature) -> StepProblem:
        """The step problem at ``θ_old``, prepared as the optimizer prepares it."""
        loss, constraint = self.closure()
        loss_gradient = torch.autograd.grad(
            loss, self.params, retain_graph=True, create_graph=curvature.needs_loss_graph
        )
        return StepProblem(self.params, loss, constraint, loss_gradient, self.closure)

    def outputs_function(self) -> Callable[..., object]:
        """``outputs(*params)``: the policy's distribution parameters as a pure function."""
        names = [name for name, _ in self.policy.named_parameters()]

        def outputs(*params: Tensor) -> object:
            return torch.func.functional_call(self.policy, dict(zip(names, params, strict=True)), (self.obs,))

        return outputs


# --------------------------------------------------------------------------------------------------------------
# Other ways to form the Gauss-Newton product Jᵀ M J v (for comparison with trustregion.GaussNewton)


def _flat(tensors: object) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _split(vector: Tensor, like: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return tuple(v.view_as(t) for v, t in zip(torch.split(vector, [t.numel() for t in like]), like, strict=True))


class VjpOfVjpGaussNewton(Curvature):
    """``Jᵀu`` by a cached :func:`torch.func.vjp`, ``J v`` by a ``vjp`` of that ``vjp`` (no re-forward)."""

    def __init__(self, outputs: Callable[..., object], fisher: OutputFisher) -> None:
        self.outputs, self.fisher = outputs, fisher

    def build(self, problem: StepProblem) -> LinearOperator:
        primals = tuple(p.detach() for p in problem.params)
        with torch.enable_grad():
            outputs, transpose_product = torch.func.vjp(self.outputs, *primals)
            _, jacobian_product = torch.func.vjp(transpose_product, tree_map(torch.zeros_like, outputs))
        fisher = self.fisher.bind(tree_map(torch.detach, outputs))

        def product(vector: Tensor) -> Tensor:
            (tangent,) = jacobian_product(_split(vector, primals))
            return _flat(transpose_product(fisher(tangent))).detach()

        return LinearOperator(product, vector_dim(primals), positive_semidefinite=True)


class LinearizeGaussNewton(Curvature):
    """``J v`` by :func:`torch.func.linearize` (a traced, cached jvp), ``Jᵀu`` by a cached ``vjp``."""

    def __init__(self, outputs: Callable[..., object], fisher: OutputFisher) -> None:
        self.outputs, self.fisher = outputs, fisher

    def build(self, problem: StepProblem) -> LinearOperator:
        primals = tuple(p.detach() for p in problem.params)
        outputs, jacobian_product = torch.func.linearize(self.outputs, *primals)
        with torch.enable_grad():
            _, transpose_product = torch.func.vjp(self.outputs, *primals)
        fisher = self.fisher.bind(outputs)

        def product(vector: Tensor) -> Tensor:
            return _flat(transpose_product(fisher(jacobian_product(*_split(vector, primals))))).detach()

        return LinearOperator(product, vector_dim(primals), positive_semidefinite=True)


class ForwardModeGaussNewton(Curvature):
    """``J v`` by :func:`torch.func.jvp` (a new forward pass per product), ``Jᵀu`` by a cached ``vjp``."""

    def __init__(self, outputs: Callable[..., object], fisher: OutputFisher) -> None:
        self.outputs, self.fisher = outputs, fisher

    def build(self, problem: StepProblem) -> LinearOperator:
        primals = tuple(p.detach() for p in problem.params)
        with torch.enable_grad():
            outputs, transpose_product = torch.func.vjp(self.outputs, *primals)
        fisher = self.fisher.bind(tree_map(torch.detach, outputs))

        def product(vector: Tensor) -> Tensor:
            _, tangent = torch.func.jvp(self.outputs, primals, _split(vector, primals))
            return _flat(transpose_product(fisher(tangent))).detach()

        return LinearOperator(product, vector_dim(primals), positive_semidefinite=True)


class HandWrittenGaussNewton(Curvature):
    """The same ``Jᵀ M J v`` written out for this tanh MLP: a floor for the automatic ways, not a general method.

    ``J v`` runs forward through the layers with one fused matrix product per layer
    (``[t, h] [W, v_W]ᵀ``), the tanh slopes ``1 - h²`` computed once at build;
    ``Jᵀ`` is the usual backward pass.
    """

    def __init__(self, workload: Workload, fisher: OutputFisher) -> None:
        self.workload, self.fisher = workload, fisher

    def build(self, problem: StepProblem) -> LinearOperator:
        policy = self.workload.policy
        log_std = policy.log_std if isinstance(policy, GaussianPolicy) else None
        linears = [m for m in (policy.mean if log_std is not None else policy) if isinstance(m, nn.Linear)]
        with torch.no_grad():
            inputs, slopes = [self.workload.obs], []
            for linear in linears[:-1]:
                hidden = torch.tanh(linear(inputs[-1]))
                inputs.append(hidden)
                slopes.append(1 - hidden * hidden)
            last = linears[-1](inputs[-1])
            fisher = self.fisher.bind(last if log_std is None else (last, log_std.detach()))
        position = {id(p): i for i, p in enumerate(problem.params)}
        params = tuple(p.detach() for p in problem.params)

        def part(parts: tuple[Tensor, ...], tensor: Tensor) -> Tensor:
            return parts[position[id(tensor)]]

        def product(vector: Tensor) -> Tensor:
            parts = _split(vector, params)
            tangent = torch.addmm(part(parts, linears[0].bias), inputs[0], part(parts, linears[0].weight).t())
            for k, linear in enumerate(linears):
                if k:
                    stacked = torch.cat([linear.weight.detach(), part(parts, linear.weight)], 1)
                    tangent = torch.addmm(part(parts, linear.bias), torch.cat([tangent, inputs[k]], 1), stacked.t())
                if k < len(slopes):
                    tangent.mul_(slopes[k])
            if log_std is None:
                cotangent = fisher(tangent)
            else:
                cotangent, log_std_cotangent = fisher((tangent, part(parts, log_std)))
            grads: list[Tensor] = [torch.empty(0)] * len(params)
            if log_std is not None:
                grads[position[id(log_std)]] = log_std_cotangent
            for k in reversed(range(len(linears))):
                grads[position[id(linears[k].weight)]] = cotangent.t() @ inputs[k]
                grads[position[id(linears[k].bias)]] = cotangent.sum(0)
                if k:
                    cotangent = (cotangent @ linears[k].weight.detach()).mul_(slopes[k - 1])
            return _flat(grads)

        return LinearOperator(product, vector_dim(params), positive_semidefinite=True)


def vector_dim(tensors: tuple[Tensor, ...]) -> int:
    return sum(t.numel() for t in tensors)


def operators(workload: Workload) -> dict[str, Curvature]:
    """The operators to measure, by the name printed in the table."""
    fisher = workload.head.fisher
    outputs = workload.outputs_function()
    return {
        "KLHessian (double backward of the mean KL)": KLHessian(),
        "Hessian (surrogate loss, double backward)": Hessian(),
        "GaussNewton (library, layer-wise)": GaussNewton.for_module(workload.policy, workload.obs, fisher()),
        "GaussNewton (library, autograd graphs)": GaussNewton.for_module(
            workload.policy, workload.obs, fisher(), layerwise=False
        ),
        "Damped(GaussNewton layer-wise, 0.1)": Damped(
            GaussNewton.for_module(workload.policy, workload.obs, fisher()), 0.1
        ),
        "alt: torch.func vjp + vjp-of-vjp": VjpOfVjpGaussNewton(outputs, fisher()),
        "alt: torch.func linearize + vjp": LinearizeGaussNewton(outputs, fisher()),
        "alt: torch.func jvp (re-forward) + vjp": ForwardModeGaussNewton(outputs, fisher()),
        "ref: hand-written for this MLP": HandWrittenGaussNewton(workload, fisher()),
    }


# --------------------------------------------------------------------------------------------------------------
# Measurement


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
"""``wall``: elapsed time. ``cpu``: CPU time of the process (all its threads), which a busy machine
inflates much less than elapsed time; meaningful with ``--threads 1`` (idle threads spinning count too)."""
clock = CLOCKS["wall"]


def seconds(function: Callable[[], object]) -> float:
    start = clock()
    function()
    return clock() - start


def paired_ratios(
    unit: Callable[[], object], measured: Callable[[], float], rounds: int
) -> tuple[list[float], list[float]]:
    """``rounds`` pairs (unit time, measured time) taken back to back; ``measured`` returns its own time."""
    unit_times, ratios = [], []
    for _ in range(rounds):
        unit_time = seconds(unit)
        unit_times.append(unit_time)
        ratios.append(measured() / unit_time)
    return unit_times, ratios


def peak_allocated_bytes(function: Callable[[], object]) -> float:
    """Peak of the bytes allocated (minus freed) by PyTorch's CPU allocator while ``function`` runs."""
    from torch._C._profiler import _EventType

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profiler:
        function()
    events: list[tuple[int, int]] = []
    pending = list(profiler.profiler.kineto_results.experimental_event_tree())
    while pending:
        node = pending.pop()
        if node.tag == _EventType.Allocation:
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        pending.extend(node.children)
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return float(peak)


@dataclass
class Row:
    head: str
    batch: int
    operator: str
    product_ms: float = math.nan
    product: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    build: float = math.nan
    step: float = math.nan
    step_products: int = 0
    peak_mib: float = math.nan
    gradient_ms: float = math.nan

    @property
    def build_and_products(self) -> float:
        return self.build + CG_ITERATIONS * self.product[1]


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    low, median, high = statistics.quantiles(values, n=4, method="inclusive")
    return low, median, high


def product_timings(
    workload: Workload, curvature: Curvature, repeats: int, warmup: int
) -> tuple[float, float, list[float]]:
    """Median product and gradient times and the paired product / gradient ratios (only this operator alive)."""
    vector = torch.randn(vector_dim(tuple(workload.params)))
    operator = curvature.build(workload.problem(curvature))
    for _ in range(warmup):
        workload.gradient()
        operator(vector)
    unit_times, ratios = paired_ratios(workload.gradient, lambda: seconds(lambda: operator(vector)), repeats)
    product_times = [ratio * unit for ratio, unit in zip(ratios, unit_times, strict=True)]
    return statistics.median(product_times), statistics.median(unit_times), ratios


def check_agreement(workload: Workload, curvatures: dict[str, Curvature]) -> float:
    """Largest relative difference between each Fisher-type product and ``KLHessian``'s; raises above 1e-3."""
    vector = torch.randn(vector_dim(tuple(workload.params)))
    reference = KLHessian().build(workload.problem(KLHessian()))(vector)
    worst = 0.0
    for name, curvature in curvatures.items():
        if isinstance(curvature, Hessian):  # a different matrix: the Hessian of the surrogate
            continue
        product = curvature.build(workload.problem(curvature))(vector)
        if isinstance(curvature, Damped):
            product = product - curvature.damping * vector
        difference = (torch.linalg.vector_norm(product - reference) / torch.linalg.vector_norm(reference)).item()
        if not difference <= 1e-3:
            raise RuntimeError(f"{name}: product differs from the KL Hessian's by {difference:.2e} (relative)")
        worst = max(worst, difference)
    return worst


def measure_operator(workload: Workload, name: str, curvature: Curvature, repeats: int, warmup: int) -> Row:
    product_time, unit_time, product_ratios = product_timings(workload, curvature, repeats, warmup)

    def timed_build() -> float:
        problem = workload.problem(curvature)
        return seconds(lambda: curvature.build(problem))

    timed_build()
    build_rounds = max(1, repeats // 2)
    _, build_ratios = paired_ratios(workload.gradient, timed_build, build_rounds)

    optimizer = TrustRegionOptimizer(
        workload.params,
        max_kl=0.01,
        curvature=curvature,
        solver=ConjugateGradient(max_iter=CG_ITERATIONS, tol=0.0),
        line_search=NoLineSearch(),
    )
    saved = [p.detach().clone() for p in workload.params]

    def timed_step() -> float:
        elapsed = seconds(lambda: optimizer.step(workload.closure))
        with torch.no_grad():
            for p, s in zip(workload.params, saved, strict=True):
                p.copy_(s)
        return elapsed

    timed_step()
    _, step_ratios = paired_ratios(workload.gradient, timed_step, build_rounds)
    products = optimizer.last_result.curvature_products if optimizer.last_result else 0
    peak = peak_allocated_bytes(timed_step)
    return Row(
        workload.head.name,
        len(workload.obs),
        name,
        product_ms=1e3 * product_time,
        gradient_ms=1e3 * unit_time,
        product=quartiles(product_ratios),
        build=statistics.median(build_ratios),
        step=statistics.median(step_ratios),
        step_products=products,
        peak_mib=peak / MIB,
    )


def measure_unit(workload: Workload, repeats: int, warmup: int) -> Row:
    for _ in range(warmup):
        workload.gradient()
    times = [seconds(workload.gradient) for _ in range(repeats)]
    milliseconds = 1e3 * statistics.median(times)
    row = Row(workload.head.name, len(workload.obs), "gradient (the unit)", milliseconds, (1.0, 1.0, 1.0))
    row.gradient_ms = milliseconds
    row.peak_mib = peak_allocated_bytes(workload.gradient) / MIB
    return row


# --------------------------------------------------------------------------------------------------------------
# Report


COLUMNS = [
    "head",
    "batch",
    "operator",
    "ms (paired grad ms)",
    "product / grad (quartiles)",
    "build / grad",
    "build + 10 products",
    "optimizer step (products)",
    "peak MiB",
]


def cells(row: Row) -> list[str]:
    unit = row.operator.startswith("gradient")
    low, median, high = row.product
    return [
        row.head,
        str(row.batch),
        row.operator,
        f"{row.product_ms:.2f}" if unit else f"{row.product_ms:.2f} ({row.gradient_ms:.2f})",
        "1" if unit else f"{median:.2f} ({low:.2f}-{high:.2f})",
        "" if unit else f"{row.build:.2f}",
        "" if unit else f"{row.build_and_products:.1f}",
        "" if unit else f"{row.step:.1f} ({row.step_products})",
        f"{row.peak_mib:.1f}",
    ]


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in rows]
    return "\n".join(lines)


def machine_description(threads: int, clock_name: str) -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"torch {torch.__version__}, {model}, {os.cpu_count()} logical CPUs, "
        f"torch.set_num_threads({threads}), float32, {clock_name} clock, Python {platform.python_version()}"
    )


def load_average() -> str:
    try:
        return "load average (1, 5, 15 min): " + ", ".join(f"{load:.2f}" for load in os.getloadavg())
    except OSError:
        return "load average: unavailable"


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[2048, 20000], help="batch sizes")
    parser.add_argument("--repeats", type=int, default=21, help="timed rounds per product (builds/steps: half)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds before timing")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="wall, or cpu (with --threads 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="batch 64, 2 rounds: checks that everything runs")
    arguments = parser.parse_args()
    if arguments.smoke:
        arguments.batches, arguments.repeats, arguments.warmup = [64], 2, 1
    if min(arguments.batches) < 1 or arguments.repeats < 1 or arguments.threads < 1:
        parser.error("--batches, --repeats and --threads must be positive")
    return arguments


def main() -> None:
    arguments = parse_arguments()
    warnings.filterwarnings("ignore", category=UserWarning, module="torch.fx")  # from torch.func.linearize
    global clock
    clock = CLOCKS[arguments.clock]
    torch.set_num_threads(arguments.threads)
    torch.set_default_dtype(torch.float32)
    print(machine_description(arguments.threads, arguments.clock), flush=True)
    print(load_average(), flush=True)
    rows = []
    for batch in arguments.batches:
        for head in HEADS:
            workload = Workload(head, batch, arguments.seed)
            curvatures = operators(workload)
            difference = check_agreement(workload, curvatures)
            print(f"{head.name}, batch {batch}: products agree with KLHessian to {difference:.1e} (relative)")
            rows.append(measure_unit(workload, arguments.repeats, arguments.warmup))
            for name, curvature in curvatures.items():
                rows.append(measure_operator(workload, name, curvature, arguments.repeats, arguments.warmup))
                print(markdown_table(rows[-1:]).splitlines()[-1], flush=True)
    print(load_average())
    print()
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
