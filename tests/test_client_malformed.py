"""A server that answers outside the contract, and Podium's error envelope: the client raises its own
errors (``MalformedResponse`` naming what is wrong, the class for the status then the code), never a
raw one, and a page with one bad contact still yields the others.

``ScriptedServer`` (also used by the auth and retry tests) answers each path from a script and records
every request it saw.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from podium_client import (
    AuthenticationError,
    ConflictError,
    InvalidCursorError,
    InvalidDuplicateError,
    InvalidRequestError,
    MalformedResponse,
    NotFoundError,
    OAuthCredentials,
    PermissionDeniedError,
    PodiumClient,
    PodiumError,
    RateLimitError,
    ServerError,
    UnprocessableError,
)
from podium_client import types as wire
from tests.test_client_types import ZERO, example_contact, example_location


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def answer(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Answer:
    """A JSON answer."""
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    return Answer(status, json.dumps(payload).encode(), tuple(hdrs.items()))


def raw(body: bytes, status: int = 200, ctype: str = "text/html") -> Answer:
    return Answer(status, body, (("Content-Type", ctype),))


def error(status: int, code: Any, message: str = "refused", headers: dict[str, str] | None = None) -> Answer:
    """Podium's top-level error envelope."""
    return answer(
        {"code": code, "message": message, "moreInfo": "https://docs.podium.com/docs/errors"}, status, headers
    )


