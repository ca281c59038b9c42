"""A real S3 endpoint for tests and the demo: moto's server in a subprocess, plus small async helpers.

``python -m scripts.s3_server [--host H] [--port N] [--quiet]`` runs moto in the foreground, prints one
JSON line ``{"endpoint": "http://127.0.0.1:PORT"}`` once it is listening, and stops on SIGTERM/SIGINT.
Port 0 (the default) lets the OS pick a free port; the JSON line is how the parent learns it, so there is
no pick-then-bind race and no parsing of werkzeug's log output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

HOST = "127.0.0.1"
REGION = "us-east-1"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
FAKE_ACCESS_KEY = "testing"
FAKE_SECRET_KEY = "testing"
REPO_ROOT = Path(__file__).resolve().parents[1]


class ServerProcessError(RuntimeError):
    """A helper server process failed to start or exited early."""


def http_json(method: str, url: str, payload: Any = None, timeout: float = 10.0) -> Any:
    """Send a small JSON request with the standard library and decode the JSON answer."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


class EndpointProcess:
    """Runs ``python -m MODULE ARGS`` that prints ``{"endpoint": ...}`` on its first stdout line.

    stdout/stderr go to files in a private temp dir (never pipes, so a chatty child cannot block on a
    full pipe); stderr is quoted in errors and readable via :meth:`log`.
    """

    health_path = "/"

    def __init__(self, module: str, args: Sequence[str] = (), timeout: float = START_TIMEOUT) -> None:
        self._cmd = [sys.executable, "-m", module, *args]
        self._timeout = timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._endpoint: str | None = None

    @property
    def endpoint(self) -> str:
        if self._endpoint is None:
            raise RuntimeError(f"{type(self).__name__} is not running")
        return self._endpoint

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"{type(self).__name__} is not running")
        return self._proc.pid

    def env(self) -> dict[str, str]:
        """Environment a client process needs to use this endpoint as its S3 (standard AWS vars only)."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
        }

    def log(self) -> str:
        """The child's stderr so far."""
        return self._read_output("stderr")

    def start(self) -> Self:
        self._tmpdir = tempfile.TemporaryDirectory(prefix="s3-endpoint-")
        out_dir = Path(self._tmpdir.name)
        with open(out_dir / "stdout", "wb") as out, open(out_dir / "stderr", "wb") as err:
            self._proc = subprocess.Popen(
                self._cmd, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )
        try:
            deadline = time.monotonic() + self._timeout
            self._endpoint = self._wait_for_endpoint(deadline)
            self._wait_for_http(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if the child does not exit in time."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
        self._endpoint = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _read_output(self, name: str) -> str:
        if self._tmpdir is None:
            return ""
        return (Path(self._tmpdir.name) / name).read_bytes().decode(errors="replace")

    def _check_alive(self, deadline: float, waiting_for: str) -> None:
        assert self._proc is not None
        code = self._proc.poll()
        if code is not None:
            raise ServerProcessError(f"{self._cmd} exited with {code}:\n{self.log()[-4000:]}")
        if time.monotonic() > deadline:
            raise ServerProcessError(
                f"{self._cmd}: no {waiting_for} within {self._timeout}s:\n{self.log()[-4000:]}"
            )

    def _wait_for_endpoint(self, deadline: float) -> str:
        while True:
            first, newline, _ = self._read_output("stdout").partition("\n")
            if newline:
                return str(json.loads(first)["endpoint"])
            self._check_alive(deadline, "endpoint line")
            time.sleep(0.05)

    def _wait_for_http(self, deadline: float) -> None:
        """Any HTTP answer, even an error status, means the server is serving."""
        while True:
            try:
                with urllib.request.urlopen(self.endpoint + self.health_path, timeout=1.0):
                    return
            except urllib.error.HTTPError:
                return
            except OSError:
                self._check_alive(deadline, "HTTP answer")
                time.sleep(0.05)


class MotoServerProcess(EndpointProcess):
    """Moto's S3 (and every other service) on 127.0.0.1, in a subprocess; use as a context manager."""

    health_path = "/moto-api/data.json"

    def __init__(self, port: int = 0, host: str = HOST, timeout: float = START_TIMEOUT) -> None:
        super().__init__("scripts.s3_server", ["--host", host, "--port", str(port), "--quiet"], timeout)

    def reset(self) -> None:
        """Drop all buckets and objects (moto's reset API)."""
        http_json("POST", self.endpoint + "/moto-api/reset")


# --- aiobotocore helpers -------------------------------------------------------------------------------


@asynccontextmanager
async def s3_client(
    endpoint: str, *, max_attempts: int | None = None, flexible_checksums: bool = True
) -> AsyncIterator[Any]:
    """An aiobotocore S3 client with fake credentials; ``max_attempts=1`` disables retries, and
    ``flexible_checksums=False`` stops botocore adding its CRC32 checksums (as for older stores)."""
    options: dict[str, Any] = {}
    if max_attempts is not None:
        options["retries"] = {"mode": "standard", "total_max_attempts": max_attempts}
    if not flexible_checksums:
        options["request_checksum_calculation"] = "when_required"
    config = AioConfig(**options) if options else None
    session = get_session()
    async with session.create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=FAKE_ACCESS_KEY,
        aws_secret_access_key=FAKE_SECRET_KEY,
        config=config,
    ) as client:
        yield client


async def create_bucket(endpoint: str, bucket: str) -> None:
    async with s3_client(endpoint) as client:
        await client.create_bucket(Bucket=bucket)


async def list_objects(
    endpoint: str, bucket: str, prefix: str = "", *, page_size: int = 1000
) -> dict[str, bytes]:
    """Every object under ``prefix`` as key -> body (all pages)."""
    async with s3_client(endpoint) as client:
        keys: list[str] = []
        paginator = client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(
            Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size}
        ):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        # Concurrency is bounded by the client's connection pool (10 by default).
        bodies = await asyncio.gather(*(_get_body(client, bucket, key) for key in keys))
    return dict(zip(keys, bodies, strict=True))


async def _get_body(client: Any, bucket: str, key: str) -> bytes:
    response = await client.get_object(Bucket=bucket, Key=key)
    async with response["Body"] as body:
        data: bytes = await body.read()
    return data


async def list_multipart_uploads(endpoint: str, bucket: str) -> list[str]:
    """Keys of multipart uploads still in progress (one entry per upload), sorted."""
    keys: list[str] = []
    async with s3_client(endpoint) as client:
        paginator = client.get_paginator("list_multipart_uploads")
        async for page in paginator.paginate(Bucket=bucket):
            keys.extend(upload["Key"] for upload in page.get("Uploads", []))
    return sorted(keys)


# --- CLI -----------------------------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.s3_server", description=__doc__)
    parser.add_argument("--host", default=HOST, help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 = any free port (default)")
    parser.add_argument("--quiet", action="store_true", help="do not log each request to stderr")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.quiet:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)

    # Imported here so the helpers above do not pay for importing moto.
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    # Same app as `moto_server`, but bound here so a bind error fails fast and port 0 is reported back.
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, name="moto-server", daemon=True)
    thread.start()
    print(json.dumps({"endpoint": f"http://{args.host}:{server.port}"}), flush=True)
    stop.wait()
    server.shutdown()
    thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
