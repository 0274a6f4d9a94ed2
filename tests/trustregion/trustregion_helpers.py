"""Builders and dense references shared by the trustregion tests.

Everything here is the *second implementation* the tests compare against: dense matrices
built with :mod:`torch.autograd.functional` / :mod:`torch.func`, KLs from
:mod:`torch.distributions`, and small policies with a flat-parameter functional form.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Categorical, Normal, kl_divergence

from trustregion import LinearOperator, StepProblem

DTYPE = torch.float64


# ----------------------------------------------------------------------------- matrices


def random_orthogonal(n: int, generator: torch.Generator, dtype: torch.dtype = DTYPE) -> Tensor:
    """A Haar-ish random orthogonal matrix (QR of a Gaussian matrix, signs fixed)."""
    gaussian = torch.randn(n, n, generator=generator, dtype=dtype)
    q, r = torch.linalg.qr(gaussian)
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


def symmetric_matrix(eigenvalues: Tensor, generator: torch.Generator) -> Tensor:
    """``Q diag(eigenvalues) Qᵀ`` with a random orthogonal ``Q`` (exactly symmetric)."""
    q = random_orthogonal(eigenvalues.numel(), generator, eigenvalues.dtype)
    matrix = (q * eigenvalues) @ q.T
    return 0.5 * (matrix + matrix.T)


def log_spaced_eigenvalues(n: int, condition_number: float, dtype: torch.dtype = DTYPE) -> Tensor:
    """``n`` eigenvalues from 1 to ``condition_number``, log-spaced."""
    if n == 1:
        return torch.ones(1, dtype=dtype)
    return torch.logspace(0.0, float(torch.log10(torch.tensor(condition_number))), n, dtype=dtype)


def matrix_operator(matrix: Tensor, *, positive_semidefinite: bool = True) -> LinearOperator:
    """The operator ``v -> matrix @ v`` (counts its products)."""
    return LinearOperator(lambda v: matrix @ v, matrix.shape[0], positive_semidefinite=positive_semidefinite)


def quadratic_model(matrix: Tensor, rhs: Tensor, step: Tensor) -> float:
    """``q(s) = ½ sᵀAs - gᵀs``."""
    return (0.5 * step @ matrix @ step - rhs @ step).item()


# ----------------------------------------------------------------------------- policies


class MLP(nn.Module):
    """``obs -> tanh hidden -> out`` (logits of a discrete policy)."""

    def __init__(self, obs_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(obs_dim, hidden)
        self.head = nn.Linear(hidden, out_dim)

    def forward(self, obs: Tensor) -> Tensor:
        return self.head(torch.tanh(self.hidden(obs)))


class GaussianMLP(nn.Module):
    """Diagonal Gaussian policy: ``obs -> (mean, log_std)``.

    ``log_std_shape=None`` gives a state-dependent log-std head; a shape gives a
    state-independent ``log_std`` parameter of that shape, returned unexpanded.
    """

    def __init__(self, obs_dim: int, hidden: int, act_dim: int, log_std_shape: tuple[int, ...] | None) -> None:
        super().__init__()
        self.hidden = nn.Linear(obs_dim, hidden)
        self.mean = nn.Linear(hidden, act_dim)
        if log_std_shape is None:
            self.log_std_head = nn.Linear(hidden, act_dim)
        else:
            self.log_std = nn.Parameter(0.3 * torch.randn(log_std_shape))

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        features = torch.tanh(self.hidden(obs))
        if hasattr(self, "log_std_head"):
            return self.mean(features), 0.3 * self.log_std_head(features)
        return self.mean(features), self.log_std


class LinearSoftmaxPolicy(nn.Module):
    """Logits ``W obs`` without bias (few parameters: CG with 10 iterations solves exactly)."""

    def __init__(self, obs_dim: int, n_actions: int) -> None:
        super().__init__()
        self.logits = nn.Linear(obs_dim, n_actions, bias=False)

    def forward(self, obs: Tensor) -> Tensor:
        return self.logits(obs)


def seeded(build: Callable[[], nn.Module], seed: int, dtype: torch.dtype = DTYPE) -> nn.Module:
    """Build a module under a fixed torch seed and cast it to ``dtype``."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build().to(dtype)


def flat_functional(module: nn.Module) -> tuple[Tensor, Callable[[Tensor], object]]:
    """``(θ0, f)`` with ``θ0`` the flat parameters and ``f(θ) = module`` evaluated at the flat ``θ``.

    ``f`` closes over nothing but the module structure (via :func:`torch.func.functional_call`),
    so it is a pure function of the flat vector, in ``module.parameters()`` order.
    """
    names = [name for name, _ in module.named_parameters()]
    shapes = [p.shape for p in module.parameters()]
    sizes = [p.numel() for p in module.parameters()]
    theta0 = torch.cat([p.detach().reshape(-1) for p in module.parameters()])

    def at(theta: Tensor) -> Callable[..., object]:
        tensors = [t.view(shape) for t, shape in zip(torch.split(theta, sizes), shapes, strict=True)]
        params = dict(zip(names, tensors, strict=True))
        return lambda *args: torch.func.functional_call(module, params, args)

    return theta0, at


# ----------------------------------------------------------------------------- KLs (torch.distributions)


def categorical_kl(old_logits: Tensor, new_logits: Tensor) -> Tensor:
    """Mean over the batch of ``KL(Categorical(old) || Categorical(new))``."""
    return kl_divergence(Categorical(logits=old_logits), Categorical(logits=new_logits)).mean()


