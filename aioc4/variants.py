"""C4's variants (the dataset's configs): which files each split of a config is made of. Pure.

The dataset card declares them (`configs: [{config_name, data_files: [{split, path}]}]`, `path` a glob
or a list of globs, e.g. `en/c4-train.*.json.gz`); `BUILTIN_VARIANTS` is the same table, used when the
card cannot be read. Config names end up in file names and S3 keys, so every name, including those
read from the card, must pass `is_valid_config_name` before it is used.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import UsageError

__all__ = [
    "BUILTIN_VARIANTS",
    "DEFAULT_CONFIG",
    "MC4_LANGUAGES",
    "ShardPattern",
    "Variant",
    "Variants",
    "check_config_name",
    "glob_folders",
    "glob_regex",
    "is_valid_config_name",
    "pick_variant",
    "shard_pattern",
    "variants_from_card",
    "variants_to_use",
]

DEFAULT_CONFIG = "en"
CONFIG_NAME_PATTERN = r"(?!.*\.\.)[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?"
"""Letters, digits, `.`, `_`, `-`; starts and ends with a letter or digit, no `..`, at most 64 characters:
every real config (`en.noclean`, `en-multi`, `bg-Latn`) passes, no path trick (`..`, `/`, `.hidden`) does."""
_CONFIG_NAME = re.compile(rf"^{CONFIG_NAME_PATTERN}$")
_WILDCARD = re.compile(r"(\*+|\?)")
_SHARD_NUMBER = re.compile(r"[.-](\d+)-of-\d+[^/]*$")
_MAGIC = frozenset("*?")

_MC4_LANGUAGES = (
    "af am ar az be bg bg-Latn bn ca ceb co cs cy da de el el-Latn en eo es et eu fa fi fil fr fy ga gd gl "
    "gu ha haw hi hi-Latn hmn ht hu hy id ig is it iw ja ja-Latn jv ka kk km kn ko ku ky la lb lo lt lv mg "
    "mi mk ml mn mr ms mt my ne nl no ny pa pl ps pt ro ru ru-Latn sd si sk sl sm sn so sq sr st su sv sw "
    "ta te tg th tr uk und ur uz vi xh yi yo zh zh-Latn zu"
)
MC4_LANGUAGES = tuple(_MC4_LANGUAGES.split())
"""The languages of `multilingual/` (mC4); each is a config of its own, `en` under the name `en-multi`."""


@dataclass(frozen=True, slots=True)
class Variant:
    """One config: for each split, the globs its shards match, in the order they are read."""

    name: str
    data_files: Mapping[str, tuple[str, ...]]

    def globs(self, split: str) -> tuple[str, ...]:
        return self.data_files.get(split, ())


@dataclass(frozen=True, slots=True)
class Variants:
    """The configs a run can choose from, and where they come from (the card, or the built-in table)."""

    by_name: Mapping[str, Variant]
    from_card: bool


def is_valid_config_name(name: str) -> bool:
    return bool(_CONFIG_NAME.match(name))


def check_config_name(name: str) -> str:
    """`name` if it may become part of a file name, else a UsageError."""
    if not is_valid_config_name(name):
        raise UsageError(
            f"--config {name!r} is not a valid config name (letters, digits, '.', '_', '-'; e.g. en.noclean)"
        )
    return name


def _is_safe_glob(glob: str) -> bool:
    """A repo-relative glob without `.`/`..`/empty segments or backslashes (it names a folder to list)."""
    segments = glob.split("/")
    return "\\" not in glob and all(segment not in ("", ".", "..") for segment in segments)


def _builtin() -> dict[str, Variant]:
    table = {
        name: Variant(name, {split: (f"{name}/c4-{split}.*.json.gz",) for split in ("train", "validation")})
        for name in ("en", "en.noblocklist", "en.noclean", "realnewslike")
    }
    train = tuple(f"multilingual/c4-{lang}.*.json.gz" for lang in MC4_LANGUAGES)
    validation = tuple(f"multilingual/c4-{lang}-validation.*.json.gz" for lang in MC4_LANGUAGES)
    table["multilingual"] = Variant("multilingual", {"train": train, "validation": validation})
    for lang, train_glob, validation_glob in zip(MC4_LANGUAGES, train, validation, strict=True):
        name = "en-multi" if lang == "en" else lang
        table[name] = Variant(name, {"train": (train_glob,), "validation": (validation_glob,)})
    return table


BUILTIN_VARIANTS: Mapping[str, Variant] = _builtin()
"""What `allenai/c4`'s card declares (checked against it), for when the card cannot be read."""


def _globs_of(path: object) -> tuple[str, ...] | None:
    """A data_files `path`: one glob or a list of globs; None if malformed or unsafe."""
    globs = [path] if isinstance(path, str) else path
    if not isinstance(globs, list) or not globs:
        return None
    if not all(isinstance(glob, str) and _is_safe_glob(glob) for glob in globs):
        return None
    return tuple(globs)


