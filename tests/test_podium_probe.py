"""``manage.py podium_probe``: a read-only check of the configured tenant, against the emulator.

With and without Part 2 capabilities (declared or not), a missing scope, a refused token, OAuth, an
unreachable tenant, and a tenant answering malformed or undocumented objects (a small proxy in front of
the emulator rewrites its answers). Every run is checked to have changed nothing at the tenant.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from io import StringIO
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
import requests
from django.core.management import call_command
from django.db import OperationalError
from django.test import override_settings

from dedup.models import Location, Policy
from podium_client.corpus import POPUP
from podium_client.emulator import EmulatorServer, EmulatorState
from podium_client.probe import PUBLISHED_PER_MINUTE
from tests.fixtures_emulator import make_contact

pytestmark = pytest.mark.django_db

Factory = Callable[..., EmulatorServer]
ALL = ("merge", "restore", "soft-delete")
FAST = 6000  # a budget that does not make every test wait out Podium's pace


def probe(
    url: str, *args: str, token: str = "dev-token", capabilities: tuple[str, ...] = (), **overrides: Any
) -> tuple[int, str]:
    """Run the command with the tenant settings overridden; (exit code, output)."""
    out = StringIO()
    tenant = {"PODIUM_BASE_URL": url, "PODIUM_ACCESS_TOKEN": token, "PODIUM_REFRESH_TOKEN": "",
              "PODIUM_CAPABILITIES": list(capabilities), **overrides}  # fmt: skip
    with override_settings(**tenant):
        try:
            call_command("podium_probe", *args, stdout=out)
        except SystemExit as exited:
            return int(exited.code or 0), out.getvalue()
    return 0, out.getvalue()


def probe_json(url: str, *args: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    code, text = probe(url, "--json", *args, **kwargs)
    return code, json.loads(text)


def check(report: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in report["checks"] if c["name"] == name]
    assert found, f"no check {name!r} in {[c['name'] for c in report['checks']]}"
    return found[0]


def capabilities(report: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["detected"] for c in report["capabilities"]}


@pytest.fixture
def fast_budget() -> None:
    Policy.objects.update_or_create(pk=1, defaults={"rate_limit_per_minute": FAST})


class Unchanged:
    """What the tenant holds, to prove a probe changed nothing."""

    def __init__(self, server: EmulatorServer) -> None:
        self.server = server
        self.dump = list(server.state.dump_lines())
        self.hooks = [dict(w) for w in server.hub.webhooks()]

    def assert_unchanged(self) -> None:
        stats = self.server.stats()
        assert (stats["writes"], stats["deletes"], stats["merges"], stats["restores"], stats["purge_attempts"]) == (
            0, 0, 0, 0, 0)  # fmt: skip
        assert stats["ambiguous_identifier_uses"] == 0
        assert list(self.server.state.dump_lines()) == self.dump
        assert [dict(w) for w in self.server.hub.webhooks()] == self.hooks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- published tenants ---------------------------------------------------------------------------


def test_a_published_tenant_is_ready_and_nothing_changed(emulator: EmulatorServer) -> None:
    unchanged = Unchanged(emulator)
    code, text = probe(emulator.url)
    assert code == 0, text
    lines = text.splitlines()
    assert lines[-1].startswith("READY")
    assert len(lines) <= 30, "a deployer reads it in one screen"
    for name in ("token", "scopes", "locations", "contacts", "capabilities", "incremental", "schema", "latency",
                 "rate limit"):  # fmt: skip
        assert any(line.split()[:2] == ["OK", *name.split()[:1]] for line in lines), (name, text)
    assert "WARN  regions" in text and "Pop-up Van" in text and POPUP in text
    unchanged.assert_unchanged()

    code, report = probe_json(emulator.url)
    assert code == 0 and report["ok"] is True
    assert report["locations"]["count"] == 4 and [
        u["uid"] for u in report["locations"]["unknown_region"]
    ] == [POPUP]
    assert report["contacts"]["rejected"] == [] and report["contacts"]["read"] == len(emulator.state)
    assert capabilities(report) == {"merge": "absent", "restore": "absent", "soft-delete": "absent"}
    assert all(c["method"] and c["evidence"] for c in report["capabilities"])
    assert [c["evidence"] for c in report["capabilities"][:2]] == ["404 route_not_found"] * 2
    assert report["schema"]["deviations"] == [] and report["schema"]["objects_checked"] > len(emulator.state)
    latency = report["latency_ms"]
    assert latency["calls"] >= 8 and 0 < latency["p50"] <= latency["p95"] <= latency["max"]
    assert report["rate_limit"]["budget_per_minute"] == PUBLISHED_PER_MINUTE
    assert report["rate_limit"]["refusals"] == 0
    assert emulator.stats()["podium_versions"] == {"2021.04.01": emulator.stats()["requests"]}
    unchanged.assert_unchanged()


@pytest.mark.usefixtures("fast_budget")
def test_it_reads_only_the_first_pages_of_contacts(emulator_factory: Factory) -> None:
    server = emulator_factory(people=400, corpus_seed=5)
    code, report = probe_json(server.url, "--contact-pages", "2")
    assert code == 0
    assert report["contacts"] == {"pages": 2, "read": 200, "rejected": [], "more": True}
    assert check(report, "contacts")["summary"].startswith("200 read in 2 pages of 100 (more follow)")


@pytest.mark.usefixtures("fast_budget")
def test_a_region_an_admin_set_is_reported(emulator: EmulatorServer) -> None:
    Location.objects.create(uid=POPUP, name="Pop-up Van", country="AU", region_override="AU")
    code, report = probe_json(emulator.url)
    assert code == 0
    regions = check(report, "regions")
    assert regions["status"] == "ok" and "an admin set AU" in regions["details"][0]


# --- capabilities ------------------------------------------------------------------------------------


@pytest.fixture
def capability_tenant(
    emulator_factory: Factory, demo_corpus: tuple[list[str], dict[str, str]]
) -> Callable[[tuple[str, ...]], EmulatorServer]:
    def make(caps: tuple[str, ...]) -> EmulatorServer:
        state = EmulatorState.from_lines(demo_corpus[0], capabilities=",".join(caps))
        # One contact deleted earlier: only a soft-delete tenant still lists it.
        state.add_contact(
            {**make_contact(name="Gone"), "deletedAt": "2025-02-01T00:00:00Z", "mergedIntoUid": None}
        )
        return emulator_factory(state)

    return make


@pytest.mark.usefixtures("fast_budget")
def test_a_tenant_with_every_capability_declared(
    capability_tenant: Callable[[tuple[str, ...]], EmulatorServer],
) -> None:
    server = capability_tenant(ALL)
    unchanged = Unchanged(server)
    code, report = probe_json(server.url, capabilities=ALL)
    assert code == 0, report["verdict"]
    assert capabilities(report) == {"merge": "present", "restore": "present", "soft-delete": "present"}
    assert check(report, "capabilities")["status"] == "ok"
    # Contacts carry deletedAt/mergedIntoUid here, and the documents plus those two fields hold exactly.
    assert report["schema"]["capability_fields"] is True and report["schema"]["deviations"] == []
    unchanged.assert_unchanged()


@pytest.mark.usefixtures("fast_budget")
def test_capabilities_the_tenant_answers_but_the_deployment_does_not_declare_are_a_warning(
    capability_tenant: Callable[[tuple[str, ...]], EmulatorServer],
) -> None:
    server = capability_tenant(("merge", "restore"))
    code, report = probe_json(server.url)
    assert code == 0
    caps = check(report, "capabilities")
    assert caps["status"] == "warn"
    assert capabilities(report)["merge"] == "present" and capabilities(report)["restore"] == "present"
    assert any(
        d.startswith("merge: the tenant answers it but PODIUM_CAPABILITIES does not declare it")
        for d in caps["details"]
    )


@pytest.mark.usefixtures("fast_budget")
def test_capabilities_declared_but_absent_stop_the_product(emulator: EmulatorServer) -> None:
    unchanged = Unchanged(emulator)
    code, text = probe(emulator.url, capabilities=("merge", "soft-delete"))
    assert code == 2
    assert "FAIL  capabilities" in text and text.splitlines()[-1].startswith("NOT READY")
    assert (
        "merge: PODIUM_CAPABILITIES declares it but the tenant does not have it (404 route_not_found)" in text
    )
    assert "soft-delete: PODIUM_CAPABILITIES declares it" in text
    unchanged.assert_unchanged()


# --- token, scopes, reachability -------------------------------------------------------------------------


@pytest.mark.usefixtures("fast_budget")
@pytest.mark.parametrize(
    ("scopes", "area", "needs"),
    [(["read_contacts", "write_contacts"], "locations", "read_locations"),
     (["read_locations", "write_contacts"], "contacts", "read_contacts"),
     (["read_locations", "read_contacts"], "contact writes", "write_contacts")],
)  # fmt: skip
def test_a_missing_scope_stops_the_product(
    emulator: EmulatorServer, scopes: list[str], area: str, needs: str
) -> None:
    emulator.configure(scopes=scopes)
    unchanged = Unchanged(emulator)
    code, report = probe_json(emulator.url)
    assert code == 2 and report["ok"] is False
    found = check(report, "scopes")
    assert found["status"] == "fail"
    assert any(
        d.startswith(f"{area}: ") and needs in d and "403 unauthorized" in d for d in found["details"]
    ), found
    assert check(report, "token")["status"] == "ok"
    unchanged.assert_unchanged()


@pytest.mark.usefixtures("fast_budget")
def test_scopes_the_settings_do_not_list_are_named(emulator: EmulatorServer) -> None:
    code, report = probe_json(emulator.url, PODIUM_SCOPES=["read_contacts"])
    assert code == 0
    assert check(report, "scopes")["details"] == [
        "PODIUM_SCOPES does not list read_locations, write_contacts, which the product needs"
    ]


def test_a_refused_token_stops_at_once(emulator: EmulatorServer) -> None:
    code, text = probe(emulator.url, token="not-the-token")
    assert code == 2
    assert "FAIL  token" in text and "401 unauthenticated" in text and "PODIUM_ACCESS_TOKEN" in text
    assert emulator.stats()["requests"] == 1


@pytest.mark.usefixtures("fast_budget")
def test_oauth_settings_are_what_the_probe_uses(emulator: EmulatorServer) -> None:
    oauth = {"PODIUM_TOKEN_URL": emulator.token_url, "PODIUM_CLIENT_ID": "dev-client",
             "PODIUM_CLIENT_SECRET": "dev-secret"}  # fmt: skip
    code, report = probe_json(emulator.url, token="", PODIUM_REFRESH_TOKEN="dev-refresh", **oauth)
    assert code == 0
    assert report["auth"] == f"OAuth refresh token via {emulator.token_url}"
    assert (
        check(report, "token")["summary"]
        == f"accepted (OAuth refresh token via {emulator.token_url}, 1 token refresh)"
    )
    code, report = probe_json(emulator.url, token="", PODIUM_REFRESH_TOKEN="wrong", **oauth)
    assert code == 2 and check(report, "token")["status"] == "fail"


def test_an_unreachable_tenant() -> None:
    code, text = probe(f"http://127.0.0.1:{_free_port()}")
    assert code == 2
    assert "FAIL  reachable" in text and "cannot be reached" in text
    assert text.splitlines()[-1] == "NOT READY: 1 problem would stop the product (reachable)."


# --- a tenant answering outside the documents -----------------------------------------------------------


class RewritingProxy:
    """Forwards every request to the emulator; `rewrite(path, query, body)` may change a JSON answer,
    `query(path, params)` the query sent, and `headers` are added to every answer."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.rewrite: Callable[[str, dict[str, str], Any], Any] = lambda path, query, body: body
        self.query: Callable[[str, dict[str, str]], dict[str, str]] = lambda path, params: params
        self.headers: dict[str, str] = {}
        proxy = self
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                path, _, raw = self.path.partition("?")
                params = proxy.query(path, dict(parse_qsl(raw, keep_blank_values=True)))
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")
                }
                resp = requests.request(self.command, proxy.upstream + path + ("?" + urlencode(params) if params else ""),
                                        data=body, headers=headers, timeout=10)  # fmt: skip
                content = resp.content
                ctype = resp.headers.get("Content-Type", "application/json")
                if ctype.startswith("application/json") and content:
                    rewritten = proxy.rewrite(path, params, resp.json())
                    # Bytes are sent as they are: a tenant (or its gateway) answering something else.
                    if isinstance(rewritten, bytes):
                        content, ctype = rewritten, "text/html"
                    else:
                        content = json.dumps(rewritten).encode()
                self.send_response(resp.status_code)
                for key, value in {"Content-Type": ctype, **proxy.headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _forward

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def proxy(emulator: EmulatorServer) -> Iterator[RewritingProxy]:
    p = RewritingProxy(emulator.url)
    yield p
    p.close()


@pytest.mark.usefixtures("fast_budget")
def test_a_tenant_answering_malformed_contacts_is_not_ready(
    proxy: RewritingProxy, emulator: EmulatorServer
) -> None:
    broken: dict[str, str] = {}

    def rewrite(path: str, query: dict[str, str], body: Any) -> Any:
        if path == "/v4/contacts" and isinstance(body.get("data"), list) and body["data"]:
            contacts = body["data"]
            for c in contacts:
                c["loyaltyTier"] = "gold"  # undocumented, tolerated
            contacts[0]["channels"][0]["transactionalOptedOutAt"] = 1_700_000_000  # a number: unreadable
            contacts[1].pop("address")  # a documented field missing, tolerated
            broken.setdefault("uid", contacts[0]["uid"])
        return body

    proxy.rewrite = rewrite
    code, text = probe(proxy.url)
    assert code == 2
    lines = text.splitlines()
    assert len(lines) <= 30 and lines[-1] == "NOT READY: 1 problem would stop the product (contacts)."
    assert "FAIL  contacts" in text and "1 the product cannot read" in text
    assert (
        f"{broken['uid']}: field 'channels[0].transactionalOptedOutAt' must be a timestamp string or null"
        in text
    )
    assert "WARN  schema" in text
    code, report = probe_json(proxy.url)
    deviations = {(d["path"], d["deviation"]) for d in report["schema"]["deviations"]}
    assert ("data[*].loyaltyTier", "undocumented field") in deviations
    assert ("data[*].address", "documented field missing") in deviations
    assert (
        "data[*].channels[*].transactionalOptedOutAt",
        "a number where the documents say string",
    ) in deviations
    assert report["contacts"]["rejected"][0]["uid"] == broken["uid"]
    # No value from a contact ever reaches the report (a customer's data).
    assert "gold" not in json.dumps(report) and "1700000000" not in json.dumps(report)


@pytest.mark.usefixtures("fast_budget")
def test_a_tenant_answering_a_malformed_location_is_not_ready(proxy: RewritingProxy) -> None:
    def rewrite(path: str, query: dict[str, str], body: Any) -> Any:
        if path == "/v4/locations":
            body["data"][0]["addressDetails"] = "Australia"
        return body

    proxy.rewrite = rewrite
    code, report = probe_json(proxy.url)
    assert code == 2
    locations = check(report, "locations")
    assert (
        locations["status"] == "fail"
        and "field 'addressDetails' must be an object" in locations["details"][0]
    )


@pytest.mark.usefixtures("fast_budget")
def test_an_area_answering_outside_the_contract_is_named(proxy: RewritingProxy) -> None:
    proxy.rewrite = lambda path, query, body: (
        b"<html>maintenance</html>" if path == "/v4/contact_attributes" else body
    )
    code, report = probe_json(proxy.url)
    assert code == 2
    attributes = check(report, "attributes")
    assert (
        attributes["status"] == "fail"
        and "answered outside the contract: HTTP 200 response is not JSON" in attributes["summary"]
    )
    assert check(report, "scopes")["status"] == "ok"


@pytest.mark.usefixtures("fast_budget")
def test_a_database_not_migrated_yet_does_not_stop_the_probe(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unmigrated(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("no such table: dedup_policy")

    monkeypatch.setattr(Policy.objects, "filter", unmigrated)
    code, report = probe_json(emulator.url)
    assert code == 0
    assert check(report, "database")["summary"].startswith(
        "the database cannot be read yet (OperationalError)"
    )
    assert report["rate_limit"]["budget_per_minute"] == PUBLISHED_PER_MINUTE


@pytest.mark.usefixtures("fast_budget")
def test_a_tenant_ignoring_updated_at_is_a_warning(proxy: RewritingProxy) -> None:
    proxy.query = lambda path, params: {k: v for k, v in params.items() if k != "updated_at"}
    code, report = probe_json(proxy.url)
    assert code == 0
    assert check(report, "incremental")["status"] == "warn"
    assert "whole organization" in check(report, "incremental")["summary"]


def test_rate_limit_headers_and_a_budget_above_them(proxy: RewritingProxy) -> None:
    proxy.headers = {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "87", "X-RateLimit-Reset": "41"}
    code, report = probe_json(proxy.url)
    assert code == 0
    limit = check(report, "rate limit")
    assert limit["status"] == "warn" and "tenant says 87 left of 100" in limit["summary"]
    assert limit["details"][0].startswith("the budget should stay at or under 100/min")
    assert report["rate_limit"]["headers"]["x-ratelimit-reset"] == "41"


@pytest.mark.usefixtures("fast_budget")
def test_refusals_for_pace_during_the_probe_are_reported(emulator: EmulatorServer) -> None:
    emulator.configure(fail_next=2, fault_statuses=[429], fault_retry_after=0)
    code, report = probe_json(emulator.url)
    assert code == 0
    limit = check(report, "rate limit")
    assert report["rate_limit"]["refusals"] == 2 and limit["status"] == "warn"
    assert any("another process may be using the same credentials" in d for d in limit["details"])


def test_the_text_and_the_json_are_the_same_report(emulator: EmulatorServer) -> None:
    Policy.objects.update_or_create(pk=1, defaults={"rate_limit_per_minute": FAST})
    _, text = probe(emulator.url)
    _, report = probe_json(emulator.url)
    rows = [
        line.split(None, 1)
        for line in text.splitlines()[2:-2]
        if line.startswith("  ") and not line.startswith("   ")
    ]
    assert [r[0].lower() for r in rows] == [c["status"] for c in report["checks"]]
    assert text.splitlines()[-1] == report["verdict"]
    # A budget above Podium's published limit is named.
    assert check(report, "rate limit")["details"][0].startswith(
        f"the budget should stay at or under {PUBLISHED_PER_MINUTE}/min"
    )
