"""Pytest fixtures around the Podium emulator, for any test that talks to Podium over real HTTP.

Registered from tests/conftest.py (``pytest_plugins = ["tests.fixtures_emulator"]``). None of them
needs the database. Everything is Podium's v4 shapes as plain dicts.

Fixtures
--------
``demo_corpus`` (session)
    ``(lines, truth)`` of a small deterministic demo corpus (60 people, seed 1234): v4 NDJSON lines and
    ``{contact uid: person id}``.
``emulator_factory``
    ``make(state=None, *, people=None, corpus_seed=1234, capabilities=None, **server_kwargs) ->
    EmulatorServer``: a started emulator, stopped at teardown. Without ``state`` it loads the demo
    corpus (or a fresh one of ``people`` people); ``empty_state()`` gives an organization with the four
    demo locations and no contacts. Server kwargs are EmulatorServer's (``fail_rate``, ``rate_limit``,
    ``latency_ms``, ``drop_after_commit_rate``, ``block_cross_location``, ``webhook_url`` /
    ``webhook_secret``, ``seed``, ``token_ttl``, ``fail_next``, ``scopes``, ``cursor_ttl_s``,
    ``webhook_retry_base_s``, ``webhook_max_attempts``, ...); injected 429s default to
    ``Retry-After: 0`` and webhook redeliveries to a 10 ms base so tests do not sleep.
``emulator``
    ``emulator_factory()``: the demo corpus, published API only, no faults. Change faults at runtime
    with attributes (``emulator.fail_rate = 0.3``) or ``emulator.configure(...)``; inspect with
    ``emulator.stats()`` and ``emulator.state``.
``podium_factory`` / ``podium``
    ``make(server, **client_kwargs) -> PodiumClient`` with the server's token and tiny backoff, closed at
    teardown; ``podium`` is one for ``emulator``.
``webhook_receiver``
    A started ``WebhookReceiver`` (an HTTP server recording deliveries); pass ``.url`` as a webhook URL
    and read ``.deliveries`` / ``.wait_for(n)``.

Helpers (import them): ``make_contact(...)`` builds a v4 contact dict for ``EmulatorState.add_contact``;
``empty_state()`` an EmulatorState with the demo locations; ``auth(server)`` the Authorization header.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest

from podium_client.corpus import LOCATIONS, ORGANIZATION_UID, SYDNEY, generate_corpus
from podium_client.emulator import EmulatorServer, EmulatorState
from podium_client.emulator.shapes import stable_uid

if TYPE_CHECKING:
    from podium_client import PodiumClient

DEMO_PEOPLE = 60
DEMO_SEED = 1234
TINY_BACKOFF = {"backoff_base": 0.001, "backoff_cap": 0.01}

_contact_numbers = itertools.count(1)
_conversation_numbers = itertools.count(1)


def fresh_uid(kind: str = "contact") -> str:
    """A UUID never handed out before in this test run (`00000000-...` for contacts, `c0000000-...`
    for conversations), readable in failure messages."""
    if kind == "conversation":
        return f"c0000000-0000-4000-8000-{next(_conversation_numbers):012d}"
    return f"00000000-0000-4000-8000-{next(_contact_numbers):012d}"


def auth(server: EmulatorServer) -> dict[str, str]:
    """The Authorization header for the server's static token."""
    return {"Authorization": f"Bearer {server.token}"}


def empty_state(seed: int | None = 7, capabilities: str | Iterable[str] | None = None) -> EmulatorState:
    """An EmulatorState holding only the four demo locations (Sydney, Burleigh, Auckland, the pop-up)."""
    state = EmulatorState(seed, capabilities=capabilities, organization_uid=ORGANIZATION_UID)
    for loc in LOCATIONS:
        state.add_location(loc)
    return state


