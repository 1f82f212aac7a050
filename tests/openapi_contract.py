"""Validate HTTP responses against docs/openapi.yaml (JSON Schema 2020-12, as OpenAPI 3.1 is).

    contract = OpenApiContract.load()
    contract.check("GET", "/api/v1/sessions/{session_id}", 200, "application/json", body)

`check` finds the documented response for (method, path template, status), requires the
content type to be documented, and validates a JSON body against its schema with every `$ref`
resolved inside the document.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"
SPEC_URI = "urn:rumline:openapi"


def _pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


@dataclass
class OpenApiContract:
    spec: dict[str, Any]
    registry: Registry

    @classmethod
    def load(cls, path: Path = SPEC_PATH) -> OpenApiContract:
        spec = yaml.safe_load(path.read_text())
        resource = Resource.from_contents(spec, default_specification=DRAFT202012)
        return cls(spec, Registry().with_resource(SPEC_URI, resource))

    def _resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            node = self.registry.resolver(SPEC_URI).lookup(SPEC_URI + node["$ref"]).contents
        return node

    def response(self, method: str, path: str, status: int) -> dict[str, Any]:
        operation = self.spec["paths"][path][method.lower()]
        responses = operation["responses"]
        assert str(status) in responses, f"{method} {path}: status {status} is not documented"
        return self._resolve(responses[str(status)])

    def check(
        self, method: str, path: str, status: int, content_type: str | None, body: bytes
    ) -> None:
        """Assert that the response is documented and its body matches the schema."""
        documented = self.response(method, path, status)
        content = documented.get("content")
        if not content:
            assert not body, f"{method} {path} {status}: undocumented body {body[:200]!r}"
            return
        media = (content_type or "").split(";")[0].strip()
        assert media in content, f"{method} {path} {status}: {media!r} not in {list(content)}"
        if media != "application/json":
            return
        entry = self.spec["paths"][path][method.lower()]["responses"][str(status)]
        base = entry.get("$ref") or "#/" + _pointer(
            "paths", path, method.lower(), "responses", str(status)
        )
        ref = f"{base}/content/{_pointer(media)}/schema"
        validator = Draft202012Validator({"$ref": SPEC_URI + ref}, registry=self.registry)
        instance = orjson.loads(body)
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
        assert not errors, (
            f"{method} {path} {status}: "
            + "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])
        )
