"""The fake C4 generator, and the local Hub server driven by the real `huggingface_hub` client.

The client gets the server through an explicit `endpoint=` (huggingface_hub reads `HF_ENDPOINT` once, at
import); one test runs it in a subprocess with `HF_ENDPOINT` set instead, as the CLI will be run.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile

from scripts.hub_server import CHUNK_SIZE, HubServerProcess
from scripts.shards import FakeRepo, build_fake_c4, iter_shard_lines, make_document

REPO_ID = "allenai/c4"
TOKEN = "hf_test_token_not_a_secret"
TRAIN_SHARDS = 3
SHARD = "en/c4-train.00000-of-00003.json.gz"
EN_FILES = [f"en/c4-train.{i:05d}-of-00003.json.gz" for i in range(TRAIN_SHARDS)] + [
    f"en/c4-validation.{i:05d}-of-00002.json.gz" for i in range(2)
]


@pytest.fixture(scope="module")
def small_repo(tmp_path_factory: pytest.TempPathFactory) -> FakeRepo:
    return build_fake_c4(
        tmp_path_factory.mktemp("fake-c4"),
        train_shards=TRAIN_SHARDS,
        docs_per_train_shard=600,
        validation_shards=2,
        docs_per_validation_shard=50,
    )


@pytest.fixture(scope="module")
def paged_hub(small_repo: FakeRepo) -> Iterator[HubServerProcess]:
    with HubServerProcess(small_repo.root, page_size=2) as server:
        yield server


@pytest.fixture(scope="module")
def gated_hub(small_repo: FakeRepo) -> Iterator[HubServerProcess]:
    with HubServerProcess(small_repo.root, token=TOKEN) as server:
        yield server


@pytest.fixture
def api(paged_hub: HubServerProcess) -> HfApi:
    paged_hub.reset_stats()
    return HfApi(endpoint=paged_hub.endpoint, token=False)


def http_request(
    url: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, Message, bytes]:
    """One request, sent as-is: no redirects followed, no proxies, the path not re-encoded."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        connection.request(
            method, f"{parts.path}?{parts.query}" if parts.query else parts.path, headers=headers or {}
        )
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def storage_url(paged_hub: HubServerProcess, path: str, token: str | bool = False) -> str:
    url = hf_hub_url(REPO_ID, path, repo_type="dataset", endpoint=paged_hub.endpoint)
    location: str = get_hf_file_metadata(url, token=token).location
    return location


# ---------------------------------------------------------------------------------------------- generator


def test_generator_is_deterministic_and_reuses_a_current_build(tmp_path: Path) -> None:
    kwargs = {
        "train_shards": 2,
        "docs_per_train_shard": 30,
        "validation_shards": 1,
        "docs_per_validation_shard": 10,
    }
    first, second = build_fake_c4(tmp_path / "a", **kwargs), build_fake_c4(tmp_path / "b", **kwargs)
    assert first.files == second.files
    for path in first.files:
        assert (first.root / path).read_bytes() == (second.root / path).read_bytes(), path
    other_seed = build_fake_c4(tmp_path / "c", **kwargs, seed=1)
    assert (other_seed.root / first.files[-1]).read_bytes() != (first.root / first.files[-1]).read_bytes()

    shard = first.root / "en/c4-train.00001-of-00002.json.gz"
    mtime = shard.stat().st_mtime_ns
    assert build_fake_c4(first.root, **kwargs) == first
    assert shard.stat().st_mtime_ns == mtime
    smaller = build_fake_c4(first.root, **{**kwargs, "train_shards": 1})
    assert not shard.exists()
    assert sorted(p.relative_to(smaller.root).as_posix() for p in smaller.root.rglob("*.gz")) == [
        p for p in smaller.files if p.endswith(".gz")
    ]


def test_lines_are_compact_c4_json(small_repo: FakeRepo) -> None:
    lines = list(iter_shard_lines(small_repo.root / SHARD))
    assert len(lines) == 600
    docs = [json.loads(line) for line in lines]
    for line, doc in zip(lines, docs, strict=True):
        assert list(doc) == ["text", "timestamp", "url"]
        assert json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode() == line
        assert re.fullmatch(r"2019-04-\d\dT\d\d:\d\d:\d\dZ", doc["timestamp"])
        assert doc["url"].startswith("https://")
    texts = [doc["text"] for doc in docs]
    assert sum(not text.isascii() for text in texts) > 500
    assert any('"' in text for text in texts)
    assert any("\\" in text for text in texts)
    assert any("\n" in text for text in texts)
    assert 1800 < sum(map(len, texts)) / len(texts) < 2800
    raw = gzip.decompress((small_repo.root / SHARD).read_bytes())
    assert raw.endswith(b"\n")
    assert 2.4 < len(raw) / (small_repo.root / SHARD).stat().st_size < 3.2


