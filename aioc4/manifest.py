"""The manifest: what a job asked for, and every part it finished, in a JSON file next to the parts.

It makes a rerun exact: parts recorded as finished (and found intact at the destination) are
skipped, the commit is pinned to the one the job started with, and each part records the source
range it came from, so the rerun restarts reading exactly where the finished parts end. Pure:
parsing, serialising and planning; `write_atomically` is the only I/O.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from .decode import SourcePosition
from .errors import ManifestError
from .naming import PART_EXTENSIONS, PART_NAME, part_index
from .variants import is_valid_config_name

__all__ = [
    "MANIFEST_VERSION",
    "JobIdentity",
    "Manifest",
    "PartRecord",
    "ResumePoint",
    "resume_point",
    "write_atomically",
]

MANIFEST_VERSION = 2  # 2: parts carry a CRC-32 instead of a SHA-256
_CRC32 = re.compile(r"^[0-9a-f]{8}$")


@dataclass(frozen=True, slots=True)
class JobIdentity:
    """What identifies a job; a rerun must ask for exactly this (the commit is pinned, not compared).
    Stored as the manifest's `request` object."""

    repo_id: str
    revision: str
    config_name: str
    split: str
    num_samples: int
    max_lines_per_file: int | None
    commit: str = ""
    shards: str = ""  # a --shards selection ("" = the whole split)
    shard: str = ""  # bulk pulls: the one shard this job holds (its path), with num_samples 0
    split_shards: int = 0  # bulk pulls: how many shards the split has at the commit
    compression: str = "none"  # --compression: parts of another compression are another job

    def differences(self, other: JobIdentity) -> list[str]:
        """`field: recorded -> asked` for every field (but the commit) where `other` differs."""
        return [
            f"{item.name}: {getattr(self, item.name)!r} -> {getattr(other, item.name)!r}"
            for item in fields(self)
            if item.name != "commit" and getattr(self, item.name) != getattr(other, item.name)
        ]


@dataclass(slots=True)
class PartRecord:
    name: str
    lines: int
    size: int
    crc32: str  # of the part's bytes, 8 hex digits (aioc4.checksum)
    sampled_texts: int  # documents whose text length was measured (a sample: see aioc4.decode)
    sampled_text_chars: int
    first: SourcePosition
    last: SourcePosition
    uploaded: bool = False


@dataclass(slots=True)
class Manifest:
    request: JobIdentity
    parts: list[PartRecord] = field(default_factory=list)
    complete: bool = False
    split_exhausted: bool = False
    first_text_preview: str | None = None

    @property
    def documents(self) -> int:
        return sum(part.lines for part in self.parts)

    def record(self, part: PartRecord) -> None:
        """Add or replace the part with this name, keeping parts in order."""
        self.parts = sorted([p for p in self.parts if p.name != part.name] + [part], key=_order)

    def to_json(self) -> bytes:
        """orjson serialises the dataclasses itself: `asdict`'s deep copy made rewriting the manifest
        after every part cost a run ~0.5 us a document (py-spy), growing with the parts."""
        document = {
            "version": MANIFEST_VERSION,
            **{item.name: getattr(self, item.name) for item in fields(self)},
        }
        return orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"

    @classmethod
    def from_json(cls, data: bytes, *, where: str) -> Manifest:
        try:
            document = orjson.loads(data)
            if not isinstance(document, dict) or document.get("version") != MANIFEST_VERSION:
                raise ValueError(f"not a version-{MANIFEST_VERSION} manifest object")
            request = JobIdentity(**document["request"])
            if not is_valid_config_name(request.config_name):  # it is part of the job's file names
                raise ValueError(f"unexpected config name {request.config_name!r}")
            if request.compression not in PART_EXTENSIONS:
                raise ValueError(f"unexpected compression {request.compression!r}")
            manifest = cls(
                request=request,
                parts=[_part_from_json(part) for part in document["parts"]],
                complete=bool(document["complete"]),
                split_exhausted=bool(document.get("split_exhausted", False)),
                first_text_preview=document.get("first_text_preview"),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{where} is not a valid aioc4 manifest ({exc})") from None
        return manifest


def _part_from_json(raw: dict[str, Any]) -> PartRecord:
    part = PartRecord(
        **{key: value for key, value in raw.items() if key not in ("first", "last")},
        first=SourcePosition(**raw["first"]),
        last=SourcePosition(**raw["last"]),
    )
    if not PART_NAME.match(part.name):  # names become file paths and S3 keys: only ours are accepted
        raise ValueError(f"unexpected part name {part.name!r}")
    if not _CRC32.match(part.crc32) or part.lines <= 0 or part.size <= 0:
        raise ValueError(f"part {part.name} has an invalid record")
    return part


def _order(part: PartRecord) -> int:
    return part_index(part.name)


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where a rerun picks up: the next part's number, documents already in parts, where to read."""

    next_index: int = 1
    documents: int = 0
    start: SourcePosition | None = None


def resume_point(parts: list[PartRecord]) -> ResumePoint:
    """After the longest run of intact parts 1, 2, 3, ... (later intact parts are not re-uploaded,
    but their documents must be read again to produce the missing part before them)."""
    prefix: list[PartRecord] = []
    for expected, part in enumerate(sorted(parts, key=_order), start=1):
        if part_index(part.name) != expected:
            break
        prefix.append(part)
    if not prefix:
        return ResumePoint()
    last = prefix[-1].last
    return ResumePoint(
        len(prefix) + 1, sum(part.lines for part in prefix), SourcePosition(last.shard, last.line + 1)
    )


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temp name, fsync, rename: readers see the old file or the new one, never half."""
    temp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")  # one per writer
    try:
        with open(temp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)  # a full disk must not leave a half-written temp behind
        raise
