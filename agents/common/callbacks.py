"""Callbacks for ``learn``, in the manner of Stable-Baselines3: hooks at the start, after every iteration, at the end.

``agent.learn(total_timesteps, callback=...)`` takes ``None``, a :class:`Callback`, a function of
the agent (returning ``False`` stops training), or a list of these (:func:`as_callback`). ``learn``
calls :meth:`Callback.on_training_start` once before its first iteration,
:meth:`Callback.on_iteration` after every iteration with its metrics (before the iteration is
logged and checkpointed, so what a callback adds to the metrics is logged), and
:meth:`Callback.on_training_end` once after the last one, also when a callback stopped training.

>>> from agents import TRPO                                                   # doctest: +SKIP
>>> stop = StopTrainingOnRewardThreshold(475.0)                               # doctest: +SKIP
>>> TRPO("CartPole-v1").learn(100_000, callback=EvalCallback(                 # doctest: +SKIP
...     eval_freq=10_000, best_model_save_path="runs/best", callback_on_new_best=stop))

Steps are environment steps over all sub-environments (``agent.global_step``); an iteration adds
``batch_size`` of them at once, so "every ``n`` steps" means after each iteration that crosses a
multiple of ``n``. In a data-parallel run every rank calls the callbacks (the agent's weights and
the evaluation seeds are the same on all ranks, so they all take the same decisions) and rank 0
alone writes files.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from agents.common.checkpoint import atomic_write_bytes
from agents.common.config import check_integer

if TYPE_CHECKING:
    from agents.trpo.agent import TRPO

EVALUATIONS_NAME = "evaluations.npz"
BEST_MODEL_NAME = "best_model.pt"
CALLBACK_FORMS = "None, a Callback, a function of the agent (returning False stops), or a list of these"


class Callback:
    """Base class of the callbacks of ``learn``; every hook does nothing unless overridden.

    Subclasses override any of the three hooks. :meth:`on_iteration` returning ``False`` stops
    training after that iteration (``None`` and ``True`` continue), as ``_on_step`` does in
    Stable-Baselines3.
    """

    def on_training_start(self, agent: TRPO) -> None:
        """Called once by ``learn`` before its first iteration."""

    def on_iteration(self, agent: TRPO, metrics: dict[str, Any]) -> bool | None:
        """Called after every iteration with its metrics (``agent.history[-1]``); ``False`` stops training."""
        return None

    def on_training_end(self, agent: TRPO) -> None:
        """Called once by ``learn`` after its last iteration, also when a callback stopped training."""


class CallbackList(Callback):
    """Several callbacks run in order; training stops if any of them returns ``False`` (all are still called)."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = list(callbacks)

    def on_training_start(self, agent: TRPO) -> None:
        for callback in self.callbacks:
            callback.on_training_start(agent)

    def on_iteration(self, agent: TRPO, metrics: dict[str, Any]) -> bool | None:
        results = [callback.on_iteration(agent, metrics) for callback in self.callbacks]
        return False if any(result is False for result in results) else None

    def on_training_end(self, agent: TRPO) -> None:
        for callback in self.callbacks:
            callback.on_training_end(agent)


class FunctionCallback(Callback):
    """``function(agent)`` called after every iteration; its returning ``False`` stops training."""

    def __init__(self, function: Callable[[TRPO], bool | None]) -> None:
        self.function = function

    def on_iteration(self, agent: TRPO, metrics: dict[str, Any]) -> bool | None:
        return self.function(agent)


def as_callback(callback: Any, name: str = "callback") -> Callback:
    """``callback`` as one :class:`Callback`: ``None`` -> a no-op, a list -> :class:`CallbackList`,
    a function -> :class:`FunctionCallback`; anything else is a one-line ``ValueError`` naming ``name``."""
    if callback is None:
        return Callback()
    if isinstance(callback, Callback):
        return callback
    if isinstance(callback, (list, tuple)):
        return CallbackList([as_callback(each, name) for each in callback])
    if isinstance(callback, type):
        raise ValueError(f"{name} must be {CALLBACK_FORMS}; got the class {callback.__name__}: pass an instance")
    if callable(callback):
        return FunctionCallback(callback)
    raise ValueError(f"{name} must be {CALLBACK_FORMS} (got {type(callback).__name__})")


def crossed_multiple(previous_step: int, step: int, frequency: int) -> bool:
    """Whether going from ``previous_step`` to ``step`` environment steps crossed a multiple of ``frequency``."""
    return step // frequency > previous_step // frequency


def _directory(name: str, value: Any, optional: bool = False) -> Path:
    """``value`` as a directory path; anything else, or a path to a file, is a one-line ``ValueError``."""
    if not isinstance(value, (str, os.PathLike)):
        accepted = "a directory path or None" if optional else "a directory path"
        raise ValueError(f"{name} must be {accepted} (got {type(value).__name__})")
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name} {str(path)!r} is a file; pass a directory")
    return path


def _refuse_existing(name: str, path: Path) -> None:
    if path.exists():
        raise ValueError(
            f"{name} already holds {path.name} of another run ({path}), which this callback would overwrite; "
            "pass a new directory or move the file"
        )


class EvalCallback(Callback):
    """Evaluate the agent every ``eval_freq`` environment steps; keep the best model and the evaluations.

    Args:
        eval_env: where to evaluate: ``None`` (fresh environments like the training ones, seeded),
            a gymnasium id, a ``gymnasium.Env`` or a function returning one (``agent.evaluate``'s ``env``).
        eval_freq: evaluate after each iteration that crosses a multiple of this many environment steps.
        n_eval_episodes: episodes per evaluation.
        deterministic: act with the policy's mode (``True``) or sample actions.
        best_model_save_path: directory where ``best_model.pt`` (:meth:`TRPO.save`, loadable with
            ``TRPO.load``) is written whenever the mean return improves on the best so far.
        log_path: directory where ``evaluations.npz`` is rewritten after every evaluation, with
            Stable-Baselines3's keys: ``timesteps`` ``(n,)``, ``results`` and ``ep_lengths``
            ``(n, n_eval_episodes)``.
        callback_on_new_best: called (``on_iteration``) on a new best mean return, e.g.
            :class:`StopTrainingOnRewardThreshold`; its ``False`` stops training.
        callback_after_eval: called after every evaluation, e.g.
            :class:`StopTrainingOnNoModelImprovement`; its ``False`` stops training.
        verbose: ``1`` prints one line per evaluation, ``0`` nothing.

    After an evaluation the iteration's metrics (``agent.history``) get ``eval/mean_return``,
    ``eval/std_return``, ``eval/mean_length`` and ``eval/best_mean_return``. Files are written
    atomically; a directory already holding another run's ``evaluations.npz`` or ``best_model.pt``
    is refused when training starts.
    """

    def __init__(
        self,
        eval_env: str | gym.Env | Callable[[], gym.Env] | None = None,
        eval_freq: int = 10_000,
        n_eval_episodes: int = 5,
        deterministic: bool = True,
        best_model_save_path: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        callback_on_new_best: Any = None,
        callback_after_eval: Any = None,
        verbose: int = 1,
    ) -> None:
        if eval_env is not None and not isinstance(eval_env, (str, gym.Env)) and not callable(eval_env):
            raise ValueError(
                "eval_env must be None, a gymnasium id, a gymnasium.Env or a function returning one "
                f"(got {type(eval_env).__name__})"
            )
        if not isinstance(deterministic, bool):
            raise ValueError(f"deterministic must be True or False (got {deterministic!r})")
        self.eval_env = eval_env
        self.eval_freq = check_integer("eval_freq", eval_freq, 1)
        self.n_eval_episodes = check_integer("n_eval_episodes", n_eval_episodes, 1)
        self.deterministic = deterministic
        self.best_model_save_path = (
            None if best_model_save_path is None else _directory("best_model_save_path", best_model_save_path, True)
        )
        self.log_path = None if log_path is None else _directory("log_path", log_path, True)
        self.callback_on_new_best = as_callback(callback_on_new_best, "callback_on_new_best")
        self.callback_after_eval = as_callback(callback_after_eval, "callback_after_eval")
        self.verbose = check_integer("verbose", verbose, 0)
        self.last_mean_reward = -math.inf
        self.best_mean_reward = -math.inf
        self.evaluations_timesteps: list[int] = []
        self.evaluations_results: list[list[float]] = []
        self.evaluations_length: list[list[int]] = []
        self._claimed = False  # the output files were checked once; later learn() calls continue them
        self._last_step = 0

    def on_training_start(self, agent: TRPO) -> None:
        if not self._claimed:
            continued = self._continue_evaluations(agent)
            if self.log_path is not None and not continued:
                _refuse_existing("log_path", self.log_path / EVALUATIONS_NAME)
            if self.best_model_save_path is not None and not continued:
                _refuse_existing("best_model_save_path", self.best_model_save_path / BEST_MODEL_NAME)
            self._claimed = True
        self._last_step = agent.global_step
        self.callback_on_new_best.on_training_start(agent)
        self.callback_after_eval.on_training_start(agent)

    def _continue_evaluations(self, agent: TRPO) -> bool:
        """Take up the evaluations of a run this agent continues: ``log_path``'s ones, none past its step.

        A resumed run (``TRPO.load`` then ``learn``) with a new ``EvalCallback`` on the same paths keeps
        its evaluations, its best mean return and its ``best_model.pt``; files of later steps belong
        to another run and are refused.
        """
        path = None if self.log_path is None else self.log_path / EVALUATIONS_NAME
        if path is None or not path.exists() or agent.global_step == 0:
            return False
        with np.load(path) as saved:
            timesteps, results, lengths = saved["timesteps"], saved["results"], saved["ep_lengths"]
        if timesteps.size and int(timesteps.max()) > agent.global_step:
            return False
        self.evaluations_timesteps = [int(step) for step in timesteps]
        self.evaluations_results = results.tolist()
        self.evaluations_length = lengths.tolist()
        if results.size:
            self.best_mean_reward = float(results.mean(axis=1).max())
        return True

    def on_iteration(self, agent: TRPO, metrics: dict[str, Any]) -> bool | None:
        previous, self._last_step = self._last_step, agent.global_step
        if not crossed_multiple(previous, agent.global_step, self.eval_freq):
            return None
        result = self.evaluate(agent)
        mean = result["mean_return"]
        self.last_mean_reward = mean
        new_best = mean > self.best_mean_reward
        if new_best:
            self.best_mean_reward = mean
        metrics.update(
            {
                "eval/mean_return": mean,
                "eval/std_return": result["std_return"],
                "eval/mean_length": float(np.mean(result["lengths"])),
                "eval/best_mean_return": self.best_mean_reward,
            }
        )
        self._report(agent, result, new_best)
        keep_going = True
        if new_best:
            if self.best_model_save_path is not None:
                agent.save(self.best_model_save_path / BEST_MODEL_NAME)  # every rank: a collective
            keep_going = self.callback_on_new_best.on_iteration(agent, metrics) is not False
        return False if self.callback_after_eval.on_iteration(agent, metrics) is False or not keep_going else None

    def on_training_end(self, agent: TRPO) -> None:
        self.callback_on_new_best.on_training_end(agent)
        self.callback_after_eval.on_training_end(agent)

    def evaluate(self, agent: TRPO) -> dict[str, Any]:
        """One evaluation (``agent.evaluate``), recorded in the ``evaluations_*`` lists and ``evaluations.npz``."""
        options: dict[str, Any] = {} if self.eval_env is None else {"env": self.eval_env}
        result = agent.evaluate(self.n_eval_episodes, self.deterministic, **options)
        self.evaluations_timesteps.append(agent.global_step)
        self.evaluations_results.append([float(value) for value in result["returns"]])
        self.evaluations_length.append([int(value) for value in result["lengths"]])
        if self.log_path is not None and agent.writes_files:
            self.write_evaluations(self.log_path / EVALUATIONS_NAME)
        return result

    def write_evaluations(self, path: Path) -> None:
        """Write the evaluations so far to ``path`` (``.npz``, Stable-Baselines3's keys) atomically."""
        buffer = io.BytesIO()
        np.savez(
            buffer,
            timesteps=np.array(self.evaluations_timesteps, dtype=np.int64),
            results=np.array(self.evaluations_results, dtype=np.float64),
            ep_lengths=np.array(self.evaluations_length, dtype=np.int64),
        )
        atomic_write_bytes(path, buffer.getvalue())

    def _report(self, agent: TRPO, result: dict[str, Any], new_best: bool) -> None:
        if self.verbose >= 1 and agent.writes_files:
            print(
                f"eval at step {agent.global_step}: mean return {result['mean_return']:.2f} "
                f"± {result['std_return']:.2f} over {len(result['returns'])} episodes"
                + (" (new best)" if new_best else f" (best {self.best_mean_reward:.2f})"),
                flush=True,
            )


