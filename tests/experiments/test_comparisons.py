"""Tables, comparisons and verdicts computed from the studies' results (notebooks 04–09), on made-up
results whose answers are known: the unlearning and sweep tables, the baselines against Fisher
Removal, C1/C2/C5 per corpus, the other canary's shift, C3, DP-SGD against unlearning and the
personal-data verdicts."""
import math

import pytest

from tutorial_lib.experiments.benchmark import WOODBURY_ROW, summarise
from tutorial_lib.experiments.case_studies import pii_verdicts
from tutorial_lib.experiments.comparisons import (
    baseline_comparison,
    benchmark_claims,
    c3_claim,
    forgetting_gentler,
    other_canary_shift,
    sweep_markdown,
    unlearning_table,
)
from tutorial_lib.experiments.dp_comparison import dp_versus_unlearning


def _eval(exposure, ppl, kl=0.1):
    return {"exposure": exposure, "val_perplexity": ppl, "retain_perplexity": ppl - 0.5, "forget_loss": 2.0, "kl_to_reference": kl}


def test_unlearning_table():
    text = unlearning_table({"original": _eval({"carol": 18.93, "bob": 9.3}, 5.562), "oracle": _eval({"carol": 0.3, "bob": 14.47}, 5.431, 0.0)},
                            ["carol", "bob"])
    assert text.splitlines() == [
        "| model | exposure carol | exposure bob | val ppl | retain ppl | forget loss | KL to oracle |",
        "|---|---|---|---|---|---|---|",
        "| original | 18.93 | 9.30 | 5.562 | 5.062 | 2.00 | 0.1000 |",
        "| oracle | 0.30 | 14.47 | 5.431 | 4.931 | 2.00 | 0.0000 |",
    ]


def _sweep(rows, grid, target="carol"):
    return {"target": target, "grid": grid, "rows": rows}


def test_sweep_markdown_one_sweep_many_sweeps_and_refusals():
    rows = [{"params": {"damping": 1e-3, "eta": 5e-3}, "exposure": {"carol": 0.72}, "val_perplexity": 6.197, "seconds": 9.91,
             "update_norm": 1.234, "kl_to_reference": 0.2331},
            {"params": {"damping": 1e-4, "eta": 1e-2}, "error": "the update norm 1e9 exceeds max_update_norm" + "x" * 60}]
    sweep = _sweep(rows, {"damping": [1e-4, 1e-3], "eta": [5e-3, 1e-2]})
    assert sweep_markdown(sweep).splitlines() == [
        "| damping | eta | exposure | val ppl | seconds |", "|---|---|---|---|---|",
        "| 0.001 | 0.005 | 0.72 | 6.197 | 9.9 |",
        "| 0.0001 | 0.01 | refused: the update norm 1e9 exceeds max_update_norm" + "x" * 7 + " | | |",
    ]
    assert sweep_markdown(sweep, ("update_norm", "exposure", "kl_to_reference"), skip_errors=True).splitlines() == [
        "| damping | eta | update norm | exposure | KL to oracle |", "|---|---|---|---|---|", "| 0.001 | 0.005 | 1.23 | 0.72 | 0.2331 |"]
    trace = {"target": "carol", "grid": {"lr": [3e-5], "steps": [3, 100]},
             "rows": [{"params": {"lr": 3e-5, "steps": 100}, "exposure": {"carol": 0.4}, "val_perplexity": 8.0214}]}
    many = sweep_markdown({"gradient_ascent": trace, "npo": trace}, ("exposure", "val_perplexity"), skip_errors=True)
    assert many.splitlines() == ["| method | lr | steps | exposure | val ppl |", "|---|---|---|---|---|",
                                 "| gradient_ascent | 3e-05 | 100 | 0.40 | 8.021 |", "| npo | 3e-05 | 100 | 0.40 | 8.021 |"]
    with pytest.raises(ValueError, match="unknown sweep columns"):
        sweep_markdown(sweep, ("perplexity",))


def _point(lr, steps, exposure, ppl, seconds=1.0):
    return {"params": {"lr": lr, "steps": steps}, "exposure": {"carol": exposure}, "val_perplexity": ppl, "seconds": seconds}


