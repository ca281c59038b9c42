"""The synchronous approach aioc4 replaces, reimplemented for the benchmark (`scripts/bench.py`).

One step at a time, as the original script did: Hugging Face `datasets` streams the split
(`load_dataset("allenai/c4", "en", split=..., streaming=True)`, through `HF_ENDPOINT`), each sample is
written with `json.dumps(sample, default=str)` into parts named like aioc4's, and with `--s3-path`
each finished part is uploaded with boto3's `upload_file` and then deleted. `datasets` and boto3 are
benchmark-only dependencies (`pip install -e '.[bench]'`).

Run: `python -m scripts.baseline_seed --num-samples N [--max-lines-per-file M] [--output-dir D]
[--s3-path s3://bucket/prefix] [--split train|validation]`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO_ID = "allenai/c4"
CONFIG = "en"


def part_names(split: str, num_samples: int, max_lines: int | None) -> Iterator[str]:
    """The names aioc4 (and the original) give to the parts, in order."""
    if max_lines is None or max_lines >= num_samples:
        yield f"c4_{split}_{num_samples}.jsonl"
        return
    count = -(-num_samples // max_lines)
    for number in range(1, count + 1):
        yield f"c4_{split}_{num_samples}_part{number:03d}.jsonl"


def parse_s3_path(s3_path: str) -> tuple[str, str]:
    """`s3://bucket/prefix` as (bucket, prefix without trailing slash)."""
    if not s3_path.startswith("s3://"):
        raise SystemExit(f"baseline_seed: --s3-path must start with s3://, got {s3_path!r}")
    bucket, _, prefix = s3_path[len("s3://") :].partition("/")
    return bucket, prefix.strip("/")


def stream_samples(split: str) -> Iterable[dict[str, Any]]:
    """The split's samples in order, from `datasets` streaming."""
    import datasets  # type: ignore[import-untyped]

    samples: Iterable[dict[str, Any]] = datasets.load_dataset(REPO_ID, CONFIG, split=split, streaming=True)
    return samples


class S3Uploader:
    """Uploads a finished part with boto3's `upload_file`, then deletes the local copy."""

    def __init__(self, s3_path: str) -> None:
        import boto3  # type: ignore[import-untyped]

        self.bucket, self.prefix = parse_s3_path(s3_path)
        self.client: Any = boto3.client("s3")

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def upload(self, path: Path) -> str:
        self.client.upload_file(str(path), self.bucket, self.key(path.name))
        path.unlink()
        return f"s3://{self.bucket}/{self.key(path.name)}"


def write_parts(
    samples: Iterable[dict[str, Any]], names: Iterator[str], args: argparse.Namespace
) -> list[Path]:
    """Write the first N samples into parts; each finished part is handed to the uploader (if any)."""
    uploader = S3Uploader(args.s3_path) if args.s3_path else None
    per_part = args.max_lines_per_file or args.num_samples
    finished: list[Path] = []
    handle = None
    path = Path()
    for index, sample in enumerate(samples):
        if index >= args.num_samples:
            break
        if index % per_part == 0:
            path = args.output_dir / next(names)
            handle = path.open("w", encoding="utf-8")
        assert handle is not None
        handle.write(json.dumps(sample, default=str) + "\n")
        if (index + 1) % per_part == 0 or index + 1 == args.num_samples:
            handle.close()
            handle = None
            finished.append(path)
            if uploader is not None:
                print(uploader.upload(path), flush=True)
    if handle is not None:
        handle.close()
        finished.append(path)
    return finished


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.baseline_seed", description=__doc__)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--max-lines-per-file", type=int, default=None)
    parser.add_argument("--output-dir", type=Path, default=Path("data/c4_subset"))
    parser.add_argument("--s3-path", default=None)
    parser.add_argument("--split", choices=("train", "validation"), default="train")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    names = part_names(args.split, args.num_samples, args.max_lines_per_file)
    parts = write_parts(stream_samples(args.split), names, args)
    seconds = time.perf_counter() - started
    print(f"{args.num_samples} samples, {len(parts)} files, {seconds:.2f} s", flush=True)


if __name__ == "__main__":
    main()
