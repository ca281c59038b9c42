"""Combining shard manifests into a bulk job's manifest (pure), and the names involved."""

from __future__ import annotations

import pytest

from aioc4.decode import SourcePosition
from aioc4.errors import Aioc4Error, IncompleteJobError
from aioc4.manifest import JobIdentity, Manifest, PartRecord
from aioc4.merge import combine, shard_manifest_position
from aioc4.naming import PART_NAME, ShardNaming, combined_manifest_name

COMMIT = "c" * 40


def shard_manifest(
    position: int, lines: list[int], *, complete: bool = True, commit: str = COMMIT
) -> Manifest:
    path = f"en/c4-train.{position:05d}-of-00004.json.gz"
    request = JobIdentity("allenai/c4", "main", "en", "train", 0, 10, commit, shard=path, split_shards=4)
    naming = ShardNaming("train", position, 10)
    parts, line = [], 1
    for index, count in enumerate(lines, start=1):
        first, last = SourcePosition(path, line), SourcePosition(path, line + count - 1)
        parts.append(PartRecord(naming.final(index, 0), count, 100 * count, "0" * 8, 1, 5, first, last))
        line += count
    return Manifest(request=request, parts=parts, complete=complete)


def test_combining_joins_the_shards_parts_in_shard_order() -> None:
    shards = {
        2: shard_manifest(2, [10, 3]),
        0: shard_manifest(0, [10]),
        1: shard_manifest(1, [7]),
        3: shard_manifest(3, [1]),
    }
    combined = combine(shards, None)
    assert [part.name for part in combined.parts] == [
        "c4_train_shard00000_part000001.jsonl",
        "c4_train_shard00001_part000001.jsonl",
        "c4_train_shard00002_part000001.jsonl",
        "c4_train_shard00002_part000002.jsonl",
        "c4_train_shard00003_part000001.jsonl",
    ]
    assert combined.complete
    assert (combined.request.num_samples, combined.request.shard, combined.request.shards) == (31, "", "")
    selected = combine(shards, [1, 2])
    assert (selected.documents, selected.request.shards) == (20, "1-2")


def test_missing_or_unfinished_shards_are_named() -> None:
    shards = {0: shard_manifest(0, [10]), 2: shard_manifest(2, [4], complete=False)}
    with pytest.raises(IncompleteJobError, match=r"^3 of 4 shard\(s\) not complete yet: 1, 2, 3$"):
        combine(shards, None)
    assert combine(shards, [0]).documents == 10


def test_shards_pulled_at_different_commits_do_not_combine() -> None:
    shards = {0: shard_manifest(0, [10]), 1: shard_manifest(1, [10], commit="d" * 40)}
    with pytest.raises(Aioc4Error, match="pin --revision to one commit for every worker"):
        combine(shards, [0, 1])


def test_names_of_bulk_files() -> None:
    assert combined_manifest_name("train", "en", "") == "c4_train_all.manifest.json"
    assert combined_manifest_name("validation", "af", "0-3,7") == "c4_af_validation_shards0-3_7.manifest.json"
    long = ",".join(str(n) for n in range(0, 200, 2))
    assert combined_manifest_name("train", "en", long).startswith("c4_train_shardsh")
    assert shard_manifest_position("c4_train_shard01023.manifest.json") == 1023
    assert shard_manifest_position("c4_train_1000.manifest.json") is None
    naming = ShardNaming("train", 17, None, "en.noclean")
    assert naming.final(1, 5) == "c4_en.noclean_train_shard00017.jsonl"
    assert naming.manifest() == "c4_en.noclean_train_shard00017.manifest.json"
    for name in (naming.final(1, 5), ShardNaming("train", 3, 10).final(12, 0)):
        assert PART_NAME.match(name)
    assert not PART_NAME.match("c4_train_shard017.jsonl")  # always five digits
