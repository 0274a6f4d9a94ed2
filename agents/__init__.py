"""Reinforcement-learning agents built on :mod:`trustregion`: TRPO and NPG on gymnasium.

>>> from agents import TRPO
>>> TRPO(env="CartPole-v1", seed=0).learn(100_000).evaluate(10)   # doctest: +SKIP
"""

from agents.common.callbacks import (
    Callback,
    CheckpointCallback,
    EvalCallback,
    StopTrainingOnNoModelImprovement,
    StopTrainingOnRewardThreshold,
)
from agents.common.config import TRPOConfig
from agents.npg import NPG
from agents.trpo import TRPO

__all__ = [
    "NPG",
    "TRPO",
    "Callback",
    "CheckpointCallback",
    "EvalCallback",
    "StopTrainingOnNoModelImprovement",
    "StopTrainingOnRewardThreshold",
    "TRPOConfig",
]
