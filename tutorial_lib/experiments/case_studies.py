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
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..core.cache import cache_root, cached_result, config_key, key_lock, load_run, save_run
from ..core.data import corpus_sha256
from ..core.evaluation import compute_perplexity, tokenize_lines
from ..core.models import make_model
from ..core.profiles import BANDS, progress_options, resolve_device
from ..core.tokenization import make_byte_tokenizer
from ..core.training import train_language_model
from ..privacy.exposure import compute_exposure
from ..privacy.mia import (
    attack_scores,
    generate_continuations,
    longest_common_prefix,
    rouge_l,
    summarise_attacks,
)
from ..unlearning.api import METHODS, unlearn
from ..unlearning.base import UnlearningError
from ..unlearning.verdicts import privleak
from .benchmark import COLOURS
from .case_study_data import CaseStudy, CaseStudyConfig, build_case_study


@dataclass
class CaseStudyModel:
    """A trained (or cached) case-study model: ``model``, ``tokenizer``, the ``study`` it was trained on
    (people, requests, passage), the stored ``record`` and ``from_cache``."""

    model: Any
    tokenizer: Any
    study: CaseStudy
    record: dict
    from_cache: bool


def train_case_study_model(cfg: CaseStudyConfig, seed: int = 0, device=None, without: tuple[str, ...] = (), cache_dir=None,
                           progress: bool = True) -> CaseStudyModel:
    """Train (or load from the cache) the case-study model, or the one retrained ``without`` the
    subject's records (``"subject"``) and/or the passage (``"passage"``): same seed and steps.
    Returns a :class:`CaseStudyModel`. Notebook 09."""
    unknown = sorted(set(without) - {"subject", "passage"})
    if unknown:
        raise ValueError(f"can retrain without 'subject' or 'passage', not {unknown}")
    device = resolve_device(device)
    study = build_case_study(cfg, seed)
    tokenizer = make_byte_tokenizer()
    run_config = {"kind": "case_study", "seed": seed, "data_sha256": [corpus_sha256(c)[1] for c in (cfg.corpus, cfg.passage_corpus)],
                  **cfg.to_dict(), "without": sorted(without)}
    folder = cache_root(cache_dir) / f"case_study-{config_key(run_config)}"
    with key_lock(folder):  # a second process asking for this checkpoint waits, then loads it
        if (folder / "run.json").is_file():
            run = load_run(folder, run_config, device=device)
            return CaseStudyModel(run.model, run.tokenizer, study, run.record, True)
        model = make_model(cfg.model, len(tokenizer), seed=seed, device=device)
        train_ids = tokenize_lines(tokenizer, study.lines_without(*without))
        val_ids = tokenize_lines(tokenizer, study.splits.validation)
        start = time.perf_counter()
        history = train_language_model(model, train_ids, val_ids, cfg.train, seed=seed, device=device, progress=progress)
        record = {"history": history.to_dict(), "train_seconds": time.perf_counter() - start}
        save_run(folder, model, tokenizer, run_config, record)
        return CaseStudyModel(model, tokenizer, study, record, False)


# ----------------------------------------------------------------------------------- measurements
def extract_pii(model, tokenizer, study: CaseStudy, samples: int = 16, seed: int = 0) -> dict:
    """Does a continuation of the subject's record head reproduce their secrets? For the phone
    number (given the head) and the account number (given the head and the phone): the greedy
    continuation, whether it is the secret, and the fraction of ``samples`` sampled continuations
    (temperature 1) that are."""

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

    cfg, text = study.cfg, "\n" + study.passage
    offsets = list(range(cfg.extract_prefix, len(text) - cfg.extract_length + 1, cfg.extract_length))
    outs = [o[0] for o in generate_continuations(model, tokenizer, [text[o - cfg.extract_prefix:o] for o in offsets], cfg.extract_length)]
    truth = [text[o:o + cfg.extract_length] for o in offsets]
    lcp = [longest_common_prefix(o, t) for o, t in zip(outs, truth)]
    return {"offsets": len(offsets), "mean_lcp": float(np.mean(lcp)), "exact": float(np.mean([x == cfg.extract_length for x in lcp])),
            "rouge_l": float(np.mean([rouge_l(o, t) for o, t in zip(outs, truth)])),
            "example": {"prefix": text[offsets[0] - cfg.extract_prefix:offsets[0]], "continuation": outs[0], "truth": truth[0]}}


