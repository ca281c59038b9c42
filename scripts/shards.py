"""Deterministic fake C4: gzip'd JSON Lines shards laid out like the `allenai/c4` dataset repo.

The text is not real language, but it has what the download path cares about: realistic document and
shard sizes, a realistic gzip ratio (~2.7x), Zipf-distributed words, non-ASCII text, and characters that
JSON must escape. The same arguments always produce the same bytes.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import itertools
import json
import os
import random
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENERATOR_VERSION = 2  # 2: realnewslike and af (multilingual/) with a few hundred documents per shard
STAMP_NAME = ".fake-c4-stamp.json"
"""Written into the root after a complete build; the Hub server does not serve it."""

DEFAULT_MEAN_TEXT_CHARS = 2300
DECOY_DOCS_PER_SHARD = 20
EXTRA_DOCS_PER_SHARD = 300
"""Documents in each shard of the small extra configs (`realnewslike`, `af`), for `--config` tests."""
GZIP_LEVEL = 6

_VOCABULARY_SEED = "aioc4-fake-c4-vocabulary"
_VOCABULARY_SIZE = 3000
_SENTENCE_POOL_SIZE = 8192
_ZIPF_EXPONENT = 1.1
_PARAGRAPH_BREAK_PROBABILITY = 0.25
_TIMESTAMP_BASE = "2019-04-"
_TIMESTAMP_FIRST_DAY = 18
_TIMESTAMP_DAYS = 9

_COMMON_WORDS = (
    "the of and to a in is that for it on was with as are be this by at or from have an not you they his "
    "her we can which their all but more one has were will about if so when there what out up also been "
    "new time some other our into like just year people only after first its two most over than how"
)
# (rank in the vocabulary, word): non-ASCII words are frequent enough to appear in almost every document;
# the JSON-escaping ones (quote, backslash) only occasionally.
_SPECIAL_WORDS = (
    (25, "café"),
    (40, "über"),
    (55, "straße"),
    (70, "niño"),
    (85, "привет"),
    (100, "данные"),
    (115, "数据"),
    (130, "東京"),
    (145, "🙂"),
    (160, "naïve"),
    (175, "Zürich"),
    (190, "—"),
    (450, '"quoted"'),
    (520, "C:\\Users"),
    (600, 'say:"yes"'),
    (700, "back\\slash"),
)
_ONSETS = "b c d f g h j k l m n p r s t v w y z br ch cl cr dr fl gr pl pr sh st th tr"
_VOWELS = "a e i o u a e i o ai ea ou io"
_CODAS = ["", "", "", "n", "r", "s", "t", "l", "nd", "st", "ng", "rt"]
_TLDS = ("com", "com", "com", "org", "net", "co.uk", "de", "info", "io")
_SENTENCE_ENDS = (".", ".", ".", ".", "!", "?")

_CONFIGS = ("en", "en.noblocklist", "realnewslike")
_SPLITS = ("train", "validation")
_FOLDERS = (*_CONFIGS, "multilingual")
_SHARD_PATH = "{config}/c4-{split}.{number:05d}-of-{total:05d}.json.gz"
_AF_TRAIN = "multilingual/c4-af.tfrecord-{number:05d}-of-{total:05d}.json.gz"
_AF_VALIDATION = "multilingual/c4-af-validation.tfrecord-{number:05d}-of-{total:05d}.json.gz"
_EXTRA_SHARDS = (  # (config, split, path template, shard count), each shard of EXTRA_DOCS_PER_SHARD documents
    ("realnewslike", "train", _SHARD_PATH, 2),
    ("realnewslike", "validation", _SHARD_PATH, 1),
    ("af", "train", _AF_TRAIN, 2),
    ("af", "validation", _AF_VALIDATION, 1),
)
_AF_GLOBS = {"train": "multilingual/c4-af.*.json.gz", "validation": "multilingual/c4-af-validation.*.json.gz"}


def _card_config(name: str, paths: dict[str, Any]) -> dict[str, Any]:
    """One `configs` entry of the card: `paths` maps a split to a glob or a list of globs."""
    return {"config_name": name, "data_files": [{"split": split, "path": paths[split]} for split in _SPLITS]}


CARD_DATA: dict[str, Any] = {
    "pretty_name": "C4",
    "language": ["en", "af"],
    "license": "odc-by",
    "task_categories": ["text-generation", "fill-mask"],
    "configs": [
        *(
            _card_config(config, {split: f"{config}/c4-{split}.*.json.gz" for split in _SPLITS})
            for config in _CONFIGS
        ),
        # as in the real card: `multilingual` lists one glob per language
        _card_config("multilingual", {split: [glob] for split, glob in _AF_GLOBS.items()}),
        _card_config("af", _AF_GLOBS),
    ],
}
"""The dataset card's YAML header, as Python data; the Hub server exposes it as `cardData`."""

