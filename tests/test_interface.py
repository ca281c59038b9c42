"""The CI-facing interface: progress output, --json, GITHUB_STEP_SUMMARY, --dry-run, -v, and the library API.

End to end against the local Hub and moto's S3 (tests/conftest.py); the formatting is unit-tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import constants

from aioc4 import (
    BulkOptions,
    PartsNotUploadedError,
    RunConfig,
    RunSummary,
    dry_run_sync,
    parse_s3_path,
    pull_sync,
)
from aioc4.errors import DestinationError, SourceError, UsageError
from aioc4.hub import Shard
from aioc4.naming import part_names
from aioc4.plan import bytes_to_read, shards_needed
from aioc4.progress import Counters, ProgressDisplay, format_duration, format_line, rates
from scripts.hub_server import HubServerProcess
from scripts.s3_server import MotoServerProcess
from scripts.shards import FakeRepo

from .conftest import (
    AWS_SECRET,
    HUB_TOKEN,
    Aioc4,
    jsonl,
    objects,
    open_multipart_uploads,
    parts_in,
    shard_paths,
    split_expected,
)

Lines = Callable[[str], list[bytes]]
TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ "  # on log lines that do not go to a terminal
PROGRESS_LINE = re.compile(
    rf"^{TIMESTAMP}aioc4: [\d,]+/30,000 documents \(\d+%\), [\d,.]+ MB, [\d,]+ docs/s, [\d,.]+ MB/s, "
    r"\d+ part\(s\) (written|uploaded), ETA (\d+:\d\d:\d\d|unknown)$"
)


# -- pure parts ------------------------------------------------------------------------------------


def test_rates_are_averages_since_the_start_and_the_eta_rounds_up() -> None:
    start = Counters(documents=2_000, bytes_written=0, parts=0)  # 2,000 documents kept from an earlier run
    now = Counters(documents=12_000, bytes_written=31_200_000, parts=1)
    speed = rates(start, now, elapsed_s=0.5, total=30_000)
    assert (speed.docs_per_s, speed.mb_per_s, speed.eta_s) == (20_000.0, 62.4, 0.9)
    assert format_line(now, speed, 30_000, "uploaded") == (
        "12,000/30,000 documents (40%), 31.2 MB, 20,000 docs/s, 62.4 MB/s, 1 part(s) uploaded, ETA 0:00:01"
    )


def test_rates_before_anything_is_measured() -> None:
    assert rates(Counters(), Counters(), elapsed_s=0.0, total=10).eta_s is None
    assert rates(Counters(), Counters(), elapsed_s=2.0, total=10).eta_s is None
    assert rates(Counters(), Counters(documents=10), elapsed_s=2.0, total=10).eta_s == 0.0
    speed = rates(Counters(), Counters(), elapsed_s=1.0, total=1_000)
    assert format_line(Counters(), speed, 1_000, "written") == (
        "0/1,000 documents (0%), 0.0 MB, 0 docs/s, 0.0 MB/s, 0 part(s) written, ETA unknown"
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "unknown"), (0.0, "0:00:00"), (0.2, "0:00:01"), (59.0, "0:00:59"), (3725.2, "1:02:06")],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_shards_needed_and_bytes_to_read_estimate_at_840_bytes_a_document() -> None:
    shards = [
        Shard(f"en/c4-train.{i:05d}-of-00003.json.gz", i, 840_000) for i in range(3)
    ]  # ~1,000 docs each
    assert shards_needed(shards, 1_000) == shards[:1]
    assert shards_needed(shards, 1_001) == shards[:2]
    assert shards_needed(shards, 99_999) == shards
    assert bytes_to_read(shards[:2], 1_500, streaming=True) == 1_260_000
    assert bytes_to_read(shards[:2], 1_500, streaming=False) == 1_680_000
    assert bytes_to_read(shards, 99_999, streaming=True) == 2_520_000  # never more than the split holds


async def _display_output(display: ProgressDisplay, counters: list[Counters]) -> None:
    """Run a display over a sequence of counters until the last one was reported, then cancel it."""
    seen = iter(counters)
    last = counters[0]
    reached = asyncio.Event()

    def read() -> Counters:
        nonlocal last
        last = next(seen, last)
        if last is counters[-1]:
            reached.set()
        return last

    async with asyncio.TaskGroup() as group:
        task = group.create_task(display.run(read))
        await reached.wait()
        await asyncio.sleep(0.05)
        task.cancel()


def test_the_bar_shows_documents_rates_parts_and_eta_and_is_closed_when_cancelled() -> None:
    stream = io.StringIO()
    display = ProgressDisplay(100, bar=True, interval_s=0.01, parts_label="uploaded", stream=stream)
    counters = [Counters(0, 0, 0), Counters(40, 4_000_000, 1), Counters(100, 10_000_000, 2)]
    asyncio.run(_display_output(display, counters))
    final = stream.getvalue().split("\r")[-1]
    assert re.fullmatch(
        r"aioc4: 100%\|[█#]+\| 100/100 docs, 10\.0 MB, [\d,]+ docs/s, [\d,.]+ MB/s, 2 part\(s\) uploaded, "
        r"ETA 0:00:00\n",
        final,
    ), final


def test_the_plain_display_logs_one_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    display = ProgressDisplay(30_000, bar=False, interval_s=0.01, parts_label="written")
    with caplog.at_level(logging.INFO, logger="aioc4"):
        asyncio.run(_display_output(display, [Counters(0, 0, 0), Counters(12_000, 31_200_000, 1)]))
    lines = [f"2026-01-01T00:00:00Z aioc4: {record.getMessage()}" for record in caplog.records]
    assert lines
    assert all(PROGRESS_LINE.match(line) for line in lines), lines
    assert lines[-1].startswith("2026-01-01T00:00:00Z aioc4: 12,000/30,000 documents (40%), 31.2 MB, ")


def test_the_bars_last_frame_shows_the_final_counts() -> None:
    """Parts delivered after the last tick (the end of the work cancels the display) are on the bar."""
    stream = io.StringIO()
    display = ProgressDisplay(100, bar=True, interval_s=3600, parts_label="uploaded", stream=stream)
    counters = iter([Counters(0, 0, 0), Counters(100, 10_000_000, 4)])

    async def run_then_finish() -> None:
        task = asyncio.ensure_future(display.run(lambda: next(counters)))
        await asyncio.sleep(0.05)  # the bar is drawn; no tick comes in an hour
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(run_then_finish())
    final = stream.getvalue().split("\r")[-1]
    assert " 100/100 docs, 10.0 MB, " in final, final
    assert "4 part(s) uploaded" in final, final


# -- progress end to end ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def paced_hub(fake_repo: FakeRepo) -> Iterator[HubServerProcess]:
    """Storage at 10 MB/s per connection, runs capped at 10 MB/s in all: a 30,000-document run takes about
    3 s, long enough for progress lines."""
    with HubServerProcess(fake_repo.root, pace_bytes_per_s=10e6) as server:
        yield server


def test_progress_lines_off_a_terminal_and_silence_with_q(
    tmp_path: Path, paced_hub: HubServerProcess, aioc4: Aioc4
) -> None:
    aioc4.env["HF_ENDPOINT"] = paced_hub.endpoint
    fast = {"AIOC4_PROGRESS_INTERVAL": "0.2"}
    result = aioc4(
        "--num-samples", "30000", "--max-lines-per-file", "10000", "--max-download-rate", "10M",
        "--output-dir", "o", env=fast,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stderr.splitlines() if "/30,000 documents" in line]
    assert len(progress) >= 3, result.stderr
    assert all(PROGRESS_LINE.match(line) for line in progress), progress
    counts = [int(line.split()[2].split("/")[0].replace(",", "")) for line in progress]
    assert counts == sorted(counts)

    quiet = aioc4(
        "-q", "--num-samples", "30000", "--max-lines-per-file", "10000", "--output-dir", "q", env=fast
    )
    assert quiet.returncode == 0
    assert quiet.stderr == ""
    assert quiet.stdout.splitlines() == [f"q/{name}" for name in part_names("train", 30000, 10000)]


def test_verbose_logs_debug_lines_and_contradicts_quiet(
    aioc4: Aioc4, hub: HubServerProcess, bucket: str
) -> None:
    result = aioc4("-v", "--num-samples", "5", "--output-dir", "o", "--s3-path", f"s3://{bucket}/v")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert all(re.match(rf"^{TIMESTAMP}aioc4: ", line) for line in lines), result.stderr
    messages = [line.split(" aioc4: ", 1)[1] for line in lines]
    assert "progress: a line every 5.0 s" in messages
    hub_line = (
        rf"^GET {re.escape(hub.endpoint)}/api/datasets/allenai/c4/revision/main -> 200, \d+ bytes, [\d.]+ s$"
    )
    assert any(re.match(hub_line, message) for message in messages), result.stderr
    storage_line = (
        rf"^GET {re.escape(hub.storage)}/cdn/[0-9a-f]+/c4-train\.00000-of-00003\.json\.gz "
        r"\(bytes=0-\d+\) -> 206, \d+ bytes"
    )
    assert any(re.match(storage_line, message) for message in messages), result.stderr
    assert not any("sig=" in message for message in messages)  # signed URLs are logged without their query
    s3_line = rf"^S3 PutObject .*/{bucket}/v/c4_train_5\.jsonl -> 200, \d+ bytes sent"
    assert any(re.match(s3_line, message) for message in messages), result.stderr
    both = aioc4("-q", "-v", "--num-samples", "5")
    assert both.returncode == 2
    assert both.error_lines == ["aioc4: error: --quiet and --verbose contradict each other; pass one of them"]


def test_help_lists_the_other_commands_and_each_has_its_own_help(aioc4: Aioc4) -> None:
    main = aioc4("--help")
    assert main.returncode == 0
    assert re.search(r"^\s+verify\s+check every part", main.stdout, re.MULTILINE), main.stdout
    assert re.search(r"^\s+merge\s+combine the shard manifests", main.stdout, re.MULTILINE), main.stdout
    for command in ("verify", "merge"):
        sub_help = aioc4(command, "--help")
        assert sub_help.returncode == 0
        assert sub_help.stdout.startswith(f"usage: aioc4 {command} ")


def test_short_test_credentials_never_rewrite_paths_or_urls(aioc4: Aioc4, bucket: str) -> None:
    """LocalStack/MinIO-style `test`/`test` credentials are not secrets; a real-looking one is hidden
    wherever it is not part of the run's own paths."""
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    result = aioc4(
        "--json", "--num-samples", "5", "--s3-path", f"s3://{bucket}/latest", "--no-cleanup",
        "--output-dir", "tests_out", env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = one_json_object(result.stdout)
    assert document["destination"] == f"s3://{bucket}/latest"
    assert document["manifest"] == f"s3://{bucket}/latest/c4_train_5.manifest.json"
    assert [(part["path"], part["url"]) for part in document["parts"]] == [
        ("tests_out/c4_train_5.jsonl", f"s3://{bucket}/latest/c4_train_5.jsonl")
    ]
    assert f"s3://{bucket}/latest/c4_train_5.jsonl" in result.stderr  # the human summary agrees

    folder = f"runs/{AWS_SECRET.replace('/', '_')}"  # a long secret inside the run's own folder name
    secret = AWS_SECRET.replace("/", "_")
    own = aioc4("--json", "--num-samples", "5", "--output-dir", folder, env={"HF_TOKEN": secret})
    assert own.returncode == 0, own.stderr
    assert one_json_object(own.stdout)["parts"][0]["path"] == f"{folder}/c4_train_5.jsonl"
    echoed = aioc4("--json", "--num-samples", "5", "--revision", secret, env={"HF_TOKEN": secret})
    assert echoed.returncode == 1
    assert secret not in echoed.stdout + echoed.stderr
    assert one_json_object(echoed.stdout)["error"] == "revision '***' not found in dataset 'allenai/c4'"


# -- --json and GITHUB_STEP_SUMMARY ----------------------------------------------------------------


def one_json_object(stdout: str) -> dict[str, Any]:
    """stdout holds one JSON object and nothing else."""
    assert len(stdout.splitlines()) == 1, stdout
    document = json.loads(stdout)
    assert isinstance(document, dict)
    return document


def assert_timings(document: dict[str, Any]) -> dict[str, Any]:
    """The timings are measured: check their shape, then take them out for exact comparison."""
    timings = document.pop("timings")
    assert set(timings) == {"seconds", "docs_per_s", "mb_per_s"}
    assert all(isinstance(value, float) and value >= 0 for value in timings.values())
    return dict(timings)


def test_json_summary_local(aioc4: Aioc4, hub: HubServerProcess, source_lines: Lines) -> None:
    result = aioc4("--json", "--num-samples", "2500", "--max-lines-per-file", "1000", "--output-dir", "o")
    assert result.returncode == 0, result.stderr
    document = one_json_object(result.stdout)
    timings = assert_timings(document)
    assert timings["seconds"] > 0
    names = part_names("train", 2500, 1000)
    expected = split_expected(source_lines("train")[:2500], names, 1000)
    assert parts_in(aioc4.cwd / "o") == expected
    read = document.pop("read")
    assert read["documents"] == 2500
    assert read["shards"] == 1
    assert document.pop("written") == {"bytes": sum(len(body) for body in expected.values())}
    parts = document.pop("parts")
    assert [(part["name"], part["lines"], part["bytes"], part["path"], part["url"]) for part in parts] == [
        (name, len(body.splitlines()), len(body), f"o/{name}", None) for name, body in expected.items()
    ]
    assert document == {
        "ok": True,
        "exit_code": 0,
        "error": None,
        "repo": "allenai/c4",
        "revision": "main",
        "config": "en",
        "split": "train",
        "num_samples": 2500,
        "max_lines_per_file": 1000,
        "destination": "o",
        "manifest": "o/c4_train_2500.manifest.json",
        "commit": hub.commit,
        "already_complete": False,
        "split_exhausted": False,
        "counts": {"documents": 2500, "parts": 3, "bytes": sum(len(body) for body in expected.values())},
        "not_uploaded": [],
    }
    assert "Total samples:        2,500" in result.stderr  # the human summary moves to stderr

    again = one_json_object(aioc4("--json", "--num-samples", "2500", "--max-lines-per-file", "1000",
                                  "--output-dir", "o").stdout)  # fmt: skip
    assert (again["ok"], again["already_complete"], again["counts"]) == (True, True, document["counts"])


def test_json_and_step_summary_for_s3(
    aioc4: Aioc4, hub: HubServerProcess, s3: MotoServerProcess, bucket: str, source_lines: Lines
) -> None:
    step_summary = aioc4.cwd.parent / "step_summary.md"
    step_summary.write_text("earlier step\n")
    env = {"GITHUB_STEP_SUMMARY": str(step_summary), "HF_TOKEN": HUB_TOKEN}
    result = aioc4(
        "--json", "-q", "--num-samples", "2000", "--max-lines-per-file", "1000", "--s3-path", f"s3://{bucket}/c4",
        env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    names = part_names("train", 2000, 1000)
    expected = split_expected(source_lines("train")[:2000], names, 1000)
    assert objects(s3, bucket) == {f"c4/{name}": body for name, body in expected.items()}
    document = one_json_object(result.stdout)
    assert_timings(document)
    assert [(part["name"], part["path"], part["url"]) for part in document["parts"]] == [
        (name, None, f"s3://{bucket}/c4/{name}") for name in names
    ]
    assert document["destination"] == f"s3://{bucket}/c4"
    assert document["manifest"] == f"s3://{bucket}/c4/c4_train_2000.manifest.json"
    assert document["counts"] == {"documents": 2000, "parts": 2, "bytes": sum(map(len, expected.values()))}

    text = step_summary.read_text()
    assert text.startswith("earlier step\n### aioc4: allenai/c4 (en/train), done\n")
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[1:4] == [
        "| documents | 2,000 |",
        "| parts | 2 |",
        f"| bytes | {document['counts']['bytes']:,} |",
    ]
    assert re.fullmatch(r"\| rate \| [\d,]+ docs/s, [\d,.]+ MB/s \|", rows[4])
    assert rows[5:] == [f"| destination | `s3://{bucket}/c4` |", f"| commit | `{hub.commit}` |"]
    for secret in (HUB_TOKEN, AWS_SECRET, aioc4.env["AWS_SECRET_ACCESS_KEY"]):
        assert secret not in text
        assert secret not in result.stdout


def test_json_on_failure_still_prints_one_object_and_the_error_line(aioc4: Aioc4, tmp_path: Path) -> None:
    usage = aioc4("--json", "--num-samples", "0")
    assert usage.returncode == 2
    assert one_json_object(usage.stdout) == {
        "ok": False,
        "exit_code": 2,
        "error": "argument --num-samples: must be a positive integer, got 0",
    }
    assert usage.error_lines == ["aioc4: error: argument --num-samples: must be a positive integer, got 0"]

    step_summary = tmp_path / "summary.md"
    missing = aioc4(
        "--json", "--num-samples", "10", "--s3-path", "s3://no-such-bucket-aioc4/x",
        env={"GITHUB_STEP_SUMMARY": str(step_summary)},
    )  # fmt: skip
    assert missing.returncode == 1
    error = "S3 bucket 'no-such-bucket-aioc4' does not exist"
    assert missing.error_lines == [f"aioc4: error: {error}"]
    assert one_json_object(missing.stdout) == {
        "ok": False,
        "exit_code": 1,
        "error": error,
        "repo": "allenai/c4",
        "revision": "main",
        "config": "en",
        "split": "train",
        "num_samples": 10,
        "max_lines_per_file": None,
        "destination": "s3://no-such-bucket-aioc4/x",
        "manifest": "s3://no-such-bucket-aioc4/x/c4_train_10.manifest.json",
    }
    assert step_summary.read_text() == f"### aioc4 failed (exit 1)\n\n{error}\n\n"


# -- --dry-run -------------------------------------------------------------------------------------


def test_dry_run_json_reads_metadata_only_and_writes_nothing(
    aioc4: Aioc4,
    hub: HubServerProcess,
    hub_bytes: Callable[[], int],
    fake_repo: FakeRepo,
    s3: MotoServerProcess,
    bucket: str,
) -> None:
    result = aioc4(
        "--dry-run", "--json", "--num-samples", "15000", "--max-lines-per-file", "6000",
        "--s3-path", f"s3://{bucket}/c4", "--output-dir", "o",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert hub_bytes() == 0
    assert list(aioc4.cwd.iterdir()) == []
    assert asyncio.run(_all_objects(s3, bucket)) == {}
    assert open_multipart_uploads(s3, bucket) == []  # the write probe was aborted
    sizes = {path: (fake_repo.root / path).stat().st_size for path in shard_paths(fake_repo, "train")}
    names = part_names("train", 15000, 6000)
    assert one_json_object(result.stdout) == {
        "ok": True,
        "exit_code": 0,
        "error": None,
        "dry_run": True,
        "repo": "allenai/c4",
        "revision": "main",
        "config": "en",
        "split": "train",
        "num_samples": 15000,
        "max_lines_per_file": 6000,
        "destination": f"s3://{bucket}/c4",
        "manifest": f"s3://{bucket}/c4/c4_train_15000.manifest.json",
        "commit": hub.commit,
        "streaming": True,
        "split_shards": 3,
        "split_bytes": sum(sizes.values()),
        # ~10.7 MB a shard at 840 bytes a document is ~12,800 documents: 15,000 need two
        "shards": [{"path": path, "size": size} for path, size in list(sizes.items())[:2]],
        "estimate": {"gzip_bytes_per_document": 840, "bytes_to_read": 15000 * 840, "exact": False},
        "parts": [
            {
                "name": name,
                "lines": lines,
                "path": f"o/{name}",
                "url": f"s3://{bucket}/c4/{name}",
                "key": f"c4/{name}",
            }
            for name, lines in zip(names, [6000, 6000, 3000], strict=True)
        ],
        "previous_job": None,
    }


async def _all_objects(s3: MotoServerProcess, bucket: str) -> dict[str, bytes]:
    from scripts.s3_server import list_objects

    return await list_objects(s3.endpoint, bucket, "")


def test_dry_run_text_and_the_same_preflight_as_a_real_run(
    aioc4: Aioc4, hub: HubServerProcess, hub_bytes: Callable[[], int], fake_repo: FakeRepo
) -> None:
    result = aioc4("--dry-run", "--num-samples", "3000", "--no-streaming", "--output-dir", "o")
    assert result.returncode == 0, result.stderr
    assert hub_bytes() == 0
    assert list(aioc4.cwd.iterdir()) == []
    shard = shard_paths(fake_repo, "train")[0]
    size = (fake_repo.root / shard).stat().st_size
    assert result.stdout.splitlines() == [
        "Dry run: no document is transferred and nothing is written.",
        f"Dataset:        allenai/c4 (en/train), revision main -> commit {hub.commit}",
        f"Split:          3 shard(s), {sum((fake_repo.root / p).stat().st_size for p in shard_paths(fake_repo, 'train')):,} gzip bytes",  # noqa: E501
        "Shards to read: 1 (an estimate, at ~840 gzip bytes per document), downloaded whole (--no-streaming)",
        f"  {shard}  {size:,} bytes",
        f"Bytes to read:  ~{size:,} gzip bytes (estimate)",
        "Parts:          1 (names assume the split holds 3,000 documents)",
        "  c4_train_3000.jsonl  3,000 lines -> o/c4_train_3000.jsonl",
        "Destination:    o (checked)",
        "Manifest:       o/c4_train_3000.manifest.json",
    ]

    one = aioc4("--dry-run", "--num-samples", "1", "--output-dir", "o")
    assert "  c4_train_1.jsonl  1 line -> o/c4_train_1.jsonl" in one.stdout.splitlines()

    no_credentials = aioc4("--dry-run", "--s3-path", "s3://some-bucket/x", env={"AWS_ACCESS_KEY_ID": None})
    assert no_credentials.returncode == 1
    assert no_credentials.error_lines[0].startswith("aioc4: error: no AWS credentials found")


def test_dry_run_after_a_run_reports_the_earlier_job_and_refuses_a_different_one(aioc4: Aioc4) -> None:
    assert aioc4("-q", "--num-samples", "20", "--output-dir", "o").returncode == 0
    plan = one_json_object(aioc4("--dry-run", "--json", "--num-samples", "20", "--output-dir", "o").stdout)
    assert plan["previous_job"] == f"complete, 1 part(s) recorded, at commit {plan['commit']}"
    different = aioc4("--dry-run", "--num-samples", "20", "--max-lines-per-file", "10", "--output-dir", "o")
    assert different.returncode == 2
    assert "records a different job (max_lines_per_file: None -> 10)" in different.error_lines[0]
    assert sorted(path.name for path in (aioc4.cwd / "o").iterdir()) == [
        "c4_train_20.jsonl",
        "c4_train_20.manifest.json",
    ]


# -- the library API -------------------------------------------------------------------------------


@pytest.fixture
def in_process(
    monkeypatch: pytest.MonkeyPatch, hub: HubServerProcess, s3: MotoServerProcess, tmp_path: Path
) -> Path:
    """This process pointed at the local Hub and moto, as HF_ENDPOINT / AWS_* would point a new one."""
    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    return tmp_path


def test_pull_sync_in_process_to_s3(
    in_process: Path, hub: HubServerProcess, s3: MotoServerProcess, bucket: str, source_lines: Lines
) -> None:
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    config = RunConfig(
        num_samples=2500,
        max_lines_per_file=1000,
        output_dir=in_process / "staging",
        s3=parse_s3_path(f"s3://{bucket}/api"),
        cleanup_local=True,
    )
    summary = pull_sync(config, progress_interval_s=0.05)
    assert isinstance(summary, RunSummary)
    names = part_names("train", 2500, 1000)
    expected = split_expected(source_lines("train")[:2500], names, 1000)
    assert objects(s3, bucket) == {f"api/{name}": body for name, body in expected.items()}
    assert summary.documents == 2500
    assert summary.manifest.request.commit == hub.commit
    assert summary.locations == [f"s3://{bucket}/api/{name}" for name in names]
    assert not (in_process / "staging").exists()
    assert {signum: signal.getsignal(signum) for signum in handlers} == handlers

    plan = dry_run_sync(config)
    assert plan.previous_job == f"complete, 3 part(s) recorded, at commit {hub.commit}"
    assert [part.name for part in plan.parts] == names


def test_pull_sync_in_process_locally_and_its_errors(in_process: Path, source_lines: Lines) -> None:
    summary = pull_sync(RunConfig(num_samples=10, output_dir=in_process / "out"))
    assert parts_in(in_process / "out") == {"c4_train_10.jsonl": jsonl(source_lines("train")[:10])}
    assert summary.locations == [str(in_process / "out" / "c4_train_10.jsonl")]
    with pytest.raises(SourceError, match=r"^revision 'no-such-branch' not found in dataset 'allenai/c4'$"):
        pull_sync(RunConfig(num_samples=10, output_dir=in_process / "x", revision="no-such-branch"))
    with pytest.raises(DestinationError, match=r"^S3 bucket 'no-such-bucket-aioc4' does not exist$"):
        pull_sync(
            RunConfig(
                num_samples=10, output_dir=in_process / "y", s3=parse_s3_path("s3://no-such-bucket-aioc4")
            )
        )
    assert issubclass(PartsNotUploadedError, DestinationError)


def test_the_library_takes_str_paths_and_the_command_lines_cleanup_default(
    in_process: Path, s3: MotoServerProcess, bucket: str
) -> None:
    summary = pull_sync(RunConfig(num_samples=10, output_dir=str(in_process / "as-str")))  # type: ignore[arg-type]
    assert summary.locations == [str(in_process / "as-str" / "c4_train_10.jsonl")]
    with pytest.raises(
        UsageError, match=r"RunConfig.output_dir must be a path \(str or os.PathLike\), got int"
    ):
        RunConfig(output_dir=5)  # type: ignore[arg-type]
    to_s3 = RunConfig(num_samples=10, output_dir=in_process / "staging", s3=parse_s3_path(f"s3://{bucket}/c"))
    assert to_s3.cleanup_local is True  # as on the command line: S3 runs keep no local copies
    assert RunConfig().cleanup_local is False
    assert pull_sync(to_s3).locations == [f"s3://{bucket}/c/c4_train_10.jsonl"]  # one kind of location


def test_pull_sync_inside_a_running_loop_says_to_await_pull() -> None:
    async def notebook_cell() -> None:
        pull_sync(RunConfig(num_samples=10))

    with pytest.raises(
        UsageError, match=r"cannot run inside a running event loop.*await aioc4.pull\(config\)"
    ):
        asyncio.run(notebook_cell())


def test_on_a_terminal_the_progress_is_a_bar(paced_hub: HubServerProcess, aioc4: Aioc4) -> None:
    """stderr is a pseudo-terminal: a tqdm bar instead of plain lines; log lines are written around it."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a 160-column terminal
    env = {**aioc4.env, "HF_ENDPOINT": paced_hub.endpoint}
    with subprocess.Popen(
        [sys.executable, "-m", "aioc4", "--num-samples", "20000", "--output-dir", "o"],
        cwd=aioc4.cwd, env=env, stdout=subprocess.PIPE, stderr=secondary,
    ) as process:  # fmt: skip
        os.close(secondary)
        stdout, _ = process.communicate(timeout=120)
        chunks = []
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the terminal's other end is closed: everything was read
                break
            if not chunk:
                break
            chunks.append(chunk)
    os.close(primary)
    assert process.returncode == 0
    terminal = b"".join(chunks).decode()
    assert re.search(r"aioc4: +\d+%\|.*\| [\d.k]+/20000 docs, [\d.]+ MB, [\d,]+ docs/s", terminal), terminal
    assert "/20,000 documents (" not in terminal  # no plain lines
    assert b"Total samples:        20,000" in stdout


def test_pull_sync_runs_a_bulk_pull_in_process(in_process: Path, source_lines: Lines) -> None:
    """A bulk config pulls the worker's whole share in this process, whatever `procs` says."""
    out = in_process / "bulk"
    config = RunConfig(split="validation", output_dir=out, bulk=BulkOptions(procs=4))
    summary = pull_sync(config)
    assert summary.documents == len(source_lines("validation"))
    assert parts_in(out) == {
        "c4_validation_shard00000.jsonl": jsonl(source_lines("validation")[:700]),
        "c4_validation_shard00001.jsonl": jsonl(source_lines("validation")[700:]),
    }