def test_baseline_comparison_within_budget_and_at_matched_exposure():
    removal = {"target": "carol", "chosen": {"params": {"damping": 1e-3, "eta": 5e-3}},
               "rows": [{"params": {"damping": 1e-3, "eta": 5e-3}, "exposure": {"carol": 0.72}, "val_perplexity": 6.2, "seconds": 9.9},
                        {"params": {"damping": 1e-4, "eta": 5e-3}, "exposure": {"carol": 0.0}, "val_perplexity": 8.8, "seconds": 9.8}]}
    ga = {"target": "carol", "rows": [_point(3e-5, 10, 13.0, 5.6), _point(3e-5, 100, 0.4, 8.0), _point(1e-3, 100, 0.0, 3e8),
                                      {"params": {"lr": 1e-3, "steps": 100}, "error": "refused"}]}
    ft = {"target": "carol", "rows": [_point(3e-5, 100, 13.29, 5.46), _point(1e-4, 100, 13.29, 5.5)]}
    cmp = baseline_comparison(removal, {"gradient_ascent": ga, "fine_tune": ft}, budget=6.5)
    assert cmp.fisher_removal["val_perplexity"] == 6.2
    assert cmp.best["gradient_ascent"]["exposure"]["carol"] == 13.0 and cmp.best["fine_tune"]["val_perplexity"] == 5.46
    assert cmp.worst["gradient_ascent"]["val_perplexity"] == 3e8
    assert cmp.matched["gradient_ascent"]["params"] == {"lr": 3e-5, "steps": 100}  # the cheaper of the two that reach 0.72 bits
    assert cmp.matched["fine_tune"] is None and cmp.c2_holds
    lines = cmp.summary().splitlines()
    assert lines[0] == "Fisher Removal (default): exposure 0.72 bits, val ppl 6.200, 9.9 s"
    assert lines[2] == f"{'fine_tune':20s} never reaches that exposure in the grid"
    assert cmp.budget_summary().splitlines()[0] == (f"{'gradient_ascent':20s} lowest exposure within budget 13.00 bits (lr 3e-05, 10 steps); "
                                                    "worst perplexity 3e+08 (lr 0.001, 100 steps)")
    cheap_ga = {"target": "carol", "rows": [_point(3e-5, 100, 0.4, 6.0)]}
    assert not baseline_comparison(removal, {"gradient_ascent": cheap_ga}, 6.5).c2_holds  # gradient ascent matched it more cheaply
    assert baseline_comparison(removal, {"gradient_ascent": ga}, 6.5).to_dict()["c2_holds"]


def _models(fr, rt, orig, other=(2.0, 10.0, 7.0), seconds=(0.7, 1.6)):
    stat = lambda v: {"mean": v, "std": 0.0}  # noqa: E731
    row = lambda e, ppl, o, s=None: {"forgotten_exposure": stat(e), "val_perplexity": stat(ppl), "other_inserted_exposure": stat(o),  # noqa: E731
                                     **({"seconds": stat(s)} if s is not None else {})}
    return {"original": row(orig, 10.0, other[0]), "retrained": row(rt, 9.0, other[1], seconds[1]),
            "fisher_removal": {**row(fr, 11.0, other[2], seconds[0]), "fraction_of_retraining": stat(seconds[0] / seconds[1])}}


def _claim_cell(corpus, fr, rt, orig, seconds=(0.7, 1.6), ga=None, woodbury=None):
    rows = {}
    models = {"original": (orig, 10.0, 0.10), "retrained": (rt, 9.0, 0.0), "fisher_removal": fr, **({WOODBURY_ROW: woodbury} if woodbury else {})}
    for model, (e, ppl, kl) in models.items():
        rows[model] = {"forgotten_exposure": e, "exposure": {"c": e}, "other_inserted_exposure": 2.0, "control_exposure": 0.5,
                       "val_perplexity": ppl, "kl_to_retrained": kl}
    rows["retrained"]["seconds"] = seconds[1]
    rows["fisher_removal"].update(seconds=seconds[0], fraction_of_retraining=seconds[0] / seconds[1])
    cell = {"corpus": corpus, "seed": 0, "target": "c", "rows": rows}
    if ga is not None:
        cell["ga_sweep"] = [{"params": {"lr": 1e-4, "steps": 10}, "exposure": {"c": e}, "val_perplexity": p, "kl_to_reference": 0.1} for e, p in ga]
    return cell


