"""The ``torch.distributed`` plumbing under :mod:`tutorial_lib.unlearning.distributed_fisher`: join the
process group torchrun describes (:func:`init_distributed`; without one, everything runs as a single
process), rank and world size (:func:`world_info`), contiguous shards of items and batch rows in rank
order (:func:`shard`, :func:`shard_batch`, :func:`shard_bounds`), small collectives (:func:`all_reduce`,
:func:`all_gather_small`, :func:`gather_rows`, :func:`check_replicated`), a failure on one rank raised on
every rank before the next collective (:func:`agree`), and :func:`run_distributed`, which runs a
function in several fresh local processes (gloo on the CPU, nccl with one GPU per rank) and returns
each rank's result: what the tests use.

Notebook 10, section 5 ("Scaling up").
"""
from __future__ import annotations

import multiprocessing as mp
import os
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.distributed as dist


# ----------------------------------------------------------------------------------- process group
def world_info(group=None) -> tuple[int, int]:
    """(rank, world size) in ``group`` (default: the whole group); (0, 1) when no process group is
    initialised and ``group`` is None. Notebook 10, "Scaling out"."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    if group is not None:
        raise RuntimeError(
            f"a process group {group!r} was passed but torch.distributed is not initialised; "
            "call init_distributed() (or launch with torchrun) first"
        )
    return 0, 1


def require_process_group(what: str = "this operation") -> tuple[int, int]:
    """(rank, world size), or a clear error when no process group is initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"{what} needs an initialised torch.distributed process group: launch with "
            "`torchrun --nproc_per_node N ...` and call init_distributed(), or use run_distributed()"
        )
    return dist.get_rank(), dist.get_world_size()


@dataclass(frozen=True)
class ProcessInfo:
    """This process in its group: ``rank``, ``world`` size and its ``device``."""

    rank: int
    world: int
    device: torch.device


def init_distributed(device: str = "cpu", timeout_s: float = 300.0) -> ProcessInfo:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT``); returns a :class:`ProcessInfo` (rank, world size, device).

    ``device`` "cpu" uses the gloo backend; "cuda" uses nccl with one GPU per local rank
    (``cuda:LOCAL_RANK``). Without ``WORLD_SIZE`` in the environment no group is created and the
    result is rank 0 of 1: the same code then runs as one process. Notebook 10, "Scaling out"."""
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if "WORLD_SIZE" not in os.environ:
        return ProcessInfo(0, 1, torch.device(device))
    try:
        rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    except (KeyError, ValueError) as err:
        raise ValueError(f"WORLD_SIZE is set but RANK/LOCAL_RANK are missing or not integers ({err}); launch with torchrun") from err
    if kind == "cuda":
        if local >= torch.cuda.device_count():
            raise ValueError(f"local rank {local} has no GPU: only {torch.cuda.device_count()} visible")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group("nccl", rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s), device_id=dev)
    else:
        dev = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    return ProcessInfo(rank, world, dev)


def shutdown_distributed(barrier: bool = True) -> None:
    """Leave the process group, after a barrier so that no rank tears it down while another still
    uses it (pass ``barrier=False`` after an error: the others may never arrive); a no-op without a
    group. Notebook 10, "Scaling out"."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if barrier:
            dist.barrier()
    finally:
        dist.destroy_process_group()


def agree(error: BaseException | None, what: str, group=None, device="cpu") -> None:
    """Share whether this rank failed with every other rank; raise on all of them if any did
    (the failing rank re-raises its own error). A no-op in a single process."""
    rank, world = world_info(group)
    if world == 1:
        if error is not None:
            raise error
        return
    flags = torch.zeros(world, dtype=torch.int64, device=device)
    flags[rank] = int(error is not None)
    dist.all_reduce(flags, group=group)
    if error is not None:
        raise error
    bad = torch.nonzero(flags).flatten().tolist()
    if bad:
        raise RuntimeError(f"{what} failed on rank(s) {bad} (see the error there); stopped on rank {rank} as well")


def all_gather_small(values: list[float], group=None, device="cpu", dtype=torch.float64) -> torch.Tensor:
    """(world, len(values)): every rank's ``values``."""
    rank, world = world_info(group)
    local = torch.tensor(values, dtype=dtype, device=device)
    if world == 1:
        return local[None]
    out = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(out, local, group=group)
    return torch.stack(out)


def all_reduce(t: torch.Tensor, group=None) -> torch.Tensor:
    if world_info(group)[1] > 1:
        dist.all_reduce(t, group=group)
    return t


def check_replicated(tensor: torch.Tensor, what: str, group=None) -> None:
    """Raise unless ``tensor`` is the same on every rank (compared by its sum and sum of squares in
    float64: one tiny collective). Catches ranks built from different seeds or data."""
    t = tensor.detach().to(torch.float64)
    prints = all_gather_small([float(t.sum()), float(t.pow(2).sum()), float(t.numel())], group, tensor.device)
    if not bool((prints == prints[0]).all()):
        differ = [r for r in range(len(prints)) if not bool((prints[r] == prints[0]).all())]
        raise ValueError(f"{what} differs between ranks: rank(s) {differ} do not match rank 0 (same seed, model and inputs everywhere?)")


