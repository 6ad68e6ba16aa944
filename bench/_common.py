"""Shared helpers of the benchmark scripts in ``bench/``: flags, threads, timing and the JSON results.

Every script builds its command line with :func:`bench_parser` (parsed by ``BenchParser.parse``), which gives it the flags all of them take:

* ``--quick``: a smoke run of a few seconds (smaller sizes, fewer repeats; each script says which);
* ``--threads N``: ``torch.set_num_threads(N)`` (and, where a script asks for it, the BLAS thread count);
* ``--seed S``: the seed of the script's random data and model;
* ``--out PATH``: the JSON results, by default ``bench/results/<script>.json`` (``<script>-quick.json``
  under ``--quick``, so that a smoke run never overwrites a measurement).

Sizes that ``--quick`` changes default to None on the command line and are filled in by
:func:`fill_defaults`, so a size given explicitly wins over ``--quick``.

Timing: :func:`measure` runs a callable a few times untimed (warm-up), then up to ``repeats`` timed
times, stopping early once ``max_seconds`` are spent but always running at least once, and returns a
:class:`Timing` with the median, the best and every run. :func:`timed` times one call,
:func:`interleaved` takes one run of each of several callables per round, so that they share the
machine's state over time.

Results: :func:`write_results` writes one JSON file with the script's name, its flags (after
``--quick`` has adjusted them), the machine (CPU count, torch version and thread count, BLAS thread
variables), the measured rows and whatever else the script adds.

The scripts run as files (``.venv/bin/python bench/<script>.py``), so this module is imported as
``_common`` from the script's folder. It imports neither NumPy nor torch at import time: a script that
sets BLAS threads must do so before NumPy is loaded (:func:`preset_blas_threads`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


# --------------------------------------------------------------------------------------------- flags


def default_out(script: str, quick: bool = False) -> Path:
    """``bench/results/<name>.json`` for a script path or name; ``<name>-quick.json`` for a ``--quick``
    run, so that a smoke run never overwrites a measurement."""
    return RESULTS_DIR / f"{Path(script).stem}{'-quick' if quick else ''}.json"


class BenchParser(argparse.ArgumentParser):
    """``argparse`` with the flags every benchmark takes; see :func:`bench_parser`."""

    script: str = ""

    def parse(self, argv=None, full: dict | None = None, quick: dict | None = None) -> argparse.Namespace:
        """Parse ``argv``, fill in the flags left at None from ``full`` / ``quick`` (:func:`fill_defaults`)
        and the default ``--out`` (:func:`default_out`)."""
        args = fill_defaults(self.parse_args(argv), full or {}, quick)
        if args.out is None:
            args.out = default_out(self.script, args.quick)
        return args


def bench_parser(script: str, doc: str | None, *, quick: str, threads_default: int | None = None,
                 threads_help: str | None = None, seed_help: str = "random seed (default: 0)") -> BenchParser:
    """A parser with the flags every benchmark takes: ``--quick``, ``--threads``, ``--seed`` and ``--out``.
    ``script`` is the script's ``__file__`` (it names the default JSON file), ``doc`` its docstring (the
    first paragraph becomes the description), ``quick`` what ``--quick`` does there. Parse with
    :meth:`BenchParser.parse`."""
    parser = BenchParser(prog=f"bench/{Path(script).name}",
                         description=(doc or "").strip().split("\n\n")[0].replace("\n", " "))
    parser.script = script
    out, out_quick = (default_out(script, q).relative_to(BENCH_DIR.parent) for q in (False, True))
    parser.add_argument("--quick", action="store_true", help=f"a smoke run of a few seconds: {quick}")
    parser.add_argument("--threads", type=int, default=threads_default, metavar="N",
                        help=threads_help or "torch.set_num_threads(N) (default: torch's own choice)")
    parser.add_argument("--seed", type=int, default=0, help=seed_help)
    parser.add_argument("--out", type=Path, default=None, metavar="PATH",
                        help=f"JSON results (default: {out}; {out_quick} with --quick)")
    return parser


def add_repeats(parser: argparse.ArgumentParser, default: int, quick: int | None = None) -> None:
    """``--repeats``: timed runs per measurement, the median reported. With ``quick``, the flag's default
    is None and :func:`fill_defaults` picks ``default`` or, under ``--quick``, ``quick``."""
    parser.add_argument("--repeats", type=int, default=None if quick is not None else default,
                        help=f"timed runs per measurement, median reported (default: {default}"
                             + (f"; {quick} with --quick)" if quick is not None else ")"))


def fill_defaults(args: argparse.Namespace, full: dict, quick: dict | None = None) -> argparse.Namespace:
    """Give every flag in ``full`` that was not given on the command line (its value is None) its default:
    the value in ``quick`` under ``--quick`` (falling back to ``full``), else the one in ``full``. A flag
    given explicitly always wins, with or without ``--quick``."""
    for key, value in full.items():
        if getattr(args, key, None) is None:
            setattr(args, key, (quick or {}).get(key, value) if args.quick else value)
    return args


def set_threads(n: int | None) -> int:
    """``torch.set_num_threads(n)`` unless ``n`` is None or 0; returns torch's thread count."""
    import torch

    if n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def preset_blas_threads(argv: list[str], default: int = 1) -> int:
    """Read ``--threads`` from ``argv`` and, if it is positive, set the BLAS thread variables to it.
    BLAS reads them when NumPy is first imported, so call this before that (at the top of a script
    run as ``__main__``). Returns the value read; 0 keeps the BLAS library's own default."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--threads", type=int, default=default)
    threads = pre.parse_known_args(argv)[0].threads
    if threads and threads > 0:
        os.environ.update({var: str(threads) for var in BLAS_THREAD_VARS})
    return threads


# -------------------------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """Wall times of one measurement: every timed run in seconds, and the last run's output."""

    times_s: list[float]
    out: Any = field(default=None, repr=False)

    @property
    def median_s(self) -> float:
        return float(statistics.median(self.times_s))

    @property
    def best_s(self) -> float:
        return float(min(self.times_s))

    @property
    def runs(self) -> int:
        return len(self.times_s)

    def to_dict(self) -> dict:
        return {"median_s": self.median_s, "best_s": self.best_s, "times_s": list(self.times_s)}


