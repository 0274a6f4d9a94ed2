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
  the time it spent inside them (waiting for the other rank included);
* the machine's ceiling: two independent single-process runs side by side (no process group, the
  same iterations as each rank, each bound to the cores a rank in its place binds to), their
  steps/s added up, over one process alone. Two processes
  cannot beat it: it is what the cores give two busy processes that never wait for each other.
  *Of the ceiling* divides the speed-up by it, round by round.

The speed of a shared machine drifts over seconds, so every round runs the configurations back to
back (in alternating order) and each speed-up divides the two samples of one round; the table shows
the median over the rounds with its range.

    python benchmarks/scaling.py                 # CartPole-v1, Hopper-v5, HalfCheetah-v5; a few minutes
    python benchmarks/scaling.py --smoke         # CI: CartPole-v1, one short round
    python benchmarks/scaling.py --set value_parallel='"replicated"'   # every run with an override
    python benchmarks/scaling.py --set pin_cores=false  # ranks and independent runs left unbound
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ENVS = ("CartPole-v1", "Hopper-v5", "HalfCheetah-v5")
CONFIGURATIONS = ("1", "2", "2 independent")
"""One process; two ranks of one data-parallel run; two single-process runs side by side."""
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def measure(env: str, iterations: int, together: Path | None) -> dict[str, Any]:
    """One configuration, inside its process(es): the timed iterations after a warm-up iteration.

    ``together``: a folder where independent runs meet, so that their clocks start at once.
    """
    from agents import TRPO

    overrides = json.loads(os.environ.get("SCALING_SET", "{}"))
    if together is not None and overrides.get("pin_cores", True):
        bind_like_a_rank()
    agent = TRPO(env, seed=0, **overrides)
    try:
        agent.train_iteration()
        parallel = agent.parallel
        if parallel is not None:
            parallel.any_rank(False)  # both ranks start the clock together
            counts = (parallel.collectives, parallel.collective_bytes, parallel.collective_seconds)
        if together is not None:
            meet(together)
        start, first_step = time.time(), agent.global_step
        policy_seconds = [agent.train_iteration()["policy_seconds"] for _ in range(iterations)]
        end = time.time()
        result = {
            "steps_per_second": (agent.global_step - first_step) / (end - start),
            "policy_seconds": statistics.median(policy_seconds),
            "steps": agent.global_step - first_step,
            "start": start,
            "end": end,
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


def meet(folder: Path, parties: int = 2) -> None:
    """Wait until ``parties`` processes have reached this point (one file each in ``folder``)."""
    (folder / str(os.getpid())).touch()
    while len(list(folder.iterdir())) < parties:
        time.sleep(0.001)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def bind_like_a_rank() -> None:
    """Bind an independent run to the cores a rank in its place would take (the agents' ``pin_cores``)."""
    from agents.common.distributed import bind_process, core_block, usable_cores

    if not hasattr(os, "sched_setaffinity"):
        return
    index, count = (int(value) for value in os.environ["SCALING_RUN"].split("/"))
    block = core_block([("this machine", usable_cores())] * count, index)
    if block is not None:
        bind_process(block)


def launch(env: str, configuration: str, iterations: int) -> dict[str, Any]:
    """Run :func:`measure` in fresh processes; rank 0's result, or the independent runs' steps/s added up."""
    world_size, independent = int(configuration.split()[0]), configuration.endswith("independent")
    port, processes = free_port(), []
    together = tempfile.mkdtemp(prefix="scaling-") if independent else None
    for rank in range(world_size):
        variables = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}
        if independent:
            variables["SCALING_RUN"] = f"{rank}/{world_size}"
        if world_size > 1 and not independent:
            variables.update(
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE=str(world_size),
                LOCAL_WORLD_SIZE=str(world_size),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
            )
        command = [sys.executable, __file__, "--worker", env, str(iterations), *([together] if together else [])]
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
        if together is not None:
            shutil.rmtree(together, ignore_errors=True)
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        if process.returncode != 0:
            raise RuntimeError(f"{env} on {configuration} process(es) failed:\n{stderr[-2000:]}")
    results = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]
    if independent:  # both runs' steps over the time from the common start to the last end
        elapsed = max(r["end"] for r in results) - min(r["start"] for r in results)
        return {"steps_per_second": sum(r["steps"] for r in results) / elapsed}
    return results[0]


