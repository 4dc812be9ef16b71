"""The tenant probe: tells a deployer, before anything else runs, whether a Podium tenant will work.

Read-only. Every call the probe makes either reads, or is built so that it cannot change anything even
on a tenant that accepted it. What it does, in order:

* **token and scopes** — one read per scope-guarded area: ``GET /v4/locations`` (``read_locations``),
  ``GET /v4/contacts``, ``/v4/contact_tags``, ``/v4/contact_attributes`` (``read_contacts``) and
  ``GET /v4/webhooks``. The write scope is checked with a *refused write*: ``PATCH`` of an email
  identifier no contact can hold (a random local part at the reserved ``.invalid`` domain) with a body
  that breaks the documented request schema (``phoneNumber`` not in E.164). A tenant without the scope
  answers 403; one with it answers 400 (the body) or 404 (nobody) — and there is nobody to change.
* **locations** — every page; each location read as the product reads it, and one without an ISO
  ``addressDetails.country`` reported (the product asks an admin for its region).
* **contacts** — the first pages (``limit=100``), as the product reads them: a contact the client cannot
  read would be set aside by every scan.
* **schemas** — every object held to the vendored OpenAPI documents with the strict rules of the schema
  test (every documented field present, nothing undocumented); deviations the client tolerates are
  warnings, objects it cannot read are failures.
* **capabilities (Part 2)**, without changing anything:

  - ``merge``: ``POST /v4/contacts/{random uid}/merge`` with ``{"duplicateUids": []}`` — no such
    primary, nothing to merge. ``404 route_not_found`` means no merge route; a 400 (the empty list) or a
    ``404 resource_not_found`` (the unknown primary) means the route exists.
  - ``restore``: ``POST /v4/contacts/{random uid}/restore`` — no such contact to un-hide. Read the
    same way.
  - ``soft-delete``: ``GET /v4/contacts?includeDeleted=true``. A listed contact with ``deletedAt`` or
    ``mergedIntoUid`` set proves it; contacts without those fields disprove it; fields present but
    never set (no hidden contact in the pages read) leave it unknown.

  Each result is compared with the deployment's declared ``PODIUM_CAPABILITIES``: declared but absent
  stops the product (its calls would fail); declared but unconfirmed, or present but undeclared, is a
  warning.
* **incremental listing** — ``GET /v4/contacts?updated_at=<tomorrow>`` must list nothing, else every
  scheduled scan reads the whole organization.
* **latency and rate budget** — p50/p95 of the HTTP exchanges made, any rate-limit headers seen, refusals
  for pace, and the deployment's budget against Podium's published 300 requests/minute.

The probe uses the product's own client (pacing, retries, OAuth refresh, ``podium-version``), reaches
its raw answers through the client's one request method and times each HTTP exchange with a response
hook on the client's session, so it sees exactly what the product would. Nothing here imports Django;
``manage.py podium_probe`` gathers the settings and prints the report.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import requests

from podium_client import types as wire
from podium_client.client import PodiumClient
from podium_client.errors import (
    APIConnectionError,
    AuthenticationError,
    MalformedResponse,
    NotFoundError,
    PermissionDeniedError,
    PodiumError,
)
from podium_client.probe_report import FAIL, INFO, OK, WARN, Capability, Check, Exchange, ProbeReport
from podium_client.probe_schema import schema_deviations
from podium_client.types import AttributeDefinition, Location, Webhook

PRESENT, ABSENT, UNKNOWN = "present", "absent", "unknown"
#: Podium's published budget: "most routes are limited to 300 requests per minute".
PUBLISHED_PER_MINUTE = 300
#: Locations are few; a tenant paging beyond this is looping.
_MAX_LOCATION_PAGES = 500

CAPABILITY_METHODS = {
    "merge": 'POST /v4/contacts/{random uid}/merge {"duplicateUids": []}: no such primary and nothing to merge; '
    "404 route_not_found = absent, 400 or 404 resource_not_found = present",
    "restore": "POST /v4/contacts/{random uid}/restore: no such contact to un-hide; "
    "404 route_not_found = absent, 404 resource_not_found or 400 = present",
    "soft-delete": "GET /v4/contacts?includeDeleted=true: a contact listed with deletedAt/mergedIntoUid set = present, "
    "contacts without those fields = absent, fields never set = unknown",
}


class _Stop(Exception):
    """Internal: nothing further can be learned (the tenant is unreachable or refuses the token)."""


@dataclass(frozen=True)
class _Area:
    name: str
    scope: str | None
    path: str
    params: Mapping[str, str | int]
    required: bool = True


_READ_AREAS = (
    _Area("locations", "read_locations", "/v4/locations", {"limit": 100}),
    _Area("contacts", "read_contacts", "/v4/contacts", {"limit": 100}),
    _Area("tags", "read_contacts", "/v4/contact_tags", {}),
    _Area("attributes", "read_contacts", "/v4/contact_attributes", {}),
    # The product registers no webhook yet; a refusal is worth knowing, not a stop.
    _Area("webhooks", None, "/v4/webhooks", {}, required=False),
)
_REQUIRED_SCOPES = ("read_locations", "read_contacts", "write_contacts")


class TenantProbe:
    """Runs the probe with a configured client (see the module docstring); ``run()`` returns the report.

    ``declared_capabilities`` and ``declared_scopes`` are the deployment's settings, compared with what
    the tenant answers; ``budget_per_minute`` is the product's request budget; ``contact_pages`` how many
    pages of 100 contacts to read; ``region_overrides`` the regions admins already set per location uid,
    and ``default_region`` the deployment's region for locations with none.
    """

    def __init__(
        self,
        client: PodiumClient,
        *,
        api_version: str,
        auth: str,
        declared_capabilities: Collection[str] = (),
        declared_scopes: Collection[str] = (),
        budget_per_minute: int | None = None,
        contact_pages: int = 3,
        region_overrides: Mapping[str, str] | None = None,
        default_region: str | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if contact_pages < 1:
            raise ValueError("contact_pages must be at least 1")
        self.client = client
        self.declared_capabilities = frozenset(declared_capabilities)
        self.declared_scopes = tuple(declared_scopes)
        self.budget_per_minute = budget_per_minute
        self.contact_pages = contact_pages
        self.region_overrides = dict(region_overrides or {})
        self.default_region = default_region
        self._now = now
        self.report = ProbeReport(client.base_url, api_version, auth)
        self.exchanges: list[Exchange] = []
        self._rate_headers: dict[str, str] = {}
        # Raw answers kept for the schema check: (method, documented path, body).
        self._bodies: list[tuple[str, str, Any]] = []
        self._area_bodies: dict[str, Any] = {}

    # --- running ---------------------------------------------------------------------------------------

    def run(self) -> ProbeReport:
        """Probe the tenant once; never raises for what the tenant answers."""
        started = time.monotonic()
        session: requests.Session = self.client._session
        session.hooks.setdefault("response", []).append(self._on_response)
        try:
            self._areas()
            self._locations()
            self._contacts()
            self._catalogs()
            self._capabilities()
            self._incremental()
            self._schemas()
        except _Stop:
            pass
        finally:
            session.hooks["response"].remove(self._on_response)
        if self.exchanges:
            self._latency()
            self._rate_limit()
        self.report.seconds = round(time.monotonic() - started, 2)
        return self.report

    def _add(self, name: str, status: str, summary: str, details: list[str] | None = None) -> Check:
        check = Check(name, status, summary, details or [])
        self.report.checks.append(check)
        return check

    def _on_response(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        request = response.request
        url = request.url or ""
        path = urlsplit(url).path
        if not url.startswith(self.client.base_url + "/v4/"):
            return  # the OAuth token endpoint is not the API
        self.exchanges.append(
            Exchange(request.method or "", path, response.status_code, response.elapsed.total_seconds())
        )
        for name, value in response.headers.items():
            low = name.lower()
            if "ratelimit" in low or "rate-limit" in low or low == "retry-after":
                self._rate_headers[low] = value

    def _call(
        self, method: str, path: str, template: str, *, params: Mapping[str, str | int] | None = None,
        body: Any = None, repeatable: bool = True,
    ) -> Any:  # fmt: skip
        """One raw call through the product's client; unreachable or a refused token stops the probe."""
        try:
            answer, _ = self.client._request(method, path, f"{method} {template}", params=params, json_body=body,
                                             repeatable=repeatable)  # fmt: skip
        except APIConnectionError as exc:
            self._add("reachable", FAIL, f"{self.client.base_url} cannot be reached: {exc.message}")
            raise _Stop from exc
        except AuthenticationError as exc:
            if isinstance(exc, PermissionDeniedError):
                raise
            self._add("token", FAIL, f"refused: {_describe(exc)}",
                      ["check PODIUM_ACCESS_TOKEN, or the OAuth settings (PODIUM_TOKEN_URL, PODIUM_CLIENT_ID, "
                       "PODIUM_CLIENT_SECRET, PODIUM_REFRESH_TOKEN)"])  # fmt: skip
            raise _Stop from exc
        return answer

    # --- token and scopes ----------------------------------------------------------------------------------

    def _areas(self) -> None:
        answered: list[str] = []
        problems: list[str] = []
        failed = False
        for area in _READ_AREAS:
            try:
                self._area_bodies[area.name] = self._call("GET", area.path, area.path, params=area.params)
            except PermissionDeniedError as exc:
                self._token_accepted()  # a 403 is a known token without the scope
                scope = f" (needs {area.scope})" if area.scope else ""
                problems.append(f"{area.name}: GET {area.path} refused{scope}: {_describe(exc)}")
                failed = failed or area.required
                continue
            except MalformedResponse as exc:
                # Answered, but not in the contract's shape: not a scope matter, a row of its own.
                self._token_accepted()
                self._add(area.name, FAIL if area.required else WARN, f"GET {area.path} answered outside the "
                          f"contract: {exc.message}")  # fmt: skip
                answered.append(area.name)
                continue
            except PodiumError as exc:
                problems.append(f"{area.name}: GET {area.path} failed: {_describe(exc)}")
                failed = failed or area.required
                continue
            self._token_accepted()
            answered.append(area.name)
        write_status, write_problem = self._refused_write()
        if write_problem is None:
            answered.append("contact writes")
        else:
            problems.append(write_problem)
            failed = failed or write_status == FAIL
        declared = [s for s in _REQUIRED_SCOPES if s not in self.declared_scopes]
        details = list(problems)
        if declared:
            details.append(f"PODIUM_SCOPES does not list {', '.join(declared)}, which the product needs")
        summary = f"answered: {', '.join(answered) or 'nothing'}"
        if problems:
            summary += f"; refused or failed: {len(problems)}"
        status = FAIL if failed else WARN if details else OK
        if self.report.check("token") is None:
            self._add("token", INFO, "not confirmed: no area answered")
        self._add("scopes", status, summary, details)

    def _token_accepted(self) -> None:
        if self.report.check("token") is None:
            refreshed = self.client.token_refresh_count
            note = f", {refreshed} token refresh{'es' if refreshed != 1 else ''}" if refreshed else ""
            self.report.checks.insert(0, Check("token", OK, f"accepted ({self.report.auth}{note})"))

    def _refused_write(self) -> tuple[str, str | None]:
        """The write-scope check (see the module docstring): (status, problem or None)."""
        nobody = f"dedup-probe-{uuid.uuid4().hex}@probe.invalid"
        try:
            self._call("PATCH", f"/v4/contacts/{nobody}", "/v4/contacts/{identifier}",
                       body={"phoneNumber": "not-a-phone-number"}, repeatable=False)  # fmt: skip
        except PermissionDeniedError as exc:
            return FAIL, f"contact writes: refused (needs write_contacts): {_describe(exc)}"
        except PodiumError as exc:
            if exc.http_status in (400, 404):
                return OK, None
            return (
                WARN,
                f"contact writes: the refused-write check answered {_describe(exc)}; scope not confirmed",
            )
        return WARN, "contact writes: a PATCH of nobody with an invalid body was accepted (nothing to change)"

    # --- locations and contacts -----------------------------------------------------------------------

    def _locations(self) -> None:
        body = self._area_bodies.get("locations")
        if body is None:
            return
        raw: list[Any] = []
        pages, cursor = 0, None
        while True:
            pages += 1
            self._bodies.append(("GET", "/v4/locations", body))
            try:
                items = wire.unwrap_object(body)
                next_cursor = wire.next_cursor_of(body) if isinstance(body, dict) else None
            except MalformedResponse as exc:
                self._add("locations", FAIL, f"page {pages} is not a location list: {exc.message}")
                return
            if not isinstance(items, list):
                self._add("locations", FAIL, f"page {pages} is not a location list: 'data' is not a list")
                return
            raw.extend(items)
            if next_cursor is None:
                break
            if next_cursor == cursor or pages >= _MAX_LOCATION_PAGES:
                self._add("locations", FAIL, f"the locations cursor does not advance (page {pages})")
                return
            cursor = next_cursor
            try:
                body = self._call(
                    "GET", "/v4/locations", "/v4/locations", params={"limit": 100, "cursor": cursor}
                )
            except PodiumError as exc:
                self._add("locations", FAIL, f"page {pages + 1} failed: {_describe(exc)}")
                return
        locations: list[Location] = []
        unreadable: list[str] = []
        unknown: list[dict[str, Any]] = []
        for item in raw:
            try:
                location = Location.from_wire(item)
            except MalformedResponse as exc:
                unreadable.append(exc.message)
                continue
            locations.append(location)
            if location.country is None:
                unknown.append(self._unknown_region(location, item))
        archived = sum(1 for loc in locations if loc.archived)
        self.report.locations = {"count": len(raw), "pages": pages, "archived": archived, "unreadable": unreadable,
                                 "unknown_region": unknown}  # fmt: skip
        summary = f"{len(raw)} in {pages} page{'s' if pages != 1 else ''} ({archived} archived)"
        if unreadable:
            self._add("locations", FAIL, summary + f"; {len(unreadable)} the product cannot read", unreadable)
        elif not raw:
            self._add(
                "locations", FAIL, "none: the token sees no location, so the product has nothing to work on"
            )
        else:
            self._add("locations", OK, summary)
        if unknown:
            pending = [u for u in unknown if not u["admin_region"]]
            details = [
                f"{u['name']} ({u['uid']}): Podium's addressDetails.country is {json.dumps(u['podium_country'])}"
                + (f"; an admin set {u['admin_region']}" if u["admin_region"] else "")
                + (" (archived)" if u["archived"] else "")
                for u in unknown
            ]
            status = WARN if pending else OK
            meanwhile = f" ({self.default_region} applies meanwhile)" if self.default_region else ""
            summary = (f"{len(pending)} location{'s' if len(pending) != 1 else ''} without a region in Podium: the "
                       f"product will ask an admin to set one in the dashboard{meanwhile}") if pending else (
                       "regions set by an admin where Podium has none")  # fmt: skip
            self._add("regions", status, summary, details)
        elif locations:
            self._add("regions", OK, "every location has an ISO country in Podium")

    def _unknown_region(self, location: Location, item: Any) -> dict[str, Any]:
        details = item.get("addressDetails") if isinstance(item, dict) else None
        reported = details.get("country") if isinstance(details, dict) else None
        return {"uid": location.uid, "name": location.name, "archived": location.archived,
                "podium_country": reported, "admin_region": self.region_overrides.get(location.uid)}  # fmt: skip

    def _contacts(self) -> None:
        body = self._area_bodies.get("contacts")
        if body is None:
            return
        read = 0
        rejected: list[dict[str, str]] = []
        pages = 0
        more = False
        while True:
            pages += 1
            self._bodies.append(("GET", "/v4/contacts", body))
            try:
                page = wire.parse_contact_page(body)
            except MalformedResponse as exc:
                self._add("contacts", FAIL, f"page {pages} is not a contact list: {exc.message}")
                return
            read += len(page)
            for item, refusal in page.rejected:
                uid = _uid_of(item)
                rejected.append(
                    {"uid": uid, "error": refusal.message.removeprefix(f"malformed contact {uid}: ")}
                )
            if page.next_cursor is None:
                break
            if pages >= self.contact_pages:
                more = True
                break
            try:
                body = self._call(
                    "GET", "/v4/contacts", "/v4/contacts", params={"limit": 100, "cursor": page.next_cursor}
                )
            except PodiumError as exc:
                self._add("contacts", FAIL, f"page {pages + 1} failed: {_describe(exc)}")
                return
        self.report.contacts = {"pages": pages, "read": read, "rejected": rejected, "more": more}
        summary = f"{read + len(rejected)} read in {pages} page{'s' if pages != 1 else ''} of 100" + (
            " (more follow)" if more else " (the whole organization)"
        )
        if rejected:
            self._add("contacts", FAIL, summary + f"; {len(rejected)} the product cannot read (every scan would set "
                      "them aside)", [f"{r['uid']}: {r['error']}" for r in rejected])  # fmt: skip
        else:
            self._add("contacts", OK, summary + "; every one readable")

    def _catalogs(self) -> None:
        """The organization's tags, attribute definitions and webhooks, read as the product reads them."""
        areas: tuple[tuple[str, str, Callable[[Any], object], bool], ...] = (
            ("tags", "/v4/contact_tags", wire.Tag.from_wire, True),
            ("attributes", "/v4/contact_attributes", AttributeDefinition.from_wire, True),
            ("webhooks", "/v4/webhooks", Webhook.from_wire, False),
        )
        for name, template, parse, required in areas:
            body = self._area_bodies.get(name)
            if body is None:
                continue
            self._bodies.append(("GET", template, body))
            try:
                items = wire.unwrap_object(body)
                if not isinstance(items, list):
                    raise MalformedResponse("'data' is not a list")
                for item in items:
                    parse(item)
            except MalformedResponse as exc:
                self._add(
                    name, FAIL if required else WARN, f"the product cannot read the {name}: {exc.message}"
                )
                continue
            if name == "webhooks" and items:
                self._add("webhooks", INFO, f"{len(items)} registered with these credentials")

    # --- capabilities -------------------------------------------------------------------------------------

    def _capabilities(self) -> None:
        found = {
            "merge": self._route_capability("merge", {"duplicateUids": []}),
            "restore": self._route_capability("restore", None),
            "soft-delete": self._soft_delete(),
        }
        problems: list[str] = []
        status = OK
        for name, (detected, evidence) in found.items():
            declared = name in self.declared_capabilities
            self.report.capabilities.append(
                Capability(name, declared, detected, evidence, CAPABILITY_METHODS[name])
            )
            if declared and detected == ABSENT:
                status = FAIL
                problems.append(f"{name}: PODIUM_CAPABILITIES declares it but the tenant does not have it ({evidence}); "
                                "the product's calls would fail: remove it")  # fmt: skip
            elif declared and detected == UNKNOWN:
                status = WARN if status == OK else status
                problems.append(
                    f"{name}: declared, could not be confirmed without changing anything ({evidence})"
                )
            elif not declared and detected == PRESENT:
                status = WARN if status == OK else status
                problems.append(f"{name}: the tenant answers it but PODIUM_CAPABILITIES does not declare it "
                                f"({evidence}); the product works without it")  # fmt: skip
        declared_text = ", ".join(sorted(self.declared_capabilities)) or "none"
        summary = f"declared: {declared_text}; found: " + ", ".join(f"{n} {d}" for n, (d, _) in found.items())
        self._add("capabilities", status, summary, problems)

    def _route_capability(self, name: str, body: Any) -> tuple[str, str]:
        path = f"/v4/contacts/{uuid.uuid4()}/{name}"
        template = f"/v4/contacts/{{uid}}/{name}"
        try:
            self._call("POST", path, template, body=body, repeatable=False)
        except NotFoundError as exc:
            if exc.code == "route_not_found":
                return ABSENT, "404 route_not_found"
            if exc.code:
                return PRESENT, f"404 {exc.code} for the probe's unknown contact"
            return UNKNOWN, "404 without a code"
        except PermissionDeniedError as exc:
            return UNKNOWN, f"refused: {_describe(exc)}"
        except PodiumError as exc:
            if exc.http_status in (400, 409, 422):
                return (
                    PRESENT,
                    f"{exc.http_status} {exc.code or ''}".strip() + " for the probe's empty request",
                )
            return UNKNOWN, _describe(exc)
        return PRESENT, "answered 2xx"

    def _soft_delete(self) -> tuple[str, str]:
        if self._area_bodies.get("contacts") is None:
            return UNKNOWN, "contacts cannot be read"
        params: dict[str, str | int] = {"limit": 100, "includeDeleted": "true"}
        carried = listed = 0
        for _ in range(self.contact_pages):
            try:
                body = self._call("GET", "/v4/contacts", "/v4/contacts", params=params)
            except PodiumError as exc:
                if exc.http_status in (400, 404):
                    return ABSENT, f"includeDeleted refused: {_describe(exc)}"
                return UNKNOWN, _describe(exc)
            items = body.get("data") if isinstance(body, dict) else None
            if not isinstance(items, list):
                return UNKNOWN, "the listing is not a contact list"
            for item in items:
                if not isinstance(item, dict):
                    continue
                listed += 1
                if item.get("deletedAt") or item.get("mergedIntoUid"):
                    # Hidden contacts are objects the product reads too: hold this page to the schema.
                    self._bodies.append(("GET", "/v4/contacts", body))
                    return PRESENT, "includeDeleted lists hidden contacts"
                carried += "deletedAt" in item
            if listed and not carried:
                break  # a published tenant: no need to read further pages to know
            cursor = wire.next_cursor_of(body) if isinstance(body, dict) else None
            if cursor is None:
                break
            params = {"limit": 100, "includeDeleted": "true", "cursor": cursor}
        if listed and not carried:
            return ABSENT, "contacts listed with includeDeleted carry no deletedAt"
        if carried:
            return UNKNOWN, f"contacts carry deletedAt, but no hidden one among the {listed} read"
        return UNKNOWN, "no contact listed"

    # --- incremental listing --------------------------------------------------------------------------------

    def _incremental(self) -> None:
        if self._area_bodies.get("contacts") is None:
            return
        tomorrow = wire.format_filter_timestamp(self._now() + timedelta(days=1))
        try:
            body = self._call(
                "GET", "/v4/contacts", "/v4/contacts", params={"limit": 1, "updated_at": tomorrow}
            )
            page = wire.parse_contact_page(body)
        except PodiumError as exc:
            self._add(
                "incremental",
                WARN,
                f"updated_at refused: {_describe(exc)}; every scan would read every contact",
            )
            return
        if len(page) or page.rejected:
            self._add("incremental", WARN, "updated_at ignored (contacts updated after tomorrow were listed): "
                      "every scheduled scan would read the whole organization")  # fmt: skip
        else:
            self._add("incremental", OK, "updated_at honoured: scheduled scans read only what changed")

    # --- schemas ------------------------------------------------------------------------------------------

    def _capability_fields(self) -> bool:
        detected = {c.name for c in self.report.capabilities if c.detected == PRESENT}
        return bool({"merge", "soft-delete"} & (detected | self.declared_capabilities))

    def _schemas(self) -> None:
        with_caps = self._capability_fields()
        objects, deviations = schema_deviations(self._bodies, with_caps)
        self.report.schema = {
            "objects_checked": objects,
            "capability_fields": with_caps,
            "deviations": deviations,
        }
        if not deviations:
            self._add("schema", OK, f"{objects} objects match Podium's documents exactly")
            return
        details = [
            f"{g['where']} {g['path']}: {g['deviation']} ({g['count']}×"
            + (f", e.g. {g['example_uid']})" if g["example_uid"] else ")")
            for g in deviations
        ]
        kinds = f"{len(deviations)} kind{'s' if len(deviations) != 1 else ''}"
        self._add("schema", WARN, f"{kinds} of deviation from Podium's documents in {objects} objects (the client "
                  "reads past those of readable objects)", details)  # fmt: skip

    # --- latency and rate budget --------------------------------------------------------------------------

    def _latency(self) -> None:
        times = sorted(e.seconds * 1000 for e in self.exchanges)
        if not times:
            return
        p50, p95 = _percentile(times, 50), _percentile(times, 95)
        self.report.latency_ms = {"calls": len(times), "p50": round(p50, 1), "p95": round(p95, 1),
                                  "max": round(times[-1], 1)}  # fmt: skip
        status = WARN if p95 > 2000 else OK
        summary = f"{len(times)} calls: p50 {p50:.0f} ms, p95 {p95:.0f} ms, max {times[-1]:.0f} ms"
        if status == WARN:
            summary += " (slow: scans and merges will take long; consider PODIUM_TIMEOUT)"
        self._add("latency", status, summary)

    def _rate_limit(self) -> None:
        refusals = sum(1 for e in self.exchanges if e.status == 429)
        budget = self.budget_per_minute
        limit = _int(self._first_header("limit"))
        remaining = _int(self._first_header("remaining"))
        self.report.rate_limit = {"budget_per_minute": budget, "published_per_minute": PUBLISHED_PER_MINUTE,
                                  "headers": dict(self._rate_headers), "refusals": refusals, "limit": limit,
                                  "remaining": remaining, "requests_made": len(self.exchanges)}  # fmt: skip
        parts = [f"budget {budget}/min" if budget else "no budget set (unpaced)"]
        parts.append(f"Podium publishes {PUBLISHED_PER_MINUTE}/min")
        if limit is not None or remaining is not None:
            parts.append(
                f"tenant says {remaining if remaining is not None else '?'} left of {limit if limit is not None else '?'}"
            )
        else:
            parts.append("no rate-limit headers")
        parts.append(f"{refusals} refusal{'s' if refusals != 1 else ''} for pace")
        details: list[str] = []
        ceiling = limit if limit is not None else PUBLISHED_PER_MINUTE
        if budget is None or budget > ceiling:
            details.append(f"the budget should stay at or under {ceiling}/min: every process using these credentials "
                           "shares it")  # fmt: skip
        if refusals:
            details.append("the tenant refused calls for pace during the probe: another process may be using the "
                           "same credentials")  # fmt: skip
        self._add("rate limit", WARN if details else OK, "; ".join(parts), details)

    def _first_header(self, suffix: str) -> str | None:
        for name in (f"x-ratelimit-{suffix}", f"ratelimit-{suffix}", f"x-rate-limit-{suffix}"):
            if name in self._rate_headers:
                return self._rate_headers[name]
        return None


# --- helpers ---------------------------------------------------------------------------------------------


def _describe(exc: PodiumError) -> str:
    parts = [str(exc.http_status)] if exc.http_status else []
    if exc.code:
        parts.append(exc.code)
    head = " ".join(parts)
    return f"{head}: {exc.message}" if head else exc.message


def _uid_of(item: Any) -> str:
    uid = item.get("uid") if isinstance(item, dict) else None
    return uid if isinstance(uid, str) and uid else "(no uid)"


def _percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of sorted values."""
    rank = max(1, -(-len(values) * pct // 100))
    return values[int(rank) - 1]


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(float(value.split(",")[0].split(";")[0].strip()))
    except ValueError:
        return None


__all__ = [
    "CAPABILITY_METHODS", "FAIL", "INFO", "OK", "PUBLISHED_PER_MINUTE", "WARN", "Capability", "Check", "Exchange",
    "ProbeReport", "TenantProbe",
]  # fmt: skip
