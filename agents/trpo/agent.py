"""TRPO: the agent class, with the training loop readable top to bottom.

One iteration (docs/agents.md walks through it against docs/math.md), data passed along by value:

1. ``collector.collect(actor, networks) -> Rollout``: ``n_steps`` vector steps with the current policy.
2. ``compute_gae`` and ``make_batch`` -> :class:`~agents.common.rollout.Batch`: advantages, value
   targets, the valid transitions flattened (docs/math.md, "GAE").
3. ``update_policy(batch)``: one :class:`trustregion.TrustRegionOptimizer` step on the surrogate
   objective under the mean-KL constraint, its curvature built here on the Fisher batch.
4. ``update_value(batch)``: Adam epochs on the critic, separate from the trust-region step.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._pytree import tree_map

from agents.common.builders import (
    NetworkLike,
    check_outputs,
    network_observation_space,
    resolve_device,
    sample_batch,
    user_network,
)
from agents.common.callbacks import Callback, as_callback
from agents.common.checkpoint import (
    GeneratorState,
    Stateful,
    check_format,
    load_checkpoint,
    load_parts,
    parts_state,
    save_checkpoint,
)
from agents.common.collector import ActionMasks, Collector
from agents.common.config import UNPRECONDITIONED_CG_ITERS, TRPOConfig, check_integer, env_defaults
from agents.common.distributed import DataParallel, data_parallel, rank_device, rank_seed, shared_seed
from agents.common.env_sources import EnvLike, EnvSource, Wrapper, resolve_env, wrappers_importable
from agents.common.envs import EnvStack, NormalizeBoxEntries, make_env_stack, make_eval_envs
from agents.common.logs import CSV_NAME, PLOT_NAME, RunLogger, plot_learning_curve
from agents.common.observations import network_observations
from agents.common.policies import (
    Actor,
    CategoricalActor,
    Critic,
    GaussianActor,
    MultiCategoricalActor,
    OldPolicy,
    RolloutNetworks,
    TorchRolloutNetworks,
    make_actor,
    mean_kl,
    policy_params,
    rollout_networks,
)
from agents.common.rollout import Batch, compute_gae, make_batch
from trustregion import (
    KFAC,
    BacktrackingLineSearch,
    ConjugateGradient,
    Curvature,
    Damped,
    GaussNewton,
    Jacobi,
    KLHessian,
    KLStepResult,
    NoLineSearch,
    TrustRegionOptimizer,
)

_PRECONDITIONERS = {"none": lambda: None, "jacobi": Jacobi, "kfac": KFAC}
"""``config.preconditioner`` -> a new preconditioner for the policy step's CG (Jacobi / KFAC of :mod:`trustregion`)."""

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 3  # 3: one entry per stateful part (agent.checkpoint_parts()), under "parts"
EVAL_SEED_OFFSET = 10_000
RANK_PARTS = ("collector", "generator")
"""The checkpoint parts that differ between the ranks of a data-parallel run (the rest are the same on all)."""


@dataclass
class Progress:
    """Where training stands: iterations and environment steps done, and each iteration's metrics."""

    iteration: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, copy.deepcopy(state[f.name]))


