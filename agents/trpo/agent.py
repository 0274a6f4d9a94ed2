"""TRPO: the agent class, with the training loop readable top to bottom.

One iteration (docs/agents.md walks through it against docs/math.md):

1. ``collect_rollout``: ``n_steps`` vector steps with the current policy.
2. ``compute_gae``: advantages and value targets (docs/math.md, "GAE").
3. ``update_policy``: one :class:`trustregion.TrustRegionOptimizer` step on the surrogate
   objective under the mean-KL constraint.
4. ``update_value``: Adam epochs on the critic, separate from the trust-region step.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from agents.common.checkpoint import load_checkpoint, save_checkpoint
from agents.common.config import TRPOConfig
from agents.common.envs import make_env_stack, make_eval_envs
from agents.common.logs import CSV_NAME, PLOT_NAME, RunLogger, plot_learning_curve
from agents.common.policies import Critic, GaussianActor, RolloutNetworks, make_actor, observation_dim
from agents.common.rollout import Batch, RolloutBuffer, compute_gae, make_batch
from trustregion import (
    BacktrackingLineSearch,
    ConjugateGradient,
    Damped,
    GaussNewton,
    KLHessian,
    NoLineSearch,
    StepResult,
    TrustRegionOptimizer,
)

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 2  # 2: episode statistics inside each sub-environment's snapshot
EVAL_SEED_OFFSET = 10_000


class TRPO:
    """Trust Region Policy Optimization (Schulman et al., 2015) on gymnasium vector environments.

    >>> agent = TRPO(env="CartPole-v1", seed=0)          # doctest: +SKIP
    >>> agent.learn(100_000)                             # doctest: +SKIP
    >>> agent.evaluate(10)["mean_return"]                # doctest: +SKIP

    Args:
        env: a registered gymnasium id.
        seed: seeds the networks, the action sampling and the environments.
        **hyperparameters: any field of :class:`~agents.common.config.TRPOConfig`; unspecified
            ones take the per-environment defaults (:data:`~agents.common.config.ENV_DEFAULTS`).

    Same seed, same config, same library versions and thread count on CPU: identical runs.
    """

    algorithm: ClassVar[str] = "trpo"
    overrides: ClassVar[dict[str, Any]] = {}

    def __init__(self, env: str = "CartPole-v1", seed: int = 0, **hyperparameters: Any) -> None:
        config = TRPOConfig.for_env(env, seed=seed, **{**self.overrides, **hyperparameters})
        self._build(config)
        self._reset_envs()

    @classmethod
    def from_config(cls, config: TRPOConfig) -> TRPO:
        """An agent for an explicit config (no per-environment defaults applied)."""
        agent = cls.__new__(cls)
        agent._build(config)
        agent._reset_envs()
        return agent

    # ------------------------------------------------------------------ construction
    def _build(self, config: TRPOConfig) -> None:
        self.config = config
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        self.dtype = getattr(torch, config.dtype)
        self.env_stack = make_env_stack(
            config.env,
            config.num_envs,
            vectorization_mode=config.vectorization_mode,
            env_kwargs=config.env_kwargs,
            normalize_obs=config.normalize_obs,
            normalize_reward=config.normalize_reward,
            gamma=config.gamma,
            clip_obs=config.clip_obs,
            clip_reward=config.clip_reward,
        )
        envs = self.env_stack.envs
        try:
            self.obs_shape = envs.single_observation_space.shape
            self.obs_dim = observation_dim(envs.single_observation_space)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                self.actor = make_actor(
                    self.obs_dim, envs.single_action_space, config.hidden_sizes, config.activation, config.log_std_init
                ).to(self.dtype)
                self.critic = Critic(self.obs_dim, config.hidden_sizes, config.activation).to(self.dtype)
        except ValueError:
            self.env_stack.close()
            raise
        self.generator = torch.Generator().manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.predict_generator = torch.Generator().manual_seed(config.seed + 1)
        self.value_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.value_lr, fused=True)
        self.fisher_obs: Tensor | None = None
        self.policy_optimizer = self._make_policy_optimizer()
        continuous = isinstance(self.actor, GaussianActor)
        action_shape = (self.actor.log_std.numel(),) if continuous else _action_shape(envs.single_action_space)
        numpy_dtype = np.float32 if self.dtype == torch.float32 else np.float64
        self.buffer = RolloutBuffer(
            config.n_steps,
            config.num_envs,
            self.obs_dim,
            action_shape,
            numpy_dtype if continuous else np.int64,
            numpy_dtype,
        )
        self.global_step = 0
        self.iteration = 0
        self.episodes = 0
        self.recent_returns: deque[float] = deque(maxlen=100)
        self.recent_lengths: deque[int] = deque(maxlen=100)
        self.history: list[dict[str, Any]] = []
        self.prev_done = np.zeros(config.num_envs, dtype=bool)
        self.obs: np.ndarray

    def _make_policy_optimizer(self) -> TrustRegionOptimizer:
        config = self.config
        if config.curvature == "gauss-newton":
            fisher = GaussNewton.for_module(self.actor, lambda: self.fisher_obs, self.actor.output_fisher())
        else:
            fisher = KLHessian()
        if config.line_search:
            line_search = BacktrackingLineSearch(config.backtrack_iters, config.backtrack_ratio)
        else:
            line_search = NoLineSearch()
        return TrustRegionOptimizer(
            self.actor.parameters(),
            max_kl=config.max_kl,
            curvature=Damped(fisher, config.cg_damping),
            solver=ConjugateGradient(max_iter=config.cg_iters),
            line_search=line_search,
        )

    def _reset_envs(self) -> None:
        obs, _ = self.env_stack.envs.reset(seed=self.config.seed)
        self.obs = obs.reshape(self.config.num_envs, -1)
        self.prev_done[:] = False

    # ------------------------------------------------------------------ training loop
    def learn(self, total_steps: int, *, run_dir: str | Path | None = None, progress: bool = False) -> TRPO:
        """Train until ``total_steps`` environment steps have been taken in total (counting earlier calls).

        Steps come in whole iterations of ``num_envs × n_steps``. With ``run_dir``, logs, periodic
        atomic checkpoints (every ``checkpoint_interval`` iterations) and the learning curve are
        written there; a loaded agent continuing with the same ``run_dir`` resumes its logs.
        """
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 0:
            raise ValueError(f"total_steps must be an integer >= 0 (got {total_steps!r})")
        run_path = Path(run_dir) if run_dir is not None else None
        logger = RunLogger(run_path, total_steps=total_steps, start_step=self.global_step, progress=progress)
        try:
            while self.global_step < total_steps:
                metrics = self.train_iteration()
                logger.log(metrics)
                if run_path is not None and self.iteration % self.config.checkpoint_interval == 0:
                    self.save(run_path / CHECKPOINT_NAME)
        finally:
            logger.close()
        if run_path is not None:
            self.save(run_path / CHECKPOINT_NAME)
            title = f"{self.algorithm.upper()} {self.config.env}"
            plot_learning_curve(run_path / CSV_NAME, run_path / PLOT_NAME, title)
        return self

    def train_iteration(self) -> dict[str, Any]:
        """One iteration: rollout, GAE, policy step, critic epochs. Returns the logged metrics."""
        start = time.perf_counter()
        batch = self.rollout_batch()
        rollout_done = time.perf_counter()
        step = self.update_policy(batch)
        policy_done = time.perf_counter()
        value_loss = self.update_value(batch)
        value_done = time.perf_counter()
        self.iteration += 1
        metrics = self._metrics(batch, step, value_loss)
        metrics.update(
            steps_per_second=self.config.batch_size / (value_done - start),
            rollout_seconds=rollout_done - start,
            policy_seconds=policy_done - rollout_done,
            value_seconds=value_done - policy_done,
        )
        self.history.append(metrics)
        return metrics

    def rollout_batch(self) -> Batch:
        """Collect one rollout and turn it into a training batch with GAE advantages and returns."""
        self.collect_rollout()
        buffer, config = self.buffer, self.config
        advantages, returns = compute_gae(
            buffer.rewards,
            buffer.values,
            buffer.terminated,
            buffer.truncated,
            buffer.valid,
            self.last_values,
            config.gamma,
            config.gae_lambda,
        )
        return make_batch(buffer, advantages, returns, self.dtype)

    def collect_rollout(self) -> None:
        """Fill the buffer with ``n_steps`` vector steps; ``prev_done`` marks autoreset transitions invalid.

        Actions are drawn by a numpy copy of the networks (:meth:`rollout_networks`, rebuilt here
        from the current parameters) from noise drawn with ``self.rng`` for the whole rollout at
        once; the buffer keeps the unclipped sample.
        """
        buffer, envs, actor, config = self.buffer, self.env_stack.envs, self.actor, self.config
        networks = self.rollout_networks()
        sample_actions = actor.rollout_head()
        noise_shape = (config.n_steps, config.num_envs, actor.net.layers[-1].out_features)
        noise = actor.rollout_noise(self.rng, noise_shape, buffer.obs.dtype)
        for t in range(config.n_steps):
            obs = buffer.obs[t]
            obs[:] = self.obs.reshape(obs.shape)
            actor_outputs, buffer.values[t] = networks(obs)
            actions = sample_actions(actor_outputs, noise[t])
            buffer.actions[t] = actions
            self.obs, buffer.rewards[t], buffer.terminated[t], buffer.truncated[t], info = envs.step(
                actor.to_env(actions)
            )
            if "_episode" in info:
                self._record_episodes(info)
        done = buffer.terminated | buffer.truncated
        buffer.valid[0] = ~self.prev_done  # the step after a done is gymnasium's autoreset step
        buffer.valid[1:] = ~done[:-1]
        self.prev_done = done[-1].copy()
        self.obs = self.obs.reshape(config.num_envs, -1)
        self.global_step += config.num_envs * config.n_steps
        self.last_values = networks(self._as_policy_dtype(self.obs))[1].astype(np.float64)

    def rollout_networks(self) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """The numpy copy of actor and critic used by rollouts: ``obs -> (actor outputs, values)``."""
        return RolloutNetworks(self.actor.net, self.critic.net)

    def _record_episodes(self, info: dict[str, Any]) -> None:
        for index in np.flatnonzero(info["_episode"]):
            self.recent_returns.append(float(info["episode"]["r"][index]))
            self.recent_lengths.append(int(info["episode"]["l"][index]))
            self.episodes += 1

    def update_policy(self, batch: Batch) -> StepResult:
        """One trust-region step on ``L(θ) = -mean(π_θ(a|s) / π_old(a|s) · Â)`` under ``mean KL <= δ``.

        docs/math.md, "Surrogate objective" and "Mean KL". The old distribution is computed
        once, without gradients, and frozen: the KL closure compares against it, so it is exactly
        0 at ``θ_old`` while its Hessian there (the Fisher) is not.
        """
        config, actor = self.config, self.actor
        obs, actions = batch.obs, batch.actions
        advantages = batch.advantages
        if config.normalize_advantage and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        with torch.no_grad():
            old_params = _frozen(actor(obs))  # a copy: a Gaussian's log_std is the parameter itself
            old_log_prob = actor.log_prob(old_params, actions)
        subsample = self._fisher_subsample(len(obs))
        self.fisher_obs = obs if subsample is None else obs[subsample]

        def mean_kl(params: Any, log_prob: Tensor) -> Tensor:
            if config.kl_estimator == "sample":
                return (old_log_prob - log_prob).mean()
            return actor.kl(old_params, params).mean()

        def closure() -> tuple[Tensor, Tensor]:
            params = actor(obs)
            log_prob = actor.log_prob(params, actions)
            surrogate = -(torch.exp(log_prob - old_log_prob) * advantages).mean()
            if subsample is not None and config.curvature == "kl-hessian" and torch.is_grad_enabled():
                # first call: the KL whose Hessian is the curvature, on the Fisher subsample
                sub_params = actor(obs[subsample])
                sub_old = _select(old_params, subsample)
                if config.kl_estimator == "sample":
                    sub_kl = (old_log_prob[subsample] - actor.log_prob(sub_params, actions[subsample])).mean()
                else:
                    sub_kl = actor.kl(sub_old, sub_params).mean()
                return surrogate, sub_kl
            return surrogate, mean_kl(params, log_prob)

        self.policy_optimizer.step(closure)
        self.fisher_obs = None
        result = self.policy_optimizer.last_result
        assert result is not None
        return result

    def _fisher_subsample(self, size: int) -> Tensor | None:
        fraction = self.config.fisher_fraction
        if fraction >= 1.0:
            return None
        count = max(1, math.ceil(fraction * size))
        return torch.randperm(size, generator=self.generator)[:count]

    def update_value(self, batch: Batch) -> float:
        """``value_epochs`` epochs of Adam minibatches on ``(V(s) - R̂)²``; returns the last epoch's mean loss."""
        size = len(batch.obs)
        minibatch = self.config.value_minibatch_size
        losses: list[float] = []
        for _ in range(self.config.value_epochs):
            order = torch.randperm(size, generator=self.generator)
            obs, returns = batch.obs[order], batch.returns[order]  # one gather per epoch; minibatches are views
            epoch_losses = []
            for start in range(0, size, minibatch):
                end = start + minibatch
                loss = F.mse_loss(self.critic(obs[start:end]), returns[start:end])
                self.value_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.value_optimizer.step()
                epoch_losses.append(loss.detach())
            losses = epoch_losses
        return torch.stack(losses).mean().item() if losses else math.nan

    def _metrics(self, batch: Batch, step: StepResult, value_loss: float) -> dict[str, Any]:
        with torch.no_grad():
            params = self.actor(batch.obs)
            entropy = self.actor.entropy(params).mean().item()
        returns, values = batch.returns, batch.values
        variance = returns.var().item() if len(returns) > 1 else math.nan
        explained = 1.0 - (returns - values).var().item() / variance if variance and variance > 0 else math.nan
        log_std = self.actor.log_std.mean().item() if isinstance(self.actor, GaussianActor) else math.nan
        return {
            "iteration": self.iteration,
            "global_step": self.global_step,
            "episodes": self.episodes,
            "mean_return": float(np.mean(self.recent_returns)) if self.recent_returns else math.nan,
            "mean_length": float(np.mean(self.recent_lengths)) if self.recent_lengths else math.nan,
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
    def _as_policy_dtype(self, obs: np.ndarray) -> np.ndarray:
        numpy_dtype = np.float32 if self.dtype == torch.float32 else np.float64
        return obs if obs.dtype == numpy_dtype else obs.astype(numpy_dtype)

    def normalize_observation(self, obs: np.ndarray) -> np.ndarray:
        """Raw observations as the policy sees them: frozen training statistics, clipped to ``±clip_obs``."""
        normalizer = self.env_stack.obs_normalizer
        if normalizer is None:
            return obs
        rms, clip = normalizer.obs_rms, self.config.clip_obs
        return np.clip((obs - rms.mean) / np.sqrt(rms.var + normalizer.epsilon), -clip, clip).astype(np.float32)

    def predict(self, obs: Any, deterministic: bool = True) -> np.ndarray:
        """Actions for raw observations, one or a batch; Box actions are clipped to the bounds."""
        obs = np.asarray(obs)
        single = obs.shape == tuple(self.obs_shape)
        if not single and obs.shape[1:] != tuple(self.obs_shape):
            raise ValueError(f"obs must have shape {self.obs_shape} or (batch, *{self.obs_shape}); got {obs.shape}")
        normalized = self.normalize_observation(obs.reshape(-1, *self.obs_shape))
        flat = self._as_policy_dtype(normalized.reshape(-1, self.obs_dim))
        with torch.inference_mode():
            params = self.actor(torch.from_numpy(np.ascontiguousarray(flat)))
            action = self.actor.mode(params) if deterministic else self.actor.sample(params, self.predict_generator)
            env_action = self.actor.to_env(action.numpy())
        return env_action[0] if single else env_action

    def evaluate(self, n_episodes: int | None = None, deterministic: bool = True) -> dict[str, Any]:
        """Run ``n_episodes`` episodes (one per sub-environment, fixed seeds) and report raw returns."""
        n_episodes = self.config.eval_episodes if n_episodes is None else n_episodes
        if isinstance(n_episodes, bool) or not isinstance(n_episodes, int) or n_episodes < 1:
            raise ValueError(f"n_episodes must be an integer >= 1 (got {n_episodes!r})")
        envs = make_eval_envs(self.config.env, n_episodes, self.config.env_kwargs)
        try:
            obs, _ = envs.reset(seed=self.config.seed + EVAL_SEED_OFFSET)
            returns = np.zeros(n_episodes)
            lengths = np.zeros(n_episodes, dtype=int)
            done = np.zeros(n_episodes, dtype=bool)
            while not done.all():
                obs, reward, terminated, truncated, _ = envs.step(self.predict(obs, deterministic))
                active = ~done
                returns[active] += reward[active]
                lengths[active] += 1
                done |= (terminated | truncated) & active
        finally:
            envs.close()
        return {
            "mean_return": float(returns.mean()),
            "std_return": float(returns.std()),
            "returns": returns.tolist(),
            "lengths": lengths.tolist(),
        }

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything a bit-identical continuation needs."""
        return {
            "format": CHECKPOINT_FORMAT,
            "algorithm": self.algorithm,
            "config": self.config.to_dict(),
            "torch_version": torch.__version__,
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "value_optimizer": self.value_optimizer.state_dict(),
            "policy_optimizer": self.policy_optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "rng": self.rng.bit_generator.state,
            "predict_generator": self.predict_generator.get_state(),
            "global_step": self.global_step,
            "iteration": self.iteration,
            "episodes": self.episodes,
            "recent_returns": list(self.recent_returns),
            "recent_lengths": list(self.recent_lengths),
            "history": list(self.history),
            "obs": self.obs.copy(),
            "prev_done": self.prev_done.copy(),
            "env": self.env_stack.state(),
        }

    def save(self, path: str | Path) -> None:
        """Write a checkpoint atomically (temporary file in the same directory, fsync, ``os.replace``)."""
        save_checkpoint(path, self.state_dict())

    @classmethod
    def load(cls, path: str | Path) -> TRPO:
        """Rebuild an agent from :meth:`save`; ``learn`` then continues the run bit for bit.

        ``path`` may be a checkpoint file or a run directory holding ``checkpoint.pt``.
        """
        path = Path(path)
        if path.is_dir():
            path = path / CHECKPOINT_NAME
        state = load_checkpoint(path)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a checkpoint of this format (format {state.get('format')!r})")
        agent = cls.__new__(cls)
        agent.algorithm = state["algorithm"]  # an NPG run loaded through TRPO.load keeps its name
        agent._build(TRPOConfig.from_dict(state["config"]))
        agent._reset_envs()
        agent.actor.load_state_dict(state["actor"])
        agent.critic.load_state_dict(state["critic"])
        agent.value_optimizer.load_state_dict(state["value_optimizer"])
        agent.policy_optimizer.load_state_dict(state["policy_optimizer"])
        agent.generator.set_state(state["generator"])
        agent.rng.bit_generator.state = state["rng"]
        agent.predict_generator.set_state(state["predict_generator"])
        agent.global_step = state["global_step"]
        agent.iteration = state["iteration"]
        agent.episodes = state["episodes"]
        agent.recent_returns.extend(state["recent_returns"])
        agent.recent_lengths.extend(state["recent_lengths"])
        agent.history = list(state["history"])
        agent.env_stack.load_state(state["env"])
        agent.obs = state["obs"].copy()
        agent.prev_done = state["prev_done"].copy()
        return agent

    def close(self) -> None:
        """Close the vector environment (needed for ``async`` mode's worker processes)."""
        self.env_stack.close()


def _action_shape(space: Any) -> tuple[int, ...]:
    shape = tuple(space.shape) if space.shape is not None else ()
    return (int(np.prod(shape)),) if len(shape) > 1 else shape


def _frozen(params: Any) -> Any:
    """Detached copies of distribution parameters, so that later in-place steps cannot move them."""
    if isinstance(params, tuple):
        return tuple(t.detach().clone() for t in params)
    return params.detach().clone()


def _select(params: Any, index: Tensor) -> Any:
    if isinstance(params, tuple):
        mean, log_std = params
        return mean[index], log_std
    return params[index]
