"""`--config`: C4's variants, from the dataset card or the built-in table; their shards and file names."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aioc4.errors import UsageError
from aioc4.manifest import Manifest
from aioc4.variants import (
    BUILTIN_VARIANTS,
    MC4_LANGUAGES,
    Variant,
    Variants,
    check_config_name,
    glob_folders,
    glob_regex,
    is_valid_config_name,
    pick_variant,
    shard_pattern,
    variants_from_card,
    variants_to_use,
)
from scripts.hub_server import HubServerProcess
from scripts.s3_server import MotoServerProcess, list_objects
from scripts.shards import CARD_DATA, EXTRA_DOCS_PER_SHARD, FakeRepo, iter_shard_lines

from .conftest import Aioc4, jsonl, objects, parts_in, split_expected

# ------------------------------------------------------------------------------------------ pure parts

REAL_NAMES = ["en", "en.noblocklist", "en.noclean", "realnewslike", "multilingual", "en-multi", "bg-Latn"]


def test_builtin_table_has_every_c4_config() -> None:
    names = list(BUILTIN_VARIANTS)
    assert names[:5] == ["en", "en.noblocklist", "en.noclean", "realnewslike", "multilingual"]
    assert len(MC4_LANGUAGES) == 108
    assert len(names) == 5 + 108
    assert "en-multi" in names
    assert {"af", "bg-Latn", "iw", "und", "zh-Latn", "zu"} <= set(names)
    assert BUILTIN_VARIANTS["en.noclean"].globs("train") == ("en.noclean/c4-train.*.json.gz",)
    assert BUILTIN_VARIANTS["en-multi"].globs("validation") == ("multilingual/c4-en-validation.*.json.gz",)
    multilingual = BUILTIN_VARIANTS["multilingual"].globs("train")
    assert len(multilingual) == 108
    assert multilingual[:2] == ("multilingual/c4-af.*.json.gz", "multilingual/c4-am.*.json.gz")
    assert all(is_valid_config_name(name) for name in names)


def test_builtin_table_agrees_with_the_card() -> None:
    declared = variants_from_card(CARD_DATA)
    for name in ("en", "en.noblocklist", "realnewslike", "af"):
        assert declared[name] == BUILTIN_VARIANTS[name], name


@pytest.mark.parametrize("name", REAL_NAMES)
def test_real_config_names_are_valid(name: str) -> None:
    assert check_config_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "..", "../en", "en/../x", "a/b", ".hidden", "-x", "en.", "en..noclean", "a b", "é", "x" * 65]
)
def test_names_that_could_be_path_tricks_are_rejected(name: str) -> None:
    assert not is_valid_config_name(name)
    with pytest.raises(UsageError, match=r"is not a valid config name"):
        check_config_name(name)


def test_card_configs_are_parsed_with_one_glob_or_a_list() -> None:
    card: dict[str, Any] = {
        "configs": [
            {"config_name": "one", "data_files": [{"split": "train", "path": "one/c4-train.*.json.gz"}]},
            {
                "config_name": "many",
                "data_files": [
                    {"split": "validation", "path": ["m/a-validation.*.gz", "m/b-validation.*.gz"]}
                ],
            },
        ]
    }
    assert variants_from_card(card) == {
        "one": Variant("one", {"train": ("one/c4-train.*.json.gz",)}),
        "many": Variant("many", {"validation": ("m/a-validation.*.gz", "m/b-validation.*.gz")}),
    }


@pytest.mark.parametrize(
    "entry",
    [
        {"config_name": "../en", "data_files": [{"split": "train", "path": "en/*.gz"}]},
        {"config_name": "x", "data_files": [{"split": "train", "path": "../en/*.gz"}]},
        {"config_name": "x", "data_files": [{"split": "train", "path": "/en/*.gz"}]},
        {"config_name": "x", "data_files": [{"split": "train", "path": []}]},
        {"config_name": "x", "data_files": [{"split": "train", "path": ["en/*.gz", 3]}]},
        {"config_name": "x", "data_files": [{"path": "en/*.gz"}]},
        {"config_name": "x", "data_files": "en/*.gz"},
        {"config_name": 5, "data_files": []},
        "en",
    ],
)
def test_malformed_or_unsafe_card_entries_are_left_out(entry: object) -> None:
    good = {"config_name": "en", "data_files": [{"split": "train", "path": "en/c4-train.*.json.gz"}]}
    assert list(variants_from_card({"configs": [entry, good]})) == ["en"]


@pytest.mark.parametrize("card", [None, {}, {"configs": None}, {"configs": "en"}, {"configs": [{"x": 1}]}])
def test_the_builtin_table_is_used_when_the_card_declares_no_usable_config(
    card: dict[str, Any] | None,
) -> None:
    assert variants_to_use(card) == Variants(BUILTIN_VARIANTS, from_card=False)
    assert variants_to_use(CARD_DATA).from_card


def test_an_unknown_config_names_the_valid_ones() -> None:
    variants = variants_to_use(CARD_DATA)
    with pytest.raises(UsageError) as error:
        pick_variant(variants, "xx", "train")
    assert str(error.value) == (
        "unknown --config 'xx'; valid configs (from the dataset card): "
        "en, en.noblocklist, realnewslike, multilingual, af"
    )
    assert error.value.exit_code == 2
    only_train = Variants({"t": Variant("t", {"train": ("t/*.gz",)})}, from_card=True)
    with pytest.raises(UsageError, match=r"^--config 't' has no validation split$"):
        pick_variant(only_train, "t", "validation")
    assert pick_variant(variants, "af", "validation").globs("validation") == (
        "multilingual/c4-af-validation.*.json.gz",
    )


@pytest.mark.parametrize(
    ("glob", "path", "matches"),
    [
        ("en/c4-train.*.json.gz", "en/c4-train.00000-of-01024.json.gz", True),
        ("en/c4-train.*.json.gz", "en/sub/c4-train.00000-of-01024.json.gz", False),  # `*` stops at `/`
        ("en/c4-train.*.json.gz", "en/c4-train.0.json.gz.partial", False),  # anchored at the end
        ("en/c4-train.*.json.gz", "x/en/c4-train.0.json.gz", False),  # and at the start
        ("en/c4-train.*.json.gz", "en/c4-trainX0.json.gz", False),  # `.` is literal
        ("multilingual/c4-bg.*.json.gz", "multilingual/c4-bg.tfrecord-00000-of-00128.json.gz", True),
        ("multilingual/c4-bg.*.json.gz", "multilingual/c4-bg-Latn.tfrecord-00000-of-00004.json.gz", False),
        (
            "multilingual/c4-af.*.json.gz",
            "multilingual/c4-af-validation.tfrecord-00000-of-00001.json.gz",
            False,
        ),
        ("a/?.gz", "a/b.gz", True),
        ("a/?.gz", "a//.gz", False),
        ("*/c4-*.gz", "en/c4-x.gz", True),
    ],
)
def test_globs_are_anchored_and_wildcards_stay_within_a_folder(glob: str, path: str, matches: bool) -> None:
    assert bool(re.fullmatch(glob_regex(glob), path)) is matches


def test_shards_are_ordered_by_glob_then_shard_number() -> None:
    pattern = shard_pattern(
        ["multilingual/c4-af.tfrecord-*.json.gz", "multilingual/c4-am.tfrecord-*.json.gz"]
    )
    assert pattern.key("multilingual/c4-am.tfrecord-00002-of-00010.json.gz") == (1, 2, 10)
    assert pattern.key("multilingual/c4-af.tfrecord-00063-of-00064.json.gz") == (0, 63, 64)
    assert pattern.key("multilingual/c4-af-validation.tfrecord-00000-of-00001.json.gz") is None
    assert pattern.key("multilingual/c4-af.json.gz") is None  # no shard number
    en = shard_pattern(["en/c4-train.*.json.gz"])
    assert en.key("en/c4-train.01023-of-01024.json.gz") == (0, 1023, 1024)


@pytest.mark.parametrize(
    "stray",
    [
        "en/c4-train.00000-of-01024 copy.json.gz",
        "en/c4-train.00000-of-01024.json.gz.bak.json.gz",
        "en/c4-train.0-of-1024.json.gz",
        "en/c4-train.00000-of-01024-old.json.gz",
        "en/c4-train.abcde-of-01024.json.gz",
    ],
)
def test_only_c4s_own_shard_names_are_shards(stray: str) -> None:
    assert shard_pattern(["en/c4-train.*.json.gz"]).key(stray) is None


def test_glob_folders_are_listed_once() -> None:
    assert glob_folders(BUILTIN_VARIANTS["multilingual"].globs("train")) == [("multilingual", False)]
    assert glob_folders(["en/c4-train.*.json.gz", "en.noclean/c4-train.*.json.gz"]) == [
        ("en", False),
        ("en.noclean", False),
    ]
    assert glob_folders(["*/c4-train.*.json.gz", "data/x/*/y.gz", "top.gz"]) == [
        ("", True),
        ("data/x", True),
    ]


# ------------------------------------------------------------------------------------------ end to end

REALNEWSLIKE_TRAIN = [f"realnewslike/c4-train.{i:05d}-of-00002.json.gz" for i in range(2)]
AF_TRAIN = [f"multilingual/c4-af.tfrecord-{i:05d}-of-00002.json.gz" for i in range(2)]
AF_VALIDATION = ["multilingual/c4-af-validation.tfrecord-00000-of-00001.json.gz"]
CARD_CONFIGS = "en, en.noblocklist, realnewslike, multilingual, af"


@pytest.fixture(scope="session")
def lines_of(fake_repo: FakeRepo) -> Callable[[list[str]], list[bytes]]:
    def lines(paths: list[str]) -> list[bytes]:
        return [line for path in paths for line in iter_shard_lines(fake_repo.root / path)]

    return lines


@pytest.fixture
def card(hub: HubServerProcess) -> Iterator[Callable[[str], None]]:
    """Sets what dataset card the Hub serves for one test; the full card again afterwards."""

    def serve(mode: str) -> None:
        hub.set_faults(card=mode)

    yield serve
    hub.set_faults(card="full")


def manifest_at(path: Path) -> Manifest:
    return Manifest.from_json(path.read_bytes(), where=str(path))


def test_realnewslike_parts_hold_its_first_documents_in_shard_order(
    aioc4: Aioc4, lines_of: Callable[[list[str]], list[bytes]]
) -> None:
    count = EXTRA_DOCS_PER_SHARD + 150  # into the second shard
    result = aioc4(
        "--config",
        "realnewslike",
        "--num-samples",
        str(count),
        "--max-lines-per-file",
        "200",
        "--output-dir",
        "o",
    )
    assert result.returncode == 0, result.stderr
    names = [f"c4_realnewslike_train_{count}_part{i:03d}.jsonl" for i in (1, 2, 3)]
    assert parts_in(aioc4.cwd / "o") == split_expected(lines_of(REALNEWSLIKE_TRAIN)[:count], names, 200)
    manifest = manifest_at(aioc4.cwd / "o" / f"c4_realnewslike_train_{count}.manifest.json")
    assert manifest.request.config_name == "realnewslike"
    assert manifest.parts[-1].last.shard == REALNEWSLIKE_TRAIN[1]


def test_af_train_across_both_shards_in_one_file(
    aioc4: Aioc4, lines_of: Callable[[list[str]], list[bytes]]
) -> None:
    result = aioc4("--config", "af", "--num-samples", "500", "--output-dir", "o")
    assert result.returncode == 0, result.stderr
    assert parts_in(aioc4.cwd / "o") == {"c4_af_train_500.jsonl": jsonl(lines_of(AF_TRAIN)[:500])}


def test_af_validation_shorter_than_asked_is_renamed_with_the_config(
    aioc4: Aioc4, lines_of: Callable[[list[str]], list[bytes]]
) -> None:
    result = aioc4(
        "--config", "af", "--split", "validation", "--num-samples", "500", "--max-lines-per-file", "200",
        "--output-dir", "o",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    total = EXTRA_DOCS_PER_SHARD
    names = [f"c4_af_validation_{total}_part{i:03d}.jsonl" for i in (1, 2)]
    assert parts_in(aioc4.cwd / "o") == split_expected(lines_of(AF_VALIDATION), names, 200)
    assert (aioc4.cwd / "o" / "c4_af_validation_500.manifest.json").is_file()


def test_af_to_s3(
    aioc4: Aioc4, s3: MotoServerProcess, bucket: str, lines_of: Callable[[list[str]], list[bytes]]
) -> None:
    result = aioc4(
        "--config", "af", "--num-samples", "500", "--max-lines-per-file", "250",
        "--s3-path", f"s3://{bucket}/c4", "--output-dir", "o",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    names = [f"c4_af_train_500_part{i:03d}.jsonl" for i in (1, 2)]
    expected = split_expected(lines_of(AF_TRAIN)[:500], names, 250)
    assert objects(s3, bucket) == {f"c4/{name}": body for name, body in expected.items()}
    assert not (aioc4.cwd / "o").exists()
    stored = asyncio.run(list_objects(s3.endpoint, bucket, "c4/"))
    manifest = Manifest.from_json(stored["c4/c4_af_train_500.manifest.json"], where="s3")
    assert manifest.request.config_name == "af"
    assert [part.name for part in manifest.parts] == names


def test_an_unknown_config_is_one_usage_error_before_any_download(
    aioc4: Aioc4, hub_bytes: Callable[[], int]
) -> None:
    result = aioc4("--config", "xx", "--output-dir", "o")
    assert result.returncode == 2
    assert result.error_lines == [
        f"aioc4: error: unknown --config 'xx'; valid configs (from the dataset card): {CARD_CONFIGS}"
    ]
    assert "Traceback" not in result.stderr
    assert hub_bytes() == 0
    assert not (aioc4.cwd / "o").exists()


def test_a_config_name_that_is_a_path_trick_is_refused_before_the_hub(aioc4: Aioc4) -> None:
    result = aioc4("--config", "../en", "--output-dir", "o")
    assert result.returncode == 2
    assert len(result.error_lines) == 1
    assert "'../en' is not a valid config name" in result.error_lines[0]
    assert not (aioc4.cwd / "o").exists()


@pytest.mark.parametrize("mode", ["none", "no-configs", "broken"])
def test_the_builtin_table_is_used_without_a_usable_card(
    aioc4: Aioc4, card: Callable[[str], None], mode: str, lines_of: Callable[[list[str]], list[bytes]]
) -> None:
    card(mode)
    result = aioc4("--config", "af", "--num-samples", "400", "--output-dir", "o")
    assert result.returncode == 0, result.stderr
    assert parts_in(aioc4.cwd / "o") == {"c4_af_train_400.jsonl": jsonl(lines_of(AF_TRAIN)[:400])}
    assert "using aioc4's built-in table" in result.stderr
    unknown = aioc4("--config", "xx", "--output-dir", "o2")
    assert unknown.returncode == 2
    [line] = unknown.error_lines
    assert line.startswith(
        "aioc4: error: unknown --config 'xx'; valid configs (from aioc4's built-in table): en, "
    )
    assert ", en-multi, " in line
    assert line.endswith(", zh-Latn, zu")


def test_a_different_config_is_a_different_job(
    aioc4: Aioc4, lines_of: Callable[[list[str]], list[bytes]], source_lines: Callable[[str], list[bytes]]
) -> None:
    first = aioc4("--config", "realnewslike", "--num-samples", "300", "--output-dir", "o")
    assert first.returncode == 0, first.stderr
    second = aioc4("--num-samples", "300", "--output-dir", "o")
    assert second.returncode == 0, second.stderr
    assert parts_in(aioc4.cwd / "o") == {
        "c4_realnewslike_train_300.jsonl": jsonl(lines_of(REALNEWSLIKE_TRAIN)[:300]),
        "c4_train_300.jsonl": jsonl(source_lines("train")[:300]),
    }
    assert manifest_at(aioc4.cwd / "o" / "c4_train_300.manifest.json").request.config_name == "en"
    again = aioc4("--config", "realnewslike", "--num-samples", "300", "--output-dir", "o")
    assert again.returncode == 0, again.stderr
    assert "c4_realnewslike_train_300.manifest.json is already complete" in again.stderr
