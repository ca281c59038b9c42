"""A count job on several cores: decode processes, segments, parts stitched from segment ranges."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from aioc4.decode import SourcePosition
from aioc4.decode_worker import CHUNK, DONE, END, FAILED, HEADER, PIECE, START, Done, Failed, Piece, ShardTask
from aioc4.hub import Shard
from aioc4.naming import part_names
from aioc4.reader import fits_in_first_shard
from aioc4.segments import Block, Segment, SegmentBatch, copy_range
from scripts.hub_server import HubServerProcess
from scripts.s3_server import MotoServerProcess
from scripts.shards import FakeRepo

from .conftest import (
    DOCS_PER_TRAIN_SHARD,
    Aioc4,
    clean_env,
    jsonl,
    objects,
    parts_in,
    shard_paths,
    split_expected,
)

Lines = Callable[[str], list[bytes]]


def decoding_order(stderr: str) -> list[str]:
    """The pool's debug lines about shards, in order: ('start'|'done', shard)."""
    events = []
    for line in stderr.splitlines():
        if ": decoding en/" in line:
            events.append(f"start {line.split(': decoding ')[1].split()[0]}")
        elif ": decoded en/" in line:
            events.append(f"done {line.split(': decoded ')[1].split(':')[0]}")
    return events


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_parts_across_shard_and_part_boundaries_are_exact_with_shards_decoded_side_by_side(
    aioc4: Aioc4, fake_repo: FakeRepo, source_lines: Lines, compression: str
) -> None:
    count, size = 2 * DOCS_PER_TRAIN_SHARD + 777, 997  # no part boundary falls on a shard boundary
    args = ["--num-samples", str(count), "--max-lines-per-file", str(size), "--output-dir", "o"]
    result = aioc4(*args, "--procs", "3", "--compression", compression, "-v")
    assert result.returncode == 0, result.stderr
    shards = shard_paths(fake_repo, "train")
    order = decoding_order(result.stderr)
    assert order.index(f"start {shards[1]}") < order.index(f"done {shards[0]}"), order  # side by side
    names = part_names("train", count, size, compression=compression)
    expected = split_expected(source_lines("train")[:count], names, size)
    written = parts_in(aioc4.cwd / "o")
    if compression == "gzip":
        written = {name: zlib.decompress(body, wbits=31) for name, body in written.items()}
    assert written == expected  # hidden files included: no segment or temp part is left
    assert "is the first segment itself" not in result.stderr  # one of several parts: copied


def test_one_part_over_shards_side_by_side_is_the_first_segment_with_the_others_appended(
    aioc4: Aioc4, fake_repo: FakeRepo, source_lines: Lines
) -> None:
    """The job's only part starts with the first shard's segment, which becomes the part (renamed, not
    copied); the other shards' segments are appended after it, and the result is exact."""
    count = 2 * DOCS_PER_TRAIN_SHARD + 777
    result = aioc4("--num-samples", str(count), "--output-dir", "o", "--procs", "3", "-v")
    assert result.returncode == 0, result.stderr
    order = decoding_order(result.stderr)
    shards = shard_paths(fake_repo, "train")
    assert order.index(f"start {shards[1]}") < order.index(f"done {shards[0]}"), order  # side by side
    assert "is the first segment itself" in result.stderr
    expected = {f"c4_train_{count}.jsonl": jsonl(source_lines("train")[:count])}
    assert parts_in(aioc4.cwd / "o") == expected  # hidden files included: no segment or temp part


def test_parts_stitched_from_segments_reach_s3_exact(
    aioc4: Aioc4, s3: MotoServerProcess, bucket: str, source_lines: Lines
) -> None:
    count, size = DOCS_PER_TRAIN_SHARD + 2_500, 2_000
    args = ["--num-samples", str(count), "--max-lines-per-file", str(size), "--s3-path", f"s3://{bucket}/p"]
    result = aioc4(*args, "--procs", "2")
    assert result.returncode == 0, result.stderr
    names = part_names("train", count, size)
    assert objects(s3, bucket) == {
        f"p/{name}": body for name, body in split_expected(source_lines("train")[:count], names, size).items()
    }


def downloaded_there(stderr: str) -> dict[str, int]:
    """Per shard decoded, how many of its bytes its decode process downloaded itself (debug lines)."""
    found = {}
    for line in stderr.splitlines():
        if ": decoded en/" in line and "downloaded by its process" in line:
            shard = line.split(": decoded ")[1].split(":")[0]
            found[shard] = int(line.split("lines (")[1].split()[0])
    return found


