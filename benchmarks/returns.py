"""Final returns over seeds, resumable: ours (and sb3-contrib's TRPO when asked) on standard tasks.

Every (implementation, environment, seed) writes ``<results>/<impl>__<env>__<seed>.json`` with a
deterministic 10-episode evaluation at the end of training, and its learning curve to
``<results>/curves/<impl>__<env>__<seed>.csv``; an existing JSON is skipped, so an interrupted
sweep continues where it stopped. A table against the targets (``<results>/summary.txt``) and a
plot per environment (``docs/img/returns/<env>.png``, embedded in docs/benchmarks.md) are written
after every run.

    python benchmarks/returns.py --envs CartPole-v1 --seeds 0 1 2
    python benchmarks/returns.py --envs Hopper-v5 --seeds 0 --impl ours sb3
    python benchmarks/returns.py --smoke     # CI: two tiny CartPole runs in a temporary folder

Ours uses its per-environment defaults (docs/agents.md); sb3-contrib uses RL-Zoo's TRPO
hyperparameters for the environment, as in benchmarks/throughput.py. Both run on one thread, and
the learning curves' time axis is CPU seconds, so several sweeps can share a machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rl_zoo import rl_zoo_trpo

from agents import TRPO
from agents.common.checkpoint import atomic_write_text
from agents.common.cli import default_total_steps

HERE = Path(__file__).resolve().parent
EVAL_EPISODES = 10
TARGETS = {"CartPole-v1": 475.0, "Pendulum-v1": -200.0, "Hopper-v5": 3400.0, "HalfCheetah-v5": 2000.0}
"""Final deterministic-evaluation targets (the TRPO agent issue's acceptance numbers)."""
THRESHOLDS = {
    "CartPole-v1": 400.0,
    "Pendulum-v1": -400.0,
    "Hopper-v5": 2000.0,
    "HalfCheetah-v5": 1500.0,
    "Walker2d-v5": 2000.0,
}
"""Training-return levels for "time to threshold": the first point where the mean return of the
last 100 training episodes reaches the level, in environment steps and in training seconds. Each
level is well below the final returns and reached by typical runs of both implementations within
the budget, so the time to it compares how fast they learn, not whether they finish."""

Curve = list[tuple[int, float, float]]
"""Learning-curve points ``(environment steps, training seconds so far, mean training return)``.

Training seconds are the process's CPU time (``time.process_time``). Runs are single-threaded
(``OMP_NUM_THREADS=1``, and our ``torch_threads=1``), so on an idle core this is the wall-clock
time, and it stays comparable when several runs share the machine."""


def result_name(implementation: str, env: str, seed: int) -> str:
    return f"{implementation}__{env.replace('/', '_')}__{seed}"


def run_ours(env: str, seed: int, total_steps: int, overrides: dict[str, Any]) -> tuple[dict[str, Any], Curve]:
    agent = TRPO(env, seed=seed, **overrides)
    curve: Curve = []
    start, cpu_start = time.perf_counter(), time.process_time()
    while agent.global_step < total_steps:
        metrics = agent.train_iteration()
        curve.append((agent.global_step, time.process_time() - cpu_start, metrics["mean_return"]))
    seconds = time.perf_counter() - start
    evaluation = agent.evaluate(EVAL_EPISODES)
    agent.close()
    record = {
        "steps": agent.global_step,
        "train_seconds": seconds,
        "train_cpu_seconds": curve[-1][1] if curve else 0.0,
        "steps_per_second": agent.global_step / seconds,
        "final_train_mean_return": curve[-1][2] if curve else math.nan,
        "eval_mean_return": evaluation["mean_return"],
        "eval_std_return": evaluation["std_return"],
        "eval_returns": evaluation["returns"],
        "config": agent.config.to_dict(),
    }
    return record, curve


def run_sb3(env: str, seed: int, total_steps: int, overrides: dict[str, Any]) -> tuple[dict[str, Any], Curve]:
    from sb3_contrib import TRPO as SB3TRPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecNormalize

    settings = {**rl_zoo_trpo(env), **overrides}
    n_envs, normalize = settings.pop("n_envs"), settings.pop("normalize")
    train_env = make_vec_env(env, n_envs=n_envs, seed=seed)
    if normalize:
        train_env = VecNormalize(train_env, gamma=settings.get("gamma", 0.99))
    curve: Curve = []

    class RecordCurve(BaseCallback):
        def _on_training_start(self) -> None:
            self.cpu_start = time.process_time()

        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            returns = [info["r"] for info in self.model.ep_info_buffer]
            mean_return = float(np.mean(returns)) if returns else math.nan
            curve.append((self.model.num_timesteps, time.process_time() - self.cpu_start, mean_return))

    model = SB3TRPO("MlpPolicy", train_env, seed=seed, device="cpu", verbose=0, **settings)
    start = time.perf_counter()
    model.learn(total_steps, callback=RecordCurve())
    seconds = time.perf_counter() - start
    eval_env = make_vec_env(env, n_envs=1, seed=seed + 10_000)
    if normalize:
        eval_env = VecNormalize(eval_env, training=False, norm_reward=False)
        eval_env.obs_rms = train_env.obs_rms
    returns, _ = evaluate_policy(
        model, eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True, return_episode_rewards=True
    )
    record = {
        "steps": model.num_timesteps,
        "train_seconds": seconds,
        "train_cpu_seconds": curve[-1][1] if curve else 0.0,
        "steps_per_second": model.num_timesteps / seconds,
        "final_train_mean_return": curve[-1][2] if curve else math.nan,
        "eval_mean_return": float(np.mean(returns)),
        "eval_std_return": float(np.std(returns)),
        "eval_returns": [float(r) for r in returns],
        "config": {"n_envs": n_envs, "normalize": normalize, **settings},
    }
    return record, curve


RUNNERS = {"ours": run_ours, "sb3": run_sb3}


def run_one(
    results: Path, implementation: str, env: str, seed: int, total_steps: int, overrides: dict[str, Any], tag: str
) -> None:
    label = f"{implementation}-{tag}" if tag else implementation
    name = result_name(label, env, seed)
    path = results / f"{name}.json"
    if path.exists():
        print(f"skip {name}: {path.name} exists", flush=True)
        return
    print(f"run  {name}: {total_steps} steps", flush=True)
    record, curve = RUNNERS[implementation](env, seed, total_steps, overrides)
    record = {"implementation": label, "env": env, "seed": seed, "total_steps": total_steps, **record}
    (results / "curves").mkdir(parents=True, exist_ok=True)
    lines = ["global_step,seconds,mean_return"] + [f"{step},{seconds!r},{value!r}" for step, seconds, value in curve]
    atomic_write_text(results / "curves" / f"{name}.csv", "\n".join(lines) + "\n")
    atomic_write_text(path, json.dumps(record, indent=2))
    print(
        f"done {name}: eval {record['eval_mean_return']:.1f} +- {record['eval_std_return']:.1f}, "
        f"{record['steps_per_second']:.0f} steps/s",
        flush=True,
    )


def load_results(results: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(results.glob("*__*__*.json"))]


def read_curve(path: Path) -> np.ndarray:
    """A curve CSV as an array of rows ``(steps, seconds, mean return)``."""
    return np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)


