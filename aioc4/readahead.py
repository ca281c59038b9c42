"""How far ahead of the reader to download, over how many connections. Pure: no I/O.

One connection to the Hub's storage CDN carries ~40-60 MB/s, far less than the cores can inflate, so a
shard is read as several `Range` requests at once (as `hf_xet` and `aria2c -x` do). How many is not
a setting to tune: the window of outstanding ranges (downloading, or downloaded and not yet read)
starts at two and grows by one each time the reader has to wait for bytes while every range of the
window is still arriving, up to the connection cap. Where the network is faster than decoding (loopback,
a fast link) the reader never waits and the window stays small; where it is slower, the window opens
until the reader is fed or the cap is reached. It never exceeds the bytes the documents still wanted
are likely to take, so an early stop stays early.

Memory: at most `window x range_bytes` (default 32 x 1 MiB) of compressed bytes are held or in flight.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEFAULT_DOWNLOAD_CONNECTIONS",
    "MIN_RANGE_BYTES",
    "RANGE_BYTES",
    "ReadAhead",
]

RANGE_BYTES = 1 << 20
"""One range request. At 5 MB/s a MiB takes ~0.2 s, so 20 ms of first-byte latency costs ~10%; smaller
ranges would pay more of it, larger ones over-read more at an early stop and hold more memory."""
MIN_RANGE_BYTES = 256 << 10
"""The smallest range asked for (when only a few more documents are wanted)."""
DEFAULT_DOWNLOAD_CONNECTIONS = 32
"""Range requests in flight at most: 32 x 5 MB/s covers the ~90 MB/s this 2-core machine decodes (the
network model of the benchmark), and 32 x 40-60 MB/s covers a 16-core instance's NIC share for one
process. The window only opens this far when the reader waits for bytes."""
START_WINDOW = 2


@dataclass(slots=True)
class ReadAhead:
    """The read-ahead window of one reader (see the module docstring)."""

    max_connections: int = DEFAULT_DOWNLOAD_CONNECTIONS
    range_bytes: int = RANGE_BYTES
    window: int = START_WINDOW
    in_use: int = 0
    """Ranges outstanding over every download sharing this window: the shards one process reads share
    one, so `--download-connections` bounds them all, but for the one range each shard may always
    have (no shard waits for another to be read). A count job's decode processes download their
    shards themselves, each with a window of its own (aioc4.range_fetch)."""

    def __post_init__(self) -> None:
        self.window = max(1, min(self.window, self.max_connections))

    def next_range(
        self, *, outstanding: int, ahead_bytes: int, wanted_bytes: float, left_in_shard: int
    ) -> int:
        """Bytes of the next range to ask for now, or 0 to wait.

        `outstanding` ranges of this reader are downloading or not yet read (`in_use` counts those of
        every reader sharing the window), holding `ahead_bytes` the reader has not taken;
        `wanted_bytes` is what the documents still wanted probably take from the reader's position;
        `left_in_shard` is what the shard being scheduled has left. A reader with no range at all may
        always start one, so no shard waits for another's to end.
        """
        if left_in_shard <= 0 or (outstanding and max(outstanding, self.in_use) >= self.window):
            return 0
        if ahead_bytes > 0 and ahead_bytes >= wanted_bytes:
            return 0  # what is on its way probably holds every document still wanted
        size = max(MIN_RANGE_BYTES, int(wanted_bytes) - ahead_bytes)
        return min(self.range_bytes, size, left_in_shard)

    def reader_waited(self, *, outstanding: int, arriving: int) -> None:
        """The reader found no bytes ready: if the whole window is in use and all `arriving` (none of
        its `outstanding` ranges is downloaded and waiting to be read), open one more connection. A
        range already here means the link keeps ahead and the wait was for a core, not for bytes.
        (On a busy 2-core loopback the windows still reach 3-5 ranges: the head itself is arriving.)"""
        if max(outstanding, self.in_use) >= self.window and arriving >= outstanding:
            self.window = min(self.max_connections, self.window + 1)
