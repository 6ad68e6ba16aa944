"""Train-or-load cache for trained models, keyed by the full run config, and for the studies' results.

Weights are stored with ``save_pretrained`` (safetensors) beside a ``run.json`` holding the config,
everything the run measured and the sha256 of every file. A checkpoint is written into a private
temporary folder and renamed into place once complete, so a reader never sees a partial one; every
file is written under a unique temporary name and renamed; a per-key lock (:func:`key_lock`) makes a
second process that wants the same key wait and read instead of computing it again. On load the
hashes are checked. Used by notebook 03 and every later notebook that reuses a model.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .data import sha256_file
from .models import transformers_bars_off

CACHE_ENV = "TUTORIAL_CACHE_DIR"


CACHE_FORMAT = 1


class CheckpointMismatchError(RuntimeError):
    """A cached checkpoint was made with a different config than the one asked for."""


class CacheError(RuntimeError):
    """A cache entry or folder that cannot be used (corrupt, unreadable or unwritable); the message
    names the path and what to do."""


def _unique_tmp(path: Path) -> Path:
    """A temporary sibling of ``path`` that no other process or thread picks: ``.name.<pid>.<random>.tmp``."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _shared_mode(path: Path) -> None:
    """Make ``path`` (a file, or a folder and everything in it) readable by the group and others as
    far as the umask allows, as a plain ``open()`` would: ``save_pretrained`` may write 0600 files."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk, where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a unique temporary file, flushed to disk, then renamed into
    place: a reader sees the old file or the whole new one, and two writers never share a file."""
    path = Path(path)
    tmp = _unique_tmp(path)
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _shared_mode(tmp)
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _unwritable(folder: Path, err: OSError) -> CacheError:
    return CacheError(f"the cache folder {folder} is not writable ({err.strerror or err}); point ${CACHE_ENV} "
                      "at a folder you can write to, or fix the folder's permissions")


def check_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and check that files can be written there, before any long
    computation whose result would go there; raises :class:`CacheError` naming the folder and the fix."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = _unique_tmp(folder / "write-check")
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise _unwritable(folder, err) from err
    return folder


@contextmanager
def key_lock(path: str | os.PathLike):
    """Hold an exclusive lock on the cache entry ``path`` (a lock file in ``.locks/`` beside it) while
    checking for it and, if missing, computing and writing it: a second process asking for the same
    entry waits, then finds it written. Locks are advisory (``fcntl``); where that is unavailable
    (Windows) creating the lock file still checks that the folder is writable. In a read-only cache (an instructor's,
    shared) an entry that exists is read without a lock; a missing one raises :class:`CacheError`
    before any work."""
    path = Path(path)
    locks = path.parent / ".locks"
    try:  # creating the lock file is the writability check
        locks.mkdir(parents=True, exist_ok=True)
        handle = open(locks / f"{path.name}.lock", "a")
    except OSError as err:
        if not path.exists():
            raise _unwritable(locks, err) from err
        handle = None
    if handle is None:  # read-only, and the entry is there: read it without a lock
        yield
        return
    with handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
    """Save weights (safetensors), tokenizer and ``run.json`` = {config, record, sha256 of every file} as
    the checkpoint ``folder``: written into a temporary sibling, flushed to disk and renamed into place
    once complete (if another process completed the same checkpoint first, its copy is kept). Refuses
    (``ValueError``) a model with NaN or inf weights: a diverged run is never cached."""
    folder = Path(folder)
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise ValueError(f"refusing to cache the model for {folder}: {len(bad)} parameter tensor(s) hold NaN or inf "
                         f"(first: {bad[0]}), so the run diverged; lower the learning rate or clip gradients, then run again")
    check_writable(folder.parent)
    tmp = _unique_tmp(folder)
    tmp.mkdir()
    try:
        with transformers_bars_off():
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        meta = {"format": CACHE_FORMAT, "config": config, "record": record, "files": files}
        (tmp / "run.json").write_text(json.dumps(meta, indent=1, default=str))
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        _shared_mode(tmp)
        if folder.is_dir() and not (folder / "run.json").is_file():
            shutil.rmtree(folder)  # an incomplete checkpoint left by an older version or a crash
        try:
            os.rename(tmp, folder)
            _fsync_folder(folder.parent)
        except OSError:
            if not (folder / "run.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_run(folder: str | os.PathLike, expected_config: dict | None = None, device: str = "cpu") -> LoadedRun:
    """Load a :class:`LoadedRun` (model, tokenizer, record) from ``folder``; raise :class:`CheckpointMismatchError`
    naming the differing keys when ``expected_config`` is given and differs from the stored one."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    meta_path = folder / "run.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"no checkpoint in {folder} (run.json missing)")
    remedy = f"delete the folder {folder} and run again to recompute it"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise CacheError(f"the checkpoint's {meta_path} cannot be read ({err}); {remedy}") from err
    for name, digest in meta.get("files", {}).items():  # checkpoints written before the hashes have none
        path = folder / name
        if not path.is_file():
            raise CacheError(f"the checkpoint {folder} lacks its file {name}; {remedy}")
        if sha256_file(path) != digest:
            raise CacheError(f"the checkpoint file {path} does not match the sha256 stored when it was written "
                             f"(changed or corrupted since); {remedy}")
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


def _read_result(path: Path) -> dict | None:
    """The stored result at ``path``, or None (with a warning naming the file) when it is unreadable or
    truncated: such an entry is computed again, never served."""
    try:
        return json.loads(path.read_text())["result"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        warnings.warn(f"the cached result {path} is unreadable or incomplete ({type(err).__name__}: {err}); "
                      "computing it again", RuntimeWarning, stacklevel=3)
        return None


def cached_result(name: str, key: dict, compute, cache_dir=None, use_cache: bool = True, modules: tuple[str, ...] = ()) -> tuple[dict, bool]:
    """``compute()`` (a JSON-able dict) stored as ``results/<name>-<key>.json`` in the cache, keyed by
    ``key`` and the library's code (:func:`code_fingerprint` with ``modules``); returns ``(result,
    from_cache)``. ``use_cache=False`` recomputes and overwrites. Under :func:`key_lock`, so two
    processes asking for one key compute it once; written with :func:`write_atomic`; an unreadable
    entry is computed again. Used for the notebooks' sweeps and repeated-request runs (notebooks 04–06)
    and the benchmark's cells (notebook 07)."""
    path = result_path(name, key, cache_dir, modules)
    with key_lock(path):
        if use_cache and path.is_file():
            stored = _read_result(path)
            if stored is not None:
                return stored, True
        result = compute()
        write_atomic(path, json.dumps({"format": CACHE_FORMAT, "name": name, "key": key, "result": result}, indent=1, default=str))
    return json.loads(path.read_text())["result"], False