def first_crossing(curve: np.ndarray, threshold: float) -> tuple[float, float]:
    """Steps and seconds at the first point whose training return reaches ``threshold`` (NaN if none)."""
    reached = np.flatnonzero(curve[:, 2] >= threshold)
    return (curve[reached[0], 0], curve[reached[0], 1]) if reached.size else (math.nan, math.nan)


def mean_and_spread(curves: list[np.ndarray], column: int, points: int = 200) -> tuple[np.ndarray, ...]:
    """Mean, minimum and maximum across seeds of the return against ``column`` (0 steps, 1 seconds)."""
    end = min(curve[-1, column] for curve in curves)
    grid = np.linspace(max(curve[0, column] for curve in curves), end, points)
    values = np.array([np.interp(grid, curve[:, column], curve[:, 2]) for curve in curves])
    return grid, values.mean(axis=0), values.min(axis=0), values.max(axis=0)


def plot_environment(env: str, curves: dict[str, list[np.ndarray]], png_path: Path) -> None:
    """Training return against environment steps and against training seconds, mean and range over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for implementation, seeds in sorted(curves.items()):
        seeds = [curve[np.isfinite(curve[:, 2])] for curve in seeds]
        seeds = [curve for curve in seeds if len(curve) > 1]
        if not seeds:
            continue
        for axis, column in zip(axes, (0, 1), strict=True):
            grid, mean, low, high = mean_and_spread(seeds, column)
            (line,) = axis.plot(grid, mean, label=f"{implementation} ({len(seeds)} seeds)")
            axis.fill_between(grid, low, high, color=line.get_color(), alpha=0.2)
    for axis, label in zip(axes, ("environment steps", "training CPU seconds (one thread)"), strict=True):
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("training return (mean of the last 100 episodes)")
    axes[0].legend(loc="lower right", fontsize="small")
    figure.suptitle(f"TRPO {env}: mean over seeds, shaded from the worst to the best seed")
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)


def summarise(results: Path, plot_dir: Path | None = None) -> str:
    """Write ``summary.txt`` and one PNG per environment (into ``plot_dir``, default ``results``); return the table."""
    plot_dir = plot_dir or results
    plot_dir.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for record in load_results(results):
        groups.setdefault((record["env"], record["implementation"], record["total_steps"]), []).append(record)
    header = (
        f"{'env':15s} {'impl':18s} {'steps':>8s} {'seeds':>5s} {'eval mean ± std':>17s} {'target':>7s} "
        f"{'steps/cpu-s':>11s} {'threshold':>9s} {'reached':>7s} {'at steps':>9s} {'at s':>6s}  eval per seed"
    )
    lines, plots = [header], {}
    for (env, implementation, steps), group in sorted(groups.items()):
        group.sort(key=lambda r: r["seed"])
        evaluations = [r["eval_mean_return"] for r in group]
        spread = statistics.stdev(evaluations) if len(evaluations) > 1 else 0.0
        curves = [read_curve(results / "curves" / f"{result_name(implementation, env, r['seed'])}.csv") for r in group]
        plots.setdefault(env, {})[implementation] = curves
        threshold = THRESHOLDS.get(env, math.nan)
        crossings = np.array([first_crossing(curve, threshold) for curve in curves])
        reached = np.isfinite(crossings[:, 0])
        at_steps, at_seconds = crossings[reached].mean(axis=0) if reached.any() else (math.nan, math.nan)
        target = TARGETS.get(env)
        cpu_rate = statistics.mean(r["steps"] / r["train_cpu_seconds"] for r in group)
        lines.append(
            f"{env:15s} {implementation:18s} {steps:8d} {len(group):5d} "
            f"{statistics.mean(evaluations):8.1f} ± {spread:6.1f} {'' if target is None else f'{target:.0f}':>7s} "
            f"{cpu_rate:11.0f} {threshold:9.0f} "
            f"{reached.sum():3d}/{len(group):<3d} {at_steps:9.0f} {at_seconds:6.0f}  "
            + ", ".join(f"{r['eval_mean_return']:.1f}" for r in group)
        )
    for env, curves in plots.items():
        plot_environment(env, curves, plot_dir / f"{env.replace('/', '_')}.png")
    table = "\n".join(lines)
    atomic_write_text(results / "summary.txt", table + "\n")
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", default=["CartPole-v1"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="default: 100k classic control, 1M MuJoCo")
    parser.add_argument("--impl", nargs="+", default=["ours"], choices=list(RUNNERS))
    parser.add_argument(
        "--results", type=Path, default=None, help="default: benchmarks/results; with --smoke a temporary folder"
    )
    parser.add_argument(
        "--plots", type=Path, default=None, help="PNG folder (default: docs/img/returns; <results> with --smoke)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="two tiny CartPole runs into <results>/tmp (no --results: deleted after)"
    )
    parser.add_argument(
        "--set", nargs="+", default=[], metavar="NAME=VALUE", help="hyperparameter overrides (JSON values)"
    )
    parser.add_argument("--tag", default="", help="suffix for the implementation name of overridden runs")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as cleanup:
        if args.smoke and args.results is None:  # a smoke run leaves nothing behind
            args.results = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="returns-smoke-")))
        run(parser, args)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)  # both implementations single-threaded: CPU seconds comparable
    args.results = args.results or HERE / "results"
    if args.smoke:
        args.envs, args.seeds, args.steps, args.results = ["CartPole-v1"], [0, 1], 2048, args.results / "tmp"
        args.plots = args.plots or args.results
    args.plots = args.plots or HERE.parent / "docs" / "img" / "returns"
    if "sb3" in args.impl:
        try:
            import sb3_contrib  # noqa: F401
        except ImportError:
            print("sb3-contrib is not installed: running ours only", file=sys.stderr)
            args.impl = [impl for impl in args.impl if impl != "sb3"]
    overrides = {name: json.loads(value) for name, value in (item.split("=", 1) for item in args.set)}
    if overrides and not args.tag:
        parser.error("--set needs --tag, so that overridden runs do not mix with the defaults' results")
    args.results.mkdir(parents=True, exist_ok=True)
    for env in args.envs:
        steps = args.steps or default_total_steps(env)
        for seed in args.seeds:
            for implementation in args.impl:
                run_one(args.results, implementation, env, seed, steps, overrides, args.tag)
                summarise(args.results, args.plots)
    print(summarise(args.results, args.plots))


if __name__ == "__main__":
    main()
