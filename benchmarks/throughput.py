"""Training throughput and policy-update time: ours against sb3-contrib's TRPO, in one run.

For each environment both implementations train with the same network (64-64 tanh, separate
actor and critic), the same number of environments and the same rollout length. Ours runs
twice: with its per-environment defaults and with sb3's settings (critic epochs and minibatch,
CG iterations and damping, full-batch Fisher). Every round runs ours (defaults), sb3-contrib
and ours (sb3 settings) back to back; the speed of a shared machine drifts by tens of percent
over seconds, so each ratio divides two neighbouring samples, and the table shows the median
ratio with its range over the rounds.

Policy-update time is one trust-region step on one fixed rollout, parameters restored before
every repetition so each does the same work: ``TRPO.update_policy`` for ours,
``sb3_contrib.TRPO.train`` with ``n_critic_updates = 0`` for sb3, interleaved in the same way.
Product time is the median of the curvature products made inside those updates (damping
included): our damped Gauss-Newton operator, sb3-contrib's ``hessian_vector_product`` (the
double backward of the KL). *Products / sb3 update* is the time one of our updates spends in its
products alone (products per update × median product) over sb3-contrib's median update: the least
update ratio that number of products allows, however fast the rest of the update.

    python benchmarks/throughput.py            # full: a few minutes
    python benchmarks/throughput.py --smoke    # CI: under a minute, tiny budgets
    python benchmarks/throughput.py --envs Hopper-v5 --preconditioner none kfac --cg-iters 10 25
                                               # also ours (defaults) with each CG preconditioner and cap
    python benchmarks/throughput.py --envs CartPole-v1 --vectorization-mode vector_entry_point
                                               # also ours (defaults) on the environment's own vector
                                               # implementation (gymnasium's vector_entry_point)
    python benchmarks/throughput.py --envs Hopper-v5 --rounds 0 --variant fisher_fraction=0.25 cg_iters=15
                                               # also ours (defaults) with these overrides (repeatable)

sb3-contrib is optional (``pip install sb3-contrib torch==<the installed torch>``); without it
only our numbers are printed.
"""

from __future__ import annotations

import abc
import argparse
import copy
import json
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import torch
from rl_zoo import rl_zoo_trpo

from agents import TRPO
from agents.common.config import VECTORIZATION_MODES, TRPOConfig
from trustregion import LinearOperator, TrustRegionOptimizer
from trustregion.curvature import Curvature, StepProblem


class TimedCurvature(Curvature):
    """Builds the wrapped curvature's operator and records the duration of each product the solver asks for.

    Only the outermost operator is timed: a damped operator calls its undamped one, and timing
    every ``LinearOperator`` call would count each product twice."""

    def __init__(self, inner: Curvature, seconds: list[float]) -> None:
        self.inner, self.seconds = inner, seconds
        self.needs_loss_graph = inner.needs_loss_graph

    def build(self, problem: StepProblem) -> LinearOperator:
        operator = self.inner.build(problem)

        def timed_product(vector: torch.Tensor) -> torch.Tensor:
            start = time.perf_counter()
            result = operator(vector)
            self.seconds.append(time.perf_counter() - start)
            return result

        return operator.in_dtype(timed_product)  # keeps what preconditioners read: diagonal, factors, shift


def time_curvature_products(optimizer: TrustRegionOptimizer) -> list[float]:
    """Time every curvature product ``optimizer`` makes from now on; returns the list the seconds go to.

    Both ways a curvature reaches a step are covered: the one given at construction, and one
    passed to ``step(closure, curvature)`` for that step (e.g. Gauss-Newton on the step's batch)."""
    seconds: list[float] = []
    optimizer.curvature = TimedCurvature(optimizer.curvature, seconds)
    step = optimizer.step

    def timed_step(closure, curvature=None):  # the signature of TrustRegionOptimizer.step
        return step(closure, None if curvature is None else TimedCurvature(curvature, seconds))

    optimizer.step = timed_step
    return seconds


class CallTimer:
    """Replaces ``owner.name`` by a wrapper that records the duration of every call, until closed
    (used on sb3-contrib's ``hessian_vector_product``)."""

    def __init__(self, owner: Any, name: str) -> None:
        self.owner, self.name, self.original = owner, name, getattr(owner, name)
        self.seconds: list[float] = []
        original, seconds = self.original, self.seconds

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            result = original(*args, **kwargs)
            seconds.append(time.perf_counter() - start)
            return result

        setattr(owner, name, timed)

    def close(self) -> None:
        setattr(self.owner, self.name, self.original)


