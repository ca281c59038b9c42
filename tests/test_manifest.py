"""The manifest: round trip, strict parsing (its names become paths and keys), resume planning."""

from __future__ import annotations

import dataclasses

import pytest

from aioc4.decode import SourcePosition
from aioc4.errors import ManifestError
from aioc4.manifest import JobIdentity, Manifest, PartRecord, ResumePoint, resume_point
from aioc4.naming import CountNaming
from aioc4.variants import BUILTIN_VARIANTS, shard_pattern

REQUEST = JobIdentity("allenai/c4", "main", "en", "train", 3000, 1000, "a" * 40)
S0, S1 = "en/c4-train.00000-of-00002.json.gz", "en/c4-train.00001-of-00002.json.gz"


def part(index: int, first: SourcePosition, last: SourcePosition, lines: int = 1000) -> PartRecord:
    return PartRecord(
        f"c4_train_3000_part{index:03d}.jsonl", lines, 5000, f"{index:08x}", 40, 92_000, first, last
    )


PARTS = [
    part(1, SourcePosition(S0, 1), SourcePosition(S0, 1000)),
    part(2, SourcePosition(S0, 1001), SourcePosition(S1, 200)),
    part(3, SourcePosition(S1, 201), SourcePosition(S1, 1200)),
]


def test_round_trip() -> None:
    manifest = Manifest(request=REQUEST, parts=list(PARTS), complete=True, first_text_preview="Hällo")
    assert Manifest.from_json(manifest.to_json(), where="m") == manifest
    assert manifest.documents == 3000
    assert CountNaming("train", 3000, None).manifest() == "c4_train_3000.manifest.json"


@pytest.mark.parametrize(
    "change",
    [
        {"name": "../../etc/passwd"},
        {"name": "/abs/c4_train_1.jsonl"},
        {"name": "c4_train_3000_part001.jsonl/../x.jsonl"},
        {"name": "c4_../../x_train_3000_part001.jsonl"},
        {"crc32": "not-a-checksum"},
        {"lines": 0},
    ],
)
def test_a_tampered_part_record_is_rejected(change: dict[str, object]) -> None:
    bad = dataclasses.replace(PARTS[0], **change)  # type: ignore[arg-type]
    data = Manifest(request=REQUEST, parts=[bad]).to_json()
    with pytest.raises(ManifestError, match=r"^m is not a valid aioc4 manifest"):
        Manifest.from_json(data, where="m")


def test_a_job_of_another_config_has_its_own_names() -> None:
    assert (
        CountNaming("train", 3000, None, "en.noclean").manifest() == "c4_en.noclean_train_3000.manifest.json"
    )
    request = dataclasses.replace(REQUEST, config_name="bg-Latn")
    parts = [dataclasses.replace(p, name=p.name.replace("c4_", "c4_bg-Latn_")) for p in PARTS]
    manifest = Manifest(request=request, parts=parts)
    assert Manifest.from_json(manifest.to_json(), where="m") == manifest
    assert parts[0].name == "c4_bg-Latn_train_3000_part001.jsonl"


@pytest.mark.parametrize("config", ["../en", "a/b", ".x", "en..x", ""])
def test_a_tampered_config_name_is_rejected(config: str) -> None:
    data = Manifest(request=dataclasses.replace(REQUEST, config_name=config), parts=list(PARTS)).to_json()
    with pytest.raises(ManifestError, match=r"unexpected config name"):
        Manifest.from_json(data, where="m")


@pytest.mark.parametrize("data", [b"", b"{}", b'{"version": 99}', b"[1, 2]", b"not json"])
def test_garbage_is_rejected(data: bytes) -> None:
    with pytest.raises(ManifestError):
        Manifest.from_json(data, where="m")


def test_record_replaces_by_name_and_keeps_order() -> None:
    manifest = Manifest(request=REQUEST, parts=[PARTS[2], PARTS[0]])
    manifest.record(PARTS[1])
    manifest.record(dataclasses.replace(PARTS[0], uploaded=True))
    assert [(p.name, p.uploaded) for p in manifest.parts] == [
        (PARTS[0].name, True),
        (PARTS[1].name, False),
        (PARTS[2].name, False),
    ]


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ([], ResumePoint()),
        (PARTS[:1], ResumePoint(2, 1000, SourcePosition(S0, 1001))),
        (PARTS[:2], ResumePoint(3, 2000, SourcePosition(S1, 201))),
        ([PARTS[0], PARTS[2]], ResumePoint(2, 1000, SourcePosition(S0, 1001))),  # part 2 missing: redo it
        ([PARTS[1], PARTS[2]], ResumePoint()),  # part 1 missing: from the start
    ],
)
def test_resume_point_follows_the_unbroken_run_of_parts(
    parts: list[PartRecord], expected: ResumePoint
) -> None:
    assert resume_point(parts) == expected


def test_differences_ignore_the_pinned_commit() -> None:
    asked = dataclasses.replace(REQUEST, commit="")
    assert REQUEST.differences(asked) == []
    assert REQUEST.differences(dataclasses.replace(asked, max_lines_per_file=500)) == [
        "max_lines_per_file: 1000 -> 500"
    ]


@pytest.mark.parametrize(
    ("path", "matches"),
    [
        ("en/c4-train.00000-of-01024.json.gz", True),
        ("en/c4-validation.00007-of-00008.json.gz", False),
        ("en.noclean/c4-train.00000-of-07168.json.gz", False),
        ("en/../c4-train.00000-of-01024.json.gz", False),
        ("/en/c4-train.00000-of-01024.json.gz", False),
        ("en/sub/c4-train.00000-of-01024.json.gz", False),
        ("en/c4-train.00000-of-01024.json.gz.partial", False),
    ],
)
def test_only_well_formed_shard_paths_of_the_split_are_read(path: str, matches: bool) -> None:
    assert (shard_pattern(BUILTIN_VARIANTS["en"].globs("train")).key(path) is not None) is matches
