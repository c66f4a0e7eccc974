"""Write (or --check) openapi.yaml generated from the app, without opening /dev/kvm."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from memslotd.api.app import create_app
from memslotd.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "openapi.yaml"


def render() -> str:
    app = create_app(Settings(socket=Path("/nonexistent/memslotd.sock")), core_factory=lambda: None)  # type: ignore[arg-type,return-value]
    return yaml.safe_dump(app.openapi(), sort_keys=False, allow_unicode=True, width=100)


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            print("openapi.yaml is out of date: run 'make openapi' and commit it", file=sys.stderr)
            return 1
        print("openapi.yaml matches the app")
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
