"""Layer 4, ``unlearning``: the methods (``docs/method.md`` §3, §4, §6). One API,
``unlearn(model, tokenizer, forget, retain, method, config)``, and its method registry; Fisher Removal,
Fisher Forgetting and the first-order baselines; evaluation against the retrained model (§7); and the
empirical Fisher split across processes with ``torch.distributed``.

May import from ``core``, ``curvature`` and ``privacy``.
"""
