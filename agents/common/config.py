"""Hyperparameters of the TRPO / NPG agents, their validation, and the per-environment tables.

The one home of everything keyed by environment: :data:`ENV_DEFAULTS` (hyperparameters),
:data:`DEFAULT_TOTAL_STEPS` (step budgets) and :func:`env_name`, the one parser of an id.
The validators at the bottom are the agents' only ones; the agent checks its own arguments with them too.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

CURVATURES = ("gauss-newton", "kl-hessian")
KL_ESTIMATORS = ("analytic", "sample")
PRECONDITIONERS = ("none", "jacobi", "kfac")
VECTORIZATION_MODES = ("sync", "async", "vector_entry_point")
DTYPES = ("float32", "float64")
ACTIVATIONS = ("tanh", "relu")
VALUE_PARALLEL_MODES = ("sharded", "replicated")
CUSTOM_PARTS = ("env", "wrappers", "actor", "critic")
"""Parts of a run that can come as Python objects a config cannot rebuild (``load`` then needs them again)."""


@dataclass
class TRPOConfig:
    """Everything that defines a run; saved as JSON in the run directory and in every checkpoint.

    Symbols as in docs/math.md: ``δ = max_kl``, ``λ`` = ``cg_damping``, GAE's ``γ`` and ``λ_GAE``.
    One iteration collects ``num_envs × n_steps`` transitions, then takes one trust-region
    policy step and ``value_epochs`` epochs of Adam on the critic.
    """

    env: str = "CartPole-v1"
    seed: int = 0
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    wrappers: tuple[str, ...] = ()
    custom: tuple[str, ...] = ()
    num_envs: int = 2
    vectorization_mode: str = "sync"
    n_steps: int = 1024
    gamma: float = 0.99
    gae_lambda: float = 0.95
    normalize_obs: bool = False
    normalize_reward: bool = False
    clip_obs: float = 10.0
    clip_reward: float = 10.0
    # policy step
    max_kl: float = 0.01
    line_search: bool = True
    backtrack_iters: int = 10
    backtrack_ratio: float = 0.8
    cg_iters: int = 10
    cg_damping: float = 0.1
    curvature: str = "gauss-newton"
    preconditioner: str = "none"
    kl_estimator: str = "analytic"
    fisher_fraction: float = 1.0
    normalize_advantage: bool = True
    # networks
    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    log_std_init: float = 0.0
    # critic
    value_lr: float = 1e-3
    value_epochs: int = 10
    value_minibatch_size: int = 256
    value_parallel: str = "sharded"
    # runtime
    device: str = "cpu"
    dtype: str = "float32"
    torch_threads: int = 1
    pin_cores: bool = True
    checkpoint_interval: int = 10
    eval_episodes: int = 10

    def __post_init__(self) -> None:
        self.hidden_sizes = tuple(self.hidden_sizes)
        self.wrappers, self.custom = tuple(self.wrappers), tuple(self.custom)
        self.env_kwargs = dict(self.env_kwargs)
        self.validate()

    @property
    def batch_size(self) -> int:
        """Transitions per iteration, ``num_envs × n_steps``."""
        return self.num_envs * self.n_steps

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad hyperparameter and its valid range."""
        if not isinstance(self.env, str) or not self.env:
            raise ValueError(f"env must be a registered gymnasium id such as 'CartPole-v1' (got {self.env!r})")
        if not all(isinstance(name, str) and name for name in self.wrappers):
            raise ValueError(f"wrappers must be 'module:callable' names (got {self.wrappers!r})")
        if not set(self.custom) <= set(CUSTOM_PARTS):
            raise ValueError(
                f"custom lists parts given as Python objects, among {list(CUSTOM_PARTS)} (got {self.custom!r})"
            )
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda' (got {self.device!r})")
        for name, (minimum, hint) in _INTEGERS.items():
            check_integer(name, getattr(self, name), minimum, hint)
        for name, (low, high, hint) in _INTERVALS.items():
            check_interval(name, getattr(self, name), low, high, hint)
        for name in ("clip_obs", "clip_reward"):
            if getattr(self, name) == 0:
                raise ValueError(f"{name} must be > 0 (got 0); a bound such as 10.0, or inf to disable the clip")
        if self.fisher_fraction == 0.0:
            raise ValueError("fisher_fraction must be in (0, 1] (got 0.0); 1.0 uses the whole batch, 0.2 a fifth")
        check_interval("backtrack_ratio", self.backtrack_ratio, 0.0, 1.0, "the shrink factor, e.g. 0.8", open_ends=True)
        check_positive("max_kl", self.max_kl, "the trust-region radius δ; TRPO uses 0.01")
        check_positive("value_lr", self.value_lr, "the critic's Adam learning rate, e.g. 1e-3")
        check_finite("log_std_init", self.log_std_init, "the initial log standard deviation, e.g. 0.0")
        for name, choices in CHOICES.items():
            check_choice(name, getattr(self, name), choices)
        if self.preconditioner != "none" and self.curvature != "gauss-newton":
            raise ValueError(
                f"preconditioner={self.preconditioner!r} needs curvature='gauss-newton' (it reads the layer-wise "
                "Gauss-Newton's diagonal or Kronecker factors); use preconditioner='none' with 'kl-hessian'"
            )
        sizes = self.hidden_sizes
        if not sizes or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in sizes):
            raise ValueError(f"hidden_sizes must be a non-empty sequence of positive integers (got {sizes!r})")
        for name in ("normalize_obs", "normalize_reward", "line_search", "normalize_advantage", "pin_cores"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False (got {getattr(self, name)!r})")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        values = dataclasses.asdict(self)
        values["hidden_sizes"] = list(self.hidden_sizes)
        values["wrappers"], values["custom"] = list(self.wrappers), list(self.custom)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TRPOConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        check_names(values)
        return cls(**values)

    @classmethod
    def for_env(cls, env: str, **overrides: Any) -> TRPOConfig:
        """The per-environment defaults (:data:`ENV_DEFAULTS`) with ``overrides`` applied on top."""
        check_names(overrides)
        values = {**env_defaults(env), **overrides, "env": env}
        return cls(**values)


_INTEGERS: dict[str, tuple[int, str]] = {
    "seed": (0, ""),
    "num_envs": (1, ""),
    "n_steps": (1, ""),
    "backtrack_iters": (0, ""),
    "cg_iters": (1, ""),
    "value_epochs": (0, ""),
    "value_minibatch_size": (1, ""),
    "torch_threads": (0, "0 leaves torch's setting alone"),
    "checkpoint_interval": (1, "iterations between checkpoints"),
    "eval_episodes": (1, ""),
}
"""Integer fields: the smallest valid value and a hint for the error message."""

_INTERVALS: dict[str, tuple[float, float, str]] = {
    "gamma": (0.0, 1.0, "the discount factor, e.g. 0.99"),
    "gae_lambda": (0.0, 1.0, "GAE's λ, e.g. 0.95"),
    "clip_obs": (0.0, math.inf, "a bound > 0 such as 10.0; inf disables the clip"),
    "clip_reward": (0.0, math.inf, "a bound > 0 such as 10.0; inf disables the clip"),
    "cg_damping": (0.0, math.inf, "Tikhonov damping λ, e.g. 0.1"),
    "fisher_fraction": (0.0, 1.0, "share of the batch for the Fisher, e.g. 0.2"),
}
"""Number fields in a closed interval, with a hint for the error message."""

CHOICES: dict[str, tuple[str, ...]] = {
    "vectorization_mode": VECTORIZATION_MODES,
    "curvature": CURVATURES,
    "preconditioner": PRECONDITIONERS,
    "kl_estimator": KL_ESTIMATORS,
    "dtype": DTYPES,
    "activation": ACTIVATIONS,
    "value_parallel": VALUE_PARALLEL_MODES,
}
"""Fields with a fixed set of values (the CLI offers them as its flags' choices)."""


def check_names(values: dict[str, Any]) -> None:
    """Refuse hyperparameters that do not exist, listing the ones that do."""
    known = {f.name for f in dataclasses.fields(TRPOConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {unknown}; valid names: {sorted(known)}")


_CLASSIC_CONTROL = {"num_envs": 2, "normalize_obs": False, "normalize_reward": False}

UNPRECONDITIONED_CG_ITERS = 25
"""CG iterations of the MuJoCo policy step without a preconditioner (RL-Zoo's)."""

_MUJOCO = {
    "num_envs": 2,
    "n_steps": 1024,
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "normalize_obs": True,
    "normalize_reward": True,
    "max_kl": 0.01,
    "cg_iters": UNPRECONDITIONED_CG_ITERS,
    "cg_damping": 0.1,
    "value_lr": 1e-3,
    "value_epochs": 10,
    "value_minibatch_size": 256,
}

ENV_DEFAULTS: dict[str, dict[str, Any]] = {
    "CartPole": {
        **_CLASSIC_CONTROL,
        "num_envs": 8,
        "vectorization_mode": "vector_entry_point",
        "n_steps": 128,
        "gamma": 0.99,
        "gae_lambda": 0.98,
        "cg_damping": 1e-3,
        "fisher_fraction": 0.2,
        "value_lr": 2e-3,
        "value_epochs": 10,
        "value_minibatch_size": 256,
    },
    "Pendulum": {
        **_CLASSIC_CONTROL,
        "n_steps": 1024,
        "gamma": 0.9,
        "gae_lambda": 0.95,
        "log_std_init": -0.5,
        "value_epochs": 15,
        "value_minibatch_size": 256,
    },
    "Hopper": dict(_MUJOCO),
    "HalfCheetah": {**_MUJOCO, "preconditioner": "kfac", "cg_iters": 5, "max_kl": 0.04, "log_std_init": -0.5},
    "Walker2d": dict(_MUJOCO),
}
"""Per-environment overrides, keyed by the id without its version (``"Hopper"`` for ``Hopper-v5``).

Adapted from RL-Zoo's TRPO hyperparameters (2 environments, 512- or 1024-step rollouts, GAE
0.95, 25 CG iterations on MuJoCo), with 5 K-FAC-preconditioned CG iterations on HalfCheetah,
fewer critic epochs, a 20 % Fisher subsample on CartPole and a smaller initial standard deviation
(log-std -0.5) on Pendulum and HalfCheetah; docs/agents.md lists and explains every entry.
"""


DEFAULT_TOTAL_STEPS: dict[str, int] = {"CartPole": 100_000, "Pendulum": 100_000}
"""Step budgets of the command line and the benchmarks, keyed like :data:`ENV_DEFAULTS`; 1M otherwise."""


def env_name(env: str) -> str:
    """The key of the per-environment tables: the id without namespace and version (``Hopper`` for ``Hopper-v5``)."""
    return env.split("/")[-1].split("-v")[0]


def env_defaults(env: str) -> dict[str, Any]:
    """The overrides of :data:`ENV_DEFAULTS` that apply to ``env`` (empty for unknown ids)."""
    return dict(ENV_DEFAULTS.get(env_name(env), {}))


def default_total_steps(env: str) -> int:
    """100k for the classic-control tasks, 1M otherwise (RL-Zoo's budgets)."""
    return DEFAULT_TOTAL_STEPS.get(env_name(env), 1_000_000)


def check_integer(name: str, value: Any, minimum: int, hint: str = "") -> int:
    """``value`` if it is an integer (not a bool) ``>= minimum``, else a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        suffix = f"; {hint}" if hint else ""
        raise ValueError(f"{name} must be an integer >= {minimum} (got {value!r}){suffix}")
    return value


def check_finite(name: str, value: Any, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number (got {value!r}); {hint}")


def check_positive(name: str, value: Any, hint: str) -> None:
    check_finite(name, value, hint)
    if value <= 0:
        raise ValueError(f"{name} must be > 0 (got {value!r}); {hint}")


def check_interval(name: str, value: Any, low: float, high: float, hint: str, *, open_ends: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number in [{low}, {high}] (got {value!r}); {hint}")
    inside = low < value < high if open_ends else low <= value <= high
    if not inside:
        bounds = f"({low}, {high})" if open_ends else f"[{low}, {high}]"
        raise ValueError(f"{name} must be in {bounds} (got {value!r}); {hint}")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)} (got {value!r})")
