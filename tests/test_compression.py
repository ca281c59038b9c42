"""`--compression none|gzip|zstd`: names, exact documents, what `datasets` reads, S3, bulk, verify."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import subprocess
import sys
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard

from aioc4.compression import compression_of, line_counter_for, new_compressor
from aioc4.config import COMPRESSIONS
from aioc4.decode import check_block
from aioc4.errors import ManifestError
from aioc4.facts import FactsAccumulator
from aioc4.manifest import Manifest
from aioc4.naming import (
    PART_EXTENSIONS,
    PART_NAME,
    CountNaming,
    ShardNaming,
    part_index,
    part_names,
    renames_for_short_split,
)
from aioc4.s3_storage import _content_type
from aioc4.writer import FinishedPart, PartWriter
from scripts.s3_server import MotoServerProcess, s3_client
from scripts.shards import FakeRepo, iter_shard_lines

from .conftest import Aioc4, jsonl, objects, parts_in, shard_paths, split_expected

Lines = Callable[[str], list[bytes]]
SUFFIX = {"none": "", "gzip": ".gz", "zstd": ".zst"}


def decompress(name: str, data: bytes) -> bytes:
    """A part's documents, by a reader other than aioc4's; one gzip member / zstd frame, nothing after."""
    if name.endswith(".gz"):
        inflater = zlib.decompressobj(31)
        documents = inflater.decompress(data) + inflater.flush()
        assert (inflater.eof, inflater.unused_data) == (True, b""), f"{name} is not exactly one gzip member"
        return documents
    if name.endswith(".zst"):
        assert zstandard.get_frame_parameters(data).has_checksum, f"{name} has no content checksum"
        decompressor = zstandard.ZstdDecompressor().decompressobj()
        documents = decompressor.decompress(data)
        assert (decompressor.eof, decompressor.unused_data) == (True, b""), f"{name}: not one zstd frame"
        return documents
    return data


def decompressed(parts: dict[str, bytes]) -> dict[str, bytes]:
    return {name: decompress(name, data) for name, data in parts.items()}


_DATASETS_SCRIPT = """
import sys, orjson
from datasets import load_dataset
rows = load_dataset("json", data_files=sys.argv[1:], split="train")
for row in rows:
    stamp = row["timestamp"]  # read as a timestamp column: back to C4's spelling
    sys.stdout.buffer.write(orjson.dumps(
        {"text": row["text"], "url": row["url"], "timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%SZ")}
    ) + b"\\n")
