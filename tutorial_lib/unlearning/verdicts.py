"""Judging an unlearned model against the retrained model, two-sided (``docs/method.md`` §7), and the
field's standard metrics beside exposure.

Unlearning aims at the model retrained without the forgotten data, not at zero. :func:`judge` calls
an unlearned model "at the retrained model" when the forgotten secret's exposure is within
:data:`~tutorial_lib.core.profiles.BANDS` ``.exposure_bits`` of the retrained model's (above *or*
below), its validation perplexity at most ``1 + perplexity_increase`` times the retrained model's,
and its KL(retrained ‖ unlearned) at most ``1 + kl_increase`` times the original's KL(retrained ‖
original). Otherwise it is "under-forgotten" (exposure above the band), "over-forgotten" (below it:
an auditor sees the unusually *low* likelihood) or "damaged" (exposure in the band, utility or
distance out of theirs). Every verdict carries its measured values, its bands and the forget loss it
used.

:func:`forget_quality` is TOFU's forget quality: the p-value of a two-sample Kolmogorov–Smirnov test
between the unlearned and the retrained model's per-item forget losses (high: indistinguishable).
:func:`privleak` is MUSE's PrivLeak, (AUC_unlearned − AUC_retrained) / AUC_retrained of a membership
attack (negative: the forgotten data now looks *less* familiar than to the retrained model), and
:func:`secret_membership_auc` the AUC of the loss attack that tells a canary's secret from every other
candidate of its space, read off its exact exposure.

Notebooks 04, 05, 07 and 10; the benchmark's claims.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..core.profiles import BANDS, Bands

AT = "at the retrained model"
UNDER = "under-forgotten"
OVER = "over-forgotten"
DAMAGED = "damaged"
VERDICTS = (AT, UNDER, OVER, DAMAGED)

#: what each forget loss of :func:`~tutorial_lib.unlearning.base.canary_forget_items` measures
FORGET_LOSSES = {"secret": "the secret's tokens given the canary's prefix", "line": "the whole canary line"}


@dataclass(frozen=True)
class Verdict:
    """One unlearned model judged against the retrained one: ``verdict`` (one of :data:`VERDICTS`),
    the ``reasons`` behind it, the measured ``values``, the ``bands`` used and the ``forget_loss`` the
    unlearning ran with."""

    verdict: str
    reasons: tuple[str, ...]
    values: dict
    bands: dict
    forget_loss: str

    @property
    def at_retrained(self) -> bool:
        return self.verdict == AT

    def summary(self) -> str:
        v = self.values
        return (f"{self.verdict}: exposure {v['exposure']:.2f} bits vs retrained {v['retrained_exposure']:.2f} "
                f"(band ±{self.bands['exposure_bits']:g}), val ppl {v['perplexity']:.3f} vs retrained {v['retrained_perplexity']:.3f}"
                + (f", KL to retrained {v['kl']:.4f} vs original's {v['original_kl']:.4f}" if v.get("kl") is not None else "")
                + (f" ({'; '.join(self.reasons)})" if self.reasons else ""))

    def to_dict(self) -> dict:
        return {**asdict(self), "reasons": list(self.reasons)}


def _finite(name: str, value) -> float:
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} is NaN: a verdict needs every measured value; check the evaluation that produced it")
    return value


def judge(exposure: float, retrained_exposure: float, perplexity: float, retrained_perplexity: float,
          kl: float | None = None, original_kl: float | None = None, bands: Bands = BANDS, forget_loss: str = "secret") -> Verdict:
    """The two-sided verdict on one unlearned model (see the module docstring). ``exposure`` and
    ``retrained_exposure``: the forgotten secret's, in bits; ``perplexity`` and ``retrained_perplexity``:
    validation perplexity; ``kl`` and ``original_kl``: KL(retrained ‖ model) in nats per token of the
    unlearned and the original model (both or neither: without them the distance is not judged).
    ``forget_loss``: a key of :data:`FORGET_LOSSES`, recorded with the verdict."""
    if forget_loss not in FORGET_LOSSES:
        raise ValueError(f"forget_loss must be one of {', '.join(FORGET_LOSSES)}, got {forget_loss!r}")
    if (kl is None) != (original_kl is None):
        raise ValueError("give both kl and original_kl (the unlearned and the original model's KL to the retrained model) or neither")
    e, e_rt = _finite("exposure", exposure), _finite("retrained_exposure", retrained_exposure)
    ppl, ppl_rt = _finite("perplexity", perplexity), _finite("retrained_perplexity", retrained_perplexity)
    reasons = []
    if e > e_rt + bands.exposure_bits:
        verdict = UNDER
        reasons.append(f"exposure {e - e_rt:+.2f} bits from the retrained model's")
    elif e < e_rt - bands.exposure_bits:
        verdict = OVER
        reasons.append(f"exposure {e - e_rt:+.2f} bits from the retrained model's")
    else:
        verdict = AT
    if ppl > (1 + bands.perplexity_increase) * ppl_rt:
        reasons.append(f"validation perplexity {ppl / ppl_rt - 1:+.0%} against the retrained model's")
    if kl is not None and _finite("kl", kl) > (1 + bands.kl_increase) * _finite("original_kl", original_kl):
        reasons.append(f"KL to the retrained model {kl:.4f}, above {1 + bands.kl_increase:g} × the original's {original_kl:.4f}")
    if verdict == AT and reasons:
        verdict = DAMAGED
    values = {"exposure": e, "retrained_exposure": e_rt, "perplexity": ppl, "retrained_perplexity": ppl_rt, "kl": kl, "original_kl": original_kl}
    return Verdict(verdict, tuple(reasons), values, asdict(bands), forget_loss)


def judge_rows(row: dict, retrained: dict, original: dict, target: str, bands: Bands = BANDS, forget_loss: str = "secret") -> Verdict:
    """:func:`judge` on evaluation dicts (:func:`~tutorial_lib.unlearning.evaluation.evaluate_unlearning`'s,
    or the benchmark's rows): exposure of ``target``, ``val_perplexity`` and the KL to the retrained
    model (``kl_to_reference`` or ``kl_to_retrained``) where both the row and the original have it."""
    def exposure(r):
        return r["exposure"][target] if isinstance(r["exposure"], dict) else r["exposure"]

    def kl(r):
        return r.get("kl_to_reference", r.get("kl_to_retrained"))

    kls = (kl(row), kl(original))
    if None in kls:
        kls = (None, None)
    return judge(exposure(row), exposure(retrained), row["val_perplexity"], retrained["val_perplexity"], *kls, bands=bands,
                 forget_loss=forget_loss)


# ----------------------------------------------------------------------------------- the field's metrics
def forget_quality(unlearned_losses, retrained_losses) -> float:
    """TOFU's forget quality: the p-value of the two-sample Kolmogorov–Smirnov test between the
    unlearned and the retrained model's per-item forget losses. Near 1: the two are
    indistinguishable on the forget set; tiny: they differ (in either direction)."""
    from scipy.stats import ks_2samp

    a, b = np.asarray(unlearned_losses, dtype=float), np.asarray(retrained_losses, dtype=float)
    if a.size < 2 or b.size < 2:
        raise ValueError(f"forget quality needs at least two per-item losses per model, got {a.size} and {b.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("forget quality got a non-finite per-item loss")
    return float(ks_2samp(a, b).pvalue)


def secret_membership_auc(exposure: float) -> float:
    """The AUC of the loss attack that tells a canary's secret (the member) from every other candidate
    of its randomness space (never inserted): the fraction of candidates the secret beats,
    1 − 2^(−exposure). 0.5 on average for a secret the model never saw, near 1 when memorised."""
    return 1.0 - 2.0 ** -_finite("exposure", exposure)


def privleak(auc: float, retrained_auc: float) -> float:
    """MUSE's PrivLeak: (AUC − AUC_retrained) / AUC_retrained of a membership attack on the forget set.
    0 at the retrained model; positive: still leaks; negative: over-forgotten (the forgotten data now
    stands out as unfamiliar). NaN when the retrained model's AUC is 0."""
    auc, retrained_auc = _finite("auc", auc), _finite("retrained_auc", retrained_auc)
    return (auc - retrained_auc) / retrained_auc if retrained_auc > 0 else math.nan
