"""Validation of the request, before any work starts."""

from __future__ import annotations

import pytest

from aioc4.config import RunConfig, S3Target, parse_s3_path
from aioc4.errors import UsageError


@pytest.mark.parametrize(
    ("text", "bucket", "prefix"),
    [
        ("s3://my-bucket", "my-bucket", ""),
        ("s3://my-bucket/", "my-bucket", ""),
        ("s3://my-bucket/c4", "my-bucket", "c4"),
        ("s3://my-bucket/c4/data/", "my-bucket", "c4/data"),
        ("s3://my.bucket.v2/a/b", "my.bucket.v2", "a/b"),
    ],
)
def test_parse_s3_path(text: str, bucket: str, prefix: str) -> None:
    assert parse_s3_path(text) == S3Target(bucket=bucket, prefix=prefix)


@pytest.mark.parametrize(
    "text",
    [
        "my-bucket/c4",
        "s3:/my-bucket",
        "https://my-bucket/c4",
        "s3://",
        "s3://My_Bucket/c4",
        "s3://ab",
        "s3://b/../x",
    ],
)
def test_bad_s3_paths_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="--s3-path"):
        parse_s3_path(text)


def test_keys_and_urls_join_prefix_and_name() -> None:
    target = S3Target(bucket="b", prefix="c4/en")
    assert target.key_for("c4_train_10.jsonl") == "c4/en/c4_train_10.jsonl"
    assert target.url_for("x.jsonl") == "s3://b/c4/en/x.jsonl"
    assert S3Target(bucket="b", prefix="").key_for("x.jsonl") == "x.jsonl"


def test_a_download_rate_cap_needs_streaming() -> None:
    with pytest.raises(UsageError, match="--max-download-rate caps streamed reads"):
        RunConfig(max_download_rate=50e6, streaming=False)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_samples", 0, "--num-samples"),
        ("num_samples", -5, "--num-samples"),
        ("max_lines_per_file", 0, "--max-lines-per-file"),
        ("split", "test", "--split"),
        ("upload_workers", 0, "--upload-workers"),
        ("download_connections", 0, "--download-connections"),
        ("upload_connections", 257, "--upload-connections"),
        ("max_download_rate", 0.0, "--max-download-rate"),
        ("max_upload_rate", float("nan"), "--max-upload-rate"),
        ("cleanup_local", True, "--cleanup-local"),
    ],
)
def test_invalid_config_is_rejected(field: str, value: object, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        RunConfig(**{field: value})  # type: ignore[arg-type]