_GITATTRIBUTES = """\
*.7z filter=lfs diff=lfs merge=lfs -text
*.arrow filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.gz filter=lfs diff=lfs merge=lfs -text
*.json.gz filter=lfs diff=lfs merge=lfs -text
*.parquet filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
"""


@dataclass(frozen=True)
class FakeRepo:
    """A generated repository: its root directory and the repo-relative paths of its files."""

    root: Path
    files: tuple[str, ...]


@dataclass(frozen=True)
class _Language:
    ascii_words: tuple[str, ...]
    sentences: tuple[str, ...]
    mean_sentence_chars: float


def _pseudo_word(rng: random.Random) -> str:
    syllables = rng.choices((1, 2, 3, 4), weights=(3, 5, 3, 1))[0]
    onsets, vowels = _ONSETS.split(), _VOWELS.split()
    parts = [rng.choice(onsets) + rng.choice(vowels) for _ in range(syllables)]
    return "".join(parts) + rng.choice(_CODAS)


def _vocabulary(rng: random.Random) -> list[str]:
    words = _COMMON_WORDS.split()
    seen = set(words)
    while len(words) < _VOCABULARY_SIZE:
        word = _pseudo_word(rng)
        if word not in seen:
            seen.add(word)
            words.append(word)
    for rank, word in _SPECIAL_WORDS:
        words.insert(rank, word)
    return words


def _sentence(rng: random.Random, words: Sequence[str], cum_weights: Sequence[float]) -> str:
    """A sentence with its trailing separator: a space, or a newline where a paragraph ends."""
    chosen = rng.choices(words, cum_weights=cum_weights, k=rng.randint(5, 30))
    if len(chosen) > 10:
        chosen[rng.randrange(3, len(chosen) - 3)] += ","
    chosen[0] = chosen[0].capitalize()
    separator = "\n" if rng.random() < _PARAGRAPH_BREAK_PROBABILITY else " "
    return " ".join(chosen) + rng.choice(_SENTENCE_ENDS) + separator


@functools.cache
def _language() -> _Language:
    """Build the fixed vocabulary and a pool of sentences drawn from it (documents sample the pool)."""
    rng = random.Random(_VOCABULARY_SEED)
    words = _vocabulary(rng)
    cum_weights = list(
        itertools.accumulate(1.0 / (rank + 2.7) ** _ZIPF_EXPONENT for rank in range(len(words)))
    )
    sentences = tuple(_sentence(rng, words, cum_weights) for _ in range(_SENTENCE_POOL_SIZE))
    ascii_words = tuple(word for word in words if word.isascii() and word.isalpha())
    mean = sum(map(len, sentences)) / len(sentences)
    return _Language(ascii_words=ascii_words, sentences=sentences, mean_sentence_chars=mean)


def _text(rng: random.Random, language: _Language, mean_text_chars: int) -> str:
    mean_sentences = max(1.0, mean_text_chars / language.mean_sentence_chars)
    count = max(1, round(rng.gammavariate(2.0, mean_sentences / 2.0)))
    return "".join(rng.choices(language.sentences, k=count))[:-1]