def test_benchmark_claims_are_two_sided_and_say_when_a_scale_cannot_show():
    cells = [_claim_cell("shakespeare", (1.99, 10.0, 0.12), 0.24, 11.7, ga=[(1.0, 12.0)], woodbury=(9.5, 9.5, 0.11)),
             _claim_cell("jargon", (4.0, 10.0, 0.12), 0.5, 7.56, seconds=(0.1, 200.0)),  # 4.0 > 0.5 + 3: under-forgotten
             _claim_cell("bible", (0.0, 10.5, 0.12), 6.0, 13.3, seconds=(30.0, 120.0)),  # 0.0 < 6.0 - 3: over-forgotten
             _claim_cell("python", (1.0, 9.0, 0.3), 0.5, 2.0)]  # the original is within the band: nothing to forget
    claims = benchmark_claims({"summary": summarise(cells)})
    s, j, b, p = (claims.corpora[c] for c in ("shakespeare", "jargon", "bible", "python"))
    assert (s.c1.verdict, s.c2.verdict, s.c5.verdict) == ("reproduced", "reproduced", "inconclusive")  # retraining 1.6 s
    assert (j.c1.verdict, j.c5.verdict) == ("not reproduced", "reproduced") and j.c2 is None and "under-forgotten" in j.c1.evidence
    assert (b.c1.verdict, b.c5.verdict) == ("not reproduced", "not reproduced") and "over-forgotten" in b.c1.evidence
    assert p.c1.verdict == "inconclusive"
    # C1 judged again for the method's own Fisher where the benchmark ran it: here it leaves 9.5 bits (under-forgotten)
    assert s.c1_woodbury.claim == "C1 (Woodbury)" and s.c1_woodbury.verdict == "not reproduced" and j.c1_woodbury is None
    assert s.c1_woodbury.evidence.startswith("Fisher Removal (Woodbury) under-forgotten: 9.50 bits")
    assert claims.count("c1_woodbury", "not reproduced") == 1 and "C1 (Woodbury) not reproduced" in claims.summary()
    assert claims.count("c1") == 1 and claims.count("c1", "not reproduced") == 2 and claims.count("c5") == 1
    assert s.c1.values["exposure"] == 1.99 and s.c1.band["exposure_bits"] == 3.0 and s.c1.forget_loss == "secret"
    assert claims.summary().splitlines()[0] == "shakespeare:"
    assert claims.summary().splitlines()[1].startswith("  C1 reproduced: Fisher Removal at the retrained model: 1.99 bits vs retrained 0.24")
    d = claims.to_dict()
    assert d["corpora"]["jargon"]["c1"]["verdict"] == "not reproduced" and d["corpora"]["jargon"]["c2"] is None
    assert d["bands"]["kl_increase"] == 0.5 and d["min_retrain_seconds"] == 60.0


def test_other_canary_shift_counts_the_corpora_where_retraining_raises_it():
    result = {"summary": {"shakespeare": {"models": _models(2, 0, 12, other=(2.7, 12.3, 9.0))},
                          "jargon": {"models": _models(0, 2, 8, other=(4.28, 4.01, 11.3))},  # the tie that flipped on one CPU
                          "bible": {"models": _models(0, 0, 13, other=(3.9, 11.7, 8.7))}}}
    shift = other_canary_shift(result)
    assert shift.corpora == ["shakespeare", "jargon", "bible"] and shift.rises == 2
    assert math.isclose(shift.gaps["jargon"]["fisher_removal"], 11.3 - 4.01)
    lines = shift.summary().splitlines()
    assert lines[1] == "jargon       other inserted canary: original  4.28, retrained  4.01 bits | fisher_removal +7.3"
    assert lines[-1] == "the retrained model's exposure is above the original's on 2 of 3 corpora"
    assert shift.to_dict()["rises"] == 2


