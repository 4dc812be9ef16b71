"""The emulator itself: state, control endpoints, load/dump, and the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from podium_client import Contact, MalformedResponse, PodiumClient
from podium_client.emulator import EmulatorError, EmulatorServer, EmulatorState
from tests.fixtures_emulator import empty_state, make_contact

REPO = Path(__file__).resolve().parents[1]


def test_demo_emulator_serves_the_corpus(
    emulator: EmulatorServer, podium: PodiumClient, demo_corpus: tuple[list[str], dict[str, str]]
) -> None:
    lines, truth = demo_corpus
    assert len(emulator.state) == len(truth)
    listed = {
        c.uid for loc in podium.list_locations() for c in podium.iter_contacts(loc.uid, include_deleted=True)
    }
    assert listed == set(truth)


def test_dump_and_load_round_trip(tmp_path: Path, demo_corpus: tuple[list[str], dict[str, str]]) -> None:
    state = EmulatorState.from_lines(demo_corpus[0])
    assert list(state.dump_lines()) == demo_corpus[0]
    state.patch(state.contacts()[0].uid, {"tags": [{"label": "changed"}]})
    target = tmp_path / "state.ndjson"
    state.dump(target)
    again = EmulatorState.from_file(target)
    assert again.contacts() == state.contacts()
    assert again.locations() == state.locations()
    assert not list(tmp_path.glob(".*.tmp"))


def test_load_names_the_bad_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ndjson"
    good = json.dumps(make_contact("ct_0000001_aaaaaa").to_wire())
    bad.write_text(good + "\n{not json\n")
    with pytest.raises(MalformedResponse, match="line 2"):
        EmulatorState.from_file(bad)
    bad.write_text(good + "\n" + json.dumps({"uid": "ct_0000002_bbbbbb"}) + "\n")
    with pytest.raises(MalformedResponse, match="line 2"):
        EmulatorState.from_file(bad)
    bad.write_text(good + "\n" + good + "\n")
    with pytest.raises(MalformedResponse, match="duplicate contact uid"):
        EmulatorState.from_file(bad)


def test_updated_at_moves_strictly_on_every_mutation() -> None:
    state = empty_state()
    uid = state.add_contact(make_contact()).uid
    stamps = [state.get(uid).updated_at]
    for i in range(200):
        state.patch(uid, {"name": f"n{i}"})
        stamps.append(state.get(uid).updated_at)
    assert all(a < b for a, b in zip(stamps, stamps[1:], strict=False))


def test_updated_at_never_goes_back_from_a_future_timestamp() -> None:
    from datetime import UTC, datetime

    state = empty_state()
    future = datetime(2099, 1, 1, tzinfo=UTC)
    uid = state.add_contact(make_contact(created_at=future)).uid
    state.delete(uid)
    assert state.get(uid).updated_at > future


def test_new_uids_follow_the_loaded_ones() -> None:
    state = empty_state(seed=3)
    state.add_contact(make_contact("ct_0000041_aaaaaa"))
    created = json.loads(state.create({"locationUid": "loc_sydney", "name": "New"}))
    assert created["uid"].startswith("ct_0000042_")


def test_create_validates_its_body() -> None:
    state = empty_state()
    body: Any
    for body in (
        [],
        {"name": "x"},
        {"locationUid": "loc_sydney", "uid": "ct_1"},
        {"locationUid": "loc_sydney", "channels": [{"type": "FAX", "identifier": "1"}]},
        {"locationUid": "loc_sydney", "tags": ["vip"]},
        {"locationUid": "loc_sydney", "conversationCount": -1},
    ):
        with pytest.raises(EmulatorError) as info:
            state.create(body)
        assert (info.value.status, info.value.code) == (400, "invalid_request")


def test_control_endpoints_steer_and_report(emulator: EmulatorServer) -> None:
    resp = requests.post(
        emulator.url + "/_emulator/config", json={"fail_rate": 1.0, "fault_statuses": [503]}, timeout=5
    )
    assert resp.status_code == 200 and resp.json()["fail_rate"] == 1.0
    assert emulator.fail_rate == 1.0 and emulator.fault_statuses == (503,)
    auth = {"Authorization": f"Bearer {emulator.token}"}
    assert requests.get(emulator.url + "/v4/locations", headers=auth, timeout=5).status_code == 503
    requests.post(emulator.url + "/_emulator/config", json={"fail_rate": 0}, timeout=5)
    assert requests.get(emulator.url + "/v4/locations", headers=auth, timeout=5).status_code == 200
    stats = requests.get(emulator.url + "/_emulator/stats", timeout=5).json()
    assert stats["requests"] == 2 and stats["by_status"] == {"503": 1, "200": 1}
    assert stats["hard_delete_attempts"] == 0 and stats["merges"] == 0 and stats["drops"] == 0
    bad = requests.post(emulator.url + "/_emulator/config", json={"no_such_knob": 1}, timeout=5)
    assert bad.status_code == 400
    requests.post(emulator.url + "/_emulator/stats/reset", timeout=5)
    assert emulator.stats()["requests"] == 0
    dump = requests.get(emulator.url + "/_emulator/dump", timeout=5).text.splitlines()
    assert dump == list(emulator.state.dump_lines())


def test_expire_tokens_over_http(
    emulator: EmulatorServer, podium_factory: Callable[..., PodiumClient]
) -> None:
    from podium_client import OAuthCredentials

    client = podium_factory(
        emulator, oauth=OAuthCredentials(emulator.token_url, "dev-client", "dev-secret", "dev-refresh")
    )
    client.list_locations()
    assert requests.post(emulator.url + "/_emulator/expire-tokens", timeout=5).status_code == 200
    client.list_locations()
    assert emulator.stats()["by_status"]["401"] == 1


def test_unknown_endpoints_and_methods(emulator: EmulatorServer) -> None:
    auth = {"Authorization": f"Bearer {emulator.token}"}
    assert requests.get(emulator.url + "/v5/contacts", headers=auth, timeout=5).status_code == 404
    assert requests.post(emulator.url + "/v4/locations", headers=auth, timeout=5).status_code == 405
    assert requests.get(emulator.url + "/v4/locations", timeout=5).json()["error"]["code"] == "unauthorized"


def test_merge_body_is_validated(emulator: EmulatorServer) -> None:
    uid = emulator.state.contacts()[0].uid
    auth = {"Authorization": f"Bearer {emulator.token}"}
    body: Any
    for body in (
        {},
        {"duplicateUids": []},
        {"duplicateUids": "ct_1"},
        {"duplicateUids": [1]},
        {"dups": ["x"]},
    ):
        resp = requests.post(f"{emulator.url}/v4/contacts/{uid}/merge", json=body, headers=auth, timeout=5)
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_request", body


def test_state_merge_helper_and_in_flight_release() -> None:
    state = empty_state()
    a = state.add_contact(make_contact(conversation_count=1))
    b = state.add_contact(make_contact(conversation_count=4))
    primary = state.merge(a.uid, [b.uid])
    assert isinstance(primary, Contact) and primary.conversation_count == 5
    assert state.in_flight() == frozenset()
    with pytest.raises(EmulatorError) as info:
        state.merge(a.uid, [b.uid])
    assert info.value.code == "invalid_duplicate_uid"
    assert state.in_flight() == frozenset()


def _start_cli(args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        args,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    for _ in range(5):
        line = proc.stdout.readline()
        if "listening on" in line:
            return proc, line.rsplit(" ", 1)[-1].strip()
    proc.kill()
    raise AssertionError(f"emulator did not start: {proc.stderr.read() if proc.stderr else ''}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_command_line_serves_and_dumps_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    corpus = tmp_path / "corpus.ndjson"
    state = empty_state()
    uid = state.add_contact(make_contact("ct_0000001_aaaaaa")).uid
    state.dump(corpus)
    dump = tmp_path / "dump.ndjson"
    proc, url = _start_cli(
        [
            sys.executable,
            "-m",
            "podium_client.emulator",
            "--load",
            str(corpus),
            "--port",
            "0",
            "--dump",
            str(dump),
            "--token",
            "t0k",
        ]
    )
    try:
        client = PodiumClient(url, access_token="t0k", max_retries=0)
        client.update_contact(uid, {"marketingOptOut": True})
        client.close()
    finally:
        proc.send_signal(sig)
        assert proc.wait(10) == 0
    assert EmulatorState.from_file(dump).get(uid).marketing_opt_out is True


def test_django_command_wraps_the_same_emulator(tmp_path: Path) -> None:
    state = empty_state()
    state.add_contact(make_contact("ct_0000001_aaaaaa"))
    corpus = tmp_path / "corpus.ndjson"
    state.dump(corpus)
    proc, url = _start_cli(
        [
            sys.executable,
            "manage.py",
            "podium_emulator",
            "--load",
            str(corpus),
            "--port",
            "0",
            "--fail-rate",
            "0",
            "--seed",
            "3",
        ],
        env={"DEBUG": "1"},
    )
    try:
        resp = requests.get(
            url + "/v4/contacts/ct_0000001_aaaaaa", headers={"Authorization": "Bearer dev-token"}, timeout=5
        )
        assert resp.status_code == 200 and resp.json()["data"]["uid"] == "ct_0000001_aaaaaa"
        config = requests.get(url + "/_emulator/config", timeout=5).json()
        assert config["seed"] == 3 and config["token"] == "dev-token"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
