"""The Hugging Face Hub as a source of C4 shards: one commit, its shard list, and their bytes.

Metadata goes through `huggingface_hub` (so `HF_ENDPOINT`, `HF_TOKEN` and a cached login work as
everywhere else); shard bodies are streamed with aiohttp from the storage URL that `resolve`
redirects to. The Hub's `Authorization` header is sent to the Hub origin only, never to storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import threading
import time
import urllib.request
import weakref
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import aiofiles
import aiohttp
import httpx2
from huggingface_hub import HfApi, constants, hf_hub_download, hf_hub_url, set_client_factory
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import DatasetInfo, RepoFile
from huggingface_hub.utils._headers import build_hf_headers

from ._version import __version__
from .errors import CorruptShardError, RangeIgnoredError, RetryableError, SourceError
from .rate import RateLimit
from .readahead import DEFAULT_DOWNLOAD_CONNECTIONS, ReadAhead
from .redact import display_url
from .retry import RETRYABLE_STATUSES, RetryBudget, retry_after_seconds
from .variants import Variant, Variants, glob_folders, pick_variant, shard_pattern, variants_to_use

__all__ = ["CHUNK_BYTES", "HUB_TIMEOUT_S", "HubSource", "Shard", "install_hub_client"]

CHUNK_BYTES = 1 << 19
HUB_CONNECT_TIMEOUT_S = 10.0
HUB_TIMEOUT_S = 30.0
"""Longest wait for a connection, and for any byte of an answer, from the Hub or its storage."""
HUB_CALL_TIMEOUT_S = 120.0
"""Longest a metadata call may take in all (a listing walks pages); then it counts as failed and retried."""
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_GZIP_MAGIC = b"\x1f\x8b"
_T = TypeVar("_T")

log = logging.getLogger("aioc4")


@dataclass(frozen=True, slots=True)
class Shard:
    """One `json.gz` file of a split, addressed by its path in the repo."""

    path: str
    index: int
    size: int
    sha256: str | None = None  # the LFS object id, when the listing gives one


class HubSource:
    """Reads one dataset repo at one commit. Use as an async context manager.

    Every Hub call and every shard transfer is retried under one `RetryBudget`; a transfer that
    drops resumes with `Range` from the byte already received, so the decompressor downstream
    sees each byte exactly once. A signed storage URL is kept per shard (one `resolve` per shard)
    and resolved again if storage refuses it (expired links answer 403 or 410).
    """

    def __init__(
        self,
        repo_id: str,
        *,
        endpoint: str | None = None,
        cache_dir: Path | None = None,
        budget: RetryBudget | None = None,
        timeout_s: float = HUB_TIMEOUT_S,
        session: aiohttp.ClientSession | None = None,
        rate: RateLimit | None = None,
        connections: int = DEFAULT_DOWNLOAD_CONNECTIONS,
    ) -> None:
        self.repo_id = repo_id
        self.rate = rate  # --max-download-rate, shared by every transfer of the run
        # how many ranges the link needs, learned once per run: a bulk pull's next shard starts there
        self.read_ahead = ReadAhead(max_connections=connections)
        self.timeout_s = timeout_s
        self.call_limit_s = max(HUB_CALL_TIMEOUT_S, 4 * timeout_s)  # a listing may walk many pages
        self.endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
        self.shown_endpoint = display_url(self.endpoint)  # what messages say: never a password
        self.cache_dir = cache_dir
        self.budget = budget or RetryBudget()
        self._api = HfApi(endpoint=self.endpoint, library_name="aioc4", library_version=__version__)
        self._hub_headers = build_hf_headers(library_name="aioc4", library_version=__version__)
        self._storage_urls: dict[str, str] = {}
        self._resolving: dict[str, asyncio.Lock] = {}
        self._redirected: dict[str, bool] = {}
        self._cards: dict[str, Mapping[str, Any] | None] = {}
        self._session = session  # the transport seam: an injected session is used, never closed here
        self._owns_session = session is None

    async def __aenter__(self) -> HubSource:
        if self._owns_session:
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=min(HUB_CONNECT_TIMEOUT_S, self.timeout_s), sock_read=self.timeout_s
            )
            # trust_env: HTTP(S)_PROXY and NO_PROXY, as huggingface_hub's own client honours them
            self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False, trust_env=True)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
            self._session = None

    # -- metadata ---------------------------------------------------------------------------------

    async def resolve_commit(self, revision: str) -> str:
        """The commit sha `revision` points at now; every shard is then read at that sha."""
        info = await self._call_hub(
            lambda: self._api.dataset_info(self.repo_id, revision=revision, timeout=self.timeout_s), revision
        )
        if info.sha:
            self._cards[info.sha] = _card_of(info)  # the card at that commit: no second request for it
        return info.sha or revision  # a Hub that does not name the commit: read at the revision itself

    async def variants(self, commit: str) -> Variants:
        """The configs the dataset card declares at `commit`, or the built-in table if it declares none."""
        if commit not in self._cards:
            info = await self._call_hub(
                lambda: self._api.dataset_info(self.repo_id, revision=commit, timeout=self.timeout_s), commit
            )
            self._cards[commit] = _card_of(info)
        variants = variants_to_use(self._cards[commit])
        if not variants.from_card:
            log.warning("the dataset card declares no usable configs: using aioc4's built-in table")
        return variants

    async def list_shards(self, commit: str, config_name: str, split: str) -> list[Shard]:
        """The split's shards in reading order; an unknown config is a UsageError (before any download)."""
        variant = pick_variant(await self.variants(commit), config_name, split)
        globs = variant.globs(split)
        folder = glob_folders(globs)[0][0]  # named if it does not exist (C4's configs each have one folder)
        shards = await self._call_hub(lambda: self._listing(commit, variant, split), commit, folder=folder)
        if not shards:
            raise SourceError(
                f"no {split} shards of config {config_name!r} ({', '.join(globs)}) in {self.repo_id} "
                f"at {commit[:12]}"
            )
        return shards

    def _listing(self, commit: str, variant: Variant, split: str) -> list[Shard]:
        """Blocking: list the globs' folders; keep files matching a glob, in (glob, shard number) order."""
        globs = variant.globs(split)
        pattern = shard_pattern(globs)
        found: dict[str, tuple[tuple[int, int, int], Shard]] = {}
        for folder, recursive in glob_folders(globs):
            entries = self._api.list_repo_tree(
                self.repo_id,
                path_in_repo=folder or None,
                recursive=recursive,
                repo_type="dataset",
                revision=commit,
            )
            for entry in entries:
                if isinstance(entry, RepoFile) and (key := pattern.key(entry.path)) is not None:
                    sha256 = entry.lfs.sha256 if entry.lfs is not None else None
                    found[entry.path] = (key, Shard(entry.path, key[1], entry.size, sha256))
        ordered = sorted(found.values(), key=lambda item: (item[0], item[1].path))
        totals = [key[2] for key, _ in ordered if key[2]]
        if totals:  # every shard of a split says how many there are: one that disagrees is not the split's
            usual = max(set(totals), key=totals.count)
            strays = [shard.path for key, shard in ordered if key[2] not in (0, usual)]
            if strays:
                log.warning(
                    "ignoring %d file(s) numbered as another split: %s", len(strays), ", ".join(strays[:3])
                )
            ordered = [(key, shard) for key, shard in ordered if key[2] in (0, usual)]
        if len(globs) == 1:  # shards are known by the number in their names (bulk part names use it)
            return [shard for _, shard in ordered]
        return [replace(shard, index=position) for position, (_, shard) in enumerate(ordered)]

    async def _call_hub(
        self,
        call: Callable[[], _T],
        revision: str,
        folder: str | None = None,
        *,
        unbounded: bool = False,
    ) -> _T:
        """Run a blocking huggingface_hub call in a thread, retrying what is worth retrying.

        The thread is a daemon that nobody waits for: a stop (a signal, a cancelled task) returns at
        once even while the call is blocked on a silent server. A call that times out (the client's
        own timeouts, or `call_limit_s` in all unless `unbounded`, as a whole-file download is) is a
        failed attempt, and the time it took counts against the retry budget like a wait.
        """
        limit_s = None if unbounded else self.call_limit_s
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                return await asyncio.wait_for(_in_daemon_thread(call), limit_s)
            except HfHubHTTPError as exc:
                status = exc.response.status_code if exc.response is not None else None
                if status not in RETRYABLE_STATUSES:
                    raise self._describe(exc, revision, folder) from None
                failure = RetryableError(f"the Hub answered HTTP {status}", _retry_after(exc))
            except LocalEntryNotFoundError as exc:  # hf_hub_download could not reach the Hub
                failure = RetryableError(self._unreachable(_first_line(str(exc))))
            except EntryNotFoundError as exc:
                raise SourceError(
                    f"cannot fetch from the Hub at {self.shown_endpoint}: {_first_line(str(exc))}"
                ) from None
            except TimeoutError:
                self.budget.spend(time.monotonic() - started)
                failure = RetryableError(self._unreachable(f"no answer within {limit_s or 0:.0f} s"))
            except (httpx2.TimeoutException, OSError) as exc:  # OSError: socket errors below httpx
                self.budget.spend(time.monotonic() - started)
                failure = RetryableError(self._unreachable(_first_line(str(exc)) or type(exc).__name__))
            except httpx2.UnsupportedProtocol as exc:  # e.g. a redirect to ftp:// or file://
                raise SourceError(
                    f"the Hub at {self.shown_endpoint} sent aioc4 to an unusable URL ({exc})"
                ) from None
            except httpx2.TransportError as exc:  # refused, reset, protocol errors: the network
                failure = RetryableError(self._unreachable(_first_line(str(exc)) or type(exc).__name__))
            attempt += 1
            await self._wait_or_give_up(attempt, failure, what=f"{self.repo_id}@{revision}")

    def _unreachable(self, reason: str) -> str:
        return f"cannot reach the Hub at {self.shown_endpoint} ({reason}): check HF_ENDPOINT and the network"

    async def _wait_or_give_up(self, attempt: int, failure: RetryableError, *, what: str) -> None:
        delay = self.budget.next_delay(attempt, failure.retry_after_s)
        if delay is None:
            raise SourceError(
                f"{failure.reason} ({what}: gave up after {attempt} attempt(s), "
                f"{self.budget.waited_s:.1f} s of retry waits in this run)"
            )
        log.warning("%s: %s; retry %d in %.1f s", what, failure.reason, attempt, delay)
        await asyncio.sleep(delay)

    def _describe(self, exc: HfHubHTTPError, revision: str, folder: str | None) -> SourceError:
        repo = f"dataset {self.repo_id!r}"
        status = exc.response.status_code if exc.response is not None else None
        if isinstance(exc, GatedRepoError):
            return SourceError(f"{repo} is gated: set HF_TOKEN to a token with access to it")
        if isinstance(exc, RepositoryNotFoundError):
            return SourceError(
                f"{repo} not found at {self.shown_endpoint} (if it is private or gated, set HF_TOKEN)"
            )
        if isinstance(exc, RevisionNotFoundError):
            return SourceError(f"revision {revision!r} not found in {repo}")
        if isinstance(exc, EntryNotFoundError):
            return SourceError(f"{folder}/ does not exist in {repo} at {revision!r}")
        if status in (401, 403):
            return SourceError(_auth_message(status, repo))
        return SourceError(f"the Hub answered HTTP {status} for {repo}: {_first_line(str(exc))}")

    # -- bodies -----------------------------------------------------------------------------------

    async def stream(
        self, shard: Shard, commit: str, start: int = 0, end: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """Bytes `start` to `end` (default: the end) of the shard, each exactly once, resuming after
        drops; stop iterating to stop.

        Without `end`, a storage host that ignores `Range` still works (the bytes before `start` are
        skipped). With `end` (one range of several read at once), such a host raises
        `RangeIgnoredError` instead, so the caller can fall back to one stream.
        """
        stop = shard.size if end is None else end
        received = start
        attempt = 0
        while True:
            response: aiohttp.ClientResponse | None = None
            started, sent = time.monotonic(), 0
            try:
                response = await self._open_at(shard, commit, received, None if end is None else stop)
                if response.status == 200 and end is not None and (start, stop) != (0, shard.size):
                    raise RangeIgnoredError(shard.path)  # the caller reads the shard as one stream
                skip = received if response.status == 200 else 0  # a server that ignored Range
                async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                    sent += len(chunk)
                    if received == 0 and skip == 0 and not chunk.startswith(_GZIP_MAGIC[: len(chunk)]):
                        raise SourceError(_not_gzip(shard, response, chunk))
                    if skip:
                        chunk, skip = chunk[skip:], max(0, skip - len(chunk))
                        if not chunk:
                            continue
                    received += len(chunk)
                    if received > stop:
                        if end is None:
                            raise CorruptShardError(
                                f"{shard.path}: storage sent more than the {shard.size:,} bytes the Hub lists"
                            )
                        raise CorruptShardError(f"{shard.path}: storage sent more than the range asked for")
                    attempt = 0  # progress: the next failure starts a fresh count
                    if self.rate is not None:
                        await self.rate.take(len(chunk))
                    yield chunk
                if received >= stop:
                    return
                failure = RetryableError(f"body ended at byte {received:,} of {stop:,}")
            except RetryableError as exc:
                failure = exc
            except (aiohttp.ClientError, TimeoutError) as exc:
                if isinstance(exc, TimeoutError):  # a silent storage host uses up the budget too
                    self.budget.spend(self.timeout_s)
                failure = RetryableError(
                    f"connection lost at byte {received:,} ({exc or type(exc).__name__})"
                )
            finally:
                if response is not None:
                    _log_storage_request(response, sent, time.monotonic() - started)
                    response.close()  # drops the connection if the body was not read to the end
            if failure.at_once:
                log.warning("%s: %s", shard.path, failure.reason)
                continue
            attempt += 1
            await self._wait_or_give_up(attempt, failure, what=shard.path)

    def redirects_to_storage(self, shard: Shard) -> bool | None:
        """Whether the Hub sent the shard's bytes from a storage host it redirected to (then more
        ranges of it cost no `resolve`) or served them itself; None until a first answer came."""
        return self._redirected.get(shard.path)

    def storage_url(self, shard: Shard) -> str | None:
        """The signed storage URL the Hub redirected the shard to, once a range came from there: a
        capability for that one file, carrying no token (None while the Hub serves it itself, or before
        it answered)."""
        return self._storage_urls.get(shard.path) if self._redirected.get(shard.path) else None

    async def _open_at(
        self, shard: Shard, commit: str, offset: int, stop: int | None = None
    ) -> aiohttp.ClientResponse:
        """A response whose body continues the shard at `offset` up to `stop` (206), or holds all of
        it (200).

        Redirects are followed by hand: the Hub's headers (with the token) go to the Hub origin
        only, never to the storage host it redirects to, and only to http(s) URLs. One range at a
        time resolves a shard: others wait for its storage URL instead of asking the Hub again.
        """
        if shard.path in self._storage_urls:
            return await self._request_at(shard, commit, offset, stop)
        lock = self._resolving.setdefault(shard.path, asyncio.Lock())
        async with lock:
            return await self._request_at(shard, commit, offset, stop)

    async def _request_at(
        self, shard: Shard, commit: str, offset: int, stop: int | None
    ) -> aiohttp.ClientResponse:
        session = self._require_session()
        url = self._storage_urls.get(shard.path) or hf_hub_url(
            self.repo_id, shard.path, repo_type="dataset", revision=commit, endpoint=self.endpoint
        )
        resolved_now = False  # the storage URL came from the Hub in this call (not one kept from before)
        for _ in range(_MAX_REDIRECTS):
            on_hub = _same_origin(url, self.endpoint)
            headers = dict(self._hub_headers if on_hub else _without_auth(self._hub_headers))
            if offset or stop is not None:
                headers["Range"] = f"bytes={offset}-{'' if stop is None else stop - 1}"
            started = time.monotonic()
            response = await session.get(url, headers=headers, allow_redirects=False)
            if response.status in (200, 206):
                self._redirected[shard.path] = not on_hub
                return response
            _log_storage_request(response, 0, time.monotonic() - started)
            response.release()
            if response.status in _REDIRECTS:
                url = _redirect_target(url, response.headers.get("Location", ""), shard)
                if not _same_origin(url, self.endpoint):
                    self._storage_urls[shard.path] = url
                    resolved_now = True
                continue
            if not on_hub and response.status in (401, 403, 410):
                # an expired or revoked signed URL: resolve again (unless another range already
                # dropped or replaced it: then this one waits for, or takes, the new URL)
                if self._storage_urls.get(shard.path) == url:
                    del self._storage_urls[shard.path]
                # one kept from before has expired: a fresh one now; one the Hub just gave: wait first
                raise RetryableError(
                    f"storage refused the signed URL (HTTP {response.status}); resolving again",
                    0,
                    at_once=not resolved_now,
                )
            if response.status in RETRYABLE_STATUSES:
                raise RetryableError(
                    f"HTTP {response.status} from {_origin(url)}", retry_after_seconds(response.headers)
                )
            if response.status == 416:
                raise CorruptShardError(
                    f"{shard.path}: storage holds fewer than the {shard.size:,} bytes the Hub lists "
                    f"(HTTP 416 for the bytes from {offset:,})"
                )
            error_code = response.headers.get("X-Error-Code", "")
            raise SourceError(_http_failure(response.status, error_code, f"{self.repo_id}/{shard.path}"))
        raise SourceError(f"{shard.path}: more than {_MAX_REDIRECTS} redirects")

    async def download(self, shard: Shard, commit: str) -> Path:
        """The whole shard in the Hub cache (`--cache-dir` or the standard one); cached files are reused
        once their size (and SHA-256, when the listing gives it) match the listing: a truncated or
        damaged cache file is downloaded again."""

        def fetch(force: bool) -> str:
            return hf_hub_download(
                self.repo_id,
                shard.path,
                repo_type="dataset",
                revision=commit,
                cache_dir=self.cache_dir,
                force_download=force,
                endpoint=self.endpoint,
                library_name="aioc4",
                library_version=__version__,
            )

        for force in (False, True):
            path = Path(await self._call_hub(functools.partial(fetch, force), commit, unbounded=True))
            problem = await asyncio.to_thread(_cache_problem, path, shard)
            if problem is None:
                return path
            log.warning("%s in the Hub cache %s: downloading it again", shard.path, problem)
        raise CorruptShardError(f"{shard.path}: the downloaded file {problem}")

    async def read_cached(self, path: Path) -> AsyncGenerator[bytes, None]:
        """A cached shard's compressed bytes in chunks."""
        async with aiofiles.open(path, "rb") as file:
            while chunk := await file.read(CHUNK_BYTES):
                yield chunk

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("HubSource is used outside 'async with'")
        return self._session


def _not_gzip(shard: Shard, response: aiohttp.ClientResponse, first: bytes) -> str:
    """What came instead of a gzip'd shard (an HTML error page, a captive portal): said once, no retry."""
    kind = response.headers.get("Content-Type", "no content type")
    return (
        f"{shard.path}: {_origin(str(response.url))} answered HTTP {response.status} ({kind}) with bytes "
        f"that are not gzip (they start {first[:16]!r})"
    )


def _redirect_target(url: str, location: str, shard: Shard) -> str:
    """Where a redirect points; anything but an http(s) URL is refused (no retry)."""
    try:
        target = urljoin(url, location)
        parts = urlsplit(target)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        valid = False
    if not valid:
        raise SourceError(
            f"{shard.path}: the Hub redirected to an unusable URL ({display_url(location)[:200]!r})"
        )
    return target


def _cache_problem(path: Path, shard: Shard) -> str | None:
    """Blocking: why a cached shard does not match the listing, or None."""
    size = path.stat().st_size
    if size != shard.size:
        return f"has {size:,} bytes, the Hub lists {shard.size:,}"
    if shard.sha256 is not None:
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            while block := file.read(1 << 20):
                digest.update(block)
        if digest.hexdigest() != shard.sha256:
            return "does not match the SHA-256 the Hub lists"
    return None


def _log_storage_request(response: aiohttp.ClientResponse, sent: int, seconds: float) -> None:
    if log.isEnabledFor(logging.DEBUG):
        url = response.url.with_query(None)
        asked = response.request_info.headers.get("Range")
        shown = f"GET {url} ({asked})" if asked else f"GET {url}"
        log.debug("%s -> %d, %d bytes, %.3f s", shown, response.status, sent, seconds)


def _auth_message(status: int, what: str) -> str:
    if status == 401:
        return f"the Hub refused {what} (HTTP 401): HF_TOKEN is missing or invalid"
    return f"the Hub refused {what} (HTTP 403): HF_TOKEN has no access to it"


def _http_failure(status: int, error_code: str, what: str) -> str:
    if error_code == "GatedRepo":
        return f"{what} is gated: set HF_TOKEN to a token with access to it"
    if error_code == "RepoNotFound":
        return f"{what}: repo not found (if it is private or gated, set HF_TOKEN)"
    if error_code == "RevisionNotFound":
        return f"{what}: revision not found"
    if status in (401, 403):
        return _auth_message(status, what)
    if status == 404:
        return f"{what}: not found on the Hub (HTTP 404)"
    if status == 429:
        return f"{what}: the Hub is rate-limiting requests (HTTP 429); try again later"
    return f"{what}: HTTP {status} from the Hub"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _same_origin(first: str, second: str) -> bool:
    return _origin(first) == _origin(second)


def _without_auth(headers: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name.lower() != "authorization"}


def _card_of(info: DatasetInfo) -> Mapping[str, Any] | None:
    """The part of the card aioc4 reads (its YAML header's `configs`)."""
    return {"configs": info.card_data.get("configs")} if info.card_data is not None else None


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def _retry_after(exc: HfHubHTTPError) -> float | None:
    return retry_after_seconds(exc.response.headers) if exc.response is not None else None


async def _in_daemon_thread(call: Callable[[], _T]) -> _T:
    """`call()` in a daemon thread of its own. Unlike `asyncio.to_thread`, nothing ever waits for the
    thread: neither a cancelled caller nor the loop's shutdown nor the interpreter's exit, so a call
    blocked on a silent server cannot hold up a stop. (A blocked call ends by the client's timeouts.)"""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[_T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not done.done():
            outcome()

    def work() -> None:
        try:
            result = call()
        except BaseException as exc:  # handed to the awaiting task, which re-raises it
            error = exc
            _call_soon(loop, lambda: settle(lambda: done.set_exception(error)))
        else:
            _call_soon(loop, lambda: settle(lambda: done.set_result(result)))

    threading.Thread(target=work, name="aioc4-hub", daemon=True).start()
    return await done


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: the caller is gone
        loop.call_soon_threadsafe(callback)


_request_started: weakref.WeakKeyDictionary[httpx2.Request, float] = weakref.WeakKeyDictionary()


def uses_proxy(url: str) -> bool:
    """Whether this process's requests to `url` go through a proxy: one the environment names for its
    scheme (`HTTP_PROXY`, `HTTPS_PROXY`) unless `NO_PROXY` exempts its host, the rule aiohttp's
    `trust_env` follows."""
    parts = urlsplit(url)
    if parts.scheme not in urllib.request.getproxies():
        return False
    return not urllib.request.proxy_bypass(parts.hostname or "")


def install_hub_client(timeout_s: float = HUB_TIMEOUT_S) -> None:
    """Give huggingface_hub's shared HTTP client timeouts (its default waits forever on a silent Hub)
    and, at debug level, a log line per request. Process-wide, so only the command line calls it;
    `HubSource` bounds each call on its own side as well."""
    try:  # the library's own factory keeps its request hooks (offline mode, request ids)
        from huggingface_hub.utils._http import default_client_factory
    except ImportError:  # pragma: no cover - another huggingface_hub layout

        def default_client_factory() -> httpx2.Client:
            return httpx2.Client(follow_redirects=True)

    bounds = httpx2.Timeout(timeout_s, connect=min(HUB_CONNECT_TIMEOUT_S, timeout_s)).as_dict()

    def bound(request: httpx2.Request) -> None:
        """huggingface_hub passes `timeout=None` on some calls (listings), which switches the client's
        timeout off: put ours back wherever a request has none."""
        asked = request.extensions.get("timeout") or {}
        request.extensions["timeout"] = {
            key: asked.get(key) if asked.get(key) is not None else limit for key, limit in bounds.items()
        }
        _request_started[request] = time.monotonic()

    def factory() -> httpx2.Client:
        client = default_client_factory()
        client.timeout = httpx2.Timeout(**bounds)
        hooks = client.event_hooks
        hooks["request"] = [*hooks.get("request", []), bound]
        hooks["response"] = [*hooks.get("response", []), _log_hub_response]
        client.event_hooks = hooks
        return client

    set_client_factory(factory)


def _log_hub_response(response: httpx2.Response) -> None:
    if not log.isEnabledFor(logging.DEBUG):
        return
    request = response.request
    seconds = time.monotonic() - _request_started.pop(request, time.monotonic())
    url = display_url(str(request.url.copy_with(query=None)))
    size = response.headers.get("Content-Length", "?")
    log.debug("%s %s -> %d, %s bytes, %.3f s", request.method, url, response.status_code, size, seconds)
