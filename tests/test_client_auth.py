"""Bearer tokens: static tokens, and the OAuth2 refresh-token flow against the emulator's token endpoint."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from podium_client import APIConnectionError, AuthenticationError, OAuthCredentials, PodiumClient
from podium_client.emulator import EmulatorServer

Factory = Callable[..., EmulatorServer]
ClientFactory = Callable[..., PodiumClient]


def _oauth(server: EmulatorServer, secret: str = "dev-secret") -> OAuthCredentials:
    return OAuthCredentials(server.token_url, "dev-client", secret, "dev-refresh")


def test_credentials_repr_hides_secrets() -> None:
    text = repr(OAuthCredentials("https://x/oauth/token", "client", "s3cret", "r3fresh"))
    assert "s3cret" not in text and "r3fresh" not in text and "client" in text


def test_client_needs_some_credentials() -> None:
    with pytest.raises(ValueError):
        PodiumClient("http://127.0.0.1:1")


def test_first_call_fetches_a_token(emulator_factory: Factory, podium_factory: ClientFactory) -> None:
    server = emulator_factory()
    client = podium_factory(server, oauth=_oauth(server))
    assert client.list_locations()
    assert server.stats()["token_refreshes"] == 1 and client.token_refresh_count == 1
    client.list_locations()
    assert server.stats()["token_refreshes"] == 1


def test_expired_token_is_refreshed_once_and_the_call_retried(
    emulator_factory: Factory, podium_factory: ClientFactory
) -> None:
    server = emulator_factory()
    client = podium_factory(server, oauth=_oauth(server))
    client.list_locations()
    server.expire_tokens()
    assert client.list_locations()
    stats = server.stats()
    assert stats["token_refreshes"] == 2
    assert stats["by_status"] == {"200": 2, "401": 1}


def test_a_second_401_surfaces(emulator_factory: Factory, podium_factory: ClientFactory) -> None:
    # Tokens that expire at once: the proactive refresh, then the one refresh after a 401, then stop.
    server = emulator_factory(token_ttl=0)
    client = podium_factory(server, oauth=_oauth(server))
    with pytest.raises(AuthenticationError) as info:
        client.list_locations()
    assert (info.value.http_status, info.value.code) == (401, "token_expired")
    stats = server.stats()
    # Exactly one retry after the refresh; no loop of refresh-and-retry.
    assert stats["by_status"] == {"401": 2}
    assert client.token_refresh_count >= 2


def test_token_is_refreshed_before_it_expires(
    emulator_factory: Factory, podium_factory: ClientFactory
) -> None:
    server = emulator_factory(token_ttl=0.5)
    client = podium_factory(server, oauth=_oauth(server))
    client.list_locations()
    time.sleep(0.5)
    client.list_locations()
    stats = server.stats()
    assert stats["token_refreshes"] == 2
    assert "401" not in stats["by_status"]


def test_static_token_cannot_be_refreshed(emulator_factory: Factory, podium_factory: ClientFactory) -> None:
    server = emulator_factory()
    client = podium_factory(server, access_token="not-the-token")
    with pytest.raises(AuthenticationError) as info:
        client.get_contact("ct_0000001_aaaaaa")
    assert info.value.code == "unauthorized"


def test_refused_refresh_is_an_authentication_error(
    emulator_factory: Factory, podium_factory: ClientFactory
) -> None:
    server = emulator_factory()
    client = podium_factory(server, oauth=_oauth(server, secret="wrong"))
    with pytest.raises(AuthenticationError, match="refused") as info:
        client.list_locations()
    assert info.value.http_status == 401
    assert server.stats()["requests"] == 0


def test_unreachable_token_endpoint_is_retried_then_a_connection_error(
    emulator_factory: Factory, podium_factory: ClientFactory
) -> None:
    server = emulator_factory()
    oauth = OAuthCredentials("http://127.0.0.1:9/oauth/token", "dev-client", "dev-secret", "dev-refresh")
    client = podium_factory(server, oauth=oauth, max_retries=2)
    with pytest.raises(APIConnectionError):
        client.list_locations()
    assert server.stats()["requests"] == 0


def test_many_threads_with_an_expired_token_refresh_once(
    emulator_factory: Factory, podium_factory: ClientFactory
) -> None:
    server = emulator_factory()
    client = podium_factory(server, oauth=_oauth(server))
    client.list_locations()
    server.expire_tokens()
    barrier = threading.Barrier(8)
    failures: list[BaseException] = []

    def work() -> None:
        barrier.wait()
        try:
            client.list_locations()
        except AuthenticationError as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert server.stats()["token_refreshes"] == 2
