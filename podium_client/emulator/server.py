"""A real HTTP server speaking Podium's published v4 API over an EmulatorState, with switchable faults.

Fault injection is configuration, not patching: `fail_rate`, `rate_limit`, `latency_ms`,
`drop_after_commit_rate` and `block_cross_location` can be set at construction, changed as
attributes at runtime, or steered over HTTP (`POST /_emulator/config`) when the emulator runs in
another process. `GET /_emulator/stats` reports what happened (see control.py for the control API).
"""

from __future__ import annotations

import collections
import json
import math
import random
import secrets
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from podium_client.emulator.api import Api, Request, match, route_name
from podium_client.emulator.control import handle_control
from podium_client.emulator.delivery import CONTACT_EVENTS, WebhookHub
from podium_client.emulator.errors import EmulatorError, bad_request, invalid_values
from podium_client.emulator.shapes import dumps
from podium_client.emulator.state import EmulatorState, parse_capabilities
from podium_client.emulator.transport import Headers, HTTPServer, Response, error_response, json_response

#: Settings that may be changed at runtime (attributes, `configure()`, `POST /_emulator/config`).
CONFIG_KEYS = (
    "token", "scopes", "capabilities", "fail_rate", "rate_limit", "rate_window_s", "latency_ms",
    "drop_after_commit_rate", "block_cross_location", "webhook_url", "webhook_secret", "token_ttl",
    "fault_retry_after", "fault_statuses", "fail_next", "seed", "client_id", "client_secret",
    "refresh_token", "cursor_ttl_s", "webhook_retry_base_s", "webhook_max_attempts",
)  # fmt: skip

#: Every token's scopes unless configured otherwise (webhook routes need only their events' scopes).
DEFAULT_SCOPES = ("read_contacts", "write_contacts", "read_locations", "read_organizations")
#: Podium's access tokens last about 10 hours.
DEFAULT_TOKEN_TTL = 36_000.0
_MERGE_ROUTE = "POST /v4/contacts/{uid}/merge"


class _Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, Any] = {}
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._data = {
                "requests": 0, "by_status": collections.Counter(), "by_route": collections.Counter(),
                "podium_versions": collections.Counter(), "writes": 0, "deletes": 0, "merges": 0,
                "restores": 0, "purge_attempts": 0, "drops": 0, "faults_injected": 0, "rate_limited": 0,
                "token_refreshes": 0, "webhooks_sent": 0, "webhooks_failed": 0, "webhook_attempts_failed": 0,
                "webhooks_disabled": 0, "peak_window_requests": 0,
            }  # fmt: skip

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._data[key] += n

    def peak(self, key: str, n: int) -> None:
        with self._lock:
            self._data[key] = max(self._data[key], n)

    def count(self, key: str, label: str) -> None:
        with self._lock:
            self._data[key][label] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {k: dict(v) if isinstance(v, collections.Counter) else v for k, v in self._data.items()}


