"""Fault-injecting HTTP reverse proxy to put in front of an S3 endpoint (moto) in tests.

Every request is forwarded unchanged (method, raw path and query, headers including Host and the SigV4
Authorization, body bytes) unless a rule matches it, in which case the rule's action answers instead.
Host is kept as the client sent it: botocore signs the host it connects to (the proxy's), so keeping it
keeps the signature consistent should the upstream ever verify it.

Rules are JSON objects, checked in order; the first matching rule with budget left acts:

    {"name": "fail-part2",   # optional, default "rule<N>"; key for stats
     "methods": ["PUT"],     # optional, str or list; default any method
     "path": "_part002",     # optional regex, re.search on the decoded path (/bucket/key)
     "query": "partNumber=2",  # optional regex, re.search on the raw query string
     "action": "status",     # the only action so far
     "status": 503,          # 500 -> InternalError, 503 -> SlowDown (S3 XML error body)
     "code": "SlowDown",     # optional, overrides the S3 error code
     "times": 1}             # optional: act on the first K matches only; default always

Control endpoints on the proxy itself: ``POST /_proxy/rules`` (JSON list, replaces the rules),
``GET /_proxy/rules``, ``GET /_proxy/stats``, ``POST /_proxy/reset`` (no rules, zero counters).

``python -m scripts.s3_fault_proxy --upstream URL [--host H] [--port N] [--rules JSON]`` prints one JSON
line ``{"endpoint": ...}`` once listening and stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import ClientError, ClientSession, ClientTimeout, DummyCookieJar, hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from scripts.s3_server import HOST, START_TIMEOUT, EndpointProcess, http_json

# S3's largest single PUT / part; the proxy buffers whole bodies.
MAX_BODY = 5 * 1024**3
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Expect: the proxy already answered 100-continue and holds the body; aiohttp recomputes Content-Length.
DROP_REQUEST_HEADERS = HOP_BY_HOP | {"expect", "content-length"}
DROP_RESPONSE_HEADERS = HOP_BY_HOP | {"content-length"}
# Stop aiohttp's client adding headers the original request did not have.
SKIP_AUTO_HEADERS = (hdrs.ACCEPT, hdrs.ACCEPT_ENCODING, hdrs.USER_AGENT, hdrs.CONTENT_TYPE)
S3_ERRORS = {
    500: ("InternalError", "We encountered an internal error. Please try again."),
    502: ("BadGateway", "The proxy could not reach the upstream S3 endpoint."),
    503: ("SlowDown", "Please reduce your request rate."),
}


@dataclass
class Rule:
    """One fault rule plus its counters; see the module docstring for the JSON form."""

    name: str
    action: str = "status"
    methods: frozenset[str] | None = None
    path: re.Pattern[str] | None = None
    query: re.Pattern[str] | None = None
    status: int = 500
    code: str | None = None
    times: int | None = None
    matched: int = 0
    injected: int = 0

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], index: int) -> Rule:
        unknown = set(raw) - {"name", "action", "methods", "path", "query", "status", "code", "times"}
        if unknown:
            raise ValueError(f"rule {index}: unknown fields {sorted(unknown)}")
        action = str(raw.get("action", "status"))
        if action not in ACTIONS:
            raise ValueError(f"rule {index}: unknown action {action!r}; known: {sorted(ACTIONS)}")
        times = raw.get("times")
        if times is not None and (not isinstance(times, int) or times < 0):
            raise ValueError(f"rule {index}: times must be a non-negative integer")
        return cls(
            name=str(raw.get("name", f"rule{index}")),
            action=action,
            methods=_parse_methods(raw.get("methods")),
            path=_compile(raw.get("path")),
            query=_compile(raw.get("query")),
            status=int(raw.get("status", 500)),
            code=raw.get("code"),
            times=times,
        )

    def matches(self, method: str, path: str, query: str) -> bool:
        return (
            (self.methods is None or method in self.methods)
            and (self.path is None or self.path.search(path) is not None)
            and (self.query is None or self.query.search(query) is not None)
        )

    def take(self) -> bool:
        """Count a match; True if this one should be acted on (budget left)."""
        self.matched += 1
        if self.times is not None and self.injected >= self.times:
            return False
        self.injected += 1
        return True

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "action": self.action,
            "methods": sorted(self.methods) if self.methods is not None else None,
            "path": self.path.pattern if self.path is not None else None,
            "query": self.query.pattern if self.query is not None else None,
            "status": self.status,
            "code": self.code,
            "times": self.times,
            "matched": self.matched,
            "injected": self.injected,
        }


def _parse_methods(value: Any) -> frozenset[str] | None:
    if value is None:
        return None
    names = [value] if isinstance(value, str) else list(value)
    return frozenset(str(name).upper() for name in names)


def _compile(value: Any) -> re.Pattern[str] | None:
    return None if value is None else re.compile(str(value))


def parse_rules(raw: Any) -> list[Rule]:
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise ValueError("rules must be a JSON list of objects")
    try:
        return [Rule.from_dict(item, index) for index, item in enumerate(raw)]
    except (re.error, TypeError) as exc:
        raise ValueError(str(exc)) from exc


@dataclass
class ProxyState:
    upstream: str
    rules: list[Rule] = field(default_factory=list)
    forwarded: int = 0
    injected: int = 0

    def pick(self, request: web.Request) -> Rule | None:
        """The rule that acts on this request, if any (counting every match along the way)."""
        for rule in self.rules:
            if rule.matches(request.method, request.path, request.query_string) and rule.take():
                return rule
        return None

    def reset(self) -> None:
        self.rules = []
        self.forwarded = 0
        self.injected = 0

    def stats(self) -> dict[str, Any]:
        return {
            "forwarded": self.forwarded,
            "injected": self.injected,
            "rules": {rule.name: {"matched": rule.matched, "injected": rule.injected} for rule in self.rules},
        }


STATE_KEY = web.AppKey("state", ProxyState)
SESSION_KEY = web.AppKey("session", ClientSession)


# --- actions: each answers a matched request instead of the upstream ---------------------------------


def s3_error_response(request: web.Request, status: int, code: str | None = None) -> web.Response:
    """An S3-style XML error, as botocore's parser and retry logic expect it."""
    default_code, message = S3_ERRORS.get(status, ("InternalError", "Injected fault."))
    request_id = uuid.uuid4().hex[:16].upper()
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code or default_code)}</Code><Message>{escape(message)}</Message>"
        f"<Resource>{escape(request.path)}</Resource><RequestId>{request_id}</RequestId></Error>"
    )
    return web.Response(
        status=status,
        body=None if request.method == hdrs.METH_HEAD else xml.encode(),
        content_type="application/xml",
        headers={"x-amz-request-id": request_id},
    )


