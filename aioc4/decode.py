"""Bytes of a gzip'd JSON Lines shard in, checked documents out. Pure: no I/O.

The decoder is fed compressed chunks as they arrive, so a shard can be read over HTTP and stopped
after its first documents without fetching the rest. A block of whole lines is passed through as
one `bytes`, and every line of it is checked, whatever its position: valid UTF-8 (decoded in
pieces of whole lines, skipped when the block is ASCII) and one JSON object with a string `text`
(msgspec's validating decoder, which builds no Python string for the text). A block that fails
is split up to name the first bad line. A sample of lines (the first, and the one after every
`SAMPLE_STRIDE` bytes, which is not biased towards long documents) is decoded with its text, for
the text-length statistic. No line may be longer than `MAX_LINE_BYTES`, and inflating never holds
more than that plus `_INFLATE_PIECE` of a line that is still being read.

Inflating uses python-isal (ISA-L, 2-3x faster than zlib) when it is installed, zlib otherwise.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from .checksum import ZLIB_ERRORS, fast_zlib
from .errors import MAX_LINE_BYTES, CorruptShardError, LineTooLongError

__all__ = [
    "MAX_LINE_BYTES",
    "SAMPLE_STRIDE",
    "Batch",
    "GzipLineDecoder",
    "LineScan",
    "LineTooLongError",
    "ShardLines",
    "SkipCounter",
    "SourcePosition",
    "check_block",
    "check_documents",
    "good_runs",
    "line_offset",
    "scan_lines",
]

log = logging.getLogger("aioc4")

SAMPLE_STRIDE = 64 * 1024
_SHOWN_BAD_RECORDS = 10  # skipped lines named in the log; the rest are only counted
_INFLATE_PIECE = 8 * 1024 * 1024  # inflated bytes produced per call, so a huge line is caught early
_FEED_LIMIT = 256 * 1024 * 1024  # inflated bytes one compressed chunk may expand to (a gzip bomb)
_UTF8_PIECE = 64 * 1024  # UTF-8 is checked in pieces of whole lines: small strings, made and dropped in cache
_GZIP_WBITS = 16 + zlib.MAX_WBITS


class _Document(msgspec.Struct, gc=False):
    """What every line must be: an object with a `text` (kept raw: its string is not built). Not
    tracked by the cyclic GC: it holds no container, so it is in no cycle, and a block's ~300 of them
    then trigger fewer young collections (0.015 us a document, a micro-benchmark of the check)."""

    text: msgspec.Raw


class _Text(msgspec.Struct, gc=False):
    """A sampled document: its `text` as a string, to measure its length."""

    text: str


_DOCUMENTS = msgspec.json.Decoder(_Document)
_TEXTS = msgspec.json.Decoder(_Text)
_QUOTE = ord('"')  # a raw JSON value that is a string starts with it
_BRACE = ord("{")


@dataclass(frozen=True, slots=True)
class SourcePosition:
    """A document's place in the split: shard path and 1-based line number."""

    shard: str
    line: int


@dataclass(slots=True)
class Batch:
    """Consecutive documents of one shard: their source bytes (whole lines, each ending in a newline),
    where they start, and text lengths of the sampled ones as (byte offset in `data`, characters)."""

    shard: str
    first_line: int
    data: bytes
    count: int
    samples: list[tuple[int, int]] = field(default_factory=list)
    first_text: str | None = None

    def __len__(self) -> int:
        return self.count

    @property
    def nbytes(self) -> int:
        return len(self.data)

    def slice(self, start: int, stop: int) -> Batch:
        """Documents `start` to `stop` (0-based, end excluded) as a batch of their own."""
        stop = min(stop, self.count)
        if start == 0 and stop == self.count:
            return self
        begin, end = line_offset(self.data, self.count, start), line_offset(self.data, self.count, stop)
        samples = [(offset - begin, chars) for offset, chars in self.samples if begin <= offset < end]
        return Batch(
            self.shard,
            self.first_line + start,
            self.data[begin:end],
            stop - start,
            samples,
            self.first_text if start == 0 else None,
        )