def _timestamp(rng: random.Random) -> str:
    day, seconds = divmod(rng.randrange(_TIMESTAMP_DAYS * 86400), 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    return f"{_TIMESTAMP_BASE}{_TIMESTAMP_FIRST_DAY + day:02d}T{hours:02d}:{minutes:02d}:{seconds:02d}Z"


def _url(rng: random.Random, language: _Language, shard: int, index: int) -> str:
    host_a, host_b, section, slug_a, slug_b = rng.choices(language.ascii_words, k=5)
    return f"https://www.{host_a}{host_b}.{rng.choice(_TLDS)}/{section}/{slug_a}-{slug_b}-{shard}-{index}"


def make_document(
    rng: random.Random, shard: int, index: int, *, mean_text_chars: int = DEFAULT_MEAN_TEXT_CHARS
) -> dict[str, str]:
    """One C4-like record; `shard` and `index` end the URL so a document's origin is visible."""
    language = _language()
    return {
        "text": _text(rng, language, mean_text_chars),
        "timestamp": _timestamp(rng),
        "url": _url(rng, language, shard, index),
    }


def write_shard(path: Path, rng: random.Random, shard: int, docs: int, mean_text_chars: int) -> None:
    """Write `docs` documents as gzip'd JSON Lines (atomically, via a temporary file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    batch = 1000
    with (
        partial.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0) as gz,
    ):
        for start in range(0, docs, batch):
            lines = [
                json.dumps(
                    make_document(rng, shard, index, mean_text_chars=mean_text_chars),
                    ensure_ascii=False,
                    separators=(",", ":"),
                )
                for index in range(start, min(docs, start + batch))
            ]
            lines.append("")
            gz.write("\n".join(lines).encode())
    partial.replace(path)


def iter_shard_lines(path: Path) -> Iterator[bytes]:
    """The JSON lines of a shard, without their newline."""
    with gzip.open(path, "rb") as gz:
        for line in gz:
            yield line.rstrip(b"\n")


def _yaml_lines(value: Any, indent: str) -> Iterator[str]:
    """A minimal YAML emitter for dicts, lists and scalars (scalars as JSON, which is valid YAML)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list):
                yield f"{indent}{key}:"
                yield from _yaml_lines(item, indent + "  ")
            else:
                yield f"{indent}{key}: {json.dumps(item, ensure_ascii=False)}"
    elif isinstance(value, list):
        for item in value:
            nested = list(_yaml_lines(item, indent + "  "))
            yield f"{indent}- {nested[0].lstrip()}"
            yield from nested[1:]
    else:
        yield indent + json.dumps(value, ensure_ascii=False)


def readme_text() -> str:
    front_matter = "\n".join(_yaml_lines(CARD_DATA, ""))
    return (
        f"---\n{front_matter}\n---\n\n# C4 (fake)\n\n"
        "A small, deterministic imitation of `allenai/c4` for offline tests: the same layout and record\n"
        "format, generated text.\n"
    )


