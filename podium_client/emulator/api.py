"""The `/v4` routes the emulator serves: Part 1 of the contract exactly, Part 2 behind its switches.

Each route names its scope and, where Podium documents a request body, the body is held to the
vendored OpenAPI request schema (unknown fields, patterns, required fields) before anything happens:
a violation answers 400 `invalid_request_values` naming the field. Responses are built from the
stored JSON: `{"data": ..., "metadata": {"url", ...}}`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from jsonschema.exceptions import ValidationError

from podium_client import openapi
from podium_client.emulator.capabilities import parse_merge_body
from podium_client.emulator.errors import EmulatorError, bad_request, invalid_values
from podium_client.emulator.shapes import dumps, parse_us
from podium_client.emulator.state import MAX_LIMIT

if TYPE_CHECKING:
    from openapi_schema_validator import OAS30Validator

    from podium_client.emulator.server import EmulatorServer

_UPDATED_AT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
_SEG = r"([^/]+)"


@dataclass
class Request:
    """One API request as the handlers see it."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes
    scopes: frozenset[str]
    params: tuple[str, ...] = ()
    route: Route | None = None
    data: Any = None

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None


@dataclass(frozen=True)
class Route:
    """One served operation."""

    method: str
    template: str
    handler: str
    scope: str | None = None
    write: bool = False
    capability: str | None = None
    pattern: re.Pattern[str] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        regex = "^" + re.sub(r"\{[^}]+\}", _SEG, self.template) + "$"
        object.__setattr__(self, "pattern", re.compile(regex))

    @property
    def name(self) -> str:
        return f"{self.method} {self.template}"


ROUTES = (
    Route("GET", "/v4/locations", "list_locations", "read_locations"),
    Route("GET", "/v4/locations/{uid}", "get_location", "read_locations"),
    Route("GET", "/v4/organizations/{uid}", "get_organization", "read_organizations"),
    Route("GET", "/v4/contacts", "list_contacts", "read_contacts"),
    Route("POST", "/v4/contacts", "create_contact", "write_contacts", True),
    Route("POST", "/v4/contacts/campaigns/opt_out", "opt_out", "write_contacts", True),
    Route("POST", "/v4/contacts/campaigns/opt_in", "opt_in", "write_contacts", True),
    Route("GET", "/v4/contacts/{identifier}", "get_contact", "read_contacts"),
    Route("PATCH", "/v4/contacts/{identifier}", "patch_contact", "write_contacts", True),
    Route("DELETE", "/v4/contacts/{identifier}", "delete_contact", "write_contacts", True),
    Route("POST", "/v4/contacts/{identifier}/tags/{uid}", "attach_tag", "write_contacts", True),
    Route("DELETE", "/v4/contacts/{identifier}/tags/{uid}", "detach_tag", "write_contacts", True),
    Route("POST", "/v4/contacts/{identifier}/attributes/{uid}", "add_attribute", "write_contacts", True),
    Route("PATCH", "/v4/contacts/{identifier}/attributes/{uid}", "update_attribute", "write_contacts", True),
    Route("DELETE", "/v4/contacts/{identifier}/attributes/{uid}", "remove_attribute", "write_contacts", True),
    Route("POST", "/v4/contacts/{uid}/merge", "merge", "write_contacts", True, "merge"),
    Route("POST", "/v4/contacts/{uid}/restore", "restore", "write_contacts", True, "restore"),
    Route("GET", "/v4/contact_tags", "list_tags", "read_contacts"),
    Route("POST", "/v4/contact_tags", "create_tag", "write_contacts", True),
    Route("GET", "/v4/contact_tags/{uid}", "get_tag", "read_contacts"),
    Route("PATCH", "/v4/contact_tags/{uid}", "update_tag", "write_contacts", True),
    Route("GET", "/v4/contact_attributes", "list_attribute_definitions", "read_contacts"),
    Route("POST", "/v4/contact_attributes", "create_attribute_definition", "write_contacts", True),
    Route("GET", "/v4/contact_attributes/{uid}", "get_attribute_definition", "read_contacts"),
    Route("PATCH", "/v4/contact_attributes/{uid}", "update_attribute_definition", "write_contacts", True),
    Route("DELETE", "/v4/contact_attributes/{uid}", "delete_attribute_definition", "write_contacts", True),
    # Podium documents no scope for webhooks beyond those of the event types subscribed to.
    Route("GET", "/v4/webhooks", "list_webhooks"),
    Route("POST", "/v4/webhooks", "create_webhook", None, True),
    Route("GET", "/v4/webhooks/{uid}", "get_webhook"),
    Route("PUT", "/v4/webhooks/{uid}", "update_webhook", None, True),
    Route("DELETE", "/v4/webhooks/{uid}", "delete_webhook", None, True),
)


