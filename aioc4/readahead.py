"""Reading the next shard while the current one is consumed, so two cores inflate at once.

Documents must come out in order, so what the next shard yields before its turn has to wait
somewhere; memory is not that place (a C4 shard inflates to ~810 MB). It waits in a spill file
next to the parts, written and read back in worker threads, and only as many documents are
parked as the job is expected to need from that shard. When the consumer gets to the shard it
reads the spill, then takes batches straight from the reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from collections.abc import AsyncGenerator
from contextlib import aclosing
from pathlib import Path
from typing import BinaryIO

import orjson

from .decode import Batch
from .errors import DestinationError

__all__ = ["ShardAhead"]

_SIZES = struct.Struct("<II")  # metadata length, data length
_HANDOVER_QUEUE = 2


class ShardAhead:
    """Owns one background task reading a shard ahead; `batches()` later yields everything it read."""

    def __init__(self, batches: AsyncGenerator[Batch, None], spill_path: Path, budget: int) -> None:
        self._batches = batches
        self._spill_path = spill_path
        self._budget = budget  # how many documents are worth parking before the consumer arrives
        self._parked = 0
        self._attached = asyncio.Event()
        self._parking = asyncio.Lock()
        self._handover: asyncio.Queue[Batch | BaseException | None] = asyncio.Queue(maxsize=_HANDOVER_QUEUE)
        self._spill: BinaryIO | None = None
        self._task = asyncio.create_task(self._run(), name=f"read ahead {spill_path.name}")

    async def _run(self) -> None:
        try:
            async with aclosing(self._batches):
                async for batch in self._batches:
                    async with self._parking:
                        parked = not self._attached.is_set()
                        if parked:
                            await asyncio.to_thread(self._park, batch)
                    if not parked:
                        await self._handover.put(batch)
                    elif self._parked >= self._budget:
                        await self._attached.wait()  # parked enough for now: wait for the consumer
            await self._handover.put(None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # handed to the consumer, which raises it in order
            await self._handover.put(exc)

    def _park(self, batch: Batch) -> None:
        meta = orjson.dumps([batch.shard, batch.first_line, batch.count, batch.samples, batch.first_text])
        try:
            if self._spill is None:
                self._spill = open(self._spill_path, "wb")  # noqa: SIM115 - closed by batches() or close()
            self._spill.write(_SIZES.pack(len(meta), len(batch.data)) + meta)
            self._spill.write(batch.data)
        except OSError as exc:
            where = self._spill_path.parent
            raise DestinationError(
                f"cannot write to {where} (reading ahead): {exc.strerror or exc}"
            ) from None
        self._parked += batch.count

    async def batches(self) -> AsyncGenerator[Batch, None]:
        """Everything the shard yields, in order: the parked batches, then the live ones."""
        self._attached.set()
        async with self._parking:  # a batch being parked right now lands in the spill first
            spill, self._spill = self._spill, None
        if spill is not None:
            await asyncio.to_thread(spill.close)
            with await asyncio.to_thread(open, self._spill_path, "rb") as reader:
                while (batch := await asyncio.to_thread(_unpark, reader)) is not None:
                    yield batch
            await asyncio.to_thread(_remove, self._spill_path)
        while (item := await self._handover.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    async def close(self) -> None:
        """Stop reading ahead (the job ended or failed) and remove the spill."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._spill is not None:
            await asyncio.to_thread(self._spill.close)
        await asyncio.to_thread(_remove, self._spill_path)


def _unpark(reader: BinaryIO) -> Batch | None:
    sizes = reader.read(_SIZES.size)
    if not sizes:
        return None
    meta_size, data_size = _SIZES.unpack(sizes)
    shard, first_line, count, samples, first_text = orjson.loads(reader.read(meta_size))
    return Batch(shard, first_line, reader.read(data_size), count, [tuple(s) for s in samples], first_text)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