def test_forgetting_gentler_is_c3():
    summary = {"fisher_removal": {"val_perplexity_after": 7.757, "forgotten_at_end": 1.31},
               "fisher_forgetting": {"val_perplexity_after": 8.583, "forgotten_at_end": 1.51}}
    verdict = forgetting_gentler(summary)
    assert not verdict.holds and verdict.summary().endswith("does not hold here")
    summary["fisher_forgetting"]["val_perplexity_after"] = 7.0
    assert forgetting_gentler(summary).holds  # lower perplexity, exposure 0.2 bits higher: within 0.5
    assert not forgetting_gentler(summary, tolerance_bits=0.1).holds
    assert forgetting_gentler(summary).to_dict()["holds"]
    with pytest.raises(ValueError, match="fisher_forgetting"):
        forgetting_gentler({"fisher_removal": summary["fisher_removal"]})


def _c3_seed(removal_ppl, forgetting_ppl, removal_bits=0.1, forgetting_bits=0.2, gap=10.0):
    return {"summary": {"fisher_removal": {"val_perplexity_after": removal_ppl, "forgotten_at_end": removal_bits},
                        "fisher_forgetting": {"val_perplexity_after": forgetting_ppl, "forgotten_at_end": forgetting_bits}},
            "start": {"requested": gap + 1.0, "controls": 1.0, "gap": gap}}


def test_c3_claim_over_seeds():
    def study(*seeds):
        return {"run_profile": "small", "n_requests": 4, "seeds": list(range(len(seeds))), "per_seed": dict(enumerate(seeds))}

    gentle, harsh = _c3_seed(10.0, 8.0), _c3_seed(10.0, 11.0)
    assert c3_claim(study(gentle, gentle, gentle)).verdict == "reproduced"
    claim = c3_claim(study(harsh, harsh, harsh))
    assert claim.verdict == "not reproduced" and claim.values["held"] == 0
    assert "holds on 0 of 3 seeds" in claim.evidence and "seed 1: val ppl 11.000 (Forgetting) vs 10.000 (Removal)" in claim.evidence
    assert c3_claim(study(gentle, harsh, gentle)).verdict == "inconclusive"  # the seeds disagree
    assert c3_claim(study(gentle, _c3_seed(10.0, 8.0, gap=2.0))).verdict == "inconclusive"  # nothing much to forget on seed 1
    assert c3_claim(study(_c3_seed(10.0, 8.0, forgetting_bits=3.0))).verdict == "not reproduced"  # gentler by forgetting less