@dataclass(frozen=True, slots=True)
class LineScan:
    """What one pass over a block of whole lines finds."""

    count: int
    """Its newlines: its lines."""
    braced: bool
    """Every line starts with `{`. Then none is blank or only whitespace, which `decode_lines` skips:
    a skipped line and a line holding two objects would otherwise make up for each other in the count."""


def scan_lines(data: bytes) -> LineScan:
    """`data`'s lines, and whether each starts with `{`. `bytes.count` compares byte by byte (~1.2
    GB/s) and `b"\\n{"` in `data` is slower still; `find` is memchr (~10 GB/s), and a C4 line is ~2.4 KB,
    so a Python loop over the newlines costs less than the scans it saves (~4x, measured)."""
    count, find, end = 0, data.find, len(data) - 1
    braced = data[:1] == b"{"
    position = find(b"\n")
    while position >= 0:
        count += 1
        if position < end and data[position + 1] != _BRACE:
            braced = False
        position = find(b"\n", position + 1)
    return LineScan(count, braced)


def line_offset(data: bytes, count: int, line: int) -> int:
    """Byte offset where line `line` (0-based) starts; `count` means the end. Walks from the nearer end."""
    if line <= 0:
        return 0
    if line >= count:
        return len(data)
    if line <= count // 2:
        position = -1
        for _ in range(line):
            position = data.find(b"\n", position + 1)
        return position + 1
    position = len(data) - 1  # the newline ending the last line
    for _ in range(count - line):
        position = data.rfind(b"\n", 0, position)
    return position + 1


class GzipLineDecoder:
    """Inflates a (possibly multi-member) gzip stream and hands out blocks of whole lines."""

    def __init__(self, shard: str) -> None:
        self._shard = shard
        self._inflater: Any = fast_zlib.decompressobj(_GZIP_WBITS)
        self._pending = b""
        self._too_long: LineTooLongError | None = None  # found; raised once the lines before it are out

    def feed(self, chunk: bytes | memoryview) -> bytes:
        """The complete lines found so far (newline-terminated); a partial last line waits.

        A line over the limit is refused; the whole lines before it in the same chunk are returned
        first, and the error comes with the next call (so that where it is does not depend on how
        the bytes were chunked)."""
        if self._too_long is not None:
            raise self._too_long
        blocks: list[bytes] = []
        try:
            for piece in self._inflate(chunk):
                end = piece.rfind(b"\n") + 1
                if not end:
                    self._pending += piece
                    self._check_line_length(len(self._pending), blocks)
                    continue
                self._check_line_length(len(self._pending) + piece.find(b"\n"), blocks)
                blocks.append(b"".join((self._pending, memoryview(piece)[:end])))  # the block's only copy
                self._pending = piece[end:]
        except LineTooLongError:
            if not blocks:
                raise
            self._too_long, self._pending = LineTooLongError(self._shard, 0), b""
        return blocks[0] if len(blocks) == 1 else b"".join(blocks)

    def finish(self) -> bytes:
        """The last line once the input is over; raises if the gzip stream is truncated."""
        if self._too_long is not None:
            raise self._too_long
        if not self._inflater.eof:
            raise CorruptShardError(f"{self._shard}: gzip stream is truncated")
        rest, self._pending = self._pending, b""
        return rest + b"\n" if rest else b""

    def _check_line_length(self, length: int, blocks: list[bytes]) -> None:
        if length > MAX_LINE_BYTES:
            raise LineTooLongError(self._shard, sum(block.count(b"\n") for block in blocks))

    def _inflate(self, chunk: bytes | memoryview) -> list[bytes]:
        """The chunk inflated, in pieces of at most `_INFLATE_PIECE` bytes (gzip members may follow
        each other); more than `_FEED_LIMIT` from one chunk is refused."""
        pieces: list[bytes] = []
        total, data = 0, chunk
        try:
            while True:
                if self._inflater.eof:
                    data = data or self._inflater.unused_data
                    if not data:
                        break
                    self._inflater = fast_zlib.decompressobj(_GZIP_WBITS)  # the next member
                piece = self._inflater.decompress(data, _INFLATE_PIECE)
                data = self._inflater.unconsumed_tail
                if piece:
                    pieces.append(piece)
                    total += len(piece)
                    if total > _FEED_LIMIT:
                        raise CorruptShardError(
                            f"{self._shard}: {len(chunk):,} compressed bytes inflate to more than "
                            f"{_FEED_LIMIT // (1024 * 1024)} MiB: not C4 data"
                        )
                if len(piece) < _INFLATE_PIECE and not data and not self._inflater.eof:
                    break  # every input byte is used and no output is held back
        except ZLIB_ERRORS as exc:
            raise CorruptShardError(f"{self._shard}: not valid gzip data ({exc})") from None
        return pieces


def check_documents(data: bytes, *, shard: str, first_line_number: int, lines: LineScan) -> None:
    """Every line of a block of whole lines (`lines`: its `scan_lines`) is valid UTF-8 and one JSON
    object with a string `text`; otherwise CorruptShardError naming the first bad line."""
    if lines.braced and (data.isascii() or _valid_utf8(data)):
        try:
            documents = _DOCUMENTS.decode_lines(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
        else:  # no line is skipped (braced), so as many objects as lines is one object per line
            if len(documents) == lines.count and all(memoryview(doc.text)[0] == _QUOTE for doc in documents):
                return
    _check_each_line(data, shard, first_line_number)


def _valid_utf8(data: bytes) -> bool:
    """A block of whole lines is valid UTF-8: decoded in pieces that end at a newline, so no piece
    splits a character and each is decoded straight from a view of the block (an incremental decoder
    copied every piece first: 2.0 us per C4 document, this 1.4)."""
    view, find, size, start = memoryview(data), data.find, len(data), 0
    try:
        while start < size:
            end = find(b"\n", start + _UTF8_PIECE) + 1 or size
            str(view[start:end], "utf-8")
            start = end
    except UnicodeDecodeError:
        return False
    return True


def good_runs(data: bytes, first_line_number: int) -> tuple[list[tuple[int, bytes]], list[tuple[int, str]]]:
    """A block split around its bad lines: (first line number, bytes) of each run of good lines, and
    (line number, problem) of each bad one. For `--skip-bad-records`; only called on a failed block."""
    runs: list[tuple[int, bytes]] = []
    bad: list[tuple[int, str]] = []
    start: int | None = None
    lines = data.split(b"\n")[:-1]
    for offset, line in enumerate(lines):
        problem = _line_problem(line)
        if problem is None:
            start = offset if start is None else start
            continue
        bad.append((first_line_number + offset, problem))
        if start is not None:
            runs.append((first_line_number + start, b"".join(item + b"\n" for item in lines[start:offset])))
            start = None
    if start is not None:
        runs.append((first_line_number + start, b"".join(item + b"\n" for item in lines[start:])))
    return runs, bad


def _check_each_line(data: bytes, shard: str, first_line_number: int) -> None:
    """Slow path, for a block the whole-block check did not pass: name the first line that is not a
    document. A block with none passes (a line may start with whitespace: valid JSON, not braced)."""
    for offset, line in enumerate(data.split(b"\n")[:-1]):
        problem = _line_problem(line)
        if problem is not None:
            raise CorruptShardError(f"{shard}: line {first_line_number + offset} {problem}")
    if data and not data.endswith(b"\n"):
        raise CorruptShardError(f"{shard}: lines {first_line_number}.. are not JSON Lines of documents")


def _line_problem(line: bytes) -> str | None:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"is not valid UTF-8 (byte {exc.start})"
    try:
        document = _DOCUMENTS.decode(line)
    except msgspec.ValidationError as exc:
        return f"is not a JSON object with a 'text' string ({exc})"
    except msgspec.DecodeError as exc:
        return f"is not valid JSON ({exc})"
    if memoryview(document.text)[0] != _QUOTE:
        return "is not a JSON object with a 'text' string"
    return None


def check_block(
    data: bytes, *, shard: str, first_line_number: int, lines: LineScan | None = None, exact_lines: int = 0
) -> Batch:
    """Check every line of a block of whole lines (see `check_documents`; `lines` is its `scan_lines`,
    when known) and sample text lengths; returns the block as a `Batch`, its bytes exactly as they are.
    The first `exact_lines` lines are all measured (so small jobs get exact statistics), the rest
    sampled."""
    lines = scan_lines(data) if lines is None else lines
    count = lines.count
    check_documents(data, shard=shard, first_line_number=first_line_number, lines=lines)
    text_of = _TextOf(data, shard, first_line_number)
    first_text = text_of(0, data[: data.find(b"\n")])
    samples = [(0, len(first_text))]
    if exact_lines:
        offset = len(data[: data.find(b"\n")]) + 1
        for line in data.split(b"\n", exact_lines)[1:exact_lines]:
            if line:
                samples.append((offset, len(text_of(offset, line))))
            offset += len(line) + 1
        if exact_lines >= count:
            return Batch(shard, first_line_number, data, count, samples, first_text)
    for stride in range(SAMPLE_STRIDE, len(data), SAMPLE_STRIDE):
        start = data.find(b"\n", stride) + 1  # the line after the one holding `stride`: no length bias
        if start >= len(data):
            break
        if start > samples[-1][0]:
            samples.append((start, len(text_of(start, data[start : data.find(b"\n", start)]))))
    return Batch(shard, first_line_number, data, count, samples, first_text)


class _TextOf:
    """The `text` of a line of the block; a line that is not a document is named by its number."""

    def __init__(self, data: bytes, shard: str, first_line_number: int) -> None:
        self._data = data
        self._shard = shard
        self._first_line_number = first_line_number

    def __call__(self, offset: int, line: bytes) -> str:
        try:
            return _record_text(line)
        except ValueError as exc:  # only now is the line number worth a scan
            number = self._first_line_number + self._data.count(b"\n", 0, offset)
            raise CorruptShardError(f"{self._shard}: line {number} {exc}") from None


def _record_text(line: bytes) -> str:
    """The document's text; ValueError saying why the line is not a document."""
    try:
        return _TEXTS.decode(line).text
    except msgspec.ValidationError:
        raise ValueError("is not a JSON object with a 'text' string") from None
    except msgspec.DecodeError as exc:
        raise ValueError(f"is not valid JSON ({exc})") from None


class SkipCounter(Protocol):
    """Where `--skip-bad-records` counts the lines it dropped (the reader's progress)."""

    skipped_records: int


class ShardLines:
    """Turns blocks of whole lines into batches, numbering lines and dropping those before a start.
    The first `exact_documents` kept lines are all parsed, for exact statistics on small jobs."""

    def __init__(
        self, shard: str, skip_before: int, exact_documents: int, skipping: SkipCounter | None = None
    ) -> None:
        self.shard = shard
        self.skip_before = skip_before
        self.exact_documents = exact_documents
        self.next_line = 1
        self.skipping = skipping  # with --skip-bad-records: where dropped lines are counted

    def take(self, data: bytes) -> list[Batch]:
        """The block's documents as batches of consecutive lines (one, unless bad lines were skipped)."""
        lines = scan_lines(data)
        count = lines.count
        first, self.next_line = self.next_line, self.next_line + count
        skip = min(count, max(0, self.skip_before - first))
        if skip == count:
            return []
        if skip:
            data = Batch(self.shard, first, data, count).slice(skip, count).data
        exact, self.exact_documents = self.exact_documents, max(0, self.exact_documents - (count - skip))
        try:
            return [
                check_block(
                    data,
                    shard=self.shard,
                    first_line_number=first + skip,
                    lines=LineScan(count - skip, lines.braced),  # lines after a newline: as braced
                    exact_lines=exact,
                )
            ]
        except CorruptShardError:
            if self.skipping is None:
                raise
        runs, bad = good_runs(data, first + skip)
        for line, problem in bad:
            self.skipping.skipped_records += 1
            if self.skipping.skipped_records <= _SHOWN_BAD_RECORDS:
                log.warning("skipped %s line %d: it %s", self.shard, line, problem)
        return [
            check_block(block, shard=self.shard, first_line_number=line, exact_lines=exact)
            for line, block in runs
        ]
