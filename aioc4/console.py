"""What the command line prints: log lines on stderr, the one error line, JSON and step summaries.

Everything here goes through one `Redactor` (aioc4.redact) built from the secrets this process
knows (HF token, AWS keys), so no secret is printed, and nothing else is changed. On a terminal,
log lines are `aioc4: message`; elsewhere (CI logs, files) they carry a UTC timestamp first.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, TextIO

from .redact import Redactor

__all__ = ["append_step_summary", "configure_logging", "known_secrets_redactor", "print_error", "print_json"]

log = logging.getLogger("aioc4")

_SECRET_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def known_secrets_redactor() -> Redactor:
    """A redactor for the secrets in this process's environment and the cached Hub login."""
    secrets = [os.environ.get(name, "") for name in (*_SECRET_VARIABLES, "AWS_ACCESS_KEY_ID")]
    try:
        from huggingface_hub import get_token

        secrets.append(get_token() or "")
    except Exception:  # pragma: no cover - a broken token cache must not stop error reporting
        pass
    return Redactor(secrets)


class _RedactingFilter(logging.Filter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redactor.text(record.getMessage())
        record.args = None
        return True


_TERMINAL_FORMAT = logging.Formatter("aioc4: %(message)s")
_LOG_FILE_FORMAT = "%(asctime)s aioc4: %(message)s"


class _UtcFormatter(logging.Formatter):
    """ISO 8601 timestamps in UTC (`2026-11-29T16:40:01Z`): CI logs and files come from many machines."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))


class _ConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr; while a progress bar is showing, lines are written around it (tqdm clears and redraws it)."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm_module = sys.modules.get("tqdm")  # not imported: no bar can be showing
        if tqdm_module is None or not getattr(tqdm_module.tqdm, "_instances", None):
            super().emit(record)
            return
        try:
            tqdm_module.tqdm.write(self.format(record), file=self.stream)
        except Exception:  # pragma: no cover - as logging does for a broken stream
            self.handleError(record)


def configure_logging(
    redactor: Redactor, *, quiet: bool, verbose: bool, stream: TextIO | None = None
) -> None:
    """The `aioc4` logger to stderr: warnings only with -q, debug with -v, info otherwise."""
    stream = stream or sys.stderr
    handler = _ConsoleHandler(stream)
    terminal = hasattr(stream, "isatty") and stream.isatty()
    handler.setFormatter(_TERMINAL_FORMAT if terminal else _UtcFormatter(_LOG_FILE_FORMAT))
    handler.addFilter(_RedactingFilter(redactor))
    for old in [h for h in log.handlers if isinstance(h, _ConsoleHandler)]:
        log.removeHandler(old)
    log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


def print_error(message: str, redactor: Redactor) -> None:
    """The one line a failure gets on stderr."""
    print(f"aioc4: error: {redactor.text(message)}", file=sys.stderr, flush=True)


def print_json(document: dict[str, Any], redactor: Redactor) -> None:
    """One JSON object on stdout; secrets are redacted value by value, so the JSON stays valid."""
    print(json.dumps(redactor.value(document), ensure_ascii=False), flush=True)


def append_step_summary(markdown: str, redactor: Redactor) -> None:
    """GitHub Actions shows what a step appends to $GITHUB_STEP_SUMMARY on the run's page."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as file:
            file.write(redactor.text(markdown))
    except OSError as exc:
        log.warning("cannot append to GITHUB_STEP_SUMMARY %s: %s", path, exc.strerror or exc)
