"""Part naming and splitting: the original tool's rules."""

from __future__ import annotations

import pytest

from aioc4.naming import (
    PART_NAME,
    part_count,
    part_index,
    part_name,
    part_names,
    part_sizes,
    renames_for_short_split,
    temp_part_glob,
    temp_part_name,
)


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


def test_a_config_other_than_en_is_part_of_every_name() -> None:
    assert part_names("train", 1000, None, "en.noclean") == ["c4_en.noclean_train_1000.jsonl"]
    assert part_names("validation", 1000, 500, "af") == [
        "c4_af_validation_1000_part001.jsonl",
        "c4_af_validation_1000_part002.jsonl",
    ]
    assert part_names("train", 10, None, "en") == ["c4_train_10.jsonl"]
    assert temp_part_name("train", 1000, 2, "bg-Latn") == ".c4_bg-Latn_train_1000_part002.jsonl.tmp"
    assert temp_part_glob("train", 1000, "bg-Latn") == ".c4_bg-Latn_train_1000_part*.jsonl*.tmp"
    assert temp_part_glob("train", 1000) == ".c4_train_1000_part*.jsonl*.tmp"
    assert renames_for_short_split("train", 900, 450, 400, finished=1, config="realnewslike") == [
        ("c4_realnewslike_train_900_part001.jsonl", "c4_realnewslike_train_450_part001.jsonl")
    ]


def test_part_numbers_are_padded_to_sort_past_999_parts() -> None:
    names = part_names("train", 1500, 1)
    assert names[0] == "c4_train_1500_part0001.jsonl"
    assert names[998:1000] == ["c4_train_1500_part0999.jsonl", "c4_train_1500_part1000.jsonl"]
    assert names[-1] == "c4_train_1500_part1500.jsonl"
    assert sorted(names) == names
    assert [part_index(name) for name in names] == list(range(1, 1501))
    assert part_names("train", 999, 1)[-1] == "c4_train_999_part999.jsonl"  # up to 999 parts: as before
    assert part_names("train", 999, 1)[0] == "c4_train_999_part001.jsonl"
    assert part_name("validation", 10**5, 7, 10**5, "af") == "c4_af_validation_100000_part000007.jsonl"


def test_short_split_renames_follow_the_padding_of_the_real_count() -> None:
    assert renames_for_short_split("train", 1200, 800, 1, finished=2) == [
        ("c4_train_1200_part0001.jsonl", "c4_train_800_part001.jsonl"),
        ("c4_train_1200_part0002.jsonl", "c4_train_800_part002.jsonl"),
    ]


@pytest.mark.parametrize(
    "name",
    [
        "c4_train_7.jsonl",
        "c4_validation_7_part001.jsonl",
        "c4_train_1500_part1500.jsonl",
        "c4_en.noclean_train_7.jsonl",
        "c4_bg-Latn_validation_7_part002.jsonl",
    ],
)
def test_part_name_pattern_accepts_every_name_aioc4_gives(name: str) -> None:
    assert PART_NAME.match(name)


@pytest.mark.parametrize(
    "name",
    [
        "c4_train_7_part01.jsonl",
        "c4_test_7.jsonl",
        "c4_../x_train_7.jsonl",
        "c4_a..b_train_7.jsonl",
        "c4_.x_train_7.jsonl",
        "c4_a/b_train_7.jsonl",
        "x/c4_train_7.jsonl",
        "c4_train_7.jsonl.tmp",
    ],
)
def test_part_name_pattern_rejects_anything_else(name: str) -> None:
    assert not PART_NAME.match(name)
