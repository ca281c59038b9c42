"""Secrets are hidden; nothing else is changed (short test credentials, the run's own paths and URLs)."""

from __future__ import annotations

import pytest

from aioc4.redact import MIN_SECRET_CHARS, REDACTED, Redactor, display_url

LONG = "aioc4TestSecretKeyKnownFake/0123456789+abc"


@pytest.mark.parametrize("short", ["test", "minio", "x" * (MIN_SECRET_CHARS - 1)])
def test_short_values_are_not_secrets(short: str) -> None:
    redactor = Redactor([short])
    for text in ("s3://bkt/latest/c4_train_10.jsonl", "tests_out/c4_train_10.jsonl", f"{short} said {short}"):
        assert redactor.text(text) == text


def test_a_long_secret_is_hidden_wherever_it_is_not_part_of_the_runs_own_strings() -> None:
    redactor = Redactor([LONG], keep=[f"runs/{LONG}"])
    assert redactor.text(f"token {LONG} rejected") == f"token {REDACTED} rejected"
    assert redactor.text(f"wrote runs/{LONG}/c4_train_10.jsonl") == f"wrote runs/{LONG}/c4_train_10.jsonl"
    assert redactor.text(f"revision '{LONG}' not found, see runs/{LONG}") == (
        f"revision '{REDACTED}' not found, see runs/{LONG}"
    )


def test_own_file_names_are_never_rewritten() -> None:
    secret = "train_1000_part001"  # long enough, and inside every part name of a job
    assert Redactor([secret]).text("uploaded s3://b/p/c4_train_1000_part001.jsonl") == (
        "uploaded s3://b/p/c4_train_1000_part001.jsonl"
    )


def test_json_values_are_redacted_one_by_one_and_keys_are_kept() -> None:
    document = {"error": f"bad {LONG}", "parts": [{"url": "s3://bkt/latest/x"}], "n": 3, LONG: None}
    assert Redactor([LONG, "test"]).value(document) == {
        "error": f"bad {REDACTED}",
        "parts": [{"url": "s3://bkt/latest/x"}],
        "n": 3,
        LONG: None,
    }


def test_the_longest_secret_wins_when_secrets_overlap() -> None:
    assert Redactor(["abcdefgh", "abcdefghijkl"]).text("<abcdefghijkl>") == f"<{REDACTED}>"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:hunter2@hub.example.com/x", "https://hub.example.com/x"),
        ("http://token@127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("https://huggingface.co", "https://huggingface.co"),
        ("http://[::1", "http://[::1"),
    ],
)
def test_urls_are_shown_without_userinfo(url: str, shown: str) -> None:
    assert display_url(url) == shown
    assert "hunter2" not in Redactor([]).text(f"cannot reach {url}")
