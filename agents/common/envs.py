"""Vector environments: construction, wrappers and the state a checkpoint needs to resume bit-identically.

Wrapper stack, innermost first::

    gymnasium.make_vec(env, num_envs, vectorization_mode)   # each sub-env wrapped in
                                  # RecordEpisodeStatistics (true returns and lengths,
                                  # before any scaling), then EnvSnapshot
      -> FiniteCheck               (stops on a NaN or infinite observation or reward,
                                    before anything above sees it)
      -> NormalizeObservation      (optional, running mean/std of observations,
                                    then clipped to ±clip_obs)
      -> NormalizeReward           (optional, scales rewards by the std of a discounted return,
                                    then clipped to ±clip_reward)

Episode statistics are recorded by gymnasium's single-environment ``RecordEpisodeStatistics``
inside each sub-environment rather than by its vector counterpart: the vector environment merges
them into ``info["episode"]`` with the ``info["_episode"]`` mask all the same, a scalar update per
sub-environment costs a fraction of the vector wrapper's masked array updates (a sizeable share
of a CartPole step), and the counters travel in each sub-environment's snapshot.

The clips are those of Stable-Baselines3's ``VecNormalize`` (10 by default): early in training the
running statistics are poor, and a rare state many standard deviations out would otherwise feed
the networks (and the critic's targets) an outlier.

Gymnasium 1.x autoresets on the *next* step: the step that returns ``terminated`` or
``truncated`` also returns the true final observation, and the following ``step`` ignores its
action, resets that sub-environment and returns the first observation with reward 0 and both
flags false. The rollout marks that transition invalid (see :mod:`agents.common.rollout`).
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv, VectorObservationWrapper, VectorWrapper
from gymnasium.wrappers import RecordEpisodeStatistics
from gymnasium.wrappers.utils import RunningMeanStd
from gymnasium.wrappers.vector import (
    ClipReward,
    FlattenObservation,
    NormalizeObservation,
    NormalizeReward,
    TransformObservation,
)
from gymnasium.wrappers.vector import (
    RecordEpisodeStatistics as VectorRecordEpisodeStatistics,
)

from agents.common.env_sources import EnvSource, resolve_env
from agents.common.native_vector import make_native_vector_env
from agents.common.observations import ObservationLayout, observation_layout

_UNSAVED_ATTRIBUTES = frozenset(
    {
        "env",
        "model",
        "mujoco_renderer",
        "screen",
        "clock",
        "spec",
        "_cached_spec",
        "_saved_kwargs",
        "_ezpickle_args",
        "_ezpickle_kwargs",
        "action_space",
        "observation_space",
        "_action_space",
        "_observation_space",
        "metadata",
        "_metadata",
        # wall-clock episode durations (RecordEpisodeStatistics' "t"): not part of the dynamics,
        # and saving them would make two otherwise identical runs differ
        "episode_start_time",
        "time_queue",
    }
)
"""Attributes a snapshot leaves out: structure that does not change, and wall-clock times."""

RECOVERY_HINT = "fix or wrap the environment, then resume from the last checkpoint"


class NonFiniteDataError(RuntimeError):
    """Data that would poison the training state: a NaN or infinite value from an environment, or an overflow.

    Raised before the value reaches a network, a normalisation statistic or an update; the message
    is one line naming the environment id, the sub-environment and the step (docs/agents.md,
    "Data integrity").
    """


_count_nonzero, _isfinite = np.count_nonzero, np.isfinite  # looked up once: the check runs at every step


def all_finite(array: np.ndarray) -> bool:
    """Whether every entry of a numeric array is finite (integer and boolean arrays always are).

    ``np.count_nonzero(np.isfinite(array)) == array.size``: exact, silent (no floating-point
    warning), and on the few values of one vector step about half the cost of
    ``np.isfinite(array).all()``.
    """
    return _count_nonzero(_isfinite(array)) == array.size


class FiniteCheck(VectorWrapper):
    """Stops with :class:`NonFiniteDataError` when a sub-environment returns a NaN or infinite observation or reward.

    It sits directly on the vector environment, below the normalisation wrappers: the error is
    raised at the vector step (or reset) that returned the value, before ``NormalizeObservation``
    or ``NormalizeReward`` fold it into their running statistics and before the collector passes
    the observation to the networks. ``steps`` counts vector steps since the environment was built
    (saved in checkpoints, so the step in a message is the run's). After an error every ``step``
    raises it again until :meth:`EnvStack.load_state` restores a consistent state: the
    sub-environments have moved past the rollout the agent holds.
    """

    def __init__(self, env: VectorEnv, env_id: str) -> None:
        super().__init__(env)
        self.env_id = env_id
        self.steps = 0
        self.failure: str | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self.failure = None
        if not all_finite(obs):
            self.fail(self._culprit(obs, None, "at reset (vector step 0)", "fix or wrap the environment"))
        return obs, info

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        self.raise_if_failed()
        obs, rewards, terminated, truncated, info = self.env.step(actions)
        self.steps += 1
        if _count_nonzero(_isfinite(obs)) != obs.size or _count_nonzero(_isfinite(rewards)) != rewards.size:
            at = f"at vector step {self.steps} (global step {self.steps * self.num_envs})"
            self.fail(self._culprit(obs, rewards, at, RECOVERY_HINT))
        return obs, rewards, terminated, truncated, info

    def raise_if_failed(self) -> None:
        """Raise the last error again if there was one since the last reset or restore."""
        if self.failure is not None:
            raise NonFiniteDataError(self.failure)

    def fail(self, message: str) -> None:
        """Raise ``message`` as a :class:`NonFiniteDataError`, now and at every later ``step``."""
        self.failure = message
        raise NonFiniteDataError(message)

    def _culprit(self, obs: np.ndarray, rewards: np.ndarray | None, at: str, hint: str) -> str:
        bad_obs = ~np.isfinite(np.asarray(obs).reshape(self.num_envs, -1))
        bad_rewards = np.zeros(self.num_envs, dtype=bool) if rewards is None else ~np.isfinite(rewards)
        index = int(np.flatnonzero(bad_obs.any(axis=1) | bad_rewards)[0])
        found = []
        if rewards is not None and bad_rewards[index]:
            found.append(f"reward {float(rewards[index])}")
        entries = np.flatnonzero(bad_obs[index])
        if entries.size:
            entry = int(entries[0])
            value = float(np.asarray(obs).reshape(self.num_envs, -1)[index, entry])
            more = f" and {entries.size - 1} more entries" if entries.size > 1 else ""
            found.append(f"observation entry {entry} = {value}{more}")
        return (
            f"{self.env_id} sub-environment {index} returned a non-finite {' and '.join(found)} {at}; "
            f"training stopped before any network or normalisation statistic saw it: {hint}"
        )


class EnvSnapshot(gym.Wrapper):
    """Makes a sub-environment's full state readable and writable through ``get_attr`` / ``set_attr``.

    ``snapshot`` pickles the mutable attributes of every layer below this wrapper (the
    simulator state, the time-limit counter, the environment's random generator) together with
    whether the last step ended an episode. Assigning a snapshot restores all of it; an episode
    that had ended is then reset on the next ``step``, exactly as the vector environment's
    next-step autoreset would have done, so a restored run continues bit for bit in both
    ``sync`` and ``async`` mode.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._episode_over = False
        self._reset_on_next_step = False

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        self._episode_over = False
        self._reset_on_next_step = False
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        if self._reset_on_next_step:
            obs, info = self.reset()
            return obs, 0.0, False, False, info
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._episode_over = bool(terminated or truncated)
        return obs, reward, terminated, truncated, info

    @property
    def snapshot(self) -> bytes:
        layers = [_mutable_state(layer) for layer in _layers(self.env)]
        return pickle.dumps({"layers": layers, "episode_over": self._episode_over})

    @snapshot.setter
    def snapshot(self, data: bytes) -> None:
        state = pickle.loads(data)
        for layer, attributes in zip(_layers(self.env), state["layers"], strict=True):
            for name, value in attributes.items():
                setattr(layer, name, value)
        self._episode_over = state["episode_over"]
        self._reset_on_next_step = state["episode_over"]


def _layers(env: gym.Env) -> list[gym.Env]:
    layers = [env]
    while isinstance(layers[-1], gym.Wrapper):
        layers.append(layers[-1].env)
    return layers


def _mutable_state(layer: gym.Env) -> dict[str, Any]:
    state = {}
    for name, value in vars(layer).items():
        if name in _UNSAVED_ATTRIBUTES:
            continue
        try:
            pickle.dumps(value)
        except Exception:  # unpicklable handles (windows, renderers) are not part of the dynamics
            continue
        state[name] = value
    return state


@dataclass
class EnvStack:
    """The wrapped vector environment, the bare one below the wrappers, and the stateful and checking wrappers."""

    envs: VectorEnv
    base: VectorEnv
    obs_normalizer: NormalizeObservation | None
    reward_normalizer: NormalizeReward | None
    finite_check: FiniteCheck
    layout: ObservationLayout

    @property
    def num_envs(self) -> int:
        return self.envs.num_envs

    @property
    def env_id(self) -> str:
        return self.finite_check.env_id

    @property
    def restores_episodes(self) -> bool:
        """Whether :meth:`load_state` puts the environments back mid-episode (not for a user's ``VectorEnv``)."""
        return not isinstance(self.base, UserVectorEnv)

    @property
    def vector_steps(self) -> int:
        """Vector steps taken since the environment was built (counted by the :class:`FiniteCheck`)."""
        return self.finite_check.steps

    def close(self) -> None:
        self.envs.close()

    def state(self) -> dict[str, Any]:
        """Everything needed to continue this environment exactly where it is."""
        return {
            "snapshots": list(self.base.get_attr("snapshot")),  # simulators and episode statistics
            **self.statistics(),
            "vector_steps": self.vector_steps,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state`; call after ``reset`` on a freshly built stack."""
        self.base.set_attr("snapshot", list(state["snapshots"]))
        self.set_statistics(state)
        self.finite_check.steps = state.get("vector_steps", 0)
        self.finite_check.failure = None  # a consistent state again

    def statistics(self) -> dict[str, Any]:
        """A copy of the normalisation wrappers' state (``None`` for a wrapper that is off)."""
        statistics: dict[str, Any] = {"obs_rms": None, "reward_normalizer": None}
        if self.obs_normalizer is not None:
            statistics["obs_rms"] = running_stats(self.obs_normalizer.obs_rms)
        if self.reward_normalizer is not None:
            normalizer = self.reward_normalizer
            statistics["reward_normalizer"] = {
                "return_rms": running_stats(normalizer.return_rms),
                "accumulated_reward": normalizer.accumulated_reward.copy(),
                "prev_dones": normalizer._prev_dones.copy(),  # private: needed to resume mid-episode
            }
        return statistics

    def set_statistics(self, statistics: dict[str, Any]) -> None:
        """Inverse of :meth:`statistics`."""
        if self.obs_normalizer is not None:
            set_running_stats(self.obs_normalizer.obs_rms, statistics["obs_rms"])
        if self.reward_normalizer is not None:
            saved = statistics["reward_normalizer"]
            set_running_stats(self.reward_normalizer.return_rms, saved["return_rms"])
            self.reward_normalizer.accumulated_reward = saved["accumulated_reward"].copy()
            self.reward_normalizer._prev_dones = saved["prev_dones"].copy()

    def nonfinite_statistic(self) -> str | None:
        """The name of a normalisation statistic that is not finite, or ``None``."""
        if self.obs_normalizer is not None and not _rms_finite(self.obs_normalizer.obs_rms):
            return "observation normalisation statistics"
        if self.reward_normalizer is not None:
            normalizer = self.reward_normalizer
            if not (_rms_finite(normalizer.return_rms) and all_finite(np.asarray(normalizer.accumulated_reward))):
                return "reward normalisation statistics"
        return None


def running_stats(rms: Any) -> dict[str, Any]:
    """``mean``, ``var`` and ``count`` of a gymnasium ``RunningMeanStd``, copied."""
    return {"mean": np.array(rms.mean, copy=True), "var": np.array(rms.var, copy=True), "count": rms.count}


def set_running_stats(rms: Any, stats: dict[str, Any]) -> None:
    rms.mean = np.array(stats["mean"], copy=True)
    rms.var = np.array(stats["var"], copy=True)
    rms.count = stats["count"]


def _rms_finite(rms: Any) -> bool:
    return all_finite(np.asarray(rms.mean)) and all_finite(np.asarray(rms.var)) and math.isfinite(rms.count)


def make_env_stack(
    env: EnvSource | str,
    num_envs: int,
    *,
    vectorization_mode: str = "sync",
    env_kwargs: dict[str, Any] | None = None,
    normalize_obs: bool = False,
    normalize_reward: bool = False,
    gamma: float = 0.99,
    clip_obs: float = 10.0,
    clip_reward: float = 10.0,
) -> EnvStack:
    """Build the training vector environment (not yet reset); ``env`` an id or an :class:`EnvSource`."""
    source = resolve_env(env)
    envs = _base_vector_env(source, num_envs, vectorization_mode, env_kwargs or {})
    try:
        if envs.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP) is not AutoresetMode.NEXT_STEP:
            raise ValueError("env: the agents need next-step autoreset (gymnasium's default autoreset_mode)")
        layout = observation_layout(envs.single_observation_space)
    except ValueError:
        envs.close()
        raise
    finite_check = FiniteCheck(FlattenObservation(envs) if layout.flatten else envs, source.name)
    wrapped: VectorEnv = finite_check
    obs_normalizer = reward_normalizer = None
    if normalize_obs and layout.all_box:
        wrapped = obs_normalizer = NormalizeObservation(wrapped)
        wrapped = TransformObservation(wrapped, lambda obs: np.clip(obs, -clip_obs, clip_obs))
    elif normalize_obs and layout.box_entries.any():
        wrapped = obs_normalizer = NormalizeBoxEntries(wrapped, layout.box_entries, clip_obs)
    if normalize_reward:
        wrapped = reward_normalizer = NormalizeReward(wrapped, gamma=gamma)
        wrapped = ClipReward(wrapped, -clip_reward, clip_reward)
    return EnvStack(wrapped, envs, obs_normalizer, reward_normalizer, finite_check, layout)


def _base_vector_env(source: EnvSource, num_envs: int, mode: str, env_kwargs: dict[str, Any]) -> VectorEnv:
    """The vector environment below the agents' wrappers, each sub-environment recording episodes and snapshots."""
    if mode == "vector_entry_point":
        source.check(num_envs, mode, env_kwargs)
        return make_native_vector_env(source.name, num_envs, env_kwargs)
    if source.kind == "vector":
        source.check(num_envs, mode, env_kwargs)
        return UserVectorEnv(source.target)
    return source.vector(num_envs, mode, env_kwargs, inner=[RecordEpisodeStatistics], outer=[EnvSnapshot])


class UserVectorEnv(VectorWrapper):
    """A vector environment the user built: episode statistics recorded at the vector level, no snapshot.

    Its sub-environments are the user's objects, which the agent cannot copy or restore: a run resumed
    from a checkpoint restores networks, statistics and random state, and its environments start new
    episodes (docs/agents.md, "Your own environment").
    """

    def __init__(self, env: VectorEnv) -> None:
        super().__init__(VectorRecordEpisodeStatistics(env))

    def get_attr(self, name: str) -> tuple[Any, ...]:
        if name == "snapshot":
            return (None,) * self.num_envs
        return self.env.get_attr(name)

    def set_attr(self, name: str, values: Any) -> None:
        if name != "snapshot":
            self.env.set_attr(name, values)


class NormalizeBoxEntries(VectorObservationWrapper):
    """Running mean/std normalisation of some entries of a flat observation (those from ``Box`` spaces), clipped.

    The ``Dict`` / ``Tuple`` counterpart of ``NormalizeObservation`` + clip: one-hot entries and
    images keep their values. ``obs_rms`` and ``epsilon`` are those of gymnasium's wrapper, over the
    normalised entries only, so checkpoints and data-parallel merges treat both alike.
    """

    def __init__(self, env: VectorEnv, entries: np.ndarray, clip: float, epsilon: float = 1e-8) -> None:
        super().__init__(env)
        self.entries = np.flatnonzero(entries)
        self.obs_rms = RunningMeanStd(shape=(len(self.entries),))
        self.epsilon, self.clip = epsilon, clip

    def observations(self, observations: np.ndarray) -> np.ndarray:
        self.obs_rms.update(observations[:, self.entries])
        return self.normalize(observations)

    def normalize(self, observations: np.ndarray) -> np.ndarray:
        """``observations`` with the entries normalised by the current statistics (not updated), as float32."""
        normalized = np.array(observations, dtype=np.float32)
        scaled = (observations[..., self.entries] - self.obs_rms.mean) / np.sqrt(self.obs_rms.var + self.epsilon)
        normalized[..., self.entries] = np.clip(scaled, -self.clip, self.clip)
        return normalized


def make_eval_envs(
    env: EnvSource | str, num_envs: int, env_kwargs: dict[str, Any] | None = None, vectorization_mode: str = "sync"
) -> VectorEnv:
    """Sync vector env for evaluation: flattened like the training one, with only the :class:`FiniteCheck`.

    The agent normalises observations itself, with its frozen training statistics. Sub-environments
    the agent builds record their episodes below the user's wrappers, as in training, so evaluation
    returns are the environment's own.
    """
    source = resolve_env(env).copy_for_evaluation()
    if vectorization_mode == "vector_entry_point":
        envs = make_native_vector_env(source.name, num_envs, env_kwargs or {})
    else:
        envs = source.vector(num_envs, "sync", env_kwargs or {}, inner=[RecordEpisodeStatistics])
    if observation_layout(envs.single_observation_space).flatten:
        envs = FlattenObservation(envs)
    return FiniteCheck(envs, source.name)
