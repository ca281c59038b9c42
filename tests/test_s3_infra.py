"""The S3 test infrastructure itself: moto in server mode, the fault proxy, and the list helpers."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import random
import socket
import time
import urllib.error
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

from scripts.s3_fault_proxy import S3FaultProxyProcess, rule_random
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
# What botocore raises for a dropped connection; both kinds are retried (botocore.retries.standard).
CONNECTION_ERRORS = (ConnectionError, HTTPClientError)
_bucket_numbers = itertools.count()


def by_action(status: int = 0, reset: int = 0, delay: int = 0) -> dict[str, int]:
    """The stats' injected_by_action, which always lists every action."""
    return {"status": status, "reset": reset, "delay": delay}


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
    assert proxy.stats() == {
        "forwarded": 1 + 4 + 1 + 5,
        "injected": 0,
        "injected_by_action": by_action(),
        "peak_in_flight": 1,  # one request at a time
        "rules": {},
    }


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
    assert proxy.stats() == {
        "forwarded": 2,
        "injected": 1,
        "injected_by_action": by_action(status=1),
        "peak_in_flight": 1,  # one request at a time
        "rules": {"part2": {"matched": 1, "injected": 1}},
    }


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
    assert proxy.stats() == {
        "forwarded": 1,
        "injected": 1,
        "injected_by_action": by_action(status=1),
        "peak_in_flight": 1,  # one request at a time
        "rules": {"lists": {"matched": 1, "injected": 1}},
    }


@pytest.mark.parametrize(
    "bad",
    [
        [{"path": "("}],
        [{"action": "explode"}],
        [{"times": -1}],
        {"not": "a list"},
        [{"rate": 1.5}],
        [{"rate": True}],
        [{"header": ["content-md5"]}],
        [{"header": {"content-md5": "("}}],
        [{"action": "delay"}],  # seconds is required
        [{"action": "delay", "seconds": -1}],
        [{"action": "reset", "status": 500}],  # another action's option
        [{"seconds": 1}],
        [{"action": "reset", "after_bytes": -1}],
        [{"action": "reset", "forward_first": "yes"}],
        [{"action": "reset", "after_bytes": 10, "forward_first": True}],
    ],
)
def test_control_api_rejects_bad_rules(proxy: S3FaultProxyProcess, bad: Any) -> None:
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        proxy.set_rules(bad)
    assert excinfo.value.code == 400
    assert "error" in json.loads(excinfo.value.read())


def test_control_api_shows_rules_and_resets(proxy: S3FaultProxyProcess) -> None:
    rules = proxy.set_rules(
        [
            {"methods": ["put"], "path": "x"},
            {
                "name": "cut",
                "action": "reset",
                "header": {"Content-MD5": None},
                "after_bytes": 5,
                "rate": 0.25,
            },
            {"action": "delay", "seconds": 0.5, "times": 2},
        ]
    )
    assert rules[0]["methods"] == ["PUT"]
    assert {key: rules[0][key] for key in ("name", "action", "status", "code")} == {
        "name": "rule0",
        "action": "status",
        "status": 500,
        "code": None,
    }
    assert rules[1] == {
        "name": "cut",
        "action": "reset",
        "methods": None,
        "path": None,
        "query": None,
        "header": {"content-md5": None},
        "times": None,
        "rate": 0.25,
        "after_bytes": 5,
        "forward_first": False,
        "matched": 0,
        "injected": 0,
    }
    assert (rules[2]["seconds"], rules[2]["times"]) == (0.5, 2)
    assert http_json("GET", proxy.endpoint + "/_proxy/rules") == rules
    proxy.reset()
    assert http_json("GET", proxy.endpoint + "/_proxy/rules") == []
    assert proxy.stats() == {
        "forwarded": 0,
        "injected": 0,
        "injected_by_action": by_action(),
        "peak_in_flight": 0,
        "rules": {},
    }


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
            "injected_by_action": by_action(status=1),
            "peak_in_flight": 1,  # one request at a time
            "rules": {"all": {"matched": 1, "injected": 1}},
        }


# --- actions beyond "status", header matching and rates -------------------------------------------------


async def put_with_md5(endpoint: str, bucket: str, key: str, body: bytes) -> None:
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    async with s3_client(endpoint, max_attempts=1, flexible_checksums=False) as client:
        await client.put_object(Bucket=bucket, Key=key, Body=body, ContentMD5=md5)


CUT_PART2 = {"name": "cut", "action": "reset", "methods": "PUT", "path": "_part002"}


