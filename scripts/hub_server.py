"""A local imitation of the Hugging Face Hub serving one dataset repository, for offline tests and demos.

Two origins run in one event loop, like the real Hub and its CDN: the Hub origin answers the API and the
`resolve` URLs and redirects LFS files (`*.json.gz`) to the storage origin, which serves the bytes from
short-lived signed URLs with `Range` support. The real `huggingface_hub` client works against it through
`HF_ENDPOINT` or an explicit `endpoint=`. `GET /_stats` and `POST /_stats/reset` on the Hub origin expose
what was transferred, so tests can assert on traffic, and how many storage bodies were in flight at once
(`storage_peak_in_flight`), so a benchmark can tell how many connections a client keeps busy.

A far-away network is modelled per response: `--pace-bytes-per-s` caps each storage body on its own (so
concurrent range requests add up, as on a real CDN), and the `latency_s` knob holds every Hub and storage
response before its first byte.

Faults (see `Faults`) make it misbehave like the real thing on a bad day: rate limits and 5xx on the Hub,
5xx, dropped connections, ignored `Range` and expired URLs on storage; the `card` knob serves a dataset info
without the card, or with its `configs` missing or malformed. They are set at launch (flags, or
`HubServerProcess` keyword arguments of the same names) and changed at runtime with `POST /_faults` (a JSON
object of the knobs to change); `GET /_faults` shows them. Every random choice comes from one
`random.Random(fault_seed)`, so the same seed and the same sequence of requests give the same faults.

Run: `python -m scripts.hub_server --root DIR`; it prints one JSON line with its URLs, then serves until
SIGTERM/SIGINT. Tests use `HubServerProcess`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, fields
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self
from urllib.parse import quote, unquote
from xml.sax.saxutils import escape

from aiohttp import web
from aiohttp.typedefs import Handler

from scripts.shards import CARD_DATA, STAMP_NAME

DEFAULT_REPO_ID = "allenai/c4"
DEFAULT_PAGE_SIZE = 1000
EXPAND_PAGE_SIZE = 50
"""The Hub pages tree listings at 1000 entries, or 50 with `expand=true`."""
CHUNK_SIZE = 64 * 1024
SIGNED_URL_TTL_S = 3600
LFS_SUFFIX = ".json.gz"
LAST_MODIFIED = "2024-01-09T19:14:03.000Z"
CREATED_AT = "2022-03-02T23:29:22.000Z"
COMMIT_TITLE = "Upload fake C4"
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
RATE_LIMIT_POLICY = '"fixed window";"resolvers";q=3000;w=300'
"""What the real Hub announces on a 429: anonymous resolves, 3000 per 5-minute window."""
AUTH_CONFLICT = (
    "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string "
    "parameter or the Authorization header should be specified"
)
STORAGE_ERRORS = {
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
}
CARD_MODES = ("full", "none", "no-configs", "broken")
"""What `cardData` the dataset info carries: the card, none at all, no `configs`, or malformed `configs`."""
_ERROR_STATUSES = frozenset(status.value for status in HTTPStatus if 400 <= status.value < 600)
_HASH_BLOCK = 1 << 20
_REPO_ROOT = Path(__file__).resolve().parent.parent


class HubError(Exception):
    """An error answer in the Hub's format: `X-Error-Code`, `X-Error-Message` and `{"error": ...}`."""

    def __init__(self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def response(self) -> web.Response:
        headers = {"X-Error-Message": self.message, **self.headers}
        if self.code is not None:
            headers["X-Error-Code"] = self.code
        return web.json_response({"error": self.message}, status=self.status, headers=headers)


class RangeNotSatisfiable(Exception):
    pass


# --------------------------------------------------------------------------------------------- the repo


@dataclass(frozen=True)
class RepoFile:
    path: str
    size: int
    sha256: str
    oid: str
    """Git blob sha1 of what git stores: the LFS pointer for LFS files, the content otherwise."""
    pointer_size: int | None
    """Size of the LFS pointer; None for files stored in git itself."""


@dataclass(frozen=True)
class Repo:
    repo_id: str
    root: Path
    commit: str
    files: dict[str, RepoFile]
    directories: dict[str, str]
    """Directory path ("" is the root) -> tree oid."""

    def entry_paths(self, directory: str, recursive: bool) -> list[str] | None:
        """Paths under `directory` (directories first, then files), or None if it is not a directory."""
        if directory not in self.directories:
            return None
        prefix = f"{directory}/" if directory else ""

        def wanted(path: str) -> bool:
            return bool(path) and path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :])

        return sorted(filter(wanted, self.directories)) + sorted(filter(wanted, self.files))


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _load_file(root: Path, path: str) -> RepoFile:
    full = root / path
    size = full.stat().st_size
    sha256 = hashlib.sha256()
    with full.open("rb") as f:
        while block := f.read(_HASH_BLOCK):
            sha256.update(block)
    if path.endswith(LFS_SUFFIX):
        pointer = lfs_pointer(sha256.hexdigest(), size)
        return RepoFile(path, size, sha256.hexdigest(), git_blob_sha1(pointer), len(pointer))
    return RepoFile(path, size, sha256.hexdigest(), git_blob_sha1(full.read_bytes()), None)


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


