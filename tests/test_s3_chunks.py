"""Uploads of parts in concurrent chunks: when a part is split (pure), what the link meter concludes,
the file-range bodies, and against moto's server (through the fault proxy's network model where a far
link is wanted) exact objects, the request bound, aborts on failure and cancellation, and the rate cap."""

from __future__ import annotations

import asyncio
import io
import math
import os
import random
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aioc4.checksum import crc32_hex
from aioc4.config import DEFAULT_UPLOAD_CONNECTIONS, S3Target
from aioc4.errors import UploadError
from aioc4.rate import RateLimit
from aioc4.s3_storage import (
    MIN_CHUNK,
    MULTIPART_CHUNK,
    MULTIPART_THRESHOLD,
    FileRange,
    LinkMeter,
    RequestSlots,
    S3Storage,
    chunk_size_for,
)
from scripts.s3_fault_proxy import S3FaultProxyProcess
from scripts.s3_server import (
    FAKE_ACCESS_KEY,
    FAKE_SECRET_KEY,
    REGION,
    MotoServerProcess,
    list_multipart_uploads,
    list_objects,
    s3_client,
)

MB = 1_000_000
PACE = 4 * 1024 * 1024  # bytes/s per request: a 5 MiB chunk takes 1.25 s
LATENCY_S = 0.02
THREE_CHUNKS = 3 * MIN_CHUNK  # split (at the initial rate) into exactly three 5 MiB chunks


# --- when to split (pure) ------------------------------------------------------------------------------


def test_a_usual_part_stays_one_put_on_a_fast_link() -> None:
    assert chunk_size_for(24 * MB, 300 * MB, 24) is None  # loopback
    assert chunk_size_for(24 * MB, 85 * MB, 24) is None  # one EC2 request stream


def test_a_usual_part_goes_up_in_five_chunks_over_a_slow_link() -> None:
    chunk = chunk_size_for(24 * MB, 5 * MB, 24)
    assert chunk == MIN_CHUNK
    assert math.ceil(24 * MB / chunk) == 5


def test_chunks_last_about_a_second_or_fill_the_free_connections() -> None:
    assert chunk_size_for(200 * MB, 40 * MB, 0) == 40 * MB  # 5 s in one request: five of ~1 s
    assert chunk_size_for(200 * MB, 40 * MB, 16) == 200 * MB // 16  # sixteen idle connections: use them


def test_no_split_when_it_cannot_pay() -> None:
    assert chunk_size_for(2 * MIN_CHUNK - 1, 1 * MB, 24) is None  # not two chunks of S3's minimum
    assert chunk_size_for(2 * MIN_CHUNK, 1 * MB, 24) == MIN_CHUNK
    assert chunk_size_for(10 * MB, 5.1 * MB, 24) is None  # under two seconds
    assert chunk_size_for(24 * MB, 5 * MB, 24, saturated=True) is None  # more requests carry no more


def test_a_part_over_the_threshold_is_always_multipart() -> None:
    size = MULTIPART_THRESHOLD + 1
    assert chunk_size_for(size, 1000 * MB, 24) == MULTIPART_CHUNK
    assert chunk_size_for(size, 5 * MB, 24, saturated=True) == MULTIPART_CHUNK
    huge = 200 * 1024**3
    assert chunk_size_for(huge, 5 * MB, 24, saturated=True) == math.ceil(huge / 10_000)
    assert chunk_size_for(huge, 1000 * MB, 24) == math.ceil(huge / 215)  # 215 s alone: ~1 s chunks


@pytest.mark.parametrize("rate", [0.5 * MB, 5 * MB, 50 * MB, 1e12])
@pytest.mark.parametrize("free", [0, 1, 24, 1000])
@pytest.mark.parametrize("size", [10 * MB, 24 * MB, 70 * MB, 3 * 1024**3, 5 * 1024**4])
def test_chunks_are_never_below_s3s_minimum_nor_more_than_10000(size: int, free: int, rate: float) -> None:
    chunk = chunk_size_for(size, rate, free)
    if chunk is not None:
        assert MIN_CHUNK <= chunk <= 5 * 1024**3
        assert math.ceil(size / chunk) <= 10_000