@pytest.mark.parametrize("options", [{}, {"after_bytes": 0}, {"after_bytes": 64 * 1024}])
def test_reset_fails_a_call_without_retries(
    moto_server: MotoServerProcess, proxy: S3FaultProxyProcess, options: dict[str, Any]
) -> None:
    """aiohttp itself retries an idempotent request (PUT, GET...) once after a dropped connection, so
    one botocore attempt costs the proxy two matches: a reset needs times=2 to fail a call."""
    bucket = new_bucket(moto_server.endpoint)
    body = b"r" * MIB

    proxy.set_rules([{**CUT_PART2, **options, "times": 2}])
    with pytest.raises(CONNECTION_ERRORS):
        asyncio.run(put(proxy.endpoint, bucket, "en_part002.jsonl", body, max_attempts=1))
    assert proxy.stats()["rules"] == {"cut": {"matched": 2, "injected": 2}}
    assert asyncio.run(list_objects(moto_server.endpoint, bucket)) == {}

    proxy.set_rules([{**CUT_PART2, **options, "times": 1}])  # aiohttp's own retry is enough
    asyncio.run(put(proxy.endpoint, bucket, "en_part002.jsonl", body, max_attempts=1))
    assert proxy.stats() == {
        "forwarded": 1,
        "injected": 3,
        "injected_by_action": by_action(reset=3),
        "peak_in_flight": 1,  # one request at a time
        "rules": {"cut": {"matched": 2, "injected": 1}},
    }
    assert asyncio.run(list_objects(moto_server.endpoint, bucket)) == {"en_part002.jsonl": body}


def test_reset_ridden_over_by_botocore_retries(
    moto_server: MotoServerProcess, proxy: S3FaultProxyProcess
) -> None:
    bucket = new_bucket(moto_server.endpoint)
    proxy.set_rules([{**CUT_PART2, "times": 2}])

    asyncio.run(put(proxy.endpoint, bucket, "en_part002.jsonl", b"retried", max_attempts=2))

    assert proxy.stats()["rules"] == {"cut": {"matched": 3, "injected": 2}}
    assert asyncio.run(list_objects(moto_server.endpoint, bucket)) == {"en_part002.jsonl": b"retried"}


def send_body(sock: socket.socket, total: int) -> int:
    """Send up to ``total`` bytes; how many the kernel took before the connection broke."""
    chunk = b"u" * (64 * 1024)
    sent = 0
    try:
        while sent < total:
            sock.sendall(chunk)
            sent += len(chunk)
    except (ConnectionResetError, BrokenPipeError):
        pass
    return sent


def test_reset_after_bytes_cuts_the_upload_midway(proxy: S3FaultProxyProcess) -> None:
    """The proxy stops reading at after_bytes: a sender of a large body gets reset long before its end."""
    total, after = 64 * MIB, MIB
    proxy.set_rules([{"action": "reset", "methods": "PUT", "after_bytes": after}])
    host, port = proxy.endpoint.removeprefix("http://").rsplit(":", 1)
    head = f"PUT /bucket/key HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {total}\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
        sent = send_body(sock, total)
    assert after <= sent < total / 2
    assert proxy.stats()["injected_by_action"] == by_action(reset=1)


def test_forward_first_stores_but_the_client_never_hears(
    moto_server: MotoServerProcess, proxy: S3FaultProxyProcess
) -> None:
    """Each dropped answer hides a PUT that happened: versioning shows every upload that reached moto."""
    bucket = new_bucket(moto_server.endpoint)

    async def enable_versioning() -> None:
        async with s3_client(moto_server.endpoint) as client:
            await client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})

    async def etags(key: str) -> list[str]:
        async with s3_client(moto_server.endpoint) as client:
            listed = await client.list_object_versions(Bucket=bucket, Prefix=key)
            return [version["ETag"] for version in listed.get("Versions", [])]

    asyncio.run(enable_versioning())
    # times=2: one botocore attempt is two tries (aiohttp retries a PUT once by itself).
    rule = {"name": "lost-answer", "action": "reset", "forward_first": True, "methods": "PUT", "times": 2}

    proxy.set_rules([rule])  # without botocore retries the call fails, yet the object is there
    with pytest.raises(CONNECTION_ERRORS):
        asyncio.run(put(proxy.endpoint, bucket, "a_part001.jsonl", b"one", max_attempts=1))
    proxy.set_rules([rule])  # with them, botocore uploads it again and succeeds
    asyncio.run(put(proxy.endpoint, bucket, "a_part002.jsonl", b"two", max_attempts=3))

    assert asyncio.run(list_objects(moto_server.endpoint, bucket)) == {
        "a_part001.jsonl": b"one",
        "a_part002.jsonl": b"two",
    }
    assert len(set(asyncio.run(etags("a_part001.jsonl")))) == 1
    uploads = asyncio.run(etags("a_part002.jsonl"))
    assert len(uploads) == 3  # two dropped answers, then the one the client saw; all the same bytes
    assert len(set(uploads)) == 1
    assert proxy.stats()["rules"] == {"lost-answer": {"matched": 3, "injected": 2}}


