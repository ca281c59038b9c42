"""Pure naming rules for part files, kept identical to the tool aioc4 replaces.

`c4_{split}_{N}.jsonl` when everything fits in one file, otherwise
`c4_{split}_{N}_part001.jsonl`, `..._part002.jsonl`, ... where N is the number of documents written.
A config other than `en` is part of the name: `c4_{config}_{split}_{N}...`. Part numbers have
max(3, digits of the part count) digits, so names sort in order even past 999 parts. Compressed
parts end in `.jsonl.gz` or `.jsonl.zst` instead of `.jsonl` (`PART_EXTENSIONS`).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Protocol

from .variants import CONFIG_NAME_PATTERN, DEFAULT_CONFIG

__all__ = [
    "PART_EXTENSIONS",
    "PART_NAME",
    "CountNaming",
    "PartNaming",
    "ShardNaming",
    "combined_manifest_name",
    "job_stem",
    "part_count",
    "part_digits",
    "part_extension",
    "part_index",
    "part_name",
    "part_names",
    "part_sizes",
    "renames_for_short_split",
    "split_stem",
    "temp_part_glob",
    "temp_part_name",
]

PART_EXTENSIONS = {"none": ".jsonl", "gzip": ".jsonl.gz", "zstd": ".jsonl.zst"}
"""A part's extension for each `--compression` (the keys are `aioc4.config.COMPRESSIONS`)."""
_EXTENSION = r"\.jsonl(?:\.gz|\.zst)?"
PART_NAME = re.compile(
    rf"^c4_(?:{CONFIG_NAME_PATTERN}_)?(?:train|validation)_(?:\d+|shard\d{{5}})(?:_part\d{{3,}})?{_EXTENSION}$"
)
"""Every name aioc4 gives a part: names read back from a manifest must match it (they become paths)."""
_MAX_SELECTION_IN_NAME = 40
SHARD_PART_DIGITS = 6  # a bulk pull does not know a shard's part count in advance: room for 999,999


def part_extension(compression: str) -> str:
    """`.jsonl`, `.jsonl.gz` or `.jsonl.zst`."""
    return PART_EXTENSIONS[compression]


def split_stem(split: str, config: str = DEFAULT_CONFIG) -> str:
    """`c4_{split}` for `en`, `c4_{config}_{split}` for any other config."""
    return f"c4_{split}" if config == DEFAULT_CONFIG else f"c4_{config}_{split}"


def job_stem(split: str, requested: int, config: str = DEFAULT_CONFIG) -> str:
    """`c4_{split}_{N}` for `en` (the original tool's names), `c4_{config}_{split}_{N}` otherwise."""
    return f"{split_stem(split, config)}_{requested}"


class PartNaming(Protocol):
    """How one job names its files (parts, temp parts, manifest)."""

    @property
    def compression(self) -> str:
        """`none`, `gzip` or `zstd`: how the parts are stored, which their extension says."""
        ...

    @property
    def stem(self) -> str:
        """What every file name of the job starts with (`c4_train_1000`, `c4_train_shard00017`)."""
        ...

    def final(self, index: int, total: int) -> str:
        """Part `index` (1-based) of a job that wrote `total` documents (or asked for them, until the end)."""
        ...

    def temp(self, index: int) -> str: ...

    def temp_glob(self) -> str: ...

    def manifest(self) -> str: ...


@dataclass(frozen=True, slots=True)
class CountNaming:
    """The original tool's names: the first N documents, the count in every name."""

    split: str
    requested: int
    max_lines: int | None
    config: str = DEFAULT_CONFIG
    compression: str = "none"

    @property
    def stem(self) -> str:
        return job_stem(self.split, self.requested, self.config)

    def final(self, index: int, total: int) -> str:
        count = part_count(total, self.max_lines)
        return part_name(self.split, total, index, count, self.config, self.compression)

    def temp(self, index: int) -> str:
        return temp_part_name(self.split, self.requested, index, self.config, self.compression)

    def temp_glob(self) -> str:
        return temp_part_glob(self.split, self.requested, self.config)

    def manifest(self) -> str:
        """Named after the request (not the real count), so a rerun of the same command finds it."""
        return f"{self.stem}.manifest.json"


