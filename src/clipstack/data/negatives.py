"""Hard-negative captions by word swap (NegCLIP, Yuksekgonul et al. 2023): the caption with one word changed.

In-batch negatives rarely differ from the positive in just one attribute, so a model can match captions
with the easiest attributes (colour, count) and never learn a harder one (shape, relation). A swapped
caption ("a red star" for "a red circle") is a negative that only the swapped attribute can reject.

The user names groups of interchangeable words, e.g. `circle,square,triangle` or `left,right`. One
group word found in the caption (whole words, case-insensitive; a random one if several) is replaced by
another word of its group, keeping a leading capital. A caption with no group word has no negative.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from clipstack.errors import ConfigError

__all__ = ["WordSwap", "parse_groups"]


def parse_groups(groups: Sequence[str | Sequence[str]]) -> list[list[str]]:
    """`["circle,square", ["left", "right"]]` -> [["circle", "square"], ["left", "right"]], validated."""
    out: list[list[str]] = []
    seen: dict[str, int] = {}
    for i, group in enumerate(groups):
        words = [w.strip() for w in (group.split(",") if isinstance(group, str) else group)]
        words = [w for w in words if w]
        if len(set(w.lower() for w in words)) < 2:
            raise ConfigError(f"data.hard_negatives[{i}]: a group needs at least two different words, "
                              f"got {group!r} (on the command line, give groups as JSON: "
                              f"'[\"circle,square,star\", \"left,right\"]')")
        for w in words:
            if w.lower() in seen and seen[w.lower()] != i:
                raise ConfigError(f"data.hard_negatives[{i}]: {w!r} is already in group {seen[w.lower()]}")
            seen[w.lower()] = i
        out.append(words)
    return out


class WordSwap:
    """`swap(caption, rng)` -> the caption with one group word replaced, or None if it has none."""

    def __init__(self, groups: Sequence[str | Sequence[str]]) -> None:
        self.groups = parse_groups(groups)
        self._group_of = {w.lower(): g for g, words in enumerate(self.groups) for w in words}
        # Longest first, so "plus sign" wins over "sign" where both are listed.
        alternation = "|".join(re.escape(w) for w in sorted(self._group_of, key=len, reverse=True))
        self._pattern = re.compile(rf"(?<!\w)(?:{alternation})(?!\w)", re.IGNORECASE)

    def __bool__(self) -> bool:
        return bool(self.groups)

    def swap(self, caption: str, rng: random.Random) -> str | None:
        matches = list(self._pattern.finditer(caption))
        if not matches:
            return None
        m = matches[rng.randrange(len(matches))]
        word = m.group(0)
        group = self.groups[self._group_of[word.lower()]]
        choices = [w for w in group if w.lower() != word.lower()]
        new = choices[rng.randrange(len(choices))]
        if word[:1].isupper():
            new = new[:1].upper() + new[1:]
        return caption[: m.start()] + new + caption[m.end():]
