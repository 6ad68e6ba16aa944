"""Real-world case studies (notebook 09): the two requests an LLM provider actually gets.

* **Personal data.** E-mail-like records of made-up people (names, e-mail addresses, phone and
  account numbers, street addresses), generated from a seed and the word lists below, are mixed
  into a real corpus. One person, the *data subject*, has many records, each seen several times;
  they ask for their data to be deleted. Their phone and account numbers have randomness spaces,
  so their exposure is measured as for canaries; extraction asks whether a greedy or sampled
  continuation of their record's prefix reproduces them; membership inference asks whether their
  records can be told apart from records of people the model never saw.
* **Verbatim text.** A passage from another corpus (a run of King James Bible verses from its
  held-out split, standing in for a copyrighted chapter) is repeated in training until the model
  reproduces it; the request is to remove the whole passage. Measured by extraction (longest
  common prefix and ROUGE-L of continuations of passage prefixes) and the passage's perplexity.

Each scenario is judged against the model retrained without the requested data. Names, addresses
and domains are fictional (``.example`` is a reserved top-level domain).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from .cache import cache_root, cached_result, config_key, load_run, save_run
from .canaries import SLOT, Canary, RandomnessSpace
from .data import CORPORA, corpus_path, load_corpus, sha256_file
from .evaluation import compute_perplexity, tokenize_lines
from .models import ModelConfig, make_model
from .profiles import resolve_device, resolve_profile
from .tokenization import make_byte_tokenizer
from .training import TrainConfig, train_language_model

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
    """Everything that defines notebook 09's training run except the seed and device."""

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
        profile = resolve_profile(profile)
        base = {"tiny": dict(max_chars=60_000, secret_length=4, n_members=30, n_outsiders=40, subject_records=10,
                             subject_repeats=10, passage_chars=300, passage_repeats=100, extract_prefix=24, extract_length=32),
                "small": dict(), "full": dict()}[profile]
        train = TrainConfig.for_profile(profile)
        if profile == "tiny":  # three times the canary runs' steps: the records and the passage must be learned first
            train = replace(train, steps=3 * train.steps, eval_every=3 * train.eval_every, eval_steps=())
        return replace(cls(profile=profile, model=ModelConfig.for_profile(profile), train=train, **base), **overrides)

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


def train_case_study_model(cfg: CaseStudyConfig, seed: int = 0, device=None, without: tuple[str, ...] = (), cache_dir=None,
                           progress: bool = True):
    """Train (or load from the cache) the case-study model, or the one retrained ``without`` the
    subject's records (``"subject"``) and/or the passage (``"passage"``): same seed and steps.
    Returns ``(model, tokenizer, study, record, from_cache)``. Notebook 09."""
    unknown = sorted(set(without) - {"subject", "passage"})
    if unknown:
        raise ValueError(f"can retrain without 'subject' or 'passage', not {unknown}")
    device = resolve_device(device)
    study = build_case_study(cfg, seed)
    tokenizer = make_byte_tokenizer()
    run_config = {"kind": "case_study", "seed": seed, "data_sha256": [sha256_file(corpus_path(c)) for c in (cfg.corpus, cfg.passage_corpus)],
                  **cfg.to_dict(), "without": sorted(without)}
    folder = cache_root(cache_dir) / f"case_study-{config_key(run_config)}"
    if (folder / "run.json").is_file():
        model, tokenizer, record = load_run(folder, run_config, device=device)
        return model, tokenizer, study, record, True
    model = make_model(cfg.model, len(tokenizer), seed=seed, device=device)
    train_ids = tokenize_lines(tokenizer, study.lines_without(*without))
    val_ids = tokenize_lines(tokenizer, study.splits.validation)
    start = time.perf_counter()
    history = train_language_model(model, train_ids, val_ids, cfg.train, seed=seed, device=device, progress=progress)
    record = {"history": history.to_dict(), "train_seconds": time.perf_counter() - start}
    save_run(folder, model, tokenizer, run_config, record)
    return model, tokenizer, study, record, False


