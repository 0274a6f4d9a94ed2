"""Vector environments: construction, wrappers and the state a checkpoint needs to resume bit-identically.

Wrapper stack, innermost first::

    gymnasium.make_vec(env, num_envs, vectorization_mode)   # each sub-env wrapped in
                                  # RecordEpisodeStatistics (true returns and lengths,
                                  # before any scaling), then EnvSnapshot
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

import pickle
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.wrappers import RecordEpisodeStatistics
from gymnasium.wrappers.vector import ClipReward, NormalizeObservation, NormalizeReward, TransformObservation

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
    """The wrapped vector environment, the bare one below the wrappers, and the stateful wrappers."""

    envs: VectorEnv
    base: VectorEnv
    obs_normalizer: NormalizeObservation | None
    reward_normalizer: NormalizeReward | None

    @property
    def num_envs(self) -> int:
        return self.envs.num_envs

    def close(self) -> None:
        self.envs.close()

    def state(self) -> dict[str, Any]:
        """Everything needed to continue this environment exactly where it is."""
        state: dict[str, Any] = {
            "snapshots": list(self.base.get_attr("snapshot")),  # simulators and episode statistics
            "obs_rms": None,
            "reward_normalizer": None,
        }
        if self.obs_normalizer is not None:
            state["obs_rms"] = running_stats(self.obs_normalizer.obs_rms)
        if self.reward_normalizer is not None:
            normalizer = self.reward_normalizer
            state["reward_normalizer"] = {
                "return_rms": running_stats(normalizer.return_rms),
                "accumulated_reward": normalizer.accumulated_reward.copy(),
                "prev_dones": normalizer._prev_dones.copy(),  # private: needed to resume mid-episode
            }
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state`; call after ``reset`` on a freshly built stack."""
        self.base.set_attr("snapshot", list(state["snapshots"]))
        if self.obs_normalizer is not None:
            set_running_stats(self.obs_normalizer.obs_rms, state["obs_rms"])
        if self.reward_normalizer is not None:
            saved = state["reward_normalizer"]
            set_running_stats(self.reward_normalizer.return_rms, saved["return_rms"])
            self.reward_normalizer.accumulated_reward = saved["accumulated_reward"].copy()
            self.reward_normalizer._prev_dones = saved["prev_dones"].copy()


def running_stats(rms: Any) -> dict[str, Any]:
    """``mean``, ``var`` and ``count`` of a gymnasium ``RunningMeanStd``, copied."""
    return {"mean": np.array(rms.mean, copy=True), "var": np.array(rms.var, copy=True), "count": rms.count}


def set_running_stats(rms: Any, stats: dict[str, Any]) -> None:
    rms.mean = np.array(stats["mean"], copy=True)
    rms.var = np.array(stats["var"], copy=True)
    rms.count = stats["count"]


def make_env_stack(
    env_id: str,
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
    """Build the training vector environment (not yet reset)."""
    envs = gym.make_vec(
        env_id,
        num_envs=num_envs,
        vectorization_mode=vectorization_mode,
        vector_kwargs={"copy": False},
        wrappers=[RecordEpisodeStatistics, EnvSnapshot],
        **(env_kwargs or {}),
    )
    if envs.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP) is not AutoresetMode.NEXT_STEP:
        raise ValueError("the agents need next-step autoreset (gymnasium's default autoreset_mode)")
    wrapped: VectorEnv = envs
    obs_normalizer = reward_normalizer = None
    if normalize_obs:
        wrapped = obs_normalizer = NormalizeObservation(wrapped)
        wrapped = TransformObservation(wrapped, lambda obs: np.clip(obs, -clip_obs, clip_obs))
    if normalize_reward:
        wrapped = reward_normalizer = NormalizeReward(wrapped, gamma=gamma)
        wrapped = ClipReward(wrapped, -clip_reward, clip_reward)
    return EnvStack(wrapped, envs, obs_normalizer, reward_normalizer)


def make_eval_envs(env_id: str, num_envs: int, env_kwargs: dict[str, Any] | None = None) -> VectorEnv:
    """Unwrapped sync vector env for evaluation (observations are normalised by the agent)."""
    return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync", **(env_kwargs or {}))
