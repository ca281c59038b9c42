"""A count job on several cores: shards decoded at once by worker processes, handed on in order.

    Hub (this process: resolve, the token) --signed storage URL, first 256 KiB--> decode process
    storage --ranges, several at once (aioc4.range_fetch)--> decode process --checked lines--> segment
    decode process --Piece: lines, range, CRC--> DecodePool --grants (how far to download)--> it
    DecodePool --SegmentBatch (a range of a segment), in shard order--> part writer (copy_file_range)

Up to `procs` shards are read at once, each by its own `aioc4.decode_worker` process, which
downloads the shard from storage itself once this process has resolved it; where that download
stops (any failure), this process relays the rest over the process's pipe from its own ranged
download, which has the retries. Their output is the same as the one-process reader's: the same
documents, checked the same way, in the same order, with the same line numbers; the part writer
stitches parts from segment ranges (aioc4.segments), so parts are byte-identical.

Bounds: at most `procs + 1` segments exist at once (a segment goes once the part writer has copied
its last bytes), so local disk holds at most that many shards' worth of checked lines besides the
parts; memory holds each process's read-ahead window (at most 16 MiB of ranges) and, per block, a
few numbers. A shard is only
started when the documents still wanted probably reach into it (as the one-process reader's
read-ahead does), so an early stop stays early: N inside one shard reads one shard (the processes
the next shards probably need are started meanwhile, idle, so that their imports are not in the
way). A shard that
fails (a download error, data that is not C4) only matters where the reader reaches it.

The pool owns its processes, tasks and segments: leaving its context kills and reaps every process,
cancels every download and closes every segment, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import msgspec

from ._version import __version__
from .decode import SourcePosition
from .decode_worker import (
    CHUNK,
    DONE,
    END,
    FAILED,
    FETCH,
    GRANT,
    HEADER,
    NEED,
    PIECE,
    START,
    Done,
    Failed,
    Fetch,
    Need,
    Piece,
    ShardTask,
)
from .errors import CorruptShardError, DestinationError, LineTooLongError, RangeIgnoredError, SourceError
from .hub import HubSource, Shard, uses_proxy
from .readahead import MIN_RANGE_BYTES
from .reader import (
    EXACT_DOCUMENTS,
    GZIP_BYTES_PER_DOCUMENT,
    READ_AHEAD_MARGIN,
    ReadProgress,
    shard_bytes,
    start_at,
)
from .segments import Block, Segment, SegmentBatch, segment_name

__all__ = ["REUSE_FREED_MEMORY", "DecodePool", "worker_environment"]

log = logging.getLogger("aioc4")

_RELAYED_BYTES = MIN_RANGE_BYTES
"""The start of a shard relayed from here before its process downloads the rest: the request that
resolves it on the Hub. Small, because the process decodes nothing else until it has come over one
connection (256 KiB at the model's 5 MB/s: 50 ms)."""
_BATCH_BYTES = 8 << 20  # consecutive blocks handed to the writer as one range (fewer copies, fewer hops)
_SECRET_PREFIXES = ("AWS_", "HF_", "HUGGING_FACE_")
REUSE_FREED_MEMORY = {
    "MALLOC_MMAP_THRESHOLD_": str(64 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(256 << 20),
    "MALLOC_ARENA_MAX": "1",
}
"""glibc's allocator settings of the decode processes (see `worker_environment`)."""

_decode_piece = msgspec.msgpack.Decoder(Piece).decode
_decode_done = msgspec.msgpack.Decoder(Done).decode
_decode_failed = msgspec.msgpack.Decoder(Failed).decode
_decode_need = msgspec.msgpack.Decoder(Need).decode
_encode = msgspec.msgpack.Encoder().encode


def worker_environment() -> dict[str, str]:
    """The decode processes' environment: this one without credentials (they need none), and glibc's
    allocator told to reuse freed blocks: each chunk inflates into fresh ~1.4 MB buffers, which by
    default are mapped and unmapped every time, so every page faults and is zeroed again (3x the page
    faults and twice the system time of the process, by `perf stat`). One arena for all its threads:
    when an inflating thread's blocks were freed by a checking one, an arena per thread kept a
    high-water mark each (a process's peak RSS ~24 -> ~22 MB at the same CPU, measured on a bench
    shard); the download threads allocate little. Settings the user's environment already makes win."""
    kept = {name: value for name, value in os.environ.items() if not name.startswith(_SECRET_PREFIXES)}
    return {**REUSE_FREED_MEMORY, **kept}


@dataclass(eq=False, slots=True)
class _ShardRun:
    """One shard being decoded: what its process reported so far."""

    shard: Shard
    segment: Segment
    pieces: deque[SegmentBatch] = field(default_factory=deque)
    worker: _Worker | None = None
    fed: int = 0  # where the bytes sent to the process end in the shard (what it has: `_until_wanted`)
    relayed: int = 0  # compressed bytes sent to the process (the others it downloaded itself)
    counted: int = 0  # compressed bytes of the shard counted as read (relayed, or downloaded there)
    granted: int | None = None  # how far the process may download the shard itself (None: it does not)
    need: Need | None = None  # where its own download stopped: the rest is relayed from there
    reported_input: int = 0  # compressed bytes the process has inflated and checked
    reported_lines: int = 0  # lines in those bytes, kept or skipped (a resumed job skips some)
    reported_docs: int = 0
    progressed: asyncio.Event = field(default_factory=asyncio.Event)
    done: bool = False
    error: Exception | None = None
    feeder: asyncio.Task[None] | None = None

    def fail(self, error: Exception) -> None:
        self.error = self.error or error
        self.progressed.set()
        if self.feeder is not None:
            self.feeder.cancel()


@dataclass(eq=False, slots=True)
class _Worker:
    process: asyncio.subprocess.Process
    run: _ShardRun | None = None
    listener: asyncio.Task[None] | None = None
    alive: bool = True

    async def send(self, kind: bytes, payload: bytes = b"") -> None:
        """One frame, then wait while the pipe is full."""
        self.post(kind, payload)
        stdin = self.process.stdin
        assert stdin is not None
        await stdin.drain()

    def post(self, kind: bytes, payload: bytes = b"") -> None:
        """One frame, written whole into the pipe's buffer at once (no wait): so a cancelled `send`
        never leaves half a frame, and frames posted between sends never split one."""
        stdin = self.process.stdin
        if stdin is None or stdin.is_closing():
            return  # the process is gone or going: its listener says so
        stdin.write(HEADER.pack(kind, len(payload)))
        if payload:
            stdin.write(payload)


class DecodePool:
    """The next `limit` documents of `shards` from `start`, decoded by up to `procs` processes.

    Use as an async context manager around the pipeline that consumes `documents()`: the segments
    the batches point into live until the context ends (or until the writer has copied them).
    """

    def __init__(
        self,
        source: HubSource,
        shards: Sequence[Shard],
        commit: str,
        limit: int,
        *,
        procs: int,
        staging: Path,
        stem: str,
        progress: ReadProgress,
        streaming: bool = True,
        start: SourcePosition | None = None,
    ) -> None:
        self._source = source
        self._shards = shards
        self._commit = commit
        self._limit = limit
        self._procs = procs
        self._staging = staging
        self._stem = stem
        self._progress = progress
        self._streaming = streaming
        self._first, self._first_line = start_at(list(shards), start)
        self._next = self._first  # the next shard to start
        self._running: deque[_ShardRun] = deque()  # in shard order; the first is the one being handed on
        self._segments: list[Segment] = []
        self._workers: list[_Worker] = []
        self._changed = asyncio.Event()
        self._docs_before = 0  # documents of the shards already handed on whole
        self._reported_lines = 0
        self._reported_input = 0

    async def __aenter__(self) -> DecodePool:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.shield(self._stop_workers())
        for segment in self._segments:
            segment.close()

    async def documents(self) -> AsyncGenerator[SegmentBatch, None]:
        """Batches holding exactly the next `limit` documents, in order; stops reading once they are out."""
        progress, limit = self._progress, self._limit
        try:
            while True:
                await self._schedule()
                if not self._running:
                    progress.exhausted = True
                    return
                head = self._running[0]
                batch = self._take(head)
                if batch is not None:
                    yield progress.hand_out(batch, limit)
                    if progress.documents >= limit:
                        return
                elif head.error is not None:
                    raise head.error
                elif head.done:
                    self._running.popleft()
                    self._docs_before += head.reported_docs
                    self._regrant()
                else:
                    self._changed.clear()
                    await self._changed.wait()
        finally:
            await self._stop_workers()  # documents after the limit are not wanted: stop decoding them

    # -- the order of shards --------------------------------------------------------------------------

    def _take(self, head: _ShardRun) -> SegmentBatch | None:
        """The head shard's blocks reported so far, joined into ranges of up to `_BATCH_BYTES`."""
        if not head.pieces:
            return None
        batch = head.pieces.popleft()
        length = batch.length
        while head.pieces and length < _BATCH_BYTES:
            piece = head.pieces.popleft()
            batch.extend(piece)
            length += piece.length
        return batch

    async def _schedule(self) -> None:
        """Start shards while a process is free, segments are under their bound, and the documents still
        wanted probably reach past the shards already running."""
        while self._next < len(self._shards) and self._can_start():
            worker = await self._free_worker()
            if worker is None:
                return
            self._start(worker, self._next)
            self._next += 1
        await self._warm_up()

    async def _warm_up(self) -> None:
        """While the first shard's documents per byte are being measured (no other shard starts before
        they are), start the processes the next shards will probably need (by C4's documents per byte),
        without a shard: their imports (~75 ms) then overlap the first shard's start instead of
        following it. One that turns out not to be needed ends with its input, unused."""
        if self._reported_lines or not self._running:
            return
        wanted, needed = self._wanted_docs(None), 0
        for shard in self._shards[self._next :]:
            if wanted <= 0 or len(self._running) + needed >= self._procs:
                break
            needed += 1
            wanted -= shard.size * self._docs_per_byte()
        while sum(worker.alive for worker in self._workers) < len(self._running) + needed:
            await self._spawn()

    def _can_start(self) -> bool:
        if not self._running:
            return True
        if not self._reported_lines:
            return False  # documents per byte not measured yet: the split's may differ from C4's
        if sum(run.error is None and not run.done for run in self._running) >= self._procs:
            return False
        if sum(not segment.closed for segment in self._segments) >= self._procs + 1:
            return False
        return self._wanted_docs(None) > 0

    def _docs_per_byte(self) -> float:
        if self._reported_lines and self._reported_input:
            return self._reported_lines / self._reported_input
        return 1 / GZIP_BYTES_PER_DOCUMENT  # C4's, before anything is decoded

    def _expected_docs(self, run: _ShardRun) -> float:
        if run.done or run.error is not None:
            return run.reported_docs
        return run.reported_docs + max(0, run.shard.size - run.reported_input) * self._docs_per_byte()

    def _wanted_docs(self, run: _ShardRun | None) -> float:
        """Documents still wanted (with a margin: documents vary in size) beyond those the shards before
        `run` (before a new one: all running shards) probably hold, and those `run` already gave."""
        docs = (self._limit - self._docs_before) * READ_AHEAD_MARGIN
        for earlier in self._running:
            if earlier is run:
                return docs - earlier.reported_docs
            docs -= self._expected_docs(earlier)
        return docs

    def _wanted_bytes(self, run: _ShardRun) -> float:
        """Compressed bytes of `run`'s shard the documents still wanted probably take, beyond those
        its process is decoding (the download's read-ahead asks for no more)."""
        return self._wanted_docs(run) / self._docs_per_byte() - (run.fed - run.reported_input)

    # -- processes ------------------------------------------------------------------------------------

    async def _free_worker(self) -> _Worker | None:
        for worker in self._workers:
            if worker.alive and worker.run is None:
                return worker
        if sum(worker.alive for worker in self._workers) >= self._procs:
            return None
        return await self._spawn()

    async def _spawn(self) -> _Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "aioc4.decode_worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=worker_environment(),
        )
        worker = _Worker(process)
        self._workers.append(worker)
        worker.listener = asyncio.create_task(self._listen(worker), name="aioc4-decode-listener")
        log.debug("started decode process %d (pid %d)", len(self._workers), process.pid)
        return worker

    def _start(self, worker: _Worker, position: int) -> None:
        shard = self._shards[position]
        first = position == self._first
        path = self._staging / segment_name(self._stem, position)
        segment = Segment(path, on_close=self._changed.set, adoptable=first)  # may become the first part
        self._segments.append(segment)
        run = _ShardRun(shard, segment, worker=worker)
        self._running.append(run)
        worker.run = run
        self._progress.shards_opened += 1
        task = ShardTask(
            shard.path,
            str(segment.path),
            self._first_line if first else 1,
            EXACT_DOCUMENTS if first else 0,
        )
        run.feeder = asyncio.create_task(self._feed(worker, run, task), name=f"aioc4-feed-{shard.path}")
        log.debug("decoding %s in process %d", shard.path, worker.process.pid)

    async def _feed(self, worker: _Worker, run: _ShardRun, task: ShardTask) -> None:
        """The shard's bytes to its process: downloaded there from storage after a first range relayed
        from here, or all relayed from here (its ranged download, or the cached file)."""
        try:
            await worker.send(START, _encode(task))
            if self._streaming and self._source.rate is None and run.shard.size > _RELAYED_BYTES:
                await self._feed_fetching(worker, run)
            else:
                await self._relay(worker, run)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the process is gone: its listener says so
        except Exception as exc:  # a download failure: raised if and when the reader gets there
            run.fail(exc)
            self._changed.set()

    async def _relay(self, worker: _Worker, run: _ShardRun, start: int = 0) -> None:
        """The shard from byte `start` to its end, through this process: its ranged download, several
        connections at once (or the cached file)."""
        download = shard_bytes(
            self._source, [run.shard], self._commit, self._streaming, lambda: self._wanted_bytes(run), start
        )
        async with download, aclosing(download.chunks(0)) as chunks:
            async for chunk in chunks:
                await self._send_chunk(worker, run, chunk)
                await self._until_wanted(run)
        await worker.send(END)

    async def _feed_fetching(self, worker: _Worker, run: _ShardRun) -> None:
        """Relay the first range (it resolves the shard on the Hub, here, where the token is), then have
        the process download the rest from storage itself: the bytes cross no pipe, and this process's
        core is left to stitching parts. Where its download stops (or the Hub serves the shard itself,
        or storage ignores Range) the rest is relayed from here, from the byte reached, with the ranges,
        retries, re-resolve of an expired link and budget of this process's download. So is all of it
        where the environment sends storage requests through a proxy, which the process's own sockets
        would go around."""
        first, proxied = _RELAYED_BYTES, False
        try:
            async with aclosing(self._source.stream(run.shard, self._commit, 0, first)) as body:
                async for chunk in body:
                    await self._send_chunk(worker, run, chunk)
                    url = None if run.granted is not None or proxied else self._source.storage_url(run.shard)
                    if url is not None and uses_proxy(url):
                        proxied = True
                        log.debug("%s: relayed from here (storage is behind a proxy)", run.shard.path)
                    elif url is not None:
                        await self._start_fetching(worker, run, url, first)
        except RangeIgnoredError:  # storage ignores Range: nothing was relayed yet
            first = 0
        while run.granted is not None:
            while run.need is None and not run.done and run.error is None:
                run.progressed.clear()
                await run.progressed.wait()
            need, run.need = run.need, None
            if need is None:
                return  # decoded (or failed there)
            if need.until is not None:  # one range failed there: its bytes from here, then it goes on
                log.debug("%s: relaying bytes %d-%d (%s)", run.shard.path, need.at, need.until, need.reason)
                await self._relay_range(worker, run, need.at, need.until)
                continue
            log.debug("%s: downloading from byte %d here (%s)", run.shard.path, need.at, need.reason)
            first = run.fed = need.at
            break
        await self._relay(worker, run, first)

    async def _relay_range(self, worker: _Worker, run: _ShardRun, start: int, end: int) -> None:
        """Bytes `start` to `end` of the shard, through this process (with the retries of
        `HubSource.stream`); where storage ignores Range, from one stream cut off at `end`."""
        run.fed = start
        try:
            async with aclosing(self._source.stream(run.shard, self._commit, start, end)) as body:
                async for chunk in body:
                    await self._send_chunk(worker, run, chunk)
        except RangeIgnoredError:
            left = end - start
            async with aclosing(self._source.stream(run.shard, self._commit, start)) as rest:
                async for chunk in rest:
                    await self._send_chunk(worker, run, chunk[:left])
                    left -= min(left, len(chunk))
                    if not left:
                        break

    async def _start_fetching(self, worker: _Worker, run: _ShardRun, url: str, start: int) -> None:
        run.granted = self._grant_of(run)
        # each process its own window of up to --download-connections: a shard starting, or ending,
        # needs many; split statically, one process's idle share was the other's cap (-20% docs/s on
        # the network model, interleaved against the main process's shared window)
        connections = self._source.read_ahead.max_connections
        order = Fetch(
            url,
            start,
            run.shard.size,
            run.granted,
            self._source.timeout_s,
            connections,
            f"aioc4/{__version__}",
        )
        await worker.send(FETCH, _encode(order))

    def _grant_of(self, run: _ShardRun) -> int:
        """The byte of the shard the documents still wanted probably end at, rounded up to 64 KiB (so
        one frame per 64 KiB at most; rounding up never stalls the process's download)."""
        wanted = max(0.0, self._wanted_docs(run)) / self._docs_per_byte()
        step = MIN_RANGE_BYTES // 4
        return min(run.shard.size, -(-int(run.reported_input + wanted) // step) * step)

    def _regrant(self) -> None:
        """Let each shard downloaded by its process reach as far as the documents still wanted now do."""
        for run in self._running:
            if run.granted is None or run.done or run.error is not None or run.worker is None:
                continue
            granted = self._grant_of(run)
            if granted > run.granted:
                run.granted = granted
                run.worker.post(GRANT, _encode(granted))

    async def _send_chunk(self, worker: _Worker, run: _ShardRun, chunk: bytes) -> None:
        run.fed += len(chunk)
        run.relayed += len(chunk)
        self._count_read(run, run.fed)
        await worker.send(CHUNK, chunk)

    def _count_read(self, run: _ShardRun, position: int) -> None:
        if position > run.counted:
            self._progress.compressed_bytes += position - run.counted
            run.counted = position

    async def _until_wanted(self, run: _ShardRun) -> None:
        """Ask for more of the shard only while the bytes sent to its process probably do not hold
        every document still wanted: an early stop stays early. (Once all it was sent is decoded and
        no more is wanted, the limit is reached and the pool stops; a shard before it that ends short
        wakes it.)"""
        while self._wanted_bytes(run) <= 0:
            run.progressed.clear()
            await run.progressed.wait()

    async def _listen(self, worker: _Worker) -> None:
        """Everything the process reports, until it ends."""
        stdout = worker.process.stdout
        assert stdout is not None
        try:
            while True:
                header = await stdout.readexactly(HEADER.size)
                kind, length = HEADER.unpack(header)
                payload = await stdout.readexactly(length) if length else b""
                if worker.run is not None:
                    self._report(worker, kind, payload)
                self._changed.set()
                for running in self._running:  # what one shard reports changes what others want
                    running.progressed.set()
                self._regrant()
        except (asyncio.IncompleteReadError, ConnectionResetError):
            pass
        worker.alive = False
        lost, worker.run = worker.run, None
        if lost is not None:
            code = await worker.process.wait()
            lost.fail(SourceError(f"{lost.shard.path}: its decode process ended unexpectedly (exit {code})"))
        self._changed.set()

    def _report(self, worker: _Worker, kind: bytes, payload: bytes) -> None:
        run = worker.run
        assert run is not None
        run.segment.release_name()  # its process has it open: the name can go
        if kind == PIECE:
            self._add_piece(run, _decode_piece(payload))
        elif kind == DONE:
            run.done = True
            run.progressed.set()
            worker.run = None
            done = _decode_done(payload)
            run.segment.finished(done.size)
            there = run.shard.size - run.relayed
            log.debug(
                "decoded %s: %d lines (%d of its bytes downloaded by its process)",
                run.shard.path,
                done.lines,
                there,
            )
        elif kind == NEED:
            run.need = _decode_need(payload)
            run.progressed.set()
        elif kind == FAILED:
            failed = _decode_failed(payload)
            run.fail(_error_of(failed, run.shard.path, self._staging))
            worker.run = None

    def _add_piece(self, run: _ShardRun, piece: Piece) -> None:
        self._reported_input += piece.input_bytes - run.reported_input
        self._reported_lines += piece.lines_seen - run.reported_lines
        run.reported_input, run.reported_lines = piece.input_bytes, piece.lines_seen
        self._count_read(run, piece.input_bytes)
        run.progressed.set()
        if not piece.count:
            return
        run.reported_docs += piece.count
        run.pieces.append(
            SegmentBatch(
                run.shard.path,
                piece.first_line,
                run.segment,
                piece.offset,
                [Block(piece.count, piece.length, piece.crc32)],
                [(offset, chars) for offset, chars in piece.samples],
                piece.first_text,
            )
        )

    async def _stop_workers(self) -> None:
        """Cancel the downloads; idle processes end with their input, busy ones are killed; all reaped."""
        feeders = [run.feeder for run in self._running if run.feeder is not None]
        for feeder in feeders:
            feeder.cancel()
        await asyncio.gather(*feeders, return_exceptions=True)
        for worker in self._workers:
            if worker.process.returncode is not None:
                continue
            if worker.run is None and worker.process.stdin is not None:
                worker.process.stdin.close()
            else:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
        for worker in self._workers:
            try:
                await asyncio.wait_for(worker.process.wait(), timeout=5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
                await worker.process.wait()
        listeners = [worker.listener for worker in self._workers if worker.listener is not None]
        await asyncio.gather(*listeners, return_exceptions=True)


def _error_of(failed: Failed, shard: str, staging: Path) -> Exception:
    if failed.line is not None:
        return LineTooLongError(shard, 0, failed.line)
    if failed.kind == "corrupt":
        return CorruptShardError(failed.message)
    if failed.kind == "disk":
        return DestinationError(f"cannot write to {staging}: {failed.message}")
    return SourceError(f"{shard}: its decode process failed ({failed.message})")
