"""Bulk pulls (`--num-samples all`): whole shards, shared among processes and machines, merged, verified."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from aioc4.cli import build_parser, config_from_args
from aioc4.naming import ShardNaming
from scripts.hub_server import HubServerProcess
from scripts.s3_server import MotoServerProcess
from scripts.shards import FakeRepo, iter_shard_lines

from .conftest import (
    DOCS_PER_TRAIN_SHARD,
    TRAIN_SHARDS,
    Aioc4,
    clean_env,
    jsonl,
    objects,
    parts_in,
    shard_paths,
    wait_until,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


def expected_parts(
    fake_repo: FakeRepo, split: str, size: int | None, shards: list[int] | None = None
) -> dict[str, bytes]:
    """Every part a bulk pull of `shards` (default: all) must write, with its exact content."""
    paths = shard_paths(fake_repo, split)
    expected = {}
    for position in shards if shards is not None else range(len(paths)):
        lines = list(iter_shard_lines(fake_repo.root / paths[position]))
        naming = ShardNaming(split, position, size)
        step = size or len(lines)
        for index, start in enumerate(range(0, len(lines), step), start=1):
            expected[naming.final(index, len(lines))] = jsonl(lines[start : start + step])
    return expected


def test_a_bulk_pull_with_two_processes_writes_every_shard_once_and_merges(
    aioc4: Aioc4, fake_repo: FakeRepo, hub_bytes: Callable[[], int]
) -> None:
    out = aioc4.cwd / "out"
    result = aioc4("--num-samples", "all", "--split", "validation", "--max-lines-per-file", "300",
                   "--procs", "2", "--output-dir", str(out), "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert parts_in(out) == expected_parts(fake_repo, "validation", 300)
    summary = json.loads(result.stdout)  # what the two children read, added up by the parent
    assert summary["read"] == {
        "documents": 2 * 700,
        "compressed_bytes": hub_bytes(),
        "shards": 2,
        "skipped_records": 0,
    }
    assert summary["written"] == {
        "bytes": sum(map(len, expected_parts(fake_repo, "validation", 300).values()))
    }
    assert summary["timings"]["mb_per_s"] > 0
    manifests = sorted(path.name for path in out.glob("*.manifest.json"))
    assert manifests == [
        "c4_validation_all.manifest.json",
        "c4_validation_shard00000.manifest.json",
        "c4_validation_shard00001.manifest.json",
    ]
    combined = json.loads((out / "c4_validation_all.manifest.json").read_text())
    assert combined["complete"] is True
    assert [part["name"] for part in combined["parts"]] == sorted(
        expected_parts(fake_repo, "validation", 300)
    )
    verify = aioc4("verify", str(out))
    assert verify.returncode == 0, verify.stderr
    assert f"c4_validation_all.manifest.json: 6 part(s), {2 * 700:,} documents: OK" in verify.stdout


def test_k_workers_over_m_shards_give_the_full_set_without_overlap(
    aioc4: Aioc4, fake_repo: FakeRepo, s3: MotoServerProcess, bucket: str, hub: HubServerProcess
) -> None:
    """Three machines, each with its index from another place (flag, Kubernetes, AWS Batch), at once."""
    size = 5_000
    common = ["--num-samples", "all", "--max-lines-per-file", str(size), "--procs", "1",
              "--s3-path", f"s3://{bucket}/c4"]  # fmt: skip
    slots: list[tuple[list[str], dict[str, str]]] = [
        (["--num-workers", "3", "--worker-index", "0"], {}),
        (["--num-workers", "3"], {"JOB_COMPLETION_INDEX": "1"}),
        ([], {"AWS_BATCH_JOB_ARRAY_INDEX": "2", "AWS_BATCH_JOB_ARRAY_SIZE": "3"}),
    ]
    hub.reset_stats()
    workers = [
        subprocess.Popen(
            [*aioc4.command(), *common, *flags],
            cwd=aioc4.cwd,
            env={**aioc4.env, **extra},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for flags, extra in slots
    ]
    outcomes = [worker.communicate(timeout=180) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0, 0], [err for _, err in outcomes]
    expected = expected_parts(fake_repo, "train", size)
    assert objects(s3, bucket, "c4/") == {f"c4/{name}": body for name, body in expected.items()}
    # each shard read once, by one worker: the storage served each shard's bytes exactly once
    served = hub.stats()["storage_body_bytes_by_path"]
    assert sorted(served) == shard_paths(fake_repo, "train")
    assert all(served[path] == (fake_repo.root / path).stat().st_size for path in served)
    # the last worker to finish wrote the job's manifest, and the whole verifies
    verify = aioc4("verify", f"s3://{bucket}/c4")
    assert verify.returncode == 0, verify.stderr
    total = TRAIN_SHARDS * DOCS_PER_TRAIN_SHARD
    assert f"c4_train_all.manifest.json: {len(expected)} part(s), {total:,} documents: OK" in verify.stdout


def test_merge_waits_for_missing_shards_then_combines(aioc4: Aioc4, fake_repo: FakeRepo) -> None:
    out = aioc4.cwd / "out"
    args = ["--num-samples", "all", "--split", "validation", "--procs", "1", "--output-dir", str(out)]
    first = aioc4(*args, "--num-workers", "2", "--worker-index", "0")
    assert first.returncode == 0, first.stderr
    assert not (out / "c4_validation_all.manifest.json").exists()
    early = aioc4("merge", str(out), "--split", "validation")
    assert early.returncode == 1
    assert early.error_lines == ["aioc4: error: 1 of 2 shard(s) not complete yet: 1"]
    second = aioc4(*args, "--num-workers", "2", "--worker-index", "1")
    assert second.returncode == 0, second.stderr
    assert (out / "c4_validation_all.manifest.json").exists()  # written by the last worker
    (out / "c4_validation_all.manifest.json").unlink()
    merged = aioc4("merge", str(out), "--split", "validation")
    assert merged.returncode == 0, merged.stderr
    assert merged.stdout.strip() == f"{out}/c4_validation_all.manifest.json: 2 part(s), 1,400 documents"
    assert parts_in(out) == expected_parts(fake_repo, "validation", None)  # no part limit: a file a shard
    assert list(expected_parts(fake_repo, "validation", None)) == [
        "c4_validation_shard00000.jsonl",
        "c4_validation_shard00001.jsonl",
    ]


def test_a_shard_selection_and_a_rerun_that_skips_complete_shards(
    aioc4: Aioc4, fake_repo: FakeRepo, hub: HubServerProcess
) -> None:
    out = aioc4.cwd / "out"
    args = ["--num-samples", "all", "--shards", "1-2", "--max-lines-per-file", "5000", "--procs", "1",
            "--output-dir", str(out)]  # fmt: skip
    result = aioc4(*args)
    assert result.returncode == 0, result.stderr
    assert parts_in(out) == expected_parts(fake_repo, "train", 5000, [1, 2])
    assert (out / "c4_train_shards1-2.manifest.json").exists()
    hub.reset_stats()
    again = aioc4(*args)
    assert again.returncode == 0, again.stderr
    assert hub.stats()["storage_body_bytes"] == 0
    assert "shard 1 (en/c4-train.00001-of-00003.json.gz) is already complete" in again.stderr


def test_shards_select_the_source_of_a_count_job_too(aioc4: Aioc4, fake_repo: FakeRepo) -> None:
    out = aioc4.cwd / "out"
    result = aioc4("--num-samples", "100", "--shards", "2", "--output-dir", str(out))
    assert result.returncode == 0, result.stderr
    lines = list(iter_shard_lines(fake_repo.root / shard_paths(fake_repo, "train")[2]))
    assert parts_in(out) == {"c4_train_100.jsonl": jsonl(lines[:100])}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num-workers", "2", "--worker-index", "0"], "--num-workers, --worker-index are only for bulk "
         "pulls: add --num-samples all"),
        (["--procs", "0"], "argument --procs: must be a positive integer, got 0"),
        (["--num-samples", "all", "--procs", "300"], "argument --procs: must be at most 256, got 300"),
        (["--num-samples", "all", "--num-workers", "2", "--worker-index", "2"],
         "worker index 2 (from flags) is not within 0..1"),
        (["--num-samples", "all", "--shards", "1-x"], "argument --shards: '1-x' is not a shard number"),
        (["--num-samples", "all", "--shards", "7", "--procs", "1"],
         "--shards: no shard 7 in this split (it has shards 0-2)"),
        (["--num-samples", "some"], "argument --num-samples: must be a positive integer, got 'some'"),
    ],
)  # fmt: skip
def test_bad_bulk_arguments_are_one_line_usage_errors(
    aioc4: Aioc4, hub: HubServerProcess, args: list[str], message: str
) -> None:
    hub.reset_stats()
    result = aioc4(*args)
    assert result.returncode == 2
    assert len(result.error_lines) == 1, result.stderr
    assert message in result.error_lines[0]
    assert hub.stats()["storage_body_bytes"] == 0


def test_the_scheduler_examples_are_valid_aioc4_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Kubernetes and AWS Batch examples parse into the bulk pull they describe."""
    import yaml

    monkeypatch.setenv("JOB_COMPLETION_INDEX", "3")  # what Kubernetes gives pod 3

    job = yaml.safe_load((REPO_ROOT / "examples/kubernetes-indexed-job.yaml").read_text())
    container = job["spec"]["template"]["spec"]["containers"][0]
    k8s = config_from_args(build_parser().parse_args([str(arg) for arg in container["args"]]))
    assert k8s.bulk is not None
    assert k8s.bulk.num_workers == job["spec"]["completions"] == 8
    assert k8s.bulk.worker_index == 3
    monkeypatch.delenv("JOB_COMPLETION_INDEX")
    monkeypatch.setenv("AWS_BATCH_JOB_ARRAY_INDEX", "5")
    monkeypatch.setenv("AWS_BATCH_JOB_ARRAY_SIZE", "8")
    batch_definition = json.loads((REPO_ROOT / "examples/aws-batch-job-definition.json").read_text())
    container_properties = batch_definition["containerProperties"]
    batch = config_from_args(build_parser().parse_args(container_properties["command"]))
    assert batch.bulk is not None
    assert (batch.bulk.worker_index, batch.bulk.num_workers) == (5, 8)
    assert (batch.s3, batch.revision) == (k8s.s3, k8s.revision)
    if container_properties.get("secrets"):  # Batch reads them with the execution role, not the job role
        assert container_properties["executionRoleArn"].startswith("arn:aws:iam::")


