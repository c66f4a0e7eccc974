"""uvicorn's httptools protocol with the request line bounded and its refusals in problem+json.

uvicorn answers what its parser refuses with a text/plain 400 ("Invalid HTTP request
received."), and grows the URL without limit. Here a target longer than ``MAX_URL_BYTES`` is
414 ``URI_TOO_LONG`` (RFC 9110 §15.5.15) and anything else the parser refuses is 400
``INVALID_HTTP``, both as application/problem+json, then the connection is closed.
"""

from __future__ import annotations

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .api.problems import problem_body

__all__ = ["BoundedHttpTools", "MAX_URL_BYTES"]

MAX_URL_BYTES = 8 << 10  # RFC 9112 §3 recommends supporting at least 8000 octets
_REASONS = {400: b"Bad Request", 414: b"URI Too Long"}


class _URLTooLong(Exception):
    pass


class BoundedHttpTools(HttpToolsProtocol):
    def on_url(self, url: bytes) -> None:
        if len(self.url) + len(url) > MAX_URL_BYTES:
            raise _URLTooLong()
        super().on_url(url)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upgrade()
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _URLTooLong) or isinstance(exc.__cause__, _URLTooLong):
                self._refuse(414, "URI_TOO_LONG", "URI too long", f"the request target exceeds {MAX_URL_BYTES} bytes")
            else:
                self._refuse(400, "INVALID_HTTP", "Invalid HTTP request", "the request is not valid HTTP/1.1")

    def _upgrade(self) -> None:
        if self._should_upgrade():
            self.handle_websocket_upgrade()
        else:
            self._unsupported_upgrade_warning()

    def _refuse(self, status: int, code: str, title: str, detail: str) -> None:
        body = orjson.dumps(problem_body(status, code, title, detail))
        head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head.append(
            b"content-type: application/problem+json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        )
        self.transport.write(b"".join(head) + body)
        self.transport.close()
