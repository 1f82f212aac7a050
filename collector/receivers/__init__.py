"""Receivers: one module per wire format. What they share lives here: bounded body reading
(with gzip), CORS, JSON errors, the request fields `_core.prepare` needs, and the path from a
request to a durable acknowledgement through the batcher.

Every rejection is a 4xx/5xx JSON error `{"error": {"code", "message"}}` whose code is also
the `reason` label of `rumline_beacons_rejected_total`.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable

import orjson
from aiohttp import web

from collector.appkeys import INGEST, SETTINGS
from collector.batcher import Batcher, Overloaded, StorageError, Verdict
from collector.bodybudget import HELD, BodyBudget
from collector.config import Settings
from collector.metrics import Metrics
from collector.ratelimit import TokenBuckets
from collector.tag_hash import hash_user_tags

# Headers a beacon may carry cross-origin (the preflight echoes what the browser asks for).
CORS_ALLOW_HEADERS = "Content-Type, Content-Encoding"
CORS_MAX_AGE = "86400"
# Bit 0 of a WAL record's flags (docs/sessionizer.md §1): Do-Not-Track / Global Privacy Control.
FLAG_DNT = 1


class Ingest:
    """What a receiver's request needs from its app, in one object under `app[INGEST]`: one
    lookup a request instead of one per use. Each `request.app[KEY]` is two Python calls, and
    `.get()` or `in` on an aiohttp Application raises and catches a KeyError for an absent key
    (the rate limits, off by default): ~1 µs each, three of them a beacon."""

    __slots__ = ("settings", "metrics", "budget", "ip_limits", "app_limits", "batcher")

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.budget = BodyBudget(settings.max_inflight_bytes)
        # Each of the N fronts takes 1/N of every limit: together they never let more through
        # than configured (a client on one connection gets its front's share only).
        fronts = settings.workers
        self.ip_limits: TokenBuckets | None = None
        if settings.rate_limit_ip > 0:
            self.ip_limits = TokenBuckets.share(
                settings.rate_limit_ip, settings.rate_limit_ip_burst, fronts
            )
        self.app_limits: TokenBuckets | None = None
        if settings.rate_limit_app > 0:
            self.app_limits = TokenBuckets.share(
                settings.rate_limit_app, settings.rate_limit_app_burst, fronts
            )
        self.batcher: Batcher | None = None  # set by the batcher's cleanup context


class Rejected(Exception):
    """A request refused before or by validation: its status, error code and message."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def cors_headers(request: web.Request, settings: Settings) -> dict[str, str]:
    """The CORS response headers for this request; raises `Rejected` (403) for an origin that
    no allowlist lets in (the app's own list is checked by `check_app_origin` once the app is
    known). No Origin (curl, server-to-server): no CORS headers."""
    origin = request.headers.get("Origin")
    if origin is None:
        return {}
    gate = settings.gate_origins
    if gate is not None and origin not in gate:
        raise Rejected(403, "origin_not_allowed", f"origin {origin!r} is not allowed")
    # Echo the origin (not `*`) so that credentialed requests (sendBeacon sends cookies) work.
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
    }


def check_app_origin(request: web.Request, apps: Iterable[str]) -> None:
    """Raises `Rejected` (403) when the request's Origin may not send beacons for one of
    `apps`: an app listed in `[ingest.app_origins]` takes only its origins, any other app
    those of `allowed_origins` (empty = every origin)."""
    settings = request.app[SETTINGS]
    origin = request.headers.get("Origin")
    if origin is None or not settings.app_origins:
        return
    for app in apps:
        allowed = settings.app_origins.get(app, settings.allowed_origins)
        if allowed and origin not in allowed and "*" not in allowed:
            raise Rejected(403, "origin_not_allowed",
                           f"origin {origin!r} may not send beacons for app {app!r}")  # fmt: skip


Handler = Callable[[web.Request], Awaitable[web.Response]]
RouteBody = Callable[[web.Request, int, dict[str, str]], Awaitable[web.Response]]


def receiver_route(receiver: str) -> Callable[[RouteBody], Handler]:
    """The frame every receiver's ingest route shares: count the request, check its origin
    (CORS), and turn a `Rejected` into its JSON error, counted by reason. The wrapped function
    gets the receive time and the CORS headers (which it may extend) and returns the success
    response."""

    def wrap(body: RouteBody) -> Handler:
        @functools.wraps(body)
        async def handler(request: web.Request) -> web.Response:
            recv_ms = now_ms()
            ingest: Ingest = request.app[INGEST]
            metrics = ingest.metrics
            metrics.beacon_received(receiver)
            # Set here so that `BodyBudget` and the `finally` below never look up an absent
            # key (a KeyError raised and caught inside aiohttp's mapping: ~1 µs).
            request[HELD] = 0
            headers: dict[str, str] = {}
            try:
                if "Origin" in request.headers:
                    headers = cors_headers(request, ingest.settings)
                return await body(request, recv_ms, headers)
            except Rejected as rejected:
                metrics.beacon_rejected(receiver, rejected.code)
                return error_response(rejected.status, rejected.code, rejected.message,
                                      headers | rejected.headers)  # fmt: skip
            finally:
                if request[HELD]:
                    ingest.budget.give_back(request)

        return handler

    return wrap