async def status_action(request: web.Request, rule: Rule) -> web.StreamResponse:
    return s3_error_response(request, rule.status, rule.code)


Action = Callable[[web.Request, Rule], Awaitable[web.StreamResponse]]
ACTIONS: dict[str, Action] = {"status": status_action}


# --- forwarding ---------------------------------------------------------------------------------------


def _filter_headers(headers: CIMultiDictProxy[str], drop: frozenset[str]) -> CIMultiDict[str]:
    return CIMultiDict((name, value) for name, value in headers.items() if name.lower() not in drop)


async def forward(request: web.Request, body: bytes) -> web.Response:
    state = request.app[STATE_KEY]
    # raw_path keeps the client's exact percent-encoding; encoded=True stops yarl re-quoting it.
    url = URL(state.upstream + request.raw_path, encoded=True)
    try:
        async with request.app[SESSION_KEY].request(
            request.method,
            url,
            headers=_filter_headers(request.headers, DROP_REQUEST_HEADERS),
            data=body or None,
            skip_auto_headers=SKIP_AUTO_HEADERS,
            allow_redirects=False,
        ) as upstream:
            payload = await upstream.read()
            headers = _filter_headers(upstream.headers, DROP_RESPONSE_HEADERS)
            if request.method == hdrs.METH_HEAD and hdrs.CONTENT_LENGTH in upstream.headers:
                # HEAD has no body to measure, and botocore reads ContentLength from this header.
                headers[hdrs.CONTENT_LENGTH] = upstream.headers[hdrs.CONTENT_LENGTH]
            return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=payload)
    except (ClientError, TimeoutError):
        return s3_error_response(request, 502)


