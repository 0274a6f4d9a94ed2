"""Users' own environments: action masks on Taxi, the CNN on MinAtar, Dict observations and instances on CartPole.

Every (part, arm, seed) run writes ``<results>/<part>__<arm>__<seed>.json``: its learning curve
(``agent.history``'s ``global_step`` and ``mean_return``, the mean of the last 100 training
episodes), a final evaluation and its timing. An existing JSON is skipped, so a sweep split over
several processes (``--arms``, ``--seeds``) or interrupted continues where it stopped; ``report``
prints the tables and draws the plots from the results alone.

* ``taxi``: Taxi-v4 with the action masks its ``info`` carries, and without them (a wrapper,
  passed in ``wrappers=``, drops ``info["action_mask"]``): same hyperparameters, same budget;
  the final evaluation is deterministic, in each arm's own environment;
* ``minatar``: a MinAtar game (10×10 boolean grids, so the agent's small CNN) against a uniformly
  random policy on the same environment; steps/s is the training's wall-clock rate;
* ``cartpole``: CartPole-v1 as an id and behind a wrapper that makes its observation a ``Dict``
  (two sub-environments each), and as a ``gym.make`` instance against the id with one sub-environment.

    python benchmarks/user_envs.py taxi                 # 2 arms x 3 seeds x 300k steps
    python benchmarks/user_envs.py minatar              # 3 seeds x 300k steps, and the random policy
    python benchmarks/user_envs.py cartpole             # 4 arms x 3 seeds x 100k steps
    python benchmarks/user_envs.py report               # every table; docs/img/taxi_masks.png, minatar_curve.png
    python benchmarks/user_envs.py --smoke              # CI: every part, tiny, in a temporary folder

MinAtar is an optional dependency: ``pip install minatar==1.0.15``; without it the smoke run skips that part.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from agents import TRPO
from agents.common.checkpoint import atomic_write_text

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "user_envs"
IMAGES = HERE.parent / "docs" / "img"
TAXI_ID = "Taxi-v4"
TAXI_HYPERPARAMETERS = {"num_envs": 8, "n_steps": 256, "max_kl": 0.03}
"""Taxi, both arms: 8 sub-environments × 256 steps, δ = 0.03; the rest are the agent's defaults."""
MINATAR_GAME = "Breakout"
MINATAR_MAX_STEPS = 10_000
"""A time limit on MinAtar episodes (the games have none), so no evaluation can run forever."""
MINATAR_HYPERPARAMETERS = {"num_envs": 16, "n_steps": 128, "fisher_fraction": 0.25}
"""MinAtar: 16 sub-environments × 128 steps, the Fisher on a quarter of the batch (the CNN's
curvature products go through autograd); the rest are the agent's defaults."""
RANDOM_EPISODES = 50
CARTPOLE_ID = "CartPole-v1"
CARTPOLE_HYPERPARAMETERS = {"n_steps": 512, "vectorization_mode": "sync"}
"""CartPole, every arm: 512-step rollouts of gymnasium's sync vector environment (an instance and
wrappers need it), two sub-environments unless the arm has one; the rest CartPole's defaults."""


class DropActionMask(gym.Wrapper):
    """Removes ``info["action_mask"]``, so the agent sees an environment without action masks."""

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        return obs, _without_mask(info)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, _without_mask(info)


def _without_mask(info: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in info.items() if key != "action_mask"}


class CartPoleDict(gym.ObservationWrapper):
    """CartPole's observation as ``{"position": (x, θ), "velocity": (ẋ, θ̇)}``: a ``Dict`` the agent flattens."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        low, high = env.observation_space.low, env.observation_space.high
        self.observation_space = spaces.Dict(
            {
                "position": spaces.Box(low[[0, 2]], high[[0, 2]], dtype=np.float32),
                "velocity": spaces.Box(low[[1, 3]], high[[1, 3]], dtype=np.float32),
            }
        )

    def observation(self, observation: np.ndarray) -> dict[str, np.ndarray]:
        return {"position": observation[[0, 2]], "velocity": observation[[1, 3]]}


def minatar_id(game: str) -> str:
    """The registered id of a MinAtar game (minimal action set), registering MinAtar's ids first."""
    from minatar.gym import register_envs

    env_id = f"MinAtar/{game}-v1"
    if env_id not in gym.registry:
        register_envs()
    return env_id