def preflight(request: web.Request, receiver: str, methods: str) -> web.Response:
    """Answer a CORS preflight (OPTIONS) for a receiver route."""
    ingest = request.app[INGEST]
    try:
        headers = cors_headers(request, ingest.settings)
    except Rejected as rejected:
        ingest.metrics.beacon_rejected(receiver, rejected.code)
        return error_response(rejected.status, rejected.code, rejected.message)
    headers["Access-Control-Allow-Methods"] = methods
    headers["Access-Control-Allow-Headers"] = request.headers.get(
        "Access-Control-Request-Headers", CORS_ALLOW_HEADERS
    )
    headers["Access-Control-Max-Age"] = CORS_MAX_AGE
    return web.Response(status=204, headers=headers)


async def read_body(request: web.Request, max_body: int, max_decompressed: int) -> bytes:
    """The request body, decompressed, within the limits; raises `Rejected` (413, 415, 400,
    408).

    The app turns aiohttp's own inflating off (`create_app`), so the `max_body` cap applies
    to the bytes on the wire and inflating stops at `max_decompressed`: a small gzip bomb
    never becomes a large buffer. aiohttp has no timeout of its own for a body that trickles
    in, so the whole body must arrive within `[ingest] body_timeout` (a slowloris is refused
    with 408 and its connection closed; other clients never wait for it).
    """
    body = buffered_body(request, max_body, max_decompressed)
    if body is not None:
        return body
    timeout_s = request.app[INGEST].settings.body_timeout_ms / 1000
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_body(request, max_body, max_decompressed)
    except TimeoutError:
        raise Rejected(408, "body_timeout", f"the body did not arrive within {timeout_s:g}s",
                       {"Connection": "close"}) from None  # fmt: skip


def buffered_body(request: web.Request, max_body: int, max_decompressed: int) -> bytes | None:
    """`read_body` without a coroutine when the whole body is buffered already (the common
    case: a beacon comes in one segment), else None (then await `read_body`). Nothing can
    trickle then, so no timeout either (it cost ~5-9 µs a request: 3 getpid() calls in
    CPython 3.11's get_running_loop, a Timeout and a timer)."""
    content = request.content
    if not content.is_eof():
        return None
    encoding, length = _check_body_head(request, max_body)
    body = content.read_nowait()
    if length is None:  # chunked
        if len(body) > max_body:
            raise Rejected(413, "too_large", f"body is over {max_body} bytes")
        hold(request, len(body))
    elif len(body) != length:
        raise Rejected(400, "incomplete_body", "the body is shorter than its length")
    return _decode_body(request, body, encoding, max_decompressed)


def _check_body_head(request: web.Request, max_body: int) -> tuple[str | None, int | None]:
    """The body's encoding and declared length, checked before any of it is read; holds the
    declared length against the inflight budget."""
    encoding = request.headers.get("Content-Encoding")
    if encoding is not None:
        encoding = encoding.strip().lower()
        if encoding not in ("", "identity", "gzip", "x-gzip", "deflate"):
            message = f"Content-Encoding {encoding!r} is not gzip"
            raise Rejected(415, "unsupported_encoding", message)
    length = request.content_length
    if length is not None:
        if length > max_body:
            raise Rejected(413, "too_large", f"body of {length} bytes is over {max_body} bytes")
        hold(request, length)
    return encoding, length


async def _read_body(request: web.Request, max_body: int, max_decompressed: int) -> bytes:
    encoding, length = _check_body_head(request, max_body)
    if length is not None:
        try:  # one await for a body of known size
            body = await request.content.readexactly(length) if length else b""
        except asyncio.IncompleteReadError:
            raise Rejected(400, "incomplete_body", "the body is shorter than its length") from None
    else:
        body = await _read_chunked(request, max_body)
    return _decode_body(request, body, encoding, max_decompressed)


def _decode_body(request: web.Request, body: bytes, encoding: str | None,
                 max_decompressed: int) -> bytes:  # fmt: skip
    if encoding in (None, "", "identity"):
        return body
    hold(request, max_decompressed)  # inflating may take up to this; given back below
    data = inflate(body, max_decompressed)
    request.app[INGEST].budget.give_back(request, max_decompressed - len(data))
    return data


