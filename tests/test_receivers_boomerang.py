"""Boomerang receiver: the restiming trie and JSURL decoders, conversion of recorded beacons,
`/beacon/boomerang`'s HTTP contract on a real collector (GET query, POST form with `sb=1`,
JSON 4xx errors counted), and property tests with malformed and truncated beacons.
"""

from __future__ import annotations

import re
import time
import uuid
from urllib.parse import urlencode

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from collector.receivers import Rejected
from collector.receivers.boomerang import (
    Malformed,
    convert,
    decode_errors,
    decode_jsurl,
    decode_restiming,
    parse_params,
)
from tests.conftest import ServerProcess
from tests.test_receivers_otlp import assert_core_accepts_whole, sessionize

RECORDED_AT = 1795669110701  # nt_nav_st of the recording
SHIFT = int(time.time() * 1000) - RECORDED_AT - 10_000
SID = "c953bfb4-16c9-4984-bc80-b0b49f090add-tp3f5j"
EPOCH_KEYS = re.compile(r"^(nt_(?!enc_size|dec_size|trn_size|protocol|red_cnt|nav_type).*"
                        r"|rt\.(tstart|bstart|end|ss|nstart))$")  # fmt: skip
RESTIMING = (
    '{"http://127.0.0.1:45995/":{"|":"6,1f,1e,5,1,,1,1,1*11as,8c*7h1.1",'
    '"vendor/boomerangjs/":{"boomerang.js":"324,1m,19,s*13hwk,8c*20*7h1.1","plugins/":'
    '{"r":{"t.js":"325,1i,1e,t,q,,j,j,j*11gck,8c*20*7h1.1"}}},'
    '"shop.js":"32g,2p,1q,1a*11iz,8c*24*7h1.1"}}'
)


def shifted(params: dict[str, str]) -> dict[str, str]:
    """A recorded beacon moved to now (the core clamps times older than max_duration)."""
    out = dict(params)
    for key, value in params.items():
        if EPOCH_KEYS.match(key) and value.isdigit():
            out[key] = str(int(value) + SHIFT)
    return out


def page_load(**changes: str) -> dict[str, str]:
    """The page-load beacon boomerang 1.815 sent in Chromium (browser test), shortened."""
    nav = RECORDED_AT
    return shifted({
        "rt.start": "navigation", "rt.tstart": str(nav), "rt.end": str(nav + 243),
        "t_resp": "50", "t_page": "193", "t_done": "243", "nt_nav_st": str(nav),
        "nt_fet_st": str(nav), "nt_req_st": str(nav + 4), "nt_res_st": str(nav + 50),
        "nt_res_end": str(nav + 51), "nt_domint": str(nav + 241),
        "nt_domcontloaded_end": str(nav + 242), "nt_domcomp": str(nav + 243),
        "nt_load_end": str(nav + 243), "nt_enc_size": "1684", "nt_protocol": "http/1.1",
        "restiming": RESTIMING, "u": "http://127.0.0.1:45995/", "v": "%boomerang_version%",
        "rt.si": SID, "rt.ss": str(nav), "rt.sl": "1", "ua.plt": "Linux", "pid": "srpw30lw",
        "n": "1", "pt.lcp": "252", "pt.fcp": "180", "c.cls": "0.05", "scr.xy": "1920x1080",
        "app": "shop", "sb": "1", **changes,
    })  # fmt: skip


def unload(**changes: str) -> dict[str, str]:
    nav = RECORDED_AT
    return shifted({
        "u": "http://127.0.0.1:45995/", "rt.si": SID, "n": "2", "rt.tstart": str(nav),
        "rt.end": str(nav + 243), "t_done": "243", "rt.quit": "", "et.inp": "16",
        "et.fid": "2", "c.cls": "0.07", "c.c.r": "4", "user": "daniel.adams@example.com",
        "app": "shop", "sb": "1", **changes,
    })  # fmt: skip


