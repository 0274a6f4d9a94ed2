"""Data-parallel training on 2 processes (gloo, CPU), launched as ``torchrun`` would (docs/distributed.md).

Each test starts two ranks of ``distributed_workers.py`` with ``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT`` set, waits for both within a deadline (killing both on
expiry), and compares what they saved with a single-process reference computed here.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import distributed_workers as workers
import numpy as np
import pytest
import torch

from agents import TRPO
from agents.common import distributed
from agents.common.distributed import process_group_backend, rank_seed

WORKER = Path(workers.__file__)
PROJECT_ROOT = WORKER.resolve().parents[2]
DEADLINE = 150.0  # seconds for both ranks of one launch, start-up included
TIMEOUT = 20  # seconds a collective waits for the other rank


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Ended:
    """How one rank ended: exit code, its output, and when (seconds after the launch)."""

    rank: int
    returncode: int
    stderr: str
    seconds: float


def launch(scenario: str, out: Path, world_size: int = 2) -> list[Ended]:
    """Run ``scenario`` on ``world_size`` ranks, noting when each ends; all are killed at the deadline."""
    port, processes, logs = free_port(), [], []
    for rank in range(world_size):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "TRUSTREGION_COLLECTIVE_TIMEOUT": str(TIMEOUT),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
        }
        logs.append(out / f"{scenario}-{rank}.log")
        with logs[-1].open("w") as log:  # a file, not a pipe: a full pipe would block the rank
            command = [sys.executable, str(WORKER), scenario, str(out)]
            processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
    start, ended = time.monotonic(), {}
    try:
        while len(ended) < world_size and time.monotonic() - start < DEADLINE:
            for rank, process in enumerate(processes):
                if rank not in ended and process.poll() is not None:
                    ended[rank] = time.monotonic() - start
            time.sleep(0.05)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
    assert len(ended) == world_size, f"ranks {sorted(set(range(world_size)) - set(ended))} still ran at the deadline"
    return [Ended(rank, processes[rank].returncode, logs[rank].read_text(), ended[rank]) for rank in range(world_size)]


def succeeded(results: list[Ended]) -> None:
    for result in results:
        assert result.returncode == 0, f"rank {result.rank} failed:\n{result.stderr[-3000:]}"


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = expected.abs().max().clamp_min(1e-300)
    assert ((actual - expected).abs().max() / scale).item() <= 1e-10


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Steps on split batches, a straight 2-rank run and the same run stopped halfway; a new launch resumes it.

    The second launch then trains a new agent whose rank 1 raises in its second iteration.
    """
    out = tmp_path_factory.mktemp("runs")
    succeeded(launch("run", out))
    first = [torch.load(out / f"run-{rank}.pt", weights_only=False) for rank in range(2)]
    failed = launch("resume", out)  # which ends with rank 1 raising mid-iteration
    resumed = [torch.load(out / f"resume-{rank}.pt", weights_only=False) for rank in range(2)]
    return out, first, resumed, failed


@pytest.fixture(scope="module")
def equivalence(runs):
    return runs[1]


@pytest.mark.parametrize("value_parallel", ["replicated", "sharded"])
@pytest.mark.parametrize("case", sorted(workers.POLICY_CASES))
def test_a_policy_step_and_critic_epochs_split_over_two_ranks_equal_one_process_on_the_whole_batch(
    equivalence, case, value_parallel
):
    reference = workers.policy_case(case)
    assert reference["accepted"]
    saved = case if value_parallel == "sharded" else f"{case}/replicated"  # sharded: the default
    for rank in range(2):
        result = equivalence[rank][saved]
        assert (result["accepted"], result["backtracks"]) == (reference["accepted"], reference["backtracks"])
        assert math.isclose(result["loss_before"], reference["loss_before"], rel_tol=1e-10, abs_tol=1e-12)
        assert math.isclose(result["value_loss"], reference["value_loss"], rel_tol=1e-10)
        for name in ("actor", "critic"):
            for actual, expected in zip(result[name], reference[name], strict=True):
                close(actual, expected)
    for name in ("actor", "critic"):  # and the ranks agree bit for bit
        for first, second in zip(equivalence[0][saved][name], equivalence[1][saved][name], strict=True):
            assert torch.equal(first, second)


