"""Actor and critic networks; one actor class per action-space family.

The actor maps observations to the parameters ``z`` of its action distribution (logits, or
``(mean, log_std)``), which is exactly what :class:`trustregion.GaussNewton` linearises; the
matching :class:`trustregion.OutputFisher` comes from :meth:`Actor.output_fisher`. Actor and
critic are separate modules: no layer, and so no parameter, is shared.
"""

from __future__ import annotations

import abc
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trustregion import (
    BernoulliFisher,
    CategoricalFisher,
    DiagonalGaussianFisher,
    MultiCategoricalFisher,
    OutputFisher,
)

DistributionParams = Tensor | tuple[Tensor, Tensor]
_ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}
_FLATTEN_HINT = (
    "wrap the environment so that it exposes a flat space, e.g. gymnasium.wrappers.FlattenObservation "
    "for observations, or register a wrapped environment id with gymnasium.register"
)


class MLP(nn.Module):
    """A fully connected network; ``forward`` calls ``F.linear`` directly (no per-layer module call)."""

    def __init__(
        self, in_dim: int, hidden_sizes: Sequence[int], out_dim: int, activation: str, output_gain: float
    ) -> None:
        super().__init__()
        sizes = [in_dim, *hidden_sizes, out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.activation = _ACTIVATIONS[activation]
        for layer in self.layers[:-1]:
            nn.init.orthogonal_(layer.weight, math.sqrt(2))
            nn.init.zeros_(layer.bias)
        nn.init.orthogonal_(self.layers[-1].weight, output_gain)
        nn.init.zeros_(self.layers[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        *hidden, last = self.layers
        for layer in hidden:
            x = self.activation(F.linear(x, layer.weight, layer.bias))
        return F.linear(x, last.weight, last.bias)


class RolloutNetworks:
    """A frozen numpy copy of the actor and critic networks, evaluated together for rollouts.

    A forward pass on a handful of observations is dominated by per-operation overhead, which is
    several times smaller in numpy than in torch, and halves again when the two networks run as
    one: the first layers are stacked side by side and the later ones placed block-diagonally,
    so the actor's outputs never mix with the critic's (the blocks off the diagonal are exact
    zeros). The copy is rebuilt from the torch modules at every rollout; the training networks
    stay two separate modules with separate parameters.

    ``networks(obs)`` returns ``(actor_outputs, values)``.
    """

    def __init__(self, actor: MLP, critic: MLP) -> None:
        if len(actor.layers) != len(critic.layers) or actor.activation is not critic.activation:
            raise ValueError("actor and critic networks need the same depth and activation to be evaluated together")
        actor_layers = [_numpy_layer(layer) for layer in actor.layers]
        critic_layers = [_numpy_layer(layer) for layer in critic.layers]
        (actor_weight, actor_bias), (critic_weight, critic_bias) = actor_layers[0], critic_layers[0]
        self.weights = [np.concatenate([actor_weight, critic_weight], axis=1)]
        self.biases = [np.concatenate([actor_bias, critic_bias])]
        for (actor_weight, actor_bias), (critic_weight, critic_bias) in zip(
            actor_layers[1:], critic_layers[1:], strict=True
        ):
            self.weights.append(_block_diagonal(actor_weight, critic_weight))
            self.biases.append(np.concatenate([actor_bias, critic_bias]))
        self.activation = np.tanh if actor.activation is torch.tanh else _numpy_relu

    def __call__(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = obs
        for weight, bias in zip(self.weights[:-1], self.biases[:-1], strict=True):
            x = self.activation(x @ weight + bias)
        out = x @ self.weights[-1] + self.biases[-1]
        return out[:, :-1], out[:, -1]


def _numpy_layer(layer: nn.Linear) -> tuple[np.ndarray, np.ndarray]:
    return layer.weight.detach().cpu().numpy().T, layer.bias.detach().cpu().numpy()


def _block_diagonal(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    block = np.zeros((first.shape[0] + second.shape[0], first.shape[1] + second.shape[1]), dtype=first.dtype)
    block[: first.shape[0], : first.shape[1]] = first
    block[first.shape[0] :, first.shape[1] :] = second
    return block


def _numpy_relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


RolloutHead = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``(network outputs, noise) -> actions``: turns pre-drawn noise into samples of ``π(·|s)``."""


class Critic(nn.Module):
    """State-value network ``V(s)``; trained by Adam on its own, never by the trust-region step."""

    def __init__(self, obs_dim: int, hidden_sizes: Sequence[int], activation: str) -> None:
        super().__init__()
        self.net = MLP(obs_dim, hidden_sizes, 1, activation, output_gain=1.0)

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs).squeeze(-1)


class Actor(nn.Module, abc.ABC):
    """A stochastic policy ``π(a|s)``: network plus distribution head.

    ``forward(obs)`` returns the distribution parameters ``z``; the other methods take ``z``.
    ``kl(old, new)`` is ``KL(π_old || π_new)`` per state in closed form and is exactly ``0``
    when ``new`` equals ``old`` bit for bit.
    """

    @abc.abstractmethod
    def sample(self, params: DistributionParams, generator: torch.Generator) -> Tensor:
        """Draw one action per state with ``generator``."""

    @abc.abstractmethod
    def mode(self, params: DistributionParams) -> Tensor:
        """The most likely action (deterministic evaluation)."""

    @abc.abstractmethod
    def log_prob(self, params: DistributionParams, actions: Tensor) -> Tensor:
        """``log π(a|s)`` per state."""

    @abc.abstractmethod
    def kl(self, old: DistributionParams, new: DistributionParams) -> Tensor:
        """``KL(π_old(·|s) || π_new(·|s))`` per state, analytic."""

    @abc.abstractmethod
    def entropy(self, params: DistributionParams) -> Tensor:
        """``H(π(·|s))`` per state."""

    @abc.abstractmethod
    def output_fisher(self) -> OutputFisher:
        """The Fisher ``M(z)`` of the distribution in its parameters, for Gauss-Newton."""

    @abc.abstractmethod
    def rollout_noise(self, rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The noise of a whole rollout, drawn in one call: one value per network output.

        ``shape`` is ``(n_steps, num_envs, outputs)``; :meth:`rollout_head` turns ``noise[t]``
        into the actions of step ``t``. One draw per rollout instead of one per step takes a
        numpy call off every environment step.
        """

    @abc.abstractmethod
    def rollout_head(self) -> RolloutHead:
        """Numpy sampling for rollouts: ``(network outputs, noise) -> actions`` drawn from ``π(·|s)``.

        The outputs are those of ``self.net`` as computed by :class:`RolloutNetworks`, the noise a
        slice of :meth:`rollout_noise` of the same shape.
        """

    def to_env(self, actions: np.ndarray) -> np.ndarray:
        """Actions as stored in the buffer -> the form the vector environment expects."""
        return actions


class CategoricalActor(Actor):
    """``Discrete(n)``: softmax over ``n`` logits."""

    def __init__(self, obs_dim: int, n: int, hidden_sizes: Sequence[int], activation: str) -> None:
        super().__init__()
        self.net = MLP(obs_dim, hidden_sizes, n, activation, output_gain=0.01)

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs)

    def sample(self, params: Tensor, generator: torch.Generator) -> Tensor:
        return torch.multinomial(torch.softmax(params, -1), 1, generator=generator).squeeze(-1)

    def mode(self, params: Tensor) -> Tensor:
        return params.argmax(-1)

    def log_prob(self, params: Tensor, actions: Tensor) -> Tensor:
        return torch.log_softmax(params, -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)

    def kl(self, old: Tensor, new: Tensor) -> Tensor:
        return _categorical_kl(old, new)

    def entropy(self, params: Tensor) -> Tensor:
        log_probs = torch.log_softmax(params, -1)
        return -(log_probs.exp() * log_probs).sum(-1)

    def output_fisher(self) -> OutputFisher:
        return CategoricalFisher()

    def rollout_noise(self, rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return rng.gumbel(size=shape)

    def rollout_head(self) -> RolloutHead:
        def sample(logits: np.ndarray, gumbel: np.ndarray) -> np.ndarray:
            return (logits + gumbel).argmax(-1)  # Gumbel-max: distributed as softmax(z)

        return sample


class MultiCategoricalActor(Actor):
    """``MultiDiscrete(nvec)``: independent softmaxes over consecutive slices of the logits."""

    def __init__(self, obs_dim: int, nvec: Sequence[int], hidden_sizes: Sequence[int], activation: str) -> None:
        super().__init__()
        self.sizes = [int(n) for n in nvec]
        self.net = MLP(obs_dim, hidden_sizes, sum(self.sizes), activation, output_gain=0.01)

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs)

    def _split(self, params: Tensor) -> tuple[Tensor, ...]:
        return torch.split(params, self.sizes, dim=-1)

    def sample(self, params: Tensor, generator: torch.Generator) -> Tensor:
        draws = [torch.multinomial(torch.softmax(z, -1), 1, generator=generator) for z in self._split(params)]
        return torch.cat(draws, dim=-1)

    def mode(self, params: Tensor) -> Tensor:
        return torch.stack([z.argmax(-1) for z in self._split(params)], dim=-1)

    def log_prob(self, params: Tensor, actions: Tensor) -> Tensor:
        factors = [
            torch.log_softmax(z, -1).gather(-1, actions[..., i : i + 1]).squeeze(-1)
            for i, z in enumerate(self._split(params))
        ]
        return torch.stack(factors, dim=-1).sum(-1)

    def kl(self, old: Tensor, new: Tensor) -> Tensor:
        pairs = zip(self._split(old), self._split(new), strict=True)
        return torch.stack([_categorical_kl(a, b) for a, b in pairs], dim=-1).sum(-1)

    def entropy(self, params: Tensor) -> Tensor:
        log_probs = [torch.log_softmax(z, -1) for z in self._split(params)]
        return torch.stack([-(lp.exp() * lp).sum(-1) for lp in log_probs], dim=-1).sum(-1)

    def output_fisher(self) -> OutputFisher:
        return MultiCategoricalFisher(self.sizes)

    def rollout_noise(self, rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return rng.gumbel(size=shape)

    def rollout_head(self) -> RolloutHead:
        bounds = np.cumsum([0, *self.sizes])

        def sample(logits: np.ndarray, gumbel: np.ndarray) -> np.ndarray:
            perturbed = logits + gumbel
            factors = [perturbed[:, a:b].argmax(-1) for a, b in itertools.pairwise(bounds)]
            return np.stack(factors, axis=-1)

        return sample


class BernoulliActor(Actor):
    """``MultiBinary(n)``: ``n`` independent Bernoulli variables with logits ``z``."""

    def __init__(self, obs_dim: int, shape: tuple[int, ...], hidden_sizes: Sequence[int], activation: str) -> None:
        super().__init__()
        self.shape = shape
        self.net = MLP(obs_dim, hidden_sizes, int(np.prod(shape)), activation, output_gain=0.01)

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs)

    def sample(self, params: Tensor, generator: torch.Generator) -> Tensor:
        uniform = torch.rand(params.shape, generator=generator, dtype=params.dtype, device=params.device)
        return (uniform < torch.sigmoid(params)).to(torch.int64)

    def mode(self, params: Tensor) -> Tensor:
        return (params > 0).to(torch.int64)

    def log_prob(self, params: Tensor, actions: Tensor) -> Tensor:
        ones = actions.to(params.dtype)
        return (ones * F.logsigmoid(params) + (1 - ones) * F.logsigmoid(-params)).sum(-1)

    def kl(self, old: Tensor, new: Tensor) -> Tensor:
        p_old = torch.sigmoid(old)
        on = p_old * (F.logsigmoid(old) - F.logsigmoid(new))
        off = (1 - p_old) * (F.logsigmoid(-old) - F.logsigmoid(-new))
        return (on + off).sum(-1)

    def entropy(self, params: Tensor) -> Tensor:
        p = torch.sigmoid(params)
        return -(p * F.logsigmoid(params) + (1 - p) * F.logsigmoid(-params)).sum(-1)

    def output_fisher(self) -> OutputFisher:
        return BernoulliFisher()

    def rollout_noise(self, rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return rng.logistic(size=shape)

    def rollout_head(self) -> RolloutHead:
        def sample(logits: np.ndarray, logistic: np.ndarray) -> np.ndarray:
            return (logits + logistic > 0).astype(np.int64)  # P(z + logistic noise > 0) = sigmoid(z)

        return sample

    def to_env(self, actions: np.ndarray) -> np.ndarray:
        return actions.astype(np.int8).reshape(actions.shape[0], *self.shape)


class GaussianActor(Actor):
    """``Box``: diagonal Gaussian ``N(μ(s), diag(σ²))`` with a state-independent ``log σ`` parameter.

    Samples are clipped to the bounds only on their way to the environment (:meth:`to_env`);
    the buffer keeps the unclipped sample, so ``log π(a|s)`` is the density of what was drawn.
    """

    def __init__(
        self, obs_dim: int, space: gym.spaces.Box, hidden_sizes: Sequence[int], activation: str, log_std_init: float
    ) -> None:
        super().__init__()
        self.shape = space.shape
        action_dim = int(np.prod(space.shape))
        self.net = MLP(obs_dim, hidden_sizes, action_dim, activation, output_gain=0.01)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(log_std_init)))
        self.low = np.asarray(space.low, dtype=np.float64).reshape(-1)
        self.high = np.asarray(space.high, dtype=np.float64).reshape(-1)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        return self.net(obs), self.log_std

    def sample(self, params: tuple[Tensor, Tensor], generator: torch.Generator) -> Tensor:
        mean, log_std = params
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return mean + log_std.exp() * noise

    def mode(self, params: tuple[Tensor, Tensor]) -> Tensor:
        return params[0]

    def log_prob(self, params: tuple[Tensor, Tensor], actions: Tensor) -> Tensor:
        mean, log_std = params
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z.square() - log_std).sum(-1) - 0.5 * math.log(2 * math.pi) * mean.shape[-1]

    def kl(self, old: tuple[Tensor, Tensor], new: tuple[Tensor, Tensor]) -> Tensor:
        (mean_old, log_std_old), (mean_new, log_std_new) = old, new
        variance_ratio = torch.exp(2 * (log_std_old - log_std_new))
        mean_term = (mean_old - mean_new).square() * torch.exp(-2 * log_std_new)
        per_dim = (log_std_new - log_std_old) + 0.5 * (variance_ratio + mean_term - 1)
        return per_dim.sum(-1)

    def entropy(self, params: tuple[Tensor, Tensor]) -> Tensor:
        mean, log_std = params
        per_dim = log_std + 0.5 * (1 + math.log(2 * math.pi))
        return per_dim.sum(-1).expand(mean.shape[:-1])

    def output_fisher(self) -> OutputFisher:
        return DiagonalGaussianFisher()

    def rollout_noise(self, rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return rng.standard_normal(shape, dtype=dtype)

    def rollout_head(self) -> RolloutHead:
        std = self.log_std.detach().cpu().exp().numpy().copy()

        def sample(mean: np.ndarray, normal: np.ndarray) -> np.ndarray:
            return mean + std * normal

        return sample

    def to_env(self, actions: np.ndarray) -> np.ndarray:
        clipped = np.clip(actions, self.low, self.high).astype(actions.dtype, copy=False)
        return clipped.reshape(actions.shape[0], *self.shape)


def _categorical_kl(old_logits: Tensor, new_logits: Tensor) -> Tensor:
    old_log_probs = torch.log_softmax(old_logits, -1)
    new_log_probs = torch.log_softmax(new_logits, -1)
    return (old_log_probs.exp() * (old_log_probs - new_log_probs)).sum(-1)


@dataclass(frozen=True)
class OldPolicy:
    """``π_old`` on a batch: the states, the actions taken, and the distribution and log-probabilities there.

    Computed once per policy step, without gradients, and **copied** (a Gaussian's ``log_std`` is the
    parameter itself, which the step moves in place): the KL compares the current parameters with
    this frozen snapshot, so it is exactly 0 at ``θ_old`` while its Hessian there is the Fisher.
    """

    obs: Tensor
    actions: Tensor
    params: DistributionParams
    log_prob: Tensor

    @classmethod
    def of(cls, actor: Actor, obs: Tensor, actions: Tensor) -> OldPolicy:
        with torch.no_grad():
            params = _frozen(actor(obs))
            return cls(obs, actions, params, actor.log_prob(params, actions))

    def subset(self, index: Tensor) -> OldPolicy:
        """The same snapshot on the states ``index`` (a state-independent ``log_std`` is kept whole)."""
        params = (self.params[0][index], self.params[1]) if isinstance(self.params, tuple) else self.params[index]
        return OldPolicy(self.obs[index], self.actions[index], params, self.log_prob[index])


def _frozen(params: DistributionParams) -> DistributionParams:
    if isinstance(params, tuple):
        return tuple(t.detach().clone() for t in params)
    return params.detach().clone()


def mean_kl(actor: Actor, old: OldPolicy, params: DistributionParams, log_prob: Tensor, estimator: str) -> Tensor:
    """``D̄_KL(π_old, π_θ)`` on ``old``'s states: the one KL estimator of the agents (docs/math.md, "Mean KL").

    ``params`` and ``log_prob`` are ``π_θ``'s distribution and log-probabilities of ``old.actions``
    there. ``estimator="analytic"`` averages the closed-form KL per state; ``"sample"`` averages
    ``(r - 1) - log r`` with ``r = π_θ(a|s) / π_old(a|s)`` over the actions taken, ``a ~ π_old``:
    unbiased (``E[r] = 1``), never negative, and exactly 0 at ``θ_old``.
    """
    if estimator == "sample":
        log_ratio = log_prob - old.log_prob
        return (torch.expm1(log_ratio) - log_ratio).mean()
    return actor.kl(old.params, params).mean()


def observation_dim(space: gym.Space) -> int:
    """The flat observation size; only ``Box`` observations are supported."""
    if isinstance(space, gym.spaces.Box):
        return int(np.prod(space.shape))
    raise ValueError(f"unsupported observation space {space}: the agents take Box observations only; {_FLATTEN_HINT}")


def make_actor(
    obs_dim: int, space: gym.Space, hidden_sizes: Sequence[int], activation: str = "tanh", log_std_init: float = 0.0
) -> Actor:
    """The actor for an action space: Discrete, MultiDiscrete, MultiBinary or Box."""
    if isinstance(space, gym.spaces.Discrete):
        if space.start != 0:
            raise ValueError(f"unsupported action space {space}: Discrete must start at 0 (got start={space.start})")
        return CategoricalActor(obs_dim, int(space.n), hidden_sizes, activation)
    if isinstance(space, gym.spaces.MultiDiscrete):
        if space.nvec.ndim != 1 or np.any(space.start != 0):
            raise ValueError(f"unsupported action space {space}: MultiDiscrete must be 1-D and start at 0")
        return MultiCategoricalActor(obs_dim, space.nvec.tolist(), hidden_sizes, activation)
    if isinstance(space, gym.spaces.MultiBinary):
        shape = (space.n,) if isinstance(space.n, int) else tuple(space.shape)
        return BernoulliActor(obs_dim, shape, hidden_sizes, activation)
    if isinstance(space, gym.spaces.Box):
        return GaussianActor(obs_dim, space, hidden_sizes, activation, log_std_init)
    raise ValueError(
        f"unsupported action space {space}: the agents support Discrete, MultiDiscrete, MultiBinary and Box "
        "actions; for a Dict or Tuple of these, wrap the environment so that it exposes one of them "
        "(e.g. a Box via gymnasium.wrappers.FlattenObservation-style flattening of the action)"
    )


def parameters_shared(first: nn.Module, second: nn.Module) -> bool:
    """True when the two modules hold any tensor storage in common."""
    pointers = {p.untyped_storage().data_ptr() for p in first.parameters()}
    return any(p.untyped_storage().data_ptr() in pointers for p in second.parameters())
