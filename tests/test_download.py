"""Shards over several range requests at once: the read-ahead policy (pure) and `RangedDownload` over
a scripted source (in process, no server): order, early stops, fallbacks, bounds, task ownership."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing

import pytest

from aioc4.download import RangedDownload
from aioc4.errors import RangeIgnoredError, SourceError
from aioc4.hub import Shard
from aioc4.readahead import MIN_RANGE_BYTES, ReadAhead

KIB = 1024


# -- the policy -----------------------------------------------------------------------------------------


def test_the_window_opens_only_while_the_reader_waits_with_every_range_busy() -> None:
    policy = ReadAhead(max_connections=4, range_bytes=100 * KIB)
    assert policy.window == 2
    policy.reader_waited(outstanding=1, arriving=1)  # a slot was free: not for want of connections
    assert policy.window == 2
    policy.reader_waited(outstanding=2, arriving=1)  # a range is here, waiting: the link keeps ahead
    assert policy.window == 2
    for _ in range(10):
        policy.reader_waited(outstanding=policy.window, arriving=policy.window)
    assert policy.window == 4  # the cap


def test_a_range_is_never_asked_past_the_window_or_the_documents_wanted() -> None:
    policy = ReadAhead(max_connections=8, range_bytes=1024 * KIB)
    wanted = 900 * KIB
    assert policy.next_range(outstanding=0, ahead_bytes=0, wanted_bytes=wanted, left_in_shard=10**8) == wanted
    assert policy.next_range(outstanding=1, ahead_bytes=wanted, wanted_bytes=wanted, left_in_shard=10**8) == 0
    assert policy.next_range(outstanding=2, ahead_bytes=0, wanted_bytes=10**9, left_in_shard=10**8) == 0
    # the reader needs bytes the estimate did not foresee: a small range, not nothing
    assert (
        policy.next_range(outstanding=0, ahead_bytes=0, wanted_bytes=-5, left_in_shard=10**8)
        == MIN_RANGE_BYTES
    )
    assert policy.next_range(outstanding=0, ahead_bytes=0, wanted_bytes=10**9, left_in_shard=3) == 3


# -- the download, over a scripted source ----------------------------------------------------------------


class ScriptedSource:
    """Serves shards made of known bytes, each range after a random delay, in pieces; records what it
    was asked and what is running."""

    def __init__(self, shards: dict[str, bytes], *, seed: int = 0, ignore_ranges: bool = False) -> None:
        self.data = shards
        self.rng = random.Random(seed)
        self.ignore_ranges = ignore_ranges
        self.asked: list[tuple[str, int, int | None]] = []
        self.events: list[object] = []  # what was asked, and when, among the reader's own events
        self.running = 0
        self.peak_running = 0
        self.fail_at: dict[tuple[str, int], Exception] = {}

    def redirects_to_storage(self, shard: Shard) -> bool | None:
        return True

    async def stream(
        self, shard: Shard, commit: str, start: int = 0, end: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        self.asked.append((shard.path, start, end))
        self.events.append((shard.path, start))
        self.running += 1
        self.peak_running = max(self.peak_running, self.running)
        try:
            await asyncio.sleep(self.rng.uniform(0, 0.004))
            if (failure := self.fail_at.get((shard.path, start))) is not None:
                raise failure
            if self.ignore_ranges and end is not None and (start, end) != (0, shard.size):
                raise RangeIgnoredError(shard.path)
            body = self.data[shard.path][start : shard.size if end is None else end]
            for offset in range(0, len(body), 7 * KIB):
                await asyncio.sleep(self.rng.uniform(0, 0.001))
                yield body[offset : offset + 7 * KIB]
        finally:
            self.running -= 1


def download_of(
    source: ScriptedSource, shards: list[Shard], policy: ReadAhead, wanted_bytes: Callable[[], float]
) -> RangedDownload:
    return RangedDownload(source, shards, "c", read_ahead=policy, wanted_bytes=wanted_bytes)  # type: ignore[arg-type]


def make_shards(sizes: list[int]) -> tuple[list[Shard], dict[str, bytes]]:
    rng = random.Random(1)
    shards = [Shard(f"s{index}.json.gz", index, size) for index, size in enumerate(sizes)]
    return shards, {shard.path: rng.randbytes(shard.size) for shard in shards}


async def read_all(download: RangedDownload, count: int, events: list[object] | None = None) -> list[bytes]:
    out = []
    for position in range(count):
        got = bytearray()
        async with aclosing(download.chunks(position)) as chunks:
            async for piece in chunks:
                got += piece
        out.append(bytes(got))
        if events is not None:
            events.append(("read whole", position))
    return out


def test_ranges_arriving_in_any_order_are_read_in_order_across_shards() -> None:
    shards, data = make_shards([300 * KIB, 5 * KIB, 1000 * KIB])
    source = ScriptedSource(data, seed=7)

    async def main() -> list[bytes]:
        async with download_of(
            source, shards, ReadAhead(max_connections=8, range_bytes=64 * KIB, window=8), lambda: 10**9
        ) as download:
            return await read_all(download, len(shards), source.events)

    assert asyncio.run(main()) == [data[shard.path] for shard in shards]
    assert source.peak_running > 1  # several ranges were in flight at once
    assert source.peak_running <= 8
    # the next shards began downloading before the current one was read to its end
    assert source.events.index(("s1.json.gz", 0)) < source.events.index(("read whole", 0))
    assert source.events.index(("s2.json.gz", 0)) < source.events.index(("read whole", 1))


def test_an_early_stop_cancels_every_range_and_reads_no_further() -> None:
    shards, data = make_shards([4000 * KIB, 4000 * KIB])
    source = ScriptedSource(data)
    wanted = {"bytes": 200 * KIB}

    async def main() -> tuple[bytes, int]:
        async with download_of(
            source,
            shards,
            ReadAhead(max_connections=16, range_bytes=64 * KIB, window=16),
            lambda: wanted["bytes"],
        ) as download:
            got = bytearray()
            async with aclosing(download.chunks(0)) as chunks:
                async for piece in chunks:
                    got += piece
                    wanted["bytes"] = 200 * KIB - len(got)
                    if len(got) >= 150 * KIB:
                        break
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        return bytes(got), len(tasks)

    got, left_running = asyncio.run(main())
    assert got == data["s0.json.gz"][: len(got)]
    assert left_running == 0
    assert source.running == 0
    asked_bytes = sum((end or 0) - start for _, start, end in source.asked)
    assert asked_bytes <= 200 * KIB + 64 * KIB  # what was wanted, plus at most one range


def test_read_ahead_holds_at_most_the_window_of_bytes() -> None:
    shards, data = make_shards([2000 * KIB])
    source = ScriptedSource(data)
    peak = {"ahead": 0}

    async def main() -> bytes:
        async with download_of(
            source, shards, ReadAhead(max_connections=4, range_bytes=64 * KIB, window=4), lambda: 10**9
        ) as download:
            got = bytearray()
            async with aclosing(download.chunks(0)) as chunks:
                async for piece in chunks:
                    got += piece
                    await asyncio.sleep(0.002)  # a slow reader: ranges pile up if nothing bounds them
                    ranges = download._ranges  # the bound under test
                    peak["ahead"] = max(peak["ahead"], sum(item.held for item in ranges))
            return bytes(got)

    assert asyncio.run(main()) == data["s0.json.gz"]
    assert peak["ahead"] <= 4 * 64 * KIB


def test_a_host_that_ignores_range_is_read_as_one_stream_per_shard() -> None:
    shards, data = make_shards([300 * KIB, 200 * KIB])
    source = ScriptedSource(data, ignore_ranges=True)

    async def main() -> list[bytes]:
        async with download_of(
            source, shards, ReadAhead(max_connections=4, range_bytes=64 * KIB), lambda: 10**9
        ) as download:
            return await read_all(download, len(shards))

    assert asyncio.run(main()) == [data[shard.path] for shard in shards]
    assert ("s0.json.gz", 0, None) in source.asked
    assert ("s1.json.gz", 0, None) in source.asked


def test_a_failed_range_fails_the_read_only_when_the_reader_reaches_it() -> None:
    shards, data = make_shards([256 * KIB, 256 * KIB])
    source = ScriptedSource(data)
    source.fail_at[("s1.json.gz", 0)] = SourceError("s1: gave up after 8 attempts")

    async def main(count: int) -> list[bytes]:
        async with download_of(
            source, shards, ReadAhead(max_connections=8, range_bytes=64 * KIB, window=8), lambda: 10**9
        ) as download:
            return await read_all(download, count)

    assert asyncio.run(main(1)) == [data["s0.json.gz"]]  # the failure was in bytes nobody needed
    with pytest.raises(SourceError, match="gave up"):
        asyncio.run(main(2))


def test_downloads_sharing_a_window_stay_within_its_connections_together() -> None:
    """A count job's decode processes read shards side by side, each with its own download; the
    connection cap holds for all of them (it counted each download's ranges alone, and the model
    network showed 54 in flight under a cap of 32), but for one range each download may always
    start, so that no shard waits for another to be read."""
    shards, data = make_shards([2000 * KIB, 2000 * KIB, 2000 * KIB])
    source = ScriptedSource(data, seed=3)
    policy = ReadAhead(max_connections=5, range_bytes=64 * KIB, window=5)

    async def one(shard: Shard) -> bytes:
        async with download_of(source, [shard], policy, lambda: 10**9) as download:
            return (await read_all(download, 1))[0]

    async def main() -> list[bytes]:
        return list(await asyncio.gather(*(one(shard) for shard in shards)))

    assert asyncio.run(main()) == [data[shard.path] for shard in shards]
    assert 3 < source.peak_running <= 5 + len(shards) - 1
    assert policy.in_use == 0  # every range left the window: the next downloads start from none