# --- the link meter ------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_the_request_rate_is_bytes_over_seconds_and_the_initial_guess_until_then() -> None:
    meter = LinkMeter(initial=7 * MB)
    assert meter.request_rate == 7 * MB
    meter.add(10 * MB, 1.0, 1.0)
    meter.add(1000, 0.1, 1.0)  # a tiny request, all latency, hardly counts
    assert meter.request_rate == pytest.approx(10 * MB / 1.1, rel=0.01)


def test_requests_limited_on_their_own_are_not_saturated() -> None:
    """A far link: every request carries 5 MB/s however many are in flight."""
    meter = LinkMeter()
    for concurrency in [2, 4, 8, 16, 12, 6, 3] * 3:
        meter.add(5 * MB, 1.0, concurrency)
    assert not meter.saturated
    assert meter.request_rate == pytest.approx(5 * MB)


def test_requests_sharing_one_bottleneck_are_saturated() -> None:
    """Loopback against a busy moto: 60 MB/s in all, shared by the requests in flight."""
    meter = LinkMeter()
    for concurrency in [5, 10, 15, 12, 4, 2, 8] * 3:
        meter.add(5 * MB, 5 * MB / (60 * MB / concurrency), concurrency)
    assert meter.saturated


def test_without_different_concurrencies_the_verdict_stands() -> None:
    meter = LinkMeter()
    for _ in range(30):
        meter.add(5 * MB, 1.0, 16)  # slow, but all at one concurrency: no way to tell why
    assert not meter.saturated
    for concurrency in [2, 16, 4, 12]:
        meter.add(5 * MB, 5 * MB / (40 * MB / concurrency), concurrency)
    assert meter.saturated
    for _ in range(200):  # long after the varied ones are forgotten
        meter.add(5 * MB, 5 * MB / (40 * MB / 16), 16)
    assert meter.saturated


def test_requests_carrying_most_of_the_upload_cap_are_saturated() -> None:
    for cap, saturated in [(20 * MB, True), (40 * MB, False)]:
        meter = LinkMeter(cap=cap)
        assert not meter.saturated
        for _ in range(10):
            meter.add(5 * MB, 1.0, 4)  # four at a time, 5 MB/s each
        assert meter.carried == pytest.approx(20 * MB)
        assert meter.saturated is saturated


def test_begin_and_end_measure_the_average_concurrency_meanwhile() -> None:
    clock = FakeClock()
    meter = LinkMeter(clock=clock)
    measured: list[tuple[int, float, float]] = []
    meter.add = lambda size, seconds, concurrency: measured.append((size, seconds, concurrency))  # type: ignore[method-assign]
    first = meter.begin()
    clock.now += 1.0
    second = meter.begin()
    clock.now += 1.0
    meter.end(first, 4 * MB)  # alone for 1 s, with the second for 1 s
    clock.now += 2.0
    meter.end(second, None)  # failed: measures nothing
    assert measured == [(4 * MB, 2.0, 1.5)]
    assert meter.in_flight == 0


# --- the request bound ----------------------------------------------------------------------------------


def test_request_slots_serve_first_come_first_served() -> None:
    async def scenario() -> tuple[list[str], list[int]]:
        slots = RequestSlots(1)
        served: list[str] = []
        free: list[int] = [slots.free]

        async def request(name: str) -> None:
            async with slots.slot():
                served.append(name)
                await asyncio.sleep(0.01)

        async with asyncio.TaskGroup() as group:
            for name in ["A1", "A2", "B1", "A3", "C1"]:  # part A asked first, then B, A again, C
                group.create_task(request(name))
            await asyncio.sleep(0)
            free.append(slots.free)
        free.append(slots.free)
        return served, free

    served, free = asyncio.run(scenario())
    assert served == ["A1", "A2", "B1", "A3", "C1"]
    assert free == [1, 0, 1]


