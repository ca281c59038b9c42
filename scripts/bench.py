"""Benchmark aioc4 against the tool it replaces and against the decode limit (`make bench`).

In one invocation: generates deterministic C4-format shards (cached under `.bench/`), starts the local
Hub (`scripts.hub_server`, plain and paced) and moto's S3 (`scripts.s3_server`) in their own processes,
and runs, as whole child processes timed from outside, on the same documents:

- `baseline`: `scripts/baseline_seed.py`, the replaced approach (`datasets` streaming, `json.dumps`,
  boto3 `upload_file`, one step at a time);
- `decode`: the decode limit, one process that only reads the shards from local disk, inflates them on
  one core with the fastest inflater available and splits lines (`--decode-limit N PATH...`);
- `aioc4`: `python -m aioc4`, with local output and with S3 output.

A scenario with one N times whole processes (docs/s = N / T); one with two N excludes start-up by
differencing: docs/s = (N2 - N1) / (T(N2) - T(N1)). Every figure is the median over `--rounds`. Peak RSS
comes from each child's own rusage (`os.wait4` in a small launcher process), Hub bytes from the
server's counters, and the local disk held by parts waiting for upload from polling the output folder
during S3 runs. MB are 10^6 bytes; MB/s counts the raw JSON bytes (with newlines) of the documents in
the source shards.

Flags: `--rounds R` (default 3), `--quick` (2 shards of 20k, small N), `--smoke` (2 shards of 1k, tiny N:
the harness's own test, `tests/test_bench.py`; its figures mean nothing), `--big` (adds
N=2M over 40 hard-linked shards, for memory), `--only SCENARIO` (repeatable), `--json [PATH]` (all
measurements; `-` or no PATH = stdout, the table then goes to stderr), `--check` (exit 1 when a target
is missed; a failed run always exits 1).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import itertools
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from scripts.shards import GZIP_LEVEL, FakeRepo, build_fake_c4, iter_shard_lines

if TYPE_CHECKING:  # imported when the servers start, so the decode-limit child stays light
    from scripts.hub_server import HubServerProcess
    from scripts.s3_server import MotoServerProcess

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO_ROOT / ".bench"
BUCKET = "aioc4-bench"
PACE_BYTES_PER_S = 20e6
"""The Hub's send rate in the Hub-bytes scenario, so socket buffers cannot hide over-reading."""
UPLOAD_WORKERS = 4
"""aioc4's default `--upload-workers`; parts on local disk should stay within 2 x this + 1."""
RSS_LIMIT_MB = 150.0
CORES = os.cpu_count() or 1
BULK_PROCS = max(2, CORES)
HUB_BYTES_FACTOR = 3.0
MB = 1e6
CHUNK = 1 << 18
"""Compressed bytes per read in the decode limit (256 KiB measured fastest)."""
CHILD_TIMEOUT_S = 1800.0
POLL_S = 0.02
BIG_SHARDS = 40
OUTPUTS = ("local", "s3")
TOOLS = ("decode", "baseline", "aioc4")


# ---------------------------------------------------------------------------------------- the decode limit


class _Inflater(Protocol):
    def decompress(self, data: bytes, /) -> bytes: ...


def fastest_inflater() -> tuple[str, Callable[[], _Inflater]]:
    """The fastest single-core gzip inflater installed: python-isal, else the standard zlib."""
    try:
        from isal import isal_zlib
    except ImportError:
        return "zlib", lambda: zlib.decompressobj(wbits=31)
    return "isal", lambda: isal_zlib.decompressobj(wbits=31)


def decode_limit(paths: Sequence[Path], n: int) -> tuple[int, int]:
    """Inflate the shards in order on one core and split lines until `n`: (lines, raw bytes with newlines)."""
    _, new_inflater = fastest_inflater()
    lines = done = 0
    for path in paths:
        inflater, tail = new_inflater(), b""
        with path.open("rb", buffering=0) as source:
            while chunk := source.read(CHUNK):
                out = inflater.decompress(chunk)
                pieces = out.split(b"\n")
                complete = len(tail) + len(out)
                pieces[0] = tail + pieces[0]
                tail = pieces.pop()
                if lines + len(pieces) >= n:
                    wanted = pieces[: n - lines]
                    return n, done + sum(map(len, wanted)) + len(wanted)
                lines += len(pieces)
                done += complete - len(tail)
    return lines, done


def decode_limit_main(values: Sequence[str]) -> None:
    """The child side of `--decode-limit N PATH...`: prints one JSON line with what it counted."""
    name, _ = fastest_inflater()
    lines, raw = decode_limit([Path(value) for value in values[1:]], int(values[0]))
    print(json.dumps({"lines": lines, "raw_bytes": raw, "inflater": name}), flush=True)


# --------------------------------------------------------------------------------------------- the shards


@dataclass(frozen=True)
class Shape:
    """One configuration: its shards, and the N of the scenarios that depend on them."""

    folder: str
    shards: int
    docs_per_shard: int
    all_shards_n: int
    one_shard_ns: tuple[int, int]
    several_shards_ns: tuple[int, int]
    part_lines: int
    docs_per_validation_shard: int = 1_000
    """The benchmark reads only train shards; `--smoke` keeps the validation split small."""