def _tree_oids(files: dict[str, RepoFile]) -> dict[str, str]:
    """A deterministic oid per directory, hashed over its children bottom-up (git-like, not git's format)."""
    listings: dict[str, list[str]] = {"": []}
    for path in files:
        directory = _parent(path)
        while directory not in listings:
            listings[directory] = []
            directory = _parent(directory)
    for path, file in files.items():
        listings[_parent(path)].append(f"blob {file.oid} {path}")
    oids: dict[str, str] = {}
    for directory in sorted(listings, key=lambda d: (d.count("/") + bool(d), d), reverse=True):
        oids[directory] = hashlib.sha1("\n".join(sorted(listings[directory])).encode()).hexdigest()
        if directory:
            listings[_parent(directory)].append(f"tree {oids[directory]} {directory}")
    return oids


def load_repo(root: Path, repo_id: str) -> Repo:
    """Hash every file under `root` (except the generator's stamp) into one commit."""
    paths = sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != STAMP_NAME
    )
    files = {path: _load_file(root, path) for path in paths}
    commit = hashlib.sha1()
    for path, file in sorted(files.items()):
        commit.update(f"{path}\0{file.sha256}\n".encode())
    return Repo(repo_id, root, commit.hexdigest(), files, _tree_oids(files))


# ----------------------------------------------------------------------------------- shared server state


@dataclass
class Stats:
    storage_body_bytes: int = 0
    storage_body_bytes_by_path: Counter[str] = field(default_factory=Counter)
    storage_get_requests: int = 0
    storage_get_requests_by_path: Counter[str] = field(default_factory=Counter)
    resolve_requests: dict[str, int] = field(default_factory=lambda: {"HEAD": 0, "GET": 0})
    api_requests: int = 0
    storage_auth_headers_seen: int = 0
    faults_injected: Counter[str] = field(default_factory=Counter)
    """Kind (`hub_429`, `storage_503`, `reset`, `expired_url`, `ignored_range`, `auth_forbidden`) -> count."""
    storage_body_ends: Counter[str] = field(default_factory=Counter)
    """How storage GET bodies ended: `complete`, `cut` (the reset fault), `client_left`, `file_shrank`;
    a test can wait for one of them instead of sleeping."""
    storage_in_flight: int = 0
    """Storage GET responses being answered now: from the start of the answer (the latency wait included)
    to the end of its body, however it ends."""
    storage_peak_in_flight: int = 0
    """The most storage GET responses in flight at once since the last reset."""

    def reset(self) -> Stats:
        """Zeroed counters, but the responses still in flight stay counted (their ends will uncount them)."""
        return Stats(storage_in_flight=self.storage_in_flight, storage_peak_in_flight=self.storage_in_flight)

    def as_json(self) -> dict[str, Any]:
        return {name: dict(value) if isinstance(value, dict) else value for name, value in vars(self).items()}


@dataclass(frozen=True)
class UrlSigner:
    """Signs storage URLs with a per-process secret, like the CDN's expiring signed URLs.

    `expires` is in epoch milliseconds, so tests can use sub-second lifetimes.
    """

    secret: bytes = field(default_factory=lambda: os.urandom(32))

    def _signature(self, sha256: str, expires: str) -> str:
        return hmac.new(self.secret, f"{sha256}:{expires}".encode(), hashlib.sha256).hexdigest()

    def query(self, sha256: str, ttl_s: float, clock_skew_s: float = 0.0) -> str:
        expires = str(int((time.time() + clock_skew_s + ttl_s) * 1000))
        return f"expires={expires}&sig={self._signature(sha256, expires)}"

    def is_authentic(self, sha256: str, expires: str, signature: str) -> bool:
        return expires.isdigit() and hmac.compare_digest(self._signature(sha256, expires), signature)

    @staticmethod
    def has_expired(expires: str, clock_skew_s: float = 0.0) -> bool:
        """Checked when a request arrives, so a download that started in time runs to its end."""
        return int(expires) < (time.time() + clock_skew_s) * 1000


