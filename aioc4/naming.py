"""Pure naming rules for part files, kept identical to the tool aioc4 replaces.

`c4_{split}_{N}.jsonl` when everything fits in one file, otherwise
`c4_{split}_{N}_part001.jsonl`, `..._part002.jsonl`, ... where N is the number of documents written.
"""

from __future__ import annotations

import math
import re

__all__ = [
    "part_count",
    "part_index",
    "part_name",
    "part_names",
    "part_sizes",
    "renames_for_short_split",
    "temp_part_glob",
    "temp_part_name",
]


def part_count(total: int, max_lines: int | None) -> int:
    """How many parts hold `total` documents at most `max_lines` per part (at least one)."""
    if max_lines is None or total <= max_lines:
        return 1
    return math.ceil(total / max_lines)


def part_name(split: str, total: int, index: int, count: int) -> str:
    """The final name of part `index` (1-based) of `count` parts holding `total` documents."""
    if count == 1:
        return f"c4_{split}_{total}.jsonl"
    return f"c4_{split}_{total}_part{index:03d}.jsonl"


def part_index(name: str) -> int:
    """The 1-based number of a part from its name (a single-file name is part 1)."""
    match = re.search(r"_part(\d+)\.jsonl$", name)
    return int(match.group(1)) if match else 1


def part_names(split: str, total: int, max_lines: int | None) -> list[str]:
    count = part_count(total, max_lines)
    return [part_name(split, total, index, count) for index in range(1, count + 1)]


def part_sizes(total: int, max_lines: int | None) -> list[int]:
    """Line counts of the parts, in order: full parts, then the remainder."""
    if max_lines is None or total <= max_lines:
        return [total]
    full, rest = divmod(total, max_lines)
    return [max_lines] * full + ([rest] if rest else [])


def temp_part_name(split: str, requested: int, index: int) -> str:
    """Name a part has while it is being written: hidden, never a final name, and tied to its job so
    a rerun can sweep what a killed run left behind (`temp_part_glob`)."""
    return f".c4_{split}_{requested}_part{index:03d}.jsonl.tmp"


def temp_part_glob(split: str, requested: int) -> str:
    return f".c4_{split}_{requested}_part*.jsonl.tmp"


def renames_for_short_split(
    split: str, requested: int, actual: int, max_lines: int | None, finished: int
) -> list[tuple[str, str]]:
    """(old, new) names for the first `finished` parts when the split held only `actual` < `requested`.

    Parts finished before the source ran out were named after the requested count; the
    names must carry the real count, and the numbering may change from parts to a single file.
    """
    old_count = part_count(requested, max_lines)
    new_count = part_count(actual, max_lines)
    pairs = []
    for index in range(1, finished + 1):
        old = part_name(split, requested, index, old_count)
        new = part_name(split, actual, index, new_count)
        if old != new:
            pairs.append((old, new))
    return pairs
