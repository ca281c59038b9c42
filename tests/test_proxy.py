"""A proxy the environment names (`HTTP_PROXY`, `NO_PROXY`): every request to the Hub and its storage
goes through it, a count job's decode processes' downloads included (their own sockets would go
around it, so the main process relays their shards); a host `NO_PROXY` exempts is reached directly."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from aioc4.naming import part_names
from scripts.hub_server import HubServerProcess
from scripts.shards import FakeRepo

from .conftest import DOCS_PER_TRAIN_SHARD, Aioc4, clean_env, parts_in, split_expected
from .forward_proxy import ForwardProxy

COUNT, SIZE = DOCS_PER_TRAIN_SHARD + 2_000, 5_000  # two shards: decoded in two processes


@pytest.fixture(scope="module")
def proxied_hub(fake_repo: FakeRepo) -> Iterator[HubServerProcess]:
    with HubServerProcess(fake_repo.root) as server:
        yield server


def _count_job(
    hub: HubServerProcess, tmp_path: Path, proxy: ForwardProxy, no_proxy: str, lines: list[bytes]
) -> str:
    """The job's stderr, once its parts are checked to hold exactly the first COUNT documents."""
    env = clean_env(hub.endpoint, {}, tmp_path)
    env.update({"HTTP_PROXY": proxy.url, "http_proxy": proxy.url, "NO_PROXY": no_proxy, "no_proxy": no_proxy})
    hub.reset_stats()
    aioc4 = Aioc4(cwd=tmp_path, env=env)
    result = aioc4(
        "--num-samples", str(COUNT), "--max-lines-per-file", str(SIZE), "--output-dir", "o",
        "--procs", "2", "--verbose",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert parts_in(tmp_path / "o") == split_expected(lines[:COUNT], part_names("train", COUNT, SIZE), SIZE)
    return result.stderr


def test_every_request_of_a_count_job_goes_through_the_proxy(
    proxied_hub: HubServerProcess, tmp_path: Path, source_lines: Callable[[str], list[bytes]]
) -> None:
    with ForwardProxy() as proxy:
        stderr = _count_job(proxied_hub, tmp_path, proxy, no_proxy="", lines=source_lines("train"))
    storage, hub = (urlsplit(url).netloc for url in (proxied_hub.storage, proxied_hub.endpoint))
    stats = proxied_hub.stats()
    assert stats["storage_get_requests"] > 2
    assert proxy.requests["GET", storage] == stats["storage_get_requests"]  # not one went around it
    assert proxy.requests["GET", hub] > 0
    assert stderr.count("relayed from here (storage is behind a proxy)") == 2


def test_a_host_no_proxy_names_is_reached_directly(
    proxied_hub: HubServerProcess, tmp_path: Path, source_lines: Callable[[str], list[bytes]]
) -> None:
    with ForwardProxy() as proxy:
        stderr = _count_job(proxied_hub, tmp_path, proxy, no_proxy="127.0.0.1", lines=source_lines("train"))
    assert not proxy.requests
    assert "behind a proxy" not in stderr
