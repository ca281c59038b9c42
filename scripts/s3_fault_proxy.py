"""Fault-injecting HTTP reverse proxy to put in front of an S3 endpoint (moto) in tests.

Every request is forwarded unchanged (method, raw path and query, headers including Host and the SigV4
Authorization, body bytes) unless a rule acts on it, in which case the rule's action handles it instead.
Host is kept as the client sent it: botocore signs the host it connects to (the proxy's), so keeping it
keeps the signature consistent should the upstream ever verify it.

Rules are JSON objects, checked in order; the first rule that matches, has budget left and wins its
``rate`` draw acts (a rule that loses the draw lets the following rules try):

    {"name": "fail-part2",   # optional, default "rule<N>"; key for stats
     # --- matching (all optional; all given must match) ---
     "methods": ["PUT"],     # str or list; default any method
     "path": "_part002",     # regex, re.search on the decoded path (/bucket/key)
     "query": "partNumber=2",  # regex, re.search on the raw query string
     "header": {"x-amz-checksum-crc32": null,  # header present (name is case-insensitive) ...
                "content-type": "json$"},      # ... and, given a regex, some value of it re.search-matches
     # --- budget (optional) ---
     "times": 1,             # act on the first K matches only; default always
     "rate": 0.5,            # act on this random fraction of matches (0..1), reproducible: see --seed
     # --- action; each takes only its own options ---
     "action": "status",     # default; answer an S3 XML error instead of forwarding
     "status": 503,          #   default 500; default codes: 400 InvalidRequest, 403 AccessDenied,
                             #   503 SlowDown, others InternalError
     "code": "SlowDown"}     #   optional, overrides the S3 error code
    {"action": "reset",      # drop the connection with a TCP RST, never answering
     "after_bytes": 65536,   #   read only this many body bytes first (default: the whole body)
     "forward_first": true}  #   forward to the upstream first, then drop its answer (not with after_bytes)
    {"action": "delay",      # wait, then forward normally (slow S3)
     "seconds": 2.5}         #   required, >= 0

``after_bytes``: the proxy consumes exactly ``min(after_bytes, body length)`` body bytes from the request
stream, then resets the connection; it never reads the rest. The client has by then handed its kernel at
least that many bytes, plus whatever fits in the socket buffers and aiohttp's read-ahead (loopback: a few
MiB at most), so a body well beyond that is cut off mid-upload: its sender gets ECONNRESET/EPIPE.

A reset costs aiobotocore more than one match: its aiohttp session retries an idempotent request (GET,
HEAD, PUT, DELETE; not POST) once by itself after a dropped connection, below botocore's retry count, so
failing one botocore attempt of a PUT takes ``"times": 2``. botocore reports EndpointConnectionError.

The rate draws come from one ``random.Random`` per rule, seeded from the proxy's seed and the rule name,
so the same rules and the same request sequence fault the same requests, whatever ran before.

A far-away network (off by default): ``--pace-bytes-per-s`` caps each request's body (the upload) and
each response's body on its own, so concurrent requests (multipart chunks in flight at once) add up, as
separate connections to S3 do; ``--latency-s`` holds every answer, the injected ones included, before its
first byte. A paced request of B body bytes that the upstream answers with R body bytes thus takes at
least ``(B + R) / pace + latency``. ``GET``/``POST /_proxy/network`` show and change both at runtime (a JSON
object of the ones to change); the control endpoints themselves are never paced nor delayed.

Control endpoints on the proxy itself: ``POST /_proxy/rules`` (JSON list, replaces the rules),
``GET /_proxy/rules``, ``GET /_proxy/stats``, ``POST /_proxy/reset`` (no rules, zero counters; the network
knobs stay). In the stats, a request counts once: under ``forwarded`` if no rule acted, else under
``injected``, under ``injected_by_action[action]`` and under its rule's ``injected`` (delay and
forward_first requests reach the upstream, but count as injected). ``peak_in_flight`` is the most S3
requests (forwarded or injected; not control ones) in flight at once, each from its arrival until its answer
is written (latency and paced body included) or its connection cut; a reset starts it afresh.

``python -m scripts.s3_fault_proxy --upstream URL [--host H] [--port N] [--rules JSON] [--seed N]
[--pace-bytes-per-s BPS] [--latency-s S]`` prints one JSON line ``{"endpoint": ...}`` once listening and
stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import signal
import socket
import struct
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
# Paced bodies move in chunks of this size, each once the pace allows it.
PACE_CHUNK = 256 * 1024
NETWORK_KNOBS = ("pace_bytes_per_s", "latency_s")
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
    400: ("InvalidRequest", "Invalid Request."),
    403: ("AccessDenied", "Access Denied."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    502: ("BadGateway", "The proxy could not reach the upstream S3 endpoint."),
    503: ("SlowDown", "Please reduce your request rate."),
}
# Fields every rule may have; each action adds its own options (ACTION_OPTIONS, below the actions).
COMMON_FIELDS = frozenset({"name", "action", "methods", "path", "query", "header", "times", "rate"})
# SO_LINGER on, timeout 0: close() sends a RST instead of a FIN.
LINGER_RESET = struct.pack("ii", 1, 0)


@dataclass
class Rule:
    """One fault rule plus its counters; see the module docstring for the JSON form."""

    name: str
    action: str = "status"
    methods: frozenset[str] | None = None
    path: re.Pattern[str] | None = None
    query: re.Pattern[str] | None = None
    headers: dict[str, re.Pattern[str] | None] = field(default_factory=dict)
    times: int | None = None
    rate: float | None = None
    status: int = 500
    code: str | None = None
    after_bytes: int | None = None
    forward_first: bool = False
    seconds: float = 0.0
    rng: random.Random = field(default_factory=random.Random, repr=False)
    matched: int = 0
    injected: int = 0

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], index: int, seed: int = 0) -> Rule:
        try:
            return cls._from_dict(raw, index, seed)
        except (ValueError, TypeError, re.error) as exc:
            raise ValueError(f"rule {index}: {exc}") from exc

    @classmethod
    def _from_dict(cls, raw: Mapping[str, Any], index: int, seed: int) -> Rule:
        action = str(raw.get("action", "status"))
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; known: {sorted(ACTIONS)}")
        unknown = set(raw) - COMMON_FIELDS - ACTION_OPTIONS[action]
        if unknown:
            raise ValueError(f"unknown fields for action {action!r}: {sorted(unknown)}")
        if raw.get("forward_first") and raw.get("after_bytes") is not None:
            raise ValueError("forward_first needs the whole body; it cannot be combined with after_bytes")
        name = str(raw.get("name", f"rule{index}"))
        return cls(
            name=name,
            action=action,
            methods=_parse_methods(raw.get("methods")),
            path=_compile(raw.get("path")),
            query=_compile(raw.get("query")),
            headers=_parse_headers(raw.get("header")),
            times=_optional_int(raw, "times"),
            rate=_parse_rate(raw.get("rate")),
            status=int(raw.get("status", 500)),
            code=raw.get("code"),
            after_bytes=_optional_int(raw, "after_bytes"),
            forward_first=_parse_bool(raw, "forward_first"),
            seconds=_parse_seconds(raw, action),
            rng=rule_random(seed, name),
        )

    def matches(self, request: web.BaseRequest) -> bool:
        return (
            (self.methods is None or request.method in self.methods)
            and (self.path is None or self.path.search(request.path) is not None)
            and (self.query is None or self.query.search(request.query_string) is not None)
            and all(_header_matches(request.headers, name, value) for name, value in self.headers.items())
        )

    def take(self) -> bool:
        """Count a match; True if this one should be acted on (budget left and, with a rate, drawn)."""
        self.matched += 1
        if self.times is not None and self.injected >= self.times:
            return False
        if self.rate is not None and self.rng.random() >= self.rate:
            return False
        self.injected += 1
        return True

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "action": self.action,
            "methods": sorted(self.methods) if self.methods is not None else None,
            "path": _pattern(self.path),
            "query": _pattern(self.query),
            "header": {name: _pattern(value) for name, value in self.headers.items()},
            "times": self.times,
            "rate": self.rate,
            **{option: getattr(self, option) for option in sorted(ACTION_OPTIONS[self.action])},
            "matched": self.matched,
            "injected": self.injected,
        }


def rule_random(seed: int, name: str) -> random.Random:
    """The generator behind a rule's ``rate``; str seeds hash the same way in every process."""
    return random.Random(f"{seed}/{name}")


