"""A decode process of a count job: shards' gzip bytes in, checked lines out to segment files.

Run as `python -m aioc4.decode_worker` by `aioc4.decode_pool`, one per core it may use. It reads
frames on stdin: `START` (a `ShardTask`: which shard, its segment file, the line to start at), then
the shard's compressed bytes as `CHUNK`s, then `END`. Or, after the first `CHUNK`s, `FETCH` (a
`Fetch`: the shard's signed storage URL and the bytes to download from it here, aioc4.range_fetch)
and `GRANT`s (how far the documents still wanted probably reach); should that download stop, this
process says `NEED` (from which byte) and the parent relays the rest as `CHUNK`s and `END`.
It writes frames on stdout: a `Piece` for every block of checked lines it appended to the segment
(where, how many, their CRC-32 and text samples), then `Done`, or `Failed` for a shard that is not
C4 data. One shard at a time, as many as asked.

Two threads: one reads the parent's frames; the other inflates each shard's bytes in order, a
piece at a time, and checks and appends each block of lines at once, while it is still in the core's
cache (with a thread for each, handing blocks over a queue, a process spent ~17% more CPU and was
no faster: see `_decode_feeds`). The process imports
only the decoder and an HTTP/1.1 parser: no Hub or S3 client, no credentials (the signed URL is a
capability for one file, which the Hub gives anyone who may read it). It ends at the end of its
input, so a parent that dies takes it along.
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
from .range_fetch import FetchStopped, RangeFetcher
from .readahead import ReadAhead

__all__ = [
    "CHUNK",
    "DONE",
    "END",
    "FAILED",
    "FETCH",
    "GRANT",
    "HEADER",
    "NEED",
    "PIECE",
    "START",
    "Done",
    "Failed",
    "Fetch",
    "Need",
    "Piece",
    "ShardTask",
    "main",
]

HEADER = struct.Struct(">cI")  # a frame: its kind, the length of what follows
START, CHUNK, END, FETCH, GRANT = b"S", b"C", b"E", b"R", b"G"  # parent -> worker
PIECE, DONE, FAILED, NEED = b"P", b"D", b"F", b"N"  # worker -> parent
_PIPE_BYTES = 1 << 20
_RELAYED_AHEAD = 4  # relayed chunks waiting to be inflated (each at most 512 KiB)
_FEED_BYTES = 128 * 1024
"""Compressed bytes inflated at a time (a chunk is split): each call's buffers and block (~350 kB)
are what a process holds beside its ranges. 512 -> 256 KiB took a process's peak RSS from ~31 to
~25 MB, 256 -> 128 KiB its heap from 19-20 to 15-16 MB in the S3 runs; and inflating and checking on
one thread, 128 KiB is the cheapest step (one process fed 2 bench shards, 7 interleaved rounds:
0.761 s of CPU, against 0.777 at 64 KiB and 0.788 at 256 KiB)."""


class ShardTask(msgspec.Struct, array_like=True):
    shard: str
    segment: str  # the file to append the checked lines to (made by the parent)
    skip_before: int  # 1-based line the shard is read from (a resumed job)
    exact_documents: int  # parse this many first lines in full (exact text statistics)


class Fetch(msgspec.Struct, array_like=True):
    """Download bytes `start` to `end` of the shard from its signed storage `url` here, up to `granted`."""

    url: str
    start: int
    end: int
    granted: int
    timeout_s: float
    connections: int
    user_agent: str


class Need(msgspec.Struct, array_like=True):
    """The download here has no bytes of the shard from byte `at` (for `reason`) up to `until`: relay
    those, and it goes on after them; or, with `until` None, it stopped: relay the rest."""

    at: int
    reason: str
    until: int | None = None


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
_decode_fetch = msgspec.msgpack.Decoder(Fetch).decode
_decode_grant = msgspec.msgpack.Decoder(int).decode


def main() -> None:
    """Serve shards until stdin ends; anything unexpected is reported as a failure, never a traceback."""
    _widen_pipe(sys.stdin.fileno())
    out = _Output(sys.stdout.fileno())
    feeds: queue.Queue[_ShardFeed | None] = queue.Queue()
    control = threading.Thread(target=_read_control, args=(sys.stdin.buffer, feeds), daemon=True)
    control.start()
    _decode_feeds(feeds, out)


class _ShardFeed:
    """One shard's compressed bytes as they reach this process: relayed by the parent (`CHUNK`s, ended by
    `END`), and, once the parent sends `FETCH`, downloaded here from where its relay stops."""

    def __init__(self, task: ShardTask) -> None:
        self.task = task
        self.relayed: queue.Queue[object] = queue.Queue(_RELAYED_AHEAD)
        self.fetcher: RangeFetcher | None = None
        self.abandoned = False  # failed, or replaced by the next shard: its input is dropped
        self.relay_ended = False  # its END came: it ends by itself

    def put(self, item: object) -> None:
        if not self.abandoned:
            self.relayed.put(item)

    def fetch(self, order: Fetch, read_ahead: ReadAhead) -> None:
        """Start downloading the shard here. (The parent sends only http(s) URLs, as `aioc4.hub` accepts
        no other redirect; were one not, the ValueError would end this process, which the parent
        reports as a failure of the shard, rather than leave the shard waiting for bytes.)"""
        self.fetcher = RangeFetcher(
            order.url,
            order.start,
            order.end,
            granted=order.granted,
            timeout_s=order.timeout_s,
            connections=order.connections,
            user_agent=order.user_agent,
            read_ahead=read_ahead,
        )
        self.put(_FETCHING)

    def abandon(self) -> None:
        """Drop the rest of this shard (called by the decoding thread, or by the control thread on a new
        START)."""
        self.abandoned = True
        if self.fetcher is not None:
            self.fetcher.close()
        with contextlib.suppress(queue.Empty):
            while True:  # a control thread blocked on a full queue goes on
                self.relayed.get_nowait()
        self.relayed.put_nowait(_ABANDONED)


_FETCHING, _ABANDONED, _INPUT_ENDED = object(), object(), object()


def _read_control(source: BinaryIO, feeds: queue.Queue[_ShardFeed | None]) -> None:
    """Control thread: the parent's frames, each to the shard it is about."""
    current: _ShardFeed | None = None
    read_ahead: ReadAhead | None = None  # one for the process's shards: what the link needs is learned once
    try:
        while (frame := _read_frame(source)) is not None:
            kind, payload = frame
            if kind == START:
                if current is not None and not current.relay_ended:
                    current.abandon()  # it failed, and the parent gave up on it: nothing more comes
                current = _ShardFeed(_decode_task(payload))
                feeds.put(current)
            elif current is None:
                continue
            elif kind == CHUNK:
                current.put(payload)
            elif kind == END:
                current.relay_ended = True
                current.put(None)
            elif kind == FETCH:
                order = _decode_fetch(payload)
                read_ahead = read_ahead or ReadAhead(max_connections=max(1, order.connections))
                current.fetch(order, read_ahead)
            elif kind == GRANT and current.fetcher is not None:
                current.fetcher.grant(_decode_grant(payload))
    finally:  # the input ended (or could not be read): a shard in progress cannot end
        if current is not None:
            if current.fetcher is not None:
                current.fetcher.close()
            current.put(_INPUT_ENDED)
        feeds.put(None)


