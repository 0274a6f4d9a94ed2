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

from agents.common.envs import RECOVERY_HINT, EnvStack, all_finite
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
        action_shape, action_dtype: one sub-environment's action as the rollout stores it.
        dtype: the numpy dtype of the policy's inputs (observations are stored in it, images in
            their own ``uint8`` or ``bool``: the network converts them).
        seed: seeds the environments (``seed + i``) and the action noise.
        mask_sizes: the categories of each action entry a mask covers (categorical actors); the
            environment's masks (:class:`ActionMasks`) are then read at every step and stored.
    """

    def __init__(
        self,
        env_stack: EnvStack,
        n_steps: int,
        action_shape: tuple[int, ...],
        action_dtype: Any,
        dtype: Any,
        seed: int,
        mask_sizes: list[int] | None = None,
    ) -> None:
        self.env_stack, layout = env_stack, env_stack.layout
        self.n_steps, self.obs_shape = n_steps, layout.shape
        self.dtype = env_stack.envs.single_observation_space.dtype if layout.image else np.dtype(dtype)
        self.action_shape, self.action_dtype, self.np_float = action_shape, action_dtype, np.dtype(dtype)
        self.rng = np.random.default_rng(seed)
        self.episodes = 0
        self.recent_returns: deque[float] = deque(maxlen=EPISODE_WINDOW)
        self.recent_lengths: deque[int] = deque(maxlen=EPISODE_WINDOW)
        try:
            obs, info = env_stack.envs.reset(seed=seed)
            self.masks = ActionMasks.detect(env_stack.envs, env_stack.num_envs, info, mask_sizes)
        except BaseException:  # e.g. a non-finite first observation: the caller never gets the collector to close
            env_stack.close()
            raise
        self.obs: np.ndarray = self._stored(obs)  # not a view of the env's buffer
        self.prev_done = np.zeros(env_stack.num_envs, dtype=bool)

    def _stored(self, obs: np.ndarray) -> np.ndarray:
        """A copy of a vector observation in the rollout's shape (a sync env overwrites its buffer at every step)."""
        return obs.reshape(self.env_stack.num_envs, *self.obs_shape).copy()

    def collect(self, actor: Actor, networks: RolloutNetworksFn) -> Rollout:
        """``n_steps`` vector steps with the policy; the step after a done is marked invalid.

        ``networks`` computes the actor's outputs and the critic's values (a
        :class:`~agents.common.policies.RolloutNetworks` copy of the current parameters);
        ``actor`` turns outputs and noise into actions. The noise of the whole rollout is drawn
        at once; the rollout keeps the unclipped sample.

        A NaN or infinite observation or reward stops the rollout at its step with a
        :class:`~agents.common.envs.NonFiniteDataError` (the environment stack's ``FiniteCheck``).
        Once per rollout the stored arrays and the normalisation statistics are checked as well,
        for finite values that overflow: an observation beyond the policy dtype's range, or
        running moments that overflow; the statistics are then put back to where the rollout
        started and the same error is raised.
        """
        self.env_stack.finite_check.raise_if_failed()
        first_step, statistics = self.env_stack.vector_steps, self.env_stack.statistics()
        rollout = Rollout.empty(
            self.n_steps, self.env_stack.num_envs, self.obs_shape, self.action_shape, self.action_dtype, self.dtype,
            None if self.masks is None else self.masks.dim,
        )  # fmt: skip
        next_obs = self._step_envs(rollout, actor, networks, first_step)
        done = rollout.terminated | rollout.truncated
        rollout.valid[0] = ~self.prev_done  # the step after a done is gymnasium's autoreset step
        rollout.valid[1:] = ~done[:-1]
        self.prev_done = done[-1].copy()
        self.obs = self._stored(next_obs)
        last_obs = _as_dtype(self.obs, self.dtype)
        rollout.last_values[:] = networks(last_obs)[1]
        self._check(rollout, last_obs, first_step, statistics)
        return rollout

    def _step_envs(self, rollout: Rollout, actor: Actor, networks: RolloutNetworksFn, first_step: int) -> np.ndarray:
        """The ``n_steps`` vector steps, written into ``rollout``; returns the observation after the last."""
        envs, num_envs, masks = self.env_stack.envs, self.env_stack.num_envs, self.masks
        sample_actions = actor.rollout_head()
        noise = actor.rollout_noise(self.rng, (self.n_steps, num_envs, actor.output_dim), self.np_float)
        next_obs = self.obs
        for t in range(self.n_steps):
            obs = rollout.obs[t]
            obs[:] = next_obs.reshape(obs.shape)
            actor_outputs, rollout.values[t] = networks(obs)
            mask = None if masks is None else masks.store(rollout.masks, t)
            actions = sample_actions(actor_outputs, noise[t], mask)
            rollout.actions[t] = actions
            next_obs, rollout.rewards[t], rollout.terminated[t], rollout.truncated[t], info = envs.step(
                actor.to_env(actions)
            )
            if "_episode" in info:
                self._record_episodes(info)
            if masks is not None:
                masks.read(info, first_step + t + 1, rollout.terminated[t] | rollout.truncated[t])
        return next_obs

    def _check(self, rollout: Rollout, last_obs: np.ndarray, first_step: int, statistics: dict[str, Any]) -> None:
        """One finiteness check of the rollout's arrays and the statistics (cheap: once per rollout)."""
        stack = self.env_stack
        problem = None
        name = stack.nonfinite_statistic()
        if name is not None:
            stack.set_statistics(statistics)  # back to their finite state at the start of the rollout
            problem = (
                f"the {name} of {stack.env_id} overflowed during the rollout of vector steps "
                f"{first_step + 1} to {stack.vector_steps} (values too large for running moments)"
            )
        elif not (all_finite(rollout.obs) and all_finite(last_obs)):
            obs = np.concatenate([rollout.obs, last_obs[None]]).reshape(self.n_steps + 1, stack.num_envs, -1)
            t, index = (int(i) for i in np.argwhere(~np.isfinite(obs).all(axis=-1))[0])
            step = first_step + t
            at = f"at vector step {step}" if step else "at reset"
            problem = f"{stack.env_id} sub-environment {index} returned an observation beyond {self.dtype}'s range {at}"
        elif not (all_finite(rollout.values) and all_finite(rollout.last_values)):
            problem = f"the critic's values overflowed on the observations of {stack.env_id}"
        if problem is not None:
            stack.finite_check.fail(f"{problem}; training stopped before any update: {RECOVERY_HINT}")

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
            "masks": None if self.masks is None else self.masks.current.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`, on a collector built with the same config."""
        self.env_stack.load_state(state["env"])
        if self.env_stack.restores_episodes:  # else the environments start anew from the reset done here
            self.obs = state["obs"].copy()
            self.prev_done = state["prev_done"].copy()
            if self.masks is not None and state.get("masks") is not None:
                self.masks.current = state["masks"].copy()
        self.episodes = state["episodes"]
        self.recent_returns = deque(state["recent_returns"], maxlen=EPISODE_WINDOW)
        self.recent_lengths = deque(state["recent_lengths"], maxlen=EPISODE_WINDOW)
        self.rng.bit_generator.state = state["rng"]

    def close(self) -> None:
        """Close the vector environment (needed for ``async`` mode's worker processes)."""
        self.env_stack.close()


class ActionMasks:
    """The environments' action masks: read after every step, stored in the rollout with the observation they go with.

    Two conventions are read: gymnasium's ``info["action_mask"]`` (Taxi, FrozenLake with masks,
    many grid environments), and an ``action_masks()`` method on each sub-environment
    (sb3-contrib's ``MaskablePPO`` convention). ``True`` (or 1) allows an action; a ``MultiDiscrete``
    action has one flat mask of ``sum(nvec)`` entries, which must allow a category of every entry.
    A sub-environment whose info has no mask at a step allows every action there, and so does one
    whose episode just ended: the next action is the one gymnasium's autoreset ignores.
    """

    def __init__(self, envs: Any, num_envs: int, sizes: list[int], from_info: bool) -> None:
        self.envs, self.num_envs, self.sizes, self.from_info = envs, num_envs, sizes, from_info
        self.dim = sum(sizes)
        self.bounds = np.cumsum([0, *sizes])
        self.current = np.ones((num_envs, self.dim), dtype=bool)

    @classmethod
    def detect(
        cls, envs: Any, num_envs: int, reset_info: dict[str, Any], sizes: list[int] | None
    ) -> ActionMasks | None:
        """Masks if the vector environment provides them (``None`` otherwise, or for actions without masks)."""
        if sizes is None:
            return None
        if "action_mask" not in reset_info:
            try:  # asked without calling action_masks itself: a missing method would stop async workers
                found = envs.unwrapped.call("has_wrapper_attr", "action_masks")
            except AttributeError:  # a vector environment with no call (e.g. a vector_entry_point one)
                return None
            if not all(found):
                return None
        masks = cls(envs, num_envs, sizes, "action_mask" in reset_info)
        masks.read(reset_info, 0)
        return masks

    def read(self, info: dict[str, Any], step: int, ended: np.ndarray | None = None) -> None:
        """The masks for the observations the last step (or reset) returned; ``ended``: episodes that ended there."""
        if self.from_info:
            if "action_mask" not in info:
                self.current[:] = True
                return
            given = np.asarray(info["action_mask"])
            present = info.get("_action_mask", np.ones(self.num_envs, dtype=bool))
        else:
            given, present = _stacked(self.envs.unwrapped.call("action_masks")), np.ones(self.num_envs, dtype=bool)
        if given.shape != (self.num_envs, self.dim):
            raise ValueError(
                f"env: the action masks have shape {given.shape[1:]} per sub-environment, the action space needs "
                f"({self.dim},): one entry per action (per category of each MultiDiscrete entry), True = allowed"
            )
        if ended is not None:
            present = present & ~ended
        self.current[:] = np.where(present[:, None], given.astype(bool), True)
        self._check(step)

    def _check(self, step: int) -> None:
        for index, (start, stop) in enumerate(zip(self.bounds[:-1], self.bounds[1:], strict=True)):
            empty = np.flatnonzero(~self.current[:, start:stop].any(axis=1))
            if empty.size:
                part = f" for action entry {index}" if len(self.sizes) > 1 else ""
                raise ValueError(
                    f"env: sub-environment {int(empty[0])}'s action mask allows no action{part} at vector step "
                    f"{step}; a mask must allow at least one action in every state that is not terminal"
                )

    def store(self, masks: np.ndarray, t: int) -> np.ndarray:
        """Write the current masks at step ``t`` of the rollout's ``masks`` and return them."""
        masks[t] = self.current
        return masks[t]


def _stacked(masks: Any) -> np.ndarray:
    """``action_masks()`` of every sub-environment as one ``[num_envs, dim]`` array (one line if they are ragged)."""
    try:
        return np.stack([np.asarray(mask).reshape(-1) for mask in masks])
    except ValueError as error:
        raise ValueError(f"env: action_masks() returned masks of different sizes ({error}); return one flat mask "
                         "of sum(nvec) entries, True = allowed") from error  # fmt: skip


def _as_dtype(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return array if array.dtype == dtype else array.astype(dtype)
