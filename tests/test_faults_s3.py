"""Destination faults against real servers: a flaky S3, a store that rejects checksums, a full disk,
and SIGTERM while uploads are in flight. Whatever happens, finished parts are never lost."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aioc4.naming import part_names
from scripts.hub_server import HubServerProcess
from scripts.s3_fault_proxy import S3FaultProxyProcess
from scripts.s3_server import MotoServerProcess
from scripts.shards import FakeRepo

from .conftest import Aioc4, Result, clean_env, objects, open_multipart_uploads, parts_in, split_expected

Lines = Callable[[str], list[bytes]]


@pytest.fixture
def proxy(s3: MotoServerProcess) -> Iterator[S3FaultProxyProcess]:
    with S3FaultProxyProcess(s3.endpoint, seed=11) as server:
        yield server


def through(aioc4: Aioc4, proxy: S3FaultProxyProcess, *args: str) -> Result:
    return aioc4(*args, env={"AWS_ENDPOINT_URL_S3": proxy.endpoint})


def test_flaky_s3_output_is_still_exact(
    aioc4: Aioc4, s3: MotoServerProcess, proxy: S3FaultProxyProcess, bucket: str, source_lines: Lines
) -> None:
    """One upload worker keeps the request order, so the seeded faults are the same on every run."""
    proxy.set_rules(
        [
            {
                "name": "503 SlowDown",
                "methods": ["PUT"],
                "path": r"_part\d+\.jsonl",
                "status": 503,
                "rate": 0.25,
            },
            {"name": "500", "methods": ["PUT", "HEAD"], "status": 500, "rate": 0.15},
            {"name": "reset", "methods": ["PUT"], "action": "reset", "rate": 0.15},
            {
                "name": "reset after storing",
                "methods": ["PUT"],
                "action": "reset",
                "forward_first": True,
                "rate": 0.15,
            },
        ]
    )
    args = ["--num-samples", "9000", "--max-lines-per-file", "600", "--s3-path", f"s3://{bucket}/f"]
    result = through(aioc4, proxy, *args, "--upload-workers", "1")
    assert result.returncode == 0, result.stderr
    names = part_names("train", 9000, 600)
    expected = split_expected(source_lines("train")[:9000], names, 600)
    assert objects(s3, bucket) == {f"f/{name}": body for name, body in expected.items()}
    assert open_multipart_uploads(s3, bucket) == []
    injected = {name: rule["injected"] for name, rule in proxy.stats()["rules"].items()}
    print(f"S3 faults injected and survived: {injected}")
    assert all(count > 0 for count in injected.values()), injected


def test_a_store_that_rejects_flexible_checksums_is_caught_early_and_md5_works(
    aioc4: Aioc4, s3: MotoServerProcess, proxy: S3FaultProxyProcess, bucket: str, hub_bytes: Callable[[], int]
) -> None:
    proxy.set_rules([{"header": {"x-amz-checksum-crc32": None}, "status": 400, "code": "InvalidRequest"}])
    args = ["--num-samples", "500", "--s3-path", f"s3://{bucket}/m"]
    refused = through(aioc4, proxy, *args)
    assert refused.returncode == 1
    assert refused.error_lines[0].startswith(
        f"aioc4: error: cannot upload to s3://{bucket}/m: InvalidRequest"
    )
    assert "try --s3-checksum md5" in refused.error_lines[0]
    assert hub_bytes() == 0
    accepted = through(aioc4, proxy, *args, "--s3-checksum", "md5")
    assert accepted.returncode == 0, accepted.stderr
    assert list(objects(s3, bucket)) == ["m/c4_train_500.jsonl"]


def mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    return mounted.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path | None]:
    """A 20 MB filesystem when this machine lets us mount one (root); None otherwise."""
    target = tmp_path / "small-disk"
    if not mount_tmpfs(target, "20m"):
        yield None
        return
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=False)


def limit_file_size() -> None:  # pragma: no cover - runs in the child process
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (8_000_000, 8_000_000))


@pytest.mark.parametrize("procs", [1, 2])
def test_a_full_disk_is_a_clear_error_and_finished_parts_stay_intact(
    tmp_path: Path, hub: HubServerProcess, small_disk: Path | None, source_lines: Lines, procs: int
) -> None:
    """ENOSPC on a real 20 MB tmpfs; without the right to mount one, a file size limit (EFBIG) fails the
    same write path. With decode processes their segments share the disk, so fewer parts fit."""
    out = small_disk or tmp_path / "out"
    args = ["--num-samples", "20000", "--max-lines-per-file", "2000", "--output-dir", str(out)]
    args += ["--procs", str(procs)]
    completed = subprocess.run(
        [sys.executable, "-m", "aioc4", *args],
        env=clean_env(hub.endpoint, {}, tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=None if small_disk else limit_file_size,
        check=False,
    )
    assert completed.returncode == 1, completed.stderr
    assert "Traceback" not in completed.stderr
    errors = [line for line in completed.stderr.splitlines() if line.startswith("aioc4: error:")]
    reason = "No space left on device" if small_disk else "File too large"
    assert len(errors) == 1
    assert reason in errors[0], errors
    parts = parts_in(out)
    assert (2 if procs == 1 else 1) <= len(parts) < 10
    names = part_names("train", 20000, 2000)[: len(parts)]
    assert parts == split_expected(source_lines("train"), names, 2000)  # whole parts only, no temp file


def test_sigterm_lets_uploads_in_flight_finish_saves_the_manifest_and_a_rerun_completes(
    tmp_path: Path, fake_repo: FakeRepo, s3: MotoServerProcess, proxy: S3FaultProxyProcess, bucket: str,
    source_lines: Lines,
) -> None:  # fmt: skip
    proxy.set_rules(
        [{"name": "slow", "methods": ["PUT"], "path": r"_part\d+\.jsonl", "action": "delay", "seconds": 1.5}]
    )
    with HubServerProcess(fake_repo.root, pace_bytes_per_s=4e6) as slow_hub:
        env = clean_env(slow_hub.endpoint, s3.env(), tmp_path)
        env["AWS_ENDPOINT_URL_S3"] = proxy.endpoint
        aioc4 = Aioc4(cwd=tmp_path, env=env)
        args = ["--num-samples", "12000", "--max-lines-per-file", "1000", "--s3-path", f"s3://{bucket}/t"]
        args += ["--max-download-rate", "4M"]  # still reading when the signal comes
        process = aioc4.popen(*args)
        folder = tmp_path / "data" / "c4_subset"
        deadline = time.monotonic() + 60
        while not list(folder.glob("*_part002.jsonl")) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 143, stderr
        assert "interrupted by SIGTERM" in stderr
        stored = objects(s3, bucket)
        assert len(stored) >= 2  # the parts finished before the signal were uploaded during the grace period
        assert not list(folder.glob(".*.tmp"))
        proxy.set_rules([])
        rerun = aioc4(*args)
    assert rerun.returncode == 0, rerun.stderr
    names = part_names("train", 12000, 1000)
    expected = split_expected(source_lines("train")[:12000], names, 1000)
    assert objects(s3, bucket) == {f"t/{name}": body for name, body in expected.items()}
    assert f"resuming after {len(stored)} part(s)" in rerun.stderr


def test_a_bucket_gone_mid_run_stops_reading_and_keeps_disk_bounded(
    aioc4: Aioc4, s3: MotoServerProcess, bucket: str
) -> None:
    """A permanent upload error (NoSuchBucket, AccessDenied) is not retried forever while the Hub keeps
    being read: reading stops, finished parts stay local, and the error lists them."""
    with S3FaultProxyProcess(s3.endpoint) as proxy:
        proxy.set_rules([{"name": "gone", "methods": ["PUT"], "path": r"_part0(0[2-9]|[1-9]\d)",
                          "status": 404, "code": "NoSuchBucket"}])  # fmt: skip
        result = aioc4(
            "--num-samples", "30000", "--max-lines-per-file", "1000", "--s3-path", f"s3://{bucket}/gone",
            "--output-dir", "staging", env={"AWS_ENDPOINT_URL_S3": proxy.endpoint},
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert len(result.error_lines) == 1, result.stderr
    error = result.error_lines[0]
    assert error.startswith("aioc4: error: S3 refuses every upload (NoSuchBucket"), error
    kept = sorted(path.name for path in (aioc4.cwd / "staging").glob("c4_train_30000_part*.jsonl"))
    assert kept, result.stderr
    assert len(kept) <= 2 * 8 + 1  # the disk bound of 8 upload workers, not 29 parts piled up
    assert all(name in error for name in kept)
    assert list(objects(s3, bucket, "gone/")) == ["gone/c4_train_30000_part001.jsonl"]
