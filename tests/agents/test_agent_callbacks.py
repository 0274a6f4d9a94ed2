"""Callbacks of ``learn`` (agents.common.callbacks): the accepted forms, the hooks' order, EvalCallback's
schedule, files and best model, the stop callbacks, CheckpointCallback, and one-line argument errors.

The schedule and bookkeeping are checked on a scripted stand-in agent (exact evaluation values);
the tests at the end train a small CartPole TRPO through ``learn``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from agents import TRPO
from agents.common.callbacks import (
    Callback,
    CallbackList,
    CheckpointCallback,
    EvalCallback,
    FunctionCallback,
    StopTrainingOnNoModelImprovement,
    StopTrainingOnRewardThreshold,
    as_callback,
)

BATCH = 2 * 64  # n_steps=64, num_envs=2
SMALL = {"n_steps": 64, "num_envs": 2, "hidden_sizes": (16, 16)}


class ScriptedAgent:
    """What the callbacks use of an agent: steps, history, evaluate (scripted means), save, writes_files."""

    def __init__(self, means: list[float] | None = None, batch: int = BATCH, writes_files: bool = True) -> None:
        self.means = list(means or [])
        self.batch = batch
        self.writes_files = writes_files
        self.global_step = 0
        self.iteration = 0
        self.history: list[dict[str, Any]] = []
        self.evaluated_at: list[int] = []
        self.saved_at: list[tuple[int, Path]] = []

    def evaluate(self, n_episodes: int | None = None, deterministic: bool = True, **options: Any) -> dict[str, Any]:
        mean = self.means[len(self.evaluated_at)]
        self.evaluated_at.append(self.global_step)
        returns = [mean - 1.0, mean + 1.0] * (n_episodes // 2) + [mean] * (n_episodes % 2)
        return {
            "mean_return": float(np.mean(returns)),
            "std_return": float(np.std(returns)),
            "returns": returns,
            "lengths": [int(value) for value in returns],
        }

    def save(self, path: str | Path) -> None:
        self.saved_at.append((self.global_step, Path(path)))
        if self.writes_files:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(str(self.global_step))


def drive(agent: ScriptedAgent, callback: Any, iterations: int) -> list[bool | None]:
    """``learn``'s use of a callback: start, one on_iteration per iteration until False, end."""
    callback = as_callback(callback)
    callback.on_training_start(agent)
    answers = []
    for _ in range(iterations):
        agent.global_step += agent.batch
        agent.iteration += 1
        agent.history.append({"iteration": agent.iteration, "global_step": agent.global_step})
        answers.append(callback.on_iteration(agent, agent.history[-1]))
        if answers[-1] is False:
            break
    callback.on_training_end(agent)
    return answers


class Recorder(Callback):
    def __init__(self, stop_at: int | None = None) -> None:
        self.events: list[tuple[str, int]] = []
        self.metrics: list[dict[str, Any]] = []
        self.stop_at = stop_at

    def on_training_start(self, agent: Any) -> None:
        self.events.append(("start", agent.global_step))

    def on_iteration(self, agent: Any, metrics: dict[str, Any]) -> bool | None:
        self.events.append(("iteration", agent.global_step))
        self.metrics.append(metrics)
        return False if agent.iteration == self.stop_at else None

    def on_training_end(self, agent: Any) -> None:
        self.events.append(("end", agent.global_step))


