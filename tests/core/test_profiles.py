import pytest

from tutorial_lib.core.models import ModelConfig
from tutorial_lib.core.profiles import PROFILES, resolve_profile
from tutorial_lib.core.training import TrainConfig
from tutorial_lib.curvature.newton import NewtonConfig
from tutorial_lib.experiments.memorization import MemorizationConfig


def test_argument_wins_over_environment(monkeypatch):
    monkeypatch.setenv("TUTORIAL_PROFILE", "small")
    assert resolve_profile("tiny") == "tiny"


def test_environment_wins_over_auto(monkeypatch):
    monkeypatch.setenv("TUTORIAL_PROFILE", "tiny")
    assert resolve_profile() == "tiny"


def test_auto_is_small_on_ci_or_without_gpu(monkeypatch):
    monkeypatch.delenv("TUTORIAL_PROFILE", raising=False)
    monkeypatch.setenv("CI", "true")
    assert resolve_profile() == "small"


@pytest.mark.parametrize("bad", ["huge", "", "TINYY"])
def test_unknown_profile_is_named(bad, monkeypatch):
    monkeypatch.delenv("TUTORIAL_PROFILE", raising=False)
    with pytest.raises(ValueError, match="unknown profile"):
        resolve_profile(bad or "nope")


def test_unknown_profile_from_environment(monkeypatch):
    monkeypatch.setenv("TUTORIAL_PROFILE", "gigantic")
    with pytest.raises(ValueError, match="gigantic"):
        resolve_profile()


@pytest.mark.parametrize("config", [ModelConfig, TrainConfig, MemorizationConfig, NewtonConfig])
def test_every_config_has_the_three_profiles(config):
    made = [config.for_profile(p) for p in PROFILES]
    assert len({repr(m) for m in made}) == 3
