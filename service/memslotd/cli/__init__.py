"""``memslotctl``: every memslotd operation from a terminal (click).

Tables and key/value lines for people (hex GPAs, sizes in units, ISO 8601 times), ``--json``
for scripts. Sizes as ``4096``, ``0x1000``, ``2M``, ``1G``. VMs and memory objects may be named
instead of id'd. Errors print as ``error: CODE: detail``. Exit codes: 0 ok, 1 other error,
2 usage, 3 not found, 4 conflict (a failed If-Match too), 5 server or host error / unreachable, 6 invalid request
(a layout file included), 7 capability missing, 8 unauthorized, 9 quota, 10 cursor gone.
"""

from __future__ import annotations

import json
import sys
from typing import NoReturn

import click

from ..client import errors as E
from ._common import State
from .layout import LayoutError
from .layout import schema as layout_schema
from .memory import apply_layout, attrs, caps, convert, events, probe
from .objects import gmem, shm, slot, vm

__all__ = ["app", "main", "EXIT_CODES"]

EXIT_CODES: dict[type[E.MemslotdError], int] = {
    E.NotFound: 3,
    E.Conflict: 4,
    E.ServerError: 5,
    E.TransportError: 5,
    E.BadRequest: 6,
    E.CapabilityMissing: 7,
    E.Unauthorized: 8,
    E.QuotaExceeded: 9,
    E.CursorGone: 10,
}
SHELLS = ("bash", "zsh", "fish")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click.option(
    "--socket",
    metavar="PATH",
    envvar="MEMSLOTD_SOCKET",
    show_envvar=True,
    help="the daemon's Unix socket [default: /run/memslotd/memslotd.sock as root, "
    "else $XDG_RUNTIME_DIR/memslotd/memslotd.sock]",
)
@click.option(
    "--url",
    metavar="URL",
    envvar="MEMSLOTD_URL",
    show_envvar=True,
    help="TCP instead: https://host:8443 (needs --token)",
)
@click.option("--token", metavar="TOKEN", envvar="MEMSLOTD_TOKEN", show_envvar=True, help="bearer token for TCP")
@click.option("--json", "json_output", is_flag=True, help="machine-readable JSON output")
@click.version_option(package_name="memslotd", message="memslotctl %(version)s")
@click.pass_context
def app(ctx: click.Context, socket: str | None, url: str | None, token: str | None, json_output: bool) -> None:
    """Control memslotd: VMs, guest_memfds, shared memory, memslots, conversion, events.

    \b
    Example:
      memslotctl vm create --name demo
      memslotctl gmem create demo 64M --flag mmap --flag init_shared --name ram
      memslotctl slot put demo 0 --gpa 4G --size 64M --gmem ram
      memslotctl apply -f layout.yaml --dry-run
    """
    state = ctx.ensure_object(State)
    state.socket, state.url, state.token, state.json = socket, url, token, json_output
    ctx.call_on_close(state.close)


for command in (vm, gmem, shm, slot, caps, convert, attrs, probe, events, apply_layout):
    app.add_command(command)


@app.command()
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the shell completion script (the package also installs it for bash, zsh and fish).

    \b
    Example:
      source <(memslotctl completion bash)
    """
    click.echo(completion_script(shell), nl=False)


@app.command()
def schema() -> None:
    """Print the JSON Schema of apply's layout file (docs/layout.schema.json is this output).

    \b
    Example:
      memslotctl schema > layout.schema.json
    """
    click.echo(layout_schema(), nl=False)


def completion_script(shell: str) -> str:
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None
    return cls(app, {}, "memslotctl", "_MEMSLOTCTL_COMPLETE").source()


def _fail(code: int, message: str | list[str], as_json: dict[str, object] | None) -> NoReturn:
    if as_json is not None:
        sys.stderr.write(json.dumps(as_json) + "\n")
    else:
        for line in [message] if isinstance(message, str) else message:
            click.echo(f"error: {line}", err=True)
    raise SystemExit(code)


def _error_json(exc: E.MemslotdError) -> dict[str, object]:
    """The error for scripts: an HTTP status and the problem document only when the daemon
    answered (an unreachable daemon has neither)."""
    out: dict[str, object] = {"error": exc.code, "detail": exc.detail}
    if exc.status:
        out["status"] = exc.status
    if exc.problem:
        out["problem"] = exc.problem
    return out


def main() -> None:
    json_mode = "--json" in sys.argv[1 : sys.argv.index("--")] if "--" in sys.argv else "--json" in sys.argv[1:]
    try:
        status = app.main(prog_name="memslotctl", standalone_mode=False)
    except click.exceptions.Abort as exc:  # Ctrl-C, or "no" to a question (which says what happened)
        detail = str(exc) or "stopped at your request"
        _fail(1, f"ABORTED: {detail}", {"error": "ABORTED", "detail": detail} if json_mode else None)
    except click.UsageError as exc:  # the usage line and the hint, then the error as every other
        if exc.ctx is not None and not json_mode:
            click.echo(exc.ctx.get_usage(), err=True)
            click.echo(f"Try '{exc.ctx.command_path} --help' for help.\n", err=True)
        detail = exc.format_message()
        _fail(exc.exit_code, f"USAGE: {detail}", {"error": "USAGE", "detail": detail} if json_mode else None)
    except click.ClickException as exc:  # e.g. a file option that cannot be opened
        detail = exc.format_message()
        _fail(
            exc.exit_code,
            f"INVALID_ARGUMENT: {detail}",
            {"error": "INVALID_ARGUMENT", "detail": detail} if json_mode else None,
        )
    except LayoutError as exc:
        lines = [f"LAYOUT_INVALID: {exc.file}: {path or '(top level)'}: {rule}" for path, rule in exc.problems]
        _fail(
            6,
            lines,
            {"error": "LAYOUT_INVALID", "file": exc.file, "problems": [{"path": p, "rule": r} for p, r in exc.problems]}
            if json_mode
            else None,
        )
    except E.MemslotdError as exc:
        code = next((c for cls, c in EXIT_CODES.items() if isinstance(exc, cls)), 1)
        _fail(
            code,
            str(exc),
            _error_json(exc) if json_mode else None,
        )
    except BrokenPipeError:
        sys.stderr.close()
        raise SystemExit(1) from None
    if isinstance(status, int) and status:
        raise SystemExit(status)