def xhr(**changes: str) -> dict[str, str]:
    end = RECORDED_AT + 2061
    return shifted({
        "u": "http://127.0.0.1:45995/checkout", "pgu": "http://127.0.0.1:45995/cart/checkout",
        "rt.si": SID, "rt.start": "manual", "rt.tstart": str(RECORDED_AT),
        "rt.end": str(end), "t_done": "4", "http.errno": "500", "http.method": "POST",
        "http.initiator": "xhr", "nt_req_st": str(end - 4), "app": "shop", **changes,
    })  # fmt: skip


def errors(**changes: str) -> dict[str, str]:
    at = RECORDED_AT + 2100 + SHIFT
    err = [{"d": base36(at - 30), "v": 3, "c": 500, "m": "http://127.0.0.1:45995/checkout"},
           {"d": base36(at), "v": 2, "t": "TypeError",
            "m": "Cannot read properties of undefined (reading 'balance')",
            "f": [{"l": 35, "c": 46, "wo": "/shop.js", "f": "applyGiftCard"},
                  {"l": 38, "c": 5, "wo": "/shop.js", "f": "HTMLButtonElement.<anonymous>"}]}]
    return {"u": "http://127.0.0.1:45995/cart/checkout", "rt.si": SID, "http.initiator": "error",
            "rt.start": "manual", "rt.tstart": str(at), "rt.end": str(at),
            "err": orjson.dumps(err).decode(), "app": "shop", **changes}  # fmt: skip


def base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = digits[r] + out
    return out or "0"


# --- decoders -------------------------------------------------------------------------------


def test_restiming_trie_decompresses_to_the_waterfall() -> None:
    resources = decode_restiming(RESTIMING)
    by_url = {r["url"]: r for r in resources}
    assert set(by_url) == {
        "http://127.0.0.1:45995/", "http://127.0.0.1:45995/vendor/boomerangjs/boomerang.js",
        "http://127.0.0.1:45995/vendor/boomerangjs/plugins/rt.js",
        "http://127.0.0.1:45995/shop.js",
    }  # fmt: skip
    page = by_url["http://127.0.0.1:45995/"]
    assert page == {"url": "http://127.0.0.1:45995/", "initiator": "html", "start": 0,
                    "dur": 51, "size": 1684 + 300}  # 1f = 51; *1: 1as = 1684, 8c = 300
    shop = by_url["http://127.0.0.1:45995/shop.js"]
    assert (shop["initiator"], shop["start"], shop["dur"]) == ("script", 88, 97)
    assert [r["start"] for r in resources] == sorted(r["start"] for r in resources)


def test_restiming_documented_example_and_multiple_hits() -> None:
    [entry] = decode_restiming({"publications/": "6,88,88,54,54,3e,i,i,h*12h5,kb,5b8"})
    assert entry == {"url": "publications/", "initiator": "html", "start": 0, "dur": 296,
                     "size": 3209 + 731}  # fmt: skip
    hits = decode_restiming({"a.js": "31,2|32,3", "a.js|": "9"})
    assert sorted((h["url"], h["start"]) for h in hits) == [("a.js", 0), ("a.js", 1),
                                                            ("a.js", 2)]  # fmt: skip
    assert decode_restiming('{"restiming": {"x": "1"}, "servertiming": []}')[0]["url"] == "x"
    for bad in ("not json", "[1]", "3"):
        with pytest.raises(Malformed):
            decode_restiming(bad)


def test_jsurl() -> None:
    assert decode_jsurl("~(n~1~m~'Oops*21~f~(~(l~12~c~3)))") == {
        "n": 1, "m": "Oops!", "f": [{"l": 12, "c": 3}]}  # fmt: skip
    assert decode_jsurl("~(~1~-2.5~true~null~'a!b**20ac)") == [1, -2.5, True, None, "a$b€"]
    assert decode_jsurl("~()") == {} and decode_jsurl("~(~)") == []
    for bad in ("~(n~1", "~'x*4", "~(~1~", "(n~1)", "~(a~1)x", "~nope", "~" + "(~" * 50):
        with pytest.raises(Malformed):
            decode_jsurl(bad)