def bernoulli_kl(old_logits: Tensor, new_logits: Tensor) -> Tensor:
    """Mean over the batch of the KL of independent Bernoullis (summed over variables)."""
    return kl_divergence(Bernoulli(logits=old_logits), Bernoulli(logits=new_logits)).sum(-1).mean()


def multi_categorical_kl(sizes: Sequence[int]) -> Callable[[Tensor, Tensor], Tensor]:
    """Mean over the batch of the KL of independent categoricals over slices of the logits."""

    def kl(old_logits: Tensor, new_logits: Tensor) -> Tensor:
        pairs = zip(torch.split(old_logits, list(sizes), -1), torch.split(new_logits, list(sizes), -1), strict=True)
        return sum(kl_divergence(Categorical(logits=a), Categorical(logits=b)) for a, b in pairs).mean()

    return kl


def gaussian_kl(old: tuple[Tensor, Tensor], new: tuple[Tensor, Tensor]) -> Tensor:
    """Mean over the batch of the KL of diagonal Gaussians given as ``(mean, log_std)``."""
    old_mean, old_log_std = old
    new_mean, new_log_std = new
    old_dist = Normal(old_mean, old_log_std.exp().expand_as(old_mean))
    new_dist = Normal(new_mean, new_log_std.exp().expand_as(new_mean))
    return kl_divergence(old_dist, new_dist).sum(-1).mean()


def detach_outputs(outputs: object) -> object:
    """Detach a tensor or a tuple of tensors."""
    if isinstance(outputs, Tensor):
        return outputs.detach()
    return tuple(t.detach() for t in outputs)


def kl_from_old(module: nn.Module, obs: Tensor, kl: Callable[[object, object], Tensor]) -> Callable[[Tensor], Tensor]:
    """Flat-parameter functional ``θ -> mean KL(π_θ_old || π_θ)`` at the module's current ``θ_old``."""
    _, at = flat_functional(module)
    with torch.no_grad():
        old = detach_outputs(module(obs))
    return lambda theta: kl(old, at(theta)(obs))


def dense_kl_hessian(module: nn.Module, obs: Tensor, kl: Callable[[object, object], Tensor]) -> Tensor:
    """``∇²_θ KL(π_θ_old || π_θ)`` at ``θ_old``, by :func:`torch.autograd.functional.hessian`."""
    theta0, _ = flat_functional(module)
    return torch.autograd.functional.hessian(kl_from_old(module, obs, kl), theta0)


def policy_closure(
    kind: str, seed: int, batch: int, obs_dim: int, hidden: int, width: int, dtype: torch.dtype = DTYPE
) -> tuple[nn.Module, Callable[[], tuple[Tensor, Tensor]]]:
    """A policy and a TRPO closure ``() -> (surrogate loss, mean KL(old || new))`` on a random batch.

    ``kind`` is ``"categorical"`` (an MLP over ``width`` actions) or ``"gaussian"`` (an MLP mean with a
    state-independent log-std over ``width`` action dimensions).
    """
    generator = torch.Generator().manual_seed(seed)
    obs = torch.randn(batch, obs_dim, generator=generator, dtype=dtype)
    advantages = torch.randn(batch, generator=generator, dtype=dtype)
    if kind == "categorical":
        policy = seeded(lambda: MLP(obs_dim, hidden, width), seed, dtype)
        with torch.no_grad():
            old = policy(obs)
        actions = torch.multinomial(torch.softmax(old, -1), 1, generator=generator).squeeze(-1)

        def log_prob(outputs: Tensor) -> Tensor:
            return torch.distributions.Categorical(logits=outputs).log_prob(actions)

        kl = categorical_kl
    else:
        policy = seeded(lambda: GaussianMLP(obs_dim, hidden, width, (width,)), seed, dtype)
        with torch.no_grad():
            old = policy(obs)
        actions = old[0] + torch.randn(batch, width, generator=generator, dtype=dtype) * old[1].exp()

        def log_prob(outputs: tuple[Tensor, Tensor]) -> Tensor:
            return torch.distributions.Normal(outputs[0], outputs[1].exp()).log_prob(actions).sum(-1)

        kl = gaussian_kl
    old_log_prob = log_prob(old)

    def closure() -> tuple[Tensor, Tensor]:
        outputs = policy(obs)
        surrogate = -(torch.exp(log_prob(outputs) - old_log_prob) * advantages).mean()
        return surrogate, kl(old, outputs)

    return policy, closure


# ----------------------------------------------------------------------------- optimizer plumbing


def step_problem(
    params: Sequence[Tensor],
    loss: Tensor,
    constraint: Tensor | None = None,
    *,
    create_graph: bool = False,
    closure: Callable[[], object] | None = None,
) -> StepProblem:
    """The :class:`StepProblem` the optimizer builds at ``θ_old``."""
    grads = torch.autograd.grad(loss, list(params), retain_graph=True, create_graph=create_graph, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]
    return StepProblem(list(params), loss, constraint, grads, closure or (lambda: loss))


def random_vector(n: int, generator: torch.Generator, dtype: torch.dtype = DTYPE) -> Tensor:
    return torch.randn(n, generator=generator, dtype=dtype)


def flat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def snapshot(params: Sequence[Tensor]) -> list[Tensor]:
    """Bitwise copies of the parameters."""
    return [p.detach().clone() for p in params]


def bitwise_equal(params: Sequence[Tensor], saved: Sequence[Tensor]) -> bool:
    return all(torch.equal(p.detach(), s) and p.dtype == s.dtype for p, s in zip(params, saved, strict=True))
