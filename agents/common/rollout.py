"""Rollout storage and generalised advantage estimation (docs/math.md, "GAE").

Layout is time-major, ``[T, N]`` for ``T = n_steps`` and ``N = num_envs``. Arrays are numpy
while collecting (cheap per-step writes) and become torch tensors, without copies, for the
update.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from agents.common.envs import NonFiniteDataError


@dataclass
class Rollout:
    """One rollout of ``n_steps`` vector steps, as :meth:`~agents.common.collector.Collector.collect` returns it.

    ``valid[t, i]`` is false for the transition gymnasium spends on next-step autoreset (the step
    after an episode ended: its action is ignored and its reward is 0); such transitions get
    zero advantage and are left out of both updates. ``last_values`` is ``V`` of the
    observation after the last step, for GAE's bootstrap.
    """

    obs: np.ndarray
    actions: np.ndarray
    values: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    valid: np.ndarray
    last_values: np.ndarray
    masks: np.ndarray | None = None

    @classmethod
    def empty(
        cls,
        n_steps: int,
        num_envs: int,
        obs_shape: tuple[int, ...],
        action_shape: tuple[int, ...],
        action_dtype: Any,
        dtype: Any,
        mask_dim: int | None = None,
    ) -> Rollout:
        """Arrays to fill, time-major: ``[n_steps, num_envs, ...]`` (``mask_dim``: entries of an action mask)."""
        steps = (n_steps, num_envs)
        return cls(
            masks=None if mask_dim is None else np.ones((*steps, mask_dim), dtype=bool),
            obs=np.zeros((*steps, *obs_shape), dtype=dtype),
            actions=np.zeros((*steps, *action_shape), dtype=action_dtype),
            values=np.zeros(steps, dtype=np.float64),
            rewards=np.zeros(steps, dtype=np.float64),
            terminated=np.zeros(steps, dtype=bool),
            truncated=np.zeros(steps, dtype=bool),
            valid=np.zeros(steps, dtype=bool),
            last_values=np.zeros(num_envs, dtype=np.float64),
        )

    @property
    def size(self) -> int:
        """Transitions, valid or not: ``n_steps × num_envs``."""
        return self.valid.size


@dataclass
class Batch:
    """The valid transitions of a rollout, flattened, as tensors for the updates."""

    obs: Tensor
    actions: Tensor
    advantages: Tensor
    returns: Tensor
    values: Tensor
    masks: Tensor | None = None


def compute_gae(
    rewards: np.ndarray,
    values: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    valid: np.ndarray,
    last_values: np.ndarray,
    gamma: float,
    gae_lambda: float,
) -> tuple[np.ndarray, np.ndarray]:
    r"""Advantages ``Â_t`` and value targets ``Â_t + V(s_t)`` for a ``[T, N]`` rollout.

    ``δ_t = r_t + γ (1 - terminated_t) V(s_{t+1}) - V(s_t)`` and
    ``Â_t = δ_t + γλ (1 - done_t) Â_{t+1}`` with ``done = terminated or truncated``.

    With next-step autoreset, ``s_{t+1}`` after a done step is the true final observation
    (the observation stored at ``t+1``, whose transition is invalid), so a *truncated* episode
    bootstraps from ``V`` of its real last state while a *terminated* one does not bootstrap
    at all. ``last_values`` is ``V`` of the observation after the last step. Invalid
    (autoreset) transitions get ``Â = 0``; nothing flows across them because the step before
    one is always done.
    """
    next_values = np.concatenate([values[1:], last_values[None]])
    valid = valid.astype(values.dtype)
    deltas = (rewards + gamma * (1.0 - terminated) * next_values - values) * valid
    decays = gamma * gae_lambda * (1.0 - (terminated | truncated)) * valid
    advantages = np.empty_like(deltas)
    next_advantage = np.zeros_like(last_values)
    for t in reversed(range(len(deltas))):  # Â_t = δ_t + γλ(1 - done_t) Â_{t+1}: only this is sequential
        next_advantage = advantages[t] = deltas[t] + decays[t] * next_advantage
    return advantages, advantages + values


def make_batch(
    rollout: Rollout,
    advantages: np.ndarray,
    returns: np.ndarray,
    dtype: torch.dtype,
    device: torch.device | None = None,
) -> Batch:
    """Flatten ``[T, N]`` to ``[T·N]``, keep the valid transitions, and move them to ``device`` (the networks').

    Advantages, value targets and values that are not finite in ``dtype`` (finite rewards too
    large for it: a float64 return beyond float32's range) raise
    :class:`~agents.common.envs.NonFiniteDataError` before either update sees them.
    """
    valid = rollout.valid.reshape(-1)

    def flat(array: np.ndarray) -> np.ndarray:
        return array.reshape(array.shape[0] * array.shape[1], *array.shape[2:])[valid]

    batch = Batch(
        obs=torch.from_numpy(flat(rollout.obs)),
        actions=torch.from_numpy(flat(rollout.actions)),
        advantages=torch.from_numpy(flat(advantages)).to(dtype),
        returns=torch.from_numpy(flat(returns)).to(dtype),
        values=torch.from_numpy(flat(rollout.values)).to(dtype),
        masks=None if rollout.masks is None else torch.from_numpy(flat(rollout.masks)),
    )
    for name in ("advantages", "returns", "values"):
        if not torch.isfinite(getattr(batch, name)).all():
            raise NonFiniteDataError(
                f"the rollout's {name} are not finite in {dtype} (rewards too large for it); training stopped "
                f"before any update: scale the rewards (normalize_reward=True) or train in float64"
            )
    if device is not None and device.type != "cpu":
        tensors = (getattr(batch, field.name) for field in dataclasses.fields(batch))
        batch = Batch(*(None if tensor is None else tensor.to(device) for tensor in tensors))
    return batch
