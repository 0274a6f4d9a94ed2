"""RL-Zoo's hyperparameters for sb3-contrib's TRPO, shared by the benchmark scripts.

Each entry holds the sb3-contrib ``TRPO`` arguments plus ``n_envs``, ``n_steps`` and ``normalize``
(a ``VecNormalize`` wrapper); MuJoCo tasks share one entry.
"""

from __future__ import annotations

from typing import Any

RL_ZOO_TRPO: dict[str, dict[str, Any]] = {
    "CartPole-v1": {
        "n_envs": 2,
        "normalize": False,
        "n_steps": 512,
        "batch_size": 512,
        "cg_damping": 1e-3,
        "gae_lambda": 0.98,
        "gamma": 0.99,
        "learning_rate": 1e-3,
        "n_critic_updates": 20,
    },
    "Pendulum-v1": {"n_envs": 2, "normalize": False, "n_steps": 1024, "gamma": 0.9, "n_critic_updates": 15},
    "mujoco": {
        "n_envs": 2,
        "normalize": True,
        "batch_size": 128,
        "n_steps": 1024,
        "gamma": 0.99,
        "gae_lambda": 0.95,
        "sub_sampling_factor": 1,
        "cg_max_steps": 25,
        "cg_damping": 0.1,
        "n_critic_updates": 20,
        "learning_rate": 1e-3,
    },
}


def rl_zoo_trpo(env: str) -> dict[str, Any]:
    """A copy of RL-Zoo's TRPO hyperparameters for ``env`` (the MuJoCo entry for unlisted tasks)."""
    return dict(RL_ZOO_TRPO.get(env, RL_ZOO_TRPO["mujoco"]))
