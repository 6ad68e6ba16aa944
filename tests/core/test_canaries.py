import math

import pytest

from tutorial_lib.core.canaries import (
    Canary,
    RandomnessSpace,
    insert_canaries,
    make_canaries,
)


def test_space_enumerates_in_index_order():
    space = RandomnessSpace(3)
    secrets = space.all_secrets()
    assert space.size == 1000 and len(secrets) == 1000 and len(set(secrets)) == 1000
    assert secrets[0] == "000" and secrets[-1] == "999"
    assert all(space.index(space.secret(i)) == i for i in (0, 7, 123, 999))
    assert math.isclose(RandomnessSpace().bits, math.log2(10**6))


def test_space_with_other_alphabet():
    space = RandomnessSpace(2, "ab")
    assert space.all_secrets() == ["aa", "ab", "ba", "bb"]
    assert [space.secret(i) for i in range(4)] == space.all_secrets()


@pytest.mark.parametrize("length,alphabet", [(1, "x"), (0, "0123456789"), (5, "7")])
def test_space_smaller_than_two(length, alphabet):
    with pytest.raises(ValueError, match="smaller than 2"):
        RandomnessSpace(length, alphabet)


def test_format_without_slot():
    with pytest.raises(ValueError, match="no secret slot"):
        Canary("my number is 42", "123456")


def test_format_with_two_slots():
    with pytest.raises(ValueError, match="2 secret slots"):
        Canary("{secret} and {secret}", "123456")


def test_negative_insertions():
    with pytest.raises(ValueError, match="k = -1"):
        Canary("pin {secret}", "123456", insertions=-1)
    with pytest.raises(ValueError, match="k = -3"):
        make_canaries(insertions=(1, -3))


def test_secret_outside_space():
    with pytest.raises(ValueError, match="not in the randomness space"):
        Canary("pin {secret}", "12a456")


def test_make_canaries_is_seeded_and_has_controls():
    a = make_canaries((1, 10, 100), per_insertion=2, n_controls=3, seed=4)
    assert a == make_canaries((1, 10, 100), per_insertion=2, n_controls=3, seed=4)
    assert a != make_canaries((1, 10, 100), per_insertion=2, n_controls=3, seed=5)
    assert [c.insertions for c in a] == [1, 1, 10, 10, 100, 100, 0, 0, 0]
    assert len({c.prefix for c in a}) == len(a)


def test_insertion_counts_and_forget_retain_split():
    lines = [f"line {i}" for i in range(500)]
    canaries = make_canaries((1, 10, 100), n_controls=2, seed=0)
    out = insert_canaries(lines, canaries, seed=1)
    assert len(out.lines) == 500 + 111
    for c in canaries:
        assert out.lines.count(c.text()) == c.insertions
        assert [out.lines[p] for p in out.positions[c.name]] == [c.text()] * c.insertions
    assert sorted(out.forget) == sorted(x for x in out.lines if x not in lines)
    assert out.retain == lines
    assert [x for x in out.lines if x in set(lines)] == lines  # original order kept
    assert insert_canaries(lines, canaries, seed=1) == out
