"""End to end, local output: the original README's examples and the contract on exact documents."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aioc4.naming import part_names
from scripts.hub_server import HubServerProcess
from scripts.shards import FakeRepo

from .conftest import (
    DOCS_PER_TRAIN_SHARD,
    DOCS_PER_VALIDATION_SHARD,
    VALIDATION_SHARDS,
    Aioc4,
    clean_env,
    jsonl,
    parts_in,
    split_expected,
)

Lines = Callable[[str], list[bytes]]


def test_default_run_writes_first_1000_train_documents(aioc4: Aioc4, source_lines: Lines) -> None:
    result = aioc4()
    assert result.returncode == 0, result.stderr
    folder = aioc4.cwd / "data" / "c4_subset"
    assert parts_in(folder) == {"c4_train_1000.jsonl": jsonl(source_lines("train")[:1000])}
    assert "Total samples:        1,000" in result.stdout
    assert "Files created:        1" in result.stdout
    assert str(Path("data/c4_subset/c4_train_1000.jsonl")) in result.stdout


def test_num_samples_and_output_dir(aioc4: Aioc4, source_lines: Lines) -> None:
    result = aioc4("--num-samples", "10000", "--output-dir", "./my_data")
    assert result.returncode == 0, result.stderr
    assert parts_in(aioc4.cwd / "my_data") == {"c4_train_10000.jsonl": jsonl(source_lines("train")[:10000])}


def test_parts_span_two_shards_and_the_last_part_holds_the_rest(aioc4: Aioc4, source_lines: Lines) -> None:
    count = DOCS_PER_TRAIN_SHARD + 2_345  # into the second shard, not a multiple of the part size
    result = aioc4("--num-samples", str(count), "--max-lines-per-file", "3000", "--output-dir", "out")
    assert result.returncode == 0, result.stderr
    names = [f"c4_train_{count}_part{i:03d}.jsonl" for i in range(1, 6)]
    assert parts_in(aioc4.cwd / "out") == split_expected(source_lines("train")[:count], names, 3000)
    assert "Max lines per file:   3,000" in result.stdout


def test_part_size_equal_to_n_gives_a_single_file(aioc4: Aioc4, source_lines: Lines) -> None:
    result = aioc4("--num-samples", "2000", "--max-lines-per-file", "2000", "--output-dir", "out")
    assert result.returncode == 0, result.stderr
    assert parts_in(aioc4.cwd / "out") == {"c4_train_2000.jsonl": jsonl(source_lines("train")[:2000])}


def test_validation_split(aioc4: Aioc4, source_lines: Lines) -> None:
    result = aioc4(
        "--split", "validation", "--num-samples", "900", "--max-lines-per-file", "400", "--output-dir", "v"
    )
    assert result.returncode == 0, result.stderr
    names = part_names("validation", 900, 400)
    assert names == [f"c4_validation_900_part{i:03d}.jsonl" for i in (1, 2, 3)]
    assert parts_in(aioc4.cwd / "v") == split_expected(source_lines("validation")[:900], names, 400)


def test_split_shorter_than_n_writes_everything_with_the_real_count(
    aioc4: Aioc4, source_lines: Lines
) -> None:
    total = VALIDATION_SHARDS * DOCS_PER_VALIDATION_SHARD
    result = aioc4(
        "--split", "validation", "--num-samples", "5000", "--max-lines-per-file", "600", "--output-dir", "v"
    )
    assert result.returncode == 0, result.stderr
    names = [f"c4_validation_{total}_part{i:03d}.jsonl" for i in (1, 2, 3)]
    assert parts_in(aioc4.cwd / "v") == split_expected(source_lines("validation"), names, 600)
    assert f"holds only {total:,} documents (5,000 were requested)" in result.stdout


def test_short_split_that_fits_one_part_gets_the_single_file_name(aioc4: Aioc4, source_lines: Lines) -> None:
    total = VALIDATION_SHARDS * DOCS_PER_VALIDATION_SHARD
    result = aioc4("--split", "validation", "--num-samples", "99999", "--output-dir", "v")
    assert result.returncode == 0, result.stderr
    assert parts_in(aioc4.cwd / "v") == {f"c4_validation_{total}.jsonl": jsonl(source_lines("validation"))}


def test_explicit_streaming_and_revision_by_commit(
    aioc4: Aioc4, hub: HubServerProcess, source_lines: Lines
) -> None:
    result = aioc4("--streaming", "--revision", hub.commit, "--num-samples", "50", "--output-dir", "o")
    assert result.returncode == 0, result.stderr
    assert parts_in(aioc4.cwd / "o") == {"c4_train_50.jsonl": jsonl(source_lines("train")[:50])}
    assert hub.commit[:12] in result.stdout


def test_no_streaming_fills_the_cache_and_a_second_run_transfers_no_shard(
    aioc4: Aioc4, hub: HubServerProcess, source_lines: Lines, fake_repo: FakeRepo
) -> None:
    count = DOCS_PER_TRAIN_SHARD + 10  # needs the first two shards, not the third
    args = [
        "--no-streaming",
        "--cache-dir",
        "cache",
        "--num-samples",
        str(count),
        "--max-lines-per-file",
        "5000",
    ]
    hub.reset_stats()
    first = aioc4(*args, "--output-dir", "first")
    assert first.returncode == 0, first.stderr
    served = hub.stats()["storage_body_bytes_by_path"]
    needed = [f"en/c4-train.{i:05d}-of-00003.json.gz" for i in (0, 1)]
    assert served == {path: (fake_repo.root / path).stat().st_size for path in needed}  # whole files, no more
    cached = sorted(path.name for path in (aioc4.cwd / "cache").rglob("*.json.gz"))
    assert cached == sorted(Path(path).name for path in needed)

    hub.reset_stats()
    second = aioc4(*args, "--output-dir", "second")
    assert second.returncode == 0, second.stderr
    assert hub.stats()["storage_body_bytes"] == 0
    expected = split_expected(source_lines("train")[:count], part_names("train", count, 5000), 5000)
    assert parts_in(aioc4.cwd / "first") == expected
    assert parts_in(aioc4.cwd / "second") == expected


@pytest.fixture(scope="module")
def paced_hub(fake_repo: FakeRepo) -> Iterator[HubServerProcess]:
    """A Hub whose storage sends at a steady 40 MB/s, so bytes counted at the server are bytes read."""
    with HubServerProcess(fake_repo.root, pace_bytes_per_s=40e6) as server:
        yield server


def test_streaming_stops_reading_once_n_documents_are_out(
    tmp_path: Path, paced_hub: HubServerProcess, fake_repo: FakeRepo, source_lines: Lines
) -> None:
    aioc4 = Aioc4(cwd=tmp_path, env=clean_env(paced_hub.endpoint, {}, tmp_path))
    paced_hub.reset_stats()
    result = aioc4("--num-samples", "1000", "--output-dir", "o")
    assert result.returncode == 0, result.stderr
    shard = "en/c4-train.00000-of-00003.json.gz"
    served = paced_hub.stats()["storage_body_bytes_by_path"]
    shard_size = (fake_repo.root / shard).stat().st_size
    assert list(served) == [shard]
    assert served[shard] < 0.25 * shard_size, f"served {served[shard]:,} of {shard_size:,} bytes"
    assert parts_in(tmp_path / "o") == {"c4_train_1000.jsonl": jsonl(source_lines("train")[:1000])}


def test_sigint_keeps_finished_parts_and_leaves_no_temp_file(
    tmp_path: Path, fake_repo: FakeRepo, source_lines: Lines
) -> None:
    with HubServerProcess(fake_repo.root, pace_bytes_per_s=2e6) as slow_hub:
        aioc4 = Aioc4(cwd=tmp_path, env=clean_env(slow_hub.endpoint, {}, tmp_path))
        process = aioc4.popen("--num-samples", "30000", "--max-lines-per-file", "500", "--output-dir", "o")
        folder = tmp_path / "o"
        deadline = time.monotonic() + 60
        while not list(folder.glob("*_part002.jsonl")) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    assert "Traceback" not in stderr
    parts = parts_in(folder)
    assert len(parts) >= 2
    names = part_names("train", 30000, 500)[: len(parts)]
    assert parts == split_expected(source_lines("train"), names, 500)  # complete parts only, no temp file
