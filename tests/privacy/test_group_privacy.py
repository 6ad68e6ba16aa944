"""The group-privacy bound of notebook 08 against its formula, (kε, k·e^{(k−1)ε}·δ), on known numbers."""
import math

import pytest

from tutorial_lib.privacy.dp import group_privacy, largest_private_group


def test_group_bound_matches_the_formula():
    g = group_privacy(1.0, 1e-5, 10)
    assert g.k == 10 and g.epsilon == 10.0
    assert math.isclose(g.delta, 10 * math.exp(9) * 1e-5, rel_tol=1e-12)  # 0.8103...
    assert math.isclose(g.delta, 0.81030839, rel_tol=1e-6) and not g.vacuous
    assert g.summary() == "k=10: eps 10, delta 8.1e-01"
    one = group_privacy(3.0, 2e-4, 1)  # a group of one is the plain guarantee
    assert one.epsilon == 3.0 and math.isclose(one.delta, 2e-4, rel_tol=1e-12)
    assert one.to_dict()["delta"] == one.delta


def test_large_groups_are_vacuous_without_overflow():
    g = group_privacy(8.0, 1e-5, 100)  # e^(99 * 8) overflows a float; the bound is computed in logs
    assert g.vacuous and g.delta == math.inf
    assert math.isclose(g.log_delta, math.log(100) + 99 * 8.0 + math.log(1e-5))
    assert g.summary() == "k=100: eps 800, delta >= 1 (vacuous)"
    assert group_privacy(1.0, 1e-5, 11).vacuous  # 11 e^10 1e-5 = 2.42


def test_largest_private_group():
    assert largest_private_group(1.0, 1e-5) == 10  # delta_10 = 0.81 < 1 <= delta_11 = 2.42
    for eps, delta in ((0.5, 1e-6), (3.0, 1e-4), (8.0, 1e-5)):
        k = largest_private_group(eps, delta)
        assert group_privacy(eps, delta, k + 1).delta >= 1
        assert k == 1 or group_privacy(eps, delta, k).delta < 1
    assert largest_private_group(8.0, 0.5) == 1  # even a group of two is unprotected


@pytest.mark.parametrize("args", [(0.0, 1e-5, 2), (math.inf, 1e-5, 2), (1.0, 0.0, 2), (1.0, 1.0, 2), (1.0, 1e-5, 0)])
def test_bad_arguments_are_errors(args):
    with pytest.raises(ValueError):
        group_privacy(*args)
