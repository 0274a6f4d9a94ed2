"""A natural-gradient MLP classifier with a KL trust region, compared with Adam.

Data: three interleaved spirals in the plane (600 points). Model: a 2-32-32-3 tanh MLP.

The natural-gradient step uses the Fisher of the model's softmax outputs,
``F = (1/N) Σ J_iᵀ (diag(p_i) - p_i p_iᵀ) J_i`` (``GaussNewton`` with ``CategoricalFisher``,
lightly damped), and limits the mean KL between the predictive distributions before and
after the step: ``max_kl = δ``, as a TRPO step limits a policy. The closure returns the
cross-entropy and ``KL(p_old || p_new)``; the backtracking line search checks the real KL.

Adam runs on the same data, full batch, for a small sweep of learning rates. Both report
the steps and the wall time to reach the target training accuracy (default 99%).
Timings are single-threaded, on this machine, for this tiny model; they are indicative,
not a benchmark.

Run: ``python examples/natural_gradient_classifier.py`` (``--seeds 5`` for more runs).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trustregion import CategoricalFisher, ConjugateGradient, Damped, GaussNewton, TrustRegionOptimizer


def spirals(points_per_class: int = 200, classes: int = 3, noise: float = 0.2, seed: int = 0):
    """``classes`` spiral arms of ``points_per_class`` points each, 4 radians per arm."""
    generator = torch.Generator().manual_seed(seed)
    inputs, labels = [], []
    for label in range(classes):
        radius = torch.linspace(0.1, 1.0, points_per_class)
        angle = torch.linspace(4.0 * label, 4.0 * (label + 1), points_per_class)
        angle = angle + noise * torch.randn(points_per_class, generator=generator)
        inputs.append(torch.stack([radius * torch.sin(angle), radius * torch.cos(angle)], dim=1))
        labels.append(torch.full((points_per_class,), label))
    return torch.cat(inputs), torch.cat(labels)


def make_model(seed: int, hidden: int = 32) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 3)
        )


def accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(inputs).argmax(dim=1) == labels).double().mean().item()


@dataclass
class Race:
    """Steps and seconds to the target accuracy (``None`` if not reached within the budget)."""

    method: str
    steps: int | None
    seconds: float
    final_accuracy: float


class KLClosure:
    """Cross-entropy and the mean ``KL(p_old || p)``; ``p_old`` is frozen at the first call of each step."""

    def __init__(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        self.model, self.inputs, self.labels = model, inputs, labels
        self.old_log_probs: torch.Tensor | None = None

    def new_step(self) -> None:
        self.old_log_probs = None

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(self.inputs)
        log_probs = torch.log_softmax(logits, dim=-1)
        if self.old_log_probs is None:
            self.old_log_probs = log_probs.detach()
        kl = (self.old_log_probs.exp() * (self.old_log_probs - log_probs)).sum(-1).mean()
        return F.cross_entropy(logits, self.labels), kl


def race(method: str, step: Callable[[], None], model: nn.Module, data, target: float, budget: int) -> Race:
    inputs, labels = data
    start = time.perf_counter()
    for count in range(1, budget + 1):
        step()
        if accuracy(model, inputs, labels) >= target:
            return Race(method, count, time.perf_counter() - start, accuracy(model, inputs, labels))
    return Race(method, None, time.perf_counter() - start, accuracy(model, inputs, labels))


def natural_gradient(seed: int, data, target: float, max_kl: float = 0.1, damping: float = 1e-3) -> Race:
    inputs, labels = data
    model = make_model(seed)
    fisher = Damped(GaussNewton.for_module(model, inputs, CategoricalFisher()), damping)
    opt = TrustRegionOptimizer(model.parameters(), max_kl, curvature=fisher, solver=ConjugateGradient(max_iter=10))
    closure = KLClosure(model, inputs, labels)

    def step() -> None:
        closure.new_step()
        opt.step(closure)

    return race(f"natural gradient (δ={max_kl})", step, model, data, target, budget=200)


def adam(seed: int, data, target: float, lr: float) -> Race:
    inputs, labels = data
    model = make_model(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(model(inputs), labels).backward()
        opt.step()

    return race(f"Adam (lr={lr:g})", step, model, data, target, budget=2000)


def main(argv: list[str] | None = None) -> list[list[Race]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.99, help="training accuracy to reach (default 0.99)")
    parser.add_argument("--seeds", type=int, default=1, help="number of initialisations (default 1)")
    parser.add_argument("--max-kl", type=float, default=0.1, help="KL trust region δ (default 0.1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = spirals()
    runs = []
    print(f"three spirals, {len(data[1])} points, 2-32-32-3 tanh MLP, target accuracy {args.target:.0%}\n")
    print(f"{'seed':>4} {'method':>28} {'steps':>6} {'seconds':>8} {'accuracy':>9}")
    for seed in range(args.seeds):
        results = [natural_gradient(seed, data, args.target, args.max_kl)]
        results += [adam(seed, data, args.target, lr) for lr in (0.01, 0.03, 0.1)]
        for r in results:
            steps = str(r.steps) if r.steps is not None else "-"
            print(f"{seed:4d} {r.method:>28} {steps:>6} {r.seconds:8.3f} {r.final_accuracy:9.3f}")
        runs.append(results)
    best_adam = [min((r for r in rs[1:] if r.steps), key=lambda r: r.steps, default=None) for rs in runs]
    pairs = [(rs[0], a) for rs, a in zip(runs, best_adam, strict=True) if a and rs[0].steps]
    if pairs:
        steps = _geometric_mean([ng.steps / a.steps for ng, a in pairs])
        seconds = _geometric_mean([ng.seconds / a.seconds for ng, a in pairs])
        print(f"\nnatural gradient / fastest Adam (geometric mean): steps x{steps:.2f}, seconds x{seconds:.2f}")
    return runs


def _geometric_mean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


if __name__ == "__main__":
    main()
