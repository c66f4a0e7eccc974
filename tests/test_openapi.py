"""openapi.yaml is generated from the app and checked in: fail on drift."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_openapi_yaml_matches_the_app():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "openapi.py"), "--check"], capture_output=True, text=True)
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
