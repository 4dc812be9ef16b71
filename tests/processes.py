"""What tests that start the product's own processes share: their environment, the test database's URL,
and a running ``manage.py qcluster``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a product process a test starts: this process's, less its choice of database,
    broker and settings (the child takes them from ``extra`` or its own defaults), in development mode
    and unbuffered."""
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}}
    env.update(DEBUG="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def database_url() -> str:
    """This test's PostgreSQL database, as a URL another process opens (the SQLite test database lives in
    this process's memory)."""
    s = connection.settings_dict
    assert connection.vendor == "postgresql", connection.vendor
    auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


@dataclass
class QCluster:
    """One ``manage.py qcluster`` in a session of its own (its process group: main, Sentinel, workers),
    writing to ``log``."""

    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] = field(init=False)

    def __post_init__(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "manage.py", "qcluster"], cwd=ROOT, env=self.env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    @property
    def name(self) -> str:
        """How its workers' heartbeats name it (``dedup.heartbeat``)."""
        return f"{socket.gethostname()}:{self.proc.pid}"

    def output(self) -> str:
        """The end of its log, for a failure's message."""
        return self.log.read_text()[-4000:]

    def assert_alive(self) -> None:
        assert self.proc.poll() is None, self.output()

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """Stop it however it is: SIGTERM to the group, SIGKILL after 30 s (a fixture's clean-up)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def stop_leaving_nothing(self) -> None:
        """SIGTERM to the main process, as ``systemctl stop`` sends: it exits cleanly, and so does every
        process it and its tasks started."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=30) == 0, self.output()
        deadline = time.monotonic() + 15
        while True:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            if time.monotonic() > deadline:
                ps = ["ps", "-o", "pid,stat,cmd", "-g", str(self.proc.pid)]
                raise AssertionError("left running:\n" + subprocess.run(ps, capture_output=True, text=True).stdout)
            time.sleep(0.2)
