"""The setup cell every notebook starts with. Used by all notebooks."""
from __future__ import annotations

import platform
from dataclasses import dataclass

import torch

from .._version import __version__
from ..core.plotting import use_style
from ..core.profiles import resolve_device, resolve_profile


@dataclass(frozen=True)
class NotebookSetup:
    profile: str
    device: str
    seed: int
    versions: dict

    def summary(self) -> str:
        libs = ", ".join(f"{k} {v}" for k, v in self.versions.items())
        return f"profile={self.profile}  device={self.device}  seed={self.seed}\n{libs}"


def library_versions() -> dict:
    """Versions of Python and of the libraries the course stands on."""
    import datasets
    import opacus
    import tokenizers
    import transformers


    return {
        "tutorial_lib": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "tokenizers": tokenizers.__version__,
        "opacus": opacus.__version__,
    }


def setup_notebook(profile: str | None = None, seed: int = 0, device: str | None = None, quiet: bool = False) -> NotebookSetup:
    """Resolve profile and device, set the plot style, print what was chosen. Notebook 00, "Setup"."""

    setup = NotebookSetup(resolve_profile(profile), resolve_device(device), seed, library_versions())
    use_style()
    if not quiet:
        print(setup.summary())
    return setup
