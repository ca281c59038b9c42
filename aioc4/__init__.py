"""aioc4: fast, dependable async download of C4 into JSONL parts on local disk or S3.

The library API (`pull`, `pull_sync`, `dry_run`, ...) is imported on first use, so that
`aioc4 --help` and the CLI's start-up do not pay for the Hub and S3 clients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

__all__ = [
    "Aioc4Error",
    "BulkOptions",
    "PartsNotUploadedError",
    "RunConfig",
    "RunSummary",
    "S3Target",
    "__version__",
    "dry_run",
    "dry_run_sync",
    "parse_s3_path",
    "pull",
    "pull_sync",
]

if TYPE_CHECKING:
    from .api import dry_run, dry_run_sync, pull, pull_sync
    from .config import BulkOptions, RunConfig, S3Target, parse_s3_path
    from .errors import Aioc4Error, PartsNotUploadedError
    from .report import RunSummary

_LAZY = {
    "PartsNotUploadedError": "errors",
    "dry_run": "api",
    "dry_run_sync": "api",
    "pull": "api",
    "pull_sync": "api",
    "BulkOptions": "config",
    "RunConfig": "config",
    "S3Target": "config",
    "parse_s3_path": "config",
    "Aioc4Error": "errors",
    "RunSummary": "report",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aioc4' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{module}", __name__), name)
