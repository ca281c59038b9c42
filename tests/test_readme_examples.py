"""Every example of the README (the original tool's examples), run as written against the local Hub and S3.

The commands are read from README.md itself, so the README and these checks cannot drift apart.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from aioc4.naming import part_names, part_sizes
from scripts.hub_server import HubServerProcess
from scripts.s3_server import MotoServerProcess
from scripts.shards import FakeRepo

from .conftest import REPO_ROOT, Aioc4, jsonl, objects, parts_in

Lines = Callable[[str], list[bytes]]


@dataclass(frozen=True)
class Expected:
    split: str
    count: int
    max_lines: int | None = None
    local_dir: str | None = "data/c4_subset"  # None: the local copies are cleaned up
    s3_prefix: str | None = None


EXAMPLES = {
    "aioc4": Expected("train", 1000),
    "aioc4 --num-samples 10000 --output-dir ./my_data": Expected("train", 10000, local_dir="my_data"),
    "aioc4 --num-samples 30000 --max-lines-per-file 10000": Expected("train", 30000, 10000),
    "aioc4 --split validation --num-samples 1000": Expected("validation", 1000),
    "aioc4 --num-samples 20000 --max-lines-per-file 5000 --s3-path s3://my-bucket/c4-data": Expected(
        "train", 20000, 5000, local_dir=None, s3_prefix="c4-data"
    ),
    "aioc4 --num-samples 10000 --s3-path s3://my-bucket/c4-data --no-cleanup": Expected(
        "train", 10000, s3_prefix="c4-data"
    ),
    "aioc4 --num-samples 15000 --no-streaming --cache-dir /tmp/hf_cache": Expected("train", 15000),
}


def readme_examples() -> list[str]:
    """The `aioc4 ...` lines of the README's first example block under 'Install and use'."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("## Install and use", 1)[1]
    block = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)[1]
    return [line.strip() for line in block.splitlines() if line.startswith("aioc4")]


def test_the_readme_shows_exactly_the_tested_examples() -> None:
    assert readme_examples() == list(EXAMPLES)


def expected_parts(lines: list[bytes], expected: Expected) -> dict[str, bytes]:
    names = part_names(expected.split, expected.count, expected.max_lines)
    sizes = part_sizes(expected.count, expected.max_lines)
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return {
        name: jsonl(lines[start : start + size])
        for name, start, size in zip(names, starts, sizes, strict=True)
    }


@pytest.mark.parametrize("command", list(EXAMPLES))
def test_readme_example(
    command: str, aioc4: Aioc4, s3: MotoServerProcess, bucket: str, source_lines: Lines
) -> None:
    expected = EXAMPLES[command]
    args = [
        arg.replace("s3://my-bucket", f"s3://{bucket}").replace("/tmp/hf_cache", "hf_cache")
        for arg in shlex.split(command)[1:]
    ]
    result = aioc4(*args)
    assert result.returncode == 0, result.stderr
    parts = expected_parts(source_lines(expected.split), expected)
    if expected.local_dir is None:
        assert not (aioc4.cwd / "data").exists()
    else:
        assert parts_in(aioc4.cwd / expected.local_dir) == parts
    if expected.s3_prefix is not None:
        assert objects(s3, bucket) == {f"{expected.s3_prefix}/{name}": body for name, body in parts.items()}
        assert all(f"s3://{bucket}/{expected.s3_prefix}/{name}" in result.stdout for name in parts)
    assert f"Total samples:        {expected.count:,}" in result.stdout
    assert f"Files created:        {len(parts)}" in result.stdout


def test_no_streaming_example_caches_the_needed_shards_and_a_rerun_transfers_none(
    aioc4: Aioc4, hub: HubServerProcess, fake_repo: FakeRepo, source_lines: Lines
) -> None:
    args = ["--num-samples", "15000", "--no-streaming", "--cache-dir", "hf_cache"]
    hub.reset_stats()
    assert aioc4(*args, "--output-dir", "first").returncode == 0
    needed = [f"en/c4-train.{i:05d}-of-00003.json.gz" for i in (0, 1)]  # 15,000 > one shard, < two
    served = hub.stats()["storage_body_bytes_by_path"]
    assert served == {path: (fake_repo.root / path).stat().st_size for path in needed}
    cached = sorted(path.name for path in (aioc4.cwd / "hf_cache").rglob("*.json.gz"))
    assert cached == sorted(Path(path).name for path in needed)

    hub.reset_stats()
    second = aioc4(*args, "--output-dir", "second")
    assert second.returncode == 0, second.stderr
    assert hub.stats()["storage_body_bytes"] == 0
    expected = {"c4_train_15000.jsonl": jsonl(source_lines("train")[:15000])}
    assert parts_in(aioc4.cwd / "first") == expected
    assert parts_in(aioc4.cwd / "second") == expected


def test_no_streaming_without_cache_dir_uses_the_standard_hub_cache(
    aioc4: Aioc4, source_lines: Lines
) -> None:
    result = aioc4("--no-streaming", "--num-samples", "10", "--output-dir", "o")
    assert result.returncode == 0, result.stderr
    hf_home = Path(aioc4.env["HF_HOME"])
    assert [path.name for path in (hf_home / "hub").rglob("*.json.gz")] == ["c4-train.00000-of-00003.json.gz"]
    assert parts_in(aioc4.cwd / "o") == {"c4_train_10.jsonl": jsonl(source_lines("train")[:10])}
