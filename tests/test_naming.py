"""Part naming and splitting: the original tool's rules."""

from __future__ import annotations

import pytest

from aioc4.naming import part_count, part_name, part_names, part_sizes, renames_for_short_split


def test_single_file_when_no_limit_or_limit_not_smaller() -> None:
    assert part_names("train", 1000, None) == ["c4_train_1000.jsonl"]
    assert part_names("train", 1000, 1000) == ["c4_train_1000.jsonl"]
    assert part_names("validation", 5, 10) == ["c4_validation_5.jsonl"]


def test_parts_numbered_from_001_when_limit_is_smaller() -> None:
    assert part_names("train", 20000, 5000) == [
        "c4_train_20000_part001.jsonl",
        "c4_train_20000_part002.jsonl",
        "c4_train_20000_part003.jsonl",
        "c4_train_20000_part004.jsonl",
    ]


@pytest.mark.parametrize(
    ("total", "max_lines", "sizes"),
    [
        (10, None, [10]),
        (10, 10, [10]),
        (10, 3, [3, 3, 3, 1]),
        (12, 4, [4, 4, 4]),
        (1, 1, [1]),
        (7, 1, [1] * 7),
    ],
)
def test_part_sizes_cover_every_document_once(total: int, max_lines: int | None, sizes: list[int]) -> None:
    assert part_sizes(total, max_lines) == sizes
    assert sum(sizes) == total
    assert part_count(total, max_lines) == len(sizes)


def test_part_name_of_single_part_ignores_index() -> None:
    assert part_name("train", 7, 1, 1) == "c4_train_7.jsonl"


def test_short_split_renames_parts_to_the_real_count() -> None:
    # asked 5000 in parts of 800, the split held 2000: parts 1 and 2 were closed as "..._5000_part00N"
    assert renames_for_short_split("validation", 5000, 2000, 800, finished=2) == [
        ("c4_validation_5000_part001.jsonl", "c4_validation_2000_part001.jsonl"),
        ("c4_validation_5000_part002.jsonl", "c4_validation_2000_part002.jsonl"),
    ]


def test_short_split_that_fits_one_file_becomes_single_file_name() -> None:
    # asked 100 in parts of 50, split held exactly 50: nothing was closed early
    assert renames_for_short_split("validation", 100, 50, 50, finished=0) == []
    assert part_names("validation", 50, 50) == ["c4_validation_50.jsonl"]
