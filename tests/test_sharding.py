"""Shard selections and worker shares: pure rules, checked exhaustively where it is cheap."""

from __future__ import annotations

import itertools

import pytest

from aioc4.errors import UsageError
from aioc4.sharding import (
    WorkerSlot,
    parse_shard_selection,
    select_shards,
    selection_text,
    worker_share,
    worker_slot,
)


def test_a_selection_mixes_numbers_and_ranges_sorted_without_repeats() -> None:
    assert parse_shard_selection("0-3,200, 2,7-7") == (0, 1, 2, 3, 7, 200)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "'' is not a shard number"),
        ("1,,2", "'' is not a shard number"),
        ("a-3", "'a-3' is not a shard number"),
        ("-3", "'-3' is not a shard number"),
        ("5-2", "the range 5-2 runs backwards"),
        ("0-100000", "100000 is beyond the largest shard number"),
    ],
)
def test_a_malformed_selection_is_a_one_line_usage_error(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        parse_shard_selection(text)
    assert "\n" not in str(caught.value)


def test_selecting_shards_the_split_does_not_have_names_them() -> None:
    assert select_shards([0, 1, 2, 3], None) == [0, 1, 2, 3]
    assert select_shards([0, 1, 2, 3], (1, 3)) == [1, 3]
    with pytest.raises(UsageError, match=r"^--shards: no shard 4, 9 in this split \(it has shards 0-3\)$"):
        select_shards([0, 1, 2, 3], (2, 4, 9))


@pytest.mark.parametrize(
    ("shards", "count", "procs"), list(itertools.product([0, 1, 7, 64], [1, 2, 3, 5], [1, 2, 4]))
)
def test_shares_are_disjoint_and_cover_the_selection(shards: int, count: int, procs: int) -> None:
    selection = list(range(100, 100 + shards))
    shares = [
        worker_share(selection, WorkerSlot(index, count), procs, proc)
        for index in range(count)
        for proc in range(procs)
    ]
    flat = [shard for share in shares for shard in share]
    assert sorted(flat) == selection  # every shard exactly once
    sizes = [len(share) for share in shares]
    assert max(sizes) - min(sizes) <= procs  # round-robin keeps workers within a few shards of each other


def test_worker_shares_are_round_robin_and_stable() -> None:
    selection = list(range(10))
    assert worker_share(selection, WorkerSlot(1, 3)) == [1, 4, 7]
    assert worker_share(selection, WorkerSlot(1, 3), procs=2, proc=1) == [4]


def test_flags_give_the_slot_and_win_over_the_environment() -> None:
    environment = {"JOB_COMPLETION_INDEX": "3", "AWS_BATCH_JOB_ARRAY_INDEX": "4"}
    assert worker_slot(8, 2, environment) == WorkerSlot(2, 8)
    assert worker_slot(None, None, {}) == WorkerSlot(0, 1)


def test_kubernetes_indexed_jobs_give_the_index_and_the_flag_the_count() -> None:
    assert worker_slot(8, None, {"JOB_COMPLETION_INDEX": "5"}) == WorkerSlot(5, 8)
    with pytest.raises(UsageError, match="give the number of workers with --num-workers"):
        worker_slot(None, None, {"JOB_COMPLETION_INDEX": "5"})


def test_aws_batch_array_jobs_give_index_and_size() -> None:
    environment = {"AWS_BATCH_JOB_ARRAY_INDEX": "7", "AWS_BATCH_JOB_ARRAY_SIZE": "10"}
    assert worker_slot(None, None, environment) == WorkerSlot(7, 10)
    assert worker_slot(20, None, environment) == WorkerSlot(7, 20)


@pytest.mark.parametrize(
    ("num_workers", "worker_index", "environment", "message"),
    [
        (4, 4, {}, r"worker index 4 \(from flags\) is not within 0..3"),
        (4, None, {}, "--num-workers 4 needs --worker-index"),
        (
            2,
            None,
            {"JOB_COMPLETION_INDEX": "²"},
            "JOB_COMPLETION_INDEX must be a non-negative integer, got '²'",
        ),
        (
            2,
            None,
            {"JOB_COMPLETION_INDEX": " 1"},
            "JOB_COMPLETION_INDEX must be a non-negative integer, got ' 1'",
        ),
        (None, 2, {}, "give the number of workers with --num-workers"),
        (
            None,
            None,
            {"AWS_BATCH_JOB_ARRAY_INDEX": "x", "AWS_BATCH_JOB_ARRAY_SIZE": "3"},
            "AWS_BATCH_JOB_ARRAY_INDEX must be a non-negative integer, got 'x'",
        ),
        (0, 0, {}, r"is not within 0..-1"),
    ],
)
def test_an_impossible_slot_is_a_usage_error(
    num_workers: int | None, worker_index: int | None, environment: dict[str, str], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        worker_slot(num_workers, worker_index, environment)


def test_a_selection_is_written_back_compactly() -> None:
    assert selection_text([7, 0, 1, 2, 3, 200, 9]) == "0-3,7,9,200"
    assert parse_shard_selection(selection_text([7, 0, 1, 2, 3, 200])) == (0, 1, 2, 3, 7, 200)
