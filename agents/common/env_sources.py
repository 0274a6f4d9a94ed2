"""Where an agent's environments come from: a registered id, a factory, an instance, or a vector environment.

``TRPO(env=...)`` takes any of them (:func:`resolve_env`):

* a registered gymnasium id (``"CartPole-v1"``), or ``"module:Id-v0"`` (gymnasium imports the
  module, which registers the id);
* a zero-argument callable returning a ``gymnasium.Env``, called once per sub-environment; given
  as ``"module:callable"`` (the command line's ``--env``) it is imported, and a run built from it
  can be loaded again by name;
* a ``gymnasium.Env`` instance: one sub-environment (several would have to be copies of it: pass a
  factory for ``num_envs > 1``);
* a ``gymnasium.vector.VectorEnv`` the user built, used as it is.

``wrappers`` (callables ``env -> env``, or ``"module:callable"`` names) wrap each sub-environment the
agent builds (ids and factories), above gymnasium's episode statistics, so logged returns are the
environment's own, as Stable-Baselines3's ``Monitor`` records them.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
from gymnasium.vector import AsyncVectorEnv, SyncVectorEnv, VectorEnv

Wrapper = Callable[[gym.Env], gym.Env]
EnvLike = str | gym.Env | VectorEnv | Callable[[], gym.Env]
ENV_KINDS = "a registered gymnasium id, a gymnasium.Env, a zero-argument factory returning one, or a VectorEnv"


@dataclass(frozen=True)
class EnvSource:
    """An environment argument, resolved: its ``kind``, the ``name`` logs and configs use, and what builds it.

    ``kind`` is ``"id"``, ``"factory"``, ``"instance"`` or ``"vector"``; ``target`` the factory,
    instance or vector environment (``None`` for an id); ``importable`` whether ``name`` alone
    rebuilds it (an id, or a ``"module:callable"`` factory).
    """

    kind: str
    name: str
    target: Any = None
    wrappers: tuple[Wrapper, ...] = ()
    wrapper_names: tuple[str, ...] = ()
    importable: bool = True

    def sub_env(
        self, env_kwargs: dict[str, Any], inner: Sequence[Wrapper] = (), outer: Sequence[Wrapper] = ()
    ) -> gym.Env:
        """One sub-environment: built, then ``inner`` wrappers, the user's wrappers, ``outer`` wrappers."""
        if self.kind == "id":
            env = gym.make(self.name, **env_kwargs)
        elif self.kind == "factory":
            env = _call_factory(self.target, self.name)
        else:
            env = self.target
        for wrapper in (*inner, *self.wrappers, *outer):
            env = wrapper(env)
        return env

    def vector(
        self,
        num_envs: int,
        mode: str,
        env_kwargs: dict[str, Any],
        inner: Sequence[Wrapper] = (),
        outer: Sequence[Wrapper] = (),
    ) -> VectorEnv:
        """``num_envs`` sub-environments in a ``sync`` or ``async`` vector environment (a vector source: itself)."""
        self.check(num_envs, mode, env_kwargs)
        if self.kind == "vector":
            return self.target
        if self.kind == "id":
            wrappers = [*inner, *self.wrappers, *outer]
            return gym.make_vec(
                self.name, num_envs, vectorization_mode=mode, vector_kwargs={"copy": False}, wrappers=wrappers,
                **env_kwargs,
            )  # fmt: skip
        functions = [lambda: self.sub_env(env_kwargs, inner, outer)] * num_envs
        return (AsyncVectorEnv if mode == "async" else SyncVectorEnv)(functions, copy=False)

    def check(self, num_envs: int, mode: str, env_kwargs: dict[str, Any]) -> None:
        """Refuse, in one line, a combination this source cannot build."""
        if self.kind == "instance" and num_envs != 1:
            raise ValueError(
                f"env is one environment instance, and num_envs={num_envs} needs that many: pass a factory "
                f"(env=lambda: {self.name}(...)) or num_envs=1"
            )
        if self.kind == "instance" and mode == "async":
            raise ValueError("env is an instance, which an async worker process cannot share: pass a factory")
        if self.kind == "vector" and num_envs != self.target.num_envs:
            raise ValueError(f"num_envs={num_envs} differs from the vector env's {self.target.num_envs}; drop num_envs")
        if env_kwargs and self.kind != "id":
            raise ValueError("env_kwargs apply to registered ids only; pass the arguments to your factory instead")
        if mode == "vector_entry_point" and self.kind != "id":
            raise ValueError("vectorization_mode='vector_entry_point' needs a registered id whose spec has one")
        if mode == "vector_entry_point" and self.wrappers:
            raise ValueError("wrappers apply to sub-environments, which vectorization_mode='vector_entry_point' "
                             "does not have: use vectorization_mode='sync' with wrappers")  # fmt: skip

    def copy_for_evaluation(self) -> EnvSource:
        """A source that builds evaluation environments apart from the training ones."""
        if self.kind == "vector":
            raise ValueError("evaluate needs env= when training ran on a VectorEnv: pass a gymnasium.Env or a factory")
        if self.kind == "instance":  # one copy per evaluation episode, the training instance untouched
            try:
                copy.deepcopy(self.target)
                copies = lambda: copy.deepcopy(self.target)  # noqa: E731
                return EnvSource("factory", self.name, copies, self.wrappers, self.wrapper_names, importable=False)
            except Exception as error:
                raise ValueError(
                    f"evaluate cannot copy the env instance ({type(error).__name__}: {error}); pass env= "
                    "(an instance or a factory) to evaluate"
                ) from error
        return self