def _decode_feeds(feeds: queue.Queue[_ShardFeed | None], out: _Output) -> None:
    """Each shard in turn, until the input ends. One thread inflates and checks: a block (~350 kB,
    from 128 KiB of gzip) is checked and stored while the core's cache still holds it. Against an
    inflating thread handing blocks to a checking one over a queue, one process fed 2 bench shards
    (9 interleaved rounds): 0.724 against 0.847 s of CPU, 0.707 against 0.741 s of wall time (the
    GIL kept the two threads from overlapping much). End to end the pairs scatter more than that
    (docs/performance.md)."""
    while (feed := feeds.get()) is not None:
        try:
            if not _decode_shard(feed, out):
                return
        finally:
            if feed.fetcher is not None:
                feed.fetcher.close()
            feed.abandoned = True


def _decode_shard(feed: _ShardFeed, out: _Output) -> bool:
    """One shard, to its end or its failure (True), or until the input ends (False). A failure is
    reported to the parent as one line, never a traceback; after it the shard's input is dropped."""
    store: _SegmentStore | None = None
    try:
        store = _SegmentStore(feed.task, out)
        return _inflate_shard(feed, store, out)
    except LineTooLongError as exc:
        line = (store.lines.next_line if store is not None else 1) + exc.lines_before
        out.send(FAILED, _encode(Failed("corrupt", str(LineTooLongError(exc.shard, 0, line)), line)))
    except CorruptShardError as exc:
        out.send(FAILED, _encode(Failed("corrupt", str(exc))))
    except OSError as exc:  # the segment's disk: full, or gone
        out.send(FAILED, _encode(Failed("disk", exc.strerror or str(exc))))
    except BaseException as exc:  # one line to the parent instead of a traceback
        out.send(FAILED, _encode(Failed("internal", f"{type(exc).__name__}: {exc}")))
        if not isinstance(exc, Exception):
            return False
    finally:
        if store is not None:
            store.close()
    feed.abandon()
    return True


