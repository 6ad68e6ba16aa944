"""The setup cell every notebook starts with. Used by all notebooks."""
from __future__ import annotations

import platform
from dataclasses import dataclass

import torch

from .._version import __version__
from ..core.plotting import figure_description, use_style
from ..core.cache import cache_root
from ..core.profiles import profile_reason, resolve_device, resolve_profile


@dataclass(frozen=True)
class NotebookSetup:
    """What a notebook runs with: the profile (and why it was picked), the device, the seed, the cache
    folder that every notebook, the tests and the reproduction share, and the library versions."""

    profile: str
    device: str
    seed: int
    versions: dict
    reason: str = ""
    cache: str = ""

    def summary(self) -> str:
        libs = ", ".join(f"{k} {v}" for k, v in self.versions.items())
        return (f"{self.reason or f'profile {self.profile!r}'}  device={self.device}  seed={self.seed}\n"
                f"cache: {self.cache} (python -m tutorial_lib.course.warm_cache fills it; $TUTORIAL_CACHE_DIR moves it)\n{libs}")


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
    """Resolve profile and device, set the plot style, draw figures inline (:func:`show_figures_inline`),
    print what was chosen. Notebook 00, "Setup"."""

    setup = NotebookSetup(resolve_profile(profile), resolve_device(device), seed, library_versions(), profile_reason(profile),
                          str(cache_root()))
    use_style()
    show_figures_inline()
    if not quiet:
        print(setup.summary())
    return setup


def show_figures_inline() -> bool:
    """In a Jupyter kernel: draw figures inline whatever ``MPLBACKEND`` says (a non-interactive backend
    would drop every figure from the executed notebook), and give each figure's output the text of
    :func:`~tutorial_lib.core.plotting.figure_description` (its titles) instead of ``<Figure size …>``.
    Returns whether it ran in a kernel; elsewhere (a script, a terminal) it changes nothing."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return False
    from matplotlib.figure import Figure

    shell.run_line_magic("matplotlib", "inline")
    shell.display_formatter.formatters["text/plain"].for_type(Figure, lambda fig, p, cycle: p.text(figure_description(fig)))
    return True