def test_decode_processes_download_their_shards_after_the_first_range_each_byte_once(
    aioc4: Aioc4, hub: HubServerProcess, fake_repo: FakeRepo, source_lines: Lines
) -> None:
    """This process resolves each shard and relays its first 256 KiB; the decode process downloads the rest
    from storage itself. The parts are exact and storage sends each byte of the shards read once."""
    count, size = 2 * DOCS_PER_TRAIN_SHARD + 1_234, 5_000
    hub.reset_stats()
    args = ["--num-samples", str(count), "--max-lines-per-file", str(size), "--output-dir", "o"]
    result = aioc4(*args, "--procs", "2", "-v")
    assert result.returncode == 0, result.stderr
    names = part_names("train", count, size)
    assert parts_in(aioc4.cwd / "o") == split_expected(source_lines("train")[:count], names, size)
    shards = shard_paths(fake_repo, "train")
    there = downloaded_there(result.stderr)
    for shard in shards[:2]:  # read whole
        assert there[shard] == (fake_repo.root / shard).stat().st_size - (256 << 10), result.stderr
    served = hub.stats()["storage_body_bytes_by_path"]
    assert {shard: served[shard] for shard in shards[:2]} == {
        shard: (fake_repo.root / shard).stat().st_size for shard in shards[:2]
    }
    assert "downloading from byte" not in result.stderr


def test_a_decode_processs_download_cut_off_is_finished_by_this_process_exactly(
    aioc4: Aioc4, hub: HubServerProcess, fake_repo: FakeRepo, source_lines: Lines
) -> None:
    """Every storage answer longer than 800 kB is cut there: each decode process's own download (1 MiB
    ranges while its window is small) fails range after range, so it gives up, and this process
    relays the rest of the shard through its ranged download, each cut range resumed from the byte it
    reached (an isolated failed range is relayed alone: tests/test_range_fetch.py)."""
    count, size = 2 * DOCS_PER_TRAIN_SHARD + 1_234, 5_000
    hub.set_faults(reset_after_bytes=800_000, reset_rate=1.0)
    try:
        args = ["--num-samples", str(count), "--max-lines-per-file", str(size), "--output-dir", "o"]
        result = aioc4(*args, "--procs", "2", "-v")
    finally:
        hub.clear_faults()
    assert result.returncode == 0, result.stderr
    names = part_names("train", count, size)
    assert parts_in(aioc4.cwd / "o") == split_expected(source_lines("train")[:count], names, size)
    fell_back = [line for line in result.stderr.splitlines() if ": downloading from byte" in line]
    assert len(fell_back) >= 2, result.stderr  # the two shards read whole gave up, at least
    relayed = [line for line in result.stderr.splitlines() if ": relaying bytes" in line]
    assert all("connection closed" in line for line in relayed), relayed  # failed ranges relayed first


def test_documents_fit_in_the_first_shard_by_c4s_bytes_per_document_with_the_margin() -> None:
    shards = [Shard(f"en/c4-train.{i:05d}-of-00002.json.gz", i, 840_000) for i in range(2)]  # ~1,000 each
    assert fits_in_first_shard(shards, None, 952)  # 952 x 1.05 <= 1,000
    assert not fits_in_first_shard(shards, None, 953)
    resumed = SourcePosition(shards[0].path, 501)  # 500 lines of it are in parts already
    assert fits_in_first_shard(shards, resumed, 476)
    assert not fits_in_first_shard(shards, resumed, 477)
    assert fits_in_first_shard(shards, SourcePosition(shards[1].path, 1), 952)  # the shard it resumes in
    assert fits_in_first_shard([], None, 10)  # nothing to read: no process to start


def test_an_early_stop_inside_the_first_shard_reads_only_that_shard_in_this_process(
    aioc4: Aioc4, hub: HubServerProcess, fake_repo: FakeRepo, source_lines: Lines
) -> None:
    """Documents that probably lie in one shard need no decode process: it would only add a pipe."""
    hub.reset_stats()
    result = aioc4("--num-samples", "1500", "--output-dir", "o", "--procs", "4", "-v")
    assert result.returncode == 0, result.stderr
    assert parts_in(aioc4.cwd / "o") == {"c4_train_1500.jsonl": jsonl(source_lines("train")[:1500])}
    assert list(hub.stats()["storage_body_bytes_by_path"]) == [shard_paths(fake_repo, "train")[0]]
    assert "started decode process" not in result.stderr
    assert "probably lie in one shard: it is read in this process" in result.stderr