def taxi_agent(arm: str, seed: int, smoke: bool) -> TRPO:
    """Taxi-v4 with (``masks``) or without (``no-masks``) the action masks of its ``info``."""
    wrappers = [] if arm == "masks" else [DropActionMask]
    sizes = {"num_envs": 2, "n_steps": 64} if smoke else {}
    return TRPO(TAXI_ID, seed=seed, wrappers=wrappers, **{**TAXI_HYPERPARAMETERS, **sizes})


def minatar_agent(arm: str, seed: int, smoke: bool) -> TRPO:
    """TRPO with the agent's CNN on the MinAtar game ``arm``."""
    sizes = {"num_envs": 2, "n_steps": 32} if smoke else {}
    env_kwargs = {"max_episode_steps": MINATAR_MAX_STEPS}
    return TRPO(minatar_id(arm), seed=seed, env_kwargs=env_kwargs, **{**MINATAR_HYPERPARAMETERS, **sizes})


def cartpole_agent(arm: str, seed: int, smoke: bool) -> TRPO:
    """CartPole-v1 as an id (``id``, ``id-1env``), a ``Dict`` observation (``dict``) or an instance (``instance``)."""
    settings = {**CARTPOLE_HYPERPARAMETERS, **({"n_steps": 64} if smoke else {})}
    if arm == "instance":
        return TRPO(gym.make(CARTPOLE_ID), seed=seed, num_envs=1, **settings)
    if arm == "id-1env":
        return TRPO(CARTPOLE_ID, seed=seed, num_envs=1, **settings)
    return TRPO(CARTPOLE_ID, seed=seed, num_envs=2, wrappers=[CartPoleDict] if arm == "dict" else [], **settings)


@dataclass(frozen=True)
class Part:
    """One measurement: its arms, how an arm's agent is built, the budget and the evaluation episodes."""

    arms: tuple[str, ...]
    build: Callable[[str, int, bool], TRPO]
    steps: int
    eval_episodes: int
    smoke_steps: int


PARTS = {
    "taxi": Part(("masks", "no-masks"), taxi_agent, 300_000, 50, 256),
    "minatar": Part((MINATAR_GAME,), minatar_agent, 300_000, 20, 128),
    "cartpole": Part(("id", "dict", "id-1env", "instance"), cartpole_agent, 100_000, 10, 128),
}
EVAL_ENVS: dict[str, Callable[[], gym.Env]] = {"instance": lambda: gym.make(CARTPOLE_ID)}
"""Evaluation environments given to ``evaluate(env=...)``: an agent trained on an instance evaluates
one episode per copy of it, and copies one only (``evaluate(n)`` with ``n > 1`` is refused)."""
ARM_LABELS = {
    "masks": "with action masks",
    "no-masks": "without (info mask dropped)",
    "id": "id, 2 envs",
    "dict": "Dict observation, 2 envs",
    "id-1env": "id, 1 env",
    "instance": "gym.make instance, 1 env",
}


def train(part: str, arm: str, seed: int, smoke: bool) -> dict[str, Any]:
    """Train one arm for the part's budget and evaluate it; the record a result JSON holds."""
    spec = PARTS[part]
    agent = spec.build(arm, seed, smoke)
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        agent.learn(spec.smoke_steps if smoke else spec.steps)
        seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
        episodes = 2 if smoke else spec.eval_episodes
        record = {
            "part": part,
            "arm": arm,
            "seed": seed,
            "steps": agent.global_step,
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "steps_per_second": agent.global_step / seconds,
            "curve": [[entry["global_step"], entry["mean_return"]] for entry in agent.history],
            "eval_return": agent.evaluate(episodes, env=EVAL_ENVS.get(arm))["mean_return"],
            "config": agent.config.to_dict(),
        }
        if part == "minatar":
            record["eval_return_stochastic"] = agent.evaluate(episodes, deterministic=False)["mean_return"]
        return record
    finally:
        agent.close()


def random_policy(game: str, episodes: int, seed: int) -> dict[str, Any]:
    """Returns of a uniformly random policy on the MinAtar game, over ``episodes`` episodes."""
    env = gym.make(minatar_id(game), max_episode_steps=MINATAR_MAX_STEPS)
    env.action_space.seed(seed)
    returns = []
    try:
        for episode in range(episodes):
            env.reset(seed=seed if episode == 0 else None)
            total, done = 0.0, False
            while not done:
                _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
                total, done = total + float(reward), terminated or truncated
            returns.append(total)
    finally:
        env.close()
    mean = float(np.mean(returns))
    return {"part": "minatar", "arm": f"random-{game}", "seed": seed, "returns": returns, "eval_return": mean}


