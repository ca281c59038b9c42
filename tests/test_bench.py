"""The benchmark harness runs end to end in its smoke configuration and reports every figure.

`--smoke` is the real harness on two tiny shards: every scenario with its outputs, tools and networks
(the network-model scenarios pair each run on the model with the same run unpaced), the differenced
scenarios still over two N. `--jobs 2` runs two children at a time (each slot with its own servers),
which only distorts the times. No assertion on speed: performance is measured by `make bench`, never by
a timed unit test.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import os
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from aioc4.errors import CorruptShardError
from scripts.bench import (
    BULK_PROCS,
    CHECK_CORES,
    CORES,
    FULL_SHAPE,
    LIMITS,
    NETWORKS,
    PROCS_DEFAULT,
    PROCS_ONE,
    SMOKE_SHAPE,
    RawSizes,
    Scenario,
    check_limit,
    child_pids,
    decode_limit,
    process_rss_bytes,
    run_child,
    scenario_specs,
    scenarios,
    tool_command,
    train_shards,
    tree_rss_bytes,
)
from scripts.shards import build_fake_c4, iter_shard_lines

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPECTED = [s for s in scenarios(SMOKE_SHAPE) if not s.big]
PAIRED = [s for s in EXPECTED if s.paired]


def test_the_unpaced_hub_model_runs_are_the_shards_runs() -> None:
    """Shared, so they run once a round; the runs on the model differ from them only by the network."""
    by_name = {s.name: s for s in scenarios(FULL_SHAPE)}
    shards = set(scenario_specs(by_name["shards"]))
    model = scenario_specs(by_name["hub-model"])
    assert [spec.network for spec in model] == ["loopback", "hub-model"] * 2  # each pair side by side
    assert {spec for spec in model if spec.network == "loopback"} <= shards
    assert all(spec.output == "local" and spec.tool == "aioc4" for spec in model)


def test_the_s3_model_pair_both_go_through_the_proxy() -> None:
    s3_model = {s.name: s for s in scenarios(FULL_SHAPE)}["s3-model"]
    routes = [NETWORKS[spec.network].s3 for spec in scenario_specs(s3_model)]
    assert routes == ["proxy", "model"] * 2
    assert {NETWORKS[name].hub for name in s3_model.networks} == {"loopback"}


def test_the_procs_runs_alternate_one_process_and_the_default(tmp_path: Path) -> None:
    """Each N of `--procs 1` right beside the same N of the default (no --procs), over the shards N."""
    by_name = {s.name: s for s in scenarios(FULL_SHAPE)}
    specs = scenario_specs(by_name["procs"])
    assert [(spec.tool, spec.n) for spec in specs] == [
        (tool, n) for n in by_name["shards"].ns for tool in (PROCS_ONE, PROCS_DEFAULT)
    ]
    assert all(spec.output == "local" and spec.network == "loopback" for spec in specs)
    commands = {spec.tool: tool_command(spec, tmp_path, []) for spec in specs}
    assert commands[PROCS_ONE][commands[PROCS_ONE].index("--procs") + 1] == "1"
    assert "--procs" not in commands[PROCS_DEFAULT]


def test_the_check_limit_does_aioc4s_work_on_the_decode_limits_documents(tmp_path: Path) -> None:
    """The same first N lines as the decode limit, within a shard and across shards, and every block it
    checked written whole to the sink (the block holding line N is checked whole, as aioc4 does)."""
    repo = build_fake_c4(tmp_path / "repo", train_shards=2, docs_per_train_shard=1500)
    shards = train_shards(repo.root)
    for n in (1, 700, 1500, 2300):
        with (tmp_path / "sink").open("wb") as sink:
            assert check_limit(shards, n, sink.fileno()) == decode_limit(shards, n)
        written = (tmp_path / "sink").read_bytes()
        lines = [line for path in shards for line in iter_shard_lines(path)]
        assert written.count(b"\n") >= n
        assert written == b"".join(line + b"\n" for line in lines[: written.count(b"\n")])


def test_the_check_limit_on_every_core_counts_the_first_n_documents(tmp_path: Path) -> None:
    """`--check-cores`: each shard holding some of the first N documents checked by one of up to one
    process per core, all at once; together exactly the decode limit's documents and bytes."""
    repo = build_fake_c4(tmp_path / "repo", train_shards=3, docs_per_train_shard=1500)
    shards = train_shards(repo.root)
    for n in (700, 2300, 4500):
        counts = RawSizes().counts(shards, n)
        assert sum(counts) == n
        wanted = [f"{count}:{path}" for count, path in zip(counts, shards, strict=True)]
        result = subprocess.run(
            [sys.executable, "-m", "scripts.bench", "--check-cores", *wanted],
            cwd=REPO_ROOT,
            capture_output=True,
            check=True,
        )
        counted = json.loads(result.stdout.splitlines()[-1])
        assert (counted["lines"], counted["raw_bytes"]) == decode_limit(shards, n)
        assert counted["processes"] == min(CORES, sum(count > 0 for count in counts))