def test_delay_slows_the_call_then_forwards(
    moto_server: MotoServerProcess, proxy: S3FaultProxyProcess
) -> None:
    bucket = new_bucket(moto_server.endpoint)
    proxy.set_rules([{"action": "delay", "seconds": 0.6, "methods": "PUT"}])

    started = time.monotonic()
    asyncio.run(put(proxy.endpoint, bucket, "slow.jsonl", b"late", max_attempts=1))
    elapsed = time.monotonic() - started

    assert elapsed >= 0.6
    assert asyncio.run(list_objects(moto_server.endpoint, bucket)) == {"slow.jsonl": b"late"}
    assert proxy.stats()["injected_by_action"] == by_action(delay=1)


def test_header_rules_tell_checksum_styles_apart(
    moto_server: MotoServerProcess, proxy: S3FaultProxyProcess
) -> None:
    """A store rejecting botocore's default CRC32 header, then one insisting on it (no Content-MD5)."""
    bucket = new_bucket(moto_server.endpoint)
    reject = {"status": 400, "code": "InvalidRequest"}

    proxy.set_rules([{"name": "no-crc", "header": {"x-amz-checksum-crc32": None}, **reject}])
    with pytest.raises(ClientError, match="InvalidRequest") as excinfo:
        asyncio.run(put(proxy.endpoint, bucket, "crc.jsonl", b"crc", max_attempts=1))
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    asyncio.run(put_with_md5(proxy.endpoint, bucket, "md5.jsonl", b"md5"))
    assert proxy.stats()["rules"] == {"no-crc": {"matched": 1, "injected": 1}}

    proxy.set_rules([{"name": "no-md5", "header": {"CONTENT-MD5": None}, **reject}])
    with pytest.raises(ClientError, match="InvalidRequest"):
        asyncio.run(put_with_md5(proxy.endpoint, bucket, "md5-2.jsonl", b"md5"))
    asyncio.run(put(proxy.endpoint, bucket, "crc-2.jsonl", b"crc", max_attempts=1))

    # A value regex narrows the match: CRC32 of b"crc" is not all zeros, so this rule never fires.
    proxy.set_rules([{"name": "zero-crc", "header": {"x-amz-checksum-crc32": "^AAAAAA==$"}, **reject}])
    asyncio.run(put(proxy.endpoint, bucket, "crc-3.jsonl", b"crc", max_attempts=1))

    assert sorted(asyncio.run(list_objects(moto_server.endpoint, bucket))) == [
        "crc-2.jsonl",
        "crc-3.jsonl",
        "md5.jsonl",
    ]
    assert proxy.stats()["rules"] == {"zero-crc": {"matched": 0, "injected": 0}}


def faulted_puts(endpoint: str, bucket: str, count: int) -> list[bool]:
    """Put ``count`` objects without retries; True for each one the proxy failed (with SlowDown)."""

    async def scenario() -> list[str | None]:
        codes: list[str | None] = []
        async with s3_client(endpoint, max_attempts=1) as client:
            for number in range(count):
                try:
                    await client.put_object(Bucket=bucket, Key=f"k{number}", Body=b"x")
                except ClientError as exc:
                    codes.append(exc.response["Error"]["Code"])
                else:
                    codes.append(None)
        return codes

    codes = asyncio.run(scenario())
    assert set(codes) <= {"SlowDown", None}
    return [code is not None for code in codes]


def expected_faults(seed: int, name: str, rate: float, count: int) -> list[bool]:
    rng = rule_random(seed, name)
    return [rng.random() < rate for _ in range(count)]


