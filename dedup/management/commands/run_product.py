"""``manage.py run_product`` (what ``make run`` calls): the whole product on the embedded default.

Migrates, generates a demo corpus on first use, starts the Podium emulator with it, creates one demo
user per role, then runs the web server and a ``qcluster`` worker side by side until Ctrl-C, when it
stops all of them cleanly. The emulator's state is dumped on exit and reloaded next time, so merges
made in the demo survive a restart.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

DEMO_USERS = [
    # (username, role, locations) — the manager looks after the two Australian sites.
    ("manager", "manager", "loc_sydney,loc_burleigh"),
    ("auditor", "auditor", ""),
    ("admin", "admin", ""),
]
DEMO_PASSWORD = "demo-password-1"


class Command(BaseCommand):
    help = "Set up and run the product locally: emulator, web server and a background worker."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--people", type=int, default=3000, help="people in a newly generated demo corpus")
        parser.add_argument("--no-emulator", action="store_true", help="use PODIUM_BASE_URL as configured")

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError("run_product is for local use; set DEBUG=1 (make run does)")
        demo_dir = Path(settings.VAR_DIR) / "demo"
        demo_dir.mkdir(parents=True, exist_ok=True)
        call_command("migrate", interactive=False, verbosity=0)
        self.stdout.write("database migrated")

        children: list[subprocess.Popen[bytes]] = []
        try:
            if not options["no_emulator"]:
                children.append(self._start_emulator(demo_dir, options["people"]))
            self._create_demo_users()
            children.append(self._spawn("qcluster"))
            children.append(self._spawn("runserver", f"127.0.0.1:{options['port']}", "--noreload"))
            if not options["no_emulator"]:
                self._register_webhook(options["port"])
            self._first_scan()
            self.stdout.write(self.style.SUCCESS(f"\nPodium Contact Dedup is running at http://127.0.0.1:{options['port']}/"))
            for username, role, _ in DEMO_USERS:
                self.stdout.write(f"  log in as {username:<8} password {DEMO_PASSWORD}   ({role})")
            self.stdout.write("Press Ctrl-C to stop.\n")
            self._wait(children)
        finally:
            self._stop(children)

    # --- steps ------------------------------------------------------------------------------------

    def _start_emulator(self, demo_dir: Path, people: int) -> subprocess.Popen[bytes]:
        corpus = demo_dir / "corpus.ndjson"
        state = demo_dir / "emulator-state.ndjson"
        if not corpus.exists():
            self.stdout.write(f"generating a demo corpus of {people} people in {corpus} …")
            call_command("make_demo_corpus", str(corpus), people=people, seed=2026, verbosity=0)
        load = state if state.exists() and state.stat().st_size > 0 else corpus
        url = urlsplit(settings.PODIUM_BASE_URL)
        host, port = url.hostname or "127.0.0.1", url.port or 8765
        if _port_open(host, port):
            raise CommandError(
                f"something already listens on {host}:{port} (PODIUM_BASE_URL); stop it or run with --no-emulator"
            )
        proc = self._spawn(
            "podium_emulator", "--load", str(load), "--host", host, "--port", str(port),
            "--token", settings.PODIUM_ACCESS_TOKEN or "dev-token", "--dump", str(state),
        )
        deadline = time.monotonic() + 60
        while not _port_open(host, port):
            if proc.poll() is not None:
                raise CommandError("the Podium emulator exited during start-up; see its output above")
            if time.monotonic() > deadline:
                raise CommandError("the Podium emulator did not start listening within 60 s")
            time.sleep(0.2)
        self.stdout.write(f"Podium emulator listening at {settings.PODIUM_BASE_URL} (state from {load.name})")
        return proc

    def _create_demo_users(self) -> None:
        from django.contrib.auth import get_user_model

        from dedup.models import Location

        existing = set(get_user_model().objects.values_list("username", flat=True))
        known_locations = set(Location.objects.values_list("uid", flat=True))
        for username, role, locations in DEMO_USERS:
            if username in existing:
                continue
            # Grants name locations the first scan creates; create the rows now so they resolve.
            wanted = [uid for uid in locations.split(",") if uid]
            if wanted and not set(wanted) <= known_locations:
                self._seed_locations()
                known_locations = set(Location.objects.values_list("uid", flat=True))
            args = [username, "--role", role, "--password", DEMO_PASSWORD]
            usable = [uid for uid in wanted if uid in known_locations]
            if usable:
                args += ["--locations", ",".join(usable)]
            call_command("create_user", *args, verbosity=0)

    def _seed_locations(self) -> None:
        from dedup.indexing import IndexWriter
        from dedup.models import Policy
        from dedup.podium import get_client

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

    def _first_scan(self) -> None:
        from dedup.models import ScanRun
        from dedup.scanning import ConcurrentRunError, start_scan

        if ScanRun.objects.filter(state=ScanRun.SUCCEEDED).exists():
            return
        try:
            run = start_scan(full=True, actor="system:make-run")
        except ConcurrentRunError as exc:
            self.stdout.write(str(exc))
            return
        self.stdout.write(f"first full scan queued (scan #{run.pk}); watch it on the dashboard")

    # --- processes --------------------------------------------------------------------------------

    def _spawn(self, *args: str) -> subprocess.Popen[bytes]:
        # Children get their own process group so the terminal's Ctrl-C reaches only this command,
        # which then stops them in order.
        return subprocess.Popen([sys.executable, "manage.py", *args], cwd=settings.BASE_DIR, start_new_session=True)

    def _wait(self, children: list[subprocess.Popen[bytes]]) -> None:
        stop = {"now": False}

        def on_signal(signum: int, frame: object) -> None:
            stop["now"] = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while not stop["now"]:
            for child in children:
                if child.poll() is not None:
                    args = child.args if isinstance(child.args, list) else [child.args]
                    self.stderr.write(f"{' '.join(map(str, args[2:4]))} exited ({child.returncode}); stopping")
                    return
            time.sleep(0.5)
        self.stdout.write("\nstopping …")

    def _stop(self, children: list[subprocess.Popen[bytes]]) -> None:
        for child in reversed(children):
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in reversed(children):
            try:
                child.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        if children:
            self.stdout.write("stopped")


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0
