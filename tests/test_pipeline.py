"""The pipeline's promises, in process: a synthetic source, and a slow in-memory storage behind the
real destination (the storage seam)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import pytest

from aioc4.decode import Batch, check_block
from aioc4.destination import Destination
from aioc4.errors import CorruptShardError, SourceError
from aioc4.jobs import PartSpec
from aioc4.manifest import JobIdentity, Manifest
from aioc4.naming import CountNaming
from aioc4.pipeline import PartPipeline
from aioc4.reader import ReadProgress
from aioc4.storage import ObjectInfo

LINES = [b'{"text":"document %d","url":"u"}' % i for i in range(200)]


async def documents(
    lines: list[bytes], batch: int, fail_after: int | None = None
) -> AsyncGenerator[Batch, None]:
    for start in range(0, len(lines), batch):
        if fail_after is not None and start >= fail_after:
            raise CorruptShardError("en/x.json.gz: gzip stream is truncated")
        data = b"".join(line + b"\n" for line in lines[start : start + batch])
        yield check_block(data, shard="en/x.json.gz", first_line_number=start + 1)


class SlowMemoryStorage:
    """An in-memory storage (the `aioc4.storage.Storage` verbs) whose uploads take a while: with cleanup,
    the real `Destination` deletes each local copy once stored, as with S3."""

    url = "mem://b"
    local_folder: Path | None = None

    def __init__(self, staging: Path) -> None:
        self.staging = staging
        self.most_parts_on_disk = 0
        self.objects: dict[str, bytes] = {}

    async def __aenter__(self) -> SlowMemoryStorage:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    def location(self, name: str) -> str:
        return f"{self.url}/{name}"

    async def preflight(self) -> None:
        return None

    async def put_file(self, name: str, path: Path, *, size: int, crc32: str) -> None:
        on_disk = len(await asyncio.to_thread(lambda: list(self.staging.glob("*.jsonl"))))
        self.most_parts_on_disk = max(self.most_parts_on_disk, on_disk)
        await asyncio.sleep(0.01)
        self.objects[name] = await asyncio.to_thread(path.read_bytes)

    async def put_bytes(self, name: str, data: bytes) -> None:
        self.objects[name] = data

    async def head(self, name: str) -> ObjectInfo | None:
        return ObjectInfo(len(self.objects[name])) if name in self.objects else None

    async def get(self, name: str) -> bytes | None:
        return self.objects.get(name)

    async def read(self, name: str) -> AsyncIterator[bytes]:
        yield self.objects[name]

    async def names(self, prefix: str = "") -> list[str]:
        return sorted(name for name in self.objects if name.startswith(prefix))

    async def rename(self, old: str, new: str) -> None:
        raise AssertionError("not expected")

    async def delete(self, name: str) -> None:
        raise AssertionError("not expected")

    async def discard_unfinished(self, stem: str) -> None:
        return None

    def parts(self) -> dict[str, bytes]:
        return {name: data for name, data in self.objects.items() if not name.endswith(".manifest.json")}


def pipeline_for(storage: SlowMemoryStorage, workers: int, max_lines: int) -> PartPipeline:
    request = JobIdentity("r", "main", "en", "train", 200, max_lines, "c" * 40)
    spec = PartSpec(storage.staging, max_lines_per_file=max_lines, deliveries=workers)
    destination = Destination(storage, storage.staging, cleanup_local=True)
    naming = CountNaming("train", 200, max_lines)
    return PartPipeline(spec, naming, destination, Manifest(request=request), limit=200)


@pytest.mark.parametrize("workers", [1, 3])
def test_local_disk_holds_a_bounded_number_of_parts_while_uploads_lag(tmp_path: Path, workers: int) -> None:
    storage = SlowMemoryStorage(tmp_path)
    # batches of 23 documents span up to five parts of 5: each must be handed over before the next
    asyncio.run(pipeline_for(storage, workers, 5).execute(documents(LINES, 23), ReadProgress()))
    stored = storage.parts()
    assert len(stored) == 40
    assert storage.most_parts_on_disk <= 2 * workers + 1
    assert b"".join(stored[name] for name in sorted(stored)) == b"".join(line + b"\n" for line in LINES)
    assert [path.name for path in tmp_path.iterdir()] == ["c4_train_200.manifest.json"]  # kept until the end


def test_a_source_error_still_delivers_every_finished_part_then_is_raised(tmp_path: Path) -> None:
    storage = SlowMemoryStorage(tmp_path)
    pipeline = pipeline_for(storage, 2, 10)
    with pytest.raises(SourceError, match="truncated"):
        asyncio.run(pipeline.execute(documents(LINES, 25, fail_after=75), ReadProgress()))
    stored = storage.parts()
    # 75 documents were read: 7 complete parts delivered, the half-written 8th dropped, no temp file left
    assert sorted(stored) == [f"c4_train_200_part{i:03d}.jsonl" for i in range(1, 8)]
    assert b"".join(stored[name] for name in sorted(stored)) == b"".join(line + b"\n" for line in LINES[:70])
    assert [path.name for path in tmp_path.iterdir()] == ["c4_train_200.manifest.json"]  # kept until the end
    # ... and the manifest saved on the way out records exactly those parts, uploaded
    saved = Manifest.from_json(storage.objects["c4_train_200.manifest.json"], where="test")
    assert [(part.name, part.uploaded) for part in saved.parts] == [(name, True) for name in sorted(stored)]
    assert saved.complete is False
