"""Pure naming rules for part files, kept identical to the tool aioc4 replaces.

`c4_{split}_{N}.jsonl` when everything fits in one file, otherwise
`c4_{split}_{N}_part001.jsonl`, `..._part002.jsonl`, ... where N is the number of documents written.
A config other than `en` is part of the name: `c4_{config}_{split}_{N}...`. Part numbers have
max(3, digits of the part count) digits, so names sort in order even past 999 parts.
"""

from __future__ import annotations

import math
import re

from .variants import CONFIG_NAME_PATTERN, DEFAULT_CONFIG

__all__ = [
    "PART_NAME",
    "job_stem",
    "part_count",
    "part_digits",
    "part_index",
    "part_name",
    "part_names",
    "part_sizes",
    "renames_for_short_split",
    "temp_part_glob",
    "temp_part_name",
]

PART_NAME = re.compile(rf"^c4_(?:{CONFIG_NAME_PATTERN}_)?(?:train|validation)_\d+(?:_part\d{{3,}})?\.jsonl$")
"""Every name `part_name` can give: names read back from a manifest must match it (they become paths)."""


def job_stem(split: str, requested: int, config: str = DEFAULT_CONFIG) -> str:
    """`c4_{split}_{N}` for `en` (the original tool's names), `c4_{config}_{split}_{N}` otherwise."""
    return f"c4_{split}_{requested}" if config == DEFAULT_CONFIG else f"c4_{config}_{split}_{requested}"


def part_count(total: int, max_lines: int | None) -> int:
    """How many parts hold `total` documents at most `max_lines` per part (at least one)."""
    if max_lines is None or total <= max_lines:
        return 1
    return math.ceil(total / max_lines)


def part_digits(count: int) -> int:
    """Digits of a part number: 3 as in the original tool, more when there are over 999 parts."""
    return max(3, len(str(count)))


def part_name(split: str, total: int, index: int, count: int, config: str = DEFAULT_CONFIG) -> str:
    """The final name of part `index` (1-based) of `count` parts holding `total` documents."""
    stem = job_stem(split, total, config)
    if count == 1:
        return f"{stem}.jsonl"
    return f"{stem}_part{index:0{part_digits(count)}d}.jsonl"


def part_index(name: str) -> int:
    """The 1-based number of a part from its name (a single-file name is part 1)."""
    match = re.search(r"_part(\d+)\.jsonl$", name)
    return int(match.group(1)) if match else 1


def part_names(split: str, total: int, max_lines: int | None, config: str = DEFAULT_CONFIG) -> list[str]:
    count = part_count(total, max_lines)
    return [part_name(split, total, index, count, config) for index in range(1, count + 1)]


def part_sizes(total: int, max_lines: int | None) -> list[int]:
    """Line counts of the parts, in order: full parts, then the remainder."""
    if max_lines is None or total <= max_lines:
        return [total]
    full, rest = divmod(total, max_lines)
    return [max_lines] * full + ([rest] if rest else [])


def temp_part_name(split: str, requested: int, index: int, config: str = DEFAULT_CONFIG) -> str:
    """Name a part has while it is being written: hidden, never a final name, and tied to its job so
    a rerun can sweep what a killed run left behind (`temp_part_glob`)."""
    return f".{job_stem(split, requested, config)}_part{index:03d}.jsonl.tmp"


def temp_part_glob(split: str, requested: int, config: str = DEFAULT_CONFIG) -> str:
    return f".{job_stem(split, requested, config)}_part*.jsonl.tmp"


def renames_for_short_split(
    split: str,
    requested: int,
    actual: int,
    max_lines: int | None,
    finished: int,
    config: str = DEFAULT_CONFIG,
) -> list[tuple[str, str]]:
    """(old, new) names for the first `finished` parts when the split held only `actual` < `requested`.

    Parts finished before the source ran out were named after the requested count; the
    names must carry the real count, and the numbering may change from parts to a single file.
    """
    old_count = part_count(requested, max_lines)
    new_count = part_count(actual, max_lines)
    pairs = []
    for index in range(1, finished + 1):
        old = part_name(split, requested, index, old_count, config)
        new = part_name(split, actual, index, new_count, config)
        if old != new:
            pairs.append((old, new))
    return pairs
