"""Benchmark aioc4 against the tool it replaces, the decode limit and the network model (`make bench`).

In one invocation: generates deterministic C4-format shards (cached under `.bench/`), starts in their own
processes the local Hub (`scripts.hub_server`), moto's S3 (`scripts.s3_server`) and, as the chosen
scenarios need them, a second Hub on the network model and the pacing proxy (`scripts.s3_fault_proxy`) in
front of moto twice (pacing off, and on the model); then runs, as whole child processes timed from
outside, on the same documents:

- `baseline`: `scripts/baseline_seed.py`, the replaced approach (`datasets` streaming, `json.dumps`,
  boto3 `upload_file`, one step at a time);
- `decode`: the decode limit, one process that only reads the shards from local disk, inflates them on
  one core with the fastest inflater available and splits lines (`--decode-limit N PATH...`);
- `check`: the check limit (`one-shard` and `shards`), the work aioc4 must do per document in one plain
  loop on one core: the decode limit's reading and inflating through aioc4's own decoder, aioc4's check
  of every line (valid UTF-8, one JSON object with a string `text`), the CRC-32 of every block and one
  write of it to a file (`--check-limit N PATH...`). What aioc4 spends beyond it is its own overhead:
  the download, moving bytes between processes, stitching parts;
- `check-cores` (`shards`): the check limit on every core, as aioc4 spreads a count job: each shard
  that holds some of the first N documents checked by one of up to one process per core (shard k by
  process k mod P), all at once (`--check-cores COUNT:PATH...`). Its rate is what that work alone
  reaches on this machine's cores, and its CPU per document what it costs there (cores running at
  once share caches and memory bandwidth, and on a VM maybe a physical core);
- `aioc4`: `python -m aioc4`, with local output and with S3 output.

The network model: on loopback one connection carries GB/s, where on EC2 one connection to the Hub's
storage CDN carries ~40-60 MB/s (huggingface_hub#2658) and one S3 request ~85-90 MB/s (AWS's S3
performance whitepaper). At this machine's scale that is 5 MB/s per connection and 20 ms before each
response (`MODEL`), on the Hub's storage and on S3 alike: the Hub on the model paces each storage body
on its own and holds every Hub and storage response; the proxy on the model paces each request body and
each response body on its own and holds every answer.

The scenarios:

- `all-shards`, `one-shard`, `shards`, `startup`: aioc4 against the baseline and the decode limit on
  loopback, to a local folder and to S3 (over all shards; within one shard; across several; N=1000);
- `hub-model`: aioc4's `shards` runs to a local folder on the Hub on the model, against the same runs on
  the plain Hub (shared with `shards` when both run): what a slow connection costs the reader;
- `s3-model`: aioc4 to S3 over the same N pair, with the bench's part size, through the proxy on the
  model against the same runs through the same proxy with pacing off, the Hub unpaced in both. The
  unpaced runs go through a proxy too so that both pay its CPU and its copy of every body: the ratio
  isolates the network model from the proxy's own cost;
- `hub-bytes`: N=1000 from the Hub on the model, the bytes the Hub serves against the gzip size of those
  documents (slow, so socket buffers cannot hide over-reading);
- `procs`: the `shards` runs to a local folder, aioc4 with `--procs 1` against aioc4 with its default
  (no `--procs`: as many processes as it chooses), each N of the one right after the same N of the
  other in every round: more processes must never be slower than one (`x 1 process`, under the table);
- `bulk`: `--num-samples all` over every shard, in several processes and in one;
- `big` (only with `--big` or `--only big`): N=2M over 40 hard-linked shards, for memory.

A paired scenario (`hub-model`, `s3-model`) runs each run on the model right after the same run unpaced,
in every round, so machine noise hits both alike, and reports aioc4's rate on the model over its rate
unpaced (`x unpaced`). Every row shows the most requests a run kept in flight at once each way (`at once
Hub/S3`): Hub storage responses from the Hub server's counter, S3 requests from the proxy's when it
counts them ("-" otherwise, and for S3 runs straight to moto).

A scenario with one N times whole processes (docs/s = N / T); one with two N excludes start-up by
differencing: docs/s = (N2 - N1) / (T(N2) - T(N1)). Every figure is the median over `--rounds`. A run's
peak RSS is its whole process tree's: the most the tool's process and all its descendants held at once,
summed (VmRSS polled every 20 ms, leaving out a child forked but not yet exec'd, whose pages are its
parent's; ru_maxrss, the largest single process, when larger). Its CPU is the
tool's process tree's from rusage (`os.wait4` in a small launcher process, which counts every child the
tool reaped); `CPU us/doc` adds the Hub server's, moto's and the proxy's, `tool us/doc` does not. Hub
bytes come from the server's counters, and the local disk held by parts waiting for upload from polling
the output folder during S3 runs. MB are 10^6 bytes; MB/s counts the raw JSON bytes (with newlines) of
the documents in the source shards.

Flags: `--rounds R` (default 3), `--quick` (2 shards of 20k, small N), `--one-part` (every run writes
one part, as the original tool does without `--max-lines-per-file`), `--smoke` (2 shards of 1k, tiny N:
the harness's own test, `tests/test_bench.py`; its figures mean nothing), `--big` (adds
N=2M over 40 hard-linked shards, for memory), `--only SCENARIO` (repeatable), `--json [PATH]` (all
measurements; `-` or no PATH = stdout, the table then goes to stderr), `--check` (exit 1 when a target
is missed; a failed run always exits 1).
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from scripts.shards import GZIP_LEVEL, FakeRepo, build_fake_c4, iter_shard_lines

if TYPE_CHECKING:  # imported when the servers start, so the decode-limit child stays light
    from scripts.hub_server import HubServerProcess
    from scripts.s3_fault_proxy import S3FaultProxyProcess
    from scripts.s3_server import MotoServerProcess

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO_ROOT / ".bench"
BUCKET = "aioc4-bench"
UPLOAD_WORKERS = 8
"""aioc4's default `--upload-workers`; parts on local disk should stay within 2 x this + 1."""
RSS_LIMIT_MB = 150.0
CORES = os.cpu_count() or 1
BULK_PROCS = max(2, CORES)
HUB_BYTES_FACTOR = 3.0
MODEL_RATIO = 0.8
"""A rate on the network model, at least this share of the same rate unpaced."""
TOOL_CPU_FACTOR = 1.5
"""aioc4's own CPU per document (its process tree, no servers), at most this many times the decode
limit's, over several shards to a local folder."""
MB = 1e6
CHUNK = 1 << 18
"""Compressed bytes per read in the decode limit (256 KiB measured fastest)."""
CHILD_TIMEOUT_S = 1800.0
POLL_S = 0.02
BIG_SHARDS = 40
OUTPUTS = ("local", "s3")
TOOLS = ("decode", "baseline", "aioc4")
CHECK_CORES = "check-cores"
LIMITS = ("decode", "check", CHECK_CORES)
"""The references that read the shards from local disk and write no parts (output `-`)."""
WITH_CHECK = ("decode", "check", "baseline", "aioc4")
WITH_CHECK_CORES = ("decode", "check", CHECK_CORES, "baseline", "aioc4")
PROCS_ONE, PROCS_DEFAULT = "procs-1", "procs-default"
"""The `procs` scenario's tools: aioc4 with `--procs 1`, and aioc4 without `--procs` (its default)."""
COUNT_TOOLS = ("aioc4", PROCS_ONE, PROCS_DEFAULT)
"""The tools that run aioc4 on `--num-samples N` (not a bulk pull)."""


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


