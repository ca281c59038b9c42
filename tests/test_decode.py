"""Inflating and checking shards fed in arbitrary chunks; source bytes pass through unchanged."""

from __future__ import annotations

import gzip
import json
import random
import zlib
from dataclasses import dataclass

import orjson
import pytest

from aioc4.decode import MAX_LINE_BYTES, SAMPLE_STRIDE, GzipLineDecoder, ShardLines, _valid_utf8, check_block
from aioc4.errors import CorruptShardError

DOCS = [
    {
        "text": f'Dokument {i} — naïve café\nzweiter Absatz 東京 🙂 "quoted" \\ end ' + "x" * (i % 97) * 30,
        "timestamp": "2019-04-25T12:57:54Z",
        "url": f"https://example.com/{i}",
    }
    for i in range(400)
]


@dataclass
class SkippedRecords:
    skipped_records: int = 0


LINES = [json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode() for doc in DOCS]
DATA = b"".join(line + b"\n" for line in LINES)


def decode_all(data: bytes, chunk: int) -> bytes:
    decoder = GzipLineDecoder("en/test.json.gz")
    blocks = [decoder.feed(data[start : start + chunk]) for start in range(0, len(data), chunk)]
    for block in blocks:
        assert block == b"" or block.endswith(b"\n")  # only whole lines are handed out
    return b"".join(blocks) + decoder.finish()


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_lines_come_out_whole_and_in_order_whatever_the_chunking(chunk: int) -> None:
    assert decode_all(gzip.compress(DATA), chunk) == DATA


def test_last_line_without_newline_is_kept() -> None:
    assert decode_all(gzip.compress(DATA[:-1]), 100) == DATA


def test_multi_member_gzip_is_read_to_the_end() -> None:
    half = len(LINES) // 2
    data = gzip.compress(b"".join(line + b"\n" for line in LINES[:half]))
    data += gzip.compress(b"".join(line + b"\n" for line in LINES[half:]))
    assert decode_all(data, 333) == DATA