def hold(request: web.Request, size: int) -> None:
    """Count `size` bytes of this request's body against `[ingest] max_inflight_bytes`;
    raises `Rejected` (503) when the front holds too many bodies already."""
    if not request.app[INGEST].budget.take(request, size):
        raise Rejected(503, "overloaded", "too many request bodies in memory; retry later",
                       {"Retry-After": "1"})  # fmt: skip


async def _read_chunked(request: web.Request, max_body: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > max_body:
            raise Rejected(413, "too_large", f"body is over {max_body} bytes")
        hold(request, len(chunk))
        chunks.append(chunk)
    return b"".join(chunks)


def inflate(body: bytes, limit: int) -> bytes:
    """gzip or zlib data, at most `limit` bytes of it."""
    inflater = zlib.decompressobj(wbits=32 + zlib.MAX_WBITS)  # 32: gzip or zlib header
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as err:
        raise Rejected(400, "bad_encoding", f"body is not valid gzip: {err}") from None
    if len(data) > limit:
        raise Rejected(413, "too_large", f"decompressed body is over {limit} bytes")
    if not inflater.eof:
        raise Rejected(400, "bad_encoding", "gzip body is truncated")
    return data


def client_ip(request: web.Request, settings: Settings) -> str:
    """The client's address: the peer, or behind a trusted proxy the right-most address of
    X-Forwarded-For that is not itself a trusted proxy (the left part is client-written)."""
    peer = request.remote or ""
    networks = settings.trusted_networks
    if not networks or not _within(peer, networks):
        return peer
    hops = [h.strip() for v in request.headers.getall("X-Forwarded-For", ()) for h in v.split(",")]
    for hop in reversed(hops):
        if not _within(hop, networks):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage where an address should be: trust nothing in it
    return hops[0] if hops else peer


def _within(
    address: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def valid_utf8(header: str) -> str:
    """aiohttp decodes header bytes that are not UTF-8 as lone surrogates; the core takes
    only valid UTF-8, and one such request would fail the whole group commit it is in. The
    bad bytes become U+FFFD."""
    return header.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def client_flags(request: web.Request, respect_dnt: bool) -> int:
    if respect_dnt and (request.headers.get("DNT") == "1" or request.headers.get("Sec-GPC") == "1"):
        return FLAG_DNT
    return 0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def accept(request: web.Request, receiver: str, recv_ms: int, body: bytes) -> None:
    """Hand one validated-size body to the batcher and wait for its durable commit; raises
    `Rejected` with the core's verdict, or for overload / storage failure (503)."""
    future = submit(request, request.app[INGEST], recv_ms, body)
    try:
        verdict = await future
    except StorageError as err:
        raise storage_rejected(err) from None
    if verdict is not None:
        raise Rejected(400, *verdict)


def submit(
    request: web.Request, ingest: Ingest, recv_ms: int, body: bytes
) -> asyncio.Future[Verdict]:
    """`accept` without its own coroutine (the native route awaits the future itself, one
    coroutine frame fewer a beacon): queue the body for the next group commit and return the
    batcher's future; raises `Rejected` at once for overload. The future's result is None
    (durable) or the core's (reason, message) verdict; it raises `StorageError`."""
    settings = ingest.settings
    ip = client_ip(request, settings)
    user_agent = request.headers.get("User-Agent", "")
    if not user_agent.isascii():
        user_agent = valid_utf8(user_agent)
    flags = client_flags(request, settings.respect_dnt)
    if settings.user_tag_hash_key is not None:
        try:
            body = hash_user_tags(body, settings.user_tag_hash_key.encode())
        except ValueError as err:
            raise Rejected(400, "bad_json", str(err)) from None
    batcher = ingest.batcher
    assert batcher is not None, "the batcher starts before the app serves"
    try:
        return batcher.submit(recv_ms, ip, user_agent, flags, body)
    except Overloaded as err:
        raise Rejected(
            503, err.reason, "the collector is busy; retry later",
            {"Retry-After": str(err.retry_after_s)},
        ) from None  # fmt: skip


def storage_rejected(err: StorageError) -> Rejected:
    """The 503 for a group commit that failed."""
    # Full storage frees up when the sessionizer trims the WAL or an operator acts.
    retry_after = "5" if err.reason == "storage_full" else "1"
    return Rejected(503, err.reason, "the beacon could not be stored; retry later",
                    {"Retry-After": retry_after})  # fmt: skip


__all__ = [
    "Ingest",
    "Rejected",
    "receiver_route",
    "accept",
    "buffered_body",
    "check_app_origin",
    "client_flags",
    "client_ip",
    "cors_headers",
    "error_response",
    "now_ms",
    "preflight",
    "read_body",
    "storage_rejected",
    "submit",
]