class ScriptedServer:
    """Answers each path (any method, query ignored) with its scripted answers in turn, the last one
    repeating; an unscripted path is 404 route_not_found. Records every request in `seen`."""

    def __init__(self) -> None:
        self.routes: dict[str, list[Answer]] = {}
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path, _, query = self.path.partition("?")
                with server._lock:
                    server.seen.append(Seen(self.command, path, query, dict(self.headers.items()), body))
                    script = server.routes.get(path)
                    if script is None:
                        reply = error(404, "route_not_found", f"no route {path}")
                    else:
                        reply = script.pop(0) if len(script) > 1 else script[0]
                self.send_response(reply.status)
                for key, value in reply.headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.send_header("X-Request-Id", "req_scripted")
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def on(self, path: str, *answers: Answer) -> None:
        """Script `path`: these answers in turn, then the last one again and again."""
        self.routes[path] = list(answers)

    def calls(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    yield server
    server.close()


@pytest.fixture
def client(scripted: ScriptedServer) -> Iterator[PodiumClient]:
    c = PodiumClient(scripted.url, access_token="t", max_retries=0, timeout=5, capabilities=["merge"])
    yield c
    c.close()


CONTACT_PATH = "/v4/contacts/john.doe@podium.com"


def _malformed(call: Any) -> MalformedResponse:
    with pytest.raises(MalformedResponse) as info:
        call()
    return info.value


# --- bodies outside the contract --------------------------------------------------------------------


def test_a_body_that_is_not_json(scripted: ScriptedServer, client: PodiumClient) -> None:
    scripted.on(CONTACT_PATH, raw(b"<html>hello</html>"))
    err = _malformed(lambda: client.get_contact("john.doe@podium.com"))
    assert err.http_status == 200 and err.request_id == "req_scripted" and "not JSON" in err.message


@pytest.mark.parametrize("payload", [None, example_contact(), {"data": None}, {"data": [example_contact()]}])
def test_a_contact_answer_without_a_contact_in_its_data(
    scripted: ScriptedServer, client: PodiumClient, payload: Any
) -> None:
    scripted.on(CONTACT_PATH, answer(payload) if payload is not None else raw(b"", ctype="application/json"))
    _malformed(lambda: client.get_contact("john.doe@podium.com"))


def test_a_wrong_type_inside_a_contact_names_the_field_and_the_contact(
    scripted: ScriptedServer, client: PodiumClient
) -> None:
    bad = example_contact()
    bad["channels"][0]["marketingOptedInLocationUids"] = ZERO
    scripted.on(CONTACT_PATH, answer({"data": bad}))
    err = _malformed(lambda: client.get_contact("john.doe@podium.com"))
    assert "field 'channels[0].marketingOptedInLocationUids' must be a list or null, got str" in err.message
    assert ZERO in err.message
    # The value itself (a customer's data) is never part of the message.
    bad["name"] = 12345678
    scripted.on(CONTACT_PATH, answer({"data": bad}))
    assert "12345678" not in _malformed(lambda: client.get_contact("john.doe@podium.com")).message


def test_a_page_with_one_malformed_contact_parses_the_rest_into_rejected(
    scripted: ScriptedServer, client: PodiumClient
) -> None:
    contacts = []
    for i in range(5):
        c = example_contact()
        c["uid"] = f"0000000{i}-0000-4000-8000-000000000000"
        contacts.append(c)
    contacts[2]["createdAt"] = "last tuesday"
    scripted.on("/v4/contacts", answer({"data": contacts, "metadata": {"nextCursor": None}}))
    page = client.list_contacts_page()
    assert [c.uid for c in page] == [contacts[i]["uid"] for i in (0, 1, 3, 4)]
    assert len(page.rejected) == 1
    item, err = page.rejected[0]
    assert item == contacts[2] and "field 'createdAt' must be an ISO 8601 timestamp" in err.message
    assert page.request_id == "req_scripted" and page.next_cursor is None


@pytest.mark.parametrize(
    "payload",
    [{"data": [example_contact()]} | {"metadata": {"nextCursor": 7}}, {"data": {"0": example_contact()}},
     {"metadata": {"nextCursor": None}}, {"data": [], "metadata": []}],
)  # fmt: skip
def test_a_malformed_page_envelope_fails_the_page(
    scripted: ScriptedServer, client: PodiumClient, payload: Any
) -> None:
    scripted.on("/v4/contacts", answer(payload))
    _malformed(client.list_contacts_page)


def test_a_cursor_that_never_advances_is_malformed(scripted: ScriptedServer, client: PodiumClient) -> None:
    scripted.on("/v4/contacts", answer({"data": [example_contact()], "metadata": {"nextCursor": "same"}}))
    err = _malformed(lambda: list(client.iter_contacts()))
    assert "cursor" in err.message
    assert len(scripted.calls("/v4/contacts")) == 2


def test_a_locations_cursor_that_never_advances_is_malformed_not_a_short_list(
    scripted: ScriptedServer, client: PodiumClient
) -> None:
    scripted.on("/v4/locations", answer({"data": [example_location()], "metadata": {"nextCursor": "same"}}))
    err = _malformed(client.list_locations)
    assert "cursor" in err.message


def test_malformed_locations(scripted: ScriptedServer, client: PodiumClient) -> None:
    scripted.on("/v4/locations", answer({"data": [{**example_location(), "addressDetails": "AU"}]}))
    assert "field 'addressDetails'" in _malformed(client.list_locations).message
    scripted.on("/v4/locations", answer({"data": ZERO}))
    _malformed(client.list_locations)


@pytest.mark.parametrize(
    "payload", [{"data": {"identifier": 5}}, {"data": "+15555555555"}, {"identifier": "x"}]
)
def test_a_malformed_write_answer(scripted: ScriptedServer, client: PodiumClient, payload: Any) -> None:
    scripted.on(CONTACT_PATH, answer(payload, 202))
    _malformed(lambda: client.update_contact("john.doe@podium.com", {"name": "John"}))


def test_an_empty_write_answer_is_no_identifier(scripted: ScriptedServer, client: PodiumClient) -> None:
    scripted.on(CONTACT_PATH, raw(b"", 202, "application/json"))
    assert client.update_contact("john.doe@podium.com", {"name": "John"}) is None


def test_a_malformed_merge_answer(scripted: ScriptedServer, client: PodiumClient) -> None:
    scripted.on(f"/v4/contacts/{ZERO}/merge", answer({"data": [example_contact()]}))
    _malformed(lambda: client.merge(ZERO, ["11111111-0000-4000-8000-000000000000"]))


def test_a_malformed_token_answer(scripted: ScriptedServer) -> None:
    scripted.on("/oauth/token", answer({"token": "x"}))
    oauth = OAuthCredentials(scripted.url + "/oauth/token", "c", "s", "r")
    with PodiumClient(scripted.url, oauth=oauth, max_retries=0) as client:
        with pytest.raises(MalformedResponse, match="access_token"):
            client.list_locations()
        scripted.on("/oauth/token", answer({"access_token": "a", "expires_in": "soon"}))
        with pytest.raises(MalformedResponse, match="expires_in"):
            client.list_locations()
    assert scripted.calls("/v4/locations") == []


# --- Podium's error envelope, mapped by status then code --------------------------------------------


def test_the_error_envelope_is_read_at_the_top_level(scripted: ScriptedServer, client: PodiumClient) -> None:
    scripted.on(CONTACT_PATH, error(404, "resource_not_found", "contact not found"))
    with pytest.raises(NotFoundError) as info:
        client.get_contact("john.doe@podium.com")
    err = info.value
    assert (err.http_status, err.code, err.message, err.request_id) == (
        404,
        "resource_not_found",
        "contact not found",
        "req_scripted",
    )
    assert err.body["moreInfo"].startswith("https://")
    assert str(err) == "contact not found (http_status=404, code=resource_not_found, request_id=req_scripted)"


def test_a_wrapped_error_body_is_not_podiums_and_maps_by_status_alone(
    scripted: ScriptedServer, client: PodiumClient
) -> None:
    scripted.on(CONTACT_PATH, answer({"error": {"code": "invalid_cursor", "message": "x"}}, 400))
    with pytest.raises(InvalidRequestError) as info:
        client.get_contact("john.doe@podium.com")
    assert type(info.value) is InvalidRequestError and info.value.code is None


def test_an_html_error_page_maps_by_status(scripted: ScriptedServer, client: PodiumClient) -> None:
    scripted.on(CONTACT_PATH, raw(b"<html>not here</html>", 404))
    with pytest.raises(NotFoundError) as info:
        client.get_contact("john.doe@podium.com")
    assert info.value.code is None and info.value.body == b"<html>not here</html>"
    assert info.value.message == f"GET {CONTACT_PATH} answered HTTP 404"


def test_an_integer_code_is_read_as_text() -> None:
    assert wire.parse_error_body({"code": 1001, "message": "m", "moreInfo": "u"}) == ("1001", "m", None)
    assert wire.parse_error_body({"code": True}) == (None, None, None)
    assert wire.parse_error_body(b"<html>502</html>") == (None, None, None)
    assert wire.parse_error_body({"error": {"code": "x"}}) == (None, None, None)
    assert wire.error_body("rate_limit", "slow down") == {
        "code": "rate_limit", "message": "slow down", "moreInfo": "https://docs.podium.com/docs/errors",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "bad_request", InvalidRequestError),
        (400, "invalid_request_values", InvalidRequestError),
        (400, "invalid_cursor", InvalidCursorError),
        (400, "invalid_duplicate_uid", InvalidDuplicateError),
        # A code of another family does not override the status.
        (400, "resource_not_found", InvalidRequestError),
        (400, "unauthorized", InvalidRequestError),
        (401, "unauthenticated", AuthenticationError),
        (401, "unauthorized", AuthenticationError),
        (401, None, AuthenticationError),
        (403, "unauthorized", PermissionDeniedError),
        (403, "unauthenticated", PermissionDeniedError),
        (404, "route_not_found", NotFoundError),
        (404, "resource_not_found", NotFoundError),
        (409, "merge_in_progress", ConflictError),
        (422, "cross_location_merge_blocked", UnprocessableError),
        (429, None, RateLimitError),
        # rate_limit is refused for pace whatever the status says.
        (400, "rate_limit", RateLimitError),
        (503, "rate_limit", RateLimitError),
        (500, "bad_request", ServerError),
        (502, None, ServerError),
        (418, "teapot", PodiumError),
    ],
)
def test_errors_map_by_status_then_code(
    scripted: ScriptedServer, client: PodiumClient, status: int, code: str | None, cls: type[PodiumError]
) -> None:
    scripted.on(CONTACT_PATH, error(status, code, "short and stout"))
    with pytest.raises(PodiumError) as info:
        client.get_contact("john.doe@podium.com")
    assert type(info.value) is cls
    assert (info.value.http_status, info.value.code, info.value.message) == (status, code, "short and stout")


def test_every_request_names_the_api_version_and_the_token(scripted: ScriptedServer) -> None:
    scripted.on("/v4/locations", answer({"data": []}))
    with PodiumClient(scripted.url, access_token="tok", api_version="2099.01.01") as client:
        client.list_locations()
    seen = scripted.calls("/v4/locations")[0]
    assert seen.headers["podium-version"] == "2099.01.01"
    assert seen.headers["Authorization"] == "Bearer tok" and seen.query == "limit=100"
