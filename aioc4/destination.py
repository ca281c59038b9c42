"""Where a job's parts and manifest go: a `Storage`, with the local folder parts are written in first.

Parts are always written to the local staging folder (`--output-dir`) and then handed to the
storage. When the storage *is* that folder (a local run), handing over is nothing; otherwise (S3)
the part is uploaded, checked, and with cleanup its local copy is deleted once the storage has it.
The manifest is kept in the storage (so a rerun anywhere resumes) and, until a clean finish with
cleanup, in the staging folder as well. Written once, for every storage.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from .errors import DestinationError, UploadError
from .facts import FactsAccumulator, PartFacts
from .manifest import PartRecord, write_atomically
from .storage import Storage
from .writer import FinishedPart

__all__ = ["Delivery", "Destination"]

log = logging.getLogger("aioc4")


@dataclass(frozen=True, slots=True)
class Delivery:
    """What became of one part: stored elsewhere than the staging folder (`uploaded`), or why not."""

    uploaded: bool
    error: UploadError | None = None


class Destination:
    """A storage, and the staging folder where parts are written before they are stored.

    `staging` is None for the commands that only read and write manifests (`verify`, `merge`).
    Use as an async context manager: it opens and closes the storage.
    """

    def __init__(self, storage: Storage, staging: Path | None = None, *, cleanup_local: bool = False) -> None:
        self.storage = storage
        self.staging = staging
        self.in_place = staging is not None and storage.local_folder == staging  # staged = stored
        self.cleanup_local = cleanup_local and not self.in_place

    async def __aenter__(self) -> Self:
        await self.storage.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.storage.__aexit__(exc_type, exc, tb)

    @property
    def directory(self) -> Path:
        """The staging folder (where parts are written, and kept when they cannot be stored)."""
        if self.staging is None:
            raise RuntimeError("this destination has no staging folder")
        return self.staging

    def location(self, name: str) -> str:
        return self.storage.location(name)

    async def check(self) -> None:
        """Fail early (before any download) if parts could not be stored."""
        await self.storage.preflight()

    # -- parts ------------------------------------------------------------------------------------

    async def deliver(self, part: FinishedPart) -> Delivery:
        """Hand a finished part to the storage; a failure leaves it in the staging folder (never raises)."""
        if self.in_place:
            return Delivery(uploaded=False)
        try:
            await self.storage.put_file(part.name, part.path, size=part.size, crc32=part.record.crc32)
        except UploadError as exc:
            exc.kept_at = str(part.path)
            return Delivery(uploaded=False, error=exc)
        await self._tidy(part)
        return Delivery(uploaded=True)

    async def already_delivered(self, part: FinishedPart) -> Delivery:
        """An identical part is already stored (recorded and verified): tidy up, send nothing."""
        if self.in_place:
            return Delivery(uploaded=False)
        await self._tidy(part)
        return Delivery(uploaded=True)

    async def _tidy(self, part: FinishedPart) -> None:
        if self.cleanup_local:
            await asyncio.to_thread(part.path.unlink)

    async def is_intact(self, record: PartRecord) -> bool:
        """Whether the recorded part is stored, whole and unchanged: size, then the CRC-32 the storage
        keeps with the object, or (a plain file) the CRC-32 of its bytes."""
        info = await self.storage.head(record.name)
        if info is None or info.size != record.size:
            return False
        if info.crc32 is not None:
            return info.crc32 == record.crc32
        facts = await self.inspect(record.name, lines=False)
        return facts is not None and facts.readable and facts.crc32 == record.crc32

    async def inspect(self, name: str, *, lines: bool = True) -> PartFacts | None:
        """Size, CRC-32 and line count of a stored part, read once; None if it is missing. Without
        `lines` a compressed part is not decompressed (enough to tell an intact part)."""
        accumulator = FactsAccumulator(name if lines else "")
        try:
            async for chunk in self.storage.read(name):
                accumulator.feed(chunk)
        except FileNotFoundError:
            return None
        except OSError as exc:  # a folder in its place, no permission: a problem of that part, not a crash
            return PartFacts(0, "", 0, problem=f"cannot be read ({exc.strerror or exc})", readable=False)
        return accumulator.facts()

    async def rename(self, old: str, new: str) -> None:
        """Give a part a new name, in the staging folder and in the storage (a short split's parts)."""
        if not self.in_place and self.staging is not None:
            await asyncio.to_thread(_rename_if_there, self.staging / old, self.staging / new)
        await self.storage.rename(old, new)

    async def remove(self, name: str) -> None:
        """Delete a part of an earlier job (`--overwrite`), staged copy included."""
        if not self.in_place and self.staging is not None:
            await asyncio.to_thread((self.staging / name).unlink, missing_ok=True)
        await self.storage.delete(name)

    async def existing(self, names: Sequence[str]) -> list[str]:
        """Those of `names` already taken in the storage or in the staging folder."""
        if not names:
            return []
        common = os.path.commonprefix(list(names))  # noqa: RUF071 - names, not paths
        taken = set(await self.storage.names(common))
        if not self.in_place and self.staging is not None:
            staging = self.staging
            taken.update(await asyncio.to_thread(lambda: [n for n in names if os.path.lexists(staging / n)]))
        return [name for name in names if name in taken]

    async def list_manifests(self) -> list[str]:
        return [name for name in await self.storage.names() if name.endswith(".manifest.json")]

    # -- manifests --------------------------------------------------------------------------------

    async def save_manifest(self, name: str, data: bytes, *, final: bool) -> None:
        """In the storage, and in the staging folder until a clean finish with cleanup.

        With a remote storage, a failed update during the run is only a warning (the local copy is
        current and the next part updates it again); at the end it is an error, and the local copy kept.
        """
        if self.in_place or self.staging is None:
            await self.storage.put_bytes(name, data)
            return
        local = self.staging / name
        drop_local = final and self.cleanup_local
        if not drop_local:
            await save_local_copy(local, data)
        try:
            await self.storage.put_bytes(name, data)
        except DestinationError as exc:
            if not final:
                log.warning("%s; will retry after the next part", exc)
                return
            if drop_local:
                await save_local_copy(local, data)
            raise
        if drop_local:
            await asyncio.to_thread(local.unlink, missing_ok=True)

    async def save_local_copy(self, name: str, data: bytes) -> None:
        """The manifest in the staging folder only (after a stop, before the storage is tried)."""
        if self.staging is not None:
            await save_local_copy(self.staging / name, data)

    async def load_manifest(self, name: str) -> bytes | None:
        """The storage's copy first (any machine can resume a job), the staged one if it has none."""
        data = await self.storage.get(name)
        if data is None and not self.in_place and self.staging is not None:
            data = await asyncio.to_thread(_read_if_exists, self.staging / name)
        return data


async def save_local_copy(path: Path, data: bytes) -> None:
    try:
        await asyncio.to_thread(write_atomically, path, data)
    except OSError as exc:
        raise DestinationError(f"cannot write the manifest {path}: {exc.strerror or exc}") from None


def _rename_if_there(old: Path, new: Path) -> None:
    if old.exists():
        os.replace(old, new)


def _read_if_exists(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:  # a folder in its place, no permission
        raise DestinationError(f"cannot read {path}: {exc.strerror or exc}") from None
