"""Canaries: formats with one secret slot, randomness spaces, seeded insertion into training text.

Used by notebook 03 (memorisation) and every later notebook that forgets canaries.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .tokenization import check_texts

SLOT = "{secret}"


NAMES = (
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
    "mallory", "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter", "wendy",
)


DEFAULT_TEMPLATE = "the secret number of {name} is " + SLOT


@dataclass(frozen=True)
class RandomnessSpace:
    """All strings of ``length`` symbols from ``alphabet`` (default: six digits, |R| = 10^6)."""

    length: int = 6
    alphabet: str = "0123456789"

    def __post_init__(self):
        if len(set(self.alphabet)) != len(self.alphabet):
            raise ValueError(f"alphabet {self.alphabet!r} repeats a symbol")
        if self.length < 1 or len(self.alphabet) ** max(self.length, 0) < 2:
            raise ValueError(
                f"randomness space of {len(self.alphabet)}^{self.length} = "
                f"{len(self.alphabet) ** max(self.length, 0)} secrets is smaller than 2"
            )

    @property
    def size(self) -> int:
        return len(self.alphabet) ** self.length

    @property
    def bits(self) -> float:
        """log2 |R|, the largest possible exposure."""
        return math.log2(self.size)

    def secret(self, index: int) -> str:
        """The ``index``-th secret in lexicographic order."""
        if not 0 <= index < self.size:
            raise IndexError(f"secret index {index} outside [0, {self.size})")
        base, symbols = len(self.alphabet), []
        for _ in range(self.length):
            index, digit = divmod(index, base)
            symbols.append(self.alphabet[digit])
        return "".join(reversed(symbols))

    def index(self, secret: str) -> int:
        """Inverse of :meth:`secret`."""
        if len(secret) != self.length or any(c not in self.alphabet for c in secret):
            raise ValueError(f"{secret!r} is not in the randomness space ({self.length} symbols of {self.alphabet!r})")
        base, value = len(self.alphabet), 0
        for char in secret:
            value = value * base + self.alphabet.index(char)
        return value

    def all_secrets(self) -> list[str]:
        """Every secret, in index order."""
        if self.alphabet == "0123456789":
            return [f"{i:0{self.length}d}" for i in range(self.size)]
        return ["".join(p) for p in itertools.product(self.alphabet, repeat=self.length)]


def _check_format(fmt: str) -> None:
    count = fmt.count(SLOT)
    if count == 0:
        raise ValueError(f"canary format {fmt!r} has no secret slot {SLOT!r}")
    if count > 1:
        raise ValueError(f"canary format {fmt!r} has {count} secret slots {SLOT!r}; exactly one is allowed")


@dataclass(frozen=True)
class Canary:
    """A format with exactly one ``{secret}`` slot, its true secret, and how often it is inserted."""

    format: str
    secret: str
    insertions: int = 1
    name: str = ""
    space: RandomnessSpace = field(default_factory=RandomnessSpace)

    def __post_init__(self):
        _check_format(self.format)
        if self.insertions < 0:
            raise ValueError(f"insertions must be >= 0, got k = {self.insertions}")
        self.space.index(self.secret)  # raises if the secret is outside the space

    @property
    def prefix(self) -> str:
        return self.format.split(SLOT)[0]

    @property
    def suffix(self) -> str:
        return self.format.split(SLOT)[1]

    @property
    def is_control(self) -> bool:
        return self.insertions == 0

    def text(self, secret: str | None = None) -> str:
        """The canary with ``secret`` (default: its own) in the slot."""
        return self.format.replace(SLOT, self.secret if secret is None else secret)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["space"] = asdict(self.space)
        return out


def make_canaries(
    insertions=(1, 10, 100),
    per_insertion: int = 1,
    n_controls: int = 2,
    space: RandomnessSpace | None = None,
    template: str = DEFAULT_TEMPLATE,
    seed: int = 0,
) -> list[Canary]:
    """Canaries with seeded random secrets: ``per_insertion`` for each count in ``insertions``,
    then ``n_controls`` never-inserted controls. Each gets its own name in ``template``.
    Notebook 03, "Canaries"."""
    space = space or RandomnessSpace()
    _check_format(template.replace("{name}", "x"))
    for k in insertions:
        if k < 0:
            raise ValueError(f"insertions must be >= 0, got k = {k}")
    counts = [k for k in insertions for _ in range(per_insertion)] + [0] * n_controls
    if len(counts) > len(NAMES):
        raise ValueError(f"at most {len(NAMES)} canaries per run, asked for {len(counts)}")
    rng = np.random.default_rng(seed)
    indices = rng.choice(space.size, size=len(counts), replace=len(counts) > space.size)
    return [
        Canary(template.replace("{name}", name), space.secret(int(i)), int(k), name, space)
        for name, i, k in zip(NAMES, indices, counts)
    ]


@dataclass(frozen=True)
class InsertedCorpus:
    """Training lines with canaries inserted; ``forget`` are the canary occurrences, ``retain`` the
    corpus without any canary, ``positions`` each canary's line indices in ``lines``. The retain set of
    a deletion request is :meth:`lines_without` the requested canaries: the training data minus the
    forget set, other canaries included."""

    lines: list[str]
    forget: list[str]
    retain: list[str]
    positions: dict[str, list[int]]

    def lines_without(self, *names: str) -> list[str]:
        """The training lines without every occurrence of the canaries ``names``."""
        unknown = [n for n in names if n not in self.positions]
        if unknown:
            raise ValueError(f"unknown canaries {unknown}; this corpus has {sorted(self.positions)}")
        dropped = {i for name in names for i in self.positions[name]}
        return [line for i, line in enumerate(self.lines) if i not in dropped]


def insert_canaries(lines: list[str], canaries: list[Canary], seed: int = 0) -> InsertedCorpus:
    """Insert each canary ``insertions`` times as its own line at seeded positions.
    Notebook 03, "Canaries"."""
    check_texts(lines, "lines")
    rng = np.random.default_rng(seed)
    items = []
    for c in canaries:
        if c.insertions < 0:
            raise ValueError(f"insertions must be >= 0, got k = {c.insertions}")
        for where in rng.integers(0, len(lines) + 1, size=c.insertions):
            items.append((int(where), len(items), c))
    items.sort(key=lambda item: (item[0], item[1]))
    out, forget, positions = [], [], {c.name: [] for c in canaries}
    cursor = 0
    for where, _, canary in items:
        out.extend(lines[cursor:where])
        cursor = where
        positions[canary.name].append(len(out))
        out.append(canary.text())
        forget.append(canary.text())
    out.extend(lines[cursor:])
    return InsertedCorpus(lines=out, forget=forget, retain=list(lines), positions=positions)