FULL_SHAPE = Shape("shards", 4, 50_000, 200_000, (5_000, 40_000), (20_000, 200_000), 10_000)
QUICK_SHAPE = Shape("shards-quick", 2, 20_000, 30_000, (1_000, 18_000), (1_000, 30_000), 5_000)
"""Its N are shared between scenarios, so that `--quick --rounds 1` takes about half a minute."""
SMOKE_SHAPE = Shape("shards-smoke", 2, 1_000, 2_000, (500, 1_000), (500, 2_000), 1_000, 20)
"""`--smoke`, the harness's own test (`tests/test_bench.py`), whose figures mean nothing: every scenario,
output and tool still runs, on two shards of 1k. Its N are the fewest distinct ones the scenarios allow
(500, 1k, 2k: one-shard differences 500..1k within a shard, shards 500..2k across both; startup and
hub-bytes keep their N=1k, a single part as the part size is 1k)."""


def train_shards(root: Path) -> list[Path]:
    return sorted((root / "en").glob("c4-train.*.json.gz"))


def build_shards(shape: Shape) -> FakeRepo:
    """The deterministic shards under `.bench/` (reused when already built with the same arguments)."""
    return build_fake_c4(
        BENCH_DIR / shape.folder,
        train_shards=shape.shards,
        docs_per_train_shard=shape.docs_per_shard,
        docs_per_validation_shard=shape.docs_per_validation_shard,
    )


def build_big_repo(source: FakeRepo, count: int) -> Path:
    """`count` train shards made of hard links to the real ones (only memory is measured on them)."""
    root = source.root.with_name(f"{source.root.name}-big{count}")
    shards = train_shards(source.root)
    wanted = {f"c4-train.{i:05d}-of-{count:05d}.json.gz": shards[i % len(shards)] for i in range(count)}
    (root / "en").mkdir(parents=True, exist_ok=True)
    for stale in (root / "en").iterdir():
        if stale.name not in wanted or not stale.samefile(wanted[stale.name]):
            stale.unlink()
    for name, original in wanted.items():
        if not (root / "en" / name).exists():
            os.link(original, root / "en" / name)
    for name in ("README.md", ".gitattributes"):
        shutil.copyfile(source.root / name, root / name)
    return root


class RawSizes:
    """Raw JSON bytes (newlines included) of the first n documents of a list of shards."""

    def __init__(self) -> None:
        self._whole: dict[tuple[int, int], tuple[int, int]] = {}

    def _shard(self, path: Path) -> tuple[int, int]:
        """(lines, bytes) of a whole shard, cached by inode so hard links are read once."""
        status = path.stat()
        key = (status.st_dev, status.st_ino)
        if key not in self._whole:
            self._whole[key] = decode_limit([path], sys.maxsize)
        return self._whole[key]

    def first(self, paths: Sequence[Path], n: int) -> int:
        total = 0
        for path in paths:
            lines, size = self._shard(path)
            if n <= lines:
                return total + (size if n == lines else decode_limit([path], n)[1])
            n, total = n - lines, total + size
        return total


def compressed_size(paths: Sequence[Path], n: int, docs_per_shard: int) -> dict[str, int]:
    """Two measures of the compressed size of the first n documents (`gzip`: the one the target uses)."""
    lines = itertools.islice((line for path in paths for line in iter_shard_lines(path)), n)
    data = b"".join(line + b"\n" for line in lines)
    return {
        "gzip": len(gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)),
        "proportional": paths[0].stat().st_size * n // docs_per_shard,
    }


# ---------------------------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    ns: tuple[int, ...]
    """One N: whole processes timed; two: the rate between them, (N2 - N1) / (T(N2) - T(N1))."""
    part_lines: int | None
    tools: tuple[str, ...] = TOOLS
    paced: bool = False
    big: bool = False

    @property
    def differenced(self) -> bool:
        return len(self.ns) == 2


def scenarios(shape: Shape) -> list[Scenario]:
    """The scenarios of the targets, sized for `shape` (`--quick` has two small shards)."""
    n_all, n_one, n_several, part = (
        shape.all_shards_n,
        shape.one_shard_ns,
        shape.several_shards_ns,
        shape.part_lines,
    )
    big_n = BIG_SHARDS * shape.docs_per_shard
    return [
        Scenario("all-shards", f"N={n_all:,} over all shards, parts of {part:,}", (n_all,), part),
        Scenario("one-shard", f"streaming within one shard, N={_ns_text(n_one)}", n_one, part),
        Scenario("shards", f"several shards, N={_ns_text(n_several)}", n_several, part),
        Scenario("startup", "start-up: N=1,000, one file", (1_000,), None),
        Scenario(
            "hub-bytes",
            f"N=1,000, Hub paced at {PACE_BYTES_PER_S / MB:g} MB/s",
            (1_000,),
            None,
            tools=("baseline", "aioc4"),
            paced=True,
        ),
        Scenario(
            "bulk",
            f"--num-samples all over {shape.shards} shards: {BULK_PROCS} processes against 1",
            (shape.shards * shape.docs_per_shard,),
            part,
            tools=("bulk-1", f"bulk-{BULK_PROCS}"),
        ),
        Scenario(
            "big",
            f"N={big_n:,} over {BIG_SHARDS} shards (hard links), memory",
            (big_n,),
            part,
            tools=("aioc4",),
            big=True,
        ),
    ]


