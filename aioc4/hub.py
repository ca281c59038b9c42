"""The Hugging Face Hub as a source of C4 shards: one commit, its shard list, and their bytes.

Metadata goes through `huggingface_hub` (so `HF_ENDPOINT`, `HF_TOKEN` and a cached login work as
everywhere else); shard bodies are streamed with aiohttp from the storage URL that `resolve`
redirects to. The Hub's `Authorization` header is sent to the Hub origin only, never to storage.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import aiofiles
import aiohttp
from huggingface_hub import HfApi, constants, hf_hub_download, hf_hub_url
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

from . import __version__
from .errors import SourceError
from .retry import RETRYABLE_STATUSES, RetryBudget, retry_after_seconds
from .variants import Variant, Variants, glob_folders, pick_variant, shard_pattern, variants_to_use

__all__ = ["CHUNK_BYTES", "HubSource", "Shard", "chunks_of"]

CHUNK_BYTES = 1 << 19
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_T = TypeVar("_T")

log = logging.getLogger("aioc4")


@dataclass(frozen=True, slots=True)
class Shard:
    """One `json.gz` file of a split, addressed by its path in the repo."""

    path: str
    index: int
    size: int


class _Retryable(Exception):
    """A failure worth another try (throttling, 5xx, dropped connection, expired signed URL)."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class HubSource:
    """Reads one dataset repo at one commit. Use as an async context manager.

    Every Hub call and every shard transfer is retried under one `RetryBudget`; a transfer that
    drops resumes with `Range` from the byte already received, so the decompressor downstream
    sees each byte exactly once. A signed storage URL is kept per shard (one `resolve` per shard)
    and resolved again if storage refuses it (expired links answer 403 or 410).
    """

    def __init__(
        self, repo_id: str, *, cache_dir: Path | None = None, budget: RetryBudget | None = None
    ) -> None:
        self.repo_id = repo_id
        self.endpoint = constants.ENDPOINT.rstrip("/")
        self.cache_dir = cache_dir
        self.budget = budget or RetryBudget()
        self._api = HfApi(library_name="aioc4", library_version=__version__)
        self._hub_headers = build_hf_headers(library_name="aioc4", library_version=__version__)
        self._storage_urls: dict[str, str] = {}
        self._cards: dict[str, Mapping[str, Any] | None] = {}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HubSource:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
        self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()

    # -- metadata ---------------------------------------------------------------------------------

    async def resolve_commit(self, revision: str) -> str:
        """The commit sha `revision` points at now; every shard is then read at that sha."""
        info = await self._call_hub(lambda: self._api.dataset_info(self.repo_id, revision=revision), revision)
        if info.sha:
            self._cards[info.sha] = _card_of(info)  # the card at that commit: no second request for it
        return info.sha or revision  # a Hub that does not name the commit: read at the revision itself

    async def variants(self, commit: str) -> Variants:
        """The configs the dataset card declares at `commit`, or the built-in table if it declares none."""
        if commit not in self._cards:
            info = await self._call_hub(lambda: self._api.dataset_info(self.repo_id, revision=commit), commit)
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
        found: dict[str, tuple[tuple[int, int], Shard]] = {}
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
                    found[entry.path] = (key, Shard(path=entry.path, index=key[1], size=entry.size))
        return [shard for _, shard in sorted(found.values(), key=lambda item: (item[0], item[1].path))]

    async def _call_hub(self, call: Callable[[], _T], revision: str, folder: str | None = None) -> _T:
        """Run a blocking huggingface_hub call in a thread, retrying what is worth retrying."""
        attempt = 0
        while True:
            try:
                return await asyncio.to_thread(call)
            except HfHubHTTPError as exc:
                status = exc.response.status_code if exc.response is not None else None
                if status not in RETRYABLE_STATUSES:
                    raise self._describe(exc, revision, folder) from None
                failure = _Retryable(f"the Hub answered HTTP {status}", _retry_after(exc))
            except LocalEntryNotFoundError as exc:  # hf_hub_download could not reach the Hub
                failure = _Retryable(f"cannot reach the Hub at {self.endpoint}: {_first_line(str(exc))}")
            except EntryNotFoundError as exc:
                raise SourceError(
                    f"cannot fetch from the Hub at {self.endpoint}: {_first_line(str(exc))}"
                ) from None
            except Exception as exc:  # transport errors of huggingface_hub's HTTP stack (httpx) or the OS
                failure = _Retryable(f"cannot reach the Hub at {self.endpoint}: {_first_line(str(exc))}")
            attempt += 1
            await self._wait_or_give_up(attempt, failure, what=f"{self.repo_id}@{revision}")

    async def _wait_or_give_up(self, attempt: int, failure: _Retryable, *, what: str) -> None:
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
                f"{repo} not found at {self.endpoint} (if it is private or gated, set HF_TOKEN)"
            )
        if isinstance(exc, RevisionNotFoundError):
            return SourceError(f"revision {revision!r} not found in {repo}")
        if isinstance(exc, EntryNotFoundError):
            return SourceError(f"{folder}/ does not exist in {repo} at {revision!r}")
        if status in (401, 403):
            return SourceError(_auth_message(status, repo))
        return SourceError(f"the Hub answered HTTP {status} for {repo}: {_first_line(str(exc))}")

    # -- bodies -----------------------------------------------------------------------------------

    async def stream(self, shard: Shard, commit: str) -> AsyncGenerator[bytes, None]:
        """The shard's compressed bytes, each exactly once, resuming after drops; stop iterating to stop."""
        received = 0
        attempt = 0
        while True:
            response: aiohttp.ClientResponse | None = None
            try:
                response = await self._open_at(shard, commit, received)
                skip = received if response.status == 200 else 0  # a server that ignored Range
                async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                    if skip:
                        chunk, skip = chunk[skip:], max(0, skip - len(chunk))
                        if not chunk:
                            continue
                    received += len(chunk)
                    attempt = 0  # progress: the next failure starts a fresh count
                    yield chunk
                if received >= shard.size:
                    return
                failure = _Retryable(f"body ended at byte {received:,} of {shard.size:,}")
            except _Retryable as exc:
                failure = exc
            except (aiohttp.ClientError, TimeoutError) as exc:
                failure = _Retryable(f"connection lost at byte {received:,} ({exc or type(exc).__name__})")
            finally:
                if response is not None:
                    response.close()  # drops the connection if the body was not read to the end
            attempt += 1
            await self._wait_or_give_up(attempt, failure, what=shard.path)

    async def _open_at(self, shard: Shard, commit: str, offset: int) -> aiohttp.ClientResponse:
        """A response whose body continues the shard at `offset` (206), or holds all of it (200).

        Redirects are followed by hand: the Hub's headers (with the token) go to the Hub origin
        only, never to the storage host it redirects to.
        """
        session = self._require_session()
        url = self._storage_urls.get(shard.path) or hf_hub_url(
            self.repo_id, shard.path, repo_type="dataset", revision=commit
        )
        for _ in range(_MAX_REDIRECTS):
            on_hub = _same_origin(url, self.endpoint)
            headers = dict(self._hub_headers if on_hub else _without_auth(self._hub_headers))
            if offset:
                headers["Range"] = f"bytes={offset}-"
            response = await session.get(url, headers=headers, allow_redirects=False)
            if response.status in (200, 206):
                return response
            response.release()
            if response.status in _REDIRECTS:
                url = urljoin(url, response.headers.get("Location", ""))
                if not _same_origin(url, self.endpoint):
                    self._storage_urls[shard.path] = url
                continue
            if not on_hub and response.status in (401, 403, 410) and shard.path in self._storage_urls:
                del self._storage_urls[shard.path]  # an expired or revoked signed URL: resolve again
                raise _Retryable(
                    f"storage refused the signed URL (HTTP {response.status}); resolving again", 0
                )
            if response.status in RETRYABLE_STATUSES:
                raise _Retryable(
                    f"HTTP {response.status} from {_origin(url)}", retry_after_seconds(response.headers)
                )
            error_code = response.headers.get("X-Error-Code", "")
            raise SourceError(_http_failure(response.status, error_code, f"{self.repo_id}/{shard.path}"))
        raise SourceError(f"{shard.path}: more than {_MAX_REDIRECTS} redirects")

    async def download(self, shard: Shard, commit: str) -> Path:
        """The whole shard in the Hub cache (`--cache-dir` or the standard one); cached files are reused."""

        def fetch() -> str:
            return hf_hub_download(
                self.repo_id,
                shard.path,
                repo_type="dataset",
                revision=commit,
                cache_dir=self.cache_dir,
                library_name="aioc4",
                library_version=__version__,
            )

        path = await self._call_hub(fetch, commit)
        return Path(path)

    async def read_cached(self, path: Path) -> AsyncGenerator[bytes, None]:
        """A cached shard's compressed bytes in chunks."""
        async with aiofiles.open(path, "rb") as file:
            while chunk := await file.read(CHUNK_BYTES):
                yield chunk

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("HubSource is used outside 'async with'")
        return self._session


def chunks_of(
    source: HubSource, shard: Shard, commit: str, *, streaming: bool
) -> AsyncGenerator[bytes, None]:
    """The compressed bytes of a shard, over HTTP (streaming) or from the Hub cache."""
    if streaming:
        return source.stream(shard, commit)
    return _cached_chunks(source, shard, commit)


async def _cached_chunks(source: HubSource, shard: Shard, commit: str) -> AsyncGenerator[bytes, None]:
    path = await source.download(shard, commit)
    async for chunk in source.read_cached(path):
        yield chunk


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