def evaluate_pii(model, tokenizer, study: CaseStudy, reference=None, candidates: int | None = None, seed: int = 0,
                 progress: bool = True) -> dict:
    """The personal-data request's measurements for one model: exposure of the subject's secrets
    (and a member's and an outsider's, for comparison; exact, or among ``candidates``; with bars if
    ``progress``), extraction, membership inference of the subject's records against never-seen
    people's records (the reference attack with ``reference``) and of the members' records as a
    baseline, validation perplexity."""

    out = {"exposure": {c.name: compute_exposure(model, tokenizer, c, candidates=candidates, progress=progress).exposure
                        for c in study.canaries}}
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


def run_case_study(cfg: CaseStudyConfig, seed: int = 0, device=None, methods: tuple[str, ...] = CASE_STUDY_METHODS,
                          candidates: int | None = None, use_cache: bool = True, progress: bool = True) -> tuple[dict, bool]:
    """Both requests, every method at its profile default (Fisher Removal also with the secrets-only
    forget set), against the model retrained without both requests' data (one retraining serves
    both: each request's measurements barely depend on the other's data). PII rows: exposure of the
    subject's secrets (exact, or among ``candidates``), extraction, membership inference (the
    reference attack uses the retrained model, so it is not run on that model itself), validation
    perplexity. Passage rows: extraction, the passage's perplexity, validation perplexity. An update
    the guards refuse is reported as an error row. Cached: ``(result, from_cache)``. Notebook 09."""

    def compute():
        trained = train_case_study_model(cfg, seed, device, progress=progress)
        model, tokenizer, study = trained.model, trained.tokenizer, trained.study
        retrained_run = train_case_study_model(cfg, seed, device, without=("subject", "passage"), progress=progress)
        retrained, record = retrained_run.model, retrained_run.record

        def evaluate(scenario, m, reference=retrained):
            if scenario == "pii":
                return evaluate_pii(m, tokenizer, study, reference=reference, candidates=candidates, seed=seed, progress=progress)
            return evaluate_passage(m, tokenizer, study)

        out = {"subject": study.subject.name, "canaries": [c.to_dict() for c in study.canaries], "passage": study.passage,
               "retrain_seconds": record["train_seconds"], "reports": {"pii": {}, "verbatim": {}}}
        for scenario in ("pii", "verbatim"):
            out[scenario] = {"original": evaluate(scenario, model), "retrained": evaluate(scenario, retrained, reference=None)}
        forget_sets = {"pii": study.pii_forget_items("records"), "verbatim": study.passage_forget_items()}
        runs = [(scenario, method, method, forget_sets[scenario]) for scenario in ("pii", "verbatim") for method in methods]
        if "fisher_removal" in methods:
            runs.append(("pii", "fisher_removal", "fisher_removal (secrets only)", study.pii_forget_items("secrets")))
        for scenario, method, label, forget in tqdm(runs, desc="case studies (request x method)", **progress_options(progress)):
            start = time.perf_counter()
            try:
                unlearned, report = unlearn(model, tokenizer, forget, study.retain, method, METHODS[method].config.for_profile(cfg.profile),
                                            n_train=len(study.lines), seed=seed, progress=progress)
            except UnlearningError as err:  # refused (non-finite or oversized update): reported, not hidden
                out[scenario][label] = {"error": str(err)}
                continue
            out[scenario][label] = {**evaluate(scenario, unlearned), "seconds": time.perf_counter() - start}
            out["reports"][scenario][label] = report.to_dict()
        return out

    key = {"run": cfg.to_dict(), "seed": seed, "methods": list(methods), "candidates": candidates}
    return cached_result("case_study", key, compute, use_cache=use_cache, modules=("experiments/case_studies.py", "experiments/case_study_data.py", "privacy/mia.py"))


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