def test_rate_faults_a_reproducible_fraction(
    moto_server: MotoServerProcess, proxy: S3FaultProxyProcess
) -> None:
    bucket = new_bucket(moto_server.endpoint)
    rule = {"name": "coin", "methods": "PUT", "rate": 0.5, "status": 503}
    count = 30

    proxy.set_rules([rule])
    first = faulted_puts(proxy.endpoint, bucket, count)
    proxy.set_rules([rule])  # new rules draw afresh: the same requests fail again
    second = faulted_puts(proxy.endpoint, bucket, count)
    with S3FaultProxyProcess(moto_server.endpoint, rules=[rule], seed=1) as reseeded:
        other_seed = faulted_puts(reseeded.endpoint, bucket, count)

    assert first == second == expected_faults(0, "coin", 0.5, count)
    assert other_seed == expected_faults(1, "coin", 0.5, count) != first
    assert 0 < sum(first) < count
    assert proxy.stats()["rules"] == {"coin": {"matched": count, "injected": sum(first)}}


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


# ------------------------------------------------------------------------------------- the network model

# Each paced body of PACED_BYTES takes PACED_BYTES / PACE = 1.25 s; the concurrent test's serial time is
# CONCURRENT times that. Timings are lower bounds only, except the one comparison of concurrent against
# serial time, which has a margin of about 3x on an idle machine.
PACE = 4 * MIB
LATENCY_S = 0.2
PACED_BYTES = 5 * MIB  # S3's smallest multipart part
CONCURRENT = 6


@pytest.fixture(scope="module")
def far_proxy(moto_server: MotoServerProcess) -> Iterator[S3FaultProxyProcess]:
    with S3FaultProxyProcess(moto_server.endpoint, pace_bytes_per_s=PACE, latency_s=LATENCY_S) as process:
        yield process


def crc32_b64(data: bytes) -> str:
    """The CRC32 checksum as S3 carries it (x-amz-checksum-crc32)."""
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def test_paced_put_and_get_take_their_size_over_the_pace_plus_the_latency(
    moto_server: MotoServerProcess, far_proxy: S3FaultProxyProcess
) -> None:
    bucket = new_bucket(moto_server.endpoint)
    data = random.Random(7).randbytes(PACED_BYTES + 12_345)  # not a multiple of the proxy's chunk size
    least = len(data) / PACE + LATENCY_S

    async def scenario() -> tuple[float, float, dict[str, Any], bytes]:
        async with s3_client(far_proxy.endpoint) as client:
            began = time.monotonic()
            await client.put_object(Bucket=bucket, Key="paced.jsonl", Body=data)  # with its CRC32 header
            put_s = time.monotonic() - began
            began = time.monotonic()
            response = await client.get_object(Bucket=bucket, Key="paced.jsonl", ChecksumMode="ENABLED")
            async with response["Body"] as stream:
                body = await stream.read()  # botocore checks the body against the CRC32 on the way
            return put_s, time.monotonic() - began, response, body

    put_s, get_s, response, body = asyncio.run(scenario())
    assert body == data
    assert put_s >= least
    assert get_s >= least
    assert response["ChecksumCRC32"] == crc32_b64(data)
    assert response["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'

    async def stored() -> dict[str, Any]:  # what moto itself holds, asked directly
        async with s3_client(moto_server.endpoint) as client:
            head: dict[str, Any] = await client.head_object(
                Bucket=bucket, Key="paced.jsonl", ChecksumMode="ENABLED"
            )
            return head

    head = asyncio.run(stored())
    assert (head["ContentLength"], head["ChecksumCRC32"]) == (len(data), crc32_b64(data))
    assert asyncio.run(list_objects(moto_server.endpoint, bucket)) == {"paced.jsonl": data}


def test_pacing_is_per_request_so_concurrent_parts_add_up(
    moto_server: MotoServerProcess, far_proxy: S3FaultProxyProcess
) -> None:
    bucket = new_bucket(moto_server.endpoint)
    key = "big/concurrent.jsonl"
    parts = [random.Random(number).randbytes(PACED_BYTES) for number in range(1, CONCURRENT + 1)]
    least = PACED_BYTES / PACE + LATENCY_S

    async def upload_part(client: Any, upload_id: str, number: int) -> tuple[dict[str, Any], float]:
        began = time.monotonic()
        part = await client.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=parts[number - 1]
        )
        return {"PartNumber": number, "ETag": part["ETag"]}, time.monotonic() - began

    async def get_range(client: Any, number: int) -> tuple[bytes, float]:
        began = time.monotonic()
        first = (number - 1) * PACED_BYTES
        response = await client.get_object(
            Bucket=bucket, Key=key, Range=f"bytes={first}-{first + PACED_BYTES - 1}"
        )
        async with response["Body"] as stream:
            return await stream.read(), time.monotonic() - began

    async def scenario() -> tuple[
        list[tuple[dict[str, Any], float]], float, list[tuple[bytes, float]], float
    ]:
        far_proxy.reset()
        async with s3_client(far_proxy.endpoint) as client:  # 10 pooled connections: all parts at once
            created = await client.create_multipart_upload(Bucket=bucket, Key=key)
            began = time.monotonic()
            uploads = await asyncio.gather(
                *(upload_part(client, created["UploadId"], n) for n in range(1, CONCURRENT + 1))
            )
            upload_s = time.monotonic() - began
            await client.complete_multipart_upload(
                Bucket=bucket,
                Key=key,
                UploadId=created["UploadId"],
                MultipartUpload={"Parts": [etag for etag, _ in uploads]},
            )
            began = time.monotonic()
            ranges = await asyncio.gather(*(get_range(client, n) for n in range(1, CONCURRENT + 1)))
            return uploads, upload_s, ranges, time.monotonic() - began

    uploads, upload_s, ranges, download_s = asyncio.run(scenario())
    assert all(elapsed >= least for _, elapsed in uploads)  # each part is still paced and delayed
    assert all(elapsed >= least for _, elapsed in ranges)
    assert [body for body, _ in ranges] == parts
    serial = CONCURRENT * PACED_BYTES / PACE
    for what, total in [("uploads", upload_s), ("ranged GETs", download_s)]:
        assert total < 0.6 * serial, (
            f"{CONCURRENT} paced {what} at once took {total:.2f} s, serially {serial} s"
        )
    assert asyncio.run(list_objects(moto_server.endpoint, bucket)) == {key: b"".join(parts)}
    stats = far_proxy.stats()
    assert (stats["injected"], stats["peak_in_flight"]) == (0, CONCURRENT)  # each >= 1.2 s: all overlap