"""


def load_with_datasets(paths: Sequence[Path], cache: Path) -> list[dict[str, Any]]:
    """`datasets.load_dataset("json", data_files=...)` in a clean process, offline, with its own cache."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("HF_")}
    env.update(
        {
            "HF_DATASETS_CACHE": str(cache),
            "HF_HOME": str(cache / "home"),
            "HF_DATASETS_OFFLINE": "1",
            "HF_HUB_OFFLINE": "1",
            "HF_ENDPOINT": "http://127.0.0.1:9",  # nothing listens there: no network even if asked
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
    )
    completed = subprocess.run(
        [sys.executable, "-c", _DATASETS_SCRIPT, *map(str, paths)],
        env=env,
        capture_output=True,
        check=False,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stderr.decode()
    return [orjson.loads(line) for line in completed.stdout.splitlines()]


def documents(lines: Sequence[bytes]) -> list[dict[str, Any]]:
    return [
        {key: document[key] for key in ("text", "url", "timestamp")} for document in map(orjson.loads, lines)
    ]


# -- end to end ------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_count_job_parts_hold_the_documents_and_datasets_reads_them(
    aioc4: Aioc4, source_lines: Lines, tmp_path: Path, compression: str
) -> None:
    out = aioc4.cwd / "out"
    result = aioc4("--num-samples", "2500", "--max-lines-per-file", "1000", "--compression", compression,
                   "--output-dir", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    names = [f"c4_train_2500_part{i:03d}.jsonl{SUFFIX[compression]}" for i in (1, 2, 3)]
    expected = split_expected(source_lines("train")[:2500], names, 1000)
    stored = parts_in(out)
    assert list(stored) == names  # exactly these files, no temp file left
    assert decompressed(stored) == expected
    manifest = Manifest.from_json((out / "c4_train_2500.manifest.json").read_bytes(), where="m")
    assert manifest.request.compression == compression
    assert [(p.name, p.lines, p.size, p.crc32) for p in manifest.parts] == [
        (name, expected[name].count(b"\n"), len(stored[name]), f"{zlib.crc32(stored[name]):08x}")
        for name in names
    ]  # size and CRC-32 of the stored (compressed) bytes, lines of the documents
    verify = aioc4("verify", str(out))
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout.strip() == f"{out}/c4_train_2500.manifest.json: 3 part(s), 2,500 documents: OK"
    loaded = load_with_datasets([out / name for name in sorted(names)], tmp_path / "datasets-cache")
    assert loaded == documents(source_lines("train")[:2500])


def test_gzip_parts_to_s3_are_stored_as_gzip_files_and_verify(
    aioc4: Aioc4, s3: MotoServerProcess, bucket: str, source_lines: Lines
) -> None:
    result = aioc4("--num-samples", "2500", "--max-lines-per-file", "1000", "--compression", "gzip",
                   "--s3-path", f"s3://{bucket}/c4")  # fmt: skip
    assert result.returncode == 0, result.stderr
    names = [f"c4_train_2500_part{i:03d}.jsonl.gz" for i in (1, 2, 3)]
    stored = objects(s3, bucket, "c4/")
    assert list(stored) == [f"c4/{name}" for name in names]
    expected = split_expected(source_lines("train")[:2500], names, 1000)
    assert decompressed({key.removeprefix("c4/"): body for key, body in stored.items()}) == expected
    heads = [head_object(s3, bucket, f"c4/{name}") for name in names]
    assert [(head.get("ContentType"), head.get("ContentEncoding")) for head in heads] == [
        ("application/gzip", None)
    ] * 3  # never Content-Encoding: clients would inflate the bytes and size/CRC-32 would not match
    assert not (aioc4.cwd / "data").exists()  # local copies cleaned up
    verify = aioc4("verify", f"s3://{bucket}/c4")
    assert verify.returncode == 0, verify.stderr
    assert (
        verify.stdout.strip()
        == f"s3://{bucket}/c4/c4_train_2500.manifest.json: 3 part(s), 2,500 documents: OK"
    )


def head_object(s3: MotoServerProcess, bucket: str, key: str) -> dict[str, Any]:
    async def head() -> dict[str, Any]:
        async with s3_client(s3.endpoint) as client:
            return dict(await client.head_object(Bucket=bucket, Key=key))

    return asyncio.run(head())


def test_a_bulk_pull_with_zstd_writes_a_zst_file_per_shard_and_verifies(
    aioc4: Aioc4, fake_repo: FakeRepo
) -> None:
    out = aioc4.cwd / "out"
    result = aioc4("--num-samples", "all", "--split", "validation", "--procs", "1", "--compression", "zstd",
                   "--output-dir", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = {
        f"c4_validation_shard{position:05d}.jsonl.zst": jsonl(list(iter_shard_lines(fake_repo.root / path)))
        for position, path in enumerate(shard_paths(fake_repo, "validation"))
    }
    assert decompressed(parts_in(out)) == expected
    verify = aioc4("verify", str(out))
    assert verify.returncode == 0, verify.stderr
    assert f"{out}/c4_validation_all.manifest.json: 2 part(s), 1,400 documents: OK" in verify.stdout


def test_verify_finds_a_corrupt_compressed_part_and_another_compression_is_another_job(
    aioc4: Aioc4,
) -> None:
    out = aioc4.cwd / "out"
    args = ["--num-samples", "2500", "--max-lines-per-file", "1000", "--output-dir", str(out)]
    assert aioc4(*args, "--compression", "gzip").returncode == 0
    part = out / "c4_train_2500_part002.jsonl.gz"
    data = bytearray(part.read_bytes())
    stored_crc = f"{zlib.crc32(data):08x}"
    data[len(data) // 2] ^= 0x01
    part.write_bytes(bytes(data))
    verify = aioc4("verify", str(out))
    assert verify.returncode == 1
    report = verify.stdout.splitlines()
    assert report[0] == f"{out}/c4_train_2500.manifest.json: 3 part(s), 2,500 documents: 2 problem(s)"
    assert report[1].startswith("  c4_train_2500_part002.jsonl.gz: not a valid gzip stream (")
    assert report[2] == (
        f"  c4_train_2500_part002.jsonl.gz: CRC-32 {zlib.crc32(data):08x}, the manifest says {stored_crc}"
    )
    assert verify.error_lines == [f"aioc4: error: {out} does not match its manifest(s)"]
    other = aioc4(*args, "--compression", "zstd")
    assert other.returncode == 2
    assert other.error_lines == [
        f"aioc4: error: {out}/c4_train_2500.manifest.json records a different job "
        "(compression: 'gzip' -> 'zstd'); rerun with the same arguments to resume it, "
        "or pass --overwrite to replace it"
    ]


def test_an_unknown_compression_is_a_usage_error(aioc4: Aioc4) -> None:
    result = aioc4("--compression", "bz2", "--num-samples", "5")
    assert result.returncode == 2
    assert result.error_lines == [
        "aioc4: error: argument --compression: invalid choice: 'bz2' (choose from 'none', 'gzip', 'zstd')"
    ]


# -- names -----------------------------------------------------------------------------------------


def test_extensions_are_those_of_every_compression() -> None:
    assert tuple(PART_EXTENSIONS) == COMPRESSIONS
    assert PART_EXTENSIONS == {"none": ".jsonl", "gzip": ".jsonl.gz", "zstd": ".jsonl.zst"}


def test_count_names_carry_the_extension() -> None:
    naming = CountNaming("train", 2500, 1000, compression="gzip")
    assert [naming.final(i, 2500) for i in (1, 3)] == [
        "c4_train_2500_part001.jsonl.gz",
        "c4_train_2500_part003.jsonl.gz",
    ]
    assert naming.temp(2) == ".c4_train_2500_part002.jsonl.gz.tmp"
    assert naming.manifest() == "c4_train_2500.manifest.json"  # the same job slot whatever the compression
    assert CountNaming("train", 10, None, "af", "zstd").final(1, 10) == "c4_af_train_10.jsonl.zst"
    assert part_names("validation", 20, 10, compression="zstd") == [
        "c4_validation_20_part001.jsonl.zst",
        "c4_validation_20_part002.jsonl.zst",
    ]
    assert renames_for_short_split("train", 900, 450, 400, finished=1, compression="gzip") == [
        ("c4_train_900_part001.jsonl.gz", "c4_train_450_part001.jsonl.gz")
    ]


def test_shard_names_carry_the_extension() -> None:
    naming = ShardNaming("train", 17, 5000, compression="zstd")
    assert naming.final(1, 0) == "c4_train_shard00017_part000001.jsonl.zst"
    assert naming.temp(1) == ".c4_train_shard00017_part000001.jsonl.zst.tmp"
    assert naming.manifest() == "c4_train_shard00017.manifest.json"
    assert (
        ShardNaming("validation", 3, None, compression="gzip").final(1, 0)
        == "c4_validation_shard00003.jsonl.gz"
    )


def test_the_temp_glob_sweeps_temp_parts_of_every_compression(tmp_path: Path) -> None:
    """A killed run with another --compression left temp parts of the same job: the rerun removes them."""
    leftovers = [".c4_train_2500_part001.jsonl.tmp", ".c4_train_2500_part002.jsonl.gz.tmp",
                 ".c4_train_2500_part001.jsonl.zst.tmp"]  # fmt: skip
    others = [".c4_train_25000_part001.jsonl.gz.tmp", "c4_train_2500_part001.jsonl.gz"]
    for name in leftovers + others:
        (tmp_path / name).write_bytes(b"x")
    writer = PartWriter(tmp_path, CountNaming("train", 2500, 1000), 1000, requested=2500)
    assert writer.sweep() == 3
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(others)


@pytest.mark.parametrize(
    ("name", "index"),
    [("c4_train_7_part002.jsonl.gz", 2), ("c4_train_shard00001_part000003.jsonl.zst", 3),
     ("c4_train_7.jsonl.gz", 1)],
)  # fmt: skip
def test_part_index_reads_compressed_names(name: str, index: int) -> None:
    assert PART_NAME.match(name)
    assert part_index(name) == index


@pytest.mark.parametrize(
    "name",
    ["c4_train_7.jsonl.bz2", "c4_train_7.jsonl.gz.tmp", "c4_train_7.gz", "c4_train_7.jsonl.zstd",
     "c4_train_7.jsonl.gz.gz", "c4_train_7.json.gz", "c4_train_7.jsonl.zst/../x"],
)  # fmt: skip
def test_part_name_pattern_rejects_other_extensions(name: str) -> None:
    assert not PART_NAME.match(name)


def test_manifests_without_compression_still_load_and_an_unknown_one_is_refused() -> None:
    old = {
        "version": 2,
        "request": {"repo_id": "allenai/c4", "revision": "main", "config_name": "en", "split": "train",
                    "num_samples": 5, "max_lines_per_file": None, "commit": "a" * 40},
        "parts": [],
        "complete": False,
    }  # fmt: skip
    assert Manifest.from_json(json.dumps(old).encode(), where="m").request.compression == "none"
    old["request"]["compression"] = "bz2"  # type: ignore[index]
    with pytest.raises(
        ManifestError, match=r"^m is not a valid aioc4 manifest \(unexpected compression 'bz2'\)$"
    ):
        Manifest.from_json(json.dumps(old).encode(), where="m")


# -- writer, line counting, S3 type ----------------------------------------------------------------

LINES = [b'{"text":"doc %d \\u00e9"}' % i for i in range(2000)]


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_the_writer_makes_standalone_compressed_parts_and_records_their_stored_bytes(
    tmp_path: Path, compression: str
) -> None:
    naming = CountNaming("train", 2000, 1500, compression=compression)

    async def write() -> list[FinishedPart]:
        writer = PartWriter(tmp_path, naming, 1500, requested=2000)
        parts = await writer.write(check_block(jsonl(LINES[:700]), shard="s", first_line_number=1))
        parts += await writer.write(check_block(jsonl(LINES[700:]), shard="s", first_line_number=701))
        return [*parts, *await writer.close()]

    records = [part.record for part in asyncio.run(write())]
    suffix = SUFFIX[compression]
    assert [r.name for r in records] == [
        f"c4_train_2000_part001.jsonl{suffix}",
        f"c4_train_2000_part002.jsonl{suffix}",
    ]
    for record, lines in zip(records, (LINES[:1500], LINES[1500:]), strict=True):
        stored = (tmp_path / record.name).read_bytes()
        assert (record.size, record.crc32, record.lines) == (
            len(stored),
            f"{zlib.crc32(stored):08x}",
            len(lines),
        )
        assert decompress(record.name, stored) == jsonl(lines)


def compressed(compression: str, data: bytes) -> bytes:
    compressor = new_compressor(compression)
    assert compressor is not None
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_facts_count_the_documents_inside_and_crc_the_stored_bytes(compression: str) -> None:
    data = jsonl(LINES) * 40  # ~1.2 MB: more than one decompression step
    packed = compressed(compression, data)
    name = f"c4_train_7.jsonl{SUFFIX[compression]}"
    accumulator = FactsAccumulator(name)
    for start in range(0, len(packed), 10_000):
        accumulator.feed(packed[start : start + 10_000])
    facts = accumulator.facts()
    assert (facts.size, facts.crc32, facts.lines, facts.problem) == (
        len(packed), f"{zlib.crc32(packed):08x}", 80_000, None
    )  # fmt: skip


@pytest.mark.parametrize(
    ("compression", "damage", "problem"),
    [
        ("gzip", lambda b: b[:-9], "the gzip stream is truncated"),
        ("gzip", lambda b: b + b"x", "bytes after the end of the gzip stream"),
        ("gzip", lambda b: b + gzip.compress(b"{}\n"), "bytes after the end of the gzip stream"),
        ("zstd", lambda b: b[:-5], "the zstd frame is truncated"),
        ("zstd", lambda b: b + b"x", "bytes after the end of the zstd frame"),
    ],
)
def test_a_truncated_or_extended_stream_is_a_problem(
    compression: str, damage: Callable[[bytes], bytes], problem: str
) -> None:
    accumulator = FactsAccumulator(f"c4_train_7.jsonl{SUFFIX[compression]}")
    accumulator.feed(damage(compressed(compression, jsonl(LINES))))
    assert accumulator.facts().problem == problem


def test_a_zstd_frame_with_a_bad_checksum_is_a_problem() -> None:
    packed = bytearray(compressed("zstd", jsonl(LINES)))
    packed[-1] ^= 0xFF  # the last byte is the frame's content checksum
    counter = line_counter_for("c4_train_7.jsonl.zst")
    counter.feed(bytes(packed))
    counter.finish()
    assert str(counter.problem).startswith("not a valid zstd frame (")


def test_s3_content_types() -> None:
    assert [compression_of(n) for n in ("a.jsonl", "a.jsonl.gz", "a.jsonl.zst")] == ["none", "gzip", "zstd"]
    assert _content_type("c4_train_7.jsonl.gz") == {"ContentType": "application/gzip"}
    assert _content_type("c4_train_7.jsonl.zst") == {"ContentType": "application/zstd"}
    assert _content_type("c4_train_7.jsonl") == {}
