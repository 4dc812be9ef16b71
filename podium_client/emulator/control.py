"""The emulator's control API under `/_emulator/` (no auth; never part of Podium's API).

| call | does |
|---|---|
| `GET` / `POST /_emulator/config` | read / change settings (`CONFIG_KEYS`) |
| `GET /_emulator/stats`, `POST /_emulator/stats/reset` | counters (requests by route and status, writes, deletes, ambiguous identifier uses, purge attempts, rate limited, faults, webhooks, podium-version values seen, `peak_window_requests`: the most API requests that arrived within one rate window, refused ones included) |
| `POST /_emulator/expire-tokens` | every OAuth token expires |
| `POST /_emulator/cursors/invalidate` | every cursor handed out is stale |
| `POST /_emulator/contacts` | add a v4 contact as is (any consent, timestamps, `deletedAt` ...) |
| `GET /_emulator/contacts/{uid}` | a contact by uid, hidden ones included |
| `POST /_emulator/contacts/{uid}/edit` | an edit made in Podium itself (see edits.py) |
| `GET /_emulator/deleted` | every contact a DELETE removed or hid, with its full last JSON |
| `POST /_emulator/webhooks/flush?timeout=5` | wait for pending webhook deliveries |
| `GET /_emulator/dump` | the state as a v4 NDJSON export |
| `GET /_emulator/health` | `{"ok": true, "contacts": n}` |
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from podium_client.emulator.errors import EmulatorError, error_body
from podium_client.emulator.shapes import dumps
from podium_client.emulator.transport import Response, error_response, json_response

if TYPE_CHECKING:
    from podium_client.emulator.server import EmulatorServer

_CONTACT = re.compile(r"^/_emulator/contacts/([^/]+)$")
_EDIT = re.compile(r"^/_emulator/contacts/([^/]+)/edit$")


def _json(body: bytes) -> Any:
    try:
        return json.loads(body or b"{}")
    except ValueError:
        raise ValueError("the body is not valid JSON") from None


def handle_control(
    server: EmulatorServer, method: str, path: str, query: dict[str, list[str]], body: bytes
) -> Response:
    """Answer one control request; a bad request is 400 with Podium's envelope."""
    try:
        return _route(server, method, path, query, body)
    except EmulatorError as err:
        return error_response(err)
    except (ValueError, TypeError) as exc:
        return json_response(400, dumps(error_body("invalid_request_values", str(exc))))
    except KeyError as exc:
        return json_response(404, dumps(error_body("resource_not_found", f"{exc.args[0]} not found")))


def _route(
    server: EmulatorServer, method: str, path: str, query: dict[str, list[str]], body: bytes
) -> Response:
    state = server.state
    if path == "/_emulator/config":
        if method == "POST":
            changes = _json(body)
            if not isinstance(changes, dict):
                raise ValueError("the config body must be a JSON object")
            server.configure(**changes)
        return json_response(200, dumps(server.config()))
    if path == "/_emulator/stats":
        return json_response(200, dumps(server.stats()))
    if method == "POST" and path == "/_emulator/stats/reset":
        server.reset_stats()
        return json_response(200, dumps(server.stats()))
    if method == "POST" and path == "/_emulator/expire-tokens":
        server.expire_tokens()
        return json_response(200, "{}")
    if method == "POST" and path == "/_emulator/cursors/invalidate":
        state.invalidate_cursors()
        return json_response(200, dumps({"cursorEpoch": state.cursor_epoch}))
    if method == "POST" and path == "/_emulator/contacts":
        return json_response(201, dumps({"data": state.add_contact(_json(body))}))
    if method == "GET" and path == "/_emulator/deleted":
        return json_response(200, dumps({"data": state.deleted()}))
    if method == "POST" and path == "/_emulator/webhooks/flush":
        timeout = float(query.get("timeout", ["5"])[-1])
        return json_response(200, dumps({"flushed": server.flush_webhooks(timeout)}))
    if method == "GET" and path == "/_emulator/dump":
        text = "".join(line + "\n" for line in state.dump_lines())
        return Response(200, text.encode("utf-8"), {"Content-Type": "application/x-ndjson"})
    if path == "/_emulator/health":
        return json_response(200, dumps({"ok": True, "contacts": len(state)}))
    m = _EDIT.match(path)
    if m and method == "POST":
        return json_response(200, dumps({"data": state.podium_edit(unquote(m.group(1)), _json(body))}))
    m = _CONTACT.match(path)
    if m and method == "GET":
        return json_response(200, dumps({"data": state.get(unquote(m.group(1)))}))
    raise EmulatorError(404, "route_not_found", f"no control route {method} {path}")
