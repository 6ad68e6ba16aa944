"""Layer 5, ``experiments``: one module per study of the course. The memorisation run and its
retrained model, the unlearning sweeps, the four-corpus benchmark, the DP-SGD comparison, the case
studies and their data, robustness and the recommendation table, and the ``full`` profile's plan and
checks. Their results are cached.

May import from every layer below it: ``core``, ``curvature``, ``privacy`` and ``unlearning``.
"""
