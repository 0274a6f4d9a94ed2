"""One rank of the data-parallel tests: ``python distributed_workers.py SCENARIO OUT_DIR`` under a launcher.

Each scenario writes what the test compares to ``OUT_DIR/<scenario>-<rank>.pt``. The same functions run
without a process group in the test process give the single-process references.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from gymnasium.wrappers.utils import RunningMeanStd

from agents import TRPO
from agents.common.distributed import DataParallel, TrackedRunningMeanStd, data_parallel, shared_seed
from agents.common.rollout import Batch
from agents.trpo.agent import fit_critic

POLICY_CASES: dict[str, dict[str, Any]] = {
    "discrete-gauss-newton-equal": {"env": "CartPole-v1", "size": 64, "first": 32, "curvature": "gauss-newton"},
    "discrete-kl-hessian-unequal": {"env": "CartPole-v1", "size": 64, "first": 40, "curvature": "kl-hessian"},
    "gaussian-gauss-newton-unequal": {"env": "Pendulum-v1", "size": 50, "first": 13, "curvature": "gauss-newton"},
    "gaussian-sample-kl-equal": {
        "env": "Pendulum-v1",
        "size": 48,
        "first": 24,
        "curvature": "kl-hessian",
        "kl_estimator": "sample",
    },
}
"""Policy and critic steps on a synthetic batch, split at ``first`` between rank 0 and rank 1.

The step is well conditioned (``cg_damping`` 1.0): with CartPole's 1e-3, CG turns a mere change of
summation order (a shuffled batch in one process) into relative differences of 1e-7.
"""

RUN = {
    "n_steps": 32,
    "num_envs": 2,
    "hidden_sizes": (16,),
    "value_epochs": 2,
    "value_minibatch_size": 24,
    "normalize_obs": True,
    "normalize_reward": True,
    "checkpoint_interval": 1,
}
"""A short CartPole run (its 20 % Fisher subsample included) with both normalisations on."""
RUN_ITERATIONS = 4
INTERRUPTED_AFTER = 2


def synthetic_batch(agent: TRPO, size: int, seed: int) -> Batch:
    """A batch of ``size`` random states, actions the policy could take, advantages and returns."""
    generator = torch.Generator().manual_seed(seed)
    obs = torch.randn(size, agent.layout.dim, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        actions = agent.actor.sample(agent.actor(obs), generator)
    advantages, returns, values = torch.randn(3, size, generator=generator, dtype=torch.float64)
    return Batch(obs=obs, actions=actions, advantages=advantages * 3 + 1, returns=returns * 2 + 1, values=values)


def policy_case(name: str, part: slice | None = None, value_parallel: str = "sharded") -> dict[str, Any]:
    """One policy step and three critic epochs on the case's batch, or on its ``part``; the parameters after."""
    case = dict(POLICY_CASES[name])
    size, env = case.pop("size"), case.pop("env")
    case.pop("first")
    # one critic minibatch per epoch on every rank (the whole shard), so the epoch is the global batch's
    settings = {"hidden_sizes": (16, 16), "fisher_fraction": 1.0, "cg_damping": 1.0, "value_epochs": 3}
    settings.update(value_minibatch_size=1000, value_parallel=value_parallel)
    agent = TRPO(env, seed=3, dtype="float64", **settings, **case)
    try:
        batch = synthetic_batch(agent, size, seed=11)
        if part is not None:
            batch = Batch(*(getattr(batch, f)[part] for f in ("obs", "actions", "advantages", "returns", "values")))
        step = agent.update_policy(batch)
        value_loss = agent.update_value(batch)
        return {
            "actor": [p.detach().clone() for p in agent.actor.parameters()],
            "critic": [p.detach().clone() for p in agent.critic.parameters()],
            "accepted": step.accepted,
            "backtracks": step.backtracks,
            "loss_before": step.loss_before,
            "value_loss": value_loss,
        }
    finally:
        agent.close()


CRITIC_CASE = {"env": "Pendulum-v1", "size": 50, "first": 17, "minibatch": 6}
"""The replicated critic with several minibatches per epoch, on a batch split unequally."""


def critic_case(part: slice | None = None) -> dict[str, Any]:
    """Three critic epochs of ``minibatch`` per rank on the critic case's batch, or on its ``part``."""
    agent = TRPO(
        CRITIC_CASE["env"], seed=3, dtype="float64", hidden_sizes=(16, 16), value_epochs=3,
        value_minibatch_size=CRITIC_CASE["minibatch"], value_parallel="replicated",
    )  # fmt: skip
    try:
        batch = synthetic_batch(agent, CRITIC_CASE["size"], seed=12)
        if part is None:  # the reference: one process, the whole batch, minibatches twice as large, the shared shuffle
            shuffle = torch.Generator().manual_seed(shared_seed(agent.config.seed, agent.iteration))
            data, minibatch = (batch.obs, batch.returns), 2 * CRITIC_CASE["minibatch"]
            value_loss = fit_critic(agent.critic, agent.value_optimizer, data, 3, minibatch, shuffle)
        else:
            fields = ("obs", "actions", "advantages", "returns", "values")
            value_loss = agent.update_value(Batch(*(getattr(batch, f)[part] for f in fields)))
        return {"critic": [p.detach().clone() for p in agent.critic.parameters()], "value_loss": value_loss}
    finally:
        agent.close()