# --- the file-range body ---------------------------------------------------------------------------------


@pytest.fixture
def data_file(tmp_path: Path) -> tuple[Path, bytes]:
    data = random.Random(3).randbytes(1000)
    path = tmp_path / "part.jsonl"
    path.write_bytes(data)
    return path, data


def test_a_file_range_reads_seeks_and_tells_within_its_range(data_file: tuple[Path, bytes]) -> None:
    path, data = data_file
    with FileRange.open(path, 100, 300) as body:
        assert (body.readable(), body.seekable()) == (True, True)
        assert body.read(50) == data[100:150]
        assert body.tell() == 50
        assert body.read() == data[150:400]
        assert body.read(10) == b""  # the end of the range, not of the file
        assert body.seek(-20, io.SEEK_END) == 280
        assert body.read(100) == data[380:400]
        body.seek(10)
        body.seek(5, io.SEEK_CUR)
        buffer = bytearray(30)
        assert body.readinto(buffer) == 30
        assert bytes(buffer) == data[115:145]
        with pytest.raises(ValueError, match="negative"):
            body.seek(-1)
        with pytest.raises(io.UnsupportedOperation, match="fileno"):  # aiohttp must not size the whole file
            body.fileno()


def test_a_retry_rewinds_to_the_start_of_the_range(data_file: tuple[Path, bytes]) -> None:
    path, data = data_file
    with FileRange.open(path, 600, 400) as body:
        first = body.read(256) + body.read(256)
        assert body.seek(0) == 0  # what botocore does before sending again
        assert body.read(256) + body.read(256) == first == data[600:]


class RecordingRate(RateLimit):
    def __init__(self) -> None:
        super().__init__(1e12)
        self.taken: list[int] = []

    def take_blocking(self, size: int) -> None:
        self.taken.append(size)


def test_pieces_read_in_a_thread_are_paced_and_those_read_on_the_event_loop_are_not(
    data_file: tuple[Path, bytes],
) -> None:
    """aiohttp reads in its executor (sending); botocore reads on the loop to sign (not sending)."""
    path, data = data_file
    rate = RecordingRate()

    async def read_on_loop_then_in_thread() -> bytes:
        with FileRange.open(path, 0, 1000, rate=rate) as body:
            body.read(400)
            body.seek(0)
            return b"".join(await asyncio.to_thread(lambda: [body.read(256) for _ in range(5)]))

    assert asyncio.run(read_on_loop_then_in_thread()) == data
    assert rate.taken == [256, 256, 256, 232]


# --- against moto ------------------------------------------------------------------------------------------


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Credentials for moto and nothing else from this machine's AWS setup."""
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))


@pytest.fixture(scope="module")
def far(s3: MotoServerProcess) -> Iterator[S3FaultProxyProcess]:
    """moto behind a far link: 4 MiB/s per request, 20 ms before every answer."""
    with S3FaultProxyProcess(s3.endpoint, pace_bytes_per_s=PACE, latency_s=LATENCY_S) as proxy:
        yield proxy


@pytest.fixture
def far_link(far: S3FaultProxyProcess) -> S3FaultProxyProcess:
    far.reset()
    return far


def make_part(folder: Path, name: str, size: int, seed: int) -> tuple[Path, bytes]:
    data = random.Random(seed).randbytes(size)
    path = folder / name
    path.write_bytes(data)
    return path, data


async def put(storage: S3Storage, path: Path, data: bytes) -> None:
    await storage.put_file(path.name, path, size=len(data), crc32=crc32_hex(zlib.crc32(data)))


async def heads(endpoint: str, bucket: str, keys: list[str]) -> dict[str, dict[str, Any]]:
    async with s3_client(endpoint) as client:
        return {key: await client.head_object(Bucket=bucket, Key=key) for key in keys}