@dataclass(frozen=True)
class RunSpec:
    """One child process to run; equal specs in one round are run once and shared by scenarios."""

    tool: str
    n: int
    output: str
    """`local`, `s3`, or `-` for the decode limit (which writes nothing)."""
    part_lines: int | None
    paced: bool
    big: bool


def spec_for(scenario: Scenario, tool: str, output: str, n: int) -> RunSpec:
    """The run a scenario needs; a part size of at least N is no split (one file, the same names)."""
    if tool == "decode":
        return RunSpec(tool, n, "-", None, paced=False, big=scenario.big)
    part_lines = scenario.part_lines if scenario.part_lines is not None and scenario.part_lines < n else None
    return RunSpec(tool, n, output, part_lines, paced=scenario.paced, big=scenario.big)


@dataclass
class Run:
    """What one child process did."""

    spec: RunSpec
    round: int
    seconds: float
    peak_rss_mb: float
    exit_code: int
    raw_bytes: int
    cpu_s: float = 0.0  # the tool's process
    server_cpu_s: float = 0.0  # the Hub server and (S3 runs) moto during the run: they share the cores
    hub_bytes: int | None = None
    out_bytes: int | None = None
    out_parts: int | None = None
    disk_max_parts: int | None = None
    disk_max_mb: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


# -------------------------------------------------------------------------------------- child processes


class DiskWatcher(threading.Thread):
    """Polls a folder while a child runs: the most part files (finished or being written) and bytes."""

    def __init__(self, folder: Path) -> None:
        super().__init__(name="disk-watcher", daemon=True)
        self.folder = folder
        self.max_parts = 0
        self.max_bytes = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(POLL_S):
            self.sample()

    def sample(self) -> None:
        parts = size = 0
        try:
            with os.scandir(self.folder) as entries:
                for entry in entries:
                    if ".jsonl" in entry.name:
                        size += self._size(entry)
                        parts += 1
        except FileNotFoundError:
            return
        self.max_parts, self.max_bytes = max(self.max_parts, parts), max(self.max_bytes, size)

    @staticmethod
    def _size(entry: os.DirEntry[str]) -> int:
        try:
            return entry.stat().st_size
        except FileNotFoundError:
            return 0

    def finish(self) -> None:
        self._stop_event.set()
        self.join()
        self.sample()


LAUNCHER = """
import json, os, signal, sys, time
started = time.perf_counter()
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGKILL))
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - started
with open(sys.argv[1], "w") as report:
    cpu = usage.ru_utime + usage.ru_stime
    json.dump({"seconds": seconds, "maxrss_kib": usage.ru_maxrss, "cpu_s": cpu, "status": status}, report)
"""
"""Runs the measured command and reports its wall time and rusage. A child's ru_maxrss starts from the
high-water RSS of the process it was spawned from (exec keeps the larger of the two), so the command is
spawned from this ~10 MB interpreter rather than from the benchmark, whose own RSS would leak in."""


@dataclass(frozen=True)
class ChildResult:
    seconds: float
    peak_rss_mb: float
    cpu_s: float
    exit_code: int
    stdout: str
    stderr: str