def check_limit(paths: Sequence[Path], n: int, sink: int) -> tuple[int, int]:
    """aioc4's per-document work in one loop on one core until `n` lines: inflate (its decoder), check
    and number every line (`ShardLines`, as a decode process does), CRC-32 and write each block to
    `sink`. The block holding line `n` is checked whole, as aioc4 checks it: (lines, raw bytes)."""
    from aioc4.checksum import crc32
    from aioc4.decode import GzipLineDecoder, ShardLines

    lines = done = 0
    for path in paths:
        decoder, numbering = GzipLineDecoder(path.name), ShardLines(path.name, 1, 0)
        with path.open("rb", buffering=0) as source:
            while True:
                chunk = source.read(CHUNK)
                for batch in numbering.take(decoder.feed(chunk) if chunk else decoder.finish()):
                    crc32(batch.data, 0)
                    view = memoryview(batch.data)
                    while view:
                        view = view[os.write(sink, view) :]
                    if lines + batch.count >= n:
                        return n, done + len(batch.slice(0, n - lines).data)
                    lines, done = lines + batch.count, done + batch.nbytes
                if not chunk:
                    break
    return lines, done


def check_limit_main(values: Sequence[str]) -> None:
    """The child side of `--check-limit N PATH...`: prints one JSON line with what it counted."""
    with tempfile.TemporaryFile(dir=Path(values[1]).parent) as sink:
        lines, raw = check_limit([Path(value) for value in values[1:]], int(values[0]), sink.fileno())
    print(json.dumps({"lines": lines, "raw_bytes": raw}), flush=True)


def check_cores_main(values: Sequence[str]) -> None:
    """The child side of `--check-cores COUNT:PATH...` (each shard with how many of its documents are
    wanted): up to one `--check-limit` process per core at once, shard k in process k mod P, waited for
    here (so the launcher's rusage counts them); prints one JSON line with what they counted."""
    wanted = [(int(count), path) for count, _, path in (value.partition(":") for value in values)]
    wanted = [(count, path) for count, path in wanted if count > 0]
    procs = max(1, min(CORES, len(wanted)))
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "scripts.bench", "--check-limit", *map(str, _counts_and_paths(group))],
            stdout=subprocess.PIPE,
        )
        for group in (wanted[index::procs] for index in range(procs))
    ]
    outputs = [child.communicate()[0] for child in children]  # every one waited for, failed or not
    if any(child.returncode != 0 for child in children):
        raise SystemExit(f"a check-limit process failed (exits {[child.returncode for child in children]})")
    counted = [json.loads(out.splitlines()[-1]) for out in outputs]
    lines, raw = sum(one["lines"] for one in counted), sum(one["raw_bytes"] for one in counted)
    print(json.dumps({"lines": lines, "raw_bytes": raw, "processes": procs}), flush=True)


def _counts_and_paths(group: Sequence[tuple[int, str]]) -> list[str]:
    """`--check-limit`'s arguments for a process's shards: N, then the paths. Every shard but the last
    is wanted whole, so N is their documents plus the last one's wanted count."""
    return [str(sum(count for count, _ in group)), *(path for _, path in group)]


# -------------------------------------------------------------------------------------- the network model


@dataclass(frozen=True)
class NetworkModel:
    """A far-away network at this machine's scale: every Hub storage body, S3 request body and S3 response
    body paced on its own, and a wait before every Hub, storage and S3 response."""

    pace_bytes_per_s: float
    latency_s: float

    @property
    def title(self) -> str:
        return f"{self.pace_bytes_per_s / MB:g} MB/s per connection + {self.latency_s * 1e3:g} ms"


MODEL = NetworkModel(pace_bytes_per_s=5e6, latency_s=0.02)
"""EC2's ~50 MB/s per Hub CDN connection and ~85 MB/s per S3 request, scaled to this machine's 2 cores."""
UNPACED = NetworkModel(pace_bytes_per_s=0.0, latency_s=0.0)

HubRoute = Literal["loopback", "model"]
S3Route = Literal["moto", "proxy", "model"]


@dataclass(frozen=True)
class Network:
    """The path of a run's traffic: which local Hub it reads, and where its S3 requests go: straight to
    moto, or through the pacing proxy in front of it with pacing off (`proxy`) or on the model."""

    name: str
    hub: HubRoute
    s3: S3Route
    title: str


NETWORKS = {
    network.name: network
    for network in (
        Network("loopback", "loopback", "moto", "loopback"),
        Network("hub-model", "model", "moto", "Hub on the model"),
        Network("s3-proxy", "loopback", "proxy", "S3 via the proxy, unpaced"),
        Network("s3-model", "loopback", "model", "S3 via the proxy on the model"),
    )
}


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
    model: NetworkModel = MODEL


FULL_SHAPE = Shape("shards", 4, 50_000, 200_000, (5_000, 40_000), (20_000, 200_000), 10_000)
QUICK_SHAPE = Shape("shards-quick", 2, 20_000, 30_000, (1_000, 18_000), (1_000, 30_000), 5_000)
"""Its N are shared between scenarios, so that `--quick --rounds 1` takes about half a minute."""
SMOKE_SHAPE = Shape("shards-smoke", 2, 1_000, 2_000, (500, 1_000), (500, 2_000), 1_000, 20)
"""`--smoke`, the harness's own test (`tests/test_bench.py`), whose figures mean nothing: every scenario,
output, tool and network still runs, on two shards of 1k. Its N are the fewest distinct ones the
scenarios allow (500, 1k, 2k: one-shard differences 500..1k within a shard, shards, hub-model and
s3-model 500..2k across both; startup and hub-bytes keep their N=1k, a single part as the part size is
1k). The network model keeps its real pace: at these N a run on it takes a second or two."""


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

    def counts(self, paths: Sequence[Path], n: int) -> list[int]:
        """How many of the first n documents each shard holds, in order."""
        counts = []
        for path in paths:
            lines, _ = self._shard(path)
            counts.append(min(lines, n))
            n -= counts[-1]
        return counts

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
    outputs: tuple[str, ...] = OUTPUTS
    networks: tuple[str, ...] = ("loopback",)
    """One network (a name in `NETWORKS`); or two, (unpaced, model): every run on each, for the ratio."""
    big: bool = False
    headline: str = "aioc4"
    """The tool whose row carries the scenario's ratios and targets in the table."""

    @property
    def differenced(self) -> bool:
        return len(self.ns) == 2

    @property
    def paired(self) -> bool:
        """Runs on the network model and the same runs unpaced, side by side in every round."""
        return len(self.networks) == 2

    @property
    def variants(self) -> list[tuple[str, str]]:
        """(tool, network) of each row of figures."""
        return [(tool, network) for tool in self.tools for network in self.networks]

    def key(self, tool: str, network: str) -> str:
        """The name of a row of figures: the tool, or with two networks `tool@network`."""
        return f"{tool}@{network}" if self.paired else tool


