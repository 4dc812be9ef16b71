"""``manage.py run_product`` (what ``make run`` calls): the whole product on the embedded default.

First checks that the web port and the emulator's port are free, and stops with one line naming the
port and how to choose another when one is not: nothing is migrated, created or started then. Then
migrates, generates a demo corpus on first use (Podium's v4 export: the demo organization's four
locations, ``podium_client.corpus``), starts the Podium emulator with it serving Podium's published API
only (no capabilities, so merges consolidate and restores re-create, as on a real tenant), creates the
demo users with grants on the demo locations, runs a ``qcluster`` worker and the web server, and
queues the first scan only once the web server listens. Until Ctrl-C, when it stops every child and
says, for each, whether it stopped by itself or had to be killed. The emulator's state is dumped on
exit and reloaded next time, so merges made in the demo survive a restart. Files left by an earlier
run in the pre-v4 shape (or of another organization) are set aside and regenerated, and the index is
rescanned.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from podium_client import MalformedResponse
from podium_client.corpus import BURLEIGH, SYDNEY
from podium_client.types import Location as PodiumLocation
from podium_client.types import OldExportShape, parse_export_line

DEMO_USERS = [
    # (username, role, location uids): the style guide's people, on the demo organization's locations.
    ("sydney_manager", "manager", SYDNEY),
    ("burleigh_manager", "manager", BURLEIGH),
    ("auditor", "auditor", ""),
    ("admin", "admin", ""),
]
DEMO_USER_SEES = {
    "sydney_manager": "Sydney CBD",
    "burleigh_manager": "Burleigh Heads",
    "auditor": "every location, read only",
    "admin": "every location",
}
DEMO_PASSWORD = "demo-password-1"
WEB_HOST = "127.0.0.1"
# How long a child may take to stop after SIGTERM before it is killed: the worker gives the task in
# hand Q_STOP_GRACE seconds, then needs a few more to wind down (dedup.workers).
STOP_MARGIN_SECONDS = 15.0


@dataclass
class _Child:
    """A process this command started, by what it is to a person."""

    name: str
    proc: subprocess.Popen[bytes]


class Command(BaseCommand):
    help = "Set up and run the product locally: emulator, web server and a background worker."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--people", type=int, default=3000, help="people in a newly generated demo corpus")
        parser.add_argument("--no-emulator", action="store_true", help="use PODIUM_BASE_URL as configured")

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError("run_product is for local use; set DEBUG=1 (make run does)")
        port = options["port"]
        podium = None if options["no_emulator"] else _podium_address()
        # Before anything else: a taken port must not leave a half-started product behind.
        _check_ports(port, podium)
        demo_dir = Path(settings.VAR_DIR) / "demo"
        demo_dir.mkdir(parents=True, exist_ok=True)
        call_command("migrate", interactive=False, verbosity=0)
        self.stdout.write("database migrated")

        children: list[_Child] = []
        stop_timeout = float(settings.Q_STOP_GRACE) + STOP_MARGIN_SECONDS
        # The demo is Podium's published API: the product must not expect capabilities the emulator lacks.
        if podium is not None and settings.PODIUM_CAPABILITIES:
            self.stdout.write("PODIUM_CAPABILITIES is not used by the demo: its emulator serves Podium's published API only")
        if podium is not None:
            os.environ["PODIUM_CAPABILITIES"] = ""
            settings.PODIUM_CAPABILITIES = []
        rescan = False
        try:
            if podium is not None:
                emulator, rescan = self._start_emulator(demo_dir, options["people"], *podium)
                children.append(emulator)
            self._create_demo_users()
            children.append(self._spawn("background worker", "qcluster"))
            web = self._spawn("web server", "runserver", f"{WEB_HOST}:{port}", "--noreload")
            children.append(web)
            _wait_listening(web, WEB_HOST, port, timeout=60)
            # Only now: a scan queued by a start that then failed would be left waiting for nobody.
            if not options["no_emulator"]:
                self._register_webhook(port)
            self._first_scan(force=rescan)
            self.stdout.write(self.style.SUCCESS(f"\nPodium Contact Dedup is running at http://{WEB_HOST}:{port}/"))
            for username, role, _ in DEMO_USERS:
                self.stdout.write(
                    f"  log in as {username:<16} password {DEMO_PASSWORD}   ({role}: {DEMO_USER_SEES[username]})"
                )
            self.stdout.write("Press Ctrl-C to stop.\n")
            died = self._wait(children)
        except BaseException:
            self._stop(children, stop_timeout)
            raise
        clean = self._stop(children, stop_timeout)
        if died is not None:
            raise CommandError(f"the {died.name} exited unexpectedly (status {died.proc.returncode})")
        if not clean:
            raise CommandError("not every process stopped by itself (see above)")

    # --- steps ------------------------------------------------------------------------------------

    def _start_emulator(self, demo_dir: Path, people: int, host: str, port: int) -> tuple[_Child, bool]:
        """Start the emulator on the demo files; also says whether they were (re)generated (index them)."""
        corpus = demo_dir / "corpus.ndjson"
        state = demo_dir / "emulator-state.ndjson"
        regenerated = False
        for path in (corpus, state):
            stale = _stale_reason(path) if path.exists() else None
            if stale is not None:
                aside = path.with_name(path.name + ".stale")
                path.replace(aside)
                self.stdout.write(f"{path.name} from an earlier run is {stale}: set aside as {aside.name}")
                regenerated = True
        if not corpus.exists():
            self.stdout.write(f"generating a demo corpus of {people} people in {corpus} …")
            call_command("make_demo_corpus", str(corpus), people=people, seed=2026, verbosity=0)
            # A state saved from another corpus does not belong with this one.
            if state.exists():
                state.replace(state.with_name(state.name + ".stale"))
            regenerated = True
        load = state if state.exists() and state.stat().st_size > 0 else corpus
        child = self._spawn(
            "Podium emulator", "podium_emulator", "--load", str(load), "--host", host, "--port", str(port),
            "--token", settings.PODIUM_ACCESS_TOKEN or "dev-token", "--dump", str(state), "--capabilities", "",
        )
        _wait_listening(child, host, port, timeout=60)
        self.stdout.write(
            f"Podium emulator listening at {settings.PODIUM_BASE_URL} (state from {load.name}; "
            "Podium's published API only)"
        )
        return child, regenerated

    def _create_demo_users(self) -> None:
        """One user per demo role, with grants on the demo locations (brought up to date if an earlier run's
        grants name locations the demo no longer has); an existing user keeps its password."""
        from django.contrib.auth import get_user_model

        from dedup.models import Location

        users = {u.username: u for u in get_user_model().objects.filter(username__in=[n for n, _r, _l in DEMO_USERS])}
        known_locations = set(Location.objects.values_list("uid", flat=True))
        for username, role, locations in DEMO_USERS:
            wanted = [uid for uid in locations.split(",") if uid]
            if wanted and not set(wanted) <= known_locations:
                # Grants name locations the first scan creates; create the rows now so they resolve.
                self._seed_locations()
                known_locations = set(Location.objects.values_list("uid", flat=True))
            usable = [uid for uid in wanted if uid in known_locations]
            user = users.get(username)
            if user is None:
                args = [username, "--role", role, "--password", DEMO_PASSWORD]
                if usable:
                    args += ["--locations", ",".join(usable)]
                call_command("create_user", *args, verbosity=0)
            else:
                self._refresh_grants(user, usable)

    def _refresh_grants(self, user: Any, uids: list[str]) -> None:
        from dedup import audit
        from dedup.models import Location, LocationGrant

        held = set(LocationGrant.objects.filter(user=user).values_list("location__uid", flat=True))
        if held == set(uids):
            return
        LocationGrant.objects.filter(user=user).delete()
        LocationGrant.objects.bulk_create(
            LocationGrant(user=user, location=loc) for loc in Location.objects.filter(uid__in=uids)
        )
        audit.record(
            "user.updated", actor="system:make-run", location_uids=sorted(uids),
            payload={"username": user.username, "locations": sorted(uids), "before": sorted(held)},
        )  # fmt: skip
        self.stdout.write(f"demo user {user.username}: grants brought up to date with the demo locations")

    def _seed_locations(self) -> None:
        from dedup.indexing import IndexWriter
        from dedup.models import Policy
        from dedup.podium import get_client

        # As a scan records them: a location Podium gives no country gets the default region and is
        # shown to admins as needing one.
        with get_client() as client:
            # As a scan records them: a location Podium gives no country (the pop-up) gets the default
            # region instead of a NULL country, which the table refuses.
            IndexWriter(Policy.current().default_region).ensure_locations(client.list_locations())

    def _register_webhook(self, port: int) -> None:
        """Point the emulator's webhook at this web server: a contact changed in Podium shows in seconds."""
        from dedup.realtime.registration import RegistrationError, register

        try:
            reg = register(f"http://127.0.0.1:{port}/podium/webhooks/", actor="system:make-run")
        except RegistrationError as exc:
            self.stderr.write(f"webhook not registered ({exc}); contact changes arrive with scans only")
            return
        self.stdout.write(f"webhook {reg.podium_uid} registered: contact changes reach the dashboard in seconds")

    def _first_scan(self, *, force: bool = False) -> None:
        from dedup.models import ScanRun
        from dedup.scanning import ConcurrentRunError, start_scan

        if not force and ScanRun.objects.filter(state=ScanRun.SUCCEEDED).exists():
            return
        try:
            run = start_scan(full=True, actor="system:make-run")
        except ConcurrentRunError as exc:
            self.stdout.write(str(exc))
            return
        self.stdout.write(f"{'first ' if not force else ''}full scan queued (scan #{run.pk}); watch it on the dashboard")

    # --- processes --------------------------------------------------------------------------------

    def _spawn(self, name: str, *args: str) -> _Child:
        # Children get their own process group so the terminal's Ctrl-C reaches only this command,
        # which then stops them in order.
        proc = subprocess.Popen([sys.executable, "manage.py", *args], cwd=settings.BASE_DIR, start_new_session=True)
        return _Child(name, proc)

    def _wait(self, children: list[_Child]) -> _Child | None:
        """Until Ctrl-C or SIGTERM (returns None) or until a child exits by itself (returns it)."""
        stop = {"now": False}

        def on_signal(signum: int, frame: object) -> None:
            stop["now"] = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while not stop["now"]:
            for child in children:
                if child.proc.poll() is not None:
                    self.stderr.write(f"the {child.name} exited ({child.proc.returncode}); stopping")
                    return child
            time.sleep(0.5)
        self.stdout.write("\nstopping …")
        return None

    def _stop(self, children: list[_Child], timeout: float) -> bool:
        """SIGTERM to each child, newest first; kill what is still running after ``timeout`` seconds.

        Says for each child whether it stopped by itself (and with which status) or was killed, and
        returns whether all of them stopped by themselves.
        """
        running = [c for c in reversed(children) if c.proc.poll() is None]
        for child in running:
            # The child's main process only: the worker stops its own processes (dedup.workers).
            child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        clean = True
        for child in reversed(children):
            try:
                code = child.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                _kill_group(child.proc)
                child.proc.wait()
                self.stderr.write(f"the {child.name} did not stop within {timeout:.0f} s and was killed")
                clean = False
                continue
            if child not in running:
                continue  # it had already exited, and was reported then
            # Ended by the SIGTERM itself is a normal stop for a server without a handler (runserver).
            if code in (0, -signal.SIGTERM):
                self.stdout.write(f"the {child.name} stopped")
            else:
                self.stderr.write(f"the {child.name} stopped with status {code}")
                clean = False
        if children:
            self.stdout.write("stopped" if clean else "stopped, not cleanly (see above)")
        return clean