# ----------------------------------------------------------------------------------- sharding
def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of rank ``rank``'s contiguous share of ``n`` items; shares differ by at most one
    and follow rank order, so concatenating them in rank order gives the items back."""
    if int(world) < 1:
        raise ValueError(f"world size must be >= 1, got {world}")
    if not 0 <= int(rank) < int(world):
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    if int(n) < 0:
        raise ValueError(f"the number of items must be >= 0, got {n}")
    return n * rank // world, n * (rank + 1) // world


def _rank_world(rank, world, group) -> tuple[int, int]:
    if (rank is None) != (world is None):
        raise ValueError(f"pass both rank and world or neither, got rank={rank}, world={world}")
    return world_info(group) if rank is None else (int(rank), int(world))


def shard(items: Sequence, rank: int | None = None, world: int | None = None, allow_empty: bool = False, group=None) -> list:
    """This rank's contiguous share of ``items`` (batches, texts, forget items), deterministic and in
    order. ``rank`` and ``world`` default to the process group's. With fewer items than ranks some
    rank would get nothing: an error unless ``allow_empty``. Notebook 10, "Scaling out"."""
    rank, world = _rank_world(rank, world, group)
    items = list(items)
    if len(items) < world and not allow_empty:
        raise ValueError(
            f"{len(items)} item(s) cannot be shared among {world} ranks: rank {world - 1} would get none; "
            f"give at least {world} (e.g. use smaller batches)"
        )
    start, stop = shard_bounds(len(items), rank, world)
    return items[start:stop]


def _rows(batch) -> int:
    return len(batch["input_ids"]) if isinstance(batch, dict) else len(batch[0])


def shard_batch(batch, rank: int | None = None, world: int | None = None, allow_empty: bool = False, group=None):
    """This rank's contiguous share of the rows of one batch (a dict of tensors or an (x, y) tuple)."""
    rank, world = _rank_world(rank, world, group)
    n = _rows(batch)
    if n < world and not allow_empty:
        raise ValueError(f"a batch of {n} row(s) cannot be shared among {world} ranks: rank {world - 1} would get none")
    start, stop = shard_bounds(n, rank, world)
    if isinstance(batch, dict):
        return {k: v[start:stop] for k, v in batch.items()}
    return tuple(v[start:stop] for v in batch)


def gather_rows(local: torch.Tensor, group=None) -> torch.Tensor:
    """Concatenate every rank's rows (their first dimension may differ) in rank order, on every rank.
    Only for small problems: the result is the full matrix. Notebook 10, "Scaling out"."""
    rank, world = world_info(group)
    if world == 1:
        return local
    sizes = all_gather_small([float(len(local))], group, local.device)[:, 0].long().tolist()
    most = max(sizes)
    padded = torch.zeros(most, *local.shape[1:], dtype=local.dtype, device=local.device)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


# ----------------------------------------------------------------------------------- launching
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to port 0 and read the one chosen)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _worker(fn, rank, world, port, backend, folder, args, threads, timeout_s):  # pragma: no cover - runs in a child
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    if threads is not None:
        torch.set_num_threads(threads)
    folder = Path(folder)
    try:
        if backend == "nccl":  # one GPU per rank
            torch.cuda.set_device(rank)
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
        out = fn(*args)
        shutdown_distributed()
        torch.save(out, folder / f"rank{rank}.tmp")
        os.replace(folder / f"rank{rank}.tmp", folder / f"rank{rank}.pt")
    except BaseException:
        # written before the group is torn down (which fails the others): the earliest file is the cause
        (folder / f"rank{rank}.err").write_text(f"{time.time()!r}\n{traceback.format_exc()}")
        shutdown_distributed(barrier=False)
        sys.exit(1)


def run_distributed(fn: Callable, world_size: int = 2, args: tuple = (), backend: str = "gloo", timeout_s: float = 300.0,
                    threads: int | None = 1) -> list:
    """Run ``fn(*args)`` in ``world_size`` fresh processes joined in one process group on this
    machine (``127.0.0.1``, a free port) and return what each rank's call returned, in rank order.

    ``fn`` must be importable by name (a module-level function) and return tensors, numbers, strings
    or lists, tuples and dicts of them (they travel through ``torch.save``). ``threads`` torch
    threads per process. If any rank fails, the others are stopped and its traceback is raised
    here. Notebook 10, "Scaling out"."""

    if int(world_size) < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="tutorial-dist-") as folder:
        port = free_port()
        procs = [ctx.Process(target=_worker, args=(fn, r, world_size, port, backend, folder, tuple(args), threads, timeout_s), daemon=True)
                 for r in range(world_size)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout_s
        done = [Path(folder) / f"rank{r}.pt" for r in range(world_size)]
        try:
            while any(p.is_alive() for p in procs):
                # a rank that stopped without its result failed: the others would wait for it forever
                if any(p.exitcode not in (None, 0) and not d.exists() for p, d in zip(procs, done)) or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
            for p in procs:
                p.join()
        folder = Path(folder)
        errors = sorted((float(when), int(f.stem[4:]), text)
                        for f in folder.glob("rank*.err") for when, text in [f.read_text().split("\n", 1)])
        if errors:
            _, rank, text = errors[0]
            others = [r for _, r, _ in errors[1:]]
            also = f" (then rank(s) {others} stopped too)" if others else ""
            raise RuntimeError(f"rank{rank} failed first in run_distributed{also}:\n{text}")
        missing = [r for r in range(world_size) if not (folder / f"rank{r}.pt").exists()]
        if missing:
            codes = [p.exitcode for p in procs]
            raise RuntimeError(f"rank(s) {missing} returned nothing within {timeout_s:g} s (exit codes {codes})")
        return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(world_size)]
