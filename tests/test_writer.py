"""The part writer: exact contents, final names only when complete, nothing half-written left."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import zlib
from collections.abc import Sequence
from pathlib import Path

import pytest

from aioc4.decode import Batch, SourcePosition, check_block
from aioc4.naming import CountNaming
from aioc4.segments import AnyBatch, Block, Segment, SegmentBatch
from aioc4.writer import COMPRESS_BLOCK, FinishedPart, PartWriter

LINES = [b'{"text":"doc %d"}' % i for i in range(23)]


def batch(start: int, stop: int, shard: str = "en/s0.json.gz", first_line: int | None = None) -> Batch:
    data = b"".join(line + b"\n" for line in LINES[start:stop])
    return check_block(data, shard=shard, first_line_number=first_line or start + 1)


async def write_all(writer: PartWriter, batches: Sequence[AnyBatch]) -> list[FinishedPart]:
    parts = []
    for item in batches:
        parts += await writer.write(item)
    return parts + await writer.close()


def test_parts_hold_consecutive_lines_and_the_last_part_the_remainder(tmp_path: Path) -> None:
    writer = PartWriter(tmp_path, CountNaming("train", 23, 5), 5, requested=23)
    parts = asyncio.run(write_all(writer, [batch(0, 7), batch(7, 8), batch(8, 23)]))
    names = [part.name for part in parts]
    assert names == [f"c4_train_23_part{i:03d}.jsonl" for i in range(1, 6)]
    contents = [(tmp_path / name).read_bytes() for name in names]
    assert b"".join(contents) == b"".join(line + b"\n" for line in LINES)
    assert [content.count(b"\n") for content in contents] == [5, 5, 5, 5, 3]
    assert sorted(path.name for path in tmp_path.iterdir()) == names  # no temp files left


def test_each_part_records_size_checksum_text_and_source_range(tmp_path: Path) -> None:
    writer = PartWriter(tmp_path, CountNaming("train", 10, 4), 4, requested=10)
    # documents 1-6 from shard 0 (its lines 1-6), 7-10 from shard 1 (its lines 1-4)
    batches = [batch(0, 6, "en/a.json.gz", 1), batch(6, 10, "en/b.json.gz", 1)]
    records = [part.record for part in asyncio.run(write_all(writer, batches))]
    for record in records:
        content = (tmp_path / record.name).read_bytes()
        assert record.size == len(content)
        assert record.crc32 == f"{zlib.crc32(content):08x}"
        assert record.lines == content.count(b"\n")
    assert [(r.first, r.last) for r in records] == [
        (SourcePosition("en/a.json.gz", 1), SourcePosition("en/a.json.gz", 4)),
        (SourcePosition("en/a.json.gz", 5), SourcePosition("en/b.json.gz", 2)),
        (SourcePosition("en/b.json.gz", 3), SourcePosition("en/b.json.gz", 4)),
    ]
    # small batches: every batch's first document is sampled
    assert [(r.sampled_texts, r.sampled_text_chars) for r in records] == [(1, 5), (1, 5), (0, 0)]


def test_a_resumed_writer_continues_numbering_and_counting(tmp_path: Path) -> None:
    writer = PartWriter(tmp_path, CountNaming("train", 23, 5), 5, requested=23, first_index=3, documents=10)
    names = [part.name for part in asyncio.run(write_all(writer, [batch(10, 23)]))]
    assert names == ["c4_train_23_part003.jsonl", "c4_train_23_part004.jsonl", "c4_train_23_part005.jsonl"]
    assert writer.documents == 23


def test_without_limit_everything_goes_to_one_file(tmp_path: Path) -> None:
    writer = PartWriter(tmp_path, CountNaming("validation", 23, None), None, requested=23)
    assert [part.name for part in asyncio.run(write_all(writer, [batch(0, 23)]))] == [
        "c4_validation_23.jsonl"
    ]


def test_a_part_is_not_visible_under_its_final_name_until_complete(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        writer = PartWriter(tmp_path, CountNaming("train", 23, 10), 10, requested=23)
        await writer.write(batch(0, 4))
        names = await asyncio.to_thread(lambda: sorted(path.name for path in tmp_path.iterdir()))
        await writer.abort()
        return names

    assert asyncio.run(scenario()) == [".c4_train_23_part001.jsonl.tmp"]
    assert list(tmp_path.iterdir()) == []


def test_the_last_part_is_named_after_the_real_count_when_the_source_ends_early(tmp_path: Path) -> None:
    writer = PartWriter(tmp_path, CountNaming("validation", 100, 10), 10, requested=100)
    names = [part.name for part in asyncio.run(write_all(writer, [batch(0, 15)]))]
    # part 1 was closed while more documents were expected; the last knows the real total
    assert names == ["c4_validation_100_part001.jsonl", "c4_validation_15_part002.jsonl"]


@pytest.mark.parametrize("written", [0, 3])
def test_abort_removes_the_part_being_written_and_keeps_finished_ones(tmp_path: Path, written: int) -> None:
    async def scenario() -> None:
        writer = PartWriter(tmp_path, CountNaming("train", 23, 5), 5, requested=23)
        await writer.write(batch(0, 5 + written + 1))
        await writer.abort()

    asyncio.run(scenario())
    assert sorted(path.name for path in tmp_path.iterdir()) == ["c4_train_23_part001.jsonl"]


def test_a_part_finished_while_the_writer_is_cancelled_is_named_as_finished(tmp_path: Path) -> None:
    """A writer cancelled while a full part is being finished (a permanent upload error halts it)
    still counts that part as finished: it is on disk under its final name, so the error that lists
    the parts kept locally must name it."""

    async def scenario() -> PartWriter:
        writer = PartWriter(tmp_path, CountNaming("train", 23, 5), 5, requested=23, durable=False)
        parts = writer.parts_of(batch(0, 12))
        assert (await anext(parts)).name == "c4_train_23_part001.jsonl"
        task = asyncio.ensure_future(anext(parts))
        for _ in range(10_000):  # until part002 is full and its rename runs in the background
            if writer._finishing:
                break
            await asyncio.sleep(0)
        assert writer._finishing
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await writer.abort()
        return writer

    writer = asyncio.run(scenario())
    on_disk = sorted(path.name for path in tmp_path.iterdir())
    assert on_disk == ["c4_train_23_part001.jsonl", "c4_train_23_part002.jsonl"]
    assert writer.finished_names == on_disk


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_compressed_parts_do_not_depend_on_how_the_batches_arrived(tmp_path: Path, compression: str) -> None:
    """A part made again after a resume (other network timing, so other batches) is byte-identical."""
    from aioc4.naming import CountNaming

    rng = random.Random(5)
    words = [b"alpha", b"beta", b"gamma", b"delta", b"\\u00e9t\\u00e9", b"x"]
    lines = [b'{"text":"%s"}' % b" ".join(rng.choices(words, k=rng.randrange(50, 400))) for _ in range(3000)]
    data = b"".join(line + b"\n" for line in lines)

    async def write(cuts: list[int], folder: Path) -> bytes:
        naming = CountNaming("train", len(lines), None, compression=compression)
        writer = PartWriter(folder, naming, None, requested=len(lines))
        bounds = [0, *cuts, len(lines)]
        for start, stop in itertools.pairwise(bounds):
            chunk = b"".join(line + b"\n" for line in lines[start:stop])
            await writer.write(check_block(chunk, shard="s", first_line_number=start + 1))
        (part,) = await writer.close()
        return part.path.read_bytes()

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = asyncio.run(write(sorted(rng.sample(range(1, 3000), 40)), tmp_path / "a"))
    other = asyncio.run(write([7, 2500], tmp_path / "b"))
    assert one == other
    assert len(data) > 2 * COMPRESS_BLOCK  # the part spans several compression blocks


def segment_with(path: Path, lines: list[bytes], *, adoptable: bool) -> tuple[Segment, list[SegmentBatch]]:
    """A segment as a decode process leaves it: its lines appended, one block (and batch) per line."""
    segment = Segment(path, adoptable=adoptable)
    batches, offset = [], 0
    with path.open("ab") as appender:
        for number, line in enumerate(lines, 1):
            appender.write(line + b"\n")
            block = Block(1, len(line) + 1, zlib.crc32(line + b"\n"))
            batches.append(SegmentBatch(f"en/{path.stem}.json.gz", number, segment, offset, [block]))
            offset += block.length
    segment.finished(offset)
    return segment, batches


def test_the_last_part_starting_with_the_first_segment_is_that_segment_renamed_and_cut(
    tmp_path: Path,
) -> None:
    """Its own ranges are not copied (the part is the segment's file), the next segment's are appended
    after them, and the lines its decode process wrote past the last one wanted are cut off; the part's
    CRC is that of its bytes."""
    first, first_batches = segment_with(tmp_path / ".s0.tmp", LINES[:10], adoptable=True)
    second, second_batches = segment_with(tmp_path / ".s1.tmp", LINES[10:20], adoptable=False)
    first_file = os.fstat(first.fd).st_ino
    writer = PartWriter(tmp_path, CountNaming("train", 14, None), None, requested=14)
    wanted = [*first_batches, *second_batches[:4]]  # 14 documents; the segments hold 20
    [part] = asyncio.run(write_all(writer, wanted))
    content = (tmp_path / "c4_train_14.jsonl").read_bytes()
    assert content == b"".join(line + b"\n" for line in LINES[:14])
    assert part.record.crc32 == f"{zlib.crc32(content):08x}"
    assert part.size == len(content)
    assert (tmp_path / "c4_train_14.jsonl").stat().st_ino == first_file
    assert first.adopted
    assert sorted(path.name for path in tmp_path.iterdir()) == [".s1.tmp", "c4_train_14.jsonl"]
    first.close()
    second.close()


def test_a_part_ending_inside_the_adopted_segment_is_cut_after_its_last_line(tmp_path: Path) -> None:
    """The decode process wrote on past the last document wanted: those lines are not in the part."""
    first, batches = segment_with(tmp_path / ".s0.tmp", LINES[:10], adoptable=True)
    writer = PartWriter(tmp_path, CountNaming("train", 6, 8), 8, requested=6)
    [part] = asyncio.run(write_all(writer, batches[:6]))
    content = (tmp_path / "c4_train_6.jsonl").read_bytes()
    assert content == b"".join(line + b"\n" for line in LINES[:6])
    assert part.record.crc32 == f"{zlib.crc32(content):08x}"
    assert first.adopted
    first.close()


@pytest.mark.parametrize(
    ("max_lines", "compression", "start"),
    [(5, "none", 0), (None, "gzip", 0), (None, "none", 1)],
    ids=["one-of-several-parts", "compressed", "not-from-its-start"],
)
def test_a_part_that_cannot_be_the_first_segment_copies_it_and_its_name_goes(
    tmp_path: Path, max_lines: int | None, compression: str, start: int
) -> None:
    first, batches = segment_with(tmp_path / ".s0.tmp", LINES[:10], adoptable=True)
    naming = CountNaming("train", 10 - start, max_lines, compression=compression)
    writer = PartWriter(tmp_path, naming, max_lines, requested=10 - start)
    parts = asyncio.run(write_all(writer, batches[start:]))
    contents = [(tmp_path / part.name).read_bytes() for part in parts]
    if compression == "gzip":
        contents = [zlib.decompress(content, wbits=31) for content in contents]
    assert b"".join(contents) == b"".join(line + b"\n" for line in LINES[start:10])
    assert not first.adopted
    assert not (tmp_path / ".s0.tmp").exists()
    first.close()


def test_a_cancelled_run_removes_the_adopted_segment_with_its_part(tmp_path: Path) -> None:
    first, batches = segment_with(tmp_path / ".s0.tmp", LINES[:10], adoptable=True)
    writer = PartWriter(tmp_path, CountNaming("train", 10, None), None, requested=10)

    async def write_then_abort() -> None:
        await writer.write(batches[0])
        await writer.abort()

    asyncio.run(write_then_abort())
    assert first.adopted
    assert list(tmp_path.iterdir()) == []  # neither the segment's name nor the part's temp is left
    first.close()
