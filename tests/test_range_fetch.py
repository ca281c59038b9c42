"""A decode process's own download of a shard's ranges (aioc4.range_fetch), against the local storage."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from aioc4.range_fetch import MAX_FAILED_RANGES, MAX_RANGE_BYTES, FetchStopped, RangeFetcher
from scripts.hub_server import HubServerProcess
from scripts.shards import FakeRepo

from .conftest import shard_paths


@pytest.fixture(scope="module")
def storage(fake_repo: FakeRepo) -> Iterator[HubServerProcess]:
    with HubServerProcess(fake_repo.root) as server:
        yield server


def storage_url(endpoint: str, path: str) -> str:
    """Where the Hub redirects `resolve` of a shard: its signed storage URL."""
    address = urlsplit(endpoint)
    connection = http.client.HTTPConnection(address.netloc, timeout=10)
    try:
        connection.request("GET", f"/datasets/allenai/c4/resolve/main/{path}")
        response = connection.getresponse()
        assert response.status == 302, response.read()
        return response.getheader("Location") or ""
    finally:
        connection.close()


@pytest.fixture
def shard(storage: HubServerProcess, fake_repo: FakeRepo) -> Iterator[tuple[str, bytes]]:
    """The signed storage URL of a train shard (as the Hub redirects to it) and the shard's bytes."""
    path = shard_paths(fake_repo, "train")[0]
    url = storage_url(storage.endpoint, path)
    storage.reset_stats()
    try:
        yield url, (fake_repo.root / path).read_bytes()
    finally:
        storage.clear_faults()


def fetcher(url: str, start: int, end: int, **options: Any) -> RangeFetcher:
    settings: dict[str, Any] = {"granted": end, "timeout_s": 5.0, "connections": 4, "user_agent": "test"}
    return RangeFetcher(url, start, end, **(settings | options))


def read_all(fetch: RangeFetcher) -> bytes:
    pieces = []
    while (view := fetch.read()) is not None:
        pieces.append(bytes(view))
    return b"".join(pieces)


def test_ranges_downloaded_side_by_side_are_read_as_the_files_bytes_in_order(
    storage: HubServerProcess, shard: tuple[str, bytes]
) -> None:
    url, data = shard
    threads = threading.active_count()
    fetch = fetcher(url, 123_457, len(data))
    try:
        assert read_all(fetch) == data[123_457:]
    finally:
        fetch.close()
    assert fetch.ranges_started >= 8  # ~10 MB in ranges of at most 1 MiB
    assert storage.stats()["storage_get_requests"] == fetch.ranges_started
    assert storage.stats()["storage_body_bytes"] == len(data) - 123_457  # each byte once
    assert threading.active_count() == threads  # every download thread ended


def test_nothing_past_the_grant_is_asked_for_until_it_grows(
    storage: HubServerProcess, shard: tuple[str, bytes]
) -> None:
    url, data = shard
    granted = 3_000_000
    fetch = fetcher(url, 0, len(data), granted=granted)
    try:
        first = b""
        while len(first) < granted:
            view = fetch.read()
            assert view is not None
            first += bytes(view)
        time.sleep(0.3)  # a range past the grant would be on its way by now
        served = storage.stats()["storage_body_bytes"]
        assert granted <= served <= granted + 256 * 1024  # at most the smallest range past it
        fetch.grant(len(data))
        assert first + read_all(fetch) == data
    finally:
        fetch.close()


@pytest.mark.parametrize(
    ("faults", "reason"),
    [
        ({"ignore_range": True}, "HTTP 200 for a range"),
        ({"clock_skew_s": 7200.0}, "HTTP 403 for a range"),  # a signed URL two hours old: expired
        ({"storage_error_rate": 1.0, "storage_error_statuses": [503]}, "HTTP 503 for a range"),
    ],
)
def test_an_answer_other_than_the_range_stops_the_download_where_it_started(
    storage: HubServerProcess, shard: tuple[str, bytes], faults: dict[str, Any], reason: str
) -> None:
    """No retry here: the parent relays the rest, with its retries, re-resolve and budget."""
    url, data = shard
    storage.set_faults(**faults)
    fetch = fetcher(url, 4096, len(data))
    try:
        with pytest.raises(FetchStopped) as stopped:
            fetch.read()
    finally:
        fetch.close()
    assert (stopped.value.at, stopped.value.reason) == (4096, reason)


def test_a_cut_connection_stops_the_download_at_the_first_byte_not_received(
    storage: HubServerProcess, shard: tuple[str, bytes]
) -> None:
    url, data = shard
    storage.set_faults(reset_after_bytes=700_000, reset_rate=1.0)
    fetch = fetcher(url, 0, len(data))
    received = b""

    def read_on() -> None:
        nonlocal received
        while (view := fetch.read()) is not None:
            received += bytes(view)

    try:
        with pytest.raises(FetchStopped) as stopped:
            read_on()
    finally:
        fetch.close()
    assert 0 < stopped.value.at == len(received) < len(data)
    assert received == data[: len(received)]  # every byte before it, each once, in order


def test_a_failed_range_is_skipped_once_its_bytes_came_another_way_until_too_many_fail(
    storage: HubServerProcess, shard: tuple[str, bytes]
) -> None:
    """Each 1 MiB range is cut after 800 kB (granted one at a time, so they fail in order): the first
    ones stop the download for their missing bytes only, and it goes on after them; then it gives up."""
    url, data = shard
    storage.set_faults(reset_after_bytes=800_000, reset_rate=1.0)
    step = MAX_RANGE_BYTES
    fetch = fetcher(url, 0, len(data), granted=step)
    received, stops = b"", []
    try:
        while True:
            try:
                view = fetch.read()
            except FetchStopped as stopped:
                stops.append((stopped.at, stopped.until))
                if stopped.until is None:
                    break
                fetch.skip(stopped.until)
                received = received[: stopped.at] + data[stopped.at : stopped.until]  # the parent's relay
                fetch.grant(stopped.until + step)
                continue
            assert view is not None
            received += bytes(view)
    finally:
        fetch.close()
    cuts = [(n * step + 800_000, (n + 1) * step) for n in range(MAX_FAILED_RANGES)]
    assert stops == [*cuts[:-1], (cuts[-1][0], None)]  # each at the first byte not received
    assert received == data[: cuts[-1][0]]


def test_a_silent_storage_host_stops_the_download_after_the_timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        accepted: list[socket.socket] = []
        listener = threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True)
        listener.start()
        url = f"http://127.0.0.1:{server.getsockname()[1]}/file?signature=x"
        started = time.monotonic()
        fetch = fetcher(url, 1 << 20, 8 << 20, timeout_s=0.5)
        try:
            with pytest.raises(FetchStopped) as stopped:
                fetch.read()
        finally:
            fetch.close()
            for connection in accepted:
                connection.close()
    assert stopped.value.at == 1 << 20
    assert time.monotonic() - started < 5


def test_closing_mid_transfer_ends_every_download_thread_at_once(fake_repo: FakeRepo) -> None:
    path = shard_paths(fake_repo, "train")[0]
    with HubServerProcess(fake_repo.root, pace_bytes_per_s=200_000) as slow:
        url = storage_url(slow.endpoint, path)
        threads = threading.active_count()
        fetch = fetcher(url, 0, (fake_repo.root / path).stat().st_size)
        assert fetch.read() is not None  # transfers are under way (each would take ~5 s)
        started = time.monotonic()
        fetch.close()
        assert time.monotonic() - started < 2
        assert threading.active_count() == threads
        with pytest.raises(FetchStopped):
            fetch.read()