def _inflate_shard(feed: _ShardFeed, store: _SegmentStore, out: _Output) -> bool:
    """The shard's bytes in order, relayed or downloaded here, inflated and stored: True at its end,
    or once it is abandoned; False if the input ends first."""
    decoder = GzipLineDecoder(feed.task.shard)
    fed = 0
    fetcher: RangeFetcher | None = None
    direct_from = 0  # the byte from which the bytes are the fetcher's again (before it: relayed)
    while True:
        if fetcher is not None and fed == direct_from:
            try:
                while (view := fetcher.read()) is not None:
                    fed = _inflate(decoder, view, fed, store)
            except FetchStopped as stopped:
                if feed.abandoned:
                    return True
                out.send(NEED, _encode(Need(stopped.at, stopped.reason, stopped.until)))  # relayed next
                if stopped.until is None:
                    fetcher = None
                else:
                    fetcher.skip(stopped.until)
                    direct_from = stopped.until
                continue
            break  # the whole shard
        item = feed.relayed.get()
        if item is _FETCHING:
            fetcher = feed.fetcher
            assert fetcher is not None  # set before the marker is queued
            direct_from = fetcher.start
        elif item is _ABANDONED:
            return True
        elif item is _INPUT_ENDED:
            return False
        elif item is None:
            break
        else:
            fed = _inflate(decoder, memoryview(cast(bytes, item)), fed, store)
    store.add(decoder.finish(), fed)
    store.finish()
    return True


def _inflate(decoder: GzipLineDecoder, data: memoryview, fed: int, store: _SegmentStore) -> int:
    for start in range(0, len(data), _FEED_BYTES):
        piece = data[start : start + _FEED_BYTES]
        fed += len(piece)
        store.add(decoder.feed(piece), fed)
    return fed


class _SegmentStore:
    """One shard's checked lines appended to its segment, each block reported to the parent."""

    def __init__(self, task: ShardTask, out: _Output) -> None:
        self.lines = ShardLines(task.shard, task.skip_before, task.exact_documents)
        self._out = out
        self._segment: int | None = os.open(task.segment, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._size = 0

    def add(self, data: bytes, fed: int) -> None:
        """Check a block of whole lines (`fed`: compressed bytes inflated so far), append what is kept."""
        assert self._segment is not None
        lines, size = self.lines, self._size
        batches = lines.take(data)
        if not batches:  # lines before the start of a resumed job: only the progress
            seen = lines.next_line - 1
            self._out.send(PIECE, _encode(Piece(seen + 1, 0, size, 0, 0, fed, seen, [], None)))
        for batch in batches:
            _write_all(self._segment, batch.data)
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
            self._out.send(PIECE, _encode(piece))
        self._size = size

    def finish(self) -> None:
        self.close()
        self._out.send(DONE, _encode(Done(self.lines.next_line - 1, self._size)))

    def close(self) -> None:
        if self._segment is not None:
            os.close(self._segment)
            self._segment = None


def _widen_pipe(fd: int) -> None:
    """A 1 MiB pipe instead of 64 KiB: a chunk crosses in one or two reads, not eight (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_BYTES)


def _read_frame(source: BinaryIO) -> tuple[bytes, bytes] | None:
    header = source.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    kind, length = HEADER.unpack(header)
    payload = source.read(length) if length else b""
    if len(payload) < length:
        return None
    return kind, payload


class _Output:
    """Frames to the parent (from the decoding thread: the control thread sends none), each whole."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def send(self, kind: bytes, payload: bytes) -> None:
        _write_all(self._fd, HEADER.pack(kind, len(payload)) + payload)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


if __name__ == "__main__":
    main()