def _write_text(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


@dataclass(frozen=True)
class _Shard:
    config: str
    split: str
    number: int
    total: int
    docs: int
    template: str = _SHARD_PATH

    @property
    def path(self) -> str:
        fields = {"config": self.config, "split": self.split, "number": self.number, "total": self.total}
        return self.template.format(**fields)

    def write(self, root: Path, seed: int, mean_text_chars: int) -> None:
        rng = random.Random(f"{seed}:{self.config}:{self.split}:{self.number}:{self.total}")
        write_shard(root / self.path, rng, self.number, self.docs, mean_text_chars)


def _shard_plan(train: tuple[int, int], validation: tuple[int, int]) -> list[_Shard]:
    """Every shard to write; `train` and `validation` are (shard count, documents per shard) for `en`."""
    plan = [_Shard("en", "train", i, train[0], train[1]) for i in range(train[0])]
    plan += [_Shard("en", "validation", i, validation[0], validation[1]) for i in range(validation[0])]
    plan += [_Shard("en.noblocklist", split, 0, 1, DECOY_DOCS_PER_SHARD) for split in _SPLITS]
    plan += [
        _Shard(config, split, number, total, EXTRA_DOCS_PER_SHARD, template)
        for config, split, template, total in _EXTRA_SHARDS
        for number in range(total)
    ]
    return plan


def _read_stamp(root: Path) -> dict[str, Any] | None:
    try:
        stamp: dict[str, Any] = json.loads((root / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return stamp


def _stamp_is_current(root: Path, arguments: dict[str, int]) -> bool:
    stamp = _read_stamp(root)
    if stamp is None or stamp.get("arguments") != arguments:
        return False
    sizes: dict[str, int] = stamp.get("sizes", {})
    return all(
        (root / path).is_file() and (root / path).stat().st_size == size for path, size in sizes.items()
    )


def _remove_previous_build(root: Path) -> None:
    """Delete only files this generator writes, so a stale build cannot leave extra shards behind."""
    for folder in _FOLDERS:
        for path in (root / folder).glob("c4-*.json.gz*"):
            path.unlink()
    for name in (STAMP_NAME, "README.md", ".gitattributes"):
        (root / name).unlink(missing_ok=True)


def build_fake_c4(
    root: Path,
    *,
    train_shards: int = 4,
    docs_per_train_shard: int = 3000,
    validation_shards: int = 2,
    docs_per_validation_shard: int = 1000,
    seed: int = 0,
    mean_text_chars: int = DEFAULT_MEAN_TEXT_CHARS,
) -> FakeRepo:
    """Write the fake repo under `root`, or reuse it when its stamp records the same arguments."""
    arguments = {
        "version": GENERATOR_VERSION,
        "train_shards": train_shards,
        "docs_per_train_shard": docs_per_train_shard,
        "validation_shards": validation_shards,
        "docs_per_validation_shard": docs_per_validation_shard,
        "seed": seed,
        "mean_text_chars": mean_text_chars,
    }
    plan = _shard_plan((train_shards, docs_per_train_shard), (validation_shards, docs_per_validation_shard))
    files = sorted([".gitattributes", "README.md", *(shard.path for shard in plan)])
    if _stamp_is_current(root, arguments):
        return FakeRepo(root=root, files=tuple(files))
    root.mkdir(parents=True, exist_ok=True)
    _remove_previous_build(root)
    _language()  # built once, before the threads share it
    # zlib releases the GIL while compressing, so shards written in threads overlap usefully.
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        for future in [pool.submit(shard.write, root, seed, mean_text_chars) for shard in plan]:
            future.result()
    _write_text(root / "README.md", readme_text())
    _write_text(root / ".gitattributes", _GITATTRIBUTES)
    stamp = {"arguments": arguments, "sizes": {path: (root / path).stat().st_size for path in files}}
    _write_text(root / STAMP_NAME, json.dumps(stamp, indent=1, sort_keys=True) + "\n")
    return FakeRepo(root=root, files=tuple(files))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("root", type=Path)
    parser.add_argument("--train-shards", type=int, default=4)
    parser.add_argument("--docs-per-train-shard", type=int, default=3000)
    parser.add_argument("--validation-shards", type=int, default=2)
    parser.add_argument("--docs-per-validation-shard", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mean-text-chars", type=int, default=DEFAULT_MEAN_TEXT_CHARS)
    args = parser.parse_args(argv)
    repo = build_fake_c4(
        args.root,
        train_shards=args.train_shards,
        docs_per_train_shard=args.docs_per_train_shard,
        validation_shards=args.validation_shards,
        docs_per_validation_shard=args.docs_per_validation_shard,
        seed=args.seed,
        mean_text_chars=args.mean_text_chars,
    )
    for path in repo.files:
        print(path)


if __name__ == "__main__":
    main()
