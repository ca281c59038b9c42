"""The part writer: exact contents, final names only when complete, nothing half-written left."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from aioc4.writer import PartWriter

LINES = [b'{"text":"doc %d"}' % i for i in range(23)]


async def write_all(writer: PartWriter, batches: list[list[bytes]]) -> list[str]:
    names = []
    for batch in batches:
        names += [part.name for part in await writer.write(batch)]
    last = await writer.close()
    return names + ([last.name] if last else [])


def test_parts_hold_consecutive_lines_and_the_last_part_the_remainder(tmp_path: Path) -> None:
    writer = PartWriter(tmp_path, "train", 23, 5)
    names = asyncio.run(write_all(writer, [LINES[:7], LINES[7:8], LINES[8:]]))
    assert names == [f"c4_train_23_part{i:03d}.jsonl" for i in range(1, 6)]
    contents = [(tmp_path / name).read_bytes() for name in names]
    assert b"".join(contents) == b"".join(line + b"\n" for line in LINES)
    assert [content.count(b"\n") for content in contents] == [5, 5, 5, 5, 3]
    assert sorted(path.name for path in tmp_path.iterdir()) == names  # no temp files left


def test_without_limit_everything_goes_to_one_file(tmp_path: Path) -> None:
    writer = PartWriter(tmp_path, "validation", 23, None)
    assert asyncio.run(write_all(writer, [LINES])) == ["c4_validation_23.jsonl"]


def test_a_part_is_not_visible_under_its_final_name_until_complete(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        writer = PartWriter(tmp_path, "train", 23, 10)
        await writer.write(LINES[:4])
        names = await asyncio.to_thread(lambda: sorted(path.name for path in tmp_path.iterdir()))
        await writer.abort()
        return names

    assert asyncio.run(scenario()) == [".c4_train_part001.jsonl.tmp"]
    assert list(tmp_path.iterdir()) == []


def test_the_last_part_is_named_after_the_real_count_when_the_source_ends_early(tmp_path: Path) -> None:
    writer = PartWriter(tmp_path, "validation", 100, 10)
    names = asyncio.run(write_all(writer, [LINES[:15]]))
    # part 1 was closed while more documents were expected; the last knows the real total
    assert names == ["c4_validation_100_part001.jsonl", "c4_validation_15_part002.jsonl"]


@pytest.mark.parametrize("written", [0, 3])
def test_abort_removes_the_part_being_written_and_keeps_finished_ones(tmp_path: Path, written: int) -> None:
    async def scenario() -> None:
        writer = PartWriter(tmp_path, "train", 23, 5)
        await writer.write(LINES[: 5 + written + 1])
        await writer.abort()

    asyncio.run(scenario())
    assert sorted(path.name for path in tmp_path.iterdir()) == ["c4_train_23_part001.jsonl"]
