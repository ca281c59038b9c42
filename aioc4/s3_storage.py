"""S3 as a storage (`aioc4.storage.Storage`), through aiobotocore: checked before any download.

The client is configured the standard way (AWS credential chain, `AWS_ENDPOINT_URL_S3` /
`AWS_ENDPOINT_URL`, `AWS_REGION`), with `--endpoint-url` taking precedence for S3-compatible stores.
Retries use botocore's `standard` mode (5xx, SlowDown/throttling and connection errors, with
backoff), unless the user picked one with `AWS_RETRY_MODE` / `AWS_MAX_ATTEMPTS`.

Integrity: every upload request carries a checksum S3 verifies before accepting the bytes, CRC32 by
default (`--s3-checksum crc32`) or Content-MD5 (`--s3-checksum md5`, for S3-compatible stores that
reject botocore's newer flexible checksums). aioc4 supplies the CRC-32 itself (ISA-L, so botocore does
not hash the body again): a whole part goes up with the value the writer computed while writing it,
so bytes that changed on disk since are rejected; multipart chunks carry their own. That checksum,
signed among the headers, is what covers a body: botocore does not also sign its SHA-256, which it
does only over plain HTTP (over HTTPS with a checksum it does not anyway) and which costs another
read and a hash of every byte on the event loop (loopback, 200k documents to moto: 0.4 s of the main
process's 2.9 s of CPU, ~10% of the wall time). Each object also carries the part's CRC-32 as
metadata, which the manifest records, so a rerun can tell an intact object with one HEAD request.

Requests: every part body (a PUT, or one chunk of a multipart upload) is one data request, and at
most `connections` (`DEFAULT_UPLOAD_CONNECTIONS`) of them are in flight at once over the whole
storage, whichever parts they belong to; they wait their turn first come, first served, so no part
starves. A part goes up in one PUT unless that request would take much longer than a second at the
rate a request has been measured to carry (`chunk_size_for`, fed by `LinkMeter`): then its chunks go
up side by side, enough to make each about a second long or to use the free connections (each at
least 5 MiB). So over a fast link (EC2: 85-90 MB/s a request; loopback) a part of the usual size
(10,000 documents, ~25 MB) stays one PUT, which costs S3 (and moto, measured: 25-35% less CPU per
byte) less than multipart, while over a link carrying 5 MB/s a request it goes up as 5 concurrent
chunks. Requests that share one bottleneck (moto's CPU, a full network card, the upload cap) each
carry less the more are in flight; the meter tells that apart, and parts then stay whole, as more
requests would carry no more. A part over `MULTIPART_THRESHOLD` always goes multipart. A failed or
cancelled multipart upload has its chunks in flight cancelled, then is aborted.

Memory: no body is held in memory. Each body is a view of a byte range of the part file
(`FileRange`) that aiohttp reads in pieces of 256 KiB (aiohttp 3.14) in its executor, and a chunk's
checksum is one read of its range, in 256 KiB pieces in a thread, before it is sent. A request in
flight holds a piece or two (the one being read, the one being written): uploads hold about
`connections` x 512 KiB of buffers (12 MiB with the default), whatever the part sizes and worker
count (measured: peak RSS ~1 MB higher per request in flight).

An upload rate cap (`rate`, a `RateLimit`) paces every part body byte as the sending thread reads
it, so the cap holds in aggregate over all the requests in flight. Manifests (a few KB each) are
neither paced nor counted among the data requests: they must not wait behind parts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import io
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from .checksum import crc32, crc32_base64
from .compression import CONTENT_TYPES, compression_of
from .config import DEFAULT_UPLOAD_CONNECTIONS, S3Target
from .errors import DestinationError, UploadError
from .rate import RateLimit
from .storage import READ_CHUNK, ObjectInfo

__all__ = [
    "MIN_CHUNK",
    "MULTIPART_CHUNK",
    "MULTIPART_THRESHOLD",
    "PERMANENT_ERRORS",
    "FileRange",
    "LinkMeter",
    "S3Storage",
    "chunk_size_for",
    "multipart_chunk_size",
]

MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 8 * 1024 * 1024
"""Chunk size of a part over the threshold when the link is fast enough not to need more chunks."""
MIN_CHUNK = 5 * 1024 * 1024
"""S3's smallest chunk of a multipart upload (but the last)."""
_MAX_CHUNKS = 10_000  # S3's limit on parts per multipart upload
_MAX_CHUNK_SIZE = 5 * 1024**3  # and on a part's size
_CHECKSUM_PIECE = 256 * 1024  # what a chunk's checksum is computed over at a time (aiohttp's piece)
_CONTROL_CONNECTIONS = 16
"""Pool room besides the data requests: a HEAD and a create/complete/abort per part being delivered,
the runner's intact checks (8), manifests and listings; without it they would queue behind chunks
(aiobotocore's default pool of 10 silently queues: mosaicml/streaming#902)."""
_MIN_CONCURRENCY_SPREAD = 0.2
"""Standard deviation of log(requests in flight) below which `LinkMeter` cannot tell a shared
bottleneck from requests limited on their own (0.2: concurrencies ~20% apart)."""
TARGET_REQUEST_S = 1.0
"""How long a chunk should take to send at the measured rate: long enough that the time before the
answer (a few ms on EC2) is small beside it, short enough that chunks spread over connections."""
SPLIT_AFTER_S = 2.0
"""A part goes multipart only if one request would take longer than this ("much longer than ~1 s")."""
INITIAL_REQUEST_RATE = MIN_CHUNK / TARGET_REQUEST_S
"""The per-request rate assumed until a data request completes: the slowest link worth splitting for
(a 5 MiB chunk a second), low on purpose. Assuming a slow link costs a fast one a few extra requests
for the first part or two, until their chunks have measured it (within a second on loopback);
assuming a fast link would cost a slow one whole PUTs of several seconds each, the first
`--upload-workers` parts of the run, before anything is measured."""
_PROBE_NAME = ".aioc4-write-check"
PERMANENT_ERRORS = frozenset(
    {
        "NoSuchBucket",
        "AccessDenied",
        "AllAccessDisabled",
        "AccountProblem",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "InvalidBucketState",
    }
)
"""S3 error codes no retry fixes: a run that meets one stops reading instead of piling parts up locally."""
_CRC32_METADATA = "crc32"
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})