def _variant_from_card(entry: object) -> Variant | None:
    """One `configs` entry of the card, or None if it is malformed or its name is not a safe one."""
    if not isinstance(entry, Mapping):
        return None
    name, data_files = entry.get("config_name"), entry.get("data_files")
    if not isinstance(name, str) or not is_valid_config_name(name) or not isinstance(data_files, list):
        return None
    splits: dict[str, tuple[str, ...]] = {}
    for item in data_files:
        if not isinstance(item, Mapping) or not isinstance(item.get("split"), str):
            return None
        globs = _globs_of(item.get("path"))
        if globs is None:
            return None
        splits[item["split"]] = globs
    return Variant(name, splits)


def variants_from_card(card: Mapping[str, Any] | None) -> dict[str, Variant]:
    """The well-formed configs the card declares (malformed or unsafe entries are left out)."""
    entries = card.get("configs") if card is not None else None
    if not isinstance(entries, list):
        return {}
    variants = (_variant_from_card(entry) for entry in entries)
    return {variant.name: variant for variant in variants if variant is not None}


def variants_to_use(card: Mapping[str, Any] | None) -> Variants:
    """The card's configs, or the built-in table when the card has none (missing, empty or unreadable)."""
    declared = variants_from_card(card)
    if declared:
        return Variants(declared, from_card=True)
    return Variants(BUILTIN_VARIANTS, from_card=False)


def pick_variant(variants: Variants, name: str, split: str) -> Variant:
    """The config called `name` with a `split`; a one-line UsageError naming the valid ones otherwise."""
    variant = variants.by_name.get(name)
    if variant is None:
        where = "the dataset card" if variants.from_card else "aioc4's built-in table"
        raise UsageError(
            f"unknown --config {name!r}; valid configs (from {where}): {', '.join(variants.by_name)}"
        )
    if not variant.globs(split):
        raise UsageError(f"--config {name!r} has no {split} split")
    return variant


def glob_regex(glob: str) -> str:
    """A data_files glob as a regex (unanchored): `*` and `?` never match `/`, all else is literal.

    `fnmatch.translate` lets `*` cross `/` (and `glob.translate`, which does not, needs Python 3.13).
    """
    pieces = _WILDCARD.split(glob)
    return "".join(
        "[^/]*" if piece.startswith("*") else "[^/]" if piece == "?" else re.escape(piece) for piece in pieces
    )


@dataclass(frozen=True, slots=True)
class ShardPattern:
    """The shards of one split: paths matching one of its globs in full, and carrying a shard number.

    Where a glob has one `*` (every C4 config's), it must stand for exactly `NNNNN-of-MMMMM` (mC4:
    `tfrecord-NNNNN-of-MMMMM`), as in C4's own names: `c4-train.00000-of-01024 copy.json.gz` in the
    same folder is not a shard.
    """

    regexes: tuple[re.Pattern[str], ...]

    def key(self, path: str) -> tuple[int, int, int] | None:
        """(glob position, shard number, shard total): the reading order; None if not a shard."""
        for position, regex in enumerate(self.regexes):
            match = regex.fullmatch(path)
            if match is None:
                continue
            if match.groupdict().get("number") is not None:
                return position, int(match["number"]), int(match["total"])
            number = _SHARD_NUMBER.search(path)
            if number is not None:
                return position, int(number.group(1)), 0
        return None


def shard_pattern(globs: Sequence[str]) -> ShardPattern:
    return ShardPattern(tuple(re.compile(_shard_regex(glob)) for glob in globs))


def _shard_regex(glob: str) -> str:
    """A glob with a single `*` in its last segment matches C4's `NNNNN-of-MMMMM` there, nothing else."""
    folder, _, name = glob.rpartition("/")
    if glob.count("*") != 1 or "*" not in name or "?" in glob:
        return glob_regex(glob)
    before, after = name.split("*")
    prefix = f"{re.escape(folder)}/" if folder else ""
    star = r"(?:tfrecord-)?(?P<number>[0-9]{5})-of-(?P<total>[0-9]{5})"
    return f"{prefix}{re.escape(before)}{star}{re.escape(after)}"


def glob_folders(globs: Iterable[str]) -> list[tuple[str, bool]]:
    """(folder, recursive) listings that cover the globs: the part before the first wildcard segment,
    recursive only when wildcards reach below it. `""` is the repo root."""
    folders: dict[str, bool] = {}
    for glob in globs:
        segments = glob.split("/")
        last = len(segments) - 1
        static = next(i for i, segment in enumerate(segments) if i == last or _MAGIC & set(segment))
        folder = "/".join(segments[:static])
        folders[folder] = folders.get(folder, False) or static < last
    return list(folders.items())