@dataclass(frozen=True, slots=True)
class ShardNaming:
    """A bulk pull's names: one shard's documents, `c4_{split}_shard00017.jsonl` or
    `c4_{split}_shard00017_part000001.jsonl`, ... (shard numbers have 5 digits as in C4's own file
    names; part numbers 6, as a shard's part count is not known in advance), so every name sorts
    in reading order and does not depend on which shards or how many workers a run had."""

    split: str
    shard: int  # the shard's position in the split's reading order (C4's shard number for `en`)
    max_lines: int | None
    config: str = DEFAULT_CONFIG
    compression: str = "none"

    @property
    def stem(self) -> str:
        return f"{split_stem(self.split, self.config)}_shard{self.shard:05d}"

    def final(self, index: int, total: int) -> str:
        extension = part_extension(self.compression)
        if self.max_lines is None:
            return f"{self.stem}{extension}"
        return f"{self.stem}_part{index:0{SHARD_PART_DIGITS}d}{extension}"

    def temp(self, index: int) -> str:
        return f".{self.stem}_part{index:0{SHARD_PART_DIGITS}d}{part_extension(self.compression)}.tmp"

    def temp_glob(self) -> str:
        return _temp_glob(self.stem)

    def manifest(self) -> str:
        return f"{self.stem}.manifest.json"


def combined_manifest_name(split: str, config: str, selection: str) -> str:
    """`c4_{split}_all.manifest.json`, or for a selection `c4_{split}_shards0-99_200.manifest.json`
    (a long selection is named by a short hash of it instead)."""
    if not selection:
        return f"{split_stem(split, config)}_all.manifest.json"
    tag = selection.replace(",", "_")
    if len(tag) > _MAX_SELECTION_IN_NAME:
        tag = "h" + hashlib.sha256(selection.encode()).hexdigest()[:12]
    return f"{split_stem(split, config)}_shards{tag}.manifest.json"


def part_count(total: int, max_lines: int | None) -> int:
    """How many parts hold `total` documents at most `max_lines` per part (at least one)."""
    if max_lines is None or total <= max_lines:
        return 1
    return math.ceil(total / max_lines)


def part_digits(count: int) -> int:
    """Digits of a part number: 3 as in the original tool, more when there are over 999 parts."""
    return max(3, len(str(count)))


def part_name(
    split: str, total: int, index: int, count: int, config: str = DEFAULT_CONFIG, compression: str = "none"
) -> str:
    """The final name of part `index` (1-based) of `count` parts holding `total` documents."""
    stem, extension = job_stem(split, total, config), part_extension(compression)
    if count == 1:
        return f"{stem}{extension}"
    return f"{stem}_part{index:0{part_digits(count)}d}{extension}"


def part_index(name: str) -> int:
    """The 1-based number of a part from its name (a single-file name is part 1)."""
    match = re.search(rf"_part(\d+){_EXTENSION}$", name)
    return int(match.group(1)) if match else 1


def part_names(
    split: str, total: int, max_lines: int | None, config: str = DEFAULT_CONFIG, compression: str = "none"
) -> list[str]:
    count = part_count(total, max_lines)
    return [part_name(split, total, index, count, config, compression) for index in range(1, count + 1)]


def part_sizes(total: int, max_lines: int | None) -> list[int]:
    """Line counts of the parts, in order: full parts, then the remainder."""
    if max_lines is None or total <= max_lines:
        return [total]
    full, rest = divmod(total, max_lines)
    return [max_lines] * full + ([rest] if rest else [])


def temp_part_name(
    split: str, requested: int, index: int, config: str = DEFAULT_CONFIG, compression: str = "none"
) -> str:
    """Name a part has while it is being written: hidden, never a final name, and tied to its job so
    a rerun can sweep what a killed run left behind (`temp_part_glob`)."""
    return f".{job_stem(split, requested, config)}_part{index:03d}{part_extension(compression)}.tmp"


def temp_part_glob(split: str, requested: int, config: str = DEFAULT_CONFIG) -> str:
    return _temp_glob(job_stem(split, requested, config))


def _temp_glob(stem: str) -> str:
    """Temp parts of the job `stem` whatever their compression: a killed run of the same job with
    another `--compression` leaves its temp files too (the job's manifest name is the same)."""
    return f".{stem}_part*.jsonl*.tmp"


def renames_for_short_split(
    split: str,
    requested: int,
    actual: int,
    max_lines: int | None,
    finished: int,
    config: str = DEFAULT_CONFIG,
    compression: str = "none",
) -> list[tuple[str, str]]:
    """(old, new) names for the first `finished` parts when the split held only `actual` < `requested`.

    Parts finished before the source ran out were named after the requested count; the
    names must carry the real count, and the numbering may change from parts to a single file.
    """
    old_count = part_count(requested, max_lines)
    new_count = part_count(actual, max_lines)
    pairs = []
    for index in range(1, finished + 1):
        old = part_name(split, requested, index, old_count, config, compression)
        new = part_name(split, actual, index, new_count, config, compression)
        if old != new:
            pairs.append((old, new))
    return pairs