def _stamp(value: datetime | str) -> str:
    return value if isinstance(value, str) else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_contact(
    uid: str | None = None,
    locations: Iterable[str] = (SYDNEY,),
    name: str | None = "Maria Garcia",
    phones: Iterable[str] = ("0412 345 678",),
    emails: Iterable[str] = (),
    tags: Iterable[str] = (),
    attributes: Iterable[tuple[str, str | None]] = (),
    address: dict[str, Any] | str | None = None,
    conversations: int | Iterable[str] = 1,
    marketing_opted_in: bool | Iterable[str] = True,
    transactional_opt_out: bool | str = False,
    created_at: datetime | str = datetime(2025, 1, 1, 9, 0, tzinfo=UTC),
    updated_at: datetime | str | None = None,
) -> dict[str, Any]:
    """A v4 contact dict (exactly what `GET /v4/contacts` lists) with sensible defaults.

    Tags and attributes are given by label; their uids are the ones the emulator gives those labels
    (``stable_uid``). ``marketing_opted_in``: True opts every channel in at the contact's locations,
    False nowhere, a list of location uids there. ``transactional_opt_out``: True for every channel,
    or ``"PHONE"`` / ``"EMAIL"`` for channels of that type. ``conversations``: how many (fresh uids) or
    the uids. ``address`` is an address object (missing fields null) or its first line. A fresh
    contact uid unless one is given.
    """
    locs = list(locations)
    created = _stamp(created_at)
    updated = _stamp(updated_at) if updated_at is not None else created
    if marketing_opted_in is True:
        opted = locs
    elif marketing_opted_in is False:
        opted = []
    else:
        opted = list(marketing_opted_in)
    channels = []
    for kind, identifier in [("PHONE", p) for p in phones] + [("EMAIL", e) for e in emails]:
        out = transactional_opt_out is True or transactional_opt_out == kind
        channels.append({
            "type": kind, "identifier": identifier, "label": None, "marketingOptedInLocationUids": list(opted),
            "transactionalOptedOutAt": created if out else None, "createdAt": created, "updatedAt": updated,
        })  # fmt: skip
    conversation_uids = (
        [fresh_uid("conversation") for _ in range(conversations)]
        if isinstance(conversations, int)
        else list(conversations)
    )
    full_address = None
    if isinstance(address, str):
        address = {"addressLine1": address}
    if address is not None:
        keys = ("addressLine1", "addressLine2", "city", "state", "postalCode", "country")
        full_address = {key: address.get(key) for key in keys}
    return {
        "uid": uid or fresh_uid(),
        "name": name,
        "locations": [{"uid": u} for u in locs],
        "organization": {"uid": ORGANIZATION_UID},
        "phoneNumbers": [c["identifier"] for c in channels if c["type"] == "PHONE"],
        "emails": [c["identifier"] for c in channels if c["type"] == "EMAIL"],
        "channels": channels,
        "tags": [{"uid": stable_uid("tag", t), "label": t, "description": None} for t in tags],
        "attributes": [
            {
                "uid": stable_uid("attribute", label),
                "label": label,
                "value": value,
                "dataType": "STRING",
                "ownerResource": {"type": "ORGANIZATION", "uid": ORGANIZATION_UID},
            }  # fmt: skip
            for label, value in attributes
        ],
        "address": full_address,
        "conversations": [{"uid": u} for u in conversation_uids],
        "createdAt": created,
        "updatedAt": updated,
    }


@pytest.fixture(scope="session")
def demo_corpus() -> tuple[list[str], dict[str, str]]:
    """(v4 NDJSON lines, {contact uid: person id}) of the small demo corpus."""
    return generate_corpus(DEMO_PEOPLE, DEMO_SEED)


@pytest.fixture
def emulator_factory(
    demo_corpus: tuple[list[str], dict[str, str]],
) -> Iterator[Callable[..., EmulatorServer]]:
    """Start emulators on free ports; all are stopped at teardown."""
    servers: list[EmulatorServer] = []

    def make(
        state: EmulatorState | None = None,
        *,
        people: int | None = None,
        corpus_seed: int = DEMO_SEED,
        **server_kwargs: Any,
    ) -> EmulatorServer:
        if state is None:
            lines = demo_corpus[0] if people is None and corpus_seed == DEMO_SEED else None
            if lines is None:
                lines = generate_corpus(DEMO_PEOPLE if people is None else people, corpus_seed)[0]
            state = EmulatorState.from_lines(lines, seed=server_kwargs.get("seed"))
        server_kwargs.setdefault("fault_retry_after", 0)
        server_kwargs.setdefault("webhook_retry_base_s", 0.01)
        server = EmulatorServer(state, **server_kwargs)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def emulator(emulator_factory: Callable[..., EmulatorServer]) -> EmulatorServer:
    """A running emulator loaded with the demo corpus, published API only, without faults."""
    return emulator_factory()


@pytest.fixture
def podium_factory() -> Iterator[Callable[..., PodiumClient]]:
    """Build clients for an emulator (its static token, tiny backoff); closed at teardown."""
    from podium_client import PodiumClient

    clients: list[PodiumClient] = []

    def make(server: EmulatorServer, **client_kwargs: Any) -> PodiumClient:
        kwargs: dict[str, Any] = {"timeout": 5, **TINY_BACKOFF}
        if "oauth" not in client_kwargs:
            kwargs["access_token"] = server.token
        kwargs.update(client_kwargs)
        client = PodiumClient(server.url, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def podium(emulator: EmulatorServer, podium_factory: Callable[..., PodiumClient]) -> PodiumClient:
    """A client for the `emulator` fixture."""
    return podium_factory(emulator)


# --- webhook receiver ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One webhook POST as received: raw body and headers."""

    path: str
    body: bytes
    headers: dict[str, str]
    received_at: float


class WebhookReceiver:
    """A tiny HTTP server that records every POST; answers `status` (200 unless changed), or 500 to
    the first `fail_first` POSTs."""

    def __init__(self, delay: float = 0.0, status: int = 200, fail_first: int = 0) -> None:
        self.deliveries: list[Delivery] = []
        self.delay = delay
        self.status = status
        self.fail_first = fail_first
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if receiver.delay:
                    time.sleep(receiver.delay)
                with receiver._cond:
                    failing = len(receiver.deliveries) < receiver.fail_first
                    receiver.deliveries.append(
                        Delivery(self.path, body, {k: v for k, v in self.headers.items()}, time.monotonic())
                    )
                    receiver._cond.notify_all()
                self.send_response(500 if failing else receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/hooks/podium"

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Delivery]:
        """Wait until at least `count` deliveries arrived; returns them (fails the test on timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.deliveries) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"expected {count} webhook deliveries, got {len(self.deliveries)}")
                self._cond.wait(left)
            return list(self.deliveries)


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A running WebhookReceiver, stopped at teardown."""
    receiver = WebhookReceiver().start()
    yield receiver
    receiver.stop()
