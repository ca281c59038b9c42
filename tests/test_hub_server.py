"""The fake C4 generator, and the local Hub server driven by the real `huggingface_hub` client.

The client gets the server through an explicit `endpoint=` (huggingface_hub reads `HF_ENDPOINT` once, at
import); one test runs it in a subprocess with `HF_ENDPOINT` set instead, as the CLI will be run. The fault
tests talk raw HTTP where the client library would hide what the server did.
"""

from __future__ import annotations

import asyncio
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
from collections.abc import Callable, Iterator
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
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

from scripts.hub_server import CHUNK_SIZE, Faults, HubServerProcess, fault_flags, parse_args
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


def wait_for_stats(
    hub: HubServerProcess, condition: Callable[[dict[str, Any]], bool], what: str, timeout: float = 30
) -> None:
    """Poll the server's counters until `condition` holds (instead of sleeping for a guessed while)."""
    deadline = time.monotonic() + timeout
    while not condition(hub.stats()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {hub.stats()}")
        time.sleep(0.02)


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
    """CPU time, not wall time: a busy machine must not fail it."""
    rng = random.Random(0)
    started = time.process_time()
    for index in range(5000):
        make_document(rng, 0, index)
    assert time.process_time() - started < 1.0


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
        "multilingual": "RepoFolder",
        ".gitattributes": "RepoFile",
        "README.md": "RepoFile",
    }
    others = list(api.list_repo_tree(REPO_ID, path_in_repo="multilingual", repo_type="dataset"))
    assert [entry.path for entry in others] == [
        "multilingual/c4-af-validation.tfrecord-00000-of-00001.json.gz",
        "multilingual/c4-af.tfrecord-00000-of-00002.json.gz",
        "multilingual/c4-af.tfrecord-00001-of-00002.json.gz",
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
    assert [config["config_name"] for config in configs] == [
        "en",
        "en.noblocklist",
        "realnewslike",
        "multilingual",
        "af",
    ]
    assert configs[3]["data_files"][0] == {"split": "train", "path": ["multilingual/c4-af.*.json.gz"]}
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
        # the server notices at its next write; until then it keeps to the pace (one chunk in 1/8 s)
        wait_for_stats(
            paced, lambda stats: stats["storage_body_ends"] == {"client_left": 1}, "the client to go"
        )
        sent = paced.stats()["storage_body_bytes_by_path"][SHARD]
    assert sent <= 4 * CHUNK_SIZE


def test_storage_bodies_in_flight_are_counted_across_a_reset(small_repo: FakeRepo) -> None:
    # At two chunks a second the shard's body takes seconds: it is still being sent throughout.
    with HubServerProcess(small_repo.root, pace_bytes_per_s=2 * CHUNK_SIZE) as paced:
        parts = urlsplit(storage_url(paced, SHARD))  # HEAD requests have no body: not counted
        assert paced.stats()["storage_peak_in_flight"] == 0
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
        connection.request("GET", f"{parts.path}?{parts.query}")
        assert len(connection.getresponse().read(CHUNK_SIZE)) == CHUNK_SIZE
        in_flight = ("storage_in_flight", "storage_peak_in_flight")
        assert [paced.stats()[name] for name in in_flight] == [1, 1]
        paced.reset_stats()  # the peak starts again from what is in flight
        assert [paced.stats()[name] for name in in_flight] == [1, 1]
        connection.close()
        wait_for_stats(paced, lambda stats: stats["storage_body_ends"] == {"client_left": 1}, "the end")
        assert [paced.stats()[name] for name in in_flight] == [0, 1]


# The network model at test scale: B-byte range requests paced at PACE take B / PACE = 1.2 s each, so the
# serial time of CONCURRENT of them is over 7 s. Timings are lower bounds only, except the one comparison
# of concurrent against serial time, which has a margin of about 3x on an idle machine.
PACE = 64 * 1024
LATENCY_S = 0.2
RANGE_BYTES = 80_000  # not a multiple of the server's chunk size
CONCURRENT = 6


async def timed_get(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes, float]:
    """Status, body and the seconds from sending the request to holding the whole body."""
    began = time.monotonic()
    async with session.get(url, headers=headers, allow_redirects=False) as response:
        return response.status, await response.read(), time.monotonic() - began


async def timed_gets(url: str, headers: list[dict[str, str]]) -> list[tuple[int, bytes, float]]:
    """One GET per entry of `headers`, all at once, each on its own connection."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as session:
        return await asyncio.gather(*(timed_get(session, url, h) for h in headers))


@pytest.fixture(scope="module")
def far_hub(small_repo: FakeRepo) -> Iterator[HubServerProcess]:
    with HubServerProcess(small_repo.root, pace_bytes_per_s=PACE, latency_s=LATENCY_S) as server:
        yield server


def test_paced_range_takes_its_size_over_the_pace_plus_the_latency(
    far_hub: HubServerProcess, small_repo: FakeRepo
) -> None:
    data = (small_repo.root / SHARD).read_bytes()
    url = storage_url(far_hub, SHARD)
    start = 100
    [(status, body, elapsed)] = asyncio.run(
        timed_gets(url, [{"Range": f"bytes={start}-{start + RANGE_BYTES - 1}"}])
    )
    assert (status, body) == (206, data[start : start + RANGE_BYTES])
    assert elapsed >= RANGE_BYTES / PACE + LATENCY_S


def test_pacing_is_per_response_so_concurrent_ranges_add_up(
    far_hub: HubServerProcess, small_repo: FakeRepo
) -> None:
    data = (small_repo.root / SHARD).read_bytes()
    assert len(data) >= CONCURRENT * RANGE_BYTES
    url = storage_url(far_hub, SHARD)
    far_hub.reset_stats()
    ranges = [(i * RANGE_BYTES, (i + 1) * RANGE_BYTES) for i in range(CONCURRENT)]
    began = time.monotonic()
    results = asyncio.run(timed_gets(url, [{"Range": f"bytes={a}-{b - 1}"} for a, b in ranges]))
    total = time.monotonic() - began
    for (status, body, elapsed), (a, b) in zip(results, ranges, strict=True):
        assert (status, body) == (206, data[a:b])
        assert elapsed >= RANGE_BYTES / PACE + LATENCY_S  # each one is still paced and delayed
    serial = CONCURRENT * RANGE_BYTES / PACE
    assert total < 0.6 * serial, f"{CONCURRENT} paced ranges at once took {total:.2f} s, serially {serial} s"
    stats = far_hub.stats()
    assert stats["storage_body_ends"] == {"complete": CONCURRENT}
    assert stats["storage_body_bytes"] == CONCURRENT * RANGE_BYTES
    assert (stats["storage_peak_in_flight"], stats["storage_in_flight"]) == (CONCURRENT, 0)


def test_latency_delays_every_hub_and_storage_response(far_hub: HubServerProcess) -> None:
    info_url = f"{far_hub.endpoint}/api/datasets/{REPO_ID}"
    missing_url = f"{far_hub.endpoint}/datasets/{REPO_ID}/resolve/main/missing.txt"
    cases = [
        ("HEAD", resolve_url(far_hub), 302),  # the redirect to storage
        ("GET", f"{far_hub.endpoint}/datasets/{REPO_ID}/resolve/main/README.md", 200),  # served inline
        ("GET", info_url, 200),
        ("GET", missing_url, 404),  # errors too
        ("HEAD", storage_url(far_hub, SHARD), 200),
    ]
    for method, url, expected in cases:
        began = time.monotonic()
        status = http_request(url, method)[0]
        assert (status, time.monotonic() - began >= LATENCY_S) == (expected, True), (method, url)

    assert far_hub.faults()["latency_s"] == LATENCY_S
    try:
        assert far_hub.set_faults(latency_s=1.5)["latency_s"] == 1.5  # changed at runtime
        began = time.monotonic()
        assert http_request(info_url)[0] == 200
        assert time.monotonic() - began >= 1.5
        with pytest.raises(ValueError, match="latency_s"):
            far_hub.set_faults(latency_s=-1)
    finally:
        far_hub.set_faults(latency_s=LATENCY_S)


def test_server_stops_cleanly_on_sigterm(small_repo: FakeRepo) -> None:
    server = HubServerProcess(small_repo.root)
    server.start()
    assert server.stats()["api_requests"] == 0
    assert server.stop() == 0


def test_launcher_reports_startup_failures(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="not a directory"):
        HubServerProcess(tmp_path / "missing").start()


# ------------------------------------------------------------------------------------------------ faults

RATE_LIMIT_POLICY = '"fixed window";"resolvers";q=3000;w=300'


@pytest.fixture(scope="module")
def fault_server(small_repo: FakeRepo) -> Iterator[HubServerProcess]:
    with HubServerProcess(small_repo.root) as server:
        yield server


@pytest.fixture
def faulty_hub(fault_server: HubServerProcess) -> Iterator[HubServerProcess]:
    """One running server whose faults each test sets at runtime; healthy again afterwards."""
    fault_server.clear_faults()
    fault_server.reset_stats()
    yield fault_server
    fault_server.clear_faults()


def resolve_url(hub: HubServerProcess, path: str = SHARD) -> str:
    return f"{hub.endpoint}/datasets/{REPO_ID}/resolve/main/{path}"


def get_until_closed(url: str, headers: dict[str, str] | None = None) -> tuple[int, Message, bytes, bool]:
    """A GET on a connection the server is to close: status, headers, body, and whether the body was whole.

    `http.client` reads to the announced Content-Length; a connection that ends before it raises
    IncompleteRead, which proves the server really dropped it (a stalled one would time out instead).
    """
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        connection.request(
            "GET", f"{parts.path}?{parts.query}", headers={**(headers or {}), "Connection": "close"}
        )
        response = connection.getresponse()
        try:
            return response.status, response.headers, response.read(), True
        except http.client.IncompleteRead as short:
            return response.status, response.headers, short.partial, False
    finally:
        connection.close()


async def aiohttp_read(url: str) -> bytes:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.read()


def test_hub_errors_rate_limit_then_recover(faulty_hub: HubServerProcess) -> None:
    faulty_hub.set_faults(hub_error_rate=1.0, hub_error_statuses=[429], retry_after_s=7)
    info_url = f"{faulty_hub.endpoint}/api/datasets/{REPO_ID}"
    for method, url in [
        ("HEAD", resolve_url(faulty_hub)),
        ("GET", resolve_url(faulty_hub)),
        ("GET", info_url),
    ]:
        status, headers, _ = http_request(url, method)
        assert status == 429, (method, url)
        assert headers["Retry-After"] == "7"
        assert headers["RateLimit"] == '"resolvers";r=0;t=7'
        assert headers["RateLimit-Policy"] == RATE_LIMIT_POLICY
    with pytest.raises(HfHubHTTPError) as raised:  # the metadata HEAD does not retry
        get_hf_file_metadata(resolve_url(faulty_hub), token=False)
    assert raised.value.response.status_code == 429

    faulty_hub.set_faults(hub_error_statuses=[500])  # the control routes are never faulted
    status, headers, body = http_request(info_url)
    assert (status, "Retry-After" in headers) == (500, False)
    assert "injected" in json.loads(body)["error"]

    faulty_hub.set_faults(hub_error_rate=0)
    assert HfApi(endpoint=faulty_hub.endpoint, token=False).dataset_info(REPO_ID).sha == faulty_hub.commit
    assert get_hf_file_metadata(resolve_url(faulty_hub), token=False).commit_hash == faulty_hub.commit
    assert faulty_hub.stats()["faults_injected"] == {"hub_429": 4, "hub_500": 1}


def test_storage_errors(faulty_hub: HubServerProcess, small_repo: FakeRepo) -> None:
    url = storage_url(faulty_hub, SHARD)
    faulty_hub.set_faults(storage_error_rate=1.0, storage_error_statuses=[503], retry_after_s=0)
    status, headers, body = http_request(url)
    assert (status, headers["Retry-After"]) == (503, "0")
    assert b"<Code>SlowDown</Code>" in body
    assert http_request(url, "HEAD")[0] == 200  # only GETs fail

    faulty_hub.set_faults(storage_error_statuses=[500])
    status, headers, body = http_request(url)
    assert (status, "Retry-After" in headers) == (500, False)
    assert b"<Code>InternalError</Code>" in body

    faulty_hub.set_faults(storage_error_rate=0.0)
    assert http_request(url)[::2] == (200, (small_repo.root / SHARD).read_bytes())
    stats = faulty_hub.stats()
    assert stats["faults_injected"] == {"storage_503": 1, "storage_500": 1}
    assert stats["storage_get_requests"] == 3


def test_reset_cuts_every_response_and_range_resumes(
    faulty_hub: HubServerProcess, small_repo: FakeRepo
) -> None:
    data = (small_repo.root / SHARD).read_bytes()
    cut = 100_003  # not a multiple of the server's chunk size
    assert len(data) > 4 * cut
    faulty_hub.set_faults(reset_after_bytes=cut)
    url = storage_url(faulty_hub, SHARD)
    received, requests = b"", 0
    while len(received) < len(data):
        status, headers, body, whole = get_until_closed(url, {"Range": f"bytes={len(received)}-"})
        requests += 1
        remaining = len(data) - len(received)
        assert (status, int(headers["Content-Length"])) == (206, remaining)
        assert len(body) == min(cut, remaining)
        assert whole == (remaining <= cut)
        received += body
    assert received == data

    with pytest.raises(aiohttp.ClientPayloadError, match="Not enough data"):
        asyncio.run(aiohttp_read(url))
    stats = faulty_hub.stats()
    assert stats["faults_injected"] == {"reset": requests}  # every response but the last, plus aiohttp's
    assert stats["storage_body_bytes"] == len(data) + cut  # only what was sent


def test_ignore_range_sends_the_whole_file(faulty_hub: HubServerProcess, small_repo: FakeRepo) -> None:
    data = (small_repo.root / SHARD).read_bytes()
    faulty_hub.set_faults(ignore_range=True)
    status, headers, body = http_request(storage_url(faulty_hub, SHARD), headers={"Range": "bytes=100-"})
    assert (status, body, headers["Accept-Ranges"]) == (200, data, "none")
    assert "Content-Range" not in headers
    assert faulty_hub.stats()["faults_injected"] == {"ignored_range": 1}


def test_storage_can_refuse_authorization(
    faulty_hub: HubServerProcess, small_repo: FakeRepo, tmp_path: Path
) -> None:
    faulty_hub.set_faults(storage_forbid_auth=True)
    url = storage_url(faulty_hub, SHARD)
    status, _, body = http_request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 400
    assert b"<Code>InvalidArgument</Code>" in body
    # The real client sends the token to the Hub only, so the download still works.
    path = hf_hub_download(
        REPO_ID, SHARD, repo_type="dataset", cache_dir=tmp_path, endpoint=faulty_hub.endpoint, token=TOKEN
    )
    assert Path(path).read_bytes() == (small_repo.root / SHARD).read_bytes()
    stats = faulty_hub.stats()
    assert stats["faults_injected"] == {"auth_forbidden": 1}
    assert stats["storage_auth_headers_seen"] == 1


def test_expired_url_is_refused_but_a_running_download_finishes(small_repo: FakeRepo) -> None:
    """The URL expires while its download is under way: the server's clock is moved past the URL's
    lifetime (the clock_skew_s knob), so no wait and no race with a busy machine decide the outcome."""
    data = (small_repo.root / SHARD).read_bytes()
    ttl_s = 30.0
    assert len(data) > 4 * CHUNK_SIZE
    with HubServerProcess(small_repo.root, pace_bytes_per_s=8 * CHUNK_SIZE, url_ttl_s=ttl_s) as hub:
        assert hub.faults()["url_ttl_s"] == ttl_s
        url = storage_url(hub, SHARD)
        parts = urlsplit(url)
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
        try:
            connection.request("GET", f"{parts.path}?{parts.query}")
            response = connection.getresponse()
            assert response.status == 200
            first = response.read(CHUNK_SIZE)  # the download has started, in time
            hub.set_faults(clock_skew_s=2 * ttl_s)  # ... and now its URL has expired
            assert first + response.read() == data
        finally:
            connection.close()
        wait_for_stats(hub, lambda stats: stats["storage_body_ends"] == {"complete": 1}, "the body's end")
        status, headers, body = http_request(url, headers={"Range": "bytes=100-"})
        assert (status, headers.get_content_type()) == (403, "application/xml")
        assert b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>" in body
        status, _, body = http_request(storage_url(hub, SHARD), headers={"Range": "bytes=-10"})
        assert (status, body) == (206, data[-10:])
        assert hub.stats()["faults_injected"] == {"expired_url": 1}


def test_same_seed_same_faults(faulty_hub: HubServerProcess, small_repo: FakeRepo) -> None:
    location = storage_url(faulty_hub, SHARD)

    def outcomes() -> list[tuple[int, int, int]]:
        """(resolve status, storage status, body bytes received) for a run of downloads."""
        runs = []
        for _ in range(12):
            status = http_request(resolve_url(faulty_hub), "HEAD")[0]
            storage_status, _, body, _ = get_until_closed(location)
            runs.append((status, storage_status, len(body)))
        return runs

    faulty_hub.set_faults(
        fault_seed=11, hub_error_rate=0.4, storage_error_rate=0.3, reset_after_bytes=1000, reset_rate=0.5
    )
    first = outcomes()
    # A mix of every kind of outcome, so equal runs mean equal draws.
    assert {status for status, _, _ in first} == {302, 429, 500}
    assert {status for _, status, _ in first} > {200}
    size = (small_repo.root / SHARD).stat().st_size
    assert {n for _, status, n in first if status == 200} == {1000, size}  # some cut, some whole
    faulty_hub.set_faults(fault_seed=11)  # re-seeds
    assert outcomes() == first
    faulty_hub.set_faults(fault_seed=12)
    assert outcomes() != first


def test_card_knob_serves_no_card_or_a_broken_one(faulty_hub: HubServerProcess) -> None:
    api = HfApi(endpoint=faulty_hub.endpoint, token=False)
    faulty_hub.set_faults(card="none")
    assert api.dataset_info(REPO_ID).card_data is None
    faulty_hub.set_faults(card="no-configs")
    card = api.dataset_info(REPO_ID).card_data
    assert card is not None
    assert card.get("configs") is None
    assert card.get("pretty_name") == "C4"
    faulty_hub.set_faults(card="broken")
    card = api.dataset_info(REPO_ID).card_data
    assert card is not None
    assert card.get("configs") == [{"config_name": "../en", "data_files": "en/*"}, 7]
    with pytest.raises(ValueError, match="card"):
        faulty_hub.set_faults(card="partial")


def test_fault_knobs_are_validated(faulty_hub: HubServerProcess, small_repo: FakeRepo) -> None:
    before = faulty_hub.faults()
    assert before == json.loads(json.dumps(Faults().as_json()))
    bad: list[tuple[str, object]] = [
        ("nope", 1),
        ("reset_rate", 1.5),
        ("hub_error_statuses", [200]),
        ("ignore_range", 1),
    ]
    for name, value in bad:
        with pytest.raises(ValueError, match=name):
            faulty_hub.set_faults(**{name: value})
    assert http_request(f"{faulty_hub.endpoint}/_faults", "POST")[0] == 400  # no JSON at all
    assert faulty_hub.faults() == before
    with pytest.raises(ValueError, match="url_ttl_s"):
        HubServerProcess(small_repo.root, url_ttl_s=-1)


def test_fault_flags_round_trip(small_repo: FakeRepo) -> None:
    faults = Faults(
        fault_seed=3,
        hub_error_statuses=(503,),
        retry_after_s=0,
        reset_after_bytes=10,
        reset_rate=0.25,
        ignore_range=True,
        url_ttl_s=0.5,
        card="broken",
        latency_s=0.02,
    )
    assert parse_args(["--root", str(small_repo.root), *fault_flags(faults)]).faults == faults
    assert parse_args(["--root", str(small_repo.root)]).faults == Faults()
    with pytest.raises(SystemExit):
        parse_args(["--root", str(small_repo.root), "--reset-rate", "2"])