def resolve_env(env: EnvLike | EnvSource, wrappers: Sequence[Wrapper | str] | None = None) -> EnvSource:
    """``env`` and ``wrappers`` as an :class:`EnvSource`; a one-line ``ValueError`` naming the bad argument."""
    if isinstance(env, EnvSource):
        return env
    resolved, names = _resolve_wrappers(wrappers)
    if isinstance(env, str):
        factory = _import_factory(env)
        if factory is not None:
            return EnvSource("factory", env, factory, resolved, names)
        if not env:
            raise ValueError(f"env must be {ENV_KINDS} (got an empty string)")
        return EnvSource("id", env, None, resolved, names)
    if isinstance(env, VectorEnv):
        if resolved:
            raise ValueError("wrappers apply to the sub-environments the agent builds; wrap them inside your VectorEnv")
        return EnvSource("vector", _label(env), env, importable=False)
    if isinstance(env, gym.Env):
        return EnvSource("instance", _label(env), env, resolved, names, importable=False)
    if callable(env):
        name, importable = _qualified_name(env)
        return EnvSource("factory", name, env, resolved, names, importable)
    raise ValueError(f"env must be {ENV_KINDS} (got {type(env).__name__})")


def _label(env: gym.Env | VectorEnv) -> str:
    """An environment object's name: its registered id if it has one, else its class name."""
    spec = getattr(env, "spec", None)
    if spec is not None and getattr(spec, "id", None):
        return spec.id
    return type(env.unwrapped if isinstance(env, gym.Env) else env).__name__


def _qualified_name(function: Callable[..., Any]) -> tuple[str, bool]:
    """``"module:qualname"`` and whether importing it gives ``function`` back (lambdas and closures do not)."""
    module, qualname = getattr(function, "__module__", None), getattr(function, "__qualname__", None)
    if not module or module == "__main__" or not qualname or "<" in qualname:  # a script: not importable elsewhere
        return getattr(function, "__name__", type(function).__name__), False
    name = f"{module}:{qualname}"
    return name, _import_factory(name) is function


def _import_factory(name: str) -> Callable[..., Any] | None:
    """The callable ``"module:attr"`` names, or ``None`` when ``name`` is not of that form (e.g. a plain id)."""
    if ":" not in name:
        return None
    module_name, _, attribute = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    target: Any = module
    for part in attribute.split("."):
        target = getattr(target, part, None)
    if target is None or isinstance(target, gym.Env) or not callable(target):
        return None  # "module:Id-v0": gymnasium's own syntax, resolved by gym.make
    return target


def _resolve_wrappers(wrappers: Sequence[Wrapper | str] | None) -> tuple[tuple[Wrapper, ...], tuple[str, ...]]:
    if wrappers is None:
        return (), ()
    if isinstance(wrappers, str) or callable(wrappers):
        wrappers = [wrappers]
    resolved, names = [], []
    for wrapper in wrappers:
        if isinstance(wrapper, str):
            function = _import_factory(wrapper)
            if function is None:
                raise ValueError(
                    f"wrappers: cannot import {wrapper!r}; give 'module:callable' taking and returning an env"
                )
            resolved.append(function)
            names.append(wrapper)
        elif callable(wrapper):
            resolved.append(wrapper)
            names.append(_qualified_name(wrapper)[0])
        else:
            raise ValueError(f"wrappers must be callables env -> env or 'module:callable' names (got {wrapper!r})")
    return tuple(resolved), tuple(names)


def wrappers_importable(source: EnvSource) -> bool:
    """Whether every wrapper of ``source`` can be imported again by its name."""
    return all(
        _import_factory(name) is wrapper for name, wrapper in zip(source.wrapper_names, source.wrappers, strict=True)
    )


def _call_factory(factory: Callable[[], Any], name: str) -> gym.Env:
    try:
        env = factory()
    except Exception as error:
        message = " ".join(str(error).split())
        raise ValueError(f"env factory {name} raised {type(error).__name__}: {message}; fix the factory") from error
    if not isinstance(env, gym.Env):
        raise ValueError(f"env factory {name} returned {type(env).__name__}, not a gymnasium.Env; return the env")
    return env
