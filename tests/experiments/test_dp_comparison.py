"""Notebook 08's DP-SGD comparison: which runs each profile makes (no training here)."""
from tutorial_lib.core.data import CORPORA
from tutorial_lib.core.profiles import PROFILES, model_scale
from tutorial_lib.experiments.dp_comparison import DPComparisonConfig
from tutorial_lib.privacy.dp import EPSILONS


def test_dp_comparison_runs_at_the_model_scale():
    for profile in PROFILES:
        cfg = DPComparisonConfig.for_profile(profile)
        assert (cfg.profile, cfg.run_profile) == (profile, model_scale(profile))
        assert cfg.run_config("shakespeare").profile == model_scale(profile)
    tiny, small, full = (DPComparisonConfig.for_profile(p) for p in PROFILES)
    assert tiny.corpora == ("shakespeare",) and not tiny.own_scale
    assert small.corpora == tuple(CORPORA) and small.own_scale and small.own_scale_epsilons == (1.0,)
    assert full.own_scale_epsilons == EPSILONS
    assert DPComparisonConfig.for_profile("small", own_scale=False).own_scale is False  # an override wins
