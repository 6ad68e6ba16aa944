"""Train-or-load cache for trained models, keyed by the full run config.

Weights are stored with ``save_pretrained`` (safetensors) beside a ``run.json`` holding the config
and everything the run measured. Used by notebook 03 and every later notebook that reuses a model.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

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


def save_run(folder: str | os.PathLike, model, tokenizer, config: dict, record: dict) -> Path:
    """Save weights (safetensors), tokenizer and ``run.json`` = {config, record} into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    tmp = folder / "run.json.tmp"
    tmp.write_text(json.dumps({"format": CACHE_FORMAT, "config": config, "record": record}, indent=1, default=str))
    tmp.replace(folder / "run.json")  # written last: its presence marks a complete checkpoint
    return folder


def load_run(folder: str | os.PathLike, expected_config: dict | None = None, device: str = "cpu"):
    """Load ``(model, tokenizer, record)`` from ``folder``; raise :class:`CheckpointMismatchError`
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
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, use_safetensors=True).to(device)
    model.eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
    return model, tokenizer, meta.get("record", {})


# modules whose code cannot change a cached study's numbers: presentation, and computations no study runs
NOT_FINGERPRINTED = ("__init__.py", "notebook.py", "plotting.py", "reproduce.py", "warm_cache.py", "newton.py", "curvature.py",
                     "benchmark.py", "dp.py", "mia.py", "scenarios.py", "robustness.py", "distributed.py", "full_profile.py",
                     "course.py")


def code_fingerprint(extra: tuple[str, ...] = ()) -> str:
    """Short sha256 of the library's source files that compute the studies' numbers (all but
    :data:`NOT_FINGERPRINTED`, plus the module names in ``extra``): cached *results* (not models)
    depend on it."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.name not in NOT_FINGERPRINTED or path.name in extra:
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
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