def _parts_text(part_lines: int) -> str:
    return "one part" if part_lines == sys.maxsize else f"parts of {part_lines:,}"


def scenarios(shape: Shape) -> list[Scenario]:
    """The scenarios of the targets, sized for `shape` (`--quick` has two small shards)."""
    n_all, n_one, n_several, part = (
        shape.all_shards_n,
        shape.one_shard_ns,
        shape.several_shards_ns,
        shape.part_lines,
    )
    big_n = BIG_SHARDS * shape.docs_per_shard
    model = shape.model.title
    return [
        Scenario("all-shards", f"N={n_all:,} over all shards, {_parts_text(part)}", (n_all,), part),
        Scenario("one-shard", f"streaming within one shard, N={_ns_text(n_one)}", n_one, part, WITH_CHECK),
        Scenario("shards", f"several shards, N={_ns_text(n_several)}", n_several, part, WITH_CHECK_CORES),
        Scenario(
            "hub-model",
            f"several shards, N={_ns_text(n_several)}, Hub on the model ({model}) and unpaced",
            n_several,
            part,
            tools=("aioc4",),
            outputs=("local",),
            networks=("loopback", "hub-model"),
        ),
        Scenario(
            "s3-model",
            f"several shards, N={_ns_text(n_several)}, {_parts_text(part)}, via the S3 proxy on the model "
            f"({model}) and unpaced",
            n_several,
            part,
            tools=("aioc4",),
            outputs=("s3",),
            networks=("s3-proxy", "s3-model"),
        ),
        Scenario("startup", "start-up: N=1,000, one file", (1_000,), None),
        Scenario(
            "hub-bytes",
            f"N=1,000, Hub on the model ({model})",
            (1_000,),
            None,
            tools=("baseline", "aioc4"),
            networks=("hub-model",),
        ),
        Scenario(
            "procs",
            f"several shards, N={_ns_text(n_several)}: aioc4's default processes against --procs 1",
            n_several,
            part,
            tools=(PROCS_ONE, PROCS_DEFAULT),
            outputs=("local",),
            headline=PROCS_DEFAULT,
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
    network: str
    """A name in `NETWORKS`: which Hub the run reads and where its S3 requests go."""
    big: bool


def spec_for(scenario: Scenario, tool: str, output: str, n: int, network: str) -> RunSpec:
    """The run a scenario needs; a part size of at least N is no split (one file, the same names). The
    decode limit reads local disk, so one run of it serves every scenario, whatever the network."""
    if tool in LIMITS:
        return RunSpec(tool, n, "-", None, network="loopback", big=scenario.big)
    part_lines = scenario.part_lines if scenario.part_lines is not None and scenario.part_lines < n else None
    return RunSpec(tool, n, output, part_lines, network=network, big=scenario.big)


def scenario_specs(scenario: Scenario) -> list[RunSpec]:
    """Every run of a scenario in one round: by output and N, each tool on each network in turn, so a run
    on the network model and the same run unpaced follow one another."""
    return [
        spec_for(scenario, tool, output, n, network)
        for output, n, tool, network in itertools.product(
            scenario.outputs, scenario.ns, scenario.tools, scenario.networks
        )
    ]


@dataclass
class Run:
    """What one child process did."""

    spec: RunSpec
    round: int
    seconds: float
    peak_rss_mb: float
    """The tool's whole process tree: the larger of `tree_rss_mb` and `maxrss_mb`."""
    exit_code: int
    raw_bytes: int
    cpu_s: float = 0.0  # the tool's process tree: its own CPU and that of every child it reaped
    workers_cpu_s: float = 0.0  # of which its child processes' (sampled): a count job's decode processes
    server_cpu_s: float = 0.0  # the Hub server and (S3 runs) moto and the proxy: they share the cores
    server_cpu_by_name: dict[str, float] = field(default_factory=dict)  # the same, per server: hub, s3, proxy
    tree_rss_mb: float = 0.0  # the most RSS the tool's processes held at once, summed (0: no sample saw them)
    maxrss_mb: float = 0.0  # ru_maxrss: the largest RSS of any one process of the tree
    hub_bytes: int | None = None
    out_bytes: int | None = None
    out_parts: int | None = None
    disk_max_parts: int | None = None
    disk_max_mb: float | None = None
    hub_peak_in_flight: int | None = None  # storage responses at once (the Hub server's counter)
    s3_peak_in_flight: int | None = None  # requests at once through the S3 proxy, if it counts them
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
"""Runs the measured command and reports its wall time and rusage. The rusage `os.wait4` gives for a
child includes every descendant that child reaped (and those reaped theirs) before it exited, so `cpu_s`
is the CPU of the tool's whole process tree, worker processes included (`tests/test_bench.py` checks
it); a descendant left running or unreaped when the tool exits is not counted. A child's ru_maxrss
starts from the high-water RSS of the process it was spawned from (exec keeps the larger of the two), so
the command is spawned from this ~10 MB interpreter rather than from the benchmark, whose own RSS would
leak in."""


def child_pids(pid: int) -> list[int]:
    """The children of every thread of a process (none once it is gone)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for task in tasks:
        try:
            found += map(int, Path(f"/proc/{pid}/task/{task}/children").read_text().split())
        except OSError:  # the thread or the process ended
            continue
    return found


def process_rss_bytes(pid: int) -> int:
    """A process's VmRSS; 0 once it is gone, or as a zombie (which has no VmRSS line)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    line = next((line for line in status.splitlines() if line.startswith("VmRSS:")), None)
    return 0 if line is None else int(line.split()[1]) * 1024


def _cmdline(pid: int) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def tree_rss_bytes(root: int) -> int:
    """The summed VmRSS of every descendant of `root`, not `root` itself (the launcher). A child still
    running its parent's command is a fork that has not exec'd yet (uvloop spawns a decode process by
    fork, then exec): its RSS is its parent's pages, shared copy-on-write, so it is not counted."""
    total, seen, pending = 0, {root}, [(pid, root) for pid in child_pids(root)]
    while pending:
        pid, parent = pending.pop()
        if pid not in seen:
            seen.add(pid)
            command = _cmdline(pid)
            if command is None or command != _cmdline(parent):
                total += process_rss_bytes(pid)
            pending += [(child, pid) for child in child_pids(pid)]
    return total


class TreeRssWatcher(threading.Thread):
    """Polls the RSS of a process tree while it runs: the most its processes held at once, summed.

    A waited child's ru_maxrss is the largest of its tree's processes, not their sum, so it understates a
    tool that runs worker processes. Pages shared between processes count once in each."""

    def __init__(self, root: int) -> None:
        super().__init__(name="rss-watcher", daemon=True)
        self.root = root
        self.max_bytes = 0
        self.workers_cpu: dict[int, float] = {}
        """CPU seconds of the tool's own child processes (a count job's decode processes), as last seen:
        sampled, so each may miss up to `POLL_S` of CPU before it ended."""
        self._stop_event = threading.Event()

    def run(self) -> None:
        while True:
            self.max_bytes = max(self.max_bytes, tree_rss_bytes(self.root))
            for tool in child_pids(self.root):
                for worker in child_pids(tool):
                    with contextlib.suppress(OSError, IndexError, ValueError):  # it may have just ended
                        self.workers_cpu[worker] = process_cpu_seconds(worker)
            if self._stop_event.wait(POLL_S):
                return

    def finish(self) -> None:
        self._stop_event.set()
        self.join()


@dataclass(frozen=True)
class ChildResult:
    seconds: float
    maxrss_mb: float
    """ru_maxrss: the largest RSS of any one process of the command's tree."""
    tree_rss_mb: float
    """The most the command's processes held at once, summed (sampled; 0 if no sample saw them)."""
    cpu_s: float
    exit_code: int
    stdout: str
    stderr: str
    workers_cpu_s: float = 0.0
    """Of `cpu_s`, the tool's child processes' (sampled every `POLL_S`)."""

    @property
    def peak_rss_mb(self) -> float:
        """The whole tree's peak: the sampled sum, or ru_maxrss when sampling missed a short peak."""
        return max(self.tree_rss_mb, self.maxrss_mb)


def run_child(command: Sequence[str], env: dict[str, str], cwd: Path) -> ChildResult:
    """Run a whole process through `LAUNCHER`: its wall time, the peak RSS of its process tree and the CPU
    of its process tree."""
    report = cwd / "rusage.json"
    launcher = [sys.executable, "-I", "-S", "-c", LAUNCHER, str(report), *command]
    with (cwd / "stdout").open("w+b") as out, (cwd / "stderr").open("w+b") as err:
        process = subprocess.Popen(
            launcher, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err
        )
        rss = TreeRssWatcher(process.pid)
        rss.start()
        try:
            process.wait(CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.terminate()  # the launcher kills the command
            process.wait()
        finally:
            rss.finish()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if not report.exists():
        return ChildResult(
            CHILD_TIMEOUT_S, 0.0, rss.max_bytes / MB, 0.0, -9, stdout, stderr + "\nkilled: no answer in time"
        )
    usage = json.loads(report.read_text(encoding="utf-8"))
    exit_code = os.waitstatus_to_exitcode(usage["status"])
    maxrss_mb = usage["maxrss_kib"] * 1024 / MB
    return ChildResult(
        usage["seconds"],
        maxrss_mb,
        rss.max_bytes / MB,
        usage["cpu_s"],
        exit_code,
        stdout,
        stderr,
        sum(rss.workers_cpu.values()),
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
    assert spec.tool != CHECK_CORES, "Bench.command builds it: it needs each shard's documents"
    if spec.tool in LIMITS:
        limit = f"--{spec.tool}-limit"
        return [sys.executable, "-m", "scripts.bench", limit, str(spec.n), *map(str, shards)]
    module = "scripts.baseline_seed" if spec.tool == "baseline" else "aioc4"
    count = str(spec.n)
    if spec.tool.startswith("bulk-"):  # a bulk pull of every shard, in that many processes
        count = "all"
        module += f" --procs {spec.tool.removeprefix('bulk-')}"
    if spec.tool == PROCS_ONE:  # PROCS_DEFAULT is aioc4 without --procs
        module += " --procs 1"
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
    """The local Hubs and moto's S3 in their own processes (started by `start_servers`): the plain Hub, and
    as the chosen scenarios need them, the Hub on the network model, the big repo's Hub (`--big`), and the
    pacing proxy in front of moto with pacing off and on the model."""

    def __init__(
        self, root: Path, big_root: Path | None, networks: Iterable[Network], model: NetworkModel
    ) -> None:
        from scripts.hub_server import HubServerProcess
        from scripts.s3_server import MotoServerProcess

        wanted = list(networks)
        self.hubs: dict[HubRoute, HubServerProcess] = {"loopback": HubServerProcess(root)}
        if any(network.hub == "model" for network in wanted):
            self.hubs["model"] = HubServerProcess(
                root, pace_bytes_per_s=model.pace_bytes_per_s, latency_s=model.latency_s
            )
        self.big = None if big_root is None else HubServerProcess(big_root, startup_timeout_s=120)
        self.s3 = MotoServerProcess()
        self.proxy_models: dict[S3Route, NetworkModel] = {
            network.s3: model if network.s3 == "model" else UNPACED
            for network in wanted
            if network.s3 != "moto"
        }
        self.proxies: dict[S3Route, S3FaultProxyProcess] = {}
        """Started once moto is, in front of it."""
        self._bucket: BucketClient | None = None

    @property
    def processes(self) -> list[HubServerProcess | MotoServerProcess | S3FaultProxyProcess]:
        big = [] if self.big is None else [self.big]
        return [*self.hubs.values(), *big, self.s3, *self.proxies.values()]

    def start_steps(self) -> list[Callable[[], object]]:
        """What starts these servers, in steps that may run side by side (each waits for its children)."""
        big = [] if self.big is None else [self.big.start]
        return [*(hub.start for hub in self.hubs.values()), *big, self._start_s3]

    def _start_s3(self) -> None:
        """Moto, then the proxies in front of it (each is told moto's endpoint as it starts)."""
        from scripts.s3_fault_proxy import S3FaultProxyProcess

        self.s3.start()
        for route, model in self.proxy_models.items():
            self.proxies[route] = S3FaultProxyProcess(
                self.s3.endpoint, pace_bytes_per_s=model.pace_bytes_per_s, latency_s=model.latency_s
            )
            self.proxies[route].start()

    def stop(self) -> None:
        """Stop every server, the proxies first (stop() does nothing for a server that did not start)."""
        for process in reversed(self.processes):
            process.stop()

    @property
    def bucket(self) -> BucketClient:
        assert self._bucket is not None, "start_servers() opens the bucket client"
        return self._bucket

    def hub_for(self, spec: RunSpec) -> HubServerProcess:
        if spec.big:
            assert self.big is not None
            return self.big
        return self.hubs[NETWORKS[spec.network].hub]

    def proxy_for(self, spec: RunSpec) -> S3FaultProxyProcess | None:
        """The proxy an S3 run's requests go through, if any (the harness's own calls go to moto)."""
        route = NETWORKS[spec.network].s3
        return None if spec.output != "s3" or route == "moto" else self.proxies[route]

    def fresh_bucket(self) -> None:
        """Moto keeps every object in memory, also after deletes: empty it before each S3 run."""
        self.s3.reset()
        self.bucket.create_bucket()

    def bucket_parts(self) -> dict[str, int]:
        return self.bucket.parts()


def start_servers(
    stack: ExitStack,
    root: Path,
    big_root: Path | None,
    sets: int,
    networks: Iterable[Network],
    model: NetworkModel,
) -> list[Servers]:
    """`sets` independent sets of servers (one per `--jobs` slot), all started side by side."""
    wanted = list(networks)
    started = [Servers(root, big_root, wanted, model) for _ in range(sets)]
    for servers in started:
        stack.callback(servers.stop)
    steps = [step for servers in started for step in servers.start_steps()]
    with ThreadPoolExecutor(len(steps)) as pool:
        for future in [pool.submit(step) for step in steps]:
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

    def command(self, spec: RunSpec, out_dir: Path) -> list[str]:
        """The run's child process; the check limit on every core is told each shard's documents."""
        shards = self.shards_for(spec)
        if spec.tool != CHECK_CORES:
            return tool_command(spec, out_dir, shards)
        counts = self.sizes.counts(shards, spec.n)
        wanted = [f"{count}:{path}" for count, path in zip(counts, shards, strict=True)]
        return [sys.executable, "-m", "scripts.bench", "--check-cores", *wanted]

    def measure(self, spec: RunSpec, round_index: int) -> Run:
        folder = Path(tempfile.mkdtemp(prefix=f"{spec.tool}-{spec.n}-", dir=self.work))
        try:
            return self._measure_in(folder, spec, round_index)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _measure_in(self, folder: Path, spec: RunSpec, round_index: int) -> Run:
        out_dir = folder / "out"
        hub = None if spec.tool in LIMITS else self.servers.hub_for(spec)
        proxy = self.servers.proxy_for(spec)
        if spec.output == "s3":
            self.servers.fresh_bucket()
        if hub is not None:
            hub.reset_stats()
        if proxy is not None:
            proxy.reset()  # its counters start from zero (it has no rules)
        env = child_env(self.servers.hub_for(spec).endpoint, (proxy or self.servers.s3).env(), folder)
        if spec.tool in ("check", CHECK_CORES):
            from aioc4.decode_pool import REUSE_FREED_MEMORY

            env.update(REUSE_FREED_MEMORY)  # the allocator settings of aioc4's decode processes
        watcher = DiskWatcher(out_dir) if spec.output == "s3" else None
        s3_servers = {"s3": self.servers.s3, "proxy": proxy} if spec.output == "s3" else {}
        servers = {
            name: server.pid for name, server in {"hub": hub, **s3_servers}.items() if server is not None
        }
        if watcher is not None:
            watcher.start()
        servers_before = {name: process_cpu_seconds(pid) for name, pid in servers.items()}
        child = run_child(self.command(spec, out_dir), env, folder)
        server_cpu = {name: process_cpu_seconds(pid) - servers_before[name] for name, pid in servers.items()}
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
            workers_cpu_s=child.workers_cpu_s,
            server_cpu_s=sum(server_cpu.values()),
            server_cpu_by_name=server_cpu,
            tree_rss_mb=child.tree_rss_mb,
            maxrss_mb=child.maxrss_mb,
        )
        if hub is not None:
            stats = hub.stats()
            run.hub_bytes, run.hub_peak_in_flight = (
                stats["storage_body_bytes"],
                stats["storage_peak_in_flight"],
            )
        if proxy is not None:  # None until the proxy counts them
            run.s3_peak_in_flight = proxy.stats().get("peak_in_flight")
        if watcher is not None:
            run.disk_max_parts, run.disk_max_mb = watcher.max_parts, watcher.max_bytes / MB
        run.error = self._check(run, child, out_dir)
        return run

    def _check(self, run: Run, child: ChildResult, out_dir: Path) -> str | None:
        """None when the child did the whole job, else what went wrong (with the end of its stderr)."""
        spec = run.spec
        if child.exit_code != 0:
            return f"exit code {child.exit_code}: {child.stderr[-2000:].strip()}"
        if spec.tool in LIMITS:
            counted = json.loads(child.stdout.splitlines()[-1])["lines"]
            return None if counted == spec.n else f"{spec.tool} limit counted {counted} lines"
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
    at_once = ""
    if run.hub_peak_in_flight is not None:
        at_once = f", requests at once: Hub {run.hub_peak_in_flight}, S3 {_num(run.s3_peak_in_flight)}"
    network = "" if spec.network == "loopback" else f" {spec.network}"
    head = f"[round {run.round + 1}] {spec.tool:<8} N={spec.n:<9,} {spec.output:<5}{network}"
    verdict = f"FAILED: {run.error}" if run.error else f"{run.peak_rss_mb:.0f} MB RSS{hub}{disk}{at_once}"
    return f"{head} {run.seconds:7.2f} s, {verdict}"


def run_rounds(benches: Sequence[Bench], chosen: Sequence[Scenario], rounds: int) -> list[Run]:
    """Every spec of every scenario once per round, in scenario order; shared specs run once.

    With one bench (the default), one child at a time. With several (`--smoke --jobs J`), as many
    children side by side, each bench with its own servers, so Hub bytes, server CPU and the bucket
    stay per run; only the times (and so every rate) are distorted by the sharing of the cores."""
    keys = list(
        dict.fromkeys(
            (round_index, spec)
            for round_index in range(rounds)
            for scenario in chosen
            for spec in scenario_specs(scenario)
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
    """One tool on one network in one scenario and output: per-round figures and their medians."""

    tool: str
    network: str
    docs_per_s_by_round: list[float | None]
    mb_per_s_by_round: list[float | None]
    seconds: dict[int, list[float]]
    peak_rss_mb: list[float]
    hub_bytes: list[int]
    disk_max_parts: list[int]
    cpu_us_per_doc_by_round: list[float | None]
    tool_cpu_us_per_doc_by_round: list[float | None]
    workers_cpu_us_per_doc_by_round: list[float | None]
    hub_peak_in_flight: list[int]
    s3_peak_in_flight: list[int]
    docs_per_s: float | None = None
    mb_per_s: float | None = None
    median_seconds: dict[int, float | None] = field(default_factory=dict)
    median_peak_rss_mb: float | None = None
    median_hub_bytes: float | None = None
    cpu_us_per_doc: float | None = None
    """Every process: the tool's tree, the Hub server and, for S3 runs, moto and the proxy."""
    tool_cpu_us_per_doc: float | None = None
    """The tool's process tree alone (its children included), without the servers."""
    workers_cpu_us_per_doc: float | None = None
    """Of that, the tool's child processes' (a count job's decode processes; sampled)."""
    max_hub_in_flight: int | None = None
    """The most Hub storage responses at once in any of its runs."""
    max_s3_in_flight: int | None = None
    """The most S3 requests at once in any of its runs (None: direct to moto, or not counted)."""

    @property
    def cpu_ceiling_docs_per_s(self) -> float | None:
        """The rate if every core of the machine were busy with this work and nothing else."""
        return None if not self.cpu_us_per_doc else CORES * 1e6 / self.cpu_us_per_doc

    def __post_init__(self) -> None:
        self.cpu_us_per_doc = median(self.cpu_us_per_doc_by_round)
        self.tool_cpu_us_per_doc = median(self.tool_cpu_us_per_doc_by_round)
        self.workers_cpu_us_per_doc = median(self.workers_cpu_us_per_doc_by_round)
        self.docs_per_s = median(self.docs_per_s_by_round)
        self.mb_per_s = median(self.mb_per_s_by_round)
        self.median_seconds = {n: median(times) for n, times in self.seconds.items()}
        self.median_peak_rss_mb = median(self.peak_rss_mb)
        self.median_hub_bytes = median(self.hub_bytes)
        self.max_hub_in_flight = max(self.hub_peak_in_flight, default=None)
        self.max_s3_in_flight = max(self.s3_peak_in_flight, default=None)


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


def round_cpu_per_doc(ns: Sequence[int], runs: Sequence[Run], *, servers: bool = True) -> float | None:
    """CPU microseconds per document, differenced like the rate: over all processes (the tool's tree, the
    Hub, S3), or with `servers=False` over the tool's process tree alone.

    As for the rate, when start-up noise is larger than the work between the two N (the larger run did
    not use more CPU), the larger run's whole-process figure stands in: an upper bound, as it includes
    start-up."""
    if not all(run.ok for run in runs):
        return None
    spent = [run.cpu_s + (run.server_cpu_s if servers else 0.0) for run in runs]
    return _per_doc(ns, spent)


def round_workers_cpu_per_doc(ns: Sequence[int], runs: Sequence[Run]) -> float | None:
    """Of the tool's CPU per document, its child processes' (a count job's decode processes)."""
    if not all(run.ok for run in runs):
        return None
    return _per_doc(ns, [run.workers_cpu_s for run in runs])


def _per_doc(ns: Sequence[int], spent: Sequence[float]) -> float:
    if len(spent) == 1 or spent[1] <= spent[0]:
        return spent[-1] / ns[-1] * 1e6
    return (spent[1] - spent[0]) / (ns[1] - ns[0]) * 1e6


def tool_figures(
    scenario: Scenario, tool: str, network: str, output: str, runs: Sequence[Run]
) -> ToolFigures:
    by_key = {(run.round, run.spec): run for run in runs}
    rounds = sorted({run.round for run in runs})
    rows = [[by_key[(r, spec_for(scenario, tool, output, n, network))] for n in scenario.ns] for r in rounds]
    rates = [round_rate(scenario.ns, row) for row in rows]
    mine = [run for row in rows for run in row if run.ok]
    return ToolFigures(
        tool,
        network,
        docs_per_s_by_round=[rate for rate, _ in rates],
        mb_per_s_by_round=[mb for _, mb in rates],
        seconds={n: [run.seconds for run in mine if run.spec.n == n] for n in scenario.ns},
        peak_rss_mb=[run.peak_rss_mb for run in mine],
        hub_bytes=[
            run.hub_bytes for run in mine if run.hub_bytes is not None and run.spec.n == scenario.ns[-1]
        ],
        disk_max_parts=[run.disk_max_parts for run in mine if run.disk_max_parts is not None],
        cpu_us_per_doc_by_round=[round_cpu_per_doc(scenario.ns, row) for row in rows],
        tool_cpu_us_per_doc_by_round=[round_cpu_per_doc(scenario.ns, row, servers=False) for row in rows],
        workers_cpu_us_per_doc_by_round=[round_workers_cpu_per_doc(scenario.ns, row) for row in rows],
        hub_peak_in_flight=[run.hub_peak_in_flight for run in mine if run.hub_peak_in_flight is not None],
        s3_peak_in_flight=[run.s3_peak_in_flight for run in mine if run.s3_peak_in_flight is not None],
    )


@dataclass
class ScenarioResult:
    scenario: Scenario
    output: str
    tools: dict[str, ToolFigures]
    """By `Scenario.key`: the tool, or with two networks `tool@network`."""

    def figures(self, tool: str, network: str | None = None) -> ToolFigures | None:
        """A tool's figures on a network (by default the scenario's last: the model, when paired)."""
        return self.tools.get(self.scenario.key(tool, network or self.scenario.networks[-1]))

    def rate(self, tool: str, network: str | None = None) -> float | None:
        figures = self.figures(tool, network)
        return None if figures is None else figures.docs_per_s

    @property
    def ratio_vs_unpaced(self) -> float | None:
        """aioc4's rate on the network model over its rate unpaced, when the scenario pairs them."""
        if not self.scenario.paired:
            return None
        unpaced, model = self.scenario.networks
        return ratio(self.rate("aioc4", model), self.rate("aioc4", unpaced))

    @property
    def ratio_vs_baseline(self) -> float | None:
        return ratio(self.rate("aioc4"), self.rate("baseline"))

    @property
    def ratio_vs_one_process(self) -> float | None:
        """aioc4's rate with its default processes over its rate with `--procs 1` (the `procs` scenario)."""
        return ratio(self.rate(PROCS_DEFAULT), self.rate(PROCS_ONE))

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
            "networks": list(self.scenario.networks),
            "rate": "difference of two runs" if self.scenario.differenced else "whole process",
            "tools": {key: asdict(figures) for key, figures in self.tools.items()},
            "ratio_vs_baseline": self.ratio_vs_baseline,
            "ratio_vs_decode_limit": self.ratio_vs_decode_limit,
            "ratio_vs_unpaced": self.ratio_vs_unpaced,
            "ratio_vs_one_process": self.ratio_vs_one_process,
        }


def scenario_results(chosen: Sequence[Scenario], runs: Sequence[Run]) -> list[ScenarioResult]:
    return [
        ScenarioResult(
            s,
            output,
            {
                s.key(tool, network): tool_figures(s, tool, network, output, runs)
                for tool, network in s.variants
            },
        )
        for s in chosen
        for output in s.outputs
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
        figures = [found.figures(tool) for tool in ("aioc4", "baseline")]
        times = [None if f is None else f.median_seconds.get(1_000) for f in figures]
        value = ratio(times[0], times[1])
    text = "wall time of --num-samples 1000 to a local folder, aioc4 / baseline"
    return Target("startup-local-time", text, value, "<=", 0.6, "x", "startup", "local")


def _tool_cpu_target(results: Sequence[ScenarioResult]) -> Target:
    """The CPU per document of aioc4's process tree (no servers) over several shards to a local folder,
    over the decode limit's in the same runs' scenario (both differenced between the same two N)."""
    found = _find(results, "shards", "local")
    figures = [None if found is None else found.figures(tool) for tool in ("aioc4", "decode")]
    mine, decode = (None if f is None else f.tool_cpu_us_per_doc for f in figures)
    text = (
        f"CPU/doc over several shards, aioc4's process tree without the servers ({_num(mine, 1)} us) "
        f"/ decode ({_num(decode, 1)} us)"
    )
    return Target(
        "shards-local-cpu-vs-decode", text, ratio(mine, decode), "<=", TOOL_CPU_FACTOR, "x", "shards", "local"
    )


def _procs_target(results: Sequence[ScenarioResult]) -> Target:
    """More processes are never slower than fewer: aioc4's default against `--procs 1`."""
    found = _find(results, "procs", "local")
    value = None if found is None else found.ratio_vs_one_process
    text = "docs/s over several shards to a local folder, aioc4's default processes / --procs 1"
    return Target("procs-local-vs-1-process", text, value, ">=", 1.0, "x", "procs", "local")


def _model_target(results: Sequence[ScenarioResult], name: str, output: str, text: str) -> Target:
    """A paired scenario's rate on the network model as a share of the same rate unpaced."""
    found = _find(results, name, output)
    value = None if found is None else found.ratio_vs_unpaced
    return Target(name, text, value, ">=", MODEL_RATIO, "x", name, output)


def _hub_bytes_target(results: Sequence[ScenarioResult], compressed_1k: int, model: NetworkModel) -> Target:
    """The most Hub bytes any aioc4 run of the hub-bytes scenario took, over the gzip of its documents."""
    found = [r.figures("aioc4") for r in results if r.scenario.name == "hub-bytes"]
    served = [size for figures in found if figures is not None for size in figures.hub_bytes]
    text = f"Hub bytes for N=1000 on the model ({model.title}), max / gzip of them ({compressed_1k:,} B)"
    return _run_target(
        "hub-bytes", text, [size / compressed_1k for size in served], "<", HUB_BYTES_FACTOR, "x"
    )


def _run_target(name: str, text: str, values: Sequence[float], op: str, limit: float, unit: str) -> Target:
    return Target(name, text, max(values) if values else None, op, limit, unit)


def targets(
    results: Sequence[ScenarioResult], runs: Sequence[Run], compressed_1k: int, model: NetworkModel
) -> list[Target]:
    """Each target of the issue with its measured value (medians; maxima over runs for bounds)."""
    mine = [run for run in runs if run.ok and run.spec.tool in COUNT_TOOLS]
    bound = 2 * UPLOAD_WORKERS + 1
    return [
        _ratio_target(results, "all-shards", "s3", "baseline", 5.0, "docs/s to S3, aioc4 / baseline"),
        _ratio_target(results, "one-shard", "local", "decode", 0.7, "docs/s within one shard, vs decode"),
        _ratio_target(results, "shards", "local", "decode", 1.2, "docs/s over several shards, vs decode"),
        _tool_cpu_target(results),
        _model_target(
            results, "hub-model", "local", "docs/s over several shards, Hub on the model / unpaced Hub"
        ),
        _model_target(
            results, "s3-model", "s3", "docs/s to S3 via the proxy, on the model / unpaced (Hub unpaced)"
        ),
        _procs_target(results),
        _startup_target(results),
        _run_target(
            "peak-rss",
            "peak RSS of every aioc4 run's whole process tree (N = 1k, 200k, 2M with --big), max",
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
        _hub_bytes_target(results, compressed_1k, model),
    ]


# ---------------------------------------------------------------------------------------------- the table


def tool_title(tool: str) -> str:
    titles = {
        "baseline": "baseline (datasets + boto3)",
        "decode": f"decode limit ({fastest_inflater()[0]}, 1 core)",
        "check": "check limit (+ aioc4's checks, CRC, write)",
        CHECK_CORES: f"check limit, {CORES} processes at once",
        "bulk-1": "aioc4 all, 1 process",
        f"bulk-{BULK_PROCS}": f"aioc4 all, {BULK_PROCS} processes",
        PROCS_ONE: "aioc4 --procs 1",
        PROCS_DEFAULT: "aioc4, default processes",
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


TABLE_HEAD = (
    "scenario", "output", "what", "N", "docs/s", "MB/s", "RSS MB", "Hub MB", "at once Hub/S3", "CPU us/doc",
    "tool us/doc", "CPU cap", "x base", "x decode", "x unpaced", "target",
)  # fmt: skip


TABLE_LEGEND = (
    "RSS MB: the peak of the tool's whole process tree, summed over its processes\n"
    "CPU us/doc: every process (the tool's process tree, the Hub server, moto and the proxy); "
    "tool us/doc: the tool's process tree alone"
)


def _table_row(result: ScenarioResult, figures: ToolFigures, found: Sequence[Target]) -> tuple[str, ...]:
    """One tool on one network; the ratios and targets on the headline tool's row (aioc4's, on the model
    when paired)."""
    scenario, tool = result.scenario, figures.tool
    headline = tool == scenario.headline and figures.network == scenario.networks[-1]
    versus = headline and not scenario.paired and tool == "aioc4"  # x base, x decode
    what = tool_title(tool) + (f", {NETWORKS[figures.network].title}" if scenario.paired else "")
    hub_mb = None if figures.median_hub_bytes is None else figures.median_hub_bytes / MB
    return (
        scenario.name,
        "-" if tool in LIMITS else result.output,
        what,
        _ns_text(scenario.ns),
        _num(figures.docs_per_s),
        _num(figures.mb_per_s, 1),
        _num(figures.median_peak_rss_mb, 0),
        _num(hub_mb, 2),
        "" if tool in LIMITS else f"{_num(figures.max_hub_in_flight)}/{_num(figures.max_s3_in_flight)}",
        _num(figures.cpu_us_per_doc, 1),
        _num(figures.tool_cpu_us_per_doc, 1),
        _num(figures.cpu_ceiling_docs_per_s),
        _num(result.ratio_vs_baseline, 2) if versus else "",
        _num(result.ratio_vs_decode_limit, 2) if versus else "",
        _num(result.ratio_vs_unpaced, 2) if headline and scenario.paired else "",
        _row_target(result, found) if headline else "",
    )


def table(results: Sequence[ScenarioResult], found: Sequence[Target]) -> str:
    """One row per scenario, output, tool and network (the decode limit once per scenario), then the
    targets and the summaries."""
    rows = [
        _table_row(result, figures, found)
        for result in results
        for figures in result.tools.values()
        if figures.tool not in LIMITS or result.output == OUTPUTS[0]
    ]
    widths = [max(len(row[i]) for row in [TABLE_HEAD, *rows]) for i in range(len(TABLE_HEAD))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    header = "  ".join(cell.ljust(width) for cell, width in zip(TABLE_HEAD, widths, strict=True))
    return "\n".join(
        [
            header,
            "-" * len(header),
            *lines,
            TABLE_LEGEND,
            "",
            "targets:",
            *map(_target_line, found),
            *_bulk_lines(results),
            *_procs_lines(results),
            *_model_lines(results),
            *_ceilings(results),
            *_beyond_check_limit(results),
        ]
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


def _procs_lines(results: Sequence[ScenarioResult]) -> list[str]:
    """aioc4's default processes against one process: the rates, and the CPU and memory each costs."""
    return [_procs_line(result) for result in results if result.scenario.name == "procs"]


def _procs_line(result: ScenarioResult) -> str:
    return (
        f"processes, {result.output}: default {_procs_side(result, PROCS_DEFAULT)}, --procs 1 "
        f"{_procs_side(result, PROCS_ONE)} = {_num(result.ratio_vs_one_process, 2)} x 1 process"
    )


def _procs_side(result: ScenarioResult, tool: str) -> str:
    """A tool's rate, its process tree's CPU per document and peak RSS."""
    figures = result.figures(tool)
    if figures is None:
        return "not run"
    cpu, rss = _num(figures.tool_cpu_us_per_doc, 1), _num(figures.median_peak_rss_mb)
    workers = _num(figures.workers_cpu_us_per_doc, 1)
    rate = _num(figures.docs_per_s)
    return f"{rate} docs/s ({cpu} tool us/doc, {workers} of it in child processes, {rss} MB RSS)"


def _model_lines(results: Sequence[ScenarioResult]) -> list[str]:
    """The paired scenarios: aioc4 on the network model against the same runs unpaced, and how many
    requests it kept in flight each way on the model (the most at once in any run)."""
    return [_model_line(result) for result in results if result.scenario.paired]


def _model_line(result: ScenarioResult) -> str:
    unpaced, model = result.scenario.networks
    figures = result.figures("aioc4", model)
    hub, s3 = (None, None) if figures is None else (figures.max_hub_in_flight, figures.max_s3_in_flight)
    return (
        f"network model, {result.scenario.name} {result.output}: aioc4 {_num(result.rate('aioc4', model))} "
        f"docs/s on the model, {_num(result.rate('aioc4', unpaced))} unpaced = "
        f"{_num(result.ratio_vs_unpaced, 2)} x; at once on the model: Hub {_num(hub)}, S3 {_num(s3)} requests"
    )


def _ceilings(results: Sequence[ScenarioResult]) -> list[str]:
    """What the machine allows: aioc4's rate if all its cores did nothing but this run's work (its CPU
    per document summed over aioc4, the Hub server, moto and the S3 proxy), as the same ratios as the
    targets (none for the paired scenarios, which compare aioc4 with itself)."""
    lines = [
        f"CPU caps ({CORES} cores; CPU us/doc of aioc4 + Hub server + moto + proxy, all on this machine):"
    ]
    for result in results:
        figures = result.figures("aioc4")
        cap = None if figures is None else figures.cpu_ceiling_docs_per_s
        versus = [
            f"{_num(ratio(cap, result.rate(tool)), 2)} x {tool}"
            for tool in ("baseline", "decode")
            if result.rate(tool)
        ]
        if cap is None or not versus:
            continue
        lines.append(
            f"  {result.scenario.name:<11} {result.output:<6} {cap:>9,.0f} docs/s = {', '.join(versus)}"
        )
    return lines


def _beyond_check_limit(results: Sequence[ScenarioResult]) -> list[str]:
    """aioc4 against the check limit, where both ran: what aioc4 spends beyond the work every document
    needs (its CPU per document, its process tree's alone, and its rate)."""
    lines: list[str] = []
    for result in results:
        mine, check = result.figures("aioc4"), result.figures("check")
        if mine is None or check is None or result.output != OUTPUTS[0]:
            continue
        if not lines:
            lines.append("aioc4 against the check limit (tool CPU us/doc; docs/s), to a local folder:")
        cpu, floor = mine.tool_cpu_us_per_doc, check.tool_cpu_us_per_doc
        lines.append(
            f"  {result.scenario.name:<11} {_num(cpu, 1)} us/doc against {_num(floor, 1)} = "
            f"{_num(ratio(cpu, floor), 2)} x; docs/s {_num(ratio(mine.docs_per_s, check.docs_per_s), 2)} x"
        )
        cores, decode = result.figures(CHECK_CORES), result.figures("decode")
        if cores is not None and decode is not None:
            lines.append(
                f"  {result.scenario.name:<11} the check limit on {CORES} processes at once: "
                f"{_num(cores.tool_cpu_us_per_doc, 1)} us/doc = "
                f"{_num(ratio(cores.tool_cpu_us_per_doc, decode.tool_cpu_us_per_doc), 2)} x decode's; "
                f"docs/s {_num(ratio(cores.docs_per_s, decode.docs_per_s), 2)} x decode; aioc4: "
                f"{_num(ratio(cpu, cores.tool_cpu_us_per_doc), 2)} x its us/doc, "
                f"{_num(ratio(mine.docs_per_s, cores.docs_per_s), 2)} x its docs/s"
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
        "--one-part",
        action="store_true",
        help="every run writes one part, as without --max-lines-per-file (the original tool's default)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="J",
        help="with --smoke: J children at a time, each with its own servers (distorts every figure)",
    )
    parser.add_argument("--decode-limit", nargs="+", metavar="N PATH", help=argparse.SUPPRESS)
    parser.add_argument("--check-limit", nargs="+", metavar="N PATH", help=argparse.SUPPRESS)
    parser.add_argument("--check-cores", nargs="+", metavar="COUNT:PATH", help=argparse.SUPPRESS)
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
    args: argparse.Namespace,
    config: dict[str, Any],
    runs: Sequence[Run],
    results: Sequence[ScenarioResult],
    model: NetworkModel,
) -> list[Target]:
    found = targets(results, runs, config["compressed_first_1000"]["gzip"], model)
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


def networks_of(chosen: Sequence[Scenario]) -> list[Network]:
    """The networks the chosen scenarios run on, so only their servers start."""
    return [NETWORKS[name] for name in dict.fromkeys(name for s in chosen for name in s.networks)]


def prepare(shape: Shape, chosen: Sequence[Scenario]) -> tuple[FakeRepo, Path | None]:
    """The shards (built once, then reused from `.bench/`), and the big repo if a scenario needs it."""
    log(f"shards: {shape.shards} x {shape.docs_per_shard:,} documents in {BENCH_DIR / shape.folder}")
    repo = build_shards(shape)
    big_root = build_big_repo(repo, BIG_SHARDS) if any(s.big for s in chosen) else None
    return repo, big_root


def compile_sources() -> None:
    """Byte-compile aioc4 and scripts here, as `pip install .` compiles an installed package: the
    children import them from this checkout, and where PYTHONDONTWRITEBYTECODE is set (CI, containers)
    every process would otherwise compile them from source again, ~0.1-0.2 s of each start."""
    for folder in ("aioc4", "scripts"):
        compileall.compile_dir(REPO_ROOT / folder, quiet=1)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.decode_limit:
        decode_limit_main(args.decode_limit)
        return 0
    if args.check_limit:
        check_limit_main(args.check_limit)
        return 0
    if args.check_cores:
        check_cores_main(args.check_cores)
        return 0
    started = time.perf_counter()
    compile_sources()
    shape = SMOKE_SHAPE if args.smoke else QUICK_SHAPE if args.quick else FULL_SHAPE
    if args.one_part:  # no part size below any N: every run writes one part
        shape = replace(shape, part_lines=sys.maxsize)
    chosen = choose(scenarios(shape), args)
    repo, big_root = prepare(shape, chosen)
    shards = train_shards(repo.root)
    config: dict[str, Any] = {
        "rounds": args.rounds,
        "quick": args.quick,
        "smoke": args.smoke,
        "jobs": args.jobs,
        "one_part": args.one_part,
        "shards": {"count": shape.shards, "docs_per_shard": shape.docs_per_shard, "root": str(repo.root)},
        "inflater": fastest_inflater()[0],
        "network_model": asdict(shape.model),
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
            for servers in start_servers(
                stack, repo.root, big_root, args.jobs, networks_of(chosen), shape.model
            )
        ]
        runs = run_rounds(benches, chosen, args.rounds)
    config["wall_seconds"] = time.perf_counter() - started
    found = report(args, config, runs, scenario_results(chosen, runs), shape.model)
    log(f"benchmark took {config['wall_seconds']:.0f} s")
    failed = any(not run.ok for run in runs)
    return 1 if failed or (args.check and not all(target.met for target in found)) else 0


if __name__ == "__main__":
    sys.exit(main())
