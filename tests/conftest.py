"""Real servers for the end-to-end tests: a local Hub (scripts.hub_server) and moto's S3 server.

aioc4 reaches them only through the standard variables `HF_ENDPOINT` and `AWS_ENDPOINT_URL_S3`, as it
would the real Hub and S3. The command line runs in this process with the environment a subprocess would
get (tests/in_process.py), or as `python -m aioc4` where only a process shows what is tested.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import itertools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts.hub_server import HubServerProcess
from scripts.s3_server import MotoServerProcess, create_bucket, list_multipart_uploads, list_objects
from scripts.shards import FakeRepo, build_fake_c4, iter_shard_lines

from .in_process import run_in_process

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_SHARDS = 3
DOCS_PER_TRAIN_SHARD = 12_000
VALIDATION_SHARDS = 2
DOCS_PER_VALIDATION_SHARD = 700
HUB_TOKEN = "hf_aioc4TestTokenKnownFake0123456789"
AWS_SECRET = "aioc4TestSecretKeyKnownFake/0123456789+abc"
AWS_KEY_ID = "AKIAAIOC4TESTKNOWNFAKE"

_ENV_PREFIXES_TO_DROP = ("HF_", "HUGGING_FACE_", "AWS_")
# AIOC4_TEST_SUBPROCESS=1 runs every `aioc4(...)` call as `python -m aioc4` (slower; to compare the two).
_ALWAYS_SUBPROCESS = os.environ.get("AIOC4_TEST_SUBPROCESS") == "1"


@pytest.fixture(scope="session")
def fake_repo() -> FakeRepo:
    """Built once per version of the generator (~7 s) and reused by later sessions and xdist workers: a
    folder named by a hash of scripts/shards.py, rebuilt whenever its stamp does not match (see
    build_fake_c4). Tests never write into it (copies are made with links, and files replaced, not edited)."""
    generator = hashlib.sha256((REPO_ROOT / "scripts" / "shards.py").read_bytes()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / f"aioc4-tests-{os.getuid()}"
    cache.mkdir(mode=0o700, exist_ok=True)
    with open(cache / "fake-c4.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another xdist worker may be building it
        return build_fake_c4(
            cache / f"fake-c4-{generator}",
            train_shards=TRAIN_SHARDS,
            docs_per_train_shard=DOCS_PER_TRAIN_SHARD,
            validation_shards=VALIDATION_SHARDS,
            docs_per_validation_shard=DOCS_PER_VALIDATION_SHARD,
        )


def shard_paths(repo: FakeRepo, split: str) -> list[str]:
    return sorted(path for path in repo.files if path.startswith(f"en/c4-{split}."))


@pytest.fixture(scope="session")
def source_lines(fake_repo: FakeRepo) -> Callable[[str], list[bytes]]:
    """Every document line of a split, in shard order: what 'the first N documents' are taken from."""
    cache: dict[str, list[bytes]] = {}

    def lines(split: str) -> list[bytes]:
        if split not in cache:
            cache[split] = [
                line
                for path in shard_paths(fake_repo, split)
                for line in iter_shard_lines(fake_repo.root / path)
            ]
        return cache[split]

    return lines


@pytest.fixture(scope="session")
def hub(fake_repo: FakeRepo) -> Iterator[HubServerProcess]:
    """The open repo; a tiny page size proves the tree listing is walked to the end."""
    with HubServerProcess(fake_repo.root, page_size=2) as server:
        yield server


@pytest.fixture(scope="session")
def s3() -> Iterator[MotoServerProcess]:
    with MotoServerProcess() as server:
        yield server


_bucket_numbers = itertools.count()


@pytest.fixture
def bucket(s3: MotoServerProcess) -> str:
    name = f"aioc4-test-{next(_bucket_numbers)}"
    asyncio.run(create_bucket(s3.endpoint, name))
    return name


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str
    cwd: Path

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("aioc4: error:")]


@dataclass
class Aioc4:
    """Runs the aioc4 CLI with a clean environment pointed at the local servers.

    A call runs the CLI in this process (see `run_in_process`): the environment, the working folder,
    stdout and stderr and the library state that a new interpreter would start with are set up for
    the call and put back afterwards, so a call sees what `python -m aioc4` would, without paying
    ~1.2 s of imports. `process()` and `popen()` run a real `python -m aioc4`, for what only a process
    shows (signals, kill -9, a terminal, the entry points, resource limits).
    """

    cwd: Path
    env: dict[str, str]

    def __call__(
        self, *args: str, env: Mapping[str, str | None] | None = None, timeout: float = 120
    ) -> Result:
        if _ALWAYS_SUBPROCESS:
            return self.process(*args, env=env, timeout=timeout)
        done = run_in_process(args, cwd=self.cwd, env=self._env_with(env), timeout=timeout)
        return Result(done.returncode, done.stdout, done.stderr, self.cwd)

    def process(
        self, *args: str, env: Mapping[str, str | None] | None = None, timeout: float = 120
    ) -> Result:
        """`python -m aioc4 ...` in a subprocess."""
        completed = subprocess.run(
            [sys.executable, "-m", "aioc4", *args],
            cwd=self.cwd,
            env=self._env_with(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return Result(completed.returncode, completed.stdout, completed.stderr, self.cwd)

    def _env_with(self, changes: Mapping[str, str | None] | None) -> dict[str, str]:
        run_env = dict(self.env)
        for name, value in (changes or {}).items():
            if value is None:
                run_env.pop(name, None)
            else:
                run_env[name] = value
        return run_env

    @staticmethod
    def command() -> list[str]:
        return [sys.executable, "-m", "aioc4"]

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "aioc4", *args],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 60) -> None:
    """Poll `predicate` until it holds: for an event a test waits on (a file, a server's counter)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


def clean_env(hub_endpoint: str, s3_env: Mapping[str, str], home: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(_ENV_PREFIXES_TO_DROP)}
    env.update(s3_env)
    env.update(
        {
            "HF_ENDPOINT": hub_endpoint,
            "HF_HOME": str(home / "hf-home"),  # no cached login, no shared cache
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "AWS_EC2_METADATA_DISABLED": "true",  # never ask 169.254.169.254 for credentials
            "AWS_CONFIG_FILE": str(home / "aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials"),
            "PYTHONPATH": str(REPO_ROOT),
        }
    )
    return env


@pytest.fixture
def aioc4(tmp_path: Path, hub: HubServerProcess, s3: MotoServerProcess) -> Aioc4:
    work = tmp_path / "work"
    work.mkdir()
    return Aioc4(cwd=work, env=clean_env(hub.endpoint, s3.env(), tmp_path))


def objects(s3: MotoServerProcess, bucket: str, prefix: str = "") -> dict[str, bytes]:
    """Every object but the job's manifest."""
    found = asyncio.run(list_objects(s3.endpoint, bucket, prefix))
    return {key: body for key, body in found.items() if not key.endswith(".manifest.json")}


def open_multipart_uploads(s3: MotoServerProcess, bucket: str) -> list[str]:
    return asyncio.run(list_multipart_uploads(s3.endpoint, bucket))


def parts_in(directory: Path) -> dict[str, bytes]:
    """Every file in a folder but the job's manifest (hidden temp files included, so leftovers are caught)."""
    return {
        path.name: path.read_bytes()
        for path in sorted(directory.iterdir())
        if not path.name.endswith(".manifest.json")
    }


def jsonl(lines: Sequence[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def split_expected(lines: Sequence[bytes], names: Sequence[str], size: int) -> dict[str, bytes]:
    """The exact content each part must have: consecutive runs of `size` documents."""
    return {name: jsonl(lines[i * size : (i + 1) * size]) for i, name in enumerate(names)}


@pytest.fixture
def hub_bytes(hub: HubServerProcess) -> Callable[[], int]:
    """Shard body bytes the Hub's storage sends from now on."""
    hub.reset_stats()

    def served() -> int:
        return int(hub.stats()["storage_body_bytes"])

    return served
