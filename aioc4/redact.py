"""Keeping secrets out of what aioc4 prints and writes. Pure: the caller says what the secrets are.

Only values that can be secrets are hidden: anything shorter than `MIN_SECRET_CHARS` is not (S3
test credentials such as `test`/`test` are everyday words, and replacing them would rewrite paths
and URLs), and an occurrence inside the run's own paths, URLs, keys and file names is left alone,
so the `--json` object, the summary and the log lines keep saying where the parts really are.
A password in a URL's userinfo (`https://user:pass@host`) is always removed with its user.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["MIN_SECRET_CHARS", "REDACTED", "Redactor", "display_url"]

MIN_SECRET_CHARS = 8
"""HF tokens (~37 characters) and AWS keys (20 and 40) are far longer; shorter values are test values."""
REDACTED = "***"
_OWN_NAME = re.compile(r"c4_[A-Za-z0-9._-]+")  # aioc4's part and manifest names (aioc4.naming)
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def display_url(url: str) -> str:
    """`url` without its userinfo (`https://user:pass@host/x` -> `https://host/x`), for messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _USERINFO.sub("", url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


class Redactor:
    """Replaces `secrets` with `***` in text and in JSON-like values, except inside `keep` strings."""

    def __init__(self, secrets: Iterable[str], keep: Iterable[str] = ()) -> None:
        self.secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)
        self.keep = sorted({k for k in keep if k}, key=len, reverse=True)

    def with_keep(self, keep: Iterable[str]) -> Redactor:
        """The same secrets, with more of the run's own strings to leave alone."""
        return Redactor(self.secrets, [*self.keep, *keep])

    def text(self, text: str) -> str:
        text = _USERINFO.sub("", text)
        if not self.secrets:
            return text
        kept = self._kept_spans(text)
        hits: list[tuple[int, int]] = []
        for secret in self.secrets:  # longest first: a secret inside a longer one is covered by it
            start = text.find(secret)
            while start >= 0:
                end = start + len(secret)
                if not _overlaps(start, end, kept) and not _overlaps(start, end, hits):
                    hits.append((start, end))
                start = text.find(secret, start + 1)
        if not hits:
            return text
        pieces, position = [], 0
        for start, end in sorted(hits):
            pieces += [text[position:start], REDACTED]
            position = end
        pieces.append(text[position:])
        return "".join(pieces)

    def value(self, value: Any) -> Any:
        """A JSON-like value with every string in it redacted (keys and structure unchanged)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {key: self.value(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(item) for item in value]
        return value

    def _kept_spans(self, text: str) -> list[tuple[int, int]]:
        spans = [match.span() for match in _OWN_NAME.finditer(text)]
        for keep in self.keep:
            start = text.find(keep)
            while start >= 0:
                spans.append((start, start + len(keep)))
                start = text.find(keep, start + 1)
        return spans


def _overlaps(start: int, end: int, spans: list[tuple[int, int]]) -> bool:
    return any(start < other_end and other_start < end for other_start, other_end in spans)
