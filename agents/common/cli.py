"""Command line shared by ``python -m agents.trpo`` and ``python -m agents.npg``.

Every field of :class:`~agents.common.config.TRPOConfig` that applies to the algorithm is a flag
(``--max-kl 0.02``, ``--no-normalize-advantage``, ``--hidden-sizes 64 64``); flags left out take
the per-environment defaults.

Three modes: a new run (the default), ``--resume RUN_DIR`` and ``--eval PATH``. A user error
(a bad flag or value, an unknown environment, a run directory that is taken, a missing or
damaged run) is one line on stderr with the fix and exit code 2, before anything is written
(``--debug`` shows the traceback). SIGINT (Ctrl-C) or SIGTERM during training stops after the
current iteration, writes a checkpoint and prints the command that resumes the run (exit 130 /
143); a second signal abandons the iteration in progress, and the checkpoint then holds the
state after the last completed one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import secrets
import shlex
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, NoReturn

from agents.common.checkpoint import atomic_write_text
from agents.common.config import (
    CHOICES,
    DEFAULT_TOTAL_STEPS,
    ENV_DEFAULTS,
    TRPOConfig,
    default_total_steps,
    env_defaults,
)
from agents.common.distributed import DistributedError, release_process_group
from agents.common.envs import NonFiniteDataError
from agents.common.logs import CSV_NAME, PLOT_NAME, plot_learning_curve, read_progress

CONFIG_NAME = "config.json"
CHECKPOINT_NAME = "checkpoint.pt"
EVALUATION_NAME = "evaluation.txt"
DEFAULT_ENV = "CartPole-v1"
DEFAULT_SEED = 0
DEFAULT_RUNS_ROOT = Path("runs")
EXIT_USAGE = 2
EXIT_FAILED = 1

_RUN_FIELDS = ("env", "seed", "num_envs", "env_kwargs", "wrappers", "custom")  # config fields of the "run" group
_LINE_SEARCH_FIELDS = ("backtrack_iters", "backtrack_ratio")  # apply only with a line search
_RESUME_FLAGS = {"total_steps", "no_progress", "debug", "resume", "record_video"}
_EVAL_FLAGS = {"eval", "eval_episodes", "debug", "no_progress", "record_video"}

FIELD_HELP: dict[str, str] = {
    "env": "gymnasium environment id, or MODULE:FACTORY, a zero-argument function returning a gymnasium.Env",
    "wrappers": "MODULE:CALLABLE taking and returning a gymnasium.Env, applied to each sub-environment; repeatable",
    "device": "torch device of the networks and updates: cpu, cuda, cuda:1 (environments stay on the CPU)",
    "seed": "seeds the networks, the action noise, the updates and the environments",
    "num_envs": "sub-environments stepped together; an iteration collects num_envs × n_steps transitions",
    "env_kwargs": "JSON object of keyword arguments for gymnasium.make, e.g. '{\"g\": 9.81}'",
    "vectorization_mode": (
        "sync: sub-environments in this process; async: one worker process each; "
        "vector_entry_point: the environment's own vectorised implementation (e.g. CartPole-v1)"
    ),
    "n_steps": "vector steps per rollout",
    "gamma": "discount factor γ",
    "gae_lambda": "GAE's λ, in [0, 1]",
    "normalize_obs": "normalise observations by running mean and std, then clip them to ±clip-obs",
    "normalize_reward": "scale rewards by the running std of the discounted return, then clip to ±clip-reward",
    "clip_obs": "bound of the normalised observations; inf: no clip",
    "clip_reward": "bound of the normalised rewards; inf: no clip",
    "max_kl": "trust-region radius δ: the largest mean KL of one policy step",
    "line_search": "backtracking line search on the KL and the surrogate (--no-line-search: NPG's step)",
    "backtrack_iters": "most backtracking steps of the line search",
    "backtrack_ratio": "shrink factor of each backtracking step, in (0, 1)",
    "cg_iters": "conjugate-gradient iterations per policy step",
    "cg_damping": "damping λ of the curvature A = F + λI",
    "curvature": "Fisher products: gauss-newton (Jᵀ M J) or kl-hessian (double backward through the KL)",
    "preconditioner": "CG preconditioner of the policy step: none, jacobi (diag of F + λI) or kfac (Kronecker factors)",
    "kl_estimator": "mean KL of the constraint: analytic, or sample ((r - 1) - log r on the actions taken)",
    "fisher_fraction": "share of the batch the curvature is built on, in (0, 1]",
    "normalize_advantage": "normalise advantages to zero mean and unit variance",
    "hidden_sizes": "hidden layer sizes of actor and critic",
    "activation": "activation of the hidden layers",
    "log_std_init": "initial log standard deviation of a Gaussian policy",
    "value_lr": "learning rate of the critic's Adam",
    "value_epochs": "critic epochs per iteration",
    "value_minibatch_size": "critic minibatch size (per process in a data-parallel run)",
    "value_parallel": "data-parallel critic: sharded (all-reduce per minibatch) or replicated (on the gathered batch)",
    "dtype": "floating-point type of the networks and the policy step",
    "torch_threads": "torch CPU threads; 0 leaves torch's setting alone",
    "pin_cores": "data-parallel runs on Linux: bind each process to its own block of the machine's cores",
    "checkpoint_interval": "iterations between checkpoints; one is also written at the end and on interrupt",
    "eval_episodes": "episodes of the final deterministic evaluation, and of --eval",
}
"""One line per config field: what the flag does (its default and choices are added to it)."""

USAGE_HINT = "usage: {prog} [options]; see --help"


class UsageError(Exception):
    """A user error: printed as one line with its fix, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: the message and a usage hint, not the whole usage."""

    def error(self, message: str) -> NoReturn:
        hint = USAGE_HINT.format(prog=self.prog)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {_one_line(message)} ({hint})\n")


def build_parser(agent_class: Any) -> argparse.ArgumentParser:
    """The parser of ``python -m agents.<algorithm>``: only the flags that apply to ``agent_class``."""
    prog = f"python -m agents.{agent_class.algorithm}"
    parser = Parser(
        prog=prog,
        usage=f"{prog} [options]",
        description=_description(agent_class),
        epilog=(
            "Ctrl-C or SIGTERM stops after the current iteration, saves a checkpoint and prints the command "
            "that resumes the run; a second signal abandons the iteration in progress. Exit codes: 0 done, "
            "1 training failed, 2 usage error, 130 / 143 stopped by SIGINT / SIGTERM. "
            "Per-environment defaults: docs/agents.md."
        ),
        formatter_class=lambda prog: argparse.HelpFormatter(prog, max_help_position=36),
    )
    overrides: dict[str, Any] = dict(agent_class.overrides)
    _add_run_flags(parser.add_argument_group("run"), overrides)
    _add_hyperparameter_flags(
        parser.add_argument_group("hyperparameters (default: per environment, see docs/agents.md)"), overrides
    )
    return parser


def _add_run_flags(run: argparse._ArgumentGroup, overrides: dict[str, Any]) -> None:
    """What to run and where: environment, budget, run directories, resume and evaluation."""
    run.add_argument("--env", metavar="ID", help=_help("env", f"default: {DEFAULT_ENV}"))
    run.add_argument(
        "--wrapper",
        action="append",
        dest="wrappers",
        metavar="MODULE:CALLABLE",
        help=_help("wrappers", "default: none"),
    )
    run.add_argument("--seed", type=_integer(0), metavar="N", help=_help("seed", f"default: {DEFAULT_SEED}"))
    run.add_argument(
        "--total-steps",
        type=_integer(1),
        metavar="N",
        help="environment steps to train, rounded up to whole iterations of num_envs × n_steps; with --resume, "
        f"the new target ({_total_steps_default()})",
    )
    run.add_argument("--num-envs", type=int, metavar="N", help=_field_help("num_envs", overrides))
    run.add_argument("--env-kwargs", type=_json_object, metavar="JSON", help=_help("env_kwargs", "default: {}"))
    _add_place_flags(run)


def _add_place_flags(run: argparse._ArgumentGroup) -> None:
    """Where a run goes, resume and evaluation, videos, and the output of the command."""
    run.add_argument(
        "--run-dir",
        type=Path,
        metavar="DIR",
        help="directory of a new run; it must not exist or be empty "
        "(default: RUNS_ROOT/<env>__<algo>__<seed>__<time>__<random suffix>)",
    )
    run.add_argument(
        "--runs-root",
        type=Path,
        metavar="RUNS_ROOT",
        help=f"parent of the run directories named automatically (default: {DEFAULT_RUNS_ROOT})",
    )
    run.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR to its target, or to a new --total-steps; no other setting may change "
        "(default: start a new run)",
    )
    run.add_argument(
        "--eval",
        type=Path,
        metavar="PATH",
        help="only evaluate a run directory or checkpoint and print the result (default: train)",
    )
    run.add_argument(
        "--record-video",
        type=Path,
        metavar="DIR",
        help="record the evaluation episodes as videos in DIR, new or empty (gymnasium's RecordVideo; needs a "
        "registered --env that renders rgb_array frames and pip install moviepy) (default: no video)",
    )
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar (default: shown)")
    run.add_argument("--debug", action="store_true", help="show the Python traceback of an error (default: off)")


def _add_hyperparameter_flags(hyper: argparse._ArgumentGroup, overrides: dict[str, Any]) -> None:
    """One flag per field of :class:`TRPOConfig` that applies (NPG has no line-search flags)."""
    for field in dataclasses.fields(TRPOConfig):
        if field.name in _RUN_FIELDS or field.name in overrides:
            continue
        if overrides.get("line_search") is False and field.name in _LINE_SEARCH_FIELDS:
            continue
        _add_field_flag(hyper, field.name, str(field.type), _field_help(field.name, overrides))


def _add_field_flag(hyper: argparse._ArgumentGroup, name: str, kind: str, help_text: str) -> None:
    flag = "--" + name.replace("_", "-")
    if kind == "bool":
        hyper.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
    elif name in CHOICES:
        hyper.add_argument(flag, choices=CHOICES[name], default=None, help=help_text)
    elif kind in ("int", "float"):
        metavar = "N" if kind == "int" else "X"
        hyper.add_argument(flag, type=int if kind == "int" else float, metavar=metavar, help=help_text)
    elif kind.startswith("tuple[int"):
        hyper.add_argument(flag, type=int, nargs="+", metavar="N", help=help_text)
    elif kind == "str":
        hyper.add_argument(flag, metavar=name.upper(), help=help_text)
    else:  # pragma: no cover - a new field type must be mapped above
        raise TypeError(f"no command-line mapping for field {name} of type {kind}")


def _description(agent_class: Any) -> str:
    name = agent_class.algorithm.upper()
    extra = " NPG takes the KL-normalised natural-gradient step with no line search." if agent_class.overrides else ""
    return f"Train {name} on a gymnasium environment ({DEFAULT_ENV} by default), resume a run, or evaluate one.{extra}"


def _help(name: str, default: str) -> str:
    if name not in FIELD_HELP:  # pragma: no cover - a new field needs its line in FIELD_HELP
        raise TypeError(f"no help text for field {name}: add it to FIELD_HELP")
    return f"{FIELD_HELP[name]} ({default})"


def _field_help(name: str, overrides: dict[str, Any]) -> str:
    """The field's help line with its default: one value, or the per-environment values."""
    base = overrides.get(name, next(f.default for f in dataclasses.fields(TRPOConfig) if f.name == name))
    by_value: dict[str, list[str]] = {}
    for env, table in ENV_DEFAULTS.items():
        value = overrides.get(name, table.get(name, base))
        if value != base:
            by_value.setdefault(_show(value), []).append(env)
    if not by_value:
        return _help(name, f"default: {_show(base)}")
    groups = "; ".join(f"{value} for {', '.join(envs)}" for value, envs in by_value.items())
    return _help(name, f"default: per environment: {groups}; {_show(base)} otherwise")


