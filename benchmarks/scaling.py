"""Data-parallel scaling: steps/s and policy-update time of 1 and 2 processes, in one run.

Every configuration trains in fresh processes started here: one process, or two ranks with the
variables ``torchrun`` sets (gloo, one torch thread each, the per-environment defaults). Inside
them the agent is built and takes one warm-up iteration; then the clock runs over the same
*global* step budget for both: ``2k`` iterations of one process, ``k`` iterations of two (each
rank collecting the configured batch, so an iteration of two processes is twice the steps).

* steps/s: global environment steps over the wall-clock time of the timed iterations;
* policy update: the median time of one trust-region step (rank 0), which in two processes works
  on the same per-process batch and adds the all-reduces of the gradient, of every curvature
  product and of every line-search evaluation;
* collectives: per iteration of two processes, their number, the bytes rank 0 sent into them and
  the time it spent inside them (waiting for the other rank included).

The speed of a shared machine drifts over seconds, so every round runs the configurations back to
back (in alternating order) and each speed-up divides the two samples of one round; the table shows
the median over the rounds with its range.

    python benchmarks/scaling.py                 # CartPole-v1, Hopper-v5, HalfCheetah-v5; a few minutes
    python benchmarks/scaling.py --smoke         # CI: CartPole-v1, one short round
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ENVS = ("CartPole-v1", "Hopper-v5", "HalfCheetah-v5")
WORLD_SIZES = (1, 2)
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def measure(env: str, iterations: int) -> dict[str, Any]:
    """One configuration, inside its process(es): the timed iterations after a warm-up iteration."""
    from agents import TRPO

    agent = TRPO(env, seed=0)
    try:
        agent.train_iteration()
        parallel = agent.parallel
        if parallel is not None:
            parallel.any_rank(False)  # both ranks start the clock together
            counts = (parallel.collectives, parallel.collective_bytes, parallel.collective_seconds)
        start, first_step = time.perf_counter(), agent.global_step
        policy_seconds = [agent.train_iteration()["policy_seconds"] for _ in range(iterations)]
        elapsed = time.perf_counter() - start
        result = {
            "steps_per_second": (agent.global_step - first_step) / elapsed,
            "policy_seconds": statistics.median(policy_seconds),
        }
        if parallel is not None:
            now = (parallel.collectives, parallel.collective_bytes, parallel.collective_seconds)
            result.update(
                collectives=(now[0] - counts[0]) / iterations,
                collective_bytes=(now[1] - counts[1]) / iterations,
                collective_seconds=(now[2] - counts[2]) / iterations,
            )
        return result
    finally:
        agent.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(env: str, world_size: int, iterations: int) -> dict[str, Any]:
    """Run :func:`measure` in ``world_size`` fresh processes; rank 0's result."""
    port, processes = free_port(), []
    for rank in range(world_size):
        variables = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}
        if world_size > 1:
            variables.update(
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE=str(world_size),
                LOCAL_WORLD_SIZE=str(world_size),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
            )
        command = [sys.executable, __file__, "--worker", env, str(iterations)]
        processes.append(
            subprocess.Popen(
                command, env={**os.environ, **variables}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    try:
        outputs = [process.communicate(timeout=1800) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        if process.returncode != 0:
            raise RuntimeError(f"{env} on {world_size} process(es) failed:\n{stderr[-2000:]}")
    return json.loads(outputs[0][0].strip().splitlines()[-1])


def run(envs: tuple[str, ...], rounds: int, iterations: int) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """``rounds`` rounds; in each, every environment's configurations back to back, in alternating order."""
    samples: dict[str, dict[int, list[dict[str, Any]]]] = {env: {n: [] for n in WORLD_SIZES} for env in envs}
    for round_index in range(rounds):
        for env in envs:
            order = WORLD_SIZES if round_index % 2 == 0 else tuple(reversed(WORLD_SIZES))
            for world_size in order:
                # the same global budget: 2k iterations of one process, k of two
                result = launch(env, world_size, iterations * max(WORLD_SIZES) // world_size)
                samples[env][world_size].append(result)
                print(f"round {round_index + 1} {env} {world_size} process(es): {result}", file=sys.stderr)
    return samples


def ratio_text(numerators: list[float], denominators: list[float]) -> str:
    ratios = [a / b for a, b in zip(numerators, denominators, strict=True)]
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def table(samples: dict[str, dict[int, list[dict[str, Any]]]]) -> str:
    header = (
        "| env | steps/s, 1 process | steps/s, 2 processes | speed-up | policy update, 1 | policy update, 2 "
        "| 2 / 1 | collectives per iteration | KB per iteration | s in collectives per iteration |"
    )
    lines = [header, "|" + "---|" * 10]
    for env, by_size in samples.items():
        one, two = by_size[1], by_size[2]

        def median(results: list[dict[str, Any]], key: str) -> float:
            return statistics.median(result[key] for result in results)

        sps = ([r["steps_per_second"] for r in two], [r["steps_per_second"] for r in one])
        policy = ([r["policy_seconds"] for r in two], [r["policy_seconds"] for r in one])
        lines.append(
            f"| {env} | {median(one, 'steps_per_second'):,.0f} | {median(two, 'steps_per_second'):,.0f} "
            f"| {ratio_text(*sps)} | {median(one, 'policy_seconds') * 1e3:.0f} ms "
            f"| {median(two, 'policy_seconds') * 1e3:.0f} ms | {ratio_text(*policy)} "
            f"| {median(two, 'collectives'):.0f} | {median(two, 'collective_bytes') / 1e3:.0f} "
            f"| {median(two, 'collective_seconds'):.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=list(ENVS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=2, help="timed iterations of the 2-process run")
    parser.add_argument("--smoke", action="store_true", help="CartPole-v1, one round of one iteration")
    parser.add_argument("--worker", nargs=2, metavar=("ENV", "ITERATIONS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(measure(args.worker[0], int(args.worker[1]))))
        return
    envs, rounds, iterations = tuple(args.envs), args.rounds, args.iterations
    if args.smoke:
        envs, rounds, iterations = ("CartPole-v1",), 1, 1
    print(table(run(envs, rounds, iterations)))


if __name__ == "__main__":
    main()