def test_an_early_stop_inside_the_second_shard_reads_two_shards_in_two_decode_processes(
    aioc4: Aioc4, hub: HubServerProcess, fake_repo: FakeRepo, source_lines: Lines
) -> None:
    count = DOCS_PER_TRAIN_SHARD + 1_500
    hub.reset_stats()
    result = aioc4("--num-samples", str(count), "--output-dir", "o", "--procs", "4", "-v")
    assert result.returncode == 0, result.stderr
    assert parts_in(aioc4.cwd / "o") == {f"c4_train_{count}.jsonl": jsonl(source_lines("train")[:count])}
    assert sorted(hub.stats()["storage_body_bytes_by_path"]) == shard_paths(fake_repo, "train")[:2]
    assert result.stderr.count("started decode process") == 2
    assert "is the first segment itself" in result.stderr  # the second shard's segment appended to it


def test_procs_default_is_the_cpus_this_process_may_use(hub: HubServerProcess, tmp_path: Path) -> None:
    """Under an affinity of one CPU the count job decodes in its own process; with two, in two."""

    def decode_processes(cpus: set[int]) -> int:
        out, count = tmp_path / f"o{len(cpus)}", 2 * DOCS_PER_TRAIN_SHARD + 10
        completed = subprocess.run(
            [sys.executable, "-m", "aioc4", "--num-samples", str(count), "--output-dir", str(out), "-v"],
            env=clean_env(hub.endpoint, {}, tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            preexec_fn=lambda: os.sched_setaffinity(0, cpus),
        )
        assert completed.returncode == 0, completed.stderr
        return completed.stderr.count("started decode process")

    available = sorted(os.sched_getaffinity(0))
    assert decode_processes({available[0]}) == 0
    if len(available) >= 2:
        assert decode_processes(set(available[:2])) == 2


# -- the decode process on its own -------------------------------------------------------------------


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def read_frames(data: bytes) -> list[tuple[bytes, bytes]]:
    frames, at = [], 0
    while at < len(data):
        kind, length = HEADER.unpack_from(data, at)
        frames.append((kind, data[at + HEADER.size : at + HEADER.size + length]))
        at += HEADER.size + length
    return frames


def shard_task(shard: str, segment: Path, skip_before: int = 1) -> bytes:
    segment.touch()
    return frame(START, msgspec.msgpack.encode(ShardTask(shard, str(segment), skip_before, 0)))


def test_a_decode_process_checks_shards_into_segments_and_survives_a_corrupt_one(
    fake_repo: FakeRepo, tmp_path: Path, source_lines: Lines
) -> None:
    shard = shard_paths(fake_repo, "train")[0]
    data = (fake_repo.root / shard).read_bytes()
    chunks = [data[i : i + 300_000] for i in range(0, len(data), 300_000)]
    good = b"".join(
        [shard_task(shard, tmp_path / "a", skip_before=101), *map(lambda c: frame(CHUNK, c), chunks)]
    )
    corrupt = shard_task("en/bad.json.gz", tmp_path / "b") + frame(CHUNK, b"not gzip at all") + frame(END)
    again = b"".join([shard_task(shard, tmp_path / "c"), frame(CHUNK, data), frame(END)])
    completed = subprocess.run(
        [sys.executable, "-m", "aioc4.decode_worker"],
        input=good + frame(END) + corrupt + again,
        capture_output=True,
        timeout=60,
        check=True,
    )
    frames = read_frames(completed.stdout)
    kinds = [kind for kind, _ in frames]
    assert kinds.count(DONE) == 2
    assert kinds.count(FAILED) == 1
    failed = msgspec.msgpack.decode(frames[kinds.index(FAILED)][1], type=Failed)
    assert failed.kind == "corrupt"
    assert failed.message.startswith("en/bad.json.gz: not valid gzip")
    lines = source_lines("train")[:DOCS_PER_TRAIN_SHARD]
    assert (tmp_path / "a").read_bytes() == jsonl(lines[100:])
    assert (tmp_path / "c").read_bytes() == jsonl(lines)
    pieces = [msgspec.msgpack.decode(body, type=Piece) for kind, body in frames if kind == PIECE]
    first = [piece for piece in pieces[: kinds.index(DONE)] if piece.count]
    assert first[0].first_line == 101
    assert sum(piece.count for piece in first) == DOCS_PER_TRAIN_SHARD - 100
    segment = (tmp_path / "a").read_bytes()
    for piece in first:  # every block's CRC is that of its bytes in the segment
        assert zlib.crc32(segment[piece.offset : piece.offset + piece.length]) == piece.crc32
    done = msgspec.msgpack.decode(frames[kinds.index(DONE)][1], type=Done)
    assert (done.lines, done.size) == (DOCS_PER_TRAIN_SHARD, len(segment))


# -- segment batches ------------------------------------------------------------------------------------


def segment_of(tmp_path: Path, blocks: list[bytes]) -> tuple[Segment, SegmentBatch]:
    segment = Segment(tmp_path / "segment")
    os.write(segment.fd, b"".join(blocks))
    batch = SegmentBatch(
        "s", 1, segment, 0, [Block(block.count(b"\n"), len(block), zlib.crc32(block)) for block in blocks]
    )
    return segment, batch


def test_a_segment_batch_sliced_anywhere_has_the_bytes_and_crc_of_its_lines(tmp_path: Path) -> None:
    lines = [f'{{"text":"line {n} {"x" * (n % 7)}"}}\n'.encode() for n in range(60)]
    blocks = [b"".join(lines[0:25]), b"".join(lines[25:26]), b"".join(lines[26:60])]
    segment, batch = segment_of(tmp_path, blocks)
    for start, stop in [(0, 60), (0, 1), (3, 25), (24, 27), (25, 26), (10, 59), (59, 60), (0, 30)]:
        part = batch.slice(start, stop)
        data = b"".join(lines[start:stop])
        assert (part.first_line, len(part), part.data) == (1 + start, stop - start, data)
        assert part.crc32 == zlib.crc32(data)
    segment.close()


def test_a_segment_closes_once_finished_and_copied(tmp_path: Path) -> None:
    closed: list[bool] = []
    segment = Segment(tmp_path / "s", on_close=lambda: closed.append(True))
    segment.was_copied(10)
    segment.finished(30)
    assert not segment.closed
    segment.was_copied(20)
    assert segment.closed
    assert closed == [True]
    assert not (tmp_path / "s").exists()


def test_copy_range_falls_back_where_the_kernel_cannot_copy(tmp_path: Path) -> None:
    """A pipe as target: copy_file_range refuses it (EINVAL), and the range goes through a buffer."""
    source = tmp_path / "source"
    source.write_bytes(bytes(range(256)) * 5000)
    read_end, write_end = os.pipe()
    fd = os.open(source, os.O_RDONLY)
    try:
        copy_range(fd, write_end, 1000, 60_000)
        os.close(write_end)
        copied = b""
        while chunk := os.read(read_end, 1 << 16):
            copied += chunk
    finally:
        os.close(fd)
        os.close(read_end)
    assert copied == source.read_bytes()[1000:61_000]


def test_a_decode_process_killed_from_outside_is_one_clear_error_and_finished_parts_stay(
    hub: HubServerProcess, tmp_path: Path, source_lines: Lines
) -> None:
    """The OOM killer, say: the shard it was decoding names the error, the parts before it are whole."""
    out = tmp_path / "out"
    args = ["--num-samples", str(3 * DOCS_PER_TRAIN_SHARD), "--max-lines-per-file", "1000"]
    args += ["--output-dir", str(out), "--procs", "2", "--max-download-rate", "3M", "-v"]
    process = subprocess.Popen(
        [sys.executable, "-m", "aioc4", *args],
        env=clean_env(hub.endpoint, {}, tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    lines = []
    for line in process.stderr:  # the first decode process, once it has made a part
        lines.append(line)
        if "finished c4_train_" in line:
            break
    started = next(line for line in lines if "started decode process 1" in line)
    pid = int(started.split("pid ")[1].rstrip(")\n"))
    os.kill(pid, 9)
    rest = process.stderr.read()
    assert process.wait(timeout=60) == 1
    errors = [line for line in (lines + rest.splitlines()) if line.startswith("aioc4: error:")]
    assert len(errors) == 1, rest
    assert "decode process ended unexpectedly (exit -9)" in errors[0]
    assert "Traceback" not in rest
    written = parts_in(out)
    names = part_names("train", 3 * DOCS_PER_TRAIN_SHARD, 1000)[: len(written)]
    assert written == split_expected(source_lines("train"), names, 1000)  # whole parts, no segment left