def test_concurrent_parts_go_up_in_chunks_side_by_side_and_arrive_exact(
    aws: None, s3: MotoServerProcess, far_link: S3FaultProxyProcess, bucket: str, tmp_path: Path
) -> None:
    """Four parts of three chunks each at once, through 12 connections (more than aiobotocore's default
    pool of 10); every data request carries its CRC-32, every object its part's CRC-32 as metadata."""
    far_link.set_rules(
        [
            {"name": "crc32", "methods": ["PUT"], "header": {"x-amz-checksum-crc32": None},
             "action": "delay", "seconds": 0},
            {"name": "no checksum", "methods": ["PUT"], "action": "delay", "seconds": 0},
        ]
    )  # fmt: skip
    parts = [make_part(tmp_path, f"c4_part{n}.jsonl", THREE_CHUNKS, seed=n) for n in range(4)]

    async def upload() -> int:
        async with S3Storage(
            S3Target(bucket, "c"), endpoint_url=far_link.endpoint, connections=12
        ) as storage:
            await asyncio.gather(*(put(storage, path, data) for path, data in parts))
            return int(storage._client.meta.config.max_pool_connections)

    pool = asyncio.run(upload())
    assert asyncio.run(list_objects(s3.endpoint, bucket)) == {f"c/{path.name}": data for path, data in parts}
    stored = asyncio.run(heads(s3.endpoint, bucket, [f"c/{path.name}" for path, _ in parts]))
    for path, data in parts:
        head = stored[f"c/{path.name}"]
        assert head["ETag"].endswith('-3"')  # three chunks
        assert head["Metadata"] == {"crc32": crc32_hex(zlib.crc32(data))}
    stats = far_link.stats()
    assert stats["rules"]["crc32"]["injected"] == 12
    assert stats["rules"]["no checksum"]["matched"] == 0
    # Data requests stay within the 12 connections, plus one control request (create, complete, HEAD)
    # at most per part; more than one request per part at once is what the splitting is for.
    assert 4 < stats["peak_in_flight"] <= 12 + 4
    assert pool > 12
    assert asyncio.run(list_multipart_uploads(s3.endpoint, bucket)) == []


def test_a_body_is_covered_by_its_signed_checksum_without_a_second_hash(
    aws: None, s3: MotoServerProcess, far_link: S3FaultProxyProcess, bucket: str, tmp_path: Path
) -> None:
    """Over plain HTTP botocore would also hash every body byte (SHA-256) into the signature: the
    CRC-32 header S3 verifies covers the body instead, for whole parts and chunks alike."""
    far_link.set_rules(
        [
            {"name": "unsigned", "methods": ["PUT"], "action": "delay", "seconds": 0,
             "header": {"x-amz-content-sha256": "^UNSIGNED-PAYLOAD$", "x-amz-checksum-crc32": None}},
            {"name": "other", "methods": ["PUT"], "action": "delay", "seconds": 0},
        ]
    )  # fmt: skip
    chunked = make_part(tmp_path, "c4_chunked.jsonl", THREE_CHUNKS, seed=7)
    whole = make_part(tmp_path, "c4_whole.jsonl", MB, seed=8)

    async def upload() -> None:
        async with S3Storage(S3Target(bucket, "u"), endpoint_url=far_link.endpoint) as storage:
            await asyncio.gather(put(storage, *chunked), put(storage, *whole))

    asyncio.run(upload())
    assert asyncio.run(list_objects(s3.endpoint, bucket)) == {
        f"u/{path.name}": data for path, data in (chunked, whole)
    }
    rules = far_link.stats()["rules"]
    assert {name: rule["injected"] for name, rule in rules.items()} == {"unsigned": 4, "other": 0}


