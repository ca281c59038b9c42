"""Writes documents into part files; a part appears under its final name only when complete."""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import aiofiles
from aiofiles.threadpool.binary import AsyncBufferedIOBase

from .errors import DestinationError
from .naming import part_count, part_name, temp_part_name

__all__ = ["FinishedPart", "PartWriter"]


@dataclass(frozen=True, slots=True)
class FinishedPart:
    """A complete part on local disk."""

    name: str
    path: Path
    lines: int
    size: int


class PartWriter:
    """Splits a stream of documents into parts of at most `max_lines` lines.

    A full part is only closed when the next document arrives (or at the end), so the
    last part is always named knowing the real total. Parts closed before the end carry the
    requested total in their name; `aioc4.naming.renames_for_short_split` fixes them when the
    split turns out shorter.
    """

    def __init__(self, directory: Path, split: str, requested: int, max_lines: int | None) -> None:
        self.directory = directory
        self.split = split
        self.requested = requested
        self.max_lines = max_lines
        self.documents = 0
        self.finished: list[FinishedPart] = []
        self._file: AsyncBufferedIOBase | None = None
        self._lines = 0
        self._size = 0

    @property
    def _temp_path(self) -> Path:
        return self.directory / temp_part_name(self.split, len(self.finished) + 1)

    async def write(self, lines: list[bytes]) -> list[FinishedPart]:
        """Append documents (source lines without newline); returns the parts this completed."""
        done = []
        start = 0
        while start < len(lines):
            if self._file is not None and self.max_lines is not None and self._lines >= self.max_lines:
                done.append(await self._finish(self.requested))
            if self._file is None:
                self._file = await self._open(self._temp_path)
            room = len(lines) - start if self.max_lines is None else self.max_lines - self._lines
            chunk = lines[start : start + room]
            data = b"\n".join(chunk) + b"\n"
            await self._write(data)
            self._lines += len(chunk)
            self._size += len(data)
            self.documents += len(chunk)
            start += len(chunk)
        return done

    async def close(self) -> FinishedPart | None:
        """Finish the last part, named after the number of documents actually written."""
        if self._file is None:
            return None
        return await self._finish(self.documents)

    async def abort(self) -> None:
        """Drop the part being written, whatever state it is in; finished parts are untouched."""
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                await file.close()
        _remove(self._temp_path)

    async def _finish(self, total: int) -> FinishedPart:
        """fsync, then rename to the final name. Until the rename, `abort` can still remove the temp file."""
        assert self._file is not None
        temp = self._temp_path
        name = part_name(self.split, total, len(self.finished) + 1, part_count(total, self.max_lines))
        try:
            await self._file.flush()
            await asyncio.to_thread(os.fsync, self._file.fileno())  # durable before it gets its final name
            await self._file.close()
            os.replace(temp, self.directory / name)
        except OSError as exc:
            await self.abort()
            raise DestinationError(f"cannot finish {self.directory / name}: {exc.strerror or exc}") from None
        self._file = None  # no await between the rename and here: a cancelled run never loses a finished part
        part = FinishedPart(name=name, path=self.directory / name, lines=self._lines, size=self._size)
        self.finished.append(part)
        self._lines = 0
        self._size = 0
        return part

    async def _open(self, path: Path) -> AsyncBufferedIOBase:
        """Open in a worker thread; if cancelled meanwhile, wait for the thread and remove what it created."""
        opening = asyncio.ensure_future(aiofiles.open(path, "wb"))
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            with contextlib.suppress(OSError):
                await (await opening).close()
            _remove(path)
            raise
        except OSError as exc:
            raise DestinationError(f"cannot write to {self.directory}: {exc.strerror or exc}") from None

    async def _write(self, data: bytes) -> None:
        assert self._file is not None
        try:
            await self._file.write(data)
        except OSError as exc:
            await self.abort()
            raise DestinationError(f"cannot write to {self.directory}: {exc.strerror or exc}") from None


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
