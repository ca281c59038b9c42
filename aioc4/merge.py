"""Combining the shard manifests of a bulk pull into one manifest for the whole job.

Every shard of a bulk pull is its own small job with its own manifest
(`c4_{split}_shard00017.manifest.json`), written by whichever worker read it. When all the shards
of the selection are complete, `combine` (pure) joins them in shard order into
`c4_{split}_all.manifest.json` (or `c4_{split}_shards{selection}.manifest.json` for a `--shards`
selection), which `aioc4 verify` checks as a whole. `merge_at` does this at a destination; the
last worker to finish calls it, and `aioc4 merge` calls it by hand.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

from .destination import Destination
from .errors import Aioc4Error, IncompleteJobError
from .manifest import JobIdentity, Manifest
from .naming import combined_manifest_name, split_stem
from .sharding import selection_text

__all__ = [
    "combine",
    "load_shard_manifests",
    "merge_at",
    "shard_manifest_position",
]

_SHARD_MANIFEST = re.compile(r"_shard(\d{5})\.manifest\.json$")


def shard_manifest_position(name: str) -> int | None:
    match = _SHARD_MANIFEST.search(name)
    return int(match.group(1)) if match else None


def combine(shards: dict[int, Manifest], wanted: Sequence[int] | None) -> Manifest:
    """One manifest for the shards `wanted` (all the split's shards when None), in shard order.

    Raises IncompleteJobError naming the shards still missing or unfinished, and Aioc4Error when the
    shard manifests disagree on what they are (repo, config, split, part size, commit).
    """
    if not shards:
        raise IncompleteJobError("no shard manifest found")
    first = next(iter(shards.values())).request
    identity = _identity(first)
    for position, manifest in shards.items():
        if _identity(manifest.request) != identity:
            raise Aioc4Error(
                f"shard {position} was pulled as another job ({manifest.request.repo_id} "
                f"{manifest.request.config_name}/{manifest.request.split} at {manifest.request.commit[:12]}, "
                f"parts of {manifest.request.max_lines_per_file}, compression "
                f"{manifest.request.compression}) than shard {next(iter(shards))}: "
                "pin --revision to one commit for every worker"
            )
    expected = list(wanted) if wanted is not None else list(range(first.split_shards))
    missing = [position for position in expected if position not in shards or not shards[position].complete]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        raise IncompleteJobError(f"{len(missing)} of {len(expected)} shard(s) not complete yet: {shown}")
    parts = [part for position in expected for part in shards[position].parts]
    request = replace(
        first,
        num_samples=sum(part.lines for part in parts),
        shard="",
        shards=selection_text(expected) if wanted is not None else "",
    )
    return Manifest(request=request, parts=parts, complete=True)


def _identity(request: JobIdentity) -> tuple[object, ...]:
    return (
        request.repo_id,
        request.config_name,
        request.split,
        request.max_lines_per_file,
        request.commit,
        request.split_shards,
        request.compression,
    )


async def load_shard_manifests(destination: Destination, split: str, config: str) -> dict[int, Manifest]:
    """Every shard manifest of this config and split at the destination, by shard position."""
    prefix = f"{split_stem(split, config)}_shard"
    found: dict[int, Manifest] = {}
    for name in await destination.list_manifests():
        position = shard_manifest_position(name)
        if position is None or not name.startswith(prefix):
            continue
        data = await destination.load_manifest(name)
        if data is not None:
            found[position] = Manifest.from_json(data, where=destination.location(name))
    return found


async def merge_at(
    destination: Destination, split: str, config: str, wanted: Sequence[int] | None
) -> tuple[str, Manifest]:
    """Combine the shard manifests at `destination` and save the result there."""
    manifest = combine(await load_shard_manifests(destination, split, config), wanted)
    name = combined_manifest_name(split, config, manifest.request.shards)
    await destination.save_manifest(name, manifest.to_json(), final=True)
    return name, manifest
