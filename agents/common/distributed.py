"""Data-parallel TRPO and NPG on ``torch.distributed``: ranks, the reduction hook, merged statistics.

Every process (rank) steps its own environments and holds a shard of the global batch; the
networks are the same on every rank and stay so, because every quantity an update depends on is
reduced over the ranks before it is used (docs/distributed.md):

* the policy gradient, every curvature product and the closure's loss and KL, through the
  optimizer's ``reduce=`` hook (:meth:`DataParallel.reduce`): the shard-weighted sum
  ``Σ_r (n_r / N) x_r``, which is the mean over the global batch of ``N = Σ_r n_r`` transitions
  whatever the shard sizes ``n_r`` (a sum of numerators and counts, not a mean of means);
* the advantage normalisation's mean and standard deviation, over the global batch;
* the critic's gradient at every minibatch (sharded, every rank taking the same number of
  minibatches), or its data: every rank fits it on the gathered global batch with a shuffle all
  ranks draw alike (replicated);
* the observation and reward normalisation statistics: each rank's count, mean and ``M2`` since
  the last merge, merged exactly (Chan et al.'s parallel formula) once per rollout;
* the episode statistics of the logs.

A process joins data-parallel training when a process group is initialised with more than one
rank, or when ``torchrun`` (or anything that sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``) launched it; :func:`data_parallel` then initialises the group: gloo on the CPU,
and for networks on a GPU ``"cpu:gloo,cuda:nccl"``, so that CUDA tensors (gradients, curvature
products, critic gradients) go through nccl and CPU ones (statistics, checksums) through gloo.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import math
import os
import socket
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from gymnasium.wrappers.utils import RunningMeanStd, update_mean_var_count_from_moments
from torch import Tensor

from trustregion import Curvature, LinearOperator
from trustregion.curvature import StepProblem

TIMEOUT_VARIABLE = "TRUSTREGION_COLLECTIVE_TIMEOUT"
"""Environment variable: seconds a collective waits for the other ranks before it fails (default 600)."""
DEFAULT_TIMEOUT_SECONDS = 600
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_FAILURE_KEY = "trustregion/failure"
_FAILURE_WAIT = timedelta(seconds=5)
GATHER_REDUCE_BYTES = 1 << 20
"""Up to this many bytes over all ranks, :meth:`DataParallel.all_reduce` gathers and reduces locally."""

T = TypeVar("T")


class DistributedError(RuntimeError):
    """A data-parallel run cannot go on: another rank failed, a collective timed out, or ranks disagree."""


def collective_timeout() -> timedelta:
    """How long a collective waits for the other ranks (:data:`TIMEOUT_VARIABLE`, default 600 s)."""
    text = os.environ.get(TIMEOUT_VARIABLE, str(DEFAULT_TIMEOUT_SECONDS))
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"{TIMEOUT_VARIABLE} must be a number of seconds > 0 (got {text!r}); e.g. 600")
    return timedelta(seconds=seconds)


def launched() -> bool:
    """Whether a launcher (``torchrun``, SLURM with the variables set) started this process as one of several."""
    return all(name in os.environ for name in LAUNCH_VARIABLES) and os.environ["WORLD_SIZE"] != "1"


def data_parallel(device: str | torch.device = "cpu") -> DataParallel | None:
    """This process's data-parallel context, initialising the process group from a launcher if needed.

    ``None`` in a single process (no group, or a group of one rank). A group the caller initialised
    (Ray Train, a script's own ``init_process_group``) is used as it is. ``device`` is the
    networks': on CUDA the group gets nccl for CUDA tensors beside gloo for CPU ones. A group
    initialised here is destroyed at the interpreter's exit (``atexit``), before the backend's
    threads would outlive the interpreter and abort the process.
    """
    if not dist.is_available():
        return None
    if not dist.is_initialized():
        if not launched():
            return None
        _initialise(process_group_backend(device))
        atexit.register(release_process_group)
    if dist.get_world_size() == 1:
        return None
    return DataParallel()


def rank_device(device: torch.device, parallel: DataParallel | None) -> torch.device:
    """``device`` for this rank: a bare ``cuda`` becomes ``cuda:LOCAL_RANK`` in a data-parallel run (one GPU each)."""
    if parallel is None or device.type != "cuda" or device.index is not None:
        return device
    index = int(os.environ.get("LOCAL_RANK", parallel.rank)) % max(1, torch.cuda.device_count())
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def process_group_backend(device: str | torch.device) -> str:
    """``"gloo"`` for networks on the CPU; ``"cpu:gloo,cuda:nccl"`` for networks on CUDA (where nccl exists)."""
    if torch.device(device).type == "cuda" and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def _initialise(backend: str) -> None:
    timeout = collective_timeout()
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        dist.init_process_group(backend, timeout=timeout)
    except (RuntimeError, ValueError) as error:
        raise DistributedError(
            f"rank {os.environ['RANK']} could not join the process group at {where} within "
            f"{timeout.total_seconds():.0f} s ({_first_line(error)}); check that every rank uses the same "
            "rendezvous address and port and that it is reachable"
        ) from None


def release_process_group() -> None:
    """Destroy the default process group if one is initialised (at the end of a command-line run)."""
    if dist.is_available() and dist.is_initialized():
        with suppress(RuntimeError):
            dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s environments, action noise and minibatch shuffles.

    Rank 0 keeps ``seed`` (a one-process group runs as a single process does); the others get a
    32-bit value drawn from ``numpy.random.SeedSequence((seed, rank))``, distinct per rank.
    """
    if rank == 0:
        return seed
    return int(np.random.SeedSequence((seed, rank)).generate_state(1, np.uint32)[0])


def shared_seed(seed: int, iteration: int) -> int:
    """A seed every rank derives alike for ``iteration`` (the replicated critic's shuffles)."""
    return int(np.random.SeedSequence((seed, iteration, 1)).generate_state(1, np.uint32)[0])


def config_digest(config: dict[str, Any]) -> str:
    """A SHA-256 of a config as sorted JSON: equal on every rank iff the configs are equal."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=list).encode()).hexdigest()


def parameter_checksum(modules: Iterable[torch.nn.Module]) -> int:
    """A 63-bit hash of the parameters' bytes: equal on two ranks iff (almost surely) bitwise equal."""
    digest = hashlib.blake2b(digest_size=8)
    for module in modules:
        for parameter in module.parameters():
            digest.update(parameter.detach().cpu().contiguous().numpy().tobytes())
    return int.from_bytes(digest.digest(), "little") >> 1


class TrackedRunningMeanStd(RunningMeanStd):
    """gymnasium's ``RunningMeanStd`` that also keeps the count, mean and variance of what it saw since a merge.

    The running statistics go on as in a single process (each rank normalises with what it has
    seen); :meth:`DataParallel.merge_statistics` then folds every rank's ``since_merge`` into the
    statistics of the last merge.
    """

    def __init__(self, rms: RunningMeanStd) -> None:
        self.mean, self.var, self.count = np.array(rms.mean, copy=True), np.array(rms.var, copy=True), rms.count
        self.restart()

    def restart(self) -> None:
        """Take the current statistics as merged: nothing seen since."""
        self.merged = (np.array(self.mean, copy=True), np.array(self.var, copy=True), self.count)
        self.since_merge = (np.zeros_like(self.mean), np.zeros_like(self.var), 0.0)

    def update_from_moments(self, batch_mean: Any, batch_var: Any, batch_count: Any) -> None:
        super().update_from_moments(batch_mean, batch_var, batch_count)
        self.since_merge = update_mean_var_count_from_moments(*self.since_merge, batch_mean, batch_var, batch_count)


def merge_moments(
    start: tuple[np.ndarray, np.ndarray, float], parts: Iterable[tuple[np.ndarray, np.ndarray, float]]
) -> tuple[np.ndarray, np.ndarray, float]:
    """``start`` merged with each part ``(mean, var, count)`` in turn (Chan et al.: counts, means and ``M2`` add)."""
    mean, var, count = start
    for part_mean, part_var, part_count in parts:
        if part_count > 0:
            mean, var, count = update_mean_var_count_from_moments(mean, var, count, part_mean, part_var, part_count)
    return mean, var, count


class ScaledCurvature(Curvature):
    """``c · A``: a rank's Fisher on its subsample, weighted by its share of the global Fisher batch."""

    def __init__(self, curvature: Curvature, scale: float) -> None:
        self.curvature, self.scale = curvature, scale
        self.needs_loss_graph = curvature.needs_loss_graph

    def build(self, problem: StepProblem) -> LinearOperator:
        scale = self.scale
        return self.curvature.build(problem).map(lambda product: product * scale)


def usable_cores() -> list[int]:
    """The cores this process may run on (``os.sched_getaffinity``: a container's CPU set or ``taskset``
    restricts them), or all the machine's where that is not known."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def core_block(peers: list[tuple[str, list[int]]], rank: int) -> set[int] | None:
    """The cores ``rank`` has to itself, given every rank's host name and usable cores (``peers``).

    The processes of one machine split its usable cores into equal blocks, in rank order. Where
    their launcher gave them different cores, each keeps its own. ``None`` (stay unbound, sharing)
    when the machine has fewer usable cores than processes.
    """
    host, usable = peers[rank]
    neighbours = [other for other, (other_host, _) in enumerate(peers) if other_host == host]
    if any(peers[other][1] != usable for other in neighbours):
        return set(usable)  # placed by the launcher already
    per_rank = len(usable) // len(neighbours)
    if per_rank == 0:
        return None
    start = neighbours.index(rank) * per_rank
    return set(usable[start : start + per_rank])


def bind_process(cores: set[int]) -> None:
    """Bind every thread of this process to ``cores``; threads and processes started later inherit it (Linux)."""
    for thread in _threads():
        with suppress(ProcessLookupError):  # a thread that ended since it was listed
            os.sched_setaffinity(thread, cores)


def _threads() -> list[int]:
    """This process's thread ids (from Linux's ``/proc``), or ``[0]``, the calling thread, where they are not listed."""
    try:
        return [int(name) for name in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


class DataParallel:
    """The ranks of a data-parallel run and every reduction the agents make over them (docs/distributed.md)."""

    def __init__(self) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
        self.weight = 1.0 / self.world_size
        """This rank's share ``n_r / N`` of the current policy step's batch (:meth:`start_policy_step`)."""
        self.collectives = 0
        """Collectives run so far (with :attr:`collective_bytes` and :attr:`collective_seconds`: what they cost)."""
        self.collective_bytes = 0
        """Bytes this rank contributed to tensor collectives so far."""
        self.collective_seconds = 0.0
        """Wall-clock time spent inside collectives so far, waiting for the other ranks included."""
        self._last_costs = (0, 0, 0.0)

    # ------------------------------------------------------------------ start-up
    def default_threads(self, block: set[int] | None = None) -> int:
        """torch threads per process: one per core of its own ``block``, else its share of the :func:`usable_cores`.

        The usable cores are then shared by the processes on this machine; at least 1.
        """
        if block:
            return len(block)
        return max(1, len(usable_cores()) // max(1, self.local_world_size))

    def bind_cores(self) -> set[int] | None:
        """Bind this process (every thread it has) to its block of its machine's cores; the block, or ``None``.

        The ranks exchange their host names and :func:`usable_cores`, and each takes its
        :func:`core_block`: a process its launcher placed keeps its cores; where the block is
        ``None``, or off Linux, the process is left where it is. Threads and processes started
        later inherit the binding.
        """
        if not hasattr(os, "sched_setaffinity"):
            return None
        usable = usable_cores()
        block = core_block(self.all_gather_object((socket.gethostname(), usable)), self.rank)
        if block is not None and block != set(usable):
            bind_process(block)
        return block

    def check_config(self, config: dict[str, Any]) -> None:
        """Refuse, on every rank, configs that differ between ranks (compared by their digests)."""
        digests = self.all_gather_object(config_digest(config))
        differ = [rank for rank, digest in enumerate(digests) if digest != digests[0]]
        if differ:
            raise ValueError(
                f"the config of rank(s) {differ} differs from rank 0's: every rank must run the same command "
                "with the same flags (and resume the same run directory)"
            )

    def broadcast_modules(self, *modules: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank."""
        tensors = [t for module in modules for t in (*module.parameters(), *module.buffers())]
        with torch.no_grad():
            flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
            self._run(lambda: dist.broadcast(flat, src=0))
            offset = 0
            for tensor in tensors:
                tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
                offset += tensor.numel()

    # ------------------------------------------------------------------ the policy step
    def start_policy_step(self, advantages: Tensor, normalize: bool) -> Tensor:
        """Set this rank's weight ``n_r / N`` in the step's reductions; return the advantages, normalised if asked.

        One all-reduce of the counts and sums; with ``normalize``, a second one of the squared deviations
        from the global mean: ``(Â - mean) / (std + 1e-8)`` with the whole batch's unbiased standard deviation.
        """
        count = len(advantages)
        local = torch.tensor([float(count), advantages.sum(dtype=torch.float64).item()], dtype=torch.float64)
        total_count, total = self.all_reduce(local).tolist()
        self.weight = count / total_count if total_count else 0.0
        if not normalize or total_count <= 1:
            return advantages
        centred = advantages - total / total_count
        squares = self.all_reduce(centred.square().sum(dtype=torch.float64).reshape(1)).item()
        return centred / (math.sqrt(squares / (total_count - 1)) + 1e-8)

    def reduce(self, tensor: Tensor) -> Tensor:
        """The optimizer's ``reduce=``: ``Σ_r (n_r / N) x_r``, the global-batch mean of a per-shard mean.

        One all-reduce of one flat tensor per gradient, curvature product and closure evaluation.
        """
        return self.all_reduce(tensor * self.weight)

    def fisher_share(self, curvature: Curvature, count: int) -> Curvature:
        """A subsample's Fisher weighted so that the reduced product is the mean over every rank's subsample.

        The reduction weighs each rank by its batch share ``n_r / N``; the Fisher of ``m_r``
        subsampled states needs ``m_r / M`` instead, so it is scaled by ``(m_r / M) / (n_r / N)``
        inside the damping (which the shares, summing to 1, leave as it is).
        """
        total = self.all_reduce(torch.tensor([float(count)], dtype=torch.float64)).item()
        if self.weight == 0.0:
            return ScaledCurvature(curvature, 0.0)
        return ScaledCurvature(curvature, (count / total) / self.weight)

    # ------------------------------------------------------------------ the critic
    def update_value(
        self,
        critic: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        data: tuple[Tensor, Tensor],
        epochs: int,
        minibatch_size: int,
        generator: torch.Generator,
    ) -> float:
        """``epochs`` epochs of minibatch steps on ``(V(s) - R̂)²`` with the gradient of the global minibatch.

        Every rank splits its shard into the same number of minibatches (the most any rank needs at
        ``minibatch_size``); each step's gradient and loss are the global minibatch's means.
        """
        obs, returns = data
        size = len(obs)
        count = self.all_reduce(torch.tensor([float(-(-size // minibatch_size))]), op=dist.ReduceOp.MAX)
        minibatches = max(1, int(count.item()))
        losses: list[float] = []
        for _ in range(epochs):
            order = torch.randperm(size, generator=generator)
            losses = [
                self._value_step(critic, optimizer, obs[part], returns[part])
                for part in order.tensor_split(minibatches)
            ]
        return float(np.mean(losses)) if losses else math.nan

    def _value_step(
        self, critic: torch.nn.Module, optimizer: torch.optim.Optimizer, obs: Tensor, target: Tensor
    ) -> float:
        params = [p for p in critic.parameters() if p.requires_grad]
        optimizer.zero_grad(set_to_none=True)
        count = len(obs)
        loss = F.mse_loss(critic(obs), target) if count else None
        if loss is not None:
            loss.backward()
        like = {"dtype": params[0].dtype, "device": params[0].device}
        parts = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), **like) for p in params]
        local_loss = loss.detach().reshape(1) if loss is not None else torch.zeros(1, **like)
        flat = torch.cat([*parts, local_loss, torch.ones(1, **like)]) * count
        flat = self.all_reduce(flat)
        total = flat[-1]
        flat = flat / total
        offset = 0
        for parameter in params:
            parameter.grad = flat[offset : offset + parameter.numel()].view_as(parameter).clone()
            offset += parameter.numel()
        optimizer.step()
        return flat[-2].item()

    # ------------------------------------------------------------------ statistics
    def track_statistics(self, env_stack: Any) -> None:
        """Put trackers in place of the normalisation wrappers' running statistics (their values kept)."""
        if env_stack.obs_normalizer is not None:
            env_stack.obs_normalizer.obs_rms = TrackedRunningMeanStd(env_stack.obs_normalizer.obs_rms)
        if env_stack.reward_normalizer is not None:
            env_stack.reward_normalizer.return_rms = TrackedRunningMeanStd(env_stack.reward_normalizer.return_rms)

    def restart_statistics(self, env_stack: Any) -> None:
        """Take the statistics as they are (just loaded from a checkpoint) as merged."""
        for rms in _trackers(env_stack):
            rms.restart()

    def merge_statistics(self, env_stack: Any) -> None:
        """Fold every rank's statistics since the last merge into the merged ones, in rank order, on every rank.

        ``count``, ``mean`` and ``M2 = var · count`` merge exactly; every rank ends with the
        statistics a single process would have after seeing all the ranks' data.
        """
        for rms in _trackers(env_stack):
            mean, var, count = rms.since_merge
            gathered = self.all_gather(torch.from_numpy(np.concatenate([[count], np.ravel(mean), np.ravel(var)])))
            parts = [_moments(row.numpy(), np.shape(rms.mean)) for row in gathered]
            rms.mean, rms.var, rms.count = merge_moments(rms.merged, parts)
            rms.restart()

    def episode_statistics(self, collector: Any) -> dict[str, Any]:
        """Episodes finished on all ranks and the mean return and length over every rank's recent window."""
        returns, lengths = list(collector.recent_returns), list(collector.recent_lengths)
        local = [collector.episodes, sum(returns), len(returns), sum(lengths), len(lengths)]
        episodes, return_sum, return_count, length_sum, length_count = self.all_reduce(
            torch.tensor(local, dtype=torch.float64)
        ).tolist()
        return {
            "episodes": int(episodes),
            "mean_return": return_sum / return_count if return_count else math.nan,
            "mean_length": length_sum / length_count if length_count else math.nan,
        }

    def check_identical(self, modules: Iterable[torch.nn.Module], iteration: int) -> None:
        """Stop on every rank, naming them, when the ranks' parameters are no longer bitwise equal."""
        sums = self.all_gather(torch.tensor([parameter_checksum(modules)], dtype=torch.int64))
        values = [int(value) for value in torch.cat(sums).tolist()]
        differ = [rank for rank, value in enumerate(values) if value != values[0]]
        if differ:
            raise DistributedError(
                f"the parameters of rank(s) {differ} differ from rank 0's after iteration {iteration}: the ranks "
                "diverged (a non-deterministic operation, or a rank that changed its networks outside the update); "
                "resume from the last checkpoint"
            )

    # ------------------------------------------------------------------ agreement and objects
    def any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` is true on at least one rank (so that every rank takes the same decision)."""
        return bool(self.all_reduce(torch.tensor([int(flag)]), op=dist.ReduceOp.MAX).item())

    def gather_to_rank_zero(self, value: T) -> list[T] | None:
        """Every rank's ``value`` in rank order on rank 0; ``None`` on the others."""
        gathered: list[T] | None = [None] * self.world_size if self.rank == 0 else None  # type: ignore[list-item]
        self._run(lambda: dist.gather_object(value, gathered, dst=0))
        return gathered

    def from_rank_zero(self, make: Callable[[], T]) -> T:
        """``make()`` run on rank 0 and its result, or the exception it raised, given to every rank."""
        payload: list[Any] = [None]
        if self.rank == 0:
            try:
                payload[0] = (True, make())
            except Exception as error:
                payload[0] = (False, error)
        self._run(lambda: dist.broadcast_object_list(payload, src=0))
        succeeded, value = payload[0]
        if not succeeded:
            raise value
        return value

    def all_gather_object(self, value: T) -> list[T]:
        gathered: list[Any] = [None] * self.world_size
        self._run(lambda: dist.all_gather_object(gathered, value))
        return gathered

    # ------------------------------------------------------------------ collectives and failures
    def collective_costs(self) -> dict[str, float]:
        """Collectives, bytes and seconds inside them since the last call (the logs' per-iteration costs)."""
        now = (self.collectives, self.collective_bytes, self.collective_seconds)
        last, self._last_costs = self._last_costs, now
        names = ("collectives", "collective_bytes", "collective_seconds")
        return {name: value - before for name, value, before in zip(names, now, last, strict=True)}

    def all_reduce(self, tensor: Tensor, op: Any = None) -> Tensor:
        """A reduced copy of ``tensor``: the sum over the ranks, or the maximum with ``op=ReduceOp.MAX``.

        A small tensor (every rank's copy together at most :data:`GATHER_REDUCE_BYTES`) is gathered
        in one collective and reduced here, in rank order: one round of messages instead of the
        ring's ``2 (world size - 1)``, which is what a latency-bound all-reduce costs.
        """
        op = dist.ReduceOp.SUM if op is None else op
        if op not in (dist.ReduceOp.SUM, dist.ReduceOp.MAX):
            raise ValueError(f"op must be ReduceOp.SUM or ReduceOp.MAX (got {op})")
        if tensor.numel() * tensor.element_size() * self.world_size > GATHER_REDUCE_BYTES:
            reduced = tensor.clone()
            self.collective_bytes += reduced.numel() * reduced.element_size()
            self._run(lambda: dist.all_reduce(reduced, op=op))
            return reduced
        rows = self.all_gather_flat(tensor)
        return (rows.amax(dim=0) if op == dist.ReduceOp.MAX else rows.sum(dim=0)).view_as(tensor)

    def all_gather_flat(self, tensor: Tensor) -> Tensor:
        """Every rank's ``tensor`` flattened, one row per rank in rank order (same shape on every rank)."""
        flat = tensor.detach().reshape(-1).contiguous()
        rows = flat.new_empty(self.world_size * flat.numel())
        self.collective_bytes += flat.numel() * flat.element_size()
        self._run(lambda: dist.all_gather_single(rows, flat))
        return rows.view(self.world_size, -1)

    def gather_rows(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """Every rank's rows of each tensor, concatenated in rank order; shards may differ in length.

        Two collectives whatever the number of tensors: the shard lengths, then all the columns
        side by side, padded to the longest shard (carried in a dtype that holds each exactly).
        """
        length = len(tensors[0])
        lengths = [int(n) for n in self.all_gather_flat(torch.tensor([length])).reshape(-1).tolist()]
        columns = [tensor.reshape(length, -1) for tensor in tensors]
        carrier = torch.cat(columns, dim=1)
        padded = F.pad(carrier, (0, 0, 0, max(lengths) - length))
        rows = self.all_gather_flat(padded).view(self.world_size, max(lengths), -1)
        whole = torch.cat([rows[rank, :count] for rank, count in enumerate(lengths)])
        parts = whole.split([column.shape[1] for column in columns], dim=1)
        return tuple(
            part.to(tensor.dtype).reshape(-1, *tensor.shape[1:]) for part, tensor in zip(parts, tensors, strict=True)
        )

    def all_gather(self, tensor: Tensor) -> list[Tensor]:
        gathered = [torch.empty_like(tensor) for _ in range(self.world_size)]
        self.collective_bytes += tensor.numel() * tensor.element_size()
        self._run(lambda: dist.all_gather(gathered, tensor.contiguous()))
        return gathered

    def publish_failure(self, error: BaseException) -> None:
        """Leave this rank's own error where the other ranks read it when their collectives fail."""
        if isinstance(error, DistributedError):
            return
        store = _store()
        if store is None:
            return
        with suppress(RuntimeError):
            if not store.check([_FAILURE_KEY]):
                store.set(_FAILURE_KEY, f"rank {self.rank} failed with {type(error).__name__}: {_first_line(error)}")

    def _run(self, collective: Callable[[], Any]) -> None:
        start = time.perf_counter()
        try:
            collective()
        except RuntimeError as error:
            raise self._peer_failure(error) from error
        finally:
            self.collectives += 1
            self.collective_seconds += time.perf_counter() - start

    def _peer_failure(self, error: BaseException) -> DistributedError:
        store = _store()
        try:
            if store is not None:
                store.wait([_FAILURE_KEY], _FAILURE_WAIT)
                failure = store.get(_FAILURE_KEY).decode()
                return DistributedError(f"rank {self.rank} stopped because {failure}")
        except RuntimeError:
            pass
        seconds = collective_timeout().total_seconds()
        return DistributedError(
            f"rank {self.rank} stopped: a collective failed ({_first_line(error)}); another rank stopped, or did not "
            f"reach the collective within the timeout ({seconds:.0f} s, {TIMEOUT_VARIABLE}); see its error"
        )


def _trackers(env_stack: Any) -> list[TrackedRunningMeanStd]:
    found = []
    if env_stack.obs_normalizer is not None:
        found.append(env_stack.obs_normalizer.obs_rms)
    if env_stack.reward_normalizer is not None:
        found.append(env_stack.reward_normalizer.return_rms)
    return [rms for rms in found if isinstance(rms, TrackedRunningMeanStd)]


def _moments(row: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, float]:
    size = int(np.prod(shape)) if shape else 1
    return row[1 : 1 + size].reshape(shape), row[1 + size :].reshape(shape), float(row[0])


def _store() -> Any:
    try:
        return dist.distributed_c10d._get_default_store()
    except (RuntimeError, AttributeError, ValueError):
        return None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return " ".join(lines[0].split()) if lines else type(error).__name__