def test_make_document_is_fast() -> None:
    rng = random.Random(0)
    started = time.perf_counter()
    for index in range(5000):
        make_document(rng, 0, index)
    assert time.perf_counter() - started < 1.0


# ----------------------------------------------------------------------------------------------- Hub API


def test_tree_listing_walks_all_pages(api: HfApi, paged_hub: HubServerProcess) -> None:
    entries = list(api.list_repo_tree(REPO_ID, path_in_repo="en", repo_type="dataset"))
    assert [entry.path for entry in entries] == EN_FILES
    assert paged_hub.stats()["api_requests"] == 3  # 5 entries at 2 per page
    assert all(isinstance(entry, RepoFile) and entry.lfs is not None for entry in entries)

    top = {entry.path: type(entry).__name__ for entry in api.list_repo_tree(REPO_ID, repo_type="dataset")}
    assert top == {
        "en": "RepoFolder",
        "en.noblocklist": "RepoFolder",
        "realnewslike": "RepoFolder",
        ".gitattributes": "RepoFile",
        "README.md": "RepoFile",
    }
    decoys = list(api.list_repo_tree(REPO_ID, path_in_repo="realnewslike", repo_type="dataset"))
    assert [entry.path for entry in decoys] == [
        "realnewslike/c4-train.00000-of-00001.json.gz",
        "realnewslike/c4-validation.00000-of-00001.json.gz",
    ]


def test_repo_files_and_expanded_entries(
    api: HfApi, paged_hub: HubServerProcess, small_repo: FakeRepo
) -> None:
    assert api.list_repo_files(REPO_ID, repo_type="dataset") == sorted(small_repo.files)
    entry = next(iter(api.list_repo_tree(REPO_ID, path_in_repo="en", repo_type="dataset", expand=True)))
    assert isinstance(entry, RepoFile)
    assert entry.last_commit is not None
    assert entry.last_commit.oid == paged_hub.commit
    assert entry.lfs is not None
    assert entry.size == entry.lfs.size == (small_repo.root / entry.path).stat().st_size


def test_dataset_info_has_commit_and_configs(api: HfApi, paged_hub: HubServerProcess) -> None:
    info = api.dataset_info(REPO_ID)
    assert info.sha == paged_hub.commit
    assert info.card_data is not None
    configs = info.card_data["configs"]
    assert configs[0] == {
        "config_name": "en",
        "data_files": [
            {"split": "train", "path": "en/c4-train.*.json.gz"},
            {"split": "validation", "path": "en/c4-validation.*.json.gz"},
        ],
    }
    assert {config["config_name"] for config in configs} == {"en", "en.noblocklist", "realnewslike"}
    pinned = api.dataset_info(REPO_ID, revision=paged_hub.commit, files_metadata=True)
    assert pinned.sha == paged_hub.commit
    assert pinned.siblings is not None
    shard = next(s for s in pinned.siblings if s.rfilename == SHARD)
    assert shard.lfs is not None
    assert shard.size == shard.lfs.size


def test_paths_info_omits_missing_paths(api: HfApi) -> None:
    found = api.get_paths_info(REPO_ID, ["README.md", "en", SHARD, "nope.txt"], repo_type="dataset")
    assert [(type(entry).__name__, entry.path) for entry in found] == [
        ("RepoFile", "README.md"),
        ("RepoFolder", "en"),
        ("RepoFile", SHARD),
    ]


# ------------------------------------------------------------------------------------------- downloads


def test_download_is_byte_identical_and_then_cached(
    paged_hub: HubServerProcess, small_repo: FakeRepo, tmp_path: Path
) -> None:
    paged_hub.reset_stats()
    path = hf_hub_download(
        REPO_ID, SHARD, repo_type="dataset", cache_dir=tmp_path, endpoint=paged_hub.endpoint, token=False
    )
    expected = (small_repo.root / SHARD).read_bytes()
    assert Path(path).read_bytes() == expected
    stats = paged_hub.stats()
    assert stats["storage_body_bytes_by_path"] == {SHARD: len(expected)}
    assert stats["storage_get_requests"] == 1

    paged_hub.reset_stats()
    again = hf_hub_download(
        REPO_ID, SHARD, repo_type="dataset", cache_dir=tmp_path, endpoint=paged_hub.endpoint, token=False
    )
    assert again == path
    stats = paged_hub.stats()
    assert stats["storage_body_bytes"] == 0
    assert stats["resolve_requests"] == {"HEAD": 1, "GET": 0}