# ----------------------------------------------------------------------------------- measurements
def extract_pii(model, tokenizer, study: CaseStudy, samples: int = 16, seed: int = 0) -> dict:
    """Does a continuation of the subject's record head reproduce their secrets? For the phone
    number (given the head) and the account number (given the head and the phone): the greedy
    continuation, whether it is the secret, and the fraction of ``samples`` sampled continuations
    (temperature 1) that are."""
    from .mia import generate_continuations

    s, n = study.subject, study.cfg.secret_length
    out = {}
    for field_name, head, secret in (("phone", s.head, s.phone), ("account", f"{s.head}{s.phone} acct ", s.account)):
        greedy = generate_continuations(model, tokenizer, ["\n" + head], n)[0][0]
        sampled = generate_continuations(model, tokenizer, ["\n" + head], n, greedy=False, n_samples=samples, seed=seed)[0]
        out[field_name] = {"greedy": greedy, "greedy_extracted": greedy == secret, "sampled_extracted": sum(x == secret for x in sampled) / samples}
    return out


def extract_passage(model, tokenizer, study: CaseStudy) -> dict:
    """Greedy continuations of ``extract_length`` characters after ``extract_prefix`` characters of
    the passage, at offsets every ``extract_length`` characters: mean longest common prefix with
    the passage (characters), the fraction reproduced exactly, mean ROUGE-L, and the first example."""
    from .mia import generate_continuations, longest_common_prefix, rouge_l

    cfg, text = study.cfg, "\n" + study.passage
    offsets = list(range(cfg.extract_prefix, len(text) - cfg.extract_length + 1, cfg.extract_length))
    outs = [o[0] for o in generate_continuations(model, tokenizer, [text[o - cfg.extract_prefix:o] for o in offsets], cfg.extract_length)]
    truth = [text[o:o + cfg.extract_length] for o in offsets]
    lcp = [longest_common_prefix(o, t) for o, t in zip(outs, truth)]
    return {"offsets": len(offsets), "mean_lcp": float(np.mean(lcp)), "exact": float(np.mean([x == cfg.extract_length for x in lcp])),
            "rouge_l": float(np.mean([rouge_l(o, t) for o, t in zip(outs, truth)])),
            "example": {"prefix": text[offsets[0] - cfg.extract_prefix:offsets[0]], "continuation": outs[0], "truth": truth[0]}}


def evaluate_pii(model, tokenizer, study: CaseStudy, reference=None, candidates: int | None = None, seed: int = 0) -> dict:
    """The personal-data request's measurements for one model: exposure of the subject's secrets
    (and a member's and an outsider's, for comparison; exact, or among ``candidates``), extraction,
    membership inference of the subject's records against never-seen people's records (the
    reference attack with ``reference``) and of the members' records as a baseline, validation
    perplexity."""
    from .exposure import compute_exposure
    from .mia import attack_scores, summarise_attacks

    out = {"exposure": {c.name: compute_exposure(model, tokenizer, c, candidates=candidates).exposure for c in study.canaries}}
    out["extraction"] = extract_pii(model, tokenizer, study, seed=seed)
    outsiders = attack_scores(model, tokenizer, study.outsider_lines, reference=reference)  # the non-members of both comparisons
    out["mia_subject"] = summarise_attacks(attack_scores(model, tokenizer, study.subject_lines, reference=reference), outsiders)
    out["mia_members"] = summarise_attacks(attack_scores(model, tokenizer, study.member_lines, reference=reference), outsiders)
    out["val_perplexity"] = _val_perplexity(model, tokenizer, study)
    return out


def evaluate_passage(model, tokenizer, study: CaseStudy) -> dict:
    """The verbatim-text request's measurements for one model: extraction, the passage's
    perplexity, validation perplexity."""
    passage_ids = tokenize_lines(tokenizer, ["", study.passage])
    return {"extraction": extract_passage(model, tokenizer, study),
            "passage_perplexity": compute_perplexity(model, passage_ids, min(study.cfg.train.block_size, len(passage_ids) - 1)),
            "val_perplexity": _val_perplexity(model, tokenizer, study)}


