"""Configuration: embedded defaults < TOML file < environment (MEMSLOTD_*) < command line.

``memslotd --help`` lists every option with its description.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    CliSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .core import MAX_BATCH_OPS

__all__ = ["Settings", "default_socket_path", "command_line"]


def default_socket_path() -> Path:
    """``/run/memslotd/memslotd.sock`` for root, ``$XDG_RUNTIME_DIR/memslotd/memslotd.sock`` otherwise."""
    if os.geteuid() == 0:
        return Path("/run/memslotd/memslotd.sock")
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/memslotd-{os.geteuid()}"
    return Path(runtime) / "memslotd" / "memslotd.sock"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MEMSLOTD_", extra="forbid", validate_default=True, cli_kebab_case=True, cli_implicit_flags=True
    )

    config: Path | None = Field(None, description="TOML file with any of these options (env: MEMSLOTD_CONFIG)")
    socket: Path = Field(default_factory=default_socket_path, description="Unix socket path for the API")
    socket_mode: int = Field(0o660, ge=0, le=0o777, description="permission bits of the API socket, in octal")
    socket_group: str | None = Field(None, description="group owning the socket (default: the daemon's)")
    readonly_socket: Path | None = Field(None, description="optional second socket: GETs and event subscriptions only")
    tcp: str | None = Field(
        None,
        pattern=r"^[^\s:]+:[0-9]{1,5}$|^\[[0-9a-fA-F:]+\]:[0-9]{1,5}$",
        description="opt-in TCP listener HOST:PORT (needs --token-file)",
    )
    token_file: Path | None = Field(
        None,
        description=(
            'TOML file of bearer tokens (mode 0600), one table per token: [[tokens]] name = "ci" '
            'scopes = ["read", "events", "mutate" or "admin"] and sha256 = "<hex digest of the token>" '
            'or token = "<16+ characters>" (see docs/cli.md)'
        ),
    )
    tls_cert: Path | None = Field(None, description="TLS certificate (PEM) for the TCP listener")
    tls_key: Path | None = Field(None, description="TLS private key (PEM) for the TCP listener")
    tls_client_ca: Path | None = Field(None, description="CA bundle: require client certificates (mTLS) on TCP")
    allowed_origins: list[str] = Field(
        default_factory=list, description="browser Origins allowed on the TCP listener (WebSocket and HTTP)"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    log_format: Literal["json", "text"] = Field("json", description="log line format")
    max_body_bytes: int = Field(64 << 10, ge=1024, le=16 << 20, description="request body limit in bytes")
    max_batch_body_bytes: int = Field(
        1 << 20, ge=1024, le=16 << 20, description=f"body limit of memslots:batch ({MAX_BATCH_OPS} ops fit in 1 MiB)"
    )
    max_vms: int = Field(64, ge=1, le=4096, description="VMs per daemon")
    max_slots_per_vm: int = Field(32764, ge=1, le=32764, description="memslots per VM (never above KVM's)")
    max_bytes_per_vm: int | None = Field(
        None,
        ge=4096,
        description="bytes a VM may commit in its guest_memfds and shared memory (default: the daemon total)",
    )
    max_bytes_total: int | None = Field(
        None, ge=4096, description="bytes the daemon may commit (default: MemTotal minus --memory-reserve-bytes)"
    )
    memory_reserve_bytes: int | None = Field(
        None,
        ge=0,
        description="memory left to the host: populating is refused "
        "when MemAvailable would fall below it (default: 10% of MemTotal, "
        "at least 1 GiB, at most half)",
    )
    max_pending_per_vm: int = Field(64, ge=1, le=100_000, description="queued mutations per VM before 429")
    max_probe_ops: int = Field(64, ge=1, le=1024, description="guest accesses per probe request")
    max_probes_per_second: float = Field(50.0, gt=0, description="probe requests per second (daemon-wide) before 429")
    probe_timeout_ms: int = Field(1000, ge=10, le=60_000, description="KVM_RUN timeout per probe access")
    event_retention_count: int = Field(100_000, ge=16, description="events kept for resume (count)")
    event_retention_bytes: int = Field(64 << 20, ge=4096, description="events kept for resume (bytes)")
    max_connections: int = Field(
        1024,
        ge=4,
        le=1 << 20,
        description="open connections per listener; at the cap the "
        "oldest idle or half-sent one is closed, or the new one is answered 503",
    )
    max_connections_per_peer: int = Field(
        256, ge=2, le=1 << 20, description="open connections per peer (Unix uid, TCP address), with the same rule"
    )
    request_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="seconds a request's headers and body may take to arrive (also: a new connection's first request)",
    )
    tcp_auth_timeout_s: float = Field(
        5.0, gt=0, le=600, description="seconds a TCP connection may stay open before it presents a valid token"
    )
    idle_timeout_s: float = Field(5.0, gt=0, le=3600, description="seconds an idle keep-alive connection stays open")
    ws_ping_interval_s: float = Field(
        20.0, gt=0, le=3600, description="seconds between the keepalive pings an event stream sends its subscriber"
    )
    ws_ping_timeout_s: float = Field(
        20.0,
        gt=0,
        le=3600,
        description="seconds a subscriber has to answer a ping (it reads frames in order: a backlog delays the pong)",
    )
    fd_reserve: int | None = Field(
        None,
        ge=64,
        description="file descriptors kept for kernel objects (VMs, "
        "guest_memfds, memfds); connections get the rest (default: half of RLIMIT_NOFILE)",
    )
    idempotency_cache_bytes: int = Field(
        32 << 20,
        ge=0,
        le=1 << 34,
        description="bytes of Idempotency-Key answers kept for replay (oldest dropped first)",
    )
    event_bookmark_interval_s: float = Field(10.0, gt=0, description="seconds between bookmark events")
    enable_memory_error_injection: bool = Field(False, description="enable the test-rig memory-error endpoint")

    @model_validator(mode="after")
    def _tcp_needs_a_token_file(self) -> Settings:
        if self.tcp and self.token_file is None:
            raise ValueError("--tcp needs --token-file: TCP is never served without authentication")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return self

    @field_validator("socket_mode", mode="before")
    @classmethod
    def _octal(cls, v: Any) -> Any:
        """``0660``, ``660`` and ``0o660`` on the command line, in the environment or as a TOML
        string are octal, as chmod reads them (read as decimal, 0440 would be 0o670:
        group-writable); a TOML integer is taken as written (``0o660``)."""
        if isinstance(v, str):
            try:
                return int(v.strip().removeprefix("0o").removeprefix("0O") or "0", 8)
            except ValueError:
                raise ValueError(f"not an octal mode: {v!r} (e.g. 0660)") from None
        return v

    @field_validator("socket", "readonly_socket")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_absolute():
            raise ValueError("must be an absolute path")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_from_init(init_settings) or os.environ.get("MEMSLOTD_CONFIG")
        if path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


def _config_from_init(init: PydanticBaseSettingsSource) -> str | None:
    data: Any = init()
    value = data.get("config") if isinstance(data, dict) else None
    return str(value) if value else None


# -- the command line ------------------------------------------------------------------------
#: what an option takes, for --help (pydantic-settings would print Python types: {Path,null})
_METAVARS = {
    "socket_mode": "MODE",
    "socket_group": "GROUP",
    "tcp": "HOST:PORT",
    "allowed_origins": "ORIGIN",
    "log_level": "{debug,info,warning,error}",
    "log_format": "{json,text}",
}
#: defaults pydantic-settings cannot print as people write them
_DEFAULTS = {
    "socket": "/run/memslotd/memslotd.sock as root, else $XDG_RUNTIME_DIR/memslotd/memslotd.sock",
    "socket_mode": "0660",
    "allowed_origins": "none",
}


def _metavar(name: str, annotation: Any) -> str:
    if name in _METAVARS:
        return _METAVARS[name]
    text = str(annotation)
    if "Path" in text:
        return "PATH"
    if "bytes" in name:
        return "BYTES"
    if name.endswith("_s"):
        return "SECONDS"
    if name.endswith("_ms"):
        return "MS"
    return "N"


def _default(name: str, field: Any) -> str | None:
    if name in _DEFAULTS:
        return _DEFAULTS[name]
    if field.default is None or field.default_factory is not None:
        return None  # absent, or said by the description ("default: the daemon total")
    if isinstance(field.default, bool):
        return "on" if field.default else "off"
    return f"{field.default:g}" if isinstance(field.default, float) else str(field.default)


def command_line() -> CliSettingsSource[argparse.ArgumentParser]:
    """``memslotd``'s argument parser, its --help written for people: ``--socket PATH``,
    ``--tcp HOST:PORT``, ``--max-vms N (default: 64)``, each default said once."""
    source: CliSettingsSource[argparse.ArgumentParser] = CliSettingsSource(
        Settings, cli_prog_name="memslotd", cli_hide_none_type=True
    )
    fields = Settings.model_fields
    for action in source.root_parser._actions:  # argparse has no public way to revise an action
        name = action.dest
        if name not in fields or not action.option_strings:
            continue
        field = fields[name]
        if action.metavar is not None:
            action.metavar = _metavar(name, field.annotation)
        description = (field.description or "").replace("%", "%%")  # argparse formats help with %
        default = _default(name, field)
        if default is not None and "(default" not in description:
            description += f" (default: {default})"
        action.help = description
    return source