def _evaluation_metric(metrics: dict[str, Any], owner: str) -> float:
    """The best mean evaluation return in ``metrics`` (set by :class:`EvalCallback`), else a ``ValueError``."""
    for key in ("eval/best_mean_return", "eval/mean_return"):
        if key in metrics:
            return float(metrics[key])
    raise ValueError(
        f"{owner} reads EvalCallback's results: pass it as EvalCallback(callback_on_new_best=...) "
        "or EvalCallback(callback_after_eval=...)"
    )


class StopTrainingOnRewardThreshold(Callback):
    """Stop training once the best mean evaluation return reaches ``reward_threshold``.

    For :class:`EvalCallback`'s ``callback_on_new_best`` (or ``callback_after_eval``).
    """

    def __init__(self, reward_threshold: float, verbose: int = 0) -> None:
        if isinstance(reward_threshold, bool) or not isinstance(reward_threshold, (int, float)):
            raise ValueError(f"reward_threshold must be a number (got {reward_threshold!r})")
        if math.isnan(reward_threshold):
            raise ValueError("reward_threshold must be a number (got nan)")
        self.reward_threshold = float(reward_threshold)
        self.verbose = check_integer("verbose", verbose, 0)

    def on_iteration(self, agent: TRPO, metrics: dict[str, Any]) -> bool | None:
        best = _evaluation_metric(metrics, type(self).__name__)
        if best < self.reward_threshold:
            return None
        if self.verbose >= 1 and agent.writes_files:
            print(
                f"stopping training at step {agent.global_step}: the best mean return {best:.2f} "
                f"reached the threshold {self.reward_threshold:.2f}",
                flush=True,
            )
        return False