def _val_perplexity(model, tokenizer, study: CaseStudy) -> float:
    return compute_perplexity(model, tokenize_lines(tokenizer, study.splits.validation), study.cfg.train.block_size, max_blocks=64)


# ----------------------------------------------------------------------------------- the experiment
CASE_STUDY_METHODS = ("fisher_removal", "fisher_forgetting", "gradient_ascent", "gradient_difference", "npo", "fine_tune")


def case_study_config(profile: str | None = None) -> CaseStudyConfig:
    """The case study that notebook 09 and the reproduction run at ``profile``. Like the benchmark
    and the DP runs, the CPU profile (``small``) uses the ``tiny`` model scale for this multi-model
    experiment (two trainings and thirteen unlearning runs); ``full`` uses the ``small`` scale."""
    profile = resolve_profile(profile)
    return CaseStudyConfig.for_profile({"tiny": "tiny", "small": "tiny", "full": "small"}[profile])


def case_study_experiment(cfg: CaseStudyConfig, seed: int = 0, device=None, methods: tuple[str, ...] = CASE_STUDY_METHODS,
                          candidates: int | None = None, use_cache: bool = True, progress: bool = True) -> tuple[dict, bool]:
    """Both requests, every method at its profile default (Fisher Removal also with the secrets-only
    forget set), against the model retrained without both requests' data (one retraining serves
    both: each request's measurements barely depend on the other's data). PII rows: exposure of the
    subject's secrets (exact, or among ``candidates``), extraction, membership inference (the
    reference attack uses the retrained model, so it is not run on that model itself), validation
    perplexity. Passage rows: extraction, the passage's perplexity, validation perplexity. An update
    the guards refuse is reported as an error row. Cached: ``(result, from_cache)``. Notebook 09."""
    from .unlearning import METHODS, UnlearningError, unlearn

    def compute():
        model, tokenizer, study, _, _ = train_case_study_model(cfg, seed, device, progress=progress)
        retrained, _, _, record, _ = train_case_study_model(cfg, seed, device, without=("subject", "passage"), progress=progress)

        def evaluate(scenario, m, reference=retrained):
            if scenario == "pii":
                return evaluate_pii(m, tokenizer, study, reference=reference, candidates=candidates, seed=seed)
            return evaluate_passage(m, tokenizer, study)

        out = {"subject": study.subject.name, "canaries": [c.to_dict() for c in study.canaries], "passage": study.passage,
               "retrain_seconds": record["train_seconds"], "reports": {"pii": {}, "verbatim": {}}}
        for scenario in ("pii", "verbatim"):
            out[scenario] = {"original": evaluate(scenario, model), "retrained": evaluate(scenario, retrained, reference=None)}
        forget_sets = {"pii": study.pii_forget_items("records"), "verbatim": study.passage_forget_items()}
        runs = [(scenario, method, method, forget_sets[scenario]) for scenario in ("pii", "verbatim") for method in methods]
        if "fisher_removal" in methods:
            runs.append(("pii", "fisher_removal", "fisher_removal (secrets only)", study.pii_forget_items("secrets")))
        for scenario, method, label, forget in runs:
            start = time.perf_counter()
            try:
                unlearned, report = unlearn(model, tokenizer, forget, study.retain, method, METHODS[method].config.for_profile(cfg.profile),
                                            n_train=len(study.lines), seed=seed)
            except UnlearningError as err:  # refused (non-finite or oversized update): reported, not hidden
                out[scenario][label] = {"error": str(err)}
                continue
            out[scenario][label] = {**evaluate(scenario, unlearned), "seconds": time.perf_counter() - start}
            out["reports"][scenario][label] = report.to_dict()
        return out

    key = {"run": cfg.to_dict(), "seed": seed, "methods": list(methods), "candidates": candidates}
    return cached_result("case_study", key, compute, use_cache=use_cache, modules=("scenarios.py", "mia.py"))


# ----------------------------------------------------------------------------------- tables and figure
def _subject_canaries(result: dict) -> list[str]:
    return [c["name"] for c in result["canaries"]]


