"""Write (or --check) openapi.yaml and asyncapi.yaml generated from the app's models, without
opening /dev/kvm."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from memslotd.api.app import create_app
from memslotd.api.contract import asyncapi_document
from memslotd.api.routes.events import StreamQuery
from memslotd.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def _yaml(document: dict) -> str:  # type: ignore[type-arg]
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)


def render() -> dict[Path, str]:
    app = create_app(Settings(socket=Path("/nonexistent/memslotd.sock")), core_factory=lambda: None)  # type: ignore[arg-type,return-value]
    query = StreamQuery.model_json_schema()
    query.pop("title", None)
    return {ROOT / "openapi.yaml": _yaml(app.openapi()), ROOT / "asyncapi.yaml": _yaml(asyncapi_document(query))}


def main() -> int:
    documents = render()
    if "--check" in sys.argv:
        stale = [p.name for p, text in documents.items() if not p.exists() or p.read_text() != text]
        if stale:
            print(f"{', '.join(stale)} out of date: run 'make openapi' and commit", file=sys.stderr)
            return 1
        print("openapi.yaml and asyncapi.yaml match the app")
        return 0
    for path, text in documents.items():
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