def test_dp_versus_unlearning():
    canaries = [{"name": "carol", "insertions": 100}, {"name": "bob", "insertions": 10}, {"name": "dave", "insertions": 0}]
    rows = [{"target_epsilon": None, "exposure": {"carol": 11.7, "bob": 5.0}, "val_perplexity": 10.0},
            {"target_epsilon": 8.0, "exposure": {"carol": 6.0, "bob": 1.0}, "val_perplexity": 14.0},
            {"target_epsilon": 1.0, "exposure": {"carol": 4.1, "bob": 0.5}, "val_perplexity": 17.8}]
    unlearning = {"rows": {"retrained": {"exposure": {"carol": 0.24}, "val_perplexity": 9.5},
                           "fisher_removal": {"exposure": {"carol": 1.99}, "val_perplexity": 10.4}}}
    s = dp_versus_unlearning({"corpus": "shakespeare", "canaries": canaries, "rows": rows}, unlearning, 1.0)
    assert s.canary == "carol" and s.dp["exposure"] == 4.1 and s.dp_lowers_exposure and s.dp_costs_perplexity
    assert s.summary() == (f"{'shakespeare':26s} exposure / val ppl: original 11.70 / 10.00 | retrained  0.24 / 9.50 | "
                           "Fisher Removal  1.99 / 10.40 | DP eps 1  4.10 / 17.80")
    assert s.verdict() == (f"{'shakespeare':26s} DP at eps 1 against the original: exposure 7.60 bits lower, val ppl +78% | Fisher Removal: "
                           "lower exposure (1.99 bits) at lower perplexity (10.40)")
    assert s.to_dict()["dp_lowers_exposure"] and s.matched is None
    # with the sigma = 0 run through the same pipeline, DP is compared with it: the price of privacy alone
    matched = [rows[0], {"target_epsilon": None, "matched": True, "exposure": {"carol": 10.0, "bob": 4.0}, "val_perplexity": 16.0}, *rows[1:]]
    m = dp_versus_unlearning({"corpus": "shakespeare", "canaries": canaries, "rows": matched}, unlearning, 1.0)
    assert m.baseline is m.matched and m.dp_lowers_exposure and m.dp_costs_perplexity
    assert "sigma 0 10.00 / 16.00" in m.summary()
    assert m.verdict().startswith(f"{'shakespeare':26s} DP at eps 1 against sigma 0, same pipeline: exposure 5.90 bits lower, val ppl +11% "
                                  "(the pipeline alone: val ppl +60% against the original)")
    from tutorial_lib.experiments.dp_comparison import c4_claim

    other = dp_versus_unlearning({"corpus": "bible", "canaries": canaries, "rows": rows}, unlearning, 1.0)  # +78 % against +11 %
    assert c4_claim({"shakespeare": m, "bible": other}).verdict == "reproduced"
    assert c4_claim({"shakespeare": m, "same": m}).verdict == "not reproduced"  # the same cost everywhere: not uneven
    assert c4_claim({"shakespeare": m}).verdict == "inconclusive"
    matched[1]["val_perplexity"] = 18.0
    cheaper = dp_versus_unlearning({"corpus": "x", "canaries": canaries, "rows": matched}, unlearning, 1.0)
    assert not cheaper.dp_costs_perplexity
    assert c4_claim({"shakespeare": m, "x": cheaper}).verdict == "not reproduced" and "x: +5.90 bits lower" in c4_claim({"x": cheaper}).evidence
    with pytest.raises(ValueError, match="no DP run at target epsilon 3"):
        dp_versus_unlearning({"corpus": "x", "canaries": canaries, "rows": rows}, unlearning, 3.0)


def test_pii_verdicts():
    mia = lambda loss, zlib: {"loss": {"auc": loss}, "zlib": {"auc": zlib}}  # noqa: E731
    result = {"canaries": [{"name": "phone"}, {"name": "account"}, {"name": "other"}],
              "pii": {"original": {"exposure": {"phone": 13.29, "account": 13.29}, "mia_subject": mia(1.0, 1.0), "val_perplexity": 11.0},
                      "retrained": {"exposure": {"phone": 0.83, "account": 0.86}, "mia_subject": mia(0.55, 0.6), "val_perplexity": 11.5},
                      "fisher_removal": {"exposure": {"phone": 6.30, "account": 2.24}, "mia_subject": mia(1.0, 0.65), "val_perplexity": 12.0},
                      "npo": {"exposure": {"phone": 1.0, "account": 1.5}, "mia_subject": mia(0.6, 0.62), "val_perplexity": 16.4},
                      "gradient_ascent": {"error": "refused"}}}
    v = pii_verdicts(result)
    assert list(v.rows) == ["retrained", "fisher_removal", "npo"]
    fr = v.rows["fisher_removal"]
    assert not fr["ok_exposure"] and not fr["ok_auc"] and math.isclose(fr["exposure_gaps"]["phone"], 6.30 - 0.83)
    assert v.within_both == ["retrained", "npo"]
    assert v.summary().splitlines()[1] == (f"{'fisher_removal':30s} exposure vs retrained +5.47, +1.38 bits (OUTSIDE 3) | AUC vs retrained "
                                           "loss +0.45, zlib +0.05 (OUTSIDE 0.1) | PrivLeak loss +82%, zlib +8% | val ppl 12.00 (retrained 11.50)")
    assert math.isclose(fr["privleak"]["loss"], (1.0 - 0.55) / 0.55) and v.rows["retrained"]["privleak"] == {"loss": 0.0, "zlib": 0.0}
    assert pii_verdicts(result, tolerance_bits=6.0, tolerance_auc=0.5).within_both == ["retrained", "fisher_removal", "npo"]
    assert v.to_dict()["within_both"] == ["retrained", "npo"]
