"""The retry policy: transient faults converge, merges are never repeated blindly."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable

import pytest

from podium_client import (
    APIConnectionError,
    Channel,
    MergeOutcomeUnknown,
    NotFoundError,
    PodiumClient,
    RateLimitError,
    ServerError,
)
from podium_client.emulator import EmulatorServer
from tests.fixtures_emulator import empty_state, make_contact

Factory = Callable[..., EmulatorServer]
ClientFactory = Callable[..., PodiumClient]


@pytest.fixture
def pair(emulator_factory: Factory) -> EmulatorServer:
    state = empty_state()
    state.add_contact(
        make_contact("ct_0000001_aaaaaa", phones=["0412 345 678"], emails=["maria@example.com"])
    )
    state.add_contact(make_contact("ct_0000002_bbbbbb", phones=["+61412345678"], conversation_count=2))
    return emulator_factory(state)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_long_listing_and_updates_converge_through_30_percent_faults(
    emulator_factory: Factory, podium_factory: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = emulator_factory(people=1200, corpus_seed=9, seed=42)
    expected = {c.uid for c in server.state.contacts("loc_sydney", include_deleted=False)}
    server.fail_rate = 0.3
    client = podium_factory(server, max_retries=10)
    caplog.set_level(logging.WARNING, logger="podium_client")

    listed = [c.uid for c in client.iter_contacts("loc_sydney", page_size=50)]
    assert sorted(listed) == sorted(expected)
    targets = sorted(expected)[:60]
    for i, uid in enumerate(targets):
        client.update_contact(uid, {"tags": [f"batch-{i}"]})

    server.fail_rate = 0.0
    assert all(server.state.get(uid).tags == (f"batch-{i}",) for i, uid in enumerate(targets))
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
    client.update_contact(
        "ct_0000001_aaaaaa", {"channels": [Channel.phone("0499 888 777"), Channel.email("x@example.com")]}
    )
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert text.count("retry") == 2
    assert "PATCH /v4/contacts/ct_0000001_aaaaaa" in text and "503" in text
    for secret in ("0499", "888 777", "x@example.com", "maria"):
        assert secret not in text


def test_gives_up_after_max_retries_with_the_last_error(
    pair: EmulatorServer, podium_factory: ClientFactory
) -> None:
    client = podium_factory(pair, max_retries=2)
    pair.configure(fail_next=3, fault_statuses=[500])
    with pytest.raises(ServerError) as info:
        client.get_contact("ct_0000001_aaaaaa")
    assert info.value.http_status == 500 and info.value.code == "server_error"
    assert pair.stats()["requests"] == 3
    pair.configure(fail_next=3, fault_statuses=[429])
    with pytest.raises(RateLimitError) as rl:
        client.get_contact("ct_0000001_aaaaaa")
    assert rl.value.retry_after == 0


def test_html_502_is_a_server_error(pair: EmulatorServer, podium_factory: ClientFactory) -> None:
    client = podium_factory(pair, max_retries=0)
    pair.configure(fail_next=1, fault_statuses=[502])
    with pytest.raises(ServerError) as info:
        client.list_locations()
    assert info.value.http_status == 502 and info.value.code is None
    assert b"Bad Gateway" in info.value.body


def test_retry_after_is_honored(pair: EmulatorServer, podium_factory: ClientFactory) -> None:
    client = podium_factory(pair)
    pair.configure(fail_next=1, fault_statuses=[429], fault_retry_after=0.3)
    started = time.monotonic()
    client.get_contact("ct_0000001_aaaaaa")
    assert time.monotonic() - started >= 0.3


def test_a_retry_after_beyond_the_limit_surfaces_at_once(
    pair: EmulatorServer, podium_factory: ClientFactory
) -> None:
    client = podium_factory(pair, max_retry_after=5)
    pair.configure(fail_next=1, fault_statuses=[429], fault_retry_after=3600)
    started = time.monotonic()
    with pytest.raises(RateLimitError) as info:
        client.get_contact("ct_0000001_aaaaaa")
    assert info.value.retry_after == 3600 and time.monotonic() - started < 1


def test_client_errors_are_not_retried(pair: EmulatorServer, podium_factory: ClientFactory) -> None:
    client = podium_factory(pair)
    with pytest.raises(NotFoundError):
        client.get_contact("ct_9999999_ffffff")
    assert pair.stats()["requests"] == 1


@pytest.mark.parametrize("status", [503, 429])
def test_merge_retries_answers_given_before_anything_was_done(
    pair: EmulatorServer, podium_factory: ClientFactory, status: int
) -> None:
    client = podium_factory(pair)
    pair.configure(fail_next=2, fault_statuses=[status])
    primary = client.merge("ct_0000001_aaaaaa", ["ct_0000002_bbbbbb"])
    assert primary.conversation_count == 2
    stats = pair.stats()
    assert stats["by_route"]["POST /v4/contacts/{uid}/merge"] == 3 and stats["merges"] == 1


@pytest.mark.parametrize("status", [500, 502])
def test_merge_with_an_ambiguous_5xx_is_not_retried(
    pair: EmulatorServer, podium_factory: ClientFactory, status: int
) -> None:
    client = podium_factory(pair)
    pair.configure(fail_next=1, fault_statuses=[status])
    with pytest.raises(MergeOutcomeUnknown) as info:
        client.merge("ct_0000001_aaaaaa", ["ct_0000002_bbbbbb"])
    err = info.value
    assert err.primary_uid == "ct_0000001_aaaaaa" and err.duplicate_uids == ("ct_0000002_bbbbbb",)
    assert err.http_status == status
    assert "outcome unknown" in str(err) and "reconcile" in str(err)
    assert pair.stats()["by_route"]["POST /v4/contacts/{uid}/merge"] == 1


def test_dropped_merge_response_is_outcome_unknown_and_the_merge_was_applied(
    pair: EmulatorServer, podium_factory: ClientFactory
) -> None:
    client = podium_factory(pair)
    pair.drop_after_commit_rate = 1.0
    with pytest.raises(MergeOutcomeUnknown) as info:
        client.merge("ct_0000001_aaaaaa", ["ct_0000002_bbbbbb"])
    pair.drop_after_commit_rate = 0.0
    assert info.value.duplicate_uids == ("ct_0000002_bbbbbb",)
    stats = pair.stats()
    assert stats["drops"] == 1 and stats["merges"] == 1
    assert stats["by_route"]["POST /v4/contacts/{uid}/merge"] == 1
    # The caller reconciles by reading: the merge did happen.
    assert client.get_contact("ct_0000002_bbbbbb").merged_into_uid == "ct_0000001_aaaaaa"
    assert client.get_contact("ct_0000001_aaaaaa").conversation_count == 2


def test_merge_read_timeout_is_outcome_unknown(pair: EmulatorServer, podium_factory: ClientFactory) -> None:
    client = podium_factory(pair, timeout=0.15)
    pair.latency_ms = 400
    with pytest.raises(MergeOutcomeUnknown) as info:
        client.merge("ct_0000001_aaaaaa", ["ct_0000002_bbbbbb"])
    assert "ReadTimeout" in info.value.cause
    deadline = time.monotonic() + 3
    while not pair.state.get("ct_0000002_bbbbbb").is_deleted and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pair.state.get("ct_0000002_bbbbbb").merged_into_uid == "ct_0000001_aaaaaa"


def test_dropped_patch_is_retried_and_lands_once(pair: EmulatorServer, podium_factory: ClientFactory) -> None:
    client = podium_factory(pair)
    pair.drop_after_commit_rate = 1.0
    pair.configure(seed=1)
    with pytest.raises(APIConnectionError):
        client.update_contact("ct_0000001_aaaaaa", {"smsOptOut": True})
    assert pair.stats()["by_route"]["PATCH /v4/contacts/{uid}"] == client.max_retries + 1
    pair.drop_after_commit_rate = 0.5
    updated = client.update_contact("ct_0000001_aaaaaa", {"emailOptOut": True})
    assert updated.email_opt_out and updated.sms_opt_out


def test_dropped_create_is_not_repeated(pair: EmulatorServer, podium_factory: ClientFactory) -> None:
    client = podium_factory(pair)
    before = len(pair.state)
    pair.drop_after_commit_rate = 1.0
    with pytest.raises(APIConnectionError, match="outcome unknown"):
        client.create_contact("loc_sydney", name="Once Only")
    assert len(pair.state) == before + 1
    assert pair.stats()["by_route"]["POST /v4/contacts"] == 1


def test_connection_refused_is_retried_even_for_merge(
    podium_factory: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    port = _free_port()
    client = PodiumClient(
        f"http://127.0.0.1:{port}", access_token="t", max_retries=2, backoff_base=0.001, backoff_cap=0.002
    )
    caplog.set_level(logging.WARNING, logger="podium_client")
    with pytest.raises(APIConnectionError) as info:
        client.merge("ct_0000001_aaaaaa", ["ct_0000002_bbbbbb"])
    # Nothing was sent, so it is not an unknown outcome, and it was retried.
    assert not isinstance(info.value, MergeOutcomeUnknown)
    assert "before sending" in str(info.value)
    assert sum("retry" in r.getMessage() for r in caplog.records) == 2
    client.close()


def test_a_restarted_server_is_reached_again(pair: EmulatorServer, podium_factory: ClientFactory) -> None:
    client = podium_factory(pair)
    client.get_contact("ct_0000001_aaaaaa")
    pair.stop()
    with pytest.raises(APIConnectionError):
        client.get_contact("ct_0000001_aaaaaa")
    pair.start()
    assert client.get_contact("ct_0000001_aaaaaa").uid == "ct_0000001_aaaaaa"


def test_read_timeouts_on_reads_are_retried(pair: EmulatorServer, podium_factory: ClientFactory) -> None:
    client = podium_factory(pair, timeout=0.1, max_retries=1)
    pair.latency_ms = 300
    with pytest.raises(APIConnectionError, match="ReadTimeout"):
        client.get_contact("ct_0000001_aaaaaa")
    assert pair.stats()["requests"] == 2