async def proxy_handler(request: web.Request) -> web.StreamResponse:
    body = await request.read()  # always drain the body, so keep-alive works after an injected error
    state = request.app[STATE_KEY]
    rule = state.pick(request)
    if rule is not None:
        state.injected += 1
        return await ACTIONS[rule.action](request, rule)
    state.forwarded += 1
    return await forward(request, body)


# --- control endpoints ----------------------------------------------------------------------------------


async def set_rules_handler(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        state.rules = parse_rules(await request.json())
    except ValueError as exc:  # includes json.JSONDecodeError
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response([rule.to_dict() for rule in state.rules])


async def get_rules_handler(request: web.Request) -> web.Response:
    return web.json_response([rule.to_dict() for rule in request.app[STATE_KEY].rules])


async def stats_handler(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE_KEY].stats())


async def reset_handler(request: web.Request) -> web.Response:
    request.app[STATE_KEY].reset()
    return web.json_response({"status": "ok"})


async def _client_session(app: web.Application) -> AsyncIterator[None]:
    session = ClientSession(
        auto_decompress=False,  # relay bodies byte for byte
        cookie_jar=DummyCookieJar(),
        timeout=ClientTimeout(total=None, sock_connect=10),
    )
    app[SESSION_KEY] = session
    yield
    await session.close()


def make_app(upstream: str, rules: Sequence[Mapping[str, Any]] = ()) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[STATE_KEY] = ProxyState(upstream=upstream.rstrip("/"), rules=parse_rules(list(rules)))
    app.cleanup_ctx.append(_client_session)
    app.router.add_post("/_proxy/rules", set_rules_handler)
    app.router.add_get("/_proxy/rules", get_rules_handler)
    app.router.add_get("/_proxy/stats", stats_handler)
    app.router.add_post("/_proxy/reset", reset_handler)
    app.router.add_route("*", "/{tail:.*}", proxy_handler)
    return app


async def serve(upstream: str, host: str, port: int, rules: Sequence[Mapping[str, Any]]) -> None:
    """Run until SIGTERM/SIGINT, after printing the endpoint as one JSON line."""
    runner = web.AppRunner(make_app(upstream, rules))
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound_port = runner.addresses[0][1]
        print(json.dumps({"endpoint": f"http://{host}:{bound_port}"}), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


class S3FaultProxyProcess(EndpointProcess):
    """The proxy in a subprocess, in front of ``upstream``; use as a context manager."""

    health_path = "/_proxy/stats"

    def __init__(
        self,
        upstream: str,
        rules: Sequence[Mapping[str, Any]] = (),
        port: int = 0,
        host: str = HOST,
        timeout: float = START_TIMEOUT,
    ) -> None:
        args = ["--upstream", upstream, "--host", host, "--port", str(port), "--rules", json.dumps(rules)]
        super().__init__("scripts.s3_fault_proxy", args, timeout)

    def set_rules(self, rules: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Replace the rules (counters start at zero); returns them as the proxy parsed them."""
        result: list[dict[str, Any]] = http_json("POST", self.endpoint + "/_proxy/rules", list(rules))
        return result

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = http_json("GET", self.endpoint + "/_proxy/stats")
        return result

    def reset(self) -> None:
        """No rules, all counters zero."""
        http_json("POST", self.endpoint + "/_proxy/reset")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.s3_fault_proxy", description=__doc__)
    parser.add_argument(
        "--upstream", required=True, help="S3 endpoint to forward to, e.g. http://127.0.0.1:5000"
    )
    parser.add_argument("--host", default=HOST, help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 = any free port (default)")
    parser.add_argument("--rules", type=json.loads, default=[], help="initial rules as a JSON list")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    asyncio.run(serve(args.upstream, args.host, args.port, args.rules))
    return 0


if __name__ == "__main__":
    sys.exit(main())