def reductions(parallel: DataParallel) -> dict[str, torch.Tensor]:
    """Sums and maxima over the ranks of tensors below and above the size the gathered reduction takes."""
    rank = parallel.rank
    small, large = torch.arange(6.0).reshape(2, 3) * (rank + 1), torch.full((300_000,), rank + 0.5)
    return {
        "small_sum": parallel.all_reduce(small),
        "small_max": parallel.all_reduce(small - 10 * rank, op=torch.distributed.ReduceOp.MAX),
        "large_sum": parallel.all_reduce(large),
        "flag": torch.tensor(parallel.any_rank(rank == 1)),
    }


def statistics_batches(rank: int | None) -> list[list[np.ndarray]]:
    """Two rounds of observation batches per rank (``None``: every rank's, rank 0's first in each round)."""
    rounds = []
    for round_index in range(2):
        per_rank = []
        for owner in range(2):
            rng = np.random.default_rng(100 * round_index + owner)
            sizes = (3, 5, 2) if owner == 0 else (7, 1)
            per_rank.append([rng.normal(owner + 1.0, 2.0 + owner, (n, 3)) for n in sizes])
        rounds.append(per_rank[rank] if rank is not None else per_rank[0] + per_rank[1])
    return rounds


def merged_statistics(parallel: DataParallel) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """This rank's batches fed to tracked statistics, merged over the ranks after each round."""
    tracked = TrackedRunningMeanStd(RunningMeanStd(shape=(3,)))
    stack = SimpleNamespace(obs_normalizer=SimpleNamespace(obs_rms=tracked), reward_normalizer=None)
    after = []
    for batches in statistics_batches(parallel.rank):
        for batch in batches:
            tracked.update(batch)
        parallel.merge_statistics(stack)
        after.append((tracked.mean.copy(), tracked.var.copy(), tracked.count))
    return after


def reference_statistics() -> list[tuple[np.ndarray, np.ndarray, float]]:
    rms = RunningMeanStd(shape=(3,))
    after = []
    for batches in statistics_batches(None):
        for batch in batches:
            rms.update(batch)
        after.append((rms.mean.copy(), rms.var.copy(), rms.count))
    return after


def parameter_digest(agent: TRPO) -> str:
    digest = hashlib.sha256()
    for module in (agent.actor, agent.critic):
        for parameter in module.parameters():
            digest.update(parameter.detach().numpy().tobytes())
    return digest.hexdigest()


def run(total_iterations: int, run_dir: Path, agent: TRPO | None = None) -> dict[str, Any]:
    """Train (a new agent, or ``agent`` from a checkpoint) to ``total_iterations``; digests at every iteration."""
    agent = TRPO("CartPole-v1", seed=5, **RUN) if agent is None else agent
    digests: list[str] = []
    try:
        target = total_iterations * agent.config.batch_size * agent.world_size
        agent.learn(
            target, reset_num_timesteps=False, run_dir=run_dir, callback=lambda a: digests.append(parameter_digest(a))
        )
        return {
            "cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "digests": digests,
            "final": parameter_digest(agent),
            "history": agent.history,
            "step": agent.global_step,
        }
    finally:
        agent.close()


def scenario_equivalence(parallel: DataParallel) -> dict[str, Any]:
    results: dict[str, Any] = {"statistics": merged_statistics(parallel), "reductions": reductions(parallel)}
    for name, case in POLICY_CASES.items():
        part = slice(0, case["first"]) if parallel.rank == 0 else slice(case["first"], None)
        results[name] = policy_case(name, part)
        results[f"{name}/replicated"] = policy_case(name, part, value_parallel="replicated")
    first = CRITIC_CASE["first"]
    results["critic"] = critic_case(slice(0, first) if parallel.rank == 0 else slice(first, None))
    return results


def scenario_run(parallel: DataParallel, out: Path) -> dict[str, Any]:
    """The steps on split batches, then a straight run and one stopped halfway (one launch: start-up is slow)."""
    results = scenario_equivalence(parallel)
    results["straight"] = run(RUN_ITERATIONS, out / "straight")
    results["interrupted"] = run(INTERRUPTED_AFTER, out / "interrupted")
    return results


def scenario_resume(out: Path) -> dict[str, Any]:
    return run(RUN_ITERATIONS, out / "interrupted", TRPO.load(out / "interrupted"))


def scenario_mismatch(parallel: DataParallel) -> str:
    """Rank 1 asks for another max_kl: both ranks refuse to build the agent; the message is returned."""
    try:
        TRPO("CartPole-v1", seed=5, **{**RUN, "max_kl": 0.02 if parallel.rank == 1 else 0.01})
    except ValueError as error:
        return str(error)
    return "built"


def scenario_failure(parallel: DataParallel) -> dict[str, Any]:
    agent = TRPO("CartPole-v1", seed=5, **RUN)
    update_value = agent.update_value

    def failing_update_value(batch: Batch) -> float:
        if agent.iteration == 1 and parallel.rank == 1:
            raise RuntimeError("injected failure in the critic update")
        return update_value(batch)

    agent.update_value = failing_update_value  # type: ignore[method-assign]
    try:
        agent.learn(4 * agent.config.batch_size * agent.world_size)
    finally:
        agent.close()
    return {}


def main() -> None:
    scenario, out = sys.argv[1], Path(sys.argv[2])
    parallel = data_parallel()
    assert parallel is not None, "launch with RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set"
    if scenario == "run":
        result = scenario_run(parallel, out)
        torch.save(result, out / f"{scenario}-{os.environ['RANK']}.pt")
    else:  # resume the run stopped halfway, refuse mismatched configs, then fail on rank 1 (one launch)
        result = scenario_resume(out)
        result["mismatch"] = scenario_mismatch(parallel)
        torch.save(result, out / f"{scenario}-{os.environ['RANK']}.pt")
        scenario_failure(parallel)


if __name__ == "__main__":
    main()