def test_the_replicated_critic_fits_the_gathered_batch_with_minibatches_scaled_by_the_ranks(equivalence):
    reference = workers.critic_case()
    for rank in range(2):
        result = equivalence[rank]["critic"]
        assert math.isclose(result["value_loss"], reference["value_loss"], rel_tol=1e-10)
        for actual, expected in zip(result["critic"], reference["critic"], strict=True):
            close(actual, expected)
    for first, second in zip(equivalence[0]["critic"]["critic"], equivalence[1]["critic"]["critic"], strict=True):
        assert torch.equal(first, second)


def test_gathered_and_ring_reductions_give_the_sums_and_maxima_over_the_ranks(equivalence):
    small = torch.arange(6.0).reshape(2, 3)
    expected = {
        "small_sum": small * 1 + small * 2,
        "small_max": torch.maximum(small, small * 2 - 10),
        "large_sum": torch.full((300_000,), 2.0),
        "flag": torch.tensor(True),
    }
    for rank in range(2):
        for name, value in expected.items():
            assert torch.equal(equivalence[rank]["reductions"][name], value), name


def test_normalisation_statistics_merged_over_two_ranks_equal_one_process_seeing_all_the_data(equivalence):
    reference = workers.reference_statistics()
    for rank in range(2):
        for (mean, var, count), (ref_mean, ref_var, ref_count) in zip(
            equivalence[rank]["statistics"], reference, strict=True
        ):
            np.testing.assert_allclose(mean, ref_mean, rtol=1e-10)
            np.testing.assert_allclose(var, ref_var, rtol=1e-10)
            assert math.isclose(count, ref_count, rel_tol=1e-12)


def test_a_two_rank_run_keeps_the_parameters_bitwise_identical_at_every_iteration(runs):
    _, first, _, _ = runs
    straight = [first[rank]["straight"] for rank in range(2)]
    assert len(straight[0]["digests"]) == workers.RUN_ITERATIONS
    assert straight[0]["digests"] == straight[1]["digests"]
    assert len(set(straight[0]["digests"])) == workers.RUN_ITERATIONS  # and they did change
    batch = workers.RUN["n_steps"] * workers.RUN["num_envs"]
    assert straight[0]["step"] == workers.RUN_ITERATIONS * batch * 2  # steps count over both ranks


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="core binding is Linux's sched_setaffinity")
def test_each_rank_of_a_machine_binds_itself_to_its_own_block_of_the_usable_cores(runs):
    _, first, _, _ = runs
    usable = sorted(os.sched_getaffinity(0))  # what the launched processes inherit
    per_rank = len(usable) // 2
    for rank in range(2):
        expected = usable[rank * per_rank : (rank + 1) * per_rank] if per_rank else usable
        assert first[rank]["straight"]["cores"] == expected


def test_default_threads_are_the_bound_block_else_the_usable_cores_over_the_local_processes(monkeypatch):
    parallel = object.__new__(distributed.DataParallel)  # no process group needed for the arithmetic
    parallel.local_world_size = 2
    assert parallel.default_threads({4, 5, 6}) == 3
    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # the machine's cores, of which this process may use 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert parallel.default_threads() == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert parallel.default_threads() == 1


@pytest.mark.parametrize(
    ("cores", "hosts", "expected"),
    [
        ([[0, 1], [0, 1]], ["a", "a"], [[0], [1]]),
        ([list(range(8))] * 2, ["a", "a"], [[0, 1, 2, 3], [4, 5, 6, 7]]),
        ([[0, 1, 2]] * 2, ["a", "a"], [[0], [1]]),
        ([[3]] * 2, ["a", "a"], [None, None]),  # fewer cores than processes
        ([[0, 1], [2, 3]], ["a", "a"], [[0, 1], [2, 3]]),  # the launcher placed them: each keeps its own
        ([[0, 1]] * 4, ["a", "a", "b", "b"], [[0], [1], [0], [1]]),  # two machines
    ],
    ids=["two cores", "eight cores", "three cores", "one core", "placed by the launcher", "two machines"],
)
def test_core_blocks_split_the_shared_usable_cores_of_a_machine_in_rank_order(cores, hosts, expected):
    peers = list(zip(hosts, cores, strict=True))
    blocks = [distributed.core_block(peers, rank) for rank in range(len(peers))]
    assert blocks == [None if block is None else set(block) for block in expected]