@dataclass(frozen=True)
class Setting:
    env: str
    num_envs: int
    n_steps: int
    sb3: dict[str, Any]  # RL-Zoo's sb3-contrib TRPO hyperparameters for this environment
    normalize: bool


def rl_zoo_setting(env: str) -> Setting:
    sb3 = rl_zoo_trpo(env)
    n_envs, n_steps, normalize = sb3.pop("n_envs"), sb3.pop("n_steps"), sb3.pop("normalize")
    return Setting(env, n_envs, n_steps, sb3, normalize=normalize)


SETTINGS = {env: rl_zoo_setting(env) for env in ("CartPole-v1", "Hopper-v5", "HalfCheetah-v5")}
DEFAULT_ENVS = ["CartPole-v1", "Hopper-v5"]
SB3_CG_DEFAULT = 15


def ours_matching_sb3(setting: Setting) -> dict[str, Any]:
    """Our hyperparameters set to sb3's values wherever both have the knob."""
    sb3 = setting.sb3
    return {
        "num_envs": setting.num_envs,
        "n_steps": setting.n_steps,
        "value_epochs": sb3["n_critic_updates"],
        "value_minibatch_size": sb3["batch_size"],
        "cg_iters": sb3.get("cg_max_steps", SB3_CG_DEFAULT),
        "cg_damping": sb3["cg_damping"],
        "gamma": sb3["gamma"],
        "gae_lambda": sb3["gae_lambda"],
        "value_lr": sb3["learning_rate"],
        "fisher_fraction": 1.0,
        "normalize_obs": setting.normalize,
        "normalize_reward": setting.normalize,
    }


def ours_defaults(setting: Setting) -> dict[str, Any]:
    """Our per-environment defaults as they are (CartPole: its own vector env, 8 × 128; the same 1,024 batch)."""
    return {}


def ours_preconditioned(setting: Setting, preconditioners: list[str], cg_iters: list[int]) -> dict[str, dict[str, Any]]:
    """Our defaults with each preconditioner at each CG cap (``--preconditioner``, ``--cg-iters``), by row label."""
    return {
        f"ours ({preconditioner}, cg {iterations})": {
            **ours_defaults(setting),
            "preconditioner": preconditioner,
            "cg_iters": iterations,
        }
        for preconditioner in preconditioners
        for iterations in cg_iters
    }


def ours_fisher_subsampled(setting: Setting, fractions: list[float]) -> dict[str, dict[str, Any]]:
    """Our defaults with the curvature built on each share of the batch (``--fisher-fraction``), by row label."""
    defaults = ours_defaults(setting)
    return {f"ours (fisher {fraction:g})": {**defaults, "fisher_fraction": fraction} for fraction in fractions}


def override(item: str) -> tuple[str, Any]:
    """``NAME=VALUE`` (a JSON value) as ``(name, value)``; an ``argparse`` error names the item otherwise."""
    name, equals, value = item.partition("=")
    try:
        if name and equals:
            return name, json.loads(value)
    except json.JSONDecodeError:
        pass
    raise argparse.ArgumentTypeError(f"expected NAME=VALUE with a JSON value, e.g. cg_iters=10 (got {item!r})")


