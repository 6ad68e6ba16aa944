"""Membership inference and extraction (notebook 09): is the data really gone?

Membership inference scores a text by how "familiar" the model finds it; an attack is judged by
how well its scores separate members (here: the forgotten records) from non-members (never-seen
texts of the same template). Every score is "higher = more likely a member":

* ``loss``: minus the mean token loss (Yeom et al. 2018);
* ``zlib``: minus the ratio of the text's total loss (nats) to its zlib-compressed length in bits,
  so that texts that are merely easy (repetitive) are not flagged (Carlini et al. 2021);
* ``min_k``: the mean of the k % lowest token log-probabilities (Shi et al. 2024, Min-K% Prob);
  k = 100 % is minus the mean loss;
* ``reference``: the reference model's loss minus the target model's (a retrained or differently
  seeded model calibrates away what any model of the data would find easy).

:func:`roc_auc` (the Mann–Whitney U statistic, from scipy) and :func:`tpr_at_fpr` summarise an attack:
an AUC near 0.5 and a TPR near the FPR mean the attack cannot tell the records from fresh ones.

Extraction: :func:`generate_continuations` (greedy or sampled, from ``model.generate``) and the
metrics :func:`longest_common_prefix` and :func:`rouge_l`.
"""
from __future__ import annotations

import math
import zlib

import numpy as np
import torch

from ..core.models import check_causal_lm
from ..core.tokenization import check_texts

ATTACKS = ("loss", "zlib", "min_k", "reference")


