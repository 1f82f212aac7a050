"""Fixture builders: framed WAL records (docs/sessionizer.md section 1), beacons and events.

Each builder returns a valid default that a test overrides one field at a time:

    frame(beacon(events=[load(dur=3000)]), flags=FLAG_DNT)
"""

from __future__ import annotations

import json
import struct
from typing import Any

from tests.reference.sessionizer import FLAG_DNT, encode_record

__all__ = [
    "CHROME_UA",
    "FLAG_DNT",
    "GOOGLEBOT_UA",
    "IPAD_UA",
    "IPHONE_UA",
    "RECV_MS",
    "SID",
    "beacon",
    "custom",
    "end",
    "error",
    "frame",
    "identify",
    "load",
    "payload_bytes",
    "prop",
    "rage_click",
    "raw_record",
    "record_headers",
    "vital",
    "xhr",
]

RECV_MS = 1_764_126_012_500
SID = "0f8c2d2e-7a57-4b1e-9f3a-5d0c8e6b1a22"
CHROME_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
IPHONE_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1"
)
IPAD_UA = (
    "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1"
)
GOOGLEBOT_UA = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def payload_bytes(payload: Any) -> bytes:
    """A dict or list becomes JSON, a str is utf-8 encoded, bytes pass unchanged."""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode("utf-8")
    return json.dumps(payload).encode("utf-8")


def frame(
    payload: Any,
    *,
    recv_ms: int = RECV_MS,
    ip: str = "203.0.113.7",
    user_agent: str = CHROME_UA,
    flags: int = 0,
) -> bytes:
    """One framed record: u32le len | version 1 | flags | recv_ms | ip | user agent | payload."""
    return encode_record(recv_ms, ip, user_agent, flags, payload_bytes(payload))


def record_headers(batch: bytes) -> list[tuple[int, int, int, str, str]]:
    """(version, flags, recv_ms, ip, user agent) of each intact record of a batch, whatever its
    version: the header is the same for the JSON records (1) the reference reads and the parsed
    records (2) that `_core.prepare` writes."""
    out = []
    pos = 0
    while pos + 4 <= len(batch):
        (length,) = struct.unpack_from("<I", batch, pos)
        body = batch[pos + 4 : pos + 4 + length]
        pos += 4 + length
        version, flags, recv_ms, ip_len = struct.unpack_from("<BBQH", body, 0)
        at = 12 + ip_len
        (ua_len,) = struct.unpack_from("<H", body, at)
        ip, ua = body[12:at].decode(), body[at + 2 : at + 2 + ua_len].decode()
        out.append((version, flags, recv_ms, ip, ua))
    return out


def raw_record(body: bytes) -> bytes:
    """A record with an arbitrary body (for bad versions, cut headers, …)."""
    return struct.pack("<I", len(body)) + body


def beacon(**fields: Any) -> dict[str, Any]:
    """A valid native beacon; `sent` equals the default receive time (no clock skew)."""
    out: dict[str, Any] = {
        "v": 1,
        "app": "shop",
        "sid": SID,
        "sent": RECV_MS,
        "page": {"url": "https://shop.example.com/cart"},
        "events": [],
    }
    out.update(fields)
    return out


def _event(kind: str, defaults: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, **defaults, **fields}


def load(**fields: Any) -> dict[str, Any]:
    return _event(
        "load",
        {"name": "loading of page /cart", "url": "https://shop.example.com/cart",
         "start": RECV_MS - 5000, "dur": 1200},
        fields,
    )  # fmt: skip


def xhr(**fields: Any) -> dict[str, Any]:
    return _event(
        "xhr",
        {"name": "POST /checkout", "url": "https://shop.example.com/checkout", "method": "POST",
         "status": 200, "start": RECV_MS - 3000, "dur": 400},
        fields,
    )  # fmt: skip


def custom(**fields: Any) -> dict[str, Any]:
    return _event(
        "custom", {"name": "click on 'Place order'", "start": RECV_MS - 2000, "dur": 100}, fields
    )


def error(**fields: Any) -> dict[str, Any]:
    return _event(
        "error", {"kind": "js", "message": "TypeError: x is undefined", "start": RECV_MS - 1000},
        fields,
    )  # fmt: skip


def vital(**fields: Any) -> dict[str, Any]:
    return _event("vital", {"name": "LCP", "value": 2100, "start": RECV_MS - 1500}, fields)


def rage_click(**fields: Any) -> dict[str, Any]:
    return _event(
        "rage_click", {"target": "button#pay", "count": 4, "start": RECV_MS - 500}, fields
    )


def identify(**fields: Any) -> dict[str, Any]:
    return _event("identify", {"user": "daniel.adams@example.com"}, fields)


def prop(**fields: Any) -> dict[str, Any]:
    return _event("property", {"key": "plan", "value": "gold"}, fields)


def end(**fields: Any) -> dict[str, Any]:
    return _event("end", {"reason": "logout", "start": RECV_MS - 100}, fields)