def assert_one_line_error(error: pytest.ExceptionInfo[ValueError], *words: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message


# ------------------------------------------------------------------ forms and lists
def test_as_callback_accepts_none_callbacks_functions_and_lists():
    agent = ScriptedAgent()
    noop = as_callback(None)
    assert type(noop) is Callback and noop.on_iteration(agent, {}) is None
    recorder = Recorder()
    assert as_callback(recorder) is recorder
    calls = []
    function = as_callback(lambda seen: calls.append(seen))
    assert isinstance(function, FunctionCallback) and function.on_iteration(agent, {}) is None and calls == [agent]
    nested = as_callback([recorder, (lambda seen: None, None)])
    assert isinstance(nested, CallbackList) and nested.callbacks[0] is recorder
    assert isinstance(nested.callbacks[1], CallbackList) and type(nested.callbacks[1].callbacks[1]) is Callback


@pytest.mark.parametrize("bad", [3, "stop", {"on_iteration": None}, [Recorder(), 1.5], EvalCallback])
def test_as_callback_refuses_anything_else_in_one_line(bad):
    with pytest.raises(ValueError) as error:
        as_callback(bad)
    assert_one_line_error(error, "callback must be None, a Callback, a function")


def test_hooks_run_in_order_and_a_list_stops_when_any_member_says_false():
    first, second = Recorder(stop_at=3), Recorder()
    agent = ScriptedAgent()
    answers = drive(agent, [first, second], iterations=10)
    assert answers == [None, None, False] and agent.iteration == 3
    expected = [("start", 0), *[("iteration", step * BATCH) for step in (1, 2, 3)], ("end", 3 * BATCH)]
    assert first.events == expected and second.events == expected  # every member is called, even past a False
    assert first.metrics == agent.history and all(a is b for a, b in zip(first.metrics, agent.history, strict=True))


def test_a_function_callback_stops_on_false_only():
    answers = drive(ScriptedAgent(), lambda agent: agent.iteration < 2, iterations=5)
    assert answers == [True, False]


# ------------------------------------------------------------------ EvalCallback
def test_eval_callback_evaluates_when_the_step_crosses_a_multiple_of_eval_freq(tmp_path):
    agent = ScriptedAgent(means=[1.0, 3.0, 2.0, 5.0])
    callback = EvalCallback(eval_freq=300, n_eval_episodes=4, log_path=tmp_path / "logs", verbose=0)
    drive(agent, callback, iterations=10)  # steps 128, 256, ..., 1280; multiples 300, 600, 900, 1200
    assert agent.evaluated_at == [384, 640, 1024, 1280] == callback.evaluations_timesteps
    assert callback.last_mean_reward == 5.0 and callback.best_mean_reward == 5.0
    with np.load(tmp_path / "logs" / "evaluations.npz") as saved:
        assert sorted(saved.files) == ["ep_lengths", "results", "timesteps"]
        np.testing.assert_array_equal(saved["timesteps"], [384, 640, 1024, 1280])
        assert saved["results"].shape == saved["ep_lengths"].shape == (4, 4)
        np.testing.assert_allclose(saved["results"].mean(axis=1), [1.0, 3.0, 2.0, 5.0])
    evaluated = [row for row in agent.history if "eval/mean_return" in row]
    assert [row["global_step"] for row in evaluated] == [384, 640, 1024, 1280]
    assert [row["eval/best_mean_return"] for row in evaluated] == [1.0, 3.0, 3.0, 5.0]
    assert not list((tmp_path / "logs").glob("*.tmp"))  # atomic writes leave no temporary file


def test_eval_callback_saves_the_best_model_on_improvement_only(tmp_path):
    agent = ScriptedAgent(means=[1.0, 3.0, 2.0, 3.0, 4.0])
    callback = EvalCallback(eval_freq=BATCH, n_eval_episodes=1, best_model_save_path=tmp_path, verbose=0)
    drive(agent, callback, iterations=5)
    best = tmp_path / "best_model.pt"
    assert agent.saved_at == [(BATCH, best), (2 * BATCH, best), (5 * BATCH, best)]  # an equal mean is no new best
    assert best.read_text() == str(5 * BATCH)


def test_eval_callback_calls_new_best_and_after_eval_callbacks_and_stops_on_their_false():
    new_best, after_eval = Recorder(), Recorder()
    agent = ScriptedAgent(means=[1.0, 0.0, 2.0])
    callback = EvalCallback(
        eval_freq=2 * BATCH, callback_on_new_best=new_best, callback_after_eval=after_eval, verbose=0
    )
    drive(agent, callback, iterations=6)
    assert [step for event, step in new_best.events if event == "iteration"] == [2 * BATCH, 6 * BATCH]
    assert [step for event, step in after_eval.events if event == "iteration"] == [2 * BATCH, 4 * BATCH, 6 * BATCH]
    assert new_best.events[0] == ("start", 0) and after_eval.events[-1] == ("end", 6 * BATCH)
    stopping = EvalCallback(eval_freq=BATCH, callback_after_eval=lambda agent: agent.iteration < 2, verbose=0)
    assert drive(ScriptedAgent(means=[1.0, 2.0, 3.0]), stopping, iterations=5) == [None, False]


def test_stop_training_on_reward_threshold_stops_at_the_first_best_above_it(capsys):
    stop = StopTrainingOnRewardThreshold(reward_threshold=2.5, verbose=1)
    agent = ScriptedAgent(means=[1.0, 3.0, 4.0])
    answers = drive(agent, EvalCallback(eval_freq=BATCH, callback_on_new_best=stop, verbose=1), iterations=5)
    assert answers == [None, False] and agent.global_step == 2 * BATCH
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "new best" in lines[1] and "threshold 2.50" in lines[2]


def test_stop_training_on_no_model_improvement_counts_evaluations_without_a_new_best():
    """SB3's rule: after ``min_evals`` evaluations, stop once more than ``max_no_improvement_evals``
    evaluations in a row brought no new best."""
    means = [1.0, 0.0, 0.0, 2.0, 1.0, 1.0, 1.0, 9.0]
    stop = StopTrainingOnNoModelImprovement(max_no_improvement_evals=2, min_evals=1)
    agent = ScriptedAgent(means=means)
    answers = drive(agent, EvalCallback(eval_freq=BATCH, callback_after_eval=stop, verbose=0), iterations=8)
    assert answers == [None] * 6 + [False]  # 2.0 is new; 1.0, 1.0 are 2 without one; the third stops
    patient = StopTrainingOnNoModelImprovement(max_no_improvement_evals=0, min_evals=3)
    answers = drive(
        ScriptedAgent(means=means), EvalCallback(eval_freq=BATCH, callback_after_eval=patient, verbose=0), 8
    )
    assert answers == [None] * 4 + [False]


@pytest.mark.parametrize("stop", [StopTrainingOnRewardThreshold(0.0), StopTrainingOnNoModelImprovement(1)])
def test_stop_callbacks_outside_an_eval_callback_say_where_they_belong(stop):
    with pytest.raises(ValueError) as error:
        drive(ScriptedAgent(), stop, iterations=1)
    assert_one_line_error(error, "EvalCallback(callback_on_new_best=...)")


def test_a_rank_that_writes_no_files_takes_the_same_decisions_and_writes_nothing(tmp_path):
    decisions, saves = [], []
    for writes_files, directory in ((True, tmp_path / "rank0"), (False, tmp_path / "rank1")):
        agent = ScriptedAgent(means=[1.0, 3.0, 2.0], writes_files=writes_files)
        callback = EvalCallback(
            eval_freq=BATCH,
            best_model_save_path=directory,
            log_path=directory,
            callback_on_new_best=StopTrainingOnRewardThreshold(2.0),
            verbose=0,
        )
        decisions.append(drive(agent, callback, iterations=3))
        saves.append([step for step, _ in agent.saved_at])  # save (a collective) is called on every rank
    assert decisions[0] == decisions[1] == [None, False] and saves[0] == saves[1] == [BATCH, 2 * BATCH]
    assert sorted(path.name for path in (tmp_path / "rank0").iterdir()) == ["best_model.pt", "evaluations.npz"]
    assert not (tmp_path / "rank1").exists()


def test_eval_callback_refuses_another_runs_files_but_continues_its_own(tmp_path):
    first = EvalCallback(eval_freq=BATCH, log_path=tmp_path, best_model_save_path=tmp_path, verbose=0)
    agent = ScriptedAgent(means=[1.0, 2.0, 3.0, 4.0])
    drive(agent, first, iterations=2)
    drive(agent, first, iterations=2)  # a second learn() with the same callback continues its files
    with np.load(tmp_path / "evaluations.npz") as saved:
        np.testing.assert_array_equal(saved["timesteps"], [BATCH, 2 * BATCH, 3 * BATCH, 4 * BATCH])
    for name in ("log_path", "best_model_save_path"):
        other = EvalCallback(**{name: tmp_path}, verbose=0)
        with pytest.raises(ValueError) as error:
            other.on_training_start(ScriptedAgent())
        assert_one_line_error(error, name, "another run", "pass a new directory")


# ------------------------------------------------------------------ CheckpointCallback
def test_checkpoint_callback_saves_every_save_freq_steps_and_refuses_files_ahead(tmp_path):
    agent = ScriptedAgent()
    callback = CheckpointCallback(save_freq=250, save_path=tmp_path, name_prefix="trpo")
    drive(agent, callback, iterations=5)  # 128 ... 640: crosses 250 at 256 and 500 at 512
    assert sorted(path.name for path in tmp_path.iterdir()) == ["trpo_256_steps.pt", "trpo_512_steps.pt"]
    drive(agent, callback, iterations=2)  # the same callback continues (768 crosses 750)
    assert (tmp_path / "trpo_768_steps.pt").read_text() == "768"
    with pytest.raises(ValueError) as error:  # a new run from step 0 would overwrite them
        CheckpointCallback(save_freq=250, save_path=tmp_path, name_prefix="trpo").on_training_start(ScriptedAgent())
    assert_one_line_error(error, "trpo_256_steps.pt", "another run", "pass a new directory")
    resumed = ScriptedAgent()
    resumed.global_step = 6 * BATCH
    CheckpointCallback(save_freq=250, save_path=tmp_path, name_prefix="trpo").on_training_start(resumed)  # 768 only
    with pytest.raises(ValueError):
        CheckpointCallback(save_freq=250, save_path=tmp_path, name_prefix="trpo").on_training_start(ScriptedAgent())
    CheckpointCallback(save_freq=250, save_path=tmp_path, name_prefix="other").on_training_start(ScriptedAgent())


# ------------------------------------------------------------------ argument errors
BAD_ARGUMENTS = [
    (EvalCallback, {"eval_freq": 0}, "eval_freq must be an integer >= 1"),
    (EvalCallback, {"eval_freq": 1.5}, "eval_freq must be an integer >= 1"),
    (EvalCallback, {"eval_freq": True}, "eval_freq must be an integer >= 1"),
    (EvalCallback, {"n_eval_episodes": 0}, "n_eval_episodes must be an integer >= 1"),
    (EvalCallback, {"deterministic": "yes"}, "deterministic must be True or False"),
    (EvalCallback, {"eval_env": 3}, "eval_env must be None, a gymnasium id"),
    (EvalCallback, {"log_path": 3}, "log_path must be a directory path or None"),
    (EvalCallback, {"callback_on_new_best": 3}, "callback_on_new_best must be None, a Callback"),
    (EvalCallback, {"callback_after_eval": "stop"}, "callback_after_eval must be None, a Callback"),
    (EvalCallback, {"verbose": -1}, "verbose must be an integer >= 0"),
    (CheckpointCallback, {"save_freq": 0, "save_path": "x"}, "save_freq must be an integer >= 1"),
    (CheckpointCallback, {"save_freq": 1, "save_path": None}, "save_path must be a directory path"),
    (CheckpointCallback, {"save_freq": 1, "save_path": "x", "name_prefix": "a/b"}, "name_prefix must be"),
    (StopTrainingOnRewardThreshold, {"reward_threshold": "high"}, "reward_threshold must be a number"),
    (StopTrainingOnRewardThreshold, {"reward_threshold": math.nan}, "reward_threshold must be a number"),
    (StopTrainingOnNoModelImprovement, {"max_no_improvement_evals": -1}, "max_no_improvement_evals must be"),
    (StopTrainingOnNoModelImprovement, {"max_no_improvement_evals": 1, "min_evals": 0.5}, "min_evals must be"),
]


@pytest.mark.parametrize(("cls", "arguments", "expected"), BAD_ARGUMENTS)
def test_bad_arguments_are_one_line_value_errors(cls, arguments, expected):
    with pytest.raises(ValueError) as error:
        cls(**arguments)
    assert_one_line_error(error, expected)


@pytest.mark.parametrize("name", ["log_path", "best_model_save_path"])
def test_eval_callback_paths_must_not_be_files(name, tmp_path):
    file = tmp_path / "file.txt"
    file.write_text("")
    with pytest.raises(ValueError) as error:
        EvalCallback(**{name: file})
    assert_one_line_error(error, name, "is a file; pass a directory")
    with pytest.raises(ValueError) as error:
        CheckpointCallback(1, file)
    assert_one_line_error(error, "save_path", "is a file")


# ------------------------------------------------------------------ through TRPO.learn
def test_learn_runs_the_hooks_and_stops_on_a_callbacks_false():
    recorder = Recorder()
    agent = TRPO(env="CartPole-v1", seed=0, **SMALL)
    agent.learn(10 * BATCH, callback=[recorder, lambda agent: agent.iteration < 3])
    assert agent.global_step == 3 * BATCH
    steps = [BATCH, 2 * BATCH, 3 * BATCH]
    assert recorder.events == [("start", 0), *[("iteration", step) for step in steps], ("end", 3 * BATCH)]
    assert all(seen is logged for seen, logged in zip(recorder.metrics, agent.history, strict=True))
    agent.learn(BATCH, callback=recorder)  # each learn call starts and ends the callback once
    assert recorder.events[-3:] == [("start", 3 * BATCH), ("iteration", 4 * BATCH), ("end", 4 * BATCH)]
    agent.close()


@pytest.mark.parametrize("bad", [3, EvalCallback])
def test_learn_refuses_a_bad_callback_before_training(bad):
    agent = TRPO(env="CartPole-v1", seed=0, **SMALL)
    with pytest.raises(ValueError) as error:
        agent.learn(BATCH, callback=bad)
    assert_one_line_error(error, "callback must be")
    assert agent.global_step == 0
    agent.close()


def test_evaluation_is_deterministic():
    agent = TRPO(env="CartPole-v1", seed=0, **SMALL).learn(2 * BATCH)
    assert agent.evaluate(3) == agent.evaluate(3)
    agent.close()


def test_eval_callback_through_learn_keeps_the_best_model_and_the_evaluations(tmp_path):
    agent = TRPO(env="CartPole-v1", seed=0, **SMALL)
    callback = EvalCallback(
        eval_freq=200, n_eval_episodes=3, best_model_save_path=tmp_path / "best", log_path=tmp_path, verbose=0
    )
    agent.learn(5 * BATCH, callback=callback)  # 128 ... 640: crosses 200, 400, 600 at 256, 512, 640
    assert callback.evaluations_timesteps == [2 * BATCH, 4 * BATCH, 5 * BATCH]
    with np.load(tmp_path / "evaluations.npz") as saved:
        np.testing.assert_array_equal(saved["timesteps"], callback.evaluations_timesteps)
        assert saved["results"].shape == saved["ep_lengths"].shape == (3, 3)
        means = saved["results"].mean(axis=1)
    assert callback.best_mean_reward == means.max() and callback.last_mean_reward == means[-1]
    evaluated = {row["global_step"]: row for row in agent.history if "eval/mean_return" in row}
    assert sorted(evaluated) == callback.evaluations_timesteps
    assert [evaluated[step]["eval/mean_return"] for step in sorted(evaluated)] == pytest.approx(means.tolist())
    best = TRPO.load(tmp_path / "best" / "best_model.pt")
    assert best.global_step == callback.evaluations_timesteps[int(np.argmax(means))]
    assert best.evaluate(3)["mean_return"] == callback.best_mean_reward
    agent.close()
    best.close()


def test_stop_on_reward_threshold_through_learn_stops_early():
    agent = TRPO(env="CartPole-v1", seed=0, **SMALL)
    stop = StopTrainingOnRewardThreshold(reward_threshold=1.0)
    agent.learn(20 * BATCH, callback=EvalCallback(eval_freq=2 * BATCH, callback_on_new_best=stop, verbose=0))
    assert agent.global_step == 2 * BATCH < 20 * BATCH  # CartPole returns are >= 1: the first evaluation stops
    agent.close()


def test_checkpoint_callback_through_learn_writes_loadable_checkpoints(tmp_path):
    agent = TRPO(env="CartPole-v1", seed=0, **SMALL)
    agent.learn(4 * BATCH, callback=CheckpointCallback(save_freq=2 * BATCH, save_path=tmp_path))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model_256_steps.pt", "model_512_steps.pt"]
    loaded = TRPO.load(tmp_path / "model_256_steps.pt")
    assert loaded.global_step == 2 * BATCH and loaded.iteration == 2
    agent.close()
    loaded.close()


def test_eval_callback_evaluates_on_the_given_environment():
    agent = TRPO(env="CartPole-v1", seed=0, **SMALL)
    short = EvalCallback(
        eval_env=lambda: gym.make("CartPole-v1", max_episode_steps=5), eval_freq=BATCH, n_eval_episodes=2, verbose=0
    )
    agent.learn(2 * BATCH, callback=short)
    assert short.evaluations_length == [[5, 5], [5, 5]] and short.evaluations_results == [[5.0, 5.0], [5.0, 5.0]]
    agent.close()


def test_a_resumed_run_continues_its_evaluations_and_best_model(tmp_path):
    """TRPO.load then learn with a new EvalCallback on the same paths: the evaluations go on, none is lost."""
    options = {"eval_freq": BATCH, "n_eval_episodes": 2, "log_path": tmp_path, "best_model_save_path": tmp_path}
    agent = TRPO(env="CartPole-v1", seed=0, **SMALL)
    first = EvalCallback(verbose=0, **options)
    agent.learn(2 * BATCH, callback=first)
    agent.save(tmp_path / "run.pt")
    agent.close()
    resumed = TRPO.load(tmp_path / "run.pt")
    second = EvalCallback(verbose=0, **options)
    resumed.learn(2 * BATCH, callback=second)
    assert second.evaluations_timesteps == [BATCH, 2 * BATCH, 3 * BATCH, 4 * BATCH]
    assert second.best_mean_reward >= first.best_mean_reward
    with np.load(tmp_path / "evaluations.npz") as saved:
        assert saved["timesteps"].tolist() == second.evaluations_timesteps
    stranger = TRPO(env="CartPole-v1", seed=1, **SMALL)  # at step 0: these files are another run's
    with pytest.raises(ValueError, match="already holds"):
        stranger.learn(BATCH, callback=EvalCallback(verbose=0, **options))
    resumed.close()
    stranger.close()
