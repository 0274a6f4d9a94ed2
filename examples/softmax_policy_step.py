"""One KL-constrained natural-gradient step on a small softmax policy, checked against the closed form.

The policy is a linear softmax over 4 actions for 3-dimensional states. The step is
taken with exactly the call of the README; the dense reference builds the damped Fisher
``F + λI`` (λ = 0.1, the default damping) with :func:`torch.autograd.functional.hessian`
and evaluates ``sqrt(2δ / gᵀ(F + λI)⁻¹g) (F + λI)⁻¹g``.

Run: ``python examples/softmax_policy_step.py``
"""

from __future__ import annotations

import math

import torch
from torch import nn

from trustregion import TrustRegionOptimizer

MAX_KL = 0.01
DAMPING = 0.1


def make_problem(seed: int = 0, batch: int = 256) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    policy = nn.Linear(3, 4).double()
    with torch.no_grad():
        policy.weight.copy_(0.5 * torch.randn(4, 3, generator=generator, dtype=torch.float64))
        policy.bias.zero_()
    states = torch.randn(batch, 3, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        old_log_probs = torch.log_softmax(policy(states), dim=-1)
    actions = torch.multinomial(old_log_probs.exp(), 1, generator=generator).squeeze(1)
    advantages = torch.randn(batch, generator=generator, dtype=torch.float64)
    return policy, {"states": states, "actions": actions, "advantages": advantages, "old_log_probs": old_log_probs}


def surrogate_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``-mean(π(a|s) / π_old(a|s) · A)``: the negative surrogate objective."""
    log_probs = torch.log_softmax(logits, dim=-1)
    taken = batch["actions"].unsqueeze(1)
    ratio = torch.exp(log_probs.gather(1, taken) - batch["old_log_probs"].gather(1, taken)).squeeze(1)
    return -(ratio * batch["advantages"]).mean()


def mean_kl(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``mean_s KL(π_old(·|s) ‖ π(·|s))`` against the frozen old distribution."""
    old = batch["old_log_probs"]
    return (old.exp() * (old - torch.log_softmax(logits, dim=-1))).sum(-1).mean()


def closed_form_step(policy: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The dense reference ``sqrt(2δ / gᵀF⁻¹g) F⁻¹g`` with ``F`` the damped KL Hessian."""
    theta = torch.cat([policy.weight.detach().reshape(-1), policy.bias.detach()])

    def logits_at(flat: torch.Tensor) -> torch.Tensor:
        weight, bias = flat[:12].view(4, 3), flat[12:]
        return batch["states"] @ weight.T + bias

    fisher = torch.autograd.functional.hessian(lambda flat: mean_kl(logits_at(flat), batch), theta)
    fisher = fisher + DAMPING * torch.eye(theta.numel(), dtype=theta.dtype)
    gradient = -torch.autograd.functional.jacobian(lambda flat: surrogate_loss(logits_at(flat), batch), theta)
    natural_gradient = torch.linalg.solve(fisher, gradient)
    return math.sqrt(2 * MAX_KL / (gradient @ natural_gradient)) * natural_gradient


def main(seed: int = 0) -> float:
    torch.manual_seed(seed)
    policy, batch = make_problem(seed)
    reference = closed_form_step(policy, batch)
    before = torch.cat([policy.weight.detach().reshape(-1), policy.bias.detach()]).clone()

    opt = TrustRegionOptimizer(policy.parameters(), max_kl=MAX_KL)

    def closure():
        logits = policy(batch["states"])
        return surrogate_loss(logits, batch), mean_kl(logits, batch)

    opt.step(closure)
    result = opt.last_result
    taken = torch.cat([policy.weight.detach().reshape(-1), policy.bias.detach()]) - before
    error = (taken - result.step_fraction * reference).abs().max().item()
    print(f"accepted={result.accepted} fraction={result.step_fraction:.3f} KL after={result.kl_after:.5f}")
    print(f"CG iterations={result.solver_iterations} residual={result.solver_residual:.2e}")
    print(f"|step - closed form|_max = {error:.2e} (step norm {taken.norm():.4f})")
    return error


if __name__ == "__main__":
    main()