class EmulatorServer:
    """The Podium emulator: an HTTP server over an EmulatorState.

    `start()` serves from a background thread; `url` is then the base URL to give a client. The static
    `token` and every OAuth token carry `scopes`. `POST /oauth/token` (JSON body) issues tokens living
    `token_ttl` seconds for refresh token `refresh_token` of client `client_id`/`client_secret`.
    `capabilities` (a subset of merge, restore, soft-delete; default none) switches on Part 2.

    Faults: `fail_rate` answers that share of API requests with one of `fault_statuses` before doing
    anything; `fail_next = n` fails exactly the next n; `rate_limit` allows that many requests per
    minute over a sliding window of `rate_window_s` seconds, then 429 `rate_limit` with Retry-After;
    `latency_ms` delays every API request (a merge holds its contacts in flight meanwhile);
    `drop_after_commit_rate` applies that share of writes and then resets the connection unanswered;
    `block_cross_location` answers 422 to cross-location merges. `seed` makes faults repeatable.
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
        capabilities: str | Iterable[str] | None = None,
        scopes: Iterable[str] = DEFAULT_SCOPES,
        rate_window_s: float = 60.0,
        fault_retry_after: float = 1.0,
        fault_statuses: Iterable[int] = (500, 502, 503, 429),
        fail_next: int = 0,
        client_id: str = "dev-client",
        client_secret: str = "dev-secret",
        refresh_token: str = "dev-refresh",
        cursor_ttl_s: float | None = 3600.0,
        webhook_retry_base_s: float | None = None,
        webhook_max_attempts: int | None = None,
    ) -> None:
        self.state = state if state is not None else EmulatorState(seed)
        if capabilities is not None:
            self.state.capabilities = capabilities
        self.state.cursor_ttl_s = cursor_ttl_s
        self.host = host
        self.port = port
        self.token = token
        self.scopes = tuple(scopes)
        self.fail_rate = fail_rate
        self.rate_limit = rate_limit
        self.rate_window_s = rate_window_s
        self.latency_ms = latency_ms
        self.drop_after_commit_rate = drop_after_commit_rate
        self.block_cross_location = block_cross_location
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
        # Every API request's arrival within the last `rate_window_s`, refused ones too (the peak stat).
        self._arrivals: collections.deque[float] = collections.deque()
        self._issued: dict[str, tuple[float, frozenset[str]]] = {}
        self._issued_lock = threading.Lock()
        self._stats = _Stats()
        self.hub = WebhookHub(
            lambda: self.state.organization["uid"],
            lambda uid: uid in {loc["uid"] for loc in self.state.locations()},
            lambda: str(uuid.uuid4()),
            self._stats.add,
        )
        if webhook_retry_base_s is not None:
            self.hub.retry_base_s = webhook_retry_base_s
        if webhook_max_attempts is not None:
            self.hub.max_attempts = webhook_max_attempts
        self._webhook_url = webhook_url
        self._webhook_secret = webhook_secret
        self._shortcut_uid: str | None = None
        self.api = Api(self)
        self._httpd: HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- settings living elsewhere ---------------------------------------------------------------------

    @property
    def capabilities(self) -> frozenset[str]:
        """The Part 2 capabilities served (the state's)."""
        return self.state.capabilities

    @capabilities.setter
    def capabilities(self, value: str | Iterable[str] | None) -> None:
        self.state.capabilities = value

    @property
    def cursor_ttl_s(self) -> float | None:
        """Seconds a cursor stays valid (None: forever)."""
        return self.state.cursor_ttl_s

    @cursor_ttl_s.setter
    def cursor_ttl_s(self, value: float | None) -> None:
        self.state.cursor_ttl_s = value

    @property
    def webhook_retry_base_s(self) -> float:
        """Delay before the first redelivery; it doubles with every failure."""
        return self.hub.retry_base_s

    @webhook_retry_base_s.setter
    def webhook_retry_base_s(self, value: float) -> None:
        self.hub.retry_base_s = float(value)

    @property
    def webhook_max_attempts(self) -> int:
        """Delivery attempts before a webhook is disabled (Podium: about 15)."""
        return self.hub.max_attempts

    @webhook_max_attempts.setter
    def webhook_max_attempts(self, value: int) -> None:
        self.hub.max_attempts = int(value)

    @property
    def webhook_url(self) -> str | None:
        """The shortcut organization webhook (all contact events), registered while running."""
        return self._webhook_url

    @webhook_url.setter
    def webhook_url(self, value: str | None) -> None:
        self._webhook_url = value
        self._register_shortcut()

    @property
    def webhook_secret(self) -> str | None:
        """The shortcut webhook's secret."""
        return self._webhook_secret

    @webhook_secret.setter
    def webhook_secret(self, value: str | None) -> None:
        self._webhook_secret = value
        self._register_shortcut()

    def _register_shortcut(self) -> None:
        if self._httpd is None:
            return
        if self._shortcut_uid is not None:
            try:
                self.hub.delete(self._shortcut_uid)
            except EmulatorError:
                pass  # already deleted through the API
            self._shortcut_uid = None
        if self._webhook_url:
            body = {
                "url": self._webhook_url, "eventTypes": list(CONTACT_EVENTS), "secret": self._webhook_secret,
                "organizationUid": self.state.organization["uid"],
            }  # fmt: skip
            self._shortcut_uid = self.hub.create(body)["uid"]

    # --- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> EmulatorServer:
        """Bind and serve from a background thread; returns self."""
        if self._httpd is not None:
            raise RuntimeError("emulator already started")
        self._httpd = HTTPServer((self.host, self.port), self)
        self.port = self._httpd.server_address[1]
        self.hub.start()
        self.state.add_listener(self._on_event)
        self._register_shortcut()
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="podium-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, hang up on open connections, stop delivering webhooks."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self.state.remove_listener(self._on_event)
        httpd.shutdown()
        httpd.close_open_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self.hub.stop()

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

    # --- control ---------------------------------------------------------------------------------------

    def configure(self, **changes: Any) -> None:
        """Change settings at runtime (names of CONFIG_KEYS); ValueError on unknown names or values."""
        unknown = set(changes) - set(CONFIG_KEYS)
        if unknown:
            raise ValueError(f"unknown emulator settings: {sorted(unknown)}")
        if "capabilities" in changes:
            parse_capabilities(changes["capabilities"])
        for key, value in changes.items():
            setattr(self, key, tuple(value) if key in ("fault_statuses", "scopes") else value)
        if "seed" in changes:
            with self._rng_lock:
                self._rng = random.Random(changes["seed"])

    def config(self) -> dict[str, Any]:
        """The current settings."""
        out = {key: getattr(self, key) for key in CONFIG_KEYS}
        out["capabilities"] = sorted(self.capabilities)
        return out

    def stats(self) -> dict[str, Any]:
        """Counters: requests, by_route, by_status, writes, deletes, purge_attempts, ambiguous uses, ..."""
        snap = self._stats.snapshot()
        with self.state.lock:
            snap["ambiguous_identifier_uses"] = len(self.state.ambiguous_uses)
            snap["ambiguous_identifiers"] = list(self.state.ambiguous_uses)
        return snap

    def reset_stats(self) -> None:
        """Zero the counters."""
        self._stats.reset()
        with self._window_lock:
            self._arrivals.clear()
        with self.state.lock:
            self.state.ambiguous_uses.clear()

    def expire_tokens(self) -> None:
        """Make every OAuth-issued token expired (its next use answers 401 unauthenticated)."""
        with self._issued_lock:
            for tok, (_, scopes) in list(self._issued.items()):
                self._issued[tok] = (0.0, scopes)

    def flush_webhooks(self, timeout: float = 5.0) -> bool:
        """Wait until no enabled webhook has a delivery pending; False on timeout."""
        return self.hub.flush(timeout)

    def sleep_latency(self) -> None:
        """Wait the configured latency (the merge route calls it while holding its reservation)."""
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000)

    def _on_event(
        self, event: str, before: bytes | None, after: bytes | None, at_us: int, locations: tuple[str, ...]
    ) -> None:
        self.hub.on_event(event, before, after, at_us, locations)

    # --- request handling --------------------------------------------------------------------------------

    def _chance(self, rate: float) -> bool:
        if rate <= 0:
            return False
        with self._rng_lock:
            return self._rng.random() < rate

    def handle(self, method: str, target: str, headers: Headers, body: bytes) -> Response:
        """Answer one request (called from the handler threads)."""
        parts = urlsplit(target)
        query = parse_qs(parts.query, keep_blank_values=True)
        if parts.path.startswith("/_emulator/"):
            resp = handle_control(self, method, parts.path, query, body)
        elif parts.path == "/oauth/token":
            resp = self._oauth(method, body)
        else:
            resp = self._api(method, parts.path, query, headers, body)
        resp.headers["X-Request-Id"] = "req_" + secrets.token_hex(8)
        return resp

    def _api(
        self, method: str, path: str, query: dict[str, list[str]], headers: Headers, body: bytes
    ) -> Response:
        stats = self._stats
        stats.add("requests")
        stats.peak("peak_window_requests", self._arrived())
        route = route_name(method, path, self.capabilities)
        stats.count("by_route", route)
        stats.count("podium_versions", headers.get("podium-version") or "(none)")
        hard = query.get("hard", [""])[-1].lower() in ("true", "1")
        purge = "/purge" in path or (method == "DELETE" and hard)
        if purge:
            stats.add("purge_attempts")
        resp = self._api_inner(method, path, query, headers, body, route, purge)
        stats.count("by_status", "dropped" if resp.drop else str(resp.status))
        if resp.drop:
            stats.add("drops")
        return resp

    def _api_inner(
        self, method: str, path: str, query: dict[str, list[str]], headers: Headers, body: bytes, route: str,
        purge: bool,
    ) -> Response:  # fmt: skip
        if route != _MERGE_ROUTE:
            self.sleep_latency()
        limited = self._rate_limited()
        if limited is not None:
            self._stats.add("rate_limited")
            err = EmulatorError(429, "rate_limit", "rate limit exceeded: 300 requests per minute")
            return error_response(err, {"Retry-After": _format_seconds(limited)})
        if self._take_fault():
            self._stats.add("faults_injected")
            return self._injected_fault()
        try:
            scopes = self._authenticate(headers)
            if purge:
                raise EmulatorError(403, "unauthorized", "purging contacts is not part of Podium's API")
            served, params = match(method, path, self.capabilities)
            if served is None:
                raise EmulatorError(404, "route_not_found", f"no route {method} {path}")
            req = Request(method, path, query, body, scopes, params, served)
            status, payload = self.api.dispatch(req)
        except EmulatorError as err:
            return error_response(err)
        if served.write:
            self._stats.add("writes")
            if self._chance(self.drop_after_commit_rate):
                return Response(drop=True)
        return json_response(status, payload)

    def _arrived(self) -> int:
        """Count this arrival; returns how many API requests arrived within the last rate window."""
        now = time.monotonic()
        with self._window_lock:
            self._arrivals.append(now)
            while self._arrivals and self._arrivals[0] <= now - float(self.rate_window_s):
                self._arrivals.popleft()
            return len(self._arrivals)

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

    def _injected_fault(self) -> Response:
        with self._rng_lock:
            status = self._rng.choice(self.fault_statuses or (500,))
        if status == 429:
            err = EmulatorError(429, "rate_limit", "rate limit exceeded (injected)")
            return error_response(err, {"Retry-After": _format_seconds(self.fault_retry_after)})
        if status == 502:
            # What a gateway in front of an API really sends: HTML, not Podium's JSON.
            return Response(
                502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", {"Content-Type": "text/html"}
            )
        return error_response(
            EmulatorError(status, "internal_server_error", "transient server error (injected)")
        )

    def _authenticate(self, headers: Headers) -> frozenset[str]:
        scheme, _, tok = (headers.get("Authorization") or "").partition(" ")
        tok = tok.strip()
        if scheme.lower() != "bearer" or not tok:
            raise EmulatorError(401, "unauthenticated", "missing bearer token")
        if tok == self.token:
            return frozenset(self.scopes)
        with self._issued_lock:
            issued = self._issued.get(tok)
        if issued is None:
            raise EmulatorError(401, "unauthenticated", "unknown access token")
        expires, scopes = issued
        if time.monotonic() >= expires:
            raise EmulatorError(401, "unauthenticated", "the access token has expired")
        return scopes

    def _oauth(self, method: str, body: bytes) -> Response:
        try:
            if method != "POST":
                raise EmulatorError(404, "route_not_found", f"no route {method} /oauth/token")
            try:
                form = json.loads(body or b"null")
            except ValueError:
                raise bad_request("the token request body must be JSON") from None
            if not isinstance(form, dict):
                raise bad_request("the token request body must be a JSON object")
            if form.get("grant_type") != "refresh_token":
                raise invalid_values("grant_type", 'must be "refresh_token"')
            if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
                raise EmulatorError(401, "unauthenticated", "unknown client or wrong client secret")
            if form.get("refresh_token") != self.refresh_token:
                raise EmulatorError(401, "unauthenticated", "invalid refresh token")
        except EmulatorError as err:
            return error_response(err)
        ttl = DEFAULT_TOKEN_TTL if self.token_ttl is None else float(self.token_ttl)
        access = "tok_" + secrets.token_hex(16)
        with self._issued_lock:
            self._issued[access] = (time.monotonic() + ttl, frozenset(self.scopes))
        self._stats.add("token_refreshes")
        payload = {
            "access_token": access,
            "refresh_token": self.refresh_token,
            "expires_in": int(ttl) if float(ttl).is_integer() else ttl,
        }
        return json_response(200, dumps(payload))


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:.3f}"