def test_an_interrupted_and_resumed_two_rank_run_is_bit_identical_to_a_straight_one(runs):
    _, first, resumed, _ = runs
    for rank in range(2):
        straight = first[rank]["straight"]
        assert first[rank]["interrupted"]["digests"] == straight["digests"][: workers.INTERRUPTED_AFTER]
        assert resumed[rank]["digests"] == straight["digests"][workers.INTERRUPTED_AFTER :]
        assert resumed[rank]["final"] == straight["final"]
    deterministic = ("global_step", "episodes", "mean_return", "policy_loss", "kl", "value_loss", "entropy")
    for got, expected in zip(resumed[0]["history"], first[0]["straight"]["history"], strict=True):
        assert {key: got[key] for key in deterministic} == {key: expected[key] for key in deterministic}


def test_rank_zero_alone_writes_and_one_process_evaluates_the_run_but_refuses_to_continue_it(runs):
    out, _, _, _ = runs
    run_dir = out / "straight"
    assert sorted(path.name for path in run_dir.iterdir()) == [
        "checkpoint.pt",
        "learning_curve.png",
        "progress.csv",
        "tensorboard",
    ]
    assert len((run_dir / "progress.csv").read_text().splitlines()) == 1 + workers.RUN_ITERATIONS
    agent = TRPO.load(run_dir)  # one process loads it to evaluate, and refuses to continue it
    try:
        assert agent.evaluate(1)["mean_return"] > 0
        files = sorted(path.stat().st_mtime_ns for path in run_dir.rglob("*"))
        with pytest.raises(ValueError, match="written by 2 process") as error:
            agent.learn(64, run_dir=run_dir)
        assert "\n" not in str(error.value) and "torchrun --nproc_per_node 2" in str(error.value)
        assert sorted(path.stat().st_mtime_ns for path in run_dir.rglob("*")) == files  # nothing written
    finally:
        agent.close()


def test_a_rank_that_raises_mid_iteration_stops_both_with_its_error_named(runs):
    results = runs[3]
    assert all(result.returncode != 0 for result in results)
    assert abs(results[0].seconds - results[1].seconds) < TIMEOUT  # rank 0 did not wait for a timeout
    assert "injected failure in the critic update" in results[1].stderr
    assert "rank 0 stopped because rank 1 failed with RuntimeError: injected failure" in results[0].stderr


def test_rank_seeds_are_distinct_and_rank_zero_keeps_the_seed():
    seeds = [rank_seed(7, rank) for rank in range(64)]
    assert seeds[0] == 7 and len(set(seeds)) == 64
    assert rank_seed(7, 1) != rank_seed(8, 1)


def test_ranks_with_different_configs_both_refuse_to_build_the_agent(runs):
    messages = [resumed["mismatch"] for resumed in runs[2]]
    assert messages[0] == messages[1]
    assert "config of rank(s) [1] differs from rank 0's" in messages[0] and "\n" not in messages[0]


def test_a_rank_that_cannot_reach_the_rendezvous_stops_within_the_timeout_with_one_line(tmp_path):
    env = {
        **os.environ,
        "RANK": "1",
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),  # nobody listens: rank 0 never came
        "TRUSTREGION_COLLECTIVE_TIMEOUT": "3",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
    }
    code = "from agents.common.distributed import data_parallel\ndata_parallel()"
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=90)
    assert result.returncode != 0 and time.monotonic() - start < 60
    assert "DistributedError: rank 1 could not join the process group at 127.0.0.1:" in result.stderr


def test_networks_on_cuda_get_nccl_beside_gloo(monkeypatch):
    assert process_group_backend("cpu") == "gloo"
    monkeypatch.setattr(distributed.dist, "is_nccl_available", lambda: True)
    assert process_group_backend("cuda") == process_group_backend(torch.device("cuda:1")) == "cpu:gloo,cuda:nccl"
    assert process_group_backend("cpu") == "gloo"
    monkeypatch.setattr(distributed.dist, "is_nccl_available", lambda: False)
    assert process_group_backend("cuda") == "gloo"  # a torch without nccl: gloo takes CUDA tensors too
