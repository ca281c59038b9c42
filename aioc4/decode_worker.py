"""A decode process of a count job: shards' gzip bytes in, checked lines out to segment files.

Run as `python -m aioc4.decode_worker` by `aioc4.decode_pool`, one per core it may use. It reads
frames on stdin: `START` (a `ShardTask`: which shard, its segment file, the line to start at), then
the shard's compressed bytes as `CHUNK`s, then `END`. It writes frames on stdout: a `Piece` for every
block of checked lines it appended to the segment (where, how many, their CRC-32 and text samples),
then `Done`, or `Failed` for a shard that is not C4 data. One shard at a time, as many as asked.

Two threads, as in the in-process reader: one reads stdin and inflates (ISA-L releases the GIL), the
other checks each block and appends it to the segment. The process imports only the decoder: no Hub
or S3 client, no credentials. It ends at the end of its input, so a parent that dies takes it along.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import struct
import sys
import threading
from typing import BinaryIO, cast

import msgspec

from .checksum import crc32
from .decode import GzipLineDecoder, ShardLines
from .errors import CorruptShardError, LineTooLongError

__all__ = [
    "CHUNK",
    "DONE",
    "END",
    "FAILED",
    "HEADER",
    "PIECE",
    "START",
    "Done",
    "Failed",
    "Piece",
    "ShardTask",
    "main",
]

HEADER = struct.Struct(">cI")  # a frame: its kind, the length of what follows
START, CHUNK, END = b"S", b"C", b"E"  # parent -> worker
PIECE, DONE, FAILED = b"P", b"D", b"F"  # worker -> parent
_PIPE_BYTES = 1 << 20
_BLOCKS_AHEAD = 4  # inflated blocks waiting to be checked (each ~0.7 MB)
_FEED_BYTES = 256 * 1024
"""Compressed bytes inflated at a time (a chunk is split): each call's buffers and block are half a
chunk's (~0.7 MB), which lowered a process's peak RSS from ~31 to ~25 MB at the same CPU, measured."""


class ShardTask(msgspec.Struct, array_like=True):
    shard: str
    segment: str  # the file to append the checked lines to (made by the parent)
    skip_before: int  # 1-based line the shard is read from (a resumed job)
    exact_documents: int  # parse this many first lines in full (exact text statistics)


class Piece(msgspec.Struct, array_like=True):
    """Lines `first_line`.. (`count` of them) at `offset` of the segment, `length` bytes."""

    first_line: int
    count: int
    offset: int
    length: int
    crc32: int
    input_bytes: int  # compressed bytes of the shard inflated so far
    lines_seen: int  # lines of the shard inflated so far (kept or not): documents per byte
    samples: list[tuple[int, int]]
    first_text: str | None


class Done(msgspec.Struct, array_like=True):
    lines: int  # lines in the shard
    size: int  # bytes in the segment


class Failed(msgspec.Struct, array_like=True):
    kind: str  # "corrupt" (not C4 data), "disk" (the segment could not be written), "internal"
    message: str  # one line: naming the shard and the line, or the OS's reason
    line: int | None = None  # a line over the length limit (a LineTooLongError)


_encode = msgspec.msgpack.Encoder().encode
_decode_task = msgspec.msgpack.Decoder(ShardTask).decode


def main() -> None:
    """Serve shards until stdin ends; anything unexpected is reported as a failure, never a traceback."""
    _widen_pipe(sys.stdin.fileno())
    inbox: queue.Queue[tuple[bytes, object]] = queue.Queue(_BLOCKS_AHEAD)
    reader = threading.Thread(target=_inflate_input, args=(sys.stdin.buffer, inbox), daemon=True)
    reader.start()
    _check_and_store(inbox, sys.stdout.fileno())


def _inflate_input(source: BinaryIO, inbox: queue.Queue[tuple[bytes, object]]) -> None:
    """Reader thread: frames in, inflated blocks of whole lines out, in order. After a shard fails, its
    remaining frames are dropped until the next `START`."""
    decoder: GzipLineDecoder | None = None
    fed = 0
    try:
        while (frame := _read_frame(source)) is not None:
            kind, payload = frame
            if kind == START:
                task = _decode_task(payload)
                decoder, fed = GzipLineDecoder(task.shard), 0
                inbox.put((START, task))
                continue
            if decoder is None:
                continue  # the rest of a shard that failed
            try:
                if kind == CHUNK:
                    view = memoryview(payload)
                    for start in range(0, len(payload), _FEED_BYTES):
                        piece = view[start : start + _FEED_BYTES]
                        fed += len(piece)
                        inbox.put((CHUNK, (decoder.feed(piece), fed)))
                elif kind == END:
                    inbox.put((CHUNK, (decoder.finish(), fed)))
                    inbox.put((END, None))
                    decoder = None
            except CorruptShardError as exc:
                inbox.put((FAILED, exc))
                decoder = None
    except BaseException as exc:  # reported to the parent, which names the shard
        inbox.put((FAILED, exc))
    inbox.put((b"", None))  # the input ended


def _check_and_store(inbox: queue.Queue[tuple[bytes, object]], out: int) -> None:
    """Checker thread: each block checked, appended to the segment, and reported."""
    lines: ShardLines | None = None
    segment: int | None = None
    size = 0
    while True:
        kind, value = inbox.get()
        if not kind:
            return
        try:
            if kind == START:
                assert isinstance(value, ShardTask)
                lines, size = ShardLines(value.shard, value.skip_before, value.exact_documents), 0
                segment = os.open(value.segment, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            elif kind == CHUNK and lines is not None and segment is not None:
                data, fed = cast(tuple[bytes, int], value)
                batches = lines.take(data)
                if not batches:  # lines before the start of a resumed job: only the progress
                    seen = lines.next_line - 1
                    _send(out, PIECE, _encode(Piece(seen + 1, 0, size, 0, 0, fed, seen, [], None)))
                for batch in batches:
                    _write_all(segment, batch.data)
                    piece = Piece(
                        batch.first_line,
                        batch.count,
                        size,
                        len(batch.data),
                        crc32(batch.data, 0),
                        fed,
                        lines.next_line - 1,
                        batch.samples,
                        batch.first_text if not size else None,  # only the shard's first is used
                    )
                    size += len(batch.data)
                    _send(out, PIECE, _encode(piece))
            elif kind == END and lines is not None and segment is not None:
                os.close(segment)
                segment = None
                _send(out, DONE, _encode(Done(lines.next_line - 1, size)))
                lines = None
            elif kind == FAILED and lines is not None:  # (a shard that already failed here: dropped)
                raise value  # type: ignore[misc]
        except LineTooLongError as exc:
            line = (lines.next_line if lines is not None else 1) + exc.lines_before
            _close(segment)
            segment, lines = None, None
            _send(out, FAILED, _encode(Failed("corrupt", str(LineTooLongError(exc.shard, 0, line)), line)))
        except CorruptShardError as exc:
            _close(segment)
            segment, lines = None, None
            _send(out, FAILED, _encode(Failed("corrupt", str(exc))))
        except OSError as exc:  # the segment's disk: full, or gone
            _close(segment)
            segment, lines = None, None
            _send(out, FAILED, _encode(Failed("disk", exc.strerror or str(exc))))
        except BaseException as exc:  # one line to the parent instead of a traceback
            _close(segment)
            segment, lines = None, None
            _send(out, FAILED, _encode(Failed("internal", f"{type(exc).__name__}: {exc}")))
            if not isinstance(exc, Exception):
                return


def _widen_pipe(fd: int) -> None:
    """A 1 MiB pipe instead of 64 KiB: a chunk crosses in one or two reads, not eight (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_BYTES)


def _close(segment: int | None) -> None:
    if segment is not None:
        os.close(segment)


def _read_frame(source: BinaryIO) -> tuple[bytes, bytes] | None:
    header = source.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    kind, length = HEADER.unpack(header)
    payload = source.read(length) if length else b""
    if len(payload) < length:
        return None
    return kind, payload


def _send(out: int, kind: bytes, payload: bytes) -> None:
    _write_all(out, HEADER.pack(kind, len(payload)) + payload)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


if __name__ == "__main__":
    main()
