"""Source faults against the local Hub: throttling, server errors, dropped connections, expired links,
a storage host that ignores Range. Output must still be exactly the first N documents."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aioc4.errors import SourceError
from aioc4.hub import HubSource
from aioc4.naming import part_names
from aioc4.range_fetch import MAX_RANGE_BYTES
from aioc4.readahead import MIN_RANGE_BYTES
from aioc4.retry import RetryBudget, RetryPolicy
from scripts.hub_server import HubServerProcess
from scripts.shards import FakeRepo

from .conftest import (
    DOCS_PER_TRAIN_SHARD,
    HUB_TOKEN,
    Aioc4,
    clean_env,
    parts_in,
    shard_paths,
    split_expected,
)

Lines = Callable[[str], list[bytes]]


@pytest.fixture(scope="module")
def faulty_hub(fake_repo: FakeRepo) -> Iterator[HubServerProcess]:
    with HubServerProcess(fake_repo.root) as server:
        yield server


@pytest.fixture
def hub_with(faulty_hub: HubServerProcess, tmp_path: Path) -> Iterator[tuple[HubServerProcess, Aioc4]]:
    faulty_hub.clear_faults()
    faulty_hub.reset_stats()
    yield faulty_hub, Aioc4(cwd=tmp_path, env=clean_env(faulty_hub.endpoint, {}, tmp_path))
    faulty_hub.clear_faults()


def run_and_check(aioc4: Aioc4, count: int, size: int, lines: list[bytes], *extra: str) -> str:
    result = aioc4(
        "--num-samples", str(count), "--max-lines-per-file", str(size), "--output-dir", "o", *extra
    )
    assert result.returncode == 0, result.stderr
    names = part_names("train", count, size)
    assert parts_in(aioc4.cwd / "o") == split_expected(lines[:count], names, size)
    return result.stderr


def test_throttling_server_errors_and_dropped_connections(
    hub_with: tuple[HubServerProcess, Aioc4], source_lines: Lines
) -> None:
    hub, aioc4 = hub_with
    hub.set_faults(
        fault_seed=3,
        hub_error_rate=0.4,
        hub_error_statuses=[429, 500],
        retry_after_s=1,
        storage_error_rate=0.3,
        reset_after_bytes=1_000_000,
        reset_rate=0.8,
    )
    run_and_check(aioc4, DOCS_PER_TRAIN_SHARD + 3_000, 4_000, source_lines("train"))
    injected = hub.stats()["faults_injected"]
    print(f"Hub faults injected and survived: {injected}")
    for kind in ("hub_429", "hub_500", "reset"):
        assert injected.get(kind, 0) > 0, injected
    assert injected.get("storage_500", 0) + injected.get("storage_503", 0) > 0, injected


def test_expired_signed_urls_are_resolved_again(
    hub_with: tuple[HubServerProcess, Aioc4], source_lines: Lines
) -> None:
    hub, aioc4 = hub_with
    # every response is cut after 1 MB; links live 0.2 s, so each resume finds its link expired
    hub.set_faults(url_ttl_s=0.2, reset_after_bytes=1_000_000)
    stderr = run_and_check(aioc4, 6_000, 2_000, source_lines("train"))
    injected = hub.stats()["faults_injected"]
    print(f"Expiring links, faults injected and survived: {injected}")
    assert injected.get("expired_url", 0) > 0
    assert "storage refused the signed URL (HTTP 403); resolving again" in stderr


def test_an_expired_kept_url_is_resolved_again_at_once_and_a_refused_fresh_one_waits(
    faulty_hub: HubServerProcess, fake_repo: FakeRepo
) -> None:
    """A signed URL kept from an earlier range that has expired since costs no attempt and no wait: a
    fresh one is asked for at once (waiting would only age the next one too, as a backoff longer than
    the URLs' lifetime did). One the Hub has just given that storage still refuses is a failed
    attempt, with its wait, so a store that refuses every URL ends in an error, not a loop."""
    faulty_hub.clear_faults()
    faulty_hub.reset_stats()
    policy = RetryPolicy(max_attempts=3, base_delay_s=0.05, max_delay_s=0.1)

    async def read(start: int, end: int) -> tuple[bytes, bytes, RetryBudget]:
        budget = RetryBudget(policy)
        async with HubSource("allenai/c4", endpoint=faulty_hub.endpoint, budget=budget) as source:
            commit = await source.resolve_commit("main")
            shard = (await source.list_shards(commit, "en", "train"))[0]
            first = b"".join([chunk async for chunk in source.stream(shard, commit, 0, start)])
            faulty_hub.set_faults(clock_skew_s=2 * 3600)  # every URL handed out so far has expired
            second = b"".join([chunk async for chunk in source.stream(shard, commit, start, end)])
        return first, second, budget

    try:
        first, second, budget = asyncio.run(read(1000, 5000))
        local = (fake_repo.root / "en/c4-train.00000-of-00003.json.gz").read_bytes()
        assert (first, second) == (local[:1000], local[1000:5000])
        assert (budget.retries, budget.waited_s) == (0, 0.0)
        assert faulty_hub.stats()["faults_injected"].get("expired_url") == 1
        faulty_hub.set_faults(url_ttl_s=0.0)  # and now storage refuses every URL, however fresh
        with pytest.raises(SourceError, match=r"refused the signed URL .* gave up after 4 attempt"):
            asyncio.run(read(1000, 5000))
    finally:
        faulty_hub.clear_faults()


def test_a_storage_host_that_ignores_range_is_coped_with(
    hub_with: tuple[HubServerProcess, Aioc4], source_lines: Lines
) -> None:
    hub, aioc4 = hub_with
    # half the responses are cut; every retry starts again from byte 0 and skips what was already read
    hub.set_faults(fault_seed=3, ignore_range=True, reset_after_bytes=1_500_000, reset_rate=0.6)
    run_and_check(aioc4, 8_000, 3_000, source_lines("train"))
    injected = hub.stats()["faults_injected"]
    print(f"Range ignored, faults injected and survived: {injected}")
    assert injected.get("ignored_range", 0) > 0, injected


def test_the_retry_budget_runs_out_with_a_clear_error(hub_with: tuple[HubServerProcess, Aioc4]) -> None:
    hub, aioc4 = hub_with
    hub.set_faults(hub_error_rate=1.0, hub_error_statuses=[503], retry_after_s=0)
    result = aioc4("--retry-budget", "2", "--output-dir", "o")
    assert result.returncode == 1
    assert len(result.error_lines) == 1
    assert result.error_lines[0].startswith(
        "aioc4: error: the Hub answered HTTP 503 (allenai/c4@main: gave up after"
    )
    assert "Traceback" not in result.stderr
    assert not (aioc4.cwd / "o").exists()


@pytest.fixture(scope="module")
def gated_split_hosts(fake_repo: FakeRepo) -> Iterator[HubServerProcess]:
    """The token is required by the Hub, and storage lives on another loopback address that rejects
    (and counts) any request carrying an Authorization header."""
    with HubServerProcess(
        fake_repo.root, token=HUB_TOKEN, storage_host="127.0.0.2", storage_forbid_auth=True
    ) as server:
        yield server


@pytest.mark.parametrize("streaming", [True, False])
def test_the_token_goes_to_the_hub_only_even_when_resuming(
    gated_split_hosts: HubServerProcess, tmp_path: Path, source_lines: Lines, streaming: bool
) -> None:
    hub = gated_split_hosts
    # streamed resumes go straight to storage: they must not carry the token either (hf_hub_download,
    # used without streaming, only resumes at 10 MiB boundaries, so it is not cut here)
    hub.set_faults(reset_after_bytes=800_000 if streaming else 0)
    hub.reset_stats()
    env = clean_env(hub.endpoint, {}, tmp_path)
    env["HF_TOKEN"] = HUB_TOKEN
    aioc4 = Aioc4(cwd=tmp_path, env=env)
    mode = "--streaming" if streaming else "--no-streaming"
    run_and_check(aioc4, 3_000, 1_000, source_lines("train"), mode)
    stats = hub.stats()
    assert hub.storage.startswith("http://127.0.0.2:")
    assert stats["storage_get_requests"] > 0
    assert stats["storage_auth_headers_seen"] == 0
    assert stats["faults_injected"].get("auth_forbidden", 0) == 0
    if streaming:
        assert stats["faults_injected"].get("reset", 0) > 0


def repo_with_shard(fake_repo: FakeRepo, where: Path, shard: str, lines: list[bytes]) -> Path:
    """A copy of the fake repo (hard links) whose `shard` holds `lines` instead."""
    root = where / "repo"
    shutil.copytree(fake_repo.root, root, copy_function=os.link)
    (root / shard).unlink()
    body = b"".join(line + b"\n" for line in lines)
    (root / shard).write_bytes(gzip.compress(body, compresslevel=1, mtime=0))  # 6x faster than level 9
    return root


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        (b'{"text":"caf\xe9"}', "is not valid UTF-8"),
        (b'{"text":"abc\\"}', "is not valid JSON"),
        (b'{"text":"a"}{"text":"b"}', "is not valid JSON"),
        (b'{"text":"a\x07b"}', "is not valid JSON"),
        (b'{"text":12}', "is not a JSON object with a 'text' string"),
        (b'{"url":"https://example.com"}', "is not a JSON object with a 'text' string"),
    ],
)
def test_a_bad_line_past_the_first_10000_stops_the_run_and_reaches_no_part(
    fake_repo: FakeRepo, tmp_path: Path, source_lines: Lines, bad: bytes, problem: str
) -> None:
    shard = shard_paths(fake_repo, "train")[0]
    lines = list(source_lines("train")[:DOCS_PER_TRAIN_SHARD])
    lines[10_499] = bad  # line 10,500: beyond the documents that were all parsed before
    with HubServerProcess(repo_with_shard(fake_repo, tmp_path, shard, lines)) as hub:
        aioc4 = Aioc4(cwd=tmp_path, env=clean_env(hub.endpoint, {}, tmp_path))
        result = aioc4("--num-samples", "11000", "--max-lines-per-file", "1000", "--output-dir", "o")
    assert result.returncode == 1, result.stderr
    assert len(result.error_lines) == 1, result.stderr
    assert result.error_lines[0].startswith(f"aioc4: error: {shard}: line 10500 {problem}"), result.stderr
    written = parts_in(tmp_path / "o")
    assert all(bad not in body for body in written.values())
    names = part_names("train", 11000, 1000)
    assert written == {
        name: body for name, body in split_expected(lines, names, 1000).items() if name in written
    }
    assert names[10] not in written  # the part that would hold line 10,500


def test_a_blank_line_beside_a_line_of_two_objects_stops_the_run(
    fake_repo: FakeRepo, tmp_path: Path, source_lines: Lines
) -> None:
    """As many objects as lines in the block, but not one per line: neither line reaches a part."""
    shard = shard_paths(fake_repo, "train")[0]
    lines = list(source_lines("train")[:DOCS_PER_TRAIN_SHARD])
    lines[10_499], lines[10_500] = b"", lines[10_500] + lines[10_501]
    with HubServerProcess(repo_with_shard(fake_repo, tmp_path, shard, lines)) as hub:
        aioc4 = Aioc4(cwd=tmp_path, env=clean_env(hub.endpoint, {}, tmp_path))
        result = aioc4("--num-samples", "11000", "--max-lines-per-file", "1000", "--output-dir", "o")
    assert result.returncode == 1, result.stderr
    assert result.error_lines[0].startswith(f"aioc4: error: {shard}: line 10500 is not valid JSON")
    written, names = parts_in(tmp_path / "o"), part_names("train", 11000, 1000)
    assert written == {
        name: body for name, body in split_expected(lines, names, 1000).items() if name in written
    }
    assert names[10] not in written  # the part that would hold lines 10,500 and 10,501


def test_an_html_page_instead_of_a_shard_is_named_at_once_not_retried(
    hub_with: tuple[HubServerProcess, Aioc4],
) -> None:
    hub, aioc4 = hub_with
    hub.set_faults(portal_page=True)
    result = aioc4("--num-samples", "10", "--output-dir", "o", timeout=60)
    assert result.returncode == 1, result.stderr
    assert len(result.error_lines) == 1, result.stderr
    assert "answered HTTP 200 (text/html" in result.error_lines[0]
    assert "that are not gzip (they start b'<!DOCTYPE html>" in result.error_lines[0]
    assert "retry" not in result.stderr
    assert "Traceback" not in result.stderr
    assert "never retrieved" not in result.stderr


@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://example.com/x.json.gz", "http://[::1"])
def test_a_redirect_to_an_unusable_url_is_one_line_at_once(
    hub_with: tuple[HubServerProcess, Aioc4], location: str
) -> None:
    hub, aioc4 = hub_with
    hub.set_faults(redirect_location=location)
    result = aioc4("--num-samples", "10", "--output-dir", "o", timeout=60)
    assert result.returncode == 1, result.stderr
    assert len(result.error_lines) == 1, result.stderr
    assert "the Hub redirected to an unusable URL" in result.error_lines[0]
    assert "retry" not in result.stderr
    assert "Traceback" not in result.stderr


def test_a_truncated_cache_file_is_downloaded_again(
    hub_with: tuple[HubServerProcess, Aioc4], source_lines: Lines
) -> None:
    _, aioc4 = hub_with
    args = ["--num-samples", "100", "--no-streaming", "--cache-dir", "cache", "--output-dir", "o"]
    assert aioc4(*args).returncode == 0
    (blob,) = [path for path in (aioc4.cwd / "cache").rglob("*") if path.is_file() and "blobs" in path.parts]
    blob.write_bytes(blob.read_bytes()[:4000])  # a truncated blob: every later read used to fail
    again = aioc4(*args[:-1], "o2")
    assert again.returncode == 0, again.stderr
    assert "downloading it again" in again.stderr
    expected = b"".join(line + b"\n" for line in source_lines("train")[:100])
    assert parts_in(aioc4.cwd / "o2") == {"c4_train_100.jsonl": expected}


def test_skip_bad_records_drops_counts_and_names_them_and_keeps_everything_else(
    fake_repo: FakeRepo, tmp_path: Path, source_lines: Lines
) -> None:
    shard = shard_paths(fake_repo, "train")[0]
    lines = list(source_lines("train")[:DOCS_PER_TRAIN_SHARD])
    bad_at = [0, 4_999, 10_499, 10_500, DOCS_PER_TRAIN_SHARD - 1]  # first, middle, adjacent, last
    for index in bad_at:
        lines[index] = b'{"text":"broken\\"}'
    good = [line for index, line in enumerate(lines) if index not in bad_at]
    with HubServerProcess(repo_with_shard(fake_repo, tmp_path, shard, lines)) as hub:
        aioc4 = Aioc4(cwd=tmp_path, env=clean_env(hub.endpoint, {}, tmp_path))
        args = ["--num-samples", str(len(good) + 100), "--max-lines-per-file", "3000", "--output-dir", "o"]
        result = aioc4(*args, "--skip-bad-records", "--json")
        again = aioc4(*args, "--skip-bad-records")  # a finished job: nothing read again
    assert result.returncode == 0, result.stderr
    wanted = [*good, *source_lines("train")[DOCS_PER_TRAIN_SHARD : DOCS_PER_TRAIN_SHARD + 100]]
    names = part_names("train", len(wanted), 3000)
    assert parts_in(tmp_path / "o") == split_expected(wanted, names, 3000)
    summary = json.loads(result.stdout)
    assert summary["read"]["skipped_records"] == len(bad_at)
    skipped = [line for line in result.stderr.splitlines() if " skipped " in line]
    assert [line.split(" line ")[1].split(":")[0] for line in skipped] == [str(i + 1) for i in bad_at]
    assert again.returncode == 0, again.stderr


def test_a_line_over_64_mib_is_named_by_shard_and_line(
    fake_repo: FakeRepo, tmp_path: Path, source_lines: Lines
) -> None:
    shard = shard_paths(fake_repo, "train")[0]
    lines = list(source_lines("train")[:3000])
    lines[2_499] = b'{"text":"' + b"a" * (65 << 20) + b'"}'  # packs into ~65 KB of gzip
    with HubServerProcess(repo_with_shard(fake_repo, tmp_path, shard, lines)) as hub:
        aioc4 = Aioc4(cwd=tmp_path, env=clean_env(hub.endpoint, {}, tmp_path))
        result = aioc4("--num-samples", "3000", "--max-lines-per-file", "1000", "--output-dir", "o")
    assert result.returncode == 1, result.stderr
    assert result.error_lines == [
        f"aioc4: error: {shard}: line 2500 is longer than 64 MiB: not a C4 document"
    ]
    assert parts_in(tmp_path / "o") == split_expected(lines, part_names("train", 3000, 1000)[:2], 1000)


@pytest.fixture(scope="module")
def far_hub(fake_repo: FakeRepo) -> Iterator[HubServerProcess]:
    """Storage at 2 MB/s per connection, 20 ms before every answer: the reader waits, so the read-ahead
    window opens and many ranges are in flight at once."""
    with HubServerProcess(fake_repo.root, pace_bytes_per_s=2e6, latency_s=0.02) as server:
        yield server


def test_many_ranges_in_flight_survive_cuts_throttling_and_expired_urls(
    far_hub: HubServerProcess, tmp_path: Path, source_lines: Lines
) -> None:
    far_hub.reset_stats()
    far_hub.set_faults(
        fault_seed=11,
        storage_error_rate=0.2,
        storage_error_statuses=[429, 503],
        retry_after_s=0,
        reset_after_bytes=300_000,
        reset_rate=0.5,
        url_ttl_s=1.0,
    )
    try:
        aioc4 = Aioc4(cwd=tmp_path, env=clean_env(far_hub.endpoint, {}, tmp_path))
        # across the first shard's end, so ranges of two shards are in flight together
        run_and_check(aioc4, DOCS_PER_TRAIN_SHARD + 2_000, 5_000, source_lines("train"))
    finally:
        far_hub.clear_faults()
    stats = far_hub.stats()
    injected = stats["faults_injected"]
    print(f"many ranges: {stats['storage_get_requests']} storage GETs, faults survived: {injected}")
    for kinds in (("storage_429", "storage_503"), ("reset",), ("expired_url",)):  # throttling: either status
        assert sum(injected.get(kind, 0) for kind in kinds) > 0, injected
    assert stats["storage_get_requests"] >= 12  # ~12.5 MB in ranges of at most 1 MiB, plus retries
    assert stats["storage_peak_in_flight"] > 4
    assert set(stats["storage_body_bytes_by_path"]) == {
        "en/c4-train.00000-of-00003.json.gz",
        "en/c4-train.00001-of-00003.json.gz",
    }


def test_one_failed_range_of_a_decode_process_is_fetched_here_and_its_download_goes_on(
    hub_with: tuple[HubServerProcess, Aioc4], source_lines: Lines
) -> None:
    """A decode process's second range of the first shard fails once (its first 256 KiB came from the
    main process): the main process fetches exactly that range, with its retries, and the process's
    own download goes on after it. The parts are exactly the first N documents."""
    hub, aioc4 = hub_with
    second = MIN_RANGE_BYTES + MAX_RANGE_BYTES
    hub.set_faults(fail_range_once_at=second)
    stderr = run_and_check(
        aioc4, DOCS_PER_TRAIN_SHARD + 2_000, 5_000, source_lines("train"), "--procs", "2", "--verbose"
    )
    assert hub.stats()["faults_injected"].get("storage_500", 0) >= 1
    first = "en/c4-train.00000-of-00003.json.gz"
    assert f"{first}: relaying bytes {second}-{second + MAX_RANGE_BYTES}" in stderr
    assert f"{first}: downloading from byte" not in stderr  # the process's download went on


def test_ranges_of_a_shard_cost_one_resolve(
    hub_with: tuple[HubServerProcess, Aioc4], source_lines: Lines
) -> None:
    """The Hub rate-limits `resolve`, not its storage: a shard read as many ranges resolves once."""
    hub, aioc4 = hub_with
    run_and_check(aioc4, DOCS_PER_TRAIN_SHARD + 1, 20_000, source_lines("train"))
    stats = hub.stats()
    assert stats["storage_get_requests"] > 10
    assert stats["resolve_requests"]["GET"] == 2  # the two shards read, once each


def test_the_download_rate_cap_holds_over_all_connections(
    far_hub: HubServerProcess, tmp_path: Path, source_lines: Lines
) -> None:
    """8 MB/s of connections (4 open) capped at 2 MB/s: the run cannot take less than bytes / cap
    (a lower bound only: timing upper bounds flake on a busy machine; the benchmark measures speed)."""
    far_hub.reset_stats()
    far_hub.set_faults(latency_s=0)
    try:
        aioc4 = Aioc4(cwd=tmp_path, env=clean_env(far_hub.endpoint, {}, tmp_path))
        started = time.monotonic()
        run_and_check(aioc4, 6_000, 6_000, source_lines("train"), "--max-download-rate", "2M")
        elapsed = time.monotonic() - started
    finally:
        far_hub.clear_faults()
    served = far_hub.stats()["storage_body_bytes"]
    assert served > 5_000_000
    assert elapsed >= 0.9 * served / 2e6, f"{served:,} bytes in {elapsed:.2f} s"


def test_a_url_expiring_under_many_ranges_is_resolved_again_by_all(
    far_hub: HubServerProcess, tmp_path: Path, source_lines: Lines
) -> None:
    """Links live 0.3 s while ~20 ranges are in flight: several ranges meet the expired link before any
    of them has resolved it again, and every one must wait for the new link, not give up."""
    far_hub.reset_stats()
    far_hub.set_faults(url_ttl_s=0.3)
    try:
        aioc4 = Aioc4(cwd=tmp_path, env=clean_env(far_hub.endpoint, {}, tmp_path))
        # ~3.5 s at the cap: the reader waits, so the window is open all along
        run_and_check(aioc4, DOCS_PER_TRAIN_SHARD, 4_000, source_lines("train"), "--max-download-rate", "3M")
    finally:
        far_hub.clear_faults()
    assert far_hub.stats()["faults_injected"].get("expired_url", 0) > 1
