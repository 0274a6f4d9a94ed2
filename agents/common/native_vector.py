"""Environments that ship their own vectorised implementation (gymnasium's ``vector_entry_point``).

``gymnasium.make_vec(env_id, num_envs, vectorization_mode="vector_entry_point")`` builds one
object that steps every sub-environment with array operations (CartPole-v1's
``CartPoleVectorEnv``): no per-sub-environment Python objects, so neither per-sub-environment
wrappers nor per-sub-environment snapshots. Both are provided at the vector level instead::

    gymnasium.make_vec(env_id, num_envs, vectorization_mode="vector_entry_point")
      -> EpisodeStatistics   (true returns and lengths in info["episode"], info["_episode"] mask)
      -> VectorSnapshot      (get_attr("snapshot") / set_attr("snapshot", ...) of the whole stack)

The result is the ``base`` of an :class:`~agents.common.envs.EnvStack`, which adds the finite
check and the normalisation wrappers on top as for the ``sync`` and ``async`` modes.
"""

from __future__ import annotations

import pickle
import time
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper

SNAPSHOT = "snapshot"
"""The attribute name :class:`~agents.common.envs.EnvStack` reads and writes a snapshot through."""

_UNSAVED_VECTOR_ATTRIBUTES = frozenset(
    {
        "num_envs",
        "render_mode",
        "closed",
        "single_action_space",
        "single_observation_space",
        "_single_action_space",
        "_single_observation_space",
        "screens",
        "surf",
        "episode_start_times",  # wall-clock, as RecordEpisodeStatistics' "t" in the sync mode
    }
)
"""Attributes a vector snapshot leaves out besides :data:`~agents.common.envs._UNSAVED_ATTRIBUTES`:
structure, rendering handles and wall-clock times."""

_count_nonzero = np.count_nonzero  # looked up once: it runs at every step


def make_native_vector_env(env_id: str, num_envs: int, env_kwargs: dict[str, Any]) -> VectorEnv:
    """The environment's own vector implementation, with episode statistics and snapshots.

    Raises:
        ValueError: ``env_id`` has no ``vector_entry_point`` (one line naming the modes to use).
    """
    if gym.spec(env_id).vector_entry_point is None:
        raise ValueError(
            f"{env_id} has no vector_entry_point (its own vectorised implementation): "
            "use vectorization_mode='sync' (or 'async') for it"
        )
    envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **env_kwargs)
    return VectorSnapshot(EpisodeStatistics(envs))


class EpisodeStatistics(VectorWrapper):
    """Episode returns and lengths in ``info["episode"]`` with the ``info["_episode"]`` mask.

    The information gymnasium's vector ``RecordEpisodeStatistics`` gives under next-step
    autoreset (``"r"``, ``"l"`` and the wall-clock ``"t"``, zero where no episode ended): the
    returns are summed before any normalisation, and the autoreset step that follows a done counts
    towards no episode. A step without a pending reset costs two in-place additions; the masked
    updates run only on the step after an episode ended. The accumulators and the done flags are
    part of the snapshot (:class:`VectorSnapshot`).
    """

    def __init__(self, env: VectorEnv) -> None:
        super().__init__(env)
        if env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP) is not AutoresetMode.NEXT_STEP:
            raise ValueError("episode statistics of a native vector environment need next-step autoreset")
        self.episode_returns = np.zeros(self.num_envs)
        self.episode_lengths = np.zeros(self.num_envs, dtype=np.int64)
        self.episode_start_times = np.zeros(self.num_envs)
        self.prev_dones = np.zeros(self.num_envs, dtype=bool)
        self.any_prev_done = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        reset = (options or {}).get("reset_mask", slice(None))
        self.episode_returns[reset] = 0.0
        self.episode_lengths[reset] = 0
        self.episode_start_times[reset] = time.perf_counter()
        self.prev_dones[reset] = False
        self.any_prev_done = bool(self.prev_dones.any())
        return obs, info

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        obs, rewards, terminated, truncated, info = self.env.step(actions)
        if self.any_prev_done:  # those sub-environments just reset: their new episodes start at 0
            ongoing = ~self.prev_dones
            self.episode_returns = np.where(ongoing, self.episode_returns + rewards, 0.0)
            self.episode_lengths = np.where(ongoing, self.episode_lengths + 1, 0)
            self.episode_start_times[self.prev_dones] = time.perf_counter()
        else:
            self.episode_returns += rewards
            self.episode_lengths += 1
        self.prev_dones = dones = terminated | truncated
        self.any_prev_done = bool(_count_nonzero(dones))  # a fraction of the cost of dones.any()
        if self.any_prev_done:
            info = self._add_episodes(info, dones)
        return obs, rewards, terminated, truncated, info

    def _add_episodes(self, info: dict[str, Any], dones: np.ndarray) -> dict[str, Any]:
        if "episode" in info or "_episode" in info:
            raise ValueError(f"the environment's info already has episode statistics: {sorted(info)}")
        durations = np.round(time.perf_counter() - self.episode_start_times, 6)
        episode = {
            "r": np.where(dones, self.episode_returns, 0.0),
            "l": np.where(dones, self.episode_lengths, 0),
            "t": np.where(dones, durations, 0.0),
        }
        return {**info, "episode": episode, "_episode": dones.copy()}  # a copy: prev_dones is this array