def _parse_methods(value: Any) -> frozenset[str] | None:
    if value is None:
        return None
    names = [value] if isinstance(value, str) else list(value)
    return frozenset(str(name).upper() for name in names)


def _compile(value: Any) -> re.Pattern[str] | None:
    return None if value is None else re.compile(str(value))


def _pattern(value: re.Pattern[str] | None) -> str | None:
    return None if value is None else value.pattern


def _parse_headers(value: Any) -> dict[str, re.Pattern[str] | None]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("header must be an object {name: regex or null}")
    return {str(name).lower(): _compile(pattern) for name, pattern in value.items()}


def _header_matches(headers: CIMultiDictProxy[str], name: str, pattern: re.Pattern[str] | None) -> bool:
    values = headers.getall(name, [])
    if pattern is None:
        return bool(values)
    return any(pattern.search(value) is not None for value in values)


def _optional_int(raw: Mapping[str, Any], key: str) -> int | None:
    value = raw.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"{key} must be a non-negative integer")
    return value


def _parse_bool(raw: Mapping[str, Any], key: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false")
    return value


def _number(value: Any) -> float | None:
    """A JSON number as float; None for anything else (bool included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _parse_rate(value: Any) -> float | None:
    if value is None:
        return None
    rate = _number(value)
    if rate is None or not 0.0 <= rate <= 1.0:
        raise ValueError("rate must be a number between 0 and 1")
    return rate


def _parse_seconds(raw: Mapping[str, Any], action: str) -> float:
    if action != "delay":
        return 0.0
    seconds = _number(raw.get("seconds"))
    if seconds is None or seconds < 0:
        raise ValueError("delay needs seconds, a non-negative number")
    return seconds


def parse_rules(raw: Any, seed: int = 0) -> list[Rule]:
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise ValueError("rules must be a JSON list of objects")
    return [Rule.from_dict(item, index, seed) for index, item in enumerate(raw)]


@dataclass
class ProxyState:
    upstream: str
    seed: int = 0
    pace_bytes_per_s: float = 0.0
    """Cap on each request body and each response body, in bytes per second; 0 = unpaced."""
    latency_s: float = 0.0
    """Seconds every answer waits before its first byte."""
    rules: list[Rule] = field(default_factory=list)
    forwarded: int = 0
    injected: int = 0
    injected_by_action: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ACTIONS, 0))
    in_flight: int = 0
    """S3 requests (not control ones) from arrival until their answer is written, or the connection cut."""
    peak_in_flight: int = 0

    def pick(self, request: web.BaseRequest) -> Rule | None:
        """The rule that acts on this request, if any (counting every match along the way)."""
        for rule in self.rules:
            if rule.matches(request) and rule.take():
                self.injected += 1
                self.injected_by_action[rule.action] += 1
                return rule
        self.forwarded += 1
        return None

    def set_rules(self, raw: Any) -> None:
        self.rules = parse_rules(raw, self.seed)

    def set_network(self, raw: Any) -> None:
        """Change the network knobs named in ``raw`` (a JSON object); if invalid, ValueError and none."""
        if not isinstance(raw, dict):
            raise ValueError("network must be a JSON object")
        unknown = sorted(set(raw) - set(NETWORK_KNOBS))
        if unknown:
            raise ValueError(f"unknown network knobs: {unknown}; known: {list(NETWORK_KNOBS)}")
        values = {name: _number(value) for name, value in raw.items()}
        for name, value in values.items():
            if value is None or value < 0:
                raise ValueError(f"{name} must be a non-negative number")
        for name, value in values.items():
            setattr(self, name, value)

    def network(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in NETWORK_KNOBS}

    def reset(self) -> None:
        self.rules = []
        self.forwarded = 0
        self.injected = 0
        self.injected_by_action = dict.fromkeys(ACTIONS, 0)
        self.peak_in_flight = self.in_flight

    def stats(self) -> dict[str, Any]:
        return {
            "forwarded": self.forwarded,
            "injected": self.injected,
            "injected_by_action": dict(self.injected_by_action),
            "peak_in_flight": self.peak_in_flight,
            "rules": {rule.name: {"matched": rule.matched, "injected": rule.injected} for rule in self.rules},
        }


STATE_KEY = web.AppKey("state", ProxyState)
SESSION_KEY = web.AppKey("session", ClientSession)


# --- actions: each handles a request a rule acted on, instead of plain forwarding ----------------------


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
    await read_body(request)  # drain the body, so keep-alive works after the injected error
    return s3_error_response(request, rule.status, rule.code)


async def delay_action(request: web.Request, rule: Rule) -> web.StreamResponse:
    body = await read_body(request)
    await asyncio.sleep(rule.seconds)
    return await forward(request, body)


async def reset_action(request: web.Request, rule: Rule) -> web.StreamResponse:
    if rule.forward_first:
        await forward(request, await read_body(request))  # the upstream acts; its answer is thrown away
    else:
        await read_body_prefix(request, rule.after_bytes)
    return abort_connection(request)


async def read_body_prefix(request: web.Request, limit: int | None) -> int:
    """Consume up to ``limit`` body bytes (None: all of it) and return how many were read."""
    if limit is None:
        return len(await request.read())
    received = 0
    while received < limit:
        chunk = await request.content.read(limit - received)
        if not chunk:
            break
        received += len(chunk)
    return received


def abort_connection(request: web.Request) -> web.StreamResponse:
    """Reset the client's TCP connection; the returned response can only fail to be written.

    aiohttp takes that write failure (a ConnectionError) for a client that went away and closes quietly.
    """
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        transport.abort()
    return web.Response(status=204)


Action = Callable[[web.Request, Rule], Awaitable[web.StreamResponse]]
ACTIONS: dict[str, Action] = {"status": status_action, "reset": reset_action, "delay": delay_action}
ACTION_OPTIONS: dict[str, frozenset[str]] = {
    "status": frozenset({"status", "code"}),
    "reset": frozenset({"after_bytes", "forward_first"}),
    "delay": frozenset({"seconds"}),
}


# --- the network model: pacing and latency ------------------------------------------------------------


async def read_body(request: web.Request) -> bytes:
    """The whole request body, taken no faster than the pace (so the upload takes at least B / pace)."""
    pace = request.app[STATE_KEY].pace_bytes_per_s
    if pace <= 0:
        return await request.read()
    loop = asyncio.get_running_loop()
    began, chunks, received = loop.time(), [], 0
    while chunk := await request.content.read(PACE_CHUNK):
        received += len(chunk)
        if received > MAX_BODY:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=received)
        chunks.append(chunk)
        # Not reading on makes aiohttp stop reading the socket, so the sender is held back too.
        await asyncio.sleep(max(0.0, began + received / pace - loop.time()))
    return b"".join(chunks)


class PacedResponse(web.Response):
    """A response whose body leaves in chunks, each once the pace allows it: R bytes take R / pace.

    Only how the body is written differs, so status, headers and Content-Length are those of a plain
    `web.Response`; answers without a body (HEAD, 204, 304, empty) are written as usual.
    """

    def __init__(self, *, pace_bytes_per_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pace_bytes_per_s = pace_bytes_per_s

    async def write_eof(self, data: bytes = b"") -> None:
        body = self.body
        request = self._req
        if (
            not isinstance(body, bytes)
            or not body
            or request is None
            or request.method == hdrs.METH_HEAD
            or self.status in {204, 304}
        ):
            await super().write_eof(data)
            return
        loop = asyncio.get_running_loop()
        began = loop.time()
        for offset in range(0, len(body), PACE_CHUNK):
            chunk = body[offset : offset + PACE_CHUNK]
            await asyncio.sleep(max(0.0, began + (offset + len(chunk)) / self.pace_bytes_per_s - loop.time()))
            await self.write(chunk)
        await web.StreamResponse.write_eof(self)


async def _hold_for_latency(request: web.Request, response: web.StreamResponse) -> None:
    """Before the first byte of every answer but the control endpoints': the network's latency."""
    latency_s = request.app[STATE_KEY].latency_s
    if latency_s > 0 and not request.path.startswith("/_proxy/"):
        await asyncio.sleep(latency_s)


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
            if state.pace_bytes_per_s > 0:
                return PacedResponse(
                    pace_bytes_per_s=state.pace_bytes_per_s,
                    status=upstream.status,
                    reason=upstream.reason,
                    headers=headers,
                    body=payload,
                )
            return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=payload)
    except (ClientError, TimeoutError):
        return s3_error_response(request, 502)


async def proxy_handler(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    state.in_flight += 1
    state.peak_in_flight = max(state.peak_in_flight, state.in_flight)
    try:
        response = await answer(request)
        if request.transport is not None and not request.transport.is_closing():
            # Written here rather than after returning, so the latency and a paced body count as in flight.
            await response.prepare(request)
            await response.write_eof()
        return response
    finally:
        state.in_flight -= 1


async def answer(request: web.Request) -> web.StreamResponse:
    # Rules match on the request line and headers only, so the body is left to the action to read.
    rule = request.app[STATE_KEY].pick(request)
    if rule is not None:
        return await ACTIONS[rule.action](request, rule)
    return await forward(request, await read_body(request))


# --- control endpoints ----------------------------------------------------------------------------------


async def set_rules_handler(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        state.set_rules(await request.json())
    except ValueError as exc:  # includes json.JSONDecodeError
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response([rule.to_dict() for rule in state.rules])


async def get_rules_handler(request: web.Request) -> web.Response:
    return web.json_response([rule.to_dict() for rule in request.app[STATE_KEY].rules])


async def stats_handler(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE_KEY].stats())


async def set_network_handler(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        state.set_network(await request.json())
    except ValueError as exc:  # includes json.JSONDecodeError
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(state.network())


async def get_network_handler(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE_KEY].network())


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


def make_app(
    upstream: str,
    rules: Sequence[Mapping[str, Any]] = (),
    seed: int = 0,
    pace_bytes_per_s: float = 0.0,
    latency_s: float = 0.0,
) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    state = ProxyState(upstream=upstream.rstrip("/"), seed=seed)
    state.set_rules(list(rules))
    state.set_network({"pace_bytes_per_s": pace_bytes_per_s, "latency_s": latency_s})
    app[STATE_KEY] = state
    app.cleanup_ctx.append(_client_session)
    app.on_response_prepare.append(_hold_for_latency)
    app.router.add_post("/_proxy/rules", set_rules_handler)
    app.router.add_get("/_proxy/rules", get_rules_handler)
    app.router.add_get("/_proxy/stats", stats_handler)
    app.router.add_post("/_proxy/reset", reset_handler)
    app.router.add_get("/_proxy/network", get_network_handler)
    app.router.add_post("/_proxy/network", set_network_handler)
    app.router.add_route("*", "/{tail:.*}", proxy_handler)
    return app


async def serve(
    upstream: str,
    host: str,
    port: int,
    rules: Sequence[Mapping[str, Any]],
    seed: int = 0,
    pace_bytes_per_s: float = 0.0,
    latency_s: float = 0.0,
) -> None:
    """Run until SIGTERM/SIGINT, after printing the endpoint as one JSON line."""
    # A stop does not wait for held requests (a `delay` rule may hold one for minutes): 1 s, then cut.
    app = make_app(upstream, rules, seed, pace_bytes_per_s, latency_s)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
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
        seed: int = 0,
        pace_bytes_per_s: float = 0.0,
        latency_s: float = 0.0,
    ) -> None:
        args = ["--upstream", upstream, "--host", host, "--port", str(port), "--rules", json.dumps(rules)]
        args += ["--seed", str(seed)]
        if pace_bytes_per_s or latency_s:
            args += ["--pace-bytes-per-s", str(pace_bytes_per_s), "--latency-s", str(latency_s)]
        super().__init__("scripts.s3_fault_proxy", args, timeout)

    def set_rules(self, rules: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Replace the rules (counters and rate draws start afresh); returns them as the proxy parsed them."""
        result: list[dict[str, Any]] = http_json("POST", self.endpoint + "/_proxy/rules", list(rules))
        return result

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = http_json("GET", self.endpoint + "/_proxy/stats")
        return result

    def reset(self) -> None:
        """No rules, all counters zero (the network knobs stay)."""
        http_json("POST", self.endpoint + "/_proxy/reset")

    def network(self) -> dict[str, float]:
        """The network knobs in force: ``pace_bytes_per_s`` and ``latency_s``."""
        result: dict[str, float] = http_json("GET", self.endpoint + "/_proxy/network")
        return result

    def set_network(self, **changes: float) -> dict[str, float]:
        """Change the named network knobs at runtime; returns them all (HTTPError 400 if invalid)."""
        result: dict[str, float] = http_json("POST", self.endpoint + "/_proxy/network", changes)
        return result


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.s3_fault_proxy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--upstream", required=True, help="S3 endpoint to forward to, e.g. http://127.0.0.1:5000"
    )
    parser.add_argument("--host", default=HOST, help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 = any free port (default)")
    parser.add_argument("--rules", type=json.loads, default=[], help="initial rules as a JSON list")
    parser.add_argument("--seed", type=int, default=0, help="seed for the rules' rate draws (default 0)")
    parser.add_argument(
        "--pace-bytes-per-s",
        type=float,
        default=0.0,
        help="cap on each request's and each response's body, bytes per second; 0 = unpaced (default)",
    )
    parser.add_argument(
        "--latency-s", type=float, default=0.0, help="seconds added before every answer (default 0)"
    )
    args = parser.parse_args(argv)
    for name in NETWORK_KNOBS:
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    asyncio.run(
        serve(
            args.upstream, args.host, args.port, args.rules, args.seed, args.pace_bytes_per_s, args.latency_s
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