def _knob(default: Any, help_text: str) -> Any:
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class Faults:
    """The fault knobs; the defaults make a healthy server.

    Each name is also a flag (`--hub-error-rate`), a `HubServerProcess` keyword argument and a `/_faults` key.
    """

    fault_seed: int = _knob(0, "seed of the one RNG behind every fault; setting it at runtime re-seeds")
    hub_error_rate: float = _knob(0.0, "share of resolve and /api/ requests answered with an error status")
    hub_error_statuses: tuple[int, ...] = _knob((429, 500), "statuses the Hub errors are drawn from")
    retry_after_s: int = _knob(1, "Retry-After (and RateLimit t=) on 429 and 503 answers")
    storage_error_rate: float = _knob(0.0, "share of storage GETs answered with an error status")
    storage_error_statuses: tuple[int, ...] = _knob((500, 503), "statuses the storage errors are drawn from")
    reset_after_bytes: int = _knob(
        0, "drop a storage connection after this many body bytes of the response; 0 = never"
    )
    reset_rate: float = _knob(1.0, "share of storage GETs longer than --reset-after-bytes that are cut")
    ignore_range: bool = _knob(False, "storage ignores Range and answers 200 with the whole file")
    fail_range_once_at: int = _knob(
        -1, "answer 500 to the first storage GET of each file whose Range starts at this byte; -1 = none"
    )
    url_ttl_s: float = _knob(float(SIGNED_URL_TTL_S), "lifetime of signed storage URLs, in seconds")
    clock_skew_s: float = _knob(
        0.0,
        "seconds added to the clock that signs and checks storage URLs: raising it ages every URL handed out",
    )
    storage_forbid_auth: bool = _knob(
        False, "storage answers 400 to any request with an Authorization header"
    )
    card: str = _knob("full", f"dataset card in the dataset info: {', '.join(CARD_MODES)}")
    redirect_location: str = _knob(
        "", "resolve redirects LFS files to this Location instead of storage (any text, even not a URL)"
    )
    portal_page: bool = _knob(
        False, "resolve answers LFS files with 200 and an HTML page, as a captive portal or proxy does"
    )
    latency_s: float = _knob(
        0.0,
        "seconds added before the first byte of every Hub and storage response (not /_stats, /_faults): "
        "a far-away endpoint; not a fault, but set like one",
    )

    def __post_init__(self) -> None:
        for name in ("hub_error_rate", "storage_error_rate", "reset_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be between 0 and 1")
        for name in ("hub_error_statuses", "storage_error_statuses"):
            statuses = getattr(self, name)
            if not statuses or not set(statuses) <= _ERROR_STATUSES:
                raise ValueError(f"{name} must be a non-empty list of HTTP error statuses (4xx, 5xx)")
        for name in ("retry_after_s", "reset_after_bytes", "url_ttl_s", "latency_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.card not in CARD_MODES:
            raise ValueError(f"card must be one of {', '.join(CARD_MODES)}")

    def updated(self, changes: object) -> Faults:
        """These faults with `changes` (a mapping from JSON or argparse) applied; ValueError if invalid."""
        if not isinstance(changes, Mapping):
            raise ValueError("faults must be a JSON object")
        defaults = {knob.name: knob.default for knob in fields(self)}
        unknown = sorted(set(changes) - set(defaults))
        if unknown:
            raise ValueError(f"unknown fault knobs: {', '.join(map(str, unknown))}")
        coerced = {name: _coerce(name, value, defaults[name]) for name, value in changes.items()}
        return dataclasses.replace(self, **coerced)

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _coerce(name: str, value: object, default: object) -> Any:
    """`value` as the type of the knob's `default` (JSON has lists, not tuples, and may write 1 for 1.0)."""
    if isinstance(default, tuple) and isinstance(value, list | tuple) and all(map(_is_int, value)):
        return tuple(value)
    if isinstance(default, bool) and isinstance(value, bool):
        return value
    if type(default) is int and _is_int(value):
        return value
    if type(default) is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if type(default) is str and isinstance(value, str):
        return value
    expected = "a list of integers" if isinstance(default, tuple) else f"of type {type(default).__name__}"
    raise ValueError(f"{name} must be {expected}")


@dataclass
class FaultInjector:
    """Decides from one seeded RNG which requests fail and how; the origins count what it injects."""

    settings: Faults
    rng: random.Random
    failed_ranges: set[str] = field(default_factory=set)
    """Files whose `fail_range_once_at` range has failed (reset whenever the faults change)."""

    @classmethod
    def seeded(cls, settings: Faults) -> FaultInjector:
        return cls(settings, random.Random(settings.fault_seed))

    def configure(self, changes: object) -> None:
        self.settings = self.settings.updated(changes)
        self.failed_ranges.clear()
        if isinstance(changes, Mapping) and "fault_seed" in changes:
            self.rng.seed(self.settings.fault_seed)

    def _happens(self, rate: float) -> bool:
        """A roll at `rate`; a sure outcome draws nothing, so a knob at 0 or 1 leaves other rolls alone."""
        return rate >= 1 or (rate > 0 and self.rng.random() < rate)

    def _retry_after(self, status: int) -> dict[str, str]:
        return {"Retry-After": str(self.settings.retry_after_s)} if status in {429, 503} else {}

    def hub_error(self) -> HubError | None:
        settings = self.settings
        if not self._happens(settings.hub_error_rate):
            return None
        status = self.rng.choice(settings.hub_error_statuses)
        headers = self._retry_after(status)
        if status == 429:
            headers["RateLimit"] = f'"resolvers";r=0;t={settings.retry_after_s}'
            headers["RateLimit-Policy"] = RATE_LIMIT_POLICY
        return HubError(status, None, f"{HTTPStatus(status).phrase} (injected fault)", headers)

    def storage_error(self) -> web.Response | None:
        settings = self.settings
        if not self._happens(settings.storage_error_rate):
            return None
        status = self.rng.choice(settings.storage_error_statuses)
        phrase = HTTPStatus(status).phrase
        code, message = STORAGE_ERRORS.get(status, (phrase.replace(" ", ""), phrase))
        return xml_error(status, code, message, self._retry_after(status))

    def failed_range(self, path: str, range_header: str | None) -> web.Response | None:
        """A 500 for the first GET of `path` whose Range starts at `fail_range_once_at`, else None."""
        at = self.settings.fail_range_once_at
        if at < 0 or path in self.failed_ranges or not (range_header or "").startswith(f"bytes={at}-"):
            return None
        self.failed_ranges.add(path)
        return xml_error(500, *STORAGE_ERRORS[500])

    def cut_after(self, length: int) -> int | None:
        """How many bytes of a `length`-byte body to send before dropping the connection (None: all)."""
        limit = self.settings.reset_after_bytes
        return limit if 0 < limit < length and self._happens(self.settings.reset_rate) else None


def xml_error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    """An error in the XML form S3 and CloudFront use."""
    error = f"<Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n{error}'
    return web.Response(status=status, text=body, content_type="application/xml", headers=headers)


@dataclass
class ServerState:
    repo: Repo
    page_size: int
    token: str | None
    pace_bytes_per_s: float
    faults: FaultInjector
    signer: UrlSigner = field(default_factory=UrlSigner)
    stats: Stats = field(default_factory=Stats)
    storage_url: str = ""
    """Set once the storage origin is bound."""

    def count_fault(self, kind: str) -> None:
        self.stats.faults_injected[kind] += 1

    @contextmanager
    def storage_body_in_flight(self) -> Iterator[None]:
        """Count a storage body response in flight while the block runs (and its peak)."""
        self.stats.storage_in_flight += 1
        self.stats.storage_peak_in_flight = max(
            self.stats.storage_peak_in_flight, self.stats.storage_in_flight
        )
        try:
            yield
        finally:
            self.stats.storage_in_flight -= 1  # the stats in force now: a reset carries the count over


def add_latency(app: web.Application, state: ServerState) -> None:
    """Hold every response of `app` for the `latency_s` knob before its first byte (status line) leaves.

    `on_response_prepare` runs for every response, streamed bodies and errors alike, so a storage body's
    pacing starts after the wait: a paced body of B bytes takes at least latency + B / pace. The control
    routes (`/_stats`, `/_faults`) answer at once.
    """

    async def delay(request: web.Request, response: web.StreamResponse) -> None:
        latency_s = state.faults.settings.latency_s
        if latency_s > 0 and not request.path.startswith("/_"):
            await asyncio.sleep(latency_s)

    app.on_response_prepare.append(delay)


# ------------------------------------------------------------------------------------------ byte serving


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, stop) for a single `bytes=` range, or None to send everything (no or ignorable header)."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", (header or "").strip())
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if not first:
        if int(last) == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - int(last)), size
    start = int(first)
    if start >= size:
        raise RangeNotSatisfiable
    stop = size if not last else min(int(last) + 1, size)
    return (start, stop) if stop > start else None