class StopTrainingOnNoModelImprovement(Callback):
    """Stop training after more than ``max_no_improvement_evals`` evaluations in a row without a new best.

    For :class:`EvalCallback`'s ``callback_after_eval``. The first ``min_evals`` evaluations never
    count (as in Stable-Baselines3).
    """

    def __init__(self, max_no_improvement_evals: int, min_evals: int = 0, verbose: int = 0) -> None:
        self.max_no_improvement_evals = check_integer("max_no_improvement_evals", max_no_improvement_evals, 0)
        self.min_evals = check_integer("min_evals", min_evals, 0)
        self.verbose = check_integer("verbose", verbose, 0)
        self.evaluations = 0
        self.no_improvement_evals = 0
        self.last_best_mean_reward = -math.inf

    def on_iteration(self, agent: TRPO, metrics: dict[str, Any]) -> bool | None:
        best = _evaluation_metric(metrics, type(self).__name__)
        self.evaluations += 1
        keep_going = True
        if self.evaluations > self.min_evals:
            if best > self.last_best_mean_reward:
                self.no_improvement_evals = 0
            else:
                self.no_improvement_evals += 1
                keep_going = self.no_improvement_evals <= self.max_no_improvement_evals
        self.last_best_mean_reward = best
        if not keep_going and self.verbose >= 1 and agent.writes_files:
            print(
                f"stopping training at step {agent.global_step}: no new best mean return "
                f"in the last {self.no_improvement_evals} evaluations",
                flush=True,
            )
        return None if keep_going else False


class CheckpointCallback(Callback):
    """Save the agent to ``save_path/{name_prefix}_{global_step}_steps.pt`` every ``save_freq`` environment steps.

    Each file is a :meth:`TRPO.save` checkpoint (atomic), loadable with ``TRPO.load``. A
    ``save_path`` already holding files of this prefix for steps past the agent's
    ``global_step`` (another run's, which this one would overwrite) is refused when training
    starts; files up to the current step (the run being continued) are kept.
    """

    def __init__(self, save_freq: int, save_path: str | os.PathLike[str], name_prefix: str = "model") -> None:
        self.save_freq = check_integer("save_freq", save_freq, 1)
        self.save_path = _directory("save_path", save_path)
        if not isinstance(name_prefix, str) or not name_prefix or any(sep in name_prefix for sep in "/\\"):
            raise ValueError(f"name_prefix must be a non-empty file name prefix without '/' (got {name_prefix!r})")
        self.name_prefix = name_prefix
        self.saved: list[Path] = []
        self._last_step = 0

    def checkpoint_path(self, global_step: int) -> Path:
        """Where the checkpoint at ``global_step`` environment steps goes."""
        return self.save_path / f"{self.name_prefix}_{global_step}_steps.pt"

    def on_training_start(self, agent: TRPO) -> None:
        pattern = re.compile(rf"{re.escape(self.name_prefix)}_(\d+)_steps\.pt")
        ahead = []
        if self.save_path.is_dir():
            for entry in self.save_path.iterdir():
                match = pattern.fullmatch(entry.name)
                if match and int(match.group(1)) > agent.global_step and entry not in self.saved:
                    ahead.append(entry.name)
        if ahead:
            raise ValueError(
                f"save_path {str(self.save_path)!r} already holds {sorted(ahead)[0]} of another run, past this "
                f"agent's step {agent.global_step}; pass a new directory or another name_prefix"
            )
        self._last_step = agent.global_step

    def on_iteration(self, agent: TRPO, metrics: dict[str, Any]) -> bool | None:
        previous, self._last_step = self._last_step, agent.global_step
        if crossed_multiple(previous, agent.global_step, self.save_freq):
            path = self.checkpoint_path(agent.global_step)
            agent.save(path)  # every rank: a collective; rank 0 writes
            self.saved.append(path)
        return None


__all__ = [
    "Callback",
    "CallbackList",
    "CheckpointCallback",
    "EvalCallback",
    "FunctionCallback",
    "StopTrainingOnNoModelImprovement",
    "StopTrainingOnRewardThreshold",
    "as_callback",
]