def _total_steps_default() -> str:
    by_value: dict[int, list[str]] = {}
    for env, steps in DEFAULT_TOTAL_STEPS.items():
        by_value.setdefault(steps, []).append(env)
    groups = "; ".join(f"{steps:,} for {', '.join(envs)}" for steps, envs in by_value.items())
    return f"default: per environment: {groups}; {default_total_steps('-'):,} otherwise"


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return " ".join(str(item) for item in value)
    return str(value)


def _integer(minimum: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum} (got {value})")
        return value

    return parse


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(
            f"not valid JSON ({error.msg} at character {error.pos}): give an object such as '{{\"g\": 9.81}}'"
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"g\": 9.81}}' (got {text!r})")
    return value


# ---------------------------------------------------------------------------------------- entry point
def main(agent_class: Any, argv: Sequence[str] | None = None) -> int:
    """Entry point: train, resume or evaluate, per the flags; returns the exit code."""
    parser = build_parser(agent_class)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a one-line argparse error (2)
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        if args.eval is not None:
            return evaluate_only(agent_class, args, parser)
        if args.resume is not None:
            return resume(agent_class, args, parser)
        return start(agent_class, args, parser)
    except DistributedError as error:  # ranks that disagree or cannot meet, before training
        if args.debug:
            raise
        print(f"{parser.prog}: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_FAILED
    except UsageError as error:
        if args.debug:
            raise
        print(f"{parser.prog}: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    except NonFiniteDataError as error:  # the environment's data, when the agent is built or evaluated
        if args.debug:
            raise
        print(f"{parser.prog}: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{parser.prog}: interrupted; nothing was written", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        release_process_group()


def start(agent_class: Any, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """A new run: build the agent, then claim its run directory, write ``config.json`` and train."""
    env = args.env if args.env is not None else DEFAULT_ENV
    seed = args.seed if args.seed is not None else DEFAULT_SEED
    if args.run_dir is not None:
        _check_free(args.run_dir)  # before building anything: a taken directory is refused at once
    hyperparameters = hyperparameters_from(args)
    agent = _build(lambda: agent_class(env=env, seed=seed, **hyperparameters))
    try:
        total_steps = args.total_steps if args.total_steps is not None else default_total_steps(env)
        root = args.runs_root if args.runs_root is not None else DEFAULT_RUNS_ROOT

        def create_run_dir() -> Path:
            run_dir = (
                _claim(args.run_dir) if args.run_dir is not None else _new_run_dir(root, env, agent.algorithm, seed)
            )
            record = {
                "algorithm": agent.algorithm,
                "total_steps": total_steps,
                "env_defaults": env_defaults(env),
                "command_line": hyperparameters,
                "config": agent.config.to_dict(),
            }
            atomic_write_text(run_dir / CONFIG_NAME, json.dumps(record, indent=2, default=list))
            return run_dir

        # data-parallel: rank 0 creates the directory and every rank gets its name (or its error)
        run_dir = create_run_dir() if agent.parallel is None else agent.parallel.from_rank_zero(create_run_dir)
    except BaseException:
        agent.close()
        raise
    return _train_announced(agent, run_dir, total_steps, args, parser)


def _train_announced(
    agent: Any, run_dir: Path, total_steps: int, args: argparse.Namespace, parser: argparse.ArgumentParser
) -> int:
    """Say where the run writes (the process that writes files), then :func:`train`."""
    if agent.writes_files:
        print(f"run directory: {run_dir}", file=sys.stderr)
    return train(agent, run_dir, total_steps, args, parser)


def resume(agent_class: Any, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``--resume``: continue a saved run to its target, or to the new ``--total-steps``."""
    _refuse_flags(args, parser, _RESUME_FLAGS, "--resume continues a run with its saved settings")
    run_dir, checkpoint = _resumable(args.resume)
    saved = _read_config(run_dir)
    agent = _load(agent_class, checkpoint)
    try:
        if agent.algorithm != agent_class.algorithm:
            raise UsageError(
                f"{run_dir} is a {agent.algorithm} run; resume it with: "
                f"python -m agents.{agent.algorithm} --resume {_quote(run_dir)}"
            )
        _check_resumable(agent, run_dir)
        if args.total_steps is not None:
            total_steps = args.total_steps
        elif saved is not None and isinstance(saved.get("total_steps"), int):
            total_steps = saved["total_steps"]
        else:
            raise UsageError(f"{run_dir / CONFIG_NAME} is missing or damaged; give the target with --total-steps N")
        done = agent.global_step
        if total_steps <= done:
            asked = "--total-steps" if args.total_steps is not None else "its target"
            raise UsageError(
                f"{run_dir} has already taken {done:,} steps, {asked} is {total_steps:,}: nothing to do; "
                f"pass --total-steps above {done} to train further"
            )
        try:
            read_progress(run_dir / CSV_NAME)  # a damaged log is refused before anything is rewritten
        except ValueError as error:
            raise UsageError(str(error)) from error
        if saved is not None and saved.get("total_steps") != total_steps and agent.writes_files:
            atomic_write_text(run_dir / CONFIG_NAME, json.dumps({**saved, "total_steps": total_steps}, indent=2))
    except BaseException:
        agent.close()
        raise
    return _train_announced(agent, run_dir, total_steps, args, parser)


def _check_resumable(agent: Any, run_dir: Path) -> None:
    """A one-line usage error for a run trained on another number of processes."""
    try:
        agent.check_resumable()
    except ValueError as error:
        raise UsageError(f"--resume {run_dir}: {error}") from None


def _resumable(run_dir: Path) -> tuple[Path, Path]:
    """The run directory and its checkpoint, or a one-line error saying what is missing."""
    if run_dir.is_file() and run_dir.name == CHECKPOINT_NAME:
        run_dir = run_dir.parent
    if not run_dir.is_dir():
        raise UsageError(
            f"--resume {run_dir}: no such run directory; pass the directory of a run (runs/<name> by default)"
        )
    checkpoint = run_dir / CHECKPOINT_NAME
    if not checkpoint.exists():
        if (run_dir / CONFIG_NAME).exists():
            raise UsageError(
                f"--resume {run_dir}: the run has no checkpoint (it stopped before its first one); "
                f"start it again with --run-dir {_quote(run_dir)} after deleting the directory, or with a new --run-dir"
            )
        raise UsageError(f"--resume {run_dir}: not a run directory (no {CHECKPOINT_NAME} in it)")
    return run_dir, checkpoint


def evaluate_only(agent_class: Any, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``--eval``: load a run directory or checkpoint and print its evaluation (nothing is written)."""
    _refuse_flags(args, parser, _EVAL_FLAGS, "--eval evaluates a saved run as it is")
    path = args.eval
    if not path.exists():
        raise UsageError(f"--eval {path}: no such run directory or checkpoint file")
    checkpoint = path / CHECKPOINT_NAME if path.is_dir() else path
    if not checkpoint.exists():
        raise UsageError(f"--eval {path}: the directory holds no {CHECKPOINT_NAME} (the run has no checkpoint yet)")
    if args.eval_episodes is not None and args.eval_episodes < 1:
        raise UsageError(f"--eval-episodes must be an integer >= 1 (got {args.eval_episodes})")
    agent = _load(agent_class, checkpoint)
    try:
        result = agent.evaluate(args.eval_episodes, env=_video_env(agent, args.record_video))
    finally:
        agent.close()
    print(evaluation_line(agent, result))
    return 0


# ---------------------------------------------------------------------------------------- training
def train(
    agent: Any, run_dir: Path, total_steps: int, args: argparse.Namespace, parser: argparse.ArgumentParser
) -> int:
    """Train to ``total_steps`` in all, then evaluate; a signal stops cleanly with the resume command."""
    video = _video_env(agent, args.record_video)  # a bad --record-video is refused before training
    stop = StopOnSignal()
    failure: Exception | None = None
    abandoned = False
    line = None
    with stop:
        try:
            try:
                agent.learn(
                    total_steps,
                    reset_num_timesteps=False,
                    run_dir=run_dir,
                    progress=not args.no_progress,
                    callback=stop.keep_training,
                )
            except KeyboardInterrupt:
                abandoned = True
            except Exception as error:
                if args.debug:
                    raise
                failure = error
            stop.immediate = True  # from here on a signal stops at once: nothing is left to save
            if not abandoned and failure is None and stop.signum is None and agent.writes_files:
                line = _evaluate_and_record(agent, run_dir, video)
        except KeyboardInterrupt:  # during the final evaluation
            pass
        finally:
            with suppress(KeyboardInterrupt):
                agent.close()
    prog = parser.prog
    if failure is not None:
        _print_failure(agent, run_dir, prog, failure)
        return EXIT_FAILED
    if not agent.writes_files:  # rank 0 reports how the run ended
        return 0 if stop.signum is None and not abandoned else 128 + (stop.signum or signal.SIGINT)
    if line is not None:
        print(line)
        return 0
    signum = stop.signum or signal.SIGINT
    print(f"{prog}: {_stopped_message(agent, run_dir, total_steps, signum, abandoned)}", file=sys.stderr)
    return 128 + signum


def _print_failure(agent: Any, run_dir: Path, prog: str, failure: Exception) -> None:
    """The one line printed when training failed: the error, and the command that resumes the saved run."""
    resume_command = f"python -m agents.{agent.algorithm} --resume {_quote(run_dir)}"
    rank = "" if agent.parallel is None else f"rank {agent.parallel.rank}: "
    print(
        f"{prog}: error: {rank}training stopped by {type(failure).__name__}: {_one_line(failure)}; the last "
        f"completed iteration is saved: resume with: {resume_command} (--debug shows the traceback)",
        file=sys.stderr,
    )


def _stopped_message(agent: Any, run_dir: Path, total_steps: int, signum: int, abandoned: bool) -> str:
    """The one line printed when a signal stopped training: what is saved and the command that goes on."""
    name, where = signal.Signals(signum).name, _quote(run_dir)
    resume_command = f"python -m agents.{agent.algorithm} --resume {where}"
    if not (run_dir / CHECKPOINT_NAME).exists():
        return f"stopped by {name} before the first checkpoint: nothing to resume; delete {where} and start again"
    if abandoned:
        return f"stopped by {name} mid-iteration; saved as of the iteration before; resume it with: {resume_command}"
    if agent.global_step >= total_steps:
        return (
            f"stopped by {name} after the last iteration: training is complete and saved; "
            f"evaluate it with: python -m agents.{agent.algorithm} --eval {where}"
        )
    return f"stopped by {name} at step {agent.global_step:,}; the run is saved; resume it with: {resume_command}"


def _video_env(agent: Any, folder: Path | None) -> Any:
    """``None`` without ``--record-video``; else a factory of evaluation environments that record every episode."""
    if folder is None:
        return None
    if agent.env_source.kind != "id":
        raise UsageError("--record-video needs a registered --env id: the env is made with render_mode='rgb_array'")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UsageError(f"--record-video {folder} is not empty; pass a new directory (videos are never overwritten)")
    import gymnasium as gym
    from gymnasium.wrappers import RecordVideo

    config = agent.config

    def recorded(name: str, into: Path = folder) -> gym.Env:
        env = gym.make(config.env, **{**config.env_kwargs, "render_mode": "rgb_array"})
        try:
            with warnings.catch_warnings():  # the folder was new or empty; each episode writes its own file
                warnings.filterwarnings("ignore", message=".*Overwriting existing videos")
                return RecordVideo(env, str(into), name_prefix=name, episode_trigger=lambda episode: episode == 0)
        except BaseException:
            env.close()
            raise

    try:  # fails here, in one line, without moviepy or rgb_array rendering
        with tempfile.TemporaryDirectory() as probe:
            recorded("probe", Path(probe) / "videos").close()
    except (gym.error.Error, ImportError, ValueError, TypeError) as error:
        raise UsageError(f"--record-video: {_one_line(error)}") from error
    names = (f"episode-{index}" for index in range(1 << 30))
    return lambda: recorded(next(names))


def _evaluate_and_record(agent: Any, run_dir: Path, video: Any = None) -> str:
    """The final evaluation: ``evaluation.txt`` and the learning curve with its point; returns the line.

    ``video`` is :func:`_video_env`'s factory of recording environments, or ``None``.
    """
    result = agent.evaluate(env=video)
    line = evaluation_line(agent, result)
    atomic_write_text(run_dir / EVALUATION_NAME, line + "\n")
    title = f"{agent.algorithm.upper()} {agent.config.env}"
    plot_learning_curve(run_dir / CSV_NAME, run_dir / PLOT_NAME, title, result["mean_return"])
    return line


class StopOnSignal:
    """SIGINT and SIGTERM while training: the first stops after the current iteration, the next abandons it.

    ``keep_training`` is the ``callback`` of :meth:`~agents.trpo.TRPO.learn`: it returns ``False``
    once a signal came. A further signal (or any signal once ``immediate`` is set) raises
    ``KeyboardInterrupt`` at once. Outside the ``with`` block the previous handlers are back.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.immediate = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: signals keep their handlers
                break
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        if self.immediate or not first:
            raise KeyboardInterrupt

    def keep_training(self, agent: Any) -> bool:
        return self.signum is None


def _built(make: Any) -> Any:
    """``make()`` with Ctrl-C held while it builds the environments, then acted on.

    Worker processes (``async`` mode) are started meanwhile and must not die of a terminal's Ctrl-C,
    which reaches them too; the main process stops them. Forked workers inherit a handler that
    only records the signal; workers started afresh (spawn, forkserver) inherit an ignored SIGINT.
    A Ctrl-C recorded here closes the new agent and raises ``KeyboardInterrupt`` once it is built.
    """
    pending: list[int] = []
    forked = multiprocessing.get_start_method() == "fork"
    handler = (lambda signum, frame: pending.append(signum)) if forked else signal.SIG_IGN
    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: signals keep their handlers
        return make()
    try:
        agent = make()
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        agent.close()
        raise KeyboardInterrupt
    return agent


# ---------------------------------------------------------------------------------------- helpers
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


def _given_flags(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, str]:
    """``{dest: flag as given}`` for every flag on the command line (every default is ``None`` or ``False``)."""
    given = {}
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.dest == "help" or value is None:
            continue
        if value is False and not isinstance(action, argparse.BooleanOptionalAction):
            continue  # a store_true flag left out
        negative = isinstance(action, argparse.BooleanOptionalAction) and value is False
        given[action.dest] = action.option_strings[1] if negative else action.option_strings[0]
    return given


def _refuse_flags(args: argparse.Namespace, parser: argparse.ArgumentParser, allowed: set[str], why: str) -> None:
    """Refuse, by their names, all the flags given that do not apply in this mode."""
    given = _given_flags(args, parser)
    refused = [flag for dest, flag in given.items() if dest not in allowed]
    if refused:
        keep = ", ".join(sorted(_flag_name(parser, dest) for dest in allowed if dest not in ("resume", "eval")))
        raise UsageError(f"{why}; drop {' '.join(refused)} (only {keep} apply here)")


def _flag_name(parser: argparse.ArgumentParser, dest: str) -> str:
    for action in parser._actions:
        if action.dest == dest and action.option_strings:
            return action.option_strings[0]
    return "--" + dest.replace("_", "-")  # pragma: no cover


def _build(make: Any) -> Any:
    """Build an agent; its ``ValueError`` (bad value, unknown environment, missing dependency) is a usage error."""
    try:
        return _built(make)
    except ValueError as error:
        raise UsageError(str(error)) from error


def _load(agent_class: Any, checkpoint: Path) -> Any:
    try:
        return _built(lambda: agent_class.load(checkpoint))
    except ValueError as error:
        message = str(error)
        raise UsageError(message if str(checkpoint) in message else f"cannot load {checkpoint}: {message}") from error
    except NonFiniteDataError:
        raise
    except Exception as error:  # an unreadable file: whatever torch or pickle raised, one line naming it
        raise UsageError(
            f"cannot load {checkpoint} ({type(error).__name__}: {_one_line(error)}); "
            "the file is damaged or not a checkpoint of these agents"
        ) from error


def _read_config(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``config.json``, or ``None`` if it is missing or unreadable."""
    try:
        saved = json.loads((run_dir / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def _taken(path: Path) -> str:
    return (
        f"--run-dir {path} already holds files (a run?) and is never overwritten; continue that run with "
        f"--resume {_quote(path)}, or pass a new --run-dir"
    )


def _check_free(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise UsageError(f"--run-dir {path} is a file; pass a directory that does not exist yet")
    if path.is_dir() and any(path.iterdir()):
        raise UsageError(_taken(path))


def _claim(path: Path) -> Path:
    """Take an explicit ``--run-dir``: created if needed, and claimed by creating ``config.json`` exclusively."""
    _check_free(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with (path / CONFIG_NAME).open("x"):
            pass
    except FileExistsError:
        raise UsageError(_taken(path)) from None
    except OSError as error:
        raise UsageError(f"cannot create --run-dir {path}: {error.strerror or error}") from error
    return path


def _new_run_dir(root: Path, env: str, algorithm: str, seed: int) -> Path:
    """A new directory ``<root>/<env>__<algo>__<seed>__<time>__<suffix>``, created atomically (never shared)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            path = root / run_name(env, algorithm, seed)
            try:
                path.mkdir()
            except FileExistsError:
                continue
            return path
    except OSError as error:
        raise UsageError(f"cannot create a run directory under {root}: {error.strerror or error}") from error
    raise UsageError(f"cannot find a free run directory name under {root}")  # pragma: no cover


def _timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def _suffix() -> str:
    return secrets.token_hex(3)


def run_name(env: str, algorithm: str, seed: int) -> str:
    """``<env>__<algo>__<seed>__<time>__<suffix>`` (``/`` and ``:`` in the env become ``_``; a random suffix)."""
    name = env.replace("/", "_").replace(":", "_")
    return f"{name}__{algorithm}__{seed}__{_timestamp()}__{_suffix()}"


def _quote(path: Path) -> str:
    return shlex.quote(str(path))


def _one_line(error: object) -> str:
    return " ".join(str(error).split())


def evaluation_line(agent: Any, result: dict[str, Any]) -> str:
    """The result line; ``algo`` is what the run was trained with (read from its checkpoint when loaded)."""
    return (
        f"final evaluation: env={agent.config.env} algo={agent.algorithm} seed={agent.config.seed} "
        f"steps={agent.global_step} episodes={len(result['returns'])} deterministic=True "
        f"mean_return={result['mean_return']:.2f} std_return={result['std_return']:.2f}"
    )
