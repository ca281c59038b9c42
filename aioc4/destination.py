"""Where finished parts go. The pipeline hands every part to a `Destination` and does not care which.

`LocalDestination` keeps parts in the output folder; `aioc4.uploader.S3Destination` uploads them
and, with cleanup, deletes the local copy once S3 has confirmed it. Both keep the job's manifest
next to the parts, and can tell whether a part recorded in it is still intact.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .errors import DestinationError
from .facts import PartFacts, facts_of_file
from .manifest import PartRecord, write_atomically
from .writer import FinishedPart

__all__ = [
    "Delivery",
    "Destination",
    "LocalDestination",
    "local_part_intact",
    "read_if_exists",
    "save_local_manifest",
]


@dataclass(frozen=True, slots=True)
class Delivery:
    """What became of one part."""

    name: str
    uploaded: bool
    error: str | None = None
    permanent: bool = False  # the error will not go away by trying again (no bucket, no access)


class Destination(Protocol):
    directory: Path

    async def check(self) -> None:
        """Fail early (before any download) if parts could not be delivered."""

    async def abort_stale_uploads(self, stem: str) -> None:
        """Drop the unfinished uploads a killed run of the job named `stem` left behind."""

    async def deliver(self, part: FinishedPart) -> Delivery:
        """Deliver one finished part; never raises for a failure that leaves the part on disk."""

    async def already_delivered(self, part: FinishedPart) -> Delivery:
        """An identical part is already at the destination (recorded and verified): tidy up, send nothing."""

    async def is_intact(self, record: PartRecord) -> bool:
        """Whether the part recorded in the manifest is there, whole and unchanged."""

    async def rename(self, old: str, new: str) -> None:
        """Give a delivered part a new name (used when the split was shorter than asked)."""

    async def remove(self, name: str) -> None:
        """Delete a part of an earlier job (`--overwrite`)."""

    async def existing(self, names: Sequence[str]) -> list[str]:
        """Those of `names` that are already taken at the destination (or in the local folder)."""

    async def save_manifest(self, name: str, data: bytes, *, final: bool) -> None:
        """Store the manifest next to the parts, atomically."""

    async def load_manifest(self, name: str) -> bytes | None:
        """The manifest of an earlier run of this job, if there is one."""

    def location(self, name: str) -> str:
        """Where a delivered part can be found (a path or an s3:// URL), for the summary."""

    async def list_manifests(self) -> list[str]:
        """Names of the manifests at the destination (for `aioc4 verify`)."""

    async def inspect(self, name: str) -> PartFacts | None:
        """Size, CRC-32 and line count of a part as it is at the destination; None if missing."""


class LocalDestination:
    """Parts stay in the output folder."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def check(self) -> None:
        return None

    async def abort_stale_uploads(self, stem: str) -> None:
        return None

    async def deliver(self, part: FinishedPart) -> Delivery:
        return Delivery(name=part.name, uploaded=False)

    async def already_delivered(self, part: FinishedPart) -> Delivery:
        return Delivery(name=part.name, uploaded=False)

    async def is_intact(self, record: PartRecord) -> bool:
        return await local_part_intact(self.directory / record.name, record)

    async def rename(self, old: str, new: str) -> None:
        await asyncio.to_thread(os.replace, self.directory / old, self.directory / new)

    async def remove(self, name: str) -> None:
        await asyncio.to_thread((self.directory / name).unlink, missing_ok=True)

    async def existing(self, names: Sequence[str]) -> list[str]:
        return await asyncio.to_thread(local_names_taken, self.directory, names)

    async def save_manifest(self, name: str, data: bytes, *, final: bool) -> None:
        await save_local_manifest(self.directory / name, data)

    async def load_manifest(self, name: str) -> bytes | None:
        return await asyncio.to_thread(read_if_exists, self.directory / name)

    def location(self, name: str) -> str:
        return str(self.directory / name)

    async def list_manifests(self) -> list[str]:
        return await asyncio.to_thread(
            lambda: sorted(path.name for path in self.directory.glob("*.manifest.json"))
        )

    async def inspect(self, name: str) -> PartFacts | None:
        return await asyncio.to_thread(facts_of_file, self.directory / name)


def local_names_taken(directory: Path, names: Sequence[str]) -> list[str]:
    return [name for name in names if os.path.lexists(directory / name)]


async def local_part_intact(path: Path, record: PartRecord) -> bool:
    """Size and CRC-32 match the record (the whole file is read, in a worker thread)."""
    return await asyncio.to_thread(_file_matches, path, record)


def _file_matches(path: Path, record: PartRecord) -> bool:
    if not path.is_file() or path.stat().st_size != record.size:
        return False
    facts = facts_of_file(path, lines=False)
    return facts is not None and facts.crc32 == record.crc32


async def save_local_manifest(path: Path, data: bytes) -> None:
    try:
        await asyncio.to_thread(write_atomically, path, data)
    except OSError as exc:
        raise DestinationError(f"cannot write the manifest {path}: {exc.strerror or exc}") from None


def read_if_exists(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:  # a folder in its place, no permission
        raise DestinationError(f"cannot read {path}: {exc.strerror or exc}") from None
