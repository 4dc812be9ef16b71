"""The emulator's published API behaviour (raw HTTP), its state, export files, control API and command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from podium_client.corpus import AUCKLAND, BURLEIGH, SYDNEY
from podium_client.emulator import EmulatorServer, EmulatorState, ExportFileError
from podium_client.emulator.shapes import parse_us
from tests.fixtures_emulator import auth, empty_state, fresh_uid, make_contact

REPO = Path(__file__).resolve().parents[1]


def _get(server: EmulatorServer, path: str, **kwargs: Any) -> requests.Response:
    return requests.get(server.url + path, headers=auth(server), timeout=5, **kwargs)


def _send(server: EmulatorServer, method: str, path: str, body: Any = None) -> requests.Response:
    return requests.request(method, server.url + path, headers=auth(server), json=body, timeout=5)


def _list_all(server: EmulatorServer, **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    query: dict[str, Any] = {"limit": 100, **params}
    while True:
        body = _get(server, "/v4/contacts", params=query).json()
        out.extend(body["data"])
        if not body["metadata"]["nextCursor"]:
            return out
        query = {"cursor": body["metadata"]["nextCursor"]}


# --- serving and export files --------------------------------------------------------------------------


def test_demo_emulator_serves_the_whole_organization(
    emulator: EmulatorServer, demo_corpus: tuple[list[str], dict[str, str]]
) -> None:
    truth = demo_corpus[1]
    listed = _list_all(emulator)
    assert {c["uid"] for c in listed} == set(truth) and len(listed) == len(truth)
    # Organization-wide: contacts of every location in one listing, one of them in two locations.
    assert {loc["uid"] for c in listed for loc in c["locations"]} >= {SYDNEY, BURLEIGH, AUCKLAND}


def test_dump_and_load_round_trip(tmp_path: Path, demo_corpus: tuple[list[str], dict[str, str]]) -> None:
    state = EmulatorState.from_lines(demo_corpus[0])
    assert list(state.dump_lines()) == demo_corpus[0]
    uid = state.contacts()[0]["uid"]
    state.podium_edit(uid, {"add_tag": "changed", "transactional_opt_out": True})
    target = tmp_path / "state.ndjson"
    state.dump(target)
    again = EmulatorState.from_file(target)
    assert again.contacts() == state.contacts()
    assert again.locations() == state.locations()
    assert {t["label"] for t in again.catalog.tags.values()} == {
        t["label"] for t in state.catalog.tags.values()
    }
    assert "changed" in {t["label"] for t in again.catalog.tags.values()}
    assert again.get(uid)["channels"][0]["transactionalOptedOutAt"]
    assert not list(tmp_path.glob(".*.tmp"))


OLD_CONTACT = {
    "uid": "ct_0000001_aaaaaa", "locationUid": "loc_sydney", "name": "Maria", "channels": [{"type": "PHONE",
    "identifier": "0412 345 678"}], "tags": [], "attributes": [], "address": None, "marketingOptOut": False,
    "smsOptOut": False, "emailOptOut": False, "createdAt": "2025-01-01T00:00:00Z", "updatedAt": "2025-01-01T00:00:00Z",
    "deletedAt": None, "mergedIntoUid": None, "conversationCount": 0,
}  # fmt: skip
OLD_LOCATION = {"object": "location", "uid": "loc_sydney", "name": "Sydney CBD", "country": "AU"}


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        ([json.dumps(OLD_LOCATION)], r"line 1: .*old export shape.*addressDetails\.country"),
        (
            [json.dumps(make_contact()), json.dumps(OLD_CONTACT)],
            r"line 2: .*old export shape.*locationUid.*expected a v4 contact",
        ),
        ([json.dumps(make_contact()), "", "{not json"], r"line 3: not JSON.*expected Podium v4 NDJSON"),
        (["[1, 2]"], r"line 1: not a JSON object"),
        ([json.dumps({**make_contact(), "address": "78 James St"})], r"line 1: .*address string"),
        ([json.dumps({**make_contact(), "nickname": "Mo"})], r"line 1: .*nickname"),
        ([json.dumps({**make_contact(), "createdAt": "yesterday"})], r"line 1: .*createdAt"),
        (["", "  "], r"empty"),
    ],
    ids=[
        "old-location",
        "old-contact",
        "not-json",
        "not-object",
        "address-string",
        "undocumented",
        "bad-time",
        "empty",
    ],
)
def test_load_refuses_files_that_are_not_v4(tmp_path: Path, lines: list[str], match: str) -> None:
    path = tmp_path / "bad.ndjson"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ExportFileError, match=match):
        EmulatorState.from_file(path)


def test_load_tolerates_a_bom_and_refuses_duplicate_uids(tmp_path: Path) -> None:
    contact = make_contact()
    path = tmp_path / "bom.ndjson"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(contact).encode() + b"\n")
    assert EmulatorState.from_file(path).get(contact["uid"]) == contact
    path.write_text(json.dumps(contact) + "\n" + json.dumps(contact) + "\n")
    with pytest.raises(ExportFileError, match="line 2: duplicate contact uid"):
        EmulatorState.from_file(path)


def test_missing_documented_fields_are_filled_with_nulls() -> None:
    state = empty_state()
    sparse = {"uid": fresh_uid(), "name": "Sparse", "locations": [{"uid": SYDNEY}],
              "createdAt": "2025-01-01T00:00:00Z", "updatedAt": "2025-01-01T00:00:00Z"}  # fmt: skip
    stored = state.add_contact(sparse)
    assert stored["address"] is None and stored["channels"] == [] and stored["phoneNumbers"] == []
    assert stored["organization"] == {"uid": state.organization["uid"]}


# --- time ---------------------------------------------------------------------------------------------


def test_updated_at_moves_strictly_on_every_change() -> None:
    state = empty_state()
    contact = state.add_contact(make_contact(phones=["0412 345 678"]))
    stamps = [contact["updatedAt"]]
    for i in range(200):
        state.patch("+61412345678", {"name": f"n{i}"})
        stamps.append(state.get(contact["uid"])["updatedAt"])
    # Compare instants, not strings: a loaded `...:00Z` and a written `...:00.000001Z` sort wrongly as text.
    assert all(parse_us(a) < parse_us(b) for a, b in zip(stamps, stamps[1:], strict=False))
    # A write that changes nothing does not move it.
    state.patch("+61412345678", {"name": "n199"})
    assert state.get(contact["uid"])["updatedAt"] == stamps[-1]


def test_updated_at_never_goes_back_from_a_future_timestamp() -> None:
    state = empty_state()
    future = datetime(2099, 1, 1, tzinfo=UTC)
    contact = state.add_contact(make_contact(created_at=future))
    state.patch("+61412345678", {"name": "Later"})
    assert parse_us(state.get(contact["uid"])["updatedAt"]) > parse_us("2099-01-01T00:00:00Z")


# --- identifiers ----------------------------------------------------------------------------------------


def test_identifiers_are_conversation_email_and_phone_in_any_spelling(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    state = empty_state()
    au = state.add_contact(make_contact(phones=["(04) 1234-5678"], emails=["Maria@Example.com"]))
    nz = state.add_contact(make_contact(locations=[AUCKLAND], phones=["021 123 4567"], name="Aroha"))
    abroad = state.add_contact(make_contact(locations=[AUCKLAND], phones=["+61 499 111 222"], name="Visitor"))
    server = emulator_factory(state)
    for identifier, uid in [
        ("+61412345678", au["uid"]), ("maria@example.COM", au["uid"]), (au["conversations"][0]["uid"], au["uid"]),
        ("+64211234567", nz["uid"]), ("+61499111222", abroad["uid"]),
    ]:  # fmt: skip
        resp = _get(server, f"/v4/contacts/{identifier}")
        assert resp.status_code == 200 and resp.json()["data"]["uid"] == uid, identifier
    # Not identifiers: a national spelling, an unknown number, and (published API) a contact uid.
    for identifier in ("0412345678", "+61400000000", au["uid"]):
        resp = _get(server, f"/v4/contacts/{identifier}")
        assert resp.status_code == 404 and resp.json()["code"] == "resource_not_found", identifier
    assert server.stats()["ambiguous_identifier_uses"] == 0


def test_an_ambiguous_identifier_acts_on_the_oldest_and_is_counted(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    state = empty_state()
    newer = state.add_contact(make_contact(phones=["0412 345 678"], created_at="2025-03-01T00:00:00Z"))
    older = state.add_contact(make_contact(phones=["+61 412 345 678"], created_at="2024-03-01T00:00:00Z"))
    server = emulator_factory(state)
    assert _get(server, "/v4/contacts/+61412345678").json()["data"]["uid"] == older["uid"]
    assert _send(server, "PATCH", "/v4/contacts/+61412345678", {"name": "Renamed"}).status_code == 202
    assert state.get(older["uid"])["name"] == "Renamed" and state.get(newer["uid"])["name"] == "Maria Garcia"
    stats = server.stats()
    assert stats["ambiguous_identifier_uses"] == 2
    uses = stats["ambiguous_identifiers"]
    assert uses[0] == {"route": "GET /v4/contacts/{identifier}", "identifier": "+61******678", "matches": 2}
    assert "412345" not in json.dumps(uses)


def test_a_contact_created_without_phone_or_email_is_addressed_by_the_uid_answered(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    server = emulator_factory(empty_state())
    resp = _send(server, "POST", "/v4/contacts", {"name": "Walk-in", "locations": [SYDNEY]})
    assert resp.status_code == 202
    uid = resp.json()["data"]["identifier"]
    got = _get(server, f"/v4/contacts/{uid}").json()["data"]
    assert got["uid"] == uid and got["name"] == "Walk-in" and got["conversations"] == []


# --- writes -----------------------------------------------------------------------------------------------


def test_patch_adds_channels_and_replaces_locations_and_address(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    state = empty_state()
    contact = state.add_contact(make_contact(phones=["0412 345 678"]))
    server = emulator_factory(state)
    path = "/v4/contacts/+61412345678"
    body = {"email": "maria@example.com", "phoneNumber": "+61412345678", "locations": [SYDNEY, BURLEIGH],
            "address": {"addressLine1": "78 James St"}, "contactStatus": {"name": "Customer"}}  # fmt: skip
    resp = _send(server, "PATCH", path, body)
    assert resp.status_code == 202 and resp.json()["data"] == {"identifier": "+61412345678"}
    after = state.get(contact["uid"])
    # The same number in another spelling is not a new channel; the email is, with no marketing opt-in.
    assert [(c["type"], c["identifier"]) for c in after["channels"]] == [
        ("PHONE", "0412 345 678"),
        ("EMAIL", "maria@example.com"),
    ]
    assert after["channels"][1]["marketingOptedInLocationUids"] == []
    assert after["emails"] == ["maria@example.com"]
    assert after["locations"] == [{"uid": SYDNEY}, {"uid": BURLEIGH}]
    assert after["address"] == {"addressLine1": "78 James St", "addressLine2": None, "city": None, "state": None,
                                "postalCode": None, "country": None}  # fmt: skip
    assert "contactStatus" not in after
    # A second number of a kind is added beside the first (our reading; the product avoids relying on it).
    _send(server, "PATCH", path, {"phoneNumber": "+61499000111", "locations": [BURLEIGH]})
    again = state.get(contact["uid"])
    assert again["phoneNumbers"] == ["0412 345 678", "+61499000111"] and again["locations"] == [
        {"uid": BURLEIGH}
    ]
    for bad, field in [({}, "body"), ({"locations": []}, "locations"), ({"locations": [fresh_uid()]}, "locations"),
                       ({"email": "not-an-email"}, "email"), ({"name": "x", "uid": "y"}, "uid")]:  # fmt: skip
        resp = _send(server, "PATCH", path, bad)
        assert resp.status_code == 400 and resp.json()["code"] == "invalid_request_values", bad
        assert resp.json()["message"].startswith(field), resp.json()


def test_patch_conversation_uid_moves_that_conversation(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    state = empty_state()
    primary = state.add_contact(make_contact(phones=["0412 345 678"], conversations=1))
    dup = state.add_contact(make_contact(phones=["0499 000 111"], conversations=2))
    server = emulator_factory(state)
    moving = dup["conversations"][0]["uid"]
    assert _send(server, "PATCH", "/v4/contacts/+61412345678", {"conversationUid": moving}).status_code == 202
    assert state.get(primary["uid"])["conversations"] == primary["conversations"] + [{"uid": moving}]
    assert state.get(dup["uid"])["conversations"] == dup["conversations"][1:]
    assert parse_us(state.get(dup["uid"])["updatedAt"]) > parse_us(dup["updatedAt"])
    assert _get(server, f"/v4/contacts/{moving}").json()["data"]["uid"] == primary["uid"]
    resp = _send(server, "PATCH", "/v4/contacts/+61412345678", {"conversationUid": fresh_uid("conversation")})
    assert resp.status_code == 404 and resp.json()["code"] == "resource_not_found"


def test_post_contacts_is_an_upsert_on_phone_or_email(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    state = empty_state()
    held = state.add_contact(make_contact(phones=["0412 345 678"], tags=["vip"]))
    server = emulator_factory(state)
    vip = state.catalog.tag_for_label("walk-in")["uid"]
    resp = _send(server, "POST", "/v4/contacts", {"name": "Maria G", "locations": [BURLEIGH],
                                                  "phoneNumber": "+61412345678", "tags": [vip]})  # fmt: skip
    assert resp.json()["data"] == {"identifier": "+61412345678"}
    assert len(state) == 1
    after = state.get(held["uid"])
    assert after["name"] == "Maria G" and after["locations"] == [{"uid": SYDNEY}, {"uid": BURLEIGH}]
    assert [t["label"] for t in after["tags"]] == ["vip", "walk-in"] and len(after["channels"]) == 1
    resp = _send(
        server, "POST", "/v4/contacts", {"name": "New", "locations": [SYDNEY], "email": "new@example.com"}
    )
    assert resp.json()["data"] == {"identifier": "new@example.com"} and len(state) == 2
    for bad in (
        {"name": "x", "locations": [fresh_uid()]},
        {"name": "x", "locations": [SYDNEY], "tags": [fresh_uid()]},
    ):
        assert _send(server, "POST", "/v4/contacts", bad).json()["code"] == "invalid_request_values"


def test_delete_forgets_the_contact_and_keeps_its_last_json_for_the_control_api(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    state = empty_state()
    gone = state.add_contact(make_contact(phones=["0412 345 678"], tags=["vip"], conversations=2))
    server = emulator_factory(state)
    assert _send(server, "DELETE", "/v4/contacts/+61412345678").status_code == 202
    assert _get(server, "/v4/contacts/+61412345678").status_code == 404
    assert _get(server, f"/v4/contacts/{gone['conversations'][0]['uid']}").status_code == 404
    assert _list_all(server) == [] and gone["uid"] not in state
    deleted = requests.get(server.url + "/_emulator/deleted", timeout=5).json()["data"]
    assert [(d["uid"], d["soft"], d["contact"]) for d in deleted] == [(gone["uid"], False, gone)]
    stats = server.stats()
    assert stats["deletes"] == 1 and stats["writes"] == 1 and stats["purge_attempts"] == 0


def test_purges_are_refused_and_counted(emulator_factory: Callable[..., EmulatorServer]) -> None:
    state = empty_state()
    kept = state.add_contact(make_contact(phones=["0412 345 678"]))
    server = emulator_factory(state)
    assert _send(server, "DELETE", "/v4/contacts/+61412345678?hard=true").status_code == 403
    assert _send(server, "POST", f"/v4/contacts/{kept['uid']}/purge").status_code == 403
    assert kept["uid"] in state and server.stats()["purge_attempts"] == 2


def test_opt_out_withdraws_marketing_consent_of_the_number_everywhere(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    state = empty_state()
    a = state.add_contact(
        make_contact(phones=["0412 345 678"], emails=["a@example.com"], locations=[SYDNEY, BURLEIGH])
    )
    b = state.add_contact(make_contact(phones=["+61 412 345 678"], locations=[AUCKLAND]))
    other = state.add_contact(make_contact(phones=["0499 000 111"]))
    server = emulator_factory(state)
    body = {"channel": {"type": "PHONE", "identifier": "+61412345678"}}
    resp = _send(server, "POST", "/v4/contacts/campaigns/opt_out", body)
    assert resp.status_code == 200 and resp.json()["data"]["uid"] == a["uid"]
    for uid in (a["uid"], b["uid"]):
        phones = [c for c in state.get(uid)["channels"] if c["type"] == "PHONE"]
        assert all(c["marketingOptedInLocationUids"] == [] for c in phones)
        assert all(c["transactionalOptedOutAt"] is None for c in phones)
    email = [c for c in state.get(a["uid"])["channels"] if c["type"] == "EMAIL"][0]
    assert email["marketingOptedInLocationUids"] == [SYDNEY, BURLEIGH]
    assert state.get(other["uid"]) == other
    resp = _send(server, "POST", "/v4/contacts/campaigns/opt_in", {**body, "locationUid": AUCKLAND})
    assert resp.status_code == 200
    assert [c["marketingOptedInLocationUids"] for c in state.get(b["uid"])["channels"]] == [[AUCKLAND]]
    assert (
        _send(server, "POST", "/v4/contacts/campaigns/opt_in", body).json()["code"]
        == "invalid_request_values"
    )
    unknown = {"channel": {"type": "PHONE", "identifier": "+61400000000"}}
    assert _send(server, "POST", "/v4/contacts/campaigns/opt_out", unknown).status_code == 404


def test_tags_and_attributes_of_the_organization_and_of_contacts(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    state = empty_state()
    contact = state.add_contact(
        make_contact(phones=["0412 345 678"], tags=["vip"], attributes=[("birthday", "1990-01-01")])
    )
    server = emulator_factory(state)
    vip = contact["tags"][0]["uid"]
    dup = _send(server, "POST", "/v4/contact_tags", {"label": "VIP", "description": "again"})
    assert dup.status_code == 400 and dup.json()["message"].startswith("label")
    assert _send(server, "POST", "/v4/contact_tags", {"label": "no description"}).status_code == 400
    _send(server, "PATCH", f"/v4/contact_tags/{vip}", {"label": "very important"})
    assert state.get(contact["uid"])["tags"][0]["label"] == "very important"
    assert state.get(contact["uid"])["updatedAt"] == contact["updatedAt"]
    path = "/v4/contacts/+61412345678"
    assert _send(server, "POST", f"{path}/tags/{fresh_uid()}").status_code == 404
    birthday = contact["attributes"][0]["uid"]
    assert _send(server, "PATCH", f"{path}/attributes/{birthday}", {"value": "1991-02-02"}).status_code == 202
    assert state.get(contact["uid"])["attributes"][0]["value"] == "1991-02-02"
    assert _send(server, "DELETE", f"{path}/attributes/{birthday}").status_code == 202
    assert _send(server, "PATCH", f"{path}/attributes/{birthday}", {"value": "x"}).status_code == 404
    _send(server, "POST", f"{path}/attributes/{birthday}", {"value": "1992-03-03"})
    assert _send(server, "DELETE", f"/v4/contact_attributes/{birthday}").status_code == 200
    assert state.get(contact["uid"])["attributes"] == []


# --- faults, auth, control ----------------------------------------------------------------------------------


def test_control_endpoints_steer_and_report(emulator: EmulatorServer) -> None:
    resp = requests.post(
        emulator.url + "/_emulator/config", json={"fail_rate": 1.0, "fault_statuses": [503]}, timeout=5
    )
    assert resp.status_code == 200 and resp.json()["fail_rate"] == 1.0
    assert emulator.fail_rate == 1.0 and emulator.fault_statuses == (503,)
    headers = {**auth(emulator), "podium-version": "2021.04.01"}
    failed = requests.get(emulator.url + "/v4/locations", headers=headers, timeout=5)
    assert failed.status_code == 503 and failed.json()["code"] == "internal_server_error"
    requests.post(emulator.url + "/_emulator/config", json={"fail_rate": 0}, timeout=5)
    assert requests.get(emulator.url + "/v4/locations", headers=headers, timeout=5).status_code == 200
    stats = requests.get(emulator.url + "/_emulator/stats", timeout=5).json()
    assert stats["requests"] == 2 and stats["by_status"] == {"503": 1, "200": 1}
    assert stats["podium_versions"] == {"2021.04.01": 2} and stats["faults_injected"] == 1
    assert (
        requests.post(emulator.url + "/_emulator/config", json={"no_such_knob": 1}, timeout=5).status_code
        == 400
    )
    requests.post(emulator.url + "/_emulator/stats/reset", timeout=5)
    assert emulator.stats()["requests"] == 0
    dump = requests.get(emulator.url + "/_emulator/dump", timeout=5).text.splitlines()
    assert dump == list(emulator.state.dump_lines())


def test_control_api_adds_contacts_as_is_and_edits_them_as_podium_would(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    server = emulator_factory(empty_state())
    contact = make_contact(phones=["0412 345 678"], marketing_opted_in=False, transactional_opt_out="PHONE")
    added = requests.post(server.url + "/_emulator/contacts", json=contact, timeout=5)
    assert added.status_code == 201 and added.json()["data"] == contact
    edit = {"add_tag": "vip", "add_phone": "0499 000 111", "name": "Maria Podium"}
    edited = requests.post(
        f"{server.url}/_emulator/contacts/{contact['uid']}/edit", json=edit, timeout=5
    ).json()["data"]
    assert edited["name"] == "Maria Podium" and [t["label"] for t in edited["tags"]] == ["vip"]
    assert edited["phoneNumbers"] == ["0412 345 678", "0499 000 111"] and parse_us(
        edited["updatedAt"]
    ) > parse_us(contact["updatedAt"])
    assert (
        requests.get(f"{server.url}/_emulator/contacts/{contact['uid']}", timeout=5).json()["data"] == edited
    )
    bad = requests.post(f"{server.url}/_emulator/contacts/{contact['uid']}/edit", json={"fly": 1}, timeout=5)
    assert bad.status_code == 400
    assert requests.post(server.url + "/_emulator/contacts", json={"uid": "x"}, timeout=5).status_code == 400


def test_oauth_refresh_with_a_json_body_and_token_expiry(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    server = emulator_factory(empty_state(), scopes=["read_locations"])
    grant = {"client_id": "dev-client", "client_secret": "dev-secret", "grant_type": "refresh_token",
             "refresh_token": "dev-refresh"}  # fmt: skip
    token = requests.post(server.token_url, json=grant, timeout=5).json()
    assert set(token) == {"access_token", "refresh_token", "expires_in"}
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    assert requests.get(server.url + "/v4/locations", headers=bearer, timeout=5).status_code == 200
    denied = requests.get(server.url + "/v4/contacts", headers=bearer, timeout=5)
    assert denied.status_code == 403 and denied.json()["code"] == "unauthorized"
    assert requests.post(server.url + "/_emulator/expire-tokens", timeout=5).status_code == 200
    expired = requests.get(server.url + "/v4/locations", headers=bearer, timeout=5)
    assert expired.status_code == 401 and expired.json()["code"] == "unauthenticated"
    assert (
        requests.post(server.token_url, json={**grant, "client_secret": "no"}, timeout=5).status_code == 401
    )
    assert (
        requests.post(server.token_url, json={**grant, "grant_type": "password"}, timeout=5).status_code
        == 400
    )
    assert requests.post(server.token_url, data=grant, timeout=5).status_code == 400  # form-encoded
    assert server.stats()["token_refreshes"] == 1


def test_rate_limit_answers_429_with_retry_after(emulator_factory: Callable[..., EmulatorServer]) -> None:
    server = emulator_factory(empty_state(), rate_limit=120, rate_window_s=1.0)
    answers = [_get(server, "/v4/locations") for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429]
    assert answers[2].json()["code"] == "rate_limit" and answers[2].headers["Retry-After"] == "1"
    assert server.stats()["rate_limited"] == 1


def test_a_dropped_write_is_applied_although_the_connection_resets(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    state = empty_state()
    contact = state.add_contact(make_contact(phones=["0412 345 678"]))
    server = emulator_factory(state, drop_after_commit_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        _send(server, "PATCH", "/v4/contacts/+61412345678", {"name": "Committed"})
    assert state.get(contact["uid"])["name"] == "Committed"
    assert _get(server, "/v4/contacts/+61412345678").status_code == 200  # reads are never dropped
    assert server.stats()["drops"] == 1


def test_fail_next_fails_exactly_the_next_requests(emulator_factory: Callable[..., EmulatorServer]) -> None:
    server = emulator_factory(empty_state(), fail_next=2, fault_statuses=(502,))
    statuses = [_get(server, "/v4/locations").status_code for _ in range(3)]
    assert statuses == [502, 502, 200]


# --- the command line ---------------------------------------------------------------------------------------------


def _start_cli(args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise AssertionError(f"emulator did not start: {proc.stderr.read() if proc.stderr else ''}")
    return proc, line.rsplit(" ", 1)[-1].strip()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_command_line_serves_and_dumps_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    corpus = tmp_path / "corpus.ndjson"
    state = empty_state()
    uid = state.add_contact(make_contact(phones=["0412 345 678"]))["uid"]
    state.dump(corpus)
    dump = tmp_path / "dump.ndjson"
    proc, url = _start_cli([sys.executable, "-m", "podium_client.emulator", "--load", str(corpus), "--port", "0",
                            "--dump", str(dump), "--token", "t0k"])  # fmt: skip
    try:
        headers = {"Authorization": "Bearer t0k"}
        resp = requests.patch(
            url + "/v4/contacts/+61412345678", json={"name": "Dumped"}, headers=headers, timeout=5
        )
        assert resp.status_code == 202
        # Published API only by default.
        merge = requests.post(
            f"{url}/v4/contacts/{uid}/merge", json={"duplicateUids": [uid]}, headers=headers, timeout=5
        )
        assert merge.status_code == 404
    finally:
        proc.send_signal(sig)
        assert proc.wait(10) == 0
    assert EmulatorState.from_file(dump).get(uid)["name"] == "Dumped"


def test_command_line_refuses_an_old_shape_file(tmp_path: Path) -> None:
    old = tmp_path / "old.ndjson"
    old.write_text(json.dumps(OLD_LOCATION) + "\n" + json.dumps(OLD_CONTACT) + "\n")
    done = subprocess.run([sys.executable, "-m", "podium_client.emulator", "--load", str(old), "--port", "0"],
                          cwd=REPO, capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 2
    assert "line 1" in done.stderr and "old export shape" in done.stderr and "addressDetails" in done.stderr
    bad = subprocess.run([sys.executable, "-m", "podium_client.emulator", "--capabilities", "time-travel"],
                         cwd=REPO, capture_output=True, text=True, timeout=30)  # fmt: skip
    assert bad.returncode == 2 and "time-travel" in bad.stderr


def test_django_command_wraps_the_same_emulator(tmp_path: Path) -> None:
    state = empty_state()
    uid = state.add_contact(make_contact(phones=["0412 345 678"]))["uid"]
    corpus = tmp_path / "corpus.ndjson"
    state.dump(corpus)
    proc, url = _start_cli([sys.executable, "manage.py", "podium_emulator", "--load", str(corpus), "--port", "0",
                            "--seed", "3", "--capabilities", "restore"], env={"DEBUG": "1"})  # fmt: skip
    try:
        resp = requests.get(
            url + f"/v4/contacts/{uid}", headers={"Authorization": "Bearer dev-token"}, timeout=5
        )
        assert resp.status_code == 200 and resp.json()["data"]["uid"] == uid
        config = requests.get(url + "/_emulator/config", timeout=5).json()
        assert config["seed"] == 3 and config["capabilities"] == ["restore"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_started_emulator_answers_quickly() -> None:
    """A few hundred requests per second even on a busy machine: tests and demos do not wait on it."""
    with EmulatorServer(empty_state()) as server:
        session = requests.Session()
        started = time.perf_counter()
        for _ in range(100):
            assert (
                session.get(server.url + "/v4/locations", headers=auth(server), timeout=5).status_code == 200
            )
        assert time.perf_counter() - started < 5