@dataclass
class PIIVerdicts:
    """Per model of the personal-data request (the retrained one included, refused runs left out):
    the exposure of the subject's two secrets minus the retrained model's (``exposure_gaps``), each
    attack's AUC minus the retrained model's (``auc_gaps``), whether all lie within ``tolerance_bits``
    and ``tolerance_auc`` (``ok_exposure``, ``ok_auc``) and the validation perplexity."""

    tolerance_bits: float
    tolerance_auc: float
    retrained_perplexity: float
    rows: dict[str, dict]

    @property
    def within_both(self) -> list[str]:
        """The models inside both bands."""
        return [m for m, r in self.rows.items() if r["ok_exposure"] and r["ok_auc"]]

    def summary(self) -> str:
        lines = []
        for model, r in self.rows.items():
            lines.append(f"{model:30s} exposure vs retrained {', '.join(f'{g:+.2f}' for g in r['exposure_gaps'].values())} bits "
                         f"({'within' if r['ok_exposure'] else 'OUTSIDE'} {self.tolerance_bits:g}) | AUC vs retrained "
                         f"{', '.join(f'{a} {g:+.2f}' for a, g in r['auc_gaps'].items())} ({'within' if r['ok_auc'] else 'OUTSIDE'} "
                         f"{self.tolerance_auc:g}) | PrivLeak {', '.join(f'{a} {v:+.0%}' for a, v in r['privleak'].items())} "
                         f"| val ppl {r['val_perplexity']:.2f} (retrained {self.retrained_perplexity:.2f})")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"tolerance_bits": self.tolerance_bits, "tolerance_auc": self.tolerance_auc, "retrained_perplexity": self.retrained_perplexity,
                "rows": self.rows, "within_both": self.within_both}


def pii_verdicts(result: dict, tolerance_bits: float = BANDS.exposure_bits, tolerance_auc: float = 0.1) -> PIIVerdicts:
    """Judge every model of :func:`run_case_study`'s personal-data request against the retrained
    model: the subject's first two secrets (phone, account) within ``tolerance_bits`` of its exposure,
    every membership attack's AUC on the subject's records within ``tolerance_auc`` of its AUC, and
    each attack's PrivLeak (:func:`~tutorial_lib.unlearning.verdicts.privleak`: relative to the retrained
    model's AUC; negative: over-forgotten).
    Notebook 09, "The checks"."""
    secrets = _subject_canaries(result)[:2]
    rt = result["pii"]["retrained"]
    rows = {}
    for model, r in result["pii"].items():
        if model == "original" or "error" in r:
            continue
        gaps = {n: r["exposure"][n] - rt["exposure"][n] for n in secrets}
        auc_gaps = {a: r["mia_subject"][a]["auc"] - rt["mia_subject"][a]["auc"] for a in rt["mia_subject"]}
        leak = {a: privleak(r["mia_subject"][a]["auc"], rt["mia_subject"][a]["auc"]) for a in rt["mia_subject"]}
        rows[model] = {"exposure_gaps": gaps, "auc_gaps": auc_gaps, "privleak": leak,
                       "ok_exposure": all(abs(g) <= tolerance_bits for g in gaps.values()),
                       "ok_auc": all(abs(g) <= tolerance_auc for g in auc_gaps.values()), "val_perplexity": r["val_perplexity"]}
    return PIIVerdicts(tolerance_bits, tolerance_auc, rt["val_perplexity"], rows)


def plot_case_study(result: dict, axes=None):
    """Three panels: the subject's phone-number exposure, the best membership-inference AUC over the
    attacks, and the passage's perplexity, each against validation perplexity (log scale), every
    model in the benchmark's colours and the retrained model as the star. Notebook 09."""
    import matplotlib.pyplot as plt


    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(15, 4))
    phone = _subject_canaries(result)[0]
    panels = [("pii", lambda r: r["exposure"][phone], f"exposure of {phone} (bits)", "Personal data: the phone number"),
              ("pii", lambda r: max(v["auc"] for v in r["mia_subject"].values()), "best membership-inference AUC",
               "Personal data: membership inference"),
              ("verbatim", lambda r: r["passage_perplexity"], "perplexity of the passage", "Verbatim passage")]
    for ax, (scenario, value, label, title) in zip(axes, panels):
        if not ax.get_title():
            ax.set_title(title)
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
