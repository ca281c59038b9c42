"""S3 as a destination, through aiobotocore: checked before any download, one part per upload.

The client is configured the standard way (AWS credential chain, `AWS_ENDPOINT_URL_S3` /
`AWS_ENDPOINT_URL`, `AWS_REGION`), with `--endpoint-url` taking precedence for S3-compatible stores.
Parts above `MULTIPART_THRESHOLD` go up as multipart uploads whose chunks are sent concurrently.
botocore adds a CRC32 checksum to every upload request and S3 rejects a body that does not match it;
after the upload the object's size is checked before the local copy may be deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import aiofiles
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from .config import S3Target
from .destination import Delivery, rename_local
from .errors import DestinationError, UploadError
from .writer import FinishedPart

__all__ = ["MULTIPART_CHUNK", "MULTIPART_THRESHOLD", "S3Destination", "multipart_chunk_size"]

MULTIPART_THRESHOLD = 16 * 1024 * 1024
MULTIPART_CHUNK = 8 * 1024 * 1024
_MAX_CHUNKS = 10_000  # S3's limit on parts per multipart upload
_CHUNKS_IN_FLIGHT = 4
_PROBE_NAME = ".aioc4-write-check"


def multipart_chunk_size(size: int) -> int:
    """Chunk size for a multipart upload of `size` bytes: 8 MiB, larger if needed to stay within 10,000."""
    return max(MULTIPART_CHUNK, math.ceil(size / _MAX_CHUNKS))


class S3Destination:
    """Uploads finished parts to `s3://bucket/prefix/`; use as an async context manager."""

    def __init__(
        self, target: S3Target, *, endpoint_url: str | None, workers: int, cleanup_local: bool
    ) -> None:
        self.target = target
        self.endpoint_url = endpoint_url
        self.cleanup_local = cleanup_local
        self._session = get_session()
        self._config = AioConfig(
            max_pool_connections=max(10, workers * _CHUNKS_IN_FLIGHT),
            retries=_retry_policy(),
            connect_timeout=20,
            read_timeout=120,
        )
        self._stack = AsyncExitStack()
        self._client: Any = None

    async def __aenter__(self) -> S3Destination:
        self._client = await self._stack.enter_async_context(
            self._session.create_client("s3", endpoint_url=self.endpoint_url, config=self._config)
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()

    @property
    def where(self) -> str:
        return f"s3://{self.target.bucket}/{self.target.prefix}"

    async def check(self) -> None:
        """Credentials exist, the bucket exists, and we may write under the prefix."""
        if await self._session.get_credentials() is None:
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
        """Start and abort a multipart upload: proves s3:PutObject under the prefix and leaves no object."""
        key = self.target.key_for(_PROBE_NAME)
        try:
            upload = await self._client.create_multipart_upload(Bucket=self.target.bucket, Key=key)
            await self._client.abort_multipart_upload(
                Bucket=self.target.bucket, Key=key, UploadId=upload["UploadId"]
            )
        except ClientError as exc:
            raise DestinationError(f"cannot write to {self.where}: {_reason(exc)}") from None
        except (BotoCoreError, OSError) as exc:
            raise DestinationError(f"cannot reach S3 for {self.where}: {_reason(exc)}") from None

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

    async def deliver(self, part: FinishedPart) -> Delivery:
        key = self.target.key_for(part.name)
        try:
            await self._upload(part, key)
            await self._verify(part, key)
        except UploadError as exc:
            return Delivery(name=part.name, local_path=part.path, url=None, error=exc.reason)
        except (ClientError, BotoCoreError, OSError) as exc:
            return Delivery(name=part.name, local_path=part.path, url=None, error=_reason(exc))
        local: Path | None = part.path
        if self.cleanup_local:
            part.path.unlink()
            local = None
        return Delivery(name=part.name, local_path=local, url=self.target.url_for(part.name))

    async def rename(self, delivery: Delivery, new_name: str) -> Delivery:
        local = rename_local(delivery.local_path, new_name)
        if delivery.url is None:
            return Delivery(name=new_name, local_path=local, url=None, error=delivery.error)
        bucket, old_key, new_key = (
            self.target.bucket,
            self.target.key_for(delivery.name),
            self.target.key_for(new_name),
        )
        try:
            await self._client.copy_object(
                Bucket=bucket, Key=new_key, CopySource={"Bucket": bucket, "Key": old_key}
            )
            await self._client.delete_object(Bucket=bucket, Key=old_key)
        except (ClientError, BotoCoreError) as exc:
            raise DestinationError(f"cannot rename {delivery.url} to {new_name}: {_reason(exc)}") from None
        return Delivery(name=new_name, local_path=local, url=self.target.url_for(new_name))

    async def _upload(self, part: FinishedPart, key: str) -> None:
        if part.size <= MULTIPART_THRESHOLD:
            async with aiofiles.open(part.path, "rb") as file:
                body = await file.read()
            await self._client.put_object(Bucket=self.target.bucket, Key=key, Body=body)
        else:
            await self._upload_multipart(part, key)

    async def _upload_multipart(self, part: FinishedPart, key: str) -> None:
        bucket = self.target.bucket
        upload_id = (await self._client.create_multipart_upload(Bucket=bucket, Key=key))["UploadId"]
        try:
            chunk = multipart_chunk_size(part.size)
            limit = asyncio.Semaphore(_CHUNKS_IN_FLIGHT)

            async def send(number: int) -> dict[str, Any]:
                async with limit:
                    body = await _read_range(part.path, (number - 1) * chunk, chunk)
                    answer = await self._client.upload_part(
                        Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
                    )
                    return {"PartNumber": number, "ETag": answer["ETag"], **_checksums(answer)}

            numbers = range(1, math.ceil(part.size / chunk) + 1)
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

    async def _verify(self, part: FinishedPart, key: str) -> None:
        head = await self._client.head_object(Bucket=self.target.bucket, Key=key)
        if head["ContentLength"] != part.size:
            raise UploadError(part.name, f"S3 holds {head['ContentLength']} bytes, the part has {part.size}")


def _retry_policy() -> dict[str, Any] | None:
    """botocore's standard mode (retries 5xx, SlowDown, throttling and connection errors with backoff),
    unless the user chose a policy through AWS_RETRY_MODE / AWS_MAX_ATTEMPTS."""
    if "AWS_RETRY_MODE" in os.environ or "AWS_MAX_ATTEMPTS" in os.environ:
        return None
    return {"mode": "standard", "max_attempts": 5}


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


def _reason(exc: BaseException) -> str:
    if isinstance(exc, NoCredentialsError):
        return "no AWS credentials found"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "?"), error.get("Message", "")
        return f"{code}: {message}" if message else str(code)
    return str(exc) or type(exc).__name__