async def send_file(
    request: web.Request,
    path: Path,
    size: int,
    headers: dict[str, str],
    *,
    pace_bytes_per_s: float = 0,
    on_chunk: Callable[[int], None] = lambda n: None,
    honour_range: bool = True,
    cut_after: Callable[[int], int | None] = lambda length: None,
    on_end: Callable[[str], None] = lambda how: None,
) -> web.StreamResponse:
    """Answer 200/206/416 for `path`, streaming the body in chunks until done or the client leaves.

    `cut_after(body_length)` may name a byte count after which the connection is dropped mid-body;
    `on_end` is told how a GET's body ended (see `Stats.storage_body_ends`).
    """
    headers = {**headers, "Accept-Ranges": "bytes" if honour_range else "none"}
    try:
        byte_range = parse_range(request.headers.get("Range"), size) if honour_range else None
    except RangeNotSatisfiable:
        return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    start, stop = byte_range or (0, size)
    response = web.StreamResponse(status=200 if byte_range is None else 206, headers=headers)
    if byte_range is not None:
        response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    response.content_length = stop - start
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    cut = cut_after(stop - start)
    ended = await _stream_body(
        response, path, start, stop if cut is None else start + cut, pace_bytes_per_s, on_chunk
    )
    if cut is not None:
        ended = "cut" if ended == "complete" else ended
        await _drop_connection(request)
    on_end(ended)
    return response


async def _drop_connection(request: web.Request) -> None:
    """Close the connection once all that was written has left the process, short of Content-Length.

    Waiting for the write buffer makes the client get exactly the bytes counted as sent; closing under
    the response leaves no way to mistake the short body for a whole one.
    """
    transport = request.transport
    # Transports signal no "buffer empty" event (only pause/resume around the high-water mark): poll.
    while transport is not None and not transport.is_closing() and transport.get_write_buffer_size():  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    if transport is not None:
        transport.abort()


async def _stream_body(
    response: web.StreamResponse,
    path: Path,
    start: int,
    stop: int,
    pace_bytes_per_s: float,
    on_chunk: Callable[[int], None],
) -> str:
    """Send the body; how it ended: `complete`, `client_left` or `file_shrank`."""
    loop = asyncio.get_running_loop()
    began, sent = loop.time(), 0
    with path.open("rb") as f:
        f.seek(start)
        while sent < stop - start:
            chunk = f.read(min(CHUNK_SIZE, stop - start - sent))
            if not chunk:  # the file shrank under us: end the body short rather than spin
                return "file_shrank"
            if pace_bytes_per_s > 0:  # a chunk leaves once the link has had time to carry it, not before
                await asyncio.sleep(max(0.0, began + (sent + len(chunk)) / pace_bytes_per_s - loop.time()))
            try:
                await response.write(chunk)
            except ConnectionResetError:
                return "client_left"
            sent += len(chunk)
            on_chunk(len(chunk))
    return "complete"


