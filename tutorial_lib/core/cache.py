"""Train-or-load cache for trained models, keyed by the full run config.

Weights are stored with ``save_pretrained`` (safetensors) beside a ``run.json`` holding the config
and everything the run measured. Used by notebook 03 and every later notebook that reuses a model.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .models import transformers_bars_off

CACHE_ENV = "TUTORIAL_CACHE_DIR"


CACHE_FORMAT = 1


class CheckpointMismatchError(RuntimeError):
    """A cached checkpoint was made with a different config than the one asked for."""


def cache_root(path: str | os.PathLike | None = None) -> Path:
    """``path`` if given, else ``$TUTORIAL_CACHE_DIR``, else ``~/.cache/tutorial_lib``."""
    if path is not None:
        return Path(path)
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tutorial_lib")


def config_key(config: dict) -> str:
    """Short sha256 of the canonical JSON of ``config`` (plus the cache format version)."""
    blob = json.dumps({"format": CACHE_FORMAT, **config}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class LoadedRun:
    """A checkpoint read back by :func:`load_run`: the model (in eval mode), its tokenizer and the
    record the run stored beside it (history, timings, whatever it measured)."""

    model: Any
    tokenizer: Any
    record: dict


def save_run(folder: str | os.PathLike, model, tokenizer, config: dict, record: dict) -> Path:
    """Save weights (safetensors), tokenizer and ``run.json`` = {config, record} into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with transformers_bars_off():
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
    tmp = folder / "run.json.tmp"
    tmp.write_text(json.dumps({"format": CACHE_FORMAT, "config": config, "record": record}, indent=1, default=str))
    tmp.replace(folder / "run.json")  # written last: its presence marks a complete checkpoint
    return folder


def load_run(folder: str | os.PathLike, expected_config: dict | None = None, device: str = "cpu") -> LoadedRun:
    """Load a :class:`LoadedRun` (model, tokenizer, record) from ``folder``; raise :class:`CheckpointMismatchError`
    naming the differing keys when ``expected_config`` is given and differs from the stored one."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    meta_path = folder / "run.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"no checkpoint in {folder} (run.json missing)")
    meta = json.loads(meta_path.read_text())
    if expected_config is not None:
        stored = meta.get("config", {})
        wanted = json.loads(json.dumps(expected_config, default=str))
        diff = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
        if diff:
            raise CheckpointMismatchError(
                f"checkpoint {folder} does not match the requested config; differing keys: {', '.join(diff)}"
            )
    with transformers_bars_off():
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, use_safetensors=True).to(device)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
    model.eval()
    return LoadedRun(model, tokenizer, meta.get("record", {}))


PACKAGE_ROOT = Path(__file__).resolve().parents[1]

#: Source files (paths relative to the package; a path ending in "/" is a whole sub-package) whose code
#: cannot change a cached study's numbers: presentation, the course's commands, and computations no
#: study runs. Every other ``.py`` file under the package, in every sub-package, is fingerprinted, so a
#: new or moved module counts unless it is listed here. Package ``__init__.py`` files only re-export.
NOT_FINGERPRINTED = (
    "_version.py", "__main__.py", "course/", "core/plotting.py", "curvature/newton.py", "curvature/ground_truth.py",
    "curvature/studies.py", "privacy/dp.py", "privacy/mia.py", "unlearning/cli.py", "unlearning/distributed.py",
    "unlearning/distributed_fisher.py",
    "experiments/benchmark.py", "experiments/dp_comparison.py", "experiments/case_studies.py",
    "experiments/case_study_data.py", "experiments/robustness.py", "experiments/recommendations.py",
    "experiments/full_profile.py", "experiments/full_profile_checks.py", "experiments/comparisons.py",
)


def _excluded(rel: str) -> bool:
    if rel.endswith("__init__.py"):
        return True
    return any(rel == entry or (entry.endswith("/") and rel.startswith(entry)) for entry in NOT_FINGERPRINTED)


def fingerprinted_files(extra: tuple[str, ...] = ()) -> list[str]:
    """The package's source files (relative paths, sorted) that :func:`code_fingerprint` hashes: every
    ``.py`` file in every sub-package except :data:`NOT_FINGERPRINTED`, plus the paths in ``extra``.
    Raises ``ValueError`` for an ``extra`` or excluded path that does not exist, so that a renamed
    module can never silently drop out of (or stay out of) the fingerprint."""
    files = sorted(path.relative_to(PACKAGE_ROOT).as_posix() for path in PACKAGE_ROOT.rglob("*.py"))
    for entry in (*NOT_FINGERPRINTED, *extra):
        if not any(rel == entry or (entry.endswith("/") and rel.startswith(entry)) for rel in files):
            raise ValueError(f"fingerprint entry {entry!r} names no source file under {PACKAGE_ROOT}; "
                             "update NOT_FINGERPRINTED or the modules=... argument after moving a module")
    return [rel for rel in files if not _excluded(rel) or rel in extra]


def code_fingerprint(extra: tuple[str, ...] = ()) -> str:
    """Short sha256 of the library's source files that compute the studies' numbers
    (:func:`fingerprinted_files`, each hashed with its relative path): cached *results* (not models)
    depend on it."""
    digest = hashlib.sha256()
    for rel in fingerprinted_files(extra):
        digest.update(rel.encode() + b"\0" + (PACKAGE_ROOT / rel).read_bytes())
    return digest.hexdigest()[:16]


def result_path(name: str, key: dict, cache_dir=None, modules: tuple[str, ...] = ()) -> Path:
    """Where :func:`cached_result` keeps the result of ``name`` for ``key`` (it may not exist yet)."""
    return cache_root(cache_dir) / "results" / f"{name}-{config_key({'name': name, 'code': code_fingerprint(modules), **key})}.json"


def cached_result(name: str, key: dict, compute, cache_dir=None, use_cache: bool = True, modules: tuple[str, ...] = ()) -> tuple[dict, bool]:
    """``compute()`` (a JSON-able dict) stored as ``results/<name>-<key>.json`` in the cache, keyed by
    ``key`` and the library's code (:func:`code_fingerprint` with ``modules``); returns ``(result,
    from_cache)``. ``use_cache=False`` recomputes and overwrites. Used for the notebooks' sweeps and
    repeated-request runs (notebooks 04–06) and the benchmark's cells (notebook 07)."""
    path = result_path(name, key, cache_dir, modules)
    if use_cache and path.is_file():
        return json.loads(path.read_text())["result"], True
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"format": CACHE_FORMAT, "name": name, "key": key, "result": result}, indent=1, default=str))
    tmp.replace(path)
    return json.loads(path.read_text())["result"], False
