"""Notebook 04's request through :func:`unlearning_setup`: the watched canaries, the oracle and
whether each model came from the cache (what the notebook prints)."""
import pytest

from tutorial_lib.experiments.memorization import MemorizationConfig
from tutorial_lib.experiments.sweeps import unlearning_setup


@pytest.mark.slow  # trains the tiny run and its oracle unless an earlier test of the session did
def test_unlearning_setup_reports_the_cache_and_the_watched_canaries(tiny_cache, monkeypatch):
    monkeypatch.setenv("TUTORIAL_CACHE_DIR", str(tiny_cache))
    cfg = MemorizationConfig.for_profile("tiny")
    unlearning_setup(cfg, 0, "cpu", progress=False)  # trains both models unless another test already has
    req = unlearning_setup(cfg, 0, "cpu", progress=False)
    assert req.from_cache and req.retrained_from_cache
    assert req.target.insertions == max(c.insertions for c in req.canaries)
    assert [c.name for c in req.others] == req.watch[1:] and req.target not in req.others
    assert [c.insertions > 1 for c in req.others] == [True] * (len(req.others) - 1) + [False]  # the last one is a control
    assert req.others[-1].is_control and req.retrain_seconds > 0 and req.forget
