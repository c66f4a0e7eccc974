"""One TLS context for both the REST calls and the event stream (websockets)."""

from __future__ import annotations

import ssl

__all__ = ["tls_context"]


def tls_context(verify: ssl.SSLContext | str | bool = True, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    """``verify``: a context (used as is), a CA bundle path, True (system CAs) or False (no
    verification, like httpx's ``verify=False``); ``cert``: a client certificate and key (mTLS)."""
    if isinstance(verify, ssl.SSLContext):
        ctx = verify
    else:
        ctx = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
        if verify is False:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx
