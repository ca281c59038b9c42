"""Inflating and splitting shards fed in arbitrary chunks."""

from __future__ import annotations

import gzip
import json

import pytest

from aioc4.decode import GzipLineDecoder, parse_lines
from aioc4.errors import CorruptShardError

DOCS = [
    {
        "text": f'Dokument {i} — naïve café\nzweiter Absatz 東京 🙂 "quoted" \\ end',
        "timestamp": "2019-04-25T12:57:54Z",
        "url": f"https://example.com/{i}",
    }
    for i in range(200)
]
LINES = [json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode() for doc in DOCS]


def decode_all(data: bytes, chunk: int) -> list[bytes]:
    decoder = GzipLineDecoder("en/test.json.gz")
    lines: list[bytes] = []
    for start in range(0, len(data), chunk):
        lines += decoder.feed(data[start : start + chunk])
    return lines + decoder.finish()


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_lines_come_out_whole_and_in_order_whatever_the_chunking(chunk: int) -> None:
    data = gzip.compress(b"\n".join(LINES) + b"\n")
    assert decode_all(data, chunk) == LINES


def test_last_line_without_newline_is_kept() -> None:
    assert decode_all(gzip.compress(b"\n".join(LINES)), 100) == LINES


def test_multi_member_gzip_is_read_to_the_end() -> None:
    data = gzip.compress(b"\n".join(LINES[:50]) + b"\n") + gzip.compress(b"\n".join(LINES[50:]) + b"\n")
    assert decode_all(data, 333) == LINES


def test_truncated_gzip_names_the_shard() -> None:
    data = gzip.compress(b"\n".join(LINES) + b"\n")
    with pytest.raises(CorruptShardError, match=r"en/test\.json\.gz: gzip stream is truncated"):
        decode_all(data[: len(data) // 2], 1000)


def test_bytes_that_are_not_gzip_name_the_shard() -> None:
    with pytest.raises(CorruptShardError, match=r"en/test\.json\.gz: not valid gzip"):
        decode_all(b"this is not gzip at all", 10)


def test_parse_lines_keeps_source_bytes_and_counts_text_characters() -> None:
    batch = parse_lines(LINES, shard="s", first_line_number=1)
    assert batch.lines is LINES
    assert batch.text_chars == sum(len(doc["text"]) for doc in DOCS)
    assert batch.first_text == DOCS[0]["text"]
    head = batch.slice(0, 3)
    assert head.lines == LINES[:3]
    assert head.text_chars == sum(len(doc["text"]) for doc in DOCS[:3])
    assert head.first_text == DOCS[0]["text"]
    middle = batch.slice(5, 9)
    assert (middle.shard, middle.first_line, middle.lines) == ("s", 6, LINES[5:9])
    assert middle.text_chars == sum(len(doc["text"]) for doc in DOCS[5:9])
    assert middle.first_text is None


@pytest.mark.parametrize("bad", [b"[1, 2]", b'{"url": "no text"}', b"{not json", b""])
def test_a_line_that_is_not_a_document_is_an_error_naming_shard_and_line(bad: bytes) -> None:
    with pytest.raises(CorruptShardError, match=r"^en/x\.json\.gz: line 12 "):
        parse_lines([*LINES[:2], bad], shard="en/x.json.gz", first_line_number=10)
