"""The four shipped corpora: checksum verification, loading through ``datasets``, splits.

Used by notebooks 00 (environment check) and 03 onwards (every training run).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

CORPORA: dict[str, str] = {
    "shakespeare": "shakespeare.txt",
    "bible": "bible.txt",
    "jargon": "jargon.txt",
    "python_docs": "python_docs.txt",
}


DATA_ENV = "TUTORIAL_DATA_DIR"


CHECKSUMS_FILE = "checksums.json"


class DataError(RuntimeError):
    """A shipped data file is missing, corrupted or unknown."""


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The data folder: ``path`` if given, else ``$TUTORIAL_DATA_DIR``, else the repository's ``data/``."""
    if path is not None:
        return Path(path)
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    return Path(__file__).resolve().parents[2] / "data"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def corpus_sha256(name: str, directory: str | os.PathLike | None = None) -> tuple[Path, str]:
    """Path of corpus ``name`` (one of :data:`CORPORA`) and its sha256, checked to exist and to match the
    checksum list; the file is hashed once."""
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; expected one of {', '.join(CORPORA)}")
    folder = data_dir(directory)
    path = folder / CORPORA[name]
    if not path.is_file():
        raise DataError(f"data file for corpus {name!r} is missing: {path} (rebuild with scripts/build_data.py)")
    sums_path = folder / CHECKSUMS_FILE
    if not sums_path.is_file():
        raise DataError(f"checksum list is missing: {sums_path}")
    try:
        expected = json.loads(sums_path.read_text())[CORPORA[name]]["sha256"]
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"the checksum list {sums_path} is malformed or lacks {CORPORA[name]!r} ({type(err).__name__}: {err}); "
                        "restore it from git or rebuild the data with scripts/build_data.py") from err
    actual = sha256_file(path)
    if actual != expected:
        raise DataError(
            f"checksum mismatch for {path}: expected sha256 {expected}, got {actual} "
            "(the file is corrupted or was edited; restore it from git or rebuild it)"
        )
    return path, actual


def corpus_path(name: str, directory: str | os.PathLike | None = None) -> Path:
    """Path of corpus ``name`` (one of :data:`CORPORA`), checked to exist and to match its sha256."""
    return corpus_sha256(name, directory)[0]


def verify_data(directory: str | os.PathLike | None = None) -> dict[str, str]:
    """Verify every corpus; return ``{name: sha256}``. Notebook 00, "Environment check"."""
    return {name: corpus_sha256(name, directory)[1] for name in CORPORA}


@dataclass(frozen=True)
class CorpusSplits:
    """Lines of one corpus split into train / validation / test by contiguous blocks."""

    name: str
    train: list[str]
    validation: list[str]
    test: list[str]

    def summary(self) -> str:
        sizes = {k: sum(len(line) + 1 for line in getattr(self, k)) for k in ("train", "validation", "test")}
        return f"{self.name}: " + ", ".join(f"{k} {v:,} chars" for k, v in sizes.items())


def split_lines(lines: list[str], block_lines: int = 50, holdout_every: int = 20, name: str = "lines") -> CorpusSplits:
    """Deterministic split: blocks of ``block_lines`` consecutive lines (fewer for short texts, so that
    there are at least ``10 * holdout_every`` blocks); of every ``holdout_every`` blocks the
    second-to-last goes to validation and the last to test, the rest to train. Returns the
    :class:`CorpusSplits` named ``name``."""
    block_lines = max(1, min(block_lines, len(lines) // (10 * holdout_every)))
    train, validation, test = [], [], []
    for start in range(0, len(lines), block_lines):
        block = lines[start : start + block_lines]
        slot = (start // block_lines) % holdout_every
        (validation if slot == holdout_every - 2 else test if slot == holdout_every - 1 else train).extend(block)
    return CorpusSplits(name=name, train=train, validation=validation, test=test)


_LINES: dict[str, list[str]] = {}  # corpus lines read in this process, by the sha256 of their file


def load_corpus(name: str, max_chars: int | None = None, directory: str | os.PathLike | None = None) -> CorpusSplits:
    """Load corpus ``name`` with ``datasets.load_dataset("text", ...)`` after checking its sha256,
    keep its first ``max_chars`` characters (whole lines), and split it deterministically.
    Notebook 03, "Data"."""
    from datasets import load_dataset
    from datasets.utils.logging import disable_progress_bar

    path, digest = corpus_sha256(name, directory)
    lines = _LINES.get(digest)
    if lines is None:
        disable_progress_bar()
        # built from the file, never from datasets' own cache: that cache is keyed by path and modification
        # time, so a file edited with its mtime kept would be served as its old text; kept in this process
        # by the sha256 of the file's bytes instead
        dataset = load_dataset("text", data_files={"train": str(path)}, split="train", keep_in_memory=True,
                               download_mode="force_redownload", verification_mode="no_checks")
        lines = list(dataset["text"])
        if not any(line.strip() for line in lines):
            raise DataError(f"the corpus file {path} holds no text; restore it from git or rebuild it with scripts/build_data.py")
        while len(_LINES) >= 8:
            _LINES.pop(next(iter(_LINES)))
        _LINES[digest] = lines
    lines = list(lines)
    if max_chars is not None:
        if max_chars <= 0:
            raise ValueError(f"max_chars must be positive, got {max_chars}")
        kept, total = [], 0
        for line in lines:
            if total >= max_chars:
                break
            kept.append(line)
            total += len(line) + 1
        lines = kept
    return split_lines(lines, name=name)
