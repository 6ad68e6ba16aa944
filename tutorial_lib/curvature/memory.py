"""Memory for the curvature structures (``docs/method.md`` §2): what each Fisher structure allocates
beyond the gradient matrix it is built from (:func:`estimate_memory`), what is free on a device
(:func:`available_memory`), and :func:`check_memory`, which raises :class:`MemoryBudgetError` before
a structure that would not fit allocates anything. :data:`STRUCTURES` names the structures.

Used by :mod:`tutorial_lib.curvature.fisher`, :mod:`~tutorial_lib.curvature.kfac` and
:mod:`~tutorial_lib.curvature.per_sample`, and by the ``full`` profile's plan. Notebook 02, "What each
structure costs"; notebook 10, section 5.
"""
from __future__ import annotations

import os

import torch

STRUCTURES = ("diagonal", "block", "woodbury", "dense", "kfac")



class MemoryBudgetError(MemoryError):
    """A curvature structure would need more memory than is available."""


def available_memory(device="cpu") -> int:
    """Bytes free on ``device``: ``MemAvailable`` on a CPU (Linux), free memory on a CUDA GPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(what: str, need_bytes: int, max_bytes: int | None = None, device="cpu") -> None:
    """Raise :class:`MemoryBudgetError` when ``need_bytes`` exceeds ``max_bytes`` (default: 80 % of
    what is available on ``device``)."""
    limit = int(0.8 * available_memory(device)) if max_bytes is None else int(max_bytes)
    if need_bytes > limit:
        raise MemoryBudgetError(
            f"{what} needs about {need_bytes / 2**30:.3g} GiB but only {limit / 2**30:.3g} GiB may be used; "
            "choose a cheaper structure, fewer parameters or fewer samples"
        )


def estimate_memory(structure: str, dim: int, m: int, block_size: int = 128, element_size: int = 4, layers=()) -> int:
    """Bytes a structure allocates beyond the gradient matrix G (m × d) it is built from.
    ``layers`` lists (out, in) shapes for ``kfac``."""
    if structure == "diagonal":
        return dim * element_size
    if structure == "block":
        n_blocks = -(-dim // block_size)
        return (n_blocks * block_size * block_size + 2 * n_blocks * block_size) * element_size
    if structure == "woodbury":
        return (2 * m * m + 2 * m) * element_size
    if structure == "dense":
        return 3 * dim * dim * element_size
    if structure == "kfac":
        return sum(2 * (o * o + (i + 1) ** 2) for o, i in layers) * element_size + dim * element_size
    raise ValueError(f"unknown Fisher structure {structure!r}; expected one of {', '.join(STRUCTURES)}")