# ------------------------------------------------------------------------------------------- hub origin


def _flag(value: str | None) -> bool:
    return (value or "").lower() in {"1", "true"}


def _raw_segments(request: web.Request, prefix: str) -> list[str]:
    """Still-encoded path segments after `prefix`, so `%2F` inside a segment is kept apart from `/`."""
    return request.rel_url.raw_path[len(prefix) :].split("/")


class HubOrigin:
    """The Hub's API and `resolve` routes for one dataset repo."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.repo = state.repo

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_hub_errors])
        app.router.add_get("/_stats", self.get_stats)
        app.router.add_post("/_stats/reset", self.reset_stats)
        app.router.add_get("/_faults", self.get_faults)
        app.router.add_post("/_faults", self.set_faults)
        app.router.add_get("/api/datasets/{tail:.*}", self.api_get)
        app.router.add_post("/api/datasets/{tail:.*}", self.api_post)
        app.router.add_get("/datasets/{tail:.*}", self.resolve)
        add_latency(app, self.state)
        return app

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.stats.as_json())

    async def reset_stats(self, request: web.Request) -> web.Response:
        self.state.stats = self.state.stats.reset()
        return web.Response(status=204)

    async def get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.faults.settings.as_json())

    async def set_faults(self, request: web.Request) -> web.Response:
        """Change the knobs named in the JSON body; the others keep their values."""
        try:
            self.state.faults.configure(await request.json())
        except ValueError as error:  # includes malformed JSON
            raise HubError(400, None, str(error)) from error
        return await self.get_faults(request)

    def _inject_fault(self) -> None:
        """Fail like a rate-limited or struggling Hub, before any other check (as the real one does)."""
        error = self.state.faults.hub_error()
        if error is not None:
            self.state.count_fault(f"hub_{error.status}")
            raise error

    # ----- access checks, in the Hub's order: bad token, unknown repo, gated repo, unknown revision

    def _repo_segments(self, request: web.Request, prefix: str) -> list[str]:
        """Check access to the repo named at the start of the path; return the raw segments after it."""
        segments = _raw_segments(request, prefix)
        authorization = request.headers.get("Authorization")
        self._check_credentials(authorization)
        id_parts = self.repo.repo_id.split("/")
        if [unquote(s) for s in segments[: len(id_parts)]] != id_parts:
            raise HubError(401, "RepoNotFound", "Repository not found")
        if self.state.token is not None and authorization is None:
            message = (
                f"Access to dataset {self.repo.repo_id} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in."
            )
            raise HubError(401, "GatedRepo", message)
        return segments[len(id_parts) :]

    def _check_credentials(self, authorization: str | None) -> None:
        token = self.state.token
        if token is None or authorization is None:
            return
        if not hmac.compare_digest(authorization.encode(), f"Bearer {token}".encode()):
            raise HubError(401, None, INVALID_CREDENTIALS)

    def _check_revision(self, raw_revision: str) -> None:
        revision = unquote(raw_revision)
        if revision not in {"main", "refs/heads/main", self.repo.commit}:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    # ----- API

    async def api_get(self, request: web.Request) -> web.Response:
        self.state.stats.api_requests += 1
        self._inject_fault()
        rest = self._repo_segments(request, "/api/datasets/")
        if rest in ([], [""]):
            return self._info(request, "main")
        if len(rest) == 2 and rest[0] == "revision":
            return self._info(request, rest[1])
        if len(rest) >= 2 and rest[0] == "tree":
            return self._tree(request, rest[1], unquote("/".join(rest[2:])).strip("/"))
        raise HubError(404, None, "Not Found")

    async def api_post(self, request: web.Request) -> web.Response:
        self.state.stats.api_requests += 1
        self._inject_fault()
        rest = self._repo_segments(request, "/api/datasets/")
        if len(rest) != 2 or rest[0] != "paths-info":
            raise HubError(404, None, "Not Found")
        self._check_revision(rest[1])
        form = await request.post()
        expand = _flag(str(form.get("expand", "")))
        paths = [str(p).strip("/") for p in form.getall("paths", [])]
        known = [p for p in paths if p in self.repo.files or (p and p in self.repo.directories)]
        return web.json_response([self._entry(p, expand) for p in known])

    def _info(self, request: web.Request, raw_revision: str) -> web.Response:
        self._check_revision(raw_revision)
        blobs = _flag(request.query.get("blobs"))
        repo = self.repo
        return web.json_response(
            {
                "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": repo.commit,
                "lastModified": LAST_MODIFIED,
                "createdAt": CREATED_AT,
                "private": False,
                "gated": "auto" if self.state.token is not None else False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": ["language:en", "license:odc-by"],
                **self._card(),
                "siblings": [self._sibling(file, blobs) for file in repo.files.values()],
                "usedStorage": sum(file.size for file in repo.files.values()),
            }
        )

    def _card(self) -> dict[str, Any]:
        """The `cardData` entry of the dataset info, as the `card` knob has it."""
        mode = self.state.faults.settings.card
        if mode == "none":
            return {}
        if mode == "no-configs":
            return {"cardData": {key: value for key, value in CARD_DATA.items() if key != "configs"}}
        if mode == "broken":
            return {"cardData": {**CARD_DATA, "configs": [{"config_name": "../en", "data_files": "en/*"}, 7]}}
        return {"cardData": CARD_DATA}

    @staticmethod
    def _sibling(file: RepoFile, blobs: bool) -> dict[str, Any]:
        if not blobs:
            return {"rfilename": file.path}
        sibling: dict[str, Any] = {"rfilename": file.path, "size": file.size, "blobId": file.oid}
        if file.pointer_size is not None:
            sibling["lfs"] = {"sha256": file.sha256, "size": file.size, "pointerSize": file.pointer_size}
        return sibling

    def _tree(self, request: web.Request, raw_revision: str, directory: str) -> web.Response:
        self._check_revision(raw_revision)
        paths = self.repo.entry_paths(directory, _flag(request.query.get("recursive")))
        if paths is None:
            raise HubError(404, "EntryNotFound", f"{directory} does not exist on {unquote(raw_revision)}")
        expand = _flag(request.query.get("expand"))
        page_size = min(self.state.page_size, EXPAND_PAGE_SIZE) if expand else self.state.page_size
        offset = _decode_cursor(request.query.get("cursor"))
        response = web.json_response([self._entry(p, expand) for p in paths[offset : offset + page_size]])
        if offset + page_size < len(paths):
            next_url = request.url.update_query(cursor=_encode_cursor(offset + page_size))
            response.headers["Link"] = f'<{next_url}>; rel="next"'
        return response

    def _entry(self, path: str, expand: bool) -> dict[str, Any]:
        """A tree entry as the Hub lists it (files need `path`, `size` and `oid`)."""
        file = self.repo.files.get(path)
        if file is None:
            entry: dict[str, Any] = {
                "type": "directory",
                "oid": self.repo.directories[path],
                "size": 0,
                "path": path,
            }
        else:
            entry = {"type": "file", "oid": file.oid, "size": file.size, "path": path}
            if file.pointer_size is not None:
                entry["lfs"] = {"oid": file.sha256, "size": file.size, "pointerSize": file.pointer_size}
        if expand:
            entry["lastCommit"] = {"id": self.repo.commit, "title": COMMIT_TITLE, "date": LAST_MODIFIED}
            if file is not None:
                entry["securityFileStatus"] = {
                    "status": "safe",
                    "avScan": {"status": "safe"},
                    "pickleImportScan": {"status": "unscanned", "pickleImports": []},
                }
        return entry

    # ----- resolve

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        self.state.stats.resolve_requests[request.method] += 1
        self._inject_fault()
        rest = self._repo_segments(request, "/datasets/")
        if len(rest) < 3 or rest[0] != "resolve":
            raise HubError(404, None, "Not Found")
        self._check_revision(rest[1])
        path = unquote("/".join(rest[2:]))
        commit_header = {"X-Repo-Commit": self.repo.commit}
        file = self.repo.files.get(path)
        if file is None:
            raise HubError(404, "EntryNotFound", "Entry not found", commit_header)
        if file.pointer_size is None:
            headers = {**commit_header, "ETag": f'"{file.oid}"', "Content-Type": "text/plain; charset=utf-8"}
            return await send_file(request, self.repo.root / path, file.size, headers)
        settings = self.state.faults.settings
        if settings.portal_page:
            self.state.count_fault("portal_page")
            page = "<!DOCTYPE html><html><head><title>Sign in</title></head><body>Log in</body></html>"
            return web.Response(status=200, text=page, content_type="text/html")
        if settings.redirect_location:
            self.state.count_fault("redirect_location")
            return web.Response(status=302, headers={"Location": settings.redirect_location})
        return self._redirect_to_storage(file)

    def _redirect_to_storage(self, file: RepoFile) -> web.Response:
        name = quote(file.path.rsplit("/", 1)[-1])
        settings = self.state.faults.settings
        query = self.state.signer.query(file.sha256, settings.url_ttl_s, settings.clock_skew_s)
        location = f"{self.state.storage_url}/cdn/{file.sha256}/{name}?{query}"
        headers = {
            "Location": location,
            "X-Repo-Commit": self.repo.commit,
            "X-Linked-Etag": f'"{file.sha256}"',
            "X-Linked-Size": str(file.size),
            "ETag": f'"{file.oid}"',
        }
        return web.Response(status=302, text=f"Found. Redirecting to {location}", headers=headers)


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def _decode_cursor(cursor: str | None) -> int:
    if cursor is None:
        return 0
    try:
        offset = json.loads(base64.urlsafe_b64decode(cursor.encode()))["offset"]
    except (ValueError, KeyError, TypeError) as error:
        raise HubError(400, None, "Invalid cursor") from error
    if not isinstance(offset, int) or offset < 0:
        raise HubError(400, None, "Invalid cursor")
    return offset


@web.middleware
async def _hub_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
    except HubError as error:
        return error.response()
    return response


# --------------------------------------------------------------------------------------- storage origin


class StorageOrigin:
    """The CDN: serves LFS blobs by sha256 from signed, expiring URLs."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.blobs = {f.sha256: f for f in state.repo.files.values() if f.pointer_size is not None}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/cdn/{sha256}/{name}", self.blob)
        add_latency(app, self.state)
        return app

    async def blob(self, request: web.Request) -> web.StreamResponse:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        file = self.blobs.get(request.match_info["sha256"])
        if file is None:
            return web.Response(status=404, text="Not Found")
        stats, faults = self.state.stats, self.state.faults
        if request.method == "GET":
            stats.storage_get_requests += 1
            stats.storage_get_requests_by_path[file.path] += 1
            error = faults.storage_error() or faults.failed_range(file.path, request.headers.get("Range"))
            if error is not None:
                self.state.count_fault(f"storage_{error.status}")
                return error
        honour_range = not faults.settings.ignore_range
        if not honour_range and "Range" in request.headers:
            self.state.count_fault("ignored_range")

        def count(n: int) -> None:
            self.state.stats.storage_body_bytes += n
            self.state.stats.storage_body_bytes_by_path[file.path] += n

        def cut_after(length: int) -> int | None:
            cut = self.state.faults.cut_after(length)
            if cut is not None:
                self.state.count_fault("reset")
            return cut

        def ended(how: str) -> None:
            self.state.stats.storage_body_ends[how] += 1

        in_flight = self.state.storage_body_in_flight() if request.method == "GET" else nullcontext()
        with in_flight:
            return await send_file(
                request,
                self.state.repo.root / file.path,
                file.size,
                {"ETag": f'"{file.sha256}"', "Content-Type": "application/octet-stream"},
                pace_bytes_per_s=self.state.pace_bytes_per_s,
                on_chunk=count,
                honour_range=honour_range,
                cut_after=cut_after,
                on_end=ended,
            )

    def _refusal(self, request: web.Request) -> web.Response | None:
        """The CDN's refusals: an Authorization header (when forbidden), a bad signature, an expired URL."""
        if "Authorization" in request.headers:
            self.state.stats.storage_auth_headers_seen += 1
            if self.state.faults.settings.storage_forbid_auth:
                self.state.count_fault("auth_forbidden")
                return xml_error(400, "InvalidArgument", AUTH_CONFLICT)
        signer, expires = self.state.signer, request.query.get("expires", "")
        if not signer.is_authentic(request.match_info["sha256"], expires, request.query.get("sig", "")):
            return xml_error(403, "AccessDenied", "Access denied")
        if signer.has_expired(expires, self.state.faults.settings.clock_skew_s):
            self.state.count_fault("expired_url")
            return xml_error(403, "AccessDenied", "Request has expired")
        return None


