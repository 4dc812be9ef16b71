"""Bearer tokens: a static token, and Podium's OAuth2 refresh-token flow (a JSON body to the token URL,
a setting). Any 401 refreshes once and repeats the call once; a second 401 surfaces."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from podium_client import APIConnectionError, AuthenticationError, OAuthCredentials, PodiumClient
from podium_client.emulator import EmulatorServer
from tests.test_client_malformed import Answer, ScriptedServer, answer, error, raw

Factory = Callable[..., EmulatorServer]
ClientFactory = Callable[..., PodiumClient]
TOKEN_PATH = "/custom/oauth2/token"


def _oauth(server: EmulatorServer, secret: str = "dev-secret") -> OAuthCredentials:
    return OAuthCredentials(server.token_url, "dev-client", secret, "dev-refresh")


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    yield server
    server.close()


def _scripted_client(scripted: ScriptedServer, max_retries: int = 4) -> PodiumClient:
    oauth = OAuthCredentials(scripted.url + TOKEN_PATH, "client-1", "secret-1", "refresh-1")
    return PodiumClient(
        scripted.url, oauth=oauth, timeout=5, max_retries=max_retries, backoff_base=0.001, backoff_cap=0.01
    )


def _token(access: str, refresh: str | None = None, expires_in: float = 36_000) -> Answer:
    body: dict[str, object] = {"access_token": access, "expires_in": expires_in}
    if refresh:
        body["refresh_token"] = refresh
    return answer(body)


def test_credentials_repr_hides_secrets() -> None:
    text = repr(OAuthCredentials("https://accounts.podium.com/oauth/token", "client", "s3cret", "r3fresh"))
    assert "s3cret" not in text and "r3fresh" not in text and "client" in text


def test_a_client_needs_some_credentials() -> None:
    with pytest.raises(ValueError):
        PodiumClient("http://127.0.0.1:1")


def test_the_refresh_posts_json_to_the_configured_token_url(scripted: ScriptedServer) -> None:
    scripted.on(TOKEN_PATH, _token("access-1"))
    scripted.on("/v4/locations", answer({"data": []}))
    with _scripted_client(scripted) as client:
        client.list_locations()
        assert client.token_refresh_count == 1
    [post] = scripted.calls(TOKEN_PATH)
    assert post.method == "POST" and post.headers["Content-Type"] == "application/json"
    assert post.json() == {"grant_type": "refresh_token", "client_id": "client-1", "client_secret": "secret-1",
                           "refresh_token": "refresh-1"}  # fmt: skip
    assert scripted.calls("/v4/locations")[0].headers["Authorization"] == "Bearer access-1"


def test_the_first_call_fetches_a_token_and_later_ones_reuse_it(
    emulator_factory: Factory, podium_factory: ClientFactory
) -> None:
    server = emulator_factory()
    client = podium_factory(server, oauth=_oauth(server))
    assert client.list_locations()
    client.list_locations()
    assert server.stats()["token_refreshes"] == 1 and client.token_refresh_count == 1
    assert server.stats()["by_status"] == {"200": 2}


def test_an_expired_token_is_refreshed_once_and_the_call_repeated(
    emulator_factory: Factory, podium_factory: ClientFactory
) -> None:
    server = emulator_factory()
    client = podium_factory(server, oauth=_oauth(server))
    client.list_locations()
    server.expire_tokens()
    assert client.list_locations()
    stats = server.stats()
    assert stats["token_refreshes"] == 2 and stats["by_status"] == {"200": 2, "401": 1}


@pytest.mark.parametrize(
    "refusal",
    [error(401, "unauthenticated"), error(401, "unauthorized"), error(401, "token_expired"),
     raw(b"<html>401 Authorization Required</html>", 401), answer({"error": {"code": "x"}}, 401)],
    ids=["unauthenticated", "unauthorized", "other-code", "html", "wrapped"],
)  # fmt: skip
def test_any_401_refreshes_once_whatever_it_says(scripted: ScriptedServer, refusal: Answer) -> None:
    scripted.on(TOKEN_PATH, _token("access-1"), _token("access-2"))
    scripted.on("/v4/locations", refusal, answer({"data": []}))
    with _scripted_client(scripted) as client:
        assert client.list_locations() == []
    calls = scripted.calls("/v4/locations")
    assert [c.headers["Authorization"] for c in calls] == ["Bearer access-1", "Bearer access-2"]
    assert len(scripted.calls(TOKEN_PATH)) == 2


def test_a_refused_create_is_sent_again_after_the_refresh(scripted: ScriptedServer) -> None:
    # A 401 is a refusal before anything was done, so even a call never repeated blindly is repeated.
    scripted.on(TOKEN_PATH, _token("access-1"), _token("access-2"))
    scripted.on(
        "/v4/contacts", error(401, "unauthenticated"), answer({"data": {"identifier": "+61400111222"}}, 202)
    )
    with _scripted_client(scripted) as client:
        assert client.create_contact("New", ["loc"], phone_number="+61400111222") == "+61400111222"
    assert len(scripted.calls("/v4/contacts")) == 2


def test_a_second_401_surfaces(emulator_factory: Factory, podium_factory: ClientFactory) -> None:
    # Tokens that expire at once: the refresh before the call, the one refresh after its 401, then stop.
    server = emulator_factory(token_ttl=0)
    client = podium_factory(server, oauth=_oauth(server))
    with pytest.raises(AuthenticationError) as info:
        client.list_locations()
    assert type(info.value) is AuthenticationError
    assert (info.value.http_status, info.value.code) == (401, "unauthenticated")
    assert server.stats()["by_status"] == {"401": 2}


def test_a_token_is_refreshed_before_it_expires(
    emulator_factory: Factory, podium_factory: ClientFactory
) -> None:
    server = emulator_factory(token_ttl=0.5)
    client = podium_factory(server, oauth=_oauth(server))
    client.list_locations()
    time.sleep(0.5)
    client.list_locations()
    stats = server.stats()
    assert stats["token_refreshes"] == 2 and "401" not in stats["by_status"]


def test_a_rotated_refresh_token_is_used_for_the_next_refresh(scripted: ScriptedServer) -> None:
    scripted.on(TOKEN_PATH, _token("access-1", "refresh-2"), _token("access-2"))
    scripted.on("/v4/locations", answer({"data": []}), error(401, "unauthenticated"), answer({"data": []}))
    with _scripted_client(scripted) as client:
        client.list_locations()
        client.list_locations()
    assert [c.json()["refresh_token"] for c in scripted.calls(TOKEN_PATH)] == ["refresh-1", "refresh-2"]


def test_a_static_token_refused_is_not_refreshed(
    emulator_factory: Factory, podium_factory: ClientFactory
) -> None:
    server = emulator_factory()
    client = podium_factory(server, access_token="not-the-token")
    with pytest.raises(AuthenticationError) as info:
        client.list_locations()
    assert (info.value.http_status, info.value.code) == (401, "unauthenticated")
    assert server.stats()["requests"] == 1 and server.stats()["token_refreshes"] == 0


def test_a_refused_refresh_is_an_authentication_error_and_nothing_is_sent(
    emulator_factory: Factory, podium_factory: ClientFactory
) -> None:
    server = emulator_factory()
    client = podium_factory(server, oauth=_oauth(server, secret="wrong"))
    with pytest.raises(AuthenticationError, match="refused") as info:
        client.list_locations()
    assert info.value.http_status == 401
    assert server.stats()["requests"] == 0


def test_a_failing_token_endpoint_is_retried(scripted: ScriptedServer) -> None:
    scripted.on(TOKEN_PATH, error(503, "internal_server_error"), error(429, "rate_limit"), _token("access-1"))
    scripted.on("/v4/locations", answer({"data": []}))
    with _scripted_client(scripted, max_retries=3) as client:
        assert client.list_locations() == []
    assert len(scripted.calls(TOKEN_PATH)) == 3


def test_an_unreachable_token_endpoint_is_retried_then_a_connection_error(
    emulator_factory: Factory, podium_factory: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = emulator_factory()
    oauth = OAuthCredentials("http://127.0.0.1:9/oauth/token", "dev-client", "dev-secret", "dev-refresh")
    client = podium_factory(server, oauth=oauth, max_retries=2)
    caplog.set_level(logging.WARNING, logger="podium_client")
    with pytest.raises(APIConnectionError):
        client.list_locations()
    assert server.stats()["requests"] == 0
    assert sum("retry" in r.getMessage() for r in caplog.records) == 2


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


def test_tokens_and_secrets_never_reach_the_log(
    scripted: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    scripted.on(TOKEN_PATH, _token("access-secret-1", "refresh-secret-2"), _token("access-secret-3"))
    scripted.on(
        "/v4/locations",
        error(500, "internal_server_error"),
        error(401, "unauthenticated"),
        answer({"data": []}),
    )
    with _scripted_client(scripted) as client:
        client.list_locations()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "refreshed" in text and "retry" in text
    for secret in ("access-secret", "refresh-secret", "secret-1", "refresh-1"):
        assert secret not in text