# ----------------------------------------------------------------------------------- scores
def token_logprobs(model, tokenizer, texts: list[str], max_length: int | None = None, batch_size: int = 32) -> list[np.ndarray]:
    """The log-probability of every token of each text given the tokens before it (the first
    token has no prediction), as float64 arrays; texts are cut at ``max_length`` tokens (default:
    the model's context)."""
    if not texts:
        raise ValueError("no texts to score")
    max_length = max_length or getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 1024)
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"][:max_length] for t in texts]
    short = [t for t, r in zip(texts, rows) if len(r) < 2]
    if short:
        raise ValueError(f"every text needs at least two tokens; too short: {short[0]!r}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            T = max(len(r) for r in chunk)
            ids = torch.zeros((len(chunk), T), dtype=torch.long)
            mask = torch.zeros((len(chunk), T), dtype=torch.long)
            for i, r in enumerate(chunk):
                ids[i, :len(r)] = torch.tensor(r)
                mask[i, :len(r)] = 1
            ids, mask = ids.to(device), mask.to(device)
            positions = torch.arange(T, device=device).expand(len(chunk), T)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits[:, :-1].double()
            lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
            out += [lp[i, :len(r) - 1].cpu().numpy() for i, r in enumerate(chunk)]
    model.train(was_training)
    return out


def loss_score(logprobs: np.ndarray) -> float:
    """Minus the mean token loss: the mean log-probability."""
    return float(np.mean(logprobs))


def zlib_score(logprobs: np.ndarray, text: str) -> float:
    """Minus (total loss in nats) / (zlib-compressed length of the text in bits)."""
    return float(np.sum(logprobs) / (8 * len(zlib.compress(text.encode("utf-8")))))


def min_k_score(logprobs: np.ndarray, k: float = 0.2) -> float:
    """Mean of the ``k`` fraction (0 < k <= 1) of lowest token log-probabilities (at least one token)."""
    if not 0 < k <= 1:
        raise ValueError(f"k must lie in (0, 1], got {k}")
    n = max(1, int(math.ceil(k * len(logprobs))))
    return float(np.mean(np.sort(logprobs)[:n]))


def attack_scores(model, tokenizer, texts: list[str], attacks: tuple[str, ...] = ATTACKS, reference=None, k: float = 0.2) -> dict[str, np.ndarray]:
    """Every attack's score (higher = more likely a member) for each text; ``reference`` (a model)
    is needed for the ``reference`` attack and skipped without one."""
    check_causal_lm(model)
    check_texts(texts)
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attack {unknown[0]!r}; expected one of {', '.join(ATTACKS)}")
    lps = token_logprobs(model, tokenizer, texts)
    out = {}
    if "loss" in attacks:
        out["loss"] = np.array([loss_score(lp) for lp in lps])
    if "zlib" in attacks:
        out["zlib"] = np.array([zlib_score(lp, t) for lp, t in zip(lps, texts)])
    if "min_k" in attacks:
        out["min_k"] = np.array([min_k_score(lp, k) for lp in lps])
    if "reference" in attacks and reference is not None:
        ref = token_logprobs(reference, tokenizer, texts)
        out["reference"] = np.array([loss_score(lp) - loss_score(r) for lp, r in zip(lps, ref)])
    return out


# ----------------------------------------------------------------------------------- summaries
def _pair(members, nonmembers) -> tuple[np.ndarray, np.ndarray]:
    m, n = np.asarray(members, dtype=float).ravel(), np.asarray(nonmembers, dtype=float).ravel()
    if len(m) == 0 or len(n) == 0:
        raise ValueError(f"need members and non-members, got {len(m)} and {len(n)}")
    if not (np.isfinite(m).all() and np.isfinite(n).all()):
        raise ValueError("scores must be finite")
    return m, n


def roc_auc(members, nonmembers) -> float:
    """Area under the ROC curve of "score above a threshold means member": the probability that a
    random member outscores a random non-member (ties count half), via scipy's Mann–Whitney U."""
    from scipy.stats import mannwhitneyu

    m, n = _pair(members, nonmembers)
    return float(mannwhitneyu(m, n, alternative="two-sided").statistic / (len(m) * len(n)))


def roc_curve(members, nonmembers) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every threshold, from (0, 0) to (1, 1)."""
    m, n = _pair(members, nonmembers)
    thresholds = np.unique(np.concatenate([m, n]))[::-1]
    fpr = np.array([0.0] + [(n >= t).mean() for t in thresholds])
    tpr = np.array([0.0] + [(m >= t).mean() for t in thresholds])
    return fpr, tpr


def tpr_at_fpr(members, nonmembers, fpr: float = 0.01) -> float:
    """The largest true-positive rate of a threshold whose false-positive rate is at most ``fpr``."""
    if not 0 <= fpr <= 1:
        raise ValueError(f"fpr must lie in [0, 1], got {fpr}")
    f, t = roc_curve(members, nonmembers)
    return float(t[f <= fpr + 1e-12].max())


def membership_inference(model, tokenizer, members: list[str], nonmembers: list[str], reference=None,
                         attacks: tuple[str, ...] = ATTACKS, fpr: float = 0.01, k: float = 0.2) -> dict[str, dict]:
    """Every attack on ``members`` (e.g. forgotten records) against ``nonmembers`` (never-seen texts
    of the same template): ``{attack: {"auc", "tpr_at_fpr", "fpr"}}``."""
    check_texts(members, "members")
    check_texts(nonmembers, "nonmembers")
    return summarise_attacks(attack_scores(model, tokenizer, members, attacks, reference, k),
                             attack_scores(model, tokenizer, nonmembers, attacks, reference, k), fpr)


def summarise_attacks(member_scores: dict, nonmember_scores: dict, fpr: float = 0.01) -> dict[str, dict]:
    """``{attack: {"auc", "tpr_at_fpr", "fpr"}}`` from :func:`attack_scores` of members and non-members."""
    return {a: {"auc": roc_auc(m, nonmember_scores[a]), "tpr_at_fpr": tpr_at_fpr(m, nonmember_scores[a], fpr), "fpr": fpr}
            for a, m in member_scores.items()}


# ----------------------------------------------------------------------------------- extraction
def generate_continuations(model, tokenizer, prefixes: list[str], max_new_tokens: int, greedy: bool = True, n_samples: int = 1,
                           temperature: float = 1.0, top_k: int | None = None, seed: int = 0) -> list[list[str]]:
    """For each prefix, ``n_samples`` continuations of ``max_new_tokens`` tokens (greedy: one), decoded,
    with ``model.generate``; sampling is seeded."""
    check_causal_lm(model)
    check_texts(prefixes, "prefixes")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    device = next(model.parameters()).device
    model.eval()
    out = []
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for prefix in prefixes:
            ids = torch.tensor([tokenizer(prefix, add_special_tokens=False)["input_ids"]], device=device)
            if ids.shape[1] == 0:
                raise ValueError("empty prefix")
            kwargs = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature, top_k=top_k or 0,
                                                               num_return_sequences=n_samples)
            with torch.no_grad():
                seqs = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                      pad_token_id=model.config.eos_token_id, **kwargs)
            out.append([tokenizer.decode(s[ids.shape[1]:].tolist()) for s in seqs])
    finally:
        torch.random.set_rng_state(generator_state)
    return out


def longest_common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix of two strings (characters)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 over whitespace-separated words: 2PR/(P+R) from the longest common subsequence."""
    c, r = candidate.split(), reference.split()
    if not c or not r:
        return 0.0
    prev = [0] * (len(r) + 1)
    for x in c:
        cur = [0]
        for j, y in enumerate(r):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(c), lcs / len(r)
    return 2 * p * rec / (p + rec)
