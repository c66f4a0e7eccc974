"""Bearer tokens with scopes for the TCP listener.

Token file (TOML, must not be readable by group or others)::

    [[tokens]]
    name = "dashboard"
    scopes = ["read", "events"]
    sha256 = "…hex digest of the token…"   # or: token = "…" (plain)

Scopes: ``read`` (GETs), ``events`` (the event stream), ``mutate`` (create, delete,
convert, probe), ``admin`` (everything, including test-rig injection).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import stat
import tomllib
from pathlib import Path

__all__ = ["Token", "TokenStore", "SCOPES", "required_scope"]

SCOPES = ("read", "events", "mutate", "admin")


@dataclasses.dataclass(frozen=True, slots=True)
class Token:
    name: str
    scopes: frozenset[str]
    digest: bytes  # sha256 of the token

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


class TokenStore:
    def __init__(self, tokens: list[Token]):
        self.tokens = tokens

    @classmethod
    def load(cls, path: Path) -> TokenStore:
        mode = os.stat(path).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ValueError(f"{path} is readable by group or others (mode {stat.S_IMODE(mode):o}); chmod 600 it")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:  # its message ends "(at line N, column M)"
            raise ValueError(f"{path}: not valid TOML: {exc}") from None
        tokens = []
        for i, entry in enumerate(data.get("tokens", [])):
            scopes = frozenset(entry.get("scopes", []))
            if not scopes or not scopes <= set(SCOPES):
                raise ValueError(f"{path}: token {i}: scopes must be a non-empty subset of {list(SCOPES)}")
            if "sha256" in entry:
                digest = bytes.fromhex(entry["sha256"])
            elif "token" in entry and len(entry["token"]) >= 16:
                digest = hashlib.sha256(entry["token"].encode()).digest()
            else:
                raise ValueError(f"{path}: token {i}: needs sha256, or a token of at least 16 characters")
            tokens.append(Token(str(entry.get("name", f"token-{i}")), scopes, digest))
        if not tokens:
            raise ValueError(f"{path}: no [[tokens]]")
        return cls(tokens)

    def verify(self, presented: str | None) -> Token | None:
        """Constant-time: every token is compared, whatever matches first."""
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for token in self.tokens:
            if hmac.compare_digest(digest, token.digest):
                found = token
        return found


def required_scope(scope_type: str, method: str, path: str) -> str:
    if path == "/ui" or path.startswith("/ui/"):
        return "public"  # static dashboard files: no data, the page authenticates its API calls
    if path == "/v1/healthz" and method in ("GET", "HEAD"):
        return "public"  # liveness for health checkers without a secret; it reveals no state without a token
    if scope_type == "websocket" or path == "/v1/events":
        return "events"
    if method in ("GET", "HEAD", "OPTIONS"):
        return "read"
    if path.endswith("/inject-error"):
        return "admin"
    return "mutate"
