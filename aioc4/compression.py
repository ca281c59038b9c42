"""`--compression`: the codecs of compressed parts, and counting the lines inside them.

Each part is one complete, standalone file: one gzip member (`.jsonl.gz`) or one zstd frame with
its content checksum (`.jsonl.zst`), so `gzip -dc`, `zstdcat` and `datasets` read any part alone.
gzip goes through ISA-L (python-isal, several times zlib's speed; zlib when isal is missing), zstd
through `zstandard`. Compressors and decompressors release the GIL while they work.
"""

from __future__ import annotations

import zlib
from typing import Protocol

import zstandard

from .checksum import fast_zlib

__all__ = [
    "CONTENT_TYPES",
    "GZIP_LEVEL",
    "ZSTD_LEVEL",
    "Compressor",
    "LineCounter",
    "compression_of",
    "line_counter_for",
    "new_compressor",
]

GZIP_LEVEL = 1
"""ISA-L level (0-3). Measured on the fake shards (2 cores; `--num-samples 72000 --max-lines-per-file
10000` to a local folder, 176 MB of JSON lines; one-core compressor speed in brackets):
level 0: 80k docs/s, ratio 2.24 (393 MB/s); 1: 79k docs/s, 2.34 (375 MB/s); 2: 77k docs/s, 2.43
(352 MB/s); 3: 75k docs/s, 2.48 (350 MB/s); zlib's level 6 would be 19 MB/s. Level 1 keeps the
throughput of level 0 for 4% smaller parts; 2 and 3 save 3-6% more bytes for 3-5% fewer docs/s."""
ZSTD_LEVEL = 3
"""zstd's default: 80k docs/s, ratio 6.8 on the fake shards (whose text repeats more than C4's),
faster than level 1 there (72k docs/s, ratio 2.8)."""
CONTENT_TYPES = {"gzip": "application/gzip", "zstd": "application/zstd"}
"""The registered media types of the containers (RFC 6713, RFC 8878), for S3's Content-Type."""
_SUFFIXES = {".gz": "gzip", ".zst": "zstd"}
_OUT_CHUNK = 1 << 20  # decompressed bytes produced per call when counting lines: constant memory
_ZSTD_IN_CHUNK = 1 << 17  # compressed bytes fed per call (a zstd decompressobj has no output limit)

_GZIP_WBITS = 31  # a gzip container (header and CRC-32/size trailer), not a raw zlib stream


class Compressor(Protocol):
    def compress(self, data: bytes | memoryview, /) -> bytes: ...

    def flush(self) -> bytes:
        """The rest of the stream, ending it: what follows would be another file."""
        ...


def new_compressor(compression: str) -> Compressor | None:
    """A compressor for one part, or None for `none` (the source bytes are written as they are)."""
    if compression == "gzip":
        return fast_zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS)  # type: ignore[no-any-return]
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).compressobj()
    return None


def compression_of(name: str) -> str:
    """`gzip`, `zstd` or `none`, from a part's name."""
    return next((codec for suffix, codec in _SUFFIXES.items() if name.endswith(suffix)), "none")


class LineCounter(Protocol):
    """Counts the newlines of a part's documents, fed the part's stored bytes in chunks."""

    lines: int
    problem: str | None  # why the stream cannot be read, once it is known

    def feed(self, chunk: bytes) -> None: ...

    def finish(self) -> None:
        """After the last chunk: a stream that did not end is a problem."""
        ...


def line_counter_for(name: str) -> LineCounter:
    codec = compression_of(name)
    if codec == "gzip":
        return _GzipLines()
    if codec == "zstd":
        return _ZstdLines()
    return _PlainLines()


class _PlainLines:
    def __init__(self) -> None:
        self.lines = 0
        self.problem: str | None = None

    def feed(self, chunk: bytes) -> None:
        self.lines += chunk.count(b"\n")

    def finish(self) -> None:
        return None


class _GzipLines:
    """Inflates at most `_OUT_CHUNK` bytes at a time."""

    def __init__(self) -> None:
        self.lines = 0
        self.problem: str | None = None
        self._inflater = fast_zlib.decompressobj(_GZIP_WBITS)

    def feed(self, chunk: bytes) -> None:
        if self.problem is not None:
            return
        data = chunk
        try:
            while data:
                self.lines += self._inflater.decompress(data, _OUT_CHUNK).count(b"\n")
                data = self._inflater.unconsumed_tail
        except fast_zlib.error as exc:
            self.problem = f"not a valid gzip stream ({exc})"
            return
        if self._inflater.unused_data:
            self.problem = "bytes after the end of the gzip stream"

    def finish(self) -> None:
        if self.problem is not None:
            return
        try:
            self.lines += self._inflater.flush().count(b"\n")
        except fast_zlib.error as exc:  # pragma: no cover - flush after decompress found nothing wrong
            self.problem = f"not a valid gzip stream ({exc})"
            return
        if not self._inflater.eof:
            self.problem = "the gzip stream is truncated"


class _ZstdLines:
    """Feeds `_ZSTD_IN_CHUNK` compressed bytes at a time; the frame's content checksum is checked."""

    def __init__(self) -> None:
        self.lines = 0
        self.problem: str | None = None
        self._decompressor = zstandard.ZstdDecompressor().decompressobj()

    def feed(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        for start in range(0, len(view), _ZSTD_IN_CHUNK):
            if self.problem is not None:
                return
            if self._decompressor.eof:
                self.problem = "bytes after the end of the zstd frame"
                return
            try:
                self.lines += self._decompressor.decompress(view[start : start + _ZSTD_IN_CHUNK]).count(b"\n")
            except zstandard.ZstdError as exc:
                self.problem = f"not a valid zstd frame ({exc})"
                return
            if self._decompressor.unused_data:
                self.problem = "bytes after the end of the zstd frame"

    def finish(self) -> None:
        if self.problem is None and not self._decompressor.eof:
            self.problem = "the zstd frame is truncated"