class CountingClient:
    """An S3 client that counts its data requests in flight (and lets everything else through)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.in_flight = self.peak = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def _counted(self, call: str, **kwargs: Any) -> Any:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            return await getattr(self._client, call)(**kwargs)
        finally:
            self.in_flight -= 1

    async def put_object(self, **kwargs: Any) -> Any:
        return await self._counted("put_object", **kwargs)

    async def upload_part(self, **kwargs: Any) -> Any:
        return await self._counted("upload_part", **kwargs)


def test_data_requests_never_exceed_the_connections_whatever_the_parts(
    aws: None, s3: MotoServerProcess, far_link: S3FaultProxyProcess, bucket: str, tmp_path: Path
) -> None:
    parts = [make_part(tmp_path, f"c4_part{n}.jsonl", THREE_CHUNKS, seed=n) for n in range(2)]
    parts.append(make_part(tmp_path, "c4_small.jsonl", MB, seed=9))  # one PUT: it counts too

    async def upload() -> int:
        async with s3_client(far_link.endpoint) as client:
            counting = CountingClient(client)
            storage = S3Storage(S3Target(bucket, "n"), connections=3, client=counting)
            async with storage:
                await asyncio.gather(*(put(storage, path, data) for path, data in parts))
            return counting.peak

    assert asyncio.run(upload()) == 3
    assert asyncio.run(list_objects(s3.endpoint, bucket)) == {f"n/{path.name}": data for path, data in parts}


def test_a_chunk_refused_for_good_aborts_the_upload_and_cancels_the_chunks_in_flight(
    aws: None, s3: MotoServerProcess, far_link: S3FaultProxyProcess, bucket: str, tmp_path: Path
) -> None:
    far_link.set_rules(
        [
            {"name": "denied", "methods": ["PUT"], "query": "partNumber=2", "status": 403,
             "code": "AccessDenied"},
            {"name": "slow", "methods": ["PUT"], "query": "partNumber", "action": "delay", "seconds": 5},
        ]
    )  # fmt: skip
    path, data = make_part(tmp_path, "c4_part1.jsonl", THREE_CHUNKS, seed=1)

    async def upload() -> UploadError:
        async with S3Storage(S3Target(bucket, "d"), endpoint_url=far_link.endpoint) as storage:
            with pytest.raises(UploadError) as raised:
                await put(storage, path, data)
            return raised.value

    began = time.monotonic()
    error = asyncio.run(upload())
    print(f"failed after {time.monotonic() - began:.2f} s (the other chunks were held 5 s)")
    assert error.permanent
    assert "AccessDenied" in str(error)
    assert far_link.stats()["rules"]["slow"]["injected"] == 2  # chunks 1 and 3 were in flight
    assert asyncio.run(list_multipart_uploads(s3.endpoint, bucket)) == []
    assert asyncio.run(list_objects(s3.endpoint, bucket)) == {}


def test_cancelling_a_chunked_upload_aborts_it(
    aws: None, s3: MotoServerProcess, far_link: S3FaultProxyProcess, bucket: str, tmp_path: Path
) -> None:
    far_link.set_rules(
        [{"name": "slow", "methods": ["PUT"], "query": "partNumber", "action": "delay", "seconds": 5}]
    )
    path, data = make_part(tmp_path, "c4_part1.jsonl", THREE_CHUNKS, seed=1)

    async def upload_then_cancel() -> None:
        async with S3Storage(S3Target(bucket, "x"), endpoint_url=far_link.endpoint) as storage:
            task = asyncio.create_task(put(storage, path, data))
            for _ in range(600):  # until every chunk is in flight (30 s at most)
                if (await asyncio.to_thread(far_link.stats))["rules"]["slow"]["matched"] == 3:
                    break
                await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(upload_then_cancel())
    assert asyncio.run(list_multipart_uploads(s3.endpoint, bucket)) == []
    assert asyncio.run(list_objects(s3.endpoint, bucket)) == {}


def test_failed_chunks_and_puts_are_sent_again_from_the_start_of_their_range(
    aws: None, s3: MotoServerProcess, far_link: S3FaultProxyProcess, bucket: str, tmp_path: Path
) -> None:
    """botocore retries a 500 by rewinding the body: the bytes sent again must be the same range."""
    far_link.set_network(pace_bytes_per_s=0)
    try:
        far_link.set_rules(
            [
                {"name": "chunk 2", "methods": ["PUT"], "query": "partNumber=2", "status": 500, "times": 1},
                {"name": "put", "methods": ["PUT"], "path": "whole", "status": 500, "times": 1},
            ]
        )
        chunked = make_part(tmp_path, "c4_chunked.jsonl", THREE_CHUNKS, seed=4)
        whole = make_part(tmp_path, "c4_whole.jsonl", 3 * MB, seed=5)

        async def upload() -> None:
            async with S3Storage(S3Target(bucket, "r"), endpoint_url=far_link.endpoint) as storage:
                await put(storage, *chunked)
                await put(storage, *whole)

        asyncio.run(upload())
        stats = far_link.stats()
    finally:
        far_link.set_network(pace_bytes_per_s=PACE)
    assert {name: rule["injected"] for name, rule in stats["rules"].items()} == {"chunk 2": 1, "put": 1}
    assert asyncio.run(list_objects(s3.endpoint, bucket)) == {
        f"r/{path.name}": data for path, data in (chunked, whole)
    }


def test_md5_chunks_carry_content_md5(
    aws: None, s3: MotoServerProcess, far_link: S3FaultProxyProcess, bucket: str, tmp_path: Path
) -> None:
    far_link.set_rules(
        [
            {"name": "md5", "methods": ["PUT"], "header": {"content-md5": None}, "action": "delay",
             "seconds": 0},
            {"name": "other", "methods": ["PUT"], "action": "delay", "seconds": 0},
        ]
    )  # fmt: skip
    path, data = make_part(tmp_path, "c4_part1.jsonl", THREE_CHUNKS, seed=6)

    async def upload() -> None:
        async with S3Storage(
            S3Target(bucket, "m"), endpoint_url=far_link.endpoint, checksum="md5"
        ) as storage:
            await put(storage, path, data)

    asyncio.run(upload())
    assert asyncio.run(list_objects(s3.endpoint, bucket)) == {f"m/{path.name}": data}
    assert {name: rule["injected"] for name, rule in far_link.stats()["rules"].items()} == {
        "md5": 3,
        "other": 0,
    }


def test_the_upload_cap_holds_in_aggregate_over_puts_and_chunks(
    aws: None, s3: MotoServerProcess, bucket: str, tmp_path: Path
) -> None:
    """A lower bound only: B bytes under a cap of r take at least 0.9 x B / r."""
    cap = 8 * MB
    parts = [
        make_part(tmp_path, "c4_chunked.jsonl", THREE_CHUNKS, seed=7),  # three chunks, at the initial rate
        make_part(tmp_path, "c4_whole.jsonl", 4 * MB, seed=8),  # one PUT
    ]
    total = sum(len(data) for _, data in parts)

    async def upload() -> float:
        rate = RateLimit(cap)
        async with S3Storage(S3Target(bucket, "cap"), endpoint_url=s3.endpoint, rate=rate) as storage:
            began = time.monotonic()
            await asyncio.gather(*(put(storage, path, data) for path, data in parts))
            return time.monotonic() - began

    elapsed = asyncio.run(upload())
    print(
        f"{total / MB:.1f} MB under a cap of {cap / MB:g} MB/s: {elapsed:.2f} s (bound {total / cap:.2f} s)"
    )
    assert elapsed >= 0.9 * total / cap
    assert asyncio.run(list_objects(s3.endpoint, bucket)) == {
        f"cap/{path.name}": data for path, data in parts
    }


def test_the_default_bound_and_the_pool_have_room_for_control_requests(aws: None) -> None:
    async def pool_size() -> int:
        async with S3Storage(S3Target("any-bucket", "p"), endpoint_url="http://127.0.0.1:9") as storage:
            return int(storage._client.meta.config.max_pool_connections)

    assert asyncio.run(pool_size()) > DEFAULT_UPLOAD_CONNECTIONS
    with pytest.raises(ValueError, match="at least one"):
        S3Storage(S3Target("any-bucket", "p"), connections=0)