def test_latency_holds_every_answer_and_changes_at_runtime(
    moto_server: MotoServerProcess, far_proxy: S3FaultProxyProcess
) -> None:
    bucket = new_bucket(moto_server.endpoint)

    async def timed(call: str, **kwargs: Any) -> tuple[int, float]:
        """HTTP status and duration of one call through the proxy, without retries."""
        async with s3_client(far_proxy.endpoint, max_attempts=1) as client:
            began = time.monotonic()
            try:
                response = await getattr(client, call)(Bucket=bucket, **kwargs)
            except ClientError as error:
                response = error.response
            return response["ResponseMetadata"]["HTTPStatusCode"], time.monotonic() - began

    assert far_proxy.network() == {"pace_bytes_per_s": PACE, "latency_s": LATENCY_S}
    try:
        status, elapsed = asyncio.run(timed("put_object", Key="small.jsonl", Body=b"{}\n"))
        assert (status, elapsed >= LATENCY_S) == (200, True)
        status, elapsed = asyncio.run(timed("head_object", Key="missing.jsonl"))  # errors too
        assert (status, elapsed >= LATENCY_S) == (404, True)
        far_proxy.set_rules([{"status": 503}])  # and injected ones
        status, elapsed = asyncio.run(timed("head_object", Key="small.jsonl"))
        assert (status, elapsed >= LATENCY_S) == (503, True)
        far_proxy.reset()
        assert far_proxy.network()["latency_s"] == LATENCY_S  # a reset leaves the network alone

        assert far_proxy.set_network(latency_s=1.5) == {"pace_bytes_per_s": PACE, "latency_s": 1.5}
        status, elapsed = asyncio.run(timed("head_object", Key="small.jsonl"))
        assert (status, elapsed >= 1.5) == (200, True)
        bad_changes: list[dict[str, Any]] = [{"latency_s": -1}, {"pace_bytes_per_s": "fast"}, {"jitter_s": 1}]
        for bad in bad_changes:
            with pytest.raises(urllib.error.HTTPError) as raised:
                far_proxy.set_network(**bad)
            assert raised.value.code == 400
        assert far_proxy.network() == {"pace_bytes_per_s": PACE, "latency_s": 1.5}
    finally:
        far_proxy.reset()
        far_proxy.set_network(latency_s=LATENCY_S)


def test_the_proxy_is_unpaced_by_default(proxy: S3FaultProxyProcess) -> None:
    assert proxy.network() == {"pace_bytes_per_s": 0.0, "latency_s": 0.0}
