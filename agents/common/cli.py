"""Command line shared by ``python -m agents.trpo`` and ``python -m agents.npg``.

Every field of :class:`~agents.common.config.TRPOConfig` is a flag (``--max-kl 0.02``,
``--no-normalize-advantage``, ``--hidden-sizes 64 64``); flags left out take the
per-environment defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agents.common.checkpoint import atomic_write_text
from agents.common.config import TRPOConfig, default_total_steps, env_defaults
from agents.common.logs import CSV_NAME, PLOT_NAME, plot_learning_curve

CONFIG_NAME = "config.json"
EVALUATION_NAME = "evaluation.txt"
_POSITIONAL_FIELDS = {"env", "seed", "num_envs", "env_kwargs"}
_BOOLEAN_TYPES = {"bool"}
_SCALAR_TYPES = {"int": int, "float": float, "str": str}


def build_parser(algorithm: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m agents.{algorithm}",
        description=f"Train {algorithm.upper()} on a gymnasium environment (CartPole-v1 by default).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run = parser.add_argument_group("run")
    run.add_argument("--env", default="CartPole-v1", help="gymnasium environment id")
    run.add_argument("--total-steps", type=int, default=None, help="environment steps (default: per environment)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--num-envs", type=int, default=None, help="parallel environments (default: per environment)")
    run.add_argument("--env-kwargs", type=json.loads, default=None, help="JSON object passed to gymnasium.make")
    run.add_argument("--run-dir", type=Path, default=None, help="default: <runs-root>/<env>__<algo>__<seed>__<time>")
    run.add_argument("--runs-root", type=Path, default=Path("runs"))
    run.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR", help="continue a run from its checkpoint")
    run.add_argument("--eval", type=Path, default=None, metavar="PATH", help="only evaluate a run dir or checkpoint")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    hyper = parser.add_argument_group("hyperparameters (default: per-environment table, docs/agents.md)")
    for field in dataclasses.fields(TRPOConfig):
        if field.name in _POSITIONAL_FIELDS:
            continue
        flag = "--" + field.name.replace("_", "-")
        kind = str(field.type)
        if kind in _BOOLEAN_TYPES:
            hyper.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif kind in _SCALAR_TYPES:
            hyper.add_argument(flag, type=_SCALAR_TYPES[kind], default=None)
        elif kind.startswith("tuple[int"):
            hyper.add_argument(flag, type=int, nargs="+", default=None)
        else:  # pragma: no cover - a new field type must be mapped above
            raise TypeError(f"no command-line mapping for field {field.name} of type {kind}")
    return parser


def hyperparameters_from(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields given on the command line (``None`` means not given)."""
    values = {}
    for field in dataclasses.fields(TRPOConfig):
        if field.name in ("env", "seed"):
            continue
        value = getattr(args, field.name, None)
        if value is not None:
            values[field.name] = tuple(value) if isinstance(value, list) else value
    return values


def main(agent_class: Any, argv: Sequence[str] | None = None) -> int:
    """Entry point: train, resume or evaluate, per the flags."""
    parser = build_parser(agent_class.algorithm)
    args = parser.parse_args(argv)
    if args.eval is not None:
        return evaluate_only(agent_class, args)
    if args.resume is not None:
        agent, run_dir, total_steps = resume(agent_class, args, parser)
    else:
        agent, run_dir, total_steps = start(agent_class, args, parser)
    print(f"run directory: {run_dir}", file=sys.stderr)
    try:
        agent.learn(total_steps, run_dir=run_dir, progress=not args.no_progress)
        result = agent.evaluate()
    finally:
        agent.close()
    line = evaluation_line(agent, result, agent_class.algorithm)
    atomic_write_text(run_dir / EVALUATION_NAME, line + "\n")
    title = f"{agent_class.algorithm.upper()} {agent.config.env}"
    plot_learning_curve(run_dir / CSV_NAME, run_dir / PLOT_NAME, title, result["mean_return"])
    print(line)
    return 0


def evaluate_only(agent_class: Any, args: argparse.Namespace) -> int:
    """``--eval``: load a run directory or checkpoint and print its evaluation."""
    agent = agent_class.load(args.eval)
    try:
        result = agent.evaluate(args.eval_episodes)
    finally:
        agent.close()
    print(evaluation_line(agent, result, agent_class.algorithm))
    return 0


def resume(agent_class: Any, args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[Any, Path, int]:
    """``--resume``: the saved agent, its run directory and the step budget (the saved one unless given)."""
    given = hyperparameters_from(args)
    if given:
        parser.error(f"--resume continues a run with its saved config; drop the flags {sorted(given)}")
    run_dir = args.resume
    saved = json.loads((run_dir / CONFIG_NAME).read_text())
    agent = agent_class.load(run_dir)
    total_steps = args.total_steps if args.total_steps is not None else saved["total_steps"]
    if args.total_steps is not None:
        atomic_write_text(run_dir / CONFIG_NAME, json.dumps({**saved, "total_steps": total_steps}, indent=2))
    return agent, run_dir, total_steps


def start(agent_class: Any, args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[Any, Path, int]:
    """A new run: the agent, its run directory (``config.json`` written there) and the step budget."""
    hyperparameters = hyperparameters_from(args)
    try:
        agent = agent_class(env=args.env, seed=args.seed, **hyperparameters)
    except ValueError as error:
        parser.error(str(error))
    total_steps = args.total_steps if args.total_steps is not None else default_total_steps(args.env)
    run_dir = args.run_dir or args.runs_root / run_name(args.env, agent_class.algorithm, args.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "algorithm": agent_class.algorithm,
        "total_steps": total_steps,
        "env_defaults": env_defaults(args.env),
        "command_line": hyperparameters,
        "config": agent.config.to_dict(),
    }
    atomic_write_text(run_dir / CONFIG_NAME, json.dumps(record, indent=2, default=list))
    return agent, run_dir, total_steps


def run_name(env: str, algorithm: str, seed: int) -> str:
    """``<env>__<algo>__<seed>__<time>`` (``/`` in namespaced ids becomes ``_``)."""
    return f"{env.replace('/', '_')}__{algorithm}__{seed}__{time.strftime('%Y%m%d-%H%M%S')}"


def evaluation_line(agent: Any, result: dict[str, Any], algorithm: str) -> str:
    return (
        f"final evaluation: env={agent.config.env} algo={algorithm} seed={agent.config.seed} "
        f"steps={agent.global_step} episodes={len(result['returns'])} deterministic=True "
        f"mean_return={result['mean_return']:.2f} std_return={result['std_return']:.2f}"
    )
