"""Layer 3, ``privacy``: measuring and limiting what a model leaks (``docs/method.md`` §5–6). Canary
exposure (exact through a token trie, sampled, skew-normal estimate), membership inference and
extraction, and DP-SGD through Opacus with its noise calibration and accounting.

May import from ``core`` and ``curvature``.
"""
