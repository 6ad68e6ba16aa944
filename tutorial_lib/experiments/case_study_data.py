"""The generated data of notebook 09's case studies (:mod:`tutorial_lib.experiments.case_studies`).

Made-up people (:class:`Person`, :func:`make_people`) with names, e-mail addresses, phone and account
numbers and street addresses drawn from a seed and the word lists below; their e-mail-like records,
one per line; and a passage of another corpus's held-out text. :func:`build_case_study` inserts them
into a corpus at seeded positions (the data subject's records several times each, other members'
records once, the passage many times) and returns a :class:`CaseStudy`: the training lines, where
everything went, the forget sets of the person and of the passage, and the people never seen in
training for membership inference. :class:`CaseStudyConfig` holds everything but the seed and
device. Names, addresses and domains are fictional (``.example`` is a reserved top-level domain).

Notebook 09, "The data".
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import ClassVar

import numpy as np

from ..core.canaries import SLOT, Canary, RandomnessSpace
from ..core.data import CORPORA, load_corpus
from ..core.models import ModelConfig
from ..core.profiles import config_for_profile, model_scale, resolve_profile
from ..core.training import TrainConfig

FIRST_NAMES = (
    "Ada", "Alan", "Amara", "Anton", "Beatrix", "Bruno", "Camille", "Dario", "Delia", "Edgar", "Elena", "Emil",
    "Farah", "Felix", "Greta", "Hamish", "Hana", "Ingrid", "Ivo", "Jonas", "Kamala", "Kenji", "Lena", "Lorenzo",
    "Maeve", "Marek", "Nadia", "Nils", "Odile", "Oskar", "Priya", "Quentin", "Rosa", "Rufus", "Sana", "Soren",
    "Tamsin", "Theo", "Una", "Viktor", "Wanda", "Xavier", "Yara", "Yusuf", "Zelda", "Zoran",
)


SURNAMES = (
    "Abbott", "Barros", "Castell", "Drummond", "Eklund", "Fairweather", "Galloway", "Hartmann", "Ibarra", "Jansen",
    "Kowalski", "Lindqvist", "Marchetti", "Novak", "Okafor", "Pellegrini", "Quinlan", "Rasmussen", "Santos", "Thorne",
    "Ueda", "Valdez", "Whitlock", "Yilmaz", "Zimmer", "Brennan", "Delacroix", "Fitzgerald", "Holloway", "Moreau",
)


STREETS = ("Oak", "Maple", "Mill", "Church", "Station", "Harbour", "Orchard", "Willow", "Bridge", "Quarry", "Elm", "Chapel",
           "Meadow", "Foundry", "Kiln", "Rope")


STREET_KINDS = ("Street", "Lane", "Road", "Avenue", "Way", "Close", "Row")


CITIES = ("Ashford", "Bramley", "Carrow", "Dunmore", "Elsworth", "Fenwick", "Glenholt", "Harwick", "Ivybridge", "Kelso",
          "Larkhill", "Marston", "Norwell", "Oakham", "Penrith", "Redfern")


DOMAINS = ("mail.example", "post.example", "inbox.example")


TOPICS = ("invoice", "meeting notes", "delivery", "refund request", "password reset", "rent", "insurance claim", "doctor's appointment",
          "school trip", "tax return", "loan application", "holiday booking", "parking permit", "gym membership", "phone bill",
          "birthday party", "job offer", "bank transfer", "lease renewal", "broken boiler")


@dataclass(frozen=True)
class Person:
    """One made-up person: the fields of their records."""

    first: str
    last: str
    domain: str
    phone: str
    account: str
    number: int
    street: str
    city: str

    @property
    def name(self) -> str:
        return f"{self.first} {self.last}"

    @property
    def email(self) -> str:
        return f"{self.first.lower()}.{self.last.lower()}@{self.domain}"

    @property
    def address(self) -> str:
        return f"{self.number} {self.street}, {self.city}"

    @property
    def head(self) -> str:
        """The start of every record: what precedes the phone number."""
        return f"{self.name} tel "

    def record(self, topic: str) -> str:
        """One e-mail-like record, as one line: the name and secrets first, so that a short model
        context holds what precedes each secret."""
        return f"{self.head}{self.phone} acct {self.account} <{self.email}> {self.address} re: {topic}"

    def canaries(self, space: RandomnessSpace, insertions: int) -> list[Canary]:
        """The person's two secrets as canaries: the phone number given the record's head, and the
        account number given the head and the phone number."""
        return [Canary(self.head + SLOT, self.phone, insertions, f"{self.first} phone", space),
                Canary(f"{self.head}{self.phone} acct " + SLOT, self.account, insertions, f"{self.first} account", space)]


def make_people(n: int, space: RandomnessSpace, seed: int = 0) -> list[Person]:
    """``n`` people with distinct names and seeded random fields (phone and account numbers drawn
    from ``space``)."""
    if n > len(FIRST_NAMES) * len(SURNAMES):
        raise ValueError(f"at most {len(FIRST_NAMES) * len(SURNAMES)} distinct people, asked for {n}")
    rng = np.random.default_rng(seed)
    pairs = rng.choice(len(FIRST_NAMES) * len(SURNAMES), size=n, replace=False)
    secrets = rng.choice(space.size, size=(n, 2))
    return [Person(FIRST_NAMES[p // len(SURNAMES)], SURNAMES[p % len(SURNAMES)], DOMAINS[int(rng.integers(len(DOMAINS)))],
                   space.secret(int(s[0])), space.secret(int(s[1])), int(rng.integers(1, 200)),
                   f"{STREETS[int(rng.integers(len(STREETS)))]} {STREET_KINDS[int(rng.integers(len(STREET_KINDS)))]}",
                   CITIES[int(rng.integers(len(CITIES)))]) for p, s in zip(pairs, secrets)]


def topics(count: int, rng) -> list[str]:
    """``count`` distinct record topics ("invoice 3", ...)."""
    return [f"{TOPICS[i % len(TOPICS)]} {i // len(TOPICS) + 1}" for i in rng.permutation(max(count, 1) * 3)[:count]]


@dataclass(frozen=True)
class CaseStudyConfig:
    """Everything that defines notebook 09's training run except the seed and device. ``profile``
    is the model scale the run uses (the profile of its model, training and the methods' defaults)."""

    profile: str = "small"
    corpus: str = "shakespeare"
    max_chars: int | None = None
    secret_length: int = 6
    n_members: int = 100
    member_records: int = 2
    n_outsiders: int = 100
    subject_records: int = 20
    subject_repeats: int = 5
    passage_corpus: str = "bible"
    passage_chars: int = 400
    passage_repeats: int = 100
    extract_prefix: int = 48
    extract_length: int = 64
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    _TINY_SCALE: ClassVar[dict] = {"max_chars": 60_000, "secret_length": 4, "n_members": 30, "n_outsiders": 40, "subject_records": 10,
                                   "subject_repeats": 10, "passage_chars": 300, "passage_repeats": 100, "extract_prefix": 24,
                                   "extract_length": 32}
    PROFILE_DEFAULTS: ClassVar[dict[str, dict]] = {"tiny": _TINY_SCALE, "small": _TINY_SCALE, "full": {}}

    def __post_init__(self):
        for name in (self.corpus, self.passage_corpus):
            if name not in CORPORA:
                raise ValueError(f"unknown corpus {name!r}; expected one of {', '.join(CORPORA)}")
        for name in ("n_members", "n_outsiders", "subject_records", "subject_repeats", "passage_repeats", "member_records"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.extract_prefix + self.extract_length > self.model.n_positions:
            raise ValueError(f"extract_prefix + extract_length = {self.extract_prefix + self.extract_length} exceeds the model's "
                             f"{self.model.n_positions} positions")

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides) -> "CaseStudyConfig":
        """The case study that notebook 09 and the reproduction run at ``profile``. Like the benchmark
        and the DP runs, this multi-model experiment (two trainings and thirteen unlearning runs)
        runs at :func:`~tutorial_lib.core.profiles.model_scale`: the CPU profile (``small``) uses
        the ``tiny`` model scale, ``full`` the ``small`` scale. The profile's row of
        ``PROFILE_DEFAULTS`` with that scale's model and training, then ``overrides``."""
        profile = resolve_profile(profile)
        scale = model_scale(profile)
        train = TrainConfig.for_profile(scale)
        if scale == "tiny":  # three times the canary runs' steps: the records and the passage must be learned first
            train = replace(train, steps=3 * train.steps, eval_every=3 * train.eval_every, eval_steps=())
        return config_for_profile(cls, profile, overrides, profile=scale, model=ModelConfig.for_profile(scale), train=train)

    @property
    def space(self) -> RandomnessSpace:
        return RandomnessSpace(self.secret_length)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["train"]["eval_steps"] = list(self.train.eval_steps)
        return out


@dataclass
class CaseStudy:
    """The generated data of a case-study run: the training lines with everything inserted and where."""

    cfg: CaseStudyConfig
    splits: object
    lines: list[str]
    positions: dict[str, list[int]]
    subject: Person
    members: list[Person]
    outsiders: list[Person]
    subject_lines: list[str]
    member_lines: list[str]
    outsider_lines: list[str]
    passage: str

    @property
    def canaries(self) -> list[Canary]:
        """The data subject's phone and account numbers (inserted subject_records x subject_repeats
        times), then one member's and one outsider's (controls) for comparison."""
        k = self.cfg.subject_records * self.cfg.subject_repeats
        return (self.subject.canaries(self.cfg.space, k) + self.members[0].canaries(self.cfg.space, self.cfg.member_records)
                + self.outsiders[0].canaries(self.cfg.space, 0))

    def lines_without(self, *requests: str) -> list[str]:
        dropped = {i for r in requests for i in self.positions[r]}
        return [line for i, line in enumerate(self.lines) if i not in dropped]

    def pii_forget_items(self, kind: str = "records") -> list[tuple[str, str]]:
        """The deletion request as forget items, once per training occurrence of each of the
        subject's records. ``"records"``: each whole record (what "delete my records" names), cut
        into (context, target) chunks that fit the model; ``"secrets"``: only "<phone> acct
        <account>" given the record's head (a provider that knows which fields are personal)."""
        s = self.subject
        if kind == "secrets":
            return [("\n" + s.head, f"{s.phone} acct {s.account}")] * (self.cfg.subject_records * self.cfg.subject_repeats)
        if kind == "records":
            return [chunk for line in self.subject_lines for chunk in self.chunks("\n" + line)] * self.cfg.subject_repeats
        raise ValueError(f"kind must be 'records' or 'secrets', got {kind!r}")

    def chunks(self, text: str, size: int | None = None, context: int | None = None) -> list[tuple[str, str]]:
        """``text`` (which starts with its own context character) as (context, target) chunks of
        ``size`` characters (default half the model's positions), each given the ``context``
        characters before it (default a quarter)."""
        size = size or self.cfg.model.n_positions // 2
        context = context if context is not None else self.cfg.model.n_positions // 4
        return [(text[max(0, i - context):i], text[i:i + size]) for i in range(1, len(text), size)]

    def passage_chunks(self) -> list[tuple[str, str]]:
        """The passage as (context, target) chunks (see :meth:`chunks`)."""
        return self.chunks("\n" + self.passage)

    def passage_forget_items(self) -> list[tuple[str, str]]:
        """The passage's chunks, once per training occurrence."""
        return self.passage_chunks() * self.cfg.passage_repeats

    @property
    def retain(self) -> list[str]:
        return self.lines_without("subject", "passage")


def build_case_study(cfg: CaseStudyConfig, seed: int = 0) -> CaseStudy:
    """Generate the people, the records and the passage, and insert them into the corpus at seeded
    positions: each subject record ``subject_repeats`` times, each member record once, the passage
    (as one block of lines) ``passage_repeats`` times. Notebook 09."""
    splits = load_corpus(cfg.corpus, cfg.max_chars)
    people = make_people(1 + cfg.n_members + cfg.n_outsiders, cfg.space, seed)
    subject, members, outsiders = people[0], people[1:1 + cfg.n_members], people[1 + cfg.n_members:]
    rng = np.random.default_rng(seed + 1)
    subject_lines = [subject.record(t) for t in topics(cfg.subject_records, rng)]
    member_lines = [p.record(t) for p in members for t in topics(cfg.member_records, rng)]
    outsider_lines = [p.record(t) for p in outsiders for t in topics(cfg.member_records, rng)]
    source = load_corpus(cfg.passage_corpus).test
    passage_lines, size = [], 0
    for line in source[int(rng.integers(0, len(source) // 2)):]:
        passage_lines.append(line)
        size += len(line) + 1
        if size >= cfg.passage_chars:
            break
    passage = "\n".join(passage_lines)
    items = [(line, "subject") for line in subject_lines for _ in range(cfg.subject_repeats)]
    items += [(line, "members") for line in member_lines]
    items += [(passage, "passage")] * cfg.passage_repeats
    where = rng.integers(0, len(splits.train) + 1, size=len(items))
    order = np.lexsort((np.arange(len(items)), where))
    lines, positions, cursor = [], {"subject": [], "members": [], "passage": []}, 0
    for j in order:
        lines.extend(splits.train[cursor:where[j]])
        cursor = int(where[j])
        text, tag = items[j]
        for part in text.split("\n"):
            positions[tag].append(len(lines))
            lines.append(part)
    lines.extend(splits.train[cursor:])
    return CaseStudy(cfg, splits, lines, positions, subject, members, outsiders, subject_lines, member_lines, outsider_lines, passage)
