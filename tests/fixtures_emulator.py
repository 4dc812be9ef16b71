"""Pytest fixtures around the Podium emulator, for any test that talks to Podium over real HTTP.

Registered from tests/conftest.py (``pytest_plugins = ["tests.fixtures_emulator"]``). None of them
needs the database.

Fixtures
--------
``demo_corpus`` (session)
    ``(lines, truth)`` of a small deterministic demo corpus (60 people, seed 1234): NDJSON lines and
    ``{contact uid: person id}``.
``emulator_factory``
    ``make(state=None, *, people=None, corpus_seed=1234, **server_kwargs) -> EmulatorServer``: a
    started emulator, stopped at teardown. Without ``state`` it loads the demo corpus (or a fresh
    one of ``people`` people); ``state=EmulatorState()`` plus ``empty_state()`` give an empty
    organization with the three demo locations. Server kwargs are EmulatorServer's (``fail_rate``,
    ``rate_limit``, ``latency_ms``, ``drop_after_commit_rate``, ``block_cross_location``,
    ``webhook_url``/``webhook_secret``, ``seed``, ``token_ttl``, ``fail_next``, ...); injected 429s
    default to ``Retry-After: 0`` so tests do not sleep.
``emulator``
    ``emulator_factory()``: the demo corpus, no faults. Change faults at runtime with attributes
    (``emulator.fail_rate = 0.3``) or ``emulator.configure(...)``; inspect with
    ``emulator.stats()`` and ``emulator.state``.
``podium_factory``
    ``make(server, **client_kwargs) -> PodiumClient`` with the server's token and tiny backoff
    (1-10 ms), closed at teardown.
``podium``
    ``podium_factory(emulator)``.
``webhook_receiver``
    A started ``WebhookReceiver`` (an HTTP server recording deliveries); pass ``.url`` as
    ``webhook_url`` and read ``.deliveries`` / ``.wait_for(n)``.

Helpers (import them): ``make_contact(...)`` builds a Contact for ``EmulatorState.add_contact``;
``empty_state()`` an EmulatorState with the demo locations.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from podium_client import Attribute, Channel, Contact, PodiumClient
from podium_client.corpus import LOCATIONS, generate_corpus
from podium_client.emulator import EmulatorServer, EmulatorState

DEMO_PEOPLE = 60
DEMO_SEED = 1234
TINY_BACKOFF = {"backoff_base": 0.001, "backoff_cap": 0.01}

_uid_numbers = itertools.count(9_000_000)


def empty_state(seed: int | None = 7) -> EmulatorState:
    """An EmulatorState holding only the demo locations (loc_sydney, loc_burleigh, loc_auckland)."""
    state = EmulatorState(seed)
    for loc in LOCATIONS:
        state.add_location(loc)
    return state


def make_contact(
    uid: str | None = None,
    location_uid: str = "loc_sydney",
    name: str | None = "Maria Garcia",
    phones: Iterable[str] = ("0412 345 678",),
    emails: Iterable[str] = (),
    tags: Iterable[str] = (),
    attributes: Iterable[tuple[str, str | None]] = (),
    address: str | None = None,
    marketing_opt_out: bool = False,
    sms_opt_out: bool = False,
    email_opt_out: bool = False,
    created_at: datetime = datetime(2025, 1, 1, 9, 0, tzinfo=UTC),
    updated_at: datetime | None = None,
    deleted_at: datetime | None = None,
    merged_into_uid: str | None = None,
    conversation_count: int = 0,
) -> Contact:
    """A Contact with sensible defaults; a fresh `ct_9xxxxxx_...` uid unless one is given."""
    if uid is None:
        uid = f"ct_{next(_uid_numbers):07d}_abcdef"
    channels = tuple(Channel.phone(p) for p in phones) + tuple(Channel.email(e) for e in emails)
    return Contact(
        uid=uid,
        location_uid=location_uid,
        name=name,
        channels=channels,
        tags=tuple(tags),
        attributes=tuple(Attribute(label, value) for label, value in attributes),
        address=address,
        marketing_opt_out=marketing_opt_out,
        sms_opt_out=sms_opt_out,
        email_opt_out=email_opt_out,
        created_at=created_at,
        updated_at=updated_at or created_at,
        deleted_at=deleted_at,
        merged_into_uid=merged_into_uid,
        conversation_count=conversation_count,
    )


@pytest.fixture(scope="session")
def demo_corpus() -> tuple[list[str], dict[str, str]]:
    """(NDJSON lines, {contact uid: person id}) of the small demo corpus."""
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
        server = EmulatorServer(state, **server_kwargs)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def emulator(emulator_factory: Callable[..., EmulatorServer]) -> EmulatorServer:
    """A running emulator loaded with the demo corpus, without faults."""
    return emulator_factory()


@pytest.fixture
def podium_factory() -> Iterator[Callable[..., PodiumClient]]:
    """Build clients for an emulator (its static token, tiny backoff); closed at teardown."""
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
    """A tiny HTTP server that records every POST; answers `status` (200 unless changed)."""

    def __init__(self, delay: float = 0.0, status: int = 200) -> None:
        self.deliveries: list[Delivery] = []
        self.delay = delay
        self.status = status
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
                    receiver.deliveries.append(
                        Delivery(self.path, body, {k: v for k, v in self.headers.items()}, time.monotonic())
                    )
                    receiver._cond.notify_all()
                self.send_response(receiver.status)
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
