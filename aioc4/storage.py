"""The storage seam: where parts and manifests end up, as a few byte-level verbs.

    Storage (protocol)          put a file, put bytes, head, get, read, names, rename, delete, preflight
    ├── LocalStorage            a folder on this machine (here)
    └── S3Storage               s3://bucket/prefix through aiobotocore (aioc4.s3_storage)

`storage_for(target, ...)` is the one factory: the run, `--dry-run`, `aioc4 verify` and `aioc4 merge`
all get their storage from it, and nothing above this module asks which kind it has. What a job
does with a storage (local staging of parts, delivery, cleanup, manifests) is written once on top,
in `aioc4.destination`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

import aiofiles

from .config import DEFAULT_UPLOAD_CONNECTIONS, S3Target
from .errors import DestinationError
from .manifest import write_atomically
from .rate import RateLimit

__all__ = ["READ_CHUNK", "LocalStorage", "ObjectInfo", "Storage", "storage_for"]

READ_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a storage knows about a stored object without reading it."""

    size: int
    crc32: str | None = None  # the part's CRC-32 (hex) when the store keeps it with the object (S3 metadata)


class Storage(Protocol):
    """Byte-level verbs over one folder or prefix; names are plain file names inside it.

    Use as an async context manager (a client may need opening). Missing objects are `None` (head,
    get) or ignored (delete, rename of a missing source); every other failure is a DestinationError.
    """

    url: str  # the folder or s3:// prefix, as messages show it
    local_folder: Path | None  # the folder objects are files in, if they are (then staging there is storing)

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def location(self, name: str) -> str:
        """Where an object is, for users: a path or an s3:// URL."""

    async def preflight(self) -> None:
        """Fail early (before any download) if objects could not be stored here; changes nothing."""

    async def put_file(self, name: str, path: Path, *, size: int, crc32: str) -> None:
        """Store a finished local file (size and CRC-32 known) under `name`; an UploadError says why not."""

    async def put_bytes(self, name: str, data: bytes) -> None:
        """Store a small object (a manifest) atomically."""

    async def head(self, name: str) -> ObjectInfo | None: ...

    async def get(self, name: str) -> bytes | None:
        """A small object's bytes (a manifest)."""

    def read(self, name: str) -> AsyncIterator[bytes]:
        """An object's bytes in chunks (for checks of whole parts); FileNotFoundError if it is missing."""

    async def names(self, prefix: str = "") -> list[str]:
        """Names of the objects directly in this folder or prefix that start with `prefix`, sorted."""

    async def rename(self, old: str, new: str) -> None: ...

    async def delete(self, name: str) -> None: ...

    async def discard_unfinished(self, stem: str) -> None:
        """Drop unfinished writes a killed run of the job named `stem` left (S3: multipart uploads)."""


class LocalStorage:
    """Objects are files in one folder."""

    def __init__(self, folder: Path) -> None:
        self.local_folder: Path | None = folder
        self.folder = folder
        self.url = str(folder)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def location(self, name: str) -> str:
        return str(self.folder / name)

    async def preflight(self) -> None:
        return None

    async def put_file(self, name: str, path: Path, *, size: int, crc32: str) -> None:
        target = self.folder / name
        if path != target:
            await asyncio.to_thread(os.replace, path, target)

    async def put_bytes(self, name: str, data: bytes) -> None:
        try:
            await asyncio.to_thread(write_atomically, self.folder / name, data)
        except OSError as exc:
            raise DestinationError(f"cannot write {self.location(name)}: {exc.strerror or exc}") from None

    async def head(self, name: str) -> ObjectInfo | None:
        try:
            stat = await asyncio.to_thread(os.stat, self.folder / name)
        except FileNotFoundError:
            return None
        return ObjectInfo(stat.st_size)

    async def get(self, name: str) -> bytes | None:
        try:
            return await asyncio.to_thread((self.folder / name).read_bytes)
        except FileNotFoundError:
            return None
        except OSError as exc:  # a folder in its place, no permission
            raise DestinationError(f"cannot read {self.location(name)}: {exc.strerror or exc}") from None

    async def read(self, name: str) -> AsyncIterator[bytes]:
        async with aiofiles.open(self.folder / name, "rb") as file:
            while chunk := await file.read(READ_CHUNK):
                yield chunk

    async def names(self, prefix: str = "") -> list[str]:
        def scan() -> list[str]:
            try:
                return sorted(
                    entry.name for entry in os.scandir(self.folder) if entry.name.startswith(prefix)
                )
            except FileNotFoundError:
                return []

        return await asyncio.to_thread(scan)

    async def rename(self, old: str, new: str) -> None:
        try:
            await asyncio.to_thread(os.replace, self.folder / old, self.folder / new)
        except FileNotFoundError:
            return

    async def delete(self, name: str) -> None:
        await asyncio.to_thread((self.folder / name).unlink, missing_ok=True)

    async def discard_unfinished(self, stem: str) -> None:
        return None  # a part is written under a temp name and renamed: the writer sweeps leftovers


def storage_for(
    target: S3Target | Path,
    *,
    endpoint_url: str | None = None,
    checksum: str = "crc32",
    timeout_s: float = 60.0,
    connections: int | None = None,
    upload_rate: RateLimit | None = None,
) -> Storage:
    """The storage at a folder or an S3 prefix (not yet opened: use `async with`). For S3, `connections`
    bounds the upload requests in flight at once (default `DEFAULT_UPLOAD_CONNECTIONS`, not the number
    of parts uploaded at once) and `upload_rate` caps their bytes per second in aggregate."""
    if isinstance(target, Path):
        return LocalStorage(target)
    from .s3_storage import S3Storage  # aiobotocore only when S3 is used

    return S3Storage(
        target,
        endpoint_url=endpoint_url,
        checksum=checksum,
        timeout_s=timeout_s,
        connections=DEFAULT_UPLOAD_CONNECTIONS if connections is None else connections,
        rate=upload_rate,
    )
