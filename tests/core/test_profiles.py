import dataclasses
import importlib
import inspect
import pkgutil

import pytest
import torch

import tutorial_lib
from tutorial_lib.core.models import ModelConfig
from tutorial_lib.core.profiles import (
    BANDS,
    PROFILES,
    Bands,
    model_scale,
    profile_reason,
    resolve_profile,
)
from tutorial_lib.core.training import TrainConfig
from tutorial_lib.curvature.newton import NewtonConfig
from tutorial_lib.experiments.memorization import MemorizationConfig


def test_argument_wins_over_environment(monkeypatch):
    monkeypatch.setenv("TUTORIAL_PROFILE", "small")
    assert resolve_profile("tiny") == "tiny"


def test_environment_wins_over_auto(monkeypatch):
    monkeypatch.setenv("TUTORIAL_PROFILE", "tiny")
    assert resolve_profile() == "tiny"


@pytest.mark.parametrize("gpu", [False, True])
def test_default_is_small_even_on_a_gpu_and_says_why(gpu, monkeypatch):
    monkeypatch.delenv("TUTORIAL_PROFILE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    assert resolve_profile() == "small"
    reason = profile_reason()
    assert reason.startswith("profile 'small' (the default")
    assert ("--profile full" in reason) == gpu
    assert profile_reason("tiny") == "profile 'tiny' (asked for)"
    monkeypatch.setenv("TUTORIAL_PROFILE", "full")
    assert profile_reason() == "profile 'full' (from $TUTORIAL_PROFILE)"


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


# ----------------------------------------------------------------------------------- every *Config.for_profile
LAYERS = ("core", "curvature", "privacy", "unlearning", "experiments")


def _all_configs() -> dict[str, type]:
    """Every dataclass named ``*Config`` defined in the library's layers (the course layer has none)."""
    found = {}
    for layer in LAYERS:
        package = importlib.import_module(f"tutorial_lib.{layer}")
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"tutorial_lib.{layer}.{info.name}")
            for name, obj in vars(module).items():
                if (name.endswith("Config") and inspect.isclass(obj) and dataclasses.is_dataclass(obj)
                        and obj.__module__ == module.__name__):
                    found[name] = obj
    return found


CONFIGS = _all_configs()

# one valid override per config, different from every profile's default
OVERRIDES = {
    "ModelConfig": ("n_layer", 3), "TrainConfig": ("steps", 7), "NewtonConfig": ("n_features", 32),
    "DPConfig": ("max_grad_norm", 0.5), "_FirstOrderConfig": ("steps", 3), "GradientAscentConfig": ("steps", 3),
    "GradientDifferenceConfig": ("lr", 2e-5), "NPOConfig": ("beta", 0.5), "FineTuneConfig": ("steps", 3),
    "_FisherStepConfig": ("damping", 0.25), "FisherRemovalConfig": ("damping", 0.25), "FisherForgettingConfig": ("mu", 0.0),
    "MemorizationConfig": ("corpus", "bible"), "BenchmarkConfig": ("seeds", (5,)), "DPComparisonConfig": ("epsilons", (2.0,)),
    "RelearningConfig": ("lr", 0.01), "RobustnessConfig": ("n_requests", 3), "CaseStudyConfig": ("subject_repeats", 2),
    "PretrainedLLMConfig": ("n_controls", 5),
}


