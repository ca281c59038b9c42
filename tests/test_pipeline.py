"""The pipeline's promises, in process with a synthetic source and a slow destination."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path

import pytest

from aioc4.config import RunConfig
from aioc4.decode import Batch, parse_block
from aioc4.destination import Delivery
from aioc4.errors import CorruptShardError, SourceError
from aioc4.facts import PartFacts
from aioc4.manifest import Manifest, PartRecord, RequestInfo
from aioc4.pipeline import PartPipeline
from aioc4.source import SourceProgress
from aioc4.writer import FinishedPart

LINES = [b'{"text":"document %d","url":"u"}' % i for i in range(200)]


async def documents(
    lines: list[bytes], batch: int, fail_after: int | None = None
) -> AsyncGenerator[Batch, None]:
    for start in range(0, len(lines), batch):
        if fail_after is not None and start >= fail_after:
            raise CorruptShardError("en/x.json.gz: gzip stream is truncated")
        data = b"".join(line + b"\n" for line in lines[start : start + batch])
        yield parse_block(data, shard="en/x.json.gz", first_line_number=start + 1)


class SlowCleaningDestination:
    """Like S3 with cleanup: each delivery takes a while, then the local copy is deleted."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.most_parts_on_disk = 0
        self.delivered: dict[str, bytes] = {}
        self.manifests: dict[str, bytes] = {}

    async def check(self) -> None:
        return None

    async def deliver(self, part: FinishedPart) -> Delivery:
        on_disk = len(await asyncio.to_thread(lambda: list(self.directory.glob("*.jsonl"))))
        self.most_parts_on_disk = max(self.most_parts_on_disk, on_disk)
        await asyncio.sleep(0.01)
        self.delivered[part.name] = await asyncio.to_thread(part.path.read_bytes)
        await asyncio.to_thread(part.path.unlink)
        return Delivery(name=part.name, uploaded=True)

    async def already_delivered(self, part: FinishedPart) -> Delivery:
        raise AssertionError("not expected")

    async def is_intact(self, record: PartRecord) -> bool:
        return record.name in self.delivered

    async def abort_stale_uploads(self, stem: str) -> None:
        raise AssertionError("not expected")

    async def rename(self, old: str, new: str) -> None:
        raise AssertionError("not expected")

    async def remove(self, name: str) -> None:
        raise AssertionError("not expected")

    async def save_manifest(self, name: str, data: bytes, *, final: bool) -> None:
        self.manifests[name] = data

    async def load_manifest(self, name: str) -> bytes | None:
        return self.manifests.get(name)

    def location(self, name: str) -> str:
        return f"s3://b/{name}"

    async def list_manifests(self) -> list[str]:
        return sorted(self.manifests)

    async def inspect(self, name: str) -> PartFacts | None:
        raise AssertionError("not expected")

    async def existing(self, names: Sequence[str]) -> list[str]:
        return []


def pipeline_for(config: RunConfig, destination: SlowCleaningDestination) -> PartPipeline:
    request = RequestInfo(
        "r", "main", "en", config.split, config.num_samples, config.max_lines_per_file, "c" * 40
    )
    return PartPipeline(config, destination, Manifest(request=request))


@pytest.mark.parametrize("workers", [1, 3])
def test_local_disk_holds_a_bounded_number_of_parts_while_uploads_lag(tmp_path: Path, workers: int) -> None:
    config = RunConfig(num_samples=200, max_lines_per_file=5, output_dir=tmp_path, upload_workers=workers)
    destination = SlowCleaningDestination(tmp_path)
    asyncio.run(pipeline_for(config, destination).execute(documents(LINES, 7), SourceProgress()))
    assert len(destination.delivered) == 40
    assert destination.most_parts_on_disk <= 2 * workers + 1
    assert b"".join(destination.delivered[name] for name in sorted(destination.delivered)) == b"".join(
        line + b"\n" for line in LINES
    )
    assert list(tmp_path.iterdir()) == []


def test_a_source_error_still_delivers_every_finished_part_then_is_raised(tmp_path: Path) -> None:
    config = RunConfig(num_samples=200, max_lines_per_file=10, output_dir=tmp_path, upload_workers=2)
    destination = SlowCleaningDestination(tmp_path)
    pipeline = pipeline_for(config, destination)
    with pytest.raises(SourceError, match="truncated"):
        asyncio.run(pipeline.execute(documents(LINES, 25, fail_after=75), SourceProgress()))
    # 75 documents were read: 7 complete parts delivered, the half-written 8th dropped, no temp file left
    assert sorted(destination.delivered) == [f"c4_train_200_part{i:03d}.jsonl" for i in range(1, 8)]
    assert b"".join(destination.delivered[name] for name in sorted(destination.delivered)) == b"".join(
        line + b"\n" for line in LINES[:70]
    )
    assert list(tmp_path.iterdir()) == []
    # ... and the manifest saved on the way out records exactly those parts, uploaded
    saved = Manifest.from_json(destination.manifests["c4_train_200.manifest.json"], where="test")
    assert [(part.name, part.uploaded) for part in saved.parts] == [
        (name, True) for name in sorted(destination.delivered)
    ]
    assert saved.complete is False