def test_truncated_gzip_names_the_shard() -> None:
    data = gzip.compress(DATA)
    with pytest.raises(CorruptShardError, match=r"en/test\.json\.gz: gzip stream is truncated"):
        decode_all(data[: len(data) // 2], 1000)


def test_bytes_that_are_not_gzip_name_the_shard() -> None:
    with pytest.raises(CorruptShardError, match=r"en/test\.json\.gz: not valid gzip"):
        decode_all(b"this is not gzip at all", 10)


def test_a_block_keeps_its_bytes_and_samples_text_lengths_without_bias() -> None:
    batch = check_block(DATA, shard="s", first_line_number=1)
    assert batch.data is DATA
    assert len(batch) == len(LINES)
    assert batch.first_text == DOCS[0]["text"]
    assert batch.samples[0] == (0, len(DOCS[0]["text"]))
    offsets = [offset for offset, _ in batch.samples]
    assert offsets == sorted(set(offsets))
    assert len(offsets) >= len(DATA) // SAMPLE_STRIDE
    for offset, chars in batch.samples:
        assert offset == 0 or DATA[offset - 1 : offset] == b"\n"  # the start of a line
        assert chars == len(DOCS[DATA.count(b"\n", 0, offset)]["text"])


def test_slices_cut_exactly_at_line_boundaries() -> None:
    batch = check_block(DATA, shard="s", first_line_number=10)
    rng = random.Random(1)
    for _ in range(50):
        start = rng.randrange(0, len(LINES))
        stop = rng.randrange(start, len(LINES) + 1)
        part = batch.slice(start, stop)
        assert part.data == b"".join(line + b"\n" for line in LINES[start:stop])
        assert (len(part), part.first_line) == (stop - start, 10 + start)
        for offset, chars in part.samples:
            assert 0 <= offset < len(part.data)
            assert chars == len(DOCS[start + part.data.count(b"\n", 0, offset)]["text"])
        assert part.first_text == (DOCS[0]["text"] if start == 0 else None)


@pytest.mark.parametrize("bad", [b"[1, 2]", b"{not json", b"", b'{"text":"ok"} trailing', b'"text"', b"{}\r"])
def test_a_line_that_is_not_a_json_object_is_an_error_naming_shard_and_line(bad: bytes) -> None:
    data = LINES[0] + b"\n" + LINES[1] + b"\n" + bad + b"\n" + LINES[2] + b"\n"
    with pytest.raises(CorruptShardError, match=r"^en/x\.json\.gz: line 12 "):
        check_block(data, shard="en/x.json.gz", first_line_number=10)


@pytest.mark.parametrize("bad", [b'{"url": "no text"}', b"{not json}", b'{"text": 5}'])
def test_sampled_lines_are_parsed_in_full(bad: bytes) -> None:
    """Braces alone pass the scan; the first line of a block (and every sampled line) is parsed."""
    with pytest.raises(CorruptShardError, match=r"^en/x\.json\.gz: line 7 "):
        check_block(bad + b"\n" + LINES[0] + b"\n", shard="en/x.json.gz", first_line_number=7)


BAD_LINES = [
    pytest.param(b'{"text":"caf\xe9","url":"x"}', "is not valid UTF-8", id="invalid-utf8-in-text"),
    pytest.param(b'{"text":"a","url":"\xff"}', "is not valid UTF-8", id="invalid-utf8-elsewhere"),
    pytest.param(b'{"text":"abc\\"}', "is not valid JSON", id="unterminated-string"),
    pytest.param(b'{"text":"a"}{"text":"b"}', "is not valid JSON", id="two-objects"),
    pytest.param(b'{"text":"a\x01b"}', "is not valid JSON", id="raw-control-character"),
    pytest.param(b'{"text":12}', "is not a JSON object with a 'text' string", id="text-not-a-string"),
    pytest.param(b'{"url":"no text"}', "is not a JSON object with a 'text' string", id="no-text"),
    pytest.param(b"", "is not valid JSON", id="blank-line"),
]


@pytest.mark.parametrize(("bad", "problem"), BAD_LINES)
@pytest.mark.parametrize("position", [0, 1, 15_000])
def test_every_line_of_every_block_is_checked_whatever_its_position(
    bad: bytes, problem: str, position: int
) -> None:
    """Not only the first documents or a sample: a bad line at line 15,000 of a block is found too."""
    lines = [LINES[index % len(LINES)] for index in range(max(position + 2, len(LINES)))]
    lines[position] = bad
    data = b"".join(line + b"\n" for line in lines)
    with pytest.raises(CorruptShardError, match=rf"^en/x\.json\.gz: line {100 + position} {problem}"):
        check_block(data, shard="en/x.json.gz", first_line_number=100)


def test_multi_byte_characters_anywhere_in_a_long_block_are_valid() -> None:
    """UTF-8 is checked in pieces: wherever a piece would end, no character is split (lines of every
    length put 2-, 3- and 4-byte characters on every offset), and a bad byte after them is still found."""
    lines = [orjson.dumps({"text": "é€😀" * (index % 97 + 1)}) for index in range(3_000)]
    data = b"".join(line + b"\n" for line in lines)
    assert len(data) > 4 * 64 * 1024
    assert check_block(data, shard="en/x.json.gz", first_line_number=1).count == len(lines)
    assert _valid_utf8(data)  # the whole-block check passes it: no fallback to checking each line
    broken = data[:-3] + b'\xff"}\n'
    assert not _valid_utf8(broken)
    with pytest.raises(CorruptShardError, match=rf"^en/x\.json\.gz: line {len(lines)} is not valid UTF-8"):
        check_block(broken, shard="en/x.json.gz", first_line_number=1)


@pytest.mark.parametrize("blank", [b"", b"   ", b"\t\r"])
@pytest.mark.parametrize("blank_first", [True, False])
def test_a_blank_line_and_a_line_of_two_objects_do_not_make_up_for_each_other(
    blank: bytes, blank_first: bool
) -> None:
    """Counted whole, one line with no object and one with two give as many objects as lines."""
    pair = [blank, b'{"text":"a"}{"text":"b"}']
    odd = pair if blank_first else pair[::-1]
    data = b"".join(line + b"\n" for line in [LINES[0], *odd, LINES[1]])
    with pytest.raises(CorruptShardError, match=r"^en/x\.json\.gz: line 11 is not valid JSON"):
        check_block(data, shard="en/x.json.gz", first_line_number=10)


def test_skipping_bad_records_drops_both_and_keeps_the_rest_exactly() -> None:
    skipped = SkippedRecords()
    lines = ShardLines("en/x.json.gz", 1, 0, skipped)
    odd = [LINES[0], b"", LINES[1], b'{"text":"a"} {"text":"b"}', LINES[2]]
    data = b"".join(line + b"\n" for line in odd)
    batches = lines.take(data)
    assert [(batch.first_line, batch.data) for batch in batches] == [
        (1, LINES[0] + b"\n"),
        (3, LINES[1] + b"\n"),
        (5, LINES[2] + b"\n"),
    ]
    assert skipped.skipped_records == 2


def test_other_valid_json_documents_pass() -> None:
    odd = [b'  {"text":"padded"}  ', b'{"meta":{"a":[1,2]},"text":"nested first"}', b'{"text":"\\u00e9"}']
    data = b"".join(line + b"\n" for line in odd)
    assert len(check_block(data, shard="s", first_line_number=1)) == 3


def test_a_line_longer_than_the_limit_is_refused_with_memory_bounded() -> None:
    """A 1 GiB line packed into ~1 MB of gzip fails once 64 MiB of it are pending, not after."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = compressor.compress(b'{"text":"' + b"a" * (8 << 20)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    decoder = GzipLineDecoder("en/big.json.gz")

    def feed_a_gibibyte_line() -> None:
        nonlocal chunk
        for _ in range(128):
            decoder.feed(chunk)
            chunk = compressor.compress(b"a" * (8 << 20)) + compressor.flush(zlib.Z_SYNC_FLUSH)

    with pytest.raises(CorruptShardError, match=r"^en/big\.json\.gz: a line is longer than 64 MiB"):
        feed_a_gibibyte_line()
    assert len(decoder._pending) <= MAX_LINE_BYTES + (8 << 20)


def test_a_chunk_is_inflated_in_bounded_pieces_and_members_follow_each_other() -> None:
    data = b"".join(line + b"\n" for line in LINES) * 50
    stream = gzip.compress(data[: len(data) // 2]) + gzip.compress(data[len(data) // 2 :])
    decoder = GzipLineDecoder("s")
    out = b"".join(decoder.feed(stream[start : start + 100_000]) for start in range(0, len(stream), 100_000))
    assert out + decoder.finish() == data


def test_the_lines_before_a_too_long_line_come_out_whatever_the_chunking() -> None:
    """The error comes after every whole line before the long one, even from the same chunk."""
    good = b"".join(line + b"\n" for line in LINES[:50])
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = compressor.compress(good + b'{"text":"' + b"a" * (MAX_LINE_BYTES + 1)) + compressor.flush()
    decoder = GzipLineDecoder("en/x.json.gz")
    assert decoder.feed(chunk) == good
    with pytest.raises(CorruptShardError, match=r"^en/x\.json\.gz: a line is longer than 64 MiB"):
        decoder.feed(b"")