def test_err_in_json_or_jsurl() -> None:
    as_json = decode_errors('[{"m":"boom","t":"Error","v":2,"f":[{"l":1,"w":"a.js"}]}]')
    as_jsurl = decode_errors("~(~(m~'boom~t~'Error~v~2~f~(~(l~1~w~'a.js))))")
    assert as_json == as_jsurl == [{"m": "boom", "t": "Error", "v": 2, "f": [{"l": 1,
                                                                           "w": "a.js"}]}]
    assert decode_errors("{nope") == [] and decode_errors("~(") == []


# --- conversion -----------------------------------------------------------------------------


def test_page_load_beacon() -> None:
    [beacon] = convert(page_load())
    assert (beacon["app"], beacon["sid"], beacon["device"]) == ("shop", SID,
                                                                {"screen": "1920x1080"})
    load = beacon["events"][0]
    nav = RECORDED_AT + SHIFT
    assert load == {**load, "type": "load", "name": "loading of page /", "dur": 243,
                    "start": nav, "url": "http://127.0.0.1:45995/"}  # fmt: skip
    assert load["timing"] == {"ttfb": 50, "request_start": 4, "response_end": 51,
                              "dom_interactive": 241, "dom_content_loaded": 242,
                              "dom_complete": 243, "load_end": 243, "fetch_start": 0,
                              "t_resp": 50, "t_page": 193}  # fmt: skip
    assert len(load["resources"]) == 4
    vitals = {e["name"]: e["value"] for e in beacon["events"] if e["type"] == "vital"}
    assert vitals == {"FCP": 180, "LCP": 252, "CLS": 0.05, "TTFB": 50}


def test_unload_beacon_brings_inp_cls_rage_and_user_but_no_second_load() -> None:
    [beacon] = convert(unload())
    assert beacon["user"] == "daniel.adams@example.com"
    kinds = [e["type"] for e in beacon["events"]]
    assert "load" not in kinds
    vitals = {e["name"]: e["value"] for e in beacon["events"] if e["type"] == "vital"}
    assert vitals == {"INP": 16, "FID": 2, "CLS": 0.07}
    [rage] = [e for e in beacon["events"] if e["type"] == "rage_click"]
    assert rage["count"] == 4


def test_xhr_and_error_beacons() -> None:
    [beacon] = convert(xhr())
    action, failure = beacon["events"]
    assert action == {"type": "xhr", "name": "POST /checkout", "method": "POST", "status": 500,
                      "url": "http://127.0.0.1:45995/checkout", "dur": 4,
                      "start": RECORDED_AT + 2057 + SHIFT}  # fmt: skip
    assert failure == {"type": "error", "kind": "request", "message": "POST /checkout 500",
                       "start": RECORDED_AT + 2061 + SHIFT}  # fmt: skip
    assert beacon["page"] == {"url": "http://127.0.0.1:45995/cart/checkout"}
    [beacon] = convert(errors())
    [js] = beacon["events"]  # the XHR one (via 3) is the xhr beacon's
    assert js["message"] == "TypeError: Cannot read properties of undefined (reading 'balance')"
    assert js["stack"] == ("    at applyGiftCard (/shop.js:35:46)\n"
                           "    at HTMLButtonElement.<anonymous> (/shop.js:38:5)")  # fmt: skip
    assert js["start"] == RECORDED_AT + 2100 + SHIFT


def test_a_whole_page_view_in_the_core() -> None:
    beacons = [b for p in (page_load(), xhr(), errors(), unload()) for b in convert(p)]
    detail = sessionize(beacons)
    names = [a["name"] for a in detail["actions"]]
    assert names == ["loading of page /", "POST /checkout"]
    by_kind = {e["kind"]: e for e in detail["errors"]}
    assert by_kind["request"]["action"] == 1 and by_kind["js"]["action"] == 1
    assert detail["rage_clicks"][0]["count"] == 4
    assert detail["user_tags"][0]["tag"] == "daniel.adams@example.com"


