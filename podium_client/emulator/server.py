"""A real HTTP server speaking the Podium contract over an EmulatorState, with switchable faults.

Fault injection is configuration, not patching: `fail_rate`, `rate_limit`, `latency_ms`,
`drop_after_commit_rate` and `block_cross_location` can be set at construction, changed as
attributes at runtime, or steered over HTTP (`POST /_emulator/config`) when the emulator runs in
another process. `GET /_emulator/stats` reports what happened.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import queue
import random
import re
import secrets
import socket
import struct
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, cast
from urllib.parse import parse_qs, unquote, urlsplit

import requests

from podium_client.emulator.state import EmulatorError, EmulatorState
from podium_client.types import error_body, format_timestamp
from podium_client.webhooks import SIGNATURE_HEADER, sign_webhook

logger = logging.getLogger("podium_client.emulator")

_CONTACT_RE = re.compile(r"^/v4/contacts/([^/]+)$")
_RESTORE_RE = re.compile(r"^/v4/contacts/([^/]+)/restore$")
_MERGE_RE = re.compile(r"^/v4/contacts/([^/]+)/merge$")

#: Settings that may be changed at runtime (attributes, `configure()`, `POST /_emulator/config`).
CONFIG_KEYS = (
    "token",
    "fail_rate",
    "rate_limit",
    "rate_window_s",
    "latency_ms",
    "drop_after_commit_rate",
    "block_cross_location",
    "webhook_url",
    "webhook_secret",
    "token_ttl",
    "fault_retry_after",
    "fault_statuses",
    "fail_next",
    "seed",
    "client_id",
    "client_secret",
    "refresh_token",
)

DEFAULT_TOKEN_TTL = 3600.0
SCOPES = frozenset({"contacts.read", "contacts.write"})


class _Headers(Protocol):
    def get(self, name: str, default: None = None, /) -> str | None: ...


@dataclass
class _Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False


def _json_response(status: int, body: str | bytes, headers: Mapping[str, str] | None = None) -> _Response:
    data = body.encode("utf-8") if isinstance(body, str) else body
    out = {"Content-Type": "application/json; charset=utf-8"}
    out.update(headers or {})
    return _Response(status, data, out)


def _error(err: EmulatorError, headers: Mapping[str, str] | None = None) -> _Response:
    return _json_response(err.status, json.dumps(error_body(err.code, err.message, err.uid)), headers)


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:.3f}"


class _Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, Any] = {}
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._data = {
                "requests": 0,
                "by_status": collections.Counter(),
                "by_route": collections.Counter(),
                "merges": 0,
                "hard_delete_attempts": 0,
                "drops": 0,
                "faults_injected": 0,
                "rate_limited": 0,
                "token_refreshes": 0,
                "webhooks_sent": 0,
                "webhooks_failed": 0,
            }

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._data[key] += n

    def count(self, key: str, label: str) -> None:
        with self._lock:
            self._data[key][label] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {k: dict(v) if isinstance(v, collections.Counter) else v for k, v in self._data.items()}


class _WebhookSender:
    """Delivers events from one background thread so a request never waits on a subscriber."""

    def __init__(self, emulator: EmulatorServer) -> None:
        self._emulator = emulator
        self._queue: queue.Queue[tuple[str, str, str] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="podium-emulator-webhooks", daemon=True)
        self._thread.start()

    def enqueue(self, url: str, secret: str, body: str) -> None:
        self._queue.put((url, secret, body))

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def stop(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        session = requests.Session()
        try:
            while True:
                item = self._queue.get()
                try:
                    if item is None:
                        return
                    self._deliver(session, *item)
                finally:
                    self._queue.task_done()
        finally:
            session.close()

    def _deliver(self, session: requests.Session, url: str, secret: str, body: str) -> None:
        payload = body.encode("utf-8")
        for attempt in range(3):
            headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign_webhook(secret, payload)}
            try:
                resp = session.post(url, data=payload, headers=headers, timeout=5)
            except requests.RequestException as exc:
                logger.warning(
                    "emulator webhook to %s failed (%s), attempt %d", url, type(exc).__name__, attempt + 1
                )
            else:
                if 200 <= resp.status_code < 300:
                    self._emulator._stats.add("webhooks_sent")
                    return
                logger.warning(
                    "emulator webhook to %s answered %d, attempt %d", url, resp.status_code, attempt + 1
                )
            time.sleep(0.05 * 2**attempt)
        self._emulator._stats.add("webhooks_failed")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    # socketserver's default backlog of 5 refuses connections when a few client threads start at once.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], emulator: EmulatorServer) -> None:
        self.emulator = emulator
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "PodiumEmulator/1.0"
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
        emulator = cast(_HTTPServer, self.server).emulator
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            resp = _error(EmulatorError(400, "invalid_request", "bad Content-Length"))
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


class EmulatorServer:
    """The Podium emulator: an HTTP server over an EmulatorState.

    `start()` serves from a background thread; `url` is then the base URL to give a client. The
    static `token` is granted contacts.read and contacts.write (never contacts.delete, so a hard
    delete answers 403 and is counted). `POST /oauth/token` issues tokens living `token_ttl`
    seconds for the refresh token `refresh_token` of client `client_id`/`client_secret`.

    Faults: `fail_rate` answers that share of API requests with 500/502/503/429 before doing
    anything; `rate_limit` allows that many requests per minute, enforced over a sliding window of
    `rate_window_s` seconds (60 by default; a shorter window keeps the same per-minute budget and
    lets tests run quickly); `latency_ms` delays every API request (a merge holds its contacts in
    flight meanwhile); `drop_after_commit_rate` applies that share of mutations and then resets
    the connection without answering; `block_cross_location` answers 422 to merges across
    locations. `fault_statuses` are the statuses injected faults pick from, and `fault_retry_after`
    the Retry-After of injected 429s. `fail_next = n` fails exactly the next n API requests, for
    tests that need a fault at a precise step. `seed` makes faults repeatable.
    """

    def __init__(
        self,
        state: EmulatorState | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str = "dev-token",
        fail_rate: float = 0.0,
        rate_limit: int | None = None,
        latency_ms: float = 0,
        drop_after_commit_rate: float = 0.0,
        block_cross_location: bool = False,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        seed: int | None = None,
        token_ttl: float | None = None,
        *,
        rate_window_s: float = 60.0,
        fault_retry_after: float = 1.0,
        fault_statuses: tuple[int, ...] = (500, 502, 503, 429),
        fail_next: int = 0,
        client_id: str = "dev-client",
        client_secret: str = "dev-secret",
        refresh_token: str = "dev-refresh",
    ) -> None:
        self.state = state if state is not None else EmulatorState(seed)
        self.host = host
        self.port = port
        self.token = token
        self.fail_rate = fail_rate
        self.rate_limit = rate_limit
        self.rate_window_s = rate_window_s
        self.latency_ms = latency_ms
        self.drop_after_commit_rate = drop_after_commit_rate
        self.block_cross_location = block_cross_location
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.token_ttl = token_ttl
        self.fault_retry_after = fault_retry_after
        self.fault_statuses = tuple(fault_statuses)
        self.fail_next = fail_next
        self.client_id = client_id
        self.client_secret = client_secret
        self.refresh_token = refresh_token
        self.seed = seed
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._window: collections.deque[float] = collections.deque()
        self._window_lock = threading.Lock()
        self._issued: dict[str, float] = {}
        self._issued_lock = threading.Lock()
        self._stats = _Stats()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._sender: _WebhookSender | None = None

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> EmulatorServer:
        """Bind and serve from a background thread; returns self."""
        if self._httpd is not None:
            raise RuntimeError("emulator already started")
        self._httpd = _HTTPServer((self.host, self.port), self)
        self.port = self._httpd.server_address[1]
        self._sender = _WebhookSender(self)
        self.state.add_listener(self._on_event)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="podium-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, hang up on open connections, and deliver queued webhooks (bounded wait)."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self.state.remove_listener(self._on_event)
        httpd.shutdown()
        httpd.close_open_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
        if self._sender is not None:
            self._sender.stop()
            self._sender = None

    def __enter__(self) -> EmulatorServer:
        return self.start() if self._httpd is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, e.g. `http://127.0.0.1:54321` (the client adds `/v4/...`)."""
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}"

    @property
    def token_url(self) -> str:
        """The OAuth token endpoint."""
        return self.url + "/oauth/token"

    # --- control ------------------------------------------------------------------------------------

    def configure(self, **changes: Any) -> None:
        """Change settings at runtime (same names as the constructor); ValueError on unknown names."""
        unknown = set(changes) - set(CONFIG_KEYS)
        if unknown:
            raise ValueError(f"unknown emulator settings: {sorted(unknown)}")
        for key, value in changes.items():
            setattr(self, key, tuple(value) if key == "fault_statuses" else value)
        if "seed" in changes:
            with self._rng_lock:
                self._rng = random.Random(changes["seed"])

    def config(self) -> dict[str, Any]:
        """The current settings."""
        return {key: getattr(self, key) for key in CONFIG_KEYS}

    def stats(self) -> dict[str, Any]:
        """Counters: requests, by_status, by_route, merges, hard_delete_attempts, drops, ...."""
        return self._stats.snapshot()

    def reset_stats(self) -> None:
        """Zero the counters."""
        self._stats.reset()

    def expire_tokens(self) -> None:
        """Make every OAuth-issued token expired (the next use answers 401 token_expired)."""
        with self._issued_lock:
            for tok in self._issued:
                self._issued[tok] = 0.0

    def flush_webhooks(self, timeout: float = 5.0) -> bool:
        """Wait until queued webhook deliveries are done; False on timeout."""
        return True if self._sender is None else self._sender.flush(timeout)

    # --- request handling ---------------------------------------------------------------------------

    def _chance(self, rate: float) -> bool:
        if rate <= 0:
            return False
        with self._rng_lock:
            return self._rng.random() < rate

    def handle(self, method: str, target: str, headers: _Headers, body: bytes) -> _Response:
        """Answer one request (called from the handler threads)."""
        request_id = "req_" + secrets.token_hex(8)
        parts = urlsplit(target)
        path = parts.path
        query = parse_qs(parts.query, keep_blank_values=True)
        if path.startswith("/_emulator/"):
            resp = self._control(method, path, body)
        elif path == "/oauth/token":
            resp = self._oauth(method, body)
        else:
            resp = self._api(method, path, query, headers, body)
        resp.headers["X-Request-Id"] = request_id
        return resp

    def _api(
        self, method: str, path: str, query: dict[str, list[str]], headers: _Headers, body: bytes
    ) -> _Response:
        stats = self._stats
        stats.add("requests")
        route = _route_name(method, path)
        stats.count("by_route", route)
        hard = method == "DELETE" and query.get("hard", [""])[-1].lower() in ("true", "1")
        if hard:
            stats.add("hard_delete_attempts")
        resp = self._api_inner(method, path, query, headers, body, hard, route)
        stats.count("by_status", "dropped" if resp.drop else str(resp.status))
        if resp.drop:
            stats.add("drops")
        return resp

    def _api_inner(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: _Headers,
        body: bytes,
        hard: bool,
        route: str,
    ) -> _Response:
        is_merge = route == "POST /v4/contacts/{uid}/merge"
        if self.latency_ms and not is_merge:
            time.sleep(self.latency_ms / 1000)
        limited = self._rate_limited()
        if limited is not None:
            self._stats.add("rate_limited")
            return _error(
                EmulatorError(429, "rate_limited", "rate limit exceeded"),
                {"Retry-After": _format_seconds(limited)},
            )
        if self._take_fault():
            self._stats.add("faults_injected")
            return self._injected_fault()
        auth_error = self._authenticate(headers)
        if auth_error is not None:
            return _error(auth_error)
        if hard:
            return _error(
                EmulatorError(403, "insufficient_scope", "hard delete needs the contacts.delete scope")
            )
        try:
            return self._route(method, path, query, body, route)
        except EmulatorError as err:
            return _error(err)

    def _rate_limited(self) -> float | None:
        """None when the request fits the budget, else the seconds until it would."""
        limit = self.rate_limit
        if not limit:
            return None
        window = float(self.rate_window_s)
        allowed = max(1, int(limit * window / 60.0))
        now = time.monotonic()
        with self._window_lock:
            log = self._window
            while log and log[0] <= now - window:
                log.popleft()
            if len(log) >= allowed:
                # Integer seconds like real APIs send, at least 1.
                return float(max(1, math.ceil(log[0] + window - now)))
            log.append(now)
        return None

    def _take_fault(self) -> bool:
        with self._rng_lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return True
            return self.fail_rate > 0 and self._rng.random() < self.fail_rate

    def _injected_fault(self) -> _Response:
        with self._rng_lock:
            status = self._rng.choice(self.fault_statuses or (500,))
        if status == 429:
            return _error(
                EmulatorError(429, "rate_limited", "rate limit exceeded (injected)"),
                {"Retry-After": _format_seconds(self.fault_retry_after)},
            )
        if status == 502:
            # What a gateway in front of an API really sends: HTML, not the contract's JSON.
            return _Response(
                502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", {"Content-Type": "text/html"}
            )
        return _error(EmulatorError(status, "server_error", "transient server error (injected)"))

    def _authenticate(self, headers: _Headers) -> EmulatorError | None:
        scheme, _, tok = (headers.get("Authorization") or "").partition(" ")
        tok = tok.strip()
        if scheme.lower() != "bearer" or not tok:
            return EmulatorError(401, "unauthorized", "missing bearer token")
        if tok == self.token:
            return None
        with self._issued_lock:
            expires = self._issued.get(tok)
        if expires is None:
            return EmulatorError(401, "unauthorized", "unknown access token")
        if time.monotonic() >= expires:
            return EmulatorError(401, "token_expired", "access token expired")
        return None

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], body: bytes, route: str
    ) -> _Response:
        state = self.state
        if route == "GET /v4/locations":
            return _json_response(200, state.list_locations_json())
        if route == "GET /v4/contacts":
            return _json_response(200, self._list(query))
        if route == "POST /v4/contacts":
            raw = state.create(_json_body(body))
            return self._committed(201, raw)
        m = _CONTACT_RE.match(path)
        if m:
            uid = unquote(m.group(1))
            if method == "GET":
                return _json_response(200, _wrap(state.get_json(uid)))
            if method == "PATCH":
                return self._committed(200, state.patch(uid, _json_body(body)))
            if method == "DELETE":
                state.delete(uid)
                return self._committed(204, None)
        m = _RESTORE_RE.match(path)
        if m and method == "POST":
            return self._committed(200, state.restore(unquote(m.group(1))))
        m = _MERGE_RE.match(path)
        if m and method == "POST":
            return self._merge(unquote(m.group(1)), _json_body(body))
        if route.endswith("(unknown)"):
            raise EmulatorError(404, "not_found", f"no such endpoint {path}")
        raise EmulatorError(405, "invalid_request", f"{method} not allowed on {path}")

    def _committed(self, status: int, raw: str | None) -> _Response:
        if self._chance(self.drop_after_commit_rate):
            return _Response(drop=True)
        if raw is None:
            return _Response(status)
        return _json_response(status, _wrap(raw))

    def _merge(self, primary_uid: str, body: Any) -> _Response:
        dups = EmulatorState.parse_merge_body(body)
        block = self.block_cross_location
        self.state.merge_begin(primary_uid, dups, block)
        try:
            if self.latency_ms:
                time.sleep(self.latency_ms / 1000)
        except BaseException:
            self.state.merge_abort(primary_uid, dups)
            raise
        raw = self.state.merge_commit(primary_uid, dups, block)
        self._stats.add("merges")
        return self._committed(200, raw)

    def _list(self, query: dict[str, list[str]]) -> str:
        def one(name: str) -> str | None:
            values = query.get(name)
            return values[-1] if values else None

        limit_text = one("limit")
        try:
            limit = 100 if limit_text is None else int(limit_text)
        except ValueError:
            raise EmulatorError(400, "invalid_request", "limit must be an integer") from None
        include = (one("includeDeleted") or "false").lower()
        if include not in ("true", "false"):
            raise EmulatorError(400, "invalid_request", "includeDeleted must be true or false")
        return self.state.list_contacts_json(
            one("locationUid"), limit, one("cursor"), one("updatedSince"), include == "true"
        )

    def _oauth(self, method: str, body: bytes) -> _Response:
        if method != "POST":
            return _json_response(405, '{"error":"invalid_request"}')
        form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        if form.get("grant_type") != "refresh_token":
            return _json_response(400, '{"error":"unsupported_grant_type"}')
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return _json_response(401, '{"error":"invalid_client"}')
        if form.get("refresh_token") != self.refresh_token:
            return _json_response(400, '{"error":"invalid_grant"}')
        ttl = DEFAULT_TOKEN_TTL if self.token_ttl is None else float(self.token_ttl)
        access = "tok_" + secrets.token_hex(16)
        with self._issued_lock:
            self._issued[access] = time.monotonic() + ttl
        self._stats.add("token_refreshes")
        payload = {
            "access_token": access,
            "refresh_token": self.refresh_token,
            "expires_in": int(ttl) if float(ttl).is_integer() else ttl,
            "token_type": "Bearer",
            "scope": " ".join(sorted(SCOPES)),
        }
        return _json_response(200, json.dumps(payload))

    def _control(self, method: str, path: str, body: bytes) -> _Response:
        if path == "/_emulator/config":
            if method == "POST":
                try:
                    changes = json.loads(body or b"{}")
                    if not isinstance(changes, dict):
                        raise ValueError("config body must be a JSON object")
                    self.configure(**changes)
                except ValueError as exc:
                    return _json_response(400, json.dumps(error_body("invalid_request", str(exc))))
            return _json_response(200, json.dumps(self.config()))
        if path == "/_emulator/stats":
            return _json_response(200, json.dumps(self.stats()))
        if path == "/_emulator/stats/reset" and method == "POST":
            self.reset_stats()
            return _json_response(200, json.dumps(self.stats()))
        if path == "/_emulator/expire-tokens" and method == "POST":
            self.expire_tokens()
            return _json_response(200, "{}")
        if path == "/_emulator/dump":
            text = "".join(line + "\n" for line in self.state.dump_lines())
            return _Response(200, text.encode("utf-8"), {"Content-Type": "application/x-ndjson"})
        if path == "/_emulator/health":
            return _json_response(200, json.dumps({"ok": True, "contacts": len(self.state)}))
        return _json_response(404, json.dumps(error_body("not_found", f"no such control endpoint {path}")))

    # --- webhooks -----------------------------------------------------------------------------------

    def _on_event(self, event_type: str, before: str | None, after: str | None, at: datetime) -> None:
        url, secret, sender = self.webhook_url, self.webhook_secret, self._sender
        if not url or not secret or sender is None:
            return
        # The contacts are already wire JSON; splice them in rather than re-serializing.
        body = (
            '{"id":"evt_'
            + secrets.token_hex(12)
            + '","type":"'
            + event_type
            + '","createdAt":"'
            + format_timestamp(at)
            + '","data":{"before":'
            + (before or "null")
            + ',"after":'
            + (after or "null")
            + "}}"
        )
        sender.enqueue(url, secret, body)


def _wrap(raw: str) -> str:
    return '{"data":' + raw + "}"


def _json_body(body: bytes) -> Any:
    if not body:
        raise EmulatorError(400, "invalid_request", "a JSON body is required")
    try:
        return json.loads(body)
    except ValueError:
        raise EmulatorError(400, "invalid_request", "body is not valid JSON") from None


def _route_name(method: str, path: str) -> str:
    if path in ("/v4/locations", "/v4/contacts"):
        return f"{method} {path}"
    if _CONTACT_RE.match(path):
        return f"{method} /v4/contacts/{{uid}}"
    if _RESTORE_RE.match(path):
        return f"{method} /v4/contacts/{{uid}}/restore"
    if _MERGE_RE.match(path):
        return f"{method} /v4/contacts/{{uid}}/merge"
    return f"{method} (unknown)"
