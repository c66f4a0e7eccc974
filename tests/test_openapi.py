"""openapi.yaml is generated from the app and checked in: fail on drift."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_openapi_yaml_matches_the_app():
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "openapi.py"), "--check"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr + r.stdout


def test_every_operation_documents_its_problem_responses():
    import yaml

    spec = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method in ("post", "put", "delete") and "{vm_id}" in path:
                assert "404" in op["responses"], f"{method.upper()} {path} does not document 404"


def test_the_batch_parser_takes_exactly_the_documented_body():
    """memslots:batch parses its body into TypedDicts (api/batch_body.py) for speed; OpenAPI
    documents the models in api/schemas.py. Same rules, or the docs would lie."""
    from memslotd.api.batch_body import BATCH_BODY
    from memslotd.api.schemas import BatchRequest

    def rules(schema):  # what validation depends on: not titles, descriptions or defaults
        if isinstance(schema, dict):
            return {k: rules(v) for k, v in schema.items() if k not in ("title", "description", "default")}
        if isinstance(schema, list):
            return [rules(v) for v in schema]
        return schema

    assert rules(BATCH_BODY.json_schema()) == rules(BatchRequest.model_json_schema())


def _spec(name="openapi.yaml"):
    import yaml

    return yaml.safe_load((ROOT / name).read_text())


def _operations(spec):
    for path, item in spec["paths"].items():
        for method, op in item.items():
            yield path, method, op


def test_every_operation_declares_its_security_and_the_http_layers_answers():
    spec = _spec()
    assert spec["components"]["securitySchemes"]["bearer"] == {
        **spec["components"]["securitySchemes"]["bearer"],
        "type": "http",
        "scheme": "bearer",
    }
    for path, method, op in _operations(spec):
        where = f"{method.upper()} {path}"
        if path == "/v1/healthz":
            assert op["security"] == [{}] and "401" not in op["responses"], where
        else:
            assert op["security"][0]["bearer"], where
            assert "401" in op["responses"] and "WWW-Authenticate" in op["responses"]["401"]["headers"], where
        for status in ("403", "414", "422"):
            assert status in op["responses"], (where, status)
        if "requestBody" in op:
            for status in ("400", "413", "415"):
                assert status in op["responses"], (where, status)
        if method == "post":
            assert any(p["name"] == "Idempotency-Key" for p in op["parameters"]), where
        for status, answer in op["responses"].items():
            assert "memslotd-boot-id" in answer["headers"] or status == "414", (where, status)
            if int(status) >= 400:
                assert list(answer["content"]) == ["application/problem+json"], (where, status)
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_dry_run_location_etag_and_precondition_headers_are_declared():
    spec = _spec()
    put = spec["paths"]["/v1/vms/{vm_id}/memslots/{slot}"]["put"]
    assert {"If-Match", "If-None-Match"} <= {p["name"].title() for p in put["parameters"]}
    assert {"ETag", "Location", "memslotd-dry-run"} <= set(put["responses"]["201"]["headers"])
    assert "memslotd-dry-run" in spec["paths"]["/v1/vms/{vm_id}"]["delete"]["responses"]["200"]["headers"]
    assert set(spec["components"]["headers"]) >= {"Idempotent-Replayed", "Retry-After", "Allow"}


def test_the_event_stream_is_described_in_both_documents():
    from memslotd.core.events import EVENT_TYPES

    spec = _spec()
    mapping = spec["components"]["schemas"]["Event"]["discriminator"]["mapping"]
    assert set(EVENT_TYPES) <= set(mapping)
    ndjson = spec["paths"]["/v1/events"]["get"]["responses"]["200"]["content"]["application/x-ndjson"]["schema"]
    assert {"$ref": "#/components/schemas/Event"} in ndjson["oneOf"]
    asyncapi = _spec("asyncapi.yaml")
    assert asyncapi["asyncapi"].startswith("3.")
    channel = asyncapi["channels"]["events"]
    assert channel["address"] == "/v1/events" and "memslotd.v1" in channel["description"]
    assert set(channel["x-close-codes"]) == {"1011", "1012", "4400", "4401", "4403", "4410"}
    messages = asyncapi["components"]["messages"]
    assert {"Hello", "Bookmark", "Gone", "ErrorFrame", "AuthMessage"} <= set(messages)
    assert len(messages) == len(mapping) + 5

    def resolve(doc, ref):
        node = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        return node

    def refs(node):
        if isinstance(node, dict):
            if "$ref" in node:
                yield node["$ref"]
            for v in node.values():
                yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    for doc in (spec, asyncapi):
        for ref in refs(doc):
            assert resolve(doc, ref) is not None, ref  # every reference resolves
    for op in asyncapi["operations"].values():
        assert op["channel"] == {"$ref": "#/channels/events"}