def ours_overridden(setting: Setting, variants: list[list[tuple[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Our defaults with each list of ``(name, value)`` overrides (``--variant``), by row label."""
    rows = {}
    for overrides in variants:
        label = ", ".join(f"{name}={json.dumps(value)}" for name, value in overrides)
        rows[f"ours ({label})"] = {**ours_defaults(setting), **dict(overrides)}
    return rows


def ours_vectorized(setting: Setting, modes: list[str]) -> dict[str, dict[str, Any]]:
    """Our defaults in each vectorization mode (``--vectorization-mode``), by row label.

    ``vector_entry_point`` is left out for an environment without its own vector implementation."""
    native = gym.spec(setting.env).vector_entry_point is not None
    return {
        f"ours ({mode})": {**ours_defaults(setting), "vectorization_mode": mode}
        for mode in modes
        if mode != "vector_entry_point" or native
    }


# ---------------------------------------------------------------------------------------- ours
def ours_steps_per_second(setting: Setting, options: dict[str, Any], steps: int, seed: int) -> float:
    agent = TRPO(setting.env, seed=seed, **options)
    start = time.perf_counter()
    agent.learn(steps)
    elapsed = time.perf_counter() - start
    agent.close()
    return agent.global_step / elapsed


class TimedUpdate(abc.ABC):
    """One policy update from the same saved start at every call; ``__call__`` returns its seconds."""

    product_seconds: list[float]  # every curvature product made inside the updates so far

    def __call__(self) -> float:
        self.restore()
        start = time.perf_counter()
        self.update()
        return time.perf_counter() - start

    @abc.abstractmethod
    def restore(self) -> None:
        """Put the policy (and any generator the update draws from) back to the saved start."""

    @abc.abstractmethod
    def update(self) -> None:
        """One policy update on the fixed rollout."""

    @abc.abstractmethod
    def close(self) -> None: ...


class OursUpdate(TimedUpdate):
    """``TRPO.update_policy`` on one fixed rollout, our curvature products timed."""

    def __init__(self, setting: Setting, options: dict[str, Any]) -> None:
        self.agent = TRPO(setting.env, seed=0, **options)
        self.agent.learn(self.agent.config.batch_size)  # past the first iteration: statistics and critic warmed up
        self.batch = self.agent.rollout_batch()
        self.saved = copy.deepcopy(self.agent.actor.state_dict())
        self.generator = self.agent.generator.get_state()
        self.product_seconds = time_curvature_products(self.agent.policy_optimizer)

    def restore(self) -> None:
        self.agent.actor.load_state_dict(self.saved)
        self.agent.generator.set_state(self.generator)

    def update(self) -> None:
        self.agent.update_policy(self.batch)

    def close(self) -> None:
        self.agent.close()


# ---------------------------------------------------------------------------------------- sb3
def sb3_available() -> bool:
    try:
        import sb3_contrib  # noqa: F401
    except ImportError:
        return False
    return True


def make_sb3(setting: Setting, seed: int):
    from sb3_contrib import TRPO as SB3TRPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    env = make_vec_env(setting.env, n_envs=setting.num_envs, seed=seed)
    if setting.normalize:
        env = VecNormalize(env, gamma=setting.sb3["gamma"])
    policy_kwargs = {"net_arch": {"pi": [64, 64], "vf": [64, 64]}, "activation_fn": torch.nn.Tanh}
    return SB3TRPO(
        "MlpPolicy",
        env,
        n_steps=setting.n_steps,
        policy_kwargs=policy_kwargs,
        seed=seed,
        device="cpu",
        verbose=0,
        **setting.sb3,
    )


def sb3_steps_per_second(setting: Setting, steps: int, seed: int) -> float:
    model = make_sb3(setting, seed)
    start = time.perf_counter()
    model.learn(steps)
    elapsed = time.perf_counter() - start
    model.get_env().close()
    return model.num_timesteps / elapsed


class Sb3Update(TimedUpdate):
    """sb3-contrib's policy step on one full rollout buffer (``train`` with ``n_critic_updates = 0``),
    its Hessian-vector products timed."""

    def __init__(self, setting: Setting) -> None:
        self.model = make_sb3(setting, 0)
        self.model.learn(2 * setting.num_envs * setting.n_steps)  # leaves a full rollout buffer behind
        self.model.n_critic_updates = 0
        self.saved = copy.deepcopy(self.model.policy.state_dict())
        self.products = CallTimer(self.model, "hessian_vector_product")
        self.product_seconds = self.products.seconds

    def restore(self) -> None:
        self.model.policy.load_state_dict(self.saved)

    def update(self) -> None:
        self.model.train()

    def close(self) -> None:
        self.products.close()
        self.model.get_env().close()


# ---------------------------------------------------------------------------------------- main
SB3 = "sb3-contrib"
NAME_WIDTH = 25  # "ours (vector_entry_point)"
OURS = ("ours (defaults)", "ours (sb3 settings)")


@dataclass
class Measurement:
    """Samples of one implementation, and its ratios to sb3-contrib's sample of the same round."""

    steps_per_second: list[float]
    update_seconds: list[float]
    product_seconds: list[float]
    speedups: list[float]  # steps/s over sb3-contrib's, per round
    update_ratios: list[float]  # update time over sb3-contrib's, per repetition


def measure(
    setting: Setting,
    steps: int,
    rounds: int,
    repeats: int,
    with_sb3: bool,
    sb3_threads: int,
    extra: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Measurement]:
    """Interleaved samples: every round runs ours (defaults), sb3-contrib, ours (sb3 settings) in a row,
    then each ``extra`` variant of ours (row label -> options; see :func:`ours_preconditioned`).

    The machine's speed drifts by tens of percent over seconds; each ratio divides two samples
    taken next to each other, and the table reports the median of those ratios.
    """
    default_threads = torch.get_num_threads()
    variants = dict(zip(OURS, (ours_defaults(setting), ours_matching_sb3(setting)), strict=True)) | (extra or {})
    order = ([OURS[0], SB3, OURS[1]] if with_sb3 else list(OURS)) + list(extra or {})

    def run(name: str, seed: int) -> float:
        if name == SB3:
            torch.set_num_threads(sb3_threads)
            rate = sb3_steps_per_second(setting, steps, seed)
            torch.set_num_threads(default_threads)
            return rate
        return ours_steps_per_second(setting, variants[name], steps, seed)

    rates: dict[str, list[float]] = {name: [] for name in order}
    for round_index in range(rounds):
        for name in order:
            rates[name].append(run(name, round_index))
    updaters = make_updaters(setting, variants, with_sb3, sb3_threads)
    updates = time_updates(setting, updaters, order, repeats, sb3_threads)
    results = {name: measurement(name, rates, updates, updaters[name].product_seconds) for name in order}
    for updater in updaters.values():
        updater.close()
    return results


def measurement(
    name: str, rates: dict[str, list[float]], updates: dict[str, list[float]], product_seconds: list[float]
) -> Measurement:
    """The samples of ``name`` and their ratios to sb3-contrib's samples of the same round (none without sb3)."""

    def ratios(samples: dict[str, list[float]]) -> list[float]:
        return [a / b for a, b in zip(samples[name], samples[SB3], strict=True)] if SB3 in samples else []

    return Measurement(rates[name], updates[name], product_seconds, ratios(rates), ratios(updates))


def make_updaters(
    setting: Setting, variants: dict[str, dict[str, Any]], with_sb3: bool, sb3_threads: int
) -> dict[str, TimedUpdate]:
    """A :class:`TimedUpdate` for each variant of ours, and sb3-contrib's (built with its thread count)."""
    updaters: dict[str, TimedUpdate] = {name: OursUpdate(setting, options) for name, options in variants.items()}
    if with_sb3:
        threads = torch.get_num_threads()
        torch.set_num_threads(sb3_threads)
        updaters[SB3] = Sb3Update(setting)
        torch.set_num_threads(threads)
    return updaters


def time_updates(
    setting: Setting, updaters: dict[str, TimedUpdate], order: list[str], repeats: int, sb3_threads: int
) -> dict[str, list[float]]:
    """``repeats`` interleaved timings of each updater, in ``order``.

    Ours run with the thread count our agents set (the config's ``torch_threads``), sb3-contrib with
    ``sb3_threads``; the thread count is put back afterwards."""
    threads = torch.get_num_threads()
    ours_threads = TRPOConfig.for_env(setting.env).torch_threads or threads
    updates: dict[str, list[float]] = {name: [] for name in order}
    for _ in range(repeats):
        for name in order:
            torch.set_num_threads(sb3_threads if name == SB3 else ours_threads)
            updates[name].append(updaters[name]())
    torch.set_num_threads(threads)
    return updates


def print_table(env: str, setting: Setting, results: dict[str, Measurement]) -> None:
    batch = setting.num_envs * setting.n_steps
    ours = TRPOConfig.for_env(env)
    print(
        f"\n{env}: sb3-contrib {setting.num_envs} envs x {setting.n_steps} steps = batch {batch}; ours (defaults) "
        f"{ours.num_envs} x {ours.n_steps} = {ours.batch_size} ({ours.vectorization_mode})"
    )
    header = ("implementation", "steps/s", "update ms", "product ms", "x sb3 steps/s", "/ sb3 update")
    widths = (NAME_WIDTH, 8, 10, 11, 22, 22)
    cells = (f"{text:{'<' if i == 0 else '>'}{w}s}" for i, (text, w) in enumerate(zip(header, widths, strict=True)))
    print(" ".join(cells), "/ sb3 product", "products / sb3 update")
    sb3 = results.get(SB3)
    for name, result in results.items():
        product = statistics.median(result.product_seconds)
        if sb3 is None:
            speedup = update_ratio = product_ratio = products_share = "n/a"
        else:
            speedup, update_ratio = _median_and_range(result.speedups), _median_and_range(result.update_ratios)
            product_ratio = f"{product / statistics.median(sb3.product_seconds):.2f}"
            products_share = f"{products_per_update(result) * product / statistics.median(sb3.update_seconds):.2f}"
        rate = f"{statistics.median(result.steps_per_second):8.0f}" if result.steps_per_second else f"{'n/a':>8s}"
        print(
            f"{name:{NAME_WIDTH}s} {rate} "
            f"{1000 * statistics.median(result.update_seconds):10.1f} {1000 * product:11.2f} "
            f"{speedup:>22s} {update_ratio:>22s} {product_ratio:>14s} {products_share:>21s}"
        )


def products_per_update(result: Measurement) -> float:
    """The curvature products one update makes, on average over the timed updates."""
    return len(result.product_seconds) / len(result.update_seconds)


def _median_and_range(ratios: list[float]) -> str:
    if not ratios:
        return "n/a"
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def main(argv: list[str] | None = None) -> None:
    warnings.filterwarnings("ignore", message="Mean of empty slice")  # sb3 logs before its first episode ends
    warnings.filterwarnings("ignore", message="invalid value encountered")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny budgets, for CI (< 1 minute)")
    parser.add_argument("--envs", nargs="+", default=DEFAULT_ENVS, choices=list(SETTINGS))
    parser.add_argument("--rounds", type=int, default=None, help="alternating training rounds (0: updates only)")
    parser.add_argument("--no-sb3", action="store_true", help="measure ours only")
    parser.add_argument(
        "--sb3-threads",
        type=int,
        default=1,
        help="torch threads for sb3 (ours uses its torch_threads setting, 1); 1 was sb3's fastest here",
    )
    parser.add_argument(
        "--preconditioner",
        nargs="+",
        choices=("none", "jacobi", "kfac"),
        help="also time ours (defaults) with each of these CG preconditioners, at each --cg-iters",
    )
    parser.add_argument("--cg-iters", nargs="+", type=int, help="CG caps of those extra rows (default: env default)")
    parser.add_argument(
        "--fisher-fraction",
        nargs="+",
        type=float,
        default=[],
        help="also time ours (defaults) with the curvature on each of these shares of the batch",
    )
    parser.add_argument(
        "--vectorization-mode",
        nargs="+",
        choices=VECTORIZATION_MODES,
        default=[],
        help="also time ours (defaults) in each of these modes (vector_entry_point: only where the env has one)",
    )
    parser.add_argument(
        "--variant",
        nargs="+",
        action="append",
        type=override,
        default=[],
        metavar="NAME=VALUE",
        help="also time ours (defaults) with these hyperparameter overrides (JSON values); repeat for more rows",
    )
    args = parser.parse_args(argv)
    with_sb3 = not args.no_sb3 and sb3_available()
    if not args.no_sb3 and not with_sb3:
        print("sb3-contrib is not installed: measuring ours only (pip install sb3-contrib torch==<installed torch>)")
    rounds = args.rounds if args.rounds is not None else (1 if args.smoke else 5)
    repeats = 2 if args.smoke else 9
    print(f"torch {torch.__version__}; torch threads: ours 1, sb3 {args.sb3_threads}; {rounds} round(s)")
    for env in args.envs:
        setting = SETTINGS[env]
        batch = setting.num_envs * setting.n_steps
        iterations = 1 if args.smoke else (20 if env.startswith("CartPole") else 5)
        extra = ours_vectorized(setting, args.vectorization_mode)
        if args.preconditioner or args.cg_iters:
            cg_iters = args.cg_iters or [TRPOConfig.for_env(env).cg_iters]
            extra |= ours_preconditioned(setting, args.preconditioner or ["none"], cg_iters)
        extra |= ours_fisher_subsampled(setting, args.fisher_fraction) | ours_overridden(setting, args.variant)
        results = measure(setting, iterations * batch, rounds, repeats, with_sb3, args.sb3_threads, extra)
        print_table(env, setting, results)


if __name__ == "__main__":
    main()
