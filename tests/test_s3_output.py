"""End to end, S3 output against moto's server over HTTP: exact objects, cleanup, failures."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable, Iterator

import pytest

from aioc4.naming import part_names
from aioc4.s3_storage import MIN_CHUNK, MULTIPART_CHUNK, MULTIPART_THRESHOLD
from scripts.s3_fault_proxy import S3FaultProxyProcess
from scripts.s3_server import MotoServerProcess, s3_client

from .conftest import (
    DOCS_PER_VALIDATION_SHARD,
    VALIDATION_SHARDS,
    Aioc4,
    jsonl,
    objects,
    open_multipart_uploads,
    parts_in,
    split_expected,
)

Lines = Callable[[str], list[bytes]]


def keyed(prefix: str, parts: dict[str, bytes]) -> dict[str, bytes]:
    return {f"{prefix}/{name}": body for name, body in parts.items()}


def test_parts_are_uploaded_and_local_copies_cleaned_up(
    aioc4: Aioc4, s3: MotoServerProcess, bucket: str, source_lines: Lines
) -> None:
    result = aioc4("--num-samples", "20000", "--max-lines-per-file", "5000", "--s3-path", f"s3://{bucket}/c4")
    assert result.returncode == 0, result.stderr
    names = part_names("train", 20000, 5000)
    assert objects(s3, bucket) == keyed("c4", split_expected(source_lines("train")[:20000], names, 5000))
    assert not (aioc4.cwd / "data" / "c4_subset").exists()  # created by the run, empty, removed
    for name in names:
        assert f"s3://{bucket}/c4/{name}" in result.stdout
    assert "Local files:" not in result.stdout


def test_cleanup_local_flag_deletes_but_keeps_a_folder_it_did_not_create(
    aioc4: Aioc4, s3: MotoServerProcess, bucket: str, source_lines: Lines
) -> None:
    existing = aioc4.cwd / "mine"
    existing.mkdir()
    result = aioc4(
        "--num-samples", "300", "--output-dir", "mine", "--s3-path", f"s3://{bucket}", "--cleanup-local"
    )
    assert result.returncode == 0, result.stderr
    assert objects(s3, bucket) == {"c4_train_300.jsonl": jsonl(source_lines("train")[:300])}
    assert existing.is_dir()
    assert list(existing.iterdir()) == []


def test_large_part_goes_up_as_multipart_and_none_is_left_open(
    aioc4: Aioc4, s3: MotoServerProcess, bucket: str, source_lines: Lines
) -> None:
    # ~2.4 KB a document: 30,000 documents make one part of ~73 MB, above the 64 MiB threshold
    result = aioc4("--num-samples", "30000", "--s3-path", f"s3://{bucket}/big", "--upload-workers", "1")
    assert result.returncode == 0, result.stderr
    body = jsonl(source_lines("train")[:30000])
    assert len(body) > MULTIPART_THRESHOLD
    assert objects(s3, bucket) == {"big/c4_train_30000.jsonl": body}
    assert open_multipart_uploads(s3, bucket) == []
    # a multipart ETag ends in the number of chunks: 8 MiB ones, or 5 MiB ones while the link is unmeasured
    match = re.fullmatch(r'"[0-9a-f]{32}-(\d+)"', etag(s3, bucket, "big/c4_train_30000.jsonl"))
    assert match is not None
    assert math.ceil(len(body) / MULTIPART_CHUNK) <= int(match[1]) <= math.ceil(len(body) / MIN_CHUNK)


def test_a_part_below_two_chunks_goes_up_in_one_put(
    aioc4: Aioc4, s3: MotoServerProcess, bucket: str, source_lines: Lines
) -> None:
    """Larger parts go up in one PUT too where the link is fast, but only once it has been measured."""
    result = aioc4("--num-samples", "4000", "--s3-path", f"s3://{bucket}/one", "--upload-workers", "1")
    assert result.returncode == 0, result.stderr
    body = jsonl(source_lines("train")[:4000])
    assert len(body) < 2 * MIN_CHUNK
    assert objects(s3, bucket) == {"one/c4_train_4000.jsonl": body}
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag(s3, bucket, "one/c4_train_4000.jsonl"))  # a plain PUT


def etag(s3: MotoServerProcess, bucket: str, key: str) -> str:
    async def head() -> str:
        async with s3_client(s3.endpoint) as client:
            return str((await client.head_object(Bucket=bucket, Key=key))["ETag"])

    return asyncio.run(head())


def test_endpoint_url_flag_instead_of_environment(
    aioc4: Aioc4, s3: MotoServerProcess, bucket: str, source_lines: Lines
) -> None:
    result = aioc4(
        "--num-samples", "100", "--s3-path", f"s3://{bucket}/x", "--endpoint-url", s3.endpoint,
        env={"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"},  # a dead port: the flag must win
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert objects(s3, bucket) == {"x/c4_train_100.jsonl": jsonl(source_lines("train")[:100])}


def test_short_split_renames_uploaded_parts_to_the_real_count(
    aioc4: Aioc4, s3: MotoServerProcess, bucket: str, source_lines: Lines
) -> None:
    total = VALIDATION_SHARDS * DOCS_PER_VALIDATION_SHARD
    result = aioc4(
        "--split", "validation", "--num-samples", "5000", "--max-lines-per-file", "500",
        "--s3-path", f"s3://{bucket}/v",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    names = part_names("validation", total, 500)
    assert objects(s3, bucket) == keyed("v", split_expected(source_lines("validation"), names, 500))
    renamed = [line.split(" aioc4: ", 1)[1] for line in result.stderr.splitlines() if " renamed " in line]
    pairs = zip(part_names("validation", 5000, 500), names[:-1], strict=False)
    assert renamed == [f"renamed {old} to {new} (the real count)" for old, new in pairs]  # as they end up


@pytest.fixture
def flaky_s3(s3: MotoServerProcess) -> Iterator[S3FaultProxyProcess]:
    with S3FaultProxyProcess(s3.endpoint) as proxy:
        yield proxy


def test_failed_upload_keeps_the_local_part_and_exits_non_zero(
    aioc4: Aioc4, s3: MotoServerProcess, flaky_s3: S3FaultProxyProcess, bucket: str, source_lines: Lines
) -> None:
    flaky_s3.set_rules([{"name": "part2", "methods": ["PUT"], "path": "_part002", "status": 500}])
    result = aioc4(
        "--num-samples", "3000", "--max-lines-per-file", "1000", "--s3-path", f"s3://{bucket}/c4",
        env={"AWS_ENDPOINT_URL_S3": flaky_s3.endpoint, "AWS_MAX_ATTEMPTS": "2"},
    )  # fmt: skip
    assert result.returncode == 1
    names = part_names("train", 3000, 1000)
    expected = split_expected(source_lines("train")[:3000], names, 1000)
    assert objects(s3, bucket) == keyed("c4", {name: expected[name] for name in (names[0], names[2])})
    assert parts_in(aioc4.cwd / "data" / "c4_subset") == {names[1]: expected[names[1]]}
    assert result.error_lines == [
        f"aioc4: error: 1 part(s) did not reach S3 and are kept locally: {names[1]}"
    ]
    assert flaky_s3.stats()["rules"]["part2"]["injected"] == 2  # AWS_MAX_ATTEMPTS is honoured
    assert "Traceback" not in result.stderr


def test_missing_bucket_fails_before_any_download(aioc4: Aioc4, hub_bytes: Callable[[], int]) -> None:
    result = aioc4("--s3-path", "s3://no-such-bucket-here/c4")
    assert result.returncode == 1
    assert result.error_lines == ["aioc4: error: S3 bucket 'no-such-bucket-here' does not exist"]
    assert hub_bytes() == 0
    assert not (aioc4.cwd / "data").exists()


def test_no_credentials_fails_before_any_download(
    aioc4: Aioc4, bucket: str, hub_bytes: Callable[[], int]
) -> None:
    result = aioc4(
        "--s3-path", f"s3://{bucket}/c4",
        env={"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None},
    )  # fmt: skip
    assert result.returncode == 1
    assert len(result.error_lines) == 1
    assert result.error_lines[0].startswith("aioc4: error: no AWS credentials found")
    assert hub_bytes() == 0


def test_unwritable_bucket_fails_before_any_download(
    aioc4: Aioc4, flaky_s3: S3FaultProxyProcess, bucket: str, hub_bytes: Callable[[], int]
) -> None:
    flaky_s3.set_rules([{"methods": ["POST"], "query": "uploads", "status": 403, "code": "AccessDenied"}])
    result = aioc4("--s3-path", f"s3://{bucket}/c4", env={"AWS_ENDPOINT_URL_S3": flaky_s3.endpoint})
    assert result.returncode == 1
    assert len(result.error_lines) == 1
    assert result.error_lines[0].startswith(f"aioc4: error: cannot write to s3://{bucket}/c4: AccessDenied")
    assert hub_bytes() == 0


def test_a_rerun_aborts_its_own_stale_multipart_uploads_and_no_other_jobs(
    aioc4: Aioc4, s3: MotoServerProcess, bucket: str
) -> None:
    """A killed run leaves open uploads; the next run of the same job aborts them, but an upload of
    c4_train_10000 (another job whose name starts with this one's) is left alone."""
    ours, theirs = "p/c4_train_1000_part001.jsonl", "p/c4_train_10000_part001.jsonl"

    async def start_uploads() -> None:
        async with s3_client(s3.endpoint) as client:
            for key in (ours, theirs):
                await client.create_multipart_upload(Bucket=bucket, Key=key)

    asyncio.run(start_uploads())
    result = aioc4("--num-samples", "1000", "--max-lines-per-file", "500", "--s3-path", f"s3://{bucket}/p")
    assert result.returncode == 0, result.stderr
    assert open_multipart_uploads(s3, bucket) == [theirs]
