"""A forward HTTP proxy on loopback, in a thread of the test process: what `HTTP_PROXY` points at in
the proxy tests. It passes plain-http requests on as they came (absolute-form targets), answers as
the origin answered (redirects are the client's to follow), and counts what it forwarded by host."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from types import TracebackType

import aiohttp
from aiohttp import web

_HOP_BY_HOP = frozenset(
    [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    ]
)


class ForwardProxy:
    """`with ForwardProxy() as proxy:` serves on `proxy.url` until the block ends."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str]] = Counter()  # (method, "host:port") of each one forwarded
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="forward-proxy", daemon=True)
        self._stop: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None

    def __enter__(self) -> ForwardProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _serve(self) -> None:
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with aiohttp.ClientSession(auto_decompress=False) as self._session:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._forward)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            self.url = f"http://127.0.0.1:{port}"
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        session = self._session
        assert session is not None
        if not request.url.is_absolute() or request.url.host is None:
            return web.Response(status=400, text="not a proxy request")
        self.requests[request.method, f"{request.url.host}:{request.url.port}"] += 1
        headers = {name: value for name, value in request.headers.items() if name.lower() not in _HOP_BY_HOP}
        body = await request.read()
        async with session.request(
            request.method, request.url, headers=headers, data=body or None, allow_redirects=False
        ) as upstream:
            response = web.StreamResponse(
                status=upstream.status,
                headers={n: v for n, v in upstream.headers.items() if n.lower() not in _HOP_BY_HOP},
            )
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(64 * 1024):
                await response.write(chunk)
            await response.write_eof()
            return response