def test_small_files_are_served_inline(
    paged_hub: HubServerProcess, small_repo: FakeRepo, tmp_path: Path
) -> None:
    paged_hub.reset_stats()
    path = hf_hub_download(
        REPO_ID,
        "README.md",
        repo_type="dataset",
        cache_dir=tmp_path,
        endpoint=paged_hub.endpoint,
        token=False,
    )
    assert Path(path).read_bytes() == (small_repo.root / "README.md").read_bytes()
    assert "configs:" in Path(path).read_text(encoding="utf-8")
    assert paged_hub.stats()["storage_get_requests"] == 0


def test_file_metadata(paged_hub: HubServerProcess, small_repo: FakeRepo) -> None:
    shard = get_hf_file_metadata(
        hf_hub_url(REPO_ID, SHARD, repo_type="dataset", endpoint=paged_hub.endpoint), token=False
    )
    tree = {
        e.path: e
        for e in HfApi(endpoint=paged_hub.endpoint, token=False).list_repo_tree(
            REPO_ID, "en", repo_type="dataset"
        )
    }
    entry = tree[SHARD]
    assert isinstance(entry, RepoFile)
    assert entry.lfs is not None
    assert shard.commit_hash == paged_hub.commit
    assert shard.etag == entry.lfs.sha256
    assert shard.size == (small_repo.root / SHARD).stat().st_size
    assert shard.location.startswith(f"{paged_hub.storage}/cdn/{entry.lfs.sha256}/")

    readme_url = hf_hub_url(
        REPO_ID, "README.md", repo_type="dataset", revision=paged_hub.commit, endpoint=paged_hub.endpoint
    )
    readme = get_hf_file_metadata(readme_url, token=False)
    assert readme.commit_hash == paged_hub.commit
    assert readme.size == (small_repo.root / "README.md").stat().st_size
    assert readme.location == readme_url


def test_storage_ranges(paged_hub: HubServerProcess, small_repo: FakeRepo) -> None:
    url = storage_url(paged_hub, SHARD)
    data = (small_repo.root / SHARD).read_bytes()
    size = len(data)
    cases = {
        "bytes=10-19": (10, 20),
        "bytes=100-": (100, size),
        "bytes=-5": (size - 5, size),
        f"bytes={size - 3}-{size + 100}": (size - 3, size),
    }
    for header, (start, stop) in cases.items():
        status, headers, body = http_request(url, headers={"Range": header})
        assert status == 206, header
        assert headers["Content-Range"] == f"bytes {start}-{stop - 1}/{size}"
        assert body == data[start:stop]
    status, headers, body = http_request(url)
    assert (status, body, headers["Accept-Ranges"]) == (200, data, "bytes")
    assert headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    status, headers, _ = http_request(url, headers={"Range": f"bytes={size}-"})
    assert (status, headers["Content-Range"]) == (416, f"bytes */{size}")


def test_storage_rejects_bad_signatures(paged_hub: HubServerProcess) -> None:
    url = storage_url(paged_hub, SHARD)
    assert http_request(re.sub(r"sig=[0-9a-f]+", "sig=" + "0" * 64, url))[0] == 403
    assert http_request(re.sub(r"expires=\d+", "expires=1", url))[0] == 403


def test_resolve_accepts_encoded_slashes(paged_hub: HubServerProcess) -> None:
    encoded = SHARD.replace("/", "%2F")
    status, headers, _ = http_request(
        f"{paged_hub.endpoint}/datasets/{REPO_ID}/resolve/main/{encoded}", "HEAD"
    )
    assert (status, headers["X-Repo-Commit"]) == (302, paged_hub.commit)


