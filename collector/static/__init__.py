"""The browser agent the collector serves: `GET /rumline.js`.

The file is read and gzip-compressed once, when the app is built. Pages load the agent on
every view, so the answer is cacheable: a strong ETag of the content (a deploy with a new agent
changes it), `Cache-Control` with a short max-age so a new agent reaches browsers within the
hour, and `304` for a matching `If-None-Match`. `Access-Control-Allow-Origin: *` lets a page
load it with `crossorigin` (so its own errors keep their messages) and `Timing-Allow-Origin`
gives the page's Resource Timing the real numbers.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

AGENT_PATH = Path(__file__).resolve().parent / "rumline.js"
CACHE_CONTROL = "public, max-age=3600"
CONTENT_TYPE = "text/javascript; charset=utf-8"


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes
    etag: str

    @classmethod
    def load(cls, path: Path) -> Asset:
        body = path.read_bytes()
        digest = hashlib.sha256(body).hexdigest()[:32]
        return cls(body, gzip.compress(body, compresslevel=9, mtime=0), f'"{digest}"')


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    # A weak comparison (RFC 9110 §13.1.2): `W/"x"` matches `"x"`; the gzip variant shares it.
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in tags or etag in tags


def _accepts_gzip(header: str) -> bool:
    for part in header.lower().split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip() in ("gzip", "*"):
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def agent_handler(asset: Asset):  # noqa: ANN201 - an aiohttp handler
    async def handler(request: web.Request) -> web.Response:
        headers = {
            "ETag": asset.etag,
            "Cache-Control": CACHE_CONTROL,
            "Vary": "Accept-Encoding",
            "Access-Control-Allow-Origin": "*",
            "Timing-Allow-Origin": "*",
            "X-Content-Type-Options": "nosniff",
        }
        if _etag_matches(request.headers.get("If-None-Match"), asset.etag):
            return web.Response(status=304, headers=headers)
        body = asset.body
        if _accepts_gzip(request.headers.get("Accept-Encoding", "")):
            body = asset.gzipped
            headers["Content-Encoding"] = "gzip"
        headers["Content-Type"] = CONTENT_TYPE
        return web.Response(body=body, headers=headers)

    return handler


def setup_agent_route(app: web.Application, path: Path = AGENT_PATH) -> None:
    """Add `GET /rumline.js` (and HEAD) serving the agent file."""
    app.router.add_get("/rumline.js", agent_handler(Asset.load(path)), name="agent")