class VectorSnapshot(VectorWrapper):
    """Makes the full state of the vector environment below readable and writable as one snapshot.

    ``get_attr("snapshot")`` returns a one-element tuple: the pickled mutable attributes of every
    layer below this wrapper (for CartPole: the state arrays, the step counters, the pending
    autoreset flags and the environment's random generator; the episode statistics' accumulators
    and done flags). ``set_attr("snapshot", [snapshot])`` restores all of it, so a restored
    environment continues bit for bit, a pending next-step autoreset included. Structure and
    wall-clock times are left out (:data:`_UNSAVED_VECTOR_ATTRIBUTES`).
    """

    def get_attr(self, name: str) -> tuple[Any, ...]:
        """``(snapshot,)`` for ``"snapshot"``; otherwise the attribute of the vector environment, in a tuple."""
        if name == SNAPSHOT:
            return (self.snapshot(),)
        return (getattr(self.env, name),)

    def set_attr(self, name: str, values: list[Any] | tuple[Any, ...] | Any) -> None:
        """Restore ``[snapshot]`` for ``"snapshot"``; otherwise set the attribute of the vector environment."""
        if name != SNAPSHOT:
            setattr(self.env, name, values)
            return
        if not isinstance(values, (list, tuple)) or len(values) != 1:
            count = len(values) if isinstance(values, (list, tuple)) else "no list of"
            raise ValueError(
                f"a native vector environment restores from one snapshot (got {count} snapshots): "
                "the state was saved with another vectorization_mode"
            )
        self.restore(values[0])

    def snapshot(self) -> bytes:
        """The pickled mutable state of every layer below this wrapper."""
        return pickle.dumps({"layers": [_vector_state(layer) for layer in self._layers()]})

    def restore(self, snapshot: bytes) -> None:
        """Inverse of :meth:`snapshot`."""
        state = pickle.loads(snapshot)
        for layer, attributes in zip(self._layers(), state["layers"], strict=True):
            for name, value in attributes.items():
                setattr(layer, name, value)

    def _layers(self) -> list[VectorEnv]:
        layers = [self.env]
        while isinstance(layers[-1], VectorWrapper):
            layers.append(layers[-1].env)
        return layers


def _vector_state(layer: VectorEnv) -> dict[str, Any]:
    from agents.common.envs import _mutable_state  # here: envs imports this module

    return {name: value for name, value in _mutable_state(layer).items() if name not in _UNSAVED_VECTOR_ATTRIBUTES}
