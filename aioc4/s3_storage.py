"""S3 as a storage (`aioc4.storage.Storage`), through aiobotocore: checked before any download.

The client is configured the standard way (AWS credential chain, `AWS_ENDPOINT_URL_S3` /
`AWS_ENDPOINT_URL`, `AWS_REGION`), with `--endpoint-url` taking precedence for S3-compatible stores.
Retries use botocore's `standard` mode (5xx, SlowDown/throttling and connection errors, with
backoff), unless the user picked one with `AWS_RETRY_MODE` / `AWS_MAX_ATTEMPTS`.

Integrity: every upload request carries a checksum S3 verifies before accepting the bytes, CRC32 by
default (`--s3-checksum crc32`) or Content-MD5 (`--s3-checksum md5`, for S3-compatible stores that
reject botocore's newer flexible checksums). aioc4 supplies the CRC-32 itself (ISA-L, so botocore does
not hash the body again): a whole part goes up with the value the writer computed while writing it,
so bytes that changed on disk since are rejected; multipart chunks carry their own. Each object also
carries the part's CRC-32 as metadata, which the manifest records, so a rerun can tell an intact
object with one HEAD request.
A part up to `MULTIPART_THRESHOLD` goes up in one PUT whose body is streamed from the file (nothing
held in memory); a larger one as a multipart upload of 8 MiB chunks, of which at most
`BODIES_IN_MEMORY` are held at once; a failed multipart upload is aborted. One PUT per part costs
S3 (and moto, measured: 25-35% less CPU per byte) less than multipart, and parts of the usual sizes
(10,000 documents, ~25 MB) gain nothing from being split.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import math
import os
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiofiles
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from .checksum import crc32, crc32_base64
from .compression import CONTENT_TYPES, compression_of
from .config import S3Target
from .errors import DestinationError, UploadError
from .storage import READ_CHUNK, ObjectInfo

__all__ = ["MULTIPART_CHUNK", "MULTIPART_THRESHOLD", "PERMANENT_ERRORS", "S3Storage", "multipart_chunk_size"]

MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 8 * 1024 * 1024
BODIES_IN_MEMORY = 2  # request bodies (at most one chunk each) held at once, over all workers: 16 MiB
_MAX_CHUNKS = 10_000  # S3's limit on parts per multipart upload
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


class S3Storage:
    """Objects under `s3://bucket/prefix/`; use as an async context manager.

    `client` is the transport seam: an aiobotocore S3 client to use instead of opening one (tests,
    or an application that already has one); it is then neither opened nor closed here.
    """

    local_folder: Path | None = None

    def __init__(
        self,
        target: S3Target,
        *,
        endpoint_url: str | None = None,
        checksum: str = "crc32",
        timeout_s: float = 60.0,
        connections: int = 4,
        client: Any = None,
    ) -> None:
        self.target = target
        self.url = f"s3://{target.bucket}/{target.prefix}".rstrip("/")
        self.endpoint_url = endpoint_url
        self.checksum = checksum
        self._session = get_session()
        self._config = AioConfig(
            max_pool_connections=max(10, connections + BODIES_IN_MEMORY),
            retries=_retry_policy(),
            connect_timeout=min(10.0, timeout_s),
            read_timeout=timeout_s,
            **_checksum_config(checksum),
        )
        self._stack = AsyncExitStack()
        self._client: Any = client
        self._owns_client = client is None
        self._bodies = asyncio.Semaphore(BODIES_IN_MEMORY)  # bounds memory, whatever the worker count

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
        if size > MULTIPART_THRESHOLD:
            await self._upload_multipart(name, path, key, size, metadata)
            return
        file = await asyncio.to_thread(open, path, "rb")
        try:
            # botocore sends (and on a retry rewinds) the open file; aiohttp reads it in a thread
            await self._client.put_object(
                Bucket=self.target.bucket,
                Key=key,
                Body=file,
                ContentLength=size,
                Metadata=metadata,
                **_content_type(name),
                **(await self._whole_file_integrity(path, crc32)),
            )
        finally:
            await asyncio.to_thread(file.close)

    async def _whole_file_integrity(self, path: Path, crc32_hex: str) -> dict[str, str]:
        """The checksum S3 verifies for a whole part: the CRC-32 the writer computed while writing it,
        so S3 rejects bytes that changed on disk since (MD5 has to read the file once)."""
        if self.checksum == "md5":
            digest = await asyncio.to_thread(_md5_of_file, path)
            return {"ContentMD5": base64.b64encode(digest).decode()}
        return {"ChecksumCRC32": crc32_base64(int(crc32_hex, 16))}

    async def _upload_multipart(
        self, name: str, path: Path, key: str, size: int, metadata: dict[str, str]
    ) -> None:
        bucket = self.target.bucket
        created = await self._client.create_multipart_upload(
            Bucket=bucket, Key=key, Metadata=metadata, **_content_type(name), **self._algorithm()
        )
        upload_id = created["UploadId"]
        try:
            chunk = multipart_chunk_size(size)

            async def send(number: int) -> dict[str, Any]:
                async with self._bodies:
                    body = await _read_range(path, (number - 1) * chunk, chunk)
                    answer = await self._client.upload_part(
                        Bucket=bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=body,
                        **self._integrity(body),
                    )
                    return {"PartNumber": number, "ETag": answer["ETag"], **_checksums(answer)}

            numbers = range(1, math.ceil(size / chunk) + 1)
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(send(number)) for number in numbers]
            except ExceptionGroup as failures:
                raise failures.exceptions[0] from None
            await self._client.complete_multipart_upload(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": [t.result() for t in tasks]},
            )
        except BaseException:
            with contextlib.suppress(ClientError, BotoCoreError):
                await asyncio.shield(
                    self._client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
                )
            raise


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


def _md5_of_file(path: Path) -> bytes:
    digest = hashlib.md5()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.digest()


async def _read_range(path: Path, offset: int, length: int) -> bytes:
    async with aiofiles.open(path, "rb") as file:
        await file.seek(offset)
        return await file.read(length)


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