def test_a_bad_bucket_stops_a_multi_process_pull_with_one_line_and_no_folder(aioc4: Aioc4) -> None:
    out = aioc4.cwd / "out"
    result = aioc4(
        "--num-samples", "all", "--procs", "2", "--output-dir", str(out), "--s3-path", "s3://no-such-bucket/x"
    )
    assert result.returncode == 1
    assert result.error_lines == ["aioc4: error: S3 bucket 'no-such-bucket' does not exist"], result.stderr
    assert not out.exists()


def test_the_default_process_count_follows_the_cpus_this_process_may_use(aioc4: Aioc4) -> None:
    """Under an affinity of one CPU (`taskset -c 0`) a bulk pull runs one process, on any host."""
    one_cpu = {min(os.sched_getaffinity(0))}
    result = subprocess.run(
        [*aioc4.command(), "--num-samples", "all", "--dry-run"],
        cwd=aioc4.cwd, env=aioc4.env, capture_output=True, text=True, timeout=120, check=False,
        preexec_fn=lambda: os.sched_setaffinity(0, one_cpu),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "This worker:    1 of 1, 1 process(es): 3 shard(s)" in result.stdout


def test_a_bulk_dry_run_lists_this_workers_shards_and_transfers_nothing(
    aioc4: Aioc4, fake_repo: FakeRepo, hub: HubServerProcess
) -> None:
    out = aioc4.cwd / "out"
    hub.reset_stats()
    args = ["--num-samples", "all", "--num-workers", "2", "--worker-index", "1", "--max-lines-per-file", "10"]
    result = aioc4(*args, "--compression", "gzip", "--dry-run", "--json", "--output-dir", str(out))
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    paths = shard_paths(fake_repo, "train")
    assert [(shard["position"], shard["path"]) for shard in plan["bulk_shards"]] == [(1, paths[1])]
    assert plan["bulk_shards"][0]["first_part"] == "c4_train_shard00001_part000001.jsonl.gz"
    assert plan["bulk_shards"][0]["manifest"] == "c4_train_shard00001.manifest.json"
    assert hub.stats()["storage_body_bytes"] == 0
    assert not out.exists()


def test_sigterm_reaches_every_process_and_a_rerun_finishes_the_pull(
    tmp_path: Path, fake_repo: FakeRepo, s3: MotoServerProcess
) -> None:
    """A scheduler stops the parent only (PID 1 in a container): it must stop its children, keep what
    they finished, exit 143, and the same command must then complete the pull exactly."""
    with HubServerProcess(fake_repo.root, pace_bytes_per_s=3e6) as paced:
        env = clean_env(paced.endpoint, s3.env(), tmp_path)
        runner = Aioc4(cwd=tmp_path, env=env)
        out = tmp_path / "out"
        args = [
            "--num-samples",
            "all",
            "--procs",
            "2",
            "--max-lines-per-file",
            "4000",
            "--max-download-rate",
            "6M",  # 3 MB/s for each process, over all its connections
            "--output-dir",
            str(out),
        ]
        process = runner.popen(*args)
        # mid-way: a part is finished (so a shard has work to resume) and the paced storage is still sending
        wait_until(
            lambda: process.poll() is not None or any(out.glob("c4_train_shard*_part*.jsonl")),
            "the first finished part",
        )
        assert process.poll() is None, "the pull ended before it could be stopped"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 143, stderr
        assert "run the same command again to resume" in stderr
        assert not list(out.glob(".*.tmp"))  # no half-written part left behind
        again = runner(*args)
        assert again.returncode == 0, again.stderr
    assert parts_in(out) == expected_parts(fake_repo, "train", 4000)


def test_a_bulk_pulls_json_summary_names_the_job_and_its_combined_manifest(aioc4: Aioc4) -> None:
    out = aioc4.cwd / "out"
    result = aioc4(
        "--num-samples", "all", "--split", "validation", "--procs", "1", "--json", "--output-dir", str(out)
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["num_samples"] == "all"
    assert summary["manifest"] == str(out / "c4_validation_all.manifest.json")
    assert (out / "c4_validation_all.manifest.json").exists()
    assert summary["counts"]["documents"] == 1_400


def test_shards_are_known_by_the_number_in_their_names_and_strays_are_not_shards(
    fake_repo: FakeRepo, tmp_path: Path
) -> None:
    """Shard 00001 missing from the listing, a stray copy of shard 00000 beside it: the bulk parts are
    named shard00000 and shard00002 (C4's numbers, not listing positions), and the stray is not read."""
    import shutil

    root = tmp_path / "repo"
    shutil.copytree(fake_repo.root, root, copy_function=os.link)
    paths = shard_paths(fake_repo, "train")
    (root / paths[1]).unlink()
    stray = root / paths[0].replace(".json.gz", " copy.json.gz")
    stray.write_bytes(gzip.compress(b'{"text":"not a C4 document"}\n'))
    with HubServerProcess(root) as hub:
        runner = Aioc4(cwd=tmp_path, env=clean_env(hub.endpoint, {}, tmp_path))
        bulk = runner("--num-samples", "all", "--procs", "1", "--output-dir", "bulk")
        count = runner("--num-samples", str(DOCS_PER_TRAIN_SHARD + 5), "--output-dir", "count")
    assert bulk.returncode == 0, bulk.stderr
    first = list(iter_shard_lines(fake_repo.root / paths[0]))
    third = list(iter_shard_lines(fake_repo.root / paths[2]))
    assert parts_in(tmp_path / "bulk") == {
        "c4_train_shard00000.jsonl": jsonl(first),
        "c4_train_shard00002.jsonl": jsonl(third),
    }
    assert count.returncode == 0, count.stderr
    name = f"c4_train_{DOCS_PER_TRAIN_SHARD + 5}.jsonl"
    assert parts_in(tmp_path / "count") == {name: jsonl([*first, *third[:5]])}


def test_a_bulk_pull_does_not_write_over_a_shard_file_it_did_not_make(
    aioc4: Aioc4, fake_repo: FakeRepo
) -> None:
    out = aioc4.cwd / "out"
    out.mkdir()
    (out / "c4_validation_shard00001.jsonl").write_bytes(b"someone else's\n")
    args = ["--num-samples", "all", "--split", "validation", "--procs", "1", "--output-dir", str(out)]
    refused = aioc4(*args)
    assert refused.returncode == 2, refused.stderr
    assert (
        "c4_validation_shard00001.jsonl already exist(s) and no manifest of this job records them"
        in (refused.error_lines[0])
    )
    assert (out / "c4_validation_shard00001.jsonl").read_bytes() == b"someone else's\n"
    replaced = aioc4(*args, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert parts_in(out) == expected_parts(fake_repo, "validation", None)
