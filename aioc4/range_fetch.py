"""A decode process's own download of a shard's storage ranges: several at once, bytes read in order.

The main process resolves the shard on the Hub (the token never leaves it), relays the first range and
hands the decode process the signed storage URL for the rest of the shard. Here, ranges of it are
downloaded on threads (blocking sockets release the GIL), each over a kept-alive connection, as far
ahead as the read-ahead window (aioc4.readahead, the same rule as the main process's download) and the
parent's grant allow: the grant is the byte the documents still wanted probably end at, so an early
stop stays early.

Nothing is retried here. A range that fails in any way (a cut, a timeout, a status other than 206,
a redirect, a host that ignores `Range`) stops the reader at the first byte it lacks
(`FetchStopped`): the parent relays the bytes up to the range's end through its own download, which
has the retries, the run's retry budget and the re-resolve of an expired URL, and the reader goes on
after them (`skip`) while the other ranges download. After `MAX_FAILED_RANGES` (an expired URL or a
host that ignores `Range` fails every range) the parent relays the rest of the shard. So this module
adds speed, not another copy of the error handling.

HTTP/1.1 requests and response heads are h11's (a sans-I/O protocol library, already installed
under huggingface_hub's httpcore2): it imports in under 1 MB, where `http.client` (through `email`)
costs a decode process ~6 MB of RSS.
A range's body (a 206 with its `Content-Length`) is read from the socket straight into the range's
buffer; anything else is refused.
"""

from __future__ import annotations

import contextlib
import mmap
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h11

from .readahead import MIN_RANGE_BYTES, ReadAhead

__all__ = ["FetchStopped", "RangeFetcher"]

_RECV_BYTES = 256 * 1024
_HEAD_BYTES = 16 * 1024
_CONNECT_TIMEOUT_S = 10.0  # as the main process's (aioc4.hub): `close` may wait for a connect this long
_READ_BYTES = 256 * 1024
"""What `read` gives at least (but at a range's end or failure): fewer, larger pieces mean fewer blocks
to inflate, check and report, each with its own fixed costs."""


AHEAD_BYTES = 16 << 20
"""What the ranges of one download hold or bring at most (a decode process's memory for them), unless
its window needs more than that in 512 KiB ranges."""
MAX_RANGE_BYTES = 1 << 20
MIN_FETCH_RANGE_BYTES = 2 * MIN_RANGE_BYTES


