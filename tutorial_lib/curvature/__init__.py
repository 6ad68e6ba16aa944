"""Layer 2, ``curvature``: second-order information (``docs/method.md`` §1–2). Newton removal and
influence functions on convex models, per-sample gradients, the damped empirical Fisher in its
structures (diagonal, Sherman–Morrison blocks, Woodbury, dense, K-FAC) with their memory estimates,
the per-example losses they are built from, and dense ground truth (Hessian, Gauss–Newton, true
Fisher) on small models.

May import from ``core`` only.
"""