def test_every_config_is_covered():
    assert len(CONFIGS) >= 18 and set(CONFIGS) == set(OVERRIDES)  # a new *Config needs a row in OVERRIDES


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_for_profile_has_one_signature_and_one_table(name):
    cls = CONFIGS[name]
    params = inspect.signature(cls.for_profile).parameters
    assert list(params) == ["profile", "overrides"]
    assert params["profile"].default is None and params["overrides"].kind is inspect.Parameter.VAR_KEYWORD
    assert set(cls.PROFILE_DEFAULTS) == set(PROFILES)  # {"tiny": {...}, "small": {...}, "full": {...}}
    fields = {f.name for f in dataclasses.fields(cls)}
    for profile, row in cls.PROFILE_DEFAULTS.items():
        assert isinstance(row, dict) and set(row) <= fields, (profile, set(row) - fields)


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_for_profile_without_argument_resolves_the_profile(name, monkeypatch):
    cls = CONFIGS[name]
    for profile in PROFILES:
        monkeypatch.setenv("TUTORIAL_PROFILE", profile)
        assert cls.for_profile() == cls.for_profile(profile)
    monkeypatch.setenv("TUTORIAL_PROFILE", "gigantic")
    with pytest.raises(ValueError, match="gigantic"):
        cls.for_profile()


@pytest.mark.parametrize("name", sorted(OVERRIDES))
@pytest.mark.parametrize("profile", PROFILES)
def test_for_profile_applies_overrides_last(name, profile):
    cls = CONFIGS[name]
    field, value = OVERRIDES[name]
    plain = cls.for_profile(profile)
    assert getattr(plain, field) != value
    assert cls.for_profile(profile, **{field: value}) == dataclasses.replace(plain, **{field: value})


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_for_profile_names_an_unknown_override(name):
    cls = CONFIGS[name]
    with pytest.raises(TypeError, match=rf"{name}\.for_profile\(\) got unknown override 'not_a_field'"):
        cls.for_profile("tiny", not_a_field=1)
    with pytest.raises(TypeError, match="unknown overrides 'typo_a', 'typo_b'"):
        cls.for_profile("tiny", typo_a=1, typo_b=2)


def test_the_profile_tables_keep_their_values():
    assert ModelConfig.for_profile("tiny") == ModelConfig(n_layer=2, n_embd=64, n_head=4, n_positions=64)
    assert TrainConfig.for_profile("small") == TrainConfig(steps=800, eval_every=200, eval_steps=(50, 100))
    assert NewtonConfig.for_profile("small") == NewtonConfig()
    assert CONFIGS["GradientAscentConfig"].for_profile("full") == CONFIGS["GradientAscentConfig"].for_profile("small")
    ff = CONFIGS["FisherForgettingConfig"].for_profile("tiny")
    assert (ff.eta, ff.mu) == (CONFIGS["FisherRemovalConfig"].for_profile("tiny").eta, 1e-10)


def test_full_model_reads_the_pretrained_path_when_called(monkeypatch):
    monkeypatch.setenv("TUTORIAL_MODEL_PATH", "/models/x")
    assert ModelConfig.for_profile("full").pretrained_path == "/models/x"
    assert ModelConfig.for_profile("full", pretrained_path=None).pretrained_path is None
    assert ModelConfig.for_profile("small").pretrained_path is None
    monkeypatch.delenv("TUTORIAL_MODEL_PATH")
    assert ModelConfig.for_profile("full").pretrained_path is None


# ----------------------------------------------------------------------------------- the model scale
def test_model_scale_runs_small_at_the_tiny_scale(monkeypatch):
    assert [model_scale(p) for p in PROFILES] == ["tiny", "tiny", "small"]
    monkeypatch.setenv("TUTORIAL_PROFILE", "full")
    assert model_scale() == "small"
    assert model_scale(" Small ") == "tiny"  # resolved like every profile argument
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        model_scale("huge")


# ----------------------------------------------------------------------------------- the acceptance bands
def test_bands_are_the_course_values_and_frozen():
    assert (BANDS.exposure_bits, BANDS.perplexity_increase) == (3.0, 0.2)
    assert BANDS == Bands() and 1 + BANDS.perplexity_increase == 1.2  # the multiplier the +20 % checks use, exactly
    with pytest.raises(dataclasses.FrozenInstanceError):
        BANDS.exposure_bits = 1.0
    assert tutorial_lib.BANDS is BANDS and "BANDS" in tutorial_lib.__all__ and "model_scale" in tutorial_lib.__all__
