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
