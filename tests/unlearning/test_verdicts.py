"""Two-sided verdicts against the retrained model and the field's metrics (forget quality, PrivLeak)."""
import math

import numpy as np
import pytest

from tutorial_lib.core.profiles import BANDS, Bands
from tutorial_lib.unlearning.verdicts import (
    AT,
    DAMAGED,
    OVER,
    UNDER,
    forget_quality,
    judge,
    judge_rows,
    privleak,
    secret_membership_auc,
)


def test_over_forgotten_is_not_at_the_retrained_model():
    v = judge(exposure=0.0, retrained_exposure=6.0, perplexity=10.0, retrained_perplexity=10.0, kl=0.1, original_kl=0.1)
    assert v.verdict == OVER and not v.at_retrained and "-6.00 bits" in v.reasons[0]


def test_damaged_utility_is_not_at_the_retrained_model():
    v = judge(exposure=6.5, retrained_exposure=6.0, perplexity=15.0, retrained_perplexity=10.0)
    assert v.verdict == DAMAGED and "+50%" in v.reasons[0]
    far = judge(exposure=6.5, retrained_exposure=6.0, perplexity=10.0, retrained_perplexity=10.0, kl=0.25, original_kl=0.14)
    assert far.verdict == DAMAGED and "KL" in far.reasons[0]  # moved away from the retrained model


def test_under_forgotten_is_not_at_the_retrained_model():
    v = judge(exposure=12.0, retrained_exposure=1.0, perplexity=10.0, retrained_perplexity=10.0)
    assert v.verdict == UNDER and not v.at_retrained


def test_inside_every_band_is_at_the_retrained_model_and_the_band_edges_count():
    v = judge(exposure=3.9, retrained_exposure=1.0, perplexity=11.9, retrained_perplexity=10.0, kl=0.14, original_kl=0.1)
    assert v.verdict == AT and v.reasons == () and v.bands == {"exposure_bits": 3.0, "perplexity_increase": 0.2, "kl_increase": 0.5}
    assert judge(4.0, 1.0, 10.0, 10.0).verdict == AT and judge(4.01, 1.0, 10.0, 10.0).verdict == UNDER
    assert judge(0.5, 3.5, 10.0, 10.0).verdict == AT and judge(0.49, 3.5, 10.0, 10.0).verdict == OVER
    assert judge(0.0, 3.5, 10.0, 10.0, bands=Bands(exposure_bits=4.0)).verdict == AT
    d = v.to_dict()
    assert d["verdict"] == AT and d["forget_loss"] == "secret" and d["values"]["kl"] == 0.14 and d["reasons"] == []
    assert "at the retrained model" in v.summary()


def test_judge_refuses_what_it_cannot_judge():
    with pytest.raises(ValueError, match="forget_loss must be one of"):
        judge(1.0, 1.0, 10.0, 10.0, forget_loss="everything")
    with pytest.raises(ValueError, match="both kl and original_kl"):
        judge(1.0, 1.0, 10.0, 10.0, kl=0.1)
    with pytest.raises(ValueError, match="perplexity is NaN"):
        judge(1.0, 1.0, math.nan, 10.0)


def test_judge_rows_reads_evaluation_dicts():
    row = {"exposure": {"c": 0.0}, "val_perplexity": 10.0, "kl_to_reference": 0.2}
    retrained = {"exposure": {"c": 6.0}, "val_perplexity": 10.0, "kl_to_reference": 0.0}
    original = {"exposure": {"c": 12.0}, "val_perplexity": 9.0, "kl_to_reference": 0.1}
    v = judge_rows(row, retrained, original, "c", forget_loss="line")
    assert v.verdict == OVER and v.values["original_kl"] == 0.1 and v.forget_loss == "line"
    bench = {"forgotten_exposure": 6.0, "exposure": 6.0, "val_perplexity": 10.0}  # no KL: the distance is not judged
    assert judge_rows(bench, retrained, original, "c").values["kl"] is None


def test_forget_quality_is_a_two_sided_ks_p_value():
    rng = np.random.default_rng(0)
    same = forget_quality(rng.normal(2.0, 0.3, 100), rng.normal(2.0, 0.3, 100))
    lower = forget_quality(rng.normal(0.5, 0.3, 100), rng.normal(2.0, 0.3, 100))  # over-forgotten: also distinguishable
    higher = forget_quality(rng.normal(4.0, 0.3, 100), rng.normal(2.0, 0.3, 100))
    assert same > 0.05 and lower < 1e-10 and higher < 1e-10
    with pytest.raises(ValueError, match="at least two"):
        forget_quality([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="non-finite"):
        forget_quality([1.0, math.inf], [1.0, 2.0])


def test_secret_auc_and_privleak():
    assert secret_membership_auc(0.0) == 0.0 and secret_membership_auc(1.0) == 0.5
    assert math.isclose(secret_membership_auc(13.29), 1 - 2 ** -13.29)
    assert privleak(0.5, 0.5) == 0.0 and privleak(0.9, 0.5) > 0 > privleak(0.1, 0.5)
    assert math.isnan(privleak(0.3, 0.0))
    assert BANDS.exposure_bits == 3.0