def measure(fn: Callable[[], Any], repeats: int = 5, *, warmup: int = 0, max_seconds: float = math.inf,
            before: Callable[[], Any] | None = None, reduce: Callable[[float], float] | None = None) -> Timing:
    """Call ``fn()`` ``warmup`` times untimed, then time up to ``repeats`` calls and return them.

    The timed runs stop early once their sum reaches ``max_seconds``, but there is always at least one.
    The previous output is dropped before each call (so a large result is not held twice); the last
    one is ``Timing.out``. ``before()`` runs before each timed call outside the timing (a barrier, for
    example), and ``reduce(seconds)`` maps each measured time (for example to the slowest process's)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    out = None
    while len(times) < max(repeats, 1) and (not times or sum(times) < max_seconds):
        out = None
        if before is not None:
            before()
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
        times.append(reduce(seconds) if reduce is not None else seconds)
    return Timing(times, out)


def timed(fn: Callable[..., Any], *args, **kwargs) -> tuple[Any, float]:
    """One call of ``fn(*args, **kwargs)``: its output and its wall time in seconds."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def interleaved(ways: dict[str, Callable[[], Any]], rounds: int, *, warmup: int = 1,
                scale: Callable[[str, Any], float] | None = None) -> dict[str, Timing]:
    """Time several callables in turns: ``warmup`` untimed rounds, then ``rounds`` rounds in which each
    runs once. ``scale(name, output)`` multiplies each measured time (for example to a nominal batch)."""
    for _ in range(warmup):
        for fn in ways.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in ways}
    outs: dict[str, Any] = {}
    for _ in range(max(rounds, 1)):
        for name, fn in ways.items():
            start = time.perf_counter()
            outs[name] = fn()
            seconds = time.perf_counter() - start
            times[name].append(seconds * (scale(name, outs[name]) if scale is not None else 1.0))
    return {name: Timing(t, outs.get(name)) for name, t in times.items()}


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# ------------------------------------------------------------------------------------------- results


def machine() -> dict:
    """The machine a run measured: CPUs, platform, Python, torch (version and thread count) and, when
    loaded, NumPy and SciPy, plus the BLAS thread variables that were set."""
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    except ImportError:  # pragma: no cover - every script here has torch
        info.update(torch=None, torch_threads=None)
    for name in ("numpy", "scipy"):
        if name in sys.modules:
            info[name] = getattr(sys.modules[name], "__version__", None)
    info["blas_thread_vars"] = {var: os.environ[var] for var in BLAS_THREAD_VARS if var in os.environ}
    return info


def _jsonable(obj: Any) -> Any:
    """Fallback for ``json.dumps``: paths, NumPy scalars and arrays, tensors, sets and tuples."""
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "tolist"):  # NumPy arrays and scalars, torch tensors
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_results(args: argparse.Namespace, rows: list[dict], *, wall_s: float | None = None, **extra) -> Path:
    """Write ``{"script", "flags", "machine", "rows", ..., "wall_s"}`` to ``args.out`` and return the path.
    ``flags`` are the parsed arguments after the script's adjustments (``--quick`` included)."""
    payload = {
        "script": Path(sys.argv[0]).name if sys.argv and sys.argv[0] else None,
        "flags": dict(vars(args)),
        "machine": machine(),
        "rows": rows,
        **extra,
    }
    if wall_s is not None:
        payload["wall_s"] = wall_s
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    print(f"wrote {out}")
    return out