def test_app_from_the_page_host_and_spa_beacons() -> None:
    params = page_load()
    params.pop("app")
    assert convert(params)[0]["app"] == "127.0.0.1"
    [beacon] = convert(xhr(**{"http.initiator": "spa", "u": "https://s.example/cart/history",
                              "t_done": "120"}))  # fmt: skip
    assert beacon["events"][0] == {**beacon["events"][0], "type": "load", "timing": {"spa": 1},
                                   "name": "loading of page /cart/history", "dur": 120}


@pytest.mark.parametrize("params,code", [
    ({"u": "http://s.example/"}, "bad_sid"),
    ({"rt.si": "short", "u": "http://s.example/"}, "bad_sid"),
    ({"rt.si": SID}, "bad_app"),
    ({"rt.si": SID, "u": "/relative"}, "bad_app"),
])  # fmt: skip
def test_beacons_without_session_or_app_are_refused(params: dict, code: str) -> None:
    with pytest.raises(Rejected) as err:
        convert(params)
    assert (err.value.status, err.value.code) == (400, code)


# --- property tests -------------------------------------------------------------------------

KEYS = ["u", "pgu", "rt.si", "app", "http.initiator", "t_done", "rt.end", "rt.tstart",
        "nt_nav_st", "nt_res_st", "http.errno", "http.method", "restiming", "err", "pt.lcp",
        "et.inp", "c.cls", "c.c.r", "user", "scr.xy", "ua.plt", "rt.quit"]  # fmt: skip
values = st.one_of(
    st.text(max_size=30),
    st.integers(-10, 10**14).map(str),
    st.sampled_from(["xhr", "spa", "spa_hard", "error", "click", "", "500", "NaN", "1e999",
                     "http://s.example/a", "~(m~'x~v~2)", "~(~(m~'x))", '[{"m":1,"f":[1]}]',
                     '{"a":{"b":"3,1|x*1zz"}}', '{"a":{"|":"6,1,,*1"}}', "~(" * 40]),
)  # fmt: skip


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.sampled_from([page_load, unload, xhr, errors]),
       changes=st.dictionaries(st.sampled_from(KEYS), values, max_size=6),
       drop=st.lists(st.sampled_from(KEYS), max_size=4))
# a garbled navigation start without t_done once made a load longer than a day (bad_event)
@example(base=page_load, changes={"nt_nav_st": "1"}, drop=["t_done"])
def test_any_beacon_is_refused_cleanly_or_accepted_whole(base, changes, drop) -> None:
    params = {**base(), **changes}
    for key in drop:
        params.pop(key, None)
    try:
        beacons = convert(params)
    except Rejected as rejected:
        assert 400 <= rejected.status < 500 and rejected.code
        return
    assert_core_accepts_whole(beacons)


@settings(max_examples=300, deadline=None)
@given(raw=st.text(max_size=200))
def test_decoders_never_raise_anything_but_malformed(raw: str) -> None:
    decode_errors(raw)
    decode_errors("~" + raw)
    for candidate in (raw, "{" + raw, '{"a":"' + raw + '"}'):
        try:
            decode_restiming(candidate)
        except Malformed:
            pass


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(0, 4000))
def test_truncated_form_bodies_are_refused_cleanly_or_accepted_whole(cut: int) -> None:
    body = urlencode(page_load())[:cut]
    try:
        beacons = convert(parse_params(body))
    except Rejected:
        return
    assert_core_accepts_whole(beacons)


