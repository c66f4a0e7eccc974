"""The code's shape: imports go one way between layers, and the package type-checks."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import patience

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "service" / "memslotd"

# layer -> modules it must never import (docs/design.md, STYLE.md); memslotd.uapi is open to all
FORBIDDEN = {
    "kvm": ("memslotd.core", "memslotd.api", "memslotd.client", "memslotd.cli", "fastapi", "pydantic"),
    "core": (
        "memslotd.kvm",
        "memslotd._native",
        "memslotd.api",
        "memslotd.client",
        "memslotd.cli",
        "fastapi",
        "pydantic",
        "cffi",
    ),
    "api": ("memslotd.kvm", "memslotd._native", "memslotd.client", "memslotd.cli"),
    "client": ("memslotd.core", "memslotd.kvm", "memslotd._native", "fastapi"),
    "cli": ("memslotd.core", "memslotd.kvm", "memslotd._native", "fastapi"),
}


def _imports(path: Path) -> set[str]:
    package = "memslotd." + ".".join(path.relative_to(PKG).with_suffix("").parts[:-1])
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                out.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                out.add(node.module)
    return out


def test_layers_import_one_way():
    broken = []
    for layer, forbidden in FORBIDDEN.items():
        for path in (PKG / layer).rglob("*.py"):
            for name in _imports(path):
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    broken.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not broken, "\n".join(broken)


def test_the_api_imports_the_core_package_only():
    """memslotd.api uses the core through its public face (``memslotd.core``'s ``__all__``),
    never one of its modules: what the core does inside stays the core's business."""
    reaching_in = []
    for path in (PKG / "api").rglob("*.py"):
        for name in _imports(path):
            if name.startswith("memslotd.core."):
                reaching_in.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not reaching_in, "\n".join(reaching_in)


def _modules_loaded_by(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return set(r.stdout.split())


def _loaded(modules: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in forbidden))


def test_the_client_imports_without_the_server_side():
    """Transitively, not just by its own import lines: a client machine needs no FastAPI and
    no kernel layer (the client reads the wire models of api.schemas, which are pydantic only)."""
    assert not _loaded(
        _modules_loaded_by("memslotd.client"),
        ("fastapi", "starlette", "uvicorn", "memslotd.kvm", "memslotd._native", "cffi"),
    )


def test_the_core_imports_without_the_kernel_layer():
    """Transitively: the core reaches the kernel only through the objects it is handed (core.ports),
    so it imports without the native module, cffi or memslotd.kvm (tests/core runs it so)."""
    assert not _loaded(
        _modules_loaded_by("memslotd.core"),
        ("memslotd.kvm", "memslotd._native", "cffi", "memslotd.api", "fastapi", "pydantic"),
    )


def test_each_limit_has_one_definition():
    """2^53-1 (the JSON integer bound), the batch size and the object-id pattern are defined once,
    in the core (MAX_JSON_INT, MAX_BATCH_OPS, id_pattern); every other module names them."""
    spelled_out = {"1 << 53": "core/ranges.py", "[0-9a-f]{1,32}": None, "max_length=4096": None}
    wrong = []
    for path in PKG.rglob("*.py"):
        text, where = path.read_text(), path.relative_to(PKG).as_posix()
        wrong += [
            f"{where} spells out {literal!r}"
            for literal, home in spelled_out.items()
            if literal in text and where != home
        ]
    assert not wrong, "\n".join(wrong)


def test_uapi_is_a_leaf_of_the_standard_library():
    """memslotd.uapi (constants, limits, value types) imports nothing of the project nor any
    third-party package, so that every layer may import it (FORBIDDEN lists no layer's uapi)."""
    names = {name.split(".")[0] for name in _imports(PKG / "uapi.py")} - {"__future__"}
    assert names <= sys.stdlib_module_names, names - sys.stdlib_module_names
    assert not any(f.startswith("memslotd.uapi") for forbidden in FORBIDDEN.values() for f in forbidden)


# kernel object -> the one module that constructs it: its parent's (as in kvm-ioctls)
PARENTS = {"VMFd": "kvm/system.py", "VCPUFd": "kvm/vm.py", "GuestMemfd": "kvm/vm.py"}


def test_kernel_objects_are_made_by_their_parent_only():
    wrong = []
    for path in [*PKG.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in PARENTS:
                where = path.relative_to(PKG).as_posix() if path.is_relative_to(PKG) else str(path.relative_to(ROOT))
                if where != PARENTS[node.func.id]:
                    wrong.append(f"{where}:{node.lineno} makes a {node.func.id}")
    assert not wrong, "\n".join(wrong)


def test_kvm_modules_import_no_cycle():
    """kvm/system.py imports kvm/vm.py, never the other way (TYPE_CHECKING imports count too)."""
    graph = {
        f"memslotd.kvm.{p.stem}": {n for n in _imports(p) if n.startswith("memslotd.kvm.")}
        for p in (PKG / "kvm").glob("*.py")
    }
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path, module))
        if module not in done:
            for dep in graph.get(module, ()):
                visit(dep, (*path, module))
            done.add(module)

    for module in graph:
        visit(module, ())


def test_the_package_type_checks():
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=patience(300),
    )
    assert r.returncode == 0, r.stdout[-3000:]


@pytest.mark.parametrize(
    "command",
    [["check"], ["format", "--check", "--diff"]],
    ids=["lint_is_clean", "format_is_applied"],
)
def test_the_repository_passes_ruff(command):
    """ruff (configured in pyproject.toml) over everything: the mistakes a reviewer would catch,
    and one format, so a diff shows only what changed."""
    r = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=patience(120),
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]


def test_value_types_are_immutable_to_the_type_checker(tmp_path):
    """core.value_type trades run-time freezing for speed; mypy must still refuse a mutation."""
    (tmp_path / "mutate.py").write_text(
        "from memslotd.core.slot_table import Backing\n\nBacking('shm-1', 0).offset = 4096\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", str(tmp_path / "mutate.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=patience(300),
    )
    assert r.returncode == 1 and 'Property "offset" defined in "Backing" is read-only' in r.stdout, r.stdout
