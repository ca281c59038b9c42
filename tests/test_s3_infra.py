"""The S3 test infrastructure itself: moto in server mode, the fault proxy, and the list helpers."""

from __future__ import annotations

import asyncio
import itertools
import json
import urllib.error
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from scripts.s3_fault_proxy import S3FaultProxyProcess
from scripts.s3_server import (
    MotoServerProcess,
    ServerProcessError,
    create_bucket,
    http_json,
    list_multipart_uploads,
    list_objects,
    s3_client,
)

MIB = 1024 * 1024
_bucket_numbers = itertools.count()


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoServerProcess]:
    with MotoServerProcess() as server:
        yield server


@pytest.fixture(scope="module")
def proxy(moto_server: MotoServerProcess) -> Iterator[S3FaultProxyProcess]:
    with S3FaultProxyProcess(moto_server.endpoint) as process:
        yield process


@pytest.fixture(autouse=True)
def _clean_proxy(request: pytest.FixtureRequest) -> None:
    """Tests share the module-scoped proxy; each starts with no rules and zero counters."""
    if "proxy" in request.fixturenames:
        request.getfixturevalue("proxy").reset()


def new_bucket(endpoint: str) -> str:
    """A fresh bucket per test, so module-scoped servers need no cleanup between tests."""
    bucket = f"infra-{next(_bucket_numbers)}"
    asyncio.run(create_bucket(endpoint, bucket))
    return bucket


async def put(endpoint: str, bucket: str, key: str, body: bytes, max_attempts: int | None = None) -> None:
    async with s3_client(endpoint, max_attempts=max_attempts) as client:
        await client.put_object(Bucket=bucket, Key=key, Body=body)


def put_error(endpoint: str, bucket: str, key: str, max_attempts: int) -> dict[str, Any]:
    """Run a put that must fail and return botocore's error dict and response metadata."""
    with pytest.raises(ClientError) as excinfo:
        asyncio.run(put(endpoint, bucket, key, b"x", max_attempts=max_attempts))
    response: dict[str, Any] = excinfo.value.response
    return response