def stored(path: Path, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The record at ``path``, computed and written atomically first if it is not there yet."""
    if path.exists():
        return json.loads(path.read_text())
    record = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record))
    return record


def run_part(part: str, arms: Sequence[str], seeds: Sequence[int], results: Path, smoke: bool) -> None:
    """Every (arm, seed) of ``part`` not yet in ``results``; MinAtar's random policy once."""
    for arm in arms:
        for seed in seeds:
            record = stored(results / f"{part}__{arm}__{seed}.json", lambda a=arm, s=seed: train(part, a, s, smoke))
            print(f"{part} {arm} seed {seed}: eval {record['eval_return']:.2f}, "
                  f"{record['steps_per_second']:.0f} steps/s", flush=True)  # fmt: skip
    if part == "minatar":
        episodes = 3 if smoke else RANDOM_EPISODES
        for arm in arms:
            stored(results / f"minatar__random-{arm}__0.json", lambda a=arm: random_policy(a, episodes, 0))


def load_records(results: Path, part: str) -> dict[str, list[dict[str, Any]]]:
    """The part's records by arm, in seed order."""
    records: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(results.glob(f"{part}__*.json")):
        record = json.loads(path.read_text())
        records.setdefault(record["arm"], []).append(record)
    return {arm: sorted(runs, key=lambda run: run["seed"]) for arm, runs in records.items()}


def mean_and_spread(values: Sequence[float]) -> str:
    """``mean ± standard deviation`` over seeds (no spread for one seed)."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def curve_at(run: dict[str, Any], fraction: float) -> float:
    """The training mean return at the first logged step past ``fraction`` of the run's steps."""
    for step, value in run["curve"]:
        if step >= fraction * run["steps"]:
            return value
    return math.nan


def train_table(records: dict[str, list[dict[str, Any]]], arms: Sequence[str]) -> list[str]:
    """Rows: arm, seeds, steps, training mean return at 25/50/100 % of the budget, final evaluation, speed.

    Speed is steps per wall-clock second and per CPU second of the training process (one torch thread):
    on a shared machine the second is the steadier one.
    """
    header = "| arm | seeds | steps | train return @25% | @50% | @100% | final eval (det.) | steps/s | steps/CPU-s |"
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for arm in arms:
        runs = records.get(arm, [])
        if not runs:
            continue
        at = [mean_and_spread([curve_at(run, fraction) for run in runs]) for fraction in (0.25, 0.5, 1.0)]
        speed = statistics.mean(run["steps_per_second"] for run in runs)
        cpu_speed = statistics.mean(run["steps"] / run["cpu_seconds"] for run in runs)
        final = mean_and_spread([run["eval_return"] for run in runs])
        lines.append(f"| {ARM_LABELS.get(arm, arm)} | {len(runs)} | {runs[0]['steps']:,} | {' | '.join(at)} | "
                     f"{final} | {speed:.0f} | {cpu_speed:.0f} |")  # fmt: skip
    return lines


def first_step_reaching(run: dict[str, Any], level: float) -> int | None:
    """The first logged step where the training mean return reaches ``level`` (``None``: never)."""
    return next((step for step, value in run["curve"] if value >= level), None)


def report_taxi(results: Path, plot: Path | None) -> None:
    """The Taxi table (and the steps to a positive training return), and its plot."""
    records = load_records(results, "taxi")
    print(f"\n{TAXI_ID}, with and without action masks ({TAXI_HYPERPARAMETERS}, the rest default)")
    print("\n".join(train_table(records, PARTS["taxi"].arms)))
    for arm in PARTS["taxi"].arms:
        reached = [first_step_reaching(run, 0.0) for run in records.get(arm, [])]
        if reached:
            shown = ", ".join("never" if step is None else f"{step:,}" for step in reached)
            print(f"{ARM_LABELS[arm]}: first step with training mean return >= 0, per seed: {shown}")
    if plot is not None and records:
        plot_curves(records, PARTS["taxi"].arms, f"TRPO on {TAXI_ID}: action masks", plot)


def report_minatar(results: Path, plot: Path | None) -> None:
    """The MinAtar table against the random policy, and its plot."""
    records = load_records(results, "minatar")
    for arm in PARTS["minatar"].arms:
        runs, baseline = records.get(arm, []), records.get(f"random-{arm}", [])
        if not runs:
            continue
        random_return = baseline[0]["eval_return"] if baseline else math.nan
        print(f"\n{minatar_id(arm)} with the CNN ({MINATAR_HYPERPARAMETERS}, the rest default)")
        print("\n".join(train_table(records, [arm])))
        stochastic = mean_and_spread([run["eval_return_stochastic"] for run in runs])
        print(f"final eval, sampled actions: {stochastic}; random policy ({RANDOM_EPISODES} episodes): "
              f"{random_return:.2f}")  # fmt: skip
        if plot is not None:
            title = f"TRPO + CNN on {minatar_id(arm)}"
            plot_curves({arm: runs}, [arm], title, plot, baseline=("random policy", random_return))


def report_cartpole(results: Path) -> None:
    """The CartPole table: an id, a Dict observation, an instance."""
    records = load_records(results, "cartpole")
    print(f"\n{CARTPOLE_ID}: id vs Dict observation vs instance ({CARTPOLE_HYPERPARAMETERS}, the rest default)")
    print("\n".join(train_table(records, PARTS["cartpole"].arms)))


def plot_curves(
    records: dict[str, list[dict[str, Any]]],
    arms: Sequence[str],
    title: str,
    path: Path,
    baseline: tuple[str, float] | None = None,
) -> None:
    """Mean training return over seeds against steps, the seeds' range shaded, per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    warnings.filterwarnings("ignore", "Mean of empty slice|All-NaN slice", RuntimeWarning)  # before any episode ends
    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    for arm in arms:
        runs = records.get(arm, [])
        if not runs:
            continue
        length = min(len(run["curve"]) for run in runs)
        steps = np.array([point[0] for point in runs[0]["curve"][:length]])
        values = np.array([[point[1] for point in run["curve"][:length]] for run in runs], dtype=float)
        label = f"{ARM_LABELS.get(arm, arm)} ({len(runs)} seeds)"
        axes.plot(steps, np.nanmean(values, axis=0), label=label)
        axes.fill_between(steps, np.nanmin(values, axis=0), np.nanmax(values, axis=0), alpha=0.2)
    if baseline is not None:
        axes.axhline(baseline[1], color="grey", linestyle="--", label=f"{baseline[0]} ({baseline[1]:.2f})")
    axes.set(xlabel="environment steps", ylabel="mean training return (last 100 episodes)", title=title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def report(results: Path, parts: Sequence[str], images: Path | None) -> None:
    """Print the tables of ``parts`` and draw their plots into ``images`` (``None``: no plots)."""
    if "taxi" in parts:
        report_taxi(results, None if images is None else images / "taxi_masks.png")
    if "minatar" in parts:
        report_minatar(results, None if images is None else images / "minatar_curve.png")
    if "cartpole" in parts:
        report_cartpole(results)


def minatar_installed() -> bool:
    """Whether the optional MinAtar package can be imported."""
    try:
        import minatar  # noqa: F401
    except ImportError:
        return False
    return True


def smoke(images: Path | None) -> None:
    """Every part, tiny (one seed, one or two iterations), in a temporary folder it deletes."""
    parts = ["taxi", "cartpole"]
    if minatar_installed():
        parts.insert(1, "minatar")
    else:
        print("MinAtar is not installed (pip install minatar==1.0.15): its part is skipped")
    with tempfile.TemporaryDirectory() as folder:
        results = Path(folder)
        for part in parts:
            run_part(part, PARTS[part].arms, [0], results, smoke=True)
        report(results, parts, images if images is not None else results)


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line: a part or ``report``, or ``--smoke``; seeds, arms and output places."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", nargs="?", choices=[*PARTS, "report"], help="what to run; report: tables and plots")
    parser.add_argument("--smoke", action="store_true", help="every part, tiny, in a temporary folder (CI)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", help="the part's arms to run (default: all)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the result JSONs go")
    parser.add_argument("--images", type=Path, default=IMAGES, help="where report (and --smoke, if given) plots")
    arguments = parser.parse_args(argv)
    if not arguments.smoke and arguments.part is None:
        parser.error("give a part (taxi, minatar, cartpole, report) or --smoke")
    return arguments


def main(argv: Sequence[str] | None = None) -> None:
    """Run a part (then print its table), print every table and plot (``report``), or the smoke run."""
    arguments = parse_arguments(argv)
    if arguments.smoke:
        images = arguments.images if "--images" in (argv if argv is not None else sys.argv) else None
        smoke(images)
    elif arguments.part == "report":
        report(arguments.results, list(PARTS), arguments.images)
    else:
        arms = arguments.arms or PARTS[arguments.part].arms
        run_part(arguments.part, arms, arguments.seeds, arguments.results, smoke=False)
        report(arguments.results, [arguments.part], None)


if __name__ == "__main__":
    main()
