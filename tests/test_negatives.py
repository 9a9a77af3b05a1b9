"""Word-swap hard negatives (clipstack.data.negatives): what is swapped, and how bad groups are refused."""

from __future__ import annotations

import random

import pytest

from clipstack.data.negatives import WordSwap, parse_groups
from clipstack.errors import ConfigError

SHAPES = "circle,square,triangle,star"


def test_swaps_exactly_one_group_word_for_another_of_its_group():
    swap = WordSwap([SHAPES, "left,right"])
    rng = random.Random(0)
    seen = set()
    for _ in range(200):
        out = swap.swap("a red circle left of a blue star", rng)
        before, after = "a red circle left of a blue star".split(), out.split()
        changed = [(a, b) for a, b in zip(before, after) if a != b]
        assert len(before) == len(after) and len(changed) == 1, out
        old, new = changed[0]
        group = SHAPES.split(",") if old in SHAPES.split(",") else ["left", "right"]
        assert new in group and new != old
        seen.add(changed[0])
    # Every word of the caption that is in a group gets picked some of the time.
    assert {old for old, _ in seen} == {"circle", "left", "star"}


def test_whole_words_only_case_kept_and_phrases_first():
    swap = WordSwap(["star,circle", "plus sign,heart"])
    rng = random.Random(1)
    assert swap.swap("starfish and stardust", rng) is None  # no whole-word match
    assert swap.swap("", rng) is None
    assert swap.swap("Star on a plain field", rng) == "Circle on a plain field"
    assert swap.swap("a Plus sign", rng) == "a Heart"
    assert swap.swap("a plus sign", rng) == "a heart"
    assert swap.swap("the star.", rng) == "the circle."


def test_same_rng_state_same_negative():
    swap = WordSwap([SHAPES])
    a = [swap.swap("a circle and a square", random.Random(s)) for s in range(20)]
    b = [swap.swap("a circle and a square", random.Random(s)) for s in range(20)]
    assert a == b and len(set(a)) > 1


@pytest.mark.parametrize("groups, field", [
    (["circle"], "hard_negatives[0]"),
    (["circle,Circle"], "hard_negatives[0]"),
    (["circle,square", "square,star"], "hard_negatives[1]"),
])
def test_bad_groups_name_the_entry(groups, field):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_groups(groups)


def test_groups_as_strings_or_lists():
    assert parse_groups(["a, b ,c", ["x", "y"]]) == [["a", "b", "c"], ["x", "y"]]
