"""docs/openapi.yaml is a valid OpenAPI 3.1 document and the query API answers as it says.

Responses of the query API come from an in-process server over the query test corpus (real
core, real LMDB); the ingest and operations endpoints are checked against a real collector
process in tests/test_support_scenario.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

from collector.app import create_app
from collector.config import Settings
from collector.store import Store
from tests.openapi_contract import OpenApiContract
from tests.query_corpus import DANIEL, build_corpus
from tests.test_query import make_app

LIST = "/api/v1/sessions"
DETAIL = "/api/v1/sessions/{session_id}"
USER = "/api/v1/users/{user_tag}/sessions"


@pytest.fixture(scope="module")
def contract() -> OpenApiContract:
    return OpenApiContract.load()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    store = Store(Path(tmp_path_factory.mktemp("lmdb")))
    build_corpus(store)
    yield store
    store.close()


@pytest.fixture
async def client(store: Store) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(make_app(store, Settings(api_token="t0ken")))) as client:
        yield client


AUTH = {"Authorization": "Bearer t0ken"}


def test_document_is_valid_openapi_3_1(contract: OpenApiContract) -> None:
    assert contract.spec["openapi"].startswith("3.1")
    validate(contract.spec)


def test_the_document_describes_exactly_the_routes_of_the_app(contract: OpenApiContract) -> None:
    """A route added without its description (or a description of a route that does not
    exist) fails here."""
    app = create_app(Settings(), role="both")
    served = {
        (route.resource.canonical, route.method.lower())
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
        and route.resource.canonical != "/api/v1/{tail}"  # the JSON 404 of unknown API paths
    }  # fmt: skip
    documented = {
        (path, method)
        for path, item in contract.spec["paths"].items()
        for method in item
        if method in ("get", "post", "put", "delete", "patch", "options")
    }
    assert served == documented


async def check(
    client: TestClient, contract: OpenApiContract, template: str, url: str,
    expected: int, **kwargs: object,
) -> bytes:  # fmt: skip
    response = await client.get(url, **kwargs)
    body = await response.read()
    assert response.status == expected, body
    contract.check("GET", template, response.status, response.headers.get("Content-Type"), body)
    return body


async def test_list_and_every_detail_match_the_schemas(
    client: TestClient, contract: OpenApiContract
) -> None:
    import orjson

    body = orjson.loads(
        await check(client, contract, LIST, LIST, 200, params={"limit": "1000"}, headers=AUTH)
    )
    sessions = body["sessions"]
    assert any(s["live"] for s in sessions) and any(not s["live"] for s in sessions)
    for summary in sessions:
        url = f"/api/v1/sessions/{summary['session_id']}"
        await check(client, contract, DETAIL, url, 200, headers=AUTH)
    await check(client, contract, LIST, LIST, 200, params={"limit": "2"}, headers=AUTH)
    await check(client, contract, USER, f"/api/v1/users/{DANIEL}/sessions", 200, headers=AUTH)


async def test_errors_match_the_schemas(client: TestClient, contract: OpenApiContract) -> None:
    await check(client, contract, LIST, LIST, 400, params={"ux": "awful"}, headers=AUTH)
    await check(client, contract, LIST, LIST, 401)
    await check(client, contract, USER, f"/api/v1/users/{DANIEL}/sessions", 401)
    await check(client, contract, DETAIL, "/api/v1/sessions/" + "0" * 32, 404, headers=AUTH)
    await check(client, contract, DETAIL, "/api/v1/sessions/" + "0" * 32, 401)
    await check(
        client, contract, USER, f"/api/v1/users/{DANIEL}/sessions", 400,
        params={"limit": "0"}, headers=AUTH,
    )  # fmt: skip


@pytest.mark.parametrize("mutate", [
    lambda s: s.pop("ux_score"),
    lambda s: s.update(surprise=1),
    lambda s: s.update(ux_score="meh"),
    lambda s: s["browser"].pop("family"),
    lambda s: s.update(session_id="not-hex"),
])  # fmt: skip
async def test_the_contract_rejects_drift(
    client: TestClient, contract: OpenApiContract, mutate: object
) -> None:
    """The schemas are strict: a missing, extra or mistyped field fails the contract check."""
    import orjson

    body = orjson.loads(await check(client, contract, LIST, LIST, 200, headers=AUTH))
    mutate(body["sessions"][0])  # type: ignore[operator]
    with pytest.raises(AssertionError):
        contract.check("GET", LIST, 200, "application/json", orjson.dumps(body))
    detail = orjson.loads(
        await check(client, contract, DETAIL, f"{LIST}/{body['sessions'][-1]['session_id']}",
                    200, headers=AUTH)  # fmt: skip
    )
    mutate(detail)  # type: ignore[operator]
    with pytest.raises(AssertionError):
        contract.check("GET", DETAIL, 200, "application/json", orjson.dumps(detail))
