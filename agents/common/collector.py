"""The collector: steps the vector environment with the current policy and returns a :class:`Rollout`.

It owns everything that lives from one rollout to the next: the environment stack, the last
observation and done flags (the carry-over), the episode statistics and the numpy generator the
action noise is drawn from. The networks come in as arguments to :meth:`Collector.collect` and
the rollout goes out as its return value; :meth:`Collector.state_dict` saves the rest.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from agents.common.envs import EnvStack
from agents.common.policies import Actor
from agents.common.rollout import Rollout

EPISODE_WINDOW = 100
"""Episodes in the running mean of returns and lengths that the logs report."""

RolloutNetworksFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""``obs -> (actor outputs, values)``: the numpy copy of the networks a rollout runs on."""


class Collector:
    """Collects rollouts of ``n_steps`` vector steps from a gymnasium vector environment.

    Args:
        env_stack: the wrapped vector environment (:func:`~agents.common.envs.make_env_stack`),
            reset here with ``seed``; the collector closes it in :meth:`close`.
        n_steps: vector steps per rollout.
        obs_dim: the flat observation size.
        action_shape, action_dtype: one sub-environment's action as the rollout stores it.
        dtype: the numpy dtype of the policy's inputs (observations are stored in it).
        seed: seeds the environments (``seed + i``) and the action noise.
    """

    def __init__(
        self,
        env_stack: EnvStack,
        n_steps: int,
        obs_dim: int,
        action_shape: tuple[int, ...],
        action_dtype: Any,
        dtype: Any,
        seed: int,
    ) -> None:
        self.env_stack = env_stack
        self.n_steps, self.obs_dim, self.dtype = n_steps, obs_dim, np.dtype(dtype)
        self.action_shape, self.action_dtype = action_shape, action_dtype
        self.rng = np.random.default_rng(seed)
        self.episodes = 0
        self.recent_returns: deque[float] = deque(maxlen=EPISODE_WINDOW)
        self.recent_lengths: deque[int] = deque(maxlen=EPISODE_WINDOW)
        obs, _ = env_stack.envs.reset(seed=seed)
        self.obs: np.ndarray = obs.reshape(env_stack.num_envs, -1)
        self.prev_done = np.zeros(env_stack.num_envs, dtype=bool)

    def collect(self, actor: Actor, networks: RolloutNetworksFn) -> Rollout:
        """``n_steps`` vector steps with the policy; the step after a done is marked invalid.

        ``networks`` computes the actor's outputs and the critic's values (a
        :class:`~agents.common.policies.RolloutNetworks` copy of the current parameters);
        ``actor`` turns outputs and noise into actions. The noise of the whole rollout is drawn
        at once; the rollout keeps the unclipped sample.
        """
        envs, num_envs = self.env_stack.envs, self.env_stack.num_envs
        rollout = Rollout.empty(self.n_steps, num_envs, self.obs_dim, self.action_shape, self.action_dtype, self.dtype)
        sample_actions = actor.rollout_head()
        noise = actor.rollout_noise(self.rng, (self.n_steps, num_envs, actor.net.layers[-1].out_features), self.dtype)
        next_obs = self.obs
        for t in range(self.n_steps):
            obs = rollout.obs[t]
            obs[:] = next_obs.reshape(obs.shape)
            actor_outputs, rollout.values[t] = networks(obs)
            actions = sample_actions(actor_outputs, noise[t])
            rollout.actions[t] = actions
            next_obs, rollout.rewards[t], rollout.terminated[t], rollout.truncated[t], info = envs.step(
                actor.to_env(actions)
            )
            if "_episode" in info:
                self._record_episodes(info)
        done = rollout.terminated | rollout.truncated
        rollout.valid[0] = ~self.prev_done  # the step after a done is gymnasium's autoreset step
        rollout.valid[1:] = ~done[:-1]
        self.prev_done = done[-1].copy()
        self.obs = next_obs.reshape(num_envs, -1)
        rollout.last_values[:] = networks(_as_dtype(self.obs, self.dtype))[1]
        return rollout

    def _record_episodes(self, info: dict[str, Any]) -> None:
        for index in np.flatnonzero(info["_episode"]):
            self.recent_returns.append(float(info["episode"]["r"][index]))
            self.recent_lengths.append(int(info["episode"]["l"][index]))
            self.episodes += 1

    def episode_statistics(self) -> dict[str, Any]:
        """Episodes finished so far and the mean return and length of the last :data:`EPISODE_WINDOW`."""
        return {
            "episodes": self.episodes,
            "mean_return": float(np.mean(self.recent_returns)) if self.recent_returns else math.nan,
            "mean_length": float(np.mean(self.recent_lengths)) if self.recent_lengths else math.nan,
        }

    def state_dict(self) -> dict[str, Any]:
        """The environments (simulators, normalisation statistics), the carry-over, the statistics, the noise."""
        return {
            "env": self.env_stack.state(),
            "obs": self.obs.copy(),
            "prev_done": self.prev_done.copy(),
            "episodes": self.episodes,
            "recent_returns": list(self.recent_returns),
            "recent_lengths": list(self.recent_lengths),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`, on a collector built with the same config."""
        self.env_stack.load_state(state["env"])
        self.obs = state["obs"].copy()
        self.prev_done = state["prev_done"].copy()
        self.episodes = state["episodes"]
        self.recent_returns = deque(state["recent_returns"], maxlen=EPISODE_WINDOW)
        self.recent_lengths = deque(state["recent_lengths"], maxlen=EPISODE_WINDOW)
        self.rng.bit_generator.state = state["rng"]

    def close(self) -> None:
        """Close the vector environment (needed for ``async`` mode's worker processes)."""
        self.env_stack.close()


def _as_dtype(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return array if array.dtype == dtype else array.astype(dtype)