log = logging.getLogger("aioc4")


def multipart_chunk_size(size: int) -> int:
    """Chunk size for a multipart upload of `size` bytes: 8 MiB, larger if needed to stay within 10,000."""
    return max(MULTIPART_CHUNK, math.ceil(size / _MAX_CHUNKS))


def chunk_size_for(
    size: int, request_rate: float, free_connections: int, *, saturated: bool = False
) -> int | None:
    """How to upload a part of `size` bytes when one request carries `request_rate` bytes/s and
    `free_connections` are idle: None for one PUT, else the multipart chunk size.

    One PUT unless it would take over `SPLIT_AFTER_S`, the part makes two chunks of S3's minimum and
    the requests are not `saturated` (sharing one bottleneck, where more of them carry no more). Then
    enough chunks that each takes about `TARGET_REQUEST_S`, or that they fill the free connections,
    whichever is more; each of `MIN_CHUNK` to 5 GiB, and at most 10,000 of them. A part over
    `MULTIPART_THRESHOLD` that needs no more goes up in 8 MiB chunks, as always.
    """
    single_s = size / request_rate
    if saturated or single_s <= SPLIT_AFTER_S or size < 2 * MIN_CHUNK:
        return multipart_chunk_size(size) if size > MULTIPART_THRESHOLD else None
    chunks = max(math.ceil(single_s / TARGET_REQUEST_S), free_connections)
    return min(max(MIN_CHUNK, math.ceil(size / chunks), math.ceil(size / _MAX_CHUNKS)), _MAX_CHUNK_SIZE)


