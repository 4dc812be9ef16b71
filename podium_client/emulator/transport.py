"""HTTP plumbing of the emulator: a threaded server that can hang up like a dying load balancer."""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Protocol, cast

from podium_client.emulator.errors import EmulatorError
from podium_client.emulator.shapes import dumps

if TYPE_CHECKING:
    from podium_client.emulator.server import EmulatorServer

logger = logging.getLogger("podium_client.emulator")


class Headers(Protocol):
    def get(self, name: str, default: None = None, /) -> str | None: ...


@dataclass
class Response:
    """What to answer: status, body, headers, or `drop` to reset the connection without answering."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False


def json_response(status: int, body: str | bytes, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON response."""
    data = body.encode("utf-8") if isinstance(body, str) else body
    out = {"Content-Type": "application/json; charset=utf-8"}
    out.update(headers or {})
    return Response(status, data, out)


def error_response(err: EmulatorError, headers: Mapping[str, str] | None = None) -> Response:
    """Podium's error envelope for `err`."""
    return json_response(err.status, dumps(err.body()), headers)


class HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    # socketserver's default backlog of 5 refuses connections when a few client threads start at once.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], emulator: EmulatorServer) -> None:
        self.emulator = emulator
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            # A client that timed out and hung up is a normal event for a fault-injecting server.
            logger.debug("client %s went away: %r", client_address, exc)
            return
        logger.exception("emulator failed answering %s", client_address)

    def close_open_connections(self) -> None:
        """Hang up on kept-alive clients so stopping is immediate and visible to them."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "PodiumEmulator/2.0"
    # Headers and body go out in separate writes; with Nagle on, the second waits for a delayed ACK.
    disable_nagle_algorithm = True
    # Idle keep-alive connections are dropped after this long, freeing their threads.
    timeout = 120

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        emulator = cast(HTTPServer, self.server).emulator
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            resp = error_response(EmulatorError(400, "bad_request", "bad Content-Length"))
        else:
            body = self.rfile.read(length) if length else b""
            resp = emulator.handle(method, self.path, self.headers, body)
        if resp.drop:
            self._abort()
            return
        self.send_response(resp.status)
        for key, value in resp.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(resp.body)))
        self.end_headers()
        self.wfile.write(resp.body)

    def _abort(self) -> None:
        # SO_LINGER 0 makes close() send a RST: the client sees its connection reset with no
        # response at all, like a load balancer dying after the backend committed.
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            self.connection.close()