def run(envs: tuple[str, ...], rounds: int, iterations: int) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``rounds`` rounds; in each, every environment's configurations back to back, in alternating order."""
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {env: {c: [] for c in CONFIGURATIONS} for env in envs}
    for round_index in range(rounds):
        for env in envs:
            order = CONFIGURATIONS if round_index % 2 == 0 else tuple(reversed(CONFIGURATIONS))
            for configuration in order:
                # the same global budget: 2k iterations of one process, k of each of two
                result = launch(env, configuration, iterations * (2 if configuration == "1" else 1))
                samples[env][configuration].append(result)
                print(f"round {round_index + 1} {env} {configuration} process(es): {result}", file=sys.stderr)
    return samples


def ratios(numerators: list[float], denominators: list[float]) -> list[float]:
    return [a / b for a, b in zip(numerators, denominators, strict=True)]


def ratio_text(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def table(samples: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    header = (
        "| env | steps/s, 1 process | steps/s, 2 processes | speed-up | ceiling (2 independent) | of the ceiling "
        "| policy update, 1 | policy update, 2 | 2 / 1 | collectives per iteration | KB per iteration "
        "| s in collectives per iteration |"
    )
    lines = [header, "|" + "---|" * 12]
    for env, by_configuration in samples.items():
        one, two, apart = (by_configuration[c] for c in CONFIGURATIONS)

        def column(results: list[dict[str, Any]], key: str) -> list[float]:
            return [result[key] for result in results]

        def median(results: list[dict[str, Any]], key: str) -> float:
            return statistics.median(column(results, key))

        speed_up = ratios(column(two, "steps_per_second"), column(one, "steps_per_second"))
        ceiling = ratios(column(apart, "steps_per_second"), column(one, "steps_per_second"))
        policy = ratios(column(two, "policy_seconds"), column(one, "policy_seconds"))
        lines.append(
            f"| {env} | {median(one, 'steps_per_second'):,.0f} | {median(two, 'steps_per_second'):,.0f} "
            f"| {ratio_text(speed_up)} | {ratio_text(ceiling)} | {ratio_text(ratios(speed_up, ceiling))} "
            f"| {median(one, 'policy_seconds') * 1e3:.0f} ms | {median(two, 'policy_seconds') * 1e3:.0f} ms "
            f"| {ratio_text(policy)} | {median(two, 'collectives'):.0f} | {median(two, 'collective_bytes') / 1e3:.0f} "
            f"| {median(two, 'collective_seconds'):.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=list(ENVS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=2, help="timed iterations of the 2-process run")
    parser.add_argument("--smoke", action="store_true", help="CartPole-v1, one round of one iteration")
    parser.add_argument(
        "--set", nargs="+", default=[], metavar="NAME=VALUE", help="hyperparameter overrides of every run (JSON values)"
    )
    parser.add_argument("--worker", nargs="+", metavar="ENV ITERATIONS [FOLDER]", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        together = Path(args.worker[2]) if len(args.worker) > 2 else None
        print(json.dumps(measure(args.worker[0], int(args.worker[1]), together)))
        return
    overrides = {name: json.loads(value) for name, value in (item.split("=", 1) for item in args.set)}
    os.environ["SCALING_SET"] = json.dumps(overrides)  # read by the workers, which inherit the environment
    envs, rounds, iterations = tuple(args.envs), args.rounds, args.iterations
    if args.smoke:
        envs, rounds, iterations = ("CartPole-v1",), 1, 1
    print(table(run(envs, rounds, iterations)))


if __name__ == "__main__":
    main()