def run_child(command: Sequence[str], env: dict[str, str], cwd: Path) -> ChildResult:
    """Run a whole process through `LAUNCHER`: its wall time and its own peak RSS (KiB on Linux)."""
    report = cwd / "rusage.json"
    launcher = [sys.executable, "-I", "-S", "-c", LAUNCHER, str(report), *command]
    with (cwd / "stdout").open("w+b") as out, (cwd / "stderr").open("w+b") as err:
        process = subprocess.Popen(
            launcher, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err
        )
        try:
            process.wait(CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.terminate()  # the launcher kills the command
            process.wait()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if not report.exists():
        return ChildResult(CHILD_TIMEOUT_S, 0.0, 0.0, -9, stdout, stderr + "\nkilled: no answer in time")
    usage = json.loads(report.read_text(encoding="utf-8"))
    exit_code = os.waitstatus_to_exitcode(usage["status"])
    return ChildResult(
        usage["seconds"], usage["maxrss_kib"] * 1024 / MB, usage["cpu_s"], exit_code, stdout, stderr
    )


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU a running process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_env(hub_endpoint: str, s3_env: dict[str, str], home: Path) -> dict[str, str]:
    """A clean environment pointed at the local servers (as `tests/conftest.py::clean_env`)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("HF_", "AWS_"))}
    env.update(s3_env)
    env.update(
        {
            "HF_ENDPOINT": hub_endpoint,
            "HF_HOME": str(home / "hf-home"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(home / "aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials"),
            "PYTHONPATH": str(REPO_ROOT),
        }
    )
    return env


def tool_command(spec: RunSpec, out_dir: Path, shards: Sequence[Path]) -> list[str]:
    if spec.tool == "decode":
        return [sys.executable, "-m", "scripts.bench", "--decode-limit", str(spec.n), *map(str, shards)]
    module = "scripts.baseline_seed" if spec.tool == "baseline" else "aioc4"
    count = str(spec.n)
    if spec.tool.startswith("bulk-"):  # a bulk pull of every shard, in that many processes
        count = "all"
        module += f" --procs {spec.tool.removeprefix('bulk-')}"
    command = [sys.executable, "-m", *module.split(), "--num-samples", count, "--output-dir", str(out_dir)]
    if spec.part_lines is not None:
        command += ["--max-lines-per-file", str(spec.part_lines)]
    if spec.output == "s3":
        command += ["--s3-path", f"s3://{BUCKET}/{spec.tool}-{spec.n}"]
    return command


def expected_parts(spec: RunSpec) -> int:
    return 1 if spec.part_lines is None else -(-spec.n // spec.part_lines)


def local_output(out_dir: Path) -> tuple[int, int, int]:
    """(parts, bytes, lines) of the JSONL parts in a folder."""
    parts = size = lines = 0
    for path in out_dir.glob("*.jsonl"):
        parts += 1
        size += path.stat().st_size
        with path.open("rb") as part:
            lines += sum(block.count(b"\n") for block in iter(lambda: part.read(CHUNK), b""))
    return parts, size, lines


class BucketClient:
    """The harness's own S3 calls (between runs, never timed), on one client kept open on one event loop:
    a new aiobotocore client costs ~0.5 s of CPU, which two per S3 run used to add to the benchmark."""

    def __init__(self, stack: ExitStack, endpoint: str) -> None:
        from scripts.s3_server import s3_client

        self._runner = stack.enter_context(asyncio.Runner())
        exits = AsyncExitStack()
        self._client: Any = self._runner.run(exits.enter_async_context(s3_client(endpoint)))
        stack.callback(self._runner.run, exits.aclose())

    def create_bucket(self) -> None:
        self._runner.run(self._client.create_bucket(Bucket=BUCKET))

    def parts(self) -> dict[str, int]:
        """Size of each `.jsonl` object in the bucket."""
        return self._runner.run(self._parts())

    async def _parts(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        async for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            sizes.update({item["Key"]: item["Size"] for item in page.get("Contents", [])})
        return {key: size for key, size in sizes.items() if key.endswith(".jsonl")}


# -------------------------------------------------------------------------------------------- the servers


class Servers:
    """The local Hub (plain, paced, and the big repo with `--big`) and moto's S3, in their own processes
    (started by `start_servers`)."""

    def __init__(self, root: Path, big_root: Path | None) -> None:
        from scripts.hub_server import HubServerProcess
        from scripts.s3_server import MotoServerProcess

        self.hub = HubServerProcess(root)
        self.paced = HubServerProcess(root, pace_bytes_per_s=PACE_BYTES_PER_S)
        self.big = None if big_root is None else HubServerProcess(big_root, startup_timeout_s=120)
        self.s3 = MotoServerProcess()
        self._bucket: BucketClient | None = None

    @property
    def processes(self) -> list[HubServerProcess | MotoServerProcess]:
        return [server for server in (self.hub, self.paced, self.big, self.s3) if server is not None]

    @property
    def bucket(self) -> BucketClient:
        assert self._bucket is not None, "start_servers() opens the bucket client"
        return self._bucket

    def hub_for(self, spec: RunSpec) -> HubServerProcess:
        if spec.big:
            assert self.big is not None
            return self.big
        return self.paced if spec.paced else self.hub

    def fresh_bucket(self) -> None:
        """Moto keeps every object in memory, also after deletes: empty it before each S3 run."""
        self.s3.reset()
        self.bucket.create_bucket()

    def bucket_parts(self) -> dict[str, int]:
        return self.bucket.parts()


def start_servers(stack: ExitStack, root: Path, big_root: Path | None, sets: int) -> list[Servers]:
    """`sets` independent sets of servers (one per `--jobs` slot), all started side by side."""
    started = [Servers(root, big_root) for _ in range(sets)]
    processes = [process for servers in started for process in servers.processes]
    for process in processes:  # stop() does nothing for a server that did not start
        stack.callback(process.stop)
    with ThreadPoolExecutor(len(processes)) as pool:  # each start() waits for its own child
        for future in [pool.submit(process.start) for process in processes]:
            future.result()
    for servers in started:
        servers._bucket = BucketClient(stack, servers.s3.endpoint)
    return started


# -------------------------------------------------------------------------------------------- measuring


@dataclass
class Bench:
    """Runs specs as child processes against the servers and checks that each did the work."""

    servers: Servers
    shards: list[Path]
    big_shards: list[Path]
    work: Path
    sizes: RawSizes = field(default_factory=RawSizes)

    def shards_for(self, spec: RunSpec) -> list[Path]:
        return self.big_shards if spec.big else self.shards

    def measure(self, spec: RunSpec, round_index: int) -> Run:
        folder = Path(tempfile.mkdtemp(prefix=f"{spec.tool}-{spec.n}-", dir=self.work))
        try:
            return self._measure_in(folder, spec, round_index)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _measure_in(self, folder: Path, spec: RunSpec, round_index: int) -> Run:
        out_dir = folder / "out"
        hub = None if spec.tool == "decode" else self.servers.hub_for(spec)
        if spec.output == "s3":
            self.servers.fresh_bucket()
        if hub is not None:
            hub.reset_stats()
        env = child_env((hub or self.servers.hub).endpoint, self.servers.s3.env(), folder)
        watcher = DiskWatcher(out_dir) if spec.output == "s3" else None
        servers = [server.pid for server in (hub, self.servers.s3 if spec.output == "s3" else None) if server]
        if watcher is not None:
            watcher.start()
        servers_before = sum(map(process_cpu_seconds, servers))
        child = run_child(tool_command(spec, out_dir, self.shards_for(spec)), env, folder)
        server_cpu_s = sum(map(process_cpu_seconds, servers)) - servers_before
        if watcher is not None:
            watcher.finish()
        run = Run(
            spec,
            round_index,
            child.seconds,
            child.peak_rss_mb,
            child.exit_code,
            raw_bytes=self.sizes.first(self.shards_for(spec), spec.n),
            cpu_s=child.cpu_s,
            server_cpu_s=server_cpu_s,
            hub_bytes=None if hub is None else int(hub.stats()["storage_body_bytes"]),
        )
        if watcher is not None:
            run.disk_max_parts, run.disk_max_mb = watcher.max_parts, watcher.max_bytes / MB
        run.error = self._check(run, child, out_dir)
        return run

    def _check(self, run: Run, child: ChildResult, out_dir: Path) -> str | None:
        """None when the child did the whole job, else what went wrong (with the end of its stderr)."""
        spec = run.spec
        if child.exit_code != 0:
            return f"exit code {child.exit_code}: {child.stderr[-2000:].strip()}"
        if spec.tool == "decode":
            counted = json.loads(child.stdout.splitlines()[-1])["lines"]
            return None if counted == spec.n else f"decode limit counted {counted} lines"
        if spec.output == "local":
            run.out_parts, run.out_bytes, lines = local_output(out_dir)
            if lines != spec.n:
                return f"{lines} lines written, expected {spec.n}"
        else:
            objects = self.servers.bucket_parts()
            run.out_parts, run.out_bytes = len(objects), sum(objects.values())
        if run.out_parts != expected_parts(spec):
            return f"{run.out_parts} parts, expected {expected_parts(spec)}"
        return None


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def describe(run: Run) -> str:
    spec = run.spec
    hub = "" if run.hub_bytes is None else f", Hub {run.hub_bytes / MB:.2f} MB"
    disk = "" if run.disk_max_parts is None else f", <= {run.disk_max_parts} parts on disk"
    head = f"[round {run.round + 1}] {spec.tool:<8} N={spec.n:<9,} {spec.output:<5}"
    verdict = f"FAILED: {run.error}" if run.error else f"{run.peak_rss_mb:.0f} MB RSS{hub}{disk}"
    return f"{head} {run.seconds:7.2f} s, {verdict}"


def run_rounds(benches: Sequence[Bench], chosen: Sequence[Scenario], rounds: int) -> list[Run]:
    """Every spec of every scenario once per round, in scenario order; shared specs run once.

    With one bench (the default), one child at a time. With several (`--smoke --jobs J`), as many
    children side by side, each bench with its own servers, so Hub bytes, server CPU and the bucket
    stay per run; only the times (and so every rate) are distorted by the sharing of the cores."""
    keys = list(
        dict.fromkeys(
            (round_index, spec_for(scenario, tool, output, n))
            for round_index in range(rounds)
            for scenario in chosen
            for output, n, tool in itertools.product(OUTPUTS, scenario.ns, scenario.tools)
        )
    )
    idle: queue.SimpleQueue[Bench] = queue.SimpleQueue()
    for bench in benches:
        idle.put(bench)

    def measure(key: tuple[int, RunSpec]) -> Run:
        bench = idle.get()
        try:
            run = bench.measure(key[1], key[0])
        finally:
            idle.put(bench)
        log(describe(run))
        return run

    if len(benches) == 1:
        return [measure(key) for key in keys]
    with ThreadPoolExecutor(len(benches)) as pool:
        return list(pool.map(measure, keys))


# -------------------------------------------------------------------------------------------- results


def median(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator


@dataclass
class ToolFigures:
    """One tool in one scenario and output: per-round figures and their medians."""

    tool: str
    docs_per_s_by_round: list[float | None]
    mb_per_s_by_round: list[float | None]
    seconds: dict[int, list[float]]
    peak_rss_mb: list[float]
    hub_bytes: list[int]
    disk_max_parts: list[int]
    cpu_us_per_doc_by_round: list[float | None]
    docs_per_s: float | None = None
    mb_per_s: float | None = None
    median_seconds: dict[int, float | None] = field(default_factory=dict)
    median_peak_rss_mb: float | None = None
    median_hub_bytes: float | None = None
    cpu_us_per_doc: float | None = None

    @property
    def cpu_ceiling_docs_per_s(self) -> float | None:
        """The rate if every core of the machine were busy with this work and nothing else."""
        return None if not self.cpu_us_per_doc else CORES * 1e6 / self.cpu_us_per_doc

    def __post_init__(self) -> None:
        self.cpu_us_per_doc = median(self.cpu_us_per_doc_by_round)
        self.docs_per_s = median(self.docs_per_s_by_round)
        self.mb_per_s = median(self.mb_per_s_by_round)
        self.median_seconds = {n: median(times) for n, times in self.seconds.items()}
        self.median_peak_rss_mb = median(self.peak_rss_mb)
        self.median_hub_bytes = median(self.hub_bytes)


def round_rate(ns: Sequence[int], runs: Sequence[Run]) -> tuple[float | None, float | None]:
    """(docs/s, MB/s) of one round: N / T, or the difference of two runs; None when a run failed.

    When start-up noise is larger than the work between the two N (the larger run was not slower:
    small N on a busy machine), the larger run's whole-process rate stands in: a lower bound, as it
    includes start-up."""
    if not all(run.ok for run in runs):
        return None, None
    elapsed = runs[-1].seconds - runs[0].seconds if len(runs) > 1 else 0.0
    if elapsed <= 0:
        return ns[-1] / runs[-1].seconds, runs[-1].raw_bytes / runs[-1].seconds / MB
    return (ns[1] - ns[0]) / elapsed, (runs[1].raw_bytes - runs[0].raw_bytes) / elapsed / MB


def round_cpu_per_doc(ns: Sequence[int], runs: Sequence[Run]) -> float | None:
    """CPU microseconds per document over all processes (tool, Hub, S3), differenced like the rate."""
    if not all(run.ok for run in runs):
        return None
    spent = [run.cpu_s + run.server_cpu_s for run in runs]
    if len(runs) == 1:
        return spent[0] / ns[0] * 1e6
    return (spent[1] - spent[0]) / (ns[1] - ns[0]) * 1e6 if spent[1] > spent[0] else None


def tool_figures(scenario: Scenario, tool: str, output: str, runs: Sequence[Run]) -> ToolFigures:
    by_key = {(run.round, run.spec): run for run in runs}
    rounds = sorted({run.round for run in runs})
    rows = [[by_key[(r, spec_for(scenario, tool, output, n))] for n in scenario.ns] for r in rounds]
    rates = [round_rate(scenario.ns, row) for row in rows]
    mine = [run for row in rows for run in row if run.ok]
    return ToolFigures(
        tool,
        [rate for rate, _ in rates],
        [mb for _, mb in rates],
        {n: [run.seconds for run in mine if run.spec.n == n] for n in scenario.ns},
        [run.peak_rss_mb for run in mine],
        [run.hub_bytes for run in mine if run.hub_bytes is not None and run.spec.n == scenario.ns[-1]],
        [run.disk_max_parts for run in mine if run.disk_max_parts is not None],
        [round_cpu_per_doc(scenario.ns, row) for row in rows],
    )


@dataclass
class ScenarioResult:
    scenario: Scenario
    output: str
    tools: dict[str, ToolFigures]

    def rate(self, tool: str) -> float | None:
        figures = self.tools.get(tool)
        return None if figures is None else figures.docs_per_s

    @property
    def ratio_vs_baseline(self) -> float | None:
        return ratio(self.rate("aioc4"), self.rate("baseline"))

    @property
    def ratio_vs_decode_limit(self) -> float | None:
        return ratio(self.rate("aioc4"), self.rate("decode"))

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.scenario.name,
            "title": self.scenario.title,
            "output": self.output,
            "ns": list(self.scenario.ns),
            "part_lines": self.scenario.part_lines,
            "rate": "difference of two runs" if self.scenario.differenced else "whole process",
            "tools": {tool: asdict(figures) for tool, figures in self.tools.items()},
            "ratio_vs_baseline": self.ratio_vs_baseline,
            "ratio_vs_decode_limit": self.ratio_vs_decode_limit,
        }


def scenario_results(chosen: Sequence[Scenario], runs: Sequence[Run]) -> list[ScenarioResult]:
    return [
        ScenarioResult(s, output, {tool: tool_figures(s, tool, output, runs) for tool in s.tools})
        for s in chosen
        for output in OUTPUTS
    ]


# ---------------------------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    value: float | None
    op: str
    limit: float
    unit: str
    scenario: str | None = None
    output: str | None = None

    @property
    def met(self) -> bool | None:
        """None when not measured (scenario not run, or every run failed)."""
        if self.value is None:
            return None
        return {"<": self.value < self.limit, "<=": self.value <= self.limit, ">=": self.value >= self.limit}[
            self.op
        ]

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}


def _find(results: Sequence[ScenarioResult], name: str, output: str) -> ScenarioResult | None:
    return next((r for r in results if r.scenario.name == name and r.output == output), None)


def _ratio_target(
    results: Sequence[ScenarioResult], name: str, output: str, versus: str, limit: float, text: str
) -> Target:
    found = _find(results, name, output)
    value = None
    if found is not None:
        value = found.ratio_vs_baseline if versus == "baseline" else found.ratio_vs_decode_limit
    return Target(f"{name}-{output}-vs-{versus}", text, value, ">=", limit, "x", name, output)


def _startup_target(results: Sequence[ScenarioResult]) -> Target:
    found = _find(results, "startup", "local")
    value = None
    if found is not None:
        times = [found.tools[tool].median_seconds.get(1_000) for tool in ("aioc4", "baseline")]
        value = ratio(times[0], times[1])
    text = "wall time of --num-samples 1000 to a local folder, aioc4 / baseline"
    return Target("startup-local-time", text, value, "<=", 0.6, "x", "startup", "local")


def _run_target(name: str, text: str, values: Sequence[float], op: str, limit: float, unit: str) -> Target:
    return Target(name, text, max(values) if values else None, op, limit, unit)


def targets(results: Sequence[ScenarioResult], runs: Sequence[Run], compressed_1k: int) -> list[Target]:
    """Each target of the issue with its measured value (medians; maxima over runs for bounds)."""
    mine = [run for run in runs if run.ok and run.spec.tool == "aioc4"]
    bound = 2 * UPLOAD_WORKERS + 1
    return [
        _ratio_target(results, "all-shards", "s3", "baseline", 5.0, "docs/s to S3, aioc4 / baseline"),
        _ratio_target(results, "one-shard", "local", "decode", 0.7, "docs/s within one shard, vs decode"),
        _ratio_target(results, "shards", "local", "decode", 1.4, "docs/s over several shards, vs decode"),
        _startup_target(results),
        _run_target(
            "peak-rss",
            "peak RSS of every aioc4 run (N = 1k, 200k, 2M with --big), max",
            [run.peak_rss_mb for run in mine],
            "<",
            RSS_LIMIT_MB,
            "MB",
        ),
        _run_target(
            "parts-on-disk",
            f"parts on local disk during aioc4 S3 runs, max (2 x {UPLOAD_WORKERS} upload workers + 1)",
            [run.disk_max_parts for run in mine if run.disk_max_parts is not None],
            "<=",
            bound,
            "parts",
        ),
        _run_target(
            "hub-bytes",
            f"Hub bytes for N=1000 (paced), max / gzip of those documents ({compressed_1k:,} B)",
            [run.hub_bytes / compressed_1k for run in mine if run.spec.paced and run.hub_bytes is not None],
            "<",
            HUB_BYTES_FACTOR,
            "x",
        ),
    ]


# ---------------------------------------------------------------------------------------------- the table


def tool_title(tool: str) -> str:
    titles = {
        "baseline": "baseline (datasets + boto3)",
        "decode": f"decode limit ({fastest_inflater()[0]}, 1 core)",
        "bulk-1": "aioc4 all, 1 process",
        f"bulk-{BULK_PROCS}": f"aioc4 all, {BULK_PROCS} processes",
    }
    return titles.get(tool, tool)


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _row_target(result: ScenarioResult, found: Sequence[Target]) -> str:
    mine = [t for t in found if t.scenario == result.scenario.name and t.output == result.output]
    return "; ".join(f"{t.op}{t.limit:g}{t.unit} {_verdict(t.met)}" for t in mine)


def _verdict(met: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "n/a"}[met]


def _ns_text(ns: Sequence[int]) -> str:
    return "..".join(f"{n:,}" for n in ns)


def table(results: Sequence[ScenarioResult], found: Sequence[Target]) -> str:
    """One row per scenario, output and tool (the decode limit once per scenario), then the targets."""
    head = (
        "scenario", "output", "what", "N", "docs/s", "MB/s", "RSS MB", "Hub MB", "CPU us/doc", "CPU cap",
        "x base", "x decode",
    )  # fmt: skip
    rows: list[tuple[str, ...]] = []
    for result in results:
        for tool, figures in result.tools.items():
            if tool == "decode" and result.output != OUTPUTS[0]:
                continue
            is_aioc4 = tool == "aioc4"
            rows.append(
                (
                    result.scenario.name,
                    "-" if tool == "decode" else result.output,
                    tool_title(tool),
                    _ns_text(result.scenario.ns),
                    _num(figures.docs_per_s),
                    _num(figures.mb_per_s, 1),
                    _num(figures.median_peak_rss_mb, 0),
                    _num(None if figures.median_hub_bytes is None else figures.median_hub_bytes / MB, 2),
                    _num(figures.cpu_us_per_doc, 1),
                    _num(figures.cpu_ceiling_docs_per_s),
                    _num(result.ratio_vs_baseline, 2) if is_aioc4 else "",
                    _num(result.ratio_vs_decode_limit, 2) if is_aioc4 else "",
                    _row_target(result, found) if is_aioc4 else "",
                )
            )
    widths = [max(len(row[i]) for row in [(*head, "target"), *rows]) for i in range(len(head) + 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    header = "  ".join(cell.ljust(width) for cell, width in zip((*head, "target"), widths, strict=True))
    return "\n".join(
        [header, "-" * len(header), *lines, "", "targets:", *map(_target_line, found), *_ceilings(results)]
    )


def _bulk_lines(results: Sequence[ScenarioResult]) -> list[str]:
    """Bulk pulls: what the processes buy over one process, for each output."""
    lines = []
    for result in results:
        if result.scenario.name == "bulk":
            one, many = result.rate("bulk-1"), result.rate(f"bulk-{BULK_PROCS}")
            lines.append(
                f"bulk pull, {result.output}: {BULK_PROCS} processes {_num(many)} docs/s, 1 process "
                f"{_num(one)} docs/s = {_num(ratio(many, one), 2)} x"
            )
    return lines


def _ceilings(results: Sequence[ScenarioResult]) -> list[str]:
    """What the machine allows: aioc4's rate if all its cores did nothing but this run's work (its CPU
    per document summed over aioc4, the Hub server and moto), as the same ratios as the targets."""
    lines = _bulk_lines(results)
    lines += [f"CPU caps ({CORES} cores; CPU us/doc of aioc4 + Hub server + moto, all on this machine):"]
    for result in results:
        cap = result.tools["aioc4"].cpu_ceiling_docs_per_s if "aioc4" in result.tools else None
        if cap is None:
            continue
        versus = [
            f"{_num(ratio(cap, result.rate(tool)), 2)} x {tool}"
            for tool in ("baseline", "decode")
            if result.rate(tool)
        ]
        lines.append(
            f"  {result.scenario.name:<11} {result.output:<6} {cap:>9,.0f} docs/s = {', '.join(versus)}"
        )
    return lines


def _target_line(target: Target) -> str:
    value = "not measured" if target.value is None else f"{target.value:,.2f} {target.unit}"
    limit = f"{target.op} {target.limit:g} {target.unit}"
    return (
        f"  {_verdict(target.met):<4}  {target.name:<28} {value:>14}  (target {limit}): {target.description}"
    )


# -------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds; figures are medians (default 3)")
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--quick", action="store_true", help="small configuration (2 shards of 20k)")
    shape.add_argument(
        "--smoke", action="store_true", help="tiny configuration (2 shards of 1k) that only tests the harness"
    )
    parser.add_argument("--big", action="store_true", help="also N=2M over 40 shards (memory, ~minutes)")
    parser.add_argument(
        "--only", action="append", metavar="SCENARIO", help="run only this scenario (repeatable)"
    )
    parser.add_argument(
        "--json", nargs="?", const="-", metavar="PATH", help="write all measurements as JSON (- = stdout)"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is not met")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="J",
        help="with --smoke: J children at a time, each with its own servers (distorts every figure)",
    )
    parser.add_argument("--decode-limit", nargs="+", metavar="N PATH", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.jobs > 1 and not args.smoke:
        parser.error("--jobs runs children side by side, which distorts every figure: only with --smoke")
    return args


def choose(all_scenarios: Sequence[Scenario], args: argparse.Namespace) -> list[Scenario]:
    """The scenarios asked for: `--only` (which may name `big`), else all but `big` unless `--big`."""
    known = {s.name for s in all_scenarios}
    unknown = sorted(set(args.only or ()) - known)
    if unknown:
        raise SystemExit(
            f"bench: unknown scenario(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    if args.only:
        return [s for s in all_scenarios if s.name in args.only]
    return [s for s in all_scenarios if args.big or not s.big]


def report(
    args: argparse.Namespace, config: dict[str, Any], runs: Sequence[Run], results: Sequence[ScenarioResult]
) -> list[Target]:
    found = targets(results, runs, config["compressed_first_1000"]["gzip"])
    text = table(results, found)
    print(text, file=sys.stderr if args.json == "-" else sys.stdout, flush=True)
    if args.json is not None:
        document = {
            "config": config,
            "runs": [{**asdict(run), "ok": run.ok} for run in runs],
            "scenarios": [result.as_json() for result in results],
            "targets": [target.as_json() for target in found],
            "all_targets_met": all(target.met for target in found),
            "failed_runs": sum(not run.ok for run in runs),
            "table": text,
        }
        encoded = json.dumps(document, indent=1)
        if args.json == "-":
            print(encoded, flush=True)
        else:
            Path(args.json).write_text(encoded + "\n", encoding="utf-8")
    return found


def prepare(shape: Shape, chosen: Sequence[Scenario]) -> tuple[FakeRepo, Path | None]:
    """The shards (built once, then reused from `.bench/`), and the big repo if a scenario needs it."""
    log(f"shards: {shape.shards} x {shape.docs_per_shard:,} documents in {BENCH_DIR / shape.folder}")
    repo = build_shards(shape)
    big_root = build_big_repo(repo, BIG_SHARDS) if any(s.big for s in chosen) else None
    return repo, big_root


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.decode_limit:
        decode_limit_main(args.decode_limit)
        return 0
    started = time.perf_counter()
    shape = SMOKE_SHAPE if args.smoke else QUICK_SHAPE if args.quick else FULL_SHAPE
    chosen = choose(scenarios(shape), args)
    repo, big_root = prepare(shape, chosen)
    shards = train_shards(repo.root)
    config: dict[str, Any] = {
        "rounds": args.rounds,
        "quick": args.quick,
        "smoke": args.smoke,
        "jobs": args.jobs,
        "shards": {"count": shape.shards, "docs_per_shard": shape.docs_per_shard, "root": str(repo.root)},
        "inflater": fastest_inflater()[0],
        "pace_bytes_per_s": PACE_BYTES_PER_S,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "compressed_first_1000": compressed_size(shards, 1_000, shape.docs_per_shard),
        "compressed_first_1000_used": "gzip of the first 1000 lines at the shard's level "
        f"({GZIP_LEVEL}); proportional = shard bytes x 1000 / docs in shard",
    }
    BENCH_DIR.joinpath("work").mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=BENCH_DIR / "work")))
        big_shards = train_shards(big_root) if big_root is not None else []
        benches = [
            Bench(servers, shards, big_shards, work)
            for servers in start_servers(stack, repo.root, big_root, args.jobs)
        ]
        runs = run_rounds(benches, chosen, args.rounds)
    config["wall_seconds"] = time.perf_counter() - started
    found = report(args, config, runs, scenario_results(chosen, runs))
    log(f"benchmark took {config['wall_seconds']:.0f} s")
    failed = any(not run.ok for run in runs)
    return 1 if failed or (args.check and not all(target.met for target in found)) else 0


if __name__ == "__main__":
    sys.exit(main())
