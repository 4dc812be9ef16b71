"""A server that answers outside the contract: the client raises MalformedResponse, never a raw error."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from podium_client import MalformedResponse, NotFoundError, PodiumClient, PodiumError
from tests.test_client_types import CONTACT


class ScriptedServer:
    """Answers each path with a fixed (status, content type, body), whatever the method."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, str, bytes]] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, ctype, body = server.routes.get(
                    self.path.split("?")[0], (404, "text/plain", b"no route")
                )
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Request-Id", "req_scripted")
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PATCH = do_DELETE = _answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def json(self, path: str, payload: Any, status: int = 200) -> None:
        self.routes[path] = (status, "application/json", json.dumps(payload).encode())

    def raw(self, path: str, body: bytes, status: int = 200, ctype: str = "text/html") -> None:
        self.routes[path] = (status, ctype, body)


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture
def client(scripted: ScriptedServer) -> Iterator[PodiumClient]:
    c = PodiumClient(scripted.url, access_token="t", max_retries=0, timeout=5)
    yield c
    c.close()


def _malformed(call: Any) -> MalformedResponse:
    with pytest.raises(MalformedResponse) as info:
        call()
    return info.value


def test_non_json_body(scripted: ScriptedServer, client: PodiumClient) -> None:
    scripted.raw("/v4/contacts/ct_1", b"<html>hello</html>")
    err = _malformed(lambda: client.get_contact("ct_1"))
    assert err.http_status == 200 and err.request_id == "req_scripted"
    assert "not JSON" in err.message


def test_empty_body(scripted: ScriptedServer, client: PodiumClient) -> None:
    scripted.raw("/v4/contacts/ct_1", b"", ctype="application/json")
    _malformed(lambda: client.get_contact("ct_1"))


def test_missing_data_envelope(scripted: ScriptedServer, client: PodiumClient) -> None:
    scripted.json("/v4/contacts/ct_1", CONTACT)
    err = _malformed(lambda: client.get_contact("ct_1"))
    assert "data" in err.message


def test_wrong_types_inside_the_contact(scripted: ScriptedServer, client: PodiumClient) -> None:
    scripted.json("/v4/contacts/ct_1", {"data": dict(CONTACT, marketingOptOut="false")})
    err = _malformed(lambda: client.get_contact("ct_1"))
    assert CONTACT["uid"] in err.message
    scripted.json("/v4/contacts/ct_1", {"data": dict(CONTACT, channels="0412 345 678")})
    _malformed(lambda: client.get_contact("ct_1"))
    scripted.json("/v4/contacts/ct_1/merge", {"data": [CONTACT]})
    _malformed(lambda: client.merge("ct_1", ["ct_2"]))


def test_malformed_pages(scripted: ScriptedServer, client: PodiumClient) -> None:
    scripted.json("/v4/contacts", {"data": [CONTACT]})
    _malformed(lambda: client.list_contacts_page("loc_sydney"))
    scripted.json("/v4/contacts", {"data": {"0": CONTACT}, "metadata": {"nextCursor": None}})
    _malformed(lambda: client.list_contacts_page("loc_sydney"))
    scripted.json("/v4/contacts", {"data": [dict(CONTACT, updatedAt=None)], "metadata": {"nextCursor": None}})
    _malformed(lambda: list(client.iter_contacts("loc_sydney")))


def test_a_cursor_that_never_advances_is_malformed(scripted: ScriptedServer, client: PodiumClient) -> None:
    scripted.json("/v4/contacts", {"data": [CONTACT], "metadata": {"nextCursor": "same"}})
    err = _malformed(lambda: list(client.iter_contacts("loc_sydney")))
    assert "cursor" in err.message


def test_malformed_locations(scripted: ScriptedServer, client: PodiumClient) -> None:
    scripted.json("/v4/locations", {"data": [{"uid": "loc_sydney", "name": "Sydney CBD"}]})
    _malformed(client.list_locations)
    scripted.json("/v4/locations", {"data": "loc_sydney"})
    _malformed(client.list_locations)


def test_error_without_the_contract_body_still_maps_by_status(
    scripted: ScriptedServer, client: PodiumClient
) -> None:
    scripted.raw("/v4/contacts/ct_1", b"<html>not here</html>", status=404)
    with pytest.raises(NotFoundError) as info:
        client.get_contact("ct_1")
    assert info.value.code is None and info.value.request_id == "req_scripted"


def test_unexpected_status_is_a_podium_error(scripted: ScriptedServer, client: PodiumClient) -> None:
    scripted.json(
        "/v4/contacts/ct_1", {"error": {"code": "teapot", "message": "short and stout"}}, status=418
    )
    with pytest.raises(PodiumError) as info:
        client.get_contact("ct_1")
    assert type(info.value) is PodiumError
    assert (info.value.http_status, info.value.code, info.value.message) == (418, "teapot", "short and stout")


def test_malformed_token_response(scripted: ScriptedServer) -> None:
    from podium_client import OAuthCredentials

    scripted.json("/oauth/token", {"token": "x"})
    client = PodiumClient(
        scripted.url, oauth=OAuthCredentials(scripted.url + "/oauth/token", "c", "s", "r"), max_retries=0
    )
    with pytest.raises(MalformedResponse, match="access_token"):
        client.list_locations()
    client.close()