def match(method: str, path: str, capabilities: frozenset[str]) -> tuple[Route | None, tuple[str, ...]]:
    """The served route for `METHOD path` and its path parameters (decoded), or (None, ())."""
    for route in ROUTES:
        if route.method != method or (route.capability and route.capability not in capabilities):
            continue
        m = route.pattern.match(path)
        if m:
            return route, tuple(unquote(g) for g in m.groups())
    return None, ()


def route_name(method: str, path: str, capabilities: frozenset[str]) -> str:
    """`GET /v4/contacts/{identifier}` for stats; `GET (unknown)` for anything not served."""
    route, _ = match(method, path, capabilities)
    return route.name if route else f"{method} (unknown)"


_VALIDATORS: dict[tuple[str, str], tuple[OAS30Validator, bool] | None] = {}


def _validator(route: Route) -> tuple[OAS30Validator, bool] | None:
    key = (route.method, route.template)
    if key not in _VALIDATORS:
        try:
            op = openapi.operation(route.method, route.template)
        except KeyError:
            _VALIDATORS[key] = None
        else:
            schema = openapi.request_schema(route.method, route.template)
            required = bool(op.get("requestBody", {}).get("required"))
            _VALIDATORS[key] = (openapi.validator(schema), required) if schema is not None else None
    return _VALIDATORS[key]


def _field_of(error: ValidationError) -> str:
    path = [str(p) for p in error.absolute_path]
    instance = error.instance
    if error.validator == "required" and isinstance(instance, dict):
        missing = [k for k in error.validator_value if k not in instance]
        path.extend(missing[:1])
    elif error.validator == "additionalProperties" and isinstance(instance, dict):
        documented = set(error.schema.get("properties", {}))
        path.extend(sorted(set(instance) - documented)[:1])
        return ".".join(path)
    return ".".join(path) or "body"


def parse_json(body: bytes) -> Any:
    """A request body as JSON; 400 bad_request when it is not."""
    try:
        return json.loads(body)
    except ValueError:
        raise bad_request("the body is not valid JSON") from None


def validated_body(req: Request) -> Any:
    """The request's JSON body held to the documented request schema (400 naming the field)."""
    assert req.route is not None
    checker = _validator(req.route)
    if not req.body.strip():
        if checker is not None and checker[1]:
            raise bad_request("a JSON body is required")
        data: Any = {}
    else:
        data = parse_json(req.body)
    if checker is not None:
        errors = sorted(
            checker[0].iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)), e.message)
        )
        if errors:
            error = errors[0]
            if error.validator == "additionalProperties":
                raise invalid_values(_field_of(error), "is not a documented field")
            raise invalid_values(_field_of(error), error.message)
    return data


