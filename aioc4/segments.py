"""Segments: a decode process's checked lines of one shard, in a temp file that parts are stitched from.

A count job decoding on several cores (`aioc4.decode_pool`) has each shard inflated and checked by a
worker process, which appends the shard's lines to a segment file and reports each block it wrote
(lines, byte range, CRC-32). The part writer then copies byte ranges of segments into parts with
`os.copy_file_range`: the document bytes go from file to file inside the kernel, never through
Python, and a part's CRC-32 is combined from the blocks' CRCs. Only a block cut by a part boundary is
read back, to find the boundary and the CRCs of its two halves.

A segment is unlinked as soon as its worker has opened it, and read through the file descriptor
its reader keeps: a run killed at any point leaves nothing behind but, at most, a segment whose
worker had not opened it yet (a hidden `.tmp` name that the next run sweeps).

The one exception is the job's first segment, which may become its first part (`adopt`): where that
part holds every document left (one part, or the last one), it starts with the segment's first byte
and takes the whole segment's lines in order, so the part writer renames the segment to the part's
temp name instead of copying it, appends any later segments to it, and cuts it to the part's length
once the decode processes are stopped. That is the copy a count job inside one shard never makes.
The segment keeps its name until the part writer adopts it or says no (a compressed part, one of
several): a run killed meanwhile leaves that hidden name, which the next run sweeps like the others.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .checksum import crc32, crc32_combine
from .decode import Batch, line_offset

__all__ = ["AnyBatch", "Block", "Segment", "SegmentBatch", "copy_range", "segment_glob", "segment_name"]

_COPY_FALLBACK_ERRORS = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}
_FALLBACK_PIECE = 1 << 20


def segment_name(stem: str, position: int) -> str:
    """A job's segment of its `position`-th shard: hidden, and swept by the job's next run."""
    return f".{stem}.segment{position:05d}.tmp"


def segment_glob(stem: str) -> str:
    return f".{stem}.segment*.tmp"


class Segment:
    """One shard's checked lines, read by file descriptor; owned by the decode pool that made it.

    It closes itself once its decode process has finished it and the part writer has copied every
    byte of it (a batch cut at a part boundary is copied in two); the pool closes whatever is left
    when it ends. `on_close` tells the pool that a segment's disk space is free again.
    """

    def __init__(
        self, path: Path, on_close: Callable[[], None] | None = None, *, adoptable: bool = False
    ) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self.linked = True
        self.adoptable = adoptable  # it may become the first part (`adopt`) until the part writer decides
        self.adopted = False
        self.closed = False
        self.copied = 0  # bytes the part writer has copied out of it
        self.final_size: int | None = None  # known once its decode process has finished the shard
        self._on_close = on_close

    def was_copied(self, length: int) -> None:
        """The part writer copied `length` more bytes; once all of a finished segment are, it goes."""
        self.copied += length
        self._close_if_used_up()

    def finished(self, size: int) -> None:
        """Its decode process wrote its last bytes: `size` in all."""
        self.final_size = size
        self._close_if_used_up()

    def _close_if_used_up(self) -> None:
        if self.final_size is not None and self.copied >= self.final_size:
            self.close()

    def release_name(self) -> None:
        """Its decode process has it open: the name goes, unless the part writer may still adopt it."""
        if not self.adoptable:
            self.unlink()

    def unlink(self) -> None:
        """Its name goes (the bytes stay readable through `fd` until it is closed); it is not adopted."""
        self.adoptable = False
        if self.linked:
            self.linked = False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def adopt(self, part: Path) -> bool:
        """Become the part file at `part` (a rename: its decode process goes on appending to it); False
        when it cannot (not adoptable, or the rename failed), and then its name is gone."""
        if self.adoptable and self.linked and not self.closed:
            try:
                os.replace(self.path, part)
            except OSError:
                pass
            else:
                self.adoptable, self.linked, self.adopted = False, False, True
                return True
        self.unlink()
        return False

    def close(self) -> None:
        if self.closed:
            return
        self.unlink()
        self.closed = True
        os.close(self.fd)
        if self._on_close is not None:
            self._on_close()

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        while len(data) < length:  # a regular file returns short reads only at its end
            more = os.pread(self.fd, length - len(data), offset + len(data))
            if not more:
                raise OSError(errno.EIO, f"{self.path.name} is shorter than its decode process reported")
            data += more
        return data


@dataclass(frozen=True, slots=True)
class Block:
    """Lines a decode process checked and wrote in one go: how many, their bytes and CRC-32."""

    count: int
    length: int
    crc32: int


@dataclass(slots=True)
class SegmentBatch:
    """Consecutive documents of one shard, as `aioc4.decode.Batch`, whose bytes are a range of a segment:
    the `blocks` its decode process reported, one after the other from `offset`."""

    shard: str
    first_line: int
    segment: Segment
    offset: int
    blocks: list[Block]
    samples: list[tuple[int, int]] = field(default_factory=list)
    first_text: str | None = None

    def __len__(self) -> int:
        return self.count

    @property
    def count(self) -> int:
        return sum(block.count for block in self.blocks)

    @property
    def length(self) -> int:
        return sum(block.length for block in self.blocks)

    @property
    def nbytes(self) -> int:
        return self.length

    @property
    def crc32(self) -> int:
        value = 0
        for block in self.blocks:
            value = crc32_combine(value, block.crc32, block.length)
        return value

    @property
    def data(self) -> bytes:
        """The bytes themselves (read back: for compressed parts, and for tests)."""
        return self.segment.read(self.offset, self.length)

    def slice(self, start: int, stop: int) -> SegmentBatch:
        """Documents `start` to `stop` (0-based, end excluded); only a block cut in two is read back."""
        stop = min(stop, self.count)
        if start == 0 and stop == self.count:
            return self
        return self._split(start)[1]._split(stop - start)[0]

    def extend(self, other: SegmentBatch) -> None:
        """Append the next batch of the same segment (it starts where this one ends)."""
        length = self.length  # a sum over the blocks: once, not once per sample
        assert other.segment is self.segment
        assert other.offset == self.offset + length
        assert other.first_line == self.first_line + self.count
        self.samples.extend((offset + length, chars) for offset, chars in other.samples)
        self.blocks.extend(other.blocks)
        if self.first_text is None:
            self.first_text = other.first_text

    def _split(self, line: int) -> tuple[SegmentBatch, SegmentBatch]:
        """The documents before line `line` (0-based) and from it on."""
        before: list[Block] = []
        offset = lines = 0
        after = list(self.blocks)
        while after and lines + after[0].count <= line:
            block = after.pop(0)
            before.append(block)
            offset, lines = offset + block.length, lines + block.count
        if after and lines < line:  # the cut falls inside this block
            block = after.pop(0)
            data = self.segment.read(self.offset + offset, block.length)
            at = line_offset(data, block.count, line - lines)
            before.append(Block(line - lines, at, crc32(data[:at], 0)))
            after.insert(0, Block(block.count - (line - lines), block.length - at, crc32(data[at:], 0)))
            offset += at
        head = SegmentBatch(
            self.shard,
            self.first_line,
            self.segment,
            self.offset,
            before,
            [(where, chars) for where, chars in self.samples if where < offset],
            self.first_text,
        )
        tail = SegmentBatch(
            self.shard,
            self.first_line + line,
            self.segment,
            self.offset + offset,
            after,
            [(where - offset, chars) for where, chars in self.samples if where >= offset],
            self.first_text if line == 0 else None,
        )
        return head, tail


def copy_range(source: int, target: int, offset: int, length: int) -> None:
    """Append `length` bytes of `source` from `offset` to `target` (at its position), in the kernel
    where the filesystem allows (`os.copy_file_range`), else through a small buffer. Blocking."""
    copy = getattr(os, "copy_file_range", None)
    while length > 0 and copy is not None:
        try:
            copied = copy(source, target, length, offset)
        except OSError as exc:
            if exc.errno not in _COPY_FALLBACK_ERRORS:
                raise
            break
        if copied == 0:
            raise OSError(errno.EIO, "the segment ended before the range to copy")
        offset, length = offset + copied, length - copied
    while length > 0:
        data = os.pread(source, min(length, _FALLBACK_PIECE), offset)
        if not data:
            raise OSError(errno.EIO, "the segment ended before the range to copy")
        view = memoryview(data)
        while view:
            view = view[os.write(target, view) :]
        offset, length = offset + len(data), length - len(data)


AnyBatch = Batch | SegmentBatch
"""What the part writer takes: documents in memory (the one-process reader) or in a segment."""
