"""Where finished parts go. The pipeline hands every part to a `Destination` and does not care which.

`LocalDestination` keeps parts where the writer put them; `aioc4.uploader.S3Destination` uploads
them and, with cleanup, deletes the local copy once S3 has confirmed it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .writer import FinishedPart

__all__ = ["Delivery", "Destination", "LocalDestination"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """What became of one part."""

    name: str
    local_path: Path | None  # None once deleted after upload
    url: str | None  # s3:// URL once uploaded
    error: str | None = None


class Destination(Protocol):
    async def check(self) -> None:
        """Fail early (before any download) if parts could not be delivered."""

    async def deliver(self, part: FinishedPart) -> Delivery:
        """Deliver one finished part; never raises for a failure that leaves the part on disk."""

    async def rename(self, delivery: Delivery, new_name: str) -> Delivery:
        """Give a delivered part a new name (used when the split was shorter than asked)."""


class LocalDestination:
    """Parts stay in the output folder."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def check(self) -> None:
        return None

    async def deliver(self, part: FinishedPart) -> Delivery:
        return Delivery(name=part.name, local_path=part.path, url=None)

    async def rename(self, delivery: Delivery, new_name: str) -> Delivery:
        return Delivery(name=new_name, local_path=rename_local(delivery.local_path, new_name), url=None)


def rename_local(path: Path | None, new_name: str) -> Path | None:
    """Rename a local part in place (atomic); None stays None."""
    if path is None:
        return None
    target = path.with_name(new_name)
    os.replace(path, target)
    return target
