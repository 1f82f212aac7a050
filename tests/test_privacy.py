"""Privacy options against a real collector: user tags stored as a keyed hash, so that the
tag never reaches the disk, while support still finds a user by the tag they know."""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from urllib.parse import quote, urlencode

import orjson

from tests.conftest import ServerProcess, StartServer

KEY = "k3y-for-tests-0123456789"
TAG = "daniel.adams@example.com"


def expected_hash(tag: str) -> str:
    return hmac.new(KEY.encode(), tag.encode(), hashlib.sha256).hexdigest()


def sessions_of(server: ServerProcess, path: str, n: int) -> list[dict]:
    deadline = time.monotonic() + 10
    while True:
        status, body = server.get_json(path)
        assert status == 200, body
        if len(body["sessions"]) >= n:  # type: ignore[index]
            return body["sessions"]  # type: ignore[index]
        assert time.monotonic() < deadline, f"{path}: {body}"
        time.sleep(0.1)


def test_user_tags_are_stored_as_a_keyed_hash(start_server: StartServer):
    server = start_server(env={"RUMLINE_INGEST_USER_TAG_HASH_KEY": KEY})
    app = f"hashed-{uuid.uuid4().hex[:6]}"
    other = "ashley@example.org"
    event = {"type": "custom", "name": "click on 'Pay'", "dur": 20}
    # The beacon's `user`, an identify event, NDJSON lines, and Boomerang's `user` parameter.
    as_field = {"v": 1, "app": app, "sid": uuid.uuid4().hex, "user": TAG, "events": [event]}
    as_event = {"v": 1, "app": app, "sid": uuid.uuid4().hex,
                "events": [event, {"type": "identify", "user": TAG}]}  # fmt: skip
    lines = [{"v": 1, "app": app, "sid": uuid.uuid4().hex, "user": tag, "events": [event]}
             for tag in (TAG, other)]  # fmt: skip
    ndjson = b"\n".join(orjson.dumps(line) for line in lines)
    assert server.request("POST", "/beacon", orjson.dumps(as_field))[0] == 204
    assert server.request("POST", "/beacon", orjson.dumps([as_event]))[0] == 204
    assert server.request("POST", "/beacon", ndjson, {"Content-Type": "text/plain"})[0] == 204
    boomerang = urlencode({"rt.si": f"{uuid.uuid4().hex}-1764126000", "user": TAG,
                           "u": "https://shop.example.com/", "t_done": "900",
                           "rt.start": "navigation"})  # fmt: skip
    status, _, body = server.request("GET", f"/beacon/boomerang?app={app}&{boomerang}")
    assert status in (200, 204), body

    # Support asks for the tag they know; the collector looks up its hash.
    found = sessions_of(server, f"/api/v1/users/{quote(TAG)}/sessions?app={app}", 4)
    assert {s["user_tag"] for s in found} == {expected_hash(TAG)}
    found = sessions_of(server, f"/api/v1/sessions?app={app}&user={quote(other)}", 1)
    assert [s["user_tag"] for s in found] == [expected_hash(other)]
    assert sessions_of(server, f"/api/v1/sessions?app={app}", 5)

    # Neither tag is anywhere on disk: not in the WAL, the sessions, the indexes.
    data = b"".join(f.read_bytes() for f in server.data_dir.iterdir() if f.is_file())
    for tag in (TAG, other):
        assert tag.encode() not in data
        assert quote(tag).encode() not in data
    assert expected_hash(TAG).encode() in data


def test_with_hashing_a_body_that_cannot_be_read_is_refused(start_server: StartServer):
    server = start_server(env={"RUMLINE_INGEST_USER_TAG_HASH_KEY": KEY})
    # The core would take `{}{}` as two values; unparsed, a tag in it could pass unhashed.
    glued = b'{"v":1,"app":"x","sid":"abcdefgh"}{"v":1,"app":"x","sid":"abcdefgh","user":"t"}'
    status, _, body = server.request("POST", "/beacon", glued)
    assert status == 400 and orjson.loads(body)["error"]["code"] == "bad_json"


def test_without_a_key_tags_are_stored_as_sent(shared_server: ServerProcess):
    app = f"plain-{uuid.uuid4().hex[:6]}"
    beacon = {"v": 1, "app": app, "sid": uuid.uuid4().hex, "user": TAG,
              "events": [{"type": "custom", "name": "x", "dur": 1}]}  # fmt: skip
    assert shared_server.request("POST", "/beacon", orjson.dumps(beacon))[0] == 204
    found = sessions_of(shared_server, f"/api/v1/sessions?app={app}&user={quote(TAG)}", 1)
    assert [s["user_tag"] for s in found] == [TAG]