# --------------------------------------------------------------------------------------------- process


async def _start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound_port = runner.addresses[0][1]
    return runner, f"http://{host}:{bound_port}"


async def serve(args: argparse.Namespace) -> None:
    repo = load_repo(args.root, args.repo_id)
    faults = FaultInjector.seeded(args.faults)
    state = ServerState(repo, args.page_size, args.token, args.pace_bytes_per_s, faults)
    storage_runner, state.storage_url = await _start(
        StorageOrigin(state).app(), args.storage_host, args.storage_port
    )
    hub_runner, endpoint = await _start(HubOrigin(state).app(), args.host, args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    ready = {
        "endpoint": endpoint,
        "storage": state.storage_url,
        "commit": repo.commit,
        "repo_id": repo.repo_id,
    }
    print(json.dumps(ready), flush=True)  # only once signals are handled, so a stop right after is clean
    await stop.wait()
    await hub_runner.cleanup()
    await storage_runner.cleanup()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--root", type=Path, required=True, help="directory to serve as the repo")
    parser.add_argument("--repo-id", default=DEFAULT_REPO_ID)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 lets the OS choose")
    parser.add_argument("--storage-host", default="127.0.0.1")
    parser.add_argument("--storage-port", type=int, default=0)
    parser.add_argument("--page-size", type=int, default=DEFAULT_PAGE_SIZE, help="tree listing page size")
    parser.add_argument("--token", default=None, help="gate the repo behind this bearer token")
    parser.add_argument("--pace-bytes-per-s", type=float, default=0.0, help="storage send rate; 0 = unpaced")
    _add_fault_flags(parser)
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        parser.error(f"--root {args.root} is not a directory")
    if args.page_size < 1:
        parser.error("--page-size must be at least 1")
    try:
        args.faults = Faults().updated({knob.name: getattr(args, knob.name) for knob in fields(Faults)})
    except ValueError as error:
        parser.error(str(error))
    return args


def _cli_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_fault_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "faults", "injected failures; change them at runtime with POST /_faults"
    )
    for knob in fields(Faults):
        default, help_text = knob.default, knob.metadata["help"]
        if isinstance(default, bool):
            group.add_argument(_cli_flag(knob.name), action="store_true", help=help_text)
        elif isinstance(default, tuple):
            group.add_argument(
                _cli_flag(knob.name),
                type=int,
                nargs="+",
                default=list(default),
                metavar="STATUS",
                help=help_text,
            )
        else:
            group.add_argument(_cli_flag(knob.name), type=type(default), default=default, help=help_text)