def range_bytes(window: int) -> int:
    """The size of the next range for a window of `window` ranges: 1 MiB where few are needed (as the
    main process's ranges), down to 512 KiB where many are (a slow link), so that the window's bytes
    stay within `AHEAD_BYTES`. Where the link keeps ahead (loopback) every range of the window is held
    whole, so its size is the process's memory: 2 MiB ranges held 8-12 MiB a process in the S3 runs, 1
    MiB 4-6 MiB (the tree's peak ~163 -> ~152 MiB, by /proc), at the same docs/s on the model and unpaced
    (interleaved) for ~0.4 us/doc more of the local Hub's CPU (~0.85 ms a request)."""
    return max(MIN_FETCH_RANGE_BYTES, min(MAX_RANGE_BYTES, AHEAD_BYTES // max(1, window)))


MAX_FAILED_RANGES = 3
"""Ranges that may fail before the download gives up altogether (an expired URL fails every one)."""


class FetchStopped(Exception):
    """The download has no bytes from `at` (every byte before it was read) up to `until`, its failed
    range's end: the parent relays those, and `skip(until)` goes on after them. `until` is None once
    the download gave up (`MAX_FAILED_RANGES`, or `close`): the parent relays the rest."""

    def __init__(self, at: int, reason: str, until: int | None = None) -> None:
        super().__init__(reason)
        self.at = at
        self.reason = reason
        self.until = until


@dataclass(eq=False, slots=True)
class _Range:
    """Bytes `start` to `end` arriving into `buffer` (`filled` of them so far)."""

    start: int
    end: int
    buffer: mmap.mmap = field(init=False)
    filled: int = 0
    taken: int = 0
    started: bool = False  # a thread took it
    done: bool = False
    error: str | None = None
    fatal: bool = False  # it failed as the download's last allowed failure: the rest goes another way

    def __post_init__(self) -> None:
        self.buffer = mmap.mmap(-1, self.end - self.start)  # unmapped when the last view of it goes

    @property
    def untaken(self) -> int:
        return self.end - self.start - self.taken


class RangeFetcher:
    """Bytes `start` to `end` of the object at `url`, in order, from up to `connections` ranges at once.

    `read()` gives the next bytes (a view, valid until the next call) or None at `end`, and raises
    `FetchStopped` where the download failed. `grant(byte)` lets ranges reach further. `close()` stops
    every transfer and joins every thread; a fetcher must be closed.
    """

    def __init__(
        self,
        url: str,
        start: int,
        end: int,
        *,
        granted: int,
        timeout_s: float,
        connections: int,
        user_agent: str,
        read_ahead: ReadAhead | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http(s) URL")
        self.start, self.end = start, end
        self._https = parts.scheme == "https"
        self._address = (parts.hostname, parts.port or (443 if self._https else 80))
        self._host = parts.netloc.rpartition("@")[2]
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._timeout_s = timeout_s
        self._user_agent = user_agent
        # the window a previous shard opened, if given: the link is the same, so no ramp-up again
        self._read_ahead = read_ahead or ReadAhead(max_connections=max(1, connections))
        self._lock = threading.Lock()
        self._readable = threading.Condition(self._lock)  # the reader waits for the next bytes
        self._work = threading.Condition(self._lock)  # idle threads wait for a range to download
        self._ranges: deque[_Range] = deque()
        self._next = start  # where the next range starts
        self._position = start  # the next byte `read` gives
        self._granted = granted
        self._failures = 0
        self._failed = False  # no more ranges: too many failed
        self._closed = False
        self._queued: deque[_Range] = deque()  # ranges no thread has taken yet
        self._waiting_threads = 0
        self._busy: set[_Connection] = set()
        self._threads: set[threading.Thread] = set()
        self.ranges_started = 0
        with self._lock:
            self._schedule()

    # -- the reader's side ----------------------------------------------------------------------------

    def read(self) -> memoryview | None:
        with self._lock:
            while True:
                if self._position >= self.end:
                    return None
                if self._closed:
                    raise FetchStopped(self._position, "the download was stopped")
                head = self._ranges[0] if self._ranges else None
                if (head is None or not head.started) and self._failed:  # no thread will take it
                    raise FetchStopped(self._position, "too many ranges failed")
                if head is not None and head.done and not head.untaken:
                    self._ranges.popleft()
                    self._schedule()
                    continue
                arrived = head.filled - head.taken if head is not None else 0
                if head is not None and arrived and (head.done or arrived >= min(_READ_BYTES, head.untaken)):
                    view = memoryview(head.buffer)[head.taken : head.filled]
                    head.taken = head.filled
                    self._position = head.start + head.taken
                    self._schedule()
                    return view
                if head is not None and head.done:
                    until = None if head.fatal else head.end
                    raise FetchStopped(self._position, head.error or "the range ended early", until)
                if head is not None:
                    arriving = sum(not item.done for item in self._ranges)
                    self._read_ahead.reader_waited(outstanding=len(self._ranges), arriving=arriving)
                self._schedule()
                self._readable.wait()

    def skip(self, until: int) -> None:
        """Go on after the failed range that ends at `until` (its bytes came another way)."""
        with self._lock:
            head = self._ranges.popleft()
            assert head.error is not None, "skip() follows FetchStopped"
            assert head.end == until, "skip() follows FetchStopped"
            self._position = until
            self._schedule()

    def grant(self, granted: int) -> None:
        with self._lock:
            if granted > self._granted:
                self._granted = granted
                self._schedule()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for connection in self._busy:
                connection.interrupt()
            threads = list(self._threads)
            self._readable.notify_all()
            self._work.notify_all()
        for thread in threads:
            thread.join()

    # -- the ranges ------------------------------------------------------------------------------------

    def _schedule(self) -> None:
        """Queue the ranges the window and the grant allow (called holding the lock)."""
        while not (self._failed or self._closed) and self._next < min(self.end, self._granted):
            self._read_ahead.in_use = len(self._ranges)
            self._read_ahead.range_bytes = range_bytes(self._read_ahead.window)
            size = self._read_ahead.next_range(
                outstanding=len(self._ranges),
                ahead_bytes=sum(item.untaken for item in self._ranges),
                wanted_bytes=self._granted - self._position,
                left_in_shard=self.end - self._next,
            )
            if size <= 0:
                return
            item = _Range(self._next, self._next + size)
            self._next += size
            self._ranges.append(item)
            self._queued.append(item)
            self.ranges_started += 1
            if len(self._queued) > self._waiting_threads:
                thread = threading.Thread(target=self._serve, name="aioc4-range", daemon=True)
                self._threads.add(thread)
                thread.start()
            self._work.notify()

    def _serve(self) -> None:
        """A download thread: queued ranges one after another over its own kept-alive connection."""
        connection: _Connection | None = None
        try:
            while (item := self._next_queued()) is not None:
                error: str | None = None
                try:
                    connection = connection or _Connection(self._address, self._https, self._timeout_s)
                    with self._lock:
                        if self._closed:
                            raise OSError("closed")
                        self._busy.add(connection)
                    connection.get(self._target, self._host, self._user_agent, item, self._arrived)
                except (OSError, h11.ProtocolError, _Refused) as exc:
                    error = str(exc) or type(exc).__name__
                with self._lock:
                    if connection is not None:
                        self._busy.discard(connection)
                        if error is not None or not connection.reusable:
                            connection.close()
                            connection = None
                    item.done, item.error = True, error
                    self._failures += error is not None
                    self._failed = self._failures >= MAX_FAILED_RANGES
                    item.fatal = error is not None and self._failed
                    self._readable.notify()
                    if self._failed:
                        self._work.notify_all()  # no more ranges: idle threads end
        finally:
            if connection is not None:
                connection.close()
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _next_queued(self) -> _Range | None:
        with self._lock:
            self._waiting_threads += 1
            while not self._queued and not (self._closed or self._failed):
                self._work.wait()
            self._waiting_threads -= 1
            if self._closed or self._failed:
                return None
            item = self._queued.popleft()
            item.started = True
            return item

    def _arrived(self, item: _Range, filled: int) -> bool:
        """A connection wrote `item.buffer` up to `filled`; False: stop (the fetcher is closing)."""
        with self._lock:
            item.filled = filled
            if (
                self._ranges
                and self._ranges[0] is item
                and filled - item.taken >= min(_READ_BYTES, item.untaken)
            ):
                self._readable.notify()  # (only then: each wake-up costs the reader the GIL)
            return not self._closed


def _wait_for_whole_reads(sock: socket.socket, timeout_s: float) -> int:
    """`MSG_WAITALL` where the socket can block with the kernel's own timeout (plain TCP on Linux and
    the BSDs): a read then returns a whole 256 KiB, not every ~64 KiB that arrived, so a download thread
    takes the GIL a quarter as often. Python's timeouts make a socket non-blocking, where the flag does
    nothing, so the timeout moves into `SO_RCVTIMEO`. 0 where that cannot be set."""
    flag = getattr(socket, "MSG_WAITALL", 0)
    if not flag:
        return 0
    seconds = struct.pack("ll", int(timeout_s), int(timeout_s % 1 * 1_000_000))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, seconds)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, seconds)
    except OSError:
        return 0
    sock.settimeout(None)
    return flag


class _Refused(Exception):
    """Storage answered, but not with the bytes asked for."""


class _Connection:
    """One kept-alive HTTP/1.1 connection to the storage host."""

    def __init__(self, address: tuple[str, int], https: bool, timeout_s: float) -> None:
        sock = socket.create_connection(address, timeout=min(_CONNECT_TIMEOUT_S, timeout_s))
        if https:
            import ssl  # only for https: ~5 MB a process

            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=address[0])
        self._sock = sock
        self._timeout_s = timeout_s
        self._wait_all = 0 if https else _wait_for_whole_reads(sock, timeout_s)
        self.reusable = False

    def get(
        self, target: str, host: str, user_agent: str, item: _Range, arrived: Callable[[_Range, int], bool]
    ) -> None:
        """Download `item` into its buffer, telling `arrived` as bytes come. h11 writes the request and
        parses the response's head; the body is read straight into the buffer (no copy in Python)."""
        self.reusable = False
        http = h11.Connection(h11.CLIENT)  # one per request: the body is read past h11, below
        headers = [
            ("Host", host),
            ("Range", f"bytes={item.start}-{item.end - 1}"),
            ("Accept-Encoding", "identity"),
            ("User-Agent", user_agent),
        ]
        request = http.send(h11.Request(method="GET", target=target, headers=headers)) or b""
        self._sock.sendall(request + (http.send(h11.EndOfMessage()) or b""))
        response = self._head(http)
        length = item.end - item.start
        fields = {name: value for name, value in response.headers}
        if response.status_code != 206:
            raise _Refused(f"HTTP {response.status_code} for a range")
        if not fields.get(b"content-range", b"").startswith(b"bytes %d-%d/" % (item.start, item.end - 1)):
            raise _Refused("storage sent another range than the one asked for")
        if fields.get(b"content-length") != b"%d" % length:
            raise _Refused("storage sent a range without its length")
        body, _ = http.trailing_data  # what came with the head
        if len(body) > length:
            raise _Refused("storage sent more than the range asked for")
        with memoryview(item.buffer) as into:
            into[: len(body)] = body
            filled = len(body)
            while filled < length:
                if not arrived(item, filled):
                    raise OSError("closed")
                try:
                    received = self._sock.recv_into(
                        into[filled : min(length, filled + _RECV_BYTES)], 0, self._wait_all
                    )
                except BlockingIOError:  # SO_RCVTIMEO
                    raise TimeoutError(f"no byte for {self._timeout_s:g} s") from None
                if not received:
                    raise OSError(f"the connection closed after {filled:,} of {length:,} bytes")
                filled += received
        arrived(item, filled)
        close = b"close" in fields.get(b"connection", b"").lower()
        self.reusable = response.http_version == b"1.1" and not close

    def _head(self, http: h11.Connection) -> h11.Response:
        while True:
            event = http.next_event()
            if isinstance(event, h11.Response):
                return event
            if event is not h11.NEED_DATA:
                raise _Refused(f"unexpected {type(event).__name__}")
            data = self._sock.recv(_HEAD_BYTES)
            if not data:
                raise OSError("the connection closed")
            http.receive_data(data)

    def interrupt(self) -> None:
        """Wake a thread blocked in `recv` on this connection (from another thread)."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._sock.close()
