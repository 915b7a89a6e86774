"""One run over several processes (torchrun): which process this is, and every collective the runner uses.

A process that torchrun did not start never creates a process group: each collective here is then the identity,
so a single-process run neither needs nor touches `torch.distributed`. Everything that must be the same on every
rank (the latent bank, a decision to stop) goes through this one module.
"""

from __future__ import annotations

import atexit
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as torch_dist
from torch import nn

from schemas import UserError

T = TypeVar("T")
JOB_TAG = "metassl.torchrun_job"  # the torchrun job that started a run: a restarted worker group resumes it


class RankStopped(RuntimeError):
    """Another rank (rank 0) stopped the run; this rank stops with it instead of waiting in a collective."""


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run. `world_size == 1`: a plain single process, no process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    restart_count: int = 0  # torchrun's restarts of the worker group so far (--max-restarts)
    backend: str = "none"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- collectives: the identity on a single process ------------------------------------------------------

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any (a stop signal seen by one rank stops all, together)."""
        if not self.enabled:
            return flag
        value = torch.tensor([int(flag)])
        torch_dist.all_reduce(value, op=torch_dist.ReduceOp.MAX)
        return bool(value.item())

    def all_ranks(self, flags: torch.Tensor) -> torch.Tensor:
        """Element-wise AND over ranks of a bool vector (which iterations had a finite loss on every rank)."""
        if not self.enabled:
            return flags
        value = flags.to(device="cpu", dtype=torch.int32)
        torch_dist.all_reduce(value, op=torch_dist.ReduceOp.MIN)
        return value.bool()

    def mean_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Average `tensors` over ranks, in place, in one flat all-reduce; every rank gets the same bits."""
        if not self.enabled or not tensors:
            return
        dtype = tensors[0].dtype
        for tensor in tensors[1:]:
            dtype = torch.promote_types(dtype, tensor.dtype)
        flat = torch.cat([t.detach().reshape(-1).to(dtype) for t in tensors])
        torch_dist.all_reduce(flat)
        flat /= self.world_size
        for tensor, part in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
            tensor.copy_(part.view_as(tensor))

    def sum_(self, tensor: torch.Tensor) -> None:
        if self.enabled:
            torch_dist.all_reduce(tensor)

    def broadcast_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's value of `tensor` on every rank (in place); returns it."""
        if self.enabled:
            torch_dist.broadcast(tensor, src=0)
        return tensor

    def broadcast_object(self, value: T) -> T:
        """Rank 0's `value` on every rank (plain data and tensors, sent between this run's own processes)."""
        if not self.enabled:
            return value
        box = [value if self.is_main else None]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[return-value]

    def gather_objects(self, value: T) -> list[T]:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.enabled:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        torch_dist.all_gather_object(gathered, value)
        return gathered

    def gather_batches(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's `tensor` (the same shape on each), concatenated along dim 0 in rank order: the global batch."""
        if not self.enabled:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        torch_dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm statistics) on every rank, so that every rank evaluates and saves one model."""
        if self.enabled:
            for buffer in module.buffers():
                torch_dist.broadcast(buffer, src=0)

    def on_main(self, work: Callable[[], T]) -> T:
        """Run `work` on rank 0 alone (store queries, downloads) and give its result, or its failure, to every rank.

        A UserError on rank 0 is the same UserError everywhere; any other failure re-raises on rank 0 and stops
        the others with `RankStopped`, so no rank waits for an answer that will not come.
        """
        if not self.enabled:
            return work()
        outcome: tuple[str, Any] = ("ok", None)
        error: BaseException | None = None
        if self.is_main:
            try:
                outcome = ("ok", work())
            except UserError as exc:
                outcome, error = ("user", str(exc)), exc
            except BaseException as exc:
                outcome, error = ("failed", f"{type(exc).__name__}: {exc}"), exc
        kind, value = self.broadcast_object(outcome)
        if error is not None:
            raise error
        if kind == "user":
            raise UserError(value)
        if kind == "failed":
            raise RankStopped(f"rank 0 stopped the run ({value})")
        return value

    @contextmanager
    def one_per_node_first(self) -> Iterator[None]:
        """The block runs on each node's local rank 0 first (downloads, generator pretraining), then on the others,
        which find its result cached."""
        if self.enabled and self.local_rank != 0:
            torch_dist.barrier()
        yield
        if self.enabled and self.local_rank == 0:
            torch_dist.barrier()

    def identical(self, tensors: Sequence[torch.Tensor]) -> bool:
        """Whether every rank holds bit-identical `tensors` (one digest per rank, compared)."""
        digest = hashlib.sha256()
        for tensor in tensors:
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return len(set(self.gather_objects(digest.hexdigest()))) == 1


SINGLE = Distributed()
_current: Distributed | None = None


def rank_seed(seed: int, rank: int) -> int:
    """Rank r's own RNG stream: rank 0 keeps the recipe's seed (so one process runs as it always did)."""
    if rank == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"metassl:{seed}:rank{rank}".encode()).digest()[:7], "big")


def _environment() -> Distributed:
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    return Distributed(
        rank=int(env.get("RANK", "0")),
        world_size=world,
        local_rank=int(env.get("LOCAL_RANK", "0")),
        restart_count=int(env.get("TORCHELASTIC_RESTART_COUNT", "0")),
    )


def current() -> Distributed:
    """This process's `Distributed`; under torchrun the process group is joined on first use (NCCL for CUDA
    tensors where available, gloo for CPU ones). Without torchrun: `SINGLE`, and no process group."""
    global _current
    if _current is not None:
        return _current
    found = _environment()
    if not found.enabled:
        _current = found
        return found
    cuda = torch.cuda.is_available() and torch_dist.is_nccl_available()
    backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(found.local_rank)
    if not torch_dist.is_initialized():
        timeout = timedelta(minutes=30)
        store = _attempt_store(found, timeout)
        torch_dist.init_process_group(
            backend, store=store, rank=found.rank, world_size=found.world_size, timeout=timeout
        )
        atexit.register(stop)  # leave the group when the process ends, however the run ended
    _current = Distributed(found.rank, found.world_size, found.local_rank, found.restart_count, backend)
    return _current


def _attempt_store(found: Distributed, timeout: timedelta) -> torch_dist.Store:
    """torchrun's store (MASTER_ADDR:MASTER_PORT, as `env://` finds it), under a prefix of this attempt of the worker
    group: after a restart (--max-restarts) the keys of the dead attempt are still in the agent's store, and a
    process group built on them waits for peers that are gone."""
    env = os.environ
    host, port = env["MASTER_ADDR"], int(env["MASTER_PORT"])
    if env.get("TORCHELASTIC_USE_AGENT_STORE") == str(True):  # the agent serves it: every rank is a client
        store = torch_dist.TCPStore(host, port, found.world_size, is_master=False, timeout=timeout)
    else:
        store = torch_dist.TCPStore(
            host, port, found.world_size, is_master=found.rank == 0, timeout=timeout, multi_tenant=True
        )
    return torch_dist.PrefixStore(f"metassl/attempt_{found.restart_count}", store)


def stop() -> None:
    """Leave the process group (at the end of the process's run)."""
    global _current
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
    _current = None


def job_key() -> str:
    """Names the torchrun job across its worker-group restarts: its rendezvous id when one was given (`--standalone`
    draws one; give `--rdzv-id` with several nodes), else the agent process (torchrun itself) on this host."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if run_id and run_id != "none":
        return run_id
    agent = os.getppid()
    try:
        started = Path(f"/proc/{agent}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except OSError:
        started = ""
    return f"{os.uname().nodename}:{agent}:{started}"


def sync_batchnorm_supported(device: torch.device, dist: Distributed) -> bool:
    """SyncBatchNorm needs several ranks and GPU tensors; on the CPU (gloo) each rank normalizes its own batch."""
    return dist.enabled and device.type == "cuda"


def wrap(classifier: nn.Module, device: torch.device, dist: Distributed, sync_batchnorm: bool) -> nn.Module:
    """The phase (ii) handle: DistributedDataParallel around `classifier` (the raw module every other part keeps).

    DDP broadcasts rank 0's parameters and buffers now, and its BatchNorm buffers before each forward.
    """
    if not dist.enabled:
        return classifier
    if sync_batchnorm and sync_batchnorm_supported(device, dist):
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(classifier)
        assert converted is classifier  # the classifier is not a BatchNorm itself: its children were replaced
    device_ids = [device.index if device.index is not None else dist.local_rank] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(classifier, device_ids=device_ids)


@contextmanager
def local_batchnorm(module: nn.Module) -> Iterator[None]:
    """SyncBatchNorm layers normalize with this rank's batch inside the block (phase (i): the double backward
    of the virtual step needs plain batch norm, which SyncBatchNorm's collective backward is not)."""
    synced = [m for m in module.modules() if isinstance(m, nn.SyncBatchNorm)]
    if not synced:
        yield
        return
    alone = _singleton_group()
    previous = [m.process_group for m in synced]
    for layer in synced:
        layer.process_group = alone
    try:
        yield
    finally:
        for layer, group in zip(synced, previous, strict=True):
            layer.process_group = group


_singleton: Any = None


def _singleton_group() -> Any:
    """A process group of this rank alone (made once, collectively, the first time the meta phase needs it)."""
    global _singleton
    if _singleton is None:
        _singleton, _ = torch_dist.new_subgroups(group_size=1)
    return _singleton


def launch(nproc: int, cli_args: list[str]) -> int:
    """`torchrun --standalone --nproc-per-node NPROC -m runner.cli CLI_ARGS` in this process (torchrun's own code),
    returning the exit code of the workers (rank 0's one-line error, or 130 after a stop by signal, stays theirs)."""
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    for name in ("torch.distributed.run", "torch.distributed.elastic"):  # the workers say what went wrong
        logging.getLogger(name).setLevel(logging.CRITICAL)
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "runner.cli", *cli_args])
    try:
        run(args)
    except ChildFailedError as exc:
        failures = exc.failures
        code = failures[min(failures)].exitcode
        return code if code > 0 else 1
    except SignalException:
        return 130
    return 0