def fault_flags(faults: Faults) -> list[str]:
    """The flags that launch a server with `faults` (only those that differ from the defaults)."""
    flags: list[str] = []
    defaults = Faults()
    for name, value in faults.as_json().items():
        if value == getattr(defaults, name):
            continue
        if isinstance(value, bool):  # a flag that is only ever switched on
            flags.append(_cli_flag(name))
        elif isinstance(value, tuple):
            flags += [_cli_flag(name), *map(str, value)]
        else:
            flags += [_cli_flag(name), str(value)]
    return flags


def main(argv: Sequence[str] | None = None) -> None:
    asyncio.run(serve(parse_args(argv)))


# ---------------------------------------------------------------------------------------------- launcher


class HubServerProcess:
    """Runs the server in a subprocess for tests and demos.

    ```
    with HubServerProcess(repo.root, page_size=2, hub_error_rate=0.1) as hub:
        HfApi(endpoint=hub.endpoint).list_repo_tree(hub.repo_id, repo_type="dataset")
        hub.stats()["storage_body_bytes"]
        hub.set_faults(hub_error_rate=0, reset_after_bytes=1_000_000)
    ```

    The fault keyword arguments are the knobs of `Faults`, checked here before anything starts.
    """

    def __init__(
        self,
        root: Path,
        *,
        repo_id: str = DEFAULT_REPO_ID,
        page_size: int = DEFAULT_PAGE_SIZE,
        token: str | None = None,
        storage_host: str = "127.0.0.1",
        pace_bytes_per_s: float = 0.0,
        fault_seed: int = Faults.fault_seed,
        hub_error_rate: float = Faults.hub_error_rate,
        hub_error_statuses: Sequence[int] = Faults.hub_error_statuses,
        retry_after_s: int = Faults.retry_after_s,
        storage_error_rate: float = Faults.storage_error_rate,
        storage_error_statuses: Sequence[int] = Faults.storage_error_statuses,
        reset_after_bytes: int = Faults.reset_after_bytes,
        reset_rate: float = Faults.reset_rate,
        ignore_range: bool = Faults.ignore_range,
        url_ttl_s: float = Faults.url_ttl_s,
        storage_forbid_auth: bool = Faults.storage_forbid_auth,
        card: str = Faults.card,
        latency_s: float = Faults.latency_s,
        startup_timeout_s: float = 20.0,
    ) -> None:
        self.repo_id = repo_id
        faults = Faults(
            fault_seed=fault_seed,
            hub_error_rate=hub_error_rate,
            hub_error_statuses=tuple(hub_error_statuses),
            retry_after_s=retry_after_s,
            storage_error_rate=storage_error_rate,
            storage_error_statuses=tuple(storage_error_statuses),
            reset_after_bytes=reset_after_bytes,
            reset_rate=reset_rate,
            ignore_range=ignore_range,
            url_ttl_s=url_ttl_s,
            storage_forbid_auth=storage_forbid_auth,
            card=card,
            latency_s=latency_s,
        )
        self._args = ["--root", str(root), "--repo-id", repo_id, "--page-size", str(page_size)]
        self._args += ["--storage-host", storage_host, "--pace-bytes-per-s", str(pace_bytes_per_s)]
        self._args += fault_flags(faults)
        if token is not None:
            self._args += ["--token", token]
        self._startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._ready: dict[str, str] = {}
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def endpoint(self) -> str:
        return self._ready["endpoint"]

    @property
    def storage(self) -> str:
        return self._ready["storage"]

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the Hub server is not running")
        return self._process.pid

    @property
    def commit(self) -> str:
        return self._ready["commit"]

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - outlives this method; closed by stop()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "scripts.hub_server", *self._args],
            cwd=_REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        try:
            self._ready = json.loads(self._read_ready_line())
        except BaseException:
            self.stop()
            raise

    def _read_ready_line(self) -> bytes:
        process = self._process
        assert process is not None
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], self._startup_timeout_s)
        line = process.stdout.readline() if readable else b""
        if not line:
            process.kill()
            process.wait()
            raise RuntimeError(
                f"hub server did not start (exit code {process.returncode}):\n{self._stderr_text()}"
            )
        return line

    def _stderr_text(self) -> str:
        assert self._stderr is not None
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 5 s. Returns the exit code (0 when clean), or None if not running."""
        process, self._process = self._process, None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
        return process.returncode

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One control request to the Hub origin; the decoded JSON answer, or None when there is none."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.endpoint}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(request, timeout=10) as response:
                return json.load(response) if response.status != 204 else None
        except urllib.error.HTTPError as error:
            if error.code == 400:
                raise ValueError(json.load(error)["error"]) from error
            raise

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self._call("GET", "/_stats")
        return stats

    def reset_stats(self) -> None:
        self._call("POST", "/_stats/reset")

    def faults(self) -> dict[str, Any]:
        """The fault knobs in force, as `GET /_faults` shows them."""
        faults: dict[str, Any] = self._call("GET", "/_faults")
        return faults

    def set_faults(self, **changes: Any) -> dict[str, Any]:
        """Change the named knobs of the running server (ValueError if invalid); returns them all."""
        faults: dict[str, Any] = self._call("POST", "/_faults", changes)
        return faults

    def clear_faults(self) -> None:
        """Back to a healthy server (and the RNG re-seeded with the default seed)."""
        self.set_faults(**Faults().as_json())


if __name__ == "__main__":
    main()
