"""User tags stored as keyed hashes (`[ingest] user_tag_hash_key`).

When a key is configured, the front replaces every user tag of a request by
`HMAC-SHA256(key, tag)` (64 hex digits) before the request goes to the WAL, so the tag itself
never reaches the disk, a checkpoint or a backup. The query API hashes the tag it is asked for
(`user=`, `/users/{tag}/sessions`) the same way, so support still finds a user by the tag they
know; without the key the stored hashes cannot be turned back into tags, nor tried against a
list of likely e-mail addresses.

The tags are where the core takes them from (docs/sessionizer.md §3, §5): a beacon's `user`
and the `user` of its `identify` events. The native receiver otherwise never parses the JSON
(the core does, once per batch); with hashing on it parses it here, in the form the core
reads: one value, an array of beacons, or NDJSON with one value per line.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import orjson


def hash_tag(key: bytes, tag: str) -> str:
    return hmac.new(key, tag.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def hash_user_tags(body: bytes, key: bytes) -> bytes:
    """The body with every user tag hashed; raises `ValueError` when it is not JSON the core
    would read (then the request is refused: a tag must never pass unhashed)."""
    try:
        values = [orjson.loads(body)]
        single = True
    except orjson.JSONDecodeError:
        try:
            values = [orjson.loads(line) for line in body.splitlines() if line.strip()]
        except orjson.JSONDecodeError as err:
            raise ValueError(f"body is not JSON or NDJSON: {err}") from None
        single = False
    for value in values:
        for beacon in value if single and isinstance(value, list) else [value]:
            _hash_beacon(beacon, key)
    if single:
        return orjson.dumps(values[0])
    return b"\n".join(orjson.dumps(value) for value in values)


def _hash_beacon(beacon: Any, key: bytes) -> None:
    if not isinstance(beacon, dict):
        return
    if isinstance(user := beacon.get("user"), str) and user:
        beacon["user"] = hash_tag(key, user)
    events = beacon.get("events")
    if not isinstance(events, list):
        return
    for event in events:
        if (
            isinstance(event, dict)
            and event.get("type") == "identify"
            and isinstance(user := event.get("user"), str)
            and user
        ):
            event["user"] = hash_tag(key, user)
