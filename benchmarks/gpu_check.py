"""The agents on a GPU: a policy step on CUDA against the same step on the CPU, then brief training runs.

For each environment (CartPole-v1, Hopper-v5) two float64 agents with the same seed are built, one
on the CPU and one on ``--device``; one rollout is collected on the CPU, and both take their policy
step on that batch. The parameters after the step must agree to ``--tolerance`` (relative): the
same mathematics, only the kernels differ. Then each environment trains for ``--steps`` on the device
and the steps per second and the last mean return are printed.

    python benchmarks/gpu_check.py                 # on CUDA; says "skipped" without a CUDA device
    python benchmarks/gpu_check.py --device cpu    # the same comparison CPU against CPU (exercises the script)
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from agents import TRPO
from agents.common.rollout import Batch

ENVS = ("CartPole-v1", "Hopper-v5")


def policy_step_difference(env: str, device: str) -> float:
    """Largest relative difference of the actor's parameters after one policy step on the CPU and on ``device``."""
    options = {"seed": 0, "dtype": "float64", "n_steps": 256}
    cpu, other = TRPO(env, **options), TRPO(env, device=device, **options)
    try:
        batch = cpu.rollout_batch()
        moved = Batch(*(None if t is None else t.to(other.device) for t in _tensors(batch)))
        cpu.update_policy(batch)
        other.update_policy(moved)
        differences = [
            ((a - b.cpu()).norm() / a.norm().clamp_min(1e-300)).item()
            for a, b in zip(cpu.actor.parameters(), other.actor.parameters(), strict=True)
        ]
    finally:
        cpu.close()
        other.close()
    return max(differences)


def _tensors(batch: Batch) -> list[torch.Tensor | None]:
    return [getattr(batch, field.name) for field in dataclasses.fields(batch)]


def brief_training(env: str, device: str, steps: int) -> tuple[float, float]:
    """Steps per second and the last mean return of ``steps`` environment steps on ``device``."""
    agent = TRPO(env, seed=0, device=device)
    try:
        start = time.perf_counter()
        agent.learn(steps)
        seconds = time.perf_counter() - start
        return agent.global_step / seconds, agent.history[-1]["mean_return"]
    finally:
        agent.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="the device to check against the CPU (default: cuda)")
    parser.add_argument("--envs", nargs="+", default=list(ENVS), help="environments (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=20_000, help="training steps per environment (default: 20000)")
    parser.add_argument("--tolerance", type=float, default=1e-6, help="largest relative difference allowed")
    args = parser.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("skipped: torch sees no CUDA device (torch.cuda.is_available() is False)")
        return 0
    failed = False
    print(f"{'env':<14} {'step rel. diff':>15} {'steps/s':>9} {'mean return':>12}  device={args.device}")
    for env in args.envs:
        difference = policy_step_difference(env, args.device)
        speed, mean_return = brief_training(env, args.device, args.steps)
        failed |= not difference <= args.tolerance
        print(f"{env:<14} {difference:>15.2e} {speed:>9.0f} {mean_return:>12.1f}")
    if failed:
        print(f"FAILED: a policy step differs from the CPU's by more than {args.tolerance:g}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