class LinkMeter:
    """What the data requests that completed tell about the link, for `chunk_size_for`.

    `request_rate` is the bytes per second one request carries: the requests' bytes over their seconds
    (so a tiny request, all latency, weighs little), each completion keeping `memory` of the past;
    `initial` until one completes. `saturated` says whether the requests share one bottleneck (the
    server's or this machine's CPU, a full network card, an upload cap), so that more of them at once
    carry no more in total: each then carries less the more are in flight. It is the slope of
    log(rate) over log(requests in flight during the request), weighted like the rate: about 0 when
    each request is limited on its own (a far link), about -1 when they share; saturated below -0.5,
    once the requests seen ran at concurrencies far enough apart to tell. A known bottleneck, the upload
    `cap`, need not be discovered: the requests are also saturated while together they have been
    carrying 80% of it (their rate times their typical concurrency). Measured: under a cap, parts split
    by the initial rate otherwise kept ~9 requests in flight at every moment, too alike to tell, and
    stayed split.

    The rate alone would mislead: on a shared bottleneck, splitting parts puts more requests in flight,
    which lowers every request's rate, which looks like a slow link and keeps parts split (measured on
    loopback against moto on 2 busy cores: every part split to the end of the run, 3x the requests,
    about twice moto's CPU and the run's time).
    """

    def __init__(
        self,
        initial: float = INITIAL_REQUEST_RATE,
        *,
        memory: float = 0.95,
        cap: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.initial = initial
        self.memory = memory
        self.cap = cap
        self._clock = clock
        self.in_flight = 0
        self._busy = 0.0  # integral of requests in flight over time
        self._last = clock()
        self._sums = [0.0] * 7  # decayed: bytes, seconds, and weight, x, y, xx, xy of the regression
        self._saturated = False  # until told otherwise, requests are taken to be limited on their own

    def begin(self) -> tuple[float, float]:
        """A data request is sent; give what this returns to `end`."""
        now = self._advance()
        self.in_flight += 1
        return now, self._busy

    def end(self, began: tuple[float, float], size: int | None) -> None:
        """It is answered, having carried `size` bytes (None: it failed, which measures nothing)."""
        now = self._advance()
        self.in_flight -= 1
        started, busy = began
        seconds = now - started
        if size and seconds > 0:
            self.add(size, seconds, (self._busy - busy) / seconds)

    def add(self, size: int, seconds: float, concurrency: float) -> None:
        """One completed request: `size` bytes in `seconds`, with `concurrency` requests in flight on
        average meanwhile (itself included)."""
        x, y = math.log(max(concurrency, 1.0)), math.log(size / seconds)
        point = (size, seconds, size, size * x, size * y, size * x * x, size * x * y)
        self._sums = [total * self.memory + value for total, value in zip(self._sums, point, strict=True)]
        weight, x_sum, y_sum, xx_sum, xy_sum = self._sums[2:]
        mean_x, mean_y = x_sum / weight, y_sum / weight
        spread = xx_sum / weight - mean_x * mean_x
        if spread >= _MIN_CONCURRENCY_SPREAD**2:  # else too alike to tell: the verdict stands
            self._saturated = (xy_sum / weight - mean_x * mean_y) / spread < -0.5

    @property
    def request_rate(self) -> float:
        size, seconds = self._sums[0], self._sums[1]
        return size / seconds if seconds > 0 else self.initial

    @property
    def saturated(self) -> bool:
        return self._saturated or (self.cap is not None and self.carried >= 0.8 * self.cap)

    @property
    def carried(self) -> float:
        """Bytes per second the requests have been carrying together: the rate a request carries times
        the (geometric) mean concurrency they ran at; 0 before any completes."""
        weight, log_concurrency = self._sums[2], self._sums[3]
        return self.request_rate * math.exp(log_concurrency / weight) if weight > 0 else 0.0

    def _advance(self) -> float:
        now = self._clock()
        self._busy += self.in_flight * (now - self._last)
        self._last = now
        return now


class RequestSlots:
    """At most `size` data requests at once. Waiters are served first come, first served (asyncio's
    Semaphore is FIFO and lets none barge in), so the chunks of a part that asked later wait behind
    those of earlier parts but never starve."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._semaphore = asyncio.Semaphore(size)
        self._wanted = 0  # holding a slot or waiting for one

    @property
    def free(self) -> int:
        return max(0, self.size - self._wanted)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        self._wanted += 1
        try:
            async with self._semaphore:
                yield
        finally:
            self._wanted -= 1


class FileRange(io.RawIOBase):
    """Bytes `offset` to `offset + length` of a file, as a file of their own: a request body that is
    streamed, never held. aiohttp reads it in pieces (256 KiB) in its executor; botocore rewinds it with
    `seek(0)` before a retry (and over plain http reads it once on the event loop to sign it), so
    positions are relative to the range. It has no `fileno`, so aiohttp takes the length from the
    request's Content-Length, not from the whole file.

    With a `rate`, every piece read in a thread (a piece being sent) waits its turn under the cap before
    it is handed over. Reads on the event loop (botocore's signing) are not sends and are not paced.
    """

    def __init__(
        self, file: io.RawIOBase, offset: int, length: int, *, rate: RateLimit | None = None
    ) -> None:
        super().__init__()
        self._file = file
        self._offset = offset
        self._length = length
        self._position = 0
        self._rate = rate

    @classmethod
    def open(cls, path: Path, offset: int, length: int, *, rate: RateLimit | None = None) -> FileRange:
        """Blocking: call it in a thread."""
        return cls(open(path, "rb", buffering=0), offset, length, rate=rate)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._length}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._position = base + offset
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        wanted = self._readable_now(size)
        if wanted == 0:
            return b""
        self._file.seek(self._offset + self._position)
        data = self._file.read(wanted)
        self._advance(len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        wanted = self._readable_now(len(memoryview(buffer).cast("B")))
        if wanted == 0:
            return 0
        self._file.seek(self._offset + self._position)
        count = self._file.readinto(memoryview(buffer).cast("B")[:wanted]) or 0
        self._advance(count)
        return count

    def close(self) -> None:
        self._file.close()
        super().close()

    def _readable_now(self, size: int | None) -> int:
        left = max(0, self._length - self._position)
        return left if size is None or size < 0 else min(size, left)

    def _advance(self, count: int) -> None:
        self._position += count
        if self._rate is not None and count and not _on_event_loop():
            self._rate.take_blocking(count)


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class S3Storage:
    """Objects under `s3://bucket/prefix/`; use as an async context manager.

    `client` is the transport seam: an aiobotocore S3 client to use instead of opening one (tests,
    or an application that already has one); it is then neither opened nor closed here (and its own
    pool should have room for `connections` requests and a few more).
    `connections` bounds the data requests (part bodies) in flight at once; `rate` caps their bytes.
    """

    local_folder: Path | None = None

    def __init__(
        self,
        target: S3Target,
        *,
        endpoint_url: str | None = None,
        checksum: str = "crc32",
        timeout_s: float = 60.0,
        connections: int = DEFAULT_UPLOAD_CONNECTIONS,
        rate: RateLimit | None = None,
        client: Any = None,
    ) -> None:
        if connections < 1:
            raise ValueError("an S3 storage needs at least one upload connection")
        self.target = target
        self.url = f"s3://{target.bucket}/{target.prefix}".rstrip("/")
        self.endpoint_url = endpoint_url
        self.checksum = checksum
        self._session = get_session()
        self._config = AioConfig(
            max_pool_connections=connections + _CONTROL_CONNECTIONS,
            retries=_retry_policy(),
            connect_timeout=min(10.0, timeout_s),
            read_timeout=timeout_s,
            **_checksum_config(checksum),
            s3={"payload_signing_enabled": False},
        )
        self._stack = AsyncExitStack()
        self._client: Any = client
        self._owns_client = client is None
        self._slots = RequestSlots(connections)
        self._link = LinkMeter(cap=None if rate is None else rate.bytes_per_s)
        self._upload_rate = rate

    async def __aenter__(self) -> Self:
        if self._owns_client:
            self._client = await self._stack.enter_async_context(
                self._session.create_client("s3", endpoint_url=self.endpoint_url, config=self._config)
            )
        if log.isEnabledFor(logging.DEBUG):
            events = self._client.meta.events
            events.register("before-call.s3", _note_call_start)
            events.register("after-call.s3", _log_call)
            events.register("after-call-error.s3", _log_call_error)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()

    def location(self, name: str) -> str:
        return self.target.url_for(name)

    # -- before any download ----------------------------------------------------------------------

    async def preflight(self) -> None:
        """Credentials exist, the bucket exists, we may write under the prefix (the write probe is
        aborted: nothing changes, so `--dry-run` runs it too)."""
        if self._owns_client and await self._session.get_credentials() is None:
            raise DestinationError(
                "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, "
                "or run with an instance/task role"
            )
        bucket = self.target.bucket
        try:
            await self._client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            raise DestinationError(self._bucket_problem(exc)) from None
        except (BotoCoreError, OSError) as exc:
            raise DestinationError(f"cannot reach S3 for bucket {bucket!r}: {_reason(exc)}") from None
        await self._check_writable()

    async def _check_writable(self) -> None:
        """Start a multipart upload, send one tiny chunk with our checksum, abort: proves s3:PutObject
        under the prefix and that the store accepts the checksum, and leaves no object behind."""
        bucket, key = self.target.bucket, self.target.key_for(_PROBE_NAME)
        try:
            upload = await self._client.create_multipart_upload(Bucket=bucket, Key=key, **self._algorithm())
        except ClientError as exc:
            raise DestinationError(f"cannot write to {self.url}: {_reason(exc)}") from None
        except (BotoCoreError, OSError) as exc:
            raise DestinationError(f"cannot reach S3 for {self.url}: {_reason(exc)}") from None
        upload_id = upload["UploadId"]
        try:
            body = b"aioc4 write check\n"
            await self._client.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=body, **self._integrity(body)
            )
        except ClientError as exc:
            hint = " (an S3-compatible store that rejects these checksums? try --s3-checksum md5)"
            raise DestinationError(
                f"cannot upload to {self.url}: {_reason(exc)}{hint if self.checksum == 'crc32' else ''}"
            ) from None
        except (BotoCoreError, OSError) as exc:
            raise DestinationError(f"cannot reach S3 for {self.url}: {_reason(exc)}") from None
        finally:
            with contextlib.suppress(ClientError, BotoCoreError):
                await self._client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)

    async def discard_unfinished(self, stem: str) -> None:
        """A run killed mid-upload leaves an incomplete multipart upload (billed storage): abort those of
        the job named `stem`, and only its, so concurrent jobs under the same prefix are left alone."""
        prefix = self.target.key_for(stem)
        try:
            paginator = self._client.get_paginator("list_multipart_uploads")
            async for page in paginator.paginate(Bucket=self.target.bucket, Prefix=prefix):
                for upload in page.get("Uploads", []):
                    if not upload["Key"][len(prefix) :].startswith((".", "_part")):
                        continue  # c4_train_10000... is another job than c4_train_1000
                    await self._client.abort_multipart_upload(
                        Bucket=self.target.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
        except (ClientError, BotoCoreError) as exc:
            raise DestinationError(f"cannot clean up old uploads under {self.url}: {_reason(exc)}") from None

    def _bucket_problem(self, exc: ClientError) -> str:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        bucket = self.target.bucket
        if code in ("404", "NoSuchBucket", "NotFound"):
            return f"S3 bucket {bucket!r} does not exist"
        if code in ("403", "AccessDenied", "Forbidden"):
            return f"access to S3 bucket {bucket!r} is denied for these AWS credentials"
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
            return f"S3 rejected the AWS credentials ({code})"
        return f"cannot use S3 bucket {bucket!r}: {_reason(exc)}"

    # -- objects ----------------------------------------------------------------------------------

    async def put_file(self, name: str, path: Path, *, size: int, crc32: str) -> None:
        """Upload, then HEAD: the object must have the part's size and CRC-32, or it is an UploadError."""
        key = self.target.key_for(name)
        try:
            await self._upload(name, path, key, size=size, crc32=crc32)
            info = await self._head(key)
        except (ClientError, BotoCoreError, OSError) as exc:
            permanent = _code(exc) in PERMANENT_ERRORS or isinstance(exc, NoCredentialsError)
            raise UploadError(name, _reason(exc), permanent=permanent) from None
        if info is None or info.size != size or info.crc32 != crc32:
            raise UploadError(name, "the object S3 holds does not match the part (size or CRC-32)")

    async def put_bytes(self, name: str, data: bytes) -> None:
        try:
            await self._client.put_object(
                Bucket=self.target.bucket,
                Key=self.target.key_for(name),
                Body=data,
                ContentType="application/json",
                **self._integrity(data),
            )
        except (ClientError, BotoCoreError) as exc:
            raise DestinationError(f"cannot write {self.location(name)}: {_reason(exc)}") from None

    async def head(self, name: str) -> ObjectInfo | None:
        try:
            return await self._head(self.target.key_for(name))
        except (ClientError, BotoCoreError) as exc:
            raise DestinationError(f"cannot check {self.location(name)}: {_reason(exc)}") from None

    async def _head(self, key: str) -> ObjectInfo | None:
        try:
            head = await self._client.head_object(Bucket=self.target.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise
        return ObjectInfo(int(head["ContentLength"]), head.get("Metadata", {}).get(_CRC32_METADATA))

    async def get(self, name: str) -> bytes | None:
        try:
            answer = await self._client.get_object(Bucket=self.target.bucket, Key=self.target.key_for(name))
            async with answer["Body"] as body:
                return bytes(await body.read())
        except (ClientError, BotoCoreError) as exc:
            if _code(exc) in _MISSING:
                return None
            raise DestinationError(f"cannot read {self.location(name)}: {_reason(exc)}") from None

    async def read(self, name: str) -> AsyncIterator[bytes]:
        try:
            answer = await self._client.get_object(Bucket=self.target.bucket, Key=self.target.key_for(name))
            async with answer["Body"] as body:
                while chunk := await body.read(READ_CHUNK):
                    yield chunk
        except (ClientError, BotoCoreError) as exc:
            if _code(exc) in _MISSING:
                raise FileNotFoundError(self.location(name)) from None
            raise DestinationError(f"cannot read {self.location(name)}: {_reason(exc)}") from None

    async def names(self, prefix: str = "") -> list[str]:
        folder = self.target.key_for("")
        found: list[str] = []
        try:
            paginator = self._client.get_paginator("list_objects_v2")
            pages = paginator.paginate(Bucket=self.target.bucket, Prefix=folder + prefix, Delimiter="/")
            async for page in pages:
                found += [item["Key"][len(folder) :] for item in page.get("Contents", [])]
        except (ClientError, BotoCoreError) as exc:
            raise DestinationError(f"cannot list {self.url}: {_reason(exc)}") from None
        return sorted(found)

    async def rename(self, old: str, new: str) -> None:
        """Copy, then delete (S3 has no rename); a source never uploaded is no error."""
        bucket, old_key, new_key = self.target.bucket, self.target.key_for(old), self.target.key_for(new)
        try:
            await self._client.copy_object(
                Bucket=bucket, Key=new_key, CopySource={"Bucket": bucket, "Key": old_key}
            )
            await self._client.delete_object(Bucket=bucket, Key=old_key)
        except (ClientError, BotoCoreError) as exc:
            if _code(exc) in _MISSING:
                return
            raise DestinationError(f"cannot rename {self.location(old)} to {new}: {_reason(exc)}") from None

    async def delete(self, name: str) -> None:
        try:
            await self._client.delete_object(Bucket=self.target.bucket, Key=self.target.key_for(name))
        except (ClientError, BotoCoreError) as exc:
            raise DestinationError(f"cannot delete {self.location(name)}: {_reason(exc)}") from None

    # -- uploads ----------------------------------------------------------------------------------

    def _algorithm(self) -> dict[str, str]:
        """For a multipart upload, the checksum its parts will carry."""
        return {"ChecksumAlgorithm": "CRC32"} if self.checksum == "crc32" else {}

    def _integrity(self, body: bytes) -> dict[str, str]:
        """The checksum S3 verifies before storing `body`."""
        if self.checksum == "md5":
            return {"ContentMD5": base64.b64encode(hashlib.md5(body).digest()).decode()}
        return {"ChecksumCRC32": crc32_base64(crc32(body, 0))}

    async def _upload(self, name: str, path: Path, key: str, *, size: int, crc32: str) -> None:
        metadata = {_CRC32_METADATA: crc32}
        request_rate, saturated = self._link.request_rate, self._link.saturated
        chunk = chunk_size_for(size, request_rate, self._slots.free, saturated=saturated)
        if chunk is None:
            put = functools.partial(
                self._client.put_object, Bucket=self.target.bucket, Key=key, Metadata=metadata,
                **_content_type(name),
            )  # fmt: skip
            await self._send(put, path, 0, size, known_crc32=crc32)
            return
        log.debug(
            "%s: %d chunks of up to %d bytes (a request carries ~%.1f MB/s%s, %d connections free)",
            name, math.ceil(size / chunk), chunk, request_rate / 1e6, ", saturated" if saturated else "",
            self._slots.free,
        )  # fmt: skip
        await self._upload_multipart(name, path, key, size, chunk, metadata)

    async def _send(
        self,
        request: Callable[..., Awaitable[dict[str, Any]]],
        path: Path,
        offset: int,
        length: int,
        *,
        known_crc32: str | None = None,
    ) -> dict[str, Any]:
        """One data request whose body is a byte range of `path`, once a connection is free; measured by
        the link meter the splitting follows."""
        async with self._slots.slot():
            integrity = await self._range_integrity(path, offset, length, known_crc32)
            body = await asyncio.to_thread(FileRange.open, path, offset, length, rate=self._upload_rate)
            began, carried = self._link.begin(), None
            try:
                answer = await request(Body=body, ContentLength=length, **integrity)
                carried = length
                return answer
            finally:
                self._link.end(began, carried)
                body.close()  # a read-only file: no flush, so no blocking to speak of

    async def _range_integrity(
        self, path: Path, offset: int, length: int, known_crc32: str | None
    ) -> dict[str, str]:
        """The checksum S3 verifies for a byte range. For a whole part, the CRC-32 the writer computed
        while writing it, so S3 rejects bytes that changed on disk since; otherwise one read of the range."""
        if known_crc32 is not None and self.checksum == "crc32":
            return {"ChecksumCRC32": crc32_base64(int(known_crc32, 16))}
        return await asyncio.to_thread(_checksum_of_range, path, offset, length, self.checksum)

    async def _upload_multipart(
        self, name: str, path: Path, key: str, size: int, chunk: int, metadata: dict[str, str]
    ) -> None:
        bucket = self.target.bucket
        created = await self._client.create_multipart_upload(
            Bucket=bucket, Key=key, Metadata=metadata, **_content_type(name), **self._algorithm()
        )
        upload_id = created["UploadId"]
        try:
            upload_part = functools.partial(
                self._client.upload_part, Bucket=bucket, Key=key, UploadId=upload_id
            )
            parts = await self._send_chunks(upload_part, path, size, chunk)
            await self._client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            # the chunks still in flight were cancelled (and awaited) before we got here
            with contextlib.suppress(ClientError, BotoCoreError):
                await asyncio.shield(
                    self._client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
                )
            raise

    async def _send_chunks(
        self, upload_part: Callable[..., Awaitable[dict[str, Any]]], path: Path, size: int, chunk: int
    ) -> list[dict[str, Any]]:
        """Every chunk as a task waiting for a connection; the first failure cancels the others."""

        async def send(number: int, offset: int) -> dict[str, Any]:
            request = functools.partial(upload_part, PartNumber=number)
            answer = await self._send(request, path, offset, min(chunk, size - offset))
            return {"PartNumber": number, "ETag": answer["ETag"], **_checksums(answer)}

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(send(number, offset))
                    for number, offset in enumerate(range(0, size, chunk), start=1)
                ]
        except ExceptionGroup as failures:
            raise failures.exceptions[0] from None
        return [task.result() for task in tasks]


def _note_call_start(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    """botocore's before-call event: remember when the call started and what it sends."""
    context["aioc4_started"] = time.monotonic()
    context["aioc4_sent"] = params.get("headers", {}).get("Content-Length", 0)
    context["aioc4_url"] = str(params.get("url", "")).split("?", 1)[0]


def _log_call(
    http_response: Any, parsed: dict[str, Any], model: Any, context: dict[str, Any], **_: Any
) -> None:
    """botocore's after-call event (after its retries): one debug line per S3 request."""
    seconds = time.monotonic() - context.get("aioc4_started", time.monotonic())
    retries = parsed.get("ResponseMetadata", {}).get("RetryAttempts", 0)
    received = http_response.headers.get("Content-Length", "?") if http_response is not None else "?"
    log.debug(
        "S3 %s %s -> %s, %s bytes sent, %s received, %.3f s%s",
        model.name,
        context.get("aioc4_url", ""),
        getattr(http_response, "status_code", "?"),
        context.get("aioc4_sent", 0),
        received,
        seconds,
        f", {retries} retries" if retries else "",
    )


def _log_call_error(exception: BaseException, context: dict[str, Any], **_: Any) -> None:
    seconds = time.monotonic() - context.get("aioc4_started", time.monotonic())
    log.debug(
        "S3 request %s failed after %.3f s: %s", context.get("aioc4_url", ""), seconds, _reason(exception)
    )


def _content_type(name: str) -> dict[str, str]:
    """A compressed part is stored as the gzip / zstd file it is: its container's Content-Type and never
    a Content-Encoding (clients would then inflate it on download, and size and CRC-32 would not match
    the manifest). A `.jsonl` part keeps S3's default type, as before compression existed."""
    content_type = CONTENT_TYPES.get(compression_of(name))
    return {"ContentType": content_type} if content_type else {}


def _checksum_config(checksum: str) -> dict[str, str]:
    """With md5, botocore must not add its flexible checksums (the store would reject them)."""
    if checksum == "md5":
        return {
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
        }
    return {}


def _retry_policy() -> dict[str, Any] | None:
    """botocore's standard mode (retries 5xx, SlowDown, throttling and connection errors with backoff),
    unless the user chose a policy through AWS_RETRY_MODE / AWS_MAX_ATTEMPTS."""
    if "AWS_RETRY_MODE" in os.environ or "AWS_MAX_ATTEMPTS" in os.environ:
        return None
    return {"mode": "standard", "max_attempts": 5}


def _checksum_of_range(path: Path, offset: int, length: int, checksum: str) -> dict[str, str]:
    """Blocking: the checksum S3 verifies for bytes `offset` to `offset + length` of `path`, in one read."""
    digest = hashlib.md5() if checksum == "md5" else None
    value = 0
    with open(path, "rb", buffering=0) as file:
        file.seek(offset)
        left = length
        while left > 0 and (piece := file.read(min(_CHECKSUM_PIECE, left))):
            left -= len(piece)
            if digest is not None:
                digest.update(piece)
            else:
                value = crc32(piece, value)
    if left:
        raise OSError(f"{path} is {left} bytes shorter than expected")
    if digest is not None:
        return {"ContentMD5": base64.b64encode(digest.digest()).decode()}
    return {"ChecksumCRC32": crc32_base64(value)}


def _checksums(answer: dict[str, Any]) -> dict[str, str]:
    """The part checksums S3 echoed, which complete_multipart_upload must repeat."""
    return {
        name: value
        for name, value in answer.items()
        if name.startswith("Checksum") and isinstance(value, str)
    }


def _code(exc: BaseException) -> str:
    return str(exc.response.get("Error", {}).get("Code", "")) if isinstance(exc, ClientError) else ""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, NoCredentialsError):
        return "no AWS credentials found"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "?"), error.get("Message", "")
        return f"{code}: {message}" if message else str(code)
    return str(exc) or type(exc).__name__
