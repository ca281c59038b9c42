"""The Hugging Face Hub as a source of C4 shards: one commit, its shard list, and their bytes.

Metadata goes through `huggingface_hub` (so `HF_ENDPOINT`, `HF_TOKEN` and a cached login work as
everywhere else); shard bodies are streamed with aiohttp from the storage URL that `resolve`
redirects to. The Hub's `Authorization` header is sent to the Hub origin only, never to storage.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar
from urllib.parse import urljoin, urlsplit

import aiofiles
import aiohttp
from huggingface_hub import HfApi, constants, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils._headers import build_hf_headers

from . import __version__
from .errors import SourceError

__all__ = ["CHUNK_BYTES", "HubSource", "Shard", "chunks_of", "shard_pattern"]

CHUNK_BYTES = 1 << 20
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Shard:
    """One `json.gz` file of a split, addressed by its path in the repo."""

    path: str
    index: int
    size: int


def shard_pattern(config_name: str, split: str) -> re.Pattern[str]:
    """File names of a split's shards, e.g. `en/c4-train.00000-of-01024.json.gz` (not `en.noclean/...`)."""
    return re.compile(rf"^{re.escape(config_name)}/c4-{re.escape(split)}\.(\d+)-of-\d+\.json\.gz$")


class HubSource:
    """Reads one dataset repo at one commit. Use as an async context manager."""

    def __init__(self, repo_id: str, *, cache_dir: Path | None = None) -> None:
        self.repo_id = repo_id
        self.endpoint = constants.ENDPOINT.rstrip("/")
        self.cache_dir = cache_dir
        self._api = HfApi(library_name="aioc4", library_version=__version__)
        self._hub_headers = build_hf_headers(library_name="aioc4", library_version=__version__)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HubSource:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
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
        return info.sha or revision  # a Hub that does not name the commit: read at the revision itself

    async def list_shards(self, commit: str, config_name: str, split: str) -> list[Shard]:
        """The split's shards in shard-number order."""
        pattern = shard_pattern(config_name, split)

        def listing() -> list[Shard]:
            entries = self._api.list_repo_tree(
                self.repo_id, path_in_repo=config_name, repo_type="dataset", revision=commit
            )
            files = [entry for entry in entries if isinstance(entry, RepoFile)]
            shards = [
                Shard(path=file.path, index=int(match.group(1)), size=file.size)
                for file in files
                if (match := pattern.match(file.path))
            ]
            return sorted(shards, key=lambda shard: shard.index)

        shards = await self._call_hub(listing, commit, folder=config_name)
        if not shards:
            raise SourceError(f"no {split} shards under {config_name}/ in {self.repo_id} at {commit[:12]}")
        return shards

    async def _call_hub(self, call: Callable[[], _T], revision: str, folder: str | None = None) -> _T:
        try:
            return await asyncio.to_thread(call)
        except HfHubHTTPError as exc:
            raise self._describe(exc, revision, folder) from None
        except EntryNotFoundError as exc:  # local cache misses (e.g. offline mode), not HTTP answers
            raise SourceError(
                f"cannot fetch from the Hub at {self.endpoint}: {_first_line(str(exc))}"
            ) from None
        except Exception as exc:  # transport errors of huggingface_hub's HTTP stack (httpx) or the OS
            raise SourceError(f"cannot reach the Hub at {self.endpoint}: {_first_line(str(exc))}") from None

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
        """The shard's compressed bytes as they arrive; stop iterating to stop the transfer."""
        response = await self._open_body(shard, commit)
        try:
            async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                yield chunk
        except aiohttp.ClientError as exc:
            raise SourceError(f"{shard.path}: connection lost while reading ({exc})") from None
        finally:
            response.close()  # drops the connection if the body was not read to the end

    async def _open_body(self, shard: Shard, commit: str) -> aiohttp.ClientResponse:
        """GET the shard through `resolve`, following redirects by hand: the Hub's headers (with the
        token) go to the Hub origin only, never to the storage host it redirects to."""
        session = self._require_session()
        url = hf_hub_url(self.repo_id, shard.path, repo_type="dataset", revision=commit)
        for _ in range(_MAX_REDIRECTS):
            headers = (
                self._hub_headers if _same_origin(url, self.endpoint) else _without_auth(self._hub_headers)
            )
            response = await self._get(session, url, headers, shard)
            if response.status not in _REDIRECTS:
                return response
            url = urljoin(url, response.headers.get("Location", ""))
            response.release()
        raise SourceError(f"{shard.path}: more than {_MAX_REDIRECTS} redirects")

    async def _get(
        self, session: aiohttp.ClientSession, url: str, headers: dict[str, str], shard: Shard
    ) -> aiohttp.ClientResponse:
        try:
            response = await session.get(url, headers=headers, allow_redirects=False)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SourceError(
                f"{shard.path}: cannot reach {_origin(url)} ({exc or type(exc).__name__})"
            ) from None
        if response.status == 200 or response.status in _REDIRECTS:
            return response
        error_code = response.headers.get("X-Error-Code", "")
        response.release()
        raise SourceError(_http_failure(response.status, error_code, f"{self.repo_id}/{shard.path}"))

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


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text