def _podium_address() -> tuple[str, int]:
    url = urlsplit(settings.PODIUM_BASE_URL)
    return url.hostname or "127.0.0.1", url.port or 8765


def _port_taken(host: str, port: int) -> bool:
    """Whether a server could not listen on ``host:port`` now (bound as the servers bind, address reuse on)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _check_ports(port: int, podium: tuple[str, int] | None) -> None:
    """One line naming each taken port and how to choose another; nothing has been started yet."""
    problems = []
    if _port_taken(WEB_HOST, port):
        problems.append(
            f"port {port} (the web server) is already in use on {WEB_HOST}; stop what uses it or choose "
            f"another port: make run PORT={port + 1}"
        )
    if podium is not None and _port_taken(*podium):
        host, taken = podium
        problems.append(
            f"port {taken} (the Podium emulator) is already in use on {host}; stop what uses it or choose "
            f"another port: make run PODIUM_BASE_URL=http://{host}:{taken + 1}"
        )
    if problems:
        raise CommandError("; ".join(problems) + ". Nothing was started.")


def _wait_listening(child: _Child, host: str, port: int, timeout: float) -> None:
    """Until ``child`` listens on ``host:port``; a child that exits first, or never listens, is an error."""
    deadline = time.monotonic() + timeout
    while not _port_open(host, port):
        if child.proc.poll() is not None:
            raise CommandError(f"the {child.name} exited during start-up (status {child.proc.returncode}); see above")
        if time.monotonic() > deadline:
            raise CommandError(f"the {child.name} did not start listening on {host}:{port} within {timeout:.0f} s")
        time.sleep(0.2)
    # Something listens; make sure it is our child and not a process that took the port meanwhile.
    time.sleep(0.3)
    if child.proc.poll() is not None:
        raise CommandError(f"the {child.name} exited during start-up (status {child.proc.returncode}); see above")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # The group, not just the process: whatever it started goes too. Already gone is fine.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _stale_reason(path: Path) -> str | None:
    """Why a demo file from an earlier run cannot be used now (None when it can).

    The demo files are Podium's v4 export; a file in the product's pre-v4 shape, an empty or unreadable
    one, or one of another organization (without the demo locations the demo users are granted) is stale.
    Only the locations and the first contact are read.
    """
    locations: set[str] = set()
    try:
        with path.open("rb") as fh:
            for line in fh:
                if not line.strip():
                    continue
                parsed = parse_export_line(line)
                if isinstance(parsed, PodiumLocation):
                    locations.add(parsed.uid)
                    continue
                break
            else:
                if not locations:
                    return "empty"
    except OldExportShape:
        return "in the pre-v4 export shape"
    except (MalformedResponse, OSError, UnicodeDecodeError) as exc:
        return f"unreadable ({exc})"
    if not {SYDNEY, BURLEIGH} <= locations:
        return "of another organization (the demo locations are missing)"
    return None