def test_the_check_limit_refuses_a_broken_line(tmp_path: Path) -> None:
    """It checks every line as aioc4 does: a line that is not a document stops it."""
    shard = tmp_path / "c4-train.00000-of-00001.json.gz"
    shard.write_bytes(gzip.compress(b'{"text": "a"}\n{"text": "b"\n{"text": "c"}\n'))
    with (tmp_path / "sink").open("wb") as sink, pytest.raises(CorruptShardError, match="line 2"):
        check_limit([shard], 3, sink.fileno())


def test_the_table_compares_aioc4_with_the_check_limit(report: dict[str, Any]) -> None:
    assert "aioc4 against the check limit" in report["table"]
    assert f"the check limit on {CORES} processes at once" in report["table"]
    for name in ("one-shard", "shards"):
        entry = next(entry for entry in report["scenarios"] if entry["name"] == name)
        assert entry["tools"]["check"]["tool_cpu_us_per_doc"] > 0
    shards = next(entry for entry in report["scenarios"] if entry["name"] == "shards")
    assert shards["tools"][CHECK_CORES]["tool_cpu_us_per_doc"] > 0


BURN = "import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end: pass"


def test_a_runs_cpu_includes_the_children_the_tool_reaped(tmp_path: Path) -> None:
    """Worker processes started as asyncio subprocesses and reaped before the tool exits count in its CPU:
    the launcher's `os.wait4` rusage covers the descendants a child reaped."""
    parent = (
        "import asyncio, sys\n"
        "async def main():\n"
        f"    code = {BURN.format(seconds=0.4)!r}\n"
        "    workers = [await asyncio.create_subprocess_exec(sys.executable, '-c', code) for _ in range(2)]\n"
        "    for worker in workers:\n"
        "        await worker.wait()\n"
        "asyncio.run(main())\n"
    )
    child = run_child([sys.executable, "-c", parent], dict(os.environ), tmp_path)
    assert child.exit_code == 0, child.stderr
    assert child.cpu_s >= 0.8


def test_a_runs_peak_rss_sums_its_process_tree(tmp_path: Path) -> None:
    """Two children holding 40 MB each at once: the tree's peak is their sum, where ru_maxrss (the
    largest single process) stays near one of them."""
    hold = "import time\ndata = b'x' * 40_000_000\ntime.sleep(0.5)"
    parent = (
        "import subprocess, sys\n"
        f"workers = [subprocess.Popen([sys.executable, '-c', {hold!r}]) for _ in range(2)]\n"
        "for worker in workers:\n"
        "    worker.wait()\n"
    )
    child = run_child([sys.executable, "-c", parent], dict(os.environ), tmp_path)
    assert child.exit_code == 0, child.stderr
    assert child.maxrss_mb < 80 < child.tree_rss_mb == child.peak_rss_mb


HOLD_48_MB = "import time\nheld = b'x' * (48 << 20)\nprint('held', flush=True)\ntime.sleep(30)"