def case_study_markdown(result: dict) -> str:
    """Both scenarios' tables: every model's measurements, the retrained model as the reference."""
    names = _subject_canaries(result)
    attacks = [a for a in ("loss", "zlib", "min_k", "reference") if a in result["pii"]["original"]["mia_subject"]]
    lines = [f"### Personal data: {result['subject']} asks for their records to be deleted", "",
             "Exposure in bits of the subject's secrets (and of one other person's, seen twice, and of a never-seen person's); "
             "extraction: the greedy continuation of the record's head, and the share of 16 sampled continuations that are the "
             "secret; membership inference: ROC AUC of the subject's records against never-seen people's records.", "",
             "| model | " + " | ".join(names) + " | greedy phone | sampled phone | " + " | ".join(f"AUC {a}" for a in attacks)
             + " | val ppl |", "|---|" + "---:|" * (len(names) + 2 + len(attacks) + 1)]
    for model, r in result["pii"].items():
        if "error" in r:
            lines.append(f"| {model} | refused: {r['error'][:80]} |")
            continue
        ext = r["extraction"]["phone"]
        aucs = " | ".join(f"{r['mia_subject'][a]['auc']:.2f}" if a in r["mia_subject"] else "n/a" for a in attacks)
        lines.append(f"| {model} | " + " | ".join(f"{r['exposure'][n]:.2f}" for n in names)
                     + f" | {'yes' if ext['greedy_extracted'] else 'no'} (`{ext['greedy']}`) | {ext['sampled_extracted']:.2f} | {aucs} | "
                     f"{r['val_perplexity']:.2f} |")
    lines += ["", "### Verbatim text: remove a repeated passage", "",
              f"Greedy continuations of passage prefixes: mean longest common prefix with the passage (characters), the share "
              f"reproduced exactly, ROUGE-L; the passage's perplexity. Passage ({len(result['passage'])} characters) starts: "
              f"\"{result['passage'][:80]}...\"", "",
              "| model | mean LCP | exact | ROUGE-L | passage ppl | val ppl |", "|---|---:|---:|---:|---:|---:|"]
    for model, r in result["verbatim"].items():
        if "error" in r:
            lines.append(f"| {model} | refused: {r['error'][:80]} |")
            continue
        e = r["extraction"]
        lines.append(f"| {model} | {e['mean_lcp']:.1f} | {e['exact']:.2f} | {e['rouge_l']:.2f} | {r['passage_perplexity']:.2f} | "
                     f"{r['val_perplexity']:.2f} |")
    return "\n".join(lines) + "\n"


def plot_case_study(result: dict, axes=None):
    """Three panels: the subject's phone-number exposure, the best membership-inference AUC over the
    attacks, and the passage's perplexity, each against validation perplexity (log scale), every
    model in the benchmark's colours and the retrained model as the star. Notebook 09."""
    import matplotlib.pyplot as plt

    from .benchmark import COLOURS

    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(15, 4))
    phone = _subject_canaries(result)[0]
    panels = [("pii", lambda r: r["exposure"][phone], f"exposure of {phone} (bits)"),
              ("pii", lambda r: max(v["auc"] for v in r["mia_subject"].values()), "best membership-inference AUC"),
              ("verbatim", lambda r: r["passage_perplexity"], "perplexity of the passage")]
    for ax, (scenario, value, label) in zip(axes, panels):
        for model, r in result[scenario].items():
            if "error" in r:
                continue
            base = model.split(" (")[0]
            ax.plot(r["val_perplexity"], value(r), "*" if model == "retrained" else ("s" if model == "original" else
                    ("^" if "(" in model else "o")), ms=14 if model == "retrained" else 7, color=COLOURS.get(base, "grey"),
                    label=model.replace("_", " "))
        ax.set(xlabel="validation perplexity", ylabel=label, xscale="log")
    axes[1].axhline(0.5, color="grey", ls=":")
    axes[2].set_yscale("log")
    axes[0].legend(fontsize="x-small")
    return axes
