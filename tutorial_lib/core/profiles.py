"""Run profiles: ``tiny`` (unit tests, seconds), ``small`` (CPU and CI, minutes), ``full`` (GPU).

Used by every notebook (setup cell) and by every ``*Config.for_profile``.
"""
from __future__ import annotations

import os

PROFILES = ("tiny", "small", "full")


PROFILE_ENV = "TUTORIAL_PROFILE"


def resolve_profile(profile: str | None = None) -> str:
    """Choose the run profile: explicit argument, then ``$TUTORIAL_PROFILE``, then auto.

    Auto picks ``full`` when a CUDA device is present and ``$CI`` is not set, else ``small``.
    Taught in notebook 00, section "Profiles".
    """
    if profile is None:
        profile = os.environ.get(PROFILE_ENV) or None
    if profile is None:
        import torch

        on_ci = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
        return "full" if torch.cuda.is_available() and not on_ci else "small"
    name = str(profile).strip().lower()
    if name not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")
    return name


def resolve_device(device: str | None = None) -> str:
    """Return ``device`` if given, else ``"cuda"`` when available, else ``"cpu"``."""
    if device is not None:
        return str(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def progress_options(progress: bool) -> dict:
    """Keyword arguments for a ``tqdm`` bar: ``disable=True`` when ``progress`` is off, and nothing
    otherwise, so that tqdm's own environment settings (``TQDM_DISABLE=1`` in CI) still apply."""
    return {} if progress else {"disable": True}
