"""End to end, local output: the original README's examples and the contract on exact documents."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
    wait_until,
)

Lines = Callable[[str], list[bytes]]


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


@pytest.fixture(scope="module")
def paced_hub(fake_repo: FakeRepo) -> Iterator[HubServerProcess]:
    """A Hub whose storage sends at a steady 2 MB/s, so bytes counted at the server are bytes read (slow
    enough that a busy machine's late stop still shows as ~1 s of read-ahead, not the whole shard)."""
    with HubServerProcess(fake_repo.root, pace_bytes_per_s=2e6) as server:
        yield server


def test_streaming_stops_reading_once_n_documents_are_out(
    tmp_path: Path, paced_hub: HubServerProcess, fake_repo: FakeRepo, source_lines: Lines
) -> None:
    aioc4 = Aioc4(cwd=tmp_path, env=clean_env(paced_hub.endpoint, {}, tmp_path))
    paced_hub.reset_stats()
    result = aioc4("--num-samples", "1000", "--output-dir", "o")
    assert result.returncode == 0, result.stderr
    shard = "en/c4-train.00000-of-00003.json.gz"
    # every range the run asked for has ended (read whole, or left unfinished when the documents were out)
    wait_until(lambda: _every_body_ended(paced_hub.stats()), "the server to see every body end")
    served = paced_hub.stats()["storage_body_bytes_by_path"]
    shard_size = (fake_repo.root / shard).stat().st_size
    assert list(served) == [shard]
    # ~0.9 MB hold the first 1,000 documents: read-ahead asks for what they probably take, not more
    needed = shard_size * 1000 // DOCS_PER_TRAIN_SHARD
    assert served[shard] < 2 * needed, f"served {served[shard]:,} bytes for documents in ~{needed:,}"
    assert parts_in(tmp_path / "o") == {"c4_train_1000.jsonl": jsonl(source_lines("train")[:1000])}


def _every_body_ended(stats: dict[str, Any]) -> bool:
    return bool(sum(stats["storage_body_ends"].values()) == stats["storage_get_requests"])


@pytest.mark.parametrize(
    ("signum", "code", "word"), [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")]
)
def test_a_signal_keeps_finished_parts_and_leaves_no_temp_file(
    tmp_path: Path, fake_repo: FakeRepo, source_lines: Lines, signum: signal.Signals, code: int, word: str
) -> None:
    with HubServerProcess(fake_repo.root, pace_bytes_per_s=2e6) as slow_hub:
        aioc4 = Aioc4(cwd=tmp_path, env=clean_env(slow_hub.endpoint, {}, tmp_path))
        process = aioc4.popen(
            "--num-samples", "30000", "--max-lines-per-file", "500", "--max-download-rate", "2M",
            "--output-dir", "o",
        )  # fmt: skip
        folder = tmp_path / "o"
        deadline = time.monotonic() + 60
        while not list(folder.glob("*_part002.jsonl")) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(process.pid, signum)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == code, stderr
    assert f"aioc4: error: interrupted by {word}: " in stderr
    assert "run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    parts = parts_in(folder)
    assert len(parts) >= 2
    names = part_names("train", 30000, 500)[: len(parts)]
    assert parts == split_expected(source_lines("train"), names, 500)  # complete parts only, no temp file


def test_summary_reports_the_original_statistics(aioc4: Aioc4, source_lines: Lines) -> None:
    result = aioc4("--num-samples", "300", "--max-lines-per-file", "100", "--output-dir", "o")
    assert result.returncode == 0, result.stderr
    texts = [json.loads(line)["text"] for line in source_lines("train")[:300]]
    average = sum(len(text) for text in texts) / len(texts)
    assert "Total samples:        300" in result.stdout
    assert "Files created:        3" in result.stdout
    assert "Max lines per file:   100" in result.stdout
    assert (
        f"Average text length:  {average:,.1f} characters (measured on 300 of 300 documents)" in result.stdout
    )
    assert f"Sample text preview:  {texts[0][:200].replace(chr(10), ' ')}..." in result.stdout
    for name in part_names("train", 300, 100):
        assert str(Path("o") / name) in result.stdout


def test_quiet_prints_only_the_part_locations(aioc4: Aioc4) -> None:
    result = aioc4("-q", "--num-samples", "5", "--output-dir", "o")
    assert result.returncode == 0
    assert result.stderr == ""
    assert result.stdout == "o/c4_train_5.jsonl\n"  # as `hf download -q` prints only paths


def test_console_script_and_module_both_run() -> None:
    script = Path(sys.executable).parent / "aioc4"
    for command in ([str(script)], [sys.executable, "-m", "aioc4"]):
        help_text = subprocess.run([*command, "--help"], capture_output=True, text=True, check=True).stdout
        for flag in FLAGS:
            assert flag in help_text


FLAGS = [
    "--output-dir", "--num-samples", "--split", "--streaming", "--no-streaming", "--cache-dir", "--s3-path",
    "--cleanup-local", "--no-cleanup", "--max-lines-per-file", "--repo-id", "--revision", "--endpoint-url",
    "--upload-workers",
]  # fmt: skip


@pytest.fixture(scope="module")
def corrupt_hub(fake_repo: FakeRepo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServerProcess]:
    """The same repo with its second train shard cut in half (a truncated upload)."""
    root = tmp_path_factory.mktemp("corrupt") / "repo"
    shutil.copytree(fake_repo.root, root)
    shard = root / "en/c4-train.00001-of-00003.json.gz"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with HubServerProcess(root) as server:
        yield server


def test_a_truncated_shard_is_an_error_naming_it_and_finished_parts_are_kept(
    tmp_path: Path, corrupt_hub: HubServerProcess, source_lines: Lines
) -> None:
    aioc4 = Aioc4(cwd=tmp_path, env=clean_env(corrupt_hub.endpoint, {}, tmp_path))
    result = aioc4("--num-samples", "30000", "--max-lines-per-file", "5000", "--output-dir", "o")
    assert result.returncode == 1
    assert result.error_lines == [
        "aioc4: error: en/c4-train.00001-of-00003.json.gz: gzip stream is truncated"
    ]
    names = part_names("train", 30000, 5000)[:3]  # 12,000 + about 6,000 readable documents: 3 full parts
    assert parts_in(tmp_path / "o") == split_expected(source_lines("train"), names, 5000)
