"""Bad input and refused access: one clear line, the right exit code, nothing downloaded, no secret shown."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scripts.hub_server import HubServerProcess
from scripts.s3_server import MotoServerProcess, list_objects
from scripts.shards import FakeRepo

from .conftest import AWS_KEY_ID, AWS_SECRET, HUB_TOKEN, Aioc4, Result, clean_env, jsonl, objects

Lines = Callable[[str], list[bytes]]


@pytest.fixture
def hub_requests(hub: HubServerProcess) -> Callable[[], int]:
    """Requests of any kind the Hub receives from now on."""
    hub.reset_stats()

    def count() -> int:
        stats = hub.stats()
        resolves = sum(int(count) for count in stats["resolve_requests"].values())
        return int(stats["api_requests"]) + resolves + int(stats["storage_get_requests"])

    return count


def assert_one_line_error(result: Result, code: int, starts_with: str, *, alone: bool = True) -> None:
    """Exactly one `aioc4: error:` line; with `alone`, nothing else on stderr (no progress, no retries)."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    if alone:
        assert result.stderr.strip().splitlines() == result.error_lines, result.stderr
    assert len(result.error_lines) == 1, result.stderr
    assert result.error_lines[0].startswith(f"aioc4: error: {starts_with}"), result.stderr


@pytest.mark.parametrize(
    ("args", "starts_with"),
    [
        (["--num-samples", "0"], "argument --num-samples: must be a positive integer, got 0"),
        (["--num-samples", "-5"], "argument --num-samples: must be a positive integer, got -5"),
        (["--num-samples", "abc"], "argument --num-samples: must be a positive integer, got 'abc'"),
        (["--num-samples", "1.5"], "argument --num-samples: must be a positive integer, got '1.5'"),
        (["--max-lines-per-file", "0"], "argument --max-lines-per-file: must be a positive integer"),
        (["--upload-workers", "0"], "argument --upload-workers: must be a positive integer"),
        (["--split", "test"], "argument --split: invalid choice: 'test'"),
        (["--s3-path", "my-bucket/c4"], "--s3-path must look like s3://bucket[/prefix]"),
        (["--s3-path", "s3://"], "--s3-path has an invalid bucket name"),
        (["--s3-path", "s3://Bad_Bucket/x"], "--s3-path has an invalid bucket name"),
        (["--s3-path", "s3://b-1/c4", "--cleanup-local", "--no-cleanup"], "--cleanup-local and --no-cleanup"),
        (["--cleanup-local"], "--cleanup-local deletes parts after their upload, so it needs --s3-path"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--num-sample", "10"], "unrecognized arguments: --num-sample 10"),  # no prefix matching
        (["--output", "x"], "unrecognized arguments: --output x"),
        (["--upload-workers", "1000000"], "argument --upload-workers: must be at most 64, got 1,000,000"),
        (["--retry-budget", "nan"], "argument --retry-budget: must be a number of seconds within 0..604800"),
        (["--retry-budget", "inf"], "argument --retry-budget: must be a number of seconds within 0..604800"),
        (["--num-samples", "٣"], "argument --num-samples: must be a positive integer, got '٣'"),
        (["--num-samples", "1_0"], "argument --num-samples: must be a positive integer, got '1_0'"),
        (["--num-samples", " 7"], "argument --num-samples: must be a positive integer, got ' 7'"),
        (["--num-samples", str(2**64)], "argument --num-samples: must be at most 1,000,000,000,000"),
        (["--max-lines-per-file", str(2**64)], "argument --max-lines-per-file: must be at most"),
        (["--repo-id", ""], "--repo-id must look like namespace/name"),
        (["--repo-id", "a/b/c"], "--repo-id must look like namespace/name"),
        (["--repo-id", "../../etc"], "--repo-id must look like namespace/name"),
        (["--endpoint-url", "notaurl", "--s3-path", "s3://b-1/c4"], "--endpoint-url must be an http:// or"),
        (["verify"], "the following arguments are required: target"),
        (["--download-connections", "0"], "argument --download-connections: must be a positive integer"),
        (["--upload-connections", "999"], "argument --upload-connections: must be at most 256, got 999"),
        (["--max-download-rate", "fast"], "argument --max-download-rate: 'fast' is not a rate"),
        (["--max-upload-rate", "0"], "argument --max-upload-rate: '0' is not a rate above 0"),
    ],
)
def test_usage_errors_exit_2_before_any_work(
    aioc4: Aioc4, hub_requests: Callable[[], int], args: list[str], starts_with: str
) -> None:
    result = aioc4(*args)
    assert_one_line_error(result, 2, starts_with)
    assert hub_requests() == 0
    assert list(aioc4.cwd.iterdir()) == []


@pytest.mark.parametrize(
    ("env", "args", "starts_with"),
    [
        ({"HF_ENDPOINT": "notaurl"}, [], "HF_ENDPOINT must be an http:// or https:// URL with a host, got"),
        ({"HF_ENDPOINT": "not a url"}, [], "HF_ENDPOINT must be an http:// or https:// URL"),
        ({"HF_ENDPOINT": "ftp://hub.example.com"}, [], "HF_ENDPOINT must be an http:// or https:// URL"),
        ({"AWS_ENDPOINT_URL_S3": "localhost:50123"}, ["--s3-path", "s3://b-1/x"],
         "AWS_ENDPOINT_URL_S3 must be"),
        ({"JOB_COMPLETION_INDEX": "²"}, ["--num-samples", "all", "--num-workers", "2"],
         "JOB_COMPLETION_INDEX must be a non-negative integer, got '²'"),
    ],
)  # fmt: skip
def test_malformed_environment_is_a_usage_error_at_once(
    aioc4: Aioc4, hub_requests: Callable[[], int], env: dict[str, str], args: list[str], starts_with: str
) -> None:
    result = aioc4(*args, env=env, timeout=20)
    assert_one_line_error(result, 2, starts_with)
    assert hub_requests() == 0
    assert list(aioc4.cwd.iterdir()) == []


def test_an_output_dir_that_is_a_file_is_one_line_before_any_request(
    aioc4: Aioc4, hub_requests: Callable[[], int]
) -> None:
    (aioc4.cwd / "afile").write_text("not a folder\n")
    for output in ("afile", "afile/sub"):
        result = aioc4("--output-dir", output, "--json")
        assert_one_line_error(result, 1, f"--output-dir {output} ")
        assert json.loads(result.stdout)["error"] == result.error_lines[0].removeprefix("aioc4: error: ")
    assert hub_requests() == 0
    assert (aioc4.cwd / "afile").read_text() == "not a folder\n"


def test_a_cache_dir_that_is_a_file_is_a_usage_error(aioc4: Aioc4, hub_requests: Callable[[], int]) -> None:
    (aioc4.cwd / "cache").write_text("")
    result = aioc4("--no-streaming", "--cache-dir", "cache")
    assert_one_line_error(result, 2, "--cache-dir cache exists and is not a folder")
    assert hub_requests() == 0


def test_unknown_repo(aioc4: Aioc4, hub_requests: Callable[[], int]) -> None:
    result = aioc4("--repo-id", "nobody/nothing")
    assert_one_line_error(result, 1, "dataset 'nobody/nothing' not found at http://127.0.0.1:")
    assert "set HF_TOKEN" in result.stderr
    assert not (aioc4.cwd / "data").exists()


def test_unknown_revision(aioc4: Aioc4) -> None:
    result = aioc4("--revision", "no-such-branch")
    assert_one_line_error(result, 1, "revision 'no-such-branch' not found in dataset 'allenai/c4'")
    assert not (aioc4.cwd / "data").exists()


def test_unreachable_hub(aioc4: Aioc4) -> None:
    result = aioc4("--retry-budget", "2", env={"HF_ENDPOINT": "http://user:hunter2pass@127.0.0.1:9"})
    assert_one_line_error(result, 1, "cannot reach the Hub at http://127.0.0.1:9 (", alone=False)
    assert "check HF_ENDPOINT and the network" in result.error_lines[0]
    assert "gave up after" in result.error_lines[0]
    assert "hunter2pass" not in result.stderr + result.stdout  # userinfo is never shown


@pytest.fixture(scope="module")
def gated_hub(fake_repo: FakeRepo) -> Iterator[HubServerProcess]:
    with HubServerProcess(fake_repo.root, token=HUB_TOKEN) as server:
        yield server


@pytest.fixture
def gated(tmp_path: Path, gated_hub: HubServerProcess, s3: MotoServerProcess) -> Aioc4:
    env = clean_env(gated_hub.endpoint, s3.env(), tmp_path)
    env.update({"AWS_ACCESS_KEY_ID": AWS_KEY_ID, "AWS_SECRET_ACCESS_KEY": AWS_SECRET})
    work = tmp_path / "work"
    work.mkdir()
    return Aioc4(cwd=work, env=env)


def assert_no_secret_anywhere(result: Result, uploaded: bytes = b"") -> None:
    """Nothing the run printed, wrote locally or uploaded holds the token or the AWS keys."""
    written = b"".join(path.read_bytes() for path in result.cwd.rglob("*") if path.is_file()) + uploaded
    for secret in (HUB_TOKEN, AWS_SECRET, AWS_KEY_ID):
        assert secret not in result.stdout
        assert secret not in result.stderr
        assert secret.encode() not in written


def test_gated_repo_without_token_says_hf_token_is_needed(gated: Aioc4) -> None:
    result = gated()
    assert_one_line_error(result, 1, "dataset 'allenai/c4' is gated: set HF_TOKEN")


def test_gated_repo_with_wrong_token_says_it_is_invalid(gated: Aioc4) -> None:
    wrong = "hf_wrongTokenKnownFake987654321"
    result = gated(env={"HF_TOKEN": wrong})
    assert_one_line_error(
        result, 1, "the Hub refused dataset 'allenai/c4' (HTTP 401): HF_TOKEN is missing or invalid"
    )
    assert wrong not in result.stderr + result.stdout


def test_token_reaches_the_hub_but_never_storage_and_no_secret_is_shown(
    gated: Aioc4, gated_hub: HubServerProcess, s3: MotoServerProcess, bucket: str, source_lines: Lines
) -> None:
    gated_hub.reset_stats()
    result = gated(
        "--num-samples", "200", "--max-lines-per-file", "150",
        "--s3-path", f"s3://{bucket}/g", "--no-cleanup",
        env={"HF_TOKEN": HUB_TOKEN},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = source_lines("train")
    assert objects(s3, bucket) == {
        "g/c4_train_200_part001.jsonl": jsonl(lines[:150]),
        "g/c4_train_200_part002.jsonl": jsonl(lines[150:200]),
    }
    stats = gated_hub.stats()
    assert stats["storage_get_requests"] == 1
    assert stats["storage_auth_headers_seen"] == 0
    everything = asyncio.run(list_objects(s3.endpoint, bucket))
    assert "g/c4_train_200.manifest.json" in everything
    assert_no_secret_anywhere(result, uploaded=b"".join(everything.values()))


def test_secrets_are_not_shown_on_failures(gated: Aioc4) -> None:
    missing_bucket = gated("--s3-path", "s3://no-such-bucket-x/c4", env={"HF_TOKEN": HUB_TOKEN})
    assert missing_bucket.returncode == 1
    assert_no_secret_anywhere(missing_bucket)
    bad_revision = gated("--revision", HUB_TOKEN, env={"HF_TOKEN": HUB_TOKEN})  # a secret echoed back
    assert_one_line_error(bad_revision, 1, "revision '***' not found")
    assert_no_secret_anywhere(bad_revision)
