"""Run profiles: ``tiny`` (unit tests, seconds), ``small`` (CPU and CI, minutes), ``full`` (GPU).

Used by every notebook (setup cell) and by every ``*Config.for_profile``. Also the profile-to-model-scale
rule of the multi-model experiments (:func:`model_scale`) and the course's acceptance bands (:data:`BANDS`).
"""
from __future__ import annotations

import dataclasses
import os

import torch

PROFILES = ("tiny", "small", "full")


PROFILE_ENV = "TUTORIAL_PROFILE"


def resolve_profile(profile: str | None = None) -> str:
    """Choose the run profile: explicit argument, then ``$TUTORIAL_PROFILE``, then ``small``.

    ``full`` is never picked by itself, not even on a GPU: it has not been measured on one yet, so it
    must be asked for by name. :func:`profile_reason` says which rule decided. Taught in notebook 00,
    section "Profiles".
    """
    if profile is None:
        profile = os.environ.get(PROFILE_ENV) or None
    if profile is None:
        return "small"
    name = str(profile).strip().lower()
    if name not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")
    return name


def profile_reason(profile: str | None = None) -> str:
    """One line saying which profile :func:`resolve_profile` picks for ``profile`` and why, e.g.
    ``profile 'small' (the default; a GPU is present: pass --profile full to use it)``."""
    name = resolve_profile(profile)
    if profile is not None:
        why = "asked for"
    elif os.environ.get(PROFILE_ENV):
        why = f"from ${PROFILE_ENV}"
    else:
        why = "the default"
        if torch.cuda.is_available():
            why += "; a GPU is present, but the full profile has not been measured on one yet: pass --profile full to use it"
    return f"profile {name!r} ({why})"


#: the model scale of each profile's multi-model experiments (see :func:`model_scale`)
MODEL_SCALES = {"tiny": "tiny", "small": "tiny", "full": "small"}


def model_scale(profile: str | None = None) -> str:
    """The profile whose models the multi-model experiments run at ``profile`` (the benchmark, the
    DP comparison, the case studies, robustness and relearning): ``tiny`` for ``tiny`` and ``small``
    (on CPU these train many models, so ``small`` uses the ``tiny`` profile's models), ``small`` for
    ``full``. ``profile`` is resolved by :func:`resolve_profile`."""
    return MODEL_SCALES[resolve_profile(profile)]


@dataclasses.dataclass(frozen=True)
class Bands:
    """The course's bands for an unlearned model, two-sided around the retrained model (the model
    trained without the forgotten data): the forgotten secret's exposure within ``exposure_bits``
    bits of the retrained model's, above *or* below; validation perplexity at most
    ``1 + perplexity_increase`` times the reference's (the retrained model's when judging, the
    original's when a provider picks a setting without one); and the KL divergence
    KL(retrained ‖ unlearned) of next-token predictions at most ``1 + kl_increase`` times
    KL(retrained ‖ original): unlearning may not move the model away from the retrained one."""

    exposure_bits: float = 3.0
    perplexity_increase: float = 0.20
    kl_increase: float = 0.5


#: the bands that the verdicts, the sweeps' picks, the recommendations, the plots and the notebooks read
BANDS = Bands()


def config_for_profile(cls, profile: str | None, overrides: dict, /, **computed):
    """Build the ``*Config`` dataclass ``cls`` for ``profile`` (resolved by :func:`resolve_profile`):
    its per-profile table ``cls.PROFILE_DEFAULTS[profile]``, then ``computed`` (what the class
    derives from the profile: nested configs, the model scale, a ``profile`` field...), then
    ``overrides``. An override that is not a field of ``cls`` raises ``TypeError`` naming it.
    Every ``*Config.for_profile`` calls this."""
    profile = resolve_profile(profile)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in overrides if k not in names]
    if unknown:
        raise TypeError(f"{cls.__name__}.for_profile() got unknown override{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(map(repr, unknown))}; {cls.__name__}'s fields are {', '.join(names)}")
    return cls(**{**cls.PROFILE_DEFAULTS[profile], **computed, **overrides})


def resolve_device(device: str | None = None) -> str:
    """Return ``device`` if given, else ``"cuda"`` when available, else ``"cpu"``."""
    if device is not None:
        return str(device)

    return "cuda" if torch.cuda.is_available() else "cpu"


def progress_options(progress: bool) -> dict:
    """Keyword arguments for a ``tqdm`` bar: ``disable=True`` when ``progress`` is off, and nothing
    otherwise, so that tqdm's own environment settings (``TQDM_DISABLE=1`` in CI) still apply."""
    return {} if progress else {"disable": True}