def test_env_names_standard_aws_variables(moto_server: MotoServerProcess) -> None:
    assert moto_server.endpoint.startswith("http://127.0.0.1:")
    assert moto_server.env() == {
        "AWS_ENDPOINT_URL_S3": moto_server.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@pytest.mark.parametrize("via", ["moto", "proxy"])
def test_put_get_round_trip_and_list(
    via: str, moto_server: MotoServerProcess, proxy: S3FaultProxyProcess
) -> None:
    endpoint = moto_server.endpoint if via == "moto" else proxy.endpoint
    bucket = new_bucket(endpoint)
    # Characters botocore percent-encodes, so the proxy must relay the raw path untouched.
    objects = {
        "data/part001.jsonl": b'{"text": "a"}\n',
        "data/odd key+~%é.jsonl": bytes(range(256)),
        "other/empty.jsonl": b"",
    }

    async def scenario() -> tuple[bytes, int]:
        async with s3_client(endpoint) as client:
            for key, body in objects.items():
                await client.put_object(Bucket=bucket, Key=key, Body=body)
            response = await client.get_object(Bucket=bucket, Key="data/part001.jsonl")
            async with response["Body"] as stream:
                got = await stream.read()
            head = await client.head_object(Bucket=bucket, Key="data/odd key+~%é.jsonl")
            return got, head["ContentLength"]

    got, head_length = asyncio.run(scenario())
    assert got == objects["data/part001.jsonl"]
    assert head_length == 256  # HEAD keeps the upstream Content-Length through the proxy
    assert asyncio.run(list_objects(endpoint, bucket)) == objects
    assert asyncio.run(list_objects(endpoint, bucket, prefix="data/")) == {
        key: body for key, body in objects.items() if key.startswith("data/")
    }


def test_list_objects_follows_pages(moto_server: MotoServerProcess, proxy: S3FaultProxyProcess) -> None:
    bucket = new_bucket(moto_server.endpoint)
    objects = {f"k{i:02d}": str(i).encode() for i in range(7)}

    async def put_all() -> None:
        async with s3_client(moto_server.endpoint) as client:
            for key, body in objects.items():
                await client.put_object(Bucket=bucket, Key=key, Body=body)

    asyncio.run(put_all())
    assert asyncio.run(list_objects(proxy.endpoint, bucket, page_size=3)) == objects
    assert proxy.stats()["forwarded"] == 3 + 7  # three list pages, then one GET per object


def test_multipart_upload_through_proxy(moto_server: MotoServerProcess, proxy: S3FaultProxyProcess) -> None:
    bucket = new_bucket(proxy.endpoint)
    parts = [b"a" * (5 * MIB), b"b" * (5 * MIB + 1), b"tail"]
    key = "big/part000.jsonl"

    async def upload(complete: bool) -> None:
        async with s3_client(proxy.endpoint) as client:
            created = await client.create_multipart_upload(Bucket=bucket, Key=key)
            etags = []
            for number, body in enumerate(parts, start=1):
                part = await client.upload_part(
                    Bucket=bucket, Key=key, UploadId=created["UploadId"], PartNumber=number, Body=body
                )
                etags.append({"PartNumber": number, "ETag": part["ETag"]})
            if complete:
                await client.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=created["UploadId"], MultipartUpload={"Parts": etags}
                )

    asyncio.run(upload(complete=False))
    assert asyncio.run(list_multipart_uploads(proxy.endpoint, bucket)) == [key]
    asyncio.run(upload(complete=True))
    assert asyncio.run(list_multipart_uploads(moto_server.endpoint, bucket)) == [key]  # the first one
    assert asyncio.run(list_objects(moto_server.endpoint, bucket)) == {key: b"".join(parts)}
    # create bucket, (create + 3 parts), list uploads, (create + 3 parts + complete); the rest went direct
    assert proxy.stats() == {"forwarded": 1 + 4 + 1 + 5, "injected": 0, "rules": {}}


def test_rule_fails_only_matching_puts(moto_server: MotoServerProcess, proxy: S3FaultProxyProcess) -> None:
    bucket = new_bucket(moto_server.endpoint)
    proxy.set_rules([{"name": "part2", "methods": ["PUT"], "path": "_part002", "status": 503}])

    asyncio.run(put(proxy.endpoint, bucket, "c4/en_part001.jsonl", b"one", max_attempts=1))
    error = put_error(proxy.endpoint, bucket, "c4/en_part002.jsonl", max_attempts=1)
    asyncio.run(put(proxy.endpoint, bucket, "c4/en_part003.jsonl", b"three", max_attempts=1))

    assert error["Error"]["Code"] == "SlowDown"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert asyncio.run(list_objects(moto_server.endpoint, bucket)) == {
        "c4/en_part001.jsonl": b"one",
        "c4/en_part003.jsonl": b"three",
    }
    assert proxy.stats() == {"forwarded": 2, "injected": 1, "rules": {"part2": {"matched": 1, "injected": 1}}}


def test_botocore_retries_then_gives_up(moto_server: MotoServerProcess, proxy: S3FaultProxyProcess) -> None:
    bucket = new_bucket(moto_server.endpoint)
    proxy.set_rules([{"methods": "PUT", "path": "_part002", "status": 500}])

    error = put_error(proxy.endpoint, bucket, "en_part002.jsonl", max_attempts=3)

    assert error["Error"]["Code"] == "InternalError"
    assert error["ResponseMetadata"]["RetryAttempts"] == 2
    assert proxy.stats()["rules"] == {"rule0": {"matched": 3, "injected": 3}}
    assert asyncio.run(list_objects(moto_server.endpoint, bucket)) == {}