class TRPO:
    """Trust Region Policy Optimization (Schulman et al., 2015) on gymnasium vector environments.

    >>> agent = TRPO(env="CartPole-v1", seed=0)          # doctest: +SKIP
    >>> agent.learn(100_000)                             # doctest: +SKIP
    >>> agent.evaluate(10)["mean_return"]                # doctest: +SKIP

    Args:
        env: a registered gymnasium id (default ``"CartPole-v1"``).
        seed: seeds the networks, the action sampling and the environments (default 0).
        config: a complete :class:`~agents.common.config.TRPOConfig`, taken as it is (no
            per-environment defaults); then ``env``, ``seed`` and hyperparameters are not given.
        **hyperparameters: any field of :class:`~agents.common.config.TRPOConfig`; unspecified
            ones take the per-environment defaults (:data:`~agents.common.config.ENV_DEFAULTS`).

    Same seed, same config, same library versions and thread count on CPU: identical runs.
    """

    algorithm: ClassVar[str] = "trpo"
    overrides: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        env: EnvLike | None = None,
        seed: int | None = None,
        *,
        config: TRPOConfig | None = None,
        wrappers: Sequence[Wrapper | str] | None = None,
        actor: NetworkLike | None = None,
        critic: NetworkLike | None = None,
        **hyperparameters: Any,
    ) -> None:
        self.env_source = source = self._resolve_source(env, wrappers, config)
        networks = {"actor": actor, "critic": critic}
        self.config = config = self._resolve_config(source, env, seed, config, networks, hyperparameters)
        self.parallel = self._join_ranks(config)
        self.device = rank_device(resolve_device(config.device), self.parallel)
        self.dtype = getattr(torch, config.dtype)
        env_stack = self._make_env_stack(source)
        try:
            self._build_networks(env_stack, networks)
        except BaseException:
            env_stack.close()
            raise
        self.collector = self._make_collector(env_stack)
        self.generator = torch.Generator().manual_seed(self.rank_seed)  # minibatch shuffles, Fisher subsamples
        self.predict_generator = torch.Generator().manual_seed(config.seed + 1)  # on the CPU whatever the device
        try:
            self.value_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.value_lr, fused=True)
            self.policy_optimizer = self._make_policy_optimizer()
        except BaseException:
            self.collector.close()
            raise
        self.progress = Progress()
        self._run_dirs: set[Path] = set()  # run directories this agent was loaded from or trained in

    @staticmethod
    def _resolve_source(env: Any, wrappers: Any, config: TRPOConfig | None) -> EnvSource:
        """Where the environments come from: ``env`` (and ``wrappers``), else the config's names."""
        if config is not None and not isinstance(config, TRPOConfig):
            raise TypeError(f"config must be a TRPOConfig (got {type(config).__name__})")
        if config is not None and wrappers is None and "wrappers" not in config.custom:
            wrappers = config.wrappers  # the run's importable wrappers, also around an env given again
        if env is None and config is not None:
            env = config.env
        return resolve_env("CartPole-v1" if env is None else env, wrappers)

    def _make_env_stack(self, source: EnvSource) -> EnvStack:
        config = self.config
        try:
            return make_env_stack(
                source,
                config.num_envs,
                vectorization_mode=config.vectorization_mode,
                env_kwargs=config.env_kwargs,
                normalize_obs=config.normalize_obs,
                normalize_reward=config.normalize_reward,
                gamma=config.gamma,
                clip_obs=config.clip_obs,
                clip_reward=config.clip_reward,
            )
        except (gym.error.Error, ImportError, TypeError) as error:
            message = environment_error(config.env, config.env_kwargs, error) if source.kind == "id" else None
            if message is None:
                raise
            raise ValueError(message) from error

    @classmethod
    def _resolve_config(
        cls,
        source: EnvSource,
        env: Any,
        seed: int | None,
        config: TRPOConfig | None,
        networks: dict[str, Any],
        hyperparameters: dict[str, Any],
    ) -> TRPOConfig:
        """The run's config: the per-environment defaults with the hyperparameters on top, or ``config`` alone.

        Python objects (an env, wrappers or networks a config cannot rebuild) are named in ``custom``.
        """
        custom = _custom_parts(source, networks)
        if "device" in hyperparameters and isinstance(hyperparameters["device"], torch.device):
            hyperparameters["device"] = str(hyperparameters["device"])
        if config is None:
            seed = 0 if seed is None else seed
            for name, fixed in cls.overrides.items():
                if name in hyperparameters and hyperparameters[name] != fixed:
                    raise ValueError(
                        f"{cls.__name__} always runs with {name}={fixed!r} (got {name}={hyperparameters[name]!r}); "
                        f"use TRPO for {name}={hyperparameters[name]!r}"
                    )
            implied = _source_defaults(source, hyperparameters) | _network_defaults(source, networks, hyperparameters)
            values = {**implied, **cls.overrides, **hyperparameters}
            return TRPOConfig.for_env(source.name, seed=seed, wrappers=source.wrapper_names, custom=custom, **values)
        given = ["env"] if isinstance(env, str) and env != config.env else []
        given += ["seed"] if seed is not None else []
        if given + sorted(hyperparameters):
            raise ValueError(f"config= holds the whole run; drop {given + sorted(hyperparameters)} or set them in it")
        values = {**config.to_dict(), "env": source.name, "wrappers": source.wrapper_names, "custom": custom}
        return TRPOConfig.from_dict(values)  # a validated copy, not shared with the caller

    def _join_ranks(self, config: TRPOConfig) -> DataParallel | None:
        """The data-parallel context (``None`` in a single process); sets the threads, checks the ranks' configs.

        In a data-parallel run, with ``pin_cores`` each process binds itself to its own block of its
        machine's usable cores (:meth:`~agents.common.distributed.DataParallel.bind_cores`), and
        ``torch_threads=0`` means one thread per core of that block (unbound: the usable cores over
        the processes on this machine).
        """
        parallel, block = data_parallel(config.device), None
        if parallel is not None:
            parallel.check_config(config.to_dict())
            block = parallel.bind_cores() if config.pin_cores else None
        threads = config.torch_threads or (parallel.default_threads(block) if parallel is not None else 0)
        if threads:
            torch.set_num_threads(threads)
        self.rank_seed = rank_seed(config.seed, parallel.rank if parallel is not None else 0)
        self.trained_world_size = 1 if parallel is None else parallel.world_size  # a checkpoint's, once loaded
        return parallel

    @property
    def world_size(self) -> int:
        """Processes training together (1 without a process group); each collects ``batch_size`` steps."""
        return 1 if self.parallel is None else self.parallel.world_size

    @property
    def writes_files(self) -> bool:
        """Whether this process writes the run directory: the only one, or rank 0 of a data-parallel run."""
        return self.parallel is None or self.parallel.rank == 0

    @classmethod
    def from_config(cls, config: TRPOConfig) -> TRPO:
        """An agent for an explicit config (no per-environment defaults applied): ``cls(config=config)``."""
        return cls(config=config)

    # ------------------------------------------------------------------ construction
    def _build_networks(self, env_stack: EnvStack, given: dict[str, NetworkLike | None]) -> None:
        """Actor and critic on the device, the user's or the built-in ones, checked on a sample batch."""
        config, envs, self.layout = self.config, env_stack.envs, env_stack.layout
        self.observation_space = network_observation_space(self.layout, envs.single_observation_space, self.dtype)
        spaces = (self.observation_space, envs.single_action_space)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            nets = {name: user_network(net, name, spaces) for name, net in given.items()}
            self.actor: Actor = make_actor(
                self.layout, spaces[1], config.hidden_sizes, config.activation, config.log_std_init, nets["actor"]
            ).to(self.device, self.dtype)
            self.critic = Critic(self.layout, config.hidden_sizes, config.activation, nets["critic"])
            self.critic = self.critic.to(self.device, self.dtype)
        sample = sample_batch(self.layout, envs.single_observation_space, self.dtype, self.device)
        check_outputs(self.actor.net, "actor", sample, (2, self.actor.output_dim), f"the parameters of {spaces[1]}")
        check_outputs(self.critic, "critic", sample, (2,), "one value per observation")
        if self.parallel is not None:
            self.parallel.broadcast_modules(self.actor, self.critic)

    def _make_collector(self, env_stack: EnvStack) -> Collector:
        numpy_dtype = np.float32 if self.dtype == torch.float32 else np.float64
        if isinstance(self.actor, GaussianActor):
            action_shape, action_dtype = (self.actor.log_std.numel(),), numpy_dtype
        else:
            action_shape, action_dtype = _action_shape(env_stack.envs.single_action_space), np.int64
        if self.parallel is not None:  # before the first reset, whose observations the statistics take in
            self.parallel.track_statistics(env_stack)
        return Collector(
            env_stack, self.config.n_steps, action_shape, action_dtype, numpy_dtype, self.rank_seed, self.mask_sizes
        )

    @property
    def mask_sizes(self) -> list[int] | None:
        """The categories of each factor an action mask covers (``None``: the actions take no masks)."""
        if isinstance(self.actor, MultiCategoricalActor):
            return list(self.actor.sizes)
        return [self.actor.output_dim] if isinstance(self.actor, CategoricalActor) else None

    def _make_policy_optimizer(self) -> TrustRegionOptimizer:
        """The trust-region optimizer of the actor; :meth:`update_policy` gives each step its curvature."""
        config = self.config
        self.gauss_newton: GaussNewton | None = None
        if config.curvature == "gauss-newton":  # traced once here; each step gives it its batch (with_inputs)
            space = self.env_stack.envs.single_observation_space
            no_batch_yet = sample_batch(self.layout, space, self.dtype, self.device)[:0]
            self.gauss_newton = GaussNewton.for_module(self.actor, no_batch_yet, self.actor.output_fisher())
        if config.preconditioner == "kfac" and not (self.gauss_newton is not None and self.gauss_newton.layerwise):
            raise ValueError(
                "preconditioner='kfac' needs an actor of nn.Linear layers and tanh/relu (the layer-wise Gauss-Newton "
                f"path); this actor is not one: pass preconditioner='none' (with cg_iters={UNPRECONDITIONED_CG_ITERS}) "
                "or 'jacobi'"
            )
        if config.line_search:
            line_search = BacktrackingLineSearch(config.backtrack_iters, config.backtrack_ratio)
        else:
            line_search = NoLineSearch()
        return TrustRegionOptimizer(
            self.actor.parameters(),
            max_kl=config.max_kl,
            curvature=Damped(KLHessian(), config.cg_damping),  # used only by a step() given no curvature
            solver=ConjugateGradient(
                max_iter=config.cg_iters, preconditioner=_PRECONDITIONERS[config.preconditioner]()
            ),
            line_search=line_search,
            reduce=None if self.parallel is None else self.parallel.reduce,
        )

    @property
    def env_stack(self) -> EnvStack:
        """The training vector environment and its normalisation wrappers (owned by the collector)."""
        return self.collector.env_stack

    @property
    def global_step(self) -> int:
        """Environment steps taken so far, over all sub-environments."""
        return self.progress.global_step

    @property
    def num_timesteps(self) -> int:
        """Stable-Baselines3's name of :attr:`global_step`."""
        return self.progress.global_step

    @property
    def iteration(self) -> int:
        return self.progress.iteration

    @property
    def history(self) -> list[dict[str, Any]]:
        """The metrics of every iteration so far, as logged."""
        return self.progress.history

    # ------------------------------------------------------------------ training loop
    def learn(
        self,
        total_timesteps: int,
        callback: Any = None,
        log_interval: int | None = None,
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
        *,
        run_dir: str | Path | None = None,
        progress: bool | None = None,
    ) -> TRPO:
        """Train for ``total_timesteps`` more environment steps, or up to ``total_timesteps`` in all.

        Stable-Baselines3's signature, so ``model.learn(...)`` calls carry over.
        Args:
            total_timesteps: with ``reset_num_timesteps=True`` (the default, as in Stable-Baselines3)
                the steps to take in this call (``learn(4096)`` twice trains 8192 steps); with
                ``False``, a cumulative target: train until ``global_step >= N``, or do nothing.
                :attr:`global_step` and the logs never restart from 0. Steps come in whole
                iterations of ``num_envs × n_steps`` (100,352 for 100,000 on CartPole).
            callback: ``None``, a :class:`~agents.common.callbacks.Callback` (e.g.
                :class:`~agents.common.callbacks.EvalCallback`), a function of the agent, or a list
                of these, called after every iteration (before it is logged and checkpointed);
                ``False`` from one stops training there. The checkpoint at the end is written all
                the same, so the run continues from there with ``reset_num_timesteps=False``.
            log_interval: print one line of metrics every ``log_interval`` iterations (``None``: quiet).
            progress_bar: show a progress bar of the steps that will run (``progress``: its older name).
            run_dir: where logs, atomic checkpoints (every ``checkpoint_interval`` iterations and
                at the end) and the learning curve go. A directory holding another run's checkpoint or
                log is refused (``ValueError``); one this agent was loaded from continues its logs.

        An exception during an iteration (``KeyboardInterrupt`` included) abandons only that one
        (:meth:`_iterate`).
        """
        target = self._learn_target(total_timesteps, reset_num_timesteps, log_interval)
        callbacks = as_callback(callback)
        remaining = target - self.global_step
        if remaining <= 0:
            return self  # nothing to do, and nothing is rewritten
        batch = self.config.batch_size * self.world_size
        end_step = self.global_step + -(-remaining // batch) * batch  # whole iterations
        run_path = self._claim_run_dir(run_dir)
        logger = self._run_logger(run_path, end_step, progress_bar if progress is None else progress, log_interval)
        try:
            self._iterate(target, run_path, logger, callbacks)
        finally:
            logger.close()
        self._plot_run(run_path)
        return self

    def _learn_target(self, total_timesteps: int, reset_num_timesteps: bool, log_interval: int | None) -> int:
        """The step ``learn`` trains to, after checking its arguments and that this run may continue here."""
        check_integer("total_timesteps", total_timesteps, 0)
        if log_interval is not None:
            check_integer("log_interval", log_interval, 1, "iterations between printed lines; None prints nothing")
        self.check_resumable()
        if not isinstance(reset_num_timesteps, bool):
            raise ValueError(f"reset_num_timesteps must be True or False (got {reset_num_timesteps!r})")
        return self.global_step + total_timesteps if reset_num_timesteps else total_timesteps

    def _run_logger(self, run_path: Path | None, end_step: int, progress: bool, log_interval: int | None) -> RunLogger:
        """The logs and progress bar of this run; in a data-parallel run, rank 0 alone writes them."""
        writes = self.writes_files
        return RunLogger(
            run_path if writes else None,
            total_steps=end_step,
            start_step=self.global_step,
            progress=progress and writes,
            log_interval=log_interval if writes else None,
        )

    def _plot_run(self, run_path: Path | None) -> None:
        if run_path is not None and self.writes_files:
            title = f"{self.algorithm.upper()} {self.config.env}"
            plot_learning_curve(run_path / CSV_NAME, run_path / PLOT_NAME, title)

    def _iterate(self, target: int, run_path: Path | None, logger: RunLogger, callback: Callback) -> None:
        """Iterations until ``target`` steps or the callback says stop, with periodic and final checkpoints.

        On any exception (``KeyboardInterrupt`` included) the iteration in progress is abandoned and, with
        a run directory, the state after the last completed one is written before the exception propagates.
        """
        # the state after the last completed iteration while the checkpoint on disk is older, else None
        consistent: dict[str, Any] | None = None
        saved = False
        try:
            if run_path is not None:
                consistent = self._consistent_state()
            callback.on_training_start(self)
            while self.global_step < target:
                metrics = self.train_iteration()
                stop = callback.on_iteration(self, metrics) is False  # it may add metrics (evaluations)
                logger.log(metrics)
                saved = run_path is not None and self.iteration % self.config.checkpoint_interval == 0
                if saved:
                    self.save(run_path / CHECKPOINT_NAME)
                    consistent = None
                if self.parallel is not None:
                    stop = self.parallel.any_rank(stop)  # every rank stops after the same iteration
                if stop:
                    break
                if run_path is not None and not saved and self.global_step < target:
                    consistent = self._consistent_state()
            if run_path is not None and not saved:
                self.save(run_path / CHECKPOINT_NAME)
                consistent = None
            callback.on_training_end(self)
        except BaseException as error:
            if self.parallel is not None:
                self.parallel.publish_failure(error)  # the other ranks name it when their collectives fail
            if consistent is not None and self.writes_files:  # the iteration in progress is abandoned
                save_checkpoint(run_path / CHECKPOINT_NAME, consistent)
            raise

    def _claim_run_dir(self, run_dir: str | Path | None) -> Path | None:
        """``run_dir`` as a path this agent may write to (checked, then remembered as its own).

        In a data-parallel run rank 0 checks it, and every rank gets its answer (or its error).
        """
        if self.parallel is not None and run_dir is not None:
            claim = self._claim_local_run_dir
            return self.parallel.from_rank_zero(lambda: claim(run_dir))
        return self._claim_local_run_dir(run_dir)

    def _claim_local_run_dir(self, run_dir: str | Path | None) -> Path | None:
        if run_dir is None:
            return None
        run_path = Path(run_dir)
        self._check_run_dir(run_path)
        self._run_dirs.add(run_path.resolve())
        return run_path

    def _consistent_state(self) -> dict[str, Any]:
        """:meth:`state_dict` with every tensor and array copied: the agent's state at this moment, kept."""
        return _copy_state(self.state_dict())

    def _check_run_dir(self, run_dir: Path) -> None:
        """Refuse a directory that holds another run's checkpoint or log (it would be overwritten)."""
        if run_dir.exists() and not run_dir.is_dir():
            raise ValueError(f"run_dir {run_dir} is a file; pass a directory")
        if run_dir.resolve() in self._run_dirs:
            return
        existing = [name for name in (CHECKPOINT_NAME, CSV_NAME) if (run_dir / name).exists()]
        if existing:
            raise ValueError(
                f"run_dir {run_dir} already holds a run ({', '.join(existing)}) that this agent would overwrite; "
                f"continue it with {type(self).__name__}.load({str(run_dir)!r}).learn(...), "
                "or pass a new directory"
            )

    def train_iteration(self) -> dict[str, Any]:
        """One iteration: rollout, GAE, policy step, critic epochs. Returns the logged metrics."""
        start = time.perf_counter()
        batch = self.rollout_batch()
        rollout_done = time.perf_counter()
        step = self.update_policy(batch)
        policy_done = time.perf_counter()
        value_loss = self.update_value(batch)
        value_done = time.perf_counter()
        self.progress.global_step += self.config.batch_size * self.world_size
        self.progress.iteration += 1
        if self.parallel is not None:
            self.parallel.check_identical((self.actor, self.critic), self.iteration)
        metrics = self._metrics(batch, step, value_loss)
        metrics.update(
            steps_per_second=self.config.batch_size * self.world_size / (value_done - start),
            rollout_seconds=rollout_done - start,
            policy_seconds=policy_done - rollout_done,
            value_seconds=value_done - policy_done,
        )
        if self.parallel is not None:  # what the iteration's collectives cost (TensorBoard, history)
            metrics.update(self.parallel.collective_costs())
        self.progress.history.append(metrics)
        return metrics

    def rollout_batch(self) -> Batch:
        """Collect one rollout and turn it into a training batch with GAE advantages and returns."""
        rollout = self.collector.collect(self.actor, self.rollout_networks())
        if self.parallel is not None:
            self.parallel.merge_statistics(self.env_stack)
        config = self.config
        advantages, returns = compute_gae(
            rollout.rewards,
            rollout.values,
            rollout.terminated,
            rollout.truncated,
            rollout.valid,
            rollout.last_values,
            config.gamma,
            config.gae_lambda,
        )
        return make_batch(rollout, advantages, returns, self.dtype, self.device)

    def rollout_networks(self) -> RolloutNetworks | TorchRolloutNetworks:
        """Actor and critic for rollouts, ``obs -> (actor outputs, values)``: a numpy copy of CPU MLPs, else torch."""
        return rollout_networks(self.actor, self.critic)

    def update_policy(self, batch: Batch) -> KLStepResult:
        """One trust-region step on ``L(θ) = -mean(π_θ(a|s) / π_old(a|s) · Â)`` under ``mean KL <= δ``.

        docs/math.md, "Surrogate objective" and "Mean KL". ``old`` is ``π_old`` on the batch,
        frozen; the closure is the surrogate and the mean KL on the whole batch, and the curvature
        is built on the Fisher batch (the whole batch, or a ``fisher_fraction`` subsample of it).
        """
        actor, estimator = self.actor, self.config.kl_estimator
        advantages = batch.advantages
        if self.parallel is not None:  # sets this rank's weight in the step's reductions; global statistics
            advantages = self.parallel.start_policy_step(advantages, self.config.normalize_advantage)
        elif self.config.normalize_advantage and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        old = OldPolicy.of(actor, batch.obs, batch.actions, batch.masks)
        subsample = self._fisher_subsample(len(batch.obs))
        fisher_batch = old if subsample is None else old.subset(subsample)

        def closure() -> tuple[Tensor, Tensor]:
            params = policy_params(actor, old.obs, old.mask)
            log_prob = actor.log_prob(params, old.actions)
            surrogate = -(torch.exp(log_prob - old.log_prob) * advantages).mean()
            return surrogate, mean_kl(actor, old, params, log_prob, estimator)

        self.policy_optimizer.step(closure, curvature=self.policy_curvature(fisher_batch, old))
        result = self.policy_optimizer.last_result
        assert isinstance(result, KLStepResult)
        return result

    def policy_curvature(self, fisher_batch: OldPolicy, old: OldPolicy) -> Curvature:
        """``A = F + λI`` on the Fisher batch (``λ`` = ``cg_damping``).

        ``F`` is Gauss-Newton ``Jᵀ M J`` on the Fisher batch's states, or the Hessian of the mean KL
        on it: the closure's own KL when the Fisher batch is the whole batch ``old``, else the same
        estimator on the subsample.
        """
        actor, estimator = self.actor, self.config.kl_estimator
        if self.gauss_newton is not None:
            output_fisher = None if fisher_batch.mask is None else actor.output_fisher(fisher_batch.mask)
            fisher: Curvature = self.gauss_newton.with_inputs(fisher_batch.obs, fisher=output_fisher)
        elif fisher_batch is old:
            fisher = KLHessian()
        else:

            def fisher_batch_kl() -> Tensor:
                params = policy_params(actor, fisher_batch.obs, fisher_batch.mask)
                return mean_kl(actor, fisher_batch, params, actor.log_prob(params, fisher_batch.actions), estimator)

            fisher = KLHessian(constraint=fisher_batch_kl)
        if self.parallel is not None and fisher_batch is not old:
            fisher = self.parallel.fisher_share(fisher, len(fisher_batch.obs))
        return Damped(fisher, self.config.cg_damping)

    def _fisher_subsample(self, size: int) -> Tensor | None:
        fraction = self.config.fisher_fraction
        if fraction >= 1.0:
            return None
        count = max(1, math.ceil(fraction * size))
        return torch.randperm(size, generator=self.generator)[:count]

    def update_value(self, batch: Batch) -> float:
        """``value_epochs`` epochs of Adam minibatches on ``(V(s) - R̂)²``; returns the last epoch's mean loss.

        In a data-parallel run (``value_parallel``, docs/distributed.md) every rank either fits the
        critic on its own shard, all-reducing the gradient of every minibatch (sharded), or on the
        gathered global batch, with minibatches ``world size`` times as large and a shuffle all
        ranks draw alike (replicated).
        """
        config, obs, returns = self.config, batch.obs, batch.returns
        minibatch, generator = config.value_minibatch_size, self.generator
        if self.parallel is not None:
            if config.value_parallel == "sharded":
                data = (obs, returns)
                return self.parallel.update_value(
                    self.critic, self.value_optimizer, data, config.value_epochs, minibatch, generator
                )
            obs, returns = self.parallel.gather_rows(obs, returns)
            minibatch *= self.world_size
            generator = torch.Generator().manual_seed(shared_seed(config.seed, self.iteration))
        return fit_critic(self.critic, self.value_optimizer, (obs, returns), config.value_epochs, minibatch, generator)

    def _metrics(self, batch: Batch, step: KLStepResult, value_loss: float) -> dict[str, Any]:
        with torch.no_grad():
            params = policy_params(self.actor, batch.obs, batch.masks)
            entropy = self.actor.entropy(params).mean().item()
        returns, values = batch.returns, batch.values
        variance = returns.var().item() if len(returns) > 1 else math.nan
        explained = 1.0 - (returns - values).var().item() / variance if variance and variance > 0 else math.nan
        log_std = self.actor.log_std.mean().item() if isinstance(self.actor, GaussianActor) else math.nan
        return {
            "iteration": self.iteration,
            "global_step": self.global_step,
            **(
                self.collector.episode_statistics()
                if self.parallel is None
                else self.parallel.episode_statistics(self.collector)
            ),
            "policy_loss": step.loss_before,
            "policy_improvement": step.actual_improvement if step.accepted else 0.0,
            "kl": step.kl_after if step.accepted and step.kl_after is not None else 0.0,
            "accepted": int(step.accepted),
            "reason": step.reason.value,
            "backtracks": step.backtracks,
            "step_fraction": step.step_fraction,
            "cg_iterations": step.solver_iterations,
            "value_loss": value_loss,
            "explained_variance": explained,
            "entropy": entropy,
            "log_std": log_std,
        }

    # ------------------------------------------------------------------ inference
    def _network_dtype(self, obs: np.ndarray) -> np.ndarray:
        """Observations in the dtype the rollouts store: an image's own, else the policy's."""
        numpy_dtype = self.collector.dtype
        return obs if obs.dtype == numpy_dtype else obs.astype(numpy_dtype)

    def normalize_observation(self, obs: np.ndarray) -> np.ndarray:
        """Flat observations as the policy sees them: frozen training statistics, clipped to ``±clip_obs``."""
        normalizer = self.env_stack.obs_normalizer
        if normalizer is None:
            return obs
        if isinstance(normalizer, NormalizeBoxEntries):
            return normalizer.normalize(obs)
        rms, clip = normalizer.obs_rms, self.config.clip_obs
        return np.clip((obs - rms.mean) / np.sqrt(rms.var + normalizer.epsilon), -clip, clip).astype(np.float32)

    def act(self, observation: Any, deterministic: bool = True, action_masks: Any = None) -> np.ndarray:
        """Actions for raw observations, one or a batch; Box actions are clipped to the bounds.

        ``action_masks`` (Discrete and MultiDiscrete actions): ``True`` where an action is allowed,
        one mask per observation; masked actions are never returned.
        """
        space = self.env_stack.base.single_observation_space
        obs, single = network_observations(self.layout, space, observation)
        masks = None if action_masks is None else np.asarray(action_masks, dtype=bool)
        if masks is not None and masks.size == len(obs) * self.actor.output_dim:
            masks = masks.reshape(len(obs), -1)  # one mask, or a batch of them, like the observations
        actions = self._actions(self.normalize_observation(obs), deterministic, masks)
        return actions[0] if single else actions

    def predict(
        self,
        observation: Any,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
        action_masks: Any = None,
    ) -> tuple[np.ndarray, Any]:
        """Stable-Baselines3's ``predict``: ``(action, state)`` for raw observations; ``state`` is passed through.

        The policies have no recurrent state, so ``state`` and ``episode_start`` are accepted and
        ``state`` returned unchanged. :meth:`act` returns the action alone, deterministic by default.
        """
        return self.act(observation, deterministic, action_masks), state

    def _actions(self, obs: np.ndarray, deterministic: bool, masks: np.ndarray | None) -> np.ndarray:
        """Actions for a ``[batch, *shape]`` array of network observations (normalised), as the env takes them."""
        x = torch.from_numpy(np.ascontiguousarray(self._network_dtype(obs))).to(self.device)
        mask = None if masks is None else torch.from_numpy(masks).to(self.device)
        if mask is not None and self.mask_sizes is None:
            raise ValueError(f"action_masks apply to Discrete and MultiDiscrete actions, not to this agent's "
                             f"{self.env_stack.envs.single_action_space}; leave action_masks out")  # fmt: skip
        if mask is not None and tuple(mask.shape) != (len(x), self.actor.output_dim):
            raise ValueError(f"action_masks must have {self.actor.output_dim} entries per observation, True = allowed "
                             f"(got shape {tuple(mask.shape)} for {len(x)} observations)")  # fmt: skip
        if mask is not None and not all(bool(part.any(-1).all()) for part in mask.split(self.mask_sizes, dim=-1)):
            raise ValueError("action_masks allow no action for some observation (or action entry); allow one at least")
        with torch.inference_mode():
            params = policy_params(self.actor, x, mask)
            if deterministic:
                action = self.actor.mode(params)
            else:  # the generator stays on the CPU, so a run moves between devices with its random state
                action = self.actor.sample(tree_map(lambda t: t.cpu(), params), self.predict_generator)
            return self.actor.to_env(action.cpu().numpy())

    def evaluate(self, n_episodes: int | None = None, deterministic: bool = True, env: Any = None) -> dict[str, Any]:
        """Run ``n_episodes`` episodes (one per sub-environment, fixed seeds) and report raw returns.

        ``env`` (an id, a ``gymnasium.Env``, a factory) evaluates there instead of on new environments
        like the training ones, wrapped in the run's wrappers as training's sub-environments were;
        action masks are read from it as in training.
        """
        n_episodes = self.config.eval_episodes if n_episodes is None else n_episodes
        check_integer("n_episodes", n_episodes, 1)
        if isinstance(env, gym.vector.VectorEnv):
            raise ValueError("env: evaluate takes an id, a gymnasium.Env or a factory (one copy per episode), "
                             "not a VectorEnv")  # fmt: skip
        source = self.env_source if env is None else resolve_env(env, self.env_source.wrappers)
        mode = self.config.vectorization_mode if env is None else "sync"
        envs = make_eval_envs(source, n_episodes, self.config.env_kwargs if env is None else {}, mode)
        try:
            self._check_evaluation_space(envs.single_observation_space)
            returns, lengths = self._run_episodes(envs, n_episodes, deterministic)
        finally:
            envs.close()
        return {
            "mean_return": float(returns.mean()),
            "std_return": float(returns.std()),
            "returns": returns.tolist(),
            "lengths": lengths.tolist(),
        }

    def _check_evaluation_space(self, space: gym.Space) -> None:
        """Refuse, in one line, an evaluation environment whose observations the networks cannot take."""
        if tuple(space.shape or ()) != self.layout.shape:
            raise ValueError(
                f"env: its observations reach the networks with shape {space.shape}, the agent was trained on "
                f"{self.layout.shape}: evaluate on the environment it was trained on"
            )

    def _run_episodes(self, envs: Any, n_episodes: int, deterministic: bool) -> tuple[np.ndarray, np.ndarray]:
        obs, info = envs.reset(seed=self.config.seed + EVAL_SEED_OFFSET)
        masks = ActionMasks.detect(envs, n_episodes, info, self.mask_sizes)
        returns, lengths = np.zeros(n_episodes), np.zeros(n_episodes, dtype=int)
        done = np.zeros(n_episodes, dtype=bool)
        while not done.all():
            normalized = self.normalize_observation(obs.reshape(n_episodes, *self.layout.shape))
            actions = self._actions(normalized, deterministic, None if masks is None else masks.current)
            obs, reward, terminated, truncated, info = envs.step(actions)
            if masks is not None:
                masks.read(info, int(lengths.max()) + 1, terminated | truncated | done)
            active = ~done
            returns[active] += reward[active]
            lengths[active] += 1
            ended = (terminated | truncated) & active
            if "_episode" in info:  # the environment's own return, below the user's wrappers
                recorded = ended & info["_episode"]
                returns[recorded] = info["episode"]["r"][recorded]
            done |= ended
        return returns, lengths

    # ------------------------------------------------------------------ persistence
    def checkpoint_parts(self) -> dict[str, Stateful]:
        """Every stateful part of the agent, by name: the one schema of both :meth:`state_dict` and :meth:`load`."""
        return {
            "actor": self.actor,
            "critic": self.critic,
            "value_optimizer": self.value_optimizer,
            "policy_optimizer": self.policy_optimizer,
            "collector": self.collector,  # environments, carry-over, episode statistics, action noise
            "generator": GeneratorState(self.generator),
            "predict_generator": GeneratorState(self.predict_generator),
            "progress": self.progress,
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything a bit-identical continuation needs: the config and each part's ``state_dict``.

        In a data-parallel run (a collective: every rank calls it) ``"world_size"`` and ``"ranks"``,
        each rank's environments and random state, are added on rank 0 (:data:`RANK_PARTS`).
        """
        state = {
            "format": CHECKPOINT_FORMAT,
            "algorithm": self.algorithm,
            "config": self.config.to_dict(),
            "torch_version": torch.__version__,
            "parts": parts_state(self.checkpoint_parts()),
        }
        if self.parallel is not None:
            own = {name: state["parts"][name] for name in RANK_PARTS}
            state.update(world_size=self.world_size, ranks=self.parallel.gather_to_rank_zero(own))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore every part from :meth:`state_dict` (of an agent built with the same config).

        A checkpoint of another number of processes loads for :meth:`predict` and :meth:`evaluate`
        (rank 0's environments), and :meth:`learn` refuses to continue it (:meth:`check_resumable`).
        """
        check_format(state, CHECKPOINT_FORMAT)
        load_parts(self.checkpoint_parts(), state["parts"])
        self.trained_world_size = state.get("world_size", 1)
        if self.parallel is not None:
            if self.trained_world_size == self.world_size:
                own = state["ranks"][self.parallel.rank]
                load_parts({name: self.checkpoint_parts()[name] for name in RANK_PARTS}, own)
            self.parallel.restart_statistics(self.env_stack)

    def check_resumable(self) -> None:
        """Refuse, in one line, to continue a run that was trained on another number of processes."""
        saved = self.trained_world_size
        if saved != self.world_size:
            launch = f"torchrun --nproc_per_node {saved}" if saved > 1 else "one process, without torchrun"
            raise ValueError(
                f"the checkpoint was written by {saved} process(es) and this run has {self.world_size}: "
                f"continue it with the same number ({launch})"
            )

    def save(self, path: str | Path) -> None:
        """Write a checkpoint atomically (temporary file in the same directory, fsync, ``os.replace``).

        In a data-parallel run every rank calls it and rank 0 alone writes.
        """
        state = self.state_dict()
        if self.writes_files:
            save_checkpoint(path, state)

    @classmethod
    def load(
        cls,
        path: str | Path,
        env: EnvLike | None = None,
        *,
        wrappers: Sequence[Wrapper | str] | None = None,
        actor: NetworkLike | None = None,
        critic: NetworkLike | None = None,
        device: str | torch.device | None = None,
    ) -> TRPO:
        """Rebuild an agent from :meth:`save`; ``learn`` then continues the run bit for bit.

        ``path`` may be a checkpoint file or a run directory holding ``checkpoint.pt``. A run trained
        on Python objects its config cannot rebuild (an environment instance or factory, wrappers,
        networks: the config's ``custom``) needs them again here; ``device`` moves the run.
        """
        path = Path(path)
        if path.is_dir():
            path = path / CHECKPOINT_NAME
        parallel = data_parallel("cpu" if device is None else device)
        state = load_checkpoint(path) if parallel is None else parallel.from_rank_zero(lambda: load_checkpoint(path))
        check_format(state, CHECKPOINT_FORMAT, path)
        config = TRPOConfig.from_dict(state["config"])
        objects = {"env": env, "wrappers": wrappers, "actor": actor, "critic": critic}
        missing = [name for name in config.custom if objects[name] is None]
        if missing:
            arguments = ", ".join(f"{name}=..." for name in missing)
            raise ValueError(f"{path} was trained on Python objects its config cannot rebuild ({', '.join(missing)}); "
                             f"pass them again: {cls.__name__}.load({str(path)!r}, {arguments})")  # fmt: skip
        if device is not None:
            config.device = str(device)
        agent = cls(env, config=config, wrappers=wrappers, actor=actor, critic=critic)
        agent.algorithm = state["algorithm"]  # the run keeps its name: an NPG run loaded through TRPO.load stays npg
        try:
            agent.load_state_dict(state)
        except BaseException:
            agent.close()
            raise
        agent._run_dirs.add(path.parent.resolve())  # learn(run_dir=...) there continues the run's logs
        return agent

    def close(self) -> None:
        """Close the vector environment (needed for ``async`` mode's worker processes)."""
        self.collector.close()


def _custom_parts(source: EnvSource, networks: dict[str, Any]) -> tuple[str, ...]:
    """The parts of a run given as Python objects its config cannot rebuild (``load`` needs them again)."""
    parts = ["env"] if not source.importable else []
    parts += ["wrappers"] if not wrappers_importable(source) else []
    return (*parts, *(name for name, given in networks.items() if given is not None))


def _source_defaults(source: EnvSource, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """What an environment object or wrappers imply, unless given: ``num_envs`` (1 for an instance, a
    VectorEnv's own), and ``sync`` sub-environments where an id's default would be its own vector env."""
    implied: dict[str, Any] = {}
    if source.kind != "id" or source.wrappers:
        implied["vectorization_mode"] = "sync"
    if source.kind == "instance":
        implied["num_envs"] = 1
    if source.kind == "vector":
        implied["num_envs"] = source.target.num_envs
    return {name: value for name, value in implied.items() if name not in hyperparameters}


def _network_defaults(source: EnvSource, networks: dict[str, Any], hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """The unpreconditioned policy step, unless given, where a task's default K-FAC cannot apply.

    K-FAC (HalfCheetah's default) needs the built-in MLP's layer-wise Gauss-Newton: a user's ``actor``
    or ``curvature="kl-hessian"`` gets ``preconditioner="none"`` with ``cg_iters`` as before K-FAC.
    """
    if env_defaults(source.name).get("preconditioner") != "kfac" or "preconditioner" in hyperparameters:
        return {}
    if networks.get("actor") is None and hyperparameters.get("curvature", "gauss-newton") == "gauss-newton":
        return {}
    implied = {"preconditioner": "none", "cg_iters": UNPRECONDITIONED_CG_ITERS}
    return {name: value for name, value in implied.items() if name not in hyperparameters}


def _copy_state(value: Any) -> Any:
    """A copy of a state dict that shares no mutable tensor or array with the live agent."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, dict):
        return type(value)((key, _copy_state(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return type(value)(_copy_state(item) for item in value)
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    return copy.deepcopy(value)


_EXTRA_INSTALLS = {
    "box2d": 'pip install swig, then pip install "gymnasium[box2d]"',
    "mujoco": 'pip install "gymnasium[mujoco]"',
    "classic_control": 'pip install "gymnasium[classic-control]"',
    "toy_text": 'pip install "gymnasium[toy-text]"',
}
"""How to install the optional dependencies of gymnasium's own environments, by ``gymnasium.envs`` package."""

_NAMESPACE_INSTALLS = {"ALE": 'pip install "gymnasium[atari]"'}
"""How to install the packages that register well-known namespaces."""


def environment_error(env_id: str, env_kwargs: dict[str, Any], error: BaseException) -> str | None:
    """A one-line message with the fix for an environment that cannot be built, or ``None`` (not a user error).

    Unknown ids suggest the closest registered ones; a missing optional dependency names the
    ``pip install`` command; keyword arguments the environment does not take are named.
    """
    reason = " ".join(str(error).split())
    if isinstance(error, gym.error.NamespaceNotFound):
        namespace = env_id.split("/")[0]
        install = _NAMESPACE_INSTALLS.get(namespace)
        fix = f"install its package ({install})" if install else "install and import the package that registers it"
        return f"unknown environment {env_id!r}: namespace {namespace!r} is not registered; {fix}"
    if isinstance(error, (gym.error.UnregisteredEnv, gym.error.DeprecatedEnv)):
        matches = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.6)
        if matches:
            fix = "did you mean " + " or ".join(repr(match) for match in matches) + "?"
        else:
            fix = "gymnasium.pprint_registry() lists the registered ids"
        known_name = not isinstance(error, gym.error.NameNotFound)  # then gymnasium lists the versions it has
        return f"unknown environment {env_id!r}{f' ({reason})' if known_name else ''}; {fix}"
    if isinstance(error, (gym.error.DependencyNotInstalled, ModuleNotFoundError)):
        try:
            entry_point = gym.spec(env_id).entry_point
        except gym.error.Error:
            entry_point = ""
        entry_point = entry_point if isinstance(entry_point, str) else ""
        package = entry_point.split(":")[0].split(".")
        install = _EXTRA_INSTALLS.get(package[2]) if package[:2] == ["gymnasium", "envs"] and len(package) > 2 else None
        if install is not None:
            return f"{env_id} needs an optional dependency that is not installed; install it with: {install}"
        if isinstance(error, gym.error.DependencyNotInstalled):
            return f"{env_id} needs an optional dependency that is not installed: {reason}"
        return f"cannot build environment {env_id!r}: {reason}; install the missing module"
    if isinstance(error, TypeError) and env_kwargs:
        return f"env_kwargs {env_kwargs!r} do not fit {env_id}: {reason}; pass only arguments its constructor takes"
    return None


def _action_shape(space: Any) -> tuple[int, ...]:
    shape = tuple(space.shape) if space.shape is not None else ()
    return (int(np.prod(shape)),) if len(shape) > 1 else shape


def fit_critic(
    critic: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: tuple[Tensor, Tensor],
    epochs: int,
    minibatch: int,
    generator: torch.Generator,
) -> float:
    """``epochs`` shuffled passes of Adam minibatch steps on ``(V(s) - R̂)²``; the last pass's mean loss."""
    obs, returns = data
    size = len(obs)
    losses: list[Tensor] = []
    for _ in range(epochs):
        order = torch.randperm(size, generator=generator)
        shuffled_obs, shuffled_returns = obs[order], returns[order]  # one gather per epoch; minibatches are views
        epoch_losses = []
        for start in range(0, size, minibatch):
            end = start + minibatch
            loss = F.mse_loss(critic(shuffled_obs[start:end]), shuffled_returns[start:end])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_losses.append(loss.detach())
        losses = epoch_losses
    return torch.stack(losses).mean().item() if losses else math.nan
