"""The manifest and exact resume: reruns finish the job, byte-identical, and never redo finished work."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from aioc4.naming import part_names
from scripts.hub_server import HubServerProcess
from scripts.s3_server import MotoServerProcess
from scripts.shards import FakeRepo

from .conftest import (
    DOCS_PER_TRAIN_SHARD,
    Aioc4,
    clean_env,
    jsonl,
    objects,
    open_multipart_uploads,
    parts_in,
    split_expected,
    wait_until,
)

Lines = Callable[[str], list[bytes]]


def read_manifest(path: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads(path.read_bytes())
    return data


def test_manifest_records_the_request_and_every_part(
    aioc4: Aioc4, hub: HubServerProcess, source_lines: Lines
) -> None:
    count = DOCS_PER_TRAIN_SHARD + 500
    result = aioc4("--num-samples", str(count), "--max-lines-per-file", "5000", "--output-dir", "o")
    assert result.returncode == 0, result.stderr
    folder = aioc4.cwd / "o"
    manifest = json.loads((folder / f"c4_train_{count}.manifest.json").read_bytes())
    assert manifest["request"] == {
        "repo_id": "allenai/c4",
        "revision": "main",
        "config_name": "en",
        "split": "train",
        "num_samples": count,
        "max_lines_per_file": 5000,
        "commit": hub.commit,
        "shards": "",  # the whole split
        "shard": "",  # a count job, not one shard of a bulk pull
        "split_shards": 0,
        "compression": "none",
    }
    assert manifest["complete"] is True
    names = part_names("train", count, 5000)
    assert [part["name"] for part in manifest["parts"]] == names
    for part in manifest["parts"]:
        content = (folder / part["name"]).read_bytes()
        assert part["size"] == len(content)
        assert part["lines"] == content.count(b"\n")
        assert part["crc32"] == f"{zlib.crc32(content):08x}"
        assert part["uploaded"] is False
    shard0, shard1 = "en/c4-train.00000-of-00003.json.gz", "en/c4-train.00001-of-00003.json.gz"
    ranges = [(p["first"], p["last"]) for p in manifest["parts"]]
    assert ranges[0] == ({"shard": shard0, "line": 1}, {"shard": shard0, "line": 5000})
    assert ranges[2] == ({"shard": shard0, "line": 10001}, {"shard": shard1, "line": 500})  # 2,000 + 500


def test_rerunning_a_finished_job_transfers_nothing(aioc4: Aioc4, hub: HubServerProcess) -> None:
    args = ["--num-samples", "3000", "--max-lines-per-file", "1000", "--output-dir", "o"]
    assert aioc4(*args).returncode == 0
    before = parts_in(aioc4.cwd / "o")
    hub.reset_stats()
    again = aioc4(*args)
    assert again.returncode == 0, again.stderr
    assert "Already complete: 3,000 documents" in again.stdout
    stats = hub.stats()
    assert (
        stats["api_requests"],
        stats["storage_get_requests"],
        sum(stats["resolve_requests"].values()),
    ) == (0, 0, 0)
    assert parts_in(aioc4.cwd / "o") == before


def test_a_rerun_restores_damaged_and_missing_parts_only(
    aioc4: Aioc4, hub: HubServerProcess, source_lines: Lines
) -> None:
    args = ["--num-samples", "6000", "--max-lines-per-file", "1000", "--output-dir", "o"]
    assert aioc4(*args).returncode == 0
    folder = aioc4.cwd / "o"
    names = part_names("train", 6000, 1000)
    (folder / names[3]).unlink()
    damaged = bytearray((folder / names[4]).read_bytes())
    damaged[100] ^= 0x01
    (folder / names[4]).write_bytes(bytes(damaged))
    hub.reset_stats()
    rerun = aioc4(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming after 3 part(s) (3000 documents)" in rerun.stderr
    assert parts_in(folder) == split_expected(source_lines("train"), names, 1000)
    stats = hub.stats()  # one shard, read from its start to document 6,000 (as ranges: one resolve)
    assert list(stats["storage_body_bytes_by_path"]) == ["en/c4-train.00000-of-00003.json.gz"]
    assert stats["resolve_requests"]["GET"] == 1


def test_a_different_job_in_the_same_place_is_refused_unless_overwrite(
    aioc4: Aioc4, source_lines: Lines
) -> None:
    assert aioc4("--num-samples", "2000", "--max-lines-per-file", "1000", "--output-dir", "o").returncode == 0
    refused = aioc4("--num-samples", "2000", "--max-lines-per-file", "500", "--output-dir", "o")
    assert refused.returncode == 2
    assert refused.error_lines == [
        f"aioc4: error: {Path('o') / 'c4_train_2000.manifest.json'} records a different job "
        "(max_lines_per_file: 1000 -> 500); rerun with the same arguments to resume it, "
        "or pass --overwrite to replace it"
    ]
    replaced = aioc4(
        "--num-samples", "2000", "--max-lines-per-file", "500", "--output-dir", "o", "--overwrite"
    )
    assert replaced.returncode == 0, replaced.stderr
    names = part_names("train", 2000, 500)
    assert parts_in(aioc4.cwd / "o") == split_expected(source_lines("train"), names, 500)


@pytest.mark.parametrize("output", ["local", "s3"])
def test_a_short_split_never_renames_its_parts_onto_another_finished_job(
    aioc4: Aioc4, s3: MotoServerProcess, bucket: str, source_lines: Lines, output: str
) -> None:
    """Job A asks for exactly what the split holds; job B asks for more, with other part sizes: B's
    real-count names would be A's. B keeps the names of its request, and A still verifies."""
    total = len(source_lines("validation"))
    where = ["--output-dir", "o"] if output == "local" else ["--s3-path", f"s3://{bucket}/v", "--no-cleanup"]
    job_a = ["--split", "validation", "--num-samples", str(total), "--max-lines-per-file", "300", *where]
    job_b = ["--split", "validation", "--num-samples", "5000", "--max-lines-per-file", "400", *where]
    assert aioc4(*job_a).returncode == 0
    b = aioc4(*job_b)
    assert b.returncode == 0, b.stderr
    assert "the parts keep the names of the 5000 requested" in b.stderr
    lines = source_lines("validation")
    a_parts = split_expected(lines, part_names("validation", total, 300), 300)
    b_parts = split_expected(lines, part_names("validation", 5000, 400)[: -(-total // 400)], 400)
    found = parts_in(aioc4.cwd / "o") if output == "local" else {
        key.removeprefix("v/"): body for key, body in objects(s3, bucket, "v/").items()
    }  # fmt: skip
    assert found == {**a_parts, **b_parts}
    verify = aioc4("verify", "o" if output == "local" else f"s3://{bucket}/v")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_files_with_this_jobs_names_but_no_manifest_are_not_overwritten(
    aioc4: Aioc4, source_lines: Lines
) -> None:
    folder = aioc4.cwd / "o"
    folder.mkdir()
    (folder / "c4_train_10.jsonl").write_bytes(b"my own notes\n")  # e.g. left by the tool aioc4 replaces
    refused = aioc4("--num-samples", "10", "--output-dir", "o")
    assert refused.returncode == 2
    assert len(refused.error_lines) == 1
    assert "c4_train_10.jsonl already exist(s) and no manifest of this job records them" in refused.stderr
    assert (folder / "c4_train_10.jsonl").read_bytes() == b"my own notes\n"
    replaced = aioc4("--num-samples", "10", "--output-dir", "o", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert parts_in(folder) == {"c4_train_10.jsonl": jsonl(source_lines("train")[:10])}


def test_overwrite_deletes_only_the_names_of_the_job_it_replaces(aioc4: Aioc4) -> None:
    assert aioc4("--num-samples", "500", "--output-dir", "o").returncode == 0
    assert aioc4("--num-samples", "20", "--max-lines-per-file", "10", "--output-dir", "o").returncode == 0
    folder = aioc4.cwd / "o"
    manifest = json.loads((folder / "c4_train_20.manifest.json").read_bytes())
    manifest["parts"].append({**manifest["parts"][0], "name": "c4_train_500.jsonl"})  # hand-edited
    (folder / "c4_train_20.manifest.json").write_text(json.dumps(manifest))
    replaced = aioc4("--num-samples", "20", "--output-dir", "o", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert "c4_train_500.jsonl is not a name of the earlier job; left alone" in replaced.stderr
    assert (folder / "c4_train_500.jsonl").exists()  # the other job's part survives
    assert not (folder / "c4_train_20_part001.jsonl").exists()


def test_verify_checks_every_part_against_the_manifest(aioc4: Aioc4) -> None:
    assert aioc4("--num-samples", "3000", "--max-lines-per-file", "1000", "--output-dir", "o").returncode == 0
    good = aioc4("verify", "o")
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip() == "o/c4_train_3000.manifest.json: 3 part(s), 3,000 documents: OK"
    folder = aioc4.cwd / "o"
    names = part_names("train", 3000, 1000)
    (folder / names[0]).write_bytes((folder / names[0]).read_bytes() + b'{"text":"extra"}\n')
    (folder / names[2]).unlink()
    bad = aioc4("verify", "o")
    assert bad.returncode == 1
    assert f"  {names[0]}: " in bad.stdout
    assert f"  {names[2]}: missing" in bad.stdout
    assert bad.error_lines == ["aioc4: error: o does not match its manifest(s)"]


def test_verify_an_s3_prefix(aioc4: Aioc4, s3: MotoServerProcess, bucket: str) -> None:
    run = aioc4("--num-samples", "2000", "--max-lines-per-file", "1000", "--s3-path", f"s3://{bucket}/v")
    assert run.returncode == 0, run.stderr
    good = aioc4("verify", f"s3://{bucket}/v")
    assert good.returncode == 0, good.stderr
    assert "2 part(s), 2,000 documents: OK" in good.stdout
    empty = aioc4("verify", f"s3://{bucket}/nothing-here")
    assert empty.returncode == 1
    assert empty.error_lines == [
        f"aioc4: error: no aioc4 manifest (*.manifest.json) in s3://{bucket}/nothing-here"
    ]


@pytest.fixture(scope="module")
def paced_hub(fake_repo: FakeRepo) -> Iterator[HubServerProcess]:
    """4 MB/s per connection; the test caps the run at 4 MB/s in all (~6 s for the whole job), so that a
    run can be killed at any point of it."""
    with HubServerProcess(fake_repo.root, pace_bytes_per_s=4e6) as server:
        yield server


def recorded_parts(manifest: Path) -> int:
    """Parts the local manifest records (it is replaced atomically: never read half-written)."""
    try:
        parts = read_manifest(manifest)["parts"]
    except FileNotFoundError:
        return 0
    assert isinstance(parts, list)
    return len(parts)


def wait_for_a_new_part(process: subprocess.Popen[str], manifest: Path, finished: int) -> None:
    wait_until(lambda: process.poll() is not None or recorded_parts(manifest) > finished, "a new part")


def kill_9_at_a_random_point(
    process: subprocess.Popen[str], manifest: Path, finished: int, hub: HubServerProcess, rng: random.Random
) -> bool:
    """Once the run has finished a part beyond the `finished` ones, up to ~3/4 of a part's gzip bytes more
    (somewhere in the next part), SIGKILL it; False if it ended before."""

    def ended() -> bool:
        return process.poll() is not None

    wait_until(lambda: ended() or recorded_parts(manifest) > finished, "the round's first finished part")
    point = hub.stats()["storage_body_bytes"] + rng.uniform(0, 1.5e6)
    wait_until(lambda: ended() or hub.stats()["storage_body_bytes"] >= point, "a random point of the run")
    if ended():
        return False
    os.kill(process.pid, signal.SIGKILL)
    return True


def kill_9_rounds(
    aioc4: Aioc4, args: Sequence[str], rounds: int, wait: Callable[[subprocess.Popen[str]], None]
) -> int:
    """Up to `rounds` runs, each killed with -9 once `wait` returns (unless it ended before: then no
    more rounds); how many were killed."""
    kills = 0
    for _ in range(rounds):
        process = aioc4.popen(*args)
        wait(process)
        if process.poll() is not None:
            break
        os.kill(process.pid, signal.SIGKILL)
        kills += 1
        process.communicate(timeout=30)
    return kills


def test_kill_9_while_parts_are_stitched_from_decode_processes_then_rerun_gives_identical_output(
    tmp_path: Path, paced_hub: HubServerProcess, source_lines: Lines
) -> None:
    """Decode processes read shards side by side and parts are stitched from their segments: killed
    with -9 at random points (a random number of shard bytes after the round's first new part), the
    reruns end with exactly the parts of a clean run, and no temp part or segment is left behind.
    Shards read side by side finish parts in bursts (a later shard's parts once the one before ends),
    so the random point is a time after the round's first new part, not a number of bytes."""
    aioc4 = Aioc4(cwd=tmp_path, env=clean_env(paced_hub.endpoint, {}, tmp_path))
    count, size = 2 * DOCS_PER_TRAIN_SHARD + 1_500, 1_000  # three shards, parts across their boundaries
    args = ["--num-samples", str(count), "--max-lines-per-file", str(size), "--output-dir", "out"]
    args += ["--procs", "2", "--max-download-rate", "4M"]
    manifest = tmp_path / "out" / f"c4_train_{count}.manifest.json"
    rng = random.Random(20261130)

    def a_random_time_after_a_new_part(process: subprocess.Popen[str]) -> None:
        wait_for_a_new_part(process, manifest, recorded_parts(manifest))
        time.sleep(rng.uniform(0, 0.5))  # the run is capped at 4 MB/s: a time is a point of the job

    kills = kill_9_rounds(aioc4, args, 5, a_random_time_after_a_new_part)
    final = aioc4(*args)
    assert final.returncode == 0, final.stderr
    assert kills >= 3, f"only {kills} round(s) were still running when killed"
    names = part_names("train", count, size)
    expected = split_expected(source_lines("train")[:count], names, size)
    assert parts_in(tmp_path / "out") == expected  # hidden files included: no temp part, no segment


def test_kill_9_while_the_only_part_grows_from_the_first_segment_then_rerun_gives_identical_output(
    tmp_path: Path, paced_hub: HubServerProcess, source_lines: Lines
) -> None:
    """The only part of a count job is the first shard's segment, renamed, with the others appended:
    killed with -9 at random points of it, every rerun ends with exactly that part and nothing else
    (the renamed segment is a temp part that the next run sweeps)."""
    aioc4 = Aioc4(cwd=tmp_path, env=clean_env(paced_hub.endpoint, {}, tmp_path))
    count = 2 * DOCS_PER_TRAIN_SHARD + 1_500
    args = ["--num-samples", str(count), "--output-dir", "out", "--procs", "2", "--max-download-rate", "4M"]
    rng = random.Random(20261206)

    def a_random_time(process: subprocess.Popen[str]) -> None:
        time.sleep(rng.uniform(0.3, 1.2))  # capped at 4 MB/s, the job takes ~6 s: a time is a point of it

    kills = kill_9_rounds(aioc4, args, 4, a_random_time)
    final = aioc4(*args)
    assert final.returncode == 0, final.stderr
    assert kills >= 3, f"only {kills} round(s) were still running when killed"
    expected = {f"c4_train_{count}.jsonl": jsonl(source_lines("train")[:count])}
    assert parts_in(tmp_path / "out") == expected  # hidden files included: no temp part, no segment


def test_kill_9_at_random_points_then_rerun_gives_byte_identical_output(
    tmp_path: Path, paced_hub: HubServerProcess, s3: MotoServerProcess, bucket: str, source_lines: Lines
) -> None:
    """Each round is killed at a random point after it finished a part of its own (so every round makes
    progress, and none can finish the job first): the point is a random number of shard bytes more,
    counted by the paced server, not a time, so a busy machine moves it no more than a fast one."""
    env = clean_env(paced_hub.endpoint, s3.env(), tmp_path)
    aioc4 = Aioc4(cwd=tmp_path, env=env)
    count, size = 2 * DOCS_PER_TRAIN_SHARD + 1_500, 2_500
    args = ["--num-samples", str(count), "--max-lines-per-file", str(size), "--s3-path", f"s3://{bucket}/k"]
    args += ["--max-download-rate", "4M"]  # many ranges in flight, ~6 s in all: killed at any point of it
    args += ["--procs", "1"]  # the one-process reader (decode processes: the next test)
    manifest = tmp_path / "data" / "c4_subset" / f"c4_train_{count}.manifest.json"
    rng = random.Random(20261126)
    kills = 0
    for _ in range(4):
        finished = recorded_parts(manifest)
        process = aioc4.popen(*args)
        kills += kill_9_at_a_random_point(process, manifest, finished, paced_hub, rng)
        process.communicate(timeout=30)
    final = aioc4(*args)
    assert final.returncode == 0, final.stderr
    print(f"kill -9 rounds survived: {kills}")
    assert kills == 4  # every round was still running when it was killed
    names = part_names("train", count, size)
    assert objects(s3, bucket) == {
        f"k/{n}": b for n, b in split_expected(source_lines("train")[:count], names, size).items()
    }
    assert open_multipart_uploads(s3, bucket) == []
    leftovers = tmp_path / "data" / "c4_subset"  # created by a killed run, so it may stay, but empty
    assert not leftovers.exists() or list(leftovers.iterdir()) == []
    assert aioc4("verify", f"s3://{bucket}/k").returncode == 0


def test_a_folder_where_the_manifest_or_a_part_should_be_is_one_line_not_a_traceback(
    aioc4: Aioc4,
) -> None:
    assert aioc4("--num-samples", "20", "--max-lines-per-file", "10", "--output-dir", "o").returncode == 0
    folder = aioc4.cwd / "o"
    (folder / "c4_train_20_part002.jsonl").unlink()
    (folder / "c4_train_20_part002.jsonl").mkdir()  # unreadable as a part
    verify = aioc4("verify", "o")
    assert verify.returncode == 1
    assert "Traceback" not in verify.stderr
    assert "  c4_train_20_part002.jsonl: cannot be read (Is a directory)" in verify.stdout.splitlines()

    (folder / "c4_train_30.manifest.json").mkdir()  # unreadable as a manifest
    run = aioc4("--num-samples", "30", "--output-dir", "o")
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert run.error_lines == [
        f"aioc4: error: cannot read {Path('o') / 'c4_train_30.manifest.json'}: Is a directory"
    ]