def test_client_with_hf_endpoint_environment(
    paged_hub: HubServerProcess, small_repo: FakeRepo, tmp_path: Path
) -> None:
    script = (
        "import sys; from huggingface_hub import hf_hub_download, HfApi; "
        f"print(HfApi(token=False).dataset_info({REPO_ID!r}).sha); "
        f"print(hf_hub_download({REPO_ID!r}, {SHARD!r}, repo_type='dataset', cache_dir=sys.argv[1], "
        "token=False))"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING"))}
    env["HF_ENDPOINT"] = paged_hub.endpoint
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    sha, path = result.stdout.split()
    assert sha == paged_hub.commit
    assert Path(path).read_bytes() == (small_repo.root / SHARD).read_bytes()


# ----------------------------------------------------------------------------------------------- errors


def test_unknown_revision(api: HfApi, paged_hub: HubServerProcess, tmp_path: Path) -> None:
    with pytest.raises(RevisionNotFoundError):
        api.dataset_info(REPO_ID, revision="v9")
    with pytest.raises(RevisionNotFoundError):
        list(api.list_repo_tree(REPO_ID, path_in_repo="en", repo_type="dataset", revision="v9"))
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(
            REPO_ID,
            SHARD,
            repo_type="dataset",
            revision="v9",
            cache_dir=tmp_path,
            endpoint=paged_hub.endpoint,
            token=False,
        )


def test_unknown_repository(api: HfApi, paged_hub: HubServerProcess, tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFoundError):
        api.dataset_info("allenai/c5")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(
            "c4",
            "README.md",
            repo_type="dataset",
            cache_dir=tmp_path,
            endpoint=paged_hub.endpoint,
            token=False,
        )


@pytest.mark.parametrize("path", ["c4.py", ".huggingface.yaml", "dataset_infos.json"])
def test_missing_files_are_entry_not_found(paged_hub: HubServerProcess, path: str) -> None:
    url = hf_hub_url(REPO_ID, path, repo_type="dataset", endpoint=paged_hub.endpoint)
    with pytest.raises(RemoteEntryNotFoundError) as raised:
        get_hf_file_metadata(url, token=False)
    assert isinstance(raised.value, EntryNotFoundError)
    assert raised.value.response.headers["X-Repo-Commit"] == paged_hub.commit


def test_missing_folder_is_entry_not_found(api: HfApi) -> None:
    with pytest.raises(RemoteEntryNotFoundError):
        list(api.list_repo_tree(REPO_ID, path_in_repo="en.noclean", repo_type="dataset"))


def test_gated_repo_needs_the_token(gated_hub: HubServerProcess) -> None:
    with pytest.raises(GatedRepoError):
        HfApi(endpoint=gated_hub.endpoint, token=False).dataset_info(REPO_ID)
    with pytest.raises(HfHubHTTPError) as raised:
        HfApi(endpoint=gated_hub.endpoint, token="hf_wrong").dataset_info(REPO_ID)
    assert not isinstance(raised.value, RepositoryNotFoundError)
    assert raised.value.response.status_code == 401
    assert HfApi(endpoint=gated_hub.endpoint, token=TOKEN).dataset_info(REPO_ID).gated == "auto"


def test_token_never_reaches_storage(
    gated_hub: HubServerProcess, small_repo: FakeRepo, tmp_path: Path
) -> None:
    gated_hub.reset_stats()
    path = hf_hub_download(
        REPO_ID, SHARD, repo_type="dataset", cache_dir=tmp_path, endpoint=gated_hub.endpoint, token=TOKEN
    )
    assert Path(path).read_bytes() == (small_repo.root / SHARD).read_bytes()
    stats = gated_hub.stats()
    assert stats["storage_get_requests"] == 1
    assert stats["storage_auth_headers_seen"] == 0
    # The counter works: a request that does carry the header is seen.
    http_request(storage_url(gated_hub, SHARD, token=TOKEN), "HEAD", {"Authorization": f"Bearer {TOKEN}"})
    assert gated_hub.stats()["storage_auth_headers_seen"] == 1


# ---------------------------------------------------------------------------------------------- process


def test_paced_storage_stops_when_the_client_leaves(small_repo: FakeRepo) -> None:
    size = (small_repo.root / SHARD).stat().st_size
    assert size > 6 * CHUNK_SIZE
    # Unstopped, the whole shard would be sent within the wait below.
    with HubServerProcess(small_repo.root, pace_bytes_per_s=8 * CHUNK_SIZE) as paced:
        parts = urlsplit(storage_url(paced, SHARD))
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
        connection.request("GET", f"{parts.path}?{parts.query}")
        response = connection.getresponse()
        assert len(response.read(CHUNK_SIZE)) == CHUNK_SIZE
        connection.close()
        time.sleep(1.5)
        sent = paced.stats()["storage_body_bytes_by_path"][SHARD]
    assert sent <= 4 * CHUNK_SIZE


def test_server_stops_cleanly_on_sigterm(small_repo: FakeRepo) -> None:
    server = HubServerProcess(small_repo.root)
    server.start()
    assert server.stats()["api_requests"] == 0
    assert server.stop() == 0


def test_launcher_reports_startup_failures(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="not a directory"):
        HubServerProcess(tmp_path / "missing").start()
