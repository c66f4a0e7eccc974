"""Responses stay readable by older clients at every depth (docs/api-change-runbook.md): every
model a response or an event can be parsed with ignores unknown fields, however deep. The test
builds a valid instance of each from its JSON schema, adds an unknown field to every object in
it, and parses it back."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from memslotd.api import schemas


def _response_models() -> list[type[BaseModel]]:
    from memslotd.api import event_schemas

    found = [
        m
        for module in (schemas, event_schemas)
        for m in vars(module).values()
        if isinstance(m, type) and issubclass(m, schemas.Response) and m is not schemas.Response
    ]
    found += event_schemas.EVENT_MODELS.values()
    assert len(found) >= 70
    return list(dict.fromkeys(found))


def _sample(schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    if "$ref" in schema:
        return _sample(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return _sample(options[0], defs)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return {(v.get("alias") or k): _sample(v, defs) for k, v in props.items()}
    if kind == "array":
        return [_sample(schema.get("items", {"type": "integer"}), defs)]
    return {"integer": 1, "number": 1.5, "boolean": True, "string": "x"}.get(kind, 1)  # type: ignore[arg-type]


def _with_unknown_fields(value: Any, depth: int = 0) -> tuple[Any, int]:
    """``value`` with ``x_future_<depth>`` added to every object; returns the deepest depth reached."""
    if isinstance(value, dict):
        deepest = depth
        out = {}
        for k, v in value.items():
            out[k], d = _with_unknown_fields(v, depth + 1)
            deepest = max(deepest, d)
        out[f"x_future_{depth}"] = {"nested": [1, {"more": True}]}
        return out, deepest
    if isinstance(value, list):
        items = [_with_unknown_fields(v, depth + 1) for v in value]
        return [i for i, _ in items], max([depth, *(d for _, d in items)])
    return value, depth


@pytest.mark.parametrize("model", _response_models(), ids=lambda m: m.__name__)
def test_every_response_model_ignores_unknown_fields_at_every_depth(model):
    schema = model.model_json_schema(by_alias=True)
    sample = _sample(schema, schema.get("$defs", {}))
    model.model_validate(sample)  # the sample itself is valid
    extended, deepest = _with_unknown_fields(sample)
    model.model_validate(extended)  # an unknown field at every depth, down to ``deepest``
    assert deepest >= (1 if model.model_fields else 0)


def test_no_response_model_embeds_a_model_that_forbids_unknown_fields():
    def walk(model: type[BaseModel], seen: set[type]) -> None:
        if model in seen:
            return
        seen.add(model)
        assert model.model_config.get("extra") != "forbid", f"{model.__name__} forbids unknown fields"
        for field in model.model_fields.values():
            for arg in _types(field.annotation):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    walk(arg, seen)

    for model in _response_models():
        walk(model, set())


def _types(annotation: Any) -> list[Any]:
    args = getattr(annotation, "__args__", None)
    if not args:
        return [annotation]
    return [t for a in args for t in _types(a)]


def test_the_models_a_route_answers_with_are_response_models(client):
    """Every documented answer's schema is one of the walked models (none is a request model)."""
    spec = client.get("/v1/openapi.json").json()
    from memslotd.api.event_schemas import EVENT_MODELS, STREAM_FRAMES

    names = {m.__name__ for m in (*_response_models(), *EVENT_MODELS.values(), *STREAM_FRAMES)}
    for path, item in spec["paths"].items():
        for method, op in item.items():
            for status, answer in op["responses"].items():
                for media in answer.get("content", {}).values():
                    ref = media.get("schema", {}).get("$ref", "")
                    if ref:
                        assert ref.rsplit("/", 1)[-1] in names, (method, path, status, ref)
