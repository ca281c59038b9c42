"""`make demo`: the main job end to end, offline, against a local Hub and a local S3.

Generates four deterministic C4-format shards, starts the local Hub server and moto's S3 server,
runs aioc4 twice (to S3, then to a local folder) exactly as a user would, through nothing but
`HF_ENDPOINT` and `AWS_ENDPOINT_URL_S3`, shows what landed and checks it is the first N documents
in order, then stops the servers.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scripts.hub_server import HubServerProcess
from scripts.s3_server import MotoServerProcess, create_bucket, list_objects
from scripts.shards import FakeRepo, build_fake_c4, iter_shard_lines

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO_ROOT / "demo-output"
NUM_SAMPLES = 20_000
PART_LINES = 5_000
BUCKET = "demo-bucket"
NEWLINE = b"\n"


def banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def first_documents(repo: FakeRepo, count: int) -> bytes:
    shards = sorted(path for path in repo.files if path.startswith("en/c4-train."))
    lines = (line for path in shards for line in iter_shard_lines(repo.root / path))
    return b"".join(line + b"\n" for _, line in zip(range(count), lines, strict=False))


def run_aioc4(args: list[str], env: dict[str, str]) -> float:
    command = [sys.executable, "-m", "aioc4", *args]
    print("$ aioc4 " + " ".join(args), flush=True)
    started = time.monotonic()
    subprocess.run(command, env=env, cwd=REPO_ROOT, check=True)
    return time.monotonic() - started


def show(name: str, body: bytes) -> None:
    print(f"  {name}  {len(body):>12,} bytes  {body.count(NEWLINE):>6,} lines")


def check(label: str, parts: dict[str, bytes], expected: bytes) -> None:
    joined = b"".join(parts[name] for name in sorted(parts))
    verdict = "OK" if joined == expected else "MISMATCH"
    print(
        f"{label}: {len(parts)} parts, {len(joined):,} bytes, the first {NUM_SAMPLES:,} documents: {verdict}"
    )
    if joined != expected:
        raise SystemExit(1)


def main() -> None:
    banner("generating 4 deterministic C4-format shards (6,000 documents each)")
    repo = build_fake_c4(DEMO_DIR / "shards", train_shards=4, docs_per_train_shard=6_000)
    expected = first_documents(repo, NUM_SAMPLES)
    with tempfile.TemporaryDirectory() as home, HubServerProcess(repo.root) as hub, MotoServerProcess() as s3:
        banner(f"local Hub at {hub.endpoint} (storage {hub.storage}), local S3 at {s3.endpoint}")
        asyncio.run(create_bucket(s3.endpoint, BUCKET))
        env = {name: value for name, value in os.environ.items() if not name.startswith(("HF_", "AWS_"))}
        env.update(s3.env())
        env.update(
            {
                "HF_ENDPOINT": hub.endpoint,
                "HF_HOME": str(Path(home) / "hf"),
                "AWS_EC2_METADATA_DISABLED": "true",
            }
        )

        banner("to S3: parts uploaded while later ones are read, local copies cleaned up")
        s3_args = ["--num-samples", str(NUM_SAMPLES), "--max-lines-per-file", str(PART_LINES)]
        s3_args += ["--s3-path", f"s3://{BUCKET}/c4", "--output-dir", str(Path(home) / "staging")]
        s3_seconds = run_aioc4(s3_args, env)
        served = hub.stats()["storage_body_bytes"]

        local_dir = DEMO_DIR / "local"
        for stale in local_dir.glob("c4_*"):  # parts and manifest of an earlier demo: run for real again
            stale.unlink()
        banner("to a local folder")
        local_args = ["--num-samples", str(NUM_SAMPLES), "--max-lines-per-file", str(PART_LINES)]
        local_seconds = run_aioc4([*local_args, "--output-dir", str(local_dir)], env)

        banner(f"what landed in s3://{BUCKET}/")
        landed = asyncio.run(list_objects(s3.endpoint, BUCKET))
        for key, body in sorted(landed.items()):
            show(f"s3://{BUCKET}/{key}", body)
        print(f"  local staging folder left behind: {(Path(home) / 'staging').exists()}")
        banner(f"what landed in {local_dir.relative_to(REPO_ROOT)}/")
        local = {path.name: path.read_bytes() for path in sorted(local_dir.glob("c4_*"))}
        for name, body in local.items():
            show(name, body)

        banner("checks and figures (whole processes, start-up included)")
        check(
            "S3",
            {key.rsplit("/", 1)[-1]: body for key, body in landed.items() if key.endswith(".jsonl")},
            expected,
        )
        check("local", {name: body for name, body in local.items() if name.endswith(".jsonl")}, expected)
        verified = subprocess.run(
            [sys.executable, "-m", "aioc4", "verify", f"s3://{BUCKET}/c4"], env=env, check=False
        )
        print(f"aioc4 verify s3://{BUCKET}/c4: exit {verified.returncode}")
        rate = NUM_SAMPLES / s3_seconds
        print(f"S3 run:    {s3_seconds:.2f} s, {rate:,.0f} docs/s, {served:,} gzip bytes read from the Hub")
        print(f"local run: {local_seconds:.2f} s, {NUM_SAMPLES / local_seconds:,.0f} docs/s")
    banner("servers stopped")


if __name__ == "__main__":
    main()