# --- HTTP on a real collector ---------------------------------------------------------------

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def metric(server: ServerProcess, reason: str) -> float:
    _, _, body = server.request("GET", "/metrics")
    pattern = rf'rumline_beacons_rejected_total{{reason="{reason}",receiver="boomerang"}} (\S+)'
    match = re.search(pattern, body.decode())
    return float(match.group(1)) if match else 0.0


def test_http_get_and_post_and_the_session(shared_server: ServerProcess) -> None:
    app = f"boom-{uuid.uuid4().hex[:8]}"
    sid = uuid.uuid4().hex
    load = {**page_load(), "rt.si": sid}
    load.pop("app")
    status, _, body = shared_server.request("GET", f"/beacon/boomerang?app={app}&"
                                            + urlencode(load))  # fmt: skip
    assert (status, body) == (204, b"")
    status, headers, _ = shared_server.request(
        "POST", f"/beacon/boomerang?app={app}", urlencode({**xhr(), "rt.si": sid,
                                                           "sb": "1"}).encode(),
        {**FORM, "Origin": "http://shop.example.com"},
    )  # fmt: skip
    assert status == 204 and headers["access-control-allow-origin"] == "http://shop.example.com"
    status, _, _ = shared_server.request("POST", "/beacon/boomerang",
                                         urlencode({**unload(), "rt.si": sid, "app": app}).encode(),
                                         {"Content-Type": "text/plain"})  # fmt: skip
    assert status == 204
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        found = shared_server.get_json(f"/api/v1/sessions?app={app}&live=false")[1]["sessions"]
        if found:
            break
        time.sleep(0.1)
    [session] = found
    assert session["client_sid"] == sid and session["user_tag"] == "daniel.adams@example.com"
    assert session["action_names"] == ["loading of page /", "POST /checkout"]
    assert session["rage_clicks"] == 1 and session["screen"] == "1920x1080"


@pytest.mark.parametrize("method,path,body,headers,status,code", [
    ("GET", "/beacon/boomerang", None, {}, 400, "empty"),
    ("GET", "/beacon/boomerang?u=http://s.example/", None, {}, 400, "bad_sid"),
    ("POST", "/beacon/boomerang", b"rt.si=" + SID.encode(), FORM, 400, "bad_app"),
    ("POST", "/beacon/boomerang", b"\xff\xfe=1", FORM, 400, "bad_encoding"),
    ("POST", "/beacon/boomerang", b"{}", {"Content-Type": "application/json"}, 415,
     "unsupported_media_type"),
    ("POST", "/beacon/boomerang", b"&".join([b"a=1"] * 2500), FORM, 400, "too_many_params"),
])  # fmt: skip
def test_http_errors_are_json_and_counted(shared_server: ServerProcess, method: str, path: str,
                                          body: bytes | None, headers: dict, status: int,
                                          code: str) -> None:  # fmt: skip
    before = metric(shared_server, code)
    got, answer_headers, answer = shared_server.request(method, path, body, headers)
    assert got == status, answer
    assert answer_headers["content-type"].startswith("application/json")
    assert orjson.loads(answer)["error"]["code"] == code
    assert metric(shared_server, code) == before + 1


def test_http_truncated_and_mangled_beacons_never_500(shared_server: ServerProcess) -> None:
    body = urlencode(page_load()).encode()
    for cut in range(0, len(body), max(1, len(body) // 50)):
        status, _, answer = shared_server.request("POST", "/beacon/boomerang", body[:cut], FORM)
        assert status in (204, 400), (cut, status, answer)
    mangled = body.replace(b"%22", b"%7B", 5).replace(b"nt_nav_st=", b"nt_nav_st=-")
    assert shared_server.request("POST", "/beacon/boomerang", mangled, FORM)[0] in (204, 400)


def test_preflight(shared_server: ServerProcess) -> None:
    status, headers, _ = shared_server.request("OPTIONS", "/beacon/boomerang", headers={
        "Origin": "http://shop.example.com", "Access-Control-Request-Method": "POST"})
    assert status == 204 and "POST" in headers["access-control-allow-methods"]
