"""Run independent cached jobs in worker processes, each with a fixed number of torch threads.

The cache warm-up and the reproduction train many small models and run many studies that do not
depend on each other. On a CPU, one torch process with every core's threads spends much of a small
model's step waiting at OpenMP barriers; two one-thread processes on two cores train about 1.3-1.6×
as many models in the same time (``bench/threads_under_load.py``, README "Speed"), and a one-thread
process keeps its speed when another program takes a core, where a two-thread one slows 3-4×.

Every job is a module-level function with its arguments (:class:`Job`), so that it can be sent to a
spawned process; a job runs once every job it ``needs`` has finished (a study after the models it
loads, so that two workers never train the same checkpoint). With ``jobs=1`` everything runs in this
process, in order. Torch's thread count changes floating-point results in the last bits, so the
thread count is fixed per job (``threads``), not by the machine's load.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..core.profiles import progress_options


@dataclass(frozen=True)
class Job:
    """One unit of work: ``fn(*args, **kwargs)``; ``needs`` names jobs that must finish first."""

    label: str
    fn: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    needs: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobResult:
    """What a finished job reports: whether it found its result in the cache, and its wall time."""

    label: str
    cached: bool | None
    seconds: float

    def to_dict(self) -> dict:
        return {"item": self.label, "cached": self.cached, "seconds": self.seconds}


JOBS_ENV = "TUTORIAL_JOBS"


def default_jobs(device: str | None = None) -> int:
    """Worker processes for :func:`run_jobs`: ``$TUTORIAL_JOBS`` if set, else one per core, at most 4
    (memory), and 1 on a GPU."""
    if os.environ.get(JOBS_ENV):
        try:
            jobs = int(os.environ[JOBS_ENV])
        except ValueError:
            jobs = 0
        if jobs < 1:
            raise ValueError(f"${JOBS_ENV} must be a whole number of at least 1, got {os.environ[JOBS_ENV]!r}")
        return jobs
    on_gpu = str(device).startswith("cuda") if device is not None else torch.cuda.is_available()
    if on_gpu:
        return 1
    return max(1, min(4, os.cpu_count() or 1))


def _cached_flag(out) -> bool | None:
    """A model run's ``from_cache``, a study's ``(result, from_cache)`` second item, else None."""
    if hasattr(out, "from_cache"):
        return bool(out.from_cache)
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], bool):
        return out[1]
    return None


def _run_job(fn: Callable, args: tuple, kwargs: dict) -> tuple[bool | None, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return _cached_flag(out), time.perf_counter() - start


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _check(jobs: list[Job]) -> None:
    labels = [j.label for j in jobs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"job labels must be unique, got {labels}")
    for j in jobs:
        unknown = [n for n in j.needs if n not in labels[:labels.index(j.label)]]
        if unknown:
            raise ValueError(f"job {j.label!r} needs {unknown}, which are not jobs listed before it")


def run_jobs(jobs: list[Job], workers: int = 1, threads: int = 1, progress: bool = True,
             log: Callable[[str], None] | None = print) -> list[JobResult]:
    """Run ``jobs`` (each after those it ``needs``), in ``workers`` spawned processes with ``threads``
    torch threads each, or in this process, in order and with ``threads`` torch threads, when
    ``workers`` is 1. One progress bar over all
    jobs (the running ones in its description); ``log`` gets one line per finished job. Returns the
    results in the order of ``jobs``. A failing job stops the run with its exception, after the jobs
    already running have finished."""
    if workers < 1 or threads < 1:
        raise ValueError(f"workers and threads must be at least 1, got workers={workers}, threads={threads}")
    _check(jobs)
    done: dict[str, JobResult] = {}
    bar = tqdm(total=len(jobs), desc="warm-up", unit="job", **progress_options(progress))

    def finish(job: Job, cached: bool | None, seconds: float) -> None:
        done[job.label] = JobResult(job.label, cached, seconds)
        state = "in the cache" if cached else "computed" if cached is False else "done"
        if log is not None:
            log(f"  {job.label}: {state} ({seconds:.0f} s)")
        bar.update(1)

    try:
        if workers == 1:
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                for job in jobs:
                    bar.set_description(f"warm-up: {job.label}")
                    finish(job, *_run_job(job.fn, job.args, job.kwargs))
            finally:
                torch.set_num_threads(before)
            return [done[j.label] for j in jobs]
        pending, running = list(jobs), {}
        context = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
            while pending or running:
                ready = [j for j in pending if all(n in done for n in j.needs)]
                for job in ready[:workers - len(running)]:
                    pending.remove(job)
                    running[pool.submit(_run_job, job.fn, job.args, job.kwargs)] = job
                bar.set_description("warm-up: " + "; ".join(j.label for j in running.values()))
                if not running:
                    raise RuntimeError(f"jobs {[j.label for j in pending]} wait on jobs that never run")
                finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for future in finished:
                    job = running.pop(future)
                    finish(job, *future.result())
        return [done[j.label] for j in jobs]
    finally:
        bar.close()
