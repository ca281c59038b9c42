"""The job runner in process, through its seams: an injected Hub session and S3 client, job specs
built directly (no `RunConfig`, no command line), against the real local Hub and moto's S3 server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import aiohttp
from aiobotocore.session import get_session

from aioc4.config import S3Target
from aioc4.destination import Destination
from aioc4.hub import HubSource
from aioc4.jobs import BulkJob, CountJob, PartSpec, SourceSpec
from aioc4.manifest import Manifest
from aioc4.runner import run
from aioc4.s3_storage import S3Storage
from aioc4.storage import LocalStorage
from scripts.hub_server import HubServerProcess
from scripts.s3_server import FAKE_ACCESS_KEY, FAKE_SECRET_KEY, REGION, MotoServerProcess, list_objects
from scripts.shards import FakeRepo, iter_shard_lines
from tests.conftest import DOCS_PER_VALIDATION_SHARD, jsonl, shard_paths

VALIDATION = SourceSpec(split="validation")


def test_a_count_job_to_s3_through_an_injected_client_and_session(
    tmp_path: Path,
    hub: HubServerProcess,
    s3: MotoServerProcess,
    bucket: str,
    source_lines: Callable[[str], list[bytes]],
) -> None:
    job = CountJob(VALIDATION, PartSpec(tmp_path / "staging", max_lines_per_file=400), num_samples=1000)

    async def pull() -> tuple[int, bool]:
        session = get_session()
        async with (
            session.create_client(
                "s3",
                endpoint_url=s3.endpoint,
                region_name=REGION,
                aws_access_key_id=FAKE_ACCESS_KEY,
                aws_secret_access_key=FAKE_SECRET_KEY,
            ) as client,
            aiohttp.ClientSession(auto_decompress=False) as http,
        ):
            storage = S3Storage(S3Target(bucket, "runner"), client=client)
            source = HubSource("allenai/c4", endpoint=hub.endpoint, session=http)
            destination = Destination(storage, job.parts.staging, cleanup_local=True)
            summary = await run(job, destination, hub=source)
            # the injected client and session belong to the caller: still open after the run
            await client.head_bucket(Bucket=bucket)
            return summary.documents, http.closed

    documents, closed = asyncio.run(pull())
    assert (documents, closed) == (1000, False)
    found = asyncio.run(list_objects(s3.endpoint, bucket, "runner/"))
    expected = source_lines("validation")[:1000]
    assert {key: body for key, body in found.items() if not key.endswith(".manifest.json")} == {
        "runner/c4_validation_1000_part001.jsonl": jsonl(expected[:400]),
        "runner/c4_validation_1000_part002.jsonl": jsonl(expected[400:800]),
        "runner/c4_validation_1000_part003.jsonl": jsonl(expected[800:]),
    }
    manifest = Manifest.from_json(found["runner/c4_validation_1000.manifest.json"], where="s3")
    assert manifest.complete
    assert all(part.uploaded for part in manifest.parts)
    assert not (tmp_path / "staging").exists()  # cleaned up after the uploads, and the folder it made


def test_a_bulk_pull_is_a_loop_of_shard_jobs_then_the_combined_manifest(
    tmp_path: Path, hub: HubServerProcess, fake_repo: FakeRepo
) -> None:
    folder = tmp_path / "out"
    job = BulkJob(VALIDATION, PartSpec(folder))

    async def pull() -> int:
        async with HubSource("allenai/c4", endpoint=hub.endpoint) as source:
            summary = await run(job, Destination(LocalStorage(folder), folder), hub=source)
            return summary.documents

    assert asyncio.run(pull()) == 2 * DOCS_PER_VALIDATION_SHARD
    paths = shard_paths(fake_repo, "validation")
    for number, path in enumerate(paths):
        part = folder / f"c4_validation_shard{number:05d}.jsonl"
        assert part.read_bytes() == jsonl(list(iter_shard_lines(fake_repo.root / path)))
    combined = Manifest.from_json((folder / "c4_validation_all.manifest.json").read_bytes(), where="local")
    assert combined.complete
    assert combined.documents == 2 * DOCS_PER_VALIDATION_SHARD
    # a second run finds every shard complete and reads nothing
    hub.reset_stats()
    assert asyncio.run(pull()) == 2 * DOCS_PER_VALIDATION_SHARD
    assert hub.stats()["storage_body_bytes"] == 0