def test_times_fails_first_matches_only(moto_server: MotoServerProcess, proxy: S3FaultProxyProcess) -> None:
    bucket = new_bucket(moto_server.endpoint)
    proxy.set_rules([{"name": "once", "methods": ["PUT"], "path": "_part002", "times": 1}])

    put_error(proxy.endpoint, bucket, "en_part002.jsonl", max_attempts=1)
    asyncio.run(put(proxy.endpoint, bucket, "en_part002.jsonl", b"second try", max_attempts=1))
    # With retries on, a single call rides over one injected failure.
    proxy.set_rules([{"name": "once", "methods": ["PUT"], "path": "_part002", "times": 1}])
    asyncio.run(put(proxy.endpoint, bucket, "en_part002.jsonl", b"retried", max_attempts=3))

    assert proxy.stats()["rules"] == {"once": {"matched": 2, "injected": 1}}
    assert asyncio.run(list_objects(moto_server.endpoint, bucket)) == {"en_part002.jsonl": b"retried"}


def test_rules_match_method_and_query(moto_server: MotoServerProcess, proxy: S3FaultProxyProcess) -> None:
    bucket = new_bucket(moto_server.endpoint)
    asyncio.run(put(moto_server.endpoint, bucket, "a_part002.jsonl", b"x"))
    proxy.set_rules([{"name": "lists", "methods": "GET", "query": "list-type=2", "status": 503}])

    async def get_then_list() -> bytes:
        async with s3_client(proxy.endpoint, max_attempts=1) as client:
            response = await client.get_object(Bucket=bucket, Key="a_part002.jsonl")
            async with response["Body"] as stream:
                body: bytes = await stream.read()
            with pytest.raises(ClientError, match="SlowDown"):
                await client.list_objects_v2(Bucket=bucket)
            return body

    assert asyncio.run(get_then_list()) == b"x"
    assert proxy.stats() == {"forwarded": 1, "injected": 1, "rules": {"lists": {"matched": 1, "injected": 1}}}


def test_control_api_rejects_bad_rules_and_resets(proxy: S3FaultProxyProcess) -> None:
    for bad in ([{"path": "("}], [{"action": "explode"}], [{"times": -1}], {"not": "a list"}):
        with pytest.raises(urllib.error.HTTPError) as excinfo:
            proxy.set_rules(bad)  # type: ignore[arg-type]
        assert excinfo.value.code == 400
        assert "error" in json.loads(excinfo.value.read())
    rules = proxy.set_rules([{"methods": ["put"], "path": "x"}])
    assert rules[0]["methods"] == ["PUT"]
    assert http_json("GET", proxy.endpoint + "/_proxy/rules") == rules
    proxy.reset()
    assert http_json("GET", proxy.endpoint + "/_proxy/rules") == []
    assert proxy.stats() == {"forwarded": 0, "injected": 0, "rules": {}}


def test_initial_rules_from_command_line(moto_server: MotoServerProcess) -> None:
    rules = [{"name": "all", "status": 500}]

    async def create() -> None:
        async with s3_client(process.endpoint, max_attempts=1) as client:
            await client.create_bucket(Bucket="never-created")

    with S3FaultProxyProcess(moto_server.endpoint, rules=rules) as process:
        with pytest.raises(ClientError, match="InternalError"):
            asyncio.run(create())
        assert process.stats() == {
            "forwarded": 0,
            "injected": 1,
            "rules": {"all": {"matched": 1, "injected": 1}},
        }


def test_reset_empties_moto(moto_server: MotoServerProcess) -> None:
    bucket = new_bucket(moto_server.endpoint)
    asyncio.run(put(moto_server.endpoint, bucket, "k", b"v"))

    moto_server.reset()

    async def bucket_names() -> list[str]:
        async with s3_client(moto_server.endpoint) as client:
            return [b["Name"] for b in (await client.list_buckets())["Buckets"]]

    assert asyncio.run(bucket_names()) == []


def test_start_failure_reports_child_stderr(moto_server: MotoServerProcess) -> None:
    taken_port = int(moto_server.endpoint.rsplit(":", 1)[1])
    with (
        pytest.raises(ServerProcessError, match="Address already in use"),
        MotoServerProcess(port=taken_port),
    ):
        pass
