"""`make run` as a new user meets it: everything starts, answers, and stops cleanly on Ctrl-C.

A taken port stops it before anything starts, with one line naming the port and how to pick another;
on the way out it says for each process whether it stopped by itself or had to be killed.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dedup.management.commands.run_product import Command, _Child

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback only
        return response.status, response.read().decode()


def _env(tmp_path: Path, podium_port: int) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}
    }
    env.update(
        DEBUG="1",
        DEDUP_VAR_DIR=str(tmp_path),
        PODIUM_BASE_URL=f"http://127.0.0.1:{podium_port}",
        PYTHONUNBUFFERED="1",
    )
    return env


def test_run_product_starts_everything_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    web_port, podium_port = _free_port(), _free_port()
    env = _env(tmp_path, podium_port)
    log = (tmp_path / "run.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "run_product", "--port", str(web_port), "--people", "300"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "run.log").read_text()
            try:
                status, body = _get(f"http://127.0.0.1:{web_port}/healthz")
                if status == 200 and "Press Ctrl-C" in (tmp_path / "run.log").read_text():
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "run.log").read_text()
            time.sleep(0.5)
        output = (tmp_path / "run.log").read_text()
        for username in ("manager", "auditor", "admin"):
            assert f"log in as {username}" in output
        status, body = _get(f"http://127.0.0.1:{web_port}/accounts/login/")
        assert status == 200 and "password" in body.lower()
        # The worker picks up the first scan: the index fills without anyone doing anything.
        check = (
            "from dedup.models import ScanRun as S; import sys; "
            "sys.exit(0 if S.objects.filter(state='succeeded').exists() else 3)"
        )
        deadline = time.monotonic() + 90
        while subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", check], cwd=ROOT, env=env, capture_output=True
        ).returncode != 0:
            assert time.monotonic() < deadline, "the first scan did not finish:\n" + (tmp_path / "run.log").read_text()
            time.sleep(1)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    output = (tmp_path / "run.log").read_text()
    assert proc.returncode == 0, output
    for child in ("web server", "background worker", "Podium emulator"):
        assert f"the {child} stopped\n" in output, output
    assert output.rstrip().endswith("stopped"), output
    # The emulator wrote its state on the way out, so the next `make run` continues from it.
    assert (tmp_path / "demo" / "emulator-state.ndjson").stat().st_size > 0
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", web_port)) != 0, "the web server is still running"


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something else already listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _run_product(tmp_path: Path, web_port: int, podium_port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "run_product", "--port", str(web_port), "--people", "50"],
        cwd=ROOT, env=_env(tmp_path, podium_port), capture_output=True, text=True, timeout=60,
    )


def _nothing_started(tmp_path: Path, result: subprocess.CompletedProcess[str], podium_port: int | None) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Nothing was started." in output
    assert "log in as" not in output and "database migrated" not in output
    # No database (so no scan left running), no demo corpus, no emulator.
    assert not (tmp_path / "dedup.sqlite3").exists()
    assert not (tmp_path / "demo").exists()
    if podium_port is not None:
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", podium_port)) != 0


def test_a_taken_web_port_is_named_before_anything_starts(tmp_path: Path, listening: int) -> None:
    podium_port = _free_port()
    result = _run_product(tmp_path, listening, podium_port)
    _nothing_started(tmp_path, result, podium_port)
    lines = [line for line in result.stderr.splitlines() if f"port {listening}" in line]
    assert len(lines) == 1, result.stderr
    assert "already in use" in lines[0] and f"make run PORT={listening + 1}" in lines[0]


def test_a_taken_emulator_port_is_named_before_anything_starts(tmp_path: Path, listening: int) -> None:
    result = _run_product(tmp_path, _free_port(), listening)
    _nothing_started(tmp_path, result, None)
    assert f"port {listening} (the Podium emulator) is already in use" in result.stderr
    assert f"make run PODIUM_BASE_URL=http://127.0.0.1:{listening + 1}" in result.stderr


def _child(name: str, code: str) -> _Child:
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    time.sleep(0.5)  # let it install its handlers
    return _Child(name, proc)


def test_stopping_says_which_process_had_to_be_killed() -> None:
    polite = _child("web server", "import time; time.sleep(60)")
    stubborn = _child("background worker", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)")
    command = Command()
    out, err = io.StringIO(), io.StringIO()
    command.stdout._out, command.stderr._out = out, err  # type: ignore[attr-defined]
    started = time.monotonic()
    clean = command._stop([stubborn, polite], timeout=1.0)
    assert time.monotonic() - started < 5
    assert clean is False
    assert "the web server stopped\n" in out.getvalue()
    assert "the background worker did not stop within 1 s and was killed" in err.getvalue()
    assert out.getvalue().rstrip().endswith("stopped, not cleanly (see above)")
    assert stubborn.proc.returncode == -signal.SIGKILL


def test_stopping_everything_cleanly_says_stopped() -> None:
    children = [_child("Podium emulator", "import time; time.sleep(60)"), _child("web server", "import time; time.sleep(60)")]
    command = Command()
    out = io.StringIO()
    command.stdout._out = out  # type: ignore[attr-defined]
    assert command._stop(children, timeout=5.0) is True
    assert out.getvalue().splitlines() == ["the web server stopped", "the Podium emulator stopped", "stopped"]