def test_a_fork_that_has_not_exec_d_adds_nothing_to_the_trees_rss() -> None:
    """A forked child still running its parent's code shows the parent's 64 MB in its own VmRSS: pages
    shared copy-on-write, not more memory. An exec'd child's memory is counted."""
    code = (
        "import os, subprocess, sys, time\n"
        "held = bytearray(64 << 20)\n"
        "held[::4096] = b'x' * len(held[::4096])\n"
        "if os.fork() == 0:\n"
        "    time.sleep(30)\n"
        "    os._exit(0)\n"
        f"exec_d = subprocess.Popen([sys.executable, '-c', {HOLD_48_MB!r}], stdout=subprocess.PIPE)\n"
        "exec_d.stdout.readline()\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    children: list[int] = []
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n"
        children = child_pids(process.pid)
        forked = [pid for pid in children if process_rss_bytes(pid) > 64 << 20]
        assert len(children) == 2  # the fork and the exec'd child
        assert len(forked) == 1  # what a sampler finds in the fork
        assert 48 << 20 < tree_rss_bytes(process.pid) < 64 << 20  # the exec'd child alone
    finally:
        for pid in [*children, process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.bench",
            "--smoke",
            "--jobs",
            "2",
            "--rounds",
            "1",
            "--json",
            str(path),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document


def test_every_run_succeeded(report: dict[str, Any]) -> None:
    assert report["failed_runs"] == 0
    assert all(run["ok"] and run["seconds"] > 0 and run["peak_rss_mb"] > 0 for run in report["runs"])
    assert all(run["peak_rss_mb"] == max(run["tree_rss_mb"], run["maxrss_mb"]) for run in report["runs"])


def test_every_scenario_with_its_outputs(report: dict[str, Any]) -> None:
    found = {(entry["name"], entry["output"]) for entry in report["scenarios"]}
    assert found == {(s.name, output) for s in EXPECTED for output in s.outputs}


@pytest.mark.parametrize("scenario", EXPECTED, ids=lambda s: s.name)
def test_rates_are_positive(report: dict[str, Any], scenario: Scenario) -> None:
    for entry in (e for e in report["scenarios"] if e["name"] == scenario.name):
        assert set(entry["tools"]) == {scenario.key(tool, network) for tool, network in scenario.variants}
        for figures in entry["tools"].values():
            assert figures["docs_per_s"] > 0
            assert figures["mb_per_s"] > 0
            assert figures["median_peak_rss_mb"] > 0


def test_differenced_scenarios_time_both_n(report: dict[str, Any]) -> None:
    for entry in report["scenarios"]:
        differenced = len(entry["ns"]) == 2
        assert entry["rate"] == ("difference of two runs" if differenced else "whole process")
        for figures in entry["tools"].values():
            assert figures["median_seconds"].keys() == {str(n) for n in entry["ns"]}
            assert all(seconds > 0 for seconds in figures["median_seconds"].values())


def test_ratios_are_computed_from_the_rates(report: dict[str, Any]) -> None:
    for entry in report["scenarios"]:
        tools = entry["tools"]
        if entry["name"] == "bulk":  # aioc4 against itself: --num-samples all, several processes and one
            assert sorted(tools) == ["bulk-1", f"bulk-{BULK_PROCS}"]
            assert all(figures["docs_per_s"] > 0 for figures in tools.values())
            continue
        if entry["name"] == "procs":  # aioc4 against itself: its default processes and --procs 1
            default, one = (tools[tool]["docs_per_s"] for tool in (PROCS_DEFAULT, PROCS_ONE))
            assert math.isclose(entry["ratio_vs_one_process"], default / one)
            assert entry["ratio_vs_baseline"] is None
            continue
        if len(entry["networks"]) == 2:  # aioc4 against itself: on the network model and unpaced
            unpaced, model = (tools[f"aioc4@{network}"]["docs_per_s"] for network in entry["networks"])
            assert math.isclose(entry["ratio_vs_unpaced"], model / unpaced)
            assert entry["ratio_vs_baseline"] is None
            continue
        assert entry["ratio_vs_unpaced"] is None
        aioc4 = tools["aioc4"]["docs_per_s"]
        assert math.isclose(entry["ratio_vs_baseline"], aioc4 / tools["baseline"]["docs_per_s"])
        if "decode" in tools:
            assert math.isclose(entry["ratio_vs_decode_limit"], aioc4 / tools["decode"]["docs_per_s"])
        else:
            assert entry["ratio_vs_decode_limit"] is None


def test_hub_bytes_are_counted(report: dict[str, Any]) -> None:
    for entry in report["scenarios"]:
        for tool, figures in entry["tools"].items():
            assert (figures["median_hub_bytes"] is None) == (tool in LIMITS)
            if tool not in LIMITS:
                assert figures["median_hub_bytes"] > 0


@pytest.mark.parametrize("scenario", PAIRED, ids=lambda s: s.name)
def test_paired_runs_share_every_round(report: dict[str, Any], scenario: Scenario) -> None:
    """Each run on the model and its unpaced twin ran in every round."""
    for round_index in range(report["config"]["rounds"]):
        specs = [run["spec"] for run in report["runs"] if run["round"] == round_index]
        for spec in scenario_specs(scenario):
            assert asdict(spec) in specs


def test_requests_at_once_are_counted(report: dict[str, Any]) -> None:
    """The Hub counts storage responses in flight for every run that reads it; the S3 proxy may not count
    its requests yet (None), but never counts none."""
    for run in report["runs"]:
        tool, network = run["spec"]["tool"], run["spec"]["network"]
        assert (run["hub_peak_in_flight"] is None) == (tool in LIMITS)
        if tool not in LIMITS:
            assert run["hub_peak_in_flight"] >= 1
        if run["spec"]["output"] != "s3" or NETWORKS[network].s3 == "moto":
            assert run["s3_peak_in_flight"] is None
        assert run["s3_peak_in_flight"] is None or run["s3_peak_in_flight"] >= 1


def test_server_cpu_is_told_per_server(report: dict[str, Any]) -> None:
    """The servers' CPU is summed and kept per server (the Hub; moto and the proxy for S3 runs)."""
    for run in report["runs"]:
        by_name = run["server_cpu_by_name"]
        expected = set() if run["spec"]["tool"] in LIMITS else {"hub"}
        if run["spec"]["output"] == "s3":
            expected |= {"s3"} | ({"proxy"} if NETWORKS[run["spec"]["network"]].s3 != "moto" else set())
        assert set(by_name) == expected, run["spec"]
        assert run["server_cpu_s"] == pytest.approx(sum(by_name.values()))


def test_every_target_is_evaluated(report: dict[str, Any]) -> None:
    names = {target["name"] for target in report["targets"]}
    expected = {"all-shards-s3-vs-baseline", "startup-local-time", "peak-rss", "hub-bytes"}
    expected |= {"shards-local-vs-decode", "shards-local-cpu-vs-decode", "procs-local-vs-1-process"}
    assert expected | {"hub-model", "s3-model"} <= names
    for target in report["targets"]:
        assert target["value"] is not None
        assert target["met"] in (True, False)
    assert report["config"]["compressed_first_1000"]["gzip"] > 0


def test_the_table_shows_the_model_ratios(report: dict[str, Any]) -> None:
    header = report["table"].splitlines()[0]
    assert "x unpaced" in header
    assert "at once Hub/S3" in header
    for scenario in PAIRED:
        for output in scenario.outputs:
            assert f"network model, {scenario.name} {output}: aioc4 " in report["table"]


def test_the_table_shows_the_tool_cpu_and_the_procs_ratio(report: dict[str, Any]) -> None:
    assert "tool us/doc" in report["table"].splitlines()[0]
    assert "processes, local: default " in report["table"]
    for entry in report["scenarios"]:
        for figures in entry["tools"].values():
            assert "tool_cpu_us_per_doc" in figures


def test_the_decode_processes_cpu_is_split_out_of_the_tools(report: dict[str, Any]) -> None:
    """`--procs 1` runs no child process; the default, with two CPUs or more, decodes documents
    that reach past the first shard in child processes, whose CPU is a part of the tool's, and those
    inside it in its own (run by run: differenced per-document figures of the smoke run's few
    documents are mostly start-up noise)."""
    runs = [run for run in report["runs"] if run["spec"]["tool"] in (PROCS_ONE, PROCS_DEFAULT)]
    assert all(run["workers_cpu_s"] == 0 for run in runs if run["spec"]["tool"] == PROCS_ONE)
    if len(os.sched_getaffinity(0)) >= 2:
        default = [run for run in runs if run["spec"]["tool"] == PROCS_DEFAULT]
        several = [run for run in default if run["spec"]["n"] > SMOKE_SHAPE.docs_per_shard]
        assert several
        assert all(0 < run["workers_cpu_s"] < run["cpu_s"] for run in several)
        inside = [run for run in default if run["spec"]["n"] <= SMOKE_SHAPE.docs_per_shard // 2]
        assert inside
        assert all(run["workers_cpu_s"] == 0 for run in inside)
    tools = next(entry["tools"] for entry in report["scenarios"] if entry["name"] == "procs")
    assert all("workers_cpu_us_per_doc" in figures for figures in tools.values())
