"""Nothing hangs: a silent Hub, two quick signals, a frozen S3. Every run here has a hard timeout, so a
regression fails the test instead of stalling the suite."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts.hub_server import HubServerProcess
from scripts.s3_fault_proxy import S3FaultProxyProcess
from scripts.s3_server import MotoServerProcess
from scripts.shards import FakeRepo

from .conftest import Aioc4, clean_env

HARD_LIMIT_S = 60


@dataclass
class SilentHub:
    """A server that accepts connections and never answers (a stalled proxy, a black-holed route)."""

    endpoint: str
    held: list[socket.socket]

    def connections(self) -> int:
        """Connections accepted so far (each one then waits forever for an answer)."""
        return len(self.held)


@pytest.fixture(scope="module")
def silent_hub() -> Iterator[SilentHub]:
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            held.append(connection)  # read nothing, answer nothing, never close

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield SilentHub(f"http://127.0.0.1:{server.getsockname()[1]}", held)
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_silent_hub_fails_by_itself_within_the_budget(aioc4: Aioc4, silent_hub: SilentHub) -> None:
    started = time.monotonic()
    result = aioc4(
        "--timeout",
        "1",
        "--retry-budget",
        "3",
        env={"HF_ENDPOINT": silent_hub.endpoint},
        timeout=HARD_LIMIT_S,
    )
    assert result.returncode == 1, result.stderr
    assert len(result.error_lines) == 1, result.stderr
    assert "cannot reach the Hub at" in result.error_lines[0]
    assert "gave up after" in result.error_lines[0]
    assert time.monotonic() - started < 30  # timeouts count against the 3 s budget: no 400 s of silence


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_a_run_blocked_on_a_silent_hub_at_once(
    aioc4: Aioc4, silent_hub: SilentHub, signum: int
) -> None:
    """A process: the signal is sent to it."""
    accepted = silent_hub.connections()
    process = subprocess.Popen(
        [*aioc4.command(), "--output-dir", "o"],
        cwd=aioc4.cwd,
        env={**aioc4.env, "HF_ENDPOINT": silent_hub.endpoint},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # in the first request, which the server never answers: connected, and blocked for good
    wait_for(lambda: silent_hub.connections() > accepted or process.poll() is not None, HARD_LIMIT_S,
             "the run to connect to the Hub")  # fmt: skip
    assert process.poll() is None
    sent = time.monotonic()
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=HARD_LIMIT_S)
    assert process.returncode == 128 + signum, stderr
    assert time.monotonic() - sent < 5, "the run waited for the blocked Hub call"
    assert "Traceback" not in stderr


@pytest.fixture(scope="module")
def slow_hub(fake_repo: FakeRepo) -> Iterator[HubServerProcess]:
    """Storage at 1 MB/s per connection (the tests cap runs at 1 MB/s in all): a run is still reading when it
    is signalled."""
    with HubServerProcess(fake_repo.root, pace_bytes_per_s=1e6) as server:
        yield server


def test_two_quick_signals_always_stop_at_once(
    tmp_path: Path, slow_hub: HubServerProcess, s3: MotoServerProcess
) -> None:
    """The second signal must stop the run whatever state the first one left it in."""
    env = clean_env(slow_hub.endpoint, s3.env(), tmp_path)
    for attempt in range(6):
        out = tmp_path / f"out{attempt}"
        process = subprocess.Popen(
            [*Aioc4.command(), "--num-samples", "20000", "--max-lines-per-file", "100",
             "--max-download-rate", "1M", "--output-dir", str(out)],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_for(lambda out=out: out.exists() and any(out.iterdir()), HARD_LIMIT_S, "the first part")
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGTERM)
        try:
            _, stderr = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            pytest.fail(f"attempt {attempt}: still running 15 s after two SIGTERMs")
        assert process.returncode == 143, stderr
        assert not list(out.glob(".*.tmp")), "a half-written part was left behind"


def test_sigterm_while_s3_is_frozen_ends_within_the_grace_period(
    tmp_path: Path, hub: HubServerProcess, s3: MotoServerProcess, bucket: str
) -> None:
    """Uploads and the manifest's PUT hang; the grace period (10 s) still bounds the whole stop."""
    with S3FaultProxyProcess(s3.endpoint) as frozen:
        frozen.set_rules([  # the job's first manifest goes through; then every PUT of the job hangs
            {"name": "first-manifest", "methods": ["PUT"], "path": "manifest", "times": 1, "action": "delay",
             "seconds": 0},
            {"name": "freeze", "methods": ["PUT"], "path": "c4_train_", "action": "delay", "seconds": 600},
        ])  # fmt: skip
        env = {**clean_env(hub.endpoint, s3.env(), tmp_path), "AWS_ENDPOINT_URL_S3": frozen.endpoint}
        out = tmp_path / "staging"
        process = subprocess.Popen(
            [*Aioc4.command(), "--num-samples", "3000", "--max-lines-per-file", "1000",
             "--output-dir", str(out), "--s3-path", f"s3://{bucket}/frozen"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_for(lambda: frozen.stats()["rules"]["freeze"]["injected"] > 0, HARD_LIMIT_S, "an upload to hang")
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            _, stderr = process.communicate(timeout=HARD_LIMIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            pytest.fail("still running a minute after SIGTERM with S3 frozen")
        took = time.monotonic() - sent  # before the proxy stops: it waits for the request it holds
    assert process.returncode == 143, stderr
    assert took < 15, stderr
    assert (out / "c4_train_3000.manifest.json").exists()  # the local manifest is current
    assert not list(out.glob(".*.tmp"))
