"""The retry policy: transient faults converge, and a call that must not be sent twice (create, merge)
is never repeated when its outcome is in doubt."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from podium_client import (
    APIConnectionError,
    InvalidRequestError,
    MergeOutcomeUnknown,
    NotFoundError,
    PodiumClient,
    RateLimitError,
    ServerError,
)
from podium_client.corpus import ORGANIZATION_UID, SYDNEY
from podium_client.emulator import EmulatorServer
from tests.fixtures_emulator import empty_state, make_contact
from tests.test_client_malformed import ScriptedServer, answer, error

Factory = Callable[..., EmulatorServer]
ClientFactory = Callable[..., PodiumClient]
PRIMARY, DUPLICATE = "b0000000-0000-4000-8000-000000000001", "b0000000-0000-4000-8000-000000000002"


@pytest.fixture
def pair(emulator_factory: Factory) -> EmulatorServer:
    """Maria twice, on a tenant with the merge capability (the published calls behave the same)."""
    state = empty_state(capabilities="merge")
    state.add_contact(make_contact(PRIMARY, phones=["0412 345 678"], emails=["maria@example.com"]))
    state.add_contact(make_contact(DUPLICATE, phones=["+61412345678"], conversations=2))
    return emulator_factory(state)


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    yield server
    server.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _route(server: EmulatorServer, name: str) -> int:
    return int(server.stats()["by_route"].get(name, 0))


def test_a_long_listing_and_writes_converge_through_30_percent_faults(
    emulator_factory: Factory, podium_factory: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = emulator_factory(people=1200, corpus_seed=9, seed=42)
    expected = {c["uid"] for c in server.state.contacts()}
    reachable = [c for c in server.state.contacts() if c["conversations"]][:60]
    server.fail_rate = 0.3
    client = podium_factory(server, max_retries=10)
    caplog.set_level(logging.WARNING, logger="podium_client")

    listed = [c.uid for c in client.iter_contacts(limit=50)]
    assert sorted(listed) == sorted(expected) and len(listed) == len(expected)
    for i, contact in enumerate(reachable):
        client.update_contact(contact["conversations"][0]["uid"], {"name": f"Batch {i}"})

    server.fail_rate = 0.0
    assert [server.state.get(c["uid"])["name"] for c in reachable] == [
        f"Batch {i}" for i in range(len(reachable))
    ]
    stats = server.stats()
    assert stats["faults_injected"] > 20
    assert {"500", "502", "503", "429"} <= set(stats["by_status"])
    retries = [r for r in caplog.records if r.name == "podium_client" and "retry" in r.getMessage()]
    assert len(retries) == stats["faults_injected"]
    assert all(r.levelno == logging.WARNING for r in retries)


def test_retry_log_lines_never_carry_contact_data(
    pair: EmulatorServer, podium_factory: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client = podium_factory(pair)
    caplog.set_level(logging.DEBUG, logger="podium_client")
    pair.configure(fail_next=2, fault_statuses=[503])
    client.update_contact("maria@example.com", {"name": "Maria Secret", "phoneNumber": "+61499888777"})
    # The client's own lines (the emulator's access log, at DEBUG, is the test server's).
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "podium_client")
    assert text.count("retry") == 2
    assert "PATCH /v4/contacts/{identifier}" in text and "internal_server_error" in text
    for secret in ("maria", "Secret", "499888777", "+614"):
        assert secret not in text


def test_gives_up_after_max_retries_with_the_last_error(
    pair: EmulatorServer, podium_factory: ClientFactory
) -> None:
    client = podium_factory(pair, max_retries=2)
    pair.configure(fail_next=3, fault_statuses=[500])
    with pytest.raises(ServerError) as info:
        client.get_contact("maria@example.com")
    assert (info.value.http_status, info.value.code) == (500, "internal_server_error")
    assert pair.stats()["requests"] == 3 and client.requests_sent == 3
    pair.configure(fail_next=3, fault_statuses=[429])
    with pytest.raises(RateLimitError) as limited:
        client.get_contact("maria@example.com")
    assert (limited.value.http_status, limited.value.code, limited.value.retry_after) == (
        429,
        "rate_limit",
        0,
    )


def test_an_html_502_is_a_server_error(pair: EmulatorServer, podium_factory: ClientFactory) -> None:
    client = podium_factory(pair, max_retries=0)
    pair.configure(fail_next=1, fault_statuses=[502])
    with pytest.raises(ServerError) as info:
        client.list_locations()
    assert info.value.http_status == 502 and info.value.code is None
    assert b"Bad Gateway" in info.value.body


def test_retry_after_is_honoured(pair: EmulatorServer, podium_factory: ClientFactory) -> None:
    client = podium_factory(pair)
    pair.configure(fail_next=1, fault_statuses=[429], fault_retry_after=0.3)
    started = time.monotonic()
    client.get_contact("maria@example.com")
    assert time.monotonic() - started >= 0.3


def test_a_retry_after_beyond_the_limit_surfaces_at_once(
    pair: EmulatorServer, podium_factory: ClientFactory
) -> None:
    client = podium_factory(pair, max_retry_after=5)
    pair.configure(fail_next=1, fault_statuses=[429], fault_retry_after=3600)
    started = time.monotonic()
    with pytest.raises(RateLimitError) as info:
        client.get_contact("maria@example.com")
    assert info.value.retry_after == 3600 and time.monotonic() - started < 1


@pytest.mark.parametrize("status", [400, 403, 503])
def test_rate_limit_is_retried_at_any_status(scripted: ScriptedServer, status: int) -> None:
    scripted.on("/v4/contacts", error(status, "rate_limit", "slow down", {"Retry-After": "0"}),
                answer({"data": {"identifier": "+61400111222"}}, 202))  # fmt: skip
    with PodiumClient(scripted.url, access_token="t", backoff_base=0.001) as client:
        # Even a create: a call refused for pace was not carried out.
        assert client.create_contact("New", [SYDNEY], phone_number="+61400111222") == "+61400111222"
    assert len(scripted.calls("/v4/contacts")) == 2


def test_client_errors_are_not_retried(pair: EmulatorServer, podium_factory: ClientFactory) -> None:
    client = podium_factory(pair)
    with pytest.raises(NotFoundError):
        client.get_contact("nobody@example.com")
    with pytest.raises(InvalidRequestError):
        client.update_contact("maria@example.com", {"phoneNumber": "0412"})
    assert pair.stats()["requests"] == 2


# --- calls that must not be sent twice ------------------------------------------------------------------

CREATES: dict[str, tuple[Callable[[PodiumClient], Any], str]] = {
    "contact": (lambda c: c.create_contact("Once Only", [SYDNEY], phone_number="+61400000009"), "POST /v4/contacts"),
    "tag": (lambda c: c.create_tag("once-only"), "POST /v4/contact_tags"),
    "webhook": (lambda c: c.create_webhook("https://x.example.com/h", ["contact.updated"], "s",
                                           organization_uid=ORGANIZATION_UID), "POST /v4/webhooks"),
}  # fmt: skip


@pytest.mark.parametrize("what", sorted(CREATES))
def test_a_create_whose_answer_is_lost_is_not_repeated(
    pair: EmulatorServer, podium_factory: ClientFactory, what: str
) -> None:
    call, route = CREATES[what]
    client = podium_factory(pair)
    pair.drop_after_commit_rate = 1.0
    with pytest.raises(APIConnectionError, match="outcome unknown"):
        call(client)
    assert _route(pair, route) == 1 and pair.stats()["drops"] == 1


@pytest.mark.parametrize("status", [500, 502])
@pytest.mark.parametrize("what", sorted(CREATES))
def test_a_create_answered_with_an_ambiguous_5xx_is_not_repeated(
    pair: EmulatorServer, podium_factory: ClientFactory, what: str, status: int
) -> None:
    call, route = CREATES[what]
    client = podium_factory(pair)
    pair.configure(fail_next=1, fault_statuses=[status])
    with pytest.raises(ServerError):
        call(client)
    assert _route(pair, route) == 1


@pytest.mark.parametrize("status", [503, 429])
@pytest.mark.parametrize("what", sorted(CREATES))
def test_a_create_refused_before_anything_was_done_is_retried(
    pair: EmulatorServer, podium_factory: ClientFactory, what: str, status: int
) -> None:
    call, route = CREATES[what]
    client = podium_factory(pair)
    pair.configure(fail_next=2, fault_statuses=[status])
    call(client)
    assert _route(pair, route) == 3 and pair.stats()["writes"] == 1


@pytest.mark.parametrize("status", [503, 429])
def test_a_merge_refused_before_anything_was_done_is_retried(
    pair: EmulatorServer, podium_factory: ClientFactory, status: int
) -> None:
    client = podium_factory(pair, capabilities=["merge"])
    pair.configure(fail_next=2, fault_statuses=[status])
    primary = client.merge(PRIMARY, [DUPLICATE])
    assert len(primary.conversation_uids) == 3
    assert _route(pair, "POST /v4/contacts/{uid}/merge") == 3 and pair.stats()["merges"] == 1


@pytest.mark.parametrize("status", [500, 502])
def test_a_merge_answered_with_an_ambiguous_5xx_is_outcome_unknown(
    pair: EmulatorServer, podium_factory: ClientFactory, status: int
) -> None:
    client = podium_factory(pair, capabilities=["merge"])
    pair.configure(fail_next=1, fault_statuses=[status])
    with pytest.raises(MergeOutcomeUnknown) as info:
        client.merge(PRIMARY, [DUPLICATE])
    err = info.value
    assert (err.primary_uid, err.duplicate_uids, err.http_status) == (PRIMARY, (DUPLICATE,), status)
    assert "outcome unknown" in str(err) and "reconcile" in str(err)
    assert _route(pair, "POST /v4/contacts/{uid}/merge") == 1


def test_a_merge_whose_answer_is_lost_is_outcome_unknown_and_was_applied(
    pair: EmulatorServer, podium_factory: ClientFactory
) -> None:
    client = podium_factory(pair, capabilities=["merge"])
    pair.drop_after_commit_rate = 1.0
    with pytest.raises(MergeOutcomeUnknown) as info:
        client.merge(PRIMARY, [DUPLICATE])
    pair.drop_after_commit_rate = 0.0
    assert "after sending" in info.value.cause
    stats = pair.stats()
    assert stats["drops"] == 1 and stats["merges"] == 1 and _route(pair, "POST /v4/contacts/{uid}/merge") == 1
    # The caller reconciles by reading: the merge did happen.
    assert client.get_contact(DUPLICATE).merged_into_uid == PRIMARY
    assert len(client.get_contact(PRIMARY).conversation_uids) == 3


def test_a_merge_read_timeout_is_outcome_unknown(pair: EmulatorServer, podium_factory: ClientFactory) -> None:
    client = podium_factory(pair, capabilities=["merge"], timeout=0.15)
    pair.latency_ms = 400
    with pytest.raises(MergeOutcomeUnknown) as info:
        client.merge(PRIMARY, [DUPLICATE])
    assert "ReadTimeout" in info.value.cause
    deadline = time.monotonic() + 3
    while not pair.state.get(DUPLICATE)["mergedIntoUid"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pair.state.get(DUPLICATE)["mergedIntoUid"] == PRIMARY
    assert _route(pair, "POST /v4/contacts/{uid}/merge") == 1


def test_a_dropped_patch_is_repeated_and_lands_once(
    pair: EmulatorServer, podium_factory: ClientFactory
) -> None:
    client = podium_factory(pair)
    pair.drop_after_commit_rate = 1.0
    with pytest.raises(APIConnectionError):
        client.update_contact("maria@example.com", {"name": "First"})
    assert _route(pair, "PATCH /v4/contacts/{identifier}") == client.max_retries + 1
    pair.configure(drop_after_commit_rate=0.5, seed=3)
    client.update_contact("maria@example.com", {"name": "Second", "email": "maria@example.com"})
    pair.drop_after_commit_rate = 0.0
    maria = client.get_contact("maria@example.com")
    assert maria.name == "Second" and maria.emails == ("maria@example.com",)
    assert pair.stats()["drops"] >= client.max_retries + 1


@pytest.mark.parametrize("call", ["merge", "create"])
def test_a_refused_connection_is_retried_even_for_merge_and_create(
    call: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = PodiumClient(f"http://127.0.0.1:{_free_port()}", access_token="t", max_retries=2,
                          backoff_base=0.001, backoff_cap=0.002, capabilities=["merge"])  # fmt: skip
    caplog.set_level(logging.WARNING, logger="podium_client")
    with pytest.raises(APIConnectionError) as info:
        if call == "merge":
            client.merge(PRIMARY, [DUPLICATE])
        else:
            client.create_contact("X", [SYDNEY])
    # Nothing was sent, so the outcome is not in doubt, and it was retried.
    assert not isinstance(info.value, MergeOutcomeUnknown) and "before sending" in str(info.value)
    assert sum("retry" in r.getMessage() for r in caplog.records) == 2
    assert client.requests_sent == 3
    client.close()


def test_a_restarted_server_is_reached_again(pair: EmulatorServer, podium_factory: ClientFactory) -> None:
    client = podium_factory(pair, max_retries=1)
    client.get_contact("maria@example.com")
    pair.stop()
    with pytest.raises(APIConnectionError):
        client.get_contact("maria@example.com")
    pair.start()
    assert client.get_contact("maria@example.com").uid == PRIMARY


def test_read_timeouts_on_reads_are_retried(pair: EmulatorServer, podium_factory: ClientFactory) -> None:
    client = podium_factory(pair, timeout=0.1, max_retries=1)
    pair.latency_ms = 300
    with pytest.raises(APIConnectionError, match="ReadTimeout"):
        client.get_contact("maria@example.com")
    assert pair.stats()["requests"] == 2
