"""Writes documents into part files; a part appears under its final name only when complete.

A part is written as the source bytes are (`_PlainFile`), or through one compressor per part
(`_CompressedFile`, `--compression gzip|zstd`), so that each part is a complete .gz / .zst file.
Either way the part's size and CRC-32 are those of the stored bytes, computed in the same pass.
A count job's last part (its only one, often) that starts with the first segment of its decode
processes is that segment, renamed (`_AdoptedFile`, see aioc4.segments): its bytes are not copied.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import aiofiles
from aiofiles.threadpool.binary import AsyncBufferedIOBase

from .checksum import crc32, crc32_combine, crc32_hex
from .compression import Compressor, new_compressor
from .decode import SourcePosition
from .errors import DestinationError
from .manifest import PartRecord
from .naming import PartNaming
from .segments import AnyBatch, Segment, SegmentBatch, copy_range, segment_glob

__all__ = ["COMPRESS_BLOCK", "FinishedPart", "PartWriter"]

log = logging.getLogger("aioc4")

COMPRESS_BLOCK = 1 << 20
_FINISHING_AHEAD = 4
"""Durable parts whose fsync runs while the next parts are written. fsync waits for the disk (~30-60 ms
for a 25 MB part here): done in line it stalled the writer once per part, and parts stitched from
segments come in bursts."""


@dataclass(frozen=True, slots=True)
class FinishedPart:
    """A complete part on local disk, with what the manifest records of it."""

    path: Path
    record: PartRecord

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def size(self) -> int:
        return self.record.size


class PartWriter:
    """Splits a stream of documents into parts of at most `max_lines` lines.

    A full part is only closed when the next document arrives (or at the end), so the
    last part is always named knowing the real total. Parts closed before the end carry the
    requested total in their name; `aioc4.naming.renames_for_short_split` fixes them when the
    split turns out shorter. A resumed job starts at part `first_index` with `documents` already
    written by earlier runs.
    """

    def __init__(
        self,
        directory: Path,
        naming: PartNaming,
        max_lines: int | None,
        *,
        requested: int = 0,
        first_index: int = 1,
        documents: int = 0,
        durable: bool = True,
    ) -> None:
        """`naming` also says how parts are compressed; `requested` is the count a count job's parts
        are named after until the end is known. `durable`: fsync each part before it gets its final
        name (where the part is the output; a staging copy for S3, whose object is the durable copy
        and which is deleted once uploaded, is not worth the disk writes)."""
        self.directory = directory
        self.naming = naming
        self.requested = requested
        self.max_lines = max_lines
        self.documents = documents
        self.durable = durable
        self.bytes_written = 0  # document bytes (before compression) by this run, for progress rates
        self.finished_names: list[str] = []  # parts this run finished, in order
        self.index = first_index
        self._file: _PartFile | None = None
        self._lines = 0
        self._sampled = 0
        self._sampled_chars = 0
        self._first: SourcePosition | None = None
        self._last: SourcePosition | None = None
        self._finishing: deque[_Finishing] = deque()  # full parts being made durable, in order
        self._ahead = _FINISHING_AHEAD if durable else 0

    @property
    def _temp_path(self) -> Path:
        return self.directory / self.naming.temp(self.index)

    def sweep(self) -> int:
        """Remove temp files a killed run of this job left behind (blocking; call before writing)."""
        stale = [*self.directory.glob(self.naming.temp_glob())]
        stale += self.directory.glob(f".{self.naming.manifest()}.*tmp")
        stale += self.directory.glob(segment_glob(self.naming.stem))
        for path in stale:
            _remove(path)
        return len(stale)

    async def write(self, batch: AnyBatch) -> list[FinishedPart]:
        """Append a batch of documents; returns the parts this completed."""
        return [part async for part in self.parts_of(batch)]

    async def parts_of(self, batch: AnyBatch) -> AsyncGenerator[FinishedPart, None]:
        """Append a batch of documents, yielding each part, in order, once it is complete (fsynced when
        durable, and under its final name). A durable part's fsync runs in the background while the
        next part is written, up to `_FINISHING_AHEAD` of them: fsync waits for the disk. A part is
        yielded only once the caller has taken the one before (a handover that waits must not pile
        finished parts up on disk meanwhile)."""
        start = 0
        while start < len(batch):
            if self._file is not None and self.max_lines is not None and self._lines >= self.max_lines:
                self._finish_in_background(self.requested)
            while self._finishing and (len(self._finishing) > self._ahead or self._finishing[0].done):
                yield await self._next_finished()
            room = len(batch) - start if self.max_lines is None else self.max_lines - self._lines
            chunk = batch.slice(start, start + room)
            if self._file is None:
                self._file = await self._open(self._temp_path, chunk)
            await self._write(chunk)
            self._account(chunk)
            start += len(chunk)

    def _account(self, chunk: AnyBatch) -> None:
        if self._first is None:
            self._first = SourcePosition(chunk.shard, chunk.first_line)
        self._last = SourcePosition(chunk.shard, chunk.first_line + len(chunk) - 1)
        self._lines += len(chunk)
        self._sampled += len(chunk.samples)
        self._sampled_chars += sum(chars for _, chars in chunk.samples)
        self.documents += len(chunk)
        self.bytes_written += chunk.nbytes

    async def close(self, total: int | None = None) -> list[FinishedPart]:
        """Finish the last part, named after the number of documents actually written (or `total`);
        returns it after every full part not yielded yet, in order."""
        if self._file is not None:
            self._finish_in_background(self.documents if total is None else total)
        return await self.finished()

    async def finished(self) -> list[FinishedPart]:
        """The full parts still being made durable, once they are (when reading stops early)."""
        return [await self._next_finished() for _ in range(len(self._finishing))]

    async def abort(self) -> None:
        """Drop the part being written, whatever state it is in; full parts are finished all the same
        (their fsync and rename are waited for, as when they were finished in line), and parts yielded
        are untouched."""
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                await file.close()
        _remove(self._temp_path)
        finishing, self._finishing = list(self._finishing), deque()
        outcomes = await asyncio.shield(
            asyncio.gather(*(part.task for part in finishing), return_exceptions=True)
        )
        for part, outcome in zip(finishing, outcomes, strict=True):
            if outcome is None:  # on disk under its final name: finished by this run, never handed over
                self.finished_names.append(part.record.name)

    def _finish_in_background(self, total: int) -> None:
        """The part being written is full: fsync and rename it in a task of its own."""
        assert self._file is not None
        assert self._first is not None
        assert self._last is not None
        file, self._file = self._file, None
        name = self.naming.final(self.index, total)
        record = PartRecord(
            name=name,
            lines=self._lines,
            size=0,  # known once the file is finished (a compressed part's end is written then)
            crc32="",
            sampled_texts=self._sampled,
            sampled_text_chars=self._sampled_chars,
            first=self._first,
            last=self._last,
        )
        task = asyncio.create_task(_make_durable(file, self._temp_path, self.directory / name))
        self._finishing.append(_Finishing(task, file, record))
        self.index += 1
        self._lines = self._sampled = self._sampled_chars = 0
        self._first = self._last = None

    async def _next_finished(self) -> FinishedPart:
        """The oldest full part, once it is finished under its final name."""
        finishing = self._finishing[0]
        try:
            await asyncio.shield(finishing.task)  # a cancelled caller leaves it to `abort`
        except OSError as exc:
            await self.abort()
            where = self.directory / finishing.record.name
            raise DestinationError(f"cannot finish {where}: {exc.strerror or exc}") from None
        self._finishing.popleft()
        record = finishing.record
        record.size, record.crc32 = finishing.file.size, crc32_hex(finishing.file.crc32)
        self.finished_names.append(record.name)
        return FinishedPart(path=self.directory / record.name, record=record)

    async def _open(self, path: Path, first: AnyBatch) -> _PartFile:
        """Open in a worker thread; if cancelled meanwhile, wait for the thread and remove what it created.
        The part that will hold every document left and starts with the first segment is that segment."""
        compressor = new_compressor(self.naming.compression)
        if (
            compressor is None
            and isinstance(first, SegmentBatch)
            and first.offset == 0
            and self._takes_the_rest()
            and first.segment.adopt(path)
        ):
            log.debug("%s is the first segment itself (not copied)", path.name)
            opening = _open_adopted(path, first.segment, self.durable)
        else:
            opening = _open_part(path, compressor, self.durable)
        started = asyncio.ensure_future(opening)
        try:
            return await asyncio.shield(started)
        except asyncio.CancelledError:
            with contextlib.suppress(OSError):
                await (await started).close()
            _remove(path)
            raise
        except OSError as exc:
            raise DestinationError(f"cannot write to {self.directory}: {exc.strerror or exc}") from None

    def _takes_the_rest(self) -> bool:
        """The part being opened holds every document still wanted (a count job's last part)."""
        left = self.requested - self.documents
        return self.requested > 0 and left > 0 and (self.max_lines is None or left <= self.max_lines)

    async def _write(self, chunk: AnyBatch) -> None:
        """The chunk's bytes into the part; a segment's range is copied file to file (aioc4.segments)."""
        assert self._file is not None
        try:
            if isinstance(chunk, SegmentBatch):
                if chunk.segment.adoptable:
                    chunk.segment.unlink()  # not this part's start: it is copied, and its name can go
                await self._file.write_range(chunk)
                chunk.segment.was_copied(chunk.length)  # all of it copied: its disk space is free
            else:
                await self._file.write(chunk.data)
        except OSError as exc:
            await self.abort()
            raise DestinationError(f"cannot write to {self.directory}: {exc.strerror or exc}") from None


@dataclass(slots=True)
class _Finishing:
    """A full part being finished (fsynced when durable, renamed), and what the manifest will record."""

    task: asyncio.Task[None]
    file: _PartFile
    record: PartRecord

    @property
    def done(self) -> bool:
        return self.task.done()


async def _make_durable(file: _PartFile, temp: Path, final: Path) -> None:
    """Finish the file (fsync, close), then rename it: durable before it gets its final name. Cancelled
    before the rename, it waits for the file's threads and removes the temp file."""
    finishing = asyncio.ensure_future(file.finish())
    try:
        await asyncio.shield(finishing)
        os.replace(temp, final)
    except BaseException:
        with contextlib.suppress(BaseException):
            await finishing
        _remove(temp)
        raise


class _PartFile(Protocol):
    size: int  # stored bytes so far
    crc32: int  # of the stored bytes so far

    async def write(self, data: bytes) -> None: ...

    async def write_range(self, batch: SegmentBatch) -> None: ...

    async def finish(self) -> None:
        """Everything written and fsynced, the file closed."""

    async def close(self) -> None: ...


async def _open_part(path: Path, compressor: Compressor | None, durable: bool) -> _PartFile:
    if compressor is None:
        return _PlainFile(await aiofiles.open(path, "wb"), durable)
    return _CompressedFile(await asyncio.to_thread(open, path, "wb"), compressor, durable)


async def _open_adopted(path: Path, segment: Segment, durable: bool) -> _PartFile:
    fd = await asyncio.to_thread(os.open, path, os.O_WRONLY | os.O_CLOEXEC)
    return _AdoptedFile(fd, segment, durable)


class _AdoptedFile:
    """A part that is the job's first segment renamed (aioc4.segments): that segment's ranges are in
    place already; later segments' ranges are copied after them; `finish` cuts the file to the part's
    length (its decode process wrote on past the last line wanted, and is stopped by then)."""

    def __init__(self, fd: int, segment: Segment, durable: bool) -> None:
        self._fd: int | None = fd
        self._segment = segment
        self._durable = durable
        self.size = 0
        self.crc32 = 0

    async def write(self, data: bytes) -> None:
        await asyncio.to_thread(_write_at, self._require_fd(), data, self.size)
        self.crc32 = crc32(data, self.crc32)
        self.size += len(data)

    async def write_range(self, batch: SegmentBatch) -> None:
        fd = self._require_fd()
        if batch.segment is not self._segment:
            await asyncio.to_thread(_copy_at, batch.segment.fd, fd, batch.offset, batch.length, self.size)
        elif batch.offset != self.size:  # the pool hands a segment's ranges on in order, from its start
            raise OSError(errno.EIO, f"range at {batch.offset} of the first segment, expected {self.size}")
        self.crc32 = crc32_combine(self.crc32, batch.crc32, batch.length)
        self.size += batch.length

    async def finish(self) -> None:
        await asyncio.to_thread(self._finish)

    async def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _finish(self) -> None:
        fd = self._require_fd()
        os.ftruncate(fd, self.size)
        if self._durable:
            os.fsync(fd)
        self._fd = None
        os.close(fd)

    def _require_fd(self) -> int:
        if self._fd is None:
            raise OSError(errno.EBADF, "the part is closed")
        return self._fd


def _write_at(fd: int, data: bytes, position: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, position)
        view, position = view[written:], position + written


def _copy_at(source: int, target: int, offset: int, length: int, position: int) -> None:
    os.lseek(target, position, os.SEEK_SET)
    copy_range(source, target, offset, length)


class _PlainFile:
    """The source bytes as they are: one thread hop per batch for the write, the CRC on the loop."""

    def __init__(self, file: AsyncBufferedIOBase, durable: bool) -> None:
        self._file = file
        self._durable = durable
        self.size = 0
        self.crc32 = 0

    async def write(self, data: bytes) -> None:
        await self._file.write(data)
        self.crc32 = crc32(data, self.crc32)  # ~0.1 ms per MB block: no thread needed
        self.size += len(data)

    async def write_range(self, batch: SegmentBatch) -> None:
        """Copied in the kernel; the CRC combined from the one the decode process computed."""
        await self._file.flush()  # bytes written through the buffer go first
        await asyncio.to_thread(copy_range, batch.segment.fd, self._file.fileno(), batch.offset, batch.length)
        self.crc32 = crc32_combine(self.crc32, batch.crc32, batch.length)
        self.size += batch.length

    async def finish(self) -> None:
        await self._file.flush()
        if self._durable:
            await asyncio.to_thread(os.fsync, self._file.fileno())
        await self._file.close()

    async def close(self) -> None:
        await self._file.close()


class _CompressedFile:
    """One compressor per part. Compressing, the CRC and the write of a batch are one worker-thread
    call (each releases the GIL), so the loop thread never compresses.

    The compressor is always fed `COMPRESS_BLOCK` bytes at a time, whatever the batches were: how
    the source's bytes arrived (network timing) must not change the compressed bytes, so that a part
    made again after a resume is byte-identical to the first one.
    """

    def __init__(self, file: BinaryIO, compressor: Compressor, durable: bool) -> None:
        self._file = file
        self._durable = durable
        self._compressor = compressor
        self._waiting = bytearray()  # less than one block, not yet compressed
        self.size = 0
        self.crc32 = 0

    async def write(self, data: bytes) -> None:
        await asyncio.to_thread(self._compress_and_store, data)

    async def write_range(self, batch: SegmentBatch) -> None:
        await asyncio.to_thread(lambda: self._compress_and_store(batch.data))

    async def finish(self) -> None:
        await asyncio.to_thread(self._finish)

    async def close(self) -> None:
        await asyncio.to_thread(self._file.close)

    def _compress_and_store(self, data: bytes) -> None:
        self._waiting += data
        whole = len(self._waiting) - len(self._waiting) % COMPRESS_BLOCK
        view = memoryview(self._waiting)
        for start in range(0, whole, COMPRESS_BLOCK):
            self._store(self._compressor.compress(view[start : start + COMPRESS_BLOCK]))
        view.release()
        del self._waiting[:whole]

    def _finish(self) -> None:
        self._store(self._compressor.compress(bytes(self._waiting)))
        self._waiting.clear()
        self._store(self._compressor.flush())  # ends the gzip member / zstd frame: a standalone file
        self._file.flush()
        if self._durable:
            os.fsync(self._file.fileno())
        self._file.close()

    def _store(self, packed: bytes) -> None:
        if packed:
            self._file.write(packed)
            self.crc32 = crc32(packed, self.crc32)
            self.size += len(packed)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