class Api:
    """The handlers; each returns `(status, body bytes)`."""

    def __init__(self, server: EmulatorServer) -> None:
        self.server = server
        self.state = server.state

    def dispatch(self, req: Request) -> tuple[int, bytes]:
        assert req.route is not None
        if req.route.scope and req.route.scope not in req.scopes:
            raise EmulatorError(403, "unauthorized", f"this call needs the {req.route.scope} scope")
        handler: Callable[[Request], tuple[int, bytes]] = getattr(self, req.route.handler)
        return handler(req)

    # --- envelopes ------------------------------------------------------------------------------------

    def _url(self, req: Request) -> bytes:
        return dumps(self.server.url + req.path).encode()

    def _one(self, req: Request, payload: bytes | Mapping[str, Any], status: int = 200) -> tuple[int, bytes]:
        raw = payload if isinstance(payload, bytes) else dumps(payload).encode()
        return status, b'{"data":' + raw + b',"metadata":{"url":' + self._url(req) + b"}}"

    def _accepted(self, req: Request, identifier: str) -> tuple[int, bytes]:
        return self._one(req, {"identifier": identifier}, 202)

    def _many(
        self, req: Request, items: list[bytes], extra: Mapping[str, Any] | None = None
    ) -> tuple[int, bytes]:
        meta = b'{"url":' + self._url(req)
        for key, value in (extra or {}).items():
            meta += b',"' + key.encode() + b'":' + dumps(value).encode()
        return 200, b'{"data":[' + b",".join(items) + b'],"metadata":' + meta + b"}}"

    # --- paging parameters ------------------------------------------------------------------------------

    @staticmethod
    def _limit(req: Request) -> int | None:
        text = req.arg("limit")
        if text is None:
            return None
        try:
            limit = int(text)
        except ValueError:
            raise invalid_values("limit", "must be an integer") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise invalid_values("limit", f"must be between 1 and {MAX_LIMIT}")
        return limit

    # --- locations and the organization ----------------------------------------------------------------

    def list_locations(self, req: Request) -> tuple[int, bytes]:
        since = None
        text = req.arg("updatedAfter")
        if text is not None and req.arg("cursor") is None:
            try:
                since = parse_us(text)
            except ValueError:
                raise invalid_values("updatedAfter", "must be an ISO 8601 date-time with a zone") from None
        items, next_cursor, total = self.state.list_locations_page(self._limit(req), req.arg("cursor"), since)
        extra = {"nextCursor": next_cursor, "previousCursor": None, "totalItems": total}
        return self._many(req, [dumps(loc).encode() for loc in items], extra)

    def get_location(self, req: Request) -> tuple[int, bytes]:
        return self._one(req, self.state.location(req.params[0]))

    def get_organization(self, req: Request) -> tuple[int, bytes]:
        if req.params[0] != self.state.organization["uid"]:
            raise EmulatorError(404, "resource_not_found", "organization not found")
        return self._one(req, self.state.organization)

    # --- contacts -----------------------------------------------------------------------------------------

    def list_contacts(self, req: Request) -> tuple[int, bytes]:
        since = None
        text = req.arg("updated_at")
        if text is not None and req.arg("cursor") is None:
            if not _UPDATED_AT.match(text):
                raise invalid_values("updated_at", "must be YYYY-MM-DDTHH:MM:SSZ")
            try:
                since = parse_us(text)
            except ValueError:
                raise invalid_values("updated_at", "is not a valid date and time") from None
        include = (req.arg("includeDeleted") or "false").lower() == "true"
        items, next_cursor = self.state.list_contacts_page(
            self._limit(req), req.arg("cursor"), since, include
        )
        return self._many(req, items, {"nextCursor": next_cursor})

    def get_contact(self, req: Request) -> tuple[int, bytes]:
        return self._one(req, self.state.get_json(req.params[0]))

    def create_contact(self, req: Request) -> tuple[int, bytes]:
        return self._accepted(req, self.state.create(validated_body(req)))

    def patch_contact(self, req: Request) -> tuple[int, bytes]:
        return self._accepted(req, self.state.patch(req.params[0], validated_body(req)))

    def delete_contact(self, req: Request) -> tuple[int, bytes]:
        identifier = self.state.delete(req.params[0])
        self.server._stats.add("deletes")
        return self._accepted(req, identifier)

    def attach_tag(self, req: Request) -> tuple[int, bytes]:
        return self._accepted(req, self.state.attach_tag(*req.params))

    def detach_tag(self, req: Request) -> tuple[int, bytes]:
        return self._accepted(req, self.state.detach_tag(*req.params))

    def add_attribute(self, req: Request) -> tuple[int, bytes]:
        body = validated_body(req)
        identifier, uid = req.params
        return self._accepted(req, self.state.set_attribute(identifier, uid, body["value"], must_exist=False))

    def update_attribute(self, req: Request) -> tuple[int, bytes]:
        body = validated_body(req)
        identifier, uid = req.params
        return self._accepted(req, self.state.set_attribute(identifier, uid, body["value"], must_exist=True))

    def remove_attribute(self, req: Request) -> tuple[int, bytes]:
        return self._accepted(req, self.state.remove_attribute(*req.params))

    def opt_out(self, req: Request) -> tuple[int, bytes]:
        body = validated_body(req)
        return self._one(req, self.state.opt_out(body["channel"]["identifier"]))

    def opt_in(self, req: Request) -> tuple[int, bytes]:
        body = validated_body(req)
        return self._one(req, self.state.opt_in(body["channel"]["identifier"], body["locationUid"]))

    # --- Part 2 capabilities ----------------------------------------------------------------------------------

    def merge(self, req: Request) -> tuple[int, bytes]:
        primary = req.params[0]
        dups = parse_merge_body(parse_json(req.body) if req.body.strip() else None)
        server = self.server
        block = server.block_cross_location
        self.state.merge_begin(primary, dups, block)
        try:
            server.sleep_latency()
        except BaseException:
            self.state.merge_abort(primary, dups)
            raise
        raw = self.state.merge_commit(primary, dups, block)
        server._stats.add("merges")
        return self._one(req, raw)

    def restore(self, req: Request) -> tuple[int, bytes]:
        raw = self.state.restore(req.params[0])
        self.server._stats.add("restores")
        return self._one(req, raw)

    # --- tags and attribute definitions -------------------------------------------------------------------------

    def list_tags(self, req: Request) -> tuple[int, bytes]:
        with self.state.lock:
            tags = list(self.state.catalog.tags.values())
            return self._many(req, [dumps(t).encode() for t in tags])

    def create_tag(self, req: Request) -> tuple[int, bytes]:
        body = validated_body(req)
        with self.state.lock:
            return self._one(req, self.state.catalog.create_tag(body))

    def get_tag(self, req: Request) -> tuple[int, bytes]:
        with self.state.lock:
            return self._one(req, self.state.catalog.tag(req.params[0]))

    def update_tag(self, req: Request) -> tuple[int, bytes]:
        body = validated_body(req)
        with self.state.lock:
            return self._one(req, self.state.catalog.update_tag(req.params[0], body))

    def list_attribute_definitions(self, req: Request) -> tuple[int, bytes]:
        with self.state.lock:
            items = list(self.state.catalog.attributes.values())
            return self._many(req, [dumps(a).encode() for a in items])

    def create_attribute_definition(self, req: Request) -> tuple[int, bytes]:
        body = validated_body(req)
        with self.state.lock:
            return self._one(req, self.state.catalog.create_attribute(body))

    def get_attribute_definition(self, req: Request) -> tuple[int, bytes]:
        with self.state.lock:
            return self._one(req, self.state.catalog.attribute(req.params[0]))

    def update_attribute_definition(self, req: Request) -> tuple[int, bytes]:
        body = validated_body(req)
        with self.state.lock:
            return self._one(req, self.state.catalog.update_attribute(req.params[0], body))

    def delete_attribute_definition(self, req: Request) -> tuple[int, bytes]:
        with self.state.lock:
            return self._one(req, self.state.catalog.delete_attribute(req.params[0]))

    # --- webhooks -----------------------------------------------------------------------------------------------

    def _event_scopes(self, req: Request, event_types: list[str]) -> None:
        if any(t.startswith("contact.") for t in event_types) and "read_contacts" not in req.scopes:
            raise EmulatorError(403, "unauthorized", "contact events need the read_contacts scope")

    def list_webhooks(self, req: Request) -> tuple[int, bytes]:
        return self._many(req, [dumps(w).encode() for w in self.server.hub.webhooks()])

    def create_webhook(self, req: Request) -> tuple[int, bytes]:
        body = validated_body(req)
        self._event_scopes(req, body["eventTypes"])
        return self._one(req, self.server.hub.create(body))

    def get_webhook(self, req: Request) -> tuple[int, bytes]:
        return self._one(req, self.server.hub.get(req.params[0]))

    def update_webhook(self, req: Request) -> tuple[int, bytes]:
        body = validated_body(req)
        self._event_scopes(req, body.get("eventTypes", []))
        return self._one(req, self.server.hub.update(req.params[0], body))

    def delete_webhook(self, req: Request) -> tuple[int, bytes]:
        return self._one(req, self.server.hub.delete(req.params[0]))
